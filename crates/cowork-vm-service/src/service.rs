//! The dispatcher: the 21 methods of the protocol (plus `getDaemonInfo`),
//! with everything that does not depend on the backend done here once.
//!
//! Errors of a method become `{success:false, error}`; operational failures
//! the client expects in the result (`readFile`) stay in `result.error`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use cowork_policy::command::find_in_path;
use cowork_policy::command::sdk_binary_path;
use cowork_policy::env::{EnvMap, apply_oauth_tokens, base_env, sandbox_env};
use cowork_policy::fs_view::FsView;
use cowork_policy::mounts::{
    Mount, MountMap, MountMode, MountRules, build_mount_map, check_mount_source, check_sdk_folder,
    guest_session,
};
use cowork_policy::names::{validate_mount_name, validate_session_name};
use cowork_policy::paths::resolve_subpath;
use cowork_policy::selection::{
    BackendKind, BwrapStatus, Selection, probe_failure_cause, select_backend,
};
use cowork_policy::signal::{ParsedSignal, parse_signal, signal_from_number};
use cowork_protocol::event::{ApiReachability, NetworkStatus};
use cowork_protocol::params::{
    self, ConfigureParams, CreateVmParams, DeleteSessionDirsParams, InstallSdkParams, KillParams,
    MountPathParams, ProcessIdParams, PruneSessionCachesParams, ReadFileParams,
    SendGuestResponseParams, SessionsDiskInfoParams, SetDebugLoggingParams, SignalSpec,
    SpawnParams, StartVmParams, TokenParams, WriteStdinParams,
};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::backend::bwrap::{BwrapBackend, BwrapSettings};
use crate::backend::host::HostBackend;
use crate::backend::netns::{Egress, EgressSettings};
use crate::backend::probe::RealProbe;
use crate::backend::unavailable::UnavailableBackend;
use crate::backend::{Backend, BackendPlan, PinnedMount, SpawnJob, Spawned, plan_backend};
use crate::dirs::Dirs;
use crate::events::EventHub;
use crate::logging::{LIFECYCLE, LogControl};
use crate::process_events::ProcessEvents;
use crate::processes::{ProcessTable, TableError};
use crate::read_file::{ReadFileError, SessionMounts, read_pinned};
use crate::real_fs::RealFs;
use crate::sessions::SessionStore;
use crate::supervise::OutputSink as _;
use crate::sys::pin::{PinError, PinnedDir, pin_dir};
use cowork_policy::confine::limits::{LimitRequest, PidsMax, SessionLimits};

/// Extra method (not sent by the client): which backend serves, for `run`
/// and `--doctor`.
pub const DAEMON_INFO_METHOD: &str = "getDaemonInfo";

/// How the service is set up.
pub struct ServiceConfig {
    pub dirs: Dirs,
    pub log: LogControl,
    /// Backend selection inputs (`COWORK_VM_BACKEND`, PATH, ...).
    pub probe: RealProbe,
    /// The daemon's own environment (the base of every child's).
    pub daemon_env: EnvMap,
    /// Socket path, reported by `getDaemonInfo`.
    pub socket: PathBuf,
    /// How the network proxy explains and reports refusals.
    pub egress: EgressSettings,
}

struct SharedState {
    sdk_binary: Option<PathBuf>,
    approved_token: Option<String>,
    /// `mountPath` results per session ("" = for every session).
    mount_binds: HashMap<String, Vec<Mount>>,
    /// The mounts of each session's latest spawn, pinned (for `readFile`).
    session_mounts: HashMap<String, SessionMounts>,
    last_session: Option<String>,
    /// What `configure` and `startVM` asked sessions to be limited to.
    limits: SessionLimits,
}

pub struct Service {
    dirs: Dirs,
    mount_rules: MountRules,
    hub: EventHub,
    table: ProcessTable,
    events: ProcessEvents,
    sessions: SessionStore,
    log: LogControl,
    probe: RealProbe,
    daemon_env: EnvMap,
    socket: PathBuf,
    egress: EgressSettings,
    backend: OnceCell<Arc<dyn Backend>>,
    selection: OnceCell<Selection>,
    state: Mutex<SharedState>,
}

type MethodResult = Result<Value, String>;

