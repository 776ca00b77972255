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
use cowork_protocol::agent::{
    FromAgent, LISTENERS_MARKER, SpawnRequest, StdinWrite, ToAgent, method,
};
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
    /// Frames received from the agent so far (liveness: a busy agent's
    /// answers may queue behind its output, but its frames keep coming).
    received: AtomicU64,
    /// The reader is handing a frame on (an output event waits for room in
    /// the subscribers' queues): meanwhile nothing more is read, whatever
    /// the agent does.
    delivering: AtomicBool,
    state: Mutex<LinkState>,
}

impl AgentLink {
    /// Starts the reader and writer tasks on `stream`.
    pub fn start(stream: UnixStream, events: ProcessEvents) -> Arc<Self> {
        Self::start_with(stream, events, LinkOptions::default())
    }

    /// [`Self::start`], with a sandbox's extras (see [`LinkOptions`]).
    pub fn start_with(
        stream: UnixStream,
        events: ProcessEvents,
        options: LinkOptions,
    ) -> Arc<Self> {
        let LinkOptions { oom, listeners } = options;
        let (read_half, write_half) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        tokio::spawn(write_frames(write_half, rx));
        let link = Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            oom,
            confinement: Mutex::new(None),
            next_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            received: AtomicU64::new(0),
            delivering: AtomicBool::new(false),
            state: Mutex::new(LinkState {
                pending: HashMap::new(),
                running: HashMap::new(),
                spawning: HashMap::new(),
            }),
        });
        let reader = link.clone();
        tokio::spawn(async move {
            if let Some(tx) = listeners {
                match receive_listeners(&read_half).await {
                    Ok(received) => {
                        let _ = tx.send(received);
                    }
                    Err(e) => {
                        tracing::warn!("sandbox agent: no proxy listeners: {e}");
                        reader.on_closed(&events).await;
                        return;
                    }
                }
            }
            let mut frames = FramedRead::new(read_half, frame::codec());
            while let Some(Ok(body)) = frames.next().await {
                reader.received.fetch_add(1, Ordering::Relaxed);
                match serde_json::from_slice::<FromAgent>(&body) {
                    Ok(message) => {
                        reader.delivering.store(true, Ordering::Relaxed);
                        reader.dispatch(message, &events).await;
                        reader.delivering.store(false, Ordering::Relaxed);
                    }
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

    /// What a late answer says about the agent: how many frames it has
    /// sent so far, and whether the daemon is itself holding up reading
    /// (see the kvm heartbeat).
    pub fn progress(&self) -> LinkProgress {
        LinkProgress {
            frames: self.received.load(Ordering::Relaxed),
            delivering: self.delivering.load(Ordering::Relaxed),
        }
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

    /// Starts `request` in the agent as one of this link's processes (its
    /// output and exit become the client's events); forgotten again when
    /// the agent does not start it.
    pub async fn start_process(
        self: &Arc<Self>,
        request: &SpawnRequest,
    ) -> Result<Arc<AgentProcess>, LinkError> {
        let params = serde_json::to_value(request).map_err(|e| LinkError::Refused {
            method: "encode".into(),
            error: e.to_string(),
        })?;
        self.track(&request.id);
        match self.spawn(&request.id, params).await {
            Ok(_) => Ok(Arc::new(AgentProcess {
                id: request.id.clone(),
                link: self.clone(),
            })),
            Err(e) => {
                self.untrack(&request.id);
                Err(e)
            }
        }
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

/// See [`AgentLink::progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkProgress {
    pub frames: u64,
    pub delivering: bool,
}

impl LinkProgress {
    /// Whether an agent that did not answer in time since `before` is
    /// still to be taken as alive: frames kept arriving, or the daemon was
    /// not reading (an output event waiting for a slow subscriber).
    pub fn alive_since(self, before: LinkProgress) -> bool {
        self.frames != before.frames || self.delivering
    }
}

/// What a sandbox's link does besides requests and events.
#[derive(Default)]
pub struct LinkOptions {
    /// The sandbox's OOM-kill counter: an exit whose process saw it rise
    /// carries `oomKillCount`.
    pub oom: Option<OomCounter>,
    /// Where the proxy listeners the agent sends first go (a sandbox's
    /// agent always sends them; see `cowork_protocol::agent::LISTENERS_MARKER`).
    pub listeners: Option<oneshot::Sender<ProxyListeners>>,
}

/// The listening sockets inside a sandbox's network namespace.
#[derive(Debug)]
pub struct ProxyListeners {
    pub http: std::net::TcpListener,
    pub socks: std::net::TcpListener,
}

/// A descriptor the agent sent must be a listening TCP socket (the agent
/// lives next to untrusted code: anything else is refused).
fn as_listener(fd: OwnedFd) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let ok = sockopt::socket_acceptconn(&fd).unwrap_or(false)
        && sockopt::socket_type(&fd).is_ok_and(|t| t == SocketType::STREAM)
        && sockopt::socket_domain(&fd)
            .is_ok_and(|d| d == AddressFamily::INET || d == AddressFamily::INET6);
    if !ok {
        return Err(std::io::Error::other("not a listening TCP socket"));
    }
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Reads the marker byte and the two listeners the agent sends first.
async fn receive_listeners(
    read_half: &tokio::net::unix::OwnedReadHalf,
) -> std::io::Result<ProxyListeners> {
    let stream: &UnixStream = read_half.as_ref();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut marker = [0u8; 1];
    let received = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            read_half.readable().await?;
            let got = stream.try_io(tokio::io::Interest::READABLE, || {
                crate::sys::scm_rights::recv_with_fds(stream, &mut marker, 2, &mut fds)
            });
            match got {
                Ok(n) => return Ok::<usize, std::io::Error>(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::other("the agent sent nothing in time"))??;
    if received != 1 || marker[0] != LISTENERS_MARKER || fds.len() != 2 {
        return Err(std::io::Error::other(format!(
            "unexpected first message ({received} byte(s), {} descriptor(s))",
            fds.len()
        )));
    }
    let socks = fds.pop().map(as_listener).transpose()?;
    let http = fds.pop().map(as_listener).transpose()?;
    match (http, socks) {
        (Some(http), Some(socks)) => Ok(ProxyListeners { http, socks }),
        _ => Err(std::io::Error::other("listeners missing")),
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

#[cfg(test)]
mod tests {
    use super::LinkProgress;

    #[test]
    fn a_late_answer_counts_as_missed_only_from_a_silent_agent_the_daemon_was_reading() {
        let at = |frames, delivering| LinkProgress { frames, delivering };
        let cases = [
            // (before, now, alive)
            (at(10, false), at(10, false), false), // silent: a missed beat
            (at(10, false), at(11, false), true),  // output kept coming
            (at(10, false), at(10, true), true),   // the daemon held up reading
            (at(10, true), at(10, false), false),  // held up earlier, silent now
        ];
        for (before, now, alive) in cases {
            assert_eq!(now.alive_since(before), alive, "{before:?} -> {now:?}");
        }
    }
}
