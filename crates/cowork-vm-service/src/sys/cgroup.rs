//! Per-session cgroups: where the daemon can create them, creating them
//! with a session's limits, getting a sandbox in, reading its OOM kills,
//! removing them. The decisions (which files, which values, how paths are
//! found) are pure, in `cowork_policy::confine::cgroup`; this is the I/O.
//!
//! # Where
//!
//! [`CgroupManager::detect`] looks, in order, for:
//!
//! * **cgroup v1** with writable `memory`, `pids` and `cpu` hierarchies at
//!   the daemon's own cgroups (from `/proc/self/cgroup`), e.g. a daemon
//!   running as root on a v1 or hybrid host: session cgroups are created
//!   there, under `cowork-vm-service-<pid>/`;
//! * **cgroup v2** with a delegated subtree: the daemon's own cgroup
//!   (`0::/...`), writable by it and holding no other process (a systemd
//!   service with `Delegate=yes`, say). The daemon moves itself into
//!   `<own>/cowork-vm-service-<pid>/daemon` (a cgroup with processes in it
//!   cannot give controllers to its children), enables the delegated ones
//!   of `memory pids cpu` for `<own>/cowork-vm-service-<pid>/`, and makes
//!   session cgroups there. Controllers the subtree lacks are reported as
//!   not enforced; the sessions are still placed;
//! * **cgroup v2 through the systemd user manager** when the daemon's own
//!   cgroup is not such a subtree (a daemon started by the desktop client
//!   shares the client's app scope): the manager moves the daemon into a
//!   transient scope with `Delegate=yes` of its own (`sys::systemd_scope`),
//!   which is then a delegated subtree as above;
//! * otherwise [`NotEnforced`] with the reason (for `--doctor` and
//!   `getDaemonInfo`).
//!
//! # Getting processes in without `pre_exec`
//!
//! The daemon starts bwrap with `posix_spawn` (no `pre_exec`, which would
//! make it a fork), so nothing can move the child between fork and exec.
//! On cgroup v1 a single *thread* can be moved (its tid written to
//! `tasks`), and a child inherits its parent thread's cgroups. So, under a
//! lock that serializes sandbox starts, on the thread that spawns:
//!
//! ```ignore
//! let guard = session_cgroup.enter_current_thread()?; // this thread only
//! let child = command.spawn();                        // bwrap, posix_spawn
//! drop(guard);                                        // back where it was
//! ```
//!
//! Everything bwrap starts then lives in the session's cgroups. Memory is
//! charged to a process's memory cgroup through its `mm` owner, so the
//! daemon's own allocations are never charged to the session while its
//! thread visits; the visit itself counts one task in `pids.current`.
//!
//! On cgroup v2 threads of one process cannot sit in different (domain)
//! cgroups, so this trick does not exist: a stub process waits in the
//! spare cgroup instead and execs bwrap when asked (`sys::exec_stub`).

use std::fs;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use cowork_policy::confine::cgroup::{
    CONTROLLERS, CgroupMount, V2_DAEMON_LEAF, V2Decision, V2Subtree, cgroup_dir, daemon_dir_name,
    keyed_value, parse_cgroup_mounts, parse_proc_cgroup, session_dir_name, subtree_control_line,
    v1_mount, v1_path, v1_plan, v2_decision, v2_path, v2_plan,
};
use cowork_policy::confine::limits::SessionLimits;

use super::systemd_scope;

/// Why sessions get no cgroup limits on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session cgroups not enforced: {reason}")]
pub struct NotEnforced {
    pub reason: String,
}

