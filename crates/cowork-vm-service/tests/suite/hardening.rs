//! The kernel-level layers of a session sandbox, tried from inside: no
//! privileges to gain, the seccomp deny list, Landlock behind the mount
//! table, and the session's resource limits.
//!
//! The daemon runs as the unprivileged test account, as users run it,
//! except for the memory and process limits: those need cgroups the daemon
//! can write, which here means root on a cgroup v1 host (CI). Run as
//! anyone else, those tests check instead that the daemon says the limits
//! are not enforced, which is what such a user gets.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::harness::{
    Client, Daemon, Outcome, TestUser, is_root, require_unprivileged_user, run_in,
};

pub(super) fn start(env: &[(&str, &str)]) -> Daemon {
    start_as(require_unprivileged_user(), env)
}

fn start_as(user: Option<TestUser>, env: &[(&str, &str)]) -> Daemon {
    Daemon::bwrap_as(user, env)
}

fn sh(d: &Daemon, session: &str, id: &str, script: &str, extra: Value) -> Outcome {
    run_in(d, session, id, &["/bin/sh", "-c", script], extra)
}

/// A folder `proj` of the daemon's HOME, mounted read-write as the client
/// mounts a project.
fn project(d: &Daemon) -> Value {
    d.home_dir("proj");
    json!({"additionalMounts": {"proj": {"path": d.subpath("proj"), "mode": "rw"}}})
}

/// The `syscall_probe` example, which `cargo test` builds next to the test
/// binary's directory (`target/<profile>/examples/`).
fn probe_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test binary>");
    let probe = profile_dir.join("examples/syscall_probe");
    assert!(
        probe.is_file(),
        "{} is missing: build it with `cargo test` (which builds the examples) or \
         `cargo build --example syscall_probe`",
        probe.display()
    );
    probe
}

/// Copies the probe into the mounted project folder, owned by the
/// daemon's user; returns its path inside the sandbox of session `s`.
fn stage_probe(d: &Daemon) -> String {
    let dest = d.home.join("proj/syscall_probe");
    std::fs::copy(probe_binary(), &dest).expect("copy syscall_probe");
    if let Some(u) = &d.user {
        std::os::unix::fs::chown(&dest, Some(u.uid), Some(u.gid)).expect("chown probe");
    }
    "/sessions/s/mnt/proj/syscall_probe".into()
}

/// `key: value` lines as a map.
fn fields(text: &str, sep: char) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(sep))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn sandbox_blocks_privilege_gain_every_process_is_filtered_and_capability_free() {
    let d = start(&[]);
    let out = sh(&d, "s", "status", "cat /proc/self/status", json!({}));
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let status = fields(&out.stdout, ':');
    assert_eq!(status["Seccomp"], "2", "filter mode: {}", out.stdout);
    let filters = if cfg!(target_arch = "x86_64") { 3 } else { 2 };
    assert_eq!(
        status["Seccomp_filters"],
        filters.to_string(),
        "{}",
        out.stdout
    );
    assert_eq!(status["NoNewPrivs"], "1", "{}", out.stdout);
    for caps in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&status[caps], 16),
            Ok(0),
            "{caps}: {}",
            out.stdout
        );
    }
    // And the daemon says what was applied.
    let info = d.call("getDaemonInfo", json!({}));
    let seccomp = &info["confinement"]["seccomp"];
    assert_eq!(seccomp["installed"], true, "{info}");
    assert_eq!(seccomp["programs"], filters, "{info}");
}

