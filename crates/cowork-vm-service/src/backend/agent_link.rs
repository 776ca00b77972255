//! The daemon's end of an agent channel: numbered requests with replies,
//! notifications, and the agent's process events routed into the
//! daemon's process table and event hub. Shared by every backend that runs
//! its processes through our agent (bwrap: pid 1 of each sandbox; host:
//! one agent on the host).
//!
//! The agent runs next to untrusted processes, so what it says is checked:
//! events are accepted only for process ids this sandbox was asked to run.
//! When the channel closes (the sandbox died or was torn down), pending
//! requests fail and every process the agent confirmed as started is
//! reported as killed; one whose spawn was still unanswered is reported by
//! its spawner, with the reason (once: a start failure is not also a kill).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cowork_policy::signal::{SIGKILL, parse_signal};
use cowork_protocol::agent::{FromAgent, StdinWrite, ToAgent, method};
use cowork_protocol::event::Stream;
use cowork_protocol::frame;
use futures::StreamExt;
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use serde_json::{Value, json};
use std::os::fd::OwnedFd;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::framing::write_frames;
use crate::process_events::ProcessEvents;
use crate::processes::{ControlError, ProcessControl};
use crate::supervise::{ExitInfo, OutputSink};

/// A new agent's channel: the daemon's end, ready for
/// [`AgentLink::start`], and the agent's end (both close-on-exec; the
/// agent's end is handed over as the agent process's stdin, which
/// posix_spawn sets up without a `pre_exec`).
pub fn channel() -> std::io::Result<(UnixStream, OwnedFd)> {
    let (daemon_end, agent_end) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let std_stream = std::os::unix::net::UnixStream::from(daemon_end);
    std_stream.set_nonblocking(true)?;
    Ok((UnixStream::from_std(std_stream)?, agent_end))
}

/// How long a request to the agent may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("the sandbox is gone")]
    Closed,
    #[error("the sandbox did not answer {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("the sandbox agent refused {method}: {error}")]
    Refused { method: String, error: String },
}

type Reply = Result<Value, String>;

/// Reads a sandbox's OOM-kill counter (its memory cgroup's).
pub type OomCounter = Arc<dyn Fn() -> u64 + Send + Sync>;

struct Tracked {
    /// The agent confirmed starting it.
    confirmed: bool,
    /// The OOM-kill counter when it was asked for.
    oom_base: u64,
}

struct LinkState {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Processes asked for here and not yet exited, by client id.
    running: HashMap<String, Tracked>,
    /// Pending `spawn` requests: request id -> process id.
    spawning: HashMap<u64, String>,
}

pub struct AgentLink {
    tx: Mutex<Option<mpsc::Sender<Bytes>>>,
    oom: Option<OomCounter>,
    /// The confinement the agent reported in its `ready`.
    confinement: Mutex<Option<Value>>,
    next_id: AtomicU64,
    alive: AtomicBool,
    state: Mutex<LinkState>,
}

impl AgentLink {
    /// Starts the reader and writer tasks on `stream`.
    pub fn start(stream: UnixStream, events: ProcessEvents) -> Arc<Self> {
        Self::start_with_oom(stream, events, None)
    }

