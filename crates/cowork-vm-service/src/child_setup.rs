//! What every process the daemon starts directly shares: it dies with the
//! daemon, and how a failed `exec` is reported.

use std::os::fd::{BorrowedFd, RawFd};

use rustix::io::{FdFlags, fcntl_setfd};
use rustix::process::{Signal, getppid, set_parent_process_death_signal};
use tokio::process::Command;

/// Makes the child get SIGKILL when the daemon dies, and optionally lets
/// `inherit` (a CLOEXEC descriptor) survive its `exec`.
///
/// PDEATHSIG fires when the forking *thread* exits: tokio worker threads
/// live as long as the runtime, so spawns must not happen on a
/// blocking-pool thread. `inherit` must stay open until `spawn` returns.
pub fn die_with_daemon(cmd: &mut Command, inherit: Option<RawFd>) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (prctl, getppid, fcntl); it
    // allocates nothing. `inherit` is open in the parent while it spawns, so
    // the child's copy is valid.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The daemon may have died between fork and prctl.
            if getppid() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::SRCH.raw_os_error(),
                ));
            }
            if let Some(fd) = inherit {
                fcntl_setfd(BorrowedFd::borrow_raw(fd), FdFlags::empty())?;
            }
            Ok(())
        });
    }
}

/// The exit code reported for a command that could not be executed, as a
/// shell reports it: 127 when missing, 126 otherwise.
pub fn exec_failure_code(e: &std::io::Error) -> i32 {
    if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// Output pipes are grown to this size: fewer wake-ups per megabyte when a
/// command streams a lot (1 MiB is the default unprivileged maximum).
pub const OUTPUT_PIPE_SIZE: usize = 1 << 20;

/// Grows an output pipe; failure (a lower `pipe-max-size`) only costs speed.
pub fn grow_pipe<Fd: std::os::fd::AsFd>(fd: Fd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, OUTPUT_PIPE_SIZE);
}
