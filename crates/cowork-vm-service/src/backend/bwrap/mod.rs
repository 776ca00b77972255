//! The bwrap backend: one bubblewrap sandbox per Cowork session, with our
//! agent as its pid 1.
//!
//! Every Bash tool call is a `spawn`; the reference starts a fresh bwrap for
//! each, so `/tmp` is wiped and background jobs die between calls. Here the
//! first spawn of a session starts its sandbox and later spawns are just a
//! request to its agent. The sandbox's `/tmp` is the session's persistent
//! `tmp/` directory.
//!
//! Generations: a spawn whose mounts, SDK or home mode differ from the
//! running sandbox starts a new one (bind mounts cannot be added to a
//! running sandbox); the old one keeps running until its processes are done
//! and is then torn down. Idle sandboxes (no processes at all, background
//! jobs included) are torn down after `COWORK_VM_IDLE_TIMEOUT_SECS`.

mod config;
mod identity;
mod sandbox;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use config::MountsConfig;
use cowork_policy::bwrap_argv::host_layout;
use cowork_policy::selection::BackendKind;
use cowork_protocol::params::StartVmParams;

use super::agent_spawn::{agent_command, agent_request, mount_path_inside};
use super::generations::{Sessions, reap_while_alive};
use super::netns::Egress;
use super::{Backend, BackendError, SpawnJob, Spawned, VmFlags};
use crate::process_events::ProcessEvents;
use crate::real_fs::RealFs;
use crate::sys::cgroup::CgroupManager;
use crate::sys::cgroup_spawner::CgroupSpawner;
use crate::sys::spawner::SpawnerThread;
use cowork_policy::net::AllowList;
use identity::Identity;
use sandbox::{Sandbox, SandboxEnv, SandboxKey, StartRequest};

/// Default idle time before a session sandbox is torn down.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How the backend is set up.
#[derive(Debug, Clone)]
pub struct BwrapSettings {
    pub bwrap: PathBuf,
    /// Why bubblewrap is expected to fail (its start-up probe failed under
    /// a `COWORK_VM_BACKEND=bwrap` override): named in every failed spawn.
    pub diagnosis: Option<String>,
    pub home: PathBuf,
    pub config_file: PathBuf,
    pub path_var: Option<String>,
    pub idle_timeout: Duration,
    /// The network's way out (shared by the daemon's sandboxes).
    pub egress: Egress,
    /// What sessions are limited to until the client says otherwise.
    pub default_limits: cowork_policy::confine::limits::SessionLimits,
}

