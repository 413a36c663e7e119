//! `qm`: Quartermaster's single binary. Parses flags, sets up tracing, and calls the libraries.
//!
//! Module map:
//! - `plan`: `qm plan`, a dry run of one scheduling cycle on TOML files.
//! - `sim`: `qm sim run | compare | sweep`, the simulator.
//! - `server`: `qm server` (one replica) and `qm dev` (a one-replica scheduler in a temp dir).
//! - `client`: the gRPC client commands (`qm submit`, `qm jobs`, `qm status`, ...).
//! - `agent`: `qm agent` (a node agent) and `qm agent probe`.
//! - `certs`: `qm admin certs` and the certificate flags of `qm server` and `qm agent`.
//! - `out`: stdout that ends quietly on a closed pipe, exit codes, errors as text or JSON.

mod agent;
mod certs;
mod client;
mod out;
mod plan;
mod server;
mod sim;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use out::say;
use std::io::IsTerminal;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: the simulator and the replicas allocate small
/// objects at a high rate (glibc's malloc and free were a fifth of a simulated run's
/// instructions; see docs/benchmarks.md). Built without transparent huge pages (`no_thp`):
/// with them a replica holding 100,000 jobs stayed at 182 MiB resident instead of 107.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Quartermaster: a scheduler for shared accelerator fleets (GPU, TPU, FPGA, IPU).
///
/// Client commands reach the replicas named by --server or QM_SERVER (default
/// 127.0.0.1:7070). Exit codes: 0 ok, 1 failed, 2 usage or invalid request, 3 not found,
/// 4 unavailable, 5 refused by the cluster's state or policy.
#[derive(Debug, Parser)]
#[command(name = "qm", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Runs a one-replica scheduler and a local agent with fake GPUs, data in a temporary
    /// directory, with the usual priority classes and a team `dev`.
    Dev(server::DevArgs),
    /// Runs the node agent: reports the node's accelerators and runs the jobs placed on it
    /// (`qm agent probe` prints what it finds).
    Agent(agent::AgentArgs),
    /// Prints a shell completion script: `qm completions bash > /etc/bash_completion.d/qm`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(client::ClientCommand),
}

impl Command {
    /// Whether the command asked for JSON, so that its errors come as JSON too.
    fn json(&self) -> bool {
        match self {
            Self::Plan(p) => p.json,
            Self::Sim(s) => s.json(),
            Self::Client(c) => c.target().json,
            _ => false,
        }
    }

    /// The default log filter: a replica says where it listens and what it does.
    fn log_filter(&self) -> &'static str {
        match self {
            Self::Server(_) | Self::Agent(_) => "info",
            _ => "warn",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QM_LOG").unwrap_or_else(|_| cli.command.log_filter().into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let json = cli.command.json();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => out::report(&e, json),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Version => {
            say!(
                "qm {} (api quartermaster.v1, snapshot formats 1 to {})",
                env!("CARGO_PKG_VERSION"),
                qm_core::state::SNAPSHOT_VERSION
            );
            Ok(())
        }
        Command::Plan(args) => plan::run(&args),
        Command::Sim(cmd) => sim::run(&cmd),
        Command::Server(args) => server::serve(&args),
        Command::Dev(args) => server::dev(&args),
        Command::Agent(args) => agent::agent(&args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "qm", &mut script);
            out::write(format_args!("{}", String::from_utf8_lossy(&script)));
            Ok(())
        }
        Command::Client(cmd) => client::run(&cmd),
    }
}
