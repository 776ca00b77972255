//! `cowork-vm-service run`: one command, from a shell, through the same
//! protocol the desktop client uses.
//!
//! Without `--socket`, an embedded daemon serves a private socket in a
//! temporary directory for the duration of the command; with `--socket`,
//! a running daemon is used. The command is a `spawn` in session `--session`
//! (default `cli`): its output streams to the terminal, stdin is forwarded,
//! Ctrl-C sends SIGINT (twice: SIGKILL), and the exit status is the
//! command's (128 + signal when killed). An unisolated backend is announced
//! loudly on stderr.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use std::process::ExitCode;

use anyhow::{Context, bail};
use cowork_policy::mounts::{MountMode, MountRules, check_mount_source};
use cowork_policy::names::validate_mount_name;
use cowork_protocol::text::Utf8Stream;
use serde_json::{Map, Value, json};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::backend::netns::EgressSettings;
use crate::backend::probe::RealProbe;
use crate::cli::RunArgs;
use crate::client::Connection;
use crate::daemon::{self, Server};
use crate::dirs::Dirs;
use crate::logging;
use crate::real_fs::RealFs;
use crate::socket;
use std::sync::Arc;

/// What runs when no command is given: a short report of the environment
/// as the command sees it.
pub const DEFAULT_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "echo \"user:      $(id -un) (uid $(id -u))\"; \
     echo \"cwd:       $PWD\"; \
     echo \"processes: $(ls -d /proc/[0-9]* 2>/dev/null | wc -l) visible\"; \
     echo \"home:      $HOME ($(ls -A \"$HOME\" 2>/dev/null | wc -l) entries)\"; \
     echo \"mounts:    $(ls /sessions/*/mnt 2>/dev/null | tr '\\n' ' ')\"",
];

/// A parsed `--mount HOST_DIR[:NAME][:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArg {
    pub host: PathBuf,
    pub name: Option<String>,
    pub mode: MountMode,
}

/// Parses a `--mount` value. A final `:ro` / `:rw` is the mode; a `:NAME`
/// before it names the mount.
pub fn parse_mount_arg(spec: &str) -> Result<MountArg, String> {
    let (rest, mode) = match spec.rsplit_once(':') {
        Some((r, "ro")) => (r, MountMode::ReadOnly),
        Some((r, "rw")) => (r, MountMode::ReadWrite),
        _ => (spec, MountMode::ReadWrite),
    };
    let (host, name) = match rest.rsplit_once(':') {
        Some((h, n)) => (h, Some(n.to_string()).filter(|n| !n.is_empty())),
        None => (rest, None),
    };
    if host.is_empty() {
        return Err(format!("--mount {spec:?}: the host folder is missing"));
    }
    Ok(MountArg {
        host: PathBuf::from(host),
        name,
        mode,
    })
}

/// A mount `run` will not ask for: exit status 2, like a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MountRefused(pub String);

/// Builds `additionalMounts` and the working directory for the spawn. A
/// mount the daemon would refuse is refused here first, with the daemon's
/// own reason, instead of running the command without it.
fn mounts_and_cwd(
    args: &RunArgs,
    cwd: &Path,
    rules: &MountRules,
) -> Result<(Map<String, Value>, String), MountRefused> {
    let mut requested: Vec<MountArg> = args
        .mounts
        .iter()
        .map(|m| parse_mount_arg(m))
        .collect::<Result<_, _>>()
        .map_err(MountRefused)?;
    if requested.is_empty() {
        if let Err(reason) = check_mount_source(cwd, rules, &RealFs) {
            return Err(MountRefused(format!(
                "the current directory cannot be the session's folder: {reason}; \
                 cd into a project folder or pass --mount DIR"
            )));
        }
        requested.push(MountArg {
            host: cwd.to_path_buf(),
            name: None,
            mode: MountMode::ReadWrite,
        });
    }
    let mut mounts = Map::new();
    let mut primary = None;
    for m in requested {
        let shown = m.host.display().to_string();
        let host = std::fs::canonicalize(cwd.join(&m.host))
            .map_err(|e| MountRefused(format!("--mount {shown}: {e}")))?;
        if !host.is_dir() {
            return Err(MountRefused(format!(
                "--mount {shown}: {} is not a directory",
                host.display()
            )));
        }
        check_mount_source(&host, rules, &RealFs)
            .map_err(|reason| MountRefused(format!("--mount {shown}: {reason}")))?;
        let name = m.name.clone().unwrap_or_else(|| {
            host.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "root".into())
        });
        validate_mount_name(&name)
            .map_err(|e| MountRefused(format!("--mount {shown}: mount name {name:?}: {e}")))?;
        if mounts.contains_key(&name) {
            return Err(MountRefused(format!(
                "--mount {shown}: a mount named {name:?} is given twice; name one with DIR:NAME"
            )));
        }
        if primary.is_none() && !name.starts_with('.') && name != "uploads" {
            primary = Some(name.clone());
        }
        let subpath = host.to_string_lossy().trim_start_matches('/').to_string();
        mounts.insert(name, json!({"path": subpath, "mode": m.mode.as_str()}));
    }
    let workdir = match primary {
        Some(p) => format!("/sessions/{}/mnt/{p}", args.session),
        None => cwd.to_string_lossy().into_owned(),
    };
    Ok((mounts, workdir))
}

