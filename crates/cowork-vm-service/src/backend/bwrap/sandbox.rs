//! One session sandbox: a bwrap process whose pid 1 is our agent, reached
//! through a socketpair end inherited across bwrap.
//!
//! Starting one: the sources of its binds are opened here without
//! following symlinks (pinned) and passed to bwrap as descriptors; inside
//! each writable mount the paths the host runs code from are found and
//! bound read-only; the agent gets its confinement plan in its
//! environment; bwrap starts inside the session's cgroup (when limits can
//! be enforced) as the sandbox's host identity.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cowork_policy::bwrap_argv::{
    ExtraBind, HostLayout, PlannedMount, SandboxPlan, Source, sandbox_argv, session_mnt,
};
use cowork_policy::bwrap_config::BwrapMountsConfig;
use cowork_policy::confine::landlock::LandlockInputs;
use cowork_policy::confine::limits::{SessionLimits, TmpfsSizes};
use cowork_policy::confine::{CONFINE_PLAN_ENV, ConfinePlan};
use cowork_policy::mounts::MountMode;
use rustix::fs::OFlags;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt;

use super::identity::Identity;
use crate::backend::PinnedMount;
use crate::backend::agent_link::{self, AgentLink, LinkOptions};
pub use crate::backend::agent_spawn::SandboxKey;
use crate::backend::generations::Generation;
use crate::backend::netns::Egress;
use crate::backend::protect::protections;
use crate::process_events::ProcessEvents;
use crate::sessions::SessionDir;
use crate::sys::cgroup_spawner::CgroupSpawner;
use crate::sys::pin::pin_real;
use crate::sys::spawn::ChildSpec;
use crate::sys::spawner::SpawnerThread;
use cowork_policy::net::AllowList;
use tokio::task::AbortHandle;

/// Host-wide inputs of every sandbox, fixed when the backend starts.
#[derive(Debug)]
pub struct SandboxEnv {
    pub bwrap: PathBuf,
    pub agent_binary: PathBuf,
    pub home: PathBuf,
    pub layout: HostLayout,
    pub path_var: Option<String>,
    pub identity: Identity,
    /// Where per-session cgroups are made, when limits can be enforced
    /// (its thread starts the sandboxes then) ...
    pub cgroups: Option<CgroupSpawner>,
    /// ... else the thread that starts them (with a private keyring).
    pub spawner: Option<SpawnerThread>,
    /// The network's way out.
    pub egress: Egress,
}

/// What one sandbox start needs besides the host-wide inputs.
pub struct StartRequest<'a> {
    pub session: &'a str,
    pub dirs: &'a SessionDir,
    pub key: &'a SandboxKey,
    pub generation: u64,
    pub events: ProcessEvents,
    /// The key's mounts, pinned, in the same order.
    pub mounts: &'a [PinnedMount],
    pub limits: &'a SessionLimits,
    /// The sandbox's network policy (its key is `key.egress`).
    pub allowlist: Arc<AllowList>,
    /// `coworkBwrapMounts` as in force now.
    pub config: &'a BwrapMountsConfig,
}

/// How much of bwrap's stderr is kept for error messages.
const STDERR_KEPT: usize = 8 * 1024;

pub struct Sandbox {
    pub generation: u64,
    pub link: Arc<AgentLink>,
    /// The proxy's tasks for this sandbox's listeners.
    proxy: Arc<Mutex<Vec<AbortHandle>>>,
    bwrap_pid: Pid,
    last_used: Mutex<Instant>,
    stderr: Arc<Mutex<String>>,
    stderr_done: tokio::sync::watch::Receiver<bool>,
}

/// Descriptors handed to bwrap, numbered as it sees them.
#[derive(Default)]
struct Passed(Vec<OwnedFd>);

impl Passed {
    fn add(&mut self, fd: OwnedFd) -> Source {
        let n = fd.as_raw_fd();
        self.0.push(fd);
        Source::Fd(n)
    }
}

fn pin_state(path: &Path, passed: &mut Passed, what: &str) -> Result<Source, String> {
    pin_real(path, OFlags::DIRECTORY)
        .map(|fd| passed.add(fd))
        .map_err(|e| format!("{what}: {e}"))
}