#[test]
fn sandbox_blocks_kernel_attack_surface_syscalls_but_not_debuggers() {
    let d = start(&[]);
    let mounts = project(&d);
    let probe = stage_probe(&d);
    let out = run_in(&d, "s", "probe", &[&probe], mounts);
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let lines = fields(&out.stdout, ' ');
    // Every syscall the probe calls is on the deny list, with the
    // arguments that make an unfiltered call fail harmlessly (EFAULT,
    // EINVAL, EBADF...): only the filter answers EPERM to all of them.
    let mut checked = 0;
    for (line, answer) in &lines {
        let want = match line.as_str() {
            "ptrace-child" | "spawn" | "Seccomp:" | "Seccomp_filters:" | "NoNewPrivs:"
            | "CapEff:" => continue,
            // glibc falls back to clone on ENOSYS; x32 is refused as a
            // kernel without it would.
            "clone3" | "x32-getpid" => "ENOSYS",
            // The read-only query stays allowed.
            "personality-query" => "0",
            _ => "EPERM",
        };
        if answer == "absent" {
            // Not a syscall of this architecture (iopl, ioperm... on aarch64).
            let x86_only = ["iopl", "ioperm", "uselib", "_sysctl"];
            assert!(
                !cfg!(target_arch = "x86_64") && x86_only.contains(&line.as_str()),
                "{line} absent"
            );
            continue;
        }
        assert_eq!(answer, want, "{line}: {}", out.stdout);
        checked += 1;
    }
    assert!(checked >= 50, "{checked} lines: {}", out.stdout);
    for required in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
        "add_key",
        "request_key",
        "mount",
        "umount2",
        "open_tree",
        "fsconfig",
        "mount_setattr",
        "unshare",
        "unshare-hi",
        "clone",
        "clone-hi",
        "clone3",
        "setns",
        "socket-vsock",
        "socket-vsock-hi",
        "ioctl-tiocsti",
        "ioctl-tiocsti-hi",
    ] {
        assert!(lines.contains_key(required), "{required}: {}", out.stdout);
    }
    // What the filter must leave alone: a debugger attaching to its
    // child, and starting programs (posix_spawn tries clone3 first).
    assert_eq!(lines["ptrace-child"], "ok", "{}", out.stdout);
    assert_eq!(lines["spawn"], "ok", "{}", out.stdout);
}

#[test]
fn sandbox_blocks_writes_through_a_bind_writable_by_mistake() {
    // The sandbox's own skeleton is writable as far as permissions go: a
    // tmpfs root owned by the sandbox's uid, and the directories bwrap made
    // on it (`/sessions/<s>/mnt` among them). Nothing should ever be
    // written there; Landlock is what refuses it.
    let d = start(&[]);
    let mounts = project(&d);
    let out = sh(
        &d,
        "s",
        "wall",
        "id -u; stat -c '%u %a' / /sessions/s/mnt; \
         for f in /planted /sessions/s/mnt/planted /sessions/s/planted; do \
           if ( : > $f ) 2>/dev/null; then echo \"WROTE $f\"; else echo \"refused $f\"; fi; \
         done; \
         if mkdir /sessions/s/mnt/evil 2>/dev/null; then echo WROTE-DIR; fi; \
         if ln -s /etc/passwd /sessions/s/mnt/link 2>/dev/null; then echo WROTE-LINK; fi; \
         echo ok > /sessions/s/mnt/proj/allowed && cat /sessions/s/mnt/proj/allowed; \
         ( : > /planted ) 2>&1 | sed 's/.*: //'",
        mounts,
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.len() >= 8, "{out:?}");
    let uid = lines[0];
    // Writable by permissions: owned by our uid with the owner's w bit.
    for (i, what) in [(1, "/"), (2, "/sessions/s/mnt")] {
        let (owner, mode) = lines[i].split_once(' ').expect("stat line");
        assert_eq!(owner, uid, "{what} is ours: {out:?}");
        let owner_bits = u32::from_str_radix(mode, 8).expect("mode") >> 6 & 7;
        assert!(owner_bits & 2 != 0, "{what} is writable by mode: {out:?}");
    }
    for f in ["/planted", "/sessions/s/mnt/planted", "/sessions/s/planted"] {
        assert!(out.stdout.contains(&format!("refused {f}")), "{f}: {out:?}");
    }
    assert!(!out.stdout.contains("WROTE"), "{out:?}");
    // The project mount stays a work area.
    assert!(out.stdout.contains("\nok\n"), "{out:?}");
    // EACCES: Landlock's answer (a read-only mount would say EROFS).
    assert_eq!(lines.last(), Some(&"Permission denied"), "{out:?}");
}

