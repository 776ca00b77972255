//! The microVM's own pieces for `--doctor`'s KVM section: the guest
//! kernel `setup-vm` prepares, which virtiofsd it is, and the accelerator
//! decision (facts gathered here, checks pure).

use std::path::{Path, PathBuf};

use super::report::{Check, Status};
use crate::backend::kvm::{accel, guest, virtiofsd_is_qemus_c_one};

/// What the VM backend would find.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFacts {
    pub guest_dir: PathBuf,
    /// The prepared guest kernel's version, or why there is none.
    pub guest: Option<Result<String, String>>,
    /// The virtiofsd found is QEMU's C one (root only).
    pub c_virtiofsd: bool,
    /// The accelerator remembered from a test boot in this host boot.
    pub accel: Option<(String, String)>,
}

pub fn gather(home: &Path, virtiofsd: Option<&Path>) -> VmFacts {
    let guest_dir = guest::guest_dir(home);
    let guest = Some(
        guest::locate(&guest_dir)
            .map(|g| g.version)
            .map_err(|e| e.to_string()),
    );
    let accel = guest
        .as_ref()
        .and_then(|g| g.as_ref().ok())
        .and_then(|version| accel::cached(&accel::cache_file(home), version))
        .map(|c| (c.accel.as_str().to_string(), c.reason));
    VmFacts {
        guest_dir,
        guest,
        c_virtiofsd: virtiofsd.is_some_and(virtiofsd_is_qemus_c_one),
        accel,
    }
}

/// The checks added to the KVM section; `missing` is the status of an
/// absent piece (fail when the VM is the backend).
pub fn checks(facts: &VmFacts, missing: Status) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match &facts.guest {
        Some(Ok(version)) => Check::new(
            Status::Pass,
            format!("guest kernel {version} in {}", facts.guest_dir.display()),
        ),
        Some(Err(why)) => Check::new(missing, format!("guest kernel: {why}")).hint(
            "`cowork-vm-service setup-vm` (downloads the Debian cloud kernel, no root needed)",
        ),
        None => Check::new(Status::Info, "guest kernel: not checked"),
    });
    if facts.c_virtiofsd {
        out.push(
            Check::new(
                missing,
                "the virtiofsd found is QEMU's C one, which runs only as root",
            )
            .hint(
                "`sudo apt install libseccomp-dev libcap-ng-dev pkg-config && cargo install \
                 virtiofsd --locked`, then set COWORK_VM_VIRTIOFSD_BIN=~/.cargo/bin/virtiofsd",
            ),
        );
    }
    out.push(match &facts.accel {
        Some((accel, reason)) => Check::new(
            if accel == "kvm" { Status::Pass } else { Status::Info },
            format!("accelerator: {accel} ({reason})"),
        ),
        None => Check::new(
            Status::Info,
            "accelerator: decided at the first startVM (KVM when a 6 s test boot under it \
             reaches the agent, else TCG software emulation; COWORK_VM_ACCEL=kvm|tcg skips the test)",
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pieces_say_how_to_get_them() {
        let facts = VmFacts {
            guest_dir: "/c/guest".into(),
            guest: Some(Err("no guest kernel in /c/guest".into())),
            c_virtiofsd: true,
            accel: Some((
                "tcg".into(),
                "software emulation: no access to /dev/kvm".into(),
            )),
        };
        let checks = checks(&facts, Status::Fail);
        let text = format!("{checks:?}");
        assert_eq!(checks.len(), 3);
        assert!(text.contains("setup-vm"), "{text}");
        assert!(text.contains("cargo install virtiofsd"), "{text}");
        assert!(text.contains("accelerator: tcg"), "{text}");
        let ok = VmFacts {
            guest: Some(Ok("6.1.0-57-cloud-amd64".into())),
            ..Default::default()
        };
        let checks = super::checks(&ok, Status::Fail);
        assert_eq!(checks.len(), 2);
        assert!(format!("{checks:?}").contains("6.1.0-57-cloud-amd64"));
    }
}