fn env_map(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut env = Map::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--env {pair:?}: expected KEY=VALUE");
        };
        env.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(env)
}

pub fn main(args: RunArgs) -> ExitCode {
    let dirs = Dirs::from_env();
    let log = logging::init(&dirs.log_file(), logging::debug_from_env(), false);
    daemon::install_panic_hook();
    crate::sys::fds::raise_nofile_limit();
    let runtime = match daemon::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cowork-vm-service run: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(args, dirs, log));
    // A stdin reader may still be blocked in read(2); do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let code = if e.downcast_ref::<MountRefused>().is_some() {
                2
            } else {
                125
            };
            eprintln!("cowork-vm-service run: {}", crate::cli::error_chain(&e));
            ExitCode::from(code)
        }
    }
}

enum Control {
    Stdin(String, bool),
    Signal(&'static str),
}

/// The command line to run: `-c STRING`, the given command, or the report.
fn command_line(args: &RunArgs) -> (Vec<String>, bool) {
    if let Some(script) = &args.shell_command {
        return (vec!["sh".into(), "-c".into(), script.clone()], false);
    }
    if args.command.is_empty() {
        return (
            DEFAULT_COMMAND.iter().map(|s| s.to_string()).collect(),
            true,
        );
    }
    (args.command.clone(), false)
}

/// What the daemon serving us says about isolation.
struct Isolation {
    backend: String,
    isolated: bool,
    reason: String,
    warnings: Vec<String>,
}

impl Isolation {
    fn from_info(info: &Value) -> Self {
        let text = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        Self {
            backend: text("backend"),
            isolated: info.get("isolated") == Some(&Value::Bool(true)),
            reason: text("reason"),
            warnings: info
                .get("warnings")
                .and_then(Value::as_array)
                .map(|w| {
                    w.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The one line printed before an unisolated command's output.
    fn unisolated_line(&self) -> String {
        let why = self
            .warnings
            .iter()
            .find(|w| !w.contains("WITHOUT isolation"))
            .unwrap_or(&self.reason);
        format!(
            "cowork-vm-service: NOT ISOLATED: the {} backend runs the command directly on this \
             machine ({why}); see `cowork-vm-service --doctor`",
            self.backend
        )
    }
}

async fn run(args: RunArgs, dirs: Dirs, log: logging::LogControl) -> anyhow::Result<i32> {
    // Ctrl-C belongs to the command from the moment it can run: the
    // handlers exist before the spawn is even asked for.
    let interrupts = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let terminations = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let cwd = std::env::current_dir().context("current directory")?;
    let (mounts, workdir) = mounts_and_cwd(&args, &cwd, &dirs.mount_rules())?;
    let env = env_map(&args.env)?;
    let (command, is_report) = command_line(&args);

    let mut _private_dir = None;
    let mut embedded = None;
    let socket_path = match &args.socket {
        Some(path) => path.clone(),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("cowork-run-")
                .tempdir()
                .context("private socket directory")?;
            let path = dir.path().join("cowork-vm-service.sock");
            let listener = socket::bind(&path)?;
            let mut probe = RealProbe::from_env();
            if let Some(b) = &args.backend {
                probe.override_value = Some(b.clone());
            }
            embedded = Some(Server::start(
                listener,
                dirs,
                log,
                probe,
                path.clone(),
                run_egress(),
            )?);
            _private_dir = Some(dir);
            path
        }
    };

    let mut events = Connection::connect(&socket_path).await?;
    events.subscribe().await?;
    let mut rpc = Connection::connect(&socket_path).await?;
    rpc.call("startVM", json!({})).await?;
    let isolation = Isolation::from_info(&rpc.call("getDaemonInfo", json!({})).await?);
    if is_report {
        println!(
            "backend:   {} ({})",
            isolation.backend,
            if isolation.isolated {
                "isolated: the command runs in a session sandbox"
            } else {
                "NOT isolated: the command runs directly on this machine"
            }
        );
        println!("reason:    {}", isolation.reason);
    } else if !isolation.isolated {
        eprintln!("{}", isolation.unisolated_line());
    }

    let id = format!("run-{}", std::process::id());
    let mut params = json!({
        "id": id,
        "name": args.session,
        "command": command[0],
        "args": command[1..],
        "cwd": workdir,
        "additionalMounts": mounts,
        "isResume": false,
    });
    if !env.is_empty() {
        params["env"] = Value::Object(env);
    }
    // No flag, no network: `[]` (an absent list would mean "any public
    // host" to the daemon, as for older clients).
    params["allowedDomains"] = json!(args.allow_domains);
    rpc.call("spawn", params).await?;

    let (control_tx, mut control_rx) = mpsc::channel::<Control>(16);
    let rpc_id = id.clone();
    let rpc_task = tokio::spawn(async move {
        while let Some(c) = control_rx.recv().await {
            let result = match c {
                Control::Stdin(data, eof) => {
                    rpc.call(
                        "writeStdin",
                        json!({"id": rpc_id, "data": data, "eof": eof}),
                    )
                    .await
                }
                Control::Signal(sig) => {
                    rpc.call("kill", json!({"id": rpc_id, "signal": sig})).await
                }
            };
            if let Err(e) = result {
                tracing::debug!("run: {e}");
            }
        }
        rpc
    });
    tokio::spawn(forward_stdin(control_tx.clone()));
    tokio::spawn(forward_signals(control_tx, interrupts, terminations));

    let code = loop {
        let event = events.next_frame().await?;
        if event.get("id").and_then(Value::as_str) != Some(id.as_str()) {
            continue;
        }
        let data = || {
            event
                .get("data")
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        match event.get("type").and_then(Value::as_str) {
            Some("stdout") => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(data().as_bytes());
                let _ = out.flush();
            }
            Some("stderr") => {
                let _ = std::io::stderr().write_all(data().as_bytes());
            }
            Some("exit") => {
                let code = event.get("exitCode").and_then(Value::as_i64);
                let signal = event.get("signal").and_then(Value::as_str);
                break match (code, signal) {
                    (Some(c), _) => c as i32,
                    (None, Some(name)) => 128 + signal_number(name),
                    (None, None) => 1,
                };
            }
            _ => {}
        }
    };
    rpc_task.abort();
    if is_report {
        println!(
            "\nnext:      cowork-vm-service run -- bash          (a shell in the session)\n           \
             cowork-vm-service run --mount DIR:ro -- ls   (another folder, read-only)\n           \
             cowork-vm-service run -c 'CMD | CMD'         (a shell command line)\n           \
             cowork-vm-service --doctor                   (what this machine supports)"
        );
    }
    if let Some(server) = embedded {
        server.stop().await;
    }
    Ok(code)
}

/// Refusals tell how to allow the host, and the first one for each host is
/// also printed on our stderr (the command's own output may hide a 403).
fn run_egress() -> EgressSettings {
    EgressSettings {
        hint: "run with --allow-domain {host} to allow it".to_string(),
        hook: Some(Arc::new(|event: &cowork_netproxy::DenialEvent| {
            eprintln!(
                "cowork-vm-service: network access to {} was blocked ({}); run with \
                 --allow-domain {} to allow it",
                event.host(),
                event.reason(),
                event.host()
            );
        })),
    }
}

fn signal_number(name: &str) -> i32 {
    cowork_policy::signal::parse_signal(name).number()
}

async fn forward_stdin(tx: mpsc::Sender<Control>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    let mut decoder = Utf8Stream::new();
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Control::Stdin(decoder.finish(), true)).await;
                return;
            }
            Ok(n) => {
                let text = decoder.decode(&buf[..n]);
                if !text.is_empty() && tx.send(Control::Stdin(text, false)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn forward_signals(
    tx: mpsc::Sender<Control>,
    mut int: tokio::signal::unix::Signal,
    mut term: tokio::signal::unix::Signal,
) {
    let mut interrupts = 0;
    loop {
        let sig = tokio::select! {
            _ = int.recv() => {
                interrupts += 1;
                if interrupts > 1 { "SIGKILL" } else { "SIGINT" }
            }
            _ = term.recv() => "SIGTERM",
        };
        if tx.send(Control::Signal(sig)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn mount_arg_table() {
        let m = |host: &str, name: Option<&str>, mode| MountArg {
            host: host.into(),
            name: name.map(Into::into),
            mode,
        };
        let cases = [
            ("/p", Ok(m("/p", None, MountMode::ReadWrite))),
            ("/p:proj", Ok(m("/p", Some("proj"), MountMode::ReadWrite))),
            ("/p:proj:ro", Ok(m("/p", Some("proj"), MountMode::ReadOnly))),
            ("/p:ro", Ok(m("/p", None, MountMode::ReadOnly))),
            ("/p::ro", Ok(m("/p", None, MountMode::ReadOnly))),
            (
                "rel/dir:x:rw",
                Ok(m("rel/dir", Some("x"), MountMode::ReadWrite)),
            ),
            (":x", Err(())),
        ];
        for (spec, want) in cases {
            assert_eq!(parse_mount_arg(spec).map_err(|_| ()), want, "{spec}");
        }
    }

    #[test]
    fn env_pairs() {
        assert_eq!(
            env_map(&["A=1".into(), "B=x=y".into()]).unwrap()["B"],
            "x=y"
        );
        assert!(env_map(&["nope".into()]).is_err());
    }
}
