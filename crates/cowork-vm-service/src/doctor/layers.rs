//! The sandbox's kernel layers as `--doctor` reports them: seccomp,
//! Landlock and the session limits, each as the daemon applies it.
//!
//! PASS: every sandbox the daemon starts gets the layer. WARN: it does not
//! (or only in part) and something the user can do would change that; the
//! hint says what. INFO: it does not and nothing on this machine would
//! change that, so no remedy is suggested. FAIL: sandboxes cannot start.

use cowork_policy::confine::landlock::TARGET_ABI;
use cowork_policy::confine::seccomp::{SeccompArch, sandbox_programs};

use super::facts::{CgroupLimits, Facts, LandlockSupport};
use super::report::{Check, Status};

/// The first Landlock ABI that scopes abstract Unix sockets and signals
/// (Linux 6.12): from it on, the sandbox's plan is enforced in full.
const SCOPED_ABI: u32 = 6;

/// The three checks, in the order the agent applies the layers.
pub fn layer_checks(facts: &Facts) -> Vec<Check> {
    vec![
        landlock_check(facts.landlock),
        seccomp_check(facts.seccomp, &facts.arch),
        limits_check(&facts.cgroup),
    ]
}

fn landlock_check(landlock: LandlockSupport) -> Check {
    let target = TARGET_ABI as u32;
    match landlock {
        LandlockSupport::Abi(abi) if abi >= SCOPED_ABI => Check::new(
            Status::Pass,
            format!(
                "Landlock ABI {abi}: every sandbox gets its Landlock rules (written for ABI {target}), \
                 abstract Unix sockets and signals scoped to it"
            ),
        ),
        LandlockSupport::Abi(abi) => {
            let missing: Vec<&str> = [
                (2, "renames and links across directories"),
                (3, "truncation"),
                (5, "device ioctls"),
                (SCOPED_ABI, "abstract Unix socket and signal scoping"),
            ]
            .iter()
            .filter(|(since, _)| abi < *since)
            .map(|(_, what)| *what)
            .collect();
            Check::new(
                Status::Warn,
                format!(
                    "Landlock ABI {abi}: every sandbox gets its Landlock rules in part (written \
                     for ABI {target}; not enforced by this kernel: {})",
                    missing.join(", ")
                ),
            )
            .hint("Linux 6.12 or newer (Landlock ABI 6) enforces all of them")
        }
        LandlockSupport::NotEnabled => Check::new(
            Status::Warn,
            "Landlock is built into this kernel but not enabled: sandboxes get no Landlock rules \
             (only the mount table keeps writes out of read-only places)",
        )
        .hint(
            "add landlock to the kernel's lsm= boot parameter, keeping the ones it has \
             (`cat /sys/kernel/security/lsm`), and reboot",
        ),
        LandlockSupport::NotBuilt => Check::new(
            Status::Warn,
            "this kernel has no Landlock (built without CONFIG_SECURITY_LANDLOCK): sandboxes get \
             no Landlock rules (only the mount table keeps writes out of read-only places)",
        )
        .hint(
            "only a kernel built with Landlock adds this wall (most distributions' kernels from \
             5.13 on); no boot option can",
        ),
    }
}

fn seccomp_check(available: bool, arch: &str) -> Check {
    match (available, arch.parse::<SeccompArch>()) {
        (true, Ok(arch)) => {
            let programs = sandbox_programs(arch);
            Check::new(
                Status::Pass,
                format!(
                    "seccomp: every sandbox installs the deny list ({} filters, {} instructions, {arch})",
                    programs.programs.len(),
                    programs.instructions()
                ),
            )
        }
        (_, Err(_)) => Check::new(
            Status::Fail,
            format!("seccomp: no filter for this architecture ({arch}): sandboxes cannot start"),
        )
        .hint(
            "the deny list is written for x86_64 and aarch64; COWORK_VM_BACKEND=host runs \
             commands without a sandbox",
        ),
        (false, Ok(_)) => Check::new(
            Status::Fail,
            "seccomp: this kernel cannot filter syscalls: sandboxes cannot start",
        )
        .hint("the sandbox needs a kernel built with CONFIG_SECCOMP_FILTER (distribution kernels are)"),
    }
}

