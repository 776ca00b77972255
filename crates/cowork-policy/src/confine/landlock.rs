//! The Landlock plan of a session sandbox: which paths, as they appear
//! inside the sandbox, get which access.
//!
//! Landlock is the second wall behind the mount table: bwrap decides what
//! is visible and read-only; this decides, again and independently, what
//! a process may write or execute. A bind that is writable by mistake is
//! still not writable here, and the sandbox's own writable tmpfs root `/`,
//! `/run`, `/dev` and `/sessions/<s>/mnt` itself are never writable.
//!
//! | path (inside) | access | why |
//! | --- | --- | --- |
//! | `/` | list directories | `ls /`, `ls /sessions/<s>/mnt`: the skeleton bwrap built is no secret; files are readable only where listed below |
//! | `/usr`, `/etc`, `/bin` `/lib*` `/sbin` (symlink targets or binds), `/nix` | read + execute | the system |
//! | SDK directory | read + execute | the Claude Code binary |
//! | read-only session mounts, `additionalROBinds` | read + execute | project files often hold scripts and tools (`./gradlew`, `node_modules/.bin`); the content is read-only either way and an interpreter (`sh script`) would run it regardless |
//! | read-write session mounts, `additionalBinds`, `/tmp`, `$HOME` | read + write + execute | work areas |
//! | `/dev/null` `zero` `full` `random` `urandom` `tty`, `/dev/pts` | read, write, ioctl of the device files | terminals and the usual devices |
//! | `/dev/shm` | read + write (no execute) | POSIX shared memory |
//! | `/proc`, `/run` | read | process tools; resolv.conf and the agent's binary |
//!
//! Landlock only adds rights along a hierarchy, it cannot take them away
//! below: a read-only bind nested inside a writable area (an SDK directory
//! under `$HOME`) is protected by its read-only mount alone.
//!
//! With ABI 6 and later the domain is also scoped: abstract Unix sockets
//! created outside the sandbox (the host's, since the network namespace is
//! shared) cannot be connected to, and signals cannot reach processes
//! outside it. Network rules are not handled (the network namespace and
//! proxy decide), so TCP binds and connects are untouched.
//!
//! The rights are those of [`TARGET_ABI`], the newest ABI tested with this
//! plan; the applier asks for them best-effort, so an older kernel enforces
//! what it knows and the report says "partially enforced".

use std::path::Path;

use landlock::{ABI, Access, AccessFs, BitFlags, make_bitflags};
use serde::{Deserialize, Serialize};

use crate::bwrap_argv::{HostLayout, TopDir, session_mnt};
use crate::bwrap_config::BwrapMountsConfig;
use crate::mounts::{MountMap, MountMode};
use crate::paths::normalize;

/// The newest Landlock ABI whose rights this plan was written and tested
/// for (ABI 7 on the project's machine). ABI 9 adds `ResolveUnix`
/// (connecting to pathname Unix sockets): raising this needs a decision on
/// which areas may hold sockets (the work areas, surely).
pub const TARGET_ABI: ABI = ABI::V7;

/// The access one path gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathAccess {
    /// List directories only.
    List,
    /// Read files, list directories.
    Read,
    /// Read and execute.
    ReadExec,
    /// Read, write, create, rename, remove; no execute.
    ReadWrite,
    /// Everything: read, write, create, rename, remove, execute.
    ReadWriteExec,
    /// Open device files for reading and writing, and their ioctls.
    Device,
}

impl PathAccess {
    /// The Landlock rights at [`TARGET_ABI`]. For a non-directory the
    /// applier keeps only the file rights of this set.
    pub fn rights(self) -> BitFlags<AccessFs> {
        let read = make_bitflags!(AccessFs::{ReadFile | ReadDir});
        match self {
            PathAccess::List => AccessFs::ReadDir.into(),
            PathAccess::Read => read,
            PathAccess::ReadExec => read | AccessFs::Execute,
            PathAccess::ReadWrite => read | AccessFs::from_write(TARGET_ABI),
            PathAccess::ReadWriteExec => AccessFs::from_all(TARGET_ABI),
            PathAccess::Device => {
                make_bitflags!(AccessFs::{ReadFile | WriteFile | Truncate | IoctlDev})
            }
        }
    }