fn not_enforced(reason: impl Into<String>) -> NotEnforced {
    NotEnforced {
        reason: reason.into(),
    }
}

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the thread's own {0} cgroup is not mounted where it can be written")]
    ThreadCgroup(&'static str),
    #[error("starting an exec stub for a cgroup v2 session: {0}")]
    Stub(#[source] io::Error),
    #[error("removing {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Where session cgroups are made: on v1 one parent directory per
/// controller (`<hierarchy>/<daemon's cgroup>/cowork-vm-service-<pid>`),
/// on v2 one (`<daemon's cgroup>/cowork-vm-service-<pid>`).
#[derive(Debug)]
pub struct CgroupManager {
    parents: Vec<Controller>,
    swap_accounting: bool,
    /// `Some` on cgroup v2 (then `parents` holds the one directory).
    v2: Option<V2Controllers>,
}

/// The controllers of a cgroup v2 subtree.
#[derive(Debug, Clone)]
struct V2Controllers {
    enabled: Vec<&'static str>,
    missing: Vec<&'static str>,
    /// The daemon's own cgroup, for messages.
    own: PathBuf,
    /// Where the systemd user manager comes in.
    scope: Option<Scope>,
}

/// The daemon's subtree is a transient systemd user scope.
#[derive(Debug, Clone)]
enum Scope {
    /// It was moved into this one (`cowork-vm-service-<pid>.scope`).
    Unit(String),
    /// `--doctor`: a daemon started here would ask for one and could get it.
    Prospective,
}

/// Which cgroup version the manager uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// A thread can visit a session's cgroups (`enter_current_thread`).
    V1,
    /// Only whole processes move (`adopt_process`).
    V2,
}

#[derive(Debug, Clone)]
struct Controller {
    name: &'static str,
    mount: CgroupMount,
    parent: PathBuf,
}

impl CgroupManager {
    /// Finds where this daemon can create per-session cgroups, creates its
    /// parent directories, and removes empty ones left by dead daemons. On
    /// cgroup v2 this moves the daemon into a leaf of its own cgroup.
    pub fn detect() -> Result<CgroupManager, NotEnforced> {
        Self::detect_with(true)
    }

    /// What [`Self::detect`] would find, for `--doctor`: on cgroup v2 the
    /// calling process is not moved and no directory is made.
    pub fn inspect() -> Result<CgroupManager, NotEnforced> {
        Self::detect_with(false)
    }

    fn detect_with(take_over: bool) -> Result<CgroupManager, NotEnforced> {
        let read = |path: &str| {
            fs::read_to_string(path).map_err(|e| not_enforced(format!("reading {path}: {e}")))
        };
        let mounts = parse_cgroup_mounts(&read("/proc/self/mountinfo")?);
        let own = parse_proc_cgroup(&read("/proc/self/cgroup")?);
        let mut found = Vec::with_capacity(CONTROLLERS.len());
        let mut missing = Vec::new();
        for name in CONTROLLERS {
            let dir = v1_mount(&mounts, name).and_then(|mount| {
                let dir = cgroup_dir(mount, v1_path(&own, name)?)?;
                Some((mount.clone(), dir))
            });
            match dir {
                Some((mount, dir)) if writable(&dir) => found.push((name, mount, dir)),
                Some((_, dir)) => {
                    missing.push(format!("{} ({}) is not writable", name, dir.display()))
                }
                None => missing.push(format!("no cgroup v1 {name} hierarchy")),
            }
        }
        if !missing.is_empty() {
            let has_v1 = CONTROLLERS.iter().any(|c| v1_mount(&mounts, c).is_some());
            let v1 = has_v1.then(|| {
                format!(
                    "{}; run the daemon where these are delegated (as root on cgroup v1)",
                    missing.join(", ")
                )
            });
            return match (detect_v2(&mounts, &own, take_over), v1) {
                (Ok(m), _) => Ok(m),
                (Err(v2), Some(v1)) => Err(not_enforced(format!("{v1}; {v2}"))),
                (Err(v2), None) => Err(not_enforced(v2)),
            };
        }
        let pid = std::process::id();
        let mut parents = Vec::with_capacity(found.len());
        for (name, mount, dir) in found {
            sweep_stale(&dir);
            let parent = dir.join(daemon_dir_name(pid));
            match fs::create_dir(&parent) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(not_enforced(format!("creating {}: {e}", parent.display())));
                }
            }
            parents.push(Controller {
                name,
                mount,
                parent,
            });
        }
        let swap_accounting = parents
            .iter()
            .find(|c| c.name == "memory")
            .is_some_and(|c| c.parent.join("memory.memsw.limit_in_bytes").exists());
        Ok(CgroupManager {
            parents,
            swap_accounting,
            v2: None,
        })
    }

    pub fn version(&self) -> CgroupVersion {
        match self.v2 {
            Some(_) => CgroupVersion::V2,
            None => CgroupVersion::V1,
        }
    }

    /// Which limits are not enforced although session cgroups are made
    /// (controllers a cgroup v2 subtree was not given), and why.
    pub fn unenforced(&self) -> Option<String> {
        let v2 = self.v2.as_ref()?;
        (!v2.missing.is_empty()).then(|| {
            let whose = match v2.scope {
                Some(Scope::Prospective) => {
                    "the systemd user manager (so not to its scopes)".to_string()
                }
                _ => format!(
                    "the daemon's cgroup v2 {} (missing from its cgroup.controllers)",
                    v2.own.display()
                ),
            };
            format!(
                "the {} controller{} {} not delegated to {whose}, so those limits are not \
                 enforced",
                v2.missing.join(", "),
                if v2.missing.len() == 1 { "" } else { "s" },
                if v2.missing.len() == 1 { "is" } else { "are" },
            )
        })
    }

    /// One line for `--doctor` and logs.
    pub fn describe(&self) -> String {
        if let Some(v2) = &self.v2 {
            let dirs: Vec<String> = self
                .parents
                .iter()
                .map(|c| c.parent.display().to_string())
                .collect();
            let controllers = if v2.enabled.is_empty() {
                "no controllers".to_string()
            } else {
                v2.enabled.join(", ")
            };
            return match &v2.scope {
                None => format!("cgroup v2 ({controllers}): {}", dirs.join(" ")),
                Some(Scope::Unit(unit)) => format!(
                    "cgroup v2 ({controllers}) in the transient systemd user scope {unit} \
                     (Delegate=yes): {}",
                    dirs.join(" ")
                ),
                Some(Scope::Prospective) => format!(
                    "cgroup v2 ({controllers}) in a transient systemd user scope with \
                     Delegate=yes, which the daemon asks the user manager for at start-up \
                     (it shares {} with other processes)",
                    v2.own.display()
                ),
            };
        }
        let dirs: Vec<String> = self
            .parents
            .iter()
            .map(|c| c.parent.display().to_string())
            .collect();
        format!(
            "cgroup v1 ({}{}): {}",
            CONTROLLERS.join(", "),
            if self.swap_accounting {
                ", swap accounted"
            } else {
                ""
            },
            dirs.join(" ")
        )
    }

    /// Writes `limits` into `cgroup` (made by this manager).
    pub fn set_limits(
        &self,
        cgroup: &SessionCgroup,
        limits: &SessionLimits,
    ) -> Result<(), CgroupError> {
        let plan = match (&self.v2, cgroup.dirs.first()) {
            (Some(_), Some(d)) => v2_plan(limits, d.dir.join("memory.swap.max").exists()),
            (Some(_), None) => Vec::new(),
            (None, _) => v1_plan(limits, self.swap_accounting),
        };
        for w in plan {
            let Some(dir) = cgroup.dir(w.controller) else {
                continue;
            };
            let path = dir.join(w.file);
            fs::write(&path, &w.value).map_err(|source| CgroupError::Write {
                path,
                value: w.value.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Creates the cgroups of one session generation and writes its limits
    /// (an existing directory of the same name is reused).
    pub fn create(
        &self,
        session: &str,
        generation: u64,
        limits: &SessionLimits,
    ) -> Result<SessionCgroup, CgroupError> {
        let name = session_dir_name(session, generation);
        let mut cgroup = SessionCgroup {
            dirs: Vec::with_capacity(self.parents.len()),
            removed: false,
            v2_enabled: self.v2.as_ref().map(|v2| v2.enabled.clone()),
        };
        for c in &self.parents {
            let dir = c.parent.join(&name);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                // `cgroup` is dropped on return: what was made is removed.
                Err(source) => return Err(CgroupError::Create { path: dir, source }),
            }
            cgroup.dirs.push(SessionDir {
                controller: c.name,
                dir,
                mount: c.mount.clone(),
            });
        }
        self.set_limits(&cgroup, limits)?;
        Ok(cgroup)
    }
}

impl Drop for CgroupManager {
    /// Removes the daemon's parent directories if no session is left.
    fn drop(&mut self) {
        for c in &self.parents {
            let _ = fs::remove_dir(&c.parent);
        }
    }
}

#[derive(Debug)]
struct SessionDir {
    controller: &'static str,
    dir: PathBuf,
    mount: CgroupMount,
}

/// The cgroups of one session sandbox (one directory per controller on
/// v1, one in all on v2).
#[derive(Debug)]
pub struct SessionCgroup {
    dirs: Vec<SessionDir>,
    removed: bool,
    /// On cgroup v2: the controllers enabled for it.
    v2_enabled: Option<Vec<&'static str>>,
}

impl SessionCgroup {
    /// The directory of `controller` (`memory`, `pids`, `cpu`), if it
    /// limits this session.
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        if let Some(enabled) = &self.v2_enabled {
            return enabled
                .contains(&controller)
                .then(|| self.dirs.first().map(|d| d.dir.as_path()))
                .flatten();
        }
        self.dirs
            .iter()
            .find(|d| d.controller == controller)
            .map(|d| d.dir.as_path())
    }

    /// Whether no process is left in it (or it cannot be read).
    pub fn is_empty(&self) -> bool {
        self.dirs.iter().all(|d| {
            fs::read_to_string(d.dir.join("cgroup.procs")).map_or(true, |p| p.trim().is_empty())
        })
    }

    /// Moves process `pid` (all its threads) into this session's cgroups.
    /// Slow on a quiet system (an RCU grace period): only off the path of
    /// a command, as for a spare's exec stub.
    pub fn adopt_process(&self, pid: u32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        let file = match self.v2_enabled {
            Some(_) => "cgroup.procs",
            None => "tasks",
        };
        for d in &self.dirs {
            write_tid(&d.dir.join(file), &pid)?;
        }
        Ok(())
    }

    /// Moves the calling thread (only it) into this session's cgroups
    /// until the guard is dropped; children it starts meanwhile, with
    /// posix_spawn or fork, are born in them. Serialize calls: while the
    /// thread is here, everything it starts belongs to this session.
    pub fn enter_current_thread(&self) -> Result<ThreadGuard, CgroupError> {
        if self.v2_enabled.is_some() {
            return Err(CgroupError::ThreadCgroup("v2"));
        }
        let tid = rustix::thread::gettid().as_raw_nonzero().get().to_string();
        let mine = read("/proc/thread-self/cgroup")?;
        let mine = parse_proc_cgroup(&mine);
        let mut guard = ThreadGuard {
            tid,
            back: Vec::with_capacity(self.dirs.len()),
            _not_send: PhantomData,
        };
        for d in &self.dirs {
            let original = v1_path(&mine, d.controller)
                .and_then(|p| cgroup_dir(&d.mount, p))
                .ok_or(CgroupError::ThreadCgroup(d.controller))?;
            // On failure `guard` moves back what was already moved.
            write_tid(&d.dir.join("tasks"), &guard.tid)?;
            guard.back.push(original.join("tasks"));
        }
        Ok(guard)
    }

    /// Moves the calling thread (only it) into this session's cgroups for
    /// good (see [`Self::enter_current_thread`] for a visit).
    pub fn adopt_current_thread(&self) -> Result<(), CgroupError> {
        if self.v2_enabled.is_some() {
            return Err(CgroupError::ThreadCgroup("v2"));
        }
        let tid = rustix::thread::gettid().as_raw_nonzero().get().to_string();
        for d in &self.dirs {
            write_tid(&d.dir.join("tasks"), &tid)?;
        }
        Ok(())
    }

    /// Processes of the session killed by the OOM killer so far (`oom_kill`
    /// of v1's `memory.oom_control`, Linux 4.13+, or of v2's
    /// `memory.events`); 0 when unreadable.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.v2_enabled {
            Some(_) => "memory.events",
            None => "memory.oom_control",
        };
        self.dir("memory")
            .and_then(|d| fs::read_to_string(d.join(file)).ok())
            .and_then(|text| keyed_value(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// Removes the cgroups; fails (EBUSY) while processes are inside.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        let mut first = None;
        for d in &self.dirs {
            match fs::remove_dir(&d.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    first.get_or_insert(CgroupError::Remove {
                        path: d.dir.clone(),
                        source,
                    });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for SessionCgroup {
    /// Best effort: an empty cgroup is removed, a busy one stays.
    fn drop(&mut self) {
        if !self.removed {
            for d in &self.dirs {
                let _ = fs::remove_dir(&d.dir);
            }
        }
    }
}

/// The calling thread's visit to a session's cgroups; dropping it moves
/// the thread back to the cgroups it came from.
#[derive(Debug)]
#[must_use = "the thread goes back when the guard is dropped"]
pub struct ThreadGuard {
    tid: String,
    back: Vec<PathBuf>,
    /// Dropped on the thread that entered (it names that thread).
    _not_send: PhantomData<*const ()>,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        for tasks in &self.back {
            // Nothing better to do on failure: the thread stays counted in
            // the session, which the caller's next enter will replace.
            let _ = write_tid(tasks, &self.tid);
        }
    }
}

fn read(path: &str) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

fn write_tid(tasks: &Path, tid: &str) -> Result<(), CgroupError> {
    fs::write(tasks, tid).map_err(|source| CgroupError::Write {
        path: tasks.to_path_buf(),
        value: tid.to_string(),
        source,
    })
}

fn writable(dir: &Path) -> bool {
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
        && rustix::fs::access(dir.join("tasks"), rustix::fs::Access::WRITE_OK).is_ok()
}

/// Removes empty `cowork-vm-service-<pid>` directories of daemons that are
/// gone (their sessions are gone with them; a busy one stays).
fn sweep_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cowork-vm-service-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let stale = entry.path();
            if let Ok(children) = fs::read_dir(&stale) {
                for child in children.flatten() {
                    if child.path().is_dir() {
                        let _ = fs::remove_dir(child.path());
                    }
                }
            }
            let _ = fs::remove_dir(&stale);
        }
    }
}

/// Session cgroups on cgroup v2 under the daemon's own cgroup (see the
/// module doc), or why not. With `take_over` the daemon moves into its
/// leaf and enables the controllers, first asking the systemd user manager
/// for a delegated scope if its own cgroup is not one; without, nothing
/// changes (the doctor's view).
fn detect_v2(
    mounts: &[CgroupMount],
    own: &[cowork_policy::confine::cgroup::ProcCgroup],
    take_over: bool,
) -> Result<CgroupManager, String> {
    let unified = mounts
        .iter()
        .find(|m| m.v1_controllers.is_none())
        .ok_or("no cgroup v2 hierarchy is mounted")?;
    let own_path = v2_path(own).ok_or("the daemon has no cgroup v2 (no 0:: line)")?;
    let found = V2Found::read(unified, own_path)?;
    let (enabled, missing) = match found.decide() {
        V2Decision::Use { enable, missing } => (enable, missing),
        V2Decision::Refuse(reason) if !take_over => {
            return match systemd_scope::inspect(own_path) {
                Ok(manager) => Ok(prospective_scope(unified, &manager, found.dir)),
                Err(e) => Err(format!("{reason}; {e}")),
            };
        }
        V2Decision::Refuse(reason) => {
            let unit = systemd_scope::move_self(own_path).map_err(|e| format!("{reason}; {e}"))?;
            let text = fs::read_to_string("/proc/self/cgroup")
                .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
            let lines = parse_proc_cgroup(&text);
            let path = v2_path(&lines).unwrap_or_default();
            if !path.ends_with(&format!("/{unit}")) {
                return Err(format!(
                    "{reason}; the systemd user manager started {unit} but the daemon is in \
                     {path}, not in it"
                ));
            }
            tracing::info!(
                "moved into the systemd user scope {unit} (Delegate=yes) for session limits"
            );
            let found = V2Found::read(unified, path)?;
            return match found.decide() {
                V2Decision::Use { enable, missing } => {
                    take_v2(unified, found.dir, enable, missing, Some(unit))
                }
                V2Decision::Refuse(r) => Err(format!("{reason}; in the scope {unit}: {r}")),
            };
        }
    };
    if take_over {
        take_v2(unified, found.dir, enabled, missing, None)
    } else {
        Ok(v2_manager(unified, found.dir, enabled, missing, None))
    }
}

/// What the daemon finds at its cgroup v2 directory.
struct V2Found {
    dir: PathBuf,
    controllers: String,
    procs: String,
    writable: bool,
}

impl V2Found {
    fn read(unified: &CgroupMount, path: &str) -> Result<V2Found, String> {
        let dir = cgroup_dir(unified, path)
            .ok_or("the daemon's cgroup v2 is not below the mounted hierarchy")?;
        let read_in = |file: &str| {
            fs::read_to_string(dir.join(file))
                .map_err(|e| format!("reading {}: {e}", dir.join(file).display()))
        };
        let controllers = read_in("cgroup.controllers")?;
        let procs = read_in("cgroup.procs")?;
        let can_write = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
        let writable = can_write(&dir)
            && can_write(&dir.join("cgroup.procs"))
            && can_write(&dir.join("cgroup.subtree_control"));
        Ok(V2Found {
            dir,
            controllers,
            procs,
            writable,
        })
    }

    fn decide(&self) -> V2Decision {
        v2_decision(&V2Subtree {
            dir: &self.dir,
            controllers: &self.controllers,
            procs: &self.procs,
            own_pid: std::process::id(),
            writable: self.writable,
        })
    }
}

/// Moves the daemon into its leaf below `dir` and enables `enabled` for
/// the session cgroups.
fn take_v2(
    unified: &CgroupMount,
    dir: PathBuf,
    enabled: Vec<&'static str>,
    missing: Vec<&'static str>,
    scope: Option<String>,
) -> Result<CgroupManager, String> {
    let fail = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        format!("{what} {}: {e}", path.display())
    };
    let pid = std::process::id();
    let parent = dir.join(daemon_dir_name(pid));
    let leaf = parent.join(V2_DAEMON_LEAF);
    for d in [&parent, &leaf] {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail("creating", d, &e)),
        }
    }
    // Out of the way first: a cgroup with processes in it cannot enable
    // controllers for its children.
    let procs_file = leaf.join("cgroup.procs");
    fs::write(&procs_file, pid.to_string())
        .map_err(|e| fail("moving the daemon into", &procs_file, &e))?;
    sweep_stale(&dir);
    if !enabled.is_empty() {
        let line = subtree_control_line(&enabled);
        for d in [&dir, &parent] {
            let file = d.join("cgroup.subtree_control");
            fs::write(&file, &line)
                .map_err(|e| fail(&format!("writing {line:?} to"), &file, &e))?;
        }
    }
    Ok(v2_manager(
        unified,
        dir,
        enabled,
        missing,
        scope.map(Scope::Unit),
    ))
}

