//! Properties of the policy parsers on generated inputs (proptest; `fuzz/`
//! has the long-running `cargo fuzz` targets): allowlist patterns and
//! targets, guest paths, subpaths, names, the mount configuration file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Component, Path, PathBuf};

use cowork_policy::bwrap_config::{CRITICAL, load_bwrap_mounts};
use cowork_policy::fs_view::{FakeFs, FsView};
use cowork_policy::mounts::{Mount, MountMap, MountMode, parse_guest_path, translate_guest_path};
use cowork_policy::names::{MAX_NAME_LEN, validate_mount_name, validate_session_name};
use cowork_policy::net::{AllowList, Decision, Host, Match, Pattern, Target};
use cowork_policy::paths::{join_within, resolve_subpath};
use proptest::prelude::*;
use serde_json::json;

/// A label of a DNS name (no `--`: `xn--` labels are punycode).
fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,6})?"
}

fn host_name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 2..4).prop_map(|l| l.join("."))
}

/// Text from the characters patterns and authorities are made of, so that
/// many samples parse.
fn pattern_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9.*:_-]{0,24}",
        "\\*?\\.?[a-z]{1,5}(\\.[a-z]{1,5}){0,3}\\.?(:[0-9]{1,6})?",
        "\\[[0-9a-fA-F:.]{0,20}\\](:[0-9]{1,5})?",
        "[0-9]{1,3}(\\.[0-9]{1,3}){0,3}(:[0-9]{1,5})?",
        any::<String>(),
    ]
}

fn is_normal_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fn session_map() -> MountMap {
    let mut map = MountMap::new();
    for (name, host) in [
        ("proj", "/home/u/proj"),
        (".claude", "/home/u/.claude"),
        ("root", "/"),
    ] {
        map.insert(Mount {
            name: name.into(),
            host: PathBuf::from(host),
            mode: MountMode::ReadWrite,
        });
    }
    map
}

/// One path segment, hostile ones often.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just(String::new()),
        Just("%2e%2e".to_owned()),
        "[a-zA-Z0-9 ._-]{1,8}",
    ]
}

fn fake_fs() -> FakeFs {
    FakeFs::new()
        .dir("/home/u/proj/src")
        .dir("/etc")
        .dir("/usr/bin")
        .dir("/proc/self")
        .dir("/dev/shm")
        .dir("/sys/kernel")
        .dir("/mnt/storage")
        .symlink("/home/u/link-etc", "/etc")
        .symlink("/home/u/link-up", "../..")
        .symlink("/home/u/proc-link", "/proc/self")
        .symlink("/home/u/dev-link", "/dev")
        .symlink("/opt/tools", "/home/u/proj")
}

/// Paths a config file might name: plain, forbidden, through symlinks,
/// with `..`, relative.
fn config_path() -> impl Strategy<Value = String> {
    let bases = prop::sample::select(vec![
        "/",
        "/proc",
        "/dev",
        "/sys",
        "/etc",
        "/usr",
        "/tmp",
        "/opt/tools",
        "/mnt/storage",
        "/home/u",
        "/home/u/proj",
        "/home/u/link-etc",
        "/home/u/link-up",
        "/home/u/proc-link",
        "/home/u/dev-link",
        "relative",
        "",
    ]);
    (bases, prop::collection::vec(segment(), 0..3)).prop_map(|(base, rest)| {
        [base.to_owned()]
            .into_iter()
            .chain(rest)
            .collect::<Vec<_>>()
            .join("/")
    })
}

