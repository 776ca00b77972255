//! The agent: pid 1 of a session sandbox, the agent of the `kvm` backend's
//! VM (forked by its init, `guest_init`, and serving a virtio-serial port:
//! [`AgentMode::Guest`]), and the parent of every process of the host
//! backend.
//!
//! It serves one framed channel to the daemon (a socketpair end inherited
//! through bwrap): `spawn`, `kill`, `status` requests and `stdin`
//! notifications in; responses and process events out (see
//! `cowork_protocol::agent`). It reaps every process in the sandbox,
//! including background jobs re-parented to it, and exits when the channel
//! closes, which ends the pid namespace and everything in it.
//!
//! On the host ([`AgentMode::Host`]) there is no pid namespace to end, so
//! the agent makes itself a child subreaper and, when the channel closes
//! (`stopVM`, the daemon's exit, or the daemon's death by any signal: the
//! kernel closes its end in every case), ends every process below it
//! ([`descendants`] explains why nothing escapes).
//!
//! It runs single-threaded: forking from one thread is cheap and safe, and
//! a child's exit can never be reaped before its waiter is registered
//! (registration happens right after the spawn, before the runtime can
//! switch to the reaper task). A new sandbox's first command is started
//! even before the runtime exists (see `first_request`).

mod child_signals;
mod children;
mod confine;
mod descendants;
mod egress;
mod first_request;
pub mod guest_init;
mod guest_net;
mod port;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use cowork_protocol::agent::{FromAgent, KillRequest, SpawnRequest, StdinWrite, ToAgent, method};
use cowork_protocol::frame;
use futures::StreamExt;
use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

pub use crate::cli::AgentMode;
use crate::framing::write_frames;
use children::Children;
use first_request::EarlySpawn;

/// Frames queued towards the daemon.
const OUTGOING_QUEUE: usize = 1024;

/// How long processes get after SIGTERM when a host agent's channel
/// closes, before everything left is killed.
const HOST_TERMINATE_GRACE: Duration = Duration::from_secs(2);

