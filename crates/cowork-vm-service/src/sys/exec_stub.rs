//! A process started ahead of time that becomes a sandbox's bubblewrap
//! when asked: how a sandbox is born inside a cgroup v2 session cgroup.
//!
//! On cgroup v2 the threads of one process share its cgroup, so the v1
//! trick of `sys::cgroup_spawner` (one thread of ours visits the session's
//! cgroup and posix_spawns bwrap there) does not exist. The other ways in
//! are all worse on the path of a session's first command: a `pre_exec`
//! makes every spawn a fork; moving bwrap after it started races with the
//! sandbox it forks at once; moving any process costs the first writer
//! after a quiet moment an RCU grace period (10-18 ms measured here); and
//! glibc's `posix_spawnattr_setcgroup_np` (clone3 `CLONE_INTO_CGROUP`)
//! needs glibc 2.39. So a stub (this binary, `exec-stub --fd N`: one
//! thread, no runtime) is started and moved into a spare session cgroup
//! off that path; when a session needs its sandbox, the daemon sends the
//! stub bwrap's argv, environment and descriptors, and the stub execs
//! bwrap. It is the daemon's child all along, so the daemon waits for
//! bwrap as for any child it spawned.
//!
//! # The exchange (a `SOCK_SEQPACKET` socketpair, the stub's end at `N`)
//!
//! 1. header: payload length and descriptor count, 4 bytes each (LE);
//! 2. the descriptors, at most [`FDS_PER_MESSAGE`] per message (each a
//!    one-byte message carrying them as `SCM_RIGHTS`);
//! 3. the payload: [`ExecRequest`] as JSON, in messages of at most
//!    [`PAYLOAD_CHUNK`] bytes;
//! 4. the stub's reply: nothing (its end is close-on-exec, so the daemon
//!    reads end-of-file once bwrap runs), or why it could not exec.
//!
//! A stub whose daemon goes away reads end-of-file and exits.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, recv, send, socketpair,
};
use serde::{Deserialize, Serialize};

use super::scm_rights::{recv_with_fds, send_with_fds};
use super::spawn::{ChildSpec, with_inherited};

/// `argv[1]` of a stub.
pub const EXEC_STUB_SUBCOMMAND: &str = "exec-stub";

/// Descriptors per `SCM_RIGHTS` message (the kernel takes 253 at most).
pub const FDS_PER_MESSAGE: usize = 200;

/// Payload bytes per message (below the socket's send buffer).
pub const PAYLOAD_CHUNK: usize = 64 * 1024;

/// The largest payload a stub accepts (bwrap's argv with every bind).
const MAX_PAYLOAD: usize = 16 << 20;

/// The most descriptors a stub accepts.
const MAX_FDS: usize = 65_536;

/// How long the daemon waits for a stub to exec.
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

/// What a stub execs: `program` with `args` (argv\[0\] is `program`) and
/// exactly `env`; the descriptors sent with it land at `fds` (same order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub fds: Vec<RawFd>,
}

/// Why a stub could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum StubError {
    #[error("usage: {EXEC_STUB_SUBCOMMAND} --fd N")]
    Usage,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the request is malformed: {0}")]
    Malformed(String),
    #[error("exec {program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
}

impl From<rustix::io::Errno> for StubError {
    fn from(e: rustix::io::Errno) -> Self {
        StubError::Io(e.into())
    }
}

/// The stub's `main` (`argv[2..]` = `--fd N`). Returns only on failure.
pub fn main(args: &[OsString]) -> ExitCode {
    let fd = match args {
        [flag, n] if flag == "--fd" => n.to_str().and_then(|n| n.parse::<RawFd>().ok()),
        _ => None,
    };
    let Some(fd) = fd.filter(|fd| *fd >= 0) else {
        eprintln!("cowork-vm-service: {}", StubError::Usage);
        return ExitCode::from(2);
    };
    // SAFETY: the daemon starts the stub with this descriptor open (its
    // socketpair end) and nothing else in this single-threaded process
    // owns it.
    let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // Never inherited by bwrap: the daemon reads end-of-file at the exec.
    if let Err(e) = rustix::io::fcntl_setfd(&socket, rustix::io::FdFlags::CLOEXEC) {
        report(&socket, &StubError::from(e));
        return ExitCode::from(127);
    }
    let request = match receive(&socket) {
        Ok(Some(request)) => request,
        // The daemon let go of this spare without using it.
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            report(&socket, &e);
            return ExitCode::from(127);
        }
    };
    let (socket, e) = become_it(socket, request);
    report(&socket, &e);
    ExitCode::from(127)
}

fn report(socket: &OwnedFd, e: &StubError) {
    let text = e.to_string();
    let _ = send(socket, text.as_bytes(), SendFlags::NOSIGNAL);
    eprintln!("cowork-vm-service exec-stub: {text}");
}

