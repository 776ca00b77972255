use std::process::ExitCode;

use clap::Parser;
use cowork_vm_service::cli::{
    Cli, Command, EvalAnswer, agent_fast_path, eval_probe, normalize_argv,
};
use cowork_vm_service::{agent, daemon, doctor, generate, hookup, run};

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    if agent::guest_init::is_guest_init(argv.first().map(|a| a.as_os_str())) {
        return agent::guest_init::main();
    }
    if argv
        .get(1)
        .is_some_and(|a| a == cowork_vm_service::backend::kvm::guard::GUARD_SUBCOMMAND)
    {
        return cowork_vm_service::backend::kvm::guard::main(&argv[2..]);
    }
    if argv
        .get(1)
        .is_some_and(|a| a == cowork_vm_service::sys::exec_stub::EXEC_STUB_SUBCOMMAND)
    {
        return cowork_vm_service::sys::exec_stub::main(&argv[2..]);
    }
    if let Some((fd, mode)) = agent_fast_path(&argv) {
        return agent::main(fd, mode);
    }
    match eval_probe(&argv) {
        Some(EvalAnswer::CapabilityProbe) => return ExitCode::SUCCESS,
        Some(EvalAnswer::NotJavaScript(message)) => {
            eprintln!("{message}");
            return ExitCode::from(1);
        }
        None => {}
    }
    // Under sudo, become the invoking user before anything else (and
    // before any thread exists): a sandbox must not get host uid 0.
    match cowork_vm_service::sys::privileges::become_invoking_user() {
        Ok(Some(user)) => eprintln!(
            "cowork-vm-service: started by sudo: running as {} (uid {})",
            user.name, user.uid
        ),
        Ok(None) => {}
        Err(e) => {
            eprintln!("cowork-vm-service: {e}");
            return ExitCode::from(2);
        }
    }
    // Nothing a launcher leaked may reach what we start (sandboxes
    // included): the agent does the same for itself.
    if let Err(e) = cowork_vm_service::sys::fds::cloexec_inherited(&[]) {
        eprintln!("cowork-vm-service: cannot mark inherited descriptors close-on-exec: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(normalize_argv(argv));
    match cli.command {
        Some(Command::Run(args)) => run::main(args),
        Some(Command::Doctor(args)) => {
            doctor::main(args.json || cli.json, args.socket.or(cli.socket))
        }
        None if cli.doctor => doctor::main(cli.json, cli.socket),
        Some(Command::Agent(args)) => agent::main(args.fd, args.mode()),
        Some(Command::InstallClient(args)) => hookup::install_main(&args),
        Some(Command::UninstallClient(args)) => hookup::uninstall_main(&args),
        Some(Command::Completions(args)) => generate::completions_main(args.shell),
        Some(Command::SetupVm(args)) => cowork_vm_service::backend::kvm::setup_vm_main(args.dir),
        Some(Command::Manpage(args)) => generate::manpage_main(&args.out_dir),
        None => daemon::main(cli.socket),
    }
}