    /// Whether this access lets a process change the filesystem.
    pub fn writes(self) -> bool {
        matches!(self, PathAccess::ReadWrite | PathAccess::ReadWriteExec)
    }
}

/// Why a path is in the plan (for reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOrigin {
    Skeleton,
    System,
    Sdk,
    Mount,
    ConfigBind,
    Tmp,
    Home,
    Device,
    Proc,
    Run,
}

/// One path and its access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRule {
    pub path: String,
    pub access: PathAccess,
    pub origin: RuleOrigin,
}

/// Everything the agent applies with Landlock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockPlan {
    /// Every path handled; everything else gets no filesystem access.
    pub rules: Vec<PathRule>,
    /// Refuse abstract Unix sockets created outside the sandbox (ABI 6+).
    pub scope_abstract_unix_socket: bool,
    /// Refuse signals to processes outside the sandbox (ABI 6+).
    pub scope_signal: bool,
}

impl LandlockPlan {
    /// The rule for exactly `path`, if any.
    pub fn rule(&self, path: &str) -> Option<&PathRule> {
        self.rules.iter().find(|r| r.path == path)
    }
}

/// The facts a sandbox's plan depends on: the same ones its bwrap command
/// line is built from (see `bwrap_argv::SandboxPlan`).
#[derive(Debug, Clone, Copy)]
pub struct LandlockInputs<'a> {
    pub layout: &'a HostLayout,
    /// `$HOME` inside (the same path as on the host).
    pub home: &'a Path,
    pub sdk_dir: Option<&'a Path>,
    pub session: &'a str,
    pub mounts: &'a MountMap,
    pub config: &'a BwrapMountsConfig,
}

/// Device files every sandbox has (bwrap's `--dev`).
pub const DEVICES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// The plan for one sandbox.
pub fn landlock_plan(inputs: &LandlockInputs<'_>) -> LandlockPlan {
    let mut rules = Vec::with_capacity(24 + inputs.mounts.len());
    let mut add = |path: String, access, origin| {
        rules.push(PathRule {
            path,
            access,
            origin,
        })
    };
    add("/".into(), PathAccess::List, RuleOrigin::Skeleton);
    for system in ["/usr", "/etc"] {
        add(system.into(), PathAccess::ReadExec, RuleOrigin::System);
    }
    for dir in &inputs.layout.top_dirs {
        let path = match dir {
            TopDir::Symlink { target, .. } => normalize(&Path::new("/").join(target)),
            TopDir::Dir { path } => normalize(Path::new(path)),
        };
        add(
            path.to_string_lossy().into_owned(),
            PathAccess::ReadExec,
            RuleOrigin::System,
        );
    }
    if inputs.layout.nix {
        add("/nix".into(), PathAccess::ReadExec, RuleOrigin::System);
    }
    add("/tmp".into(), PathAccess::ReadWriteExec, RuleOrigin::Tmp);
    add(
        inputs.home.to_string_lossy().into_owned(),
        PathAccess::ReadWriteExec,
        RuleOrigin::Home,
    );
    for bind in &inputs.config.ro_binds {
        add(
            bind.dst().to_string(),
            PathAccess::ReadExec,
            RuleOrigin::ConfigBind,
        );
    }
    for bind in &inputs.config.rw_binds {
        add(
            bind.dst().to_string(),
            PathAccess::ReadWriteExec,
            RuleOrigin::ConfigBind,
        );
    }
    if let Some(sdk) = inputs.sdk_dir {
        add(
            sdk.to_string_lossy().into_owned(),
            PathAccess::ReadExec,
            RuleOrigin::Sdk,
        );
    }
    let mnt = session_mnt(inputs.session);
    for m in inputs.mounts.iter() {
        let access = match m.mode {
            MountMode::ReadOnly => PathAccess::ReadExec,
            MountMode::ReadWrite => PathAccess::ReadWriteExec,
        };
        add(format!("{mnt}/{}", m.name), access, RuleOrigin::Mount);
    }
    for dev in DEVICES {
        add(dev.into(), PathAccess::Device, RuleOrigin::Device);
    }
    add("/dev/pts".into(), PathAccess::Device, RuleOrigin::Device);
    add("/dev/shm".into(), PathAccess::ReadWrite, RuleOrigin::Device);
    add("/proc".into(), PathAccess::Read, RuleOrigin::Proc);
    add("/run".into(), PathAccess::Read, RuleOrigin::Run);
    LandlockPlan {
        rules,
        scope_abstract_unix_socket: true,
        scope_signal: true,
    }
}

