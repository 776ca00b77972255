//! The `kvm` backend, as the client sees it: a daemon run as the
//! unprivileged test account boots the microVM (TCG here: the account has
//! no access to /dev/kvm) and runs commands in it.
//!
//! VM time is bounded: each test is one daemon and a sequence of checks,
//! with one or two boots (startVM's VM, then the session's).
//!
//! Needs the guest kernel and virtiofsd, which `scripts/test.sh` prepares
//! (`cowork-vm-service setup-vm --dir /var/cache/cowork-vm-service-tests/guest`
//! and `cargo install virtiofsd`); missing, the tests fail saying so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::contract::Contract;
use super::harness::{
    Client, Daemon, Options, Outcome, collect, eventually, http_upstream,
    require_unprivileged_user, run_in_within,
};

/// Where scripts/test.sh prepares the guest (overridable).
const GUEST_DIR: &str = "/var/cache/cowork-vm-service-tests/guest";
/// The tests' XDG_CACHE_HOME (the initramfs is built once per test binary,
/// not per daemon: each test daemon has a fresh HOME).
const VM_CACHE: &str = "/tmp/cowork-test-vm-cache";
const VIRTIOFSD: &str = "/var/cache/cowork-vm-service-tests/virtiofsd/bin/virtiofsd";

fn guest_dir() -> PathBuf {
    let dir = std::env::var("COWORK_TEST_VM_GUEST_DIR").unwrap_or_else(|_| GUEST_DIR.into());
    assert!(
        Path::new(&dir).join("current").is_file(),
        "no guest kernel in {dir}: run `cowork-vm-service setup-vm --dir {dir}` (scripts/test.sh does)"
    );
    PathBuf::from(dir)
}

fn virtiofsd() -> PathBuf {
    let bin = std::env::var("COWORK_TEST_VIRTIOFSD").unwrap_or_else(|_| VIRTIOFSD.into());
    assert!(
        Path::new(&bin).is_file(),
        "virtiofsd missing at {bin}: `cargo install virtiofsd --locked --root {}` (scripts/test.sh does; \
         needs libseccomp-dev libcap-ng-dev)",
        Path::new(&bin)
            .parent()
            .and_then(Path::parent)
            .map_or("DIR".into(), |p| p.display().to_string())
    );
    PathBuf::from(bin)
}

/// Held by a test while its VMs run: one test's VMs at a time (across
/// test processes too, for nextest), so TCG keeps at most about one core
/// of the CI machine busy and the suite's timing-sensitive tests are not
/// starved.
struct VmSlot(#[allow(dead_code)] std::fs::File);

fn vm_slot() -> VmSlot {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/cowork-test-vm.lock")
        .unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
    VmSlot(file)
}

fn start() -> Daemon {
    let (guest, vfsd) = (guest_dir(), virtiofsd());
    let cache = Path::new(VM_CACHE);
    let user = require_unprivileged_user();
    std::fs::create_dir_all(cache).unwrap();
    if let Some(u) = &user {
        std::os::unix::fs::chown(cache, Some(u.uid), Some(u.gid)).unwrap();
    }
    Daemon::start_with(Options {
        backend: Some("kvm"),
        user,
        env: vec![
            ("XDG_CACHE_HOME".into(), cache.display().to_string()),
            ("COWORK_VM_GUEST_DIR".into(), guest.display().to_string()),
            ("COWORK_VM_VIRTIOFSD_BIN".into(), vfsd.display().to_string()),
        ],
        ..Default::default()
    })
}

/// How long a call may take here: `startVM` and a session's first spawn
/// boot a VM, which a loaded CI machine may take well over the harness's
/// 20 s read timeout to do (the daemon's own limit is 60 s).
const SLOW_CALL: Duration = Duration::from_secs(90);

/// `Daemon::call` with [`SLOW_CALL`].
fn call_slow(d: &Daemon, method: &str, params: Value) -> Value {
    let mut c = d.connect();
    c.stream.set_read_timeout(Some(SLOW_CALL)).unwrap();
    c.call(method, params)
}

/// `harness::run_in` with [`SLOW_CALL`] for the spawn.
fn run_vm(d: &Daemon, session: &str, id: &str, argv: &[&str], extra: Value) -> Outcome {
    run_in_within(d, session, id, argv, extra, Some(SLOW_CALL))
}

fn sh(d: &Daemon, id: &str, script: &str, extra: Value) -> Outcome {
    run_vm(d, "s", id, &["/bin/sh", "-c", script], extra)
}

/// Processes (pid, command line) whose command line mentions `needle` and
/// this daemon's private directory.
fn helpers_of(d: &Daemon, needle: &str) -> Vec<(i32, String)> {
    let root = d.root.path().to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) && cmdline.contains(&root) && !cmdline.contains("vm-guard") {
            found.push((pid, cmdline));
        }
    }
    found
}

