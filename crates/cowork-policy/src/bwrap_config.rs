//! `preferences.coworkBwrapMounts` of `claude_desktop_linux_config.json`:
//! extra bind mounts for every session sandbox, validated.
//!
//! ```json
//! {"preferences": {"coworkBwrapMounts": {
//!     "additionalROBinds": ["/opt/tools", {"src": "/nix/store", "dst": "/nix/store"}],
//!     "additionalBinds": [{"src": "/home/u/.cache/claude-tmp", "dst": "/tmp"}],
//!     "disabledDefaultBinds": ["/tmp"],
//!     "writableProtectedPaths": [".vscode"]
//! }}}
//! ```
//!
//! `writableProtectedPaths` opts paths out of the read-only protection of
//! [`crate::protect`] (a name such as `.vscode` or `.git/hooks` everywhere,
//! or a path relative to a mount's root).
//!
//! Rules (the reference's, with messages kept): paths are absolute; `/`,
//! `/proc`, `/dev`, `/sys` and anything below the last three are refused,
//! also when reached through a symlink; read-write sources must be inside
//! `$HOME`, compared by real path on both sides (so `/home -> /var/home`
//! on Silverblue works, reference #701/#702); `dst` of the object form is
//! checked only for absoluteness and forbidden paths. Critical defaults
//! (`/`, `/dev`, `/proc`) cannot be disabled.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use crate::fs_view::FsView;
use crate::paths::{is_within, normalize};

/// A bind from the config: same path inside, or `src -> dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigBind {
    Same(String),
    Mapped { src: String, dst: String },
}

impl ConfigBind {
    pub fn src(&self) -> &str {
        match self {
            ConfigBind::Same(p) => p,
            ConfigBind::Mapped { src, .. } => src,
        }
    }

    pub fn dst(&self) -> &str {
        match self {
            ConfigBind::Same(p) => p,
            ConfigBind::Mapped { dst, .. } => dst,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BwrapMountsConfig {
    pub ro_binds: Vec<ConfigBind>,
    pub rw_binds: Vec<ConfigBind>,
    /// Normalized destinations of default mounts to drop.
    pub disabled: Vec<String>,
    /// Protected paths the user lets the sandbox write.
    pub writable_protected: Vec<String>,
}

impl BwrapMountsConfig {
    pub fn is_empty(&self) -> bool {
        self.ro_binds.is_empty()
            && self.rw_binds.is_empty()
            && self.disabled.is_empty()
            && self.writable_protected.is_empty()
    }
}

const FORBIDDEN: [&str; 4] = ["/", "/proc", "/dev", "/sys"];
/// Default mounts that can never be disabled.
pub const CRITICAL: [&str; 3] = ["/", "/dev", "/proc"];

fn forbidden_reason(p: &str) -> Option<String> {
    if FORBIDDEN.contains(&p) {
        return Some(format!("Path is forbidden: {p}"));
    }
    FORBIDDEN
        .iter()
        .filter(|f| **f != "/")
        .find(|f| is_within(Path::new(p), Path::new(f)))
        .map(|f| format!("Path is under forbidden path: {f}"))
}

/// Validates one path (the reference's `validateMountPath`).
pub fn validate_mount_path(
    path: &str,
    read_write: bool,
    home: &Path,
    fs: &dyn FsView,
) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("Path must be absolute".into());
    }
    let normalized = normalize(Path::new(path));
    let resolved = fs
        .canonicalize(&normalized)
        .unwrap_or_else(|| normalized.clone());
    let n = normalized.to_string_lossy();
    if let Some(reason) = forbidden_reason(&n) {
        return Err(reason);
    }
    let r = resolved.to_string_lossy();
    if resolved != normalized && forbidden_reason(&r).is_some() {
        return Err(format!("Symlink resolves to forbidden path: {r}"));
    }
    if read_write {
        // Real path against real home (and the literal home, for paths that
        // do not exist yet): Silverblue's /home -> /var/home must pass.
        let home_real = fs.canonicalize(home).unwrap_or_else(|| home.to_path_buf());
        if !is_within(&resolved, &home_real) && !is_within(&resolved, home) {
            return Err("Read-write mounts must be under $HOME".into());
        }
    }
    Ok(())
}

fn filter_binds(
    value: Option<&Value>,
    read_write: bool,
    home: &Path,
    fs: &dyn FsView,
    warnings: &mut Vec<String>,
) -> Vec<ConfigBind> {
    let Some(Value::Array(items)) = value else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::String(p) => match validate_mount_path(p, read_write, home, fs) {
                Ok(()) => out.push(ConfigBind::Same(p.clone())),
                Err(reason) => {
                    warnings.push(format!("BwrapConfig: rejected mount \"{p}\": {reason}"))
                }
            },
            Value::Object(o) => {
                let (Some(Value::String(src)), Some(Value::String(dst))) =
                    (o.get("src"), o.get("dst"))
                else {
                    continue;
                };
                if let Err(reason) = validate_mount_path(src, read_write, home, fs) {
                    warnings.push(format!(
                        "BwrapConfig: rejected mount src \"{src}\": {reason}"
                    ));
                    continue;
                }
                // dst is inside the sandbox: no $HOME rule (mapping /tmp is the point).
                if let Err(reason) = validate_mount_path(dst, false, home, fs) {
                    warnings.push(format!(
                        "BwrapConfig: rejected mount dst \"{dst}\": {reason}"
                    ));
                    continue;
                }
                out.push(ConfigBind::Mapped {
                    src: src.clone(),
                    dst: dst.clone(),
                });
            }
            _ => {}
        }
    }
    out
}

