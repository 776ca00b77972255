//! One microVM: its virtiofsd processes, QEMU, and the agent link, each
//! helper under a guard (see `guard`) so nothing outlives the daemon.
//!
//! Boot: the shares' virtiofsd processes start first (each serves one
//! directory; a session's pinned folders are served from their
//! descriptors), then QEMU with the agent channel (one end of a connected
//! socketpair, `-chardev socket,fd=N`) and the proxy channel. The daemon
//! writes the [`GuestSetup`] into the channel before QEMU even runs (the
//! bytes wait in the socket); the guest's init reads it, mounts, and
//! starts the agent, whose answer to a `status` request means "connected".

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cowork_policy::mounts::MountMode;
use cowork_policy::qemu_argv::{
    Accel, Share, ShareMount, VmPlan, VmSize, plan_shares, qemu_argv, virtiofsd_argv,
};
use cowork_protocol::agent::{GuestProtect, GuestSetup, GuestShare, ToAgent, method};

use crate::backend::protect::protections;
use rustix::fs::OFlags;
use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::AbortHandle;

use super::guard::{self, Guarded};
use crate::backend::PinnedMount;
use crate::backend::agent_link::{self, AgentLink, LinkOptions};
use crate::backend::generations::Generation;
use crate::process_events::ProcessEvents;
use crate::sys::pin::pin_real;

/// How long virtiofsd may take to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

/// Host-wide inputs of every VM.
#[derive(Debug, Clone)]
pub struct VmEnv {
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    /// This binary (guards are started from it).
    pub self_binary: PathBuf,
    pub kernel: PathBuf,
    pub initrd: super::initramfs::Initrd,
    pub tsc_khz: Option<u64>,
    /// Where each VM's private directory (sockets, console log) is made.
    pub runtime_dir: PathBuf,
    /// The unprivileged guest user (the daemon's uid, or 1000 for root).
    pub uid: u32,
    pub gid: u32,
    /// A root daemon's guest user owns the session's files as root (see
    /// `virtiofsd_argv`).
    pub owner: Option<(u32, u32, u32, u32)>,
    pub virtiofsd_sandbox: cowork_policy::qemu_argv::VirtiofsdSandbox,
}

/// What one VM is booted for.
pub struct VmRequest<'a> {
    pub accel: Accel,
    pub size: VmSize,
    /// The session whose mounts and `/tmp` it shares (none: a VM with the
    /// system trees and a private `/tmp` only).
    pub session: Option<&'a str>,
    pub session_tmp: Option<&'a Path>,
    pub mounts: &'a [PinnedMount],
    /// Extra directories shared read-write or read-only (the skeleton
    /// home, the SDK).
    pub extra: Vec<(PathBuf, String, MountMode)>,
    pub confine_plan: Option<String>,
    pub generation: u64,
    pub events: ProcessEvents,
    /// How long until the agent must answer.
    pub boot_timeout: Duration,
    /// `$HOME` in the guest.
    pub home: String,
}

/// A running VM.
pub struct Vm {
    pub generation: u64,
    pub link: Arc<AgentLink>,
    /// Process groups of the guards (QEMU last).
    groups: Vec<Pid>,
    /// The proxy channel's daemon end, served by the network relay.
    pub net: Mutex<Option<tokio::net::UnixStream>>,
    pub qemu_pid: Option<u32>,
    console: PathBuf,
    _dir: tempfile::TempDir,
    tasks: Mutex<Vec<AbortHandle>>,
    last_used: Mutex<Instant>,
    pub booted_in: Duration,
}

/// Logs what a helper prints.
fn log_stderr(child: &mut tokio::process::Child, what: String) {
    if let Some(mut pipe) = child.stderr.take() {
        tokio::spawn(async move {
            let mut chunk = [0u8; 2048];
            while let Ok(n) = pipe.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&chunk[..n]);
                tracing::warn!("{what}: {}", text.trim_end());
            }
        });
    }
}

