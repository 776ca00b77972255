//! Name resolution and upstream dialling, behind traits so that tests
//! (and callers) choose what a name resolves to and observe what is
//! dialled.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use tokio::net::TcpStream;

/// Resolves a normalized host name (never an IP literal) to addresses.
/// The proxy calls it once per destination and dials only the vetted
/// results.
#[async_trait]
pub trait Resolver: Send + Sync {
    async fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo` through [`tokio::net::lookup_host`]),
/// results deduplicated in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = Vec::new();
        for addr in tokio::net::lookup_host((name, 0)).await? {
            if !out.contains(&addr.ip()) {
                out.push(addr.ip());
            }
        }
        Ok(out)
    }
}

/// A fixed table of names; any other name fails as not found. For tests
/// and for callers that pin names.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// Adds (or replaces) a name, given in normalized form (lower case,
    /// punycode, no trailing dot).
    pub fn with(mut self, name: &str, addrs: &[IpAddr]) -> StaticResolver {
        self.names.insert(name.to_owned(), addrs.to_vec());
        self
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        self.names.get(name).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{name}: name not known"))
        })
    }
}

/// Opens a TCP connection to a vetted address.
#[async_trait]
pub trait Dialer: Send + Sync {
    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream>;
}

/// [`TcpStream::connect`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpDialer;

#[async_trait]
impl Dialer for TcpDialer {
    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect(addr).await
    }
}
