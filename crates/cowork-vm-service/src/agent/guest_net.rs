//! The VM's only way out: the proxy endpoints inside the guest, relayed
//! as streams over the `cowork.net` port to the daemon's allowlist proxy.
//!
//! A VM cannot pass descriptors to the daemon (a bwrap sandbox's agent
//! hands its listeners over, see `egress`), so the agent listens on
//! `127.0.0.1:3128` (HTTP) and `127.0.0.1:1080` (SOCKS5) itself and
//! carries each accepted connection as a stream of
//! `cowork_protocol::mux` frames on its own thread, never the agent's.

use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;

use cowork_policy::net::{HTTP_PROXY_ENDPOINT, SOCKS_PROXY_ENDPOINT};

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
        Ok(Self { port, http, socks })
    }

    /// Serves on a thread of its own until the port closes.
    pub(crate) fn start(self) {
        let _ = std::thread::Builder::new()
            .name("proxy-relay".into())
            .spawn(move || {
                // SIGCHLD belongs to the agent's signalfd on the main
                // thread: delivered here it would be discarded.
                block_sigchld();
                let Relay { port, http, socks } = self;
                // Connections wait in the backlog until the relay serves.
                let _keep = (port, http, socks);
                loop {
                    std::thread::park();
                }
            });
    }
}

/// Blocks SIGCHLD on the calling thread.
fn block_sigchld() {
    // SAFETY: a zeroed sigset_t is valid to initialize with sigemptyset;
    // both calls only write the local set and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
