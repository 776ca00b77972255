//! A VM's virtio-serial port as an async byte stream.
//!
//! The port is a character device (`/dev/vportNpM`): `send`/`recv` fail
//! on it with `ENOTSOCK` (what tokio's `UnixStream` uses), so this reads
//! and writes with `read(2)`/`write(2)` on a non-blocking descriptor
//! registered with the runtime (epoll works on a port). A socket works
//! the same way, which the tests use.
//!
//! With the daemon's end passed to QEMU as a connected socket, the host
//! side is connected from the start: a read of 0 bytes means the daemon
//! is gone (the guest then powers off).

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where on a VM's init the ports are found.
pub(crate) const PORTS_DIR: &str = "/sys/class/virtio-ports";

pub(crate) struct PortStream(AsyncFd<OwnedFd>);

impl PortStream {
    /// Takes `fd` (made non-blocking) into the current runtime.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: `fd` is open and owned by the AsyncFd from here on, which
        // never replaces it, so it stays the same descriptor until dropped.
        let registered = unsafe { AsyncFd::register(fd) };
        registered.map(Self).map_err(|e| e.into_parts().1)
    }
}

impl AsyncRead for PortStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for PortStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The device of the port named `name`, if it exists yet (ports show up
/// in sysfs a little after `virtio_console` loads).
pub(crate) fn find_port(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries.filter_map(Result::ok).find_map(|entry| {
        let text = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (text.trim_end() == name).then(|| std::path::Path::new("/dev").join(entry.file_name()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_and_writes_with_plain_read_and_write() {
        // A pipe pair is not a socket: send/recv would fail on it.
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut reader = PortStream::new(r).unwrap();
        let mut writer = PortStream::new(w).unwrap();
        writer.write_all(b"hello port").await.unwrap();
        drop(writer);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello port");
    }

    #[test]
    fn ports_are_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (port, name) in [("vport0p1", "cowork.agent\n"), ("vport0p2", "cowork.net\n")] {
            std::fs::create_dir(dir.path().join(port)).unwrap();
            std::fs::write(dir.path().join(port).join("name"), name).unwrap();
        }
        std::fs::create_dir(dir.path().join("vport0p3")).unwrap();
        assert_eq!(
            find_port(dir.path(), "cowork.net"),
            Some(std::path::PathBuf::from("/dev/vport0p2"))
        );
        assert_eq!(find_port(dir.path(), "cowork.other"), None);
        assert_eq!(find_port(&dir.path().join("missing"), "cowork.net"), None);
    }
}
