//! Drop-in for today's launcher and clients: the launcher's runtime probe,
//! the upstream wire test's checks, the boot-sequence methods that must
//! not fail, a `COWORK_VM_BACKEND=bwrap` that is still diagnosed, and the
//! host backend's background jobs.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::json;

use super::harness::{
    BIN, Daemon, Options, collect, eventually, pids_with, run_in, unique_duration,
};

#[test]
fn launcher_runtime_probe_is_answered_and_other_scripts_are_refused() {
    // Exactly what claude-desktop-debian's launcher and doctor run.
    let probe = Command::new(BIN)
        .args([
            "-e",
            r#"process.exit(typeof require("fs").statfsSync==="function"?0:1)"#,
        ])
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(0), "{probe:?}");
    assert!(probe.stdout.is_empty() && probe.stderr.is_empty());

    let other = Command::new(BIN)
        .args(["-e", "console.log(1)"])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    let message = String::from_utf8_lossy(&other.stderr);
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.contains("not a JavaScript runtime"), "{message}");
    assert!(other.stdout.is_empty(), "console.log must not run");

    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("cowork-vm-service "));
}

/// The 15 checks of the upstream wire test (`protocol-smoke.js`,
/// reference-daemon.md section 9.2), run against our binary the way it
/// runs them: host backend, `-socket`.
#[test]
fn upstream_wire_test_checks_all_pass() {
    let d = Daemon::start("host");
    // 1. one-shot isRunning, no id in the reply.
    let reply = d.one_shot("isRunning", json!({}));
    assert_eq!(reply["success"], true);
    assert_eq!(reply["result"]["running"], false);
    assert!(reply.get("id").is_none(), "{reply}");
    // 2-5. three pipelined requests on one connection, matched by id.
    let mut c = d.connect();
    c.send(&json!({"id": 1, "method": "configure", "params": {"userDataName": "smoke", "sessionOnly": true}}));
    c.send(&json!({"id": 2, "method": "getSessionsDiskInfo", "params": {"lowWaterBytes": 0}}));
    c.send(&json!({"id": 3, "method": "getNetworkDrives", "params": {}}));
    let mut replies = std::collections::HashMap::new();
    while replies.len() < 3 {
        let r = c.recv();
        replies.insert(r["id"].as_i64().unwrap(), r);
    }
    assert_eq!(replies[&1]["success"], true, "configure");
    let disk = &replies[&2]["result"];
    assert!(disk["totalBytes"].is_number() && disk["freeBytes"].is_number());
    assert!(disk["sessions"].is_array());
    assert!(replies[&3]["result"]["drives"].is_array());
    // 6. subscribe.
    let mut events = d.connect();
    assert_eq!(events.subscribe()["success"], true);
    // 7. startVM with a bundle path that does not exist.
    d.call("startVM", json!({"bundlePath": "/nonexistent"}));
    // 8. isGuestConnected becomes true.
    let start = Instant::now();
    while d.call("isGuestConnected", json!({}))["connected"] != true {
        assert!(start.elapsed() < Duration::from_secs(4), "never connected");
        std::thread::sleep(Duration::from_millis(200));
    }
    // 9-11. spawn echo, its stdout and its exit.
    d.call(
        "spawn",
        json!({"id": "smoke-1", "name": "smoke", "command": "/bin/echo",
               "args": ["hello-proto"], "isResume": false, "oauthToken": "tok"}),
    );
    let out = collect(&mut events, "smoke-1", Duration::from_secs(10));
    assert!(out.stdout.contains("hello-proto"), "{out:?}");
    assert_eq!(out.exit_code, Some(0));
    // 12. prune.
    assert!(d.call("pruneSessionCaches", json!({}))["prunedSessions"].is_array());
    // 13. sendGuestResponse accepted.
    assert_eq!(
        d.call("sendGuestResponse", json!({"id": 99, "resultJson": "{}"})),
        json!({})
    );
    // 14. deleteSessionDirs.
    assert!(d.call("deleteSessionDirs", json!({"names": ["x"]}))["deleted"].is_array());
    // 15. unknown method.
    let unknown = d.connect().request("noSuchMethod", json!({}));
    assert_eq!(unknown["success"], false);
    assert!(
        unknown["error"]
            .as_str()
            .unwrap()
            .contains("Unknown method")
    );
}

