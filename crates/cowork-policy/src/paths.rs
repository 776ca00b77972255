//! Host path arithmetic: normalization, containment, and the client's
//! root-relative "subpath" encoding.

use std::path::{Component, Path, PathBuf};

use crate::fs_view::FsView;

/// Lexically normalizes a path the way Node's `path.resolve` does for an
/// absolute input: `.` and repeated or trailing slashes vanish, `..` pops a
/// component and never climbs above `/`. A relative input is taken relative
/// to `/`.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// `path` equals `base` or lies below it (component-wise, so `/home/u` does
/// not contain `/home/user`).
pub fn is_within(path: &Path, base: &Path) -> bool {
    path.starts_with(base)
}

/// Turns a client subpath into a host path.
///
/// The client encodes folders as `path.relative('/', absolute)`, e.g.
/// `home/u/proj`. An empty subpath means `$HOME`. The root-relative reading
/// is used when it lies in `$HOME`, or when it names something that exists
/// outside `$HOME` (a project on `/mnt/storage`, reference issue #676, which
/// the reference silently remapped to an empty `~/mnt/storage`). Otherwise
/// the subpath is taken relative to `$HOME` (legacy clients).
pub fn resolve_subpath(subpath: &str, home: &Path, fs: &dyn FsView) -> PathBuf {
    if subpath.is_empty() {
        return home.to_path_buf();
    }
    let as_root = normalize(&Path::new("/").join(subpath));
    if is_within(&as_root, home) {
        return as_root;
    }
    let as_home = normalize(&home.join(subpath));
    if fs.exists(&as_root) && !fs.exists(&as_home) {
        return as_root;
    }
    as_home
}

/// Joins `rest` below `base` and normalizes; `None` if the result escapes
/// `base` (`..` traversal).
pub fn join_within(base: &Path, rest: &str) -> Option<PathBuf> {
    let joined = normalize(&base.join(rest.trim_start_matches('/')));
    is_within(&joined, base).then_some(joined)
}

/// Where a host path lands inside a sandbox's `/tmp`: `u/home` for
/// `/tmp/u/home`. A sandbox's `/tmp` is its session's directory on disk, so
/// a `$HOME` there is created in it by every new sandbox (`--dir $HOME`).
/// `None` unless `path` is absolute, strictly below `/tmp`, and plain (no
/// `.` or `..` components).
pub fn below_sandbox_tmp(path: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix("/tmp").ok()?;
    let plain = rest.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && !rest.as_os_str().is_empty()).then(|| rest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs_view::FakeFs;
    use pretty_assertions::assert_eq;

    #[test]
    fn normalize_table() {
        let cases = [
            ("/", "/"),
            ("/a/b/", "/a/b"),
            ("//a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../..", "/"),
            ("/etc/../usr", "/usr"),
            ("/tmp/./", "/tmp"),
            ("a/b", "/a/b"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(Path::new(input)), PathBuf::from(want), "{input}");
        }
    }

    #[test]
    fn is_within_is_component_wise() {
        assert!(is_within(Path::new("/home/u"), Path::new("/home/u")));
        assert!(is_within(Path::new("/home/u/x"), Path::new("/home/u")));
        assert!(!is_within(Path::new("/home/user"), Path::new("/home/u")));
        assert!(!is_within(Path::new("/home"), Path::new("/home/u")));
    }

    #[test]
    fn resolve_subpath_table() {
        let home = Path::new("/home/u");
        let fs = FakeFs::new()
            .dir("/home/u/proj")
            .dir("/mnt/storage/proj")
            .dir("/srv/both")
            .dir("/home/u/srv/both")
            .dir("/etc");
        let cases = [
            ("", "/home/u", "empty means $HOME"),
            ("home/u", "/home/u", "home itself"),
            ("home/u/proj", "/home/u/proj", "root-relative under home"),
            (
                "home/u/.config/Claude/skills",
                "/home/u/.config/Claude/skills",
                "missing but under home",
            ),
            (
                ".config/Claude/skills",
                "/home/u/.config/Claude/skills",
                "legacy home-relative",
            ),
            (
                "mnt/storage/proj",
                "/mnt/storage/proj",
                "#676: existing folder outside home stays where it is",
            ),
            (
                "mnt/nothing/here",
                "/home/u/mnt/nothing/here",
                "missing outside home falls back to home-relative",
            ),
            (
                "srv/both",
                "/home/u/srv/both",
                "ambiguous: home-relative wins when it exists",
            ),
            (
                "../../etc",
                "/etc",
                "subpaths are root-relative: mount validation, not this, refuses /etc",
            ),
            (
                "home/u/../../etc",
                "/etc",
                "normalized before the home test, so traversal cannot fake being in home",
            ),
            (
                "home/u/../../nowhere",
                "/home/u/nowhere",
                "missing outside home falls back to home-relative (normalized)",
            ),
        ];
        for (sub, want, why) in cases {
            assert_eq!(
                resolve_subpath(sub, home, &fs),
                PathBuf::from(want),
                "{sub:?}: {why}"
            );
        }
    }

    #[test]
    fn below_sandbox_tmp_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/tmp/u/home", Some("u/home")),
            ("/tmp/home", Some("home")),
            ("/tmp/home/", Some("home")),
            ("/tmp", None),
            ("/tmp/", None),
            ("/tmpfoo/home", None),
            ("/home/u", None),
            ("/var/tmp/home", None),
            ("tmp/home", None),
            ("/tmp/../home/u", None),
            ("/tmp/a/../b", None),
        ];
        for (path, want) in cases {
            assert_eq!(
                below_sandbox_tmp(Path::new(path)),
                want.map(PathBuf::from),
                "{path}"
            );
        }
    }

    #[test]
    fn join_within_refuses_escapes() {
        let base = Path::new("/host/mem");
        assert_eq!(join_within(base, ""), Some(PathBuf::from("/host/mem")));
        assert_eq!(
            join_within(base, "/a/./b"),
            Some(PathBuf::from("/host/mem/a/b"))
        );
        assert_eq!(join_within(base, "/../x"), None);
        assert_eq!(join_within(base, "/a/../../mem2"), None);
    }
}
