//! Serving streams and listeners.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::context::ProxyContext;
use crate::error::ProxyError;
use crate::http::serve_http;
use crate::socks::serve_socks5;

/// Which proxy protocol a stream or listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP CONNECT and absolute-form requests (127.0.0.1:3128 inside).
    Http,
    /// SOCKS5 (127.0.0.1:1080 inside).
    Socks5,
}

/// Serves one client stream (an accepted TCP connection, or a stream
/// demultiplexed from a VM channel) until it closes.
pub async fn serve_stream<S>(
    stream: S,
    protocol: Protocol,
    ctx: ProxyContext,
) -> Result<(), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match protocol {
        Protocol::Http => serve_http(stream, ctx).await,
        Protocol::Socks5 => serve_socks5(stream, ctx).await,
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts and serves connections forever, at most
/// `ctx.limits().max_connections` at once (beyond that, accepting waits).
///
/// A connection's error never stops the loop (it is logged at debug
/// level: sandboxes cause them at will). An accept error (EMFILE, ENFILE,
/// ENOBUFS...) is logged at warn level and retried after a back-off that
/// grows from 10 ms to 1 s, so the loop never spins.
///
/// It returns only if the semaphore closes (never). Dropping the future
/// (or aborting its task) closes the listener and ends every connection it
/// accepted.
pub async fn serve_listener(listener: TcpListener, protocol: Protocol, ctx: ProxyContext) {
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections.max(1)));
    let mut connections: JoinSet<()> = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        while let Some(done) = connections.try_join_next() {
            if let Err(e) = done {
                if e.is_panic() {
                    tracing::error!(session = %ctx.session, ?protocol, "proxy connection task panicked");
                }
            }
        }
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "accepted connection failed before use");
                continue;
            }
            Err(e) => {
                tracing::warn!(session = %ctx.session, ?protocol, error = %e, retry_in = ?backoff, "proxy accept failed");
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let span = tracing::debug_span!("proxy", session = %ctx.session, ?protocol, %peer);
        connections.spawn(
            async move {
                let _permit = permit;
                if let Err(e) = serve_stream(stream, protocol, ctx).await {
                    tracing::debug!(error = %e, "proxy connection ended");
                }
            }
            .instrument(span),
        );
    }
}

/// Errors of one pending connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}
