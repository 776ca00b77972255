//! Opening the upstream side of a connection: allowlist, one resolution,
//! address vetting, dialling the vetted addresses in order. Every
//! decision is `cowork_policy::net`'s.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use cowork_policy::net::{Denial, Host, Target, vet_destinations};

use crate::context::ProxyContext;
use crate::denial::DenialEvent;
use crate::error::ProxyError;
use crate::serve::Protocol;

/// A connected upstream.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub stream: TcpStream,
    pub addr: SocketAddr,
}

/// Decides, resolves, vets and dials `target`. A refusal is reported to
/// the context's denial sink and returned as [`ProxyError::Denied`].
pub(crate) async fn open_upstream(
    ctx: &ProxyContext,
    target: &Target,
    protocol: Protocol,
) -> Result<Upstream, ProxyError> {
    let decision = ctx.allowlist.check(target);
    // Only a listed name is resolved: a sandbox cannot make the daemon
    // look up (and so leak through DNS) names it may not reach.
    let resolved: Vec<IpAddr> = match (&target.host, decision.is_allowed()) {
        (Host::Name(name), true) => {
            let lookup = ctx.resolver.resolve(name);
            match tokio::time::timeout(ctx.limits.resolve_timeout, lookup).await {
                Err(_) => return Err(ProxyError::ResolveTimeout { host: name.clone() }),
                Ok(Err(source)) => {
                    return Err(ProxyError::Resolve {
                        host: name.clone(),
                        source,
                    });
                }
                Ok(Ok(addrs)) if addrs.is_empty() => {
                    return Err(ProxyError::NoAddress { host: name.clone() });
                }
                Ok(Ok(addrs)) => addrs,
            }
        }
        _ => Vec::new(),
    };
    let own = ctx.own_addresses.snapshot();
    let addrs = vet_destinations(target, decision, &resolved, &own, &ctx.proxy_endpoints).map_err(
        |reason| {
            let denial = Denial {
                target: target.clone(),
                reason,
            };
            ctx.denials.denied(&DenialEvent {
                session: ctx.session.clone(),
                protocol,
                denial: denial.clone(),
            });
            ProxyError::Denied(denial)
        },
    )?;
    dial_in_order(ctx, &addrs).await
}

/// Tries each address in turn, each attempt bounded by the connect
/// timeout; the last failure is returned.
async fn dial_in_order(ctx: &ProxyContext, addrs: &[SocketAddr]) -> Result<Upstream, ProxyError> {
    let mut last = None;
    for &addr in addrs {
        let attempt = ctx.dialer.dial(addr);
        match tokio::time::timeout(ctx.limits.connect_timeout, attempt).await {
            Ok(Ok(stream)) => {
                // Small writes of interactive protocols go out at once;
                // bulk transfers use large writes anyway.
                let _ = stream.set_nodelay(true);
                return Ok(Upstream { stream, addr });
            }
            Ok(Err(source)) => {
                tracing::debug!(%addr, error = %source, "upstream connect failed");
                last = Some(ProxyError::Connect { addr, source });
            }
            Err(_) => {
                tracing::debug!(%addr, "upstream connect timed out");
                last = Some(ProxyError::ConnectTimeout { addr });
            }
        }
    }
    Err(last.unwrap_or_else(|| ProxyError::NoAddress {
        host: String::from("(no address)"),
    }))
}

/// Relays bytes both ways until both directions are done (each EOF is
/// passed on as a shutdown of the other side's write half).
pub(crate) async fn relay<A, B>(client: &mut A, upstream: &mut B, buffer: usize) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let buffer = buffer.max(4096);
    match tokio::io::copy_bidirectional_with_sizes(client, upstream, buffer, buffer).await {
        Ok((up, down)) => {
            tracing::debug!(bytes_up = up, bytes_down = down, "tunnel closed");
            (up, down)
        }
        Err(e) => {
            tracing::debug!(error = %e, "tunnel ended with an error");
            (0, 0)
        }
    }
}
