//! Command line.
//!
//! ```text
//! cowork-vm-service [SCRIPT.js] [-socket PATH | --socket PATH]   serve (the daemon)
//! cowork-vm-service --doctor [--json]                             diagnose
//! cowork-vm-service run [OPTIONS] -- CMD [ARGS...]                run one command
//! cowork-vm-service -e SCRIPT                                     the launcher's runtime probe
//! cowork-vm-service install-client [--dry-run] [--replace-script P] hook Claude Desktop up
//! cowork-vm-service completions SHELL                             shell completions
//! ```
//!
//! The desktop client's launchers pass `-socket PATH` (one dash) and, with
//! `COWORK_NODE_PATH` pointing at this binary, a leading script path
//! (`.../cowork-vm-service.js`); both are accepted ([`normalize_argv`]).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cowork-vm-service",
    version,
    about = "Linux sandbox helper for Claude Desktop's Cowork mode",
    long_about = "Serves the Cowork VM-service socket protocol for Claude Desktop on Linux, \
                  running each session's commands in a bubblewrap sandbox (or, as a fallback, \
                  directly on the host). Without a subcommand it runs the daemon.",
    after_help = "Environment: COWORK_VM_BACKEND=bwrap|kvm|host, COWORK_VM_DEBUG=1, \
                  CLAUDE_LINUX_DEBUG=1, COWORK_VM_VIRTIOFSD_BIN, COWORK_VM_IDLE_TIMEOUT_SECS, \
                  XDG_RUNTIME_DIR, XDG_CONFIG_HOME, XDG_DATA_HOME. See the README."
)]
pub struct Cli {
    /// Unix socket to serve (default: ${XDG_RUNTIME_DIR:-/tmp}/cowork-vm-service.sock).
    /// `-socket PATH` is accepted too. With --doctor: the daemon socket to check.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Diagnose this machine: which backend Cowork gets, why, and how to fix problems.
    #[arg(long)]
    pub doctor: bool,

    /// With --doctor: print JSON instead of text.
    #[arg(long, requires = "doctor")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one command in a session sandbox, streaming its output; exits with its status.
    Run(RunArgs),
    /// Same as --doctor.
    Doctor(DoctorArgs),
    /// Internal: the in-sandbox agent (pid 1 of a session sandbox).
    #[command(hide = true)]
    Agent(AgentArgs),
    /// Hook Claude Desktop up to this binary: COWORK_VM_BACKEND=bwrap and
    /// COWORK_NODE_PATH=<this binary> in claude-desktop-debian's launcher
    /// environment file (earlier values are kept for uninstall-client).
    #[command(after_help = CLIENT_HELP)]
    InstallClient(ClientArgs),
    /// Undo install-client: the environment file (and a replaced script) as they were.
    #[command(after_help = CLIENT_HELP)]
    UninstallClient(ClientArgs),
    /// Print a shell completion script to stdout.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions(CompletionsArgs),
    /// Prepare the microVM backend (COWORK_VM_BACKEND=kvm): fetch the Debian
    /// cloud kernel into ${XDG_CACHE_HOME:-~/.cache}/cowork-vm-service/guest
    /// (no root needed) and say what else is missing.
    SetupVm(SetupVmArgs),
    /// Internal: write the man pages (packaging).
    #[command(hide = true)]
    Manpage(ManpageArgs),
}

const CLIENT_HELP: &str = "The file is ${XDG_CONFIG_HOME:-~/.config}/claude-desktop-debian/environment \
(KEY=value lines read by the launcher). Restart Claude Desktop afterwards.";

const COMPLETIONS_HELP: &str = "Install for your user, e.g.:
  bash: cowork-vm-service completions bash > ~/.local/share/bash-completion/completions/cowork-vm-service
  zsh:  cowork-vm-service completions zsh > ~/.zfunc/_cowork-vm-service  (with fpath+=(~/.zfunc) before compinit)
  fish: cowork-vm-service completions fish > ~/.config/fish/completions/cowork-vm-service.fish
