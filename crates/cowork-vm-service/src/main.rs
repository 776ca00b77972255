use std::process::ExitCode;

use clap::Parser;
use cowork_vm_service::cli::{Cli, Command, normalize_argv};
use cowork_vm_service::{daemon, run};

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_argv(std::env::args_os().collect()));
    match cli.command {
        Some(Command::Run(args)) => run::main(args, cli.socket),
        Some(Command::Doctor(_)) | None if cli.doctor => {
            eprintln!("--doctor is not available yet");
            ExitCode::from(2)
        }
        Some(Command::Doctor(_)) => {
            eprintln!("doctor is not available yet");
            ExitCode::from(2)
        }
        Some(Command::Agent(_)) => {
            eprintln!("the agent is not available yet");
            ExitCode::from(2)
        }
        None => daemon::main(cli.socket),
    }
}
