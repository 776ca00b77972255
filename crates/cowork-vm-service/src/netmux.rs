//! Both ends of a VM's proxy channel (`cowork_protocol::mux` frames):
//! the guest opens a stream per connection accepted on its proxy
//! endpoints; the daemon serves each stream with the allowlist proxy.
//!
//! Per stream, two tasks: the *source* reads the local connection and
//! sends DATA while the peer's window allows (then CLOSE at end of file);
//! the *sink* writes what the peer sent to the local connection and
//! grants CREDIT for every byte written (a CLOSE from the peer shuts the
//! connection's write side). A peer that sends more than it was granted,
//! or on a stream that does not exist, gets a RESET for that stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cowork_protocol::mux::{Frame, INITIAL_WINDOW, MAX_DATA, MuxCodec, StreamProtocol};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};

/// A local connection a stream carries.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// Frames queued towards the peer.
const OUT_QUEUE: usize = 256;

enum SinkMsg {
    Data(Bytes),
    Close,
}

struct StreamEntry {
    sink: mpsc::UnboundedSender<SinkMsg>,
    /// Bytes the peer may still send us.
    recv_window: Arc<AtomicU32>,
    /// Bytes we may still send the peer.
    send_window: Arc<Semaphore>,
    tasks: Vec<tokio::task::AbortHandle>,
}

/// Removes stream `id` once both of its tasks are done.
struct Done {
    id: u32,
    left: Arc<std::sync::atomic::AtomicU8>,
    streams: Streams,
}

impl Drop for Done {
    fn drop(&mut self) {
        if self.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            lock(&self.streams).remove(&self.id);
        }
    }
}

type Streams = Arc<Mutex<HashMap<u32, StreamEntry>>>;

