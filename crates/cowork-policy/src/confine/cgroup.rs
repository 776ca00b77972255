//! Per-session cgroups, the pure half: which files get which values for a
//! session's [`SessionLimits`] on cgroup v1 and v2, where a process's
//! cgroups are (from `/proc/self/cgroup` and `/proc/self/mountinfo`), the
//! directory names, and the OOM counters. The daemon's `sys::cgroup` does
//! the I/O.

use std::path::{Path, PathBuf};

use super::limits::{CPU_PERIOD_US, SessionLimits};

/// The controllers a session cgroup is limited by.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// One write into a session cgroup: `<controller dir>/<file>` gets `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupWrite {
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
}

fn write(controller: &'static str, file: &'static str, value: impl ToString) -> CgroupWrite {
    CgroupWrite {
        controller,
        file,
        value: value.to_string(),
    }
}

/// cgroup v1, in write order: the memory limit before memory+swap (which
/// may never be below it), memory+swap equal to it (no swap beyond the
/// memory, as a VM without swap) when swap accounting exists, the process
/// count, the CPU period before the quota.
pub fn v1_plan(limits: &SessionLimits, swap_accounting: bool) -> Vec<CgroupWrite> {
    let mut out = vec![write(
        "memory",
        "memory.limit_in_bytes",
        limits.memory_bytes,
    )];
    if swap_accounting {
        out.push(write(
            "memory",
            "memory.memsw.limit_in_bytes",
            limits.memory_bytes,
        ));
    }
    out.push(write("pids", "pids.max", limits.pids_max.as_cgroup_value()));
    out.push(write("cpu", "cpu.cfs_period_us", CPU_PERIOD_US));
    out.push(write("cpu", "cpu.cfs_quota_us", limits.cpu_quota_us()));
    out
}

/// cgroup v2 (all files in one directory; `controller` says which
/// controller must be enabled in the parent's `cgroup.subtree_control`).
/// `memory.swap.max` exists only with swap accounting.
pub fn v2_plan(limits: &SessionLimits, swap_file: bool) -> Vec<CgroupWrite> {
    let mut out = vec![write("memory", "memory.max", limits.memory_bytes)];
    if swap_file {
        out.push(write("memory", "memory.swap.max", 0));
    }
    out.push(write("pids", "pids.max", limits.pids_max.as_cgroup_value()));
    out.push(write(
        "cpu",
        "cpu.max",
        format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us()),
    ));
    out
}

/// What the daemon finds at its own cgroup v2 directory.
#[derive(Debug, Clone, Copy)]
pub struct V2Subtree<'a> {
    /// The directory, for messages.
    pub dir: &'a Path,
    /// `cgroup.controllers`: what its parent lets it give its children.
    pub controllers: &'a str,
    /// `cgroup.procs`: the processes in it.
    pub procs: &'a str,
    /// The daemon's pid.
    pub own_pid: u32,
    /// Whether the daemon may write the directory, its `cgroup.procs` and
    /// `cgroup.subtree_control` (the three files of a delegation).
    pub writable: bool,
}

/// Whether sessions get cgroup v2 cgroups under the daemon's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Decision {
    /// Yes: the daemon moves into a leaf of its own, enables `enable` for
    /// the session cgroups; `missing` are not delegated (not enforced).
    Use {
        enable: Vec<&'static str>,
        missing: Vec<&'static str>,
    },
    /// No, and why (for `getDaemonInfo` and `--doctor`).
    Refuse(String),
}

/// cgroup v2 can hold sessions only where the daemon's cgroup is
/// delegated to it (writable) and holds no process but the daemon: a
/// cgroup with processes cannot enable controllers for its children (the
/// no-internal-processes rule), so the daemon first moves itself into a
/// leaf below it, which would strand any other process above.
pub fn v2_decision(found: &V2Subtree<'_>) -> V2Decision {
    let dir = found.dir.display();
    if !found.writable {
        return V2Decision::Refuse(format!(
            "the daemon's cgroup v2 {dir} is not delegated to it (not writable)"
        ));
    }
    let others = found
        .procs
        .split_whitespace()
        .filter(|p| p.parse::<u32>() != Ok(found.own_pid))
        .count();
    if others > 0 {
        return V2Decision::Refuse(format!(
            "the daemon's cgroup v2 {dir} also holds {others} other process{} (a cgroup with \
             processes in it cannot give controllers to session cgroups)",
            if others == 1 { "" } else { "es" }
        ));
    }
    let available: Vec<&str> = found.controllers.split_whitespace().collect();
    let (enable, missing) = CONTROLLERS.iter().partition(|c| available.contains(c));
    V2Decision::Use { enable, missing }
}

