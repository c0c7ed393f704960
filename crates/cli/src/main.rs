//! `quorumkv`: the one user-facing binary.

mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// quorumkv: a distributed key-value database that proves what it promises.
#[derive(Parser, Debug)]
#[command(name = "quorumkv", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModelArg {
    /// One register: read, write, cas.
    Register,
    /// A map of registers, checked key by key: read, write, cas, delete.
    Kv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
