//! Which backend the daemon uses, and why.
//!
//! Order (seed 000): an explicit `COWORK_VM_BACKEND` wins (an unknown value
//! is reported and auto-detection continues; `bwrap` is still probed once,
//! because the 3.x client's patch always sets it, so the override must not
//! mean "never diagnose"); otherwise bubblewrap when it
//! is installed and its probe passes; bubblewrap installed but failing ->
//! host, never KVM (falling through to KVM put users in a boot loop,
//! reference #351); bubblewrap missing -> KVM when its requirements are met;
//! else host. The daemon and `--doctor` both call [`select_backend`] with
//! their own [`HostProbe`], so they cannot disagree.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Bwrap,
    Kvm,
    Host,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Bwrap => "bwrap",
            BackendKind::Kvm => "kvm",
            BackendKind::Host => "host",
        }
    }

    /// Parses `COWORK_VM_BACKEND` (case-insensitive, surrounding blanks ignored).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "bwrap" | "bubblewrap" => Some(BackendKind::Bwrap),
            "kvm" => Some(BackendKind::Kvm),
            "host" => Some(BackendKind::Host),
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed `bwrap` probe most likely means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFailureKind {
    /// Unprivileged user namespaces are blocked (AppArmor's
    /// `apparmor_restrict_unprivileged_userns=1` on Ubuntu 24.04+, or
    /// `unprivileged_userns_clone=0`, or `max_user_namespaces=0`).
    UserNamespace,
    /// `/proc` cannot be mounted (restrictive containers).
    ProcMount,
    Unknown,
}

/// A failed probe: the error message and what bwrap printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub message: String,
    pub stderr: String,
}

impl ProbeFailure {
    pub fn kind(&self) -> ProbeFailureKind {
        classify_probe_failure(&self.message, &self.stderr)
    }
}

/// Classifies a bwrap probe failure from its message and output.
pub fn classify_probe_failure(message: &str, stderr: &str) -> ProbeFailureKind {
    let hay = format!("{message}\n{stderr}").to_ascii_lowercase();
    if hay.contains("can't mount proc") || hay.contains("mount proc on") {
        return ProbeFailureKind::ProcMount;
    }
    let userns_markers = [
        "user namespace",
        "user_namespace",
        "user-namespace",
        "usernamespace",
        "apparmor",
        "operation not permitted",
        "setting up uid map",
        "setting up gid map",
        "clone_newuser",
        "clone_newns",
        "cap_sys_admin",
    ];
    if userns_markers.iter().any(|m| hay.contains(m)) {
        ProbeFailureKind::UserNamespace
    } else {
        ProbeFailureKind::Unknown
    }
}

/// What KVM needs on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvmRequirements {
    /// `/dev/kvm` is readable and writable by us.
    pub dev_kvm_rw: bool,
    pub qemu: Option<PathBuf>,
    pub virtiofsd: Option<PathBuf>,
    /// Informational: our VM backend does not need vhost-vsock.
    pub vhost_vsock: bool,
}

impl KvmRequirements {
    pub fn met(&self) -> bool {
        self.dev_kvm_rw && self.qemu.is_some() && self.virtiofsd.is_some()
    }
}

/// The facts selection needs; implemented for real by the daemon and faked
/// by tests. Methods are only called when their answer matters (no bwrap
/// probe under a `kvm` or `host` override), so the real one can be lazy.
pub trait HostProbe {
    /// The raw `COWORK_VM_BACKEND` value, if set and non-empty.
    fn backend_override(&mut self) -> Option<String>;
    /// Where `bwrap` is, if installed.
    fn bwrap_path(&mut self) -> Option<PathBuf>;
    /// Runs the bwrap probe sandbox.
    fn bwrap_probe(&mut self) -> Result<(), ProbeFailure>;
    fn kvm_requirements(&mut self) -> KvmRequirements;
}

/// Everything the bwrap part of selection found out (reused by `--doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BwrapStatus {
    NotChecked,
    NotInstalled,
    Works {
        path: PathBuf,
    },
    ProbeFailed {
        path: PathBuf,
        failure: ProbeFailure,
    },
}

/// The decision and its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub backend: BackendKind,
    /// One sentence a user can read.
    pub reason: String,
    /// Problems worth a loud log line (unknown override, failed probe, ...).
    pub warnings: Vec<String>,
    pub overridden: bool,
    pub bwrap: BwrapStatus,
    pub kvm: Option<KvmRequirements>,
}

