//! The bwrap backend, driven over the socket by an unprivileged daemon (as
//! root, the daemon runs as the `cowork-test` account): the sandbox layout,
//! mount modes, session persistence, process control, teardown, and escape
//! attempts from inside.

use std::time::Duration;

use serde_json::{Value, json};

use super::harness::{
    Daemon, Outcome, cat_with_stdin, collect, eventually, pids_with, require_unprivileged_user,
    run_in, unique_duration,
};

fn start(env: &[(&str, &str)]) -> Daemon {
    assert!(
        std::path::Path::new("/usr/bin/bwrap").exists() || which("bwrap"),
        "bubblewrap is not installed (scripts/test.sh installs it)"
    );
    Daemon::bwrap_as(require_unprivileged_user(), env)
}

fn which(name: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| std::path::Path::new(d).join(name).exists())
}

/// Mounts `proj` (rw) and `ref` (ro) from HOME, as the client sends them.
fn project_mounts(d: &Daemon) -> Value {
    d.home_dir("proj");
    d.home_file("ref/readme.txt", "reference\n");
    json!({
        "proj": {"path": d.subpath("proj"), "mode": "rw"},
        "ref": {"path": d.subpath("ref"), "mode": "ro"},
    })
}

fn sh(d: &Daemon, session: &str, id: &str, script: &str, extra: Value) -> Outcome {
    run_in(d, session, id, &["/bin/sh", "-c", script], extra)
}

/// The bwrap processes serving this daemon's sessions.
fn sandboxes_of(d: &Daemon) -> Vec<i32> {
    children_of(d.pid())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("/run/cowork-vm-service/agent"))
        })
        .collect()
}

/// Pids whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if after.split_whitespace().nth(1) == Some(&parent.to_string()) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn layout_cwd_and_mount_modes() {
    let d = start(&[]);
    let mounts = project_mounts(&d);
    let out = sh(
        &d,
        "s",
        "layout",
        "pwd; ls /sessions/s/mnt; echo written > /sessions/s/mnt/proj/new.txt; \
         cat /sessions/s/mnt/ref/readme.txt; \
         if echo x > /sessions/s/mnt/ref/readme.txt; then echo REF-WRITABLE; fi; \
         if touch /sessions/s/mnt/ref/other; then echo REF-CREATABLE; fi; \
         if touch /usr/escape; then echo USR-WRITABLE; fi; \
         if touch /etc/escape; then echo ETC-WRITABLE; fi; \
         test -x /bin/sh && echo has-bin-sh; id -u",
        json!({"additionalMounts": mounts}),
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0], "/sessions/s/mnt/proj",
        "cwd is the primary mount: {out:?}"
    );
    assert_eq!(&lines[1..3], ["proj", "ref"], "{out:?}");
    assert_eq!(lines[3], "reference");
    for escaped in [
        "REF-WRITABLE",
        "REF-CREATABLE",
        "USR-WRITABLE",
        "ETC-WRITABLE",
    ] {
        assert!(!out.stdout.contains(escaped), "{escaped}: {out:?}");
    }
    assert!(out.stdout.contains("has-bin-sh"));
    let uid = d
        .user
        .as_ref()
        .map_or_else(|| rustix::process::getuid().as_raw(), |u| u.uid);
    assert_eq!(
        lines.last().copied(),
        Some(uid.to_string().as_str()),
        "same uid as the daemon"
    );
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(
        std::fs::read_to_string(d.home.join("proj/new.txt")).unwrap(),
        "written\n",
        "rw mount writes reach the host"
    );
    assert_eq!(
        std::fs::read_to_string(d.home.join("ref/readme.txt")).unwrap(),
        "reference\n"
    );
    assert!(!d.home.join("ref/other").exists());
}

