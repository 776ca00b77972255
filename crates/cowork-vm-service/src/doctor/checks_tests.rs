//! The doctor against faked machines: each case builds [`Facts`] and checks
//! the lines a user would read and the exit status.

use cowork_policy::fs_view::FakeFs;
use cowork_policy::selection::{KvmRequirements, ProbeFailure};
use serde_json::json;

use super::super::client::ClientFacts;
use super::super::facts::{CgroupLimits, DeviceAccess, Facts, LandlockSupport, SocketFacts};
use super::diagnose;

/// A healthy Debian-like machine: bwrap works, KVM absent, cgroup v2
/// (so no session limits), no config, no daemon.
fn healthy() -> Facts {
    Facts {
        backend_override: None,
        bwrap_path: Some("/usr/bin/bwrap".into()),
        bwrap_version: Some("bubblewrap 0.8.0".into()),
        bwrap_probe: Some(Ok(())),
        sysctls: vec![("max_user_namespaces".into(), "63000".into())],
        landlock: LandlockSupport::Abi(7),
        seccomp: true,
        arch: "x86_64".into(),
        cgroup: CgroupLimits {
            detected: Err("the daemon's cgroup v2 \
                 /sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-claude.scope \
                 also holds 4 other processes (a cgroup with processes in it cannot give \
                 controllers to session cgroups)"
                .into()),
            unenforced: None,
            v1_hierarchies: false,
            root: false,
        },
        kvm: KvmRequirements::default(),
        dev_kvm: DeviceAccess::Missing,
        vm: Default::default(),
        ovmf: None,
        home: "/home/u".into(),
        config_file: "/home/u/.config/Claude/claude_desktop_linux_config.json".into(),
        config_text: None,
        socket_path: "/run/user/1000/cowork-vm-service.sock".into(),
        socket: SocketFacts::Absent,
        own_exe: Some("/usr/bin/cowork-vm-service".into()),
        log_file: "/home/u/.config/Claude/logs/cowork_vm_daemon.log".into(),
        log_lifecycle: vec![],
        sessions_dir: "/home/u/.local/share/cowork-vm-service/sessions".into(),
        sessions_bytes: Some(5 << 20),
        free_bytes: Some(100 << 30),
        home_name_max: Some(255),
        apparmor_label: None,
        client: ClientFacts {
            env_file: "/home/u/.config/claude-desktop-debian/environment".into(),
            text: Some(Ok(
                "COWORK_VM_BACKEND=bwrap\nCOWORK_NODE_PATH=/usr/bin/cowork-vm-service\n".into(),
            )),
            node_path_resolved: Some("/usr/bin/cowork-vm-service".into()),
            node_path_executable: true,
        },
    }
}

fn kvm_ready(f: &mut Facts) {
    f.dev_kvm = DeviceAccess::ReadWrite;
    f.kvm = KvmRequirements {
        dev_kvm_rw: true,
        qemu: Some("/usr/bin/qemu-system-x86_64".into()),
        virtiofsd: Some("/usr/libexec/virtiofsd".into()),
        vhost_vsock: false,
    };
}

fn apparmor_blocked(f: &mut Facts) {
    f.bwrap_probe = Some(Err(ProbeFailure {
        message: "bwrap exited with status 1".into(),
        stderr: "bwrap: setting up uid map: Permission denied".into(),
    }));
    f.sysctls
        .push(("apparmor_restrict_unprivileged_userns".into(), "1".into()));
}

fn fs() -> FakeFs {
    FakeFs::new()
        .dir("/home/u/proj")
        .dir("/opt/tools")
        .dir("/usr/lib/x")
}

/// (case, facts change, expected backend, FAILs, lines that must appear)
type Case = (
    &'static str,
    fn(&mut Facts),
    &'static str,
    u8,
    &'static [&'static str],
);

