//! Tunnel throughput against direct loopback, on this machine:
//!
//!     cargo run --release -p cowork-netproxy --example throughput [MiB [relay-KiB]]
//!
//! A sink server on 127.0.0.2 reads and discards; the client writes the
//! given amount (default 1024 MiB) directly, through an HTTP CONNECT
//! tunnel and through a SOCKS5 tunnel, and prints MB/s for each. A
//! benchmark, not a test: numbers vary with the machine and its load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use cowork_netproxy::{Limits, Protocol, ProxyContext, serve_listener};
use cowork_policy::net::AllowList;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    let total = mib * 1024 * 1024;
    let relay_kib: Option<usize> = std::env::args().nth(2).map(|s| s.parse()).transpose()?;

    let sink = TcpListener::bind("127.0.0.2:0").await?;
    let sink_addr = sink.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n = 0u64;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = stream.write_all(&n.to_be_bytes()).await;
            });
        }
    });

    let allowlist = Arc::new(AllowList::from_patterns(&["127.0.0.2"]));
    let mut limits = Limits::default();
    if let Some(kib) = relay_kib {
        limits.relay_buffer_size = kib * 1024;
    }
    println!("relay buffers: {} KiB", limits.relay_buffer_size / 1024);
    let ctx = ProxyContext::new("bench", allowlist).with_limits(limits);
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = http.local_addr()?;
    tokio::spawn(serve_listener(http, Protocol::Http, ctx.clone()));
    let socks = TcpListener::bind("127.0.0.1:0").await?;
    let socks_addr = socks.local_addr()?;
    tokio::spawn(serve_listener(socks, Protocol::Socks5, ctx));

    for round in 0..2 {
        let direct = run(TcpStream::connect(sink_addr).await?, total).await?;
        let connect = run(http_tunnel(http_addr, sink_addr).await?, total).await?;
        let socks5 = run(socks_tunnel(socks_addr, sink_addr).await?, total).await?;
        println!(
            "round {round}: {mib} MiB  direct {direct:.0} MB/s  CONNECT {connect:.0} MB/s ({:.2}x)  SOCKS5 {socks5:.0} MB/s ({:.2}x)",
            connect / direct,
            socks5 / direct
        );
    }
    Ok(())
}

async fn run(mut stream: TcpStream, total: usize) -> Result<f64> {
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        stream.write_all(&chunk[..n]).await?;
        sent += n;
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let secs = started.elapsed().as_secs_f64();
    if u64::from_be_bytes(count) != total as u64 {
        return Err("short transfer".into());
    }
    Ok(total as f64 / secs / 1e6)
}

async fn http_tunnel(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&head).into_owned().into());
    }
    Ok(stream)
}

async fn socks_tunnel(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await?;
    let SocketAddr::V4(v4) = target else {
        return Err("IPv4 target expected".into());
    };
    let mut msg = vec![5, 1, 0, 5, 1, 0, 1];
    msg.extend_from_slice(&v4.ip().octets());
    msg.extend_from_slice(&v4.port().to_be_bytes());
    stream.write_all(&msg).await?;
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).await?;
    if reply[3] != 0 {
        return Err(format!("SOCKS5 reply {}", reply[3]).into());
    }
    Ok(stream)
}