fn lock(s: &Streams) -> std::sync::MutexGuard<'_, HashMap<u32, StreamEntry>> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the two tasks of stream `id` on `conn`.
fn start_stream(id: u32, conn: Box<dyn Conn>, streams: &Streams, out: &mpsc::Sender<Frame>) {
    let (mut read, mut write) = tokio::io::split(conn);
    let (sink_tx, mut sink_rx) = mpsc::unbounded_channel::<SinkMsg>();
    let send_window = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
    let recv_window = Arc::new(AtomicU32::new(INITIAL_WINDOW));
    let left = Arc::new(std::sync::atomic::AtomicU8::new(2));
    let done = || Done {
        id,
        left: left.clone(),
        streams: streams.clone(),
    };
    let source = {
        let (out, window, done) = (out.clone(), send_window.clone(), done());
        tokio::spawn(async move {
            let _done = done;
            let mut buf = vec![0u8; MAX_DATA];
            loop {
                let Ok(first) = window.acquire().await else {
                    return;
                };
                first.forget();
                let extra = window.available_permits().min(MAX_DATA - 1);
                if let Ok(p) = window.try_acquire_many(extra as u32) {
                    p.forget();
                }
                let cap = 1 + extra;
                let n = match read.read(&mut buf[..cap]).await {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                window.add_permits(cap - n);
                if n == 0 {
                    let _ = out.send(Frame::Close { stream: id }).await;
                    return;
                }
                let data = Bytes::copy_from_slice(&buf[..n]);
                if out.send(Frame::Data { stream: id, data }).await.is_err() {
                    return;
                }
            }
        })
    };
    let sink = {
        let (out, window, streams, done) =
            (out.clone(), recv_window.clone(), streams.clone(), done());
        tokio::spawn(async move {
            let _done = done;
            while let Some(msg) = sink_rx.recv().await {
                match msg {
                    SinkMsg::Data(data) => {
                        if write.write_all(&data).await.is_err() {
                            let _ = out.send(Frame::Reset { stream: id }).await;
                            lock(&streams).remove(&id);
                            return;
                        }
                        window.fetch_add(data.len() as u32, Ordering::SeqCst);
                        let bytes = data.len() as u32;
                        if out.send(Frame::Credit { stream: id, bytes }).await.is_err() {
                            return;
                        }
                    }
                    SinkMsg::Close => {
                        let _ = write.shutdown().await;
                        return;
                    }
                }
            }
        })
    };
    lock(streams).insert(
        id,
        StreamEntry {
            sink: sink_tx,
            recv_window,
            send_window,
            tasks: vec![source.abort_handle(), sink.abort_handle()],
        },
    );
}

fn reset(streams: &Streams, id: u32) {
    if let Some(entry) = lock(streams).remove(&id) {
        for t in entry.tasks {
            t.abort();
        }
    }
}

/// What a side does with a stream the peer opened.
pub type OnOpen = Arc<dyn Fn(StreamProtocol) -> Option<Box<dyn Conn>> + Send + Sync>;

/// Serves the channel until it closes. `incoming` brings connections to
/// open streams for (the guest); `on_open` serves streams the peer opens
/// (the daemon). Stream ids of this side are odd when `odd_ids`.
pub async fn run<T>(
    channel: T,
    mut incoming: Option<mpsc::Receiver<(StreamProtocol, Box<dyn Conn>)>>,
    on_open: Option<OnOpen>,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(channel);
    let (out, mut out_rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        let mut framed = FramedWrite::new(write, MuxCodec);
        while let Some(frame) = out_rx.recv().await {
            if framed.feed(frame).await.is_err() {
                return;
            }
            while let Ok(more) = out_rx.try_recv() {
                if framed.feed(more).await.is_err() {
                    return;
                }
            }
            if framed.flush().await.is_err() {
                return;
            }
        }
    });
    let streams: Streams = Arc::default();
    let opener = incoming.take().map(|mut rx| {
        let (out, streams) = (out.clone(), streams.clone());
        tokio::spawn(async move {
            let mut next: u32 = 1;
            while let Some((protocol, conn)) = rx.recv().await {
                let id = next;
                next = next.wrapping_add(2).max(1);
                if out
                    .send(Frame::Open {
                        stream: id,
                        protocol,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                start_stream(id, conn, &streams, &out);
            }
        })
    });
    let mut frames = FramedRead::new(read, MuxCodec);
    while let Some(Ok(frame)) = frames.next().await {
        match frame {
            Frame::Open { stream, protocol } => {
                let conn = match &on_open {
                    Some(open) if !lock(&streams).contains_key(&stream) => open(protocol),
                    _ => None,
                };
                match conn {
                    Some(conn) => start_stream(stream, conn, &streams, &out),
                    None => {
                        let _ = out.send(Frame::Reset { stream }).await;
                    }
                }
            }
            Frame::Data { stream, data } => {
                let ok = {
                    let map = lock(&streams);
                    map.get(&stream).is_some_and(|e| {
                        let len = data.len() as u32;
                        // Within the window granted, else the peer is broken.
                        e.recv_window
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                                w.checked_sub(len)
                            })
                            .is_ok()
                            && e.sink.send(SinkMsg::Data(data)).is_ok()
                    })
                };
                if !ok {
                    reset(&streams, stream);
                    let _ = out.send(Frame::Reset { stream }).await;
                }
            }
            Frame::Credit { stream, bytes } => {
                if let Some(e) = lock(&streams).get(&stream) {
                    e.send_window.add_permits(bytes as usize);
                }
            }
            Frame::Close { stream } => {
                if let Some(e) = lock(&streams).get(&stream) {
                    let _ = e.sink.send(SinkMsg::Close);
                }
            }
            Frame::Reset { stream } => reset(&streams, stream),
        }
    }
    // The channel is gone: every stream with it.
    let ids: Vec<u32> = lock(&streams).keys().copied().collect();
    for id in ids {
        reset(&streams, id);
    }
    if let Some(o) = opener {
        o.abort();
    }
    drop(out);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest end and a daemon end over a socketpair; the daemon echoes
    /// every stream upper-cased.
    #[tokio::test]
    async fn streams_carry_bytes_both_ways_with_flow_control() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let on_open: OnOpen = Arc::new(|_protocol| {
            let (ours, theirs) = tokio::io::duplex(4096);
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(theirs);
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = r.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        let _ = w.shutdown().await;
                        return;
                    }
                    buf[..n].make_ascii_uppercase();
                    if w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            Some(Box::new(ours) as Box<dyn Conn>)
        });
        tokio::spawn(run(b, None, Some(on_open)));
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(run(a, Some(rx), None));
        let mut tasks = Vec::new();
        for i in 0..4u8 {
            let (local, remote) = tokio::io::duplex(1 << 16);
            tx.send((StreamProtocol::Http, Box::new(remote) as Box<dyn Conn>))
                .await
                .unwrap();
            tasks.push(tokio::spawn(async move {
                // More than the initial window, so credits must flow.
                let sent: Vec<u8> = (0..(3 * INITIAL_WINDOW as usize))
                    .map(|j| b'a' + ((j + i as usize) % 26) as u8)
                    .collect();
                let (mut r, mut w) = tokio::io::split(local);
                let expect = sent.to_ascii_uppercase();
                let writer = tokio::spawn(async move {
                    w.write_all(&sent).await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                writer.await.unwrap();
                assert_eq!(got.len(), expect.len());
                assert!(got == expect, "stream {i} content");
            }));
        }
        for t in tasks {
            tokio::time::timeout(std::time::Duration::from_secs(20), t)
                .await
                .expect("streams finish")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_stream_the_daemon_refuses_is_reset() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let refuse: OnOpen = Arc::new(|_| None);
        tokio::spawn(run(b, None, Some(refuse)));
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(run(a, Some(rx), None));
        let (mut local, remote) = tokio::io::duplex(1024);
        tx.send((StreamProtocol::Socks5, Box::new(remote) as Box<dyn Conn>))
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            local.read_to_end(&mut got),
        )
        .await
        .expect("the reset ends the stream");
        assert!(read.is_ok() || read.is_err());
        assert!(got.is_empty());
    }
}
