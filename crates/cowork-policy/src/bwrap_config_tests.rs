//! The reference's `cowork-bwrap-config.bats` cases (section 9.4), ported as
//! behaviour, plus the Silverblue fix (#701/#702).

use super::*;
use crate::fs_view::FakeFs;
use pretty_assertions::assert_eq;
use serde_json::json;

fn home() -> &'static Path {
    Path::new("/home/u")
}

fn fs() -> FakeFs {
    FakeFs::new()
        .dir("/home/u/tools")
        .dir("/opt")
        .dir("/proc")
        .symlink("/home/u/to-proc", "/proc")
        .symlink("/home/u/to-opt", "/opt")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn load(config: Value) -> (BwrapMountsConfig, Vec<String>) {
    parse_bwrap_mounts(&config, home(), &fs())
}

fn mounts(m: Value) -> Value {
    json!({"preferences": {"coworkBwrapMounts": m}})
}

// ---------------------------------------------------------- validateMountPath

#[test]
fn validate_mount_path_table() {
    let fs = fs();
    let cases: [(&str, bool, Result<(), &str>); 17] = [
        ("relative/path", false, Err("Path must be absolute")),
        ("", false, Err("Path must be absolute")),
        ("/", false, Err("Path is forbidden: /")),
        ("/proc", false, Err("Path is forbidden: /proc")),
        ("/dev", false, Err("Path is forbidden: /dev")),
        ("/sys", false, Err("Path is forbidden: /sys")),
        (
            "/proc/self",
            false,
            Err("Path is under forbidden path: /proc"),
        ),
        ("/dev/shm", false, Err("Path is under forbidden path: /dev")),
        (
            "/sys/class",
            false,
            Err("Path is under forbidden path: /sys"),
        ),
        (
            "/opt/tools",
            true,
            Err("Read-write mounts must be under $HOME"),
        ),
        ("/home/u/tools", true, Ok(())),
        ("/opt/my-tools", false, Ok(())),
        ("/nix/store", false, Ok(())),
        ("/media/shared", false, Ok(())),
        ("/opt/../proc", false, Err("Path is forbidden: /proc")),
        (
            "/home/u/to-proc",
            false,
            Err("Symlink resolves to forbidden path: /proc"),
        ),
        ("/home/u/to-opt", false, Ok(())),
    ];
    for (path, rw, want) in cases {
        assert_eq!(
            validate_mount_path(path, rw, home(), &fs),
            want.map_err(String::from),
            "{path:?} rw={rw}"
        );
    }
}

#[test]
fn read_write_under_home_through_a_symlinked_home_is_accepted() {
    // Silverblue/Bazzite: /home -> /var/home, $HOME=/home/u (#701/#702).
    let silverblue = FakeFs::new()
        .dir("/var/home/u/.cache/claude-tmp")
        .symlink("/home", "var/home")
        .dir("/opt/x");
    for path in [
        "/home/u/.cache/claude-tmp",
        "/var/home/u/.cache/claude-tmp",
        "/home/u/not-yet",
    ] {
        assert_eq!(
            validate_mount_path(path, true, home(), &silverblue),
            Ok(()),
            "{path}"
        );
    }
    assert!(validate_mount_path("/opt/x", true, home(), &silverblue).is_err());
    let via_link = FakeFs::new()
        .dir("/home/u")
        .dir("/opt/x")
        .symlink("/home/u/out", "/opt/x");
    assert_eq!(
        validate_mount_path("/home/u/out", true, home(), &via_link),
        Err("Read-write mounts must be under $HOME".into()),
        "a symlink out of $HOME is judged by where it leads"
    );
}

// ------------------------------------------------------ loadBwrapMountsConfig

#[test]
fn missing_or_malformed_config_is_empty() {
    let empty = BwrapMountsConfig::default();
    assert_eq!(load_bwrap_mounts(None, home(), &fs()).unwrap().0, empty);
    assert_eq!(load(json!({"other": 1})).0, empty, "no preferences");
    assert_eq!(
        load(json!({"preferences": {}})).0,
        empty,
        "no coworkBwrapMounts"
    );
    assert_eq!(
        load(json!({"preferences": {"coworkBwrapMounts": "x"}})).0,
        empty
    );
    assert!(
        load_bwrap_mounts(Some("{not json"), home(), &fs()).is_err(),
        "invalid JSON is reported"
    );
    let (non_arrays, _) = load(mounts(json!({
        "additionalROBinds": "/opt", "additionalBinds": {"a": 1}, "disabledDefaultBinds": 5
    })));
    assert_eq!(non_arrays, empty);
}

#[test]
fn valid_config_round_trips() {
    let (c, warnings) = load(mounts(json!({
        "additionalROBinds": ["/opt/tools"],
        "additionalBinds": ["/home/u/tools"],
        "disabledDefaultBinds": ["/tmp"]
    })));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        c,
        BwrapMountsConfig {
            ro_binds: vec![ConfigBind::Same("/opt/tools".into())],
            rw_binds: vec![ConfigBind::Same("/home/u/tools".into())],
            disabled: vec!["/tmp".into()],
            writable_protected: vec![],
        }
    );
}