The .deb installs them system-wide.";

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Show the change as a diff and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// 2.x client (or any launcher that runs a .js file): also put the shim
    /// (contrib/cowork-vm-service.js) in place of the reference daemon's script
    /// at PATH, keeping the original as PATH.cowork-vm-service-backup.
    #[arg(long, value_name = "PATH")]
    pub replace_script: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// Directory to write cowork-vm-service.1 and one page per subcommand into.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Backend to use for the embedded daemon
    /// (default: COWORK_VM_BACKEND, else auto-detect).
    #[arg(long, value_name = "BACKEND", value_parser = ["bwrap", "kvm", "host"])]
    pub backend: Option<String>,

    /// Connect to the daemon at PATH instead of starting one.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Run STRING with `sh -c` (instead of CMD ARGS...).
    #[arg(short = 'c', value_name = "STRING", conflicts_with = "command")]
    pub shell_command: Option<String>,

    /// Let the command reach PATTERN through the sandbox's proxy
    /// (repeatable): a host name, `*.example.com` (subdomains), an IP
    /// literal, optionally `:PORT`; `*` allows every public host. Without
    /// it the command has no network.
    #[arg(long = "allow-domain", value_name = "PATTERN")]
    pub allow_domains: Vec<String>,

    /// Folder to mount into the session (repeatable). NAME defaults to the
    /// folder's name; add `:ro` for read-only. The first plain mount is the
    /// working directory. Default: the current directory, read-write.
    #[arg(long = "mount", value_name = "HOST_DIR[:NAME][:ro]")]
    pub mounts: Vec<String>,

    /// Environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Session name: commands of one session share /tmp and background jobs.
    #[arg(long, value_name = "NAME", default_value = "cli")]
    pub session: String,

    /// The command and its arguments (default: a short report of what the
    /// sandbox looks like from inside).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SetupVmArgs {
    /// Where to prepare the guest (default: COWORK_VM_GUEST_DIR, else the cache).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// The daemon socket to check (default: the daemon's default socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Descriptor of the channel to the daemon.
    #[arg(long, value_name = "FD")]
    pub fd: i32,

    /// Serve the host backend (no sandbox around the agent).
    #[arg(long)]
    pub host: bool,
}

impl AgentArgs {
    pub fn mode(&self) -> AgentMode {
        if self.host {
            AgentMode::Host
        } else {
            AgentMode::Sandbox
        }
    }
}

/// Where the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// Pid 1 of a session sandbox (or init of a VM).
    Sandbox,
    /// On the host, for the host backend: no confinement, but every
    /// descendant of its processes stays in its subtree (subreaper).
    Host,
    /// In the `kvm` backend's VM, forked by its init (`agent::guest_init`)
    /// and serving a virtio-serial port: confined like a sandbox's agent,
    /// and a subreaper (it is not pid 1 there).
    Guest,
}

/// The agent's descriptor and mode when `argv` is exactly how the daemon
/// starts it (`PROGRAM agent --fd N [--host]`), else `None` and clap parses
/// as usual.
///
/// The agent is executed once per sandbox, on the path of a session's
/// first command; building the whole clap command tree costs more there
/// than the rest of the agent's start-up.
pub fn agent_fast_path(argv: &[OsString]) -> Option<(i32, AgentMode)> {
    match argv {
        [_, sub, flag, fd] if sub == "agent" && flag == "--fd" => {
            Some((fd.to_str()?.parse().ok()?, AgentMode::Sandbox))
        }
        [_, sub, flag, fd, host] if sub == "agent" && flag == "--fd" && host == "--host" => {
            Some((fd.to_str()?.parse().ok()?, AgentMode::Host))
        }
        _ => None,
    }
}

/// The script the launcher of claude-desktop-debian (and its `--doctor`)
/// runs with `$COWORK_NODE_PATH -e` to check that the runtime can run the
/// daemon: `fs.statfsSync` must exist. This binary is the daemon, so the
/// answer is yes.
const LAUNCHER_PROBE: &str = r#"process.exit(typeof require("fs").statfsSync==="function"?0:1)"#;

