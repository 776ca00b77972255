//! Backends: where and how spawned processes run.
//!
//! The dispatcher ([`crate::service`]) does everything backend-neutral
//! (validation, the mount map, the base environment, session directories,
//! the process table) and hands a [`SpawnJob`] to the selected backend:
//!
//! * [`host::HostBackend`]: direct children of the daemon, no isolation;
//! * [`bwrap::BwrapBackend`]: one bubblewrap sandbox per session with our
//!   agent as pid 1;
//! * [`kvm::KvmBackend`]: a QEMU microVM per session with our agent as
//!   its init (KVM when a test boot works, else TCG).

pub mod agent_link;
pub mod agent_spawn;
pub mod bwrap;
pub mod generations;
pub mod host;
pub mod kvm;
pub mod netns;
pub mod probe;
pub mod protect;
pub mod unavailable;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use cowork_policy::env::EnvMap;
use cowork_policy::mounts::MountMap;
use cowork_policy::selection::{BackendKind, Selection};
use cowork_protocol::params::StartVmParams;

use crate::process_events::ProcessEvents;
use crate::processes::ProcessControl;
use crate::sessions::SessionDir;
use crate::sys::pin::PinnedDir;
use cowork_policy::confine::limits::SessionLimits;

/// What the daemon builds for a [`Selection`]; `--doctor` reports the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendPlan {
    /// The bubblewrap session sandboxes.
    Bwrap,
    /// The microVM (QEMU; whether it can boot is found out on first use,
    /// and every call says why not).
    Kvm,
    /// Unisolated processes; `warning` explains why when it was not asked for.
    Host { warning: Option<String> },
    /// The selected backend cannot work; every call says `why`.
    Unavailable { kind: BackendKind, why: String },
}

/// Turns a selection into what gets built (only a missing bwrap binary for
/// an explicit `bwrap` is decided later, when the backend is built).
pub fn plan_backend(selection: &Selection) -> BackendPlan {
    match (selection.backend, selection.overridden) {
        (BackendKind::Bwrap, _) => BackendPlan::Bwrap,
        (BackendKind::Host, true) => BackendPlan::Host { warning: None },
        (BackendKind::Host, false) => BackendPlan::Host {
            warning: Some(format!(
                "no isolation available ({}): commands run directly on this machine",
                selection.reason
            )),
        },
        (BackendKind::Kvm, _) => BackendPlan::Kvm,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Unavailable(String),
    #[error("cannot prepare session {session}: {reason}")]
    Session { session: String, reason: String },
    #[error("the VM is not running; call startVM first")]
    NotStarted,
}

/// A spawn with every backend-neutral decision made.
#[derive(Debug, Clone)]
pub struct SpawnJob {
    pub id: String,
    pub session: String,
    /// As the client sent it (`claude`, `/usr/bin/env`, `bash`).
    pub command: String,
    /// As the client sent them (guest paths untranslated).
    pub args: Vec<String>,
    pub cwd: Option<String>,
    pub shared_cwd_path: Option<String>,
    /// Base environment with the OAuth token applied (guest paths
    /// untranslated).
    pub env: EnvMap,
    pub mounts: MountMap,
    pub sdk_binary: Option<PathBuf>,
    pub session_dir: SessionDir,
    pub mount_skeleton_home: bool,
    pub allowed_domains: Option<Vec<String>>,
    /// `mounts`, each with its folder pinned (same order).
    pub pinned: Vec<PinnedMount>,
    /// What the client asked each session to be limited to.
    pub limits: SessionLimits,
}

/// A session mount with its folder held open (see [`crate::sys::pin`]).
#[derive(Debug, Clone)]
pub struct PinnedMount {
    pub mount: cowork_policy::mounts::Mount,
    pub dir: Arc<PinnedDir>,
}

/// What a spawn led to.
pub enum Spawned {
    /// The process runs; output and exit will arrive as events.
    Running(Arc<dyn ProcessControl>),
    /// It never ran (e.g. command not found); its stderr and exit events
    /// were already published.
    Ended,
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// Whether processes are isolated from the host.
    fn is_isolated(&self) -> bool;
    async fn start(&self, params: &StartVmParams) -> Result<(), BackendError>;
    /// Stops everything started; processes get SIGTERM (host) or are killed
    /// with their sandbox.
    async fn stop(&self);
    fn is_running(&self) -> bool;
    fn is_guest_connected(&self) -> bool;
    async fn spawn(&self, job: SpawnJob, events: ProcessEvents) -> Result<Spawned, BackendError>;
    /// What `mountPath` answers for a mount of `host` named `mount_name`.
    fn mount_path_reply(&self, session: Option<&str>, mount_name: &str, host: &Path) -> String;
    /// Sessions that must not be pruned or deleted besides those with
    /// running processes (e.g. a live sandbox with background jobs).
    fn busy_sessions(&self) -> HashSet<String> {
        HashSet::new()
    }
    /// Releases whatever the backend holds for `session` if nothing runs
    /// there (before its directory is deleted); false if it is in use.
    async fn retire_session(&self, _session: &str) -> bool {
        true
    }
    /// Lasting facts about this backend users should know (for
    /// `getDaemonInfo`, `run` and `--doctor`).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// The confinement the newest sandbox's agent reported (seccomp,
    /// Landlock ABI), if any.
    fn confinement(&self) -> Option<serde_json::Value> {
        None
    }
}

/// `running` / `guestConnected` of the local backends.
#[derive(Debug, Default)]
pub struct VmFlags {
    running: AtomicBool,
}

impl VmFlags {
    pub fn set(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}
