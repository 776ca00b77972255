//! Per-session state directories and the disk-janitor methods.
//!
//! ```text
//! ${XDG_DATA_HOME:-~/.local/share}/cowork-vm-service/sessions/<name>/
//!     tmp/     the session's /tmp (bubblewrap), pruned by pruneSessionCaches
//!     home/    persistent skeleton home (made for spawn.mountSkeletonHome)
//! ${XDG_DATA_HOME:-~/.local/share}/cowork-vm-service/spare-session/
//!     an empty session directory made ahead of time
//! ```
//!
//! A new session's directory is the spare one renamed into place (see
//! [`crate::spare_dir`]).
//!
//! The client's janitor calls `getSessionsDiskInfo`, `pruneSessionCaches`
//! (every 300 s, before spawns when disk is low, from a menu) and
//! `deleteSessionDirs`. Sessions with live processes are never pruned or
//! deleted. Directory walks never follow symlinks (a sandboxed process can
//! plant them in its `/tmp`).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::spare_dir::{SpareDir, private_dirs};
use cowork_policy::names::validate_session_name;
use cowork_policy::paths::below_sandbox_tmp;
use cowork_protocol::params::{
    DeleteSessionDirsResult, PruneSessionCachesParams, PruneSessionCachesResult, SessionDiskUsage,
    SessionsDiskInfo,
};

/// The directories of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDir {
    pub root: PathBuf,
    pub tmp: PathBuf,
    pub home: PathBuf,
}

impl SessionDir {
    /// Creates the persistent skeleton home (only sessions that ask for it
    /// have one).
    pub fn ensure_home(&self) -> io::Result<()> {
        private_dirs().create(&self.home)
    }
}

#[derive(Debug, Clone)]
pub struct SessionStore {
    root: PathBuf,
    spare: SpareDir,
}

