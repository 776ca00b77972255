//! Writing queued frames to a stream (client connections, the agent
//! channel on both of its ends).

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Writes queued frames in order, coalescing whatever is ready into one
/// flush; returns when the queue closes or a write fails.
pub async fn write_frames<W: AsyncWrite + Unpin>(writer: W, mut rx: mpsc::Receiver<Bytes>) {
    let mut out = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(first) = rx.recv().await {
        if out.write_all(&first).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if out.write_all(&more).await.is_err() {
                return;
            }
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}
