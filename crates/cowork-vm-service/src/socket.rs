//! Binding the listening socket safely.
//!
//! * The parent directory is created (mode 0700) if missing, and refused if
//!   users other than its owner can write to it without the sticky bit
//!   (anyone could then swap the socket under the client).
//! * The socket path must not be a symlink (the client checks the same).
//! * A live daemon already serving the path is left alone: we exit with a
//!   message naming its pid (the reference unlinks it and steals the path).
//! * A stale socket file is replaced only if it is a socket owned by us.
//! * The socket is created 0600 (umask set around `bind`, then `chmod`).

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use rustix::net::sockopt;
use rustix::process::umask;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket path {0} has no parent directory")]
    NoParent(PathBuf),
    #[error("cannot create socket directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error(
        "refusing socket directory {dir}: mode {mode:04o} lets other users write to it without the \
         sticky bit; use a private directory (e.g. $XDG_RUNTIME_DIR)"
    )]
    InsecureDir { dir: PathBuf, mode: u32 },
    #[error("refusing socket path {0}: it is a symlink")]
    Symlink(PathBuf),
    #[error("refusing socket path {0}: it exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("refusing to replace socket {path}: it belongs to uid {owner}, not to us (uid {me})")]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "another cowork-vm-service is already serving {path}{}; not starting a second one",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyServed { path: PathBuf, pid: Option<u32> },
    #[error(
        "socket {path} is served by a process of another user (uid {owner}, pid {pid}), not by \
         us (uid {me}): a client connecting there would talk to it; not starting. Remove it as \
         root, and run with a private XDG_RUNTIME_DIR"
    )]
    ServedByAnotherUser {
        path: PathBuf,
        owner: u32,
        pid: u32,
        me: u32,
    },
    #[error("cannot use socket path {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Prepares `path` and binds a listener on it (blocking; call before the
/// async runtime starts, since it briefly changes the process umask).
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io_err = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| SocketError::NoParent(path.to_path_buf()))?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SocketError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
    }
    let dir_meta = std::fs::metadata(dir).map_err(io_err)?;
    let mode = dir_meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(SocketError::InsecureDir {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(SocketError::Symlink(path.to_path_buf()));
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket(path.to_path_buf()));
        }
        Ok(meta) => match UnixStream::connect(path) {
            Ok(stream) => {
                let cred = sockopt::socket_peercred(&stream).ok();
                let me = rustix::process::geteuid().as_raw();
                if let Some(c) = &cred
                    && c.uid.as_raw() != me
                {
                    tracing::error!(
                        "socket {} is served by uid {} (pid {}): possibly hijacked",
                        path.display(),
                        c.uid.as_raw(),
                        c.pid.as_raw_nonzero()
                    );
                    return Err(SocketError::ServedByAnotherUser {
                        path: path.to_path_buf(),
                        owner: c.uid.as_raw(),
                        pid: c.pid.as_raw_nonzero().get() as u32,
                        me,
                    });
                }
                let pid = cred.map(|c| c.pid.as_raw_nonzero().get() as u32);
                return Err(SocketError::AlreadyServed {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                let me = rustix::process::geteuid().as_raw();
                if meta.uid() != me {
                    return Err(SocketError::ForeignOwner {
                        path: path.to_path_buf(),
                        owner: meta.uid(),
                        me,
                    });
                }
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        },
    }
    let previous = umask(Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    umask(previous);
    let listener = bound.map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Removes the socket file at shutdown, if it is still ours.
pub fn unlink(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_0600_and_creates_a_private_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("new/sub/s.sock");
        let _l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    }

    #[test]
    fn refuses_world_writable_dir_without_sticky_bit() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&tmp.path().join("s.sock")).unwrap_err();
        assert!(matches!(err, SocketError::InsecureDir { .. }), "{err}");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(bind(&tmp.path().join("s.sock")).is_ok());
    }

    #[test]
    fn refuses_symlinks_and_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("link.sock");
        std::os::unix::fs::symlink(tmp.path().join("target"), &link).unwrap();
        assert!(matches!(bind(&link), Err(SocketError::Symlink(_))));
        let file = tmp.path().join("file.sock");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(SocketError::NotASocket(_))));
    }

    #[test]
    fn live_socket_is_not_stolen_but_stale_one_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.sock");
        let live = bind(&path).unwrap();
        match bind(&path) {
            Err(SocketError::AlreadyServed { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected AlreadyServed, got {other:?}"),
        }
        drop(live);
        // The file stays behind: a stale socket of ours, replaced on bind.
        assert!(path.exists());
        assert!(bind(&path).is_ok());
    }
}
