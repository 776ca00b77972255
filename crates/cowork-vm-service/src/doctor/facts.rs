//! What the doctor looks at, gathered once into plain data.
//!
//! [`gather`] does all the I/O; the checks ([`super::checks`]) are pure
//! functions of [`Facts`], so tests fake any machine by building one. The
//! backend decision uses the daemon's own [`select_backend`] through
//! [`Facts`] as a [`HostProbe`].
//!
//! [`select_backend`]: cowork_policy::selection::select_backend

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cowork_policy::selection::{HostProbe, KvmRequirements, ProbeFailure};
use rustix::fs::{Access, access};
use serde_json::{Value, json};

use super::client::ClientFacts;
use crate::backend::probe::{RealProbe, run_probe};
use crate::client::Connection;
use crate::dirs::Dirs;
use crate::service::DAEMON_INFO_METHOD;

/// Access to a device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAccess {
    Missing,
    NoAccess,
    ReadWrite,
}

/// Whether a daemon started like this process can bound each session
/// sandbox, as the daemon itself decides it (`CgroupManager::detect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `Ok`: where session cgroups are made (`CgroupManager::describe`);
    /// `Err`: why they cannot be.
    pub detected: Result<String, String>,
    /// With `Ok`: limits that are still not enforced, and why (controllers
    /// a cgroup v2 subtree lacks).
    pub unenforced: Option<String>,
    /// cgroup v1 hierarchies of `memory`, `pids` and `cpu` are mounted.
    pub v1_hierarchies: bool,
    /// This process runs as root.
    pub root: bool,
}

/// The kernel's Landlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockSupport {
    Abi(u32),
    /// Built in but not enabled at boot (`lsm=`): EOPNOTSUPP.
    NotEnabled,
    /// Not in this kernel: ENOSYS.
    NotBuilt,
}

/// What is at the daemon's socket path.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketFacts {
    Absent,
    /// Something else than a socket.
    NotASocket,
    /// A socket file nobody listens on.
    Stale,
    /// A daemon answers; `info` is its `getDaemonInfo` result, `None` when
    /// it does not know the method (the reference daemon).
    Live {
        info: Option<Value>,
    },
    /// Exists but cannot be connected to.
    Unreachable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub backend_override: Option<String>,
    pub bwrap_path: Option<PathBuf>,
    pub bwrap_version: Option<String>,
    /// `None` when bwrap is missing.
    pub bwrap_probe: Option<Result<(), ProbeFailure>>,
    /// `/proc/sys/...` values by short name; absent files are left out.
    pub sysctls: Vec<(String, String)>,
    pub landlock: LandlockSupport,
    /// The kernel filters syscalls with seccomp BPF (and can answer errnos).
    pub seccomp: bool,
    /// `std::env::consts::ARCH` (the seccomp filter's architecture).
    pub arch: String,
    pub cgroup: CgroupLimits,
    pub kvm: KvmRequirements,
    pub dev_kvm: DeviceAccess,
    pub ovmf: Option<PathBuf>,
    /// The microVM's guest kernel, virtiofsd kind, accelerator.
    pub vm: super::vm::VmFacts,
    pub home: PathBuf,
    pub config_file: PathBuf,
    /// `None`: no config file. `Err`: it cannot be read.
    pub config_text: Option<Result<String, String>>,
    pub socket_path: PathBuf,
    pub socket: SocketFacts,
    pub own_exe: Option<PathBuf>,
    pub log_file: PathBuf,
    pub log_lifecycle: Vec<String>,
    pub sessions_dir: PathBuf,
    pub sessions_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub home_name_max: Option<u64>,
    /// This process's AppArmor label (`cowork-vm-service (unconfined)`,
    /// `unconfined`), `None` without AppArmor.
    pub apparmor_label: Option<String>,
    /// The launcher environment file that hooks the client up.
    pub client: ClientFacts,
}

impl HostProbe for Facts {
    fn backend_override(&mut self) -> Option<String> {
        self.backend_override.clone()
    }

    fn bwrap_path(&mut self) -> Option<PathBuf> {
        self.bwrap_path.clone()
    }

