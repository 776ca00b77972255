//! The proxy's error type.

use std::io;
use std::net::SocketAddr;

use cowork_policy::net::{Denial, TargetError};

use crate::http::parse::RequestError;
use crate::socks::parse::SocksParseError;

/// Why a connection ended badly. Per-connection errors are logged at
/// debug level by [`crate::serve_listener`]: a sandbox can cause any of
/// them at will.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad HTTP proxy request: {0}")]
    Request(#[from] RequestError),
    #[error("invalid SOCKS5 message: {0}")]
    Socks(#[from] SocksParseError),
    #[error("the SOCKS5 handshake took too long")]
    HandshakeTimeout,
    #[error("the client closed the connection during the handshake")]
    HandshakeCutOff,
    #[error("the client offers no acceptable SOCKS5 method (only 'no authentication' is served)")]
    NoAcceptableMethod,
    #[error("SOCKS5 command {0:#04x} is not supported (CONNECT only)")]
    UnsupportedCommand(u8),
    #[error("invalid destination: {0}")]
    BadTarget(#[from] TargetError),
    #[error("refused: {0}")]
    Denied(Denial),
    #[error("could not resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("resolving {host} took too long")]
    ResolveTimeout { host: String },
    #[error("could not connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connecting to {addr} took too long")]
    ConnectTimeout { addr: SocketAddr },
}
