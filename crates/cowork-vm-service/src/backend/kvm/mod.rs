//! The `kvm` backend: a QEMU microVM (KVM when a test boot under it
//! works, TCG otherwise) with our agent as its init, reached over
//! virtio-serial. No vhost-vsock, no disk image: the guest is a
//! distribution kernel (`setup-vm`) whose root is a tmpfs with the
//! host's `/usr` and `/etc` shared read-only over virtiofs.
//!
//! One VM per session, like bwrap's one sandbox per session: a session's
//! mounts, `/tmp` (its persistent `tmp/`) and network policy are its own,
//! and virtio-mmio devices cannot be hot-plugged, so a spawn whose mounts
//! or policy differ from the running VM's starts a new generation (a boot)
//! and the old one finishes its processes, as bwrap does. `startVM` boots a
//! VM with the system trees only (it returns once its agent answers, with
//! the reference's `startupStep` events); it is retired when a session's
//! VM is up. Idle session VMs are stopped after
//! `COWORK_VM_IDLE_TIMEOUT_SECS`.
//!
//! Heartbeat: each VM's agent is asked for its status every 2 s; after 3
//! missed beats (no answer and no other frame from the agent in time, while
//! the daemon was reading: an agent flooding output answers late but is not
//! hung) the VM is killed
//! (its processes get `exit` events with
//! SIGKILL), `networkStatus` goes `disconnected`, a new VM is booted for
//! the session and `networkStatus` goes `connected` again.

pub mod accel;
pub mod guard;
pub mod guest;
pub mod initramfs;
mod vm;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use cowork_netproxy::{Protocol, serve_stream};
use cowork_policy::bwrap_argv::{HostLayout, host_layout, sdk_dir};
use cowork_policy::bwrap_config::BwrapMountsConfig;
use cowork_policy::confine::ConfinePlan;
use cowork_policy::confine::landlock::LandlockInputs;
use cowork_policy::confine::limits::SessionLimits;
use cowork_policy::fs_view::FsView;
use cowork_policy::mounts::MountMode;
use cowork_policy::net::AllowList;
use cowork_policy::qemu_argv::{Accel, VirtiofsdSandbox, VmSize};
use cowork_policy::selection::BackendKind;
use cowork_protocol::agent::method;
use cowork_protocol::event::{Event, NetworkStatus};
use cowork_protocol::mux::StreamProtocol;
use cowork_protocol::params::StartVmParams;
use serde_json::json;
use tokio::sync::OnceCell;

use super::agent_spawn::{SandboxKey, agent_command, agent_request, mount_path_inside};
use super::generations::{Sessions, reap_while_alive};
use super::netns::Egress;
use super::{Backend, BackendError, SpawnJob, Spawned, VmFlags};
use crate::events::EventHub;
use crate::process_events::ProcessEvents;
use crate::real_fs::RealFs;
use accel::AccelChoice;
use vm::{Vm, VmEnv, VmRequest};

/// How often the agent is asked whether it lives, and how many missed
/// answers in a row restart the VM.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
pub const MISSED_BEATS: u32 = 3;
/// How long a boot may take before it counts as failed (TCG on a loaded
/// 2-core machine boots in about 3 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// How the backend is set up.
#[derive(Clone)]
pub struct KvmSettings {
    pub home: PathBuf,
    pub qemu: Option<PathBuf>,
    pub virtiofsd: Option<PathBuf>,
    pub idle_timeout: Duration,
    pub egress: Egress,
    pub hub: EventHub,
    /// Where runtime files (sockets) go: `$XDG_RUNTIME_DIR` or /tmp.
    pub runtime_dir: PathBuf,
}

/// Host-wide facts found on first use.
struct Ready {
    env: VmEnv,
    accel: AccelChoice,
    layout: HostLayout,
}

