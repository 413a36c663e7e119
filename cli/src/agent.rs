//! `qm agent` (a node agent) and `qm agent probe` (the local inventory, printed).

use crate::certs::TlsArgs;
use crate::client::words::table;
use crate::out::{say, Failure};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use qm_agent::inventory::{collect, host_resources, FakeGpus, Probe, StaticProbe};
use qm_agent::nvml::{capture, NvmlProbe};
use qm_agent::nvml_real::RealNvml;
use qm_agent::session::{run, AgentConfig};
use qm_agent::sysfs::SysfsProbe;
use qm_proto::v1::DeviceTelemetry;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `qm agent`: runs the agent, or `probe` prints the inventory.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: RunArgs,
}

/// `qm agent probe`.
#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Prints the devices the probes find and their health, and exits: the first command to run
    /// on a new node.
    Probe {
        #[command(flatten)]
        probes: ProbeArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Read the devices this many times and report the mean time of a read per device
        /// (`scan_us_per_device`): the cost of the agent's rescans.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
}

/// Where devices come from.
#[derive(Debug, Args, Clone)]
pub struct ProbeArgs {
    /// A static inventory: a TOML file of `[[device]]` entries (id, kind, vendor, model,
    /// memory_mib, numa_node, pci_bus_id, interconnect_group, health).
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Report this many fake NVIDIA GPUs (model `fake-gpu`), for development without
    /// accelerators.
    #[arg(long, value_name = "N")]
    fake_gpus: Option<u32>,
    /// Do not read NVIDIA devices through NVML (read by default; a node without the driver
    /// reports none and says why).
    #[arg(long)]
    no_nvml: bool,
    /// Do not look for accelerators on the PCI bus (AMD, Intel, Gaudi, TPU, FPGA, IPU, and
    /// NVIDIA devices without a driver), which is done by default.
    #[arg(long)]
    no_pci: bool,
    /// The root of the sysfs tree the PCI probe reads.
    #[arg(long, default_value = "/", value_name = "DIR")]
    sysfs_root: PathBuf,
    /// Read NVIDIA GPUs from a capture instead of NVML: `nvidia-smi --query-gpu=...
    /// --format=csv` output with at least uuid, name and memory.total (a simulated node that
    /// looks like the captured machine, telemetry included).
    #[arg(long, value_name = "FILE", conflicts_with = "no_nvml")]
    nvml_capture: Option<PathBuf>,
}

impl ProbeArgs {
    fn probes(&self) -> Result<Vec<Box<dyn Probe>>> {
        let mut probes: Vec<Box<dyn Probe>> = Vec::new();
        if let Some(path) = &self.nvml_capture {
            let source = capture(path).map_err(|e| Failure::usage(format!("--nvml-capture: {e}")))?;
            probes.push(Box::new(NvmlProbe::new(source)));
        } else if !self.no_nvml {
            probes.push(Box::new(NvmlProbe::new(RealNvml::load())));
        }
        if !self.no_pci {
            probes.push(Box::new(SysfsProbe::new(&self.sysfs_root)));
        }
        if let Some(path) = &self.inventory {
            probes.push(Box::new(StaticProbe::new(path).map_err(|e| Failure::usage(format!("--inventory: {e}")))?));
        }
        if let Some(count) = self.fake_gpus {
            probes.push(Box::new(FakeGpus { count }));
        }
        Ok(probes)
    }
}

/// Flags of `qm agent`.
#[derive(Debug, Args)]
struct RunArgs {
    /// Scheduler replicas (HOST:PORT; https:// or, with --insecure, http:// may be written),
    /// comma-separated or repeated; tried in turn.
    #[arg(long, env = "QM_SERVER", value_delimiter = ',', default_value = "127.0.0.1:7070")]
    server: Vec<String>,
    /// The node's name, unique in the cluster (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// A label, KEY=VALUE (repeat): `rack=r1` keeps gangs in one rack.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    #[command(flatten)]
    probes: ProbeArgs,
    /// Where the agent serves its replicas' logs.
    #[arg(long, default_value = "0.0.0.0:7071")]
    listen: SocketAddr,
    /// The address others reach the agent at (default: the host name and the listen port).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Logs and working directories of replicas.
    #[arg(long, default_value = "/var/lib/qm-agent")]
    data: PathBuf,
    /// Seconds between two reads of the inventory.
    #[arg(long, default_value_t = 10)]
    rescan_s: u64,
    /// The cgroup v2 mount under which replicas get CPU and memory limits (when the agent's own
    /// cgroup is writable, as with systemd's `Delegate=yes`).
    #[arg(long, default_value = "/sys/fs/cgroup", value_name = "DIR")]
    cgroup_root: PathBuf,
    /// Run replicas without cgroups of their own.
    #[arg(long)]
    no_cgroups: bool,
    /// A file holding the agent's token (`qm admin tokens create NAME --agent NODE`); else
    /// `QM_TOKEN`, else the file `QM_TOKEN_FILE` names.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Serve Prometheus metrics of the node's devices (`/metrics`), `/healthz` and `/readyz`
    /// over HTTP on this address (no token); not served when absent.
    #[arg(long, value_name = "HOST:PORT")]
    http_listen: Option<SocketAddr>,
    /// Dial the scheduler and serve logs in plaintext, for a scheduler started --insecure.
    #[arg(long)]
    insecure: bool,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".to_owned(), |h| h.trim().to_owned())
}