#[test]
fn host_home_daemon_socket_and_agent_are_out_of_reach() {
    let d = start(&[]);
    d.home_file("secret.txt", "top secret\n");
    d.home_file(".ssh/id_ed25519", "key\n");
    let home = d.home.display().to_string();
    let socket = d.socket.display().to_string();
    let script = format!(
        "ls -A \"$HOME\"; echo end-of-home; \
         cat {home}/secret.txt {home}/.ssh/id_ed25519 2>/dev/null && echo HOME-READABLE; \
         test -e {socket} && echo SOCKET-VISIBLE; \
         ls /proc/1/fd >/dev/null 2>&1 && echo AGENT-FDS-READABLE; \
         cat /proc/1/environ >/dev/null 2>&1 && echo AGENT-ENV-READABLE; \
         unshare --user --map-root-user true 2>/dev/null && echo NESTED-USERNS; \
         echo end-of-checks; for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done"
    );
    let out = sh(&d, "s", "escape", &script, json!({}));
    let (home_listing, rest) = out.stdout.split_once("end-of-home\n").unwrap();
    let (checks, processes) = rest.split_once("end-of-checks\n").unwrap();
    assert_eq!(home_listing, "", "HOME inside is empty: {out:?}");
    for escaped in [
        "HOME-READABLE",
        "SOCKET-VISIBLE",
        "AGENT-FDS-READABLE",
        "AGENT-ENV-READABLE",
        "NESTED-USERNS",
    ] {
        assert!(!checks.contains(escaped), "{escaped}: {out:?}");
    }
    assert!(
        !processes.contains("cowork-vm-service.js"),
        "the daemon is not in the sandbox's pid namespace: {processes}"
    );
    assert!(
        processes.starts_with("/run/cowork-vm-service/agent agent"),
        "pid 1 is our agent: {processes}"
    );
}

#[test]
fn tmp_and_background_jobs_persist_between_spawns() {
    let d = start(&[]);
    let marker = unique_duration();
    let first = sh(
        &d,
        "s",
        "first",
        &format!("echo state > /tmp/kept; sleep {marker} >/dev/null 2>&1 & echo started"),
        json!({}),
    );
    assert_eq!(first.stdout, "started\n");
    assert_eq!(
        first.exit_code,
        Some(0),
        "exit is reported while the job runs"
    );
    let second = sh(
        &d,
        "s",
        "second",
        &format!(
            "cat /tmp/kept; for p in /proc/[0-9]*; do \
             tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep {marker} $'"
        ),
        json!({}),
    );
    assert_eq!(second.stdout, "state\n1\n", "{second:?}");
    // The session's /tmp is its state directory's tmp/ on the host.
    let kept = d
        .home
        .join(".local/share/cowork-vm-service/sessions/s/tmp/kept");
    assert_eq!(std::fs::read_to_string(kept).unwrap(), "state\n");
    // Another session is another sandbox.
    let other = sh(
        &d,
        "t",
        "other",
        "cat /tmp/kept 2>&1 || echo absent",
        json!({}),
    );
    assert!(other.stdout.contains("absent"), "{other:?}");
    d.call("stopVM", json!({}));
    eventually(
        Duration::from_secs(10),
        "stopVM ends background jobs",
        || pids_with(&format!("sleep {marker}")).is_empty(),
    );
}

#[test]
fn kill_signals_the_process_group_inside_the_sandbox() {
    let d = start(&[]);
    let marker = unique_duration();
    let mut events = d.connect();
    events.subscribe();
    d.call(
        "spawn",
        json!({"id": "grp", "name": "s", "command": "/bin/sh",
               "args": ["-c", format!("sleep {marker} & sleep {marker}; wait")]}),
    );
    eventually(Duration::from_secs(10), "both sleeps run", || {
        pids_with(&format!("sleep {marker}")).len() == 2
    });
    d.call("kill", json!({"id": "grp", "signal": "SIGTERM"}));
    let out = collect(&mut events, "grp", Duration::from_secs(10));
    assert_eq!(out.signal.as_deref(), Some("SIGTERM"), "{out:?}");
    eventually(Duration::from_secs(10), "the whole group is gone", || {
        pids_with(&format!("sleep {marker}")).is_empty()
    });
    assert_eq!(
        d.call("isProcessRunning", json!({"id": "grp"}))["running"],
        false
    );
}

#[test]
fn stdin_reaches_the_sandboxed_process() {
    let d = start(&[]);
    let out = cat_with_stdin(&d, &["line one\n", "line two\n"]);
    assert_eq!(out.stdout, "line one\nline two\n");
    assert_eq!(out.exit_code, Some(0));
}

