//! The diagnosis: pure functions from [`Facts`] to a [`Report`].

use std::path::Path;

use cowork_policy::bwrap_config::{
    BwrapMountsConfig, describe, load_bwrap_mounts, shadowed_default,
};
use cowork_policy::fs_view::FsView;
use cowork_policy::selection::{
    BackendKind, ProbeFailureKind, Selection, USERNS_HINT, select_backend,
};

use super::apparmor;
use super::client::client_section;
use super::facts::{DeviceAccess, Facts, SocketFacts};
use super::layers;
use super::report::{BackendVerdict, Check, Report, Section, Status};
use crate::backend::{BackendPlan, plan_backend};

/// eCryptfs's filename limit: session and mount names must fit in it.
const ECRYPTFS_NAME_MAX: u64 = 143;

pub fn diagnose(facts: &Facts, fs: &dyn FsView) -> Report {
    let mut probe = facts.clone();
    let selection = select_backend(&mut probe);
    let plan = plan_backend(&selection);
    let verdict = verdict(&selection, &plan, facts);
    let sections = vec![
        backend_section(&selection, &plan, facts),
        // bubblewrap matters unless the VM serves (explicitly, or because
        // bubblewrap is missing and KVM works).
        bwrap_section(
            facts,
            selection.backend != BackendKind::Kvm
                && (!selection.overridden || selection.backend == BackendKind::Bwrap),
        ),
        kernel_section(facts),
        kvm_section(facts, selection.backend == BackendKind::Kvm),
        config_section(facts, fs),
        runtime_section(facts, &verdict),
        client_section(&facts.client, facts.own_exe.as_deref()),
    ];
    Report {
        version: env!("CARGO_PKG_VERSION").to_string(),
        verdict,
        sections,
    }
}

fn verdict(selection: &Selection, plan: &BackendPlan, facts: &Facts) -> BackendVerdict {
    let (backend, isolated) = match plan {
        BackendPlan::Bwrap => (
            BackendKind::Bwrap,
            facts.bwrap_path.is_some() || !selection.overridden,
        ),
        BackendPlan::Kvm => (BackendKind::Kvm, true),
        BackendPlan::Host { .. } => (BackendKind::Host, false),
        BackendPlan::Unavailable { kind, .. } => (*kind, false),
    };
    BackendVerdict {
        backend: backend.to_string(),
        selected: selection.backend.to_string(),
        reason: selection.reason.clone(),
        overridden: selection.overridden,
        isolated,
    }
}

fn backend_section(selection: &Selection, plan: &BackendPlan, facts: &Facts) -> Section {
    let mut checks = Vec::new();
    if let Some(raw) = &facts.backend_override
        && BackendKind::parse(raw).is_none()
    {
        checks.push(
            Check::new(
                Status::Warn,
                format!("COWORK_VM_BACKEND={raw:?} is not a backend; auto-detecting instead"),
            )
            .hint("valid values: bwrap, kvm, host (case-insensitive); unset it to auto-detect"),
        );
    }
    let check = match plan {
        BackendPlan::Bwrap if selection.overridden && facts.bwrap_path.is_none() => Check::new(
            Status::Fail,
            "backend: bwrap (COWORK_VM_BACKEND=bwrap), but bubblewrap is not installed",
        )
        .hint(install_bwrap_hint()),
        BackendPlan::Bwrap => Check::new(
            Status::Pass,
            format!("backend: bwrap ({})", selection.reason),
        ),
        BackendPlan::Kvm if facts.kvm.qemu.is_none() || facts.kvm.virtiofsd.is_none() => {
            Check::new(
                Status::Fail,
                format!(
                    "backend: kvm ({}), but the microVM cannot start: QEMU or virtiofsd is \
                     missing (see KVM below)",
                    selection.reason
                ),
            )
        }
        BackendPlan::Kvm => Check::new(
            Status::Pass,
            format!("backend: kvm, a microVM ({})", selection.reason),
        ),
        BackendPlan::Host { warning: None } => Check::new(
            Status::Warn,
            format!(
                "backend: host ({}): commands run unisolated",
                selection.reason
            ),
        )
        .hint("unset COWORK_VM_BACKEND to get the bubblewrap sandbox"),
        BackendPlan::Host { warning: Some(why) } => {
            Check::new(Status::Fail, format!("backend: host: {why}"))
                .hints(selection.warnings.iter().cloned())
                .hint(install_bwrap_hint())
        }
        BackendPlan::Unavailable { why, .. } => Check::new(Status::Fail, format!("backend: {why}")),
    };
    checks.push(check);
    checks.extend(egress_check(plan));
    Section {
        title: "Backend".into(),
        checks,
    }
}