pub struct KvmBackend {
    settings: KvmSettings,
    ready: OnceCell<Result<Arc<Ready>, String>>,
    running: VmFlags,
    /// `startVM`'s VM (no session), until a session's VM is up.
    base: tokio::sync::Mutex<Option<Arc<Vm>>>,
    sessions: Sessions<Vm>,
    generation: AtomicU64,
    /// What `startVM` asked for (memory in MiB, CPUs).
    requested: Mutex<(Option<u64>, Option<u32>)>,
    events: OnceCell<ProcessEvents>,
    this: Weak<KvmBackend>,
    /// Where heartbeats report a dead agent (the restarter task).
    restarts: tokio::sync::mpsc::UnboundedSender<(Option<String>, Arc<Vm>)>,
}

impl KvmBackend {
    pub fn new(settings: KvmSettings) -> Arc<Self> {
        let idle = settings.idle_timeout;
        let (restarts, mut restart_rx) = tokio::sync::mpsc::unbounded_channel();
        let backend = Arc::new_cyclic(|this| Self {
            settings,
            ready: OnceCell::new(),
            running: VmFlags::default(),
            base: tokio::sync::Mutex::new(None),
            sessions: Sessions::default(),
            generation: AtomicU64::new(0),
            requested: Mutex::new((None, None)),
            events: OnceCell::new(),
            this: this.clone(),
            restarts,
        });
        tokio::spawn(reap_while_alive(
            Arc::downgrade(&backend),
            |b: &KvmBackend| &b.sessions,
            idle,
            Duration::from_secs(1),
        ));
        let weak = Arc::downgrade(&backend);
        tokio::spawn(async move {
            while let Some((session, dead)) = restart_rx.recv().await {
                let Some(b) = weak.upgrade() else { return };
                b.restart(session, &dead).await;
            }
        });
        backend
    }

    async fn ready(&self) -> Result<Arc<Ready>, String> {
        self.ready
            .get_or_init(|| async { prepare(&self.settings).await.map(Arc::new) })
            .await
            .clone()
    }

    fn size(&self, limits: Option<&SessionLimits>) -> VmSize {
        let (mem, cpus) = *self.requested.lock().unwrap_or_else(|p| p.into_inner());
        // The client's session limits count only when it asked for them.
        let asked = limits.filter(|l| **l != SessionLimits::default());
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        VmSize::from_requests(
            mem.or(asked.map(|l| l.memory_bytes >> 20)),
            cpus.or(asked.map(|l| l.cpus)),
            host_cpus,
        )
    }

    async fn step(&self, step: &str, status: &str) {
        self.settings
            .hub
            .publish(&Event::StartupStep {
                step: step.into(),
                status: status.into(),
            })
            .await;
    }

