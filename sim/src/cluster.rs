//! The simulated cluster: `--cluster NxG` (N nodes of G GPUs of one flavor) or a TOML file with
//! node pools (as `qm plan`'s cluster files), and optionally teams, priority classes and the
//! production policy's knobs:
//!
//! ```toml
//! [[pool]]
//! name = "h100"
//! count = 16
//! kind = "gpu"
//! model = "nvidia-h100-80gb-hbm3"
//! devices = 8
//! racks = ["r1", "r2"]
//!
//! [[team]]
//! name = "6214e9"
//! [[team.quota]]
//! flavor = "gpu/nvidia-h100-80gb-hbm3"
//! nominal = 64
//!
//! [policy]
//! min_runtime_ms = 600000
//! ```

use qm_core::scenario::{ClusterFile as Pools, PoolFile, PriorityClassFile, TeamFile, TeamsFile};
use qm_core::{FlavorQuota, NodeSpec, PolicyConfig, TeamId, TeamSpec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The model name of `NxG` clusters.
pub const GENERIC_MODEL: &str = "generic-gpu";

/// A cluster file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Node pools.
    #[serde(rename = "pool")]
    pub pools: Vec<PoolFile>,
    /// Teams; when absent every team of the trace gets an equal share.
    #[serde(default, rename = "team")]
    pub teams: Vec<TeamFile>,
    /// Priority classes.
    #[serde(default, rename = "priority_class")]
    pub priority_classes: Vec<PriorityClassFile>,
    /// Knobs of the production policy.
    #[serde(default)]
    pub policy: PolicyConfig,
}

/// The cluster ready to simulate.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Nodes, and whether each starts cordoned.
    pub nodes: Vec<(NodeSpec, bool)>,
    /// Teams from the file; empty means equal shares.
    pub teams: Vec<TeamSpec>,
    /// Knobs of the production policy.
    pub policy: PolicyConfig,
    /// The file it was built from, for sweeps.
    pub source: ClusterFile,
}

impl Cluster {
    /// `NxG`, or a path to a cluster file.
    pub fn load(arg: &str) -> Result<Self, String> {
        if let Some((n, g)) = arg.split_once('x') {
            if let (Ok(nodes), Ok(gpus)) = (n.parse::<u32>(), g.parse::<u32>()) {
                return Self::uniform(nodes, gpus);
            }
        }
        let text = std::fs::read_to_string(Path::new(arg)).map_err(|e| format!("{arg}: {e}"))?;
        let file: ClusterFile = toml::from_str(&text).map_err(|e| format!("{arg}: {e}"))?;
        Self::from_file(file).map_err(|e| format!("{arg}: {e}"))
    }

    /// `nodes` nodes of `gpus` GPUs of the generic flavor.
    pub fn uniform(nodes: u32, gpus: u32) -> Result<Self, String> {
        if nodes == 0 {
            return Err("--cluster: NxG needs at least one node".into());
        }
        let pool = PoolFile {
            name: "node".into(),
            count: nodes,
            kind: "gpu".into(),
            model: GENERIC_MODEL.into(),
            devices: gpus,
            memory_mib: 0,
            nvlink_groups: 1,
            cpu_millis: 1_000_000,
            mem_mib: 1 << 30,
            racks: vec![],
            unhealthy_devices: vec![],
            cordoned: 0,
        };
        Self::from_file(ClusterFile {
            pools: vec![pool],
            teams: vec![],
            priority_classes: vec![],
            policy: PolicyConfig::default(),
        })
    }

    fn from_file(file: ClusterFile) -> Result<Self, String> {
        let nodes = Pools { pools: file.pools.clone() }.nodes().map_err(|e| format!("cluster.{e}"))?;
        let teams = TeamsFile {
            priority_classes: file.priority_classes.clone(),
            teams: file.teams.clone(),
            policy: file.policy.clone(),
        };
        let teams = teams.teams().map_err(|e| e.to_string())?;
        Ok(Self { nodes, teams, policy: file.policy.clone(), source: file })
    }

    /// The same cluster with `count` nodes in pool `name` (the pool of an `NxG` cluster is
    /// `node`).
    pub fn with_pool_size(&self, name: &str, count: u32) -> Result<Self, String> {
        let mut file = self.source.clone();
        let pool = file.pools.iter_mut().find(|p| p.name == name).ok_or_else(|| format!("no pool named {name:?}"))?;
        pool.count = count;
        let mut out = Self::from_file(file)?;
        out.teams = self.teams.clone();
        Ok(out)
    }

    /// The same cluster with `team`'s nominal set to `nominal` for every flavor it has, after
    /// fixing equal shares for `names` if the cluster has no teams of its own.
    pub fn with_nominal(&self, names: &[String], team: &str, nominal: u32) -> Result<Self, String> {
        let mut out = self.clone();
        out.teams = self.teams_for(names);
        let t =
            out.teams.iter_mut().find(|t| t.name.as_str() == team).ok_or_else(|| format!("no team named {team:?}"))?;
        for q in t.quotas.values_mut() {
            q.nominal = nominal;
            q.lending_limit = q.lending_limit.map(|l| l.min(nominal));
        }
        Ok(out)
    }

    /// Healthy devices per flavor.
    pub fn capacity(&self) -> BTreeMap<qm_core::Flavor, u32> {
        let mut out = BTreeMap::new();
        for (n, _) in &self.nodes {
            for d in n.devices.iter().filter(|d| d.health == qm_core::Health::Healthy) {
                *out.entry(d.flavor()).or_insert(0) += 1;
            }
        }
        out
    }

    /// The most devices of one node.
    pub fn max_devices_per_node(&self) -> u32 {
        self.nodes.iter().map(|(n, _)| n.devices.len() as u32).max().unwrap_or(0)
    }

    /// Teams for a trace: the file's, or an equal share of every flavor for each of `names`
    /// (nominal = capacity / teams, borrowing unlimited, weight 1).
    pub fn teams_for(&self, names: &[String]) -> Vec<TeamSpec> {
        if !self.teams.is_empty() {
            return self.teams.clone();
        }
        let n = names.len().max(1) as u32;
        let capacity = self.capacity();
        names
            .iter()
            .map(|name| {
                let quotas = capacity
                    .iter()
                    .map(|(f, c)| {
                        (f.clone(), FlavorQuota { nominal: c / n, borrowing_limit: None, lending_limit: None })
                    })
                    .collect();
                TeamSpec { name: TeamId::from(name.as_str()), weight_milli: 1000, quotas }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nxg_is_a_uniform_cluster() {
        let c = Cluster::load("12x8").unwrap();
        assert_eq!(c.nodes.len(), 12);
        assert_eq!(c.max_devices_per_node(), 8);
        assert_eq!(c.capacity().values().sum::<u32>(), 96);
        assert!(Cluster::load("0x8").is_err());
        assert!(Cluster::load("no-such-file.toml").unwrap_err().contains("no-such-file.toml"));
    }

    #[test]
    fn equal_shares_split_every_flavor() {
        let c = Cluster::load("4x8").unwrap();
        let teams = c.teams_for(&["a".into(), "b".into(), "c".into()]);
        assert_eq!(teams.len(), 3);
        assert!(teams.iter().all(|t| t.quotas.values().all(|q| q.nominal == 10 && q.borrowing_limit.is_none())));
    }
}
