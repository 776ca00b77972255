//! Where the daemon keeps things, resolved once from the environment.
//!
//! | what | path |
//! |---|---|
//! | default socket | `${XDG_RUNTIME_DIR:-/tmp}/cowork-vm-service.sock` |
//! | log file | `${XDG_CONFIG_HOME:-$HOME/.config}/Claude/logs/cowork_vm_daemon.log` |
//! | Linux config | `${XDG_CONFIG_HOME:-$HOME/.config}/Claude/claude_desktop_linux_config.json` |
//! | session state | `${XDG_DATA_HOME:-$HOME/.local/share}/cowork-vm-service/sessions/<name>/` |
//!
//! The reference ignores `XDG_CONFIG_HOME` (its bug 15); Claude Desktop
//! itself honours it, so we do too. Relative XDG values are invalid per the
//! XDG spec and ignored.

use std::path::{Path, PathBuf};

/// Resolved locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// `$HOME` as given.
    pub home: PathBuf,
    /// `$HOME` with symlinks resolved (Silverblue: `/home -> /var/home`).
    pub home_real: PathBuf,
    /// `${XDG_CONFIG_HOME:-$HOME/.config}/Claude`.
    pub claude_config: PathBuf,
    /// `${XDG_DATA_HOME:-$HOME/.local/share}/cowork-vm-service`.
    pub state_root: PathBuf,
    /// `$XDG_RUNTIME_DIR`, when set and absolute.
    pub runtime_dir: Option<PathBuf>,
}

impl Dirs {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var_os(k).map(PathBuf::from))
    }

    /// Resolves from any variable lookup (tests pass a closure).
    pub fn from_lookup(get: impl Fn(&str) -> Option<PathBuf>) -> Self {
        let absolute = |k: &str| get(k).filter(|p| p.is_absolute());
        let home = absolute("HOME").unwrap_or_else(|| PathBuf::from("/tmp"));
        let home_real = std::fs::canonicalize(&home).unwrap_or_else(|_| home.clone());
        let config = absolute("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
        let data = absolute("XDG_DATA_HOME").unwrap_or_else(|| home.join(".local/share"));
        Self {
            claude_config: config.join("Claude"),
            state_root: data.join("cowork-vm-service"),
            runtime_dir: absolute("XDG_RUNTIME_DIR"),
            home,
            home_real,
        }
    }

    pub fn default_socket(&self) -> PathBuf {
        self.runtime_dir
            .as_deref()
            .unwrap_or(Path::new("/tmp"))
            .join("cowork-vm-service.sock")
    }

    pub fn log_file(&self) -> PathBuf {
        self.claude_config.join("logs/cowork_vm_daemon.log")
    }

    pub fn linux_config_file(&self) -> PathBuf {
        self.claude_config.join("claude_desktop_linux_config.json")
    }

    /// What may be mounted into a session, given whose machine this is.
    pub fn mount_rules(&self) -> cowork_policy::mounts::MountRules {
        cowork_policy::mounts::MountRules {
            home: self.home.clone(),
            home_real: self.home_real.clone(),
            other_homes: other_user_homes(),
        }
    }

    pub fn sessions_dir(&self) -> PathBuf {
        self.state_root.join("sessions")
    }
}

/// The home folders of the other accounts in `/etc/passwd` (not ours, by
/// uid; `/` is left out: it is no one's home in any useful sense).
pub fn other_user_homes() -> Vec<PathBuf> {
    let me = rustix::process::getuid().as_raw();
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return Vec::new();
    };
    homes_from_passwd(&passwd, me)
}

fn homes_from_passwd(passwd: &str, me: u32) -> Vec<PathBuf> {
    passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let uid: u32 = fields.get(2)?.parse().ok()?;
            let home = *fields.get(5)?;
            (uid != me && home.starts_with('/') && home != "/").then(|| PathBuf::from(home))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn other_homes_come_from_passwd_without_ours_or_the_root_dir() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      u:x:1000:1000::/home/u:/bin/bash\n\
                      alice:x:1001:1001::/home/alice:/bin/bash\n\
                      weird:x:1002:1002::/:/bin/sh\n\
                      broken line\n";
        let homes = homes_from_passwd(passwd, 1000);
        let want: Vec<PathBuf> = ["/root", "/usr/sbin", "/nonexistent", "/home/alice"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(homes, want);
    }

    fn dirs(vars: &[(&str, &str)]) -> Dirs {
        let map: HashMap<String, PathBuf> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect();
        Dirs::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_home() {
        let d = dirs(&[("HOME", "/nonexistent/u")]);
        assert_eq!(
            d.default_socket(),
            PathBuf::from("/tmp/cowork-vm-service.sock")
        );
        assert_eq!(
            d.log_file(),
            PathBuf::from("/nonexistent/u/.config/Claude/logs/cowork_vm_daemon.log")
        );
        assert_eq!(
            d.linux_config_file(),
            PathBuf::from("/nonexistent/u/.config/Claude/claude_desktop_linux_config.json")
        );
        assert_eq!(
            d.sessions_dir(),
            PathBuf::from("/nonexistent/u/.local/share/cowork-vm-service/sessions")
        );
    }

    #[test]
    fn xdg_variables_win_when_absolute() {
        let d = dirs(&[
            ("HOME", "/nonexistent/u"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("XDG_CONFIG_HOME", "/cfg"),
            ("XDG_DATA_HOME", "relative/ignored"),
        ]);
        assert_eq!(
            d.default_socket(),
            PathBuf::from("/run/user/1000/cowork-vm-service.sock")
        );
        assert_eq!(
            d.log_file(),
            PathBuf::from("/cfg/Claude/logs/cowork_vm_daemon.log")
        );
        assert_eq!(
            d.state_root,
            PathBuf::from("/nonexistent/u/.local/share/cowork-vm-service")
        );
    }
}
