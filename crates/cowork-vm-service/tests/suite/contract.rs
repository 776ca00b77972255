//! The client-visible contract, the same on every backend: output and exit
//! codes, signals, a missing command, stdin, kill of a process group,
//! running state, duplicate and unknown ids, UTF-8 across writes, mounts
//! and `readFile`. Each backend's test starts one daemon and runs every
//! check in sequence in one session (for the microVM: one VM generation).
//! The kvm backend's run is in `kvm.rs` (its tests share one VM slot).

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::harness::{Client, Daemon, Outcome, collect, unique_duration};

const SESSION: &str = "contract";

/// One backend's daemon and what may differ between backends.
pub struct Contract<'a> {
    pub daemon: &'a Daemon,
    /// Commands see mounts under `/sessions/<name>/mnt` and a `ro` mount
    /// is read-only (the host backend runs on the host's files as they
    /// are, at their own paths).
    pub isolating: bool,
    /// How long one call may take (a microVM boots on a session's first
    /// spawn).
    pub call_timeout: Duration,
}

impl Contract<'_> {
    /// Every check, in order.
    pub fn run_all(&self) {
        let d = self.daemon;
        d.home_file("contract-ro/readme.txt", "read only\n");
        d.home_file("contract-rw/notes.txt", "héllo\n");
        // Project files the user's tools run code from (see "Files" in the
        // README): read-only inside wherever processes are isolated.
        d.home_file("contract-rw/.git/config", "[core]\n");
        d.home_file("contract-rw/.git/HEAD", "ref: refs/heads/main\n");
        d.home_file("contract-rw/.envrc", "");
        // Both folders (and the files, writable on the host) the user's.
        d.home_dir("contract-ro");
        d.home_dir("contract-rw");
        self.output_and_exit_codes();
        self.signals_and_a_missing_command();
        self.stdin_is_forwarded_and_closed();
        self.kill_ends_the_process_group();
        self.ids_are_checked();
        self.a_character_split_across_writes_arrives_whole();
        self.mounts_and_read_file();
    }

    fn client(&self) -> Client {
        let c = self.daemon.connect();
        c.stream
            .set_read_timeout(Some(self.call_timeout))
            .expect("read timeout");
        c
    }

    fn mounts(&self) -> Value {
        json!({
            "rw": {"path": self.daemon.subpath("contract-rw"), "mode": "rw"},
            "ro": {"path": self.daemon.subpath("contract-ro"), "mode": "ro"},
        })
    }

    fn spawn_params(&self, id: &str, argv: &[&str]) -> Value {
        json!({
            "id": id,
            "name": SESSION,
            "command": argv[0],
            "args": argv[1..],
            "isResume": false,
            "additionalMounts": self.mounts(),
        })
    }

    /// Spawns `argv` and waits for its exit.
    fn run(&self, id: &str, argv: &[&str]) -> Outcome {
        let mut events = self.client();
        events.subscribe();
        self.client().call("spawn", self.spawn_params(id, argv));
        collect(&mut events, id, self.call_timeout)
    }

    fn sh(&self, id: &str, script: &str) -> Outcome {
        self.run(id, &["/bin/sh", "-c", script])
    }

    fn running(&self, id: &str) -> bool {
        self.client().call("isProcessRunning", json!({"id": id}))["running"] == true
    }

    fn output_and_exit_codes(&self) {
        let out = self.sh("out", "printf 'one\\ntwo'; echo oops >&2; exit 3");
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str(), out.exit_code),
            ("one\ntwo", "oops\n", Some(3)),
            "{out:?}"
        );
        let out = self.sh("zero", "true");
        assert_eq!(
            (out.exit_code, out.signal.as_deref()),
            (Some(0), None),
            "{out:?}"
        );
    }

    fn signals_and_a_missing_command(&self) {
        let out = self.sh("term", "kill -TERM $$");
        assert_eq!(
            (out.exit_code, out.signal.as_deref()),
            (None, Some("SIGTERM")),
            "{out:?}"
        );
        let out = self.run("missing", &["/nonexistent/command"]);
        assert_eq!(out.exit_code, Some(127), "{out:?}");
        assert!(
            out.stderr.contains("/nonexistent/command"),
            "the error names the command: {out:?}"
        );
    }

    fn stdin_is_forwarded_and_closed(&self) {
        let mut events = self.client();
        events.subscribe();
        let c = &mut self.client();
        c.call("spawn", self.spawn_params("cat", &["/bin/cat"]));
        c.call("writeStdin", json!({"id": "cat", "data": "one "}));
        c.call(
            "writeStdin",
            json!({"id": "cat", "data": "two\n", "eof": true}),
        );
        let out = collect(&mut events, "cat", self.call_timeout);
        assert_eq!(
            (out.stdout.as_str(), out.exit_code),
            ("one two\n", Some(0)),
            "{out:?}"
        );
    }

    fn kill_ends_the_process_group(&self) {
        // A background child in the same group, marked by its duration.
        let marker = unique_duration();
        let script = format!("sleep {marker} & exec sleep {marker}");
        let mut events = self.client();
        events.subscribe();
        self.client().call(
            "spawn",
            self.spawn_params("group", &["/bin/sh", "-c", &script]),
        );
        let started = Instant::now();
        while self
            .sh("ps1", "ps -eo args")
            .stdout
            .matches(&marker)
            .count()
            < 2
        {
            assert!(
                started.elapsed() < self.call_timeout,
                "both sleeps of the group never showed up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(self.running("group"));
        self.client()
            .call("kill", json!({"id": "group", "signal": "SIGTERM"}));
        let out = collect(&mut events, "group", self.call_timeout);
        assert_eq!(out.signal.as_deref(), Some("SIGTERM"), "{out:?}");
        assert!(!self.running("group"), "an exited process is not running");
        let started = Instant::now();
        loop {
            let left = self.sh("ps2", "ps -eo args").stdout;
            if !left.contains(&marker) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the background child outlived the kill of its group: {left}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ids_are_checked(&self) {
        let mut events = self.client();
        events.subscribe();
        self.client()
            .call("spawn", self.spawn_params("dup", &["/bin/sleep", "60"]));
        let again = self
            .client()
            .request("spawn", self.spawn_params("dup", &["/bin/true"]));
        assert_eq!(again["success"], false, "{again}");
        assert!(
            again["error"]
                .as_str()
                .is_some_and(|e| e.contains("already running")),
            "{again}"
        );
        self.client()
            .call("kill", json!({"id": "dup", "signal": "SIGKILL"}));
        let out = collect(&mut events, "dup", self.call_timeout);
        assert_eq!(out.signal.as_deref(), Some("SIGKILL"), "{out:?}");
        let unknown = self.client().request(
            "kill",
            json!({"id": "no-such-process", "signal": "SIGTERM"}),
        );
        assert_eq!(unknown["success"], false, "{unknown}");
        assert!(!self.running("no-such-process"));
    }

    fn a_character_split_across_writes_arrives_whole(&self) {
        // "é" is c3 a9: its two bytes are written 0.2 s apart.
        let out = self.sh("utf8", "printf '\\303'; sleep 0.2; printf '\\251\\n'");
        assert_eq!(out.stdout, "é\n", "{out:?}");
    }

    fn mounts_and_read_file(&self) {
        let d = self.daemon;
        let inside = format!("/sessions/{SESSION}/mnt");
        // Where a command sees the mounts: inside the sandbox or VM, or on
        // the host's own paths (the host backend).
        let (ro, rw) = if self.isolating {
            (format!("{inside}/ro"), format!("{inside}/rw"))
        } else {
            let at = |name: &str| d.home.join(name).display().to_string();
            (at("contract-ro"), at("contract-rw"))
        };
        let script = "cat \"$1/readme.txt\" && echo written > \"$2/new.txt\" && \
                      if echo x >> \"$1/readme.txt\" 2>/dev/null; then echo RO-WRITABLE; fi; \
                      if echo x >> \"$2/.git/config\" 2>/dev/null; then echo GIT-CONFIG-WRITABLE; fi; \
                      if touch \"$2/.git/hooks/pre-commit\" 2>/dev/null; then echo HOOK-PLANTED; fi; \
                      if echo x > \"$2/.envrc\" 2>/dev/null; then echo ENVRC-WRITABLE; fi; true";
        let out = self.run("mounts", &["/bin/sh", "-c", script, "sh", &ro, &rw]);
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        assert!(out.stdout.starts_with("read only\n"), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(d.home.join("contract-rw/new.txt")).ok(),
            Some("written\n".into()),
            "a rw mount's writes reach the host"
        );
        if self.isolating {
            for planted in [
                "RO-WRITABLE",
                "GIT-CONFIG-WRITABLE",
                "HOOK-PLANTED",
                "ENVRC-WRITABLE",
            ] {
                assert!(!out.stdout.contains(planted), "{planted}: {out:?}");
            }
            assert_eq!(
                std::fs::read_to_string(d.home.join("contract-rw/.git/config")).unwrap(),
                "[core]\n"
            );
            assert_eq!(
                std::fs::read_to_string(d.home.join("contract-ro/readme.txt")).unwrap(),
                "read only\n"
            );
        }
        let read = |path: String| {
            self.client().call(
                "readFile",
                json!({"processName": SESSION, "filePath": path}),
            )
        };
        let got = read(format!("{inside}/rw/notes.txt"));
        let content = got["content"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        assert_eq!(content.as_deref(), Some("héllo\n".as_bytes()), "{got}");
        let outside = read("/etc/passwd".into());
        assert!(outside.get("content").is_none(), "{outside}");
    }
}

#[test]
fn contract_on_the_host_backend() {
    let d = Daemon::start("host");
    Contract {
        daemon: &d,
        isolating: false,
        call_timeout: Duration::from_secs(20),
    }
    .run_all();
}

#[test]
fn contract_on_the_bwrap_backend_as_an_unprivileged_user() {
    let d = Daemon::start_as_user("bwrap");
    Contract {
        daemon: &d,
        isolating: true,
        call_timeout: Duration::from_secs(20),
    }
    .run_all();
}
