//! Accepting connections and serving the three connection modes.
//!
//! Every connection gets a reader (frames in), a writer task (frames out,
//! in queue order) and one task per request, so a slow call never delays a
//! poll on the same pipe; replies go out in completion order with their
//! `id`. `subscribeEvents` turns the connection's queue into an event
//! subscriber (ack first). A one-shot client that half-closes still gets
//! its reply: in-flight requests finish before the writer is closed.
//!
//! Bad input never ends the daemon: an unparsable or wrongly typed frame
//! gets an error reply and the connection continues; a frame over the
//! 10 MiB limit (the stream can no longer be re-synchronised) is logged
//! and that connection alone is closed. Connections from another uid are
//! refused (`SO_PEERCRED`).

use std::sync::Arc;

use bytes::Bytes;
use cowork_protocol::frame;
use cowork_protocol::rpc::{Request, Response, parse_request};
use futures::StreamExt;
use serde_json::json;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::events::Subscription;
use crate::framing::write_frames;
use crate::service::Service;

/// Outgoing frames queued per connection (output frames are up to 1 MiB:
/// what a stalled subscriber can hold before it is dropped).
const OUTGOING_QUEUE: usize = 64;

/// Connections one process may hold open without having sent a request;
/// the desktop client sends its request right after connecting. More idle
/// ones from the same peer are closed at once (logged).
pub const MAX_IDLE_PER_PEER: usize = 64;
/// Descriptors kept for everything else (sandboxes, pipes, the log,
/// pinned folders): past `limit - RESERVE` connections, only peers that
/// hold few connections (the client) get new ones.
pub const DESCRIPTOR_RESERVE: usize = 512;
/// What counts as holding few connections.
pub const LIGHT_PEER: usize = 8;

/// What one peer holds.
#[derive(Default, Clone, Copy)]
struct Held {
    open: usize,
    /// Open and not a single request sent yet.
    idle: usize,
}

/// Who holds how many connections (by pid, from `SO_PEERCRED`).
#[derive(Default)]
struct Peers {
    by_pid: std::collections::HashMap<i32, Held>,
    total: usize,
    refused_logged: std::collections::HashSet<i32>,
}

/// Decides whether a peer holding `held` connections (`idle` of them
/// without a request yet) may open another, with `total` open in all and
/// `budget` before the descriptor reserve.
pub fn admit(held: usize, idle: usize, total: usize, budget: usize) -> bool {
    idle < MAX_IDLE_PER_PEER && (total < budget || held < LIGHT_PEER)
}

/// A peer's connection, counted while it lives.
struct PeerSlot {
    peers: Arc<std::sync::Mutex<Peers>>,
    pid: i32,
    idle: bool,
}

impl PeerSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection sent a request: it is no longer idle.
    fn active(&mut self) {
        if std::mem::take(&mut self.idle) {
            let pid = self.pid;
            let mut p = self.lock();
            if let Some(h) = p.by_pid.get_mut(&pid) {
                h.idle = h.idle.saturating_sub(1);
            }
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let (pid, idle) = (self.pid, self.idle);
        let mut p = self.lock();
        p.total = p.total.saturating_sub(1);
        if let Some(h) = p.by_pid.get_mut(&pid) {
            h.open = h.open.saturating_sub(1);
            if idle {
                h.idle = h.idle.saturating_sub(1);
            }
            if h.open == 0 {
                p.by_pid.remove(&pid);
                p.refused_logged.remove(&pid);
            }
        }
    }
}

/// Serves `listener` until `shutdown` is cancelled.
pub async fn serve(listener: UnixListener, service: Arc<Service>, shutdown: CancellationToken) {
    let me = rustix::process::geteuid().as_raw();
    let mut next_conn: u64 = 0;
    let peers = Arc::new(std::sync::Mutex::new(Peers::default()));
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let budget = usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(DESCRIPTOR_RESERVE)
        .max(LIGHT_PEER * 4);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::error!("accept failed: {e}");
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let pid = match stream.peer_cred() {
            Ok(cred) if cred.uid() == me => cred.pid().unwrap_or(0),
            Ok(cred) => {
                tracing::warn!(
                    "refused connection from uid {} (pid {:?}): only uid {me} may use this socket",
                    cred.uid(),
                    cred.pid()
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("refused connection: cannot read peer credentials: {e}");
                continue;
            }
        };
        let slot = {
            let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
            let held = p.by_pid.get(&pid).copied().unwrap_or_default();
            if !admit(held.open, held.idle, p.total, budget) {
                if p.refused_logged.insert(pid) {
                    tracing::warn!(
                        "closing new connections from pid {pid}: it holds {} ({} idle; {} open \
                         in all, {budget} before the descriptor reserve)",
                        held.open,
                        held.idle,
                        p.total
                    );
                }
                continue;
            }
            let entry = p.by_pid.entry(pid).or_default();
            entry.open += 1;
            entry.idle += 1;
            p.total += 1;
            PeerSlot {
                peers: peers.clone(),
                pid,
                idle: true,
            }
        };
        next_conn += 1;
        let conn = next_conn;
        let service = service.clone();
        tokio::spawn(async move {
            tracing::debug!("connection {conn} opened");
            handle_connection(stream, service, conn, slot).await;
            tracing::debug!("connection {conn} closed");
        });
    }
}

