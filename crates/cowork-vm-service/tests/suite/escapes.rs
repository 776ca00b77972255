//! Attacks on the host from inside a session sandbox (or through a client
//! tricked into asking for something), each one a defect that was found
//! and closed. The daemon runs as the unprivileged test account unless a
//! test says otherwise.

use serde_json::{Value, json};

use super::harness::{Daemon, Options, Outcome, require_unprivileged_user, run_in};

fn start() -> Daemon {
    start_with_env(&[])
}

fn start_with_env(env: &[(&str, &str)]) -> Daemon {
    Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

fn sh(d: &Daemon, session: &str, id: &str, script: &str, extra: Value) -> Outcome {
    run_in(d, session, id, &["/bin/sh", "-c", script], extra)
}

/// A python3 one-liner run inside the sandbox.
fn py(d: &Daemon, session: &str, id: &str, code: &str, extra: Value) -> Outcome {
    run_in(d, session, id, &["/usr/bin/python3", "-c", code], extra)
}

/// Nested directories `d/d/d/...` under the sandbox's /tmp, 16,000 deep
/// (deeper than any recursive walk survives). Landlock makes every access
/// cost a walk up to the root, so one 16,000-level loop would be
/// quadratic: sixteen 1,000-level chains are made near /tmp and moved to
/// the bottom of one another instead.
const DEEP_CHAIN: &str = "import os\n\
    tmp = os.open('/tmp', os.O_RDONLY)\n\
    def chain(name):\n\
    \x20   os.mkdir(name, dir_fd=tmp)\n\
    \x20   fd = os.open(name, os.O_RDONLY, dir_fd=tmp)\n\
    \x20   for _ in range(999):\n\
    \x20       os.mkdir('d', dir_fd=fd)\n\
    \x20       nfd = os.open('d', os.O_RDONLY, dir_fd=fd)\n\
    \x20       os.close(fd); fd = nfd\n\
    \x20   return fd\n\
    bottom = chain('deep')\n\
    for k in range(15):\n\
    \x20   nxt = chain('c%d' % k)\n\
    \x20   os.rename('c%d' % k, 'd', src_dir_fd=tmp, dst_dir_fd=bottom)\n\
    \x20   os.close(bottom); bottom = nxt\n\
    print('made')\n";

#[test]
fn sandbox_cannot_crash_the_daemon_with_a_deep_tree_in_tmp() {
    let d = start();
    let session_tmp = d
        .home
        .join(".local/share/cowork-vm-service/sessions/deep/tmp");
    let made = py(&d, "deep", "mk1", DEEP_CHAIN, json!({}));
    assert_eq!(made.stdout, "made\n", "{made:?}");
    // The client's janitor prunes idle sessions' tmp every 300 s.
    d.call("stopVM", json!({}));
    let pruned = d.call(
        "pruneSessionCaches",
        json!({"includeSessionTmp": true, "sessionTmpOlderThanSeconds": 0}),
    );
    assert_eq!(pruned["prunedSessions"], json!(["deep"]), "{pruned}");
    assert!(!session_tmp.join("deep").exists());
    // And deleting the session's directories copes too.
    d.call("startVM", json!({}));
    let made = py(&d, "deep", "mk2", DEEP_CHAIN, json!({}));
    assert_eq!(made.stdout, "made\n", "{made:?}");
    let deleted = d.call("deleteSessionDirs", json!({"names": ["deep"]}));
    assert_eq!(deleted["deleted"], json!(["deep"]), "{deleted}");
    assert!(!session_tmp.exists());
    // Still serving.
    let out = sh(&d, "other", "alive", "echo alive", json!({}));
    assert_eq!(out.stdout, "alive\n");
}

#[test]
fn sandbox_blocks_reading_the_daemons_secrets_from_its_environment() {
    let d = start_with_env(&[
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-value"),
        ("GITHUB_TOKEN", "ghp_secret_value"),
        ("SSH_AUTH_SOCK", "/run/user/1000/ssh-agent.socket"),
        ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus"),
        ("LANG", "C.UTF-8"),
    ]);
    let out = sh(
        &d,
        "s",
        "env",
        "env",
        json!({"env": {"FROM_CLIENT": "yes"}}),
    );
    for leaked in [
        "aws-secret-value",
        "ghp_secret_value",
        "SSH_AUTH_SOCK",
        "DBUS_SESSION_BUS_ADDRESS",
        "XDG_RUNTIME_DIR",
        "COWORK_VM",
    ] {
        assert!(
            !out.stdout.contains(leaked),
            "{leaked} leaked: {}",
            out.stdout
        );
    }
    for kept in ["FROM_CLIENT=yes", "LANG=C.UTF-8", "PATH=", "HOME="] {
        assert!(out.stdout.contains(kept), "{kept} missing: {}", out.stdout);
    }
}

#[test]
fn sandbox_blocks_reading_a_descriptor_the_launcher_leaked() {
    let secret_dir = tempfile::tempdir().unwrap();
    let key = secret_dir.path().join("id_rsa");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        leaked_fd7: Some(key),
        ..Default::default()
    });
    let out = sh(
        &d,
        "s",
        "fd",
        "cat <&7 2>/dev/null; ls /proc/self/fd",
        json!({}),
    );
    assert!(!out.stdout.contains("PRIVATE KEY"), "{out:?}");
    let fds: Vec<&str> = out.stdout.split_whitespace().collect();
    assert!(
        fds.iter().all(|fd| ["0", "1", "2", "3"].contains(fd)),
        "only stdio (and ls's own directory) are open: {fds:?}"
    );
}