    /// Boots a VM for `job`'s session (or the base VM without a job).
    async fn boot(
        &self,
        ready: &Ready,
        job: Option<&SpawnJob>,
        events: ProcessEvents,
    ) -> Result<Arc<Vm>, String> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut extra = Vec::new();
        let mut confine_plan = None;
        if let Some(job) = job {
            if job.mount_skeleton_home {
                job.session_dir
                    .ensure_home()
                    .map_err(|e| format!("cannot create the skeleton home: {e}"))?;
                extra.push((
                    job.session_dir.home.clone(),
                    self.settings.home.to_string_lossy().into_owned(),
                    MountMode::ReadWrite,
                ));
            }
            let sdk = job
                .sdk_binary
                .as_deref()
                .filter(|s| RealFs.exists(s))
                .and_then(|s| sdk_dir(Some(s)));
            if let Some(dir) = &sdk {
                extra.push((
                    dir.clone(),
                    dir.to_string_lossy().into_owned(),
                    MountMode::ReadOnly,
                ));
            }
            let config = BwrapMountsConfig::default();
            confine_plan = ConfinePlan::for_sandbox(&LandlockInputs {
                layout: &ready.layout,
                home: &self.settings.home,
                sdk_dir: sdk.as_deref(),
                session: &job.session,
                mounts: &job.mounts,
                config: &config,
            })
            .to_json()
            .ok();
        }
        let vm = Vm::boot(
            &ready.env,
            VmRequest {
                accel: ready.accel.accel,
                size: self.size(job.map(|j| &j.limits)),
                session: job.map(|j| j.session.as_str()),
                session_tmp: job.map(|j| j.session_dir.tmp.as_path()),
                mounts: job.map_or(&[], |j| j.pinned.as_slice()),
                extra,
                confine_plan,
                generation,
                events,
                boot_timeout: BOOT_TIMEOUT,
                home: self.settings.home.to_string_lossy().into_owned(),
            },
        )
        .await?;
        if let Some(this) = self.this.upgrade() {
            tracing::debug!(
                "VM generation {} console: {}",
                vm.generation,
                vm.console_tail().replace('\n', " | ")
            );
            let task = tokio::spawn(heartbeat(
                this.restarts.clone(),
                Arc::downgrade(&vm),
                job.map(|j| j.session.clone()),
            ));
            vm.hold(task.abort_handle());
        }
        if let Some(job) = job {
            let allowlist = Arc::new(AllowList::from_entries(job.allowed_domains.as_deref()));
            if let Some(stream) = vm.net.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let task = tokio::spawn(netmux_serve(
                    self.settings.egress.clone(),
                    job.session.clone(),
                    allowlist,
                    stream,
                ));
                vm.hold(task.abort_handle());
            }
        }
        Ok(vm)
    }

    /// The session's VM for `key`, booting a new generation if needed.
    async fn vm_for(
        &self,
        job: &SpawnJob,
        key: SandboxKey,
        events: &ProcessEvents,
    ) -> Result<Arc<Vm>, String> {
        let slot = self.sessions.slot(&job.session);
        let _starting = slot.start.lock().await;
        if let Some(vm) = slot.serving(&key, job.allowed_domains.is_some()) {
            return Ok(vm);
        }
        let ready = self.ready().await?;
        let vm = self.boot(&ready, Some(job), events.clone()).await?;
        slot.install(key, vm.clone(), job);
        // The base VM has done its job once a session's VM is up.
        if let Some(base) = self.base.lock().await.take() {
            base.shutdown();
        }
        Ok(vm)
    }

    /// Restarts the session's VM after its agent stopped answering.
    async fn restart(&self, session: Option<String>, dead: &Arc<Vm>) {
        tracing::error!(
            "VM generation {}: the agent missed {MISSED_BEATS} heartbeats; restarting the guest",
            dead.generation
        );
        dead.kill();
        self.settings
            .hub
            .set_network(NetworkStatus::Disconnected)
            .await;
        let Ok(ready) = self.ready().await else {
            return;
        };
        let Some(events) = self.events.get().cloned() else {
            return;
        };
        match session {
            None => {
                let mut base = self.base.lock().await;
                if base.as_ref().is_some_and(|b| Arc::ptr_eq(b, dead)) {
                    *base = None;
                    match self.boot(&ready, None, events).await {
                        Ok(vm) => *base = Some(vm),
                        Err(e) => tracing::error!("restarting the VM: {e}"),
                    }
                }
            }
            Some(name) => {
                let Some(slot) = self.sessions.get(&name) else {
                    return;
                };
                let _starting = slot.start.lock().await;
                let (job, key) = {
                    let s = slot.state();
                    match (&s.current, &s.last_job) {
                        (Some((key, cur)), Some(job)) if Arc::ptr_eq(cur, dead) => {
                            (job.clone(), key.clone())
                        }
                        _ => return,
                    }
                };
                match self.boot(&ready, Some(&job), events).await {
                    Ok(vm) => slot.state().current = Some((key, vm)),
                    Err(e) => {
                        tracing::error!("session {name}: restarting the VM: {e}");
                        slot.state().current = None;
                        return;
                    }
                }
            }
        }
        if self.running.get() {
            self.settings
                .hub
                .set_network(NetworkStatus::Connected)
                .await;
        }
    }
}