fn forbidden(p: &Path) -> bool {
    p == Path::new("/") || ["/proc", "/dev", "/sys"].iter().any(|f| p.starts_with(f))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text: no panic; an accepted pattern's canonical text parses to
    /// the same pattern, an accepted target's to the same target.
    #[test]
    fn canonical_text_parses_to_the_same_value(text in pattern_like()) {
        if let Ok(p) = Pattern::parse(&text) {
            prop_assert_eq!(Pattern::parse(&p.to_string()), Ok(p));
        }
        for target in [
            Target::parse_authority(&text),
            Target::parse_authority_or(&text, 80),
            Target::new(&text, 443),
        ].into_iter().flatten() {
            prop_assert_ne!(target.port, 0);
            prop_assert_eq!(Target::parse_authority(&target.to_string()), Ok(target));
        }
    }

    /// A pattern never matches a host its canonical form would not (and
    /// the other way round), and a match is what the grammar says.
    #[test]
    fn a_pattern_matches_as_its_canonical_form(p in pattern_like(), t in pattern_like()) {
        let (Ok(pattern), Ok(target)) = (Pattern::parse(&p), Target::parse_authority(&t)) else {
            return Ok(());
        };
        let canonical_pattern = Pattern::parse(&pattern.to_string()).unwrap();
        let canonical_target = Target::parse_authority(&target.to_string()).unwrap();
        let got = pattern.matches(&target);
        prop_assert_eq!(canonical_pattern.matches(&canonical_target), got);
        prop_assert_eq!(
            AllowList::from_patterns(&[p.as_str()]).check(&target).is_allowed(),
            got.is_some()
        );
        if let Some(port) = pattern.port {
            prop_assert!(got.is_none() || port == target.port);
        }
    }

    /// An exact name matches that name in any case, with or without the
    /// trailing dot, on any port, and nothing under it.
    #[test]
    fn exact_names_match_only_themselves(
        name in host_name(),
        sub in label(),
        port in 1u16..,
        upper in any::<bool>(),
        dot in any::<bool>(),
    ) {
        let shown = if upper { name.to_ascii_uppercase() } else { name.clone() };
        let pattern = Pattern::parse(&format!("{shown}{}", if dot { "." } else { "" })).unwrap();
        let at = |host: &str| Target::parse_authority(&format!("{host}:{port}")).unwrap();
        prop_assert_eq!(pattern.matches(&at(&name)), Some(Match::Exact));
        prop_assert_eq!(pattern.matches(&at(&format!("{sub}.{name}"))), None);
        prop_assert_eq!(pattern.matches(&at(&format!("{sub}{name}"))), None);
        prop_assert_eq!(pattern.matches(&at(&format!("{name}.{sub}"))), None);
    }

    /// `*.base` matches strict subdomains only: not the base, not a name
    /// that merely ends with it, not the base under another name.
    #[test]
    fn wildcards_match_strict_subdomains_only(
        base in host_name(),
        subs in prop::collection::vec(label(), 1..3),
        other in label(),
    ) {
        let list = AllowList::from_patterns(&[format!("*.{base}")]);
        let at = |host: &str| Target::parse_authority(&format!("{host}:443")).unwrap();
        let sub = format!("{}.{base}", subs.join("."));
        prop_assert_eq!(list.check(&at(&sub)), Decision::Allowed { exact: false });
        prop_assert_eq!(list.check(&at(&base)), Decision::Denied);
        prop_assert_eq!(list.check(&at(&format!("{other}{base}"))), Decision::Denied);
        prop_assert_eq!(list.check(&at(&format!("{sub}.{other}"))), Decision::Denied);
    }

    /// A guest path never translates outside its mount's host folder, and
    /// what it translates to is normal; without `..` it always translates.
    #[test]
    fn guest_paths_never_leave_their_mount(
        mount in prop::sample::select(vec!["proj", ".claude", "claude", "root", ".proj"]),
        rest in prop::collection::vec(segment(), 0..6),
    ) {
        let map = session_map();
        let path = format!("/sessions/s/mnt/{mount}/{}", rest.join("/"));
        let host_of = map.lookup(mount).map(|m| m.host.clone());
        match translate_guest_path(&path, &map) {
            Some(host) => {
                let base = host_of.expect("only known mounts translate");
                prop_assert!(host.starts_with(&base), "{} -> {:?} left {:?}", path, host, base);
                prop_assert!(is_normal_absolute(&host), "{:?}", host);
            }
            None => prop_assert!(
                host_of.is_none() || rest.iter().any(|s| s == ".."),
                "{} did not translate", path
            ),
        }
    }

    /// Valid names are one path component, and a guest path made of them
    /// splits back into them.
    #[test]
    fn valid_names_make_guest_paths_that_split_back(
        session in any::<String>(),
        mount in any::<String>(),
        rest in "(/[a-z.]{0,4}){0,3}",
    ) {
        for name in [&session, &mount] {
            let ok = validate_session_name(name).is_ok();
            prop_assert_eq!(ok, validate_mount_name(name).is_ok());
            let component = !name.is_empty() && name.len() <= MAX_NAME_LEN
                && !name.contains(['/', '\0']) && name != "." && name != "..";
            prop_assert_eq!(ok, component, "{:?}", name);
        }
        if validate_session_name(&session).is_ok() && validate_mount_name(&mount).is_ok() {
            let path = format!("/sessions/{session}/mnt/{mount}{rest}");
            let g = parse_guest_path(&path).unwrap();
            prop_assert_eq!((g.session, g.mount, g.rest), (session.as_str(), mount.as_str(), rest.as_str()));
        }
    }

    /// A client subpath always becomes an absolute, normal host path, and
    /// a join below a base never climbs out of it.
    #[test]
    fn subpaths_resolve_to_normal_absolute_paths(
        segments in prop::collection::vec(segment(), 0..6),
        leading in any::<bool>(),
    ) {
        let fs = fake_fs();
        let text = format!("{}{}", if leading { "/" } else { "" }, segments.join("/"));
        let resolved = resolve_subpath(&text, Path::new("/home/u"), &fs);
        prop_assert!(is_normal_absolute(&resolved), "{:?} -> {:?}", text, resolved);
        for base in ["/home/u/proj", "/"] {
            if let Some(joined) = join_within(Path::new(base), &text) {
                prop_assert!(joined.starts_with(base) && is_normal_absolute(&joined));
            }
        }
    }

    /// Whatever the config file names, an accepted bind is absolute and
    /// outside `/proc`, `/dev` and `/sys` (also through symlinks), a
    /// read-write source is in `$HOME` by real path, and no critical
    /// default is disabled.
    #[test]
    fn config_file_binds_stay_out_of_forbidden_trees(
        ro in prop::collection::vec(config_path(), 0..4),
        rw in prop::collection::vec(config_path(), 0..4),
        mapped in prop::collection::vec((config_path(), config_path()), 0..3),
        disabled in prop::collection::vec(config_path(), 0..4),
    ) {
        let fs = fake_fs();
        let home = Path::new("/home/u");
        let mapped: Vec<_> = mapped.iter().map(|(s, d)| json!({"src": s, "dst": d})).collect();
        let text = json!({"preferences": {"coworkBwrapMounts": {
            "additionalROBinds": ro, "additionalBinds": rw.iter().map(|p| json!(p)).chain(mapped).collect::<Vec<_>>(),
            "disabledDefaultBinds": disabled,
        }}}).to_string();
        let (config, _) = load_bwrap_mounts(Some(&text), home, &fs).unwrap();
        let binds = config.ro_binds.iter().map(|b| (b, false))
            .chain(config.rw_binds.iter().map(|b| (b, true)));
        for (bind, read_write) in binds {
            for (path, is_src) in [(bind.src(), true), (bind.dst(), false)] {
                prop_assert!(path.starts_with('/'), "{:?}", path);
                let normal = cowork_policy::paths::normalize(Path::new(path));
                prop_assert!(!forbidden(&normal), "{:?} accepted", path);
                let real = fs.canonicalize(&normal).unwrap_or_else(|| normal.clone());
                prop_assert!(!forbidden(&real), "{:?} -> {:?} accepted", path, real);
                if read_write && is_src {
                    prop_assert!(real.starts_with(home), "rw {:?} -> {:?}", path, real);
                }
            }
        }
        for d in &config.disabled {
            prop_assert!(!CRITICAL.contains(&d.as_str()), "{:?}", d);
        }
    }
}

/// The generated names are names (a strategy that produced IP literals or
/// invalid hosts would make the properties above vacuous).
#[test]
fn generated_host_names_are_names() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..64 {
        let name = host_name().new_tree(&mut runner).unwrap().current();
        let target = Target::parse_authority(&format!("{name}:1")).unwrap();
        assert_eq!(target.host, Host::Name(name));
    }
}