    fn bwrap_probe(&mut self) -> Result<(), ProbeFailure> {
        self.bwrap_probe.clone().unwrap_or_else(|| {
            Err(ProbeFailure {
                message: "bwrap is not installed".into(),
                stderr: String::new(),
            })
        })
    }

    fn kvm_requirements(&mut self) -> KvmRequirements {
        self.kvm.clone()
    }
}

/// Sysctls that decide whether unprivileged user namespaces work.
pub const USERNS_SYSCTLS: [(&str, &str); 3] = [
    ("max_user_namespaces", "/proc/sys/user/max_user_namespaces"),
    (
        "apparmor_restrict_unprivileged_userns",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ),
    (
        "unprivileged_userns_clone",
        "/proc/sys/kernel/unprivileged_userns_clone",
    ),
];

/// Where distributions put OVMF firmware.
const OVMF_PATHS: [&str; 5] = [
    "/usr/share/OVMF/OVMF_CODE.fd",
    "/usr/share/ovmf/OVMF.fd",
    "/usr/share/edk2/ovmf/OVMF_CODE.fd",
    "/usr/share/edk2-ovmf/x64/OVMF_CODE.fd",
    "/usr/share/qemu/OVMF.fd",
];

/// Lines of the log's tail that are searched for lifecycle lines.
const LOG_TAIL_BYTES: u64 = 256 * 1024;
/// Files counted at most when sizing the session directories.
const MAX_FILES_COUNTED: usize = 200_000;

/// Looks at this machine, for the daemon that would serve `socket_path`.
pub fn gather(dirs: &Dirs, socket_path: &Path) -> Facts {
    let mut probe = RealProbe::from_env();
    let bwrap_path = probe.bwrap_path();
    let bwrap_version = bwrap_path.as_deref().and_then(bwrap_version);
    let bwrap_probe = bwrap_path.as_deref().map(run_probe);
    let sysctls = USERNS_SYSCTLS
        .iter()
        .filter_map(|(name, path)| {
            std::fs::read_to_string(path)
                .ok()
                .map(|v| (name.to_string(), v.trim().to_string()))
        })
        .collect();
    let config_file = dirs.linux_config_file();
    let config_text = match std::fs::read_to_string(&config_file) {
        Ok(t) => Some(Ok(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
    };
    let sessions_dir = dirs.sessions_dir();
    let log_file = dirs.log_file();
    Facts {
        backend_override: probe.override_value.clone(),
        kvm: probe.kvm_requirements(),
        bwrap_path,
        bwrap_version,
        bwrap_probe,
        sysctls,
        landlock: landlock_support(),
        seccomp: seccomp_available(),
        arch: std::env::consts::ARCH.to_string(),
        cgroup: cgroup_limits(),
        dev_kvm: device_access(Path::new("/dev/kvm")),
        ovmf: OVMF_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()),
        vm: super::vm::gather(&dirs.home, probe.find_virtiofsd().as_deref()),
        home: dirs.home.clone(),
        config_file,
        config_text,
        socket_path: socket_path.to_path_buf(),
        socket: socket_facts(socket_path),
        own_exe: std::env::current_exe().and_then(std::fs::canonicalize).ok(),
        log_lifecycle: lifecycle_lines(&log_file, 5),
        log_file,
        sessions_bytes: sessions_dir
            .exists()
            .then(|| tree_size(&sessions_dir))
            .flatten(),
        free_bytes: existing_ancestor(&sessions_dir).and_then(|p| free_bytes(&p)),
        home_name_max: rustix::fs::statvfs(&dirs.home).ok().map(|s| s.f_namemax),
        sessions_dir,
        apparmor_label: std::fs::read_to_string("/proc/self/attr/apparmor/current")
            .ok()
            .map(|l| l.trim_end_matches(['\n', '\0']).to_string()),
        client: client_facts(dirs),
    }
}

/// The launcher environment file and the program its `COWORK_NODE_PATH`
/// names.
fn client_facts(dirs: &Dirs) -> ClientFacts {
    let env_file = crate::hookup::env_file_path(dirs);
    let text = match std::fs::read_to_string(&env_file) {
        Ok(t) => Some(Ok(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
    };
    let node_path = text
        .as_ref()
        .and_then(|t| t.as_ref().ok())
        .and_then(|t| crate::hookup::env_file::settings(t).node_path)
        .filter(|p| !p.is_empty());
    let node_path_resolved = node_path
        .as_deref()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .filter(|p| p.is_file());
    let node_path_executable = node_path_resolved
        .as_deref()
        .is_some_and(|p| access(p, Access::EXEC_OK).is_ok());
    ClientFacts {
        env_file,
        text,
        node_path_resolved,
        node_path_executable,
    }
}

fn bwrap_version(bwrap: &Path) -> Option<String> {
    let out = std::process::Command::new(bwrap)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The kernel's Landlock ABI version (rustix has no wrapper for this
/// query, so it is a raw syscall).
fn landlock_support() -> LandlockSupport {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag
    // the syscall only returns the ABI version (or an error); it reads and
    // writes no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    match u32::try_from(v) {
        Ok(abi) if abi > 0 => LandlockSupport::Abi(abi),
        _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP) => {
            LandlockSupport::NotEnabled
        }
        _ => LandlockSupport::NotBuilt,
    }
}

/// seccomp filters with errno answers are available (the kernel lists
/// the actions it supports only when built with `CONFIG_SECCOMP_FILTER`).
fn seccomp_available() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").is_ok_and(|s| {
        let actions: Vec<&str> = s.split_whitespace().collect();
        actions.contains(&"errno") && actions.contains(&"kill_process")
    })
}

