//! One session sandbox: a bwrap process whose pid 1 is our agent, reached
//! through a socketpair end inherited across bwrap.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cowork_policy::bwrap_argv::{HostLayout, SandboxPlan, sandbox_argv};
use cowork_policy::bwrap_config::BwrapMountsConfig;
use cowork_policy::mounts::{Mount, MountMap};
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::backend::agent_link::{self, AgentLink};
use crate::process_events::ProcessEvents;
use crate::sessions::SessionDir;

/// What makes two spawns able to share a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SandboxKey {
    pub mounts: MountMap,
    pub sdk_dir: Option<PathBuf>,
    pub skeleton_home: bool,
}

/// Host-wide inputs of every sandbox, fixed when the backend starts.
#[derive(Debug, Clone)]
pub struct SandboxEnv {
    pub bwrap: PathBuf,
    pub agent_binary: PathBuf,
    pub home: PathBuf,
    pub layout: HostLayout,
    pub config: BwrapMountsConfig,
    pub path_var: Option<String>,
}

/// How much of bwrap's stderr is kept for error messages.
const STDERR_KEPT: usize = 8 * 1024;

pub struct Sandbox {
    pub generation: u64,
    pub key: SandboxKey,
    pub link: Arc<AgentLink>,
    bwrap_pid: Pid,
    last_used: Mutex<Instant>,
    stderr: Arc<Mutex<String>>,
    stderr_done: tokio::sync::watch::Receiver<bool>,
}

impl Sandbox {
    /// Starts bwrap with the agent; returns without waiting for the agent
    /// (requests queue on the channel meanwhile).
    pub fn start(
        env: &SandboxEnv,
        session: &str,
        dirs: &SessionDir,
        key: SandboxKey,
        generation: u64,
        events: ProcessEvents,
    ) -> Result<Arc<Self>, String> {
        let mounts = prepare_mounts(&key.mounts);
        if key.skeleton_home {
            dirs.ensure_home()
                .map_err(|e| format!("cannot create {}: {e}", dirs.home.display()))?;
        }
        let (daemon_end, agent_end) =
            agent_link::channel().map_err(|e| format!("agent channel: {e}"))?;
        // The agent's end becomes bwrap's stdin, which bwrap hands on to
        // the agent: no pre_exec, so std spawns with posix_spawn (vfork)
        // instead of forking the multi-threaded daemon. No PDEATHSIG is
        // needed either: when the daemon dies its end closes, the agent
        // exits, and with pid 1 gone the whole sandbox and bwrap end.
        let agent_fd = 0;
        let plan = SandboxPlan {
            session,
            home: &env.home,
            session_tmp: &dirs.tmp,
            skeleton_home: key.skeleton_home.then_some(dirs.home.as_path()),
            sdk_dir: key.sdk_dir.as_deref(),
            mounts: &mounts,
            agent_binary: &env.agent_binary,
            agent_fd,
            layout: &env.layout,
            config: &env.config,
        };
        let argv = sandbox_argv(&plan);
        tracing::debug!(
            "session {session} generation {generation}: bwrap {}",
            argv.join(" ")
        );
        let mut cmd = Command::new(&env.bwrap);
        cmd.args(&argv)
            .env_clear()
            .stdin(Stdio::from(agent_end))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(path) = &env.path_var {
            cmd.env("PATH", path);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", env.bwrap.display()))?;
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
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    tracing::debug!("session {name} generation {generation}: bwrap exited {status}")
                }
                Err(e) => tracing::warn!("session {name}: waiting for bwrap: {e}"),
            }
        });
        let link = AgentLink::start(daemon_end, events);
        Ok(Arc::new(Self {
            generation,
            key,
            link,
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

    /// Ends the sandbox and everything in it.
    pub fn shutdown(&self) {
        self.link.close();
        // bwrap leads its own group; with --die-with-parent its pid 1 (the
        // agent) and so the whole pid namespace go with it.
        let _ = kill_process_group(self.bwrap_pid, Signal::KILL);
    }
}

/// Makes each mount's host folder usable: removes a self-referential
/// symlink (`.mcpb-cache`, reference #342) and creates missing folders
/// (`.claude`, `.auto-memory` may not exist yet). Mounts that cannot be
/// prepared are left out, with a warning.
fn prepare_mounts(mounts: &MountMap) -> MountMap {
    let mut ready = MountMap::new();
    for m in mounts.iter() {
        match prepare_one(&m.host) {
            Ok(()) => ready.insert(Mount::clone(m)),
            Err(e) => tracing::warn!("mount {} ({}) left out: {e}", m.name, m.host.display()),
        }
    }
    ready
}

fn prepare_one(host: &Path) -> std::io::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(host)
        && meta.file_type().is_symlink()
        && let Ok(target) = std::fs::read_link(host)
    {
        let resolved =
            cowork_policy::paths::normalize(&host.parent().unwrap_or(Path::new("/")).join(&target));
        if resolved == host {
            tracing::info!("removing self-referential symlink {}", host.display());
            std::fs::remove_file(host)?;
        }
    }
    if !host.exists() {
        std::fs::create_dir_all(host)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_referential_symlinks_are_repaired_and_missing_folders_created() {
        let t = tempfile::tempdir().unwrap();
        let loop_link = t.path().join(".mcpb-cache");
        std::os::unix::fs::symlink(".mcpb-cache", &loop_link).unwrap();
        prepare_one(&loop_link).unwrap();
        assert!(loop_link.is_dir(), "the loop became a real folder");
        let missing = t.path().join("a/b");
        prepare_one(&missing).unwrap();
        assert!(missing.is_dir());
        let elsewhere = t.path().join("link-elsewhere");
        std::os::unix::fs::symlink(t.path().join("a"), &elsewhere).unwrap();
        prepare_one(&elsewhere).unwrap();
        assert!(
            std::fs::symlink_metadata(&elsewhere)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