/// Whether the network allowlist (`spawn.allowedDomains`) holds with this
/// backend (nothing to say when no backend works: its line fails already).
fn egress_check(plan: &BackendPlan) -> Option<Check> {
    Some(match plan {
        BackendPlan::Host { .. } => Check::new(
            Status::Warn,
            "network: the allowlist (allowedDomains) is NOT enforced: host processes reach \
             the network directly",
        )
        .hint("get the bubblewrap sandbox (see the backend line above) to enforce it"),
        BackendPlan::Unavailable { .. } => return None,
        // The isolating backends (bwrap, and the VM).
        _ => Check::new(
            Status::Pass,
            "network: enforced (each sandbox's only way out is the allowlist proxy)",
        ),
    })
}

fn install_bwrap_hint() -> String {
    "install bubblewrap: `sudo apt install bubblewrap` / `sudo dnf install bubblewrap` / \
     `sudo pacman -S bubblewrap` (NixOS: add pkgs.bubblewrap)"
        .into()
}

/// `needed`: whether the chosen backend depends on bubblewrap (an explicit
/// host or kvm choice does not).
fn bwrap_section(facts: &Facts, needed: bool) -> Section {
    let broken = if needed { Status::Fail } else { Status::Warn };
    let mut checks = Vec::new();
    match (&facts.bwrap_path, &facts.bwrap_probe) {
        (None, _) | (_, None) => {
            checks.push(
                Check::new(broken, "bubblewrap (bwrap) is not installed")
                    .hint(install_bwrap_hint()),
            );
        }
        (Some(path), Some(probe)) => {
            let version = facts.bwrap_version.as_deref().unwrap_or("version unknown");
            checks.push(Check::new(
                Status::Pass,
                format!("bwrap: {} ({version})", path.display()),
            ));
            checks.push(match probe {
                Ok(()) => Check::new(
                    Status::Pass,
                    "bwrap probe: a sandbox with its own pid namespace, /proc and /dev starts",
                ),
                Err(failure) => {
                    let detail = failure.stderr.trim();
                    let mut c = Check::new(
                        broken,
                        format!(
                            "bwrap probe failed: {}{}",
                            failure.message,
                            if detail.is_empty() {
                                String::new()
                            } else {
                                format!(": {detail}")
                            }
                        ),
                    );
                    match failure.kind() {
                        ProbeFailureKind::UserNamespace => {
                            c = c.hint(USERNS_HINT.to_string()).hints(userns_fix(facts));
                        }
                        ProbeFailureKind::ProcMount => {
                            c = c.hint(
                                "/proc cannot be mounted in a new pid namespace: inside a \
                                 container, run it with --privileged or a seccomp/AppArmor \
                                 profile that allows mount; otherwise use COWORK_VM_BACKEND=host",
                            );
                        }
                        ProbeFailureKind::Unknown => {
                            c = c.hint(format!(
                                "run it yourself to see why: {} --unshare-pid --ro-bind / / \
                                 --proc /proc --dev /dev -- true",
                                path.display()
                            ));
                        }
                    }
                    c
                }
            });
        }
    }
    Section {
        title: "Sandbox (bubblewrap)".into(),
        checks,
    }
}

fn sysctl<'a>(facts: &'a Facts, name: &str) -> Option<&'a str> {
    facts
        .sysctls
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Concrete fixes for blocked user namespaces, from the sysctls present.
fn userns_fix(facts: &Facts) -> Vec<String> {
    let mut hints = Vec::new();
    if sysctl(facts, apparmor::RESTRICT_SYSCTL) == Some("1") {
        hints.extend(apparmor::fix_hints(facts.own_exe.as_deref()));
    }
    if sysctl(facts, "unprivileged_userns_clone") == Some("0") {
        hints
            .push("`sudo sysctl kernel.unprivileged_userns_clone=1` (Debian's switch)".to_string());
    }
    if sysctl(facts, "max_user_namespaces") == Some("0") {
        hints.push("`sudo sysctl user.max_user_namespaces=15000`".to_string());
    }
    hints
}