fn v2_manager(
    unified: &CgroupMount,
    dir: PathBuf,
    enabled: Vec<&'static str>,
    missing: Vec<&'static str>,
    scope: Option<Scope>,
) -> CgroupManager {
    CgroupManager {
        parents: vec![Controller {
            name: "unified",
            mount: unified.clone(),
            parent: dir.join(daemon_dir_name(std::process::id())),
        }],
        swap_accounting: false,
        v2: Some(V2Controllers {
            enabled,
            missing,
            own: dir,
            scope,
        }),
    }
}

/// For `--doctor`: what a daemon started here gets from the user manager.
/// Its controllers are the ones the manager itself was given (a delegated
/// scope gets those).
fn prospective_scope(unified: &CgroupMount, manager: &str, own: PathBuf) -> CgroupManager {
    let given = cgroup_dir(unified, manager)
        .and_then(|d| fs::read_to_string(d.join("cgroup.controllers")).ok())
        .unwrap_or_default();
    let available: Vec<&str> = given.split_whitespace().collect();
    let (enabled, missing) = CONTROLLERS.iter().partition(|c| available.contains(c));
    let mut m = v2_manager(unified, own, enabled, missing, Some(Scope::Prospective));
    m.parents.clear();
    m
}

#[cfg(test)]
mod tests {
    //! These run for real where the daemon can create cgroups (root on
    //! cgroup v1, like CI). Elsewhere each test checks what such a daemon
    //! gets instead, a refusal with its reason, and ends there.

