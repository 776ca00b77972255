//! `--doctor` as a user runs it: the real binary on this machine, and with
//! its environment bent (no bwrap on PATH, odd overrides, a config file).

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use super::harness::{Daemon, Options, command_as, require_unprivileged_user};

/// Runs the binary with `args` in `d`'s environment (same user, HOME,
/// runtime dir, socket), plus `env`.
fn doctor(d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command_as(d.user.as_ref());
    cmd.args(args)
        .arg("--socket")
        .arg(&d.socket)
        .env_clear()
        .env("HOME", &d.home)
        .env(
            "XDG_RUNTIME_DIR",
            d.socket.parent().unwrap_or(Path::new("/tmp")),
        )
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the doctor")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn start_auto() -> Daemon {
    Daemon::start_with(Options {
        backend: None,
        user: require_unprivileged_user(),
        ..Default::default()
    })
}

#[test]
fn the_doctor_agrees_with_the_running_daemon() {
    let d = start_auto();
    let info = d.call("getDaemonInfo", json!({}));
    let out = doctor(&d, &["--doctor", "--json"], &[]);
    let report = json_of(&out);
    assert_eq!(
        report["verdict"]["backend"], info["backend"],
        "doctor and daemon select the same backend: {report:#}"
    );
    assert_eq!(
        report["verdict"]["backend"], "bwrap",
        "this machine has working bwrap"
    );
    let fails = report["summary"]["fail"].as_i64().unwrap();
    assert_eq!(
        out.status.code(),
        Some(fails as i32),
        "exit status = FAIL count"
    );
    let runtime = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == "Runtime")
        .unwrap();
    let socket_line = runtime["checks"][0].clone();
    assert_eq!(socket_line["status"], "pass", "{socket_line}");
    assert!(
        socket_line["title"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", d.pid())),
        "the live daemon is recognised: {socket_line}"
    );
}

#[test]
fn text_output_subcommand_and_no_colour_when_piped() {
    let d = start_auto();
    let flag = doctor(&d, &["--doctor"], &[]);
    let sub = doctor(&d, &["doctor"], &[]);
    let text = String::from_utf8_lossy(&flag.stdout);
    assert!(text.contains("[PASS] backend: bwrap"), "{text}");
    assert!(
        text.contains("KVM (optional: only for COWORK_VM_BACKEND=kvm)"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colour into a pipe");
    assert_eq!(flag.status.code(), sub.status.code());
    let strip_pid = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("pid "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip_pid(&text),
        strip_pid(&String::from_utf8_lossy(&sub.stdout)),
        "`doctor` is `--doctor`"
    );
}

#[test]
fn missing_bwrap_is_explained_and_counted() {
    let d = start_auto();
    let out = doctor(&d, &["--doctor"], &[("PATH", "/nonexistent")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[FAIL] bubblewrap (bwrap) is not installed"),
        "{text}"
    );
    assert!(
        text.contains("[FAIL] backend: host: no isolation available"),
        "{text}"
    );
    assert!(text.contains("sudo apt install bubblewrap"), "{text}");
    assert_eq!(out.status.code(), Some(2), "{text}");
}

#[test]
fn overrides_and_config_entries_are_reported() {
    let d = start_auto();
    d.home_dir("proj");
    d.home_file(
        ".config/Claude/claude_desktop_linux_config.json",
        r#"{"preferences":{"coworkBwrapMounts":{"additionalROBinds":[{"src":"/opt","dst":"/usr/local/x"}],"additionalBinds":["/var"]}}}"#,
    );
    let out = doctor(&d, &["--doctor"], &[("COWORK_VM_BACKEND", "Firecracker")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "[WARN] COWORK_VM_BACKEND=\"Firecracker\" is not a backend; auto-detecting instead"
        ),
        "{text}"
    );
    assert!(text.contains("[WARN] additionalROBinds (read-only): /opt -> /usr/local/x shadows the default read-only /usr"), "{text}");
    assert!(
        text.contains("[WARN] rejected mount \"/var\": Read-write mounts must be under $HOME"),
        "{text}"
    );
    let kvm = doctor(&d, &["--doctor"], &[("COWORK_VM_BACKEND", "kvm")]);
    let text = String::from_utf8_lossy(&kvm.stdout);
    assert!(
        text.contains("KVM (required by COWORK_VM_BACKEND=kvm)"),
        "{text}"
    );
    assert!(text.contains("[PASS] backend: kvm, a microVM"), "{text}");
    // A fresh home has no guest kernel: the KVM section says how to get one.
    assert!(
        text.contains("[FAIL] guest kernel: no guest kernel in"),
        "{text}"
    );
    assert!(text.contains("cowork-vm-service setup-vm"), "{text}");
    assert!(kvm.status.code().unwrap_or(0) >= 1);
}
