//! The sandbox's only way out: the proxy endpoints inside its network
//! namespace.
//!
//! The sandbox has its own network namespace with loopback only. Before
//! any command runs, the agent binds `127.0.0.1:3128` (HTTP proxy) and
//! `127.0.0.1:1080` (SOCKS5) there and hands both listening sockets to the
//! daemon over its channel (`SCM_RIGHTS`, with one marker byte, as the
//! channel's very first bytes). The daemon accepts on them directly and
//! serves every connection with its allowlist proxy, dialling from the
//! host's namespace: no relay hop in the sandbox, and the agent's single
//! thread never carries proxy traffic. A socket keeps its namespace when
//! passed, so these stay inside the sandbox's loopback; a sandboxed
//! process cannot bind the ports itself (they are taken) and cannot reach
//! the sockets (the agent closes its copies, and the daemon is outside).
//!
//! The VM backend cannot pass descriptors across the VM boundary; it
//! carries the same connections as streams over its channel instead, to
//! the same proxy (`cowork_netproxy::serve_stream`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use cowork_policy::net::{HTTP_PROXY_ENDPOINT, SOCKS_PROXY_ENDPOINT};
use cowork_protocol::agent::LISTENERS_MARKER;
use rustix::net::{AddressFamily, SocketType, bind, listen, socket_with};

/// Pending connections each endpoint queues before the daemon accepts.
const BACKLOG: i32 = 1024;

fn listener(addr: SocketAddr) -> io::Result<OwnedFd> {
    let fd = socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    bind(&fd, &addr).map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    listen(&fd, BACKLOG)?;
    Ok(fd)
}

/// Binds both endpoints and sends them to the daemon on `channel`; our
/// copies are closed on return.
pub(crate) fn hand_over(channel: &OwnedFd) -> io::Result<()> {
    let http = listener(HTTP_PROXY_ENDPOINT)?;
    let socks = listener(SOCKS_PROXY_ENDPOINT)?;
    let sent = crate::sys::scm_rights::send_with_fds(
        channel,
        &[LISTENERS_MARKER],
        &[http.as_fd(), socks.as_fd()],
    )?;
    if sent != 1 {
        return Err(io::Error::other("the listeners were not sent"));
    }
    Ok(())
}
