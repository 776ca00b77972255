//! Guest paths and the names inside them (`cowork_policy`): each input
//! line (at most 16) goes through `mounts::parse_guest_path`,
//! `guest_session`, `translate_guest_path` (a session's mount map),
//! `paths::resolve_subpath` and `join_within` (a fake filesystem with
//! symlinks), `names::validate_*`, `protect::plain_relative` and
//! `resolve_in_mount`; all the lines together are a spawn's arguments for
//! `args::clean_spawn_args`.
//!
//! Invariants: a parsed guest path prints back to itself; a translated
//! guest path never leaves its mount's host folder and has no `.` or `..`
//! left; a resolved subpath is absolute and normal; a valid name is one
//! path component and survives a guest path round trip; a path resolved
//! in a mount stays relative and plain.
#![no_main]

use cowork_policy::mounts::{guest_session, parse_guest_path, translate_guest_path};
use cowork_policy::names::{MAX_NAME_LEN, validate_mount_name, validate_session_name};
use cowork_policy::paths::{join_within, normalize, resolve_subpath};
use cowork_policy::protect::{plain_relative, resolve_in_mount};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fn is_normal_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.split('\n').take(8).map(str::to_owned).collect();
    let map = cowork_fuzz::session_map();
    let fs = cowork_fuzz::fake_fs();
    let home = Path::new("/home/u");
    for line in &lines {
        let line = line.as_str();
        if let Some(g) = parse_guest_path(line) {
            assert!(!g.session.is_empty() && !g.session.contains('/'));
            assert!(!g.mount.is_empty() && !g.mount.contains('/'));
            assert!(g.rest.is_empty() || g.rest.starts_with('/'));
            assert_eq!(
                format!("/sessions/{}/mnt/{}{}", g.session, g.mount, g.rest),
                line
            );
            assert_eq!(guest_session(line), Some(g.session));
            if let Some(host) = translate_guest_path(line, map) {
                let mount = map
                    .lookup(g.mount)
                    .expect("translated through a known mount");
                assert!(
                    host.starts_with(&mount.host),
                    "{line} -> {host:?} left {mount:?}"
                );
                assert!(is_normal_absolute(&host), "{host:?}");
            }
        } else {
            assert_eq!(translate_guest_path(line, map), None);
        }
        let resolved = resolve_subpath(line, home, fs);
        assert!(is_normal_absolute(&resolved), "{line:?} -> {resolved:?}");
        let normal = normalize(Path::new(line));
        assert_eq!(normalize(&normal), normal, "normalize is idempotent");
        for base in ["/home/u/proj", "/"] {
            if let Some(joined) = join_within(Path::new(base), line) {
                assert!(joined.starts_with(base) && is_normal_absolute(&joined));
            }
        }
        let session_ok = validate_session_name(line).is_ok();
        assert_eq!(session_ok, validate_mount_name(line).is_ok());
        if session_ok {
            assert!(!line.contains(['/', '\0']) && line != "." && line != "..");
            assert!(!line.is_empty() && line.len() <= MAX_NAME_LEN);
            let guest = format!("/sessions/{line}/mnt/{line}/f");
            let g = parse_guest_path(&guest).expect("valid names make a guest path");
            assert_eq!((g.session, g.mount, g.rest), (line, line, "/f"));
        }
        if let Some(rel) = plain_relative(Path::new(line)) {
            assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
        }
        if let Some(inside) = resolve_in_mount(Path::new("/home/u/proj"), Path::new("sub"), line) {
            assert!(
                inside
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
                "{inside:?}"
            );
        }
    }
    let args = cowork_policy::args::clean_spawn_args(&lines, map, fs);
    assert!(args.len() <= lines.len());
});
