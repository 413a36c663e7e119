//! `qm plan`: builds the state a cluster, teams and jobs file describe, runs one scheduling
//! cycle, and prints the plan (or writes it as JSON).

use crate::out::say;
use anyhow::{Context, Result};
use clap::Args;
use qm_core::scenario::{ClusterFile, JobsFile, Scenario, TeamsFile};
use qm_core::{render, schedule, verify};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Files describing the cluster, the teams (and policy), and the queue.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Node pools (TOML), e.g. examples/cluster.toml.
    #[arg(long)]
    cluster: PathBuf,
    /// Priority classes, teams, quotas and `[policy]` (TOML), e.g. examples/teams.toml.
    #[arg(long)]
    teams: PathBuf,
    /// Running and pending jobs and the cycle time (TOML), e.g. examples/jobs.toml.
    #[arg(long)]
    jobs: PathBuf,
    /// Print the plan as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn read<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Runs `qm plan`.
pub fn run(args: &PlanArgs) -> Result<()> {
    let cluster: ClusterFile = read(&args.cluster)?;
    let teams: TeamsFile = read(&args.teams)?;
    let jobs: JobsFile = read(&args.jobs)?;
    let scenario = Scenario::build(&cluster, &teams, &jobs).context("building the scenario")?;
    for (flavor, nominal, capacity) in scenario.state.overcommitted() {
        eprintln!("qm: warning: {}", render::overcommitted(&flavor, nominal, capacity));
    }
    let plan = schedule(&scenario.state, &scenario.policy, scenario.now_ms);
    let stale = verify(&plan.decisions, &scenario.state, scenario.now_ms);
    anyhow::ensure!(stale.is_empty(), "internal error: the plan fails its own verification: {stale:?}");
    if args.json {
        say!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        crate::out::write(format_args!("{}", render::plan(&scenario.state, &plan)));
    }
    Ok(())
}