/// What `-e SCRIPT` / `--eval SCRIPT` answers, when `argv` is that form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalAnswer {
    /// The launcher's capability probe: exit 0.
    CapabilityProbe,
    /// Any other script: exit 1 with this message.
    NotJavaScript(String),
}

/// `PROGRAM -e SCRIPT` (or `--eval`): the launcher treats this binary as
/// a JavaScript runtime (`COWORK_NODE_PATH`). Only its capability probe is
/// answered; quotes and blanks may differ from the canonical text.
pub fn eval_probe(argv: &[OsString]) -> Option<EvalAnswer> {
    let [_, flag, script] = argv else {
        return None;
    };
    if flag != "-e" && flag != "--eval" {
        return None;
    }
    let canonical = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != ';')
            .map(|c| if c == '\'' || c == '`' { '"' } else { c })
            .collect()
    };
    let script = script.to_string_lossy();
    if canonical(&script) == canonical(LAUNCHER_PROBE) {
        Some(EvalAnswer::CapabilityProbe)
    } else {
        Some(EvalAnswer::NotJavaScript(
            "cowork-vm-service is not a JavaScript runtime: of `-e` scripts it answers only the \
             launcher's capability probe (fs.statfsSync)"
                .to_string(),
        ))
    }
}

/// An error and its causes on one line, each cause once: error types that
/// already name their source in their message (`cannot bind X: Permission
/// denied`) are not followed by the same text again.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Rewrites the launcher-style arguments into ones clap understands: a
/// leading `*.js` script path is dropped, `-socket` becomes `--socket`.
pub fn normalize_argv(argv: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len());
    let mut iter = argv.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut first = true;
    for arg in iter {
        let text = arg.to_string_lossy();
        if first && text.ends_with(".js") && !text.starts_with('-') {
            first = false;
            continue;
        }
        first = false;
        if text == "-socket" {
            out.push("--socket".into());
        } else if let Some(value) = text.strip_prefix("-socket=") {
            out.push(format!("--socket={value}").into());
        } else {
            out.push(arg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_argv(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn error_chains_name_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        #[derive(Debug, thiserror::Error)]
        #[error("cannot bind /s: {source}")]
        struct Bind {
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Bind { source: io }).context("starting the daemon");
        let line = error_chain(&e);
        assert_eq!(
            line,
            "starting the daemon: cannot bind /s: permission denied"
        );
        let plain = anyhow::anyhow!("one").context("two");
        assert_eq!(error_chain(&plain), "two: one");
    }

    #[test]
    fn normalize_table() {
        let cases: [(&[&str], &[&str]); 7] = [
            (&["bin"], &["bin"]),
            (
                &[
                    "bin",
                    "/opt/res/cowork-vm-service.js",
                    "-socket",
                    "/run/u/x.sock",
                ],
                &["bin", "--socket", "/run/u/x.sock"],
            ),
            (&["bin", "-socket", "/s"], &["bin", "--socket", "/s"]),
            (&["bin", "-socket=/s"], &["bin", "--socket=/s"]),
            (&["bin", "--socket", "/s"], &["bin", "--socket", "/s"]),
            (
                &["bin", "run", "--", "node", "x.js"],
                &["bin", "run", "--", "node", "x.js"],
            ),
            (&["bin", "x.js"], &["bin"]),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want.to_vec(), "{input:?}");
        }
    }

    #[test]
    fn eval_answers_only_the_launchers_capability_probe() {
        let probe =
            |script: &str| eval_probe(&["node".into(), "-e".into(), OsString::from(script)]);
        let yes = Some(EvalAnswer::CapabilityProbe);
        for script in [
            r#"process.exit(typeof require("fs").statfsSync==="function"?0:1)"#,
            r#"process.exit(typeof require('fs').statfsSync === 'function' ? 0 : 1);"#,
        ] {
            assert_eq!(probe(script), yes, "{script}");
        }
        for script in [
            "console.log(1)",
            "process.exit(0)",
            r#"process.exit(typeof require("fs").statfsSync==="function"?1:0)"#,
            "",
        ] {
            assert!(
                matches!(probe(script), Some(EvalAnswer::NotJavaScript(m)) if m.contains("not a JavaScript runtime")),
                "{script}"
            );
        }
        let long = eval_probe(&["n".into(), "--eval".into(), "x".into()]);
        assert!(matches!(long, Some(EvalAnswer::NotJavaScript(_))));
        for argv in [
            &["n", "-e"][..],
            &["n", "--version"],
            &["n", "-e", "x", "y"],
            &["n", "run", "x"],
        ] {
            let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
            assert_eq!(eval_probe(&argv), None, "{argv:?}");
        }
    }

    #[test]
    fn run_takes_dash_c_only_backends_it_knows_and_its_own_socket() {
        let parse = |a: &[&str]| Cli::try_parse_from(a.iter().map(OsString::from));
        match parse(&["c", "run", "-c", "echo hi | wc -c"])
            .unwrap()
            .command
        {
            Some(Command::Run(r)) => {
                assert_eq!(r.shell_command.as_deref(), Some("echo hi | wc -c"));
                assert!(r.command.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["c", "run", "-c", "x", "--", "ls"]).is_err());
        for b in ["bwrap", "kvm", "host"] {
            assert!(
                parse(&["c", "run", "--backend", b, "--", "true"]).is_ok(),
                "{b}"
            );
        }
        assert!(parse(&["c", "run", "--backend", "docker", "--", "true"]).is_err());
        match parse(&["c", "run", "--socket", "/s", "--", "true"])
            .unwrap()
            .command
        {
            Some(Command::Run(r)) => assert_eq!(r.socket, Some(PathBuf::from("/s"))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_every_invocation() {
        let parse = |a: &[&str]| {
            Cli::try_parse_from(normalize_argv(a.iter().map(OsString::from).collect()))
        };
        let legacy = parse(&["c", "s.js", "-socket", "/s"]).unwrap();
        assert_eq!(legacy.socket, Some(PathBuf::from("/s")));
        assert!(legacy.command.is_none());
        let run = parse(&["c", "run", "--mount", "/p:proj:ro", "--", "ls", "-la"]).unwrap();
        match run.command {
            Some(Command::Run(r)) => {
                assert_eq!(r.command, ["ls", "-la"]);
                assert_eq!(r.mounts, ["/p:proj:ro"]);
                assert_eq!(r.session, "cli");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["c", "--doctor", "--json"]).unwrap().doctor);
        assert!(parse(&["c", "--json"]).is_err());
        assert!(parse(&["c", "agent", "--fd", "3"]).is_ok());
    }

    #[test]
    fn agent_fast_path_takes_only_the_daemons_exact_form() {
        let cases: [(&[&str], Option<(i32, AgentMode)>); 10] = [
            (&["c", "agent", "--fd", "0"], Some((0, AgentMode::Sandbox))),
            (
                &["c", "agent", "--fd", "17"],
                Some((17, AgentMode::Sandbox)),
            ),
            (
                &["c", "agent", "--fd", "0", "--host"],
                Some((0, AgentMode::Host)),
            ),
            (&["c", "agent", "--fd", "0", "--hostx"], None),
            (&["c", "agent", "--fd", "x"], None),
            (&["c", "agent", "--fd=3"], None),
            (&["c", "agent", "--fd", "3", "extra"], None),
            (&["c", "agent"], None),
            (&["c", "run", "--fd", "3"], None),
            (&["c", "--socket", "/s", "agent"], None),
        ];
        for (argv, want) in cases {
            let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
            let fast = agent_fast_path(&argv);
            assert_eq!(fast, want, "{argv:?}");
            // Whatever the fast path accepts, clap reads the same way.
            if let Some((fd, mode)) = fast {
                match Cli::try_parse_from(&argv).map(|c| c.command) {
                    Ok(Some(Command::Agent(a))) => assert_eq!((a.fd, a.mode()), (fd, mode)),
                    other => panic!("clap disagrees on {argv:?}: {other:?}"),
                }
            }
        }
    }
}