/// The session mounts and, inside the writable ones, the protection binds.
fn plan_mounts(
    session: &str,
    mounts: &[PinnedMount],
    config: &BwrapMountsConfig,
    passed: &mut Passed,
) -> Result<(Vec<PlannedMount>, Vec<ExtraBind>), String> {
    let mnt = session_mnt(session);
    let mut planned = Vec::with_capacity(mounts.len());
    let mut extra = Vec::new();
    for m in mounts {
        let fd = m
            .dir
            .fd
            .try_clone()
            .map_err(|e| format!("mount {}: {e}", m.mount.name))?;
        planned.push(PlannedMount {
            name: m.mount.name.clone(),
            source: passed.add(fd),
            mode: m.mount.mode,
        });
        if m.mount.mode == MountMode::ReadWrite {
            for p in protections(&m.dir.fd, &m.mount.host, &config.writable_protected)? {
                extra.push(ExtraBind {
                    dest: format!("{mnt}/{}/{}", m.mount.name, p.rel.display()),
                    mode: if p.read_only {
                        MountMode::ReadOnly
                    } else {
                        MountMode::ReadWrite
                    },
                    source: passed.add(p.fd),
                });
            }
        }
    }
    Ok((planned, extra))
}

impl Sandbox {
    /// Starts bwrap with the agent; returns without waiting for the agent
    /// (requests queue on the channel meanwhile).
    pub fn start(env: &SandboxEnv, req: StartRequest<'_>) -> Result<Arc<Self>, String> {
        let StartRequest {
            session,
            dirs,
            key,
            generation,
            events,
            mounts,
            limits,
            allowlist,
            config,
        } = req;
        if key.skeleton_home {
            dirs.ensure_home()
                .map_err(|e| format!("cannot create {}: {e}", dirs.home.display()))?;
        }
        let mut passed = Passed::default();
        let session_tmp = pin_state(&dirs.tmp, &mut passed, "session /tmp")?;
        let skeleton_home = match key.skeleton_home {
            true => Some(pin_state(&dirs.home, &mut passed, "skeleton home")?),
            false => None,
        };
        let sdk = match &key.sdk_dir {
            Some(dir) => Some((pin_state(dir, &mut passed, "SDK")?, dir.as_path())),
            None => None,
        };
        let agent_binary = pin_real(&env.agent_binary, OFlags::empty())
            .map(|fd| passed.add(fd))
            .map_err(|e| format!("agent binary: {e}"))?;
        let (planned, extra) = plan_mounts(session, mounts, config, &mut passed)?;
        let confine = ConfinePlan::for_sandbox(&LandlockInputs {
            layout: &env.layout,
            home: &env.home,
            sdk_dir: key.sdk_dir.as_deref(),
            session,
            mounts: &key.mounts,
            config,
        })
        .to_json()
        .map_err(|e| format!("confinement plan: {e}"))?;
        let private_keyring = match (&env.cgroups, &env.spawner) {
            (Some(c), _) => c.private_keyring(),
            (None, Some(t)) => t.private_keyring(),
            (None, None) => false,
        };
        let mut agent_env = vec![(CONFINE_PLAN_ENV.to_string(), confine)];
        if private_keyring {
            agent_env.push(crate::sys::keyring::inherited_env());
        }
        let tmpfs = TmpfsSizes::for_memory(limits.memory_bytes);
        let root_masks = match &env.identity {
            Identity::Root { masks } => Some(masks),
            Identity::Daemon => None,
        };
        let (daemon_end, agent_end) =
            agent_link::channel().map_err(|e| format!("agent channel: {e}"))?;
        // The agent's end becomes bwrap's stdin, which bwrap hands on to
        // the agent. No PDEATHSIG is needed: when the daemon dies its end
        // closes, the agent exits, and with pid 1 gone the whole sandbox
        // and bwrap end.
        let plan = SandboxPlan {
            session,
            home: &env.home,
            session_tmp,
            skeleton_home,
            sdk,
            mounts: &planned,
            extra_binds: &extra,
            agent_binary,
            agent_fd: 0,
            layout: &env.layout,
            config,
            tmpfs: &tmpfs,
            root_masks,
            agent_env: &agent_env,
        };
        let argv = sandbox_argv(&plan);
        tracing::debug!(
            "session {session} generation {generation}: bwrap {}",
            argv.join(" ")
        );
        let spec = ChildSpec {
            program: env.bwrap.clone(),
            args: argv,
            env: env
                .path_var
                .iter()
                .map(|path| ("PATH".to_string(), path.clone()))
                .collect(),
            stdin: agent_end,
            keep: passed.0,
        };
        // bwrap and everything in the sandbox are born in the session's
        // cgroup: started by the thread that waits in a spare one, or by
        // the stub waiting there (see `sys::cgroup_spawner`), or right
        // here when limits are not enforced.
        let (cgroup, mut child) = match &env.cgroups {
            Some(spawner) => match spawner.spawn_in_session(*limits, spec) {
                Ok((cg, child)) => (Some(Arc::new(cg)), child),
                Err(e) => return Err(format!("cannot run {}: {e}", env.bwrap.display())),
            },
            None => {
                let spawned = match &env.spawner {
                    Some(thread) => thread.run(Box::new(move || spec.spawn())),
                    None => spec.spawn(),
                };
                (
                    None,
                    spawned.map_err(|e| format!("cannot run {}: {e}", env.bwrap.display()))?,
                )
            }
        };
        let bwrap_pid = child
            .id()
            .and_then(|p| Pid::from_raw(p as i32))
            .ok_or("bwrap has no pid")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let (done, stderr_done) = tokio::sync::watch::channel(false);
        if let Some(mut pipe) = child.stderr.take() {
            let (buf, name) = (stderr.clone(), session.to_string());
            tokio::spawn(async move {
                let mut chunk = [0u8; 1024];
                while let Ok(n) = pipe.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&chunk[..n]);
                    tracing::warn!("session {name} sandbox: {}", text.trim_end());
                    let mut kept = buf.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() < STDERR_KEPT {
                        kept.push_str(&text);
                    }
                }
                let _ = done.send(true);
            });
        }
        let name = session.to_string();
        let kept_cgroup = cgroup.clone();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    tracing::debug!("session {name} generation {generation}: bwrap exited {status}")
                }
                Err(e) => tracing::warn!("session {name}: waiting for bwrap: {e}"),
            }
            // A bwrap killed by a group kill can go before its sandbox
            // (pid 1 inside ends when it sees the channel close): the
            // cgroup can go once empty, when the last holder lets go.
            if let Some(cg) = &kept_cgroup {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !cg.is_empty() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            drop(kept_cgroup);
        });
        let oom = cgroup.map(|cg| {
            let counter: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(move || cg.oom_kills());
            counter
        });
        let (listeners_tx, listeners_rx) = tokio::sync::oneshot::channel();
        let link = AgentLink::start_with(
            daemon_end,
            events,
            LinkOptions {
                oom,
                listeners: Some(listeners_tx),
            },
        );
        let proxy = Arc::new(Mutex::new(Vec::new()));
        let (tasks, egress, name) = (proxy.clone(), env.egress.clone(), session.to_string());
        tokio::spawn(async move {
            // Nothing if the agent died first: the sandbox is gone then.
            let Ok(listeners) = listeners_rx.await else {
                return;
            };
            match egress.serve(&name, allowlist, listeners) {
                Ok(handles) => tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(handles),
                Err(e) => tracing::error!("session {name}: cannot serve the proxy: {e}"),
            }
        });
        Ok(Arc::new(Self {
            generation,
            link,
            proxy,
            bwrap_pid,
            last_used: Mutex::new(Instant::now()),
            stderr,
            stderr_done,
        }))
    }

    /// Notes activity (a spawn) for idle accounting.
    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Why the sandbox died: what bwrap printed (waiting briefly for it).
    pub async fn failure_reason(&self) -> String {
        let mut done = self.stderr_done.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), done.wait_for(|d| *d)).await;
        let text = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trim()
            .to_string();
        if text.is_empty() {
            "the sandbox exited before the agent answered".to_string()
        } else {
            text
        }
    }

    fn stop_proxy(&self) {
        for task in self
            .proxy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    /// Ends the sandbox and everything in it.
    pub fn shutdown(&self) {
        self.stop_proxy();
        self.link.close();
        // bwrap leads its own group; with --die-with-parent its pid 1 (the
        // agent) and so the whole pid namespace go with it.
        let _ = kill_process_group(self.bwrap_pid, Signal::KILL);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_proxy();
    }
}

impl Generation for Sandbox {
    const WHAT: &'static str = "sandbox";
    const REPLACED_WHEN_DEAD: bool = false;

    fn link(&self) -> &AgentLink {
        &self.link
    }

    fn number(&self) -> u64 {
        self.generation
    }

    fn idle_for(&self) -> Duration {
        Sandbox::idle_for(self)
    }

    fn shutdown(self: &Arc<Self>) {
        Sandbox::shutdown(self)
    }
}