#[test]
fn invalid_entries_are_filtered_with_warnings() {
    let (c, warnings) = load(mounts(json!({
        "additionalROBinds": ["/proc", "relative", "/opt/tools", "/dev", "/nix/store", 42, null, true],
        "additionalBinds": ["/opt/invalid", "/home/u/tools"]
    })));
    assert_eq!(
        c.ro_binds,
        [
            ConfigBind::Same("/opt/tools".into()),
            ConfigBind::Same("/nix/store".into())
        ]
    );
    assert_eq!(c.rw_binds, [ConfigBind::Same("/home/u/tools".into())]);
    assert_eq!(
        warnings,
        [
            "BwrapConfig: rejected mount \"/proc\": Path is forbidden: /proc",
            "BwrapConfig: rejected mount \"relative\": Path must be absolute",
            "BwrapConfig: rejected mount \"/dev\": Path is forbidden: /dev",
            "BwrapConfig: rejected mount \"/opt/invalid\": Read-write mounts must be under $HOME",
        ]
    );
}

#[test]
fn warnings_name_each_rejected_path_in_order() {
    let (_, warnings) = load(mounts(json!({
        "additionalROBinds": ["/proc"],
        "additionalBinds": ["/outside/home"]
    })));
    assert_eq!(warnings.len(), 2);
    assert!(warnings[0].contains("/proc"));
    assert!(warnings[1].contains("/outside/home"));
}

#[test]
fn disabled_paths_are_normalized_and_critical_ones_refused() {
    let (c, warnings) = load(mounts(json!({
        "disabledDefaultBinds": ["/etc/../usr", "/tmp/./", "/", "/dev", "/proc", "/etc", "relative", 7]
    })));
    assert_eq!(c.disabled, strings(&["/usr", "/tmp", "/etc"]));
    assert_eq!(
        warnings,
        [
            "BwrapConfig: cannot disable critical mount: /",
            "BwrapConfig: cannot disable critical mount: /dev",
            "BwrapConfig: cannot disable critical mount: /proc",
            "BwrapConfig: rejected disabled path \"relative\": Path must be absolute",
        ]
    );
}

// ------------------------------------------------------------ {src, dst} form

