//! The AppArmor profile that lets this binary (and the bwrap it runs)
//! create user namespaces where Ubuntu restricts them, and the doctor's
//! advice about it (pure).
//!
//! The profile text is `packaging/apparmor/cowork-vm-service`, the same
//! file the package ships (see its comments for why it is attached to this
//! binary and how bwrap inherits the grant).

use std::path::Path;

use super::facts::Facts;
use super::report::{Check, Status};

/// The profile, as packaged.
pub const PROFILE: &str = include_str!("../../../../packaging/apparmor/cowork-vm-service");
/// The profile's name (the label a task under it has).
pub const PROFILE_NAME: &str = "cowork-vm-service";
/// The path the packaged profile is attached to.
pub const PACKAGED_BINARY: &str = "/usr/bin/cowork-vm-service";
/// Where the package keeps the profile (its postinst installs it from here).
pub const SHIPPED_PROFILE: &str = "/usr/share/cowork-vm-service/apparmor/cowork-vm-service";
/// Where a loaded profile lives.
pub const INSTALLED_PROFILE: &str = "/etc/apparmor.d/cowork-vm-service";
/// The sysctl that makes the profile necessary.
pub const RESTRICT_SYSCTL: &str = "apparmor_restrict_unprivileged_userns";

/// The profile's rules (its comments left out) attached to `binary`.
pub fn profile_for(binary: &Path) -> Vec<String> {
    let shown = binary.display().to_string();
    let attachment = if shown.contains(char::is_whitespace) {
        format!("\"{shown}\"")
    } else {
        shown
    };
    PROFILE
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            if l.starts_with("profile ") {
                l.replacen(PACKAGED_BINARY, &attachment, 1)
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// How to grant user namespaces to `binary` (this one when known).
pub fn fix_hints(binary: Option<&Path>) -> Vec<String> {
    let binary = binary.unwrap_or(Path::new(PACKAGED_BINARY));
    let mut hints = Vec::new();
    if binary == Path::new(PACKAGED_BINARY) {
        hints.push(format!(
            "AppArmor restricts user namespaces (kernel.{RESTRICT_SYSCTL}=1). Grant them to this \
             binary only (bwrap, which it runs, inherits the grant): `sudo install -m 644 \
             {SHIPPED_PROFILE} {INSTALLED_PROFILE} && sudo apparmor_parser -r {INSTALLED_PROFILE}` \
             (the package's postinst does this where the kernel has the restriction; local \
             changes go in /etc/apparmor.d/local/{PROFILE_NAME})"
        ));
    } else {
        hints.push(format!(
            "AppArmor restricts user namespaces (kernel.{RESTRICT_SYSCTL}=1). Grant them to this \
             binary only (bwrap, which it runs, inherits the grant): save this as \
             {INSTALLED_PROFILE}"
        ));
        hints.extend(profile_for(binary).iter().map(|l| format!("    {l}")));
        hints.push(format!(
            "then run `sudo apparmor_parser -r {INSTALLED_PROFILE}`. The profile is attached to \
             {}: whatever program is at that path gets user namespaces, so keep it writable by \
             root only (e.g. `sudo install -m 755 {} /usr/local/bin/` and attach the profile \
             there).",
            binary.display(),
            binary.display()
        ));
    }
    hints.push(format!(
        "Or, for all programs (weaker): `sudo sysctl kernel.{RESTRICT_SYSCTL}=0` (persist it in \
         /etc/sysctl.d/)."
    ));
    hints
}

/// Whether this binary runs under its profile, where the kernel restricts
/// user namespaces (`None` elsewhere).
pub fn label_check(facts: &Facts) -> Option<Check> {
    let restricted = facts
        .sysctls
        .iter()
        .any(|(n, v)| n == RESTRICT_SYSCTL && v == "1");
    if !restricted {
        return None;
    }
    let label = facts.apparmor_label.as_deref().unwrap_or("unknown");
    let ours = label == PROFILE_NAME || label.starts_with(&format!("{PROFILE_NAME} ("));
    let bwrap_works = matches!(facts.bwrap_probe, Some(Ok(())));
    Some(if ours {
        Check::new(
            Status::Pass,
            format!(
                "AppArmor: this binary runs under its profile ({label}); the bwrap it runs \
                 inherits the userns grant"
            ),
        )
    } else if bwrap_works {
        Check::new(
            Status::Pass,
            format!(
                "AppArmor: no cowork-vm-service profile on this binary (label: {label}), but \
                 bwrap creates user namespaces anyway"
            ),
        )
    } else {
        Check::new(
            Status::Warn,
            format!(
                "AppArmor: no cowork-vm-service profile is attached to this binary (label: \
                 {label}), so bwrap cannot create user namespaces"
            ),
        )
        .hint("see the fix under the bwrap probe above")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn the_packaged_profile_grants_userns_to_our_binary_only() {
        let rules = profile_for(Path::new(PACKAGED_BINARY));
        assert_eq!(
            rules,
            [
                "abi <abi/4.0>,",
                "include <tunables/global>",
                "profile cowork-vm-service /usr/bin/cowork-vm-service flags=(unconfined) {",
                "  userns,",
                "  include if exists <local/cowork-vm-service>",
                "}",
            ]
        );
        assert!(
            !PROFILE.contains("profile bwrap"),
            "never on the shared bwrap"
        );
        let hint = cowork_policy::selection::USERNS_HINT;
        assert!(
            hint.contains("cowork-vm-service AppArmor profile"),
            "{hint}"
        );
        assert!(!hint.contains("/usr/bin/bwrap"), "{hint}");
    }

    #[test]
    fn another_binary_gets_the_profile_attached_to_its_path() {
        let rules = profile_for(Path::new("/home/u/.cargo/bin/cowork-vm-service"));
        assert_eq!(
            rules[2],
            "profile cowork-vm-service /home/u/.cargo/bin/cowork-vm-service flags=(unconfined) {"
        );
        let spaced = profile_for(Path::new("/opt/my tools/cowork-vm-service"));
        assert_eq!(
            spaced[2],
            "profile cowork-vm-service \"/opt/my tools/cowork-vm-service\" flags=(unconfined) {"
        );
    }

    #[test]
    fn hints_name_the_shipped_file_or_print_the_profile() {
        let packaged = fix_hints(Some(Path::new(PACKAGED_BINARY))).join("\n");
        assert!(packaged.contains(SHIPPED_PROFILE), "{packaged}");
        assert!(packaged.contains("sudo apparmor_parser -r /etc/apparmor.d/cowork-vm-service"));
        assert!(!packaged.contains("/usr/bin/bwrap"));
        let cargo = fix_hints(Some(Path::new("/home/u/.cargo/bin/cowork-vm-service"))).join("\n");
        assert!(
            cargo.contains("    profile cowork-vm-service /home/u/.cargo/bin/cowork-vm-service"),
            "{cargo}"
        );
        assert!(cargo.contains("writable by root only"));
        assert!(cargo.contains("apparmor_restrict_unprivileged_userns=0"));
    }
}