/// What the daemon's own detection finds (it makes and removes its empty
/// parent cgroup directories when it can).
fn cgroup_limits() -> CgroupLimits {
    use cowork_policy::confine::cgroup::{
        CONTROLLERS, daemon_dir_name, parse_cgroup_mounts, v1_mount,
    };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_cgroup_mounts(&text))
        .unwrap_or_default();
    // Where, without this process's own (temporary) directory name.
    let ours = format!("/{}", daemon_dir_name(std::process::id()));
    let inspected = crate::sys::cgroup::CgroupManager::inspect();
    CgroupLimits {
        detected: inspected
            .as_ref()
            .map(|m| m.describe().replace(&ours, ""))
            .map_err(|e| e.reason.clone()),
        unenforced: inspected.as_ref().ok().and_then(|m| m.unenforced()),
        v1_hierarchies: CONTROLLERS.iter().all(|c| v1_mount(&mounts, c).is_some()),
        root: rustix::process::geteuid().is_root(),
    }
}

fn device_access(path: &Path) -> DeviceAccess {
    if !path.exists() {
        DeviceAccess::Missing
    } else if access(path, Access::READ_OK | Access::WRITE_OK).is_ok() {
        DeviceAccess::ReadWrite
    } else {
        DeviceAccess::NoAccess
    }
}

fn socket_facts(path: &Path) -> SocketFacts {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return SocketFacts::Absent,
    };
    if !meta.file_type().is_socket() {
        return SocketFacts::NotASocket;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => SocketFacts::Stale,
        Err(e) => SocketFacts::Unreachable(e.to_string()),
        Ok(_) => SocketFacts::Live {
            info: daemon_info(path),
        },
    }
}

/// Asks a live daemon who it is (two seconds at most).
fn daemon_info(path: &Path) -> Option<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let call = async {
            let mut c = Connection::connect(path).await.ok()?;
            c.call(DAEMON_INFO_METHOD, json!({})).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .ok()
            .flatten()
    })
}

/// The last `n` lifecycle lines of the daemon log.
fn lifecycle_lines(log: &Path, n: usize) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(log) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))
        .is_err()
    {
        return Vec::new();
    }
    let mut tail = Vec::new();
    if file.read_to_end(&mut tail).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains("[lifecycle]"))
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Bytes used under `dir` (symlinks not followed; bounded).
fn tree_size(dir: &Path) -> Option<u64> {
    let mut total = 0u64;
    let mut files = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            files += 1;
            if files > MAX_FILES_COUNTED {
                return Some(total);
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Some(total)
}

fn existing_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors().find(|p| p.exists()).map(Path::to_path_buf)
}

fn free_bytes(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}
