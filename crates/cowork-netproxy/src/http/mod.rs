//! The HTTP proxy: `CONNECT` tunnels and absolute-form `http://` requests,
//! served with hyper on any stream.
//!
//! * `CONNECT host:port`: the destination is judged, resolved, vetted and
//!   dialled before the answer; then `HTTP/1.1 200 Connection established`
//!   and bytes are relayed both ways until both sides are done.
//! * `GET http://host/path` (any method): the URI's host and the `Host`
//!   header must agree ([`parse::classify_request`]); the request is
//!   forwarded in origin form without hop-by-hop headers over an upstream
//!   connection kept for that destination only. Every request of a
//!   keep-alive connection is judged on its own: one naming another
//!   destination is checked and gets its own upstream connection (the
//!   previous one is closed), so it can never travel to the first host.
//! * Anything else gets 400; a refusal gets 403 with `Connection: close`
//!   (see [`cowork_policy::net::http_denial`]).
//!
//! Everything a connection starts (the tunnel relay, upstream HTTP
//! connections) lives inside the future of [`serve_http`]: dropping it
//! ends them all.

pub mod parse;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::ext::ReasonPhrase;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;

use cowork_policy::net::{Target, http_denial};

use crate::context::ProxyContext;
use crate::error::ProxyError;
use crate::serve::Protocol;
use crate::upstream::{Upstream, open_upstream, relay};
use parse::{ProxyRequest, classify_request};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// hyper refuses a buffer limit below this.
const HYPER_MIN_BUF: usize = 8192;

/// The state of one client connection.
struct ConnState {
    ctx: ProxyContext,
    /// The upstream of the last forwarded request, reused only for the
    /// same destination.
    upstream: tokio::sync::Mutex<Option<CachedUpstream>>,
    /// A CONNECT that was answered 200, waiting for hyper to hand over the
    /// connection.
    tunnel: Mutex<Option<Tunnel>>,
    /// Upstream HTTP connection drivers; aborted when the state drops.
    tasks: Mutex<JoinSet<()>>,
}

struct CachedUpstream {
    target: Target,
    sender: SendRequest<Incoming>,
}

struct Tunnel {
    on_upgrade: OnUpgrade,
    upstream: Upstream,
}

