//! The VM's only way out: the proxy endpoints inside the guest, relayed
//! as streams over the `cowork.net` port to the daemon's allowlist proxy.
//!
//! A VM cannot pass descriptors to the daemon (a bwrap sandbox's agent
//! hands its listeners over, see `egress`), so the agent listens on
//! `127.0.0.1:3128` (HTTP) and `127.0.0.1:1080` (SOCKS5) itself and
//! carries each accepted connection as a `cowork_protocol::mux` stream
//! (see `crate::netmux`), on a thread and runtime of its own: proxy
//! traffic never waits for the agent's request loop, nor the other way.

use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;

use cowork_policy::net::{HTTP_PROXY_ENDPOINT, SOCKS_PROXY_ENDPOINT};
use cowork_protocol::mux::StreamProtocol;
use tokio::sync::mpsc;

use super::port::PortStream;
use crate::netmux::{self, Conn};

/// The bound endpoints and the port to carry their connections over.
pub(crate) struct Relay {
    port: OwnedFd,
    http: TcpListener,
    socks: TcpListener,
}

impl Relay {
    /// Binds both endpoints (before any command could take the ports).
    pub(crate) fn bind(port: OwnedFd) -> io::Result<Self> {
        let http = TcpListener::bind(HTTP_PROXY_ENDPOINT)?;
        let socks = TcpListener::bind(SOCKS_PROXY_ENDPOINT)?;
        http.set_nonblocking(true)?;
        socks.set_nonblocking(true)?;
        Ok(Self { port, http, socks })
    }

    /// Serves on a thread of its own until the port closes.
    pub(crate) fn start(self) {
        let spawned = std::thread::Builder::new()
            .name("proxy-relay".into())
            .spawn(move || {
                // SIGCHLD belongs to the agent's signalfd on the main
                // thread: delivered here it would be discarded.
                block_sigchld();
                if let Err(e) = self.serve() {
                    eprintln!("cowork-vm-service agent: proxy relay: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("cowork-vm-service agent: proxy relay thread: {e}");
        }
    }

    fn serve(self) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let Relay { port, http, socks } = self;
        runtime.block_on(async move {
            let port = PortStream::new(port)?;
            let (tx, rx) = mpsc::channel(64);
            for (listener, protocol) in [
                (http, StreamProtocol::Http),
                (socks, StreamProtocol::Socks5),
            ] {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((conn, _)) => {
                                let _ = conn.set_nodelay(true);
                                let boxed: Box<dyn Conn> = Box::new(conn);
                                if tx.send((protocol, boxed)).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => {
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await
                            }
                        }
                    }
                });
            }
            drop(tx);
            netmux::run(port, Some(rx), None).await;
            Ok(())
        })
    }
}

/// Blocks SIGCHLD on the calling thread.
fn block_sigchld() {
    // SAFETY: a zeroed sigset_t is valid to initialize with sigemptyset;
    // the calls only write the local set and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
