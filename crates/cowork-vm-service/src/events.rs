//! The event hub: every event goes to every live subscriber, in the order
//! it was published.
//!
//! Each subscriber is a connection's outgoing frame queue. A new subscriber
//! receives its ack, then the current state (`networkStatus`, and
//! `apiReachability` once known), then live events; all three happen under
//! the hub's lock so nothing published meanwhile is lost or duplicated (the
//! client's `startVM` races its `subscribeEvents`).
//!
//! Back-pressure: publishing waits for room in each subscriber's queue, so a
//! process writing faster than the client reads is slowed down instead of
//! buffered without bound. A subscriber that makes no room for
//! [`STALLED_SUBSCRIBER`] is dropped (logged) so it cannot stall the others.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cowork_protocol::event::{ApiReachability, Event, NetworkStatus};
use tokio::sync::{Mutex, mpsc};

/// How long a subscriber may refuse new events before it is dropped.
pub const STALLED_SUBSCRIBER: Duration = Duration::from_secs(30);

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

struct Subscriber {
    id: u64,
    tx: FrameSender,
}

/// Identifies a subscription (to cancel it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionId(u64);

impl EventHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `ack` and the current state to `tx`, then adds it as a
    /// subscriber. `None` if the connection went away first.
    pub async fn subscribe(&self, tx: FrameSender, ack: Bytes) -> Option<SubscriptionId> {
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
        state.subscribers.push(Subscriber { id, tx });
        tracing::debug!("subscriber {id} added ({} live)", state.subscribers.len());
        Some(SubscriptionId(id))
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
        let mut state = self.inner.lock().await;
        Self::deliver(&mut state, encoded).await;
    }

    /// Records and publishes the network status.
    pub async fn set_network(&self, status: NetworkStatus) {
        let Some(encoded) = encode(&Event::NetworkStatus { status }) else {
            return;
        };
        let mut state = self.inner.lock().await;
        state.network = Some(status);
        Self::deliver(&mut state, encoded).await;
    }

    /// Records and publishes API reachability.
    pub async fn set_api_reachability(&self, status: ApiReachability) {
        let Some(encoded) = encode(&Event::ApiReachability { status }) else {
            return;
        };
        let mut state = self.inner.lock().await;
        state.api = Some(status);
        Self::deliver(&mut state, encoded).await;
    }

    pub async fn subscriber_count(&self) -> usize {
        self.inner.lock().await.subscribers.len()
    }

    async fn deliver(state: &mut HubState, encoded: Bytes) {
        let mut dead = Vec::new();
        for sub in &state.subscribers {
            match sub
                .tx
                .send_timeout(encoded.clone(), STALLED_SUBSCRIBER)
                .await
            {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    tracing::warn!(
                        "dropping event subscriber {}: it read nothing for {}s",
                        sub.id,
                        STALLED_SUBSCRIBER.as_secs()
                    );
                    dead.push(sub.id);
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => dead.push(sub.id),
            }
        }
        if !dead.is_empty() {
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
