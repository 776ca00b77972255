//! The host backend: processes run directly on the host, with no
//! isolation. Guest paths in the working directory, the environment and
//! the arguments are translated to host paths.
//!
//! They are started by one agent of ours (`cowork-vm-service agent --fd 0
//! --host`), the same one that is pid 1 of a bwrap sandbox, here running
//! unconfined on the host as a child subreaper. Each process leads its
//! own group (`kill` signals the group). When `stopVM` closes the agent's
//! channel, or the daemon dies however it dies (the kernel closes the
//! daemon's end of the socketpair even after `kill -9`), the agent ends
//! every process below it, background jobs that left their group or
//! session included (see `agent::descendants` for why that is complete),
//! and exits.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cowork_policy::args::clean_spawn_args;
use cowork_policy::command::{resolve_command, resolve_work_dir};
use cowork_policy::env::translate_for_host;
use cowork_policy::selection::BackendKind;
use cowork_protocol::agent::SpawnRequest;
use cowork_protocol::params::StartVmParams;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::process::Command;
use tokio::sync::watch;

use super::agent_link::{self, AgentLink, AgentProcess};
use super::{Backend, BackendError, SpawnJob, Spawned, VmFlags};
use crate::process_events::ProcessEvents;
use crate::real_fs::RealFs;

/// How long `stopVM` waits for the agent to end everything (it gives
/// processes a 2 s grace after SIGTERM) before killing it outright.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The running host agent.
struct HostAgent {
    link: Arc<AgentLink>,
    pid: Pid,
    exited: watch::Receiver<bool>,
}

/// Said once per daemon, and listed in `getDaemonInfo.warnings`.
pub const EGRESS_NOT_ENFORCED: &str = "the host backend cannot enforce the network allowlist \
(spawn.allowedDomains): its processes reach the network directly";

pub struct HostBackend {
    home: PathBuf,
    warned_egress: std::sync::atomic::AtomicBool,
    agent_binary: Option<PathBuf>,
    running: VmFlags,
    agent: tokio::sync::Mutex<Option<HostAgent>>,
}

impl HostBackend {
    pub fn new(home: PathBuf) -> Self {
        let agent_binary = match std::env::current_exe().and_then(std::fs::canonicalize) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!("cannot locate this executable to start the host agent: {e}");
                None
            }
        };
        Self {
            home,
            warned_egress: std::sync::atomic::AtomicBool::new(false),
            agent_binary,
            running: VmFlags::default(),
            agent: tokio::sync::Mutex::new(None),
        }
    }

    /// The live agent, starting one if there is none.
    async fn agent(&self, events: &ProcessEvents) -> Result<Arc<AgentLink>, String> {
        let mut slot = self.agent.lock().await;
        if let Some(agent) = slot.as_ref()
            && agent.link.is_alive()
        {
            return Ok(agent.link.clone());
        }
        let binary = self
            .agent_binary
            .as_ref()
            .ok_or("this executable could not be located, so the host agent cannot start")?;
        let agent = start_agent(binary, events.clone())?;
        let link = agent.link.clone();
        *slot = Some(agent);
        Ok(link)
    }
}

fn start_agent(binary: &Path, events: ProcessEvents) -> Result<HostAgent, String> {
    let (daemon_end, agent_end) =
        agent_link::channel().map_err(|e| format!("host agent channel: {e}"))?;
    let mut child = Command::new(binary)
        .args(["agent", "--fd", "0", "--host"])
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(agent_end))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own group: a Ctrl-C meant for `run` must not reach it.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| format!("cannot start the host agent {}: {e}", binary.display()))?;
    let pid = child
        .id()
        .and_then(|p| Pid::from_raw(p as i32))
        .ok_or("the host agent has no pid")?;
    let (done, exited) = watch::channel(false);
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => tracing::debug!("host agent exited: {status}"),
            Err(e) => tracing::warn!("waiting for the host agent: {e}"),
        }
        let _ = done.send(true);
    });
    Ok(HostAgent {
        link: AgentLink::start(daemon_end, events),
        pid,
        exited,
    })
}

