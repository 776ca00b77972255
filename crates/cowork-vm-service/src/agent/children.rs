//! The agent's processes: starting them, feeding stdin, signalling their
//! groups, and reaping everything in the sandbox.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cowork_policy::command::resolve_command;
use cowork_protocol::agent::{AgentStatus, FromAgent, SpawnRequest, StdinWrite};
use cowork_protocol::event::Stream;
use rustix::process::{Pid, Signal, WaitOptions, kill_process_group, wait};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::child_signals::{ChildSignals, unblocked_during};
use super::{AgentMode, Outbox, descendants};
use crate::child_setup::exec_failure_code;
use crate::real_fs::RealFs;
use crate::supervise::{ExitInfo, OutputSink, supervise};

/// A chunk for a process's stdin and who waits for it to be written.
pub(crate) struct StdinChunk {
    pub note: StdinWrite,
    pub written: oneshot::Sender<Result<(), String>>,
}

struct Tracked {
    pgid: Pid,
    stdin: Option<mpsc::UnboundedSender<StdinChunk>>,
}

#[derive(Default)]
struct State {
    /// Processes the daemon asked for, by client id.
    tracked: HashMap<String, Tracked>,
    /// Exit notifications awaited, by pid.
    waiters: HashMap<i32, oneshot::Sender<ExitInfo>>,
}

/// A process started for the daemon and not yet supervised.
pub(crate) struct Launched {
    id: String,
    child: std::process::Child,
}

/// Why a process did not start, reported as the host backend does.
pub(crate) struct LaunchFailure {
    id: String,
    message: String,
    code: i32,
}

