//! What the agent backends (`bwrap`, `kvm`) share in running a client's
//! spawn: which sandbox (or VM) generation may serve it, the command and
//! request the agent gets, and where a session mount is seen inside.
//!
//! Each backend keeps what differs: how a generation starts, and how a
//! failure to start is explained to the client.

use std::path::{Path, PathBuf};

use cowork_policy::bwrap_argv::{sandbox_work_dir, sdk_dir, session_mnt};
use cowork_policy::fs_view::FsView;
use cowork_policy::mounts::MountMap;
use cowork_policy::net::{AllowList, AllowListKey, proxy_env};
use cowork_protocol::agent::SpawnRequest;

use super::SpawnJob;

/// What makes two spawns able to share a sandbox or VM generation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SandboxKey {
    pub mounts: MountMap,
    pub sdk_dir: Option<PathBuf>,
    pub skeleton_home: bool,
    /// The normalized network allowlist: a different one is a new
    /// generation, so no process gets more network than its spawn asked
    /// for.
    pub egress: AllowListKey,
}

impl SandboxKey {
    /// The generation `job` asks for (`fs` tells whether the SDK binary is
    /// installed: its directory is mounted only then).
    pub fn for_job(job: &SpawnJob, fs: &impl FsView) -> Self {
        let installed_sdk = job.sdk_binary.as_deref().filter(|sdk| fs.exists(sdk));
        Self {
            mounts: job.mounts.clone(),
            sdk_dir: sdk_dir(installed_sdk),
            skeleton_home: job.mount_skeleton_home,
            egress: AllowList::from_entries(job.allowed_domains.as_deref())
                .key()
                .clone(),
        }
    }

    /// Whether a spawn asking for `self` may run in a generation made for
    /// `running`. A spawn without `allowedDomains` asks for no policy of
    /// its own: it joins whatever its session runs (and gets no more than
    /// that generation has).
    pub fn served_by(&self, running: &SandboxKey, asks_for_policy: bool) -> bool {
        self.mounts == running.mounts
            && self.sdk_dir == running.sdk_dir
            && self.skeleton_home == running.skeleton_home
            && (!asks_for_policy || self.egress == running.egress)
    }
}

/// The command the agent runs: `claude` is the SDK binary (when that is
/// missing the agent looks on PATH and otherwise reports the SDK path as
/// not found, exit 127).
pub fn agent_command(job: &SpawnJob) -> String {
    match &job.sdk_binary {
        Some(sdk)
            if Path::new(&job.command)
                .file_name()
                .is_some_and(|n| n == "claude") =>
        {
            sdk.to_string_lossy().into_owned()
        }
        _ => job.command.clone(),
    }
}

/// The agent's request for `job`: its working directory inside, `PWD`,
/// and the way out of the private network (the spawn's own env wins).
pub fn agent_request(job: SpawnJob, command: String, fs: &impl FsView) -> SpawnRequest {
    let cwd = sandbox_work_dir(job.cwd.as_deref(), &job.session, &job.mounts, fs);
    let mut env = job.env;
    env.insert("PWD".into(), cwd.clone());
    for (k, v) in proxy_env() {
        env.entry(k).or_insert(v);
    }
    SpawnRequest {
        id: job.id,
        command,
        args: job.args,
        env,
        cwd,
    }
}

/// Where mount `name` of `session` is seen inside (the host path for a
/// spawn outside any session).
pub fn mount_path_inside(session: Option<&str>, name: &str, host: &Path) -> String {
    match session {
        Some(s) => format!("{}/{name}", session_mnt(s)),
        None => host.to_string_lossy().into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sdk: Option<&str>, skeleton_home: bool, allow: Option<&[&str]>) -> SandboxKey {
        let allow: Option<Vec<String>> = allow.map(|a| a.iter().map(|s| s.to_string()).collect());
        SandboxKey {
            mounts: MountMap::default(),
            sdk_dir: sdk.map(PathBuf::from),
            skeleton_home,
            egress: AllowList::from_entries(allow.as_deref()).key().clone(),
        }
    }

    #[test]
    fn a_spawn_joins_a_generation_only_with_the_same_layout_and_no_wider_network() {
        let running = key(Some("/sdk"), false, Some(&["a.example"]));
        let cases = [
            // (asks for, with a policy of its own, served by `running`)
            (key(Some("/sdk"), false, Some(&["a.example"])), true, true),
            (key(Some("/sdk"), false, Some(&["A.example."])), true, true),
            (key(Some("/sdk"), false, Some(&["b.example"])), true, false),
            (key(Some("/sdk"), false, Some(&[])), true, false),
            // No allowedDomains: joins whatever the session runs.
            (key(Some("/sdk"), false, None), false, true),
            (key(None, false, None), false, false),
            (key(Some("/sdk"), true, None), false, false),
        ];
        for (asks, policy, served) in cases {
            assert_eq!(asks.served_by(&running, policy), served, "{asks:?}");
        }
    }
}