fn kernel_section(facts: &Facts) -> Section {
    let mut checks = Vec::new();
    let userns_blocked = [
        ("max_user_namespaces", "0"),
        ("apparmor_restrict_unprivileged_userns", "1"),
        ("unprivileged_userns_clone", "0"),
    ];
    for (name, value) in &facts.sysctls {
        let blocking = userns_blocked.contains(&(name.as_str(), value.as_str()));
        let status = match (blocking, facts.bwrap_probe.as_ref()) {
            (false, _) => Status::Pass,
            // Restricted, yet bwrap works (a profile grants it): fine.
            (true, Some(Ok(()))) => Status::Pass,
            (true, _) => Status::Warn,
        };
        let mut c = Check::new(status, format!("{name} = {value}"));
        if status == Status::Warn {
            c = c.hint("this blocks unprivileged user namespaces, which bubblewrap needs");
        }
        checks.push(c);
    }
    checks.extend(apparmor::label_check(facts));
    // seccomp, Landlock and the session limits as the daemon applies them.
    checks.extend(layers::layer_checks(facts));
    Section {
        title: "Kernel".into(),
        checks,
    }
}

fn kvm_section(facts: &Facts, required: bool) -> Section {
    // Not asked for: facts, not verdicts (KVM noise confused bwrap users).
    let missing = if required { Status::Fail } else { Status::Info };
    let mut checks = Vec::new();
    // Without KVM the VM still boots, under software emulation (TCG).
    let slow = if required { Status::Warn } else { Status::Info };
    checks.push(match facts.dev_kvm {
        DeviceAccess::ReadWrite => Check::new(Status::Pass, "/dev/kvm is readable and writable"),
        DeviceAccess::NoAccess => Check::new(
            slow,
            "/dev/kvm exists but we cannot open it: the VM runs under software emulation (slower)",
        )
        .hint("add yourself to the kvm group: `sudo usermod -aG kvm $USER`, then log in again"),
        DeviceAccess::Missing => Check::new(
            slow,
            "/dev/kvm is missing: the VM runs under software emulation (slower)",
        )
        .hint("enable virtualization in the firmware and load kvm_intel or kvm_amd"),
    });
    checks.push(if facts.kvm.vhost_vsock {
        Check::new(Status::Pass, "/dev/vhost-vsock present")
    } else {
        Check::new(
            Status::Info,
            "/dev/vhost-vsock is missing (the official helper needs it; this one does not)",
        )
    });
    checks.push(match &facts.kvm.qemu {
        Some(p) => Check::new(Status::Pass, format!("qemu-system-x86_64: {}", p.display())),
        None => Check::new(missing, "qemu-system-x86_64 not found on PATH")
            .hint("`sudo apt install qemu-system-x86`"),
    });
    checks.push(match &facts.kvm.virtiofsd {
        Some(p) => Check::new(Status::Pass, format!("virtiofsd: {}", p.display())),
        None => Check::new(
            missing,
            "virtiofsd not found (COWORK_VM_VIRTIOFSD_BIN, PATH, /usr/libexec, /usr/lib/qemu)",
        )
        .hint("install virtiofsd, or set COWORK_VM_VIRTIOFSD_BIN to its path"),
    });
    checks.extend(super::vm::checks(&facts.vm, missing));
    checks.push(match &facts.ovmf {
        Some(p) => Check::new(Status::Pass, format!("OVMF firmware: {}", p.display())),
        None => Check::new(
            Status::Info,
            "OVMF firmware not found (only needed to boot the official UEFI bundle)",
        ),
    });
    Section {
        title: if required {
            "KVM (required by COWORK_VM_BACKEND=kvm)".into()
        } else {
            "KVM (optional: only for COWORK_VM_BACKEND=kvm)".into()
        },
        checks,
    }
}

fn config_section(facts: &Facts, fs: &dyn FsView) -> Section {
    let path = facts.config_file.display();
    let mut checks = Vec::new();
    let text = match &facts.config_text {
        None => {
            checks.push(Check::new(
                Status::Pass,
                format!("{path}: none (defaults apply)"),
            ));
            None
        }
        Some(Err(e)) => {
            checks.push(Check::new(
                Status::Fail,
                format!("{path}: cannot read: {e}"),
            ));
            None
        }
        Some(Ok(t)) => Some(t.as_str()),
    };
    if let Some(text) = text {
        match load_bwrap_mounts(Some(text), &facts.home, fs) {
            Err(e) => checks.push(
                Check::new(Status::Fail, format!("{path}: {e}"))
                    .hint("the daemon ignores the whole file until this is fixed"),
            ),
            Ok((config, rejected)) => {
                checks.push(Check::new(Status::Pass, format!("{path}: valid JSON")));
                checks.extend(mount_checks(&config));
                checks.extend(rejected.into_iter().map(|r| {
                    Check::new(
                        Status::Warn,
                        r.trim_start_matches("BwrapConfig: ").to_string(),
                    )
                }));
            }
        }
    }
    Section {
        title: "Configuration".into(),
        checks,
    }
}

