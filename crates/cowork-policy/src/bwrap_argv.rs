//! The bubblewrap command line of a session sandbox.
//!
//! Layout (the reference's, plus what it lacked):
//!
//! ```text
//! /                       tmpfs
//! /usr /etc               read-only host binds
//! /bin /lib* /sbin        symlinks into /usr (merged-usr) or read-only binds
//! /dev /proc              minimal devices, the sandbox's own pids
//! /tmp                    the session's persistent tmp/ (state directory)
//! /run                    tmpfs, plus the resolv.conf directory when it lives there
//! /nix                    read-only, when present (NixOS, reference #667)
//! $HOME                   empty, or the session's persistent skeleton home
//! <SDK dir>               read-only, when an SDK is installed
//! /sessions/<s>/mnt/<m>   each mount, read-only or read-write as asked
//! /run/cowork-vm-service/agent   this binary, read-only: pid 1
//! ```
//!
//! Namespaces: user (no nested user namespaces: `--disable-userns`), pid
//! (the agent is pid 1: `--as-pid-1`), ipc, uts, and network (loopback
//! only: the way out is the allowlist proxy the agent serves inside).
//! `--die-with-parent` and `--new-session` (no terminal injection).
//! Hardening whatever the daemon's uid: `--cap-drop ALL`; `/proc/sys` and
//! `/proc/sysrq-trigger` read-only (as host uid 0 even without
//! capabilities `kernel/core_pattern` would be writable); every tmpfs
//! sized; when the sandbox really is uid 0, root-only files are covered.
//!
//! Sources the sandbox could have tampered with (session mounts, the
//! protected files inside them, the state directories, the SDK, the agent)
//! are bound from descriptors the daemon opened without following symlinks
//! ([`Source::Fd`], `--bind-fd`/`--ro-bind-fd`, bubblewrap >= 0.8): what is
//! bound is what was checked.
//!
//! Order matters: `$HOME` is set up before the configured binds and the SDK
//! bind, which may lie under it (reference #426); inside a writable mount
//! the ancestors of each protected path are bound onto themselves first
//! (a mount point cannot be renamed or removed, so `.git` cannot be swapped
//! for a copy), then the protected paths read-only.

use std::path::{Path, PathBuf};

use crate::bwrap_config::{BwrapMountsConfig, config_bind_args, filter_defaults};
use crate::confine::limits::TmpfsSizes;
use crate::fs_view::FsView;
use crate::mounts::{MountMap, MountMode, translate_guest_path};

/// Where a bind's source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path bwrap opens (system trees, the user's own config binds).
    Path(String),
    /// A descriptor the daemon opened (and checked) and passes to bwrap.
    Fd(i32),
}

impl Source {
    fn bind(&self, mode: MountMode, dest: &str) -> [String; 3] {
        let (flag, source) = match (self, mode) {
            (Source::Path(p), MountMode::ReadOnly) => ("--ro-bind", p.clone()),
            (Source::Path(p), MountMode::ReadWrite) => ("--bind", p.clone()),
            (Source::Fd(fd), MountMode::ReadOnly) => ("--ro-bind-fd", fd.to_string()),
            (Source::Fd(fd), MountMode::ReadWrite) => ("--bind-fd", fd.to_string()),
        };
        [flag.to_string(), source, dest.to_string()]
    }
}

/// A session mount as bound: `/sessions/<s>/mnt/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMount {
    pub name: String,
    pub source: Source,
    pub mode: MountMode,
}

/// A path inside a writable mount bound again: onto itself read-write (a
/// pinned ancestor) or read-only (a protected path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraBind {
    pub source: Source,
    /// Absolute path inside the sandbox.
    pub dest: String,
    pub mode: MountMode,
}

/// What to cover when the sandbox runs as host uid 0 (it owns root-only
/// files, capabilities or not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootMasks {
    /// Files shown as empty (`/dev/null` bound over them).
    pub files: Vec<String>,
    /// Directories shown as empty and read-only.
    pub dirs: Vec<String>,
}

/// Where the agent binary appears inside every sandbox.
pub const AGENT_PATH: &str = "/run/cowork-vm-service/agent";

/// Top-level directories that are symlinks into /usr on merged-usr systems.
const TOP_DIRS: [&str; 6] = ["/bin", "/lib", "/lib64", "/sbin", "/lib32", "/libx32"];

/// How a top-level directory is reproduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopDir {
    Symlink { path: String, target: String },
    Dir { path: String },
}