#[async_trait]
impl Backend for HostBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Host
    }

    fn is_isolated(&self) -> bool {
        false
    }

    async fn start(&self, _params: &StartVmParams) -> Result<(), BackendError> {
        self.running.set(true);
        Ok(())
    }

    async fn stop(&self) {
        self.running.set(false);
        let Some(mut agent) = self.agent.lock().await.take() else {
            return;
        };
        // Closing the channel makes the agent end every process below it.
        agent.link.close();
        let ended = tokio::time::timeout(STOP_TIMEOUT, agent.exited.wait_for(|e| *e)).await;
        if !matches!(ended, Ok(Ok(_))) {
            tracing::warn!("the host agent did not finish within {STOP_TIMEOUT:?}; killing it");
            let _ = kill_process_group(agent.pid, Signal::KILL);
        }
    }

    fn is_running(&self) -> bool {
        self.running.get()
    }

    fn is_guest_connected(&self) -> bool {
        self.running.get()
    }

    async fn spawn(&self, job: SpawnJob, events: ProcessEvents) -> Result<Spawned, BackendError> {
        if job.allowed_domains.is_some()
            && !self
                .warned_egress
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!("{EGRESS_NOT_ENFORCED}");
        }
        let fs = RealFs;
        let mut env = job.env;
        translate_for_host(&mut env, &job.mounts, &self.home, &fs);
        let cwd = resolve_work_dir(
            job.cwd.as_deref(),
            job.shared_cwd_path.as_deref(),
            &job.mounts,
            &self.home,
            &fs,
        );
        // The inherited PWD is the daemon's; children expect their own.
        env.insert("PWD".into(), cwd.to_string_lossy().into_owned());
        let program = match resolve_command(
            &job.command,
            job.sdk_binary.as_deref(),
            env.get("PATH").map(String::as_str),
            &fs,
        ) {
            Ok(p) => p,
            Err(not_found) => {
                events
                    .failed_to_start(&job.id, &not_found.to_string(), 127)
                    .await;
                return Ok(Spawned::Ended);
            }
        };
        let args = clean_spawn_args(&job.args, &job.mounts, &fs);
        tracing::debug!(
            "host spawn {}: {} {:?} in {}",
            job.id,
            program.display(),
            args,
            cwd.display()
        );
        let link = match self.agent(&events).await {
            Ok(link) => link,
            Err(message) => {
                tracing::error!("spawn {}: {message}", job.id);
                events.failed_to_start(&job.id, &message, 126).await;
                return Ok(Spawned::Ended);
            }
        };
        let request = SpawnRequest {
            id: job.id.clone(),
            command: program.to_string_lossy().into_owned(),
            args,
            env,
            cwd: cwd.to_string_lossy().into_owned(),
        };
        let params = serde_json::to_value(&request).map_err(|e| BackendError::Session {
            session: job.session.clone(),
            reason: e.to_string(),
        })?;
        link.track(&job.id);
        match link.spawn(&job.id, params).await {
            Ok(_) => Ok(Spawned::Running(Arc::new(AgentProcess {
                id: job.id,
                link,
            }))),
            Err(e) => {
                link.untrack(&job.id);
                let message = format!("the host agent failed: {e}");
                tracing::error!("spawn {}: {message}", job.id);
                events.failed_to_start(&job.id, &message, 126).await;
                Ok(Spawned::Ended)
            }
        }
    }

    fn mount_path_reply(&self, _session: Option<&str>, _mount_name: &str, host: &Path) -> String {
        host.to_string_lossy().into_owned()
    }

    fn warnings(&self) -> Vec<String> {
        vec![EGRESS_NOT_ENFORCED.to_string()]
    }
}