impl SessionStore {
    /// `sessions_dir` is `<state root>/sessions`; the spare directory is
    /// its sibling, so no session name can collide with it. `home` is the
    /// host `$HOME`: when it is under `/tmp`, each sandbox creates it in its
    /// session's `tmp/`, so the spare comes with it already made.
    pub fn new(sessions_dir: PathBuf, home: &Path) -> Self {
        let mut inner = PathBuf::from("tmp");
        if let Some(home_in_tmp) = below_sandbox_tmp(home) {
            inner.push(home_in_tmp);
        }
        let spare = SpareDir::new(sessions_dir.with_file_name("spare-session"), inner);
        Self {
            root: sessions_dir,
            spare,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_of(&self, name: &str) -> SessionDir {
        let root = self.root.join(name);
        SessionDir {
            tmp: root.join("tmp"),
            home: root.join("home"),
            root,
        }
    }

    /// Creates the session's directory and its `tmp/` (private to the
    /// user) unless they exist, from the spare when there is one, and
    /// returns them. `name` must already be a valid session name.
    pub fn ensure(&self, name: &str) -> io::Result<SessionDir> {
        let dir = self.dir_of(name);
        if dir.tmp.is_dir() {
            return Ok(dir);
        }
        private_dirs().create(&self.root)?;
        if !self.spare.take_into(&dir.root) {
            private_dirs().create(&dir.tmp)?;
        }
        Ok(dir)
    }

    /// Has the next spare session directory made in the background; the
    /// caller runs it once a new session's command has started.
    pub fn prepare_spare(&self) {
        self.spare.prepare();
    }

    fn session_names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Filesystem totals for the state directory and each session's size.
    pub fn disk_info(&self) -> SessionsDiskInfo {
        let (total_bytes, free_bytes) = fs_space(&self.root);
        let sessions = self
            .session_names()
            .into_iter()
            .map(|name| SessionDiskUsage {
                size_bytes: tree_size(&self.root.join(&name)),
                name,
            })
            .collect();
        SessionsDiskInfo {
            total_bytes,
            free_bytes,
            sessions,
        }
    }

    /// Deletes the named session directories, except active sessions.
    pub fn delete(&self, names: &[String], active: &HashSet<String>) -> DeleteSessionDirsResult {
        let mut result = DeleteSessionDirsResult::default();
        for name in names {
            if let Err(e) = validate_session_name(name) {
                result.errors.insert(name.clone(), e.to_string());
                continue;
            }
            if active.contains(name) {
                result
                    .errors
                    .insert(name.clone(), "session has running processes".into());
                continue;
            }
            let dir = self.root.join(name);
            match crate::sys::tree::remove_tree(&dir) {
                Ok(_) => result.deleted.push(name.clone()),
                // Already gone: the caller's goal holds.
                Err(e) if e.kind() == io::ErrorKind::NotFound => result.deleted.push(name.clone()),
                Err(e) => {
                    result.errors.insert(name.clone(), e.to_string());
                }
            }
        }
        result
    }

    /// Removes entries of each idle session's `tmp/` older than the
    /// threshold (all of them for 0), when asked to and when disk is low.
    pub fn prune(
        &self,
        params: &PruneSessionCachesParams,
        active: &HashSet<String>,
    ) -> PruneSessionCachesResult {
        let mut result = PruneSessionCachesResult::default();
        if let Some(limit) = params.only_if_free_bytes_below.filter(|l| *l > 0) {
            let (_, free) = fs_space(&self.root);
            if free >= limit {
                return result;
            }
        }
        if !params.include_session_tmp.unwrap_or(false) {
            return result;
        }
        let older_than = Duration::from_secs(params.session_tmp_older_than_seconds.unwrap_or(0));
        let now = SystemTime::now();
        for name in self.session_names() {
            if active.contains(&name) {
                result.skipped_sessions.push(name);
                continue;
            }
            let tmp = self.dir_of(&name).tmp;
            let mut errors = Vec::new();
            let mut freed = 0u64;
            let Ok(entries) = std::fs::read_dir(&tmp) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if age < older_than {
                    continue;
                }
                match crate::sys::tree::remove_tree(&path) {
                    Ok(size) => freed += size,
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                }
            }
            if freed > 0 {
                result.pruned_sessions.push(name.clone());
                result.freed_bytes += freed;
            }
            if !errors.is_empty() {
                result.errors.insert(name, errors.join("; "));
            }
        }
        result
    }
}

/// (total, available) bytes of the filesystem holding `path` (or its
/// nearest existing ancestor); zeros if even that fails.
pub fn fs_space(path: &Path) -> (u64, u64) {
    let mut probe = Some(path);
    while let Some(p) = probe {
        if let Ok(st) = rustix::fs::statvfs(p) {
            return (
                st.f_blocks.saturating_mul(st.f_frsize),
                st.f_bavail.saturating_mul(st.f_frsize),
            );
        }
        probe = p.parent();
    }
    (0, 0)
}

pub use crate::sys::tree::tree_size;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn store() -> (tempfile::TempDir, SessionStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path().join("sessions"), Path::new("/home/u"));
        (tmp, store)
    }

    #[test]
    fn ensure_creates_private_dirs_and_disk_info_lists_them() {
        let (_t, s) = store();
        let d = s.ensure("bold-sharp-clarke").unwrap();
        std::fs::write(d.tmp.join("f"), vec![1u8; 20_000]).unwrap();
        let info = s.disk_info();
        assert!(info.total_bytes > 0 && info.free_bytes > 0);
        assert_eq!(info.sessions.len(), 1);
        assert_eq!(info.sessions[0].name, "bold-sharp-clarke");
        assert!(info.sessions[0].size_bytes >= 20_000);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn a_new_session_takes_the_spare_and_a_new_spare_is_made() {
        let (t, s) = store();
        let spare = t.path().join("spare-session");
        s.prepare_spare();
        crate::spare_dir::tests::wait_ready(&s.spare);
        let spare_inode = std::fs::metadata(&spare).unwrap().ino();
        let d = s.ensure("bold-sharp-clarke").unwrap();
        assert_eq!(
            std::fs::metadata(&d.root).unwrap().ino(),
            spare_inode,
            "the spare was renamed into place"
        );
        assert!(d.tmp.is_dir());
        assert_eq!(mode(&d.root), 0o700);
        assert_eq!(mode(&d.tmp), 0o700);
        assert!(!d.home.exists(), "home/ is made only for a skeleton home");
        s.prepare_spare();
        crate::spare_dir::tests::wait_ready(&s.spare);
        assert_ne!(std::fs::metadata(&spare).unwrap().ino(), spare_inode);
        // The spare is not a session.
        let names: Vec<_> = s.disk_info().sessions.into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["bold-sharp-clarke"]);
    }

    #[test]
    fn a_home_under_tmp_comes_already_made_in_a_new_sessions_tmp() {
        let cases: &[(&str, Option<&str>)] =
            &[("/tmp/ci-run/home", Some("ci-run/home")), ("/home/u", None)];
        for (home, made) in cases {
            let t = tempfile::tempdir().unwrap();
            let s = SessionStore::new(t.path().join("sessions"), Path::new(home));
            s.prepare_spare();
            crate::spare_dir::tests::wait_ready(&s.spare);
            let d = s.ensure("a").unwrap();
            let entries = std::fs::read_dir(&d.tmp).unwrap().count();
            match made {
                Some(rel) => {
                    assert!(d.tmp.join(rel).is_dir(), "{home}");
                    assert_eq!(mode(&d.tmp.join(rel)), 0o700, "{home}");
                }
                None => assert_eq!(entries, 0, "{home}: tmp/ starts empty"),
            }
        }
    }

    #[test]
    fn an_existing_session_keeps_its_files_and_the_spare() {
        let (t, s) = store();
        let d = s.ensure("a").unwrap();
        std::fs::write(d.tmp.join("kept"), b"x").unwrap();
        s.prepare_spare();
        crate::spare_dir::tests::wait_ready(&s.spare);
        let spare = t.path().join("spare-session");
        let spare_inode = std::fs::metadata(&spare).unwrap().ino();
        let again = s.ensure("a").unwrap();
        assert!(again.tmp.join("kept").exists());
        assert_eq!(std::fs::metadata(&spare).unwrap().ino(), spare_inode);
    }

    #[test]
    fn without_a_spare_the_directories_are_made_directly() {
        let (_t, s) = store();
        let d = s.ensure("a").unwrap();
        assert!(d.tmp.is_dir());
        assert_eq!(mode(&d.root), 0o700);
        assert_eq!(mode(&d.tmp), 0o700);
        d.ensure_home().unwrap();
        assert_eq!(mode(&d.home), 0o700);
    }

    #[test]
    fn delete_skips_active_and_invalid_names() {
        let (_t, s) = store();
        s.ensure("a").unwrap();
        s.ensure("b").unwrap();
        let active: HashSet<String> = ["b".to_string()].into();
        let r = s.delete(
            &["a".into(), "b".into(), "../x".into(), "gone".into()],
            &active,
        );
        assert_eq!(r.deleted, ["a", "gone"]);
        assert!(r.errors["b"].contains("running"));
        assert!(r.errors["../x"].contains("must not contain '/'"));
        assert!(!s.root().join("a").exists());
        assert!(s.root().join("b").exists());
    }

    #[test]
    fn prune_respects_flags_age_and_activity() {
        let (_t, s) = store();
        let a = s.ensure("a").unwrap();
        let b = s.ensure("b").unwrap();
        std::fs::create_dir(a.tmp.join("d")).unwrap();
        std::fs::write(a.tmp.join("d/f"), vec![0u8; 10_000]).unwrap();
        std::fs::write(b.tmp.join("f"), b"x").unwrap();
        let none = HashSet::new();
        let not_asked = s.prune(&PruneSessionCachesParams::default(), &none);
        assert!(not_asked.pruned_sessions.is_empty());
        let too_young = s.prune(
            &PruneSessionCachesParams {
                include_session_tmp: Some(true),
                session_tmp_older_than_seconds: Some(3600),
                ..Default::default()
            },
            &none,
        );
        assert!(too_young.pruned_sessions.is_empty());
        let plenty_free = s.prune(
            &PruneSessionCachesParams {
                include_session_tmp: Some(true),
                only_if_free_bytes_below: Some(1),
                ..Default::default()
            },
            &none,
        );
        assert!(plenty_free.pruned_sessions.is_empty());
        let active: HashSet<String> = ["b".to_string()].into();
        let r = s.prune(
            &PruneSessionCachesParams {
                include_session_tmp: Some(true),
                ..Default::default()
            },
            &active,
        );
        assert_eq!(r.pruned_sessions, ["a"]);
        assert_eq!(r.skipped_sessions, ["b"]);
        assert!(r.freed_bytes >= 10_000);
        assert!(!a.tmp.join("d").exists());
        assert!(b.tmp.join("f").exists());
    }

    #[test]
    fn tree_size_does_not_follow_symlinks() {
        let (t, _s) = store();
        let big = t.path().join("big");
        std::fs::write(&big, vec![0u8; 100_000]).unwrap();
        let dir = t.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&big, dir.join("link")).unwrap();
        assert!(tree_size(&dir) < 100_000);
    }
}