/// `installSdk` for a binary that is not there answers `{}`; `claude`
/// then fails the normal way, naming where the SDK was expected.
fn missing_sdk_is_reported_at_spawn(d: &Daemon) {
    let sub = d.subpath(".config/Claude/claude-code-vm");
    assert_eq!(
        d.call("installSdk", json!({"sdkSubpath": sub, "version": "9.9.9"})),
        json!({})
    );
    let out = run_in(d, "sdk", "claude-1", &["claude", "--version"], json!({}));
    assert_eq!(out.exit_code, Some(127), "{out:?}");
    let expected = d.home.join(".config/Claude/claude-code-vm/9.9.9/claude");
    assert!(
        out.stderr
            .contains(&format!("{} not found", expected.display())),
        "{out:?}"
    );
    assert!(d.log().contains("installSdk: no executable SDK binary at"));
}

#[test]
fn install_sdk_without_a_binary_succeeds_and_claude_then_names_the_path_host() {
    missing_sdk_is_reported_at_spawn(&Daemon::start("host"));
}

#[test]
fn install_sdk_without_a_binary_succeeds_and_claude_then_names_the_path_bwrap() {
    missing_sdk_is_reported_at_spawn(&Daemon::start_as_user("bwrap"));
}

#[test]
fn a_bwrap_override_with_a_failing_bubblewrap_is_diagnosed_not_downgraded() {
    // A bubblewrap that fails the way Ubuntu 24.04's AppArmor makes it fail.
    let fake = tempfile::tempdir().unwrap();
    let bwrap = fake.path().join("bwrap");
    std::fs::write(
        &bwrap,
        "#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&bwrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(fake.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        env: vec![(
            "PATH".into(),
            format!("{}:/usr/bin:/bin", fake.path().display()),
        )],
        ..Default::default()
    });
    let info = d.call("getDaemonInfo", json!({}));
    assert_eq!(
        info["backend"], "bwrap",
        "isolation is not downgraded: {info}"
    );
    assert_eq!(info["isolated"], true);
    let warnings = info["warnings"].to_string();
    assert!(
        warnings.contains("probe failed")
            && warnings.contains("apparmor_restrict_unprivileged_userns"),
        "{info}"
    );
    let out = run_in(&d, "s", "p", &["/bin/true"], json!({}));
    assert_ne!(out.exit_code, Some(0));
    assert!(
        out.stderr.contains("setting up uid map") || out.stderr.contains("user namespace"),
        "the cause: {out:?}"
    );
    assert!(out.stderr.contains("cowork-vm-service --doctor"), "{out:?}");
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("[error]") && l.contains("bubblewrap failed its start-up probe")),
        "{log}"
    );
}

/// Starts background jobs that leave their parent, group and session the
/// three usual ways; returns the markers their command lines carry.
fn start_escaping_jobs(d: &Daemon) -> [String; 3] {
    let marks = [unique_duration(), unique_duration(), unique_duration()];
    let script = format!(
        "sleep {} >/dev/null 2>&1 & \
         setsid sleep {} >/dev/null 2>&1 & \
         (nohup sleep {} >/dev/null 2>&1 &) ; echo started",
        marks[0], marks[1], marks[2]
    );
    let out = run_in(d, "s", "jobs", &["/bin/sh", "-c", &script], json!({}));
    assert_eq!(out.stdout, "started\n");
    assert_eq!(out.exit_code, Some(0));
    eventually(Duration::from_secs(5), "all three jobs run", || {
        marks
            .iter()
            .all(|m| pids_with(&format!("sleep {m}")).len() == 1)
    });
    marks
}

fn all_gone(marks: &[String; 3], after: &str) {
    eventually(Duration::from_secs(10), after, || {
        marks
            .iter()
            .all(|m| pids_with(&format!("sleep {m}")).is_empty())
    });
}

#[test]
fn host_background_jobs_end_with_stop_vm() {
    let d = Daemon::start("host");
    d.call("startVM", json!({}));
    let marks = start_escaping_jobs(&d);
    d.call("stopVM", json!({}));
    all_gone(&marks, "no background job left after stopVM");
    // The backend still works afterwards.
    d.call("startVM", json!({}));
    let out = run_in(&d, "s", "after", &["/bin/echo", "ok"], json!({}));
    assert_eq!(out.stdout, "ok\n");
}

#[test]
fn host_background_jobs_end_with_sigterm_of_the_daemon() {
    let mut d = Daemon::start("host");
    let marks = start_escaping_jobs(&d);
    d.signal(Signal::TERM);
    d.wait_exit(Duration::from_secs(10)).expect("daemon exits");
    all_gone(&marks, "no background job left after SIGTERM of the daemon");
}

#[test]
fn host_background_jobs_end_with_kill_dash_nine_of_the_daemon() {
    let mut d = Daemon::start("host");
    let marks = start_escaping_jobs(&d);
    d.signal(Signal::KILL);
    d.wait_exit(Duration::from_secs(5)).expect("daemon died");
    all_gone(&marks, "no background job left after kill -9 of the daemon");
}
