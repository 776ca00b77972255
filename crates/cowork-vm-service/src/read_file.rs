//! `readFile` without trusting what a sandboxed process may have planted.
//!
//! A session mount is writable from inside the sandbox, so a process there
//! can replace a file the client later reads with a symlink to
//! `~/.ssh/id_rsa`. The reference followed it. Here a file is read only if
//! its real path stays inside the folder it was addressed through (the
//! mount, or `$HOME` for host paths), and the final open is done relative
//! to that folder with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so
//! a symlink swapped in after the check fails the open instead of being
//! followed. Only regular files are read (a FIFO would hang the call), up to
//! [`MAX_READ_BYTES`] (the base64 reply must fit the 10 MiB frame).

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Largest file returned (7 MiB; base64 makes it ~9.3 MiB).
pub const MAX_READ_BYTES: u64 = 7 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    #[error("Cannot translate guest path: {0}")]
    Untranslatable(String),
    #[error("Access denied: path outside home directory")]
    OutsideHome,
    #[error("Access denied: {0} resolves outside the folder it was addressed through")]
    Escapes(PathBuf),
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    #[error("{path} is {size} bytes; readFile returns at most {max} bytes")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path, source: impl Into<std::io::Error>) -> ReadFileError {
    ReadFileError::Io {
        path: path.to_path_buf(),
        source: source.into(),
    }
}

/// Reads `path`, which must resolve to a regular file inside `base`.
pub fn read_confined(path: &Path, base: &Path) -> Result<Vec<u8>, ReadFileError> {
    let base_real = std::fs::canonicalize(base).map_err(|e| io_err(base, e))?;
    let real = std::fs::canonicalize(path).map_err(|e| io_err(path, e))?;
    let rel = real
        .strip_prefix(&base_real)
        .map_err(|_| ReadFileError::Escapes(path.to_path_buf()))?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let dir = rustix::fs::open(
        &base_real,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(&base_real, e))?;
    let fd: OwnedFd = match rustix::fs::openat2(
        &dir,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        // Something became a symlink, or moved out, since the check.
        Err(Errno::LOOP | Errno::XDEV) => return Err(ReadFileError::Escapes(path.to_path_buf())),
        Err(Errno::NOSYS) => open_and_verify(&real, &base_real, flags, path)?,
        Err(e) => return Err(io_err(path, e)),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(ReadFileError::NotRegular(path.to_path_buf()));
    }
    if meta.len() > MAX_READ_BYTES {
        return Err(ReadFileError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            max: MAX_READ_BYTES,
        });
    }
    let mut content = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_READ_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| io_err(path, e))?;
    if content.len() as u64 > MAX_READ_BYTES {
        return Err(ReadFileError::TooLarge {
            path: path.to_path_buf(),
            size: content.len() as u64,
            max: MAX_READ_BYTES,
        });
    }
    Ok(content)
}

/// Kernels before 5.6 lack `openat2`: open without following a final
/// symlink, then check where the descriptor really points.
fn open_and_verify(
    real: &Path,
    base_real: &Path,
    flags: OFlags,
    shown: &Path,
) -> Result<OwnedFd, ReadFileError> {
    let fd = rustix::fs::open(real, flags | OFlags::NOFOLLOW, Mode::empty())
        .map_err(|e| io_err(shown, e))?;
    let link = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .map_err(|e| io_err(shown, e))?;
    if !link.starts_with(base_real) {
        return Err(ReadFileError::Escapes(shown.to_path_buf()));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn confinement_table() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("mount");
        let outside = t.path().join("secret");
        std::fs::create_dir_all(base.join("sub")).unwrap();
        std::fs::write(&outside, b"secret").unwrap();
        std::fs::write(base.join("sub/ok.txt"), b"fine").unwrap();
        symlink(&outside, base.join("evil")).unwrap();
        symlink("sub/ok.txt", base.join("inner-link")).unwrap();
        symlink(base.join("sub/ok.txt"), base.join("abs-inner-link")).unwrap();
        symlink(t.path(), base.join("dir-escape")).unwrap();
        make_fifo(&base.join("fifo"));

        let ok = |p: &str| read_confined(&base.join(p), &base).map(String::from_utf8);
        assert_eq!(ok("sub/ok.txt").unwrap().unwrap(), "fine");
        assert_eq!(ok("inner-link").unwrap().unwrap(), "fine");
        assert_eq!(ok("abs-inner-link").unwrap().unwrap(), "fine");
        assert!(matches!(ok("evil"), Err(ReadFileError::Escapes(_))));
        assert!(matches!(
            ok("dir-escape/secret"),
            Err(ReadFileError::Escapes(_))
        ));
        assert!(matches!(ok("sub"), Err(ReadFileError::NotRegular(_))));
        assert!(matches!(ok("fifo"), Err(ReadFileError::NotRegular(_))));
        assert!(matches!(ok("missing"), Err(ReadFileError::Io { .. })));
    }

    fn make_fifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn too_large_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("big");
        let file = File::create(&f).unwrap();
        file.set_len(MAX_READ_BYTES + 1).unwrap();
        assert!(matches!(
            read_confined(&f, t.path()),
            Err(ReadFileError::TooLarge { .. })
        ));
    }
}
