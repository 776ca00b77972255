//! What every process the daemon and the agent start share. None of them
//! uses `pre_exec`: std then spawns with posix_spawn (vfork + exec), which
//! is far cheaper than forking the multi-threaded daemon. Dying with the
//! daemon is arranged without it (the orphan guard for host processes, the
//! agent channel for sandboxes).

/// The exit code reported for a command that could not be executed, as a
/// shell reports it: 127 when missing, 126 otherwise.
pub fn exec_failure_code(e: &std::io::Error) -> i32 {
    if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// Output pipes of a command that streams a lot are grown to this size:
/// fewer wake-ups per megabyte (1 MiB is the default unprivileged maximum).
/// See [`crate::supervise::OutputPipe`] for when.
pub const OUTPUT_PIPE_SIZE: usize = 1 << 20;

/// Grows an output pipe; failure (a lower `pipe-max-size`) only costs speed.
pub fn grow_pipe<Fd: std::os::fd::AsFd>(fd: Fd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, OUTPUT_PIPE_SIZE);
}