/// The fix for blocked user namespaces, for logs and `--doctor`.
pub const USERNS_HINT: &str = "bubblewrap cannot create a user namespace. On Ubuntu 24.04+ AppArmor \
blocks unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1): load the \
cowork-vm-service AppArmor profile, which grants `userns` to this binary only and so to the bwrap \
it runs (the .deb installs it; `cowork-vm-service --doctor` prints the commands), or set the \
sysctl to 0 (weaker: it re-enables user namespaces for every program).";

/// What a failed probe means, with its fix, in one sentence.
pub fn probe_failure_cause(failure: &ProbeFailure) -> String {
    match failure.kind() {
        ProbeFailureKind::UserNamespace => USERNS_HINT.to_string(),
        ProbeFailureKind::ProcMount => {
            "bubblewrap cannot mount /proc here (a restrictive container?)".to_string()
        }
        ProbeFailureKind::Unknown => format!("bubblewrap probe failed: {}", failure.message),
    }
}

/// `COWORK_VM_BACKEND=bwrap`: bubblewrap is kept whatever its probe says
/// (isolation is never downgraded silently), but a failing or missing
/// bubblewrap is diagnosed up front.
fn bwrap_override(raw: &str, probe: &mut dyn HostProbe) -> Selection {
    let reason = format!("COWORK_VM_BACKEND={raw} selects the bwrap backend");
    let (bwrap, warnings) = match probe.bwrap_path() {
        None => (
            BwrapStatus::NotInstalled,
            vec![
                "COWORK_VM_BACKEND=bwrap, but bubblewrap (bwrap) is not installed: install the \
                 bubblewrap package; every spawn fails until then"
                    .to_string(),
            ],
        ),
        Some(path) => match probe.bwrap_probe() {
            Ok(()) => (BwrapStatus::Works { path }, Vec::new()),
            Err(failure) => {
                let warning = format!(
                    "COWORK_VM_BACKEND=bwrap, but bubblewrap's start-up probe failed: {}; \
                     keeping the bwrap backend (isolation is never downgraded), so spawns \
                     fail until this is fixed",
                    probe_failure_cause(&failure)
                );
                (BwrapStatus::ProbeFailed { path, failure }, vec![warning])
            }
        },
    };
    Selection {
        backend: BackendKind::Bwrap,
        reason,
        warnings,
        overridden: true,
        bwrap,
        kvm: None,
    }
}

