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
//! (the agent is pid 1: `--as-pid-1`), ipc, uts; the network is shared.
//! `--die-with-parent` and `--new-session` (no terminal injection).
//!
//! Order matters: `$HOME` is set up before the configured binds and the SDK
//! bind, which may lie under it (reference #426).

use std::path::{Path, PathBuf};

use crate::bwrap_config::{BwrapMountsConfig, config_bind_args, filter_defaults};
use crate::fs_view::FsView;
use crate::mounts::{MountMap, MountMode, translate_guest_path};

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
pub fn default_mounts(layout: &HostLayout, session_tmp: &Path) -> Vec<String> {
    let tmp = session_tmp.to_string_lossy();
    let mut out = Vec::new();
    push(&mut out, &["--tmpfs", "/"]);
    push(&mut out, &["--ro-bind", "/usr", "/usr"]);
    push(&mut out, &["--ro-bind", "/etc", "/etc"]);
    push(&mut out, &["--dev", "/dev"]);
    push(&mut out, &["--proc", "/proc"]);
    push(&mut out, &["--bind", &tmp, "/tmp"]);
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
    pub session_tmp: &'a Path,
    /// The persistent skeleton home to bind at `$HOME`, if requested.
    pub skeleton_home: Option<&'a Path>,
    pub sdk_dir: Option<&'a Path>,
    pub mounts: &'a MountMap,
    pub agent_binary: &'a Path,
    pub agent_fd: i32,
    pub layout: &'a HostLayout,
    pub config: &'a BwrapMountsConfig,
}

/// `/sessions/<session>/mnt`.
pub fn session_mnt(session: &str) -> String {
    format!("/sessions/{session}/mnt")
}

/// The complete bwrap argument list (without the `bwrap` program itself).
pub fn sandbox_argv(plan: &SandboxPlan<'_>) -> Vec<String> {
    let mut out = Vec::with_capacity(64 + plan.mounts.len() * 3);
    push(
        &mut out,
        &[
            "--unshare-user",
            "--disable-userns",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
        ],
    );
    out.extend(filter_defaults(
        &default_mounts(plan.layout, plan.session_tmp),
        &plan.config.disabled,
    ));
    let home = plan.home.to_string_lossy();
    match plan.skeleton_home {
        Some(skel) => push(&mut out, &["--bind", &skel.to_string_lossy(), &home]),
        None => push(&mut out, &["--dir", &home]),
    }
    out.extend(config_bind_args(plan.config));
    if let Some(sdk) = plan.sdk_dir {
        let sdk = sdk.to_string_lossy();
        push(&mut out, &["--ro-bind", &sdk, &sdk]);
    }
    let mnt = session_mnt(plan.session);
    push(&mut out, &["--dir", &format!("/sessions/{}", plan.session)]);
    push(&mut out, &["--dir", &mnt]);
    for m in plan.mounts.iter() {
        let flag = match m.mode {
            MountMode::ReadOnly => "--ro-bind",
            MountMode::ReadWrite => "--bind",
        };
        push(
            &mut out,
            &[
                flag,
                &m.host.to_string_lossy(),
                &format!("{mnt}/{}", m.name),
            ],
        );
    }
    push(
        &mut out,
        &[
            "--ro-bind",
            &plan.agent_binary.to_string_lossy(),
            AGENT_PATH,
        ],
    );
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

    #[test]
    fn golden_argv_with_sdk_and_config() {
        let layout = host_layout(&debian_like());
        let config = BwrapMountsConfig {
            ro_binds: vec![ConfigBind::Same("/opt/tools".into())],
            rw_binds: vec![ConfigBind::Mapped {
                src: "/home/u/.cache/x".into(),
                dst: "/cache".into(),
            }],
            disabled: vec![],
        };
        let m = mounts();
        let plan = SandboxPlan {
            session: "bold-sharp-clarke",
            home: Path::new("/home/u"),
            session_tmp: Path::new(
                "/home/u/.local/share/cowork-vm-service/sessions/bold-sharp-clarke/tmp",
            ),
            skeleton_home: None,
            sdk_dir: Some(Path::new("/home/u/.config/Claude/claude-code-vm/2.1.87")),
            mounts: &m,
            agent_binary: Path::new("/usr/bin/cowork-vm-service"),
            agent_fd: 5,
            layout: &layout,
            config: &config,
        };
        let want = "--unshare-user --disable-userns --unshare-pid --unshare-ipc --unshare-uts --as-pid-1 \
            --die-with-parent --new-session \
            --tmpfs / --ro-bind /usr /usr --ro-bind /etc /etc --dev /dev --proc /proc \
            --bind /home/u/.local/share/cowork-vm-service/sessions/bold-sharp-clarke/tmp /tmp \
            --tmpfs /run --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 \
            --symlink usr/sbin /sbin --ro-bind /run/systemd/resolve /run/systemd/resolve \
            --dir /home/u \
            --ro-bind /opt/tools /opt/tools --bind /home/u/.cache/x /cache \
            --ro-bind /home/u/.config/Claude/claude-code-vm/2.1.87 /home/u/.config/Claude/claude-code-vm/2.1.87 \
            --dir /sessions/bold-sharp-clarke --dir /sessions/bold-sharp-clarke/mnt \
            --bind /home/u/proj /sessions/bold-sharp-clarke/mnt/proj \
            --bind /home/u/.claude /sessions/bold-sharp-clarke/mnt/.claude \
            --ro-bind /home/u/up /sessions/bold-sharp-clarke/mnt/uploads \
            --ro-bind /usr/bin/cowork-vm-service /run/cowork-vm-service/agent \
            --chdir /sessions/bold-sharp-clarke/mnt \
            -- /run/cowork-vm-service/agent agent --fd 5";
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
            ro_binds: vec![],
            rw_binds: vec![ConfigBind::Mapped {
                src: "/home/u/claude-tmp".into(),
                dst: "/tmp".into(),
            }],
            disabled: vec!["/tmp".into()],
        };
        let empty = MountMap::new();
        let plan = SandboxPlan {
            session: "s",
            home: Path::new("/home/u"),
            session_tmp: Path::new("/st/tmp"),
            skeleton_home: Some(Path::new("/st/home")),
            sdk_dir: None,
            mounts: &empty,
            agent_binary: Path::new("/a"),
            agent_fd: 3,
            layout: &layout,
            config: &config,
        };
        let want = "--unshare-user --disable-userns --unshare-pid --unshare-ipc --unshare-uts --as-pid-1 \
            --die-with-parent --new-session \
            --tmpfs / --ro-bind /usr /usr --ro-bind /etc /etc --dev /dev --proc /proc --tmpfs /run \
            --ro-bind /bin /bin --ro-bind /nix /nix \
            --bind /st/home /home/u \
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