impl Service {
    pub fn new(config: ServiceConfig) -> Arc<Self> {
        let hub = EventHub::new();
        let table = ProcessTable::new();
        Arc::new(Self {
            sessions: SessionStore::new(config.dirs.sessions_dir(), &config.dirs.home),
            events: ProcessEvents::new(hub.clone(), table.clone()),
            mount_rules: config.dirs.mount_rules(),
            dirs: config.dirs,
            hub,
            table,
            log: config.log,
            probe: config.probe,
            daemon_env: config.daemon_env,
            socket: config.socket,
            egress: config.egress,
            backend: OnceCell::new(),
            selection: OnceCell::new(),
            state: Mutex::new(SharedState {
                sdk_binary: None,
                approved_token: None,
                mount_binds: HashMap::new(),
                session_mounts: HashMap::new(),
                last_session: None,
                limits: SessionLimits::from_requests(&[], pids_max()),
            }),
        })
    }

    pub fn hub(&self) -> &EventHub {
        &self.hub
    }

    fn state(&self) -> MutexGuard<'_, SharedState> {
        // Every update is a plain field assignment; a poisoned lock still
        // holds consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backend, selecting it on first use (the probe forks bwrap, so it
    /// runs on the blocking pool and is started right at daemon start-up).
    pub async fn backend(&self) -> Arc<dyn Backend> {
        self.backend
            .get_or_init(|| async {
                let selection = self.selection().await.clone();
                self.build_backend(&selection)
            })
            .await
            .clone()
    }

