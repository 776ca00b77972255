//! Helper processes (QEMU, virtiofsd) that end with the daemon, even when
//! it is killed with SIGKILL.
//!
//! The daemon starts children with posix_spawn (no `pre_exec`, so no
//! `PR_SET_PDEATHSIG` in the child), and neither QEMU nor virtiofsd exits
//! when a peer goes away in every case (a hung guest keeps QEMU alive). So
//! each helper runs under a guard: this binary's hidden `vm-guard`
//! subcommand, started with posix_spawn, which starts the helper (again
//! with posix_spawn) and waits on two descriptors: the helper's pidfd and
//! the read end of a pipe whose only write end the daemon holds
//! (close-on-exec, so no child has it). When the daemon dies, for any
//! reason, the kernel closes that end: the pipe reports hang-up and the
//! guard kills the helper and exits. When the helper exits, the guard
//! exits with its status. Guard and helper share a process group, which
//! the daemon kills to stop both.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;

use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open};

/// The guard's subcommand name.
pub const GUARD_SUBCOMMAND: &str = "vm-guard";

/// The read end every guard watches; the daemon keeps the write end for
/// its whole life.
struct LifePipe {
    read: OwnedFd,
    _write: OwnedFd,
}

static LIFE: OnceLock<Result<LifePipe, String>> = OnceLock::new();

fn life() -> io::Result<&'static LifePipe> {
    LIFE.get_or_init(|| {
        pipe_with(PipeFlags::CLOEXEC)
            .map(|(read, write)| LifePipe {
                read,
                _write: write,
            })
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| io::Error::other(e.clone()))
}

/// A command to start under a guard.
pub struct Guarded {
    pub program: std::path::PathBuf,
    pub args: Vec<String>,
    /// Descriptors the helper gets, at the same numbers.
    pub pass: Vec<RawFd>,
    pub cwd: Option<std::path::PathBuf>,
}

/// Starts `helper` under a guard in a process group of its own; the
/// returned child is the guard (stdout/stderr as set on `stdio`).
pub fn spawn(
    agent_binary: &std::path::Path,
    helper: &Guarded,
    passed: &[BorrowedFd<'_>],
    stderr: Stdio,
) -> io::Result<tokio::process::Child> {
    let life = life()?;
    let mut cmd = tokio::process::Command::new(agent_binary);
    cmd.arg(GUARD_SUBCOMMAND)
        .arg(format!("--watch-fd={}", life.read.as_raw_fd()));
    for fd in &helper.pass {
        cmd.arg(format!("--pass-fd={fd}"));
    }
    cmd.arg("--")
        .arg(&helper.program)
        .args(&helper.args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    if let Some(dir) = &helper.cwd {
        cmd.current_dir(dir);
    }
    let mut all: Vec<BorrowedFd<'_>> = passed.to_vec();
    all.push(life.read.as_fd());
    crate::sys::spawn::with_inherited(&all, || cmd.spawn())
}

/// Arguments of the guard subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardArgs {
    pub watch_fd: RawFd,
    pub pass: Vec<RawFd>,
    pub argv: Vec<OsString>,
}

/// Parses `vm-guard --watch-fd=N [--pass-fd=M]... -- PROGRAM ARGS...`
/// (everything after the subcommand).
pub fn parse_args(args: &[OsString]) -> Option<GuardArgs> {
    let mut watch = None;
    let mut pass = Vec::new();
    let mut iter = args.iter();
    for a in iter.by_ref() {
        let text = a.to_str()?;
        if text == "--" {
            break;
        }
        if let Some(n) = text.strip_prefix("--watch-fd=") {
            watch = Some(n.parse().ok()?);
        } else if let Some(n) = text.strip_prefix("--pass-fd=") {
            pass.push(n.parse().ok()?);
        } else {
            return None;
        }
    }
    let argv: Vec<OsString> = iter.cloned().collect();
    (!argv.is_empty()).then_some(GuardArgs {
        watch_fd: watch?,
        pass,
        argv,
    })
}

/// Entry point of `cowork-vm-service vm-guard ...`.
pub fn main(args: &[OsString]) -> ExitCode {
    let Some(args) = parse_args(args) else {
        eprintln!(
            "usage: cowork-vm-service vm-guard --watch-fd=N [--pass-fd=M]... -- PROGRAM [ARGS]"
        );
        return ExitCode::from(2);
    };
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cowork-vm-service vm-guard: {e}");
            ExitCode::from(125)
        }
    }
}

fn run(args: &GuardArgs) -> io::Result<u8> {
    // Only the passed descriptors reach the helper; the watched one stays
    // ours.
    crate::sys::fds::cloexec_inherited(&args.pass)?;
    // SAFETY: the daemon passed this descriptor open for our use only.
    let watch = unsafe { BorrowedFd::borrow_raw(args.watch_fd) };
    let (program, rest) = args
        .argv
        .split_first()
        .ok_or_else(|| io::Error::other("no program"))?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .spawn()?;
    let pid = Pid::from_raw(child.id() as i32).ok_or_else(|| io::Error::other("no pid"))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty())?;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: watch.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            return Err(e);
        }
        if fds[1].revents != 0 {
            let status = child.wait()?;
            return Ok(status.code().map_or(128, |c| c as u8));
        }
        if fds[0].revents != 0 {
            // The daemon is gone (nothing ever writes to the pipe).
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let _ = child.wait();
            return Ok(137);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn guard_arguments() {
        assert_eq!(
            parse_args(&os(&[
                "--watch-fd=5",
                "--pass-fd=3",
                "--pass-fd=4",
                "--",
                "qemu",
                "-M"
            ])),
            Some(GuardArgs {
                watch_fd: 5,
                pass: vec![3, 4],
                argv: os(&["qemu", "-M"])
            })
        );
        assert_eq!(parse_args(&os(&["--watch-fd=5", "--"])), None);
        assert_eq!(parse_args(&os(&["--", "qemu"])), None);
        assert_eq!(parse_args(&os(&["--bogus", "--", "qemu"])), None);
    }
}