/// Removes the VM directories (sockets, console logs) of daemons that no
/// longer run: a daemon killed with SIGKILL leaves its own behind.
pub fn remove_stale_dirs(runtime_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(runtime_dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("vm-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Opens `path` without following symlinks and names it as the
/// helper will see it.
fn pin(held: &mut Vec<OwnedFd>, path: &Path, what: &str) -> Result<PathBuf, String> {
    let fd = pin_real(path, OFlags::DIRECTORY).map_err(|e| format!("{what}: {e}"))?;
    let shown = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    held.push(fd);
    Ok(shown)
}

/// The last `n` bytes of the console log, for error messages.
fn console_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(n);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

impl Vm {
    /// Boots a VM and waits for its agent.
    pub async fn boot(env: &VmEnv, req: VmRequest<'_>) -> Result<Arc<Vm>, String> {
        let started = Instant::now();
        std::fs::create_dir_all(&env.runtime_dir)
            .map_err(|e| format!("creating {}: {e}", env.runtime_dir.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("vm-{}-{}-", std::process::id(), req.generation))
            .tempdir_in(&env.runtime_dir)
            .map_err(|e| format!("VM directory: {e}"))?;
        let console = dir.path().join("console.log");
        // Descriptors the helpers serve from, kept open until they run.
        let mut held: Vec<OwnedFd> = Vec::new();
        let tmp = match req.session_tmp {
            Some(t) => pin(&mut held, t, "session /tmp")?,
            None => {
                let t = dir.path().join("tmp");
                std::fs::create_dir(&t).map_err(|e| format!("VM /tmp: {e}"))?;
                t
            }
        };
        // The protected project files of each read-write mount (tag
        // `m<i>`), found on the host through its pinned descriptor, as for
        // bwrap; the guest's init binds them read-only.
        let protect: Vec<Vec<GuestProtect>> = req
            .mounts
            .iter()
            .map(|m| {
                if m.mount.mode == MountMode::ReadOnly {
                    return Ok(Vec::new());
                }
                Ok(protections(&m.dir.fd, &m.mount.host, &[])?
                    .into_iter()
                    .map(|p| GuestProtect {
                        rel: p.rel.to_string_lossy().into_owned(),
                        read_only: p.read_only,
                    })
                    .collect())
            })
            .collect::<Result<_, String>>()?;
        let mut mounts = Vec::with_capacity(req.mounts.len());
        for m in req.mounts {
            let fd = m
                .dir
                .fd
                .try_clone()
                .map_err(|e| format!("mount {}: {e}", m.mount.name))?;
            mounts.push(ShareMount {
                name: m.mount.name.clone(),
                host: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                mode: m.mount.mode,
            });
            held.push(fd);
        }
        let mut shares = plan_shares(req.session.unwrap_or("none"), &tmp, &mounts);
        for (i, (host, guest, mode)) in req.extra.iter().enumerate() {
            let host = pin(&mut held, host, guest)?;
            shares.push(Share {
                tag: format!("x{i}"),
                host,
                guest: guest.clone(),
                mode: *mode,
            });
        }
        let mut groups = Vec::new();
        let fail = |groups: &[Pid], msg: String| {
            for g in groups {
                let _ = kill_process_group(*g, Signal::KILL);
            }
            msg
        };
        let mut with_sockets = Vec::with_capacity(shares.len());
        let mut fs_guards = Vec::new();
        for (i, share) in shares.iter().enumerate() {
            let socket = dir.path().join(format!("fs{i}.sock"));
            let pinned_fd = share
                .host
                .to_str()
                .and_then(|h| h.strip_prefix("/proc/self/fd/"))
                .and_then(|n| n.parse::<i32>().ok());
            let helper = Guarded {
                program: env.virtiofsd.clone(),
                args: virtiofsd_argv(share, &socket, env.owner, env.virtiofsd_sandbox),
                pass: Vec::new(),
                // A pinned folder is served as the helper's working
                // directory (virtiofsd opens its root without following
                // links, which refuses /proc/self/fd/N itself).
                cwd: pinned_fd.map(|_| share.host.clone()),
            };
            let passed: Vec<BorrowedFd<'_>> = held
                .iter()
                .filter(|fd| Some(fd.as_raw_fd()) == pinned_fd)
                .map(AsFd::as_fd)
                .collect();
            let mut child = guard::spawn(&env.self_binary, &helper, &passed, Stdio::piped())
                .map_err(|e| {
                    fail(
                        &groups,
                        format!("cannot run {}: {e}", env.virtiofsd.display()),
                    )
                })?;
            if let Some(pid) = child.id().and_then(|p| Pid::from_raw(p as i32)) {
                groups.push(pid);
            }
            log_stderr(&mut child, format!("virtiofsd {}", share.tag));
            fs_guards.push(child);
            with_sockets.push((share.clone(), socket));
        }
        // Each virtiofsd creates its socket within milliseconds.
        let wait_start = Instant::now();
        for (share, socket) in &with_sockets {
            while !socket.exists() {
                if wait_start.elapsed() > SOCKET_WAIT {
                    return Err(fail(
                        &groups,
                        format!("virtiofsd for {} did not start", share.guest),
                    ));
                }
                for g in fs_guards.iter_mut() {
                    if let Ok(Some(status)) = g.try_wait() {
                        return Err(fail(
                            &groups,
                            format!("virtiofsd for {} exited ({status})", share.guest),
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        drop(held);
        let (mut daemon_end, agent_end) =
            agent_link::channel().map_err(|e| fail(&groups, format!("agent channel: {e}")))?;
        let (net_daemon, net_guest) =
            agent_link::channel().map_err(|e| fail(&groups, format!("proxy channel: {e}")))?;
        let setup = GuestSetup {
            shares: shares
                .iter()
                .map(|s| GuestShare {
                    tag: s.tag.clone(),
                    path: s.guest.clone(),
                    read_only: s.mode == MountMode::ReadOnly,
                    protect: s
                        .tag
                        .strip_prefix('m')
                        .and_then(|i| i.parse::<usize>().ok())
                        .and_then(|i| protect.get(i).cloned())
                        .unwrap_or_default(),
                })
                .collect(),
            uid: env.uid,
            gid: env.gid,
            confine_plan: req.confine_plan.clone(),
            hostname: "cowork".into(),
            home: req.home.clone(),
            dirs: req
                .session
                .map(|s| vec![cowork_policy::bwrap_argv::session_mnt(s)])
                .unwrap_or_default(),
        };
        let frame = cowork_protocol::frame::encode(&ToAgent::Notification {
            method: method::GUEST_SETUP.into(),
            params: serde_json::to_value(&setup).map_err(|e| e.to_string())?,
        })
        .map_err(|e| fail(&groups, format!("set-up frame: {e}")))?;
        daemon_end
            .write_all(&frame)
            .await
            .map_err(|e| fail(&groups, format!("writing the set-up: {e}")))?;
        let initrd = {
            let initrd = env.initrd.clone();
            tokio::task::spawn_blocking(move || initrd.path())
                .await
                .map_err(|e| e.to_string())
                .and_then(|built| built.map_err(|e| e.to_string()))
                .map_err(|e| fail(&groups, format!("the initramfs: {e}")))?
        };
        let plan = VmPlan {
            accel: req.accel,
            size: req.size,
            kernel: &env.kernel,
            initrd: &initrd,
            tsc_khz: env.tsc_khz,
            agent_fd: agent_end.as_raw_fd(),
            net_fd: Some(net_guest.as_raw_fd()),
            shares: &with_sockets,
            console_log: Some(&console),
        };
        let argv = qemu_argv(&plan);
        tracing::debug!(
            "VM generation {}: {} {}",
            req.generation,
            env.qemu.display(),
            argv.join(" ")
        );
        let helper = Guarded {
            program: env.qemu.clone(),
            args: argv,
            pass: vec![agent_end.as_raw_fd(), net_guest.as_raw_fd()],
            cwd: None,
        };
        let mut qemu = guard::spawn(
            &env.self_binary,
            &helper,
            &[agent_end.as_fd(), net_guest.as_fd()],
            Stdio::piped(),
        )
        .map_err(|e| fail(&groups, format!("cannot run {}: {e}", env.qemu.display())))?;
        drop(agent_end);
        drop(net_guest);
        let qemu_pid = qemu.id();
        if let Some(pid) = qemu_pid.and_then(|p| Pid::from_raw(p as i32)) {
            groups.push(pid);
        }
        log_stderr(
            &mut qemu,
            format!("qemu (VM generation {})", req.generation),
        );
        let link = AgentLink::start_with(daemon_end, req.events.clone(), LinkOptions::default());
        // Connected = the agent answers.
        let ready = tokio::select! {
            r = tokio::time::timeout(req.boot_timeout, link.request(method::STATUS, json!({}))) => match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("the guest agent did not start: {e}")),
                Err(_) => Err(format!("the guest agent did not answer within {:?}", req.boot_timeout)),
            },
            status = qemu.wait() => Err(format!("QEMU exited during boot ({})",
                status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
        };
        if let Err(e) = ready {
            link.close();
            let tail = console_tail(&console, 1500);
            return Err(fail(
                &groups,
                if tail.is_empty() {
                    e
                } else {
                    format!("{e}; guest console: {tail}")
                },
            ));
        }
        // Reap the guards when they end (their exit closes the channel).
        let generation = req.generation;
        tokio::spawn(async move {
            let status = qemu.wait().await;
            tracing::debug!("VM generation {generation}: QEMU's guard exited: {status:?}");
            for mut g in fs_guards {
                let _ = g.wait().await;
            }
        });
        let booted_in = started.elapsed();
        tracing::info!(
            "VM generation {} ({}, {} MiB, {} vCPU) connected in {} ms",
            req.generation,
            req.accel.as_str(),
            req.size.memory_mib,
            req.size.cpus,
            booted_in.as_millis()
        );
        Ok(Arc::new(Vm {
            generation: req.generation,
            link,
            groups,
            net: Mutex::new(Some(net_daemon)),
            qemu_pid,
            console,
            _dir: dir,
            tasks: Mutex::new(Vec::new()),
            last_used: Mutex::new(Instant::now()),
            booted_in,
        }))
    }

    /// Keeps `task` for as long as the VM lives.
    pub fn hold(&self, task: AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    pub fn console_tail(&self) -> String {
        console_tail(&self.console, 1500)
    }

    /// Ends the VM: the channel closes (the guest powers off within
    /// about 0.1 s), and whatever is left a moment later is killed.
    pub fn shutdown(self: &Arc<Self>) {
        self.link.close();
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        let vm = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            vm.kill();
        });
    }

    /// Kills QEMU and the virtiofsd processes now.
    pub fn kill(&self) {
        for g in self.groups.iter().rev() {
            let _ = kill_process_group(*g, Signal::KILL);
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Generation for Vm {
    const WHAT: &'static str = "VM";
    /// The heartbeat restarts a dead session VM in place.
    const REPLACED_WHEN_DEAD: bool = true;

    fn link(&self) -> &AgentLink {
        &self.link
    }

    fn number(&self) -> u64 {
        self.generation
    }

    fn idle_for(&self) -> Duration {
        Vm::idle_for(self)
    }

    fn shutdown(self: &Arc<Self>) {
        Vm::shutdown(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_daemons_vm_dirs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join(format!("vm-{}-1-abc", std::process::id()));
        let dead = dir.path().join("vm-999999999-3-xyz");
        let other = dir.path().join("unrelated");
        for d in [&ours, &dead, &other] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(dead.join("fs0.sock"), b"").unwrap();
        remove_stale_dirs(dir.path());
        assert!(ours.exists() && other.exists());
        assert!(!dead.exists());
    }
}
