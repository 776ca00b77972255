use std::process::ExitCode;

use clap::Parser;
use cowork_vm_service::cli::{Cli, Command, normalize_argv};
use cowork_vm_service::{agent, daemon, doctor, orphan_guard, run};

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_argv(std::env::args_os().collect()));
    match cli.command {
        Some(Command::Run(args)) => run::main(args, cli.socket),
        Some(Command::Doctor(args)) => doctor::main(args.json || cli.json, cli.socket),
        None if cli.doctor => doctor::main(cli.json, cli.socket),
        Some(Command::Agent(args)) => agent::main(args.fd),
        Some(Command::Guard) => orphan_guard::main(),
        None => daemon::main(cli.socket),
    }
}