fn mount_checks(config: &BwrapMountsConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    let groups = [
        ("additionalROBinds (read-only)", &config.ro_binds),
        ("additionalBinds (read-write)", &config.rw_binds),
    ];
    for (label, binds) in groups {
        for bind in binds {
            let shown = describe(bind);
            checks.push(match shadowed_default(bind.dst()) {
                Some(default) => Check::new(
                    Status::Warn,
                    format!("{label}: {shown} shadows the default read-only {default}"),
                )
                .hint("whatever is mounted there replaces what the sandbox sees of the host's system files"),
                None => Check::new(Status::Pass, format!("{label}: {shown}")),
            });
        }
    }
    for d in &config.disabled {
        checks.push(Check::new(
            Status::Pass,
            format!("disabledDefaultBinds: {d}"),
        ));
    }
    checks
}

fn runtime_section(facts: &Facts, verdict: &BackendVerdict) -> Section {
    let socket = facts.socket_path.display();
    let mut checks = vec![match &facts.socket {
        SocketFacts::Absent => {
            Check::new(Status::Pass, format!("socket {socket}: no daemon running"))
        }
        SocketFacts::NotASocket => Check::new(
            Status::Fail,
            format!("socket {socket}: something that is not a socket is in the way"),
        )
        .hint("remove it; the daemon refuses to replace it"),
        SocketFacts::Stale => Check::new(
            Status::Pass,
            format!("socket {socket}: stale file from an earlier daemon (replaced on start)"),
        ),
        SocketFacts::Unreachable(e) => Check::new(
            Status::Warn,
            format!("socket {socket}: cannot connect: {e}"),
        ),
        SocketFacts::Live { info: None } => Check::new(
            Status::Warn,
            format!("socket {socket}: a daemon that is not cowork-vm-service (Rust) is serving it"),
        )
        .hint("probably the reference Node daemon; quit Claude Desktop (or kill it) to switch"),
        SocketFacts::Live { info: Some(info) } => live_daemon_check(facts, info, verdict),
    }];
    checks.push(
        Check::new(
            Status::Pass,
            format!("log file: {}", facts.log_file.display()),
        )
        .hints(facts.log_lifecycle.iter().map(|l| format!("| {l}"))),
    );
    let size = facts
        .sessions_bytes
        .map_or_else(|| "none yet".to_string(), human_bytes);
    let free = facts
        .free_bytes
        .map_or_else(|| "unknown".to_string(), human_bytes);
    let low = facts.free_bytes.is_some_and(|b| b < 1 << 30);
    checks.push({
        let c = Check::new(
            if low { Status::Warn } else { Status::Pass },
            format!(
                "session state {}: {size}, {free} free",
                facts.sessions_dir.display()
            ),
        );
        if low {
            c.hint(
                "less than 1 GiB free: sessions may fail to write; pruneSessionCaches frees tmp/",
            )
        } else {
            c
        }
    });
    checks.push(match facts.home_name_max {
        Some(n) if n <= ECRYPTFS_NAME_MAX => Check::new(
            Status::Warn,
            format!("home filesystem allows file names of {n} bytes only (eCryptfs?)"),
        )
        .hint("long session or plugin file names can fail with ENAMETOOLONG; move the data directory with XDG_DATA_HOME"),
        Some(n) => Check::new(Status::Pass, format!("home filesystem file names up to {n} bytes")),
        None => Check::new(Status::Warn, "cannot read the home filesystem's limits"),
    });
    Section {
        title: "Runtime".into(),
        checks,
    }
}

fn live_daemon_check(facts: &Facts, info: &serde_json::Value, verdict: &BackendVerdict) -> Check {
    let socket = facts.socket_path.display();
    let field = |k: &str| {
        info.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string()
    };
    let (exe, version, backend) = (field("executable"), field("version"), field("backend"));
    let pid = info.get("pid").and_then(|v| v.as_u64()).unwrap_or(0);
    let ours = facts
        .own_exe
        .as_deref()
        .is_some_and(|own| Path::new(&exe) == own);
    let title = format!(
        "socket {socket}: daemon {version} (pid {pid}, {exe}) serving with the {backend} backend"
    );
    if !ours {
        Check::new(
            Status::Warn,
            format!("{title}: a different binary than this one"),
        )
        .hint("restart Claude Desktop (or the daemon) to run this version")
    } else if backend != verdict.backend {
        Check::new(
            Status::Warn,
            format!("{title}, but it would now select {}", verdict.backend),
        )
        .hint("the machine changed since it started; restart it to re-select")
    } else {
        Check::new(Status::Pass, title)
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
