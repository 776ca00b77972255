//! What a proxied connection needs to know: whose it is, what it may
//! reach, how to resolve and dial, where to report refusals, and its
//! limits.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cowork_policy::net::AllowList;

use crate::denial::{DenialSink, LogDenials};
use crate::resolve::{Dialer, Resolver, SystemResolver, TcpDialer};

/// Time and size limits of a connection. The defaults suit production;
/// tests shorten the timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// HTTP: a request head (the first or the next one on a keep-alive
    /// connection) must arrive within this time (slowloris guard).
    pub header_read_timeout: Duration,
    /// HTTP: largest request head (hyper answers 431 beyond it). Values
    /// below 8 KiB still let hyper buffer 8 KiB.
    pub max_head_size: usize,
    /// SOCKS5: the greeting and the request must arrive within this time.
    pub handshake_timeout: Duration,
    /// How long one name resolution may take.
    pub resolve_timeout: Duration,
    /// How long one connection attempt (per address) may take.
    pub connect_timeout: Duration,
    /// Size of each of the two relay buffers of a tunnel.
    pub relay_buffer_size: usize,
    /// [`crate::serve_listener`]: connections served at once; beyond it,
    /// accepting waits.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(15),
            max_head_size: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            relay_buffer_size: 256 * 1024,
            max_connections: 256,
        }
    }
}

/// The host's own interface addresses: shared by every context that holds
/// a clone, replaceable when the interfaces change (the daemon can refresh
/// it periodically or on a netlink event).
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses(Arc<RwLock<Arc<[IpAddr]>>>);

impl OwnAddresses {
    pub fn new(addrs: Vec<IpAddr>) -> OwnAddresses {
        OwnAddresses(Arc::new(RwLock::new(addrs.into())))
    }

    /// Reads the interfaces now ([`read_interface_addresses`]).
    pub fn from_system() -> io::Result<OwnAddresses> {
        read_interface_addresses().map(OwnAddresses::new)
    }

    /// The current list (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<[IpAddr]> {
        let guard = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&guard)
    }

    /// Replaces the list for every holder.
    pub fn replace(&self, addrs: Vec<IpAddr>) {
        let mut guard = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = addrs.into();
    }

    /// Re-reads the interfaces and replaces the list.
    pub fn refresh(&self) -> io::Result<()> {
        self.replace(read_interface_addresses()?);
        Ok(())
    }
}

/// The addresses of every interface of this network namespace
/// (`getifaddrs`), deduplicated.
pub fn read_interface_addresses() -> io::Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = Vec::new();
    for interface in if_addrs::get_if_addrs()? {
        let ip = interface.ip();
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// The context of the connections of one sandbox (clone it per
/// connection: every field is shared).
#[derive(Clone)]
pub struct ProxyContext {
    pub(crate) session: Arc<str>,
    pub(crate) allowlist: Arc<AllowList>,
    pub(crate) hint: Arc<str>,
    pub(crate) own_addresses: OwnAddresses,
    pub(crate) proxy_endpoints: Arc<[SocketAddr]>,
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) dialer: Arc<dyn Dialer>,
    pub(crate) denials: Arc<dyn DenialSink>,
    pub(crate) limits: Limits,
}

impl ProxyContext {
    /// A context with the system resolver, plain TCP dialling, denials
    /// logged once per (session, host), no own addresses or endpoints yet,
    /// default limits and the hint "add it to the allowed domains".
    pub fn new(session: impl Into<Arc<str>>, allowlist: Arc<AllowList>) -> ProxyContext {
        ProxyContext {
            session: session.into(),
            allowlist,
            hint: Arc::from("add it to the allowed domains"),
            own_addresses: OwnAddresses::default(),
            proxy_endpoints: Arc::from([]),
            resolver: Arc::new(SystemResolver),
            dialer: Arc::new(TcpDialer),
            denials: Arc::new(LogDenials::new()),
            limits: Limits::default(),
        }
    }

    /// How to allow a refused host, in the 403 body; `{host}` is replaced
    /// by the host (see [`cowork_policy::net::denial_line`]).
    pub fn with_hint(mut self, hint: impl Into<Arc<str>>) -> ProxyContext {
        self.hint = hint.into();
        self
    }

    /// The host's interface addresses (refused unless listed exactly).
    pub fn with_own_addresses(mut self, own: OwnAddresses) -> ProxyContext {
        self.own_addresses = own;
        self
    }

    /// The proxy's own listening endpoints, never dialled (loop guard).
    pub fn with_proxy_endpoints(mut self, endpoints: Vec<SocketAddr>) -> ProxyContext {
        self.proxy_endpoints = endpoints.into();
        self
    }

    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> ProxyContext {
        self.resolver = resolver;
        self
    }

    pub fn with_dialer(mut self, dialer: Arc<dyn Dialer>) -> ProxyContext {
        self.dialer = dialer;
        self
    }

    pub fn with_denial_sink(mut self, sink: Arc<dyn DenialSink>) -> ProxyContext {
        self.denials = sink;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> ProxyContext {
        self.limits = limits;
        self
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn allowlist(&self) -> &AllowList {
        &self.allowlist
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl std::fmt::Debug for ProxyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyContext")
            .field("session", &self.session)
            .field("allowlist", self.allowlist.key())
            .field("hint", &self.hint)
            .field("own_addresses", &self.own_addresses.snapshot())
            .field("proxy_endpoints", &self.proxy_endpoints)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