    use super::*;
    use cowork_policy::confine::limits::PidsMax;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;

    /// One manager for all tests (they run in parallel and share the
    /// daemon's parent directory), or `None` after checking the refusal.
    fn manager() -> Option<&'static CgroupManager> {
        static MANAGER: std::sync::OnceLock<Result<CgroupManager, NotEnforced>> =
            std::sync::OnceLock::new();
        match MANAGER.get_or_init(CgroupManager::detect) {
            Ok(m) => Some(m),
            Err(e) => {
                check_refusal(e);
                None
            }
        }
    }

    /// A refusal is right only where session cgroups cannot be made (not
    /// root, or no cgroup v1 hierarchies of our controllers), and it says
    /// what is missing.
    fn check_refusal(e: &NotEnforced) {
        let mounts = parse_cgroup_mounts(&fs::read_to_string("/proc/self/mountinfo").unwrap());
        let v1_host = CONTROLLERS.iter().all(|c| v1_mount(&mounts, c).is_some());
        let root = rustix::process::geteuid().is_root();
        assert!(
            !(root && v1_host),
            "as root on a cgroup v1 host session cgroups must be made: {e}"
        );
        let names_one = CONTROLLERS.iter().any(|c| e.reason.contains(c));
        let cause = ["not writable", "no cgroup v1", "cgroup v2"]
            .iter()
            .any(|c| e.reason.contains(c));
        assert!(
            (names_one || e.reason.contains("cgroup v2")) && cause,
            "the reason says what is missing: {e}"
        );
    }

    fn limits(memory_bytes: u64, pids: u64) -> SessionLimits {
        SessionLimits {
            memory_bytes,
            cpus: 1,
            pids_max: PidsMax::Limit(pids),
        }
    }

    fn own_cgroup_line(pid: u32, controller: &str) -> String {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let lines = parse_proc_cgroup(&text);
        v1_path(&lines, controller).unwrap().to_string()
    }

    fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn limits_are_written_and_a_posix_spawned_child_lands_inside() {
        let Some(m) = manager() else { return };
        let cg = m.create("test session", 1, &limits(512 * MIB, 64)).unwrap();
        let memory = cg.dir("memory").unwrap().to_path_buf();
        assert!(memory.ends_with("test_session-1"));
        let value = |c: &str, f: &str| fs::read_to_string(cg.dir(c).unwrap().join(f)).unwrap();
        assert_eq!(value("memory", "memory.limit_in_bytes").trim(), "536870912");
        assert_eq!(value("pids", "pids.max").trim(), "64");
        assert_eq!(value("cpu", "cpu.cfs_quota_us").trim(), "100000");

        let before: Vec<String> = CONTROLLERS
            .iter()
            .map(|c| own_cgroup_line(std::process::id(), c))
            .collect();
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let mut child = {
            let _guard = cg.enter_current_thread().unwrap();
            let here = fs::read_to_string(format!("/proc/self/task/{tid}/cgroup")).unwrap();
            assert!(here.contains("test_session-1"), "{here}");
            // std's Command without pre_exec: posix_spawn.
            Command::new("/bin/sleep")
                .arg("5")
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        };
        let back = fs::read_to_string(format!("/proc/self/task/{tid}/cgroup")).unwrap();
        assert!(
            !back.contains("test_session-1"),
            "the thread went back: {back}"
        );
        for (c, was) in CONTROLLERS.iter().zip(&before) {
            let child_path = own_cgroup_line(child.id(), c);
            assert!(
                child_path.ends_with("/test_session-1"),
                "{c}: the child is in {child_path}"
            );
            assert_eq!(&own_cgroup_line(std::process::id(), c), was, "{c}");
        }
        let tasks = value("pids", "tasks");
        assert_eq!(tasks.trim(), child.id().to_string(), "only the child");
        assert_eq!(value("pids", "pids.current").trim(), "1");
        child.kill().unwrap();
        wait_exit(&mut child);
        assert_eq!(cg.oom_kills(), 0);
        cg.remove().unwrap();
        assert!(!memory.exists());
    }

    #[test]
    fn memory_limit_kills_and_is_counted() {
        let Some(m) = manager() else { return };
        assert!(
            Path::new("/usr/bin/python3").exists(),
            "this test needs /usr/bin/python3"
        );
        let cg = m.create("oom", 7, &limits(32 * MIB, 64)).unwrap();
        let mut child = {
            let _guard = cg.enter_current_thread().unwrap();
            // Touches 128 MiB of anonymous memory.
            Command::new("/usr/bin/python3")
                .args(["-c", "b = bytearray(128 << 20)"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let status = wait_exit(&mut child);
        assert!(!status.success(), "{status:?}");
        assert!(cg.oom_kills() >= 1, "oom_kill counted");
        cg.remove().unwrap();
    }

    #[test]
    fn pids_limit_bounds_forks() {
        let Some(m) = manager() else { return };
        let cg = m.create("pids", 2, &limits(256 * MIB, 4)).unwrap();
        let mut child = {
            let _guard = cg.enter_current_thread().unwrap();
            Command::new("/bin/sh")
                .args([
                    "-c",
                    "ok=0; for i in 1 2 3 4 5 6 7 8; do sleep 1 & ok=$((ok+1)); done 2>/dev/null; \
                     kill $(jobs -p) 2>/dev/null; exit 0",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        // While it runs, the session never holds more than 4 tasks.
        let mut peak = 0u64;
        while child.try_wait().unwrap().is_none() {
            if let Ok(n) = fs::read_to_string(cg.dir("pids").unwrap().join("pids.current")) {
                peak = peak.max(n.trim().parse().unwrap_or(0));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(peak <= 4, "peak {peak}");
        let events =
            fs::read_to_string(cg.dir("pids").unwrap().join("pids.events")).unwrap_or_default();
        assert!(
            keyed_value(&events, "max").unwrap_or(1) >= 1,
            "forks were refused: {events}"
        );
        // Let killed sleeps go before removing.
        let deadline = Instant::now() + Duration::from_secs(5);
        while cg.has_tasks() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        cg.remove().unwrap();
    }

    impl SessionCgroup {
        /// Whether tasks are still inside.
        fn has_tasks(&self) -> bool {
            self.dir("pids")
                .and_then(|d| fs::read_to_string(d.join("tasks")).ok())
                .is_some_and(|t| !t.trim().is_empty())
        }
    }

    #[test]
    fn dropping_a_session_removes_its_empty_cgroups() {
        let Some(m) = manager() else { return };
        let cg = m.create("dropped", 3, &limits(256 * MIB, 8)).unwrap();
        let dirs: Vec<PathBuf> = CONTROLLERS
            .iter()
            .map(|c| cg.dir(c).unwrap().to_path_buf())
            .collect();
        drop(cg);
        for d in dirs {
            assert!(!d.exists(), "{}", d.display());
        }
        assert!(m.describe().starts_with("cgroup v1 (memory, pids, cpu"));
    }
}
