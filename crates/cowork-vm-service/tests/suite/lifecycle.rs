//! The daemon process: start-up, single instance, credentials, signals,
//! orphans, logging, command line.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::process::Signal;
use serde_json::json;

use super::harness::{
    BIN, Client, Daemon, Options, eventually, pids_with, require_unprivileged_user, unique_duration,
};

#[test]
fn a_second_instance_does_not_steal_a_live_socket() {
    let d = Daemon::start("host");
    let second = Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .env("HOME", &d.home)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already serving"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", d.pid())), "{stderr}");
    assert_eq!(d.call("isRunning", json!({})), json!({"running": false}));
}

/// The `/tmp` fallback is shared by every user: a socket another user put
/// there first is named as such (a client connecting to it would talk to
/// that user's process), not taken for our own daemon.
#[test]
fn a_socket_squatted_by_another_user_is_reported_as_such() {
    let Some(user) = require_unprivileged_user() else {
        eprintln!("not root: another user's daemon cannot be started; nothing checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = shared.join("cowork-vm-service.sock");
    let squatter = Daemon::start_with(Options {
        backend: Some("host"),
        socket: Some(socket.clone()),
        user: Some(user.clone()),
        ..Default::default()
    });
    let ours = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(ours.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&ours.stderr);
    assert!(
        stderr.contains(&format!(
            "served by a process of another user (uid {}",
            user.uid
        )) && stderr.contains(&format!("pid {}", squatter.pid())),
        "{stderr}"
    );
}

#[test]
fn a_stale_socket_of_ours_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let d = Daemon::start_with(Options {
        backend: Some("host"),
        socket: Some(socket),
        ..Default::default()
    });
    assert_eq!(d.call("isRunning", json!({})), json!({"running": false}));
}

#[test]
fn insecure_socket_directories_and_symlinks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sticky bit"));

    let safe = tempfile::tempdir().unwrap();
    let link = safe.path().join("s.sock");
    std::os::unix::fs::symlink("/tmp/elsewhere.sock", &link).unwrap();
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&link)
        .env("HOME", safe.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));
}

