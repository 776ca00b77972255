//! Starting processes from the multi-threaded daemon, optionally handing
//! them descriptors.
//!
//! Children are started with posix_spawn (std does that when there is no
//! `pre_exec`, uid or gid to set): a fork of the daemon would copy all of
//! its threads' memory maps on every spawn. posix_spawn passes on every
//! descriptor not marked close-on-exec, so a descriptor meant for one
//! child (a pinned mount for bubblewrap's `--bind-fd`) is made inheritable
//! only while that child is spawned, and every spawn of the daemon goes
//! through [`SPAWN_LOCK`] so no other child is started in that window.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};

use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};

/// Held by whoever spawns a child in the daemon.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    SPAWN_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = fcntl_getfd(fd)?;
    let flags = if on {
        flags | FdFlags::CLOEXEC
    } else {
        flags - FdFlags::CLOEXEC
    };
    Ok(fcntl_setfd(fd, flags)?)
}

/// Runs `spawn` (which starts one child) with `pass` inheritable, and no
/// other spawn of the daemon at the same time. The descriptors keep their
/// numbers in the child.
pub fn with_inherited<T>(
    pass: &[BorrowedFd<'_>],
    spawn: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    let _only_us = lock();
    for fd in pass {
        set_cloexec(fd.as_fd(), false)?;
    }
    let spawned = spawn();
    let mut restored = Ok(());
    for fd in pass {
        if let Err(e) = set_cloexec(fd.as_fd(), true) {
            restored = Err(e);
        }
    }
    let child = spawned?;
    restored?;
    Ok(child)
}

/// Runs `spawn` with no descriptor passed (still excluded from the
/// windows of [`with_inherited`]).
pub fn exclusive<T>(spawn: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let _only_us = lock();
    spawn()
}

/// A sandbox's bubblewrap as data: started from the calling thread
/// ([`ChildSpec::spawn`]) or handed to an exec stub already waiting in
/// the session's cgroup (`sys::exec_stub`). Either way the child has
/// `stdin` as its stdin, stdout on `/dev/null`, stderr piped to the
/// daemon, a process group of its own, exactly `env` as its environment,
/// and the `keep` descriptors at their numbers (bwrap's `--*-fd`
/// arguments name them).
#[derive(Debug)]
pub struct ChildSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: OwnedFd,
    pub keep: Vec<OwnedFd>,
}

impl ChildSpec {
    /// posix_spawn from this thread (it inherits the thread's cgroups and
    /// session keyring).
    pub fn spawn(self) -> io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(self.stdin))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let fds: Vec<BorrowedFd<'_>> = self.keep.iter().map(AsFd::as_fd).collect();
        with_inherited(&fds, || cmd.spawn())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::process::Command;

    #[test]
    fn a_passed_descriptor_reaches_that_child_only() {
        let file = std::fs::File::open("/etc/hostname").unwrap();
        let fd = file.as_raw_fd();
        let probe = format!("test -e /proc/self/fd/{fd} && echo open || echo closed");
        let passed = with_inherited(&[file.as_fd()], || {
            Command::new("sh").arg("-c").arg(&probe).output()
        })
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&passed.stdout), "open\n");
        let other = exclusive(|| Command::new("sh").arg("-c").arg(&probe).output()).unwrap();
        assert_eq!(String::from_utf8_lossy(&other.stdout), "closed\n");
        assert!(fcntl_getfd(&file).unwrap().contains(FdFlags::CLOEXEC));
    }
}