pub fn select_backend(probe: &mut dyn HostProbe) -> Selection {
    let mut warnings = Vec::new();
    if let Some(raw) = probe.backend_override() {
        match BackendKind::parse(&raw) {
            Some(BackendKind::Bwrap) => return bwrap_override(&raw, probe),
            Some(kind) => {
                return Selection {
                    backend: kind,
                    reason: format!("COWORK_VM_BACKEND={raw} selects the {kind} backend"),
                    warnings,
                    overridden: true,
                    bwrap: BwrapStatus::NotChecked,
                    kvm: None,
                };
            }
            None => warnings.push(format!(
                "unknown COWORK_VM_BACKEND value {raw:?} (valid: bwrap, kvm, host); auto-detecting instead"
            )),
        }
    }
    match probe.bwrap_path() {
        Some(path) => match probe.bwrap_probe() {
            Ok(()) => Selection {
                backend: BackendKind::Bwrap,
                reason: format!("bubblewrap at {} works", path.display()),
                warnings,
                overridden: false,
                bwrap: BwrapStatus::Works { path },
                kvm: None,
            },
            Err(failure) => {
                warnings.push(probe_failure_cause(&failure));
                warnings.push(
                    "falling back to the host backend: commands run WITHOUT isolation \
                     (set COWORK_VM_BACKEND=kvm to opt into a VM)"
                        .to_string(),
                );
                Selection {
                    backend: BackendKind::Host,
                    reason: format!(
                        "bubblewrap at {} is installed but its probe failed, so the host backend \
                         is used (never KVM implicitly)",
                        path.display()
                    ),
                    warnings,
                    overridden: false,
                    bwrap: BwrapStatus::ProbeFailed { path, failure },
                    kvm: None,
                }
            }
        },
        None => {
            let kvm = probe.kvm_requirements();
            if kvm.met() {
                Selection {
                    backend: BackendKind::Kvm,
                    reason: "bubblewrap is not installed and KVM requirements are met".to_string(),
                    warnings,
                    overridden: false,
                    bwrap: BwrapStatus::NotInstalled,
                    kvm: Some(kvm),
                }
            } else {
                warnings.push(
                    "bubblewrap is not installed: commands run WITHOUT isolation \
                     (install the bubblewrap package)"
                        .to_string(),
                );
                Selection {
                    backend: BackendKind::Host,
                    reason: "bubblewrap is not installed and KVM requirements are not met"
                        .to_string(),
                    warnings,
                    overridden: false,
                    bwrap: BwrapStatus::NotInstalled,
                    kvm: Some(kvm),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[derive(Default)]
    struct Fake {
        override_value: Option<&'static str>,
        bwrap: Option<&'static str>,
        probe: Option<(&'static str, &'static str)>,
        kvm: KvmRequirements,
        probed: bool,
    }

    impl HostProbe for Fake {
        fn backend_override(&mut self) -> Option<String> {
            self.override_value.map(Into::into)
        }
        fn bwrap_path(&mut self) -> Option<PathBuf> {
            self.bwrap.map(PathBuf::from)
        }
        fn bwrap_probe(&mut self) -> Result<(), ProbeFailure> {
            self.probed = true;
            match self.probe {
                None => Ok(()),
                Some((message, stderr)) => Err(ProbeFailure {
                    message: message.into(),
                    stderr: stderr.into(),
                }),
            }
        }
        fn kvm_requirements(&mut self) -> KvmRequirements {
            self.kvm.clone()
        }
    }

    fn kvm_ok() -> KvmRequirements {
        KvmRequirements {
            dev_kvm_rw: true,
            qemu: Some("/usr/bin/qemu-system-x86_64".into()),
            virtiofsd: Some("/usr/libexec/virtiofsd".into()),
            vhost_vsock: false,
        }
    }

    #[test]
    fn selection_table() {
        struct Case {
            why: &'static str,
            fake: Fake,
            want: BackendKind,
            overridden: bool,
            warnings: usize,
        }
        let cases = vec![
            Case {
                why: "override kvm, no probe",
                fake: Fake {
                    override_value: Some("KVM"),
                    bwrap: Some("/usr/bin/bwrap"),
                    ..Default::default()
                },
                want: BackendKind::Kvm,
                overridden: true,
                warnings: 0,
            },
            Case {
                why: "override bwrap, bwrap works",
                fake: Fake {
                    override_value: Some(" bwrap "),
                    bwrap: Some("/usr/bin/bwrap"),
                    ..Default::default()
                },
                want: BackendKind::Bwrap,
                overridden: true,
                warnings: 0,
            },
            Case {
                why: "override bwrap, probe fails: still bwrap, diagnosed",
                fake: Fake {
                    override_value: Some("bwrap"),
                    bwrap: Some("/usr/bin/bwrap"),
                    probe: Some(("exit 1", "bwrap: setting up uid map: Permission denied")),
                    kvm: kvm_ok(),
                    ..Default::default()
                },
                want: BackendKind::Bwrap,
                overridden: true,
                warnings: 1,
            },
            Case {
                why: "override bwrap, not installed: still bwrap, diagnosed",
                fake: Fake {
                    override_value: Some("bwrap"),
                    ..Default::default()
                },
                want: BackendKind::Bwrap,
                overridden: true,
                warnings: 1,
            },
            Case {
                why: "override host",
                fake: Fake {
                    override_value: Some("Host"),
                    bwrap: Some("/usr/bin/bwrap"),
                    ..Default::default()
                },
                want: BackendKind::Host,
                overridden: true,
                warnings: 0,
            },
            Case {
                why: "unknown override warns and auto-detects (never KVM)",
                fake: Fake {
                    override_value: Some("not-a-backend"),
                    bwrap: Some("/usr/bin/bwrap"),
                    kvm: kvm_ok(),
                    ..Default::default()
                },
                want: BackendKind::Bwrap,
                overridden: false,
                warnings: 1,
            },
            Case {
                why: "bwrap works",
                fake: Fake {
                    bwrap: Some("/usr/bin/bwrap"),
                    kvm: kvm_ok(),
                    ..Default::default()
                },
                want: BackendKind::Bwrap,
                overridden: false,
                warnings: 0,
            },
            Case {
                why: "bwrap probe fails: host, never KVM",
                fake: Fake {
                    bwrap: Some("/usr/bin/bwrap"),
                    probe: Some(("exit 1", "bwrap: setting up uid map: Permission denied")),
                    kvm: kvm_ok(),
                    ..Default::default()
                },
                want: BackendKind::Host,
                overridden: false,
                warnings: 2,
            },
            Case {
                why: "no bwrap, KVM ready",
                fake: Fake {
                    kvm: kvm_ok(),
                    ..Default::default()
                },
                want: BackendKind::Kvm,
                overridden: false,
                warnings: 0,
            },
            Case {
                why: "no bwrap, no qemu",
                fake: Fake {
                    kvm: KvmRequirements {
                        qemu: None,
                        ..kvm_ok()
                    },
                    ..Default::default()
                },
                want: BackendKind::Host,
                overridden: false,
                warnings: 1,
            },
            Case {
                why: "no bwrap, /dev/kvm not writable",
                fake: Fake {
                    kvm: KvmRequirements {
                        dev_kvm_rw: false,
                        ..kvm_ok()
                    },
                    ..Default::default()
                },
                want: BackendKind::Host,
                overridden: false,
                warnings: 1,
            },
        ];
        for mut case in cases {
            let got = select_backend(&mut case.fake);
            assert_eq!(got.backend, case.want, "{}", case.why);
            assert_eq!(got.overridden, case.overridden, "{}", case.why);
            assert_eq!(
                got.warnings.len(),
                case.warnings,
                "{}: {:?}",
                case.why,
                got.warnings
            );
            if case.overridden {
                assert_eq!(
                    case.fake.probed,
                    case.want == BackendKind::Bwrap && case.fake.bwrap.is_some(),
                    "{}: only a bwrap override runs the probe",
                    case.why
                );
            }
        }
    }

    #[test]
    fn a_failing_bwrap_override_keeps_bwrap_and_names_cause_and_fix() {
        let mut fake = Fake {
            override_value: Some("bwrap"),
            bwrap: Some("/usr/bin/bwrap"),
            probe: Some(("exit 1", "bwrap: setting up uid map: Permission denied")),
            ..Default::default()
        };
        let got = select_backend(&mut fake);
        assert_eq!(got.backend, BackendKind::Bwrap);
        assert!(matches!(got.bwrap, BwrapStatus::ProbeFailed { .. }));
        assert!(
            got.warnings[0].contains("apparmor_restrict_unprivileged_userns"),
            "{:?}",
            got.warnings
        );
        assert!(got.warnings[0].contains("never downgraded"));
    }

    #[test]
    fn userns_failure_names_the_fix() {
        let mut fake = Fake {
            bwrap: Some("/usr/bin/bwrap"),
            probe: Some((
                "exit 1",
                "bwrap: No permissions to creating new namespace, likely because the kernel does not allow non-privileged user namespaces. On e.g. debian this can be enabled with 'sysctl kernel.unprivileged_userns_clone=1'. denied by AppArmor policy",
            )),
            ..Default::default()
        };
        let got = select_backend(&mut fake);
        assert!(got.warnings[0].contains("apparmor_restrict_unprivileged_userns"));
    }

    // Ported from the reference's classifyBwrapProbeError cases (section 9.3).
    #[test]
    fn classification_table() {
        let cases = [
            (
                "",
                "bwrap: Creating new user namespace: Operation not permitted",
                ProbeFailureKind::UserNamespace,
            ),
            (
                "",
                "bwrap: setting up uid map: Permission denied",
                ProbeFailureKind::UserNamespace,
            ),
            (
                "",
                "denied by AppArmor policy",
                ProbeFailureKind::UserNamespace,
            ),
            (
                "",
                "unshare: CLONE_NEWUSER failed",
                ProbeFailureKind::UserNamespace,
            ),
            ("", "need CAP_SYS_ADMIN", ProbeFailureKind::UserNamespace),
            (
                "",
                "bwrap: No such file or directory: /does-not-exist",
                ProbeFailureKind::Unknown,
            ),
            ("spawn bwrap ENOENT", "", ProbeFailureKind::Unknown),
            ("", "", ProbeFailureKind::Unknown),
            (
                "",
                "bwrap: Can't mount proc on /newroot/proc: Invalid argument",
                ProbeFailureKind::ProcMount,
            ),
        ];
        for (message, stderr, want) in cases {
            assert_eq!(classify_probe_failure(message, stderr), want, "{stderr:?}");
        }
    }

    #[test]
    fn parse_override() {
        assert_eq!(BackendKind::parse("BWRAP"), Some(BackendKind::Bwrap));
        assert_eq!(BackendKind::parse("kvm"), Some(BackendKind::Kvm));
        assert_eq!(BackendKind::parse("vm"), None);
    }
}