/// Starts the process `req` describes. It needs no runtime, so the agent
/// can start a sandbox's first command before its own set-up (see
/// `first_request`); the result goes to [`Children::settle`].
pub(crate) fn launch(req: SpawnRequest) -> Result<Launched, LaunchFailure> {
    let path = req.env.get("PATH").map(String::as_str);
    let program = match resolve_command(&req.command, None, path, &RealFs) {
        Ok(p) => p,
        Err(not_found) => {
            return Err(LaunchFailure {
                message: not_found.to_string(),
                id: req.id,
                code: 127,
            });
        }
    };
    let mut cmd = Command::new(&program);
    cmd.args(&req.args)
        .env_clear()
        .envs(&req.env)
        .current_dir(&req.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // No pre_exec: std then uses posix_spawn (vfork), and no_new_privs is
    // inherited from the agent itself (set in `agent::main`).
    match unblocked_during(|| cmd.spawn()) {
        Ok(child) => Ok(Launched { id: req.id, child }),
        Err(e) => Err(LaunchFailure {
            message: format!("cannot execute {}: {e}", program.display()),
            code: exec_failure_code(&e),
            id: req.id,
        }),
    }
}

#[derive(Clone)]
pub(crate) struct Children {
    state: Arc<Mutex<State>>,
    out: Outbox,
    reaper: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

impl Children {
    /// Starts the reaper; must run before any child exists.
    pub(crate) fn start(out: Outbox, _mode: AgentMode) -> std::io::Result<Self> {
        let children = Self {
            state: Arc::default(),
            out,
            reaper: Arc::default(),
        };
        let sigchld = ChildSignals::new()?;
        let reaper = children.clone();
        let task = tokio::spawn(async move {
            loop {
                reaper.reap();
                if let Err(e) = sigchld.recv().await {
                    eprintln!("cowork-vm-service agent: SIGCHLD descriptor: {e}");
                    return;
                }
            }
        });
        *children.reaper.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Ok(children)
    }

    /// Ends every process below the agent (SIGTERM, `grace`, then SIGKILL
    /// until none is left), reports the exits of the tracked ones, and
    /// stops the reaper.
    pub(crate) async fn terminate_all(&self, grace: Duration) {
        descendants::end_all(grace).await;
        // The last exits are reaped and their events sent by the
        // supervisors; give them a moment, then stop the reaper so nothing
        // holds the outbox any more.
        let start = std::time::Instant::now();
        while !self.lock().tracked.is_empty() && start.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(reaper) = self.reaper.lock().unwrap_or_else(|p| p.into_inner()).take() {
            reaper.abort();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Updates are single map operations; a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects every exited child; the ones the daemon asked for have
    /// waiters, the rest are re-parented orphans.
    fn reap(&self) {
        loop {
            // `wait`, not `waitpid(None)`: the latter is pid 0, our own process
            // group only, and every child runs in a group of its own.
            match wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let exit = ExitInfo {
                        code: status.exit_status(),
                        signal: status.terminating_signal(),
                    };
                    if let Some(tx) = self.lock().waiters.remove(&pid.as_raw_nonzero().get()) {
                        let _ = tx.send(exit);
                    }
                }
                Ok(None) => return,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }

    pub(crate) async fn spawn(&self, req: SpawnRequest) -> Result<u32, String> {
        let launched = launch(req);
        self.settle(launched).await
    }

    /// Supervises a launched process, or reports why it did not start (as
    /// the host backend does, with pid 0). A launched process must be
    /// settled before the reaper next runs: on this single-threaded runtime
    /// that means with no await in between, and `adopt` runs before this
    /// future's first await.
    pub(crate) async fn settle(
        &self,
        launched: Result<Launched, LaunchFailure>,
    ) -> Result<u32, String> {
        match launched {
            Ok(process) => self.adopt(process),
            Err(failure) => {
                // Exits whose SIGCHLD fell in the spawn window woke nobody.
                self.reap();
                self.sink()
                    .failed(&failure.id, &failure.message, failure.code)
                    .await;
                Ok(0)
            }
        }
    }

    fn sink(&self) -> AgentSink {
        AgentSink {
            out: self.out.clone(),
            children: self.clone(),
        }
    }

    fn adopt(&self, process: Launched) -> Result<u32, String> {
        let Launched { id, mut child } = process;
        let raw_pid = child.id();
        let pid = Pid::from_raw(raw_pid as i32).ok_or("child without pid")?;
        let (exit_tx, exit_rx) = oneshot::channel();
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        let stdin = child.stdin.take().map(OwnedFd::from);
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        {
            let mut state = self.lock();
            state.waiters.insert(raw_pid as i32, exit_tx);
            state.tracked.insert(
                id.clone(),
                Tracked {
                    pgid: pid,
                    stdin: Some(stdin_tx),
                },
            );
        }
        // The reaper owns the exit status; `child` is never waited on.
        drop(child);
        // Exits while SIGCHLD was unblocked for the spawn woke nobody.
        self.reap();
        let stdout = stdout
            .map(pipe::Receiver::from_owned_fd)
            .transpose()
            .map_err(|e| e.to_string())?;
        let stderr = stderr
            .map(pipe::Receiver::from_owned_fd)
            .transpose()
            .map_err(|e| e.to_string())?;
        if let Some(fd) = stdin {
            let writer = pipe::Sender::from_owned_fd(fd).map_err(|e| e.to_string())?;
            tokio::spawn(feed_stdin(writer, stdin_rx));
        }
        let wait = async move {
            exit_rx.await.unwrap_or(ExitInfo {
                code: None,
                signal: Some(Signal::KILL.as_raw()),
            })
        };
        tokio::spawn(supervise(id, stdout, stderr, wait, self.sink()));
        Ok(raw_pid)
    }

    pub(crate) fn kill(&self, id: &str, signal: i32) -> Result<(), String> {
        let sig =
            Signal::from_named_raw(signal).ok_or_else(|| format!("unsupported signal {signal}"))?;
        let pgid = self
            .lock()
            .tracked
            .get(id)
            .map(|t| t.pgid)
            .ok_or_else(|| format!("unknown process {id}"))?;
        kill_process_group(pgid, sig).map_err(|e| format!("kill {id}: {e}"))
    }

    /// Queues a chunk for a process's stdin; `written` is answered once it
    /// is in the pipe (or could not be written), so the daemon's
    /// `writeStdin` waits for the process like a pipe write would, and
    /// nothing piles up here for a process that does not read.
    pub(crate) fn stdin(&self, chunk: StdinChunk) {
        let mut state = self.lock();
        let id = chunk.note.id.clone();
        let Some(tracked) = state.tracked.get_mut(&id) else {
            let _ = chunk.written.send(Err(format!("unknown process {id}")));
            return;
        };
        let eof = chunk.note.eof;
        match &tracked.stdin {
            Some(tx) => {
                if let Err(mpsc::error::SendError(chunk)) = tx.send(chunk) {
                    tracked.stdin = None;
                    let _ = chunk.written.send(Err(format!("stdin of {id} is closed")));
                }
            }
            None => {
                let _ = chunk.written.send(Err(format!("stdin of {id} is closed")));
            }
        }
        if eof {
            tracked.stdin = None;
        }
    }

    pub(crate) fn status(&self) -> AgentStatus {
        let tracked = self.lock().tracked.len();
        // Only processes below us count: on the host (and in a VM, with its
        // kernel threads) /proc shows far more than ours.
        let all = descendants::below_me().len();
        AgentStatus {
            tracked,
            other_processes: all.saturating_sub(tracked),
        }
    }

    fn forget(&self, id: &str) {
        self.lock().tracked.remove(id);
    }
}

async fn feed_stdin(mut writer: pipe::Sender, mut rx: mpsc::UnboundedReceiver<StdinChunk>) {
    while let Some(StdinChunk { note, written }) = rx.recv().await {
        if !note.data.is_empty()
            && let Err(e) = writer.write_all(note.data.as_bytes()).await
        {
            let _ = written.send(Err(format!("stdin of {}: {e}", note.id)));
            break;
        }
        let _ = written.send(Ok(()));
        if note.eof {
            break;
        }
    }
    // Dropping the writer closes the pipe (end of file for the process);
    // whatever was still queued cannot be written any more.
    drop(writer);
    rx.close();
    while let Some(StdinChunk { note, written }) = rx.recv().await {
        let _ = written.send(Err(format!("stdin of {} is closed", note.id)));
    }
}

#[derive(Clone)]
struct AgentSink {
    out: Outbox,
    children: Children,
}

impl AgentSink {
    /// Reports a process that could not start, as the host backend does.
    async fn failed(&self, id: &str, message: &str, code: i32) {
        self.out
            .send(&FromAgent::Stderr {
                id: id.to_string(),
                data: format!("Error: {message}\n"),
            })
            .await;
        if code != 127 {
            self.out
                .send(&FromAgent::Error {
                    id: id.to_string(),
                    message: message.to_string(),
                })
                .await;
        }
        self.out
            .send(&FromAgent::Exit {
                id: id.to_string(),
                code: Some(code),
                signal: None,
            })
            .await;
    }
}

impl OutputSink for AgentSink {
    async fn output(&self, id: &str, stream: Stream, data: String) {
        let id = id.to_string();
        let message = match stream {
            Stream::Stdout => FromAgent::Stdout { id, data },
            Stream::Stderr => FromAgent::Stderr { id, data },
        };
        self.out.send(&message).await;
    }

    async fn exited(&self, id: &str, exit: ExitInfo) {
        self.children.forget(id);
        self.out
            .send(&FromAgent::Exit {
                id: id.to_string(),
                code: exit.code,
                signal: exit.signal_name(),
            })
            .await;
    }
}