/// Entry point of `cowork-vm-service agent --fd N [--host]`.
pub fn main(fd: RawFd, mode: AgentMode) -> ExitCode {
    // Refuse anything but an open descriptor before taking ownership of it.
    // SAFETY: fcntl(F_GETFD) on an arbitrary number only queries it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if fcntl_getfd(borrowed).is_err() {
        eprintln!("cowork-vm-service agent: descriptor {fd} is not open");
        return ExitCode::from(2);
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process for its exclusive use; nothing else in the agent refers to it.
    let channel = unsafe { OwnedFd::from_raw_fd(fd) };
    // Children get stdin, stdout, stderr and what is passed on purpose:
    // not the channel, nor anything else inherited.
    if let Err(e) = fcntl_setfd(&channel, FdFlags::CLOEXEC)
        .map_err(std::io::Error::from)
        .and_then(|()| crate::sys::fds::cloexec_inherited(&[]))
    {
        eprintln!("cowork-vm-service agent: {e}");
        return ExitCode::from(2);
    }
    // Processes in the sandbox run as our uid: without this they could
    // ptrace pid 1 and speak on its channel.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    match mode {
        AgentMode::Guest => {
            eprintln!("cowork-vm-service agent: guest mode is entered by the VM's init only");
            return ExitCode::from(2);
        }
        AgentMode::Sandbox => {
            // Inherited by every process of the sandbox: no setuid escalation.
            if let Err(e) = rustix::thread::set_no_new_privs(true) {
                eprintln!("cowork-vm-service agent: cannot set no_new_privs: {e}");
                return ExitCode::from(2);
            }
            // The session keyring came from the daemon's login session (its
            // keys are readable by whoever possesses it): the sandbox gets
            // an empty one of its own.
            if !crate::sys::keyring::inherited_private()
                && let Err(e) = crate::sys::keyring::join_new_session_keyring()
            {
                eprintln!("cowork-vm-service agent: cannot create a session keyring: {e}");
                return ExitCode::from(2);
            }
            // The proxy endpoints, before any command could take the ports.
            if let Err(e) = egress::hand_over(&channel) {
                eprintln!("cowork-vm-service agent: proxy endpoints: {e}");
                return ExitCode::from(2);
            }
            // The one confinement stage (see `confine`): on ourselves, once,
            // before any command exists, so every command inherits it.
            if let Err(e) = confine_self() {
                eprintln!("cowork-vm-service agent: {e}");
                return ExitCode::from(2);
            }
        }
        AgentMode::Host => {
            // Orphans (double forks, setsid, nohup) are re-parented to us,
            // not to init: they stay countable and killable.
            if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
                eprintln!("cowork-vm-service agent: cannot become a child subreaper: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let early = match first_request::take(&channel) {
        Ok(early) => early,
        Err(e) => {
            eprintln!("cowork-vm-service agent: reading the first request: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cowork-vm-service agent: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(channel, early, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cowork-vm-service agent: {e}");
            ExitCode::from(1)
        }
    }
}

/// Applies the plan the daemon put in our environment (fail closed: no
/// plan, no commands).
fn confine_self() -> Result<(), String> {
    use cowork_policy::confine::{CONFINE_PLAN_ENV, ConfinePlan};
    let text = std::env::var(CONFINE_PLAN_ENV)
        .map_err(|_| format!("no confinement plan in {CONFINE_PLAN_ENV}"))?;
    let plan = ConfinePlan::from_json(&text).map_err(|e| format!("confinement plan: {e}"))?;
    let report = confine::apply(&plan).map_err(|e| format!("confinement: {e}"))?;
    CONFINEMENT.set(report).ok();
    Ok(())
}

/// What [`confine_self`] applied, reported to the daemon in `ready`.
static CONFINEMENT: std::sync::OnceLock<cowork_policy::confine::ConfineReport> =
    std::sync::OnceLock::new();

async fn serve(
    channel: OwnedFd,
    early: Option<EarlySpawn>,
    mode: AgentMode,
) -> std::io::Result<()> {
    if mode == AgentMode::Guest {
        // A virtio-serial port: a character device, not a socket.
        let (read_half, write_half) = tokio::io::split(port::PortStream::new(channel)?);
        return serve_on(read_half, write_half, early, mode).await;
    }
    let std_stream = std::os::unix::net::UnixStream::from(channel);
    std_stream.set_nonblocking(true)?;
    let (read_half, write_half) = UnixStream::from_std(std_stream)?.into_split();
    serve_on(read_half, write_half, early, mode).await
}

/// Serves a VM's agent: called in the child `guest_init` forks, as root
/// still. Drops to the unprivileged user, confines itself as a
/// sandbox's agent does, and serves `channel` (plus proxy streams on
/// `net`).
pub(crate) fn serve_guest(
    channel: OwnedFd,
    net: Option<OwnedFd>,
    setup: &cowork_protocol::agent::GuestSetup,
) -> ExitCode {
    if let Err(e) = become_guest_user(setup.uid, setup.gid) {
        eprintln!(
            "cowork-vm-service agent: cannot become uid {}: {e}",
            setup.uid
        );
        return ExitCode::from(2);
    }
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        eprintln!("cowork-vm-service agent: cannot set no_new_privs: {e}");
        return ExitCode::from(2);
    }
    // Not pid 1 here: orphans must come to us, not to init.
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        eprintln!("cowork-vm-service agent: cannot become a child subreaper: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = crate::sys::keyring::join_new_session_keyring() {
        eprintln!("cowork-vm-service agent: cannot create a session keyring: {e}");
        return ExitCode::from(2);
    }
    // The proxy endpoints, before any command could take the ports (and
    // before the filters, which the relay thread inherits).
    let relay = match net.map(guest_net::Relay::bind).transpose() {
        Ok(relay) => relay,
        Err(e) => {
            eprintln!("cowork-vm-service agent: proxy endpoints: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(plan) = &setup.confine_plan {
        // SAFETY: single-threaded (the relay thread starts below), so the
        // environment may be written.
        unsafe { std::env::set_var(cowork_policy::confine::CONFINE_PLAN_ENV, plan) };
        if let Err(e) = confine_self() {
            eprintln!("cowork-vm-service agent: {e}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cowork-vm-service agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(relay) = relay {
        relay.start();
    }
    match runtime.block_on(serve(channel, None, AgentMode::Guest)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cowork-vm-service agent: {e}");
            ExitCode::from(1)
        }
    }
}

/// Drops every privilege of the guest's root: no supplementary groups,
/// then the gid and uid (which clears the capabilities).
fn become_guest_user(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on this single-threaded process; a NULL list
    // with size 0 clears the supplementary groups.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

async fn serve_on<R, W>(
    read_half: R,
    write_half: W,
    early: Option<EarlySpawn>,
    mode: AgentMode,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(OUTGOING_QUEUE);
    let writer = tokio::spawn(write_frames(write_half, rx));
    let out = Outbox(tx);
    out.send(&FromAgent::Ready {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        confinement: CONFINEMENT.get().and_then(|r| serde_json::to_value(r).ok()),
    })
    .await;
    let children = Children::start(out.clone(), mode)?;
    if let Some(early) = early {
        // Settled before anything else runs (the reaper included).
        let outcome = children.settle(early.launched).await;
        out.respond(early.request_id, outcome.map(|pid| json!({"pid": pid})))
            .await;
    }
    let mut frames = FramedRead::new(read_half, frame::codec());
    while let Some(next) = frames.next().await {
        let Ok(body) = next else { break };
        match serde_json::from_slice::<ToAgent>(&body) {
            Ok(ToAgent::Request { id, method, params }) if method == method::STDIN => {
                // Answered when written, without holding up the requests
                // behind it (the process may not be reading).
                match serde_json::from_value::<StdinWrite>(params) {
                    Ok(note) => {
                        let (written, done) = tokio::sync::oneshot::channel();
                        children.stdin(children::StdinChunk { note, written });
                        let out = out.clone();
                        tokio::spawn(async move {
                            let outcome = done
                                .await
                                .unwrap_or_else(|_| Err("stdin writer gone".into()));
                            out.respond(id, outcome.map(|()| json!({}))).await;
                        });
                    }
                    Err(e) => out.respond(id, Err(e.to_string())).await,
                }
            }
            Ok(ToAgent::Request { id, method, params }) => {
                let outcome = handle(&children, &method, params).await;
                out.respond(id, outcome).await;
            }
            // Unknown notifications and malformed frames are ignored: the
            // daemon is the only peer and a newer one may send more.
            Ok(ToAgent::Notification { .. }) | Err(_) => {}
        }
    }
    match mode {
        // The daemon is gone: returning ends pid 1 and with it the sandbox
        // (in a VM: init powers the guest off).
        AgentMode::Sandbox | AgentMode::Guest => writer.abort(),
        AgentMode::Host => {
            // Nothing ends with us on the host: end every process below
            // us, then let the exit events reach the daemon if it still
            // listens (stopVM), but never wait long for a dead one.
            children.terminate_all(HOST_TERMINATE_GRACE).await;
            drop(children);
            drop(out);
            let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        }
    }
    Ok(())
}

async fn handle(children: &Children, name: &str, params: Value) -> Result<Value, String> {
    match name {
        method::SPAWN => {
            let req: SpawnRequest = serde_json::from_value(params).map_err(|e| e.to_string())?;
            children.spawn(req).await.map(|pid| json!({"pid": pid}))
        }
        method::KILL => {
            let req: KillRequest = serde_json::from_value(params).map_err(|e| e.to_string())?;
            children.kill(&req.id, req.signal).map(|()| json!({}))
        }
        method::STATUS => serde_json::to_value(children.status()).map_err(|e| e.to_string()),
        other => Err(format!("unknown agent method: {other}")),
    }
}

/// The queue of frames to the daemon.
#[derive(Clone)]
pub(crate) struct Outbox(mpsc::Sender<Bytes>);

impl Outbox {
    async fn respond(&self, id: u64, outcome: Result<Value, String>) {
        let (result, error) = match outcome {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        self.send(&FromAgent::Response { id, result, error }).await;
    }

    pub(crate) async fn send(&self, message: &FromAgent) {
        if let Ok(frame) = message.to_frame() {
            // If the daemon is gone the agent is about to exit anyway.
            let _ = self.0.send(frame).await;
        }
    }
}