/// Finds QEMU, virtiofsd, the guest kernel; builds the initramfs; picks
/// the accelerator.
async fn prepare(settings: &KvmSettings) -> Result<Ready, String> {
    let qemu = settings
        .qemu
        .clone()
        .ok_or("qemu-system-x86_64 is not installed: install the qemu-system-x86 package")?;
    let virtiofsd = settings.virtiofsd.clone().ok_or(
        "virtiofsd is not installed (Debian 12 has no package): `cargo install virtiofsd` and \
         put it on PATH or set COWORK_VM_VIRTIOFSD_BIN",
    )?;
    if virtiofsd_is_qemus_c_one(&virtiofsd) {
        return Err(format!(
            "{} is QEMU's C virtiofsd, which runs only as root (no --sandbox none): install the \
             Rust virtiofsd (`cargo install virtiofsd --locked`) and point COWORK_VM_VIRTIOFSD_BIN \
             at it",
            virtiofsd.display()
        ));
    }
    let self_binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("cannot locate this executable for the guest's init: {e}"))?;
    let dir = guest::guest_dir(&settings.home);
    // The guest image, the TSC and the virtiofsd sandbox probe at once
    // (each takes tens of milliseconds; the first startVM waits for all).
    let prepared = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let image = guest::locate(&dir).map_err(|e| e.to_string())?;
            let initrd = initramfs::Initrd::of_this_process(image.clone(), initramfs_cache(&dir));
            // Built now, so the first boot does not wait for it.
            initrd.path().map_err(|e| e.to_string())?;
            Ok::<_, String>((image, initrd, accel::host_tsc_khz()))
        })
    };
    let sandbox = {
        let bin = virtiofsd.clone();
        tokio::task::spawn_blocking(move || virtiofsd_sandbox(&bin))
    };
    let (prepared, sandbox) = tokio::join!(prepared, sandbox);
    let (image, initrd, tsc) = prepared.map_err(|e| e.to_string())??;
    let virtiofsd_sandbox = sandbox.unwrap_or(VirtiofsdSandbox::None);
    let (uid, gid) = match rustix::process::getuid().as_raw() {
        0 => (1000, 1000),
        uid => (uid, rustix::process::getgid().as_raw()),
    };
    vm::remove_stale_dirs(&settings.runtime_dir);
    tracing::info!("kvm backend: virtiofsd sandbox {virtiofsd_sandbox:?}");
    let env = VmEnv {
        qemu,
        virtiofsd,
        self_binary,
        kernel: image.kernel.clone(),
        initrd,
        tsc_khz: tsc,
        runtime_dir: settings.runtime_dir.clone(),
        uid,
        gid,
        owner: (rustix::process::getuid().is_root()).then_some((uid, 0, gid, 0)),
        virtiofsd_sandbox,
    };
    let accel = choose_accel(&env, &settings.home, &image.version).await;
    tracing::info!(
        "kvm backend: guest kernel {} ({}), accelerator {}: {}",
        image.version,
        image.kernel.display(),
        accel.accel.as_str(),
        accel.reason
    );
    Ok(Ready {
        env,
        accel,
        layout: host_layout(&RealFs),
    })
}

