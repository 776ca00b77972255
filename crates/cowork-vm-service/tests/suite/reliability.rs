//! Reliability under hostile or broken peers and faults: a slow
//! subscriber, descriptor exhaustion, a killed agent, a failing
//! bubblewrap, an unwritable log, a broken config file, clients that
//! vanish mid-request.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::harness::{Daemon, Options, collect, eventually, require_unprivileged_user, run_in};

#[test]
fn one_stalled_subscriber_does_not_stall_the_others() {
    let d = Daemon::start("host");
    // A subscriber that never reads, with a tiny socket buffer.
    let mut stalled = d.connect();
    rustix::net::sockopt::set_socket_recv_buffer_size(&stalled.stream, 4096).unwrap();
    stalled.subscribe();
    let mut live = d.connect();
    live.subscribe();
    d.call(
        "spawn",
        json!({"id": "loud", "name": "s", "command": "/bin/sh",
               "args": ["-c", "head -c 128000000 /dev/zero | tr '\\0' x; echo; echo done"]}),
    );
    // The stalled subscriber used to freeze everyone for 30 s per stall.
    let out = collect(&mut live, "loud", Duration::from_secs(25));
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(
        out.stdout.len(),
        128_000_000 + 6,
        "nothing lost for the reader"
    );
    assert!(out.stdout.starts_with("xxxx"), "output as written");
    eventually(Duration::from_secs(5), "the stalled one is dropped", || {
        d.log().contains("dropping event subscriber")
    });
    // Its connection is closed, so its client can tell and subscribe again.
    stalled
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut frames = 0;
    while stalled.try_recv().is_some() {
        frames += 1;
    }
    assert!(
        frames < 1000,
        "it got only what was queued before: {frames}"
    );
}

#[test]
fn a_flood_of_idle_connections_cannot_lock_the_client_out() {
    let d = Daemon::start_with(Options {
        backend: Some("host"),
        nofile: Some((1024, 1024)),
        ..Default::default()
    });
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match UnixStream::connect(&d.socket) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect failed (the listener stopped accepting?): {e}"),
        }
    }
    // Another process (the client) still gets answers.
    let script = format!(
        "import socket, struct, json\n\
         s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect({:?})\n\
         b = json.dumps({{'method': 'isRunning', 'params': {{}}}}).encode()\n\
         s.sendall(struct.pack('>I', len(b)) + b)\n\
         n = struct.unpack('>I', s.recv(4, socket.MSG_WAITALL))[0]\n\
         print(s.recv(n, socket.MSG_WAITALL).decode())\n",
        d.socket.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains("\"success\":true"), "{reply} {out:?}");
    assert!(
        d.log().contains("closing new connections from pid"),
        "logged"
    );
    drop(idle);
    // The flood's connections are gone; the flooding process is served again.
    // (Until the daemon has seen them close, a new connection from this
    // process may still be turned away: closed, not answered.)
    eventually(Duration::from_secs(5), "served again", || {
        let mut c = d.connect();
        c.try_send(&json!({"method": "isRunning", "params": {}, "id": 1}))
            .is_ok()
            && c.try_recv().is_some_and(|r| r["success"] == true)
    });
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let d = Daemon::start_with(Options {
        backend: Some("host"),
        nofile: Some((1024, 4096)),
        ..Default::default()
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["4096", "4096"], "{line}");
}

#[test]
fn a_killed_agent_ends_its_processes_and_the_next_spawn_gets_a_new_sandbox() {
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        ..Default::default()
    });
    let mut events = d.connect();
    events.subscribe();
    d.call(
        "spawn",
        json!({"id": "victim", "name": "a", "command": "/bin/sleep", "args": ["300"]}),
    );
    let other = run_in(
        &d,
        "b",
        "b1",
        &["/bin/sh", "-c", "echo $$ > /tmp/pid; sleep 300 &"],
        json!({}),
    );
    assert_eq!(other.exit_code, Some(0));
    // Session a's agent: the pid 1 of the sandbox whose sleep runs.
    let agent = super::harness::pids_with("/run/cowork-vm-service/agent agent --fd 0")
        .into_iter()
        .find(|pid| {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            children.split_whitespace().any(|c| {
                std::fs::read_to_string(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|cmd| cmd.starts_with("/bin/sleep\u{0}300"))
            })
        })
        .expect("session a's agent");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let out = collect(&mut events, "victim", Duration::from_secs(10));
    assert_eq!(out.signal.as_deref(), Some("SIGKILL"), "{out:?}");
    let next = run_in(&d, "a", "a2", &["/bin/echo", "again"], json!({}));
    assert_eq!(next.stdout, "again\n", "a new sandbox serves the session");
    let b = run_in(
        &d,
        "b",
        "b2",
        &["/bin/sh", "-c", "cat /tmp/pid; pgrep -c sleep"],
        json!({}),
    );
    assert_eq!(b.exit_code, Some(0), "session b untouched: {b:?}");
    assert!(
        b.stdout.ends_with("1\n"),
        "its background job still runs: {b:?}"
    );
}