#[test]
fn sandbox_blocks_reading_the_daemons_session_keyring() {
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        session_key: Some(("cowork-test-key".into(), "keyring-secret".into())),
        ..Default::default()
    });
    let read = "import ctypes, os\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        libc.syscall.restype = ctypes.c_long\n\
        rk, kc = {'x86_64': (249, 250), 'aarch64': (218, 219)}[os.uname().machine]\n\
        key = libc.syscall(rk, b'user', b'cowork-test-key', None, 0)\n\
        if key < 0:\n\
        \x20   print('no key: errno', ctypes.get_errno())\n\
        else:\n\
        \x20   buf = ctypes.create_string_buffer(64)\n\
        \x20   n = libc.syscall(kc, 11, key, buf, 64)\n\
        \x20   print('read:', buf.raw[:max(n, 0)].decode(errors='replace'))\n";
    let out = py(&d, "s", "keys", read, json!({}));
    assert!(!out.stdout.contains("keyring-secret"), "{out:?}");
    assert!(out.stdout.starts_with("no key"), "{out:?}");
}

#[test]
fn client_cannot_be_tricked_into_mounting_system_trees_or_other_homes() {
    let d = start();
    let me = d.subpath("");
    let cases = [
        ("usrbin", "usr/bin", "rw", "/usr"),
        ("usrlocal", "usr/local", "ro", "/usr"),
        ("varlog", "var/log", "ro", "/var"),
        ("varlib", "var/lib", "rw", "/var"),
        ("roothome", "root", "ro", "/root"),
        ("ssh", &format!("{me}/.ssh"), "ro", "credentials"),
    ];
    for (name, path, mode, reason) in cases {
        let mounts = json!({ name: {"path": path, "mode": mode} });
        let out = sh(
            &d,
            "s",
            name,
            &format!("ls /sessions/s/mnt/{name} >/dev/null 2>&1 && echo MOUNTED"),
            json!({"additionalMounts": mounts}),
        );
        assert!(!out.stdout.contains("MOUNTED"), "{name}: {out:?}");
        assert!(
            out.stderr.contains(&format!("mount {name:?} refused")) && out.stderr.contains(reason),
            "{name}: the spawn's stderr says why: {out:?}"
        );
        assert!(d.log().contains("refused"), "{name}: logged");
    }
    // The client's own mounts keep working.
    d.home_dir("proj");
    let ok = sh(
        &d,
        "s",
        "legit",
        "ls -A /sessions/s/mnt",
        json!({"additionalMounts": {
            "proj": {"path": d.subpath("proj"), "mode": "rw"},
            ".claude": {"path": d.subpath(".claude"), "mode": "rw"},
            ".auto-memory": {"path": d.subpath(".auto-memory"), "mode": "rw"},
            "uploads": {"path": d.subpath("uploads"), "mode": "ro"},
            "outputs": {"path": d.subpath("outputs"), "mode": "rw"},
        }}),
    );
    assert_eq!(ok.exit_code, Some(0), "{ok:?}");
    for m in [".auto-memory", ".claude", "outputs", "proj", "uploads"] {
        assert!(ok.stdout.lines().any(|l| l == m), "{m}: {ok:?}");
    }
    assert_eq!(ok.stderr, "", "no refusals: {ok:?}");
}