fn labels(raw: &[String]) -> Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|l| {
            let (k, v) =
                l.split_once('=').ok_or_else(|| Failure::usage(format!("--label {l:?}: expected KEY=VALUE")))?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Runs `qm agent ...`.
pub fn agent(args: &AgentArgs) -> Result<()> {
    if let Some(AgentCommand::Probe { probes, json, repeat }) = &args.command {
        return probe(probes, *json, *repeat);
    }
    let r = &args.run;
    let advertise = r
        .advertise
        .clone()
        .or_else(|| r.listen.ip().is_unspecified().then(|| format!("{}:{}", host_name(), r.listen.port())));
    let config = AgentConfig {
        name: r.name.clone().unwrap_or_else(host_name),
        servers: r.server.clone(),
        labels: labels(&r.labels)?,
        listen: r.listen,
        advertise,
        data_dir: r.data.clone(),
        probes: r.probes.probes()?,
        rescan: Duration::from_secs(r.rescan_s.max(1)),
        cgroup_root: (!r.no_cgroups).then(|| r.cgroup_root.clone()),
        bearer: crate::client::bearer(r.token_file.as_deref())?,
        tls: r.tls.load(r.insecure)?,
        http: r.http_listen,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(config, crate::server::ctrl_c(), |_| {})).context("qm agent")
}

/// Mean microseconds per device of `repeat - 1` more runs of `read` (`None` for one run).
fn timed(repeat: u32, devices: usize, mut read: impl FnMut()) -> Option<f64> {
    let started = std::time::Instant::now();
    for _ in 1..repeat {
        read();
    }
    let reads = f64::from(repeat.saturating_sub(1).max(1));
    (repeat > 1).then(|| started.elapsed().as_secs_f64() * 1e6 / reads / devices.max(1) as f64)
}

fn probe(args: &ProbeArgs, json: bool, repeat: u32) -> Result<()> {
    let probes = args.probes()?;
    let (spec, mut notes) = collect(&host_name(), &BTreeMap::new(), &probes, host_resources());
    let telemetry: Vec<DeviceTelemetry> = probes.iter().flat_map(|p| p.telemetry()).collect();
    let scan = timed(repeat, spec.devices.len(), || {
        collect(&host_name(), &BTreeMap::new(), &probes, host_resources());
    });
    let readings = timed(repeat, telemetry.len(), || {
        probes.iter().for_each(|p| drop(p.telemetry()));
    });
    if probes.is_empty() {
        notes.push(
            "no probe: NVML and PCI are off (--no-nvml, --no-pci) and neither --inventory nor --fake-gpus is given"
                .into(),
        );
    }
    let reading = |id: &str| telemetry.iter().find(|t| t.device == id);
    if json {
        let devices: Vec<_> = spec
            .devices
            .iter()
            .map(|d| {
                let t = reading(d.id.as_str());
                json!({ "id": d.id.as_str(), "kind": d.kind.as_str(), "vendor": d.vendor, "model": d.model,
                "flavor": d.flavor().to_string(), "memory_mib": d.memory_mib, "numa_node": d.numa_node,
                "pci_bus_id": d.pci_bus_id, "interconnect_group": d.interconnect_group, "health": d.health,
                "utilization_pct": t.and_then(|t| t.utilization_pct), "memory_used_mib": t.and_then(|t| t.memory_used_mib),
                "power_mw": t.and_then(|t| t.power_mw), "temperature_c": t.and_then(|t| t.temperature_c) })
            })
            .collect();
        say!(
            "{}",
            json!({ "node": spec.id.as_str(), "cpu_millis": spec.cpu_millis, "mem_mib": spec.mem_mib,
                "devices": devices, "notes": notes, "scan_us_per_device": scan,
                "telemetry_us_per_device": readings })
        );
        return Ok(());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows = spec.devices.iter().map(|d| {
        let t = reading(d.id.as_str());
        vec![
            d.id.as_str().to_owned(),
            d.flavor().to_string(),
            d.memory_mib.to_string(),
            opt(d.numa_node.map(|n| n.to_string())),
            opt(d.pci_bus_id.clone()),
            opt(d.interconnect_group.clone()),
            format!("{:?}", d.health).to_lowercase(),
            opt(t.and_then(|t| t.utilization_pct).map(|u| format!("{u}%"))),
            opt(t.and_then(|t| t.memory_used_mib).map(|m| m.to_string())),
            opt(t.and_then(|t| t.temperature_c).map(|c| c.to_string())),
        ]
    });
    let header = ["DEVICE", "FLAVOR", "MEMORY MIB", "NUMA", "PCI", "GROUP", "HEALTH", "UTIL", "USED MIB", "TEMP C"];
    say!("{}", table(&header, &["MEMORY MIB", "NUMA", "UTIL", "USED MIB", "TEMP C"], rows));
    for n in notes {
        say!("note: {n}");
    }
    if let Some(us) = scan {
        say!("scan: {us:.1} us per device (mean of {} reads)", repeat - 1);
    }
    if let Some(us) = readings {
        say!("telemetry: {us:.1} us per device (mean of {} reads)", repeat - 1);
    }
    Ok(())
}
