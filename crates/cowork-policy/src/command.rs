//! Which program a spawn runs, and in which host directory (host backend).

use std::path::{Path, PathBuf};

use crate::fs_view::FsView;
use crate::mounts::{MountMap, translate_guest_path};
use crate::names::validate_mount_name;
use crate::paths::resolve_subpath;

/// `<command> not found`, as the process's stderr reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{command} not found")]
pub struct CommandNotFound {
    pub command: String,
}

/// Resolves the program to execute:
/// 1. a command whose basename is exactly `claude` runs the installed SDK
///    binary, when there is one (only `claude`: redirecting `bash -c` too
///    made every shell call fail with "Not logged in", reference #427);
///    when `installSdk` named one that is missing, the not-found error
///    names that path;
/// 2. an existing path runs as given;
/// 3. otherwise the basename is looked up in `path_var` (what `which` did in
///    the reference, without forking a process for it).
pub fn resolve_command(
    command: &str,
    sdk_binary: Option<&Path>,
    path_var: Option<&str>,
    fs: &dyn FsView,
) -> Result<PathBuf, CommandNotFound> {
    let as_path = Path::new(command);
    let basename = as_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected_sdk = sdk_binary.filter(|_| basename == "claude");
    let not_found = || CommandNotFound {
        command: match expected_sdk {
            Some(sdk) => sdk.to_string_lossy().into_owned(),
            None => command.to_string(),
        },
    };
    if command.is_empty() {
        return Err(not_found());
    }
    if let Some(sdk) = expected_sdk.filter(|p| fs.exists(p)) {
        return Ok(sdk.to_path_buf());
    }
    if command.contains('/') && fs.exists(as_path) {
        return Ok(as_path.to_path_buf());
    }
    if basename.is_empty() {
        return Err(not_found());
    }
    find_in_path(&basename, path_var, fs).ok_or_else(not_found)
}

/// The first executable `name` in the absolute directories of `path_var`.
pub fn find_in_path(name: &str, path_var: Option<&str>, fs: &dyn FsView) -> Option<PathBuf> {
    path_var
        .unwrap_or_default()
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| fs.is_executable_file(candidate))
}

/// Where `installSdk` says the SDK binary is: `<subpath>/<version>/claude`
/// (whether or not it exists). A version that is not a plain name
/// (`../..`) is refused.
pub fn sdk_binary_path(
    sdk_subpath: &str,
    version: &str,
    home: &Path,
    fs: &dyn FsView,
) -> Result<PathBuf, crate::names::NameError> {
    validate_mount_name(version)?;
    Ok(resolve_subpath(sdk_subpath, home, fs)
        .join(version)
        .join("claude"))
}

/// The SDK binary `installSdk` points at, if it is executable.
pub fn resolve_sdk_binary(
    sdk_subpath: &str,
    version: &str,
    home: &Path,
    fs: &dyn FsView,
) -> Option<PathBuf> {
    let candidate = sdk_binary_path(sdk_subpath, version, home, fs).ok()?;
    fs.is_executable_file(&candidate).then_some(candidate)
}