#[test]
fn sandbox_blocks_filling_host_memory_through_dev_shm() {
    // /dev/shm was an unsized tmpfs (half the host's RAM); now it is a
    // quarter of the session's memory.
    let d = start(&[]);
    d.call("configure", json!({"memoryMB": 256}));
    let out = sh(
        &d,
        "s",
        "shm",
        "stat -f -c '%S %b' /dev/shm; \
         if head -c 80M /dev/zero > /dev/shm/fill 2>/dev/null; then echo FILLED; else echo full; fi; \
         stat -c %s /dev/shm/fill; rm -f /dev/shm/fill",
        json!({}),
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    let (block, blocks) = lines[0].split_once(' ').expect("statfs line");
    let size: u64 = block.parse::<u64>().unwrap() * blocks.parse::<u64>().unwrap();
    assert_eq!(size, 64 << 20, "a quarter of 256 MiB: {out:?}");
    assert_eq!(lines[1], "full", "{out:?}");
    assert!(
        lines[2].parse::<u64>().unwrap() <= 64 << 20,
        "at most the cap was written: {out:?}"
    );
}

/// The warning of a daemon that cannot enforce limits.
pub(super) const NOT_ENFORCED: &str = "session limits (memory, CPU, processes) are not enforced";

/// A daemon that enforces session limits: as root, one running as root
/// (the sandbox is then uid 0 without capabilities), which must say
/// nothing about limits not being enforced. As anyone else there is none:
/// this checks that the daemon says so instead, and returns `None`.
fn limits_daemon(env: &[(&str, &str)]) -> Option<Daemon> {
    let d = start_as(None, env);
    let info = d.call("getDaemonInfo", json!({}));
    let warning = info["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|w| w.contains(NOT_ENFORCED))
        .map(str::to_string);
    if is_root() {
        assert_eq!(
            warning, None,
            "a root daemon on this host should enforce session limits (cgroup v1): {info}"
        );
        Some(d)
    } else {
        let warning = warning.unwrap_or_else(|| {
            panic!("an unprivileged daemon must say limits are not enforced: {info}")
        });
        assert!(
            warning.len() > NOT_ENFORCED.len() + 10,
            "with the reason: {warning}"
        );
        None
    }
}

/// The exit event of process `id`, with what it printed before.
fn exit_event(events: &mut Client, id: &str, timeout: Duration) -> (String, Value) {
    let mut stdout = String::new();
    let start = Instant::now();
    while start.elapsed() < timeout {
        let Some(e) = events.try_recv() else { break };
        if e["id"] != id {
            continue;
        }
        match e["type"].as_str() {
            Some("stdout") | Some("stderr") => stdout.push_str(e["data"].as_str().unwrap_or("")),
            Some("exit") => return (stdout, e),
            _ => {}
        }
    }
    panic!("no exit event for {id} within {timeout:?}: {stdout}");
}

pub(super) fn spawn(d: &Daemon, session: &str, id: &str, argv: &[&str]) {
    d.call(
        "spawn",
        json!({"id": id, "name": session, "command": argv[0], "args": &argv[1..]}),
    );
}

#[test]
fn sandbox_blocks_exhausting_host_memory() {
    let Some(d) = limits_daemon(&[]) else { return };
    d.call("configure", json!({"memoryMB": 256}));
    let mut events = d.connect();
    events.subscribe();
    // 512 MiB of touched memory, twice the session's limit.
    spawn(
        &d,
        "s",
        "hog",
        &[
            "/usr/bin/python3",
            "-c",
            "b = b'x' * (512 << 20); print('allocated', len(b))",
        ],
    );
    let (printed, exit) = exit_event(&mut events, "hog", Duration::from_secs(60));
    assert!(!printed.contains("allocated"), "{printed} {exit}");
    assert_eq!(
        exit["signal"], "SIGKILL",
        "killed by the OOM killer: {exit}"
    );
    assert!(
        exit["oomKillCount"].as_u64().is_some_and(|n| n >= 1),
        "the exit event counts the OOM kill: {exit}"
    );
    // The session lives on, and a process that stays within the limit
    // carries no OOM count.
    spawn(&d, "s", "small", &["/bin/sh", "-c", "echo fine"]);
    let (printed, exit) = exit_event(&mut events, "small", Duration::from_secs(20));
    assert_eq!(printed, "fine\n", "{exit}");
    assert_eq!(exit["exitCode"], 0, "{exit}");
    assert!(exit.get("oomKillCount").is_none(), "{exit}");
}

/// Forks children that sleep until the first one that fails, prints how
/// many it got, and holds them until killed.
const FORK_BOMB: &str = "import os, sys, time\n\
    got = 0\n\
    try:\n\
    \x20   for _ in range(1000):\n\
    \x20       if os.fork() == 0:\n\
    \x20           time.sleep(120)\n\
    \x20           os._exit(0)\n\
    \x20       got += 1\n\
    except OSError as e:\n\
    \x20   print('refused', e.errno)\n\
    print('forked', got, flush=True)\n\
    time.sleep(120)\n";

#[test]
fn sandbox_blocks_fork_bombs_at_the_process_limit() {
    let Some(d) = limits_daemon(&[("COWORK_VM_PIDS_MAX", "64")]) else {
        return;
    };
    let mut events = d.connect();
    events.subscribe();
    spawn(&d, "bomb", "bomb", &["/usr/bin/python3", "-c", FORK_BOMB]);
    let mut printed = String::new();
    let start = Instant::now();
    while !printed.contains("forked") {
        assert!(start.elapsed() < Duration::from_secs(60), "{printed}");
        let Some(e) = events.try_recv() else {
            panic!("event stream ended: {printed}")
        };
        if e["id"] == "bomb" && e["type"] == "stdout" {
            printed.push_str(e["data"].as_str().unwrap_or(""));
        }
        assert!(e["type"] != "exit" || e["id"] != "bomb", "{printed} {e}");
    }
    assert!(
        printed.contains(&format!("refused {}", libc::EAGAIN)),
        "fork failed with EAGAIN: {printed}"
    );
    let forked: u64 = printed
        .lines()
        .find_map(|l| l.strip_prefix("forked "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a count");
    assert!(forked < 64, "at most the limit: {printed}");
    assert!(
        forked > 32,
        "the limit, not something else, stopped it: {printed}"
    );
    // While the bomb holds its session at the limit, the daemon and other
    // sessions answer.
    let info = d.call("getDaemonInfo", json!({}));
    assert_eq!(info["backend"], "bwrap");
    let other = sh(&d, "other", "alive", "echo alive", json!({}));
    assert_eq!(other.stdout, "alive\n", "{other:?}");
    // Nor can the client start more in the full session: the spawn
    // fails as a process that could not start.
    spawn(&d, "bomb", "more", &["/bin/true"]);
    let (printed, exit) = exit_event(&mut events, "more", Duration::from_secs(20));
    assert_eq!(
        exit["exitCode"], 126,
        "no room in the bomb's session: {printed} {exit}"
    );
    assert!(
        printed.contains("Resource temporarily unavailable"),
        "{printed} {exit}"
    );
    d.call("kill", json!({"id": "bomb", "signal": "SIGKILL"}));
    let (_, exit) = exit_event(&mut events, "bomb", Duration::from_secs(20));
    assert_eq!(exit["signal"], "SIGKILL", "{exit}");
}