fn limits_check(cg: &CgroupLimits) -> Check {
    const WHAT: &str = "session limits (memory, CPU, processes)";
    match &cg.detected {
        Ok(place) => match &cg.unenforced {
            None => Check::new(Status::Pass, format!("{WHAT} enforced: {place}")),
            Some(partly) => Check::new(
                Status::Warn,
                format!("{WHAT} partly enforced: {place}; {partly}"),
            )
            .hint(
                "delegate those controllers to the daemon's unit too \
                 (Delegate=yes delegates memory, pids and cpu); a transient scope gets only \
                 what the systemd user manager was given (`Delegate=` of user@.service)",
            ),
        },
        Err(reason) if cg.v1_hierarchies && !cg.root => {
            Check::new(Status::Warn, format!("{WHAT} are not enforced: {reason}")).hint(
                "on this cgroup v1 host only a daemon running as root (started without sudo, \
                 which switches to your user) makes session cgroups, and its sandboxes then run \
                 as uid 0 without capabilities",
            )
        }
        Err(reason) if cg.v1_hierarchies => {
            Check::new(Status::Warn, format!("{WHAT} are not enforced: {reason}")).hint(
                "the daemon runs as root but cannot make cgroups in the memory, pids and cpu \
                 hierarchies (a read-only /sys/fs/cgroup in a container?): give it write access",
            )
        }
        // cgroup v2: a cgroup of the daemon's own, delegated, gives limits.
        Err(reason) => Check::new(
            Status::Warn,
            format!(
                "{WHAT} are not enforced: {reason} (/dev/shm and the sandbox's other tmpfs are \
                 sized all the same)"
            ),
        )
        .hint(
            "start the daemon in a cgroup of its own with the controllers delegated, e.g. \
             `systemd-run --user -p Delegate=yes --unit=cowork-vm-service /usr/bin/cowork-vm-service` \
             before the client (which then uses its socket)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(c: &Check) -> String {
        let mut text = format!("{:?} {}", c.status, c.title);
        for h in &c.hints {
            text.push_str(" | ");
            text.push_str(h);
        }
        text
    }

    #[test]
    fn landlock_table() {
        let cases = [
            (
                LandlockSupport::Abi(7),
                "Pass Landlock ABI 7: every sandbox gets its Landlock rules (written for ABI 7), \
                 abstract Unix sockets and signals scoped to it",
            ),
            (
                LandlockSupport::Abi(6),
                "Pass Landlock ABI 6: every sandbox gets its Landlock rules (written for ABI 7)",
            ),
            (
                LandlockSupport::Abi(5),
                "Warn Landlock ABI 5: every sandbox gets its Landlock rules in part (written for \
                 ABI 7; not enforced by this kernel: abstract Unix socket and signal scoping) \
                 | Linux 6.12 or newer",
            ),
            (
                LandlockSupport::Abi(1),
                "not enforced by this kernel: renames and links across directories, truncation, \
                 device ioctls, abstract Unix socket and signal scoping)",
            ),
            (
                LandlockSupport::NotEnabled,
                "Warn Landlock is built into this kernel but not enabled: sandboxes get no \
                 Landlock rules",
            ),
            (
                LandlockSupport::NotEnabled,
                "| add landlock to the kernel's lsm= boot parameter",
            ),
            (
                LandlockSupport::NotBuilt,
                "Warn this kernel has no Landlock (built without CONFIG_SECURITY_LANDLOCK)",
            ),
            (LandlockSupport::NotBuilt, "no boot option can"),
        ];
        for (support, want) in cases {
            let got = line(&landlock_check(support));
            assert!(got.contains(want), "{support:?}:\n got {got}\nwant {want}");
        }
    }

    #[test]
    fn seccomp_table() {
        let cases = [
            (
                true,
                "x86_64",
                "Pass seccomp: every sandbox installs the deny list (3 filters, ",
            ),
            (
                true,
                "aarch64",
                "Pass seccomp: every sandbox installs the deny list (2 filters, ",
            ),
            (
                true,
                "riscv64",
                "Fail seccomp: no filter for this architecture (riscv64): sandboxes cannot start",
            ),
            (
                false,
                "x86_64",
                "Fail seccomp: this kernel cannot filter syscalls: sandboxes cannot start \
                 | the sandbox needs a kernel built with CONFIG_SECCOMP_FILTER",
            ),
        ];
        for (available, arch, want) in cases {
            let got = line(&seccomp_check(available, arch));
            assert!(got.starts_with(want), "{arch}:\n got {got}\nwant {want}");
        }
    }

    #[test]
    fn limits_table() {
        let not_writable = "memory (/sys/fs/cgroup/memory/x) is not writable";
        let v2 = "the daemon's cgroup v2 /sys/fs/cgroup/u also holds 3 other processes (a \
                  cgroup with processes in it cannot give controllers to session cgroups)";
        let cases = [
            (
                CgroupLimits {
                    detected: Ok("cgroup v1 (memory, pids, cpu): /sys/fs/cgroup/memory/d".into()),
                    unenforced: None,
                    v1_hierarchies: true,
                    root: true,
                },
                "Pass session limits (memory, CPU, processes) enforced: cgroup v1 (memory, pids, \
                 cpu): /sys/fs/cgroup/memory/d",
            ),
            (
                CgroupLimits {
                    detected: Err(not_writable.into()),
                    unenforced: None,
                    v1_hierarchies: true,
                    root: false,
                },
                "Warn session limits (memory, CPU, processes) are not enforced: memory \
                 (/sys/fs/cgroup/memory/x) is not writable | on this cgroup v1 host only a \
                 daemon running as root (started without sudo",
            ),
            (
                CgroupLimits {
                    detected: Err(not_writable.into()),
                    unenforced: None,
                    v1_hierarchies: true,
                    root: true,
                },
                "Warn session limits (memory, CPU, processes) are not enforced: memory \
                 (/sys/fs/cgroup/memory/x) is not writable | the daemon runs as root but",
            ),
            (
                CgroupLimits {
                    detected: Err(v2.into()),
                    unenforced: None,
                    v1_hierarchies: false,
                    root: false,
                },
                "Warn session limits (memory, CPU, processes) are not enforced: the daemon's \
                 cgroup v2 /sys/fs/cgroup/u also holds 3 other processes (a cgroup with \
                 processes in it cannot give controllers to session cgroups) (/dev/shm and the \
                 sandbox's other tmpfs are sized all the same) | start the daemon in a cgroup of \
                 its own with the controllers delegated, e.g. `systemd-run --user -p \
                 Delegate=yes",
            ),
            (
                CgroupLimits {
                    detected: Ok(
                        "cgroup v2 (memory, pids): /sys/fs/cgroup/s/cowork-vm-service".into(),
                    ),
                    unenforced: Some(
                        "the cpu controller is not delegated to the daemon's cgroup \
                                      v2 /sys/fs/cgroup/s (missing from its cgroup.controllers), \
                                      so those limits are not enforced"
                            .into(),
                    ),
                    v1_hierarchies: false,
                    root: false,
                },
                "Warn session limits (memory, CPU, processes) partly enforced: cgroup v2 (memory, \
                 pids): /sys/fs/cgroup/s/cowork-vm-service; the cpu controller is not delegated",
            ),
            (
                CgroupLimits {
                    detected: Ok("cgroup v2 (memory, pids, cpu) in a transient systemd user \
                                  scope with Delegate=yes, which the daemon asks the user \
                                  manager for at start-up"
                        .into()),
                    unenforced: None,
                    v1_hierarchies: false,
                    root: false,
                },
                "Pass session limits (memory, CPU, processes) enforced: cgroup v2 (memory, pids, \
                 cpu) in a transient systemd user scope",
            ),
        ];
        for (facts, want) in cases {
            let check = limits_check(&facts);
            let got = line(&check);
            assert!(got.starts_with(want), "{facts:?}:\n got {got}\nwant {want}");
            // Never the old advice that changes nothing here.
            assert!(!got.contains("unified_cgroup_hierarchy"), "{got}");
            // A warning always says what to do.
            if check.status == Status::Warn {
                assert!(!check.hints.is_empty(), "{got}");
            } else {
                assert!(check.hints.is_empty(), "{got}");
            }
        }
    }
}
