//! `install-client` / `uninstall-client`: Claude Desktop hooked up to this
//! binary in one step, and undone in one.
//!
//! * 3.x client (claude-desktop-debian's launcher): the launcher environment
//!   file ([`env_file_path`]) gets `COWORK_VM_BACKEND=bwrap` and
//!   `COWORK_NODE_PATH=<this binary>`; the editing is pure ([`env_file`]),
//!   the reading, writing and diffing are here.
//! * 2.x client, or any launcher that must run a `.js` file:
//!   `--replace-script PATH` puts the shim ([`SHIM`],
//!   `contrib/cowork-vm-service.js`) in place of the reference daemon's
//!   script, keeping the original next to it ([`backup_path`]). When this
//!   binary is not in a directory every session has on `PATH`, a
//!   `cowork-vm-service` symlink next to the shim points at it (the shim
//!   looks there first).
//!
//! `--dry-run` prints what would change (the environment file as a unified
//! diff) and changes nothing.

pub mod env_file;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::ClientArgs;
use crate::dirs::Dirs;
use env_file::{BACKEND_KEY, EditError, NODE_PATH_KEY, Restored};

/// The shim for script-launching clients, as shipped in `contrib/`.
pub const SHIM: &str = include_str!("../../../../contrib/cowork-vm-service.js");

/// Suffix of the copy `--replace-script` keeps of the script it replaces.
pub const BACKUP_SUFFIX: &str = ".cowork-vm-service-backup";

/// Directories on every desktop session's `PATH`: a binary there needs no
/// symlink next to the shim.
const SYSTEM_BIN_DIRS: [&str; 3] = ["/usr/bin", "/usr/local/bin", "/bin"];

#[derive(Debug, thiserror::Error)]
pub enum HookupError {
    #[error("cannot tell where this binary is: {0}")]
    OwnPath(std::io::Error),
    #[error("this binary's path {0:?} is not UTF-8; the environment file cannot name it")]
    NotUtf8(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Edit { path: PathBuf, source: EditError },
    #[error(
        "{0} does not exist; point --replace-script at the client's cowork-vm-service.js \
         (2.x: <resources>/app.asar.unpacked/cowork-vm-service.js)"
    )]
    NoScript(PathBuf),
    #[error(
        "{script} is the shim, but its backup {backup} is missing: reinstall the client to get its script back"
    )]
    NoBackup { script: PathBuf, backup: PathBuf },
    #[error(
        "cannot write {script} (or a file next to it): the client's files are root's, and under \
         sudo cowork-vm-service runs as the user who called it. Replace the script as root \
         instead: `sudo cp -p {script} {backup} && sudo install -m 644 \
         /usr/share/cowork-vm-service/cowork-vm-service.js {script}` (the shim is \
         contrib/cowork-vm-service.js in the source); undo with `sudo mv {backup} {script}`"
    )]
    ScriptNotWritable { script: PathBuf, backup: PathBuf },
}

/// `${XDG_CONFIG_HOME:-~/.config}/claude-desktop-debian/environment`.
pub fn env_file_path(dirs: &Dirs) -> PathBuf {
    dirs.claude_config
        .parent()
        .unwrap_or(&dirs.home)
        .join("claude-desktop-debian/environment")
}