/// The host working directory of a spawn on the host backend: the 2.x
/// `sharedCwdPath` if given; else a guest `cwd` translated through the
/// mounts, or for a bare session root (`/sessions/<s>`) the primary mount;
/// else `cwd` itself; `$HOME` when the result does not exist.
pub fn resolve_work_dir(
    cwd: Option<&str>,
    shared_cwd_path: Option<&str>,
    map: &MountMap,
    home: &Path,
    fs: &dyn FsView,
) -> PathBuf {
    let chosen = match (shared_cwd_path.filter(|s| !s.is_empty()), cwd) {
        (Some(shared), _) => resolve_subpath(shared, home, fs),
        (None, Some(c)) if c.starts_with("/sessions/") => translate_guest_path(c, map)
            .or_else(|| map.primary().map(|m| m.host.clone()))
            .unwrap_or_else(|| home.to_path_buf()),
        (None, Some(c)) if !c.is_empty() => PathBuf::from(c),
        _ => home.to_path_buf(),
    };
    if fs.exists(&chosen) {
        chosen
    } else {
        home.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs_view::FakeFs;
    use crate::mounts::{Mount, MountMode};
    use pretty_assertions::assert_eq;

    fn map(entries: &[(&str, &str)]) -> MountMap {
        let mut m = MountMap::new();
        for (name, host) in entries {
            m.insert(Mount {
                name: (*name).into(),
                host: PathBuf::from(host),
                mode: MountMode::ReadWrite,
            });
        }
        m
    }

    #[test]
    fn resolve_command_table() {
        let fs = FakeFs::new()
            .file("/usr/bin/bash", true)
            .file("/usr/bin/notexec", false)
            .file("/home/u/.config/Claude/claude-code-vm/2.1.87/claude", true)
            .file("/usr/local/bin/claude", true)
            .file("/opt/tools/thing", true);
        let sdk = Path::new("/home/u/.config/Claude/claude-code-vm/2.1.87/claude");
        let path = Some("/usr/local/bin:/usr/bin:relative/dir");
        let cases: [(&str, Option<&Path>, Option<&str>); 10] = [
            (
                "claude",
                Some(sdk),
                Some("/home/u/.config/Claude/claude-code-vm/2.1.87/claude"),
            ),
            (
                "/usr/local/bin/claude",
                Some(sdk),
                Some("/home/u/.config/Claude/claude-code-vm/2.1.87/claude"),
            ),
            ("claude", None, Some("/usr/local/bin/claude")),
            ("bash", Some(sdk), Some("/usr/bin/bash")),
            ("/usr/bin/bash", Some(sdk), Some("/usr/bin/bash")),
            ("/opt/tools/thing", None, Some("/opt/tools/thing")),
            ("/no/such/bash", None, Some("/usr/bin/bash")),
            ("notexec", None, None),
            ("nothing-here", None, None),
            ("", None, None),
        ];
        for (command, sdk, want) in cases {
            assert_eq!(
                resolve_command(command, sdk, path, &fs).ok(),
                want.map(PathBuf::from),
                "{command}"
            );
        }
        assert_eq!(
            resolve_command("x-y", None, path, &fs)
                .unwrap_err()
                .to_string(),
            "x-y not found"
        );
        // installSdk named a binary that is not there: PATH still counts,
        // and when nothing is found the error names the expected path.
        let missing = Path::new("/home/u/.config/Claude/claude-code-vm/9.9.9/claude");
        assert_eq!(
            resolve_command("claude", Some(missing), path, &fs).ok(),
            Some(PathBuf::from("/usr/local/bin/claude"))
        );
        assert_eq!(
            resolve_command("claude", Some(missing), Some("/usr/bin"), &fs)
                .unwrap_err()
                .to_string(),
            "/home/u/.config/Claude/claude-code-vm/9.9.9/claude not found"
        );
        assert_eq!(
            resolve_command("bash-x", Some(missing), Some("/usr/bin"), &fs)
                .unwrap_err()
                .to_string(),
            "bash-x not found",
            "only claude is the SDK"
        );
    }

    #[test]
    fn sdk_binary_table() {
        let home = Path::new("/home/u");
        let fs = FakeFs::new()
            .file("/home/u/.config/Claude/claude-code-vm/2.1.87/claude", true)
            .file("/home/u/.config/Claude/claude-code-vm/2.0.0/claude", false);
        let cases = [
            ("home/u/.config/Claude/claude-code-vm", "2.1.87", true),
            (".config/Claude/claude-code-vm", "2.1.87", true),
            ("home/u/.config/Claude/claude-code-vm", "2.0.0", false),
            ("home/u/.config/Claude/claude-code-vm", "9.9.9", false),
            ("home/u/.config/Claude/claude-code-vm", "../../..", false),
        ];
        for (sub, version, found) in cases {
            assert_eq!(
                resolve_sdk_binary(sub, version, home, &fs).is_some(),
                found,
                "{sub} {version}"
            );
        }
        assert_eq!(
            sdk_binary_path("home/u/sdk", "9.9.9", home, &fs).unwrap(),
            PathBuf::from("/home/u/sdk/9.9.9/claude")
        );
        assert!(sdk_binary_path("home/u/sdk", "../..", home, &fs).is_err());
    }

    // Ported from the reference's resolveWorkDir cases (section 9.5), with the
    // daemon's semantics (sharedCwdPath is a root-relative subpath).
    #[test]
    fn work_dir_table() {
        let home = Path::new("/home/u");
        let fs = FakeFs::new()
            .dir("/home/u/proj/sub")
            .dir("/tmp")
            .dir("/home/u/shared");
        let m = map(&[
            (".claude", "/home/u/.claude"),
            ("uploads", "/home/u/up"),
            ("proj", "/home/u/proj"),
        ]);
        let dot_only = map(&[(".claude", "/home/u/.claude"), ("uploads", "/home/u/up")]);
        let cases: [(Option<&str>, Option<&str>, &MountMap, &str, &str); 9] = [
            (
                Some("/sessions/s/mnt/proj/sub"),
                None,
                &m,
                "/home/u/proj/sub",
                "translated",
            ),
            (
                Some("/sessions/s/mnt/zzz"),
                None,
                &dot_only,
                "/home/u",
                "unmapped, no primary",
            ),
            (
                Some("/sessions/s"),
                Some("home/u/shared"),
                &m,
                "/home/u/shared",
                "sharedCwdPath wins",
            ),
            (
                None,
                Some("home/u/missing"),
                &m,
                "/home/u",
                "missing sharedCwdPath",
            ),
            (
                Some("/sessions/s/mnt/proj/missing"),
                None,
                &m,
                "/home/u",
                "missing translation",
            ),
            (None, None, &m, "/home/u", "no cwd"),
            (Some("/tmp"), None, &m, "/tmp", "existing host dir kept"),
            (
                Some("/sessions/s"),
                None,
                &m,
                "/home/u/proj",
                "session root: primary mount",
            ),
            (
                Some("/sessions/s"),
                None,
                &dot_only,
                "/home/u",
                "session root, no user mount",
            ),
        ];
        for (cwd, shared, m, want, why) in cases {
            assert_eq!(
                resolve_work_dir(cwd, shared, m, home, &fs),
                PathBuf::from(want),
                "{why}"
            );
        }
    }
}