#[test]
fn object_form_table() {
    struct Case {
        why: &'static str,
        config: Value,
        ro: usize,
        rw: usize,
        warning: Option<&'static str>,
    }
    let cases = vec![
        Case {
            why: "RO src outside home accepted",
            config: json!({"additionalROBinds": [{"src": "/opt/sdk", "dst": "/opt/sdk"}]}),
            ro: 1,
            rw: 0,
            warning: None,
        },
        Case {
            why: "RW src under home to /tmp accepted",
            config: json!({"additionalBinds": [{"src": "/home/u/.cache/claude-tmp", "dst": "/tmp"}]}),
            ro: 0,
            rw: 1,
            warning: None,
        },
        Case {
            why: "RW src outside home rejected, warning names src",
            config: json!({"additionalBinds": [{"src": "/opt/x", "dst": "/tmp"}]}),
            ro: 0,
            rw: 0,
            warning: Some("rejected mount src \"/opt/x\": Read-write mounts must be under $HOME"),
        },
        Case {
            why: "forbidden src",
            config: json!({"additionalROBinds": [{"src": "/proc", "dst": "/x"}]}),
            ro: 0,
            rw: 0,
            warning: Some("rejected mount src \"/proc\": Path is forbidden: /proc"),
        },
        Case {
            why: "forbidden dst",
            config: json!({"additionalROBinds": [{"src": "/opt", "dst": "/dev"}]}),
            ro: 0,
            rw: 0,
            warning: Some("rejected mount dst \"/dev\": Path is forbidden: /dev"),
        },
        Case {
            why: "dst under /proc",
            config: json!({"additionalROBinds": [{"src": "/opt", "dst": "/proc/1/root"}]}),
            ro: 0,
            rw: 0,
            warning: Some("Path is under forbidden path: /proc"),
        },
        Case {
            why: "relative src",
            config: json!({"additionalROBinds": [{"src": "opt", "dst": "/opt"}]}),
            ro: 0,
            rw: 0,
            warning: Some("Path must be absolute"),
        },
        Case {
            why: "relative dst",
            config: json!({"additionalROBinds": [{"src": "/opt", "dst": "opt"}]}),
            ro: 0,
            rw: 0,
            warning: Some("Path must be absolute"),
        },
        Case {
            why: "malformed objects dropped silently",
            config: json!({"additionalROBinds": [{"src": "/opt"}, {"dst": "/opt"}, {"src": 1, "dst": "/x"}, {}, null]}),
            ro: 0,
            rw: 0,
            warning: None,
        },
    ];
    for case in cases {
        let (c, warnings) = load(mounts(case.config));
        assert_eq!(
            (c.ro_binds.len(), c.rw_binds.len()),
            (case.ro, case.rw),
            "{}",
            case.why
        );
        match case.warning {
            None => assert!(warnings.is_empty(), "{}: {warnings:?}", case.why),
            Some(w) => {
                assert_eq!(warnings.len(), 1, "{}: {warnings:?}", case.why);
                assert!(warnings[0].contains(w), "{}: {warnings:?}", case.why);
            }
        }
    }
}

#[test]
fn string_and_object_forms_mix_in_order() {
    let (c, _) = load(mounts(json!({
        "additionalROBinds": ["/opt/a", {"src": "/opt/b", "dst": "/b"}, "/opt/c"],
        "additionalBinds": [{"src": "/home/u/x", "dst": "/x"}, "/home/u/y"]
    })));
    assert_eq!(
        config_bind_args(&c),
        strings(&[
            "--ro-bind",
            "/opt/a",
            "/opt/a",
            "--ro-bind",
            "/opt/b",
            "/b",
            "--ro-bind",
            "/opt/c",
            "/opt/c",
            "--bind",
            "/home/u/x",
            "/x",
            "--bind",
            "/home/u/y",
            "/home/u/y",
        ])
    );
}

// ------------------------------------------------------------ mergeBwrapArgs

fn defaults() -> Vec<String> {
    strings(&[
        "--tmpfs",
        "/",
        "--ro-bind",
        "/usr",
        "/usr",
        "--ro-bind",
        "/etc",
        "/etc",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/run",
        "--symlink",
        "usr/bin",
        "/bin",
    ])
}

fn with(disabled: &[&str], ro: &[&str], rw: &[&str]) -> BwrapMountsConfig {
    BwrapMountsConfig {
        ro_binds: ro.iter().map(|p| ConfigBind::Same(p.to_string())).collect(),
        rw_binds: rw.iter().map(|p| ConfigBind::Same(p.to_string())).collect(),
        disabled: strings(disabled),
        writable_protected: vec![],
    }
}

