//! The daemon's end of an agent channel: numbered requests with replies,
//! notifications, and the agent's process events routed into the
//! daemon's process table and event hub.
//!
//! The agent runs next to untrusted processes, so what it says is checked:
//! events are accepted only for process ids this sandbox was asked to run.
//! When the channel closes (the sandbox died or was torn down), pending
//! requests fail and every process still running there is reported as
//! killed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use cowork_policy::signal::{SIGKILL, parse_signal};
use cowork_protocol::agent::{FromAgent, ToAgent};
use cowork_protocol::event::Stream;
use cowork_protocol::frame;
use futures::StreamExt;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::framing::write_frames;
use crate::process_events::ProcessEvents;
use crate::supervise::{ExitInfo, OutputSink};

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

struct LinkState {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Client ids of processes started here and not yet exited.
    running: HashSet<String>,
}

pub struct AgentLink {
    tx: Mutex<Option<mpsc::Sender<Bytes>>>,
    next_id: AtomicU64,
    alive: AtomicBool,
    state: Mutex<LinkState>,
}

impl AgentLink {
    /// Starts the reader and writer tasks on `stream`.
    pub fn start(stream: UnixStream, events: ProcessEvents) -> Arc<Self> {
        let (read_half, write_half) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        tokio::spawn(write_frames(write_half, rx));
        let link = Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            next_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            state: Mutex::new(LinkState {
                pending: HashMap::new(),
                running: HashSet::new(),
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

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Marks `id` as a process of this sandbox (before asking for it).
    pub fn track(&self, id: &str) {
        self.lock().running.insert(id.to_string());
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
        if !self.is_alive() {
            return Err(LinkError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.lock().pending.insert(id, reply_tx);
        let sent = self
            .send(&ToAgent::Request {
                id,
                method: method.to_string(),
                params,
            })
            .await;
        if let Err(e) = sent {
            self.lock().pending.remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, reply_rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(error))) => Err(LinkError::Refused {
                method: method.to_string(),
                error,
            }),
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => {
                self.lock().pending.remove(&id);
                Err(LinkError::Timeout(method.to_string(), REQUEST_TIMEOUT))
            }
        }
    }

    pub async fn notify(&self, method: &str, params: Value) -> Result<(), LinkError> {
        self.send(&ToAgent::Notification {
            method: method.to_string(),
            params,
        })
        .await
    }

    /// Closes the channel: the agent exits and the sandbox with it.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    async fn dispatch(&self, message: FromAgent, events: &ProcessEvents) {
        let is_ours = |id: &str| self.lock().running.contains(id);
        match message {
            FromAgent::Ready { pid, version } => {
                tracing::debug!("sandbox agent ready (pid {pid}, version {version})");
            }
            FromAgent::Response { id, result, error } => {
                let waiter = self.lock().pending.remove(&id);
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
                let was_running = self.lock().running.remove(&id);
                if was_running {
                    let signal = signal.map(|s| parse_signal(&s).number());
                    events.exited(&id, ExitInfo { code, signal }).await;
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
            let running: Vec<_> = state.running.drain().collect();
            (pending, running)
        };
        drop(pending);
        for id in running {
            events
                .exited(
                    &id,
                    ExitInfo {
                        code: None,
                        signal: Some(SIGKILL),
                    },
                )
                .await;
        }
    }
}