    /// [`Self::start`], with the sandbox's OOM-kill counter: an exit whose
    /// process saw the counter rise carries `oomKillCount`.
    pub fn start_with_oom(
        stream: UnixStream,
        events: ProcessEvents,
        oom: Option<OomCounter>,
    ) -> Arc<Self> {
        let (read_half, write_half) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        tokio::spawn(write_frames(write_half, rx));
        let link = Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            oom,
            confinement: Mutex::new(None),
            next_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            state: Mutex::new(LinkState {
                pending: HashMap::new(),
                running: HashMap::new(),
                spawning: HashMap::new(),
            }),
        });
        let reader = link.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(read_half, frame::codec());
            while let Some(Ok(body)) = frames.next().await {
                match serde_json::from_slice::<FromAgent>(&body) {
                    Ok(message) => reader.dispatch(message, &events).await,
                    Err(e) => tracing::warn!("sandbox agent sent a malformed frame: {e}"),
                }
            }
            reader.on_closed(&events).await;
        });
        link
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // Single map operations only; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The confinement report of the agent, once it is ready.
    pub fn confinement(&self) -> Option<Value> {
        self.confinement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Marks `id` as a process of this sandbox (before asking for it).
    pub fn track(&self, id: &str) {
        let oom_base = self.oom.as_ref().map_or(0, |count| count());
        self.lock().running.insert(
            id.to_string(),
            Tracked {
                confirmed: false,
                oom_base,
            },
        );
    }

    /// OOM kills in the sandbox since `base`, if any.
    fn oom_kills_since(&self, base: u64) -> Option<u64> {
        let now = self.oom.as_ref()?();
        (now > base).then(|| now - base)
    }

    pub fn untrack(&self, id: &str) {
        self.lock().running.remove(id);
    }

    /// Processes started here that have not exited.
    pub fn running_count(&self) -> usize {
        self.lock().running.len()
    }

    fn sender(&self) -> Option<mpsc::Sender<Bytes>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn send(&self, message: &ToAgent) -> Result<(), LinkError> {
        let frame = frame::encode(message).map_err(|e| LinkError::Refused {
            method: "encode".into(),
            error: e.to_string(),
        })?;
        let tx = self.sender().ok_or(LinkError::Closed)?;
        tx.send(frame).await.map_err(|_| LinkError::Closed)
    }

    pub async fn request(&self, method: &str, params: Value) -> Result<Value, LinkError> {
        self.request_for(method, params, None, Some(REQUEST_TIMEOUT))
            .await
    }

    /// Asks the agent to start process `id` (tracked with [`Self::track`]).
    pub async fn spawn(&self, id: &str, params: Value) -> Result<Value, LinkError> {
        self.request_for(method::SPAWN, params, Some(id), Some(REQUEST_TIMEOUT))
            .await
    }

    async fn request_for(
        &self,
        method: &str,
        params: Value,
        spawn_of: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Value, LinkError> {
        if !self.is_alive() {
            return Err(LinkError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut state = self.lock();
            state.pending.insert(id, reply_tx);
            if let Some(process) = spawn_of {
                state.spawning.insert(id, process.to_string());
            }
        }
        let sent = self
            .send(&ToAgent::Request {
                id,
                method: method.to_string(),
                params,
            })
            .await;
        if let Err(e) = sent {
            let mut state = self.lock();
            state.pending.remove(&id);
            state.spawning.remove(&id);
            return Err(e);
        }
        let reply = match timeout {
            Some(limit) => tokio::time::timeout(limit, reply_rx).await,
            None => Ok(reply_rx.await),
        };
        match reply {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(error))) => Err(LinkError::Refused {
                method: method.to_string(),
                error,
            }),
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => {
                let mut state = self.lock();
                state.pending.remove(&id);
                state.spawning.remove(&id);
                Err(LinkError::Timeout(
                    method.to_string(),
                    timeout.unwrap_or_default(),
                ))
            }
        }
    }

    /// Closes the channel: the agent exits and the sandbox with it.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    async fn dispatch(&self, message: FromAgent, events: &ProcessEvents) {
        let is_ours = |id: &str| self.lock().running.contains_key(id);
        match message {
            FromAgent::Ready {
                pid,
                version,
                confinement,
            } => {
                tracing::debug!("sandbox agent ready (pid {pid}, version {version})");
                if let Some(report) = confinement {
                    tracing::debug!("sandbox agent confined: {report}");
                    *self.confinement.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
                }
            }
            FromAgent::Response { id, result, error } => {
                let waiter = {
                    let mut state = self.lock();
                    // A started process is confirmed before its spawner
                    // wakes: from here a closing channel reports it.
                    if let Some(process) = state.spawning.remove(&id)
                        && error.is_none()
                        && let Some(tracked) = state.running.get_mut(&process)
                    {
                        tracked.confirmed = true;
                    }
                    state.pending.remove(&id)
                };
                if let Some(w) = waiter {
                    let _ = w.send(match error {
                        Some(e) => Err(e),
                        None => Ok(result.unwrap_or(Value::Null)),
                    });
                }
            }
            FromAgent::Stdout { id, data } if is_ours(&id) => {
                events.output(&id, Stream::Stdout, data).await;
            }
            FromAgent::Stderr { id, data } if is_ours(&id) => {
                events.output(&id, Stream::Stderr, data).await;
            }
            FromAgent::Error { id, message } if is_ours(&id) => {
                events.error(&id, message).await;
            }
            FromAgent::Exit { id, code, signal } => {
                let tracked = self.lock().running.remove(&id);
                if let Some(tracked) = tracked {
                    let signal = signal.map(|s| parse_signal(&s).number());
                    let exit = ExitInfo { code, signal };
                    match self.oom_kills_since(tracked.oom_base) {
                        Some(kills) => events.exited_after_oom(&id, exit, kills).await,
                        None => events.exited(&id, exit).await,
                    }
                }
            }
            FromAgent::Stdout { id, .. }
            | FromAgent::Stderr { id, .. }
            | FromAgent::Error { id, .. } => {
                tracing::warn!("sandbox agent sent output for a process it does not run: {id}");
            }
        }
    }

    async fn on_closed(&self, events: &ProcessEvents) {
        self.alive.store(false, Ordering::SeqCst);
        self.close();
        let (pending, running) = {
            let mut state = self.lock();
            let pending: Vec<_> = state.pending.drain().map(|(_, w)| w).collect();
            state.spawning.clear();
            // Unconfirmed ones stay: their spawner reports them and
            // untracks them.
            let confirmed: Vec<(String, u64)> = state
                .running
                .iter()
                .filter(|(_, t)| t.confirmed)
                .map(|(id, t)| (id.clone(), t.oom_base))
                .collect();
            for (id, _) in &confirmed {
                state.running.remove(id);
            }
            (pending, confirmed)
        };
        drop(pending);
        for (id, oom_base) in running {
            let exit = ExitInfo {
                code: None,
                signal: Some(SIGKILL),
            };
            // The OOM killer may have taken the agent, and the sandbox with it.
            match self.oom_kills_since(oom_base) {
                Some(kills) => events.exited_after_oom(&id, exit, kills).await,
                None => events.exited(&id, exit).await,
            }
        }
    }
}

/// A process an agent runs for the daemon.
pub struct AgentProcess {
    pub id: String,
    pub link: Arc<AgentLink>,
}

#[async_trait]
impl ProcessControl for AgentProcess {
    async fn signal(&self, signal: i32) -> Result<(), ControlError> {
        self.link
            .request(method::KILL, json!({"id": self.id, "signal": signal}))
            .await
            .map(|_| ())
            .map_err(|e| ControlError::Signal {
                id: self.id.clone(),
                reason: e.to_string(),
            })
    }

    async fn write_stdin(&self, data: String, eof: bool) -> Result<(), ControlError> {
        let note = StdinWrite {
            id: self.id.clone(),
            data,
            eof,
        };
        let params =
            serde_json::to_value(note).map_err(|_| ControlError::StdinClosed(self.id.clone()))?;
        // No time limit: like a pipe write, this waits for the process to
        // read (or to exit, which fails it).
        match self
            .link
            .request_for(method::STDIN, params, None, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(LinkError::Refused { .. }) => Err(ControlError::StdinClosed(self.id.clone())),
            Err(_) => Err(ControlError::SandboxGone(self.id.clone())),
        }
    }
}