/// Serves the HTTP proxy protocol on one client stream until it closes.
pub async fn serve_http<S>(stream: S, ctx: ProxyContext) -> Result<(), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.limits;
    let state = Arc::new(ConnState {
        ctx,
        upstream: tokio::sync::Mutex::new(None),
        tunnel: Mutex::new(None),
        tasks: Mutex::new(JoinSet::new()),
    });
    let service_state = Arc::clone(&state);
    let service = service_fn(move |req| {
        let state = Arc::clone(&service_state);
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // `printf 'GET http://...' | nc` closes its write side at once and
        // still expects the answer.
        .half_close(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_size.max(HYPER_MIN_BUF))
        .max_header_size(limits.max_head_size)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    let tunnel = lock(&state.tunnel).take();
    match (served, tunnel) {
        (Ok(()), Some(tunnel)) => {
            let upgraded = tunnel.on_upgrade.await?;
            let mut client = TokioIo::new(upgraded);
            let mut upstream = tunnel.upstream.stream;
            relay(&mut client, &mut upstream, limits.relay_buffer_size).await;
            Ok(())
        }
        (served, _) => served.map_err(ProxyError::from),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn handle(state: &ConnState, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let hosts: Vec<&[u8]> = req
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let classified = classify_request(req.method(), req.uri(), &hosts);
    match classified {
        Err(e) => {
            tracing::debug!(session = %state.ctx.session, error = %e, "bad proxy request");
            plain_response(StatusCode::BAD_REQUEST, "bad-request", &e.to_string())
        }
        Ok(ProxyRequest::Connect(target)) => {
            match open_upstream(&state.ctx, &target, Protocol::Http).await {
                Err(e) => failure_response(&state.ctx, e),
                Ok(upstream) => {
                    tracing::debug!(session = %state.ctx.session, %target, addr = %upstream.addr, "CONNECT");
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    *lock(&state.tunnel) = Some(Tunnel {
                        on_upgrade,
                        upstream,
                    });
                    let mut response = Response::new(empty_body());
                    response
                        .extensions_mut()
                        .insert(ReasonPhrase::from_static(b"Connection established"));
                    response
                }
            }
        }
        Ok(ProxyRequest::Forward {
            target,
            origin_form,
        }) => forward(state, req, target, &origin_form).await,
    }
}

/// Forwards one absolute-form request over the upstream connection of its
/// destination.
async fn forward(
    state: &ConnState,
    req: Request<Incoming>,
    target: Target,
    origin_form: &str,
) -> Response<ProxyBody> {
    let ctx = &state.ctx;
    let Ok(uri) = origin_form.parse::<Uri>() else {
        return plain_response(StatusCode::BAD_REQUEST, "bad-request", "bad request path");
    };
    let Ok(host) = HeaderValue::from_str(&host_header(&target)) else {
        return plain_response(StatusCode::BAD_REQUEST, "bad-request", "bad host");
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // hyper's server answers `100 Continue` itself when the body is read.
    parts.headers.remove(header::EXPECT);
    parts.headers.insert(header::HOST, host);
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let mut request = Request::from_parts(parts, body);

    let mut slot = state.upstream.lock().await;
    // One retry: a kept connection the server closed meanwhile.
    for attempt in 0..2 {
        let reusable = match slot.as_mut() {
            Some(cached) if cached.target == target => cached.sender.ready().await.is_ok(),
            _ => false,
        };
        if !reusable {
            // Dropping the previous sender closes its connection.
            *slot = None;
            match connect_http(state, &target).await {
                Ok(sender) => {
                    *slot = Some(CachedUpstream {
                        target: target.clone(),
                        sender,
                    })
                }
                Err(response) => return response,
            }
        }
        let Some(cached) = slot.as_mut() else {
            return plain_response(
                StatusCode::BAD_GATEWAY,
                "upstream-unreachable",
                "no upstream",
            );
        };
        match cached.sender.try_send_request(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                return Response::from_parts(parts, body.boxed());
            }
            Err(mut e) => {
                *slot = None;
                match e.take_message() {
                    Some(unsent) if attempt == 0 => request = unsent,
                    _ => {
                        let error = e.into_error();
                        tracing::debug!(session = %ctx.session, %target, %error, "upstream request failed");
                        return plain_response(
                            StatusCode::BAD_GATEWAY,
                            "upstream-failed",
                            &format!("the upstream request to {target} failed: {error}"),
                        );
                    }
                }
            }
        }
    }
    plain_response(
        StatusCode::BAD_GATEWAY,
        "upstream-failed",
        "upstream request failed",
    )
}

/// Opens (judge, resolve, vet, dial) an upstream HTTP/1.1 connection; its
/// driver runs in the connection's task set.
async fn connect_http(
    state: &ConnState,
    target: &Target,
) -> Result<SendRequest<Incoming>, Response<ProxyBody>> {
    let ctx = &state.ctx;
    let upstream = open_upstream(ctx, target, Protocol::Http)
        .await
        .map_err(|e| failure_response(ctx, e))?;
    tracing::debug!(session = %ctx.session, %target, addr = %upstream.addr, "HTTP upstream");
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(upstream.stream))
        .await
        .map_err(|e| {
            plain_response(
                StatusCode::BAD_GATEWAY,
                "upstream-failed",
                &format!("HTTP handshake with {target} failed: {e}"),
            )
        })?;
    let mut tasks = lock(&state.tasks);
    while tasks.try_join_next().is_some() {}
    tasks.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream HTTP connection ended with an error");
        }
    });
    Ok(sender)
}

/// `host` or `host:port` (port 80 is implied).
fn host_header(target: &Target) -> String {
    match target.port {
        80 => target.host.to_string(),
        _ => target.to_string(),
    }
}

/// Removes the hop-by-hop headers (RFC 9110 section 7.6.1), those named in
/// `Connection` included. A message that came chunked loses its
/// `Content-Length` too (RFC 9112 section 6.3: the transfer coding wins);
/// hyper frames the forwarded body itself.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

fn empty_body() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A one-line text response that closes the connection.
fn plain_response(status: StatusCode, error: &'static str, message: &str) -> Response<ProxyBody> {
    let body = format!(
        "cowork-vm-service proxy: {}\n",
        message.replace(['\r', '\n'], " ")
    );
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("x-proxy-error", HeaderValue::from_static(error));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The response for a failure to open the upstream.
fn failure_response(ctx: &ProxyContext, error: ProxyError) -> Response<ProxyBody> {
    tracing::debug!(session = %ctx.session, %error, "proxy request failed");
    let (status, code) = match &error {
        ProxyError::Denied(denial) => return denied_response(ctx, denial),
        ProxyError::BadTarget(_) => (StatusCode::BAD_REQUEST, "bad-request"),
        ProxyError::Resolve { .. } | ProxyError::NoAddress { .. } => {
            (StatusCode::BAD_GATEWAY, "unresolvable-host")
        }
        ProxyError::ResolveTimeout { .. } | ProxyError::ConnectTimeout { .. } => {
            (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout")
        }
        _ => (StatusCode::BAD_GATEWAY, "upstream-unreachable"),
    };
    plain_response(status, code, &error.to_string())
}

fn denied_response(ctx: &ProxyContext, denial: &cowork_policy::net::Denial) -> Response<ProxyBody> {
    let denial = http_denial(denial, &ctx.hint);
    let mut response = Response::new(
        Full::new(Bytes::from(denial.body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
    for (name, value) in denial.headers {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
    }
    response
}
