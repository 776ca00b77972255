//! Command line.
//!
//! ```text
//! cowork-vm-service [SCRIPT.js] [-socket PATH | --socket PATH]   serve (the daemon)
//! cowork-vm-service --doctor [--json]                             diagnose
//! cowork-vm-service run [OPTIONS] -- CMD [ARGS...]                run one command
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
    /// `-socket PATH` is accepted too.
    #[arg(long, global = true, value_name = "PATH")]
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
    /// Internal: kills the host backend's processes when the daemon dies.
    #[command(hide = true)]
    Guard,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Backend to use for the embedded daemon: bwrap, kvm or host
    /// (default: COWORK_VM_BACKEND, else auto-detect).
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,

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
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Descriptor of the channel to the daemon.
    #[arg(long, value_name = "FD")]
    pub fd: i32,
}

/// The agent's descriptor when `argv` is exactly how the daemon starts it
/// (`PROGRAM agent --fd N`), else `None` and clap parses as usual.
///
/// The agent is executed once per sandbox, on the path of a session's
/// first command; building the whole clap command tree costs more there
/// than the rest of the agent's start-up.
pub fn agent_fast_path(argv: &[OsString]) -> Option<i32> {
    match argv {
        [_, sub, flag, fd] if sub == "agent" && flag == "--fd" => fd.to_str()?.parse().ok(),
        _ => None,
    }
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
        let cases: [(&[&str], Option<i32>); 8] = [
            (&["c", "agent", "--fd", "0"], Some(0)),
            (&["c", "agent", "--fd", "17"], Some(17)),
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
            if let Some(fd) = fast {
                match Cli::try_parse_from(&argv).map(|c| c.command) {
                    Ok(Some(Command::Agent(a))) => assert_eq!(a.fd, fd),
                    other => panic!("clap disagrees on {argv:?}: {other:?}"),
                }
            }
        }
    }
}
