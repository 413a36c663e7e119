//! `qm`: Quartermaster's single binary. Parses flags, sets up tracing, and calls the libraries.
//!
//! Module map:
//! - `plan`: `qm plan`, a dry run of one scheduling cycle on TOML files.
//! - `sim`: `qm sim run | compare | sweep`, the simulator.
//! - `server`: `qm server` (one replica) and `qm dev` (a one-replica scheduler in a temp dir).
//! - `client`: the gRPC client commands (`qm submit`, `qm jobs`, `qm status`, ...).

mod client;
mod plan;
mod server;
mod sim;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc instead of the system allocator: the simulator and the replicas allocate small
/// objects at a high rate (glibc's malloc and free were a fifth of a simulated run's
/// instructions; see docs/benchmarks.md). Built without transparent huge pages (`no_thp`):
/// with them a replica holding 100,000 jobs stayed at 182 MiB resident instead of 107.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Quartermaster: a scheduler for shared accelerator fleets (GPU, TPU, FPGA, IPU).
#[derive(Debug, Parser)]
#[command(name = "qm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: client::Target,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the version of qm, of the API and of the stored formats.
    Version,
    /// Dry-runs one scheduling cycle on files: prints placements, preemptions and, for each job
    /// left pending, why.
    Plan(plan::PlanArgs),
    /// Replays a workload through the production policy and baselines, in virtual time.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Runs one scheduler replica.
    Server(server::ServerArgs),
    /// Runs a one-replica scheduler with its data in a temporary directory.
    Dev(server::DevArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("QM_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Version => {
            println!(
                "qm {} (api quartermaster.v1, snapshot format {})",
                env!("CARGO_PKG_VERSION"),
                qm_core::state::SNAPSHOT_VERSION
            );
            Ok(())
        }
        Command::Plan(args) => plan::run(&args),
        Command::Sim(cmd) => sim::run(&cmd, cli.target.json()),
        Command::Server(args) => server::serve(&args),
        Command::Dev(args) => server::dev(&args),
        Command::Client(cmd) => client::run(&cli.target, &cmd),
    }
}
