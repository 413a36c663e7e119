//! CPU and memory limits for replicas through cgroup v2, where the agent's cgroup is writable
//! (systemd's `Delegate=yes`). The agent moves itself into a leaf (`AGENT/agent`), enables the
//! `cpu` and `memory` controllers below its cgroup, and gives each replica a cgroup of its own
//! (`AGENT/replicas/JOB.REPLICA.ATTEMPT`) with `cpu.max` and `memory.max` from the job's request;
//! the replica's shell moves itself in before it runs the command, so every process of the
//! replica is inside from the start.

use std::path::{Path, PathBuf};

/// The agent's cgroup, set up for replicas.
#[derive(Debug, Clone)]
pub struct Cgroups {
    replicas: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

impl Cgroups {
    /// Sets up the cgroup of process `pid`, read from `self_cgroup` (the text of
    /// `/proc/self/cgroup`), under the cgroup v2 mount `mount`; the error says why replicas will
    /// run without limits.
    pub fn setup(mount: &Path, self_cgroup: &str, pid: u32) -> Result<Self, String> {
        let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))
            .map_err(|_| format!("{} is not a cgroup v2 mount", mount.display()))?;
        for needed in ["cpu", "memory"] {
            if !controllers.split_whitespace().any(|c| c == needed) {
                return Err(format!("the {needed} controller is not available in {}", mount.display()));
            }
        }
        let own = self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("this process is in no cgroup v2 hierarchy")?;
        let base = mount.join(own.trim_start_matches('/'));
        let leaf = base.join("agent");
        std::fs::create_dir_all(&leaf).map_err(|e| format!("{}: {e}", leaf.display()))?;
        write(&leaf.join("cgroup.procs"), &pid.to_string())?;
        write(&base.join("cgroup.subtree_control"), "+cpu +memory")?;
        let replicas = base.join("replicas");
        std::fs::create_dir_all(&replicas).map_err(|e| format!("{}: {e}", replicas.display()))?;
        write(&replicas.join("cgroup.subtree_control"), "+cpu +memory")?;
        Ok(Self { replicas })
    }

    /// Makes replica `name`'s cgroup with its limits (none when 0) and returns the file the
    /// replica writes its pid to.
    pub fn replica(&self, name: &str, cpu_millis: u64, mem_mib: u64) -> Result<PathBuf, String> {
        let dir = self.replicas.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cpu = if cpu_millis > 0 { format!("{} 100000", cpu_millis * 100) } else { "max 100000".to_owned() };
        write(&dir.join("cpu.max"), &cpu)?;
        let memory = if mem_mib > 0 { (mem_mib * 1024 * 1024).to_string() } else { "max".to_owned() };
        write(&dir.join("memory.max"), &memory)?;
        Ok(dir.join("cgroup.procs"))
    }

    /// Removes replica `name`'s cgroup (once its processes are gone).
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_dir(self.replicas.join(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_moves_to_a_leaf_and_replicas_get_their_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        std::fs::write(mount.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        let base = mount.join("system.slice/qm-agent.service");
        std::fs::create_dir_all(&base).unwrap();
        let cg = Cgroups::setup(mount, "0::/system.slice/qm-agent.service\n", 4242).unwrap();
        assert_eq!(std::fs::read_to_string(base.join("agent/cgroup.procs")).unwrap(), "4242");
        assert_eq!(std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(), "+cpu +memory");
        let procs = cg.replica("7.0.1", 2_500, 1_024).unwrap();
        let dir = procs.parent().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("cpu.max")).unwrap(), "250000 100000", "2.5 cores");
        assert_eq!(std::fs::read_to_string(dir.join("memory.max")).unwrap(), "1073741824");
        let unlimited = cg.replica("8.0.1", 0, 0).unwrap();
        assert_eq!(std::fs::read_to_string(unlimited.parent().unwrap().join("memory.max")).unwrap(), "max");
        std::fs::write(mount.join("cgroup.controllers"), "cpuset pids\n").unwrap();
        let err = Cgroups::setup(mount, "0::/x\n", 1).unwrap_err();
        assert!(err.contains("the cpu controller is not available"), "{err}");
        assert!(Cgroups::setup(&mount.join("v1"), "0::/\n", 1).unwrap_err().contains("not a cgroup v2 mount"));
    }
}
