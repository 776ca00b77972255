//! The SOCKS5 proxy: "no authentication" only, CONNECT only, address
//! types domain, IPv4 and IPv6.
//!
//! The handshake (greeting and request) must arrive within the context's
//! handshake timeout; then the destination is judged, resolved, vetted and
//! dialled, the reply sent (0x00, or 0x02 "not allowed by ruleset" for a
//! refusal), and bytes relayed. Bytes the client sent after its request
//! without waiting for the reply go upstream first.
//!
//! The messages are parsed by the pure functions of [`parse`] rather than
//! by the `fast-socks5` crate: its server writes replies with a single
//! `write` (a short write on a slow stream truncates them) and does not
//! flush the method choice, which matters on the multiplexed streams this
//! proxy also serves; it offers no byte-level parser to fuzz, and it
//! accepts non-zero reserved bytes and empty names.

pub mod parse;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use cowork_policy::net::Target;

use crate::context::ProxyContext;
use crate::error::ProxyError;
use crate::serve::Protocol;
use crate::upstream::{open_upstream, relay};
use parse::{
    Address, Command, MAX_REQUEST_LEN, METHOD_NO_AUTH, METHOD_NONE_ACCEPTABLE, Parsed, VERSION,
    encode_reply, parse_greeting, parse_request, reply,
};

/// The address sent in replies: the upstream's local address means
/// nothing inside the sandbox (and would tell it the host's address).
const REPLY_BOUND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Serves one SOCKS5 client stream until it closes.
pub async fn serve_socks5<S>(mut stream: S, ctx: ProxyContext) -> Result<(), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.limits;
    let (request, early_data) =
        match tokio::time::timeout(limits.handshake_timeout, handshake(&mut stream)).await {
            Err(_) => return Err(ProxyError::HandshakeTimeout),
            Ok(result) => result?,
        };
    if request.command != Command::Connect {
        let code = match request.command {
            Command::Bind => 2,
            Command::UdpAssociate => 3,
            Command::Connect => 1,
            Command::Other(other) => other,
        };
        send_reply(&mut stream, reply::COMMAND_NOT_SUPPORTED).await?;
        return Err(ProxyError::UnsupportedCommand(code));
    }
    let target = match &request.address {
        Address::Domain(name) => Target::new(name, request.port),
        Address::Ipv4(ip) => Target::from_ip((*ip).into(), request.port),
        Address::Ipv6(ip) => Target::from_ip((*ip).into(), request.port),
    };
    let target = match target {
        Ok(target) => target,
        Err(e) => {
            send_reply(&mut stream, reply::HOST_UNREACHABLE).await?;
            return Err(e.into());
        }
    };
    let mut upstream = match open_upstream(&ctx, &target, Protocol::Socks5).await {
        Ok(upstream) => upstream,
        Err(e) => {
            send_reply(&mut stream, reply_code(&e)).await?;
            return Err(e);
        }
    };
    tracing::debug!(session = %ctx.session, %target, addr = %upstream.addr, "SOCKS5 CONNECT");
    send_reply(&mut stream, reply::SUCCEEDED).await?;
    if !early_data.is_empty() {
        upstream.stream.write_all(&early_data).await?;
    }
    relay(&mut stream, &mut upstream.stream, limits.relay_buffer_size).await;
    Ok(())
}

/// Reads the greeting, answers the method, reads the request. Returns the
/// request and any bytes that followed it.
async fn handshake<S>(stream: &mut S) -> Result<(parse::Request, Vec<u8>), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_REQUEST_LEN + 64);
    let greeting = loop {
        match parse_greeting(&buf) {
            Parsed::Complete(greeting, len) => {
                buf.drain(..len);
                break greeting;
            }
            Parsed::Invalid(e) => return Err(e.into()),
            Parsed::Incomplete => read_more(stream, &mut buf).await?,
        }
    };
    if !greeting.offers_no_auth() {
        stream.write_all(&[VERSION, METHOD_NONE_ACCEPTABLE]).await?;
        stream.flush().await?;
        return Err(ProxyError::NoAcceptableMethod);
    }
    stream.write_all(&[VERSION, METHOD_NO_AUTH]).await?;
    stream.flush().await?;
    loop {
        match parse_request(&buf) {
            Parsed::Complete(request, len) => {
                buf.drain(..len);
                return Ok((request, buf));
            }
            Parsed::Invalid(e) => {
                if let Some(code) = e.reply_code() {
                    send_reply(stream, code).await?;
                }
                return Err(e.into());
            }
            Parsed::Incomplete => read_more(stream, &mut buf).await?,
        }
    }
}

/// Appends what the client sent next; its EOF mid-handshake is an error.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(), ProxyError> {
    let mut chunk = [0u8; 512];
    match stream.read(&mut chunk).await {
        Ok(0) => Err(ProxyError::HandshakeCutOff),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(ProxyError::HandshakeCutOff),
        Err(e) => Err(e.into()),
    }
}

async fn send_reply<S: AsyncWrite + Unpin>(stream: &mut S, code: u8) -> io::Result<()> {
    stream.write_all(&encode_reply(code, REPLY_BOUND)).await?;
    stream.flush().await
}

/// The reply code for a failure to open the upstream.
fn reply_code(error: &ProxyError) -> u8 {
    match error {
        ProxyError::Denied(_) => reply::NOT_ALLOWED_BY_RULESET,
        ProxyError::Resolve { .. }
        | ProxyError::NoAddress { .. }
        | ProxyError::ResolveTimeout { .. }
        | ProxyError::BadTarget(_) => reply::HOST_UNREACHABLE,
        ProxyError::ConnectTimeout { .. } => reply::TTL_EXPIRED,
        ProxyError::Connect { source, .. } => match source.kind() {
            io::ErrorKind::ConnectionRefused => reply::CONNECTION_REFUSED,
            io::ErrorKind::NetworkUnreachable => reply::NETWORK_UNREACHABLE,
            io::ErrorKind::HostUnreachable => reply::HOST_UNREACHABLE,
            _ => reply::GENERAL_FAILURE,
        },
        _ => reply::GENERAL_FAILURE,
    }
}
