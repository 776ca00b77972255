//! Descriptors inherited from whoever started us.
//!
//! A launcher can leak descriptors (a key file opened without
//! close-on-exec, a socket to a session bus): everything we start would
//! inherit them, sandboxed processes included. So at start every
//! inherited descriptor above stderr is marked close-on-exec; from then on
//! a child gets only stdin, stdout, stderr and what is handed to it on
//! purpose.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};

/// Raises the soft limit on open descriptors to the hard limit (as Node
/// does for the reference): every connection, pipe, pinned folder and
/// sandbox costs descriptors, and the default soft limit is often 1,024.
/// Returns the limit in force.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    if let Some(hard_value) = hard
        && soft.is_some_and(|s| s < hard_value)
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard_value),
            maximum: Some(hard_value),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return hard_value,
            Err(e) => tracing::warn!("cannot raise the open-file limit to {hard_value}: {e}"),
        }
    }
    soft.unwrap_or(u64::MAX)
}

/// Marks every open descriptor from 3 up close-on-exec, except `keep`.
pub fn cloexec_inherited(keep: &[RawFd]) -> io::Result<()> {
    if keep.iter().all(|&k| k < 3) && close_range_cloexec().is_ok() {
        return Ok(());
    }
    // One by one, from what /proc says is open (older kernels, or a
    // descriptor to keep in the middle of the range).
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open.into_iter().filter(|fd| *fd >= 3 && !keep.contains(fd)) {
        // SAFETY: only the flags of `fd` are read and changed; the number
        // came from /proc/self/fd, and one that was the directory
        // iterator's own (closed by now) just fails with EBADF.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = fcntl_getfd(borrowed) {
            fcntl_setfd(borrowed, flags | FdFlags::CLOEXEC)?;
        }
    }
    Ok(())
}

/// `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11+): one call.
fn close_range_cloexec() -> io::Result<()> {
    // SAFETY: close_range only changes descriptor flags; with
    // CLOSE_RANGE_CLOEXEC it closes nothing, so no descriptor owned by
    // this process becomes invalid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn is_cloexec(fd: RawFd) -> bool {
        // SAFETY: the descriptor is owned by the test and open.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        fcntl_getfd(b).unwrap().contains(FdFlags::CLOEXEC)
    }

    #[test]
    fn inherited_descriptors_become_close_on_exec_except_the_kept_one() {
        let leaked = std::fs::File::open("/etc/hostname").unwrap();
        let kept = std::fs::File::open("/etc/hostname").unwrap();
        for f in [&leaked, &kept] {
            // SAFETY: the test owns both descriptors.
            let b = unsafe { BorrowedFd::borrow_raw(f.as_raw_fd()) };
            fcntl_setfd(b, FdFlags::empty()).unwrap();
        }
        cloexec_inherited(&[kept.as_raw_fd()]).unwrap();
        assert!(is_cloexec(leaked.as_raw_fd()));
        assert!(!is_cloexec(kept.as_raw_fd()));
        cloexec_inherited(&[]).unwrap();
        assert!(is_cloexec(kept.as_raw_fd()));
    }
}
