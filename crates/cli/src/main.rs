//! `quorumkv`: the one user-facing binary.

mod bench;
mod check;
mod client_cmds;
mod demo;
mod server;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// quorumkv: a distributed key-value database that proves what it promises.
#[derive(Parser, Debug)]
#[command(name = "quorumkv", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node (every config key is also a flag and a QUORUMKV_* variable).
    Server(server::ConfigArgs),
    /// A local cluster of separate server processes, data under ./quorumkv-data.
    Demo(demo::DemoArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Load generator speaking the etcd v3 API (drives quorumkv and etcd alike).
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(client_cmds::ClientCommand),
    /// Fault injection against real server processes (Jepsen-style), with a report.
    Check(check::CheckArgs),
    /// Deterministic simulation sweep of the Raft core under injected faults.
    Sim(sim::SimArgs),
    /// Check a recorded history (JSON lines) for linearizability.
    Verify {
        /// The history file.
        file: PathBuf,
        /// The model the history is checked against.
        #[arg(long, value_enum, default_value_t = ModelArg::Kv)]
        model: ModelArg,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the effective configuration (file, environment and flags merged) as TOML.
    Dump(server::ConfigArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModelArg {
    /// One register: read, write, cas.
    Register,
    /// A map of registers, checked key by key: read, write, cas, delete.
    Kv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = |r: anyhow::Result<()>| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    match cli.command {
        Command::Server(args) => done(server::run(args)),
        Command::Demo(args) => done(demo::run(args)),
        Command::Config { command: ConfigCommand::Dump(args) } => done(server::dump(args)),
        Command::Bench(args) => done(bench::run(args)),
        Command::Client(c) => client_cmds::run(c),
        Command::Check(args) => check::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Verify { file, model } => {
            let model = match model {
                ModelArg::Register => quorumkv_check::model::ModelKind::Register,
                ModelArg::Kv => quorumkv_check::model::ModelKind::Kv,
            };
            let exit = quorumkv_check::verify::verify_path(&file, model, &mut std::io::stdout());
            ExitCode::from(exit.code() as u8)
        }
    }
}
