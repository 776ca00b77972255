//! Which accelerator the VM uses, and the host TSC frequency TCG guests
//! need.
//!
//! KVM is used only when a short test boot under KVM reaches the agent:
//! on some hosts `/dev/kvm` opens fine but stock kernels hang (a PVM host,
//! `kvm_pvm`: measured in `microvm-lab.md`), so opening the device proves
//! nothing. Otherwise TCG, with the host TSC frequency on the guest's
//! command line. `COWORK_VM_ACCEL=kvm|tcg` skips the test.

use std::time::{Duration, Instant};

use cowork_policy::qemu_argv::Accel;
use rustix::fs::{Access, access};

/// Forces the accelerator (`kvm` or `tcg`).
pub const ACCEL_ENV: &str = "COWORK_VM_ACCEL";

/// How long the KVM test boot may take (a working KVM boots in well
/// under a second; the PVM host's first kernel line came after 13 s).
pub const KVM_TEST_BOOT: Duration = Duration::from_secs(6);

/// The decision and why, for the log, `getDaemonInfo` and `--doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// What the environment forces, if anything.
pub fn forced() -> Option<Result<Accel, String>> {
    let v = std::env::var(ACCEL_ENV).ok()?;
    Some(match v.trim().to_ascii_lowercase().as_str() {
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        "" | "auto" => return None,
        other => Err(format!("{ACCEL_ENV}={other}: expected kvm, tcg or auto")),
    })
}

/// Whether KVM is worth a test boot: `/dev/kvm` readable and writable.
pub fn kvm_device_usable() -> Result<(), String> {
    access("/dev/kvm", Access::READ_OK | Access::WRITE_OK).map_err(|e| match e {
        rustix::io::Errno::NOENT => {
            "/dev/kvm does not exist (no KVM module, or a container)".into()
        }
        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
            "no access to /dev/kvm (add the user to the kvm group)".into()
        }
        other => format!("/dev/kvm: {other}"),
    })
}

/// Where the KVM test boot's outcome is remembered for the current host
/// boot (a failing test costs [`KVM_TEST_BOOT`] at every daemon start
/// otherwise): `${XDG_CACHE_HOME:-~/.cache}/cowork-vm-service/accel`.
pub fn cache_file(home: &std::path::Path) -> std::path::PathBuf {
    super::guest::default_dir(home)
        .parent()
        .map(|p| p.join("accel"))
        .unwrap_or_else(|| home.join(".cache/cowork-vm-service/accel"))
}

/// This boot of the host (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// The remembered decision for this host boot and `kernel`, if any.
pub fn cached(file: &std::path::Path, kernel: &str) -> Option<AccelChoice> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut lines = text.lines();
    let (boot, version, accel) = (lines.next()?, lines.next()?, lines.next()?);
    if Some(boot) != boot_id().as_deref() || version != kernel {
        return None;
    }
    let accel = match accel {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    Some(AccelChoice {
        accel,
        reason: format!("{} (test boot earlier in this host boot)", lines.next()?),
    })
}

/// Remembers `choice` for this host boot (best effort).
pub fn remember(file: &std::path::Path, kernel: &str, choice: &AccelChoice) {
    let Some(boot) = boot_id() else { return };
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = format!(
        "{boot}\n{kernel}\n{}\n{}\n",
        choice.accel.as_str(),
        choice.reason.replace('\n', " ")
    );
    let _ = std::fs::write(file, text);
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; every x86_64 CPU
    // has it and it has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The host's TSC frequency in kHz, measured against CLOCK_MONOTONIC
/// (median of 3 samples of 20 ms), rounded to 1 MHz.
#[cfg(target_arch = "x86_64")]
pub fn host_tsc_khz() -> Option<u64> {
    let mut samples: Vec<u64> = (0..3)
        .filter_map(|_| {
            let (t0, c0) = (Instant::now(), rdtsc());
            std::thread::sleep(Duration::from_millis(20));
            let (c1, t1) = (rdtsc(), Instant::now());
            let ns = t1.duration_since(t0).as_nanos() as u64;
            (ns > 0).then(|| c1.wrapping_sub(c0).saturating_mul(1_000_000) / ns)
        })
        .collect();
    samples.sort_unstable();
    let khz = *samples.get(1)?;
    (khz > 100_000).then(|| (khz + 500) / 1000 * 1000)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn host_tsc_khz() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_remembered_for_this_boot_and_kernel_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("accel");
        assert_eq!(cached(&file, "6.1"), None);
        let choice = AccelChoice {
            accel: Accel::Tcg,
            reason: "software emulation: test boot failed".into(),
        };
        remember(&file, "6.1", &choice);
        let again = cached(&file, "6.1").expect("remembered");
        assert_eq!(again.accel, Accel::Tcg);
        assert!(
            again
                .reason
                .starts_with("software emulation: test boot failed")
        );
        assert_eq!(cached(&file, "6.2"), None, "another kernel is tested again");
    }

    #[test]
    fn the_tsc_frequency_is_plausible() {
        let khz = host_tsc_khz().expect("x86_64 has a TSC");
        assert!((500_000..10_000_000).contains(&khz), "{khz} kHz");
        assert_eq!(khz % 1000, 0);
    }
}
