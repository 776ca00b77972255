use std::process::ExitCode;

use clap::Parser;
use cowork_vm_service::cli::{Cli, Command, normalize_argv};
use cowork_vm_service::{agent, daemon, run};

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
        Some(Command::Agent(args)) => agent::main(args.fd),
        None => daemon::main(cli.socket),
    }
}
