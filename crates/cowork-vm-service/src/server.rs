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

use crate::events::SubscriptionId;
use crate::framing::write_frames;
use crate::service::Service;

/// Outgoing frames queued per connection.
const OUTGOING_QUEUE: usize = 256;

/// Serves `listener` until `shutdown` is cancelled.
pub async fn serve(listener: UnixListener, service: Arc<Service>, shutdown: CancellationToken) {
    let me = rustix::process::geteuid().as_raw();
    let mut next_conn: u64 = 0;
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
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me => {}
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
        }
        next_conn += 1;
        let conn = next_conn;
        let service = service.clone();
        tokio::spawn(async move {
            tracing::debug!("connection {conn} opened");
            handle_connection(stream, service, conn).await;
            tracing::debug!("connection {conn} closed");
        });
    }
}

async fn handle_connection(stream: UnixStream, service: Arc<Service>, conn: u64) {
    let (read_half, write_half) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(OUTGOING_QUEUE);
    let writer = tokio::spawn(write_frames(write_half, rx));
    let mut frames = FramedRead::new(read_half, frame::codec());
    let mut in_flight = JoinSet::new();
    let mut subscription: Option<SubscriptionId> = None;
    let mut broken = false;
    while let Some(next) = frames.next().await {
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
    while let Some(done) = in_flight.join_next().await {
        if let Err(e) = done {
            tracing::error!("connection {conn}: request task failed: {e}");
        }
    }
    // A subscriber that merely half-closed keeps receiving events (it is
    // dropped when a write fails); a broken stream is closed now.
    if broken && let Some(id) = subscription {
        service.hub().unsubscribe(id).await;
    }
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