    /// The backend decision (computed once).
    pub async fn selection(&self) -> &Selection {
        self.selection
            .get_or_init(|| async {
                let mut probe = self.probe.clone();
                let selection =
                    match tokio::task::spawn_blocking(move || select_backend(&mut probe)).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(
                                "backend selection failed: {e}; using the host backend"
                            );
                            let mut s = select_backend(&mut HostOnly);
                            s.warnings.push(format!("backend selection failed: {e}"));
                            s
                        }
                    };
                for w in &selection.warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!(
                    target: LIFECYCLE,
                    "backend {} selected: {}",
                    selection.backend,
                    selection.reason
                );
                selection
            })
            .await
    }

    fn build_backend(&self, selection: &Selection) -> Arc<dyn Backend> {
        match plan_backend(selection) {
            BackendPlan::Bwrap => self.build_bwrap(selection),
            BackendPlan::Kvm => self.build_kvm(),
            BackendPlan::Host { warning } => {
                if let Some(w) = warning {
                    tracing::warn!("{w}");
                }
                Arc::new(HostBackend::new(self.dirs.home.clone()))
            }
            BackendPlan::Unavailable { kind, why } => Arc::new(UnavailableBackend::new(kind, why)),
        }
    }

    fn build_kvm(&self) -> Arc<dyn Backend> {
        let find = |name: &str| find_in_path(name, self.probe.path_var.as_deref(), &RealFs);
        crate::backend::kvm::KvmBackend::new(crate::backend::kvm::KvmSettings {
            home: self.dirs.home.clone(),
            qemu: find("qemu-system-x86_64"),
            virtiofsd: self.probe.find_virtiofsd(),
            idle_timeout: BwrapSettings::idle_timeout_from_env(),
            egress: Egress::new(&self.egress),
            hub: self.hub.clone(),
            runtime_dir: crate::backend::kvm::runtime_dir(),
        })
    }

    fn build_bwrap(&self, selection: &Selection) -> Arc<dyn Backend> {
        let bwrap = match &selection.bwrap {
            BwrapStatus::Works { path } => Some(path.clone()),
            _ => find_in_path("bwrap", self.probe.path_var.as_deref(), &RealFs),
        };
        let Some(bwrap) = bwrap else {
            return Arc::new(UnavailableBackend::new(
                BackendKind::Bwrap,
                "COWORK_VM_BACKEND=bwrap, but bubblewrap (bwrap) is not installed: install the \
                 bubblewrap package (see `cowork-vm-service --doctor`)",
            ));
        };
        let diagnosis = match &selection.bwrap {
            BwrapStatus::ProbeFailed { failure, .. } => {
                let cause = probe_failure_cause(failure);
                tracing::error!(
                    "bubblewrap failed its start-up probe ({}): {cause}. The bwrap backend is kept \
                     as COWORK_VM_BACKEND asks; spawns will fail until this is fixed. Run \
                     `cowork-vm-service --doctor`.",
                    failure.message
                );
                Some(cause)
            }
            _ => None,
        };
        let settings = BwrapSettings {
            bwrap,
            diagnosis,
            home: self.dirs.home.clone(),
            config_file: self.dirs.linux_config_file(),
            path_var: self.probe.path_var.clone(),
            idle_timeout: BwrapSettings::idle_timeout_from_env(),
            egress: Egress::new(&self.egress),
            default_limits: self.state().limits,
        };
        match BwrapBackend::new(settings) {
            Ok(b) => b,
            Err(e) => Arc::new(UnavailableBackend::new(BackendKind::Bwrap, e)),
        }
    }

    /// Handles one request. `subscribeEvents` is handled by the connection.
    pub async fn handle(&self, method: &str, params: Value) -> MethodResult {
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!("Request: {method} {}", summarize(&params));
        }
        let result = match method {
            "configure" => self.configure(params::parse(method, params)?),
            "createVM" => {
                let p: CreateVmParams = params::parse(method, params)?;
                tracing::debug!("createVM: bundle={:?}", p.bundle_path);
                Ok(json!({}))
            }
            "startVM" => self.start_vm(params::parse(method, params)?).await,
            "stopVM" => self.stop_vm().await,
            "isRunning" => Ok(json!({"running": self.running(|b| b.is_running())})),
            "isGuestConnected" => {
                Ok(json!({"connected": self.running(|b| b.is_guest_connected())}))
            }
            "spawn" => self.spawn(params::parse(method, params)?).await,
            "kill" => self.kill(params::parse(method, params)?).await,
            "writeStdin" => self.write_stdin(params::parse(method, params)?).await,
            "isProcessRunning" => {
                let p: ProcessIdParams = params::parse(method, params)?;
                to_value(self.table.status(&p.id))
            }
            "mountPath" => self.mount_path(params::parse(method, params)?).await,
            "readFile" => self.read_file(params::parse(method, params)?).await,
            "installSdk" => self.install_sdk(params::parse(method, params)?),
            "addApprovedOauthToken" => {
                let p: TokenParams = params::parse(method, params)?;
                self.state().approved_token = Some(p.token).filter(|t| !t.is_empty());
                Ok(json!({}))
            }
            "setDebugLogging" => {
                let p: SetDebugLoggingParams = params::parse(method, params)?;
                self.log.set_debug(p.enabled);
                tracing::info!(target: LIFECYCLE, "debug logging {}", if p.enabled { "on" } else { "off" });
                Ok(json!({}))
            }
            "sendGuestResponse" => {
                // The client answers guest requests of the official VM; our
                // agents never ask the client anything, so nothing is
                // pending. Accepted, as the upstream wire test expects.
                let p: SendGuestResponseParams = params::parse(method, params)?;
                tracing::debug!(
                    "sendGuestResponse {}: no guest request is pending; ignored",
                    p.id
                );
                Ok(json!({}))
            }
            "getSessionsDiskInfo" => {
                let _p: SessionsDiskInfoParams = params::parse(method, params)?;
                let sessions = self.sessions.clone();
                to_value(blocking(move || sessions.disk_info()).await?)
            }
            "deleteSessionDirs" => {
                let p: DeleteSessionDirsParams = params::parse(method, params)?;
                let mut active = self.table.active_sessions();
                if let Some(backend) = self.backend.get() {
                    for name in &p.names {
                        if !active.contains(name) && !backend.retire_session(name).await {
                            active.insert(name.clone());
                        }
                    }
                }
                let sessions = self.sessions.clone();
                let result = blocking(move || sessions.delete(&p.names, &active)).await?;
                if !result.deleted.is_empty() {
                    let mut state = self.state();
                    for name in &result.deleted {
                        state.session_mounts.remove(name);
                    }
                }
                to_value(result)
            }
            "pruneSessionCaches" => {
                let p: PruneSessionCachesParams = params::parse(method, params)?;
                let active = self.busy_sessions().await;
                let sessions = self.sessions.clone();
                to_value(blocking(move || sessions.prune(&p, &active)).await?)
            }
            "getNetworkDrives" => Ok(json!({"drives": []})),
            DAEMON_INFO_METHOD => self.daemon_info().await,
            "subscribeEvents" => Err("subscribeEvents is handled by the connection".into()),
            other => Err(format!("Unknown method: {other}")),
        };
        if let Err(e) = &result {
            tracing::debug!("{method} failed: {e}");
        }
        result
    }

    /// `false` until a backend exists (nothing can be running before it).
    fn running(&self, f: impl Fn(&dyn Backend) -> bool) -> bool {
        self.backend.get().is_some_and(|b| f(b.as_ref()))
    }

    async fn busy_sessions(&self) -> std::collections::HashSet<String> {
        let mut active = self.table.active_sessions();
        if let Some(b) = self.backend.get() {
            active.extend(b.busy_sessions());
        }
        active
    }

    fn configure(&self, p: ConfigureParams) -> MethodResult {
        let mut state = self.state();
        state.limits = state.limits.with_request(&LimitRequest::Configure {
            memory_mb: p.memory_mb,
            cpu_count: p.cpu_count,
        });
        tracing::debug!(
            "configured: memoryMB={:?} cpuCount={:?} userDataName={:?}; session limits {:?}",
            p.memory_mb,
            p.cpu_count,
            p.user_data_name,
            state.limits
        );
        Ok(json!({}))
    }

    async fn start_vm(&self, p: StartVmParams) -> MethodResult {
        {
            let mut state = self.state();
            state.limits = state.limits.with_request(&LimitRequest::StartVm {
                memory_gb: p.memory_gb,
                cpu_count: p.cpu_count,
            });
        }
        let backend = self.backend().await;
        backend.start(&p).await.map_err(|e| e.to_string())?;
        self.hub.set_network(NetworkStatus::Connected).await;
        let hub = self.hub.clone();
        let url = p
            .api_probe_url
            .unwrap_or_else(|| "https://api.anthropic.com".to_string());
        tokio::spawn(async move {
            let status = probe_api(&url).await;
            hub.set_api_reachability(status).await;
        });
        Ok(json!({}))
    }

    async fn stop_vm(&self) -> MethodResult {
        for (id, control) in self.table.running() {
            if let Err(e) = control.signal(cowork_policy::signal::SIGTERM).await {
                tracing::debug!("stopVM: {id}: {e}");
            }
        }
        if let Some(backend) = self.backend.get() {
            backend.stop().await;
        }
        self.state().mount_binds.clear();
        self.hub.set_network(NetworkStatus::Disconnected).await;
        Ok(json!({}))
    }

    /// Stops everything (daemon shutdown).
    pub async fn shutdown(&self) {
        let _ = self.stop_vm().await;
    }

    async fn spawn(&self, p: SpawnParams) -> MethodResult {
        if p.id.is_empty() {
            return Err("Invalid params for spawn: id must not be empty".into());
        }
        validate_session_name(&p.name).map_err(|e| format!("Invalid params for spawn: {e}"))?;
        let backend = self.backend().await;
        self.table
            .reserve(&p.id, &p.name)
            .map_err(|e| e.to_string())?;
        let id = p.id.clone();
        match self.spawn_reserved(p, backend).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.table.release(&id);
                Err(e)
            }
        }
    }

    /// Makes the spare session directory in the background (see
    /// [`crate::sessions`]).
    pub fn prepare_spare_session(&self) {
        self.sessions.prepare_spare();
    }

    async fn spawn_reserved(&self, p: SpawnParams, backend: Arc<dyn Backend>) -> MethodResult {
        let session_dir = self.sessions.ensure(&p.name).map_err(|e| {
            format!(
                "cannot create the state directory of session {}: {e}",
                p.name
            )
        })?;
        let (binds, sdk_binary, approved) = {
            let state = self.state();
            let mut binds = state.mount_binds.get("").cloned().unwrap_or_default();
            binds.extend(state.mount_binds.get(&p.name).cloned().unwrap_or_default());
            (
                binds,
                state.sdk_binary.clone(),
                state.approved_token.clone(),
            )
        };
        // Checked again at every spawn: the folder could have been swapped
        // for a symlink since `installSdk` (by a sandbox that can write near
        // it).
        let sdk_binary = sdk_binary.filter(|sdk| match sdk.parent() {
            Some(dir) => match check_sdk_folder(dir, &self.mount_rules, &RealFs) {
                Ok(()) => true,
                Err(reason) => {
                    tracing::warn!("spawn {}: the SDK folder is refused: {reason}", p.id);
                    false
                }
            },
            None => false,
        });
        let additional = p.additional_mounts.map(|m| m.0).unwrap_or_default();
        let (mounts, rejected) = build_mount_map(&additional, &binds, &self.mount_rules, &RealFs);
        for r in &rejected {
            tracing::warn!("spawn {}: mount {:?} refused: {}", p.id, r.name, r.reason);
            // The process runs without it; its own stderr says why, first.
            self.events
                .output(
                    &p.id,
                    cowork_protocol::event::Stream::Stderr,
                    format!(
                        "cowork-vm-service: mount {:?} refused: {}\n",
                        r.name, r.reason
                    ),
                )
                .await;
        }
        let (mounts, pinned) = self.pin_mounts(&p.id, mounts, backend.is_isolated()).await;
        let limits = {
            let mut state = self.state();
            state.session_mounts.insert(
                p.name.clone(),
                SessionMounts {
                    map: mounts.clone(),
                    pinned: pinned.clone(),
                },
            );
            state.last_session = Some(p.name.clone());
            state.limits
        };
        let app_env = p.env.map(|e| e.0).unwrap_or_default();
        let mut env = if backend.is_isolated() {
            sandbox_env(&self.daemon_env, &app_env)
        } else {
            base_env(&self.daemon_env, &app_env)
        };
        apply_oauth_tokens(&mut env, p.oauth_token.as_deref(), approved.as_deref());
        let job = SpawnJob {
            id: p.id.clone(),
            session: p.name,
            command: p.command,
            args: p.args.unwrap_or_default(),
            cwd: p.cwd,
            shared_cwd_path: p.shared_cwd_path,
            env,
            mounts,
            sdk_binary,
            session_dir,
            mount_skeleton_home: p.mount_skeleton_home.unwrap_or(false),
            allowed_domains: p.allowed_domains,
            pinned,
            limits,
        };
        let spawned = backend.spawn(job, self.events.clone()).await;
        // The command is running (or failed): a good moment to replace the
        // spare session directory if this spawn used it.
        self.sessions.prepare_spare();
        match spawned.map_err(|e| e.to_string())? {
            Spawned::Running(control) => self.table.attach(&p.id, control),
            Spawned::Ended => {}
        }
        Ok(json!({}))
    }

    /// Opens every mount's folder beneath the root it was granted under,
    /// without following symlinks (see [`crate::sys::pin`]); one that
    /// cannot be is refused like a policy refusal. Isolating backends get
    /// missing folders made (`.claude` may not exist yet).
    async fn pin_mounts(
        &self,
        id: &str,
        mounts: MountMap,
        create: bool,
    ) -> (MountMap, Vec<PinnedMount>) {
        let (home, home_real) = (self.dirs.home.clone(), self.dirs.home_real.clone());
        let wanted: Vec<Mount> = mounts.iter().cloned().collect();
        let results = blocking(move || {
            wanted
                .into_iter()
                .map(|m| {
                    let pinned = pin_dir(&m.host, &home, &home_real, create);
                    (m, pinned)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut kept = MountMap::new();
        let mut pinned = Vec::new();
        for (mount, result) in results {
            match result {
                Ok(dir) => {
                    kept.insert(mount.clone());
                    pinned.push(PinnedMount {
                        mount,
                        dir: Arc::new(dir),
                    });
                }
                // A missing folder on the host backend: nothing to pin,
                // nothing to read (the reference ran such spawns anyway).
                Err(PinError::Io { source, .. })
                    if !create && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    kept.insert(mount);
                }
                Err(e) => {
                    tracing::warn!("spawn {id}: mount {:?} refused: {e}", mount.name);
                    self.events
                        .output(
                            id,
                            cowork_protocol::event::Stream::Stderr,
                            format!("cowork-vm-service: mount {:?} refused: {e}\n", mount.name),
                        )
                        .await;
                }
            }
        }
        (kept, pinned)
    }

    async fn kill(&self, p: KillParams) -> MethodResult {
        let parsed = match &p.signal {
            None => ParsedSignal::DefaultedToTerm,
            Some(SignalSpec::Name(name)) => parse_signal(name),
            Some(SignalSpec::Number(n)) => signal_from_number(*n),
        };
        if parsed == ParsedSignal::DefaultedToTerm
            && let Some(spec) = &p.signal
            && !matches!(spec, SignalSpec::Name(n) if n.trim().is_empty())
        {
            tracing::warn!("kill {}: unknown signal {spec:?}, sending SIGTERM", p.id);
        }
        match self.table.control(&p.id) {
            Ok(control) => control
                .signal(parsed.number())
                .await
                .map(|()| json!({}))
                .map_err(|e| e.to_string()),
            // Killing a process that just ended is not an error.
            Err(TableError::Exited(_)) => Ok(json!({})),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn write_stdin(&self, p: WriteStdinParams) -> MethodResult {
        let control = self.table.control(&p.id).map_err(|e| e.to_string())?;
        control
            .write_stdin(p.data.unwrap_or_default(), p.eof.unwrap_or(false))
            .await
            .map(|()| json!({}))
            .map_err(|e| e.to_string())
    }

    async fn mount_path(&self, p: MountPathParams) -> MethodResult {
        let subpath = p.subpath.unwrap_or_default();
        let host = resolve_subpath(&subpath, &self.dirs.home, &RealFs);
        check_mount_source(&host, &self.mount_rules, &RealFs)
            .map_err(|e| format!("mountPath refused: {e}"))?;
        let name = match p.mount_name.filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "home".into()),
        };
        validate_mount_name(&name).map_err(|e| format!("Invalid params for mountPath: {e}"))?;
        let session = p
            .process_id
            .as_deref()
            .and_then(|id| self.table.session_of(id));
        let mount = Mount {
            name: name.clone(),
            host: host.clone(),
            mode: MountMode::from_client(p.mode.as_deref()),
        };
        {
            let mut state = self.state();
            let binds = state
                .mount_binds
                .entry(session.clone().unwrap_or_default())
                .or_default();
            binds.retain(|m| m.name != name);
            binds.push(mount);
        }
        let backend = self.backend().await;
        let guest_path = backend.mount_path_reply(session.as_deref(), &name, &host);
        Ok(json!({"guestPath": guest_path}))
    }

    async fn read_file(&self, p: ReadFileParams) -> MethodResult {
        let target = self.read_target(&p);
        let outcome = match target {
            Ok((dir, rel)) => blocking(move || read_pinned(&dir, &rel)).await?,
            Err(e) => Err(e),
        };
        Ok(match outcome {
            Ok(bytes) => {
                json!({"content": base64::engine::general_purpose::STANDARD.encode(bytes)})
            }
            Err(e) => {
                tracing::debug!("readFile {}: {e}", p.file_path);
                json!({"error": e.to_string()})
            }
        })
    }

    /// The pinned mount a `readFile` goes through, and the path below it:
    /// the session named by a guest path, else `processName`, else the
    /// latest session.
    fn read_target(&self, p: &ReadFileParams) -> Result<(Arc<PinnedDir>, PathBuf), ReadFileError> {
        let path = p.file_path.as_str();
        let state = self.state();
        let mounts = guest_session(path)
            .and_then(|s| state.session_mounts.get(s))
            .or_else(|| {
                p.process_name
                    .as_deref()
                    .and_then(|s| state.session_mounts.get(s))
            })
            .or_else(|| {
                state
                    .last_session
                    .as_deref()
                    .and_then(|s| state.session_mounts.get(s))
            });
        match mounts {
            Some(m) => m.resolve(path),
            None if path.starts_with("/sessions/") => {
                Err(ReadFileError::Untranslatable(path.to_string()))
            }
            None => Err(ReadFileError::OutsideMounts(path.to_string())),
        }
    }

    /// Records where the SDK binary is. A missing one is not an error (it
    /// is step 4 of the client's boot sequence, and the reference answers
    /// `{}`): a later spawn of `claude` then fails with exit 127 naming
    /// this path.
    fn install_sdk(&self, p: InstallSdkParams) -> MethodResult {
        let path =
            sdk_binary_path(&p.sdk_subpath, &p.version, &self.dirs.home, &RealFs).map_err(|e| {
                format!(
                    "Invalid params for installSdk: version {:?}: {e}",
                    p.version
                )
            })?;
        // Its folder is bound into every sandbox: the same rules as a mount
        // (no system trees, other users' homes, credential folders, nor a
        // folder containing them).
        if let Some(dir) = path.parent()
            && let Err(reason) = check_sdk_folder(dir, &self.mount_rules, &RealFs)
        {
            tracing::warn!("installSdk: refused the SDK folder: {reason}");
            self.state().sdk_binary = None;
            return Ok(json!({}));
        }
        if RealFs.is_executable_file(&path) {
            tracing::info!("SDK binary: {}", path.display());
        } else {
            tracing::warn!(
                "installSdk: no executable SDK binary at {}; `claude` will not be found until it \
                 is installed there",
                path.display()
            );
        }
        self.state().sdk_binary = Some(path);
        Ok(json!({}))
    }

    async fn daemon_info(&self) -> MethodResult {
        let backend = self.backend().await;
        let selection = self.selection().await;
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "executable": std::env::current_exe().ok(),
            "socket": self.socket,
            "backend": backend.kind().as_str(),
            "isolated": backend.is_isolated(),
            "reason": selection.reason,
            "warnings": selection.warnings.iter().chain(backend.warnings().iter()).collect::<Vec<_>>(),
            "confinement": backend.confinement(),
            // The network allowlist holds only where processes are isolated.
            "egressEnforced": backend.is_isolated(),
        }))
    }
}

