//! The host backend, as the client sees it: processes, translation of guest
//! paths, environment policy, readFile confinement, session housekeeping.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::harness::{
    Daemon, Options, cat_with_stdin, collect, eventually, pids_with, run_in, unique_duration,
};

fn env_of(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn output_and_exit_code_are_streamed() {
    let d = Daemon::start("host");
    let out = run_in(
        &d,
        "s",
        "p",
        &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
        json!({}),
    );
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    assert_eq!((out.exit_code, out.signal), (Some(3), None));
}

#[test]
fn missing_command_reports_not_found_and_127() {
    let d = Daemon::start("host");
    let out = run_in(&d, "s", "p", &["/no/such/cmd-xyz"], json!({}));
    assert_eq!(out.stderr, "Error: /no/such/cmd-xyz not found\n");
    assert_eq!(out.exit_code, Some(127));
    assert_eq!(
        d.call("isProcessRunning", json!({"id": "p"})),
        json!({"running": false, "exitCode": 127})
    );
}

#[test]
fn bare_command_names_are_found_on_path() {
    let d = Daemon::start("host");
    let out = run_in(&d, "s", "p", &["echo", "via-path"], json!({}));
    assert_eq!(out.stdout, "via-path\n");
}

#[test]
fn environment_policy_and_guest_path_translation() {
    let d = Daemon::start_with(Options {
        backend: Some("host"),
        env: vec![
            ("CLAUDE_CODE_SSE_PORT".into(), "1234".into()),
            ("ELECTRON_RUN_AS_NODE".into(), "1".into()),
        ],
        ..Default::default()
    });
    d.home_dir("proj");
    d.home_dir(".claude");
    d.home_dir("mem");
    let mounts = json!({
        "proj": {"path": d.subpath("proj"), "mode": "rw"},
        ".claude": {"path": d.subpath(".claude"), "mode": "rw"},
        ".auto-memory": {"path": d.subpath("mem"), "mode": "rw"},
    });
    let out = run_in(
        &d,
        "nm",
        "env1",
        &["/usr/bin/env"],
        json!({
            "cwd": "/sessions/nm",
            "additionalMounts": mounts,
            "oauthToken": "tok-from-spawn",
            "env": {
                "CLAUDE_CONFIG_DIR": "/sessions/nm/mnt/.claude",
                "CLAUDE_COWORK_MEMORY_PATH_OVERRIDE": "/sessions/nm/mnt/.auto-memory",
                "CLAUDECODE": "1",
                "TERM": "dumb",
                "ANTHROPIC_API_KEY": "",
                "KEEP": "me"
            }
        }),
    );
    let env = env_of(&out.stdout);
    let home = d.home.to_string_lossy().to_string();
    assert_eq!(env["CLAUDE_CODE_OAUTH_TOKEN"], "tok-from-spawn");
    assert_eq!(env["CLAUDE_CONFIG_DIR"], format!("{home}/.claude"));
    assert_eq!(
        env["CLAUDE_COWORK_MEMORY_PATH_OVERRIDE"],
        format!("{home}/mem")
    );
    assert_eq!(env["TERM"], "xterm-256color");
    assert_eq!(
        env["PWD"],
        format!("{home}/proj"),
        "cwd is the primary mount"
    );
    assert_eq!(env["KEEP"], "me");
    for gone in [
        "CLAUDECODE",
        "ELECTRON_RUN_AS_NODE",
        "CLAUDE_CODE_SSE_PORT",
        "ANTHROPIC_API_KEY",
    ] {
        assert!(!env.contains_key(gone), "{gone} leaked: {env:?}");
    }
}

#[test]
fn untranslatable_config_dir_is_removed_not_the_string_null() {
    let d = Daemon::start("host");
    let out = run_in(
        &d,
        "nm",
        "env2",
        &["/usr/bin/env"],
        json!({"env": {"CLAUDE_CONFIG_DIR": "/sessions/nm/mnt/.claude"}}),
    );
    let env = env_of(&out.stdout);
    assert!(!env.contains_key("CLAUDE_CONFIG_DIR"), "{env:?}");
    assert!(!out.stdout.contains("=null"));
}

#[test]
fn approved_token_is_the_fallback_and_an_explicit_empty_token_is_kept() {
    let d = Daemon::start_with(Options {
        backend: Some("host"),
        env: vec![("CLAUDE_CODE_OAUTH_TOKEN".into(), "daemon-tok".into())],
        ..Default::default()
    });
    let from_daemon = env_of(&run_in(&d, "s", "a", &["/usr/bin/env"], json!({})).stdout);
    assert_eq!(from_daemon["CLAUDE_CODE_OAUTH_TOKEN"], "daemon-tok");
    let foundry = env_of(
        &run_in(
            &d,
            "s",
            "b",
            &["/usr/bin/env"],
            json!({"env": {"CLAUDE_CODE_OAUTH_TOKEN": ""}}),
        )
        .stdout,
    );
    assert_eq!(foundry["CLAUDE_CODE_OAUTH_TOKEN"], "");

    let d = Daemon::start("host");
    d.call("addApprovedOauthToken", json!({"token": "approved-tok"}));
    let approved = env_of(&run_in(&d, "s", "c", &["/usr/bin/env"], json!({})).stdout);
    assert_eq!(approved["CLAUDE_CODE_OAUTH_TOKEN"], "approved-tok");
}

#[test]
fn guest_paths_in_arguments_become_host_paths() {
    let d = Daemon::start("host");
    d.home_dir("proj/sub");
    d.home_file("plugins/p1/.claude-plugin/plugin.json", "{}");
    d.home_dir("plugins/p1/skills/x");
    let home = d.home.to_string_lossy().to_string();
    let out = run_in(
        &d,
        "s",
        "args",
        &[
            "/usr/bin/printf",
            "%s\\n",
            "--add-dir",
            "/sessions/s/mnt/proj/sub",
            "--plugin-dir",
            "/sessions/s/mnt/plugins/p1/skills/x",
            "--add-dir",
            "/sessions/s/mnt/unknown",
            "--allowedTools",
            "Read,Edit(//sessions/s/mnt/proj/**),Write(/sessions/s/mnt/nope/**)",
        ],
        json!({"additionalMounts": {
            "proj": {"path": d.subpath("proj"), "mode": "rw"},
            "plugins": {"path": d.subpath("plugins"), "mode": "ro"}
        }}),
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "--add-dir".to_string(),
            format!("{home}/proj/sub"),
            "--plugin-dir".to_string(),
            format!("{home}/plugins/p1"),
            "--allowedTools".to_string(),
            format!("Read,Edit({home}/proj/**)"),
        ]
    );
}