/// [`VirtiofsdSandbox::Namespace`] when a virtiofsd in its own user
/// namespace starts here (it needs unprivileged user namespaces, like
/// bwrap), else none.
fn virtiofsd_sandbox(bin: &Path) -> VirtiofsdSandbox {
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let wanted = VirtiofsdSandbox::Namespace { uid, gid };
    let Ok(dir) = tempfile::tempdir() else {
        return VirtiofsdSandbox::None;
    };
    let share = cowork_policy::qemu_argv::Share {
        tag: "probe".into(),
        host: dir.path().to_path_buf(),
        guest: "/".into(),
        mode: MountMode::ReadOnly,
    };
    let socket = dir.path().join("probe.sock");
    let child = std::process::Command::new(bin)
        .args(cowork_policy::qemu_argv::virtiofsd_argv(
            &share, &socket, None, wanted,
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return VirtiofsdSandbox::None;
    };
    // The socket is made before the sandbox is entered, and a failing
    // sandbox ends virtiofsd at once: alive a moment after its socket
    // exists means the namespace works.
    let start = std::time::Instant::now();
    let ok = loop {
        if socket.exists() {
            std::thread::sleep(Duration::from_millis(150));
            break matches!(child.try_wait(), Ok(None));
        }
        if !matches!(child.try_wait(), Ok(None)) || start.elapsed() > Duration::from_secs(2) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    if ok { wanted } else { VirtiofsdSandbox::None }
}

/// Whether `bin` is QEMU's C virtiofsd (`virtiofsd version 7.2...`), not
/// the Rust one (`virtiofsd 1.14.0`).
pub fn virtiofsd_is_qemus_c_one(bin: &Path) -> bool {
    std::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("virtiofsd version"))
}

/// Where the initramfs is cached: next to the guest kernel when writable,
/// else in the user's cache.
fn initramfs_cache(guest_dir: &Path) -> PathBuf {
    let probe = guest_dir.join(".write-test");
    if std::fs::write(&probe, b"").is_ok() {
        let _ = std::fs::remove_file(&probe);
        return guest_dir.join("initramfs");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    guest::default_dir(&home).join("initramfs")
}

/// KVM if a short test boot under it reaches the agent, else TCG (the
/// test's outcome is remembered for this host boot).
async fn choose_accel(env: &VmEnv, home: &Path, kernel: &str) -> AccelChoice {
    match accel::forced() {
        Some(Ok(accel)) => {
            return AccelChoice {
                accel,
                reason: format!("{} asks for it", accel::ACCEL_ENV),
            };
        }
        Some(Err(e)) => tracing::warn!("{e}; detecting"),
        None => {}
    }
    if let Err(why) = accel::kvm_device_usable() {
        return AccelChoice {
            accel: Accel::Tcg,
            reason: format!("software emulation: {why}"),
        };
    }
    let cache = accel::cache_file(home);
    if let Some(choice) = accel::cached(&cache, kernel) {
        return choice;
    }
    let events = ProcessEvents::new(EventHub::new(), crate::processes::ProcessTable::new());
    let probe = Vm::boot(
        env,
        VmRequest {
            accel: Accel::Kvm,
            size: VmSize {
                memory_mib: 256,
                cpus: 1,
            },
            session: None,
            session_tmp: None,
            mounts: &[],
            extra: Vec::new(),
            confine_plan: None,
            generation: 0,
            events,
            boot_timeout: accel::KVM_TEST_BOOT,
            home: String::new(),
        },
    )
    .await;
    let choice = match probe {
        Ok(vm) => {
            let took = vm.booted_in;
            vm.shutdown();
            AccelChoice {
                accel: Accel::Kvm,
                reason: format!(
                    "a test boot under KVM reached the agent in {} ms",
                    took.as_millis()
                ),
            }
        }
        Err(e) => AccelChoice {
            accel: Accel::Tcg,
            reason: format!(
                "software emulation: /dev/kvm opens but a test boot under KVM failed ({}); a \
                 nested or PVM host?",
                e.chars().take(200).collect::<String>()
            ),
        },
    };
    accel::remember(&cache, kernel, &choice);
    choice
}

/// Checks the agent every [`HEARTBEAT`]; restarts the VM after
/// [`MISSED_BEATS`] missed answers.
async fn heartbeat(
    restarts: tokio::sync::mpsc::UnboundedSender<(Option<String>, Arc<Vm>)>,
    vm: Weak<Vm>,
    session: Option<String>,
) {
    let mut missed = 0;
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(current) = vm.upgrade() else { return };
        if !current.link.is_alive() {
            return;
        }
        // An answer must come before the next beat is due.
        let wait = HEARTBEAT - Duration::from_millis(100);
        let before = current.link.progress();
        let beat = tokio::time::timeout(wait, current.link.request(method::STATUS, json!({})));
        match beat.await {
            Ok(Ok(_)) => missed = 0,
            // A late answer from an agent whose frames keep coming is busy
            // forwarding output (the answer queues behind it), not hung.
            Err(_) if current.link.progress().alive_since(before) => missed = 0,
            _ => {
                missed += 1;
                tracing::warn!(
                    "VM generation {}: heartbeat {missed}/{MISSED_BEATS} missed",
                    current.generation
                );
            }
        }
        if missed >= MISSED_BEATS {
            // The restarter outlives this task (the dead VM aborts its
            // tasks when it goes).
            let _ = restarts.send((session, current));
            return;
        }
    }
}

/// Serves the VM's proxy streams (see `netmux`).
async fn netmux_serve(
    egress: Egress,
    session: String,
    allowlist: Arc<AllowList>,
    stream: tokio::net::UnixStream,
) {
    let on_open: crate::netmux::OnOpen = Arc::new(move |protocol| {
        let ctx = egress.stream_context(&session, allowlist.clone());
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let protocol = match protocol {
            StreamProtocol::Http => Protocol::Http,
            StreamProtocol::Socks5 => Protocol::Socks5,
        };
        tokio::spawn(async move {
            if let Err(e) = serve_stream(theirs, protocol, ctx).await {
                tracing::debug!("VM proxy stream: {e}");
            }
        });
        Some(Box::new(ours) as Box<dyn crate::netmux::Conn>)
    });
    crate::netmux::run(stream, None, Some(on_open)).await;
}

#[async_trait]
impl Backend for KvmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kvm
    }

    fn is_isolated(&self) -> bool {
        true
    }

    async fn start(&self, params: &StartVmParams) -> Result<(), BackendError> {
        {
            let mut r = self.requested.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(gb) = params.memory_gb {
                r.0 = Some(gb.saturating_mul(1024));
            }
            if let Some(c) = params.cpu_count {
                r.1 = Some(c);
            }
        }
        let mut base = self.base.lock().await;
        if self.running.get()
            && (base.as_ref().is_some_and(|b| b.link.is_alive()) || self.any_session_vm())
        {
            return Ok(());
        }
        self.step("prepare_session", "running").await;
        let ready = match self.ready().await {
            Ok(r) => r,
            Err(e) => {
                self.step("prepare_session", "failed").await;
                return Err(BackendError::Unavailable(e));
            }
        };
        let events = self.events.get().cloned().unwrap_or_else(|| {
            ProcessEvents::new(
                self.settings.hub.clone(),
                crate::processes::ProcessTable::new(),
            )
        });
        self.step("start_vm", "running").await;
        self.step("wait_for_guest", "running").await;
        match self.boot(&ready, None, events).await {
            Ok(vm) => {
                *base = Some(vm);
                self.step("wait_for_guest", "completed").await;
                self.running.set(true);
                Ok(())
            }
            Err(e) => {
                self.step("wait_for_guest", "failed").await;
                tracing::error!("startVM: {e}");
                Err(BackendError::Unavailable(format!(
                    "the VM did not boot: {e}"
                )))
            }
        }
    }

    async fn stop(&self) {
        self.running.set(false);
        if let Some(base) = self.base.lock().await.take() {
            base.shutdown();
        }
        self.sessions.shut_down_all().await;
    }

    fn is_running(&self) -> bool {
        self.running.get()
    }

    fn is_guest_connected(&self) -> bool {
        if !self.running.get() {
            return false;
        }
        let base_alive = self
            .base
            .try_lock()
            .map(|b| b.as_ref().is_some_and(|v| v.link.is_alive()))
            .unwrap_or(false);
        base_alive || self.any_session_vm()
    }

    async fn spawn(&self, job: SpawnJob, events: ProcessEvents) -> Result<Spawned, BackendError> {
        let _ = self.events.set(events.clone());
        let fs = RealFs;
        let command = agent_command(&job);
        let key = SandboxKey::for_job(&job, &fs);
        let vm = match self.vm_for(&job, key, &events).await {
            Ok(vm) => vm,
            Err(reason) => {
                let message = format!("cannot start the VM of session {}: {reason}", job.session);
                tracing::error!("{message}");
                events.failed_to_start(&job.id, &message, 126).await;
                return Ok(Spawned::Ended);
            }
        };
        let session = job.session.clone();
        let request = agent_request(job, command, &fs);
        vm.touch();
        match vm.link.start_process(&request).await {
            Ok(process) => Ok(Spawned::Running(process)),
            Err(e) => {
                let message = format!("VM of session {session}: {e}");
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
        match self.ready.get() {
            Some(Ok(r)) => vec![format!(
                "VM accelerator: {} ({})",
                r.accel.accel.as_str(),
                r.accel.reason
            )],
            Some(Err(e)) => vec![e.clone()],
            None => Vec::new(),
        }
    }

    fn confinement(&self) -> Option<serde_json::Value> {
        self.sessions
            .newest_current()
            .and_then(|v| v.link.confinement())
    }

    fn busy_sessions(&self) -> HashSet<String> {
        self.sessions.busy()
    }

    async fn retire_session(&self, session: &str) -> bool {
        self.sessions.retire(session).await
    }
}

impl KvmBackend {
    fn any_session_vm(&self) -> bool {
        self.sessions.any_current_alive()
    }

    /// The accelerator decision, once made (for `getDaemonInfo`).
    pub fn accel(&self) -> Option<AccelChoice> {
        match self.ready.get() {
            Some(Ok(r)) => Some(r.accel.clone()),
            _ => None,
        }
    }

    /// QEMU's pids (for tests and the benchmark).
    pub fn qemu_pids(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .sessions
            .all()
            .iter()
            .filter_map(|v| v.qemu_pid)
            .collect();
        if let Ok(b) = self.base.try_lock()
            && let Some(v) = b.as_ref()
            && let Some(p) = v.qemu_pid
        {
            out.push(p);
        }
        out
    }
}

/// Default runtime directory for VM sockets.
pub fn runtime_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(|| {
            PathBuf::from(format!(
                "/tmp/cowork-vm-service-{}",
                rustix::process::getuid().as_raw()
            ))
        });
    base.join("cowork-vm-service-vm")
}

