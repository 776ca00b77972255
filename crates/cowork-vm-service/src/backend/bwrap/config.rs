//! `preferences.coworkBwrapMounts`, read again when the file changes.
//!
//! The file is looked at (one `stat`) when a sandbox starts; a changed one
//! is read and validated. A file that is truncated, half-written or not
//! JSON is reported once, clearly, and the previous good configuration
//! stays in force: a sandbox never starts with fewer protections (or more
//! mounts) because an editor was saving.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use cowork_policy::bwrap_config::{BwrapMountsConfig, load_bwrap_mounts};

use crate::real_fs::RealFs;

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

#[derive(Debug)]
struct State {
    config: BwrapMountsConfig,
    /// The version last looked at (good or not).
    seen: Option<Stamp>,
}

/// The configuration in force, kept current.
#[derive(Debug)]
pub struct MountsConfig {
    path: PathBuf,
    home: PathBuf,
    state: Mutex<State>,
}

impl MountsConfig {
    /// Reads the file now (a missing file is an empty configuration; a bad
    /// one is reported and empty).
    pub fn load(path: PathBuf, home: PathBuf) -> Self {
        let this = MountsConfig {
            path,
            home,
            state: Mutex::new(State {
                config: BwrapMountsConfig::default(),
                seen: None,
            }),
        };
        this.current();
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration in force, re-read if the file changed.
    pub fn current(&self) -> BwrapMountsConfig {
        let now = stamp(&self.path);
        let mut state = self.lock();
        if state.seen.is_some() && state.seen == now {
            return state.config.clone();
        }
        state.seen = now;
        let text = match now {
            None => None,
            Some(_) => match std::fs::read_to_string(&self.path) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(
                        "cannot read {}: {e}; keeping the previous configuration",
                        self.path.display()
                    );
                    return state.config.clone();
                }
            },
        };
        match load_bwrap_mounts(text.as_deref(), &self.home, &RealFs) {
            Ok((config, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                if config != state.config {
                    tracing::info!(
                        "bwrap mount config ({}): {} read-only, {} read-write, {} disabled, {} \
                         writable protected",
                        self.path.display(),
                        config.ro_binds.len(),
                        config.rw_binds.len(),
                        config.disabled.len(),
                        config.writable_protected.len()
                    );
                }
                state.config = config;
            }
            Err(e) => tracing::error!(
                "ignoring {}: {e}; keeping the previous configuration",
                self.path.display()
            ),
        }
        state.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_file_keeps_the_previous_good_configuration() {
        let t = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir(home.join("tools")).unwrap();
        let file = home.join("config.json");
        let good = format!(
            r#"{{"preferences": {{"coworkBwrapMounts": {{"additionalROBinds": ["{}"]}}}}}}"#,
            home.join("tools").display()
        );
        std::fs::write(&file, &good).unwrap();
        let c = MountsConfig::load(file.clone(), home.clone());
        assert_eq!(c.current().ro_binds.len(), 1);
        std::fs::write(&file, "{\"preferences\": {\"cowork").unwrap();
        assert_eq!(c.current().ro_binds.len(), 1, "previous kept");
        std::fs::write(&file, r#"{"preferences": {}}"#).unwrap();
        assert!(c.current().ro_binds.is_empty(), "a good change applies");
        std::fs::remove_file(&file).unwrap();
        assert!(c.current().is_empty(), "no file: empty");
    }
}