#[test]
fn kill_signals_the_whole_process_group_and_reports_the_signal() {
    let d = Daemon::start("host");
    let marker = unique_duration();
    let mut events = d.connect();
    events.subscribe();
    d.call(
        "spawn",
        json!({"id": "grp", "name": "s", "command": "/bin/sh",
               "args": ["-c", format!("sleep {marker} & sleep {marker} & wait"), "x"]}),
    );
    eventually(Duration::from_secs(5), "both sleeps started", || {
        pids_with(&format!("sleep {marker}")).len() == 2
    });
    d.call("kill", json!({"id": "grp", "signal": "TERM"}));
    let out = collect(&mut events, "grp", Duration::from_secs(10));
    assert_eq!(
        (out.exit_code, out.signal.as_deref()),
        (None, Some("SIGTERM"))
    );
    eventually(Duration::from_secs(5), "grandchildren gone", || {
        pids_with(&format!("sleep {marker}")).is_empty()
    });
}

#[test]
fn kill_accepts_every_signal_spelling() {
    let d = Daemon::start("host");
    for (i, (spelling, want)) in [
        (json!("SIGKILL"), "SIGKILL"),
        (json!("kill"), "SIGKILL"),
        (json!("INT"), "SIGINT"),
        (json!(15), "SIGTERM"),
        (json!(""), "SIGTERM"),
        (json!("NOT-A-SIGNAL"), "SIGTERM"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("k{i}");
        let mut events = d.connect();
        events.subscribe();
        d.call(
            "spawn",
            json!({"id": id, "name": "s", "command": "/bin/sleep", "args": ["30"]}),
        );
        d.call("kill", json!({"id": id, "signal": spelling}));
        let out = collect(&mut events, &id, Duration::from_secs(10));
        assert_eq!(out.signal.as_deref(), Some(want), "{spelling}");
    }
}

#[test]
fn unknown_ids_get_clear_errors_and_exited_ids_are_harmless() {
    let d = Daemon::start("host");
    let mut c = d.connect();
    let kill = c.request("kill", json!({"id": "never", "signal": "SIGTERM"}));
    assert_eq!(kill["error"], "Unknown process id: never");
    let stdin = c.request("writeStdin", json!({"id": "never", "data": "x"}));
    assert_eq!(stdin["error"], "Unknown process id: never");
    assert_eq!(
        c.call("isProcessRunning", json!({"id": "never"})),
        json!({"running": false})
    );
    run_in(&d, "s", "done", &["/bin/true"], json!({}));
    assert_eq!(c.call("kill", json!({"id": "done"})), json!({}));
    let late = c.request("writeStdin", json!({"id": "done", "data": "x"}));
    assert!(
        late["error"].as_str().unwrap().contains("not running"),
        "{late}"
    );
}

#[test]
fn duplicate_running_ids_are_refused() {
    let d = Daemon::start("host");
    d.call(
        "spawn",
        json!({"id": "dup", "name": "s", "command": "/bin/sleep", "args": ["30"]}),
    );
    let again = d.connect().request(
        "spawn",
        json!({"id": "dup", "name": "s", "command": "/bin/true"}),
    );
    assert_eq!(again["success"], false);
    assert!(again["error"].as_str().unwrap().contains("already running"));
    d.call("kill", json!({"id": "dup", "signal": "KILL"}));
}

#[test]
fn exit_is_reported_promptly_when_a_background_grandchild_keeps_the_pipe() {
    let d = Daemon::start("host");
    let marker = unique_duration();
    let started = Instant::now();
    let out = run_in(
        &d,
        "s",
        "bg",
        &[
            "/bin/sh",
            "-c",
            &format!("sleep {marker} & echo started"),
            "x",
        ],
        json!({}),
    );
    assert_eq!(out.stdout, "started\n");
    assert_eq!(out.exit_code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for pid in pids_with(&format!("sleep {marker}")) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
}

#[test]
fn a_character_split_across_writes_arrives_whole() {
    let d = Daemon::start("host");
    let out = run_in(
        &d,
        "s",
        "utf8",
        &[
            "/bin/sh",
            "-c",
            "printf '\\342\\202'; sleep 0.2; printf '\\254 done'",
        ],
        json!({}),
    );
    assert_eq!(out.stdout, "€ done");
    assert!(!out.stdout.contains('\u{fffd}'));
}

#[test]
fn stdin_is_forwarded_and_can_be_closed() {
    let d = Daemon::start("host");
    let out = cat_with_stdin(&d, &["line one\n", "line two ✓\n"]);
    assert_eq!(out.stdout, "line one\nline two ✓\n");
    assert_eq!(out.exit_code, Some(0));
}

#[test]
fn sdk_binary_runs_only_for_claude() {
    let d = Daemon::start("host");
    let sdk = d.home_file(
        ".config/Claude/claude-code-vm/2.1.87/claude",
        "#!/bin/sh\necho \"sdk claude $*\"\n",
    );
    std::fs::set_permissions(&sdk, std::fs::Permissions::from_mode(0o755)).unwrap();
    d.call(
        "installSdk",
        json!({"sdkSubpath": d.subpath(".config/Claude/claude-code-vm"), "version": "2.1.87"}),
    );
    let claude = run_in(
        &d,
        "s",
        "c1",
        &["/usr/local/bin/claude", "--version"],
        json!({}),
    );
    assert_eq!(claude.stdout, "sdk claude --version\n");
    let bare = run_in(&d, "s", "c2", &["claude", "-p"], json!({}));
    assert_eq!(bare.stdout, "sdk claude -p\n");
    let bash = run_in(&d, "s", "c3", &["bash", "-c", "echo plain bash"], json!({}));
    assert_eq!(bash.stdout, "plain bash\n");
    let hostile = d.connect().request(
        "installSdk",
        json!({"sdkSubpath": d.subpath(".config/Claude/claude-code-vm"), "version": "../../../../bin"}),
    );
    assert_eq!(hostile["success"], false);
}

#[test]
fn read_file_returns_base64_and_refuses_escapes() {
    let d = Daemon::start("host");
    let secret = d.root.path().join("outside-secret");
    std::fs::write(&secret, "id_rsa contents").unwrap();
    d.home_file("proj/notes.txt", "héllo\n");
    d.home_file("top.txt", "top");
    let proj = d.home.join("proj");
    std::os::unix::fs::symlink(&secret, proj.join("planted")).unwrap();
    std::os::unix::fs::symlink("notes.txt", proj.join("inner")).unwrap();
    std::os::unix::fs::symlink(d.home.join("top.txt"), proj.join("to-home")).unwrap();
    run_in(
        &d,
        "rs",
        "r",
        &["/bin/true"],
        json!({"additionalMounts": {"proj": {"path": d.subpath("proj"), "mode": "rw"}}}),
    );
    let read = |path: &str| d.call("readFile", json!({"processName": "rs", "filePath": path}));
    use base64::Engine as _;
    let decode = |v: &Value| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v["content"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(decode(&read("/sessions/rs/mnt/proj/notes.txt")), "héllo\n");
    // A host path inside a mount reads the same file.
    assert_eq!(
        decode(&read(&format!("{}/notes.txt", proj.display()))),
        "héllo\n"
    );
    let home = d.home.display();
    let denied = [
        ("/sessions/rs/mnt/proj/planted", "through a symlink"),
        ("/sessions/rs/mnt/proj/to-home", "through a symlink"),
        // No symlink is followed, not even one that stays inside.
        ("/sessions/rs/mnt/proj/inner", "through a symlink"),
        (
            "/sessions/rs/mnt/proj/../../top.txt",
            "Cannot translate guest path",
        ),
        ("/sessions/rs/mnt/nomount/x", "Cannot translate guest path"),
        // Host paths must lie inside one of the session's mounts.
        (&format!("{home}/top.txt"), "not inside a folder mounted"),
        (&format!("{home}/proj/planted"), "through a symlink"),
        ("/etc/passwd", "not inside a folder mounted"),
        ("relative/path", "Access denied"),
        ("/sessions/rs/mnt/proj/missing", "No such file"),
    ];
    for (path, fragment) in &denied {
        let r = read(path);
        let error = r["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path} was read: {r}"));
        assert!(error.contains(fragment), "{path}: {error}");
        assert!(r.get("content").is_none());
    }
}

#[test]
fn session_directories_are_real_and_housekept() {
    let d = Daemon::start("host");
    run_in(&d, "alpha", "a", &["/bin/true"], json!({}));
    let state = d.home.join(".local/share/cowork-vm-service/sessions");
    assert!(state.join("alpha/tmp").is_dir());
    std::fs::write(state.join("alpha/tmp/cache.bin"), vec![7u8; 50_000]).unwrap();
    let info = d.call("getSessionsDiskInfo", json!({"lowWaterBytes": 1}));
    let alpha = info["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "alpha")
        .unwrap()
        .clone();
    assert!(alpha["sizeBytes"].as_u64().unwrap() >= 50_000, "{info}");

    d.call(
        "spawn",
        json!({"id": "busy", "name": "beta", "command": "/bin/sleep", "args": ["30"]}),
    );
    let pruned = d.call(
        "pruneSessionCaches",
        json!({"onlyIfFreeBytesBelow": 0, "includeSessionTmp": true, "sessionTmpOlderThanSeconds": 0}),
    );
    assert_eq!(pruned["prunedSessions"], json!(["alpha"]));
    assert_eq!(pruned["skippedSessions"], json!(["beta"]));
    assert!(pruned["freedBytes"].as_u64().unwrap() >= 50_000);
    assert!(!state.join("alpha/tmp/cache.bin").exists());

    let deleted = d.call(
        "deleteSessionDirs",
        json!({"names": ["alpha", "beta", "../../x"]}),
    );
    assert_eq!(deleted["deleted"], json!(["alpha"]));
    assert!(
        deleted["errors"]["beta"]
            .as_str()
            .unwrap()
            .contains("running")
    );
    assert!(deleted["errors"]["../../x"].is_string());
    assert!(!state.join("alpha").exists());
    assert!(state.join("beta").exists());
    d.call("kill", json!({"id": "busy", "signal": "KILL"}));
}

#[test]
fn stop_vm_terminates_running_processes() {
    let d = Daemon::start("host");
    let mut events = d.connect();
    events.subscribe();
    d.call("startVM", json!({}));
    d.call(
        "spawn",
        json!({"id": "long", "name": "s", "command": "/bin/sleep", "args": ["60"]}),
    );
    d.call("stopVM", json!({}));
    let out = collect(&mut events, "long", Duration::from_secs(10));
    assert_eq!(out.signal.as_deref(), Some("SIGTERM"));
    assert_eq!(
        d.call("isGuestConnected", json!({})),
        json!({"connected": false})
    );
}