/// Where `--replace-script PATH` keeps the script it replaced.
pub fn backup_path(script: &Path) -> PathBuf {
    let mut name = script.as_os_str().to_owned();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

/// `cowork-vm-service install-client`.
pub fn install_main(args: &ClientArgs) -> ExitCode {
    report("install-client", install(args, &Dirs::from_env()))
}

/// `cowork-vm-service uninstall-client`.
pub fn uninstall_main(args: &ClientArgs) -> ExitCode {
    report("uninstall-client", uninstall(args, &Dirs::from_env()))
}

fn report(what: &str, result: Result<Vec<String>, HookupError>) -> ExitCode {
    match result {
        Ok(lines) => {
            let mut out = std::io::stdout().lock();
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cowork-vm-service {what}: {e}");
            ExitCode::from(1)
        }
    }
}

fn own_exe() -> Result<PathBuf, HookupError> {
    std::env::current_exe().map_err(HookupError::OwnPath)
}

/// What install-client did (or, with `--dry-run`, would do), as lines for
/// the user.
pub fn install(args: &ClientArgs, dirs: &Dirs) -> Result<Vec<String>, HookupError> {
    let exe = own_exe()?;
    let exe_text = exe
        .to_str()
        .ok_or_else(|| HookupError::NotUtf8(exe.clone()))?;
    if let Some(script) = &args.replace_script {
        // Before anything changes.
        if !script.exists() {
            return Err(HookupError::NoScript(script.clone()));
        }
        if !args.dry_run && !writable(script) {
            return Err(HookupError::ScriptNotWritable {
                script: script.clone(),
                backup: backup_path(script),
            });
        }
    }
    let path = env_file_path(dirs);
    let before = read_optional(&path)?;
    let after = env_file::install(
        before.as_deref(),
        &[(BACKEND_KEY, "bwrap"), (NODE_PATH_KEY, exe_text)],
    )
    .map_err(|source| HookupError::Edit {
        path: path.clone(),
        source,
    })?;
    let mut lines = Vec::new();
    if before.as_deref() == Some(after.as_str()) {
        lines.push(format!(
            "{}: already hooked up ({BACKEND_KEY}=bwrap, {NODE_PATH_KEY}={exe_text})",
            path.display()
        ));
    } else if args.dry_run {
        lines.push(diff(&path, before.as_deref(), Some(&after)));
    } else {
        let new_dir = path.parent().is_some_and(|d| !d.exists());
        write_atomically(&path, &after)?;
        lines.push(format!(
            "{}: set {BACKEND_KEY}=bwrap and {NODE_PATH_KEY}={exe_text}",
            path.display()
        ));
        if before.is_some() {
            lines.push(
                "  earlier values of these are kept as comments; `cowork-vm-service \
                 uninstall-client` restores them"
                    .into(),
            );
        }
        if new_dir {
            lines.push(
                "  (the directory did not exist: claude-desktop-debian's launcher reads this \
                 file once it is installed; other launchers need the two variables in the \
                 client's environment)"
                    .into(),
            );
        }
    }
    for key in [BACKEND_KEY, NODE_PATH_KEY] {
        if let Some(v) = std::env::var_os(key) {
            lines.push(format!(
                "note: {key}={} is set in this environment; the launcher lets it win over the file",
                v.to_string_lossy()
            ));
        }
    }
    if let Some(script) = &args.replace_script {
        lines.extend(install_shim(script, &exe, args.dry_run)?);
    }
    if !args.dry_run {
        lines.push("Restart Claude Desktop to use it.".into());
    }
    Ok(lines)
}

/// What uninstall-client did (or would do).
pub fn uninstall(args: &ClientArgs, dirs: &Dirs) -> Result<Vec<String>, HookupError> {
    let path = env_file_path(dirs);
    let mut lines = Vec::new();
    match read_optional(&path)? {
        None => lines.push(format!(
            "{}: does not exist, nothing to undo",
            path.display()
        )),
        Some(before) => {
            let restored = env_file::uninstall(&before).map_err(|source| HookupError::Edit {
                path: path.clone(),
                source,
            })?;
            match (restored, args.dry_run) {
                (Restored::Untouched, _) => lines.push(format!(
                    "{}: not hooked up by install-client, nothing to undo",
                    path.display()
                )),
                (Restored::Text(after), true) => {
                    lines.push(diff(&path, Some(&before), Some(&after)));
                }
                (Restored::Delete, true) => lines.push(diff(&path, Some(&before), None)),
                (Restored::Text(after), false) => {
                    write_atomically(&path, &after)?;
                    lines.push(format!(
                        "{}: removed install-client's settings and restored the earlier lines",
                        path.display()
                    ));
                }
                (Restored::Delete, false) => {
                    std::fs::remove_file(&path).map_err(|source| HookupError::Write {
                        path: path.clone(),
                        source,
                    })?;
                    lines.push(format!(
                        "{}: removed (install-client had created it)",
                        path.display()
                    ));
                }
            }
        }
    }
    if let Some(script) = &args.replace_script {
        lines.extend(uninstall_shim(script, args.dry_run)?);
    }
    Ok(lines)
}

fn read_optional(path: &Path) -> Result<Option<String>, HookupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HookupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A unified diff of the file's change (`None`: absent).
fn diff(path: &Path, before: Option<&str>, after: Option<&str>) -> String {
    let shown = path.display().to_string();
    let old_name = if before.is_some() {
        shown.as_str()
    } else {
        "/dev/null"
    };
    let new_name = if after.is_some() {
        shown.as_str()
    } else {
        "/dev/null"
    };
    similar::TextDiff::from_lines(before.unwrap_or(""), after.unwrap_or(""))
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
        .trim_end()
        .to_string()
}

/// Replaces `path` with `text` by renaming a sibling temporary file over
/// it, keeping its permissions; creates the directory if needed.
fn write_atomically(path: &Path, text: &str) -> Result<(), HookupError> {
    let failed = |source| HookupError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let old_permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    let mut tmp = tempfile::Builder::new()
        .prefix(".cowork-vm-service-")
        .tempfile_in(dir)
        .map_err(failed)?;
    tmp.write_all(text.as_bytes()).map_err(failed)?;
    let permissions = old_permissions.unwrap_or_else(|| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode(0o644)
    });
    std::fs::set_permissions(tmp.path(), permissions).map_err(failed)?;
    tmp.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

/// The script and its directory (for the backup and the temporary file)
/// are writable by us.
fn writable(script: &Path) -> bool {
    use rustix::fs::{Access, access};
    let dir = script.parent().unwrap_or(Path::new("."));
    access(script, Access::WRITE_OK).is_ok() && access(dir, Access::WRITE_OK).is_ok()
}

/// The symlink next to the shim, when this binary needs one.
fn shim_link(script: &Path, exe: &Path) -> Option<PathBuf> {
    let dir = script.parent()?;
    let link = dir.join("cowork-vm-service");
    let on_path = exe
        .parent()
        .is_some_and(|d| SYSTEM_BIN_DIRS.iter().any(|s| d == Path::new(s)));
    (!on_path && link != exe).then_some(link)
}

fn install_shim(script: &Path, exe: &Path, dry_run: bool) -> Result<Vec<String>, HookupError> {
    let current = match std::fs::read(script) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HookupError::NoScript(script.to_path_buf()));
        }
        Err(source) => {
            return Err(HookupError::Read {
                path: script.to_path_buf(),
                source,
            });
        }
    };
    let backup = backup_path(script);
    let mut lines = Vec::new();
    if current == SHIM.as_bytes() {
        lines.push(format!("{}: already the shim", script.display()));
    } else if dry_run {
        lines.push(format!(
            "would replace {} with the shim (original kept as {})",
            script.display(),
            backup.display()
        ));
    } else {
        std::fs::copy(script, &backup).map_err(|source| HookupError::Write {
            path: backup.clone(),
            source,
        })?;
        write_atomically(script, SHIM)?;
        lines.push(format!(
            "{}: replaced with the shim, which runs this binary (original kept as {})",
            script.display(),
            backup.display()
        ));
    }
    if let Some(link) = shim_link(script, exe) {
        match std::fs::symlink_metadata(&link) {
            Ok(_) => {}
            Err(_) if dry_run => lines.push(format!(
                "would link {} -> {} (the shim runs the binary next to it)",
                link.display(),
                exe.display()
            )),
            Err(_) => {
                std::os::unix::fs::symlink(exe, &link).map_err(|source| HookupError::Write {
                    path: link.clone(),
                    source,
                })?;
                lines.push(format!("{} -> {}", link.display(), exe.display()));
            }
        }
    }
    Ok(lines)
}