fn receive(socket: &OwnedFd) -> Result<Option<(ExecRequest, Vec<OwnedFd>)>, StubError> {
    let mut header = [0u8; 8];
    let (n, _) = recv(socket, &mut header, RecvFlags::empty())?;
    if n == 0 {
        return Ok(None);
    }
    if n != header.len() {
        return Err(StubError::Malformed(format!("a {n}-byte header")));
    }
    let [a, b, c, d, e, f, g, h] = header;
    let payload_len = u32::from_le_bytes([a, b, c, d]) as usize;
    let nfds = u32::from_le_bytes([e, f, g, h]) as usize;
    if payload_len > MAX_PAYLOAD || nfds > MAX_FDS {
        return Err(StubError::Malformed(format!(
            "{payload_len} bytes and {nfds} descriptors"
        )));
    }
    let mut fds = Vec::with_capacity(nfds);
    while fds.len() < nfds {
        let before = fds.len();
        if recv_with_fds(socket, &mut [0u8; 1], FDS_PER_MESSAGE, &mut fds)? == 0 {
            return Err(StubError::Malformed(
                "end of input among the descriptors".into(),
            ));
        }
        if fds.len() == before {
            return Err(StubError::Malformed(
                "a descriptor message without any".into(),
            ));
        }
    }
    let mut payload = vec![0u8; payload_len];
    let mut filled = 0;
    while filled < payload_len {
        let (n, _) = recv(socket, &mut payload[filled..], RecvFlags::empty())?;
        if n == 0 {
            return Err(StubError::Malformed("end of input in the payload".into()));
        }
        filled += n;
    }
    let request: ExecRequest =
        serde_json::from_slice(&payload).map_err(|e| StubError::Malformed(e.to_string()))?;
    if request.fds.len() != fds.len() || request.fds.iter().any(|fd| *fd < 0) {
        return Err(StubError::Malformed(format!(
            "{} descriptors for {} places",
            fds.len(),
            request.fds.len()
        )));
    }
    Ok(Some((request, fds)))
}

/// Puts the descriptors at their numbers and execs; returns (with the
/// socket, wherever it is now) only on failure.
fn become_it(socket: OwnedFd, (request, fds): (ExecRequest, Vec<OwnedFd>)) -> (OwnedFd, StubError) {
    // Everything we hold moves above every target first, so no dup2 below
    // closes a descriptor that is still to be placed (or the socket).
    let floor = request.fds.iter().copied().max().unwrap_or(0).max(2) + 1;
    let socket = match rustix::io::fcntl_dupfd_cloexec(&socket, floor) {
        Ok(high) => {
            drop(socket);
            high
        }
        Err(e) => return (socket, e.into()),
    };
    let mut moved = Vec::with_capacity(fds.len());
    for fd in fds {
        match rustix::io::fcntl_dupfd_cloexec(&fd, floor) {
            Ok(high) => moved.push(high),
            Err(e) => return (socket, e.into()),
        }
    }
    for (fd, target) in moved.iter().zip(&request.fds) {
        // SAFETY: dup2 on a descriptor we own to a number below `floor`,
        // which nothing of ours holds any more (everything was moved up);
        // the new descriptor is not close-on-exec, for bwrap.
        if unsafe { libc::dup2(fd.as_raw_fd(), *target) } < 0 {
            return (socket, io::Error::last_os_error().into());
        }
    }
    let e = std::process::Command::new(&request.program)
        .args(&request.args)
        .env_clear()
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .exec();
    (
        socket,
        StubError::Exec {
            program: request.program.display().to_string(),
            source: e,
        },
    )
}

/// The daemon's handle on one stub, waiting to become a sandbox's bwrap.
#[derive(Debug)]
pub struct Stub {
    child: tokio::process::Child,
    socket: OwnedFd,
}

impl Stub {
    /// Starts a stub of `binary` (this executable) from the calling thread
    /// (it inherits the thread's session keyring) with the stdio a
    /// sandbox's bwrap gets (see [`ChildSpec`]).
    pub fn spawn(binary: &Path) -> io::Result<Stub> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(EXEC_TIMEOUT),
        )?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.arg(EXEC_STUB_SUBCOMMAND)
            .arg("--fd")
            .arg(theirs.as_raw_fd().to_string())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let child = with_inherited(&[theirs.as_fd()], || cmd.spawn())?;
        drop(theirs);
        Ok(Stub {
            child,
            socket: ours,
        })
    }

    /// The stub's pid (bwrap's, once it execs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Makes the stub exec `spec`; returns once it has (or why it could
    /// not). The child is then `spec`'s, as [`ChildSpec::spawn`] returns.
    pub fn exec(self, spec: ChildSpec) -> io::Result<tokio::process::Child> {
        let Stub { child, socket } = self;
        let ChildSpec {
            program,
            args,
            env,
            stdin,
            keep,
        } = spec;
        let mut fds = Vec::with_capacity(keep.len() + 1);
        let mut targets = Vec::with_capacity(keep.len() + 1);
        fds.push(stdin.as_fd());
        targets.push(0);
        for fd in &keep {
            fds.push(fd.as_fd());
            targets.push(fd.as_raw_fd());
        }
        let request = ExecRequest {
            program,
            args,
            env,
            fds: targets,
        };
        let payload = serde_json::to_vec(&request).map_err(io::Error::other)?;
        let len = |n: usize| {
            u32::try_from(n).map_err(|_| io::Error::other("the exec request is too large"))
        };
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&len(payload.len())?.to_le_bytes());
        header[4..].copy_from_slice(&len(fds.len())?.to_le_bytes());
        send(&socket, &header, SendFlags::NOSIGNAL)?;
        for chunk in fds.chunks(FDS_PER_MESSAGE) {
            send_with_fds(&socket, &[0], chunk)?;
        }
        for chunk in payload.chunks(PAYLOAD_CHUNK) {
            send(&socket, chunk, SendFlags::NOSIGNAL)?;
        }
        // Our copies go now: the child holds its own.
        drop((stdin, keep));
        let mut reply = [0u8; 4096];
        let (n, _) = recv(&socket, &mut reply, RecvFlags::empty()).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("waiting for the exec stub: {e}"),
            )
        })?;
        if n == 0 {
            Ok(child)
        } else {
            Err(io::Error::other(format!(
                "exec stub: {}",
                String::from_utf8_lossy(&reply[..n])
            )))
        }
    }
}