#[test]
fn a_bubblewrap_that_disappears_fails_spawns_clearly_and_nothing_hangs() {
    let fake = tempfile::tempdir().unwrap();
    let bin = fake.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let bwrap = bin.join("bwrap");
    std::os::unix::fs::symlink("/usr/bin/bwrap", &bwrap).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fake.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        env: vec![("PATH".into(), format!("{}:/usr/bin:/bin", bin.display()))],
        ..Default::default()
    });
    let ok = run_in(&d, "s", "ok", &["/bin/echo", "fine"], json!({}));
    assert_eq!(ok.stdout, "fine\n");
    // bubblewrap goes away (uninstalled under the running daemon).
    std::fs::remove_file(&bwrap).unwrap();
    let started = Instant::now();
    let gone = run_in(&d, "new", "gone", &["/bin/echo", "x"], json!({}));
    assert_eq!(gone.exit_code, Some(126), "{gone:?}");
    assert!(gone.stderr.contains("bwrap"), "names the cause: {gone:?}");
    // ... or starts failing.
    std::fs::write(&bwrap, "#!/bin/sh\necho 'bwrap: broken' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&bwrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    let broken = run_in(&d, "new2", "broken", &["/bin/echo", "x"], json!({}));
    assert_ne!(broken.exit_code, Some(0), "{broken:?}");
    assert!(broken.stderr.contains("bwrap: broken"), "{broken:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "nothing hangs");
    assert_eq!(d.call("getDaemonInfo", json!({}))["backend"], "bwrap");
}

/// A client's strings end up in the always-on log (a path, a process id, a
/// signal name): they must not forge lines there, nor push its history out.
#[test]
fn client_strings_cannot_forge_or_flood_log_lines() {
    let d = Daemon::start("host");
    let forged = "2026-01-01T00:00:00.000Z [lifecycle] [cowork-vm-service] SIGTERM received";
    let r = d.call(
        "installSdk",
        json!({"sdkSubpath": format!("nowhere\n{forged}\n"), "version": "1"}),
    );
    assert_eq!(r, json!({}));
    let mut c = d.connect();
    let huge = "X".repeat(2 << 20);
    let reply = c.request("kill", json!({"id": "nope", "signal": huge}));
    assert_eq!(reply["success"], false, "{reply}");
    assert!(d.call("isRunning", json!({}))["running"].is_boolean());
    let log = d.log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00.000Z")),
        "a forged line: {log}"
    );
    assert!(
        log.contains("nowhere\\n2026-01-01"),
        "escaped, still readable: {log}"
    );
    assert!(
        log.len() < 64 * 1024,
        "a 2 MiB signal name is not logged whole ({} bytes)",
        log.len()
    );
}

#[test]
fn an_unwritable_log_directory_does_not_stop_the_daemon() {
    let d = Daemon::start("host");
    let logs = d.home.join(".config/Claude/logs");
    std::fs::remove_dir_all(&logs).unwrap();
    std::fs::write(&logs, "not a directory").unwrap();
    for i in 0..3 {
        let out = run_in(
            &d,
            "s",
            &format!("l{i}"),
            &["/bin/echo", "still"],
            json!({}),
        );
        assert_eq!(out.stdout, "still\n");
    }
    d.call("setDebugLogging", json!({"enabled": true}));
    assert_eq!(d.call("isRunning", json!({})), json!({"running": false}));
}

#[test]
fn a_broken_config_file_mid_run_keeps_the_previous_good_one() {
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        ..Default::default()
    });
    let tools = d.home_dir("tools");
    std::fs::write(tools.join("marker"), "configured\n").unwrap();
    let config = ".config/Claude/claude_desktop_linux_config.json";
    d.home_file(
        config,
        &json!({"preferences": {"coworkBwrapMounts": {"additionalROBinds": [tools.display().to_string()]}}})
            .to_string(),
    );
    let show = format!("cat {}/marker", tools.display());
    let first = run_in(&d, "a", "first", &["/bin/sh", "-c", &show], json!({}));
    assert_eq!(
        first.stdout, "configured\n",
        "the config is read: {first:?}"
    );
    // Truncated mid-write, as an editor or a full disk leaves it.
    d.home_file(config, "{\"preferences\": {\"coworkBw");
    let second = run_in(&d, "b", "second", &["/bin/sh", "-c", &show], json!({}));
    assert_eq!(
        second.stdout, "configured\n",
        "previous good config kept: {second:?}"
    );
    assert!(
        d.log().contains("claude_desktop_linux_config.json") && d.log().contains("invalid JSON"),
        "a clear log line: {}",
        d.log()
    );
}

#[test]
fn clients_vanishing_mid_request_and_mid_stream_leak_nothing() {
    let d = Daemon::start("host");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    let warm = |d: &Daemon| {
        let out = run_in(d, "s", "warm", &["/bin/true"], json!({}));
        assert_eq!(out.exit_code, Some(0));
    };
    warm(&d);
    let before = fds();
    for i in 0..1000 {
        let mut c = d.connect();
        match i % 3 {
            // Half a frame, then gone.
            0 => c.send_raw(&[0, 0, 0, 50, b'{']),
            // A request, gone before the reply.
            1 => c.send(&json!({"method": "getSessionsDiskInfo", "params": {}, "id": 1})),
            // Subscribed to a process's output, gone mid-stream.
            _ => {
                c.subscribe();
                c.send(&json!({"method": "spawn", "id": 2, "params": {
                    "id": format!("v{i}"), "name": "s", "command": "/bin/sh",
                    "args": ["-c", "head -c 100000 /dev/zero"]}}));
            }
        }
        drop(c);
    }
    eventually(Duration::from_secs(20), "every process is done", || {
        (0..1000)
            .filter(|i| i % 3 == 2)
            .all(|i| d.call("isProcessRunning", json!({"id": format!("v{i}")}))["running"] == false)
    });
    warm(&d);
    let after = fds();
    assert!(
        after <= before + 4,
        "descriptors: {before} before, {after} after"
    );
    let _ = Value::Null;
}
