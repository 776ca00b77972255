//! A standalone proxy for trying the allowlist by hand:
//!
//!     cargo run -p cowork-netproxy --example serve -- HTTP_ADDR SOCKS_ADDR [PATTERN...]
//!
//! e.g. `serve 127.0.0.1:3128 127.0.0.1:1080 localhost '*.example.com'`,
//! then `curl -x http://127.0.0.1:3128 ...` or
//! `curl -x socks5h://127.0.0.1:1080 ...`. No pattern at all means an
//! absent allowlist (public destinations allowed). Denials are logged to
//! stderr.

use std::net::SocketAddr;
use std::sync::Arc;

use cowork_netproxy::{OwnAddresses, Protocol, ProxyContext, serve_listener};
use cowork_policy::net::AllowList;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let usage = "usage: serve HTTP_ADDR SOCKS_ADDR [PATTERN...]";
    let http: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let socks: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let patterns: Vec<String> = args.collect();
    let allowlist = match patterns.is_empty() {
        true => AllowList::from_entries(None),
        false => AllowList::from_entries(Some(&patterns)),
    };
    for warning in allowlist.warnings() {
        eprintln!("{warning}");
    }
    eprintln!("allowlist: {}", allowlist.key());
    let ctx = ProxyContext::new("serve", Arc::new(allowlist))
        .with_own_addresses(OwnAddresses::from_system()?)
        .with_proxy_endpoints(vec![http, socks])
        .with_hint("run with {host} among the patterns");
    let http_listener = tokio::net::TcpListener::bind(http).await?;
    let socks_listener = tokio::net::TcpListener::bind(socks).await?;
    tokio::select! {
        () = serve_listener(http_listener, Protocol::Http, ctx.clone()) => {}
        () = serve_listener(socks_listener, Protocol::Socks5, ctx) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
