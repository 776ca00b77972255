//! Descriptors over Unix sockets (`SCM_RIGHTS`): one message of bytes
//! with descriptors attached, each way. Used by the agent handing its
//! proxy listeners to the daemon (`agent::egress`, `backend::agent_link`)
//! and by the daemon handing bwrap's descriptors to an exec stub
//! (`sys::exec_stub`).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

/// Sends `bytes` (at least one: a message of none carries nothing on a
/// stream socket) with `fds` attached; returns the bytes sent.
pub fn send_with_fds(socket: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    Ok(sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Receives one message into `buf`, appending the attached descriptors
/// (close-on-exec) to `fds`, with room for at least `max_fds` of them;
/// returns the bytes received (0 at end of input). Descriptors beyond the
/// room are closed by the kernel (`MSG_CTRUNC`), never leaked into this
/// process, and the message is then an error.
pub fn recv_with_fds(
    socket: impl AsFd,
    buf: &mut [u8],
    max_fds: usize,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::other(format!(
            "more descriptors were sent than the {max_fds} expected (the rest were closed)"
        )));
    }
    Ok(msg.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::{FdFlags, fcntl_getfd};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_arrive_with_their_bytes_and_close_on_exec() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut pipe_r, pipe_w) = std::io::pipe().unwrap();
        let sent = send_with_fds(&a, b"x", &[pipe_w.as_fd(), pipe_r.as_fd()]).unwrap();
        assert_eq!(sent, 1);
        let mut buf = [0u8; 4];
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(&b, &mut buf, 2, &mut fds).unwrap(), 1);
        assert_eq!(&buf[..1], b"x");
        assert_eq!(fds.len(), 2);
        for fd in &fds {
            assert!(fcntl_getfd(fd).unwrap().contains(FdFlags::CLOEXEC));
        }
        // They are the same pipe: what goes into the received write end
        // comes out of our read end.
        let mut w = std::fs::File::from(fds.remove(0));
        w.write_all(b"hi").unwrap();
        drop(w);
        let mut got = [0u8; 2];
        pipe_r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn more_descriptors_than_asked_for_are_not_kept() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let five = [r.as_fd(), w.as_fd(), r.as_fd(), w.as_fd(), r.as_fd()];
        send_with_fds(&a, b"y", &five).unwrap();
        let mut buf = [0u8; 1];
        let mut fds = Vec::new();
        let e = recv_with_fds(&b, &mut buf, 1, &mut fds).unwrap_err();
        assert!(e.to_string().contains("more descriptors"), "{e}");
        // The room is rounded up to the control message's alignment; what
        // did not fit was closed, not received.
        assert!((1..5).contains(&fds.len()), "{fds:?}");
    }

    #[test]
    fn end_of_input_is_zero_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(&b, &mut [0u8; 1], 2, &mut fds).unwrap(), 0);
        assert!(fds.is_empty());
    }
}
