//! The one place the agent applies its confinement (decided by
//! `cowork_policy::confine`): Landlock, then the seccomp filters, on
//! itself, once.
//!
//! # When to call [`apply`]
//!
//! In sandbox mode only (never for the host backend's agent), in
//! `agent::main`:
//!
//! 1. the channel descriptor is checked and made close-on-exec;
//! 2. `PR_SET_DUMPABLE 0` and `no_new_privs` (already there);
//! 3. any other set-up that needs what the filters refuse or paths the
//!    plan does not grant (later: the 127.0.0.1 proxy listeners);
//! 4. **`confine::apply(&plan)`**, while the agent is still its only
//!    thread: seccomp without TSYNC and Landlock before ABI 8 apply to the
//!    calling thread, and every process started afterwards inherits both;
//! 5. `first_request::take` (which may already start the first command),
//!    the runtime, the request loop.
//!
//! The plan comes from the daemon as JSON in
//! `cowork_policy::confine::CONFINE_PLAN_ENV` (read it with
//! `ConfinePlan::from_json`). An error means the sandbox must not run
//! commands: print it and exit with status 2, as for the other set-up
//! failures. Missing paths are not errors (they are reported and get no
//! access); neither is a kernel without Landlock (reported as `none`).
//!
//! Costs on the project's machine (release build, 6.18 kernel, inside a
//! bwrap sandbox: `syscall_probe --confine-self`): Landlock with 24 rules
//! 45-140 us (mostly opening the paths), seccomp 235-245 us (the kernel
//! verifying, JIT-compiling and emulating seccompiler's programs for every
//! syscall number; getting them is a copy of data compiled at build time,
//! see `cowork_policy::confine::seccomp`, whose doc has the breakdown).

use std::io;
use std::os::fd::AsFd;
use std::time::Instant;

use cowork_policy::confine::landlock::{LandlockPlan, TARGET_ABI};
use cowork_policy::confine::seccomp::{SeccompArch, SeccompPlanError, sandbox_programs};
use cowork_policy::confine::{
    ConfinePlan, ConfineReport, Enforcement, LandlockReport, SeccompReport, SkippedPath,
};
use landlock::{
    Access, AccessFs, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
};

/// Why confinement failed (the sandbox must not run commands then).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfineError {
    #[error("seccomp: {0}")]
    Arch(#[from] SeccompPlanError),
    #[error("seccomp: installing the {label} filter: {source}")]
    Seccomp {
        label: String,
        #[source]
        source: seccompiler::Error,
    },
    #[error("landlock: {0}")]
    Landlock(#[from] RulesetError),
}

/// Applies `plan` to the calling thread and everything it starts later.
pub(crate) fn apply(plan: &ConfinePlan) -> Result<ConfineReport, ConfineError> {
    // Refuse an unsupported architecture before changing anything.
    let arch = SeccompArch::native()?;
    let landlock = apply_landlock(&plan.landlock)?;
    let seccomp = if plan.seccomp {
        apply_seccomp(arch)?
    } else {
        SeccompReport {
            installed: false,
            arch: arch.to_string(),
            programs: 0,
            instructions: 0,
            micros: 0,
        }
    };
    Ok(ConfineReport { landlock, seccomp })
}

fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn apply_seccomp(arch: SeccompArch) -> Result<SeccompReport, ConfineError> {
    let start = Instant::now();
    // The rules' filters (EPERM, ENOSYS), then the x32 guard on x86_64.
    let filters = sandbox_programs(arch);
    for program in &filters.programs {
        seccompiler::apply_filter(&program.bpf).map_err(|source| ConfineError::Seccomp {
            label: program.label.clone(),
            source,
        })?;
    }
    Ok(SeccompReport {
        installed: true,
        arch: arch.to_string(),
        programs: filters.programs.len(),
        instructions: filters.instructions(),
        micros: micros_since(start),
    })
}

fn apply_landlock(plan: &LandlockPlan) -> Result<LandlockReport, ConfineError> {
    let start = Instant::now();
    let mut scopes: BitFlags<Scope> = BitFlags::EMPTY;
    if plan.scope_abstract_unix_socket {
        scopes |= Scope::AbstractUnixSocket;
    }
    if plan.scope_signal {
        scopes |= Scope::Signal;
    }
    // Best effort (the crate's default): rights and scopes the kernel does
    // not know are dropped and the status says "partially enforced".
    let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(TARGET_ABI))?;
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes)?;
    }
    let mut created = ruleset.create()?;
    let file_rights = AccessFs::from_file(TARGET_ABI);
    let mut rules = 0;
    let mut skipped = Vec::new();
    for rule in &plan.rules {
        let fd = match PathFd::new(&rule.path) {
            Ok(fd) => fd,
            Err(e) => {
                skipped.push(SkippedPath {
                    path: rule.path.clone(),
                    reason: open_failure(&e),
                });
                continue;
            }
        };
        let mut rights = rule.access.rights();
        if !is_directory(&fd) {
            // Directory rights on a file would make the whole ruleset
            // "partially enforced"; a file only takes file rights.
            rights &= file_rights;
        }
        if rights.is_empty() {
            skipped.push(SkippedPath {
                path: rule.path.clone(),
                reason: "not a directory".into(),
            });
            continue;
        }
        created = created.add_rule(PathBeneath::new(fd, rights))?;
        rules += 1;
    }
    let status = created.restrict_self()?;
    let kernel_abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as u32,
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => 0,
    };
    let enforcement = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::None,
    };
    Ok(LandlockReport {
        enforcement,
        kernel_abi,
        target_abi: TARGET_ABI as u32,
        rules,
        skipped,
        scoped: !scopes.is_empty() && kernel_abi >= 6 && enforcement != Enforcement::None,
        micros: micros_since(start),
    })
}