/// `cowork-vm-service setup-vm [--dir DIR]`: prepares the guest kernel and
/// says what else is missing.
pub fn setup_vm_main(dir: Option<PathBuf>) -> std::process::ExitCode {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/".into());
    let dir = dir.unwrap_or_else(|| guest::guest_dir(&home));
    let mut say = |line: &str| println!("setup-vm: {line}");
    let code = match guest::setup(&dir, &mut say) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("setup-vm: {e}");
            1
        }
    };
    let probe = super::probe::RealProbe::from_env();
    match probe.find_virtiofsd() {
        Some(p) => say(&format!("virtiofsd: {}", p.display())),
        None => say(
            "virtiofsd: not found. Debian 12 has no package: `sudo apt-get install libseccomp-dev \
             libcap-ng-dev pkg-config && cargo install virtiofsd --locked`, then put ~/.cargo/bin \
             on PATH or set COWORK_VM_VIRTIOFSD_BIN",
        ),
    }
    match cowork_policy::command::find_in_path(
        "qemu-system-x86_64",
        probe.path_var.as_deref(),
        &RealFs,
    ) {
        Some(p) => say(&format!("qemu: {}", p.display())),
        None => say("qemu: not found: `sudo apt-get install qemu-system-x86`"),
    }
    match accel::kvm_device_usable() {
        Ok(()) => say("/dev/kvm: usable (KVM is used when a test boot under it works)"),
        Err(why) => say(&format!(
            "/dev/kvm: {why}; the VM runs under TCG (software emulation)"
        )),
    }
    std::process::ExitCode::from(code)
}
