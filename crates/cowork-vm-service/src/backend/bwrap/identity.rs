//! Who the processes of a sandbox are on the host.
//!
//! The daemon's own user. Under sudo the whole process has already become
//! the invoking user (`crate::sys::privileges`). A daemon that is still
//! root (containers, CI) must not hand host uid 0 to the sandbox
//! unguarded: uid 0 owns root-only files (`/etc/shadow` is readable by its
//! owner whatever the capabilities) and, without capabilities, still
//! passes the owner checks of `/proc/sys`, and a user-namespace mapping
//! does not change the host uid. So the sandbox then really is root, and
//! that is said on stderr and in the log; capabilities are dropped (as
//! always), `/proc/sys` is read-only (as always), and the root-only files
//! of `/etc` are covered ([`root_only_in_etc`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cowork_policy::bwrap_argv::RootMasks;

/// The sandbox's host identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The daemon's own (not root).
    Daemon,
    /// The daemon is root: the sandbox is uid 0, without capabilities.
    Root { masks: RootMasks },
}

impl Identity {
    /// Decides from the daemon's effective uid.
    pub fn decide(euid: u32) -> Self {
        if euid != 0 {
            return Identity::Daemon;
        }
        Identity::Root {
            masks: root_only_in_etc(Path::new("/etc")),
        }
    }

    /// From this process.
    pub fn current() -> Self {
        Self::decide(rustix::process::geteuid().as_raw())
    }

    /// What users should be told about it, if anything.
    pub fn notice(&self) -> Option<String> {
        match self {
            Identity::Daemon => None,
            Identity::Root { .. } => Some(
                "the daemon runs as root and no invoking user is known (not started by sudo): \
                 sandboxed processes run as host uid 0, with no capabilities, read-only /proc/sys \
                 and root-only files hidden; run cowork-vm-service as a normal user instead"
                    .to_string(),
            ),
        }
    }
}

/// Mode bits that make an entry readable (files) or listable (folders) by
/// anyone: if they are missing, only its owner or group can see in.
fn root_only(mode: u32, is_dir: bool) -> bool {
    if is_dir {
        mode & 0o005 != 0o005
    } else {
        mode & 0o004 == 0
    }
}

/// Entries of `/etc` that only root (or its groups) can read, to cover
/// when the sandbox is uid 0: files are shown empty, folders empty and
/// read-only. Symlinks are not followed; at most 20,000 entries are looked
/// at.
pub fn root_only_in_etc(etc: &Path) -> RootMasks {
    let mut masks = RootMasks::default();
    let mut stack = vec![etc.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            seen += 1;
            if seen > 20_000 {
                return masks;
            }
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let path = entry.path();
            let shown = path.to_string_lossy().into_owned();
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.is_dir() {
                if root_only(meta.mode(), true) {
                    masks.dirs.push(shown);
                } else {
                    stack.push(path);
                }
            } else if meta.is_file() && root_only(meta.mode(), false) {
                masks.files.push(shown);
            }
        }
    }
    masks.files.sort();
    masks.dirs.sort();
    masks
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_table() {
        assert_eq!(Identity::decide(1000), Identity::Daemon);
        assert!(matches!(Identity::decide(0), Identity::Root { .. }));
        assert!(Identity::Daemon.notice().is_none());
        assert!(
            Identity::decide(0)
                .notice()
                .is_some_and(|n| n.contains("root"))
        );
    }

    #[test]
    fn root_only_entries_are_found_without_descending_into_them() {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path();
        let set =
            |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        std::fs::write(etc.join("shadow"), "x").unwrap();
        set(&etc.join("shadow"), 0o640).unwrap();
        std::fs::write(etc.join("passwd"), "x").unwrap();
        std::fs::create_dir_all(etc.join("ssl/private")).unwrap();
        std::fs::write(etc.join("ssl/private/key"), "k").unwrap();
        set(&etc.join("ssl/private/key"), 0o600).unwrap();
        set(&etc.join("ssl/private"), 0o700).unwrap();
        std::os::unix::fs::symlink("shadow", etc.join("link")).unwrap();
        let masks = root_only_in_etc(etc);
        assert_eq!(
            masks.files,
            [etc.join("shadow").to_string_lossy().into_owned()]
        );
        assert_eq!(
            masks.dirs,
            [etc.join("ssl/private").to_string_lossy().into_owned()]
        );
    }
}