/// Whether the plan lets a process write somewhere at or below `path`'s
/// own rules, i.e. whether some rule granting writes covers `path`.
pub fn writable(plan: &LandlockPlan, path: &str) -> bool {
    let path = Path::new(path);
    plan.rules
        .iter()
        .filter(|r| r.access.writes())
        .any(|r| crate::paths::is_within(path, Path::new(&r.path)))
}

/// The access rights the plan grants at `path` (the union of every rule
/// on it or above it), for directories.
pub fn rights_at(plan: &LandlockPlan, path: &str) -> BitFlags<AccessFs> {
    let path = Path::new(path);
    plan.rules
        .iter()
        .filter(|r| crate::paths::is_within(path, Path::new(&r.path)))
        .fold(BitFlags::EMPTY, |acc, r| acc | r.access.rights())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bwrap_config::ConfigBind;
    use crate::mounts::Mount;
    use pretty_assertions::assert_eq;

    fn layout() -> HostLayout {
        HostLayout {
            top_dirs: vec![
                TopDir::Symlink {
                    path: "/bin".into(),
                    target: "usr/bin".into(),
                },
                TopDir::Symlink {
                    path: "/lib64".into(),
                    target: "/usr/lib64".into(),
                },
                TopDir::Dir {
                    path: "/sbin".into(),
                },
            ],
            resolv_conf_dir: Some("/run/systemd/resolve".into()),
            nix: true,
        }
    }

    fn mounts() -> MountMap {
        let mut m = MountMap::new();
        for (name, mode) in [
            ("proj", MountMode::ReadWrite),
            ("uploads", MountMode::ReadOnly),
        ] {
            m.insert(Mount {
                name: name.into(),
                host: format!("/home/u/{name}").into(),
                mode,
            });
        }
        m
    }

    fn plan_with(config: &BwrapMountsConfig, sdk: Option<&Path>) -> LandlockPlan {
        let layout = layout();
        let mounts = mounts();
        landlock_plan(&LandlockInputs {
            layout: &layout,
            home: Path::new("/home/u"),
            sdk_dir: sdk,
            session: "s1",
            mounts: &mounts,
            config,
        })
    }

    #[test]
    fn golden_plan() {
        let config = BwrapMountsConfig {
            ro_binds: vec![ConfigBind::Same("/opt/tools".into())],
            rw_binds: vec![ConfigBind::Mapped {
                src: "/home/u/.cache/x".into(),
                dst: "/cache".into(),
            }],
            ..Default::default()
        };
        let plan = plan_with(&config, Some(Path::new("/home/u/.config/Claude/sdk/2.1")));
        let got: Vec<(&str, PathAccess)> = plan
            .rules
            .iter()
            .map(|r| (r.path.as_str(), r.access))
            .collect();
        use PathAccess::*;
        let want = vec![
            ("/", List),
            ("/usr", ReadExec),
            ("/etc", ReadExec),
            ("/usr/bin", ReadExec),
            ("/usr/lib64", ReadExec),
            ("/sbin", ReadExec),
            ("/nix", ReadExec),
            ("/tmp", ReadWriteExec),
            ("/home/u", ReadWriteExec),
            ("/opt/tools", ReadExec),
            ("/cache", ReadWriteExec),
            ("/home/u/.config/Claude/sdk/2.1", ReadExec),
            ("/sessions/s1/mnt/proj", ReadWriteExec),
            ("/sessions/s1/mnt/uploads", ReadExec),
            ("/dev/null", Device),
            ("/dev/zero", Device),
            ("/dev/full", Device),
            ("/dev/random", Device),
            ("/dev/urandom", Device),
            ("/dev/tty", Device),
            ("/dev/pts", Device),
            ("/dev/shm", ReadWrite),
            ("/proc", Read),
            ("/run", Read),
        ];
        assert_eq!(got, want);
        assert!(plan.scope_abstract_unix_socket && plan.scope_signal);
    }

    #[test]
    fn second_wall_table() {
        let plan = plan_with(&BwrapMountsConfig::default(), None);
        // (path inside, writable by the plan?)
        let cases = [
            ("/", false),
            ("/newfile", false),
            ("/run", false),
            ("/run/cowork-vm-service/agent", false),
            ("/sessions", false),
            ("/sessions/s1/mnt", false),
            ("/sessions/s1/mnt/new-dir", false),
            ("/sessions/s1/mnt/uploads/file", false),
            ("/sessions/s1/mnt/proj/src/main.rs", true),
            ("/sessions/s1/mnt/projx", false),
            ("/sessions/s2/mnt/proj", false),
            ("/usr/bin/sh", false),
            ("/etc/passwd", false),
            ("/dev", false),
            ("/dev/null", false),
            ("/dev/shm/x", true),
            ("/proc/self/mem", false),
            ("/tmp/x", true),
            ("/home/u/.bashrc", true),
            ("/home/other", false),
        ];
        for (path, want) in cases {
            assert_eq!(writable(&plan, path), want, "{path}");
        }
    }

    #[test]
    fn rights_table() {
        let plan = plan_with(&BwrapMountsConfig::default(), None);
        let exec = |p: &str| rights_at(&plan, p).contains(AccessFs::Execute);
        let read = |p: &str| rights_at(&plan, p).contains(AccessFs::ReadFile);
        let list = |p: &str| rights_at(&plan, p).contains(AccessFs::ReadDir);
        for p in [
            "/usr/bin",
            "/sbin",
            "/sessions/s1/mnt/uploads",
            "/tmp",
            "/home/u",
        ] {
            assert!(exec(p) && read(p), "{p} read + execute");
        }
        for p in ["/proc/1", "/run", "/dev/shm", "/sessions/s1/mnt", "/"] {
            assert!(!exec(p), "{p} not executable");
        }
        for p in ["/sessions/s1/mnt", "/", "/run/cowork-vm-service"] {
            assert!(list(p), "{p} listable");
        }
        assert!(
            !read("/sessions/s1/mnt/anything") && !read("/x"),
            "not readable"
        );
        assert!(rights_at(&plan, "/dev/tty").contains(AccessFs::IoctlDev));
        assert!(!rights_at(&plan, "/tmp").contains(AccessFs::ResolveUnix) || TARGET_ABI >= ABI::V9);
    }

    #[test]
    fn access_rights_are_consistent() {
        use PathAccess::*;
        let all = [List, Read, ReadExec, ReadWrite, ReadWriteExec, Device];
        for a in all {
            let r = a.rights();
            assert!(!r.is_empty(), "{a:?}");
            assert_eq!(
                r & !AccessFs::from_all(TARGET_ABI),
                BitFlags::EMPTY,
                "{a:?}"
            );
            assert_eq!(a.writes(), r.contains(AccessFs::MakeReg), "{a:?}");
        }
        assert!(!ReadWrite.rights().contains(AccessFs::Execute));
        assert!(ReadWriteExec.rights().contains(AccessFs::Refer));
        assert!(ReadWriteExec.rights().contains(AccessFs::Truncate));
    }

    #[test]
    fn plan_round_trips_through_json() {
        let plan = plan_with(&BwrapMountsConfig::default(), None);
        let text = serde_json::to_string(&plan).unwrap();
        assert!(text.contains(r#"{"path":"/tmp","access":"read_write_exec","origin":"tmp"}"#));
        let back: LandlockPlan = serde_json::from_str(&text).unwrap();
        assert_eq!(back, plan);
    }
}