#[test]
fn sandboxed_processes_start_with_default_signal_handling() {
    // The agent blocks SIGCHLD for its own signalfd; its children must not
    // inherit that, nor an ignored SIGPIPE (`yes | head` would never end).
    let d = start(&[]);
    let status = run_in(
        &d,
        "s",
        "sig",
        &["/bin/grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
        json!({}),
    );
    let mask = |name: &str| {
        let line = status.stdout.lines().find(|l| l.starts_with(name));
        let hex = line
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?");
        u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{status:?}"))
    };
    // Standard signals only: glibc's posix_spawn leaves its two internal
    // real-time signals (32, 33) ignored in every child, on the host too.
    let standard = 0x7fff_ffff;
    assert_eq!(mask("SigBlk:") & standard, 0, "{status:?}");
    assert_eq!(mask("SigIgn:") & standard, 0, "{status:?}");
    let piped = sh(&d, "s", "pipe", "yes | head -n 2", json!({}));
    assert_eq!(
        (piped.stdout.as_str(), piped.exit_code),
        ("y\ny\n", Some(0))
    );
}

#[test]
fn the_skeleton_home_is_made_on_demand_and_persists() {
    let d = start(&[]);
    let home_dir = d
        .home
        .join(".local/share/cowork-vm-service/sessions/sk/home");
    let plain = sh(&d, "sk", "plain", "ls -A \"$HOME\" | wc -l", json!({}));
    assert_eq!(plain.stdout.trim(), "0", "{plain:?}");
    assert!(!home_dir.exists(), "no skeleton home unless asked for");
    let skeleton = json!({"mountSkeletonHome": true});
    let wrote = sh(&d, "sk", "w", "echo kept > \"$HOME/f\"", skeleton.clone());
    assert_eq!(wrote.exit_code, Some(0), "{wrote:?}");
    assert_eq!(
        std::fs::read_to_string(home_dir.join("f")).unwrap(),
        "kept\n"
    );
    let read = sh(&d, "sk", "r", "cat \"$HOME/f\"", skeleton);
    assert_eq!(read.stdout, "kept\n", "{read:?}");
}

#[test]
fn missing_commands_fail_like_the_host_backend() {
    let d = start(&[]);
    let out = run_in(&d, "s", "nf", &["/no/such/tool"], json!({}));
    assert_eq!(out.stderr, "Error: /no/such/tool not found\n");
    assert_eq!(out.exit_code, Some(127));
}

#[test]
fn oauth_tokens_reach_the_sandboxed_process() {
    // The reference drops both under bwrap (reference-daemon.md 12).
    let d = start(&[]);
    let from_spawn = sh(
        &d,
        "s",
        "tok1",
        "echo \"[$CLAUDE_CODE_OAUTH_TOKEN]\"",
        json!({"oauthToken": "spawn-tok"}),
    );
    assert_eq!(from_spawn.stdout, "[spawn-tok]\n");
    d.call("addApprovedOauthToken", json!({"token": "approved-tok"}));
    let approved = sh(
        &d,
        "s",
        "tok2",
        "echo \"[$CLAUDE_CODE_OAUTH_TOKEN]\"",
        json!({}),
    );
    assert_eq!(approved.stdout, "[approved-tok]\n");
}

#[test]
fn mount_path_adds_a_read_only_mount_in_a_new_generation() {
    let d = start(&[]);
    d.home_file("docs/a.txt", "doc\n");
    let marker = unique_duration();
    let mut events = d.connect();
    events.subscribe();
    d.call(
        "spawn",
        json!({"id": "old", "name": "s", "command": "/bin/sleep", "args": [marker]}),
    );
    let reply = d.call(
        "mountPath",
        json!({"processId": "old", "subpath": d.subpath("docs"), "mountName": "docs", "mode": "ro"}),
    );
    assert_eq!(reply["guestPath"], "/sessions/s/mnt/docs");
    let out = sh(
        &d,
        "s",
        "new",
        "cat /sessions/s/mnt/docs/a.txt; if echo x > /sessions/s/mnt/docs/a.txt; then echo DOCS-WRITABLE; fi; \
         echo end-of-checks; for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done",
        json!({}),
    );
    let (checks, processes) = out.stdout.split_once("end-of-checks\n").unwrap();
    assert_eq!(checks, "doc\n", "readable, not writable: {out:?}");
    assert!(
        !processes.contains(&format!("sleep {marker}")),
        "the new mount set runs in a new sandbox: {out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(d.home.join("docs/a.txt")).unwrap(),
        "doc\n"
    );
    assert_eq!(
        d.call("isProcessRunning", json!({"id": "old"}))["running"],
        true,
        "the old generation keeps running its process"
    );
    assert!(d.log().contains("generation 2 started"), "{}", d.log());
    d.call("kill", json!({"id": "old", "signal": "SIGKILL"}));
    let old = collect(&mut events, "old", Duration::from_secs(10));
    assert_eq!(old.signal.as_deref(), Some("SIGKILL"));
    eventually(
        Duration::from_secs(10),
        "the finished generation is torn down",
        || sandboxes_of(&d).len() == 1,
    );
}

#[test]
fn stop_vm_tears_down_every_sandbox() {
    let d = start(&[]);
    let marker = unique_duration();
    let mut events = d.connect();
    events.subscribe();
    for (id, session) in [("a", "one"), ("b", "two")] {
        d.call(
            "spawn",
            json!({"id": id, "name": session, "command": "/bin/sh",
                   "args": ["-c", format!("sleep {marker}")]}),
        );
    }
    eventually(Duration::from_secs(10), "two sandboxes run", || {
        pids_with(&format!("sleep {marker}")).len() == 2 && sandboxes_of(&d).len() == 2
    });
    d.call("stopVM", json!({}));
    let mut killed = std::collections::BTreeMap::new();
    while killed.len() < 2 {
        let e = events.recv();
        if e["type"] == "exit" {
            killed.insert(e["id"].as_str().unwrap().to_string(), e["signal"].clone());
        }
    }
    assert!(
        killed.values().all(Value::is_string),
        "ended by a signal: {killed:?}"
    );
    eventually(Duration::from_secs(10), "no sandbox is left", || {
        pids_with(&format!("sleep {marker}")).is_empty() && sandboxes_of(&d).is_empty()
    });
}

#[test]
fn killing_the_daemon_leaves_no_sandbox_behind() {
    let mut d = start(&[]);
    let marker = unique_duration();
    // A job that detaches as far as it can: own session, no pipes.
    let out = sh(
        &d,
        "s",
        "bg",
        &format!("setsid sleep {marker} </dev/null >/dev/null 2>&1 & echo ok"),
        json!({}),
    );
    assert_eq!(out.stdout, "ok\n");
    eventually(Duration::from_secs(10), "the detached job runs", || {
        pids_with(&format!("sleep {marker}")).len() == 1
    });
    d.signal(rustix::process::Signal::KILL);
    d.wait_exit(Duration::from_secs(5)).expect("daemon died");
    eventually(
        Duration::from_secs(10),
        "the sandbox dies with the daemon",
        || pids_with(&format!("sleep {marker}")).is_empty() && sandboxes_of(&d).is_empty(),
    );
}

#[test]
fn idle_sandboxes_are_torn_down_and_restarted_on_demand() {
    let d = start(&[("COWORK_VM_IDLE_TIMEOUT_SECS", "0.3")]);
    let first = sh(&d, "s", "one", "echo one > /tmp/f", json!({}));
    assert_eq!(first.exit_code, Some(0));
    eventually(
        Duration::from_secs(10),
        "the idle sandbox is torn down",
        || sandboxes_of(&d).is_empty(),
    );
    assert!(
        d.log().contains("shutting down idle sandbox"),
        "{}",
        d.log()
    );
    let second = sh(&d, "s", "two", "cat /tmp/f", json!({}));
    assert_eq!(second.stdout, "one\n", "a new sandbox, same session /tmp");
}

#[test]
fn a_busy_sandbox_is_not_idle() {
    let d = start(&[("COWORK_VM_IDLE_TIMEOUT_SECS", "0.3")]);
    let marker = unique_duration();
    sh(
        &d,
        "s",
        "bg",
        &format!("sleep {marker} >/dev/null 2>&1 &"),
        json!({}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        pids_with(&format!("sleep {marker}")).len(),
        1,
        "background job survives"
    );
    assert_eq!(sandboxes_of(&d).len(), 1);
    d.call("stopVM", json!({}));
}

#[test]
fn concurrent_spawns_in_one_session_each_get_their_own_output() {
    let d = start(&[]);
    let mut events = d.connect();
    events.subscribe();
    let mut client = d.connect();
    for i in 0..20 {
        client.call(
            "spawn",
            json!({"id": format!("c{i}"), "name": "s", "command": "/bin/sh",
                   "args": ["-c", format!("echo out-{i}; exit {}", i % 5)]}),
        );
    }
    let mut output = std::collections::BTreeMap::<String, String>::new();
    let mut exits = std::collections::BTreeMap::<String, Option<i64>>::new();
    while exits.len() < 20 {
        let e = events.recv();
        let id = e["id"].as_str().unwrap_or_default().to_string();
        match e["type"].as_str() {
            Some("stdout") => *output.entry(id).or_default() += e["data"].as_str().unwrap(),
            Some("exit") => {
                exits.insert(id, e["exitCode"].as_i64());
            }
            _ => {}
        }
    }
    for i in 0..20 {
        let id = format!("c{i}");
        assert_eq!(
            output[&id],
            format!("out-{i}\n"),
            "output arrives before exit"
        );
        assert_eq!(exits[&id], Some(i % 5));
    }
    assert_eq!(sandboxes_of(&d).len(), 1, "one sandbox serves the session");
}