/// The `cgroup.subtree_control` line that enables `controllers`.
pub fn subtree_control_line(controllers: &[&str]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The daemon's own leaf below its parent directory on cgroup v2.
pub const V2_DAEMON_LEAF: &str = "daemon";

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub hierarchy: u32,
    /// Empty for the v2 line (`0::/path`); `name=systemd` style names kept.
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup` (or `/proc/thread-self/cgroup`).
pub fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(ProcCgroup {
                hierarchy,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The cgroup path of `controller` (v1), from parsed `/proc/.../cgroup`.
pub fn v1_path<'a>(lines: &'a [ProcCgroup], controller: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|l| l.controllers.iter().any(|c| c == controller))
        .map(|l| l.path.as_str())
}

/// The v2 cgroup path (the `0::` line), from parsed `/proc/.../cgroup`.
pub fn v2_path(lines: &[ProcCgroup]) -> Option<&str> {
    lines
        .iter()
        .find(|l| l.hierarchy == 0 && l.controllers.is_empty())
        .map(|l| l.path.as_str())
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    /// The hierarchy's path that is mounted there (not `/` inside some
    /// containers).
    pub root: String,
    /// `None` for cgroup2; the v1 controllers otherwise.
    pub v1_controllers: Option<Vec<String>>,
}

/// The cgroup mounts of `/proc/self/mountinfo`.
pub fn parse_cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let root = unescape(fields.get(3)?);
            let mount_point = PathBuf::from(unescape(fields.get(4)?));
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let super_opts = right.next().unwrap_or("");
            let v1_controllers = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(
                    super_opts
                        .split(',')
                        .filter(|o| {
                            CONTROLLERS.contains(o)
                                || ["cpuacct", "cpuset", "blkio", "devices", "freezer"].contains(o)
                                || o.starts_with("name=")
                        })
                        .map(String::from)
                        .collect(),
                ),
                _ => return None,
            };
            Some(CgroupMount {
                mount_point,
                root,
                v1_controllers,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let digit = |k: usize| u32::from(bytes[i + k] - b'0');
            let n = digit(1) * 64 + digit(2) * 8 + digit(3);
            out.push(u8::try_from(n).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `path` in a hierarchy mounted at `mount`, or
/// `None` when the path is outside what is mounted there.
pub fn cgroup_dir(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    let rest = if mount.root == "/" {
        path.strip_prefix('/')?
    } else {
        let below = path.strip_prefix(mount.root.as_str())?;
        if !(below.is_empty() || below.starts_with('/')) {
            return None;
        }
        below.trim_start_matches('/')
    };
    if rest.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rest.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(rest)
    })
}

/// The v1 mount that holds `controller`.
pub fn v1_mount<'a>(mounts: &'a [CgroupMount], controller: &str) -> Option<&'a CgroupMount> {
    mounts.iter().find(|m| {
        m.v1_controllers
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c == controller))
    })
}

/// The daemon's own parent directory name under its cgroup.
pub fn daemon_dir_name(pid: u32) -> String {
    format!("cowork-vm-service-{pid}")
}

/// A session cgroup's directory name: `<session>-<generation>`, with
/// anything but `[A-Za-z0-9._-]` replaced (a name is one path component).
pub fn session_dir_name(session: &str, generation: u64) -> String {
    let safe: String = session
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = if safe.is_empty() || safe.starts_with('.') {
        format!("s{safe}")
    } else {
        safe
    };
    format!("{safe}-{generation}")
}

/// The `key N` value of a flat-keyed cgroup file: `oom_kill` of v2's
/// `memory.events` or of v1's `memory.oom_control` (Linux 4.13+).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Whether `path` is a plain relative component chain (for joins).
pub fn is_plain_relative(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::limits::PidsMax;
    use pretty_assertions::assert_eq;

    const GIB: u64 = 1 << 30;

    fn limits() -> SessionLimits {
        SessionLimits {
            memory_bytes: 4 * GIB,
            cpus: 2,
            pids_max: PidsMax::Limit(4096),
        }
    }

    fn triples(plan: &[CgroupWrite]) -> Vec<(&str, &str, &str)> {
        plan.iter()
            .map(|w| (w.controller, w.file, w.value.as_str()))
            .collect()
    }

    #[test]
    fn v1_plan_table() {
        assert_eq!(
            triples(&v1_plan(&limits(), true)),
            [
                ("memory", "memory.limit_in_bytes", "4294967296"),
                ("memory", "memory.memsw.limit_in_bytes", "4294967296"),
                ("pids", "pids.max", "4096"),
                ("cpu", "cpu.cfs_period_us", "100000"),
                ("cpu", "cpu.cfs_quota_us", "200000"),
            ]
        );
        let unlimited = SessionLimits {
            pids_max: PidsMax::Unlimited,
            cpus: 1,
            ..limits()
        };
        assert_eq!(
            triples(&v1_plan(&unlimited, false)),
            [
                ("memory", "memory.limit_in_bytes", "4294967296"),
                ("pids", "pids.max", "max"),
                ("cpu", "cpu.cfs_period_us", "100000"),
                ("cpu", "cpu.cfs_quota_us", "100000"),
            ]
        );
    }

    #[test]
    fn v2_plan_table() {
        assert_eq!(
            triples(&v2_plan(&limits(), true)),
            [
                ("memory", "memory.max", "4294967296"),
                ("memory", "memory.swap.max", "0"),
                ("pids", "pids.max", "4096"),
                ("cpu", "cpu.max", "200000 100000"),
            ]
        );
        assert_eq!(v2_plan(&limits(), false).len(), 3);
    }

    #[test]
    fn v2_decision_table() {
        let dir = Path::new(
            "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/cowork.service",
        );
        let found = |controllers, procs, writable| V2Subtree {
            dir,
            controllers,
            procs,
            own_pid: 42,
            writable,
        };
        let use_ = |enable: &[&'static str], missing: &[&'static str]| V2Decision::Use {
            enable: enable.to_vec(),
            missing: missing.to_vec(),
        };
        let cases: [(V2Subtree<'_>, Result<V2Decision, &str>); 8] = [
            // A systemd service with Delegate=yes: everything delegated.
            (
                found("cpuset cpu io memory hugetlb pids rdma misc", "42\n", true),
                Ok(use_(&["memory", "pids", "cpu"], &[])),
            ),
            // Delegate=memory pids: no CPU limit.
            (
                found("memory pids", "42\n", true),
                Ok(use_(&["memory", "pids"], &["cpu"])),
            ),
            // A hybrid host's unified hierarchy: nothing to enable, the
            // sessions are still placed (and say so).
            (
                found("", "42\n", true),
                Ok(use_(&[], &["memory", "pids", "cpu"])),
            ),
            // Empty (the daemon already moved into its leaf at an earlier
            // detection) counts as its own.
            (
                found("memory pids cpu", "", true),
                Ok(use_(&["memory", "pids", "cpu"], &[])),
            ),
            // Not delegated.
            (
                found("memory pids cpu", "42\n", false),
                Err("not delegated"),
            ),
            // The app scope of a desktop shared with the client's Electron.
            (
                found("memory pids cpu", "7\n42\n99\n", true),
                Err("2 other processes"),
            ),
            (
                found("memory pids cpu", "42\n7\n", true),
                Err("1 other process ("),
            ),
            (
                found("memory pids cpu", "garbage\n", true),
                Err("1 other process"),
            ),
        ];
        for (found, want) in cases {
            let got = v2_decision(&found);
            match (&got, want) {
                (got, Ok(want)) => assert_eq!(got, &want, "{found:?}"),
                (V2Decision::Refuse(reason), Err(part)) => {
                    assert!(reason.contains(part), "{reason}");
                    assert!(reason.contains(&dir.display().to_string()), "{reason}");
                }
                (got, Err(part)) => panic!("{found:?}: {got:?}, wanted a refusal with {part}"),
            }
        }
        assert_eq!(
            subtree_control_line(&["memory", "pids", "cpu"]),
            "+memory +pids +cpu"
        );
        assert_eq!(subtree_control_line(&[]), "");
    }

    #[test]
    fn proc_cgroup_table() {
        let hybrid =
            "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/e468\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        let lines = parse_proc_cgroup(hybrid);
        assert_eq!(lines.len(), 6);
        assert_eq!(v1_path(&lines, "memory"), Some("/process_api/e468"));
        assert_eq!(v1_path(&lines, "pids"), Some("/"));
        assert_eq!(v1_path(&lines, "cpu"), Some("/"));
        assert_eq!(v1_path(&lines, "blkio"), None);
        assert_eq!(v2_path(&lines), Some("/"));
        let combined = parse_proc_cgroup("3:cpu,cpuacct:/user.slice\n");
        assert_eq!(v1_path(&combined, "cpuacct"), Some("/user.slice"));
        let unified = parse_proc_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n");
        assert_eq!(
            v2_path(&unified),
            Some("/user.slice/user-1000.slice/session-2.scope")
        );
        assert_eq!(v1_path(&unified, "memory"), None);
        assert!(parse_proc_cgroup("garbage\n\n").is_empty());
    }

    const MOUNTINFO: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 25 0:26 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
29 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
30 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
31 1 0:29 /docker/abc /mnt/my\\040cg rw - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn mountinfo_table() {
        let mounts = parse_cgroup_mounts(MOUNTINFO);
        assert_eq!(mounts.len(), 6);
        let memory = v1_mount(&mounts, "memory").unwrap();
        assert_eq!(memory.mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            v1_mount(&mounts, "cpu").unwrap().mount_point,
            Path::new("/sys/fs/cgroup/cpu")
        );
        assert_eq!(
            mounts[3].v1_controllers,
            Some(vec!["cpu".into(), "cpuacct".into()])
        );
        assert_eq!(mounts[4].v1_controllers, None);
        assert_eq!(mounts[4].mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(mounts[5].v1_controllers, None);
        assert_eq!(mounts[5].mount_point, Path::new("/mnt/my cg"));
        assert_eq!(mounts[5].root, "/docker/abc");
    }

    #[test]
    fn cgroup_dir_table() {
        let mounts = parse_cgroup_mounts(MOUNTINFO);
        let memory = v1_mount(&mounts, "memory").unwrap();
        let nested = &mounts[5];
        let cases: [(&CgroupMount, &str, Option<&str>); 7] = [
            (memory, "/", Some("/sys/fs/cgroup/memory")),
            (
                memory,
                "/process_api/e468",
                Some("/sys/fs/cgroup/memory/process_api/e468"),
            ),
            (memory, "/a/../b", None),
            (nested, "/docker/abc", Some("/mnt/my cg")),
            (nested, "/docker/abc/x", Some("/mnt/my cg/x")),
            (nested, "/docker/abcd", None),
            (nested, "/other", None),
        ];
        for (mount, path, want) in cases {
            assert_eq!(
                cgroup_dir(mount, path),
                want.map(PathBuf::from),
                "{path} in {}",
                mount.mount_point.display()
            );
        }
    }

    #[test]
    fn names_table() {
        assert_eq!(daemon_dir_name(42), "cowork-vm-service-42");
        let cases = [
            ("bold-sharp-clarke", 0, "bold-sharp-clarke-0"),
            ("a b/c", 3, "a_b_c-3"),
            ("..", 1, "s..-1"),
            ("", 2, "s-2"),
            ("été", 1, "_t_-1"),
        ];
        for (session, generation, want) in cases {
            assert_eq!(session_dir_name(session, generation), want, "{session:?}");
            assert!(is_plain_relative(Path::new(&session_dir_name(
                session, generation
            ))));
        }
    }

    #[test]
    fn oom_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(3));
        assert_eq!(keyed_value(v2, "oom_kill"), Some(2));
        assert_eq!(keyed_value(v2, "oom"), Some(2));
        assert_eq!(keyed_value("oom_kill_disable 0\n", "oom_kill"), None);
    }
}