/// `startVM` with a subscription: returns the events it produced.
fn start_vm(d: &Daemon, events: &mut Client) -> Vec<Value> {
    let started = Instant::now();
    call_slow(d, "startVM", json!({"memoryGB": 1, "cpuCount": 1}));
    eprintln!("kvm: startVM returned after {:?}", started.elapsed());
    let mut seen = Vec::new();
    // Everything startVM emitted is queued before its reply.
    while let Some(e) = events.try_recv_for(Duration::from_millis(300)) {
        seen.push(e);
    }
    seen
}

trait TryRecvFor {
    fn try_recv_for(&mut self, t: Duration) -> Option<Value>;
}

impl TryRecvFor for Client {
    fn try_recv_for(&mut self, t: Duration) -> Option<Value> {
        self.stream.set_read_timeout(Some(t)).ok()?;
        let got = self.try_recv();
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(20)));
        got
    }
}

#[test]
fn kvm_vm_runs_the_client_contract() {
    let _slot = vm_slot();
    let d = start();
    d.home_file("secret.txt", "host secret\n");
    d.home_dir("proj");
    d.home_file("ref/readme.txt", "reference\n");
    let mounts = json!({
        "proj": {"path": d.subpath("proj"), "mode": "rw"},
        "ref": {"path": d.subpath("ref"), "mode": "ro"},
    });
    let mut events = d.connect();
    events.subscribe();

    // Boot: the reference's KVM-path steps, then connected.
    let seen = start_vm(&d, &mut events);
    let steps: Vec<(String, String)> = seen
        .iter()
        .filter(|e| e["type"] == "startupStep")
        .map(|e| {
            (
                e["step"].as_str().unwrap().into(),
                e["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("prepare_session", "running"),
        ("start_vm", "running"),
        ("wait_for_guest", "running"),
        ("wait_for_guest", "completed"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(steps, want, "events: {seen:?}");
    assert_eq!(
        call_slow(&d, "isGuestConnected", json!({}))["connected"],
        true
    );
    assert_eq!(call_slow(&d, "isRunning", json!({}))["running"], true);
    let info = call_slow(&d, "getDaemonInfo", json!({}));
    assert_eq!(info["backend"], "kvm", "{info}");
    let warnings = info["warnings"].to_string();
    assert!(warnings.contains("VM accelerator: tcg"), "{info}");
    assert!(
        warnings.contains("/dev/kvm"),
        "the reason names /dev/kvm: {info}"
    );

    // Spawn and output, the layout, mount modes, the host's home hidden.
    let host_home = d.home.display().to_string();
    let script = format!(
        "echo hello; id -u; pwd; ls /sessions/s/mnt; \
         echo written > /sessions/s/mnt/proj/new.txt; cat /sessions/s/mnt/ref/readme.txt; \
         if echo x > /sessions/s/mnt/ref/readme.txt; then echo REF-WRITABLE; fi; \
         if touch /sessions/s/mnt/ref/other 2>/dev/null; then echo REF-CREATABLE; fi; \
         if touch /usr/escape 2>/dev/null; then echo USR-WRITABLE; fi; \
         if test -e {host_home}/secret.txt; then echo HOME-VISIBLE; fi; \
         if ls {host_home} 2>/dev/null | grep -q secret; then echo HOME-LISTABLE; fi; \
         echo persisted > /tmp/marker; \
         touch \"$HOME/.written\" && echo home-writable"
    );
    let started = Instant::now();
    let out = sh(&d, "layout", &script, json!({"additionalMounts": mounts}));
    eprintln!(
        "kvm: first session spawn took {:?} (boots the session's VM)",
        started.elapsed()
    );
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "hello", "{out:?}");
    assert_ne!(lines[1], "0", "processes run unprivileged: {out:?}");
    assert_eq!(lines[2], "/sessions/s/mnt/proj", "{out:?}");
    assert_eq!(&lines[3..5], ["proj", "ref"], "{out:?}");
    assert_eq!(lines[5], "reference", "{out:?}");
    for bad in [
        "REF-WRITABLE",
        "REF-CREATABLE",
        "USR-WRITABLE",
        "HOME-VISIBLE",
        "HOME-LISTABLE",
    ] {
        assert!(!out.stdout.contains(bad), "{bad}: {out:?}");
    }
    assert!(
        out.stdout.contains("home-writable"),
        "an empty $HOME of the user's: {out:?}"
    );
    assert!(
        !d.home.join(".written").exists(),
        "the guest's $HOME is not the host's"
    );
    assert_eq!(
        std::fs::read_to_string(d.home.join("proj/new.txt")).unwrap(),
        "written\n",
        "a rw mount's writes reach the host"
    );

    // The guest's agent confined itself as bwrap's does, and says how far
    // the guest kernel goes (Debian 6.1: Landlock ABI 2 of the 7 wanted).
    let info = call_slow(&d, "getDaemonInfo", json!({}));
    let confinement = &info["confinement"];
    assert_eq!(confinement["seccomp"]["installed"], true, "{info}");
    assert!(
        confinement["landlock"]["kernel_abi"].as_u64().unwrap_or(0) >= 1,
        "{info}"
    );

    // /tmp persists across spawns (and is the session's own directory).
    let out = sh(
        &d,
        "tmp",
        "cat /tmp/marker",
        json!({"additionalMounts": mounts}),
    );
    assert_eq!(out.stdout, "persisted\n", "{out:?}");

    // Output for longer than three heartbeats: the agent's answers queue
    // behind its output, and the VM must not be taken for hung (restarting
    // it would kill the process).
    let out = sh(
        &d,
        "flood",
        "timeout 9 yes; echo rc=$?",
        json!({"additionalMounts": mounts}),
    );
    let tail = &out.stdout[out.stdout.len().saturating_sub(16)..];
    assert_eq!(
        (
            out.exit_code,
            out.signal.as_deref(),
            tail.ends_with("y\nrc=124\n")
        ),
        (Some(0), None, true),
        "the flood runs to its end: {} bytes of stdout ending {tail:?}, stderr {:?}",
        out.stdout.len(),
        out.stderr
    );

    // The contract every backend keeps (its own session: a second VM).
    Contract {
        daemon: &d,
        isolating: true,
        call_timeout: SLOW_CALL,
    }
    .run_all();

    // A mount added to the running session: a new VM generation (one
    // boot); the new mount is there, the earlier ones too.
    d.home_file("added/note.txt", "added later\n");
    let mut more = mounts.clone();
    more["added"] = json!({"path": d.subpath("added"), "mode": "ro"});
    let started = Instant::now();
    let out = sh(
        &d,
        "gen2",
        "ls /sessions/s/mnt; cat /sessions/s/mnt/added/note.txt; cat /tmp/marker",
        json!({"additionalMounts": more}),
    );
    eprintln!(
        "kvm: spawn with an added mount took {:?} (a new generation)",
        started.elapsed()
    );
    assert_eq!(
        out.stdout, "added\nproj\nref\nadded later\npersisted\n",
        "{out:?}"
    );
    assert!(
        d.log().contains("VM generation"),
        "the generation is logged"
    );

    // stopVM powers the guest off.
    assert!(
        !helpers_of(&d, "qemu-system-x86_64").is_empty(),
        "a VM runs"
    );
    call_slow(&d, "stopVM", json!({}));
    assert_eq!(
        call_slow(&d, "isGuestConnected", json!({}))["connected"],
        false
    );
    eventually(
        Duration::from_secs(10),
        "QEMU and virtiofsd gone after stopVM",
        || {
            helpers_of(&d, "qemu-system-x86_64").is_empty()
                && helpers_of(&d, "virtiofsd").is_empty()
        },
    );
}

#[test]
fn kvm_network_restart_of_a_frozen_guest_and_death_with_the_daemon() {
    let _slot = vm_slot();
    let mut d = start();
    d.home_dir("w");
    let mounts = json!({"w": {"path": d.subpath("w"), "mode": "rw"}});
    let allowed = http_upstream("127.0.0.2", "hello from upstream");
    let denied = http_upstream("127.0.0.3", "must not be reached");
    let extra = json!({"additionalMounts": mounts, "allowedDomains": ["127.0.0.2"]});
    let mut events = d.connect();
    events.subscribe();
    call_slow(&d, "startVM", json!({}));

    // The guest has no network device; its only way out is the proxy,
    // carried over the channel, under the spawn's allowlist.
    let script = format!(
        "ip -o link | grep -vc ': lo:' || true; \
         echo http=$(curl -s --max-time 10 http://{allowed}/); \
         echo socks=$(curl -s --max-time 10 --socks5-hostname 127.0.0.1:1080 http://{allowed}/); \
         echo denied=$(curl -s --max-time 10 -o /dev/null -w '%{{http_code}}' http://{denied}/); \
         echo direct=$(curl -s --max-time 3 --noproxy '*' http://{allowed}/ || echo failed); \
         env | grep -c '^HTTPS_PROXY=http://127.0.0.1:3128$'"
    );
    let out = run_vm(&d, "s", "net", &["/bin/sh", "-c", &script], extra.clone());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "0",
            "http=hello from upstream",
            "socks=hello from upstream",
            "denied=403",
            "direct=failed",
            "1"
        ],
        "{out:?}"
    );
    let mut sub = d.connect();
    sub.subscribe();
    call_slow(
        &d,
        "spawn",
        json!({"id": "long", "name": "s", "command": "/bin/sh",
               "args": ["-c", "echo up; sleep 600"], "additionalMounts": mounts,
               "allowedDomains": ["127.0.0.2"]}),
    );
    sub.wait_event(Duration::from_secs(60), |e| {
        e["id"] == "long" && e["type"] == "stdout"
    });
    // Freeze the guest: its agent stops answering.
    eventually(Duration::from_secs(10), "startVM's VM retired", || {
        helpers_of(&d, "qemu-system-x86_64").len() == 1
    });
    // Meanwhile a daemon of another version, sharing the cache, replaced
    // the initramfs with its own: the restart must not need ours on disk.
    let archives = Path::new(VM_CACHE).join("cowork-vm-service/guest/initramfs");
    for entry in std::fs::read_dir(&archives).unwrap().flatten() {
        std::fs::remove_file(entry.path()).unwrap();
    }
    let qemus = helpers_of(&d, "qemu-system-x86_64");
    let frozen = rustix::process::Pid::from_raw(qemus[0].0).unwrap();
    rustix::process::kill_process(frozen, rustix::process::Signal::STOP).unwrap();
    let out = collect(&mut sub, "long", Duration::from_secs(30));
    assert_eq!(
        out.signal.as_deref(),
        Some("SIGKILL"),
        "the frozen VM's process ended: {out:?}"
    );
    events.wait_event(Duration::from_secs(10), |e| {
        e["type"] == "networkStatus" && e["status"] == "disconnected"
    });
    events.wait_event(Duration::from_secs(60), |e| {
        e["type"] == "networkStatus" && e["status"] == "connected"
    });
    assert!(
        !helpers_of(&d, "qemu-system-x86_64")
            .iter()
            .any(|(p, _)| *p == qemus[0].0),
        "the frozen QEMU was killed"
    );
    let out = run_vm(&d, "s", "after", &["/bin/echo", "again"], extra);
    assert_eq!(
        (out.stdout.as_str(), out.exit_code),
        ("again\n", Some(0)),
        "{out:?}"
    );
    assert!(
        d.log().contains("missed 3 heartbeats"),
        "the restart is logged"
    );

    // kill -9 of the daemon takes QEMU and every virtiofsd with it.
    assert!(!helpers_of(&d, "virtiofsd").is_empty());
    d.signal(rustix::process::Signal::KILL);
    let _ = d.wait_exit(Duration::from_secs(5));
    eventually(Duration::from_secs(10), "no QEMU or virtiofsd left", || {
        helpers_of(&d, "qemu-system-x86_64").is_empty() && helpers_of(&d, "virtiofsd").is_empty()
    });
}