/// Reads `preferences.coworkBwrapMounts` from the parsed config file.
/// Anything malformed yields an empty part; rejected entries are explained
/// in the returned warnings.
pub fn parse_bwrap_mounts(
    root: &Value,
    home: &Path,
    fs: &dyn FsView,
) -> (BwrapMountsConfig, Vec<String>) {
    let mut warnings = Vec::new();
    let Some(mounts @ Value::Object(_)) = root
        .get("preferences")
        .and_then(|p| p.get("coworkBwrapMounts"))
    else {
        return (BwrapMountsConfig::default(), warnings);
    };
    let ro_binds = filter_binds(
        mounts.get("additionalROBinds"),
        false,
        home,
        fs,
        &mut warnings,
    );
    let rw_binds = filter_binds(mounts.get("additionalBinds"), true, home, fs, &mut warnings);
    let mut disabled = Vec::new();
    if let Some(Value::Array(items)) = mounts.get("disabledDefaultBinds") {
        for item in items {
            let Value::String(p) = item else { continue };
            if !p.starts_with('/') {
                warnings.push(format!(
                    "BwrapConfig: rejected disabled path \"{p}\": Path must be absolute"
                ));
                continue;
            }
            let n = normalize(Path::new(p)).to_string_lossy().into_owned();
            if CRITICAL.contains(&n.as_str()) {
                warnings.push(format!("BwrapConfig: cannot disable critical mount: {n}"));
                continue;
            }
            disabled.push(n);
        }
    }
    let mut writable_protected = Vec::new();
    if let Some(Value::Array(items)) = mounts.get("writableProtectedPaths") {
        for item in items {
            match item {
                Value::String(p)
                    if crate::protect::plain_relative(Path::new(p.trim_matches('/'))).is_some() =>
                {
                    writable_protected.push(p.trim_matches('/').to_string())
                }
                other => warnings.push(format!(
                    "BwrapConfig: rejected writable protected path {other}: a relative path such \
                     as \".vscode\" or \".git/hooks\" is expected"
                )),
            }
        }
    }
    (
        BwrapMountsConfig {
            ro_binds,
            rw_binds,
            disabled,
            writable_protected,
        },
        warnings,
    )
}

/// Parses the config file's text; a missing file is `None` (empty config).
/// Invalid JSON is an error for `--doctor` to show; the daemon treats it as
/// empty, as the reference does.
pub fn load_bwrap_mounts(
    text: Option<&str>,
    home: &Path,
    fs: &dyn FsView,
) -> Result<(BwrapMountsConfig, Vec<String>), String> {
    let Some(text) = text else {
        return Ok((BwrapMountsConfig::default(), Vec::new()));
    };
    let root: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(parse_bwrap_mounts(&root, home, fs))
}

const TWO_TOKEN: [&str; 10] = [
    "--tmpfs",
    "--dev",
    "--proc",
    "--dir",
    "--remount-ro",
    "--file",
    "--unsetenv",
    "--chdir",
    "--size",
    "--perms",
];
const THREE_TOKEN: [&str; 11] = [
    "--bind-fd",
    "--ro-bind-fd",
    "--ro-bind",
    "--bind",
    "--symlink",
    "--ro-bind-try",
    "--bind-try",
    "--dev-bind",
    "--dev-bind-try",
    "--chmod",
    "--setenv",
];

/// Drops default operations whose destination is disabled (critical ones
/// never are), understanding bwrap's argument counts.
pub fn filter_defaults(defaults: &[String], disabled: &[String]) -> Vec<String> {
    let disabled: HashSet<&str> = disabled
        .iter()
        .map(String::as_str)
        .filter(|d| !CRITICAL.contains(d))
        .collect();
    let mut out = Vec::with_capacity(defaults.len());
    let mut i = 0;
    while i < defaults.len() {
        let flag = defaults[i].as_str();
        let width = if THREE_TOKEN.contains(&flag) && i + 2 < defaults.len() {
            3
        } else if TWO_TOKEN.contains(&flag) && i + 1 < defaults.len() {
            2
        } else {
            1
        };
        let dest = &defaults[i + width - 1];
        if width == 1 || !disabled.contains(dest.as_str()) {
            out.extend_from_slice(&defaults[i..i + width]);
        }
        i += width;
    }
    out
}

/// The configured binds as bwrap arguments: read-only first, then
/// read-write, each in file order.
pub fn config_bind_args(config: &BwrapMountsConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (flag, binds) in [
        ("--ro-bind", &config.ro_binds),
        ("--bind", &config.rw_binds),
    ] {
        for b in binds {
            out.extend([flag.to_string(), b.src().to_string(), b.dst().to_string()]);
        }
    }
    out
}

/// Defaults minus disabled ones, then the configured binds (the
/// reference's `mergeBwrapArgs`).
pub fn merge_bwrap_args(defaults: &[String], config: &BwrapMountsConfig) -> Vec<String> {
    let mut out = filter_defaults(defaults, &config.disabled);
    out.extend(config_bind_args(config));
    out
}

/// Destinations under which a configured bind shadows a default read-only
/// system mount (for `--doctor`).
pub fn shadowed_default(dst: &str) -> Option<&'static str> {
    ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64"]
        .into_iter()
        .find(|d| is_within(Path::new(dst), Path::new(d)))
}

/// Paths of the config file entries, for display.
pub fn describe(bind: &ConfigBind) -> String {
    match bind {
        ConfigBind::Same(p) => p.clone(),
        ConfigBind::Mapped { src, dst } => format!("{src} -> {dst}"),
    }
}

#[cfg(test)]
#[path = "bwrap_config_tests.rs"]
mod tests;