/// `COWORK_VM_PIDS_MAX` (default 4096; `max` for no limit); a bad value is
/// logged and the default kept.
fn pids_max() -> PidsMax {
    let value = std::env::var("COWORK_VM_PIDS_MAX").ok();
    PidsMax::from_env(value.as_deref()).unwrap_or_else(|e| {
        tracing::warn!("{e}");
        PidsMax::from_env(None).unwrap_or_default()
    })
}

/// Selection input that always ends at the host backend (used only when
/// the real probe could not run at all).
struct HostOnly;

impl cowork_policy::selection::HostProbe for HostOnly {
    fn backend_override(&mut self) -> Option<String> {
        Some("host".into())
    }
    fn bwrap_path(&mut self) -> Option<PathBuf> {
        None
    }
    fn bwrap_probe(&mut self) -> Result<(), cowork_policy::selection::ProbeFailure> {
        Ok(())
    }
    fn kvm_requirements(&mut self) -> cowork_policy::selection::KvmRequirements {
        Default::default()
    }
}

fn to_value<T: serde::Serialize>(v: T) -> MethodResult {
    serde_json::to_value(v).map_err(|e| format!("cannot encode result: {e}"))
}

/// Runs filesystem work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))
}

/// A request's params for the debug log, with secrets removed.
fn summarize(params: &Value) -> String {
    let mut shown = params.clone();
    let mut redacted = false;
    if let Value::Object(map) = &mut shown {
        for key in ["env", "oauthToken", "token"] {
            if map.remove(key).is_some() {
                redacted = true;
            }
        }
    }
    let mut text = shown.to_string();
    if text.len() > 2000 {
        let mut cut = 2000;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    if redacted {
        text.push_str(" [env/tokens redacted]");
    }
    text
}

/// Reachability of the API host behind `url`: a TCP connect to its host and
/// port (no TLS, no request). DNS failure -> unreachable; timeout ->
/// probably unreachable.
async fn probe_api(url: &str) -> ApiReachability {
    let Some((host, port)) = host_port(url) else {
        return ApiReachability::Unknown;
    };
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => ApiReachability::Reachable,
        Ok(Err(_)) => ApiReachability::Unreachable,
        Err(_) => ApiReachability::ProbablyUnreachable,
    }
}

