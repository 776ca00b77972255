use std::process::ExitCode;

use clap::Parser;
use cowork_vm_service::cli::{Cli, Command, agent_fast_path, normalize_argv};
use cowork_vm_service::{agent, daemon, doctor, orphan_guard, run};

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    if let Some(fd) = agent_fast_path(&argv) {
        return agent::main(fd);
    }
    let cli = Cli::parse_from(normalize_argv(argv));
    match cli.command {
        Some(Command::Run(args)) => run::main(args, cli.socket),
        Some(Command::Doctor(args)) => doctor::main(args.json || cli.json, cli.socket),
        None if cli.doctor => doctor::main(cli.json, cli.socket),
        Some(Command::Agent(args)) => agent::main(args.fd),
        Some(Command::Guard) => orphan_guard::main(),
        None => daemon::main(cli.socket),
    }
}