/// The host facts the layout depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLayout {
    pub top_dirs: Vec<TopDir>,
    /// Directory of `/etc/resolv.conf`'s real path when it is under `/run/`
    /// (systemd-resolved), which the `/run` tmpfs would otherwise hide.
    pub resolv_conf_dir: Option<String>,
    pub nix: bool,
}

/// Reads the host layout through `fs`.
pub fn host_layout(fs: &dyn FsView) -> HostLayout {
    let top_dirs = TOP_DIRS
        .iter()
        .filter_map(|dir| {
            let path = Path::new(dir);
            if let Some(target) = fs.read_link(path) {
                Some(TopDir::Symlink {
                    path: dir.to_string(),
                    target: target.to_string_lossy().into_owned(),
                })
            } else if fs.exists(path) {
                Some(TopDir::Dir {
                    path: dir.to_string(),
                })
            } else {
                None
            }
        })
        .collect();
    let resolv_conf_dir = fs
        .canonicalize(Path::new("/etc/resolv.conf"))
        .filter(|real| real.starts_with("/run/"))
        .and_then(|real| real.parent().map(|d| d.to_string_lossy().into_owned()));
    HostLayout {
        top_dirs,
        resolv_conf_dir,
        nix: fs.exists(Path::new("/nix")),
    }
}

fn push(out: &mut Vec<String>, parts: &[&str]) {
    out.extend(parts.iter().map(|s| s.to_string()));
}

/// The default system mounts, which `disabledDefaultBinds` may trim.
pub fn default_mounts(layout: &HostLayout, session_tmp: &Source) -> Vec<String> {
    let mut out = Vec::new();
    push(&mut out, &["--tmpfs", "/"]);
    push(&mut out, &["--ro-bind", "/usr", "/usr"]);
    push(&mut out, &["--ro-bind", "/etc", "/etc"]);
    push(&mut out, &["--dev", "/dev"]);
    push(&mut out, &["--proc", "/proc"]);
    out.extend(session_tmp.bind(MountMode::ReadWrite, "/tmp"));
    push(&mut out, &["--tmpfs", "/run"]);
    for dir in &layout.top_dirs {
        match dir {
            TopDir::Symlink { path, target } => push(&mut out, &["--symlink", target, path]),
            TopDir::Dir { path } => push(&mut out, &["--ro-bind", path, path]),
        }
    }
    if let Some(dir) = &layout.resolv_conf_dir {
        push(&mut out, &["--ro-bind", dir, dir]);
    }
    if layout.nix {
        push(&mut out, &["--ro-bind", "/nix", "/nix"]);
    }
    out
}

/// Everything that defines one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxPlan<'a> {
    pub session: &'a str,
    pub home: &'a Path,
    pub session_tmp: Source,
    /// The persistent skeleton home to bind at `$HOME`, if requested.
    pub skeleton_home: Option<Source>,
    /// The SDK directory: its source, and its path (the same inside).
    pub sdk: Option<(Source, &'a Path)>,
    pub mounts: &'a [PlannedMount],
    /// Pinned ancestors and protected paths inside writable mounts, in
    /// order.
    pub extra_binds: &'a [ExtraBind],
    pub agent_binary: Source,
    pub agent_fd: i32,
    pub layout: &'a HostLayout,
    pub config: &'a BwrapMountsConfig,
    pub tmpfs: &'a TmpfsSizes,
    pub root_masks: Option<&'a RootMasks>,
    /// Variables set for the agent (`--setenv`), e.g. its confinement plan.
    pub agent_env: &'a [(String, String)],
}

