//! `SIGCHLD` as a readable descriptor (`signalfd`), for the agent's reaper.
//!
//! A signal handler (tokio's `signal`) needs a process-wide registry and a
//! socketpair, set up on the path of every sandbox start; a signalfd is one
//! descriptor. `SIGCHLD` is blocked on the agent's only thread so it queues
//! on the descriptor instead of being delivered (or discarded).
//!
//! Children inherit the signal mask, and std's posix_spawn keeps it, so
//! spawns run inside [`unblocked_during`]: a child must not start with
//! `SIGCHLD` blocked (Node's child-process handling, among others, waits
//! for it). A `SIGCHLD` arriving in that window is discarded, so the caller
//! reaps right after; the signal is only a wake-up, the zombie stays.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Size of one `struct signalfd_siginfo`.
const SIGINFO_SIZE: usize = 128;

pub(crate) struct ChildSignals(AsyncFd<OwnedFd>);

impl ChildSignals {
    /// Blocks `SIGCHLD` on the calling thread and opens the descriptor.
    /// Call it on the agent's one thread, before any child exists.
    pub(crate) fn new() -> io::Result<Self> {
        let set = sigchld_set();
        set_sigchld_blocked(true)?;
        // SAFETY: -1 asks for a new descriptor; `set` is initialized.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `fd` is open and owned by the AsyncFd from here on, which
        // never replaces it, so it stays the same descriptor until dropped.
        let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
        registered.map(Self).map_err(|e| e.into_parts().1)
    }

    /// Waits until at least one `SIGCHLD` arrived since the last call;
    /// several are coalesced (the reaper collects every exited child).
    pub(crate) async fn recv(&self) -> io::Result<()> {
        let mut buf = [0u8; SIGINFO_SIZE * 16];
        loop {
            let mut ready = self.0.readable().await?;
            match ready
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf).map_err(io::Error::from))
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                // Spurious readiness: wait again.
                Err(_would_block) => {}
            }
        }
    }
}

fn sigchld_set() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value of this plain C type,
    // and sigemptyset initializes it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
    }
    set
}

fn set_sigchld_blocked(blocked: bool) -> io::Result<()> {
    let set = sigchld_set();
    let how = if blocked {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is initialized; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Runs `spawn` with `SIGCHLD` unblocked (see the module docs); reap after.
pub(crate) fn unblocked_during<T>(spawn: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    set_sigchld_blocked(false)?;
    let spawned = spawn();
    // Failing to block again only costs the descriptor its wake-ups for
    // exits in between; the next spawn's reap collects them.
    let _ = set_sigchld_blocked(true);
    spawned
}