#[test]
fn merge_table() {
    let cases: Vec<(&str, BwrapMountsConfig, Vec<&str>)> = vec![
        (
            "empty config keeps defaults",
            with(&[], &[], &[]),
            vec![
                "--tmpfs",
                "/",
                "--ro-bind",
                "/usr",
                "/usr",
                "--ro-bind",
                "/etc",
                "/etc",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--tmpfs",
                "/tmp",
                "--tmpfs",
                "/run",
                "--symlink",
                "usr/bin",
                "/bin",
            ],
        ),
        (
            "disabling /etc drops its triple",
            with(&["/etc"], &[], &[]),
            vec![
                "--tmpfs",
                "/",
                "--ro-bind",
                "/usr",
                "/usr",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--tmpfs",
                "/tmp",
                "--tmpfs",
                "/run",
                "--symlink",
                "usr/bin",
                "/bin",
            ],
        ),
        (
            "critical mounts cannot be disabled",
            with(&["/", "/dev", "/proc"], &[], &[]),
            vec![
                "--tmpfs",
                "/",
                "--ro-bind",
                "/usr",
                "/usr",
                "--ro-bind",
                "/etc",
                "/etc",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--tmpfs",
                "/tmp",
                "--tmpfs",
                "/run",
                "--symlink",
                "usr/bin",
                "/bin",
            ],
        ),
        (
            "/tmp and /run tmpfs are removable; defaults, then RO, then RW",
            with(&["/tmp", "/run"], &["/opt/a", "/opt/b"], &["/home/u/c"]),
            vec![
                "--tmpfs",
                "/",
                "--ro-bind",
                "/usr",
                "/usr",
                "--ro-bind",
                "/etc",
                "/etc",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--symlink",
                "usr/bin",
                "/bin",
                "--ro-bind",
                "/opt/a",
                "/opt/a",
                "--ro-bind",
                "/opt/b",
                "/opt/b",
                "--bind",
                "/home/u/c",
                "/home/u/c",
            ],
        ),
    ];
    for (why, config, want) in cases {
        assert_eq!(
            merge_bwrap_args(&defaults(), &config),
            strings(&want),
            "{why}"
        );
    }
}

#[test]
fn merge_understands_bwrap_arity() {
    let defaults = strings(&[
        "--ro-bind-try",
        "/opt/lib",
        "/opt/lib",
        "--dev-bind",
        "/dev/null",
        "/dev/null",
        "--setenv",
        "A",
        "B",
        "--chdir",
        "/opt/lib",
        "--unshare-pid",
        "--die-with-parent",
        "--ro-bind-try",
        "/opt/lib2",
        "/opt/lib2",
    ]);
    let got = filter_defaults(&defaults, &strings(&["/opt/lib"]));
    assert_eq!(
        got,
        strings(&[
            "--dev-bind",
            "/dev/null",
            "/dev/null",
            "--setenv",
            "A",
            "B",
            "--unshare-pid",
            "--die-with-parent",
            "--ro-bind-try",
            "/opt/lib2",
            "/opt/lib2",
        ])
    );
}

#[test]
fn persistent_tmp_recipe() {
    let (c, warnings) = load(mounts(json!({
        "disabledDefaultBinds": ["/tmp"],
        "additionalBinds": [{"src": "/home/u/claude-tmp", "dst": "/tmp"}]
    })));
    assert!(warnings.is_empty());
    let merged = merge_bwrap_args(&defaults(), &c);
    let joined = merged.join(" ");
    assert!(!joined.contains("--tmpfs /tmp"));
    assert!(joined.ends_with("--bind /home/u/claude-tmp /tmp"));
}

#[test]
fn shadowing_and_display() {
    assert_eq!(shadowed_default("/etc/foo"), Some("/etc"));
    assert_eq!(shadowed_default("/usr"), Some("/usr"));
    assert_eq!(shadowed_default("/tmp"), None);
    assert_eq!(shadowed_default("/sandbox/tools"), None);
    assert_eq!(
        describe(&ConfigBind::Mapped {
            src: "/a".into(),
            dst: "/b".into()
        }),
        "/a -> /b"
    );
}

#[test]
fn writable_protected_paths_are_read_and_bad_entries_reported() {
    let (c, warnings) = load(mounts(json!({
        "writableProtectedPaths": [".vscode", "/.git/hooks/", "../x", 7]
    })));
    assert_eq!(c.writable_protected, [".vscode", ".git/hooks"]);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}