#[test]
fn the_socket_is_private_to_the_user() {
    let d = Daemon::start("host");
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn connections_from_another_uid_are_closed_and_logged() {
    // The daemon runs unprivileged; root (another uid, which file modes do
    // not stop) connects.
    let Some(_) = require_unprivileged_user() else {
        // Not root: connect as ourselves to a daemon we own is the only
        // option, which is the allowed case; nothing to test here.
        eprintln!("skipped: needs root to connect as a foreign uid");
        return;
    };
    let d = Daemon::start_as_user("host");
    let mut foreign = Client::connect_as(&d.socket, None);
    // The daemon may close the connection before this write (EPIPE):
    // either way no reply may come.
    let _ = foreign.try_send(&json!({"method": "isRunning", "id": 1}));
    assert!(foreign.try_recv().is_none(), "foreign uid got a reply");
    eventually(Duration::from_secs(5), "refusal logged", || {
        d.log().contains("refused connection from uid 0")
    });
    assert_eq!(
        d.connect().call("isRunning", json!({})),
        json!({"running": false})
    );
}

#[test]
fn sigterm_stops_children_unlinks_the_socket_and_exits_zero() {
    let mut d = Daemon::start("host");
    let marker = unique_duration();
    d.call(
        "spawn",
        json!({"id": "t", "name": "s", "command": "/bin/sh", "args": ["-c", format!("exec sleep {marker}"), "x"]}),
    );
    eventually(Duration::from_secs(5), "child started", || {
        !pids_with(&format!("sleep {marker}")).is_empty()
    });
    d.signal(Signal::TERM);
    let status = d.wait_exit(Duration::from_secs(10)).expect("daemon exited");
    assert_eq!(status.code(), Some(0));
    assert!(!d.socket.exists(), "socket left behind");
    eventually(Duration::from_secs(5), "child gone", || {
        pids_with(&format!("sleep {marker}")).is_empty()
    });
    let log = d.log();
    for line in [
        "[lifecycle] [cowork-vm-service] startup pid=",
        "listening",
        "SIGTERM received",
        "exit code=0",
    ] {
        assert!(log.contains(line), "log lacks {line:?}:\n{log}");
    }
}

#[test]
fn kill_dash_nine_of_the_daemon_leaves_no_orphans() {
    let mut d = Daemon::start("host");
    let marker = unique_duration();
    for i in 0..3 {
        d.call(
            "spawn",
            json!({"id": format!("o{i}"), "name": "s", "command": "/bin/sh",
                   "args": ["-c", format!("exec sleep {marker}"), "x"]}),
        );
    }
    eventually(Duration::from_secs(5), "children started", || {
        pids_with(&format!("sleep {marker}")).len() == 3
    });
    d.signal(Signal::KILL);
    d.wait_exit(Duration::from_secs(5)).expect("daemon died");
    eventually(Duration::from_secs(5), "no orphans", || {
        pids_with(&format!("sleep {marker}")).is_empty()
    });
}

#[test]
fn debug_logging_toggles_at_run_time_and_redacts_secrets() {
    let d = Daemon::start_with(Options {
        backend: Some("host"),
        env: vec![("COWORK_VM_DEBUG".into(), "0".into())],
        ..Default::default()
    });
    d.call("isGuestConnected", json!({}));
    assert!(
        !d.log().contains("Request: isGuestConnected"),
        "debug off by default"
    );
    d.call("setDebugLogging", json!({"enabled": true}));
    d.call(
        "spawn",
        json!({"id": "p", "name": "s", "command": "/bin/true",
               "env": {"SECRET_KEY": "hunter2-value"}, "oauthToken": "tok-secret-xyz"}),
    );
    d.call(
        "addApprovedOauthToken",
        json!({"token": "approved-secret-abc"}),
    );
    let log = d.log();
    assert!(log.contains("Request: spawn"), "{log}");
    assert!(log.contains("[env/tokens redacted]"));
    for secret in ["hunter2-value", "tok-secret-xyz", "approved-secret-abc"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
    d.call("setDebugLogging", json!({"enabled": false}));
    d.call("getNetworkDrives", json!({}));
    assert!(!d.log().contains("Request: getNetworkDrives"));
}

#[test]
fn help_and_version() {
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("cowork-vm-service "));
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["--socket", "--doctor", "run", "COWORK_VM_BACKEND"] {
        assert!(text.contains(word), "help lacks {word}:\n{text}");
    }
}

#[test]
fn default_socket_is_in_xdg_runtime_dir_or_tmp() {
    let root = tempfile::tempdir().unwrap();
    let runtime = root.path().join("rt");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("HOME", root.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("COWORK_VM_BACKEND", "host")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let expected = runtime.join("cowork-vm-service.sock");
    eventually(Duration::from_secs(5), "socket created", || {
        expected.exists()
    });
    let mut c = Client::connect_as(&expected, None);
    assert_eq!(c.call("isRunning", json!({})), json!({"running": false}));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn the_js_shim_runs_the_binary_for_script_launching_clients() {
    let root = tempfile::tempdir().unwrap();
    let runtime = root.path().join("rt");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let shim = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/cowork-vm-service.js")
        .canonicalize()
        .unwrap();
    let mut child = std::process::Command::new("node")
        .arg(&shim)
        .env("HOME", root.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("COWORK_VM_SERVICE_BIN", super::harness::BIN)
        .env("COWORK_VM_BACKEND", "host")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node is installed");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let socket = runtime.join("cowork-vm-service.sock");
    assert!(
        line.contains(&format!("Service started on {}", socket.display())),
        "{line}"
    );
    let mut c = super::harness::Client::connect_as(&socket, None);
    assert_eq!(c.call("isRunning", json!({})), json!({"running": false}));
    let parent_of = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        after_name
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
    };
    let ours: Vec<i32> = pids_with(&format!("{} {}", super::harness::BIN, shim.display()))
        .into_iter()
        .filter(|p| parent_of(*p) == Some(child.id()))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "the binary's command line keeps the script name"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is forwarded and the exit status returned"
    );
    assert!(!socket.exists(), "the daemon shut down cleanly");
}