/// `(host, port)` of an `http(s)://host[:port]/...` URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
    .filter(|(h, _)| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_table() {
        let cases = [
            (
                "https://api.anthropic.com",
                Some(("api.anthropic.com", 443)),
            ),
            (
                "https://api.anthropic.com/v1/ping?x=1",
                Some(("api.anthropic.com", 443)),
            ),
            ("http://127.0.0.1:8080/x", Some(("127.0.0.1", 8080))),
            ("https://user@host:9/", Some(("host", 9))),
            ("https://[::1]:444/", Some(("::1", 444))),
            ("ftp://x", None),
            ("https://", None),
            ("not a url", None),
        ];
        for (url, want) in cases {
            assert_eq!(
                host_port(url),
                want.map(|(h, p)| (h.to_string(), p)),
                "{url}"
            );
        }
    }

    #[test]
    fn summaries_hide_secrets_and_stay_short() {
        let s = summarize(&json!({"id": "p", "env": {"K": "secret"}, "oauthToken": "tok"}));
        assert!(!s.contains("secret") && !s.contains("tok\""), "{s}");
        assert!(s.ends_with("[env/tokens redacted]"));
        let long = summarize(&json!({"x": "é".repeat(3000)}));
        assert!(long.len() <= 2000);
    }
}
