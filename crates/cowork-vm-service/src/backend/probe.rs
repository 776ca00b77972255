//! The real host facts behind backend selection (the policy crate decides;
//! this module only looks). `--doctor` uses the same probe.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cowork_policy::command::find_in_path;
use cowork_policy::fs_view::FsView;
use cowork_policy::selection::{HostProbe, KvmRequirements, ProbeFailure};
use rustix::fs::{Access, access};

use crate::real_fs::RealFs;

/// How long the bwrap probe may take (the reference used 5 s).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The arguments of the probe sandbox: the namespaces and mounts our
/// session sandboxes need, so a host where only a plain `bwrap` works (no
/// `/proc` in a container, say) is detected up front.
pub const PROBE_ARGS: &[&str] = &[
    "--unshare-pid",
    "--die-with-parent",
    "--new-session",
    "--ro-bind",
    "/",
    "/",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--",
    "true",
];

/// Where virtiofsd is looked for after `COWORK_VM_VIRTIOFSD_BIN` and PATH
/// (`_COWORK_VFSD_PATHS`, colon-separated, replaces this list).
pub const VIRTIOFSD_FALLBACKS: [&str; 3] = [
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "/usr/lib/virtiofsd",
];

/// Probes the machine this process runs on.
#[derive(Debug, Clone)]
pub struct RealProbe {
    pub override_value: Option<String>,
    pub path_var: Option<String>,
    pub virtiofsd_bin: Option<String>,
    pub virtiofsd_paths: Option<String>,
}

impl RealProbe {
    /// Reads `COWORK_VM_BACKEND`, `PATH` and the virtiofsd variables.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            override_value: var("COWORK_VM_BACKEND"),
            path_var: var("PATH"),
            virtiofsd_bin: var("COWORK_VM_VIRTIOFSD_BIN"),
            virtiofsd_paths: var("_COWORK_VFSD_PATHS"),
        }
    }

    /// virtiofsd: `COWORK_VM_VIRTIOFSD_BIN` (must be an executable file),
    /// then PATH, then the known install locations.
    pub fn find_virtiofsd(&self) -> Option<PathBuf> {
        let fs = RealFs;
        if let Some(explicit) = &self.virtiofsd_bin {
            let p = PathBuf::from(explicit);
            return fs.is_executable_file(&p).then_some(p);
        }
        if let Some(p) = find_in_path("virtiofsd", self.path_var.as_deref(), &fs) {
            return Some(p);
        }
        let fallbacks: Vec<PathBuf> = match &self.virtiofsd_paths {
            Some(list) => list
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            None => VIRTIOFSD_FALLBACKS.iter().map(PathBuf::from).collect(),
        };
        fallbacks.into_iter().find(|p| fs.is_executable_file(p))
    }
}

impl HostProbe for RealProbe {
    fn backend_override(&mut self) -> Option<String> {
        self.override_value.clone()
    }

    fn bwrap_path(&mut self) -> Option<PathBuf> {
        find_in_path("bwrap", self.path_var.as_deref(), &RealFs)
    }

    fn bwrap_probe(&mut self) -> Result<(), ProbeFailure> {
        let Some(bwrap) = self.bwrap_path() else {
            return Err(ProbeFailure {
                message: "bwrap is not installed".into(),
                stderr: String::new(),
            });
        };
        run_probe(&bwrap)
    }

    fn kvm_requirements(&mut self) -> KvmRequirements {
        KvmRequirements {
            dev_kvm_rw: access("/dev/kvm", Access::READ_OK | Access::WRITE_OK).is_ok(),
            qemu: find_in_path("qemu-system-x86_64", self.path_var.as_deref(), &RealFs),
            virtiofsd: self.find_virtiofsd(),
            vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
        }
    }
}

/// Runs the probe sandbox with a timeout.
pub fn run_probe(bwrap: &Path) -> Result<(), ProbeFailure> {
    let mut child = Command::new(bwrap)
        .args(PROBE_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProbeFailure {
            message: format!("cannot run {}: {e}", bwrap.display()),
            stderr: String::new(),
        })?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > PROBE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeFailure {
                    message: format!("bwrap probe timed out after {}s", PROBE_TIMEOUT.as_secs()),
                    stderr: String::new(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => {
                return Err(ProbeFailure {
                    message: format!("waiting for the bwrap probe: {e}"),
                    stderr: String::new(),
                });
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut output = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut output);
    }
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut output);
    }
    Err(ProbeFailure {
        message: format!("bwrap probe exited with {status}"),
        stderr: output.trim().to_string(),
    })
}