#[test]
fn machines_table() {
    let cases: &[Case] = &[
        (
            "healthy",
            |_| {},
            "bwrap",
            0,
            &[
                "[PASS] backend: bwrap (bubblewrap at /usr/bin/bwrap works)",
                "[PASS] network: enforced (each sandbox's only way out is the allowlist proxy)",
                "[PASS] bwrap: /usr/bin/bwrap (bubblewrap 0.8.0)",
                "[PASS] Landlock ABI 7: every sandbox gets its Landlock rules",
                "[PASS] seccomp: every sandbox installs the deny list (3 filters,",
                "[WARN] session limits (memory, CPU, processes) are not enforced: the daemon's cgroup v2",
                "KVM (optional: only for COWORK_VM_BACKEND=kvm)",
                "[INFO] /dev/kvm is missing",
                "[INFO] qemu-system-x86_64 not found on PATH",
                "none (defaults apply)",
                "[PASS] socket /run/user/1000/cowork-vm-service.sock: no daemon running",
                "5.0 MiB, 100.0 GiB free",
            ],
        ),
        (
            "bwrap missing, no KVM",
            |f| {
                f.bwrap_path = None;
                f.bwrap_probe = None;
                f.bwrap_version = None;
            },
            "host",
            2,
            &[
                "[FAIL] backend: host: no isolation available (bubblewrap is not installed",
                "[WARN] network: the allowlist (allowedDomains) is NOT enforced",
                "[FAIL] bubblewrap (bwrap) is not installed",
                "sudo apt install bubblewrap",
            ],
        ),
        (
            "bwrap missing, KVM ready: the microVM serves",
            |f| {
                f.bwrap_path = None;
                f.bwrap_probe = None;
                kvm_ready(f);
            },
            "kvm",
            0,
            &[
                "[PASS] backend: kvm, a microVM (bubblewrap is not installed and KVM requirements are met)",
                "[PASS] network: enforced",
                "[WARN] bubblewrap (bwrap) is not installed",
                "[PASS] /dev/kvm is readable and writable",
            ],
        ),
        (
            "AppArmor blocks user namespaces (Ubuntu 24.04)",
            apparmor_blocked,
            "host",
            2,
            &[
                "[FAIL] bwrap probe failed: bwrap exited with status 1: bwrap: setting up uid map: Permission denied",
                "kernel.apparmor_restrict_unprivileged_userns=1",
                "Grant them to this binary only (bwrap, which it runs, inherits the grant)",
                "sudo install -m 644 /usr/share/cowork-vm-service/apparmor/cowork-vm-service /etc/apparmor.d/cowork-vm-service",
                "sudo apparmor_parser -r /etc/apparmor.d/cowork-vm-service",
                "sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0",
                "[WARN] apparmor_restrict_unprivileged_userns = 1",
                "[WARN] AppArmor: no cowork-vm-service profile is attached to this binary (label: unknown)",
                "[FAIL] backend: host: no isolation available",
            ],
        ),
        (
            "AppArmor restricts, but a profile lets bwrap through",
            |f| {
                f.sysctls
                    .push(("apparmor_restrict_unprivileged_userns".into(), "1".into()))
            },
            "bwrap",
            0,
            &[
                "[PASS] apparmor_restrict_unprivileged_userns = 1",
                "[PASS] AppArmor: no cowork-vm-service profile on this binary (label: unknown), but bwrap creates user namespaces anyway",
            ],
        ),
        (
            "AppArmor restricts, and our profile is attached",
            |f| {
                f.sysctls
                    .push(("apparmor_restrict_unprivileged_userns".into(), "1".into()));
                f.apparmor_label = Some("cowork-vm-service (unconfined)".into());
            },
            "bwrap",
            0,
            &[
                "[PASS] AppArmor: this binary runs under its profile (cowork-vm-service (unconfined)); the bwrap it runs inherits the userns grant",
            ],
        ),
        (
            "AppArmor blocks a binary installed with cargo install",
            |f| {
                apparmor_blocked(f);
                f.own_exe = Some("/home/u/.cargo/bin/cowork-vm-service".into());
                f.apparmor_label = Some("unconfined".into());
            },
            "host",
            2,
            &[
                "save this as /etc/apparmor.d/cowork-vm-service",
                "    profile cowork-vm-service /home/u/.cargo/bin/cowork-vm-service flags=(unconfined) {",
                "      userns,",
                "writable by root only",
                "[WARN] AppArmor: no cowork-vm-service profile is attached to this binary (label: unconfined)",
            ],
        ),
        (
            "the client is not hooked up",
            |f| f.client.text = None,
            "bwrap",
            0,
            &[
                "Claude Desktop hook-up",
                "[WARN] not hooked up: /home/u/.config/claude-desktop-debian/environment does not exist",
                "cowork-vm-service install-client",
            ],
        ),
        (
            "the client runs a binary that is gone",
            |f| {
                f.client.node_path_resolved = None;
                f.client.node_path_executable = false;
            },
            "bwrap",
            1,
            &[
                "[FAIL] /home/u/.config/claude-desktop-debian/environment: COWORK_NODE_PATH=/usr/bin/cowork-vm-service is missing or not executable",
            ],
        ),
        (
            "Debian's userns switch off",
            |f| {
                apparmor_blocked(f);
                f.sysctls
                    .retain(|(n, _)| n != "apparmor_restrict_unprivileged_userns");
                f.sysctls
                    .push(("unprivileged_userns_clone".into(), "0".into()));
            },
            "host",
            2,
            &[
                "sudo sysctl kernel.unprivileged_userns_clone=1",
                "[WARN] unprivileged_userns_clone = 0",
            ],
        ),
        (
            "container without /proc",
            |f| {
                f.bwrap_probe = Some(Err(ProbeFailure {
                    message: "bwrap exited with status 1".into(),
                    stderr: "bwrap: Can't mount proc on /newroot/proc: Operation not permitted"
                        .into(),
                }));
            },
            "host",
            2,
            &["/proc cannot be mounted in a new pid namespace"],
        ),
        (
            "unknown override is a warning, auto-detection continues",
            |f| f.backend_override = Some("qemu".into()),
            "bwrap",
            0,
            &[
                "[WARN] COWORK_VM_BACKEND=\"qemu\" is not a backend; auto-detecting instead",
                "[PASS] backend: bwrap",
            ],
        ),
        (
            "explicit host: a warning, and a missing bwrap is no failure",
            |f| {
                f.backend_override = Some("HOST".into());
                f.bwrap_path = None;
                f.bwrap_probe = None;
            },
            "host",
            0,
            &[
                "[WARN] backend: host (COWORK_VM_BACKEND=HOST selects the host backend): commands run unisolated",
                "[WARN] bubblewrap (bwrap) is not installed",
            ],
        ),
        (
            "explicit kvm: the KVM section is required",
            |f| f.backend_override = Some("kvm".into()),
            "kvm",
            3,
            &[
                "KVM (required by COWORK_VM_BACKEND=kvm)",
                "[WARN] /dev/kvm is missing: the VM runs under software emulation (slower)",
                "[FAIL] qemu-system-x86_64 not found on PATH",
                "[FAIL] virtiofsd not found",
                "[FAIL] backend: kvm (COWORK_VM_BACKEND=kvm selects the kvm backend), but the microVM cannot start",
            ],
        ),
        (
            "kvm group hint",
            |f| {
                f.backend_override = Some("kvm".into());
                kvm_ready(f);
                f.dev_kvm = DeviceAccess::NoAccess;
            },
            "kvm",
            0,
            &[
                "[WARN] /dev/kvm exists but we cannot open it: the VM runs under software emulation",
                "sudo usermod -aG kvm $USER",
            ],
        ),
        (
            "cgroup v1 as a user, Landlock off at boot, no seccomp",
            |f| {
                f.cgroup = CgroupLimits {
                    detected: Err("memory (/sys/fs/cgroup/memory) is not writable".into()),
                    unenforced: None,
                    v1_hierarchies: true,
                    root: false,
                };
                f.landlock = LandlockSupport::NotEnabled;
                f.seccomp = false;
            },
            "bwrap",
            1,
            &[
                "[WARN] session limits (memory, CPU, processes) are not enforced: memory",
                "only a daemon running as root",
                "[WARN] Landlock is built into this kernel but not enabled",
                "lsm= boot parameter",
                "[FAIL] seccomp: this kernel cannot filter syscalls: sandboxes cannot start",
            ],
        ),
        (
            "cgroup v1 as root, old Landlock",
            |f| {
                f.cgroup = CgroupLimits {
                    detected: Ok("cgroup v1 (memory, pids, cpu): /sys/fs/cgroup/memory/d".into()),
                    unenforced: None,
                    v1_hierarchies: true,
                    root: true,
                };
                f.landlock = LandlockSupport::Abi(3);
            },
            "bwrap",
            0,
            &[
                "[PASS] session limits (memory, CPU, processes) enforced: cgroup v1",
                "[WARN] Landlock ABI 3: every sandbox gets its Landlock rules in part",
                "Linux 6.12 or newer",
            ],
        ),
        (
            "eCryptfs home, little disk",
            |f| {
                f.home_name_max = Some(143);
                f.free_bytes = Some(100 << 20);
            },
            "bwrap",
            0,
            &[
                "[WARN] home filesystem allows file names of 143 bytes only (eCryptfs?)",
                "[WARN] session state",
            ],
        ),
        (
            "stale socket and lifecycle lines",
            |f| {
                f.socket = SocketFacts::Stale;
                f.log_lifecycle = vec!["... [lifecycle] Service started on /x".into()];
            },
            "bwrap",
            0,
            &[
                "stale file from an earlier daemon",
                "| ... [lifecycle] Service started on /x",
            ],
        ),
        (
            "the reference daemon holds the socket",
            |f| f.socket = SocketFacts::Live { info: None },
            "bwrap",
            0,
            &[
                "[WARN] socket /run/user/1000/cowork-vm-service.sock: a daemon that is not cowork-vm-service (Rust)",
            ],
        ),
        (
            "a daemon from another binary",
            |f| {
                f.socket = SocketFacts::Live {
                    info: Some(json!({"version": "0.0.9", "pid": 42,
                        "executable": "/opt/old/cowork-vm-service", "backend": "bwrap"})),
                }
            },
            "bwrap",
            0,
            &[
                "[WARN] socket /run/user/1000/cowork-vm-service.sock: daemon 0.0.9 (pid 42, /opt/old/cowork-vm-service) serving with the bwrap backend: a different binary",
            ],
        ),
        (
            "our daemon, same choice",
            |f| {
                f.socket = SocketFacts::Live {
                    info: Some(json!({"version": "0.1.0", "pid": 7,
                        "executable": "/usr/bin/cowork-vm-service", "backend": "bwrap"})),
                }
            },
            "bwrap",
            0,
            &["[PASS] socket /run/user/1000/cowork-vm-service.sock: daemon 0.1.0 (pid 7"],
        ),
        (
            "something else in the socket's place",
            |f| f.socket = SocketFacts::NotASocket,
            "bwrap",
            1,
            &[
                "[FAIL] socket /run/user/1000/cowork-vm-service.sock: something that is not a socket",
            ],
        ),
    ];
    for (name, change, backend, fails, lines) in cases {
        let mut facts = healthy();
        change(&mut facts);
        let report = diagnose(&facts, &fs());
        let text = report.render_text(false);
        assert_eq!(report.verdict.backend, *backend, "{name}:\n{text}");
        assert_eq!(report.exit_status(), *fails, "{name}:\n{text}");
        for line in *lines {
            assert!(text.contains(line), "{name}: missing {line:?} in\n{text}");
        }
    }
}