fn uninstall_shim(script: &Path, dry_run: bool) -> Result<Vec<String>, HookupError> {
    let backup = backup_path(script);
    let is_shim = std::fs::read(script).is_ok_and(|b| b == SHIM.as_bytes());
    let has_backup = backup.exists();
    if is_shim && has_backup && !dry_run && !writable(script) {
        return Err(HookupError::ScriptNotWritable {
            script: script.to_path_buf(),
            backup,
        });
    }
    let mut lines = Vec::new();
    match (is_shim, has_backup) {
        (true, true) if dry_run => lines.push(format!(
            "would restore {} from {}",
            script.display(),
            backup.display()
        )),
        (true, true) => {
            std::fs::rename(&backup, script).map_err(|source| HookupError::Write {
                path: script.to_path_buf(),
                source,
            })?;
            lines.push(format!(
                "{}: restored from {}",
                script.display(),
                backup.display()
            ));
        }
        (true, false) => {
            return Err(HookupError::NoBackup {
                script: script.to_path_buf(),
                backup,
            });
        }
        (false, true) => lines.push(format!(
            "{} is not the shim (updated by the client?): left as it is; the old backup stays at {}",
            script.display(),
            backup.display()
        )),
        (false, false) => lines.push(format!(
            "{}: not the shim, nothing to undo",
            script.display()
        )),
    }
    // The symlink install-client may have put next to the shim.
    let link = script
        .parent()
        .map(|d| d.join("cowork-vm-service"))
        .filter(|l| std::fs::symlink_metadata(l).is_ok_and(|m| m.file_type().is_symlink()));
    let ours = own_exe().ok();
    if let Some(link) = link
        && std::fs::read_link(&link).ok() == ours
    {
        if dry_run {
            lines.push(format!("would remove the symlink {}", link.display()));
        } else {
            std::fs::remove_file(&link).map_err(|source| HookupError::Write {
                path: link.clone(),
                source,
            })?;
            lines.push(format!("removed the symlink {}", link.display()));
        }
    }
    Ok(lines)
}
