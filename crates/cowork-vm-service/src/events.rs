//! The event hub: every event goes to every live subscriber, in the order
//! it was published.
//!
//! Each subscriber is a connection's outgoing frame queue. A new subscriber
//! receives its ack, then the current state (`networkStatus`, and
//! `apiReachability` once known), then live events; all three happen under
//! the hub's lock so nothing published meanwhile is lost or duplicated (the
//! client's `startVM` races its `subscribeEvents`).
//!
//! Each subscriber has its own bounded queue (its connection's outgoing
//! frames). Back-pressure: publishing waits for room in every queue, so a
//! process writing faster than the client reads is slowed down instead of
//! buffered without bound, and no subscriber that keeps reading loses
//! output. The waits happen outside the hub's lock and side by side, so
//! one slow queue never blocks subscribing, unsubscribing or the delivery
//! to the others; a subscriber that makes no room for
//! [`STALLED_SUBSCRIBER`] has fallen behind and is dropped (logged), so the
//! others wait at most that long, once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cowork_protocol::event::{ApiReachability, Event, NetworkStatus};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// How long a subscriber may refuse new events before it is dropped. A
/// client that reads at all frees a slot within microseconds.
pub const STALLED_SUBSCRIBER: Duration = Duration::from_secs(1);

/// Sender half of a connection's outgoing queue (complete frames).
pub type FrameSender = mpsc::Sender<Bytes>;

#[derive(Clone, Default)]
pub struct EventHub {
    inner: Arc<Mutex<HubState>>,
}

#[derive(Default)]
struct HubState {
    subscribers: Vec<Subscriber>,
    next_id: u64,
    network: Option<NetworkStatus>,
    api: Option<ApiReachability>,
}

#[derive(Clone)]
struct Subscriber {
    id: u64,
    tx: FrameSender,
    /// Cancelled when the hub drops it: its connection closes, so the
    /// client sees it and can subscribe again.
    dropped: CancellationToken,
}

/// Identifies a subscription (to cancel it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionId(u64);

/// A live subscription: its id, and a token cancelled if the hub drops it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub dropped: CancellationToken,
}

impl EventHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `ack` and the current state to `tx`, then adds it as a
    /// subscriber. `None` if the connection went away first.
    pub async fn subscribe(&self, tx: FrameSender, ack: Bytes) -> Option<Subscription> {
        let mut state = self.inner.lock().await;
        tx.send(ack).await.ok()?;
        let mut intro = Vec::new();
        if let Some(status) = state.network {
            intro.push(Event::NetworkStatus { status });
        }
        if let Some(status) = state.api {
            intro.push(Event::ApiReachability { status });
        }
        for event in intro {
            let encoded = encode(&event)?;
            tx.send(encoded).await.ok()?;
        }
        state.next_id += 1;
        let id = state.next_id;
        let dropped = CancellationToken::new();
        state.subscribers.push(Subscriber {
            id,
            tx,
            dropped: dropped.clone(),
        });
        tracing::debug!("subscriber {id} added ({} live)", state.subscribers.len());
        Some(Subscription {
            id: SubscriptionId(id),
            dropped,
        })
    }

    pub async fn unsubscribe(&self, id: SubscriptionId) {
        let mut state = self.inner.lock().await;
        state.subscribers.retain(|s| s.id != id.0);
    }

    /// Publishes to every subscriber (see the module docs for back-pressure).
    pub async fn publish(&self, event: &Event) {
        let Some(encoded) = encode(event) else {
            return;
        };
        let subscribers = self.inner.lock().await.subscribers.clone();
        self.deliver(subscribers, encoded).await;
    }

    /// Records and publishes the network status.
    pub async fn set_network(&self, status: NetworkStatus) {
        let Some(encoded) = encode(&Event::NetworkStatus { status }) else {
            return;
        };
        // The state and the list of who is told change together: a new
        // subscriber either sees the new state in its introduction or is
        // on the list, never both, never neither.
        let subscribers = {
            let mut state = self.inner.lock().await;
            state.network = Some(status);
            state.subscribers.clone()
        };
        self.deliver(subscribers, encoded).await;
    }

    /// Records and publishes API reachability.
    pub async fn set_api_reachability(&self, status: ApiReachability) {
        let Some(encoded) = encode(&Event::ApiReachability { status }) else {
            return;
        };
        let subscribers = {
            let mut state = self.inner.lock().await;
            state.api = Some(status);
            state.subscribers.clone()
        };
        self.deliver(subscribers, encoded).await;
    }

    pub async fn subscriber_count(&self) -> usize {
        self.inner.lock().await.subscribers.len()
    }

    /// Queues `encoded` for each of `subscribers`, all at once; drops the
    /// ones that are gone or fell behind.
    async fn deliver(&self, subscribers: Vec<Subscriber>, encoded: Bytes) {
        let sends = subscribers.iter().map(|sub| {
            let frame = encoded.clone();
            async move {
                // The common case, without a timer.
                let frame = match sub.tx.try_send(frame) {
                    Ok(()) => return None,
                    Err(mpsc::error::TrySendError::Closed(_)) => return Some(sub.id),
                    Err(mpsc::error::TrySendError::Full(frame)) => frame,
                };
                match sub.tx.send_timeout(frame, STALLED_SUBSCRIBER).await {
                    Ok(()) => None,
                    Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                        tracing::warn!(
                            "dropping event subscriber {}: it read nothing for {:?}",
                            sub.id,
                            STALLED_SUBSCRIBER
                        );
                        Some(sub.id)
                    }
                    Err(mpsc::error::SendTimeoutError::Closed(_)) => Some(sub.id),
                }
            }
        });
        let dead: Vec<u64> = futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !dead.is_empty() {
            for sub in subscribers.iter().filter(|s| dead.contains(&s.id)) {
                sub.dropped.cancel();
            }
            let mut state = self.inner.lock().await;
            state.subscribers.retain(|s| !dead.contains(&s.id));
        }
    }
}

fn encode(event: &Event) -> Option<Bytes> {
    match event.to_frame() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!("cannot encode event: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(&b[4..]).unwrap()
    }

    #[tokio::test]
    async fn new_subscriber_gets_ack_then_state_then_events() {
        let hub = EventHub::new();
        hub.set_network(NetworkStatus::Connected).await;
        let (tx, mut rx) = mpsc::channel(8);
        hub.subscribe(tx, Bytes::from_static(b"\0\0\0\x02{}"))
            .await
            .unwrap();
        hub.publish(&Event::exit("p".into(), Some(0), None)).await;
        assert_eq!(&rx.recv().await.unwrap()[4..], b"{}");
        assert_eq!(decode(&rx.recv().await.unwrap())["type"], "networkStatus");
        assert_eq!(decode(&rx.recv().await.unwrap())["type"], "exit");
    }

    #[tokio::test]
    async fn closed_subscribers_are_removed_and_others_keep_receiving() {
        let hub = EventHub::new();
        let (tx1, rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        hub.subscribe(tx1, Bytes::new()).await.unwrap();
        hub.subscribe(tx2, Bytes::new()).await.unwrap();
        drop(rx1);
        hub.publish(&Event::exit("p".into(), Some(1), None)).await;
        assert_eq!(hub.subscriber_count().await, 1);
        let _ack = rx2.recv().await.unwrap();
        assert_eq!(decode(&rx2.recv().await.unwrap())["exitCode"], 1);
    }
}
