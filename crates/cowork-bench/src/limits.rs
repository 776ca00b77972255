//! What the machine itself allows, measured in the same run: the floor
//! under each of our figures.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cowork_policy::bwrap_argv::{SandboxPlan, Source, host_layout, sandbox_argv};
use cowork_policy::bwrap_config::BwrapMountsConfig;
use cowork_policy::command::find_in_path;
use cowork_policy::confine::limits::{PidsMax, SessionLimits, TmpfsSizes};
use cowork_vm_service::real_fs::RealFs;
use cowork_vm_service::sys::pin::pin_real;
use cowork_vm_service::sys::spawn;
use rustix::fs::OFlags;

use crate::daemon::scratch_dir;
use crate::measure::producer;
use crate::stats::ms;

/// fork+exec of `/usr/bin/true` from this process, waited for.
pub fn fork_exec(n: usize) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let status = Command::new("/usr/bin/true").status()?;
        samples.push(ms(t.elapsed()));
        if !status.success() {
            bail!("/usr/bin/true failed");
        }
    }
    Ok(samples)
}

pub fn bwrap_path() -> Option<PathBuf> {
    find_in_path("bwrap", std::env::var("PATH").ok().as_deref(), &RealFs)
}

/// Our session sandbox's exact bwrap argv running `payload` instead of
/// the agent: the same flags, tmpfs sizes (the default limits) and binds,
/// the session tmp and the agent binary bound from the descriptors
/// `session_tmp` and `agent_binary` as the daemon binds them, without the
/// agent's confinement plan. With `/usr/bin/true`: what one cold start
/// costs bubblewrap alone. With `sh -c /usr/bin/true`: the smallest pid 1
/// that starts one command, the floor of any agent design.
pub fn bare_bwrap_argv(
    home: &Path,
    session_tmp: Source,
    agent_binary: Source,
    payload: &[&str],
) -> Vec<String> {
    let layout = host_layout(&RealFs);
    let config = BwrapMountsConfig::default();
    let tmpfs =
        TmpfsSizes::for_memory(SessionLimits::from_requests(&[], PidsMax::default()).memory_bytes);
    let plan = SandboxPlan {
        session: "bench",
        home,
        session_tmp,
        skeleton_home: None,
        sdk: None,
        mounts: &[],
        extra_binds: &[],
        agent_binary,
        agent_fd: 3,
        layout: &layout,
        config: &config,
        tmpfs: &tmpfs,
        root_masks: None,
        agent_env: &[],
    };
    let mut argv = sandbox_argv(&plan);
    if let Some(sep) = argv.iter().position(|a| a == "--") {
        argv.truncate(sep + 1);
    }
    argv.extend(payload.iter().map(|a| a.to_string()));
    argv
}

/// The bwrap payloads timed between our cold starts.
pub const TRUE: &[&str] = &["/usr/bin/true"];
pub const SH_RUNS_TRUE: &[&str] = &["/bin/sh", "-c", "/usr/bin/true"];

/// `bwrap` running a payload in our layout, ready to be timed.
pub struct BareBwrap {
    bwrap: PathBuf,
    argv: Vec<String>,
    /// The session tmp and the agent binary, pinned as the daemon pins
    /// them, passed to every run.
    passed: [OwnedFd; 2],
    _scratch: tempfile::TempDir,
}

impl BareBwrap {
    pub fn new(payload: &[&str]) -> Result<Self> {
        let bwrap = bwrap_path().context("bwrap is not installed")?;
        // Laid out like the daemons' (see `scratch_dir`): `$HOME` outside
        // the directory bound on `/tmp`.
        let scratch = scratch_dir("cowork-bench-bare-")?;
        let session_tmp = scratch.path().join("tmp");
        std::fs::create_dir(&session_tmp)?;
        let tmp = pin_real(&session_tmp, OFlags::DIRECTORY).context("pinning the session tmp")?;
        let agent = pin_real(Path::new("/usr/bin/true"), OFlags::empty())
            .context("pinning /usr/bin/true")?;
        let argv = bare_bwrap_argv(
            &scratch.path().join("home"),
            Source::Fd(tmp.as_raw_fd()),
            Source::Fd(agent.as_raw_fd()),
            payload,
        );
        Ok(Self {
            bwrap,
            argv,
            passed: [tmp, agent],
            _scratch: scratch,
        })
    }

    /// One start-to-exit, in ms.
    pub fn sample(&self) -> Result<f64> {
        let fds = self.passed.each_ref().map(AsFd::as_fd);
        let t = Instant::now();
        // The daemon's own way of handing descriptors to bwrap.
        let out = spawn::with_inherited(&fds, || {
            Command::new(&self.bwrap)
                .args(&self.argv)
                .stdin(Stdio::null())
                .output()
        })?;
        let elapsed = ms(t.elapsed());
        if !out.status.success() {
            bail!(
                "bare bwrap failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(elapsed)
    }
}

/// MB/s of the producer's output read straight from a pipe.
pub fn raw_pipe(bytes: u64) -> Result<f64> {
    let t = Instant::now();
    let mut child = Command::new("/bin/sh")
        .args(["-c", &producer(bytes)])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    child.wait()?;
    if total != bytes {
        bail!("raw pipe delivered {total} of {bytes} bytes");
    }
    Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64())
}