async fn handle_connection(
    stream: UnixStream,
    service: Arc<Service>,
    conn: u64,
    mut slot: PeerSlot,
) {
    let (read_half, write_half) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(OUTGOING_QUEUE);
    let writer = tokio::spawn(write_frames(write_half, rx));
    let mut frames = FramedRead::new(read_half, frame::codec());
    let mut in_flight = JoinSet::new();
    let mut subscription: Option<Subscription> = None;
    let mut broken = false;
    // Never cancelled until this connection subscribes.
    let mut dropped = CancellationToken::new();
    loop {
        let next = tokio::select! {
            next = frames.next() => next,
            () = dropped.cancelled() => {
                tracing::warn!("connection {conn}: closed: its subscriber fell behind");
                broken = true;
                break;
            }
        };
        let Some(next) = next else { break };
        slot.active();
        let body = match next {
            Ok(body) => body,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // Only the codec reports InvalidData: a length over the limit.
                tracing::error!("connection {conn}: closing after an oversized frame: {e}");
                broken = true;
                break;
            }
            Err(e) => {
                tracing::debug!("connection {conn}: read failed: {e}");
                broken = true;
                break;
            }
        };
        match parse_request(&body) {
            Err(bad) => {
                tracing::error!("connection {conn}: bad request: {}", bad.reason);
                send(&tx, &Response::failure(bad.id, bad.reason)).await;
            }
            Ok(req) if req.method == "subscribeEvents" => {
                if subscription.is_some() {
                    send(&tx, &Response::success(req.id, json!({}))).await;
                    continue;
                }
                let ack = match frame::encode(&Response::success(req.id, json!({}))) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!("cannot encode ack: {e}");
                        continue;
                    }
                };
                subscription = service.hub().subscribe(tx.clone(), ack).await;
                if let Some(s) = &subscription {
                    dropped = s.dropped.clone();
                }
            }
            Ok(req) => {
                let service = service.clone();
                let tx = tx.clone();
                in_flight.spawn(async move {
                    let Request { id, method, params } = req;
                    let response = match service.handle(&method, params).await {
                        Ok(result) => Response::success(id, result),
                        Err(error) => Response::failure(id, error),
                    };
                    send(&tx, &response).await;
                });
            }
        }
        // Reap finished request tasks so a long-lived pipe does not grow.
        while let Some(done) = in_flight.try_join_next() {
            if let Err(e) = done {
                tracing::error!("connection {conn}: request task failed: {e}");
            }
        }
    }
    if broken {
        // Closed now: a peer that stopped reading must not keep the writer
        // (blocked on its full socket) alive. Without the writer the queue
        // is closed, so the requests still running finish at once when
        // they reply (they are not cut off mid-way).
        writer.abort();
    }
    while let Some(done) = in_flight.join_next().await {
        if let Err(e) = done {
            tracing::error!("connection {conn}: request task failed: {e}");
        }
    }
    if broken {
        if let Some(s) = subscription {
            service.hub().unsubscribe(s.id).await;
        }
        return;
    }
    // A subscriber that merely half-closed keeps receiving events (it is
    // dropped when a write fails or it stops reading).
    drop(tx);
    let _ = writer.await;
}

async fn send(tx: &mpsc::Sender<Bytes>, response: &Response) {
    match frame::encode(response) {
        Ok(bytes) => {
            // The client may already be gone; nothing to do then.
            let _ = tx.send(bytes).await;
        }
        Err(e) => {
            tracing::error!("cannot encode response: {e}");
            if let Ok(bytes) = frame::encode(&Response::failure(
                response.id.clone(),
                format!("cannot encode result: {e}"),
            )) {
                let _ = tx.send(bytes).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_table() {
        // (held, idle, total, budget) -> admitted
        let cases = [
            (0, 0, 0, 1000, true),
            (500, 63, 600, 1000, true),
            (500, 64, 600, 1000, false),
            (7, 0, 1000, 1000, true),
            (8, 0, 1000, 1000, false),
            (0, 0, 5000, 1000, true),
        ];
        for (held, idle, total, budget, want) in cases {
            assert_eq!(
                admit(held, idle, total, budget),
                want,
                "{held} {idle} {total} {budget}"
            );
        }
    }
}
