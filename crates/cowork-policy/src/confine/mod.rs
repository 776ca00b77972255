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
//! and tmpfs sizes; [`cgroup`] into the cgroup files of each session;
//! [`systemd_scope`] asks the systemd user manager for a delegated subtree
//! when the daemon's own cgroup is not one.
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
pub mod systemd_scope;

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

/// What the agent's confinement achieved, for `getDaemonInfo` and
/// `--doctor` (filled by `agent/confine.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfineReport {
    pub landlock: LandlockReport,
    pub seccomp: SeccompReport,
}

/// How much of a Landlock plan the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Every requested right and scope.
    Full,
    /// Some (an older ABI than [`landlock::TARGET_ABI`]).
    Partial,
    /// None: no Landlock in this kernel (or disabled at boot).
    None,
}

/// The Landlock part of a [`ConfineReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockReport {
    pub enforcement: Enforcement,
    /// The kernel's ABI as far as the landlock crate knows it (0: none).
    pub kernel_abi: u32,
    /// The ABI the plan's rights are written for.
    pub target_abi: u32,
    /// Rules added.
    pub rules: usize,
    /// Plan paths that could not be opened inside the sandbox (so they
    /// get no access at all), with the reason.
    pub skipped: Vec<SkippedPath>,
    /// Abstract Unix sockets and signals scoped to the sandbox.
    pub scoped: bool,
    pub micros: u64,
}

/// A plan path left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedPath {
    pub path: String,
    pub reason: String,
}

/// The seccomp part of a [`ConfineReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompReport {
    /// False when the plan asked for none.
    pub installed: bool,
    pub arch: String,
    pub programs: usize,
    pub instructions: usize,
    pub micros: u64,
}

impl ConfineReport {
    /// One line for logs and `--doctor`.
    pub fn summary(&self) -> String {
        let l = &self.landlock;
        let landlock = match l.enforcement {
            Enforcement::Full => format!("landlock fully enforced (ABI {})", l.kernel_abi),
            Enforcement::Partial => format!(
                "landlock partially enforced (kernel ABI {}, rules for ABI {})",
                l.kernel_abi, l.target_abi
            ),
            Enforcement::None => "landlock not enforced (not in this kernel)".to_string(),
        };
        let skipped = if l.skipped.is_empty() {
            String::new()
        } else {
            let paths: Vec<&str> = l.skipped.iter().map(|s| s.path.as_str()).collect();
            format!(", skipped {}", paths.join(" "))
        };
        let s = &self.seccomp;
        let seccomp = if s.installed {
            format!(
                "seccomp {} filters, {} instructions ({})",
                s.programs, s.instructions, s.arch
            )
        } else {
            "seccomp off".to_string()
        };
        format!("{landlock}{skipped}; {seccomp}")
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

    #[test]
    fn report_summary_table() {
        let report = |enforcement, skipped: Vec<SkippedPath>, installed| ConfineReport {
            landlock: LandlockReport {
                enforcement,
                kernel_abi: 5,
                target_abi: 7,
                rules: 20,
                skipped,
                scoped: false,
                micros: 40,
            },
            seccomp: SeccompReport {
                installed,
                arch: "x86_64".into(),
                programs: 3,
                instructions: 289,
                micros: 30,
            },
        };
        let cases = [
            (
                report(Enforcement::Full, vec![], true),
                "landlock fully enforced (ABI 5); seccomp 3 filters, 289 instructions (x86_64)",
            ),
            (
                report(
                    Enforcement::Partial,
                    vec![SkippedPath {
                        path: "/nix".into(),
                        reason: "No such file or directory".into(),
                    }],
                    true,
                ),
                "landlock partially enforced (kernel ABI 5, rules for ABI 7), skipped /nix; \
                 seccomp 3 filters, 289 instructions (x86_64)",
            ),
            (
                report(Enforcement::None, vec![], false),
                "landlock not enforced (not in this kernel); seccomp off",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(r.summary(), want);
        }
    }
}
