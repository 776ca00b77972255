//! Confinement of a session sandbox: what to apply, decided here and pure;
//! applied by the agent (`agent/confine.rs`) and, for cgroups, by the
//! daemon (`sys/cgroup.rs`).
//!
//! # One stage
//!
//! Confinement has one stage: the agent (pid 1 of the sandbox) confines
//! **itself**, once, after its own set-up (channel, listeners) and before
//! it starts the first command, so every process of the sandbox inherits
//! it through fork/exec: `no_new_privs` (set first thing in `agent::main`),
//! the seccomp filters ([`seccomp`]) and the Landlock domain
//! ([`landlock`]). There is no per-command stage: the agent spawns with
//! `posix_spawn` (std's `Command` without `pre_exec`, which would turn it
//! into a fork costing a millisecond per spawn), so nothing can run
//! between fork and exec.
//!
//! Hence the filters must not break the agent itself. After confinement it
//! still uses `posix_spawn` (glibc tries `clone3` first and falls back to
//! `clone` on ENOSYS, which is what our `clone3` rule answers), `wait4`/
//! `waitid`, `kill`, `signalfd`, `/proc`, pipes, epoll, `read`/`write`/
//! `sendmsg` on its channel, and `execve` of commands from every place the
//! Landlock plan lets execute.
//!
//! # Resources
//!
//! [`limits`] turns `configure`/`startVM` into [`limits::SessionLimits`]
//! and tmpfs sizes; [`cgroup`] into the cgroup files of each session.
//!
//! # Passing the plan
//!
//! The daemon knows the sandbox layout; the agent applies it. The daemon
//! builds a [`ConfinePlan`] with [`ConfinePlan::for_sandbox`] and hands it
//! to the agent as JSON in the [`CONFINE_PLAN_ENV`] environment variable
//! (`--setenv` in the bwrap command line). The agent's children never see
//! it: the agent spawns them with a cleared environment.

pub mod cgroup;
pub mod landlock;
pub mod limits;
pub mod seccomp;

use serde::{Deserialize, Serialize};

use self::landlock::{LandlockInputs, LandlockPlan, landlock_plan};

/// The environment variable carrying the agent's [`ConfinePlan`] as JSON.
pub const CONFINE_PLAN_ENV: &str = "COWORK_CONFINE_PLAN";

/// Everything the agent applies to itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfinePlan {
    pub landlock: LandlockPlan,
    /// Install the seccomp deny list (`resources/seccomp/sandbox.json`).
    pub seccomp: bool,
}

impl ConfinePlan {
    /// The plan of the sandbox described by `inputs`: its Landlock rules
    /// and the seccomp deny list.
    pub fn for_sandbox(inputs: &LandlockInputs<'_>) -> Self {
        ConfinePlan {
            landlock: landlock_plan(inputs),
            seccomp: true,
        }
    }

    /// The value of [`CONFINE_PLAN_ENV`].
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Parses the value of [`CONFINE_PLAN_ENV`].
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bwrap_argv::HostLayout;
    use crate::bwrap_config::BwrapMountsConfig;
    use crate::mounts::MountMap;
    use std::path::Path;

    #[test]
    fn plan_travels_as_json() {
        let layout = HostLayout::default();
        let mounts = MountMap::new();
        let config = BwrapMountsConfig::default();
        let plan = ConfinePlan::for_sandbox(&LandlockInputs {
            layout: &layout,
            home: Path::new("/home/u"),
            sdk_dir: None,
            session: "s",
            mounts: &mounts,
            config: &config,
        });
        let json = plan.to_json().unwrap();
        assert!(json.len() < 4096, "fits an environment variable easily");
        assert_eq!(ConfinePlan::from_json(&json).unwrap(), plan);
        assert!(plan.seccomp);
        assert!(ConfinePlan::from_json("{}").is_err());
    }
}