/// Sizes every tmpfs: `--size N` right before `--tmpfs /` and
/// `--tmpfs /run` (after `disabledDefaultBinds` filtering, which would
/// otherwise leave a stray `--size` for the next tmpfs), and a sized
/// `/dev/shm` right after `--dev /dev`.
fn size_tmpfs(args: Vec<String>, sizes: &TmpfsSizes) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 10);
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let dest = args.get(i + 1).map(String::as_str);
        match (flag, dest) {
            ("--tmpfs", Some("/")) => out.extend(sizes.root_args()),
            ("--tmpfs", Some("/run")) => out.extend(sizes.run_args()),
            ("--dev", Some("/dev")) => {
                push(&mut out, &["--dev", "/dev"]);
                out.extend(sizes.dev_shm_args());
            }
            _ => {
                out.push(args[i].clone());
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out
}

/// `/sessions/<session>/mnt`.
pub fn session_mnt(session: &str) -> String {
    format!("/sessions/{session}/mnt")
}

/// Kernel interfaces a sandbox never writes, made read-only over `--proc`.
pub const PROC_READ_ONLY: [&str; 2] = ["/proc/sys", "/proc/sysrq-trigger"];

/// The complete bwrap argument list (without the `bwrap` program itself).
pub fn sandbox_argv(plan: &SandboxPlan<'_>) -> Vec<String> {
    let mut out = Vec::with_capacity(96 + plan.mounts.len() * 3 + plan.extra_binds.len() * 3);
    push(
        &mut out,
        &[
            "--unshare-user",
            "--disable-userns",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-net",
            "--cap-drop",
            "ALL",
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
        ],
    );
    let defaults = filter_defaults(
        &default_mounts(plan.layout, &plan.session_tmp),
        &plan.config.disabled,
    );
    out.extend(size_tmpfs(defaults, plan.tmpfs));
    for p in PROC_READ_ONLY {
        push(&mut out, &["--ro-bind-try", p, p]);
    }
    if let Some(masks) = plan.root_masks {
        for f in &masks.files {
            push(&mut out, &["--ro-bind", "/dev/null", f]);
        }
        for d in &masks.dirs {
            push(&mut out, &["--tmpfs", d, "--remount-ro", d]);
        }
    }
    let home = plan.home.to_string_lossy();
    match &plan.skeleton_home {
        Some(skel) => out.extend(skel.bind(MountMode::ReadWrite, &home)),
        None => push(&mut out, &["--dir", &home]),
    }
    out.extend(config_bind_args(plan.config));
    if let Some((source, path)) = &plan.sdk {
        out.extend(source.bind(MountMode::ReadOnly, &path.to_string_lossy()));
    }
    let mnt = session_mnt(plan.session);
    push(&mut out, &["--dir", &format!("/sessions/{}", plan.session)]);
    push(&mut out, &["--dir", &mnt]);
    for m in plan.mounts {
        out.extend(m.source.bind(m.mode, &format!("{mnt}/{}", m.name)));
    }
    for b in plan.extra_binds {
        out.extend(b.source.bind(b.mode, &b.dest));
    }
    out.extend(plan.agent_binary.bind(MountMode::ReadOnly, AGENT_PATH));
    for (k, v) in plan.agent_env {
        push(&mut out, &["--setenv", k, v]);
    }
    push(&mut out, &["--chdir", &mnt]);
    push(
        &mut out,
        &[
            "--",
            AGENT_PATH,
            "agent",
            "--fd",
            &plan.agent_fd.to_string(),
        ],
    );
    out
}

/// The working directory of a process inside a session sandbox: the
/// client's `cwd` when it is a guest path of this session that exists;
/// otherwise (a bare session root, a host path) the primary mount, or the
/// `mnt` directory when there is none.
pub fn sandbox_work_dir(
    cwd: Option<&str>,
    session: &str,
    mounts: &MountMap,
    fs: &dyn FsView,
) -> String {
    let mnt = session_mnt(session);
    if let Some(c) = cwd
        && c.starts_with(&format!("{mnt}/"))
        && translate_guest_path(c, mounts).is_some_and(|host| fs.exists(&host))
    {
        return crate::paths::normalize(Path::new(c))
            .to_string_lossy()
            .into_owned();
    }
    match mounts.primary() {
        Some(m) => format!("{mnt}/{}", m.name),
        None => mnt,
    }
}

/// The directory to bind for an SDK binary (its parent).
pub fn sdk_dir(sdk_binary: Option<&Path>) -> Option<PathBuf> {
    sdk_binary.and_then(|b| b.parent().map(Path::to_path_buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bwrap_config::ConfigBind;
    use crate::fs_view::FakeFs;
    use crate::mounts::Mount;
    use pretty_assertions::assert_eq;

    fn debian_like() -> FakeFs {
        FakeFs::new()
            .dir("/usr/bin")
            .dir("/usr/lib")
            .dir("/usr/lib64")
            .dir("/usr/sbin")
            .symlink("/bin", "usr/bin")
            .symlink("/lib", "usr/lib")
            .symlink("/lib64", "usr/lib64")
            .symlink("/sbin", "usr/sbin")
            .file("/run/systemd/resolve/stub-resolv.conf", false)
            .symlink(
                "/etc/resolv.conf",
                "../run/systemd/resolve/stub-resolv.conf",
            )
    }

    #[test]
    fn host_layout_table() {
        let merged = host_layout(&debian_like());
        assert_eq!(merged.top_dirs.len(), 4);
        assert_eq!(
            merged.top_dirs[0],
            TopDir::Symlink {
                path: "/bin".into(),
                target: "usr/bin".into()
            }
        );
        assert_eq!(
            merged.resolv_conf_dir.as_deref(),
            Some("/run/systemd/resolve")
        );
        assert!(!merged.nix);

        let split = host_layout(
            &FakeFs::new()
                .dir("/bin")
                .dir("/lib")
                .file("/etc/resolv.conf", false)
                .dir("/nix/store"),
        );
        assert_eq!(
            split.top_dirs,
            [
                TopDir::Dir {
                    path: "/bin".into()
                },
                TopDir::Dir {
                    path: "/lib".into()
                }
            ]
        );
        assert_eq!(split.resolv_conf_dir, None);
        assert!(split.nix, "NixOS: /nix is bound (#667)");
    }

    fn mounts() -> MountMap {
        let mut m = MountMap::new();
        for (name, host, mode) in [
            ("proj", "/home/u/proj", MountMode::ReadWrite),
            (".claude", "/home/u/.claude", MountMode::ReadWrite),
            ("uploads", "/home/u/up", MountMode::ReadOnly),
        ] {
            m.insert(Mount {
                name: name.into(),
                host: host.into(),
                mode,
            });
        }
        m
    }

    fn planned(fds: &[(&str, i32, MountMode)]) -> Vec<PlannedMount> {
        fds.iter()
            .map(|(name, fd, mode)| PlannedMount {
                name: (*name).into(),
                source: Source::Fd(*fd),
                mode: *mode,
            })
            .collect()
    }

    fn sizes() -> TmpfsSizes {
        TmpfsSizes {
            root: 100,
            dev_shm: 200,
            run: 300,
        }
    }

    #[test]
    fn golden_argv_with_sdk_config_protection_and_root_masks() {
        let layout = host_layout(&debian_like());
        let config = BwrapMountsConfig {
            ro_binds: vec![ConfigBind::Same("/opt/tools".into())],
            rw_binds: vec![ConfigBind::Mapped {
                src: "/home/u/.cache/x".into(),
                dst: "/cache".into(),
            }],
            ..Default::default()
        };
        let m = planned(&[
            ("proj", 10, MountMode::ReadWrite),
            (".claude", 11, MountMode::ReadWrite),
            ("uploads", 12, MountMode::ReadOnly),
        ]);
        let extra = [
            ExtraBind {
                source: Source::Fd(13),
                dest: "/sessions/bold-sharp-clarke/mnt/proj/.git".into(),
                mode: MountMode::ReadWrite,
            },
            ExtraBind {
                source: Source::Fd(14),
                dest: "/sessions/bold-sharp-clarke/mnt/proj/.git/config".into(),
                mode: MountMode::ReadOnly,
            },
        ];
        let masks = RootMasks {
            files: vec!["/etc/shadow".into()],
            dirs: vec!["/etc/ssl/private".into()],
        };
        let env = [("COWORK_CONFINE_PLAN".to_string(), "{}".to_string())];
        let plan = SandboxPlan {
            session: "bold-sharp-clarke",
            home: Path::new("/home/u"),
            session_tmp: Source::Fd(5),
            skeleton_home: None,
            sdk: Some((
                Source::Fd(6),
                Path::new("/home/u/.config/Claude/claude-code-vm/2.1.87"),
            )),
            mounts: &m,
            extra_binds: &extra,
            agent_binary: Source::Fd(7),
            agent_fd: 0,
            layout: &layout,
            config: &config,
            tmpfs: &sizes(),
            root_masks: Some(&masks),
            agent_env: &env,
        };
        let want = "--unshare-user --disable-userns --unshare-pid --unshare-ipc --unshare-uts \
            --unshare-net --cap-drop ALL --as-pid-1 --die-with-parent --new-session \
            --size 100 --tmpfs / --ro-bind /usr /usr --ro-bind /etc /etc \
            --dev /dev --perms 1777 --size 200 --tmpfs /dev/shm --proc /proc \
            --bind-fd 5 /tmp \
            --size 300 --tmpfs /run --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 \
            --symlink usr/sbin /sbin --ro-bind /run/systemd/resolve /run/systemd/resolve \
            --ro-bind-try /proc/sys /proc/sys --ro-bind-try /proc/sysrq-trigger /proc/sysrq-trigger \
            --ro-bind /dev/null /etc/shadow --tmpfs /etc/ssl/private --remount-ro /etc/ssl/private \
            --dir /home/u \
            --ro-bind /opt/tools /opt/tools --bind /home/u/.cache/x /cache \
            --ro-bind-fd 6 /home/u/.config/Claude/claude-code-vm/2.1.87 \
            --dir /sessions/bold-sharp-clarke --dir /sessions/bold-sharp-clarke/mnt \
            --bind-fd 10 /sessions/bold-sharp-clarke/mnt/proj \
            --bind-fd 11 /sessions/bold-sharp-clarke/mnt/.claude \
            --ro-bind-fd 12 /sessions/bold-sharp-clarke/mnt/uploads \
            --bind-fd 13 /sessions/bold-sharp-clarke/mnt/proj/.git \
            --ro-bind-fd 14 /sessions/bold-sharp-clarke/mnt/proj/.git/config \
            --ro-bind-fd 7 /run/cowork-vm-service/agent \
            --setenv COWORK_CONFINE_PLAN {} \
            --chdir /sessions/bold-sharp-clarke/mnt \
            -- /run/cowork-vm-service/agent agent --fd 0";
        let want: Vec<String> = want.split_whitespace().map(String::from).collect();
        assert_eq!(sandbox_argv(&plan), want);
    }

    #[test]
    fn golden_argv_minimal_with_skeleton_home_and_persistent_tmp_recipe() {
        let layout = HostLayout {
            top_dirs: vec![TopDir::Dir {
                path: "/bin".into(),
            }],
            resolv_conf_dir: None,
            nix: true,
        };
        let config = BwrapMountsConfig {
            rw_binds: vec![ConfigBind::Mapped {
                src: "/home/u/claude-tmp".into(),
                dst: "/tmp".into(),
            }],
            disabled: vec!["/tmp".into(), "/run".into()],
            ..Default::default()
        };
        let plan = SandboxPlan {
            session: "s",
            home: Path::new("/home/u"),
            session_tmp: Source::Fd(3),
            skeleton_home: Some(Source::Fd(4)),
            sdk: None,
            mounts: &[],
            extra_binds: &[],
            agent_binary: Source::Path("/a".into()),
            agent_fd: 3,
            layout: &layout,
            config: &config,
            tmpfs: &sizes(),
            root_masks: None,
            agent_env: &[],
        };
        // Disabled /run leaves no stray --size behind.
        let want = "--unshare-user --disable-userns --unshare-pid --unshare-ipc --unshare-uts \
            --unshare-net --cap-drop ALL --as-pid-1 --die-with-parent --new-session \
            --size 100 --tmpfs / --ro-bind /usr /usr --ro-bind /etc /etc \
            --dev /dev --perms 1777 --size 200 --tmpfs /dev/shm --proc /proc \
            --ro-bind /bin /bin --ro-bind /nix /nix \
            --ro-bind-try /proc/sys /proc/sys --ro-bind-try /proc/sysrq-trigger /proc/sysrq-trigger \
            --bind-fd 4 /home/u \
            --bind /home/u/claude-tmp /tmp \
            --dir /sessions/s --dir /sessions/s/mnt \
            --ro-bind /a /run/cowork-vm-service/agent --chdir /sessions/s/mnt \
            -- /run/cowork-vm-service/agent agent --fd 3";
        let want: Vec<String> = want.split_whitespace().map(String::from).collect();
        assert_eq!(sandbox_argv(&plan), want);
    }

    #[test]
    fn work_dir_table() {
        let fs = FakeFs::new().dir("/home/u/proj/sub");
        let m = mounts();
        let none = MountMap::new();
        let cases: [(Option<&str>, &MountMap, &str); 7] = [
            (
                Some("/sessions/s/mnt/proj/sub"),
                &m,
                "/sessions/s/mnt/proj/sub",
            ),
            (
                Some("/sessions/s/mnt/proj/missing"),
                &m,
                "/sessions/s/mnt/proj",
            ),
            (Some("/sessions/s"), &m, "/sessions/s/mnt/proj"),
            (
                Some("/sessions/other/mnt/proj/sub"),
                &m,
                "/sessions/s/mnt/proj",
            ),
            (Some("/home/u/proj"), &m, "/sessions/s/mnt/proj"),
            (None, &m, "/sessions/s/mnt/proj"),
            (None, &none, "/sessions/s/mnt"),
        ];
        for (cwd, mounts, want) in cases {
            assert_eq!(sandbox_work_dir(cwd, "s", mounts, &fs), want, "{cwd:?}");
        }
    }
}
