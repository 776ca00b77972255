//! `readFile` without trusting what a sandboxed process may have planted.
//!
//! A session mount is writable from inside the sandbox, so a process there
//! can replace a file the client later reads with a symlink to
//! `~/.ssh/id_rsa` (the reference followed it), or a folder with a symlink
//! to `~`. Here a file is read only through the descriptor of a session
//! mount pinned when it was granted ([`crate::sys::pin`]), with no symlink
//! anywhere below it (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`),
//! whether the client names it by its guest path (`/sessions/<s>/mnt/...`)
//! or by its host path, which must then lie inside one of the session's
//! mounts. Only regular files are read (a FIFO would hang the call), up to
//! [`MAX_READ_BYTES`] (the base64 reply must fit the 10 MiB frame).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cowork_policy::mounts::{MountMap, parse_guest_path};
use cowork_policy::paths::{is_within, normalize};

use crate::backend::PinnedMount;
pub use crate::sys::pin::MAX_READ_BYTES;
use crate::sys::pin::{PinError, PinnedDir, read_file_beneath};

#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    #[error("Cannot translate guest path: {0}")]
    Untranslatable(String),
    #[error("Access denied: {0} is not inside a folder mounted into the session")]
    OutsideMounts(String),
    #[error("{0}")]
    Pin(#[from] PinError),
}

/// A session's mounts as `readFile` resolves through them.
#[derive(Debug, Clone, Default)]
pub struct SessionMounts {
    pub map: MountMap,
    pub pinned: Vec<PinnedMount>,
}

impl SessionMounts {
    fn pinned(&self, name: &str) -> Option<&PinnedMount> {
        self.pinned.iter().find(|m| m.mount.name == name)
    }

    /// The pinned mount and the path below it for `path` (a guest path of
    /// any session, or an absolute host path).
    pub fn resolve(&self, path: &str) -> Result<(Arc<PinnedDir>, PathBuf), ReadFileError> {
        if path.starts_with("/sessions/") {
            let untranslatable = || ReadFileError::Untranslatable(path.to_string());
            let guest = parse_guest_path(path).ok_or_else(untranslatable)?;
            let mount = self.map.lookup(guest.mount).ok_or_else(untranslatable)?;
            let pinned = self.pinned(&mount.name).ok_or_else(untranslatable)?;
            let rel = below(guest.rest).ok_or_else(untranslatable)?;
            return Ok((pinned.dir.clone(), rel));
        }
        let outside = || ReadFileError::OutsideMounts(path.to_string());
        if !path.starts_with('/') {
            return Err(outside());
        }
        let abs = normalize(Path::new(path));
        // The most specific mount holding it.
        let mount = self
            .pinned
            .iter()
            .filter(|m| is_within(&abs, &m.mount.host))
            .max_by_key(|m| m.mount.host.components().count())
            .ok_or_else(outside)?;
        let rel = abs
            .strip_prefix(&mount.mount.host)
            .map_err(|_| outside())?
            .to_path_buf();
        Ok((mount.dir.clone(), rel))
    }
}

/// `rest` of a guest path (`""` or `/a/b`) as a path below its mount, `..`
/// refused (the kernel refuses it too, but a clear error is better).
fn below(rest: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => out.push(p),
        }
    }
    Some(out)
}

/// Reads the file `rel` below the pinned mount `dir`.
pub fn read_pinned(dir: &PinnedDir, rel: &Path) -> Result<Vec<u8>, ReadFileError> {
    let shown = dir.path.join(rel);
    Ok(read_file_beneath(&dir.fd, rel, &shown)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pin::pin_dir;
    use cowork_policy::mounts::{Mount, MountMode};
    use std::os::unix::fs::symlink;

    fn mounts(home: &Path, names: &[(&str, &str)]) -> SessionMounts {
        let mut s = SessionMounts::default();
        for (name, rel) in names {
            let host = home.join(rel);
            std::fs::create_dir_all(&host).unwrap();
            let mount = Mount {
                name: name.to_string(),
                host: host.clone(),
                mode: MountMode::ReadWrite,
            };
            s.map.insert(mount.clone());
            s.pinned.push(PinnedMount {
                mount,
                dir: Arc::new(pin_dir(&host, home, home, false).unwrap()),
            });
        }
        s
    }

    #[test]
    fn guest_and_host_paths_resolve_through_the_mounts_only() {
        let t = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(t.path()).unwrap();
        let s = mounts(&home, &[("proj", "proj"), ("deep", "proj/sub")]);
        std::fs::write(home.join("proj/a.txt"), "A").unwrap();
        std::fs::write(home.join("proj/sub/b.txt"), "B").unwrap();
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join(".ssh/id_rsa"), "KEY").unwrap();
        symlink(home.join(".ssh/id_rsa"), home.join("proj/key")).unwrap();
        let read = |p: &str| {
            s.resolve(p)
                .and_then(|(dir, rel)| read_pinned(&dir, &rel))
                .map(|b| String::from_utf8(b).unwrap())
        };
        assert_eq!(read("/sessions/x/mnt/proj/a.txt").unwrap(), "A");
        assert_eq!(read("/sessions/x/mnt/deep/b.txt").unwrap(), "B");
        let host_a = home.join("proj/a.txt");
        assert_eq!(read(host_a.to_str().unwrap()).unwrap(), "A");
        let (dir, rel) = s
            .resolve(home.join("proj/sub/b.txt").to_str().unwrap())
            .unwrap();
        assert_eq!(
            (dir.path.clone(), rel),
            (home.join("proj/sub"), "b.txt".into())
        );
        // The attacks.
        let key = home.join(".ssh/id_rsa");
        assert!(matches!(
            read(key.to_str().unwrap()),
            Err(ReadFileError::OutsideMounts(_))
        ));
        assert!(matches!(
            read("/sessions/x/mnt/proj/key"),
            Err(ReadFileError::Pin(PinError::Symlink(_)))
        ));
        let via_host = home.join("proj/key");
        assert!(matches!(
            read(via_host.to_str().unwrap()),
            Err(ReadFileError::Pin(PinError::Symlink(_)))
        ));
        assert!(matches!(
            read("/sessions/x/mnt/proj/../.ssh/id_rsa"),
            Err(ReadFileError::Untranslatable(_))
        ));
        let dotdot = format!("{}/proj/../.ssh/id_rsa", home.display());
        assert!(matches!(
            read(&dotdot),
            Err(ReadFileError::OutsideMounts(_))
        ));
        assert!(matches!(
            read("relative.txt"),
            Err(ReadFileError::OutsideMounts(_))
        ));
        assert!(matches!(
            read("/sessions/x/mnt/nope/a"),
            Err(ReadFileError::Untranslatable(_))
        ));
    }

    #[test]
    fn too_large_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(t.path()).unwrap();
        let s = mounts(&home, &[("proj", "proj")]);
        let file = std::fs::File::create(home.join("proj/big")).unwrap();
        file.set_len(MAX_READ_BYTES + 1).unwrap();
        let (dir, rel) = s.resolve("/sessions/x/mnt/proj/big").unwrap();
        assert!(matches!(
            read_pinned(&dir, &rel),
            Err(ReadFileError::Pin(PinError::TooLarge { .. }))
        ));
    }
}
