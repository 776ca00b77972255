//! The egress allowlist proxy of `cowork-vm-service`.
//!
//! Each sandbox has a private network namespace with loopback only.
//! Inside it, listeners on `127.0.0.1:3128` (HTTP proxy) and
//! `127.0.0.1:1080` (SOCKS5) are handed to the daemon, which serves them
//! with [`serve_listener`]; streams from elsewhere (a VM's multiplexed
//! channel) are served one by one with [`serve_stream`]. Every decision
//! comes from [`cowork_policy::net`]: this crate does the I/O.
//!
//! For each connection: the requested destination is normalized and
//! judged against the sandbox's [`AllowList`](cowork_policy::net::AllowList);
//! an allowed name is resolved once through the context's [`Resolver`],
//! every address vetted, and only the vetted addresses dialled, in order,
//! through its [`Dialer`]. A refusal is a 403 (HTTP) or reply 0x02
//! (SOCKS5), and is reported to the context's [`DenialSink`].
//!
//! Wiring, for the daemon:
//!
//! * one [`ProxyContext`] per sandbox (session label, the spawn's
//!   `Arc<AllowList>`, the hint text, a clone of the daemon-wide
//!   [`OwnAddresses`], a shared [`DenialSink`]); key sandboxes by
//!   [`AllowList::key`](cowork_policy::net::AllowList::key);
//! * [`ProxyContext::with_proxy_endpoints`] takes the addresses at which
//!   the proxy can be reached *from the namespace it dials in*: none for
//!   listeners that live in a sandbox's own namespace (the host's
//!   `127.0.0.1:3128` is another socket), the bound addresses when the
//!   listeners share the dialling namespace (a standalone or host-backend
//!   proxy);
//! * `tokio::spawn(serve_listener(listener, Protocol::Http, ctx))` per
//!   handed-over listener, aborting the task when the sandbox goes away
//!   (its connections end with it); [`serve_stream`] for streams from a
//!   VM channel;
//! * the environment of every sandboxed process gets
//!   [`cowork_policy::net::proxy_env()`].
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use cowork_netproxy::{OwnAddresses, Protocol, ProxyContext, serve_listener};
//! use cowork_policy::net::AllowList;
//!
//! let allowlist = Arc::new(AllowList::from_patterns(&["*.github.com", "github.com"]));
//! let ctx = ProxyContext::new("my-session", allowlist)
//!     .with_own_addresses(OwnAddresses::from_system()?)
//!     .with_hint("add it to the allowed domains");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! tokio::spawn(serve_listener(listener, Protocol::Http, ctx));
//! # Ok(()) }
//! ```

mod context;
mod denial;
mod error;
pub mod http;
mod resolve;
mod serve;
pub mod socks;
mod upstream;

pub use context::{Limits, OwnAddresses, ProxyContext, read_interface_addresses};
pub use denial::{DenialDedup, DenialEvent, DenialSink, LogDenials};
pub use error::ProxyError;
pub use http::parse::{
    HeadParse, ProxyRequest, RequestError, classify_request, parse_request_head,
};
pub use http::serve_http;
pub use resolve::{Dialer, Resolver, StaticResolver, SystemResolver, TcpDialer};
pub use serve::{Protocol, serve_listener, serve_stream};
pub use socks::parse::{
    Address as SocksAddress, Command as SocksCommand, Greeting as SocksGreeting, Parsed,
    Request as SocksRequest, SocksParseError, encode_reply, parse_greeting, parse_request,
};
pub use socks::serve_socks5;