/// The OS error of a failed open, without the crate's wording.
fn open_failure(e: &landlock::PathFdError) -> String {
    let landlock::PathFdError::OpenCall { source, .. } = e else {
        return e.to_string();
    };
    let os: &io::Error = source;
    os.kind().to_string()
}

fn is_directory(fd: &PathFd) -> bool {
    rustix::fs::fstat(fd.as_fd()).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cowork_policy::confine::landlock::{PathAccess, PathRule, RuleOrigin};

    /// Applies a plan on a fresh thread (both Landlock and seccomp are
    /// per-thread here) and runs `check` there.
    fn on_confined_thread<T: Send + 'static>(
        plan: ConfinePlan,
        check: impl FnOnce(&ConfineReport) -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            let report = apply(&plan).unwrap();
            check(&report)
        })
        .join()
        .unwrap()
    }

    fn rule(path: &str, access: PathAccess) -> PathRule {
        PathRule {
            path: path.into(),
            access,
            origin: RuleOrigin::System,
        }
    }

    #[test]
    fn confined_thread_keeps_working_and_is_walled() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let plan = ConfinePlan {
            landlock: LandlockPlan {
                rules: vec![
                    rule("/usr", PathAccess::ReadExec),
                    rule("/etc", PathAccess::ReadExec),
                    rule("/lib", PathAccess::ReadExec),
                    rule("/lib64", PathAccess::ReadExec),
                    rule("/dev/null", PathAccess::Device),
                    rule("/proc", PathAccess::Read),
                    rule(&work.to_string_lossy(), PathAccess::ReadWriteExec),
                    rule("/no/such/path", PathAccess::Read),
                ],
                scope_abstract_unix_socket: true,
                scope_signal: true,
            },
            seccomp: true,
        };
        let (w, o) = (work.clone(), other.clone());
        let outcome = on_confined_thread(plan, move |report| {
            let written = std::fs::write(w.join("f"), "x").is_ok();
            let walled = std::fs::write(o.join("f"), "x").is_err();
            let spawned = std::process::Command::new("/usr/bin/true")
                .status()
                .is_ok_and(|s| s.success());
            // SAFETY: a raw syscall with no pointers.
            let clone3 = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
            let clone3_errno = io::Error::last_os_error().raw_os_error();
            (
                report.clone(),
                written,
                walled,
                spawned,
                clone3,
                clone3_errno,
            )
        });
        let (report, written, walled, spawned, clone3, clone3_errno) = outcome;
        let programs = if cfg!(target_arch = "x86_64") { 3 } else { 2 };
        assert!(report.seccomp.installed && report.seccomp.programs == programs);
        assert_eq!(report.landlock.skipped.len(), 1, "{report:?}");
        assert_eq!(report.landlock.skipped[0].path, "/no/such/path");
        assert_eq!((clone3, clone3_errno), (-1, Some(libc::ENOSYS)));
        assert!(spawned, "posix_spawn falls back to clone");
        if report.landlock.enforcement != Enforcement::None {
            assert!(written, "a rw rule is writable");
            assert!(walled, "outside the plan is not");
        }
        // The test's own thread is untouched.
        assert!(std::fs::write(other.join("g"), "y").is_ok());
    }
}