impl BwrapSettings {
    /// `COWORK_VM_IDLE_TIMEOUT_SECS` (seconds; default 600).
    pub fn idle_timeout_from_env() -> Duration {
        std::env::var("COWORK_VM_IDLE_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(DEFAULT_IDLE_TIMEOUT, Duration::from_secs_f64)
    }
}

pub struct BwrapBackend {
    env: SandboxEnv,
    config: MountsConfig,
    diagnosis: Option<String>,
    warnings: Vec<String>,
    running: VmFlags,
    sessions: Sessions<Sandbox>,
    generation: AtomicU64,
}

impl BwrapBackend {
    /// Reads the mount config (again whenever it changes, see `config`) and
    /// the host layout, and starts idle reaping.
    pub fn new(settings: BwrapSettings) -> Result<Arc<Self>, String> {
        let agent_binary = std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(|e| format!("cannot locate this executable for the sandbox agent: {e}"))?;
        let fs = RealFs;
        let config = MountsConfig::load(settings.config_file.clone(), settings.home.clone());
        let mut warnings = Vec::new();
        let identity = Identity::current();
        if let Some(notice) = identity.notice() {
            tracing::warn!("{notice}");
            warnings.push(notice);
        }
        let cgroups = match CgroupManager::detect() {
            Ok(m) => {
                tracing::info!("session limits: {}", m.describe());
                if let Some(partly) = m.unenforced() {
                    let w = format!("some session limits are not enforced: {partly}");
                    tracing::warn!("{w}");
                    warnings.push(w);
                }
                match CgroupSpawner::start(m, settings.default_limits, agent_binary.clone()) {
                    Ok(spawner) => Some(spawner),
                    Err(e) => {
                        let w = format!(
                            "session limits are not enforced: cannot start the cgroup thread: {e}"
                        );
                        tracing::warn!("{w}");
                        warnings.push(w);
                        None
                    }
                }
            }
            Err(not) => {
                let w = format!("session limits (memory, CPU, processes) are not enforced: {not}");
                tracing::warn!("{w}");
                warnings.push(w);
                None
            }
        };
        let backend = Arc::new(Self {
            config,
            diagnosis: settings.diagnosis,
            warnings,
            env: SandboxEnv {
                bwrap: settings.bwrap,
                agent_binary,
                home: settings.home,
                layout: host_layout(&fs),
                path_var: settings.path_var,
                identity,
                spawner: if cgroups.is_some() {
                    None
                } else {
                    match SpawnerThread::start() {
                        Ok(t) => Some(t),
                        Err(e) => {
                            tracing::warn!("cannot start the sandbox spawner thread: {e}");
                            None
                        }
                    }
                },
                cgroups,
                egress: settings.egress,
            },
            running: VmFlags::default(),
            sessions: Sessions::default(),
            generation: AtomicU64::new(0),
        });
        // A tick is cheap (the agent is asked only about sandboxes with
        // nothing tracked that are old or idle long enough), so finished
        // generations go within a second.
        let tick =
            (settings.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
        tokio::spawn(reap_while_alive(
            Arc::downgrade(&backend),
            |b: &BwrapBackend| &b.sessions,
            settings.idle_timeout,
            tick,
        ));
        Ok(backend)
    }

    /// A failed spawn's message, with the start-up diagnosis when there is
    /// one.
    fn failure_message(&self, message: String) -> String {
        match &self.diagnosis {
            Some(cause) => format!(
                "{message} (bubblewrap failed its start-up probe: {cause}; run `cowork-vm-service \
                 --doctor`)"
            ),
            None => message,
        }
    }

    /// The session's sandbox for `key`, starting a new generation if needed.
    async fn sandbox_for(
        &self,
        job: &SpawnJob,
        key: SandboxKey,
        events: &ProcessEvents,
    ) -> Result<Arc<Sandbox>, String> {
        let slot = self.sessions.slot(&job.session);
        let _starting = slot.start.lock().await;
        if let Some(current) = slot.serving(&key, job.allowed_domains.is_some()) {
            return Ok(current);
        }
        let allowlist = Arc::new(AllowList::from_entries(job.allowed_domains.as_deref()));
        for w in allowlist.warnings() {
            tracing::warn!("session {}: {w}", job.session);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let sandbox = Sandbox::start(
            &self.env,
            StartRequest {
                session: &job.session,
                dirs: &job.session_dir,
                key: &key,
                generation,
                events: events.clone(),
                mounts: &job.pinned,
                limits: &job.limits,
                allowlist,
                config: &self.config.current(),
            },
        )?;
        slot.install(key, sandbox.clone(), job);
        Ok(sandbox)
    }
}

#[async_trait]
impl Backend for BwrapBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Bwrap
    }

    fn is_isolated(&self) -> bool {
        true
    }

    async fn start(&self, _params: &StartVmParams) -> Result<(), BackendError> {
        self.running.set(true);
        Ok(())
    }

    async fn stop(&self) {
        self.running.set(false);
        self.sessions.shut_down_all().await;
    }

    fn is_running(&self) -> bool {
        self.running.get()
    }

    fn is_guest_connected(&self) -> bool {
        self.running.get()
    }

    async fn spawn(&self, job: SpawnJob, events: ProcessEvents) -> Result<Spawned, BackendError> {
        let fs = RealFs;
        let command = agent_command(&job);
        let key = SandboxKey::for_job(&job, &fs);
        let sandbox = match self.sandbox_for(&job, key, &events).await {
            Ok(s) => s,
            Err(reason) => {
                let message = self.failure_message(format!(
                    "cannot start the sandbox of session {}: {reason}",
                    job.session
                ));
                tracing::error!("{message}");
                events.failed_to_start(&job.id, &message, 126).await;
                return Ok(Spawned::Ended);
            }
        };
        let session = job.session.clone();
        let request = agent_request(job, command, &fs);
        sandbox.touch();
        match sandbox.link.start_process(&request).await {
            Ok(process) => Ok(Spawned::Running(process)),
            Err(e) => {
                let reason = if sandbox.link.is_alive() {
                    e.to_string()
                } else {
                    sandbox.failure_reason().await
                };
                let message =
                    self.failure_message(format!("sandbox of session {session}: {reason}"));
                tracing::error!("spawn {}: {message}", request.id);
                events.failed_to_start(&request.id, &message, 126).await;
                Ok(Spawned::Ended)
            }
        }
    }

    fn mount_path_reply(&self, session: Option<&str>, mount_name: &str, host: &Path) -> String {
        mount_path_inside(session, mount_name, host)
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn confinement(&self) -> Option<serde_json::Value> {
        self.sessions
            .newest_current()
            .and_then(|sandbox| sandbox.link.confinement())
    }

    fn busy_sessions(&self) -> HashSet<String> {
        self.sessions.busy()
    }

    async fn retire_session(&self, session: &str) -> bool {
        self.sessions.retire(session).await
    }
}