/// (config text, FAILs, lines)
#[test]
fn config_table() {
    let cases: &[(&str, u8, &[&str])] = &[
        (
            "{not json",
            1,
            &["[FAIL] /home/u/.config/Claude/claude_desktop_linux_config.json: invalid JSON"],
        ),
        (
            "{}",
            0,
            &["[PASS] /home/u/.config/Claude/claude_desktop_linux_config.json: valid JSON"],
        ),
        (
            r#"{"preferences":{"coworkBwrapMounts":{
                "additionalROBinds":["/opt/tools",{"src":"/home/u/proj","dst":"/data"},"/usr/lib/x","relative"],
                "additionalBinds":["/home/u/proj","/opt/tools"],
                "disabledDefaultBinds":["/etc","/proc"]}}}"#,
            0,
            &[
                "[PASS] additionalROBinds (read-only): /opt/tools",
                "[PASS] additionalROBinds (read-only): /home/u/proj -> /data",
                "[WARN] additionalROBinds (read-only): /usr/lib/x shadows the default read-only /usr",
                "[WARN] rejected mount \"relative\": Path must be absolute",
                "[PASS] additionalBinds (read-write): /home/u/proj",
                "[WARN] rejected mount \"/opt/tools\": Read-write mounts must be under $HOME",
                "[PASS] disabledDefaultBinds: /etc",
                "[WARN] cannot disable critical mount: /proc",
            ],
        ),
    ];
    for (text, fails, lines) in cases {
        let mut facts = healthy();
        facts.config_text = Some(Ok(text.to_string()));
        let report = diagnose(&facts, &fs());
        let out = report.render_text(false);
        assert_eq!(report.exit_status(), *fails, "{text}:\n{out}");
        for line in *lines {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
    }
    let mut unreadable = healthy();
    unreadable.config_text = Some(Err("Permission denied (os error 13)".into()));
    assert_eq!(diagnose(&unreadable, &fs()).exit_status(), 1);
}

#[test]
fn json_names_the_backend_and_counts() {
    let mut facts = healthy();
    apparmor_blocked(&mut facts);
    let v = diagnose(&facts, &fs()).to_json();
    assert_eq!(v["verdict"]["backend"], "host");
    assert_eq!(v["verdict"]["isolated"], false);
    assert_eq!(v["summary"]["fail"], 2);
}
