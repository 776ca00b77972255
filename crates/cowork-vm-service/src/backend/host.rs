//! The host backend: processes run directly on the host, as children of the
//! daemon, with no isolation. Guest paths in the working directory, the
//! environment and the arguments are translated to host paths.
//!
//! Each child leads its own process group (`kill` signals the group). It
//! is started with `posix_spawn` (no `pre_exec`, so std can use vfork: a
//! fork of the multi-threaded daemon costs more than the whole spawn), and
//! its group is registered with the [`OrphanGuard`], which kills it if the
//! daemon dies on `kill -9`. A grandchild that leaves its group survives
//! that; the bwrap backend contains everything in a pid namespace.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use cowork_policy::args::clean_spawn_args;
use cowork_policy::command::{resolve_command, resolve_work_dir};
use cowork_policy::env::translate_for_host;
use cowork_policy::selection::BackendKind;
use cowork_protocol::params::StartVmParams;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;

use super::{Backend, BackendError, SpawnJob, Spawned, VmFlags};
use crate::child_setup::exec_failure_code;
use crate::orphan_guard::OrphanGuard;
use crate::process_events::ProcessEvents;
use crate::processes::{ControlError, ProcessControl};
use crate::real_fs::RealFs;
use crate::supervise::{ExitInfo, supervise};

pub struct HostBackend {
    home: std::path::PathBuf,
    running: VmFlags,
    guard: Option<Arc<OrphanGuard>>,
}

impl HostBackend {
    pub fn new(home: std::path::PathBuf) -> Self {
        Self {
            home,
            running: VmFlags::default(),
            guard: match OrphanGuard::start() {
                Ok(g) => Some(Arc::new(g)),
                Err(e) => {
                    tracing::warn!(
                        "cannot start the orphan guard ({e}): host processes may outlive a killed daemon"
                    );
                    None
                }
            },
        }
    }
}

#[async_trait]
impl Backend for HostBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Host
    }

    fn is_isolated(&self) -> bool {
        false
    }

    async fn start(&self, _params: &StartVmParams) -> Result<(), BackendError> {
        self.running.set(true);
        Ok(())
    }

    async fn stop(&self) {
        self.running.set(false);
    }

    fn is_running(&self) -> bool {
        self.running.get()
    }

    fn is_guest_connected(&self) -> bool {
        self.running.get()
    }

    async fn spawn(&self, job: SpawnJob, events: ProcessEvents) -> Result<Spawned, BackendError> {
        let fs = RealFs;
        let mut env = job.env;
        translate_for_host(&mut env, &job.mounts, &self.home, &fs);
        let cwd = resolve_work_dir(
            job.cwd.as_deref(),
            job.shared_cwd_path.as_deref(),
            &job.mounts,
            &self.home,
            &fs,
        );
        // The inherited PWD is the daemon's; children expect their own.
        env.insert("PWD".into(), cwd.to_string_lossy().into_owned());
        let program = match resolve_command(
            &job.command,
            job.sdk_binary.as_deref(),
            env.get("PATH").map(String::as_str),
            &fs,
        ) {
            Ok(p) => p,
            Err(not_found) => {
                events
                    .failed_to_start(&job.id, &not_found.to_string(), 127)
                    .await;
                return Ok(Spawned::Ended);
            }
        };
        let args = clean_spawn_args(&job.args, &job.mounts, &fs);
        tracing::debug!(
            "host spawn {}: {} {:?} in {}",
            job.id,
            program.display(),
            args,
            cwd.display()
        );
        match start_child(
            &program,
            &args,
            &env,
            &cwd,
            job.id.clone(),
            events.clone(),
            self.guard.clone(),
        ) {
            Ok(control) => Ok(Spawned::Running(control)),
            Err(e) => {
                let code = exec_failure_code(&e);
                let message = format!("cannot execute {}: {e}", program.display());
                events.failed_to_start(&job.id, &message, code).await;
                Ok(Spawned::Ended)
            }
        }
    }

    fn mount_path_reply(&self, _session: Option<&str>, _mount_name: &str, host: &Path) -> String {
        host.to_string_lossy().into_owned()
    }
}

/// Starts one child and the task that streams its output and reports its
/// exit. Must run inside the runtime (the pipes and the wait are tokio's).
fn start_child(
    program: &Path,
    args: &[String],
    env: &cowork_policy::env::EnvMap,
    cwd: &Path,
    id: String,
    events: ProcessEvents,
    guard: Option<Arc<OrphanGuard>>,
) -> std::io::Result<Arc<dyn ProcessControl>> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn()?;
    let pid = child
        .id()
        .and_then(|p| Pid::from_raw(p as i32))
        .ok_or_else(|| std::io::Error::other("child has no pid"))?;
    if let Some(g) = &guard {
        g.register(pid);
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stdin = child.stdin.take();
    let (stdin_tx, stdin_rx) = mpsc::channel(64);
    if let Some(stdin) = stdin {
        tokio::spawn(feed_stdin(stdin, stdin_rx));
    }
    let wait = async move {
        let status = child.wait().await;
        if let Some(g) = &guard {
            g.unregister(pid);
        }
        match status {
            Ok(status) => ExitInfo::from_status(status),
            Err(e) => {
                tracing::error!("waiting for pid {}: {e}", pid.as_raw_nonzero());
                ExitInfo {
                    code: None,
                    signal: None,
                }
            }
        }
    };
    tokio::spawn(supervise(id.clone(), stdout, stderr, wait, events));
    Ok(Arc::new(HostProcess {
        id,
        pgid: pid,
        stdin: stdin_tx,
    }))
}

struct StdinChunk {
    data: String,
    eof: bool,
}

async fn feed_stdin(mut stdin: ChildStdin, mut rx: mpsc::Receiver<StdinChunk>) {
    while let Some(chunk) = rx.recv().await {
        if !chunk.data.is_empty() && stdin.write_all(chunk.data.as_bytes()).await.is_err() {
            break;
        }
        if chunk.eof {
            break;
        }
    }
    // Dropping `stdin` closes the pipe: the child sees end-of-file.
}

struct HostProcess {
    id: String,
    pgid: Pid,
    stdin: mpsc::Sender<StdinChunk>,
}

#[async_trait]
impl ProcessControl for HostProcess {
    async fn signal(&self, signal: i32) -> Result<(), ControlError> {
        let sig = Signal::from_named_raw(signal).ok_or_else(|| ControlError::Signal {
            id: self.id.clone(),
            reason: format!("unsupported signal {signal}"),
        })?;
        kill_process_group(self.pgid, sig).map_err(|e| ControlError::Signal {
            id: self.id.clone(),
            reason: e.to_string(),
        })
    }

    async fn write_stdin(&self, data: String, eof: bool) -> Result<(), ControlError> {
        self.stdin
            .send(StdinChunk { data, eof })
            .await
            .map_err(|_| ControlError::StdinClosed(self.id.clone()))
    }
}
