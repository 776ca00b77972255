//! Opening what a session was granted without following symlinks, and
//! keeping the descriptor.
//!
//! A sandbox can replace any folder inside its read-write mounts with a
//! symlink (to `~/.ssh`, say). A later grant of that folder, a bind of it
//! by bubblewrap, or a `readFile` through it would follow the symlink.
//! So every granted folder is opened component by component beneath the
//! root it was granted under (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`): `$HOME`'s real path for folders in `$HOME`, `/`
//! for project folders elsewhere. The descriptor is what gets bound
//! (`--bind-fd`) and what `readFile` resolves through, so what was checked
//! is what is used.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, openat2, readlinkat, statat};
use rustix::io::Errno;

/// Largest file `readFile` returns (7 MiB; base64 makes it ~9.3 MiB).
pub const MAX_READ_BYTES: u64 = 7 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{0} is reached through a symlink, which a session is never given (mount its real path instead)"
    )]
    Symlink(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{0} is outside the folders the session was given")]
    Outside(PathBuf),
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    #[error("{path} is {size} bytes; readFile returns at most {max} bytes")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path, e: impl Into<io::Error>) -> PinError {
    PinError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// `rel` opened beneath `dir` with `flags`, no symlink anywhere on the way.
fn open_beneath(
    dir: impl AsFd,
    rel: &Path,
    flags: OFlags,
    shown: &Path,
) -> Result<OwnedFd, PinError> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    match openat2(dir, rel, flags | OFlags::CLOEXEC, Mode::empty(), BENEATH) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP) => Err(PinError::Symlink(shown.to_path_buf())),
        Err(Errno::XDEV) => Err(PinError::Outside(shown.to_path_buf())),
        Err(Errno::NOTDIR) => Err(PinError::NotADirectory(shown.to_path_buf())),
        Err(e) => Err(io_err(shown, e)),
    }
}

/// A directory the session was granted, held open.
#[derive(Debug)]
pub struct PinnedDir {
    /// The host path it was granted as (for messages and translation).
    pub path: PathBuf,
    pub fd: OwnedFd,
}

/// Where a grant is rooted: the real `$HOME` for folders in `$HOME` (given
/// by either spelling), else `/`. Returns the root and the path below it.
fn grant_root<'a>(path: &'a Path, home: &Path, home_real: &'a Path) -> (&'a Path, PathBuf) {
    for base in [home, home_real] {
        if let Ok(rest) = path.strip_prefix(base) {
            return (home_real, rest.to_path_buf());
        }
    }
    (
        Path::new("/"),
        path.strip_prefix("/").unwrap_or(path).to_path_buf(),
    )
}

fn open_root(root: &Path) -> Result<OwnedFd, PinError> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(root, e))
}

/// Opens the granted folder `path` (absolute) beneath its root. With
/// `create`, missing folders on the way are made (0700; `.claude` and
/// `.auto-memory` may not exist yet), and a final component that is a
/// symlink to itself (the self-referential `.mcpb-cache`, reference #342)
/// is replaced by a folder; any other symlink is refused.
pub fn pin_dir(
    path: &Path,
    home: &Path,
    home_real: &Path,
    create: bool,
) -> Result<PinnedDir, PinError> {
    let (root, rel) = grant_root(path, home, home_real);
    let mut current = open_root(root)?;
    let mut walked = root.to_path_buf();
    for component in rel.components() {
        let Component::Normal(name) = component else {
            return Err(PinError::Outside(path.to_path_buf()));
        };
        walked.push(name);
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        current = match open_beneath(&current, Path::new(name), flags, &walked) {
            Ok(fd) => fd,
            Err(PinError::Io { source, .. })
                if create && source.raw_os_error() == Some(libc::ENOENT) =>
            {
                make_dir(&current, name, &walked)?;
                open_beneath(&current, Path::new(name), flags, &walked)?
            }
            Err(PinError::Symlink(_)) if create && is_self_loop(&current, name) => {
                tracing::info!("replacing self-referential symlink {}", walked.display());
                rustix::fs::unlinkat(&current, name, AtFlags::empty())
                    .map_err(|e| io_err(&walked, e))?;
                make_dir(&current, name, &walked)?;
                open_beneath(&current, Path::new(name), flags, &walked)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(PinnedDir {
        path: path.to_path_buf(),
        fd: current,
    })
}

fn make_dir(parent: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), PinError> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(io_err(shown, e)),
    }
}

/// Whether `name` in `dir` is a symlink whose target is its own name.
fn is_self_loop(dir: &OwnedFd, name: &OsStr) -> bool {
    readlinkat(dir, name, Vec::new()).is_ok_and(|target| {
        let target = Path::new(OsStr::from_bytes(target.as_bytes()));
        let plain = target.strip_prefix("./").unwrap_or(target);
        plain == Path::new(name)
    })
}

/// Opens a path the daemon itself chose (its state directories, the
/// agent, the SDK) by its real path, refusing symlinks on the way.
pub fn pin_real(path: &Path, flags: OFlags) -> Result<OwnedFd, PinError> {
    let real = std::fs::canonicalize(path).map_err(|e| io_err(path, e))?;
    let rel = real.strip_prefix("/").unwrap_or(&real);
    let root = open_root(Path::new("/"))?;
    open_beneath(&root, rel, OFlags::PATH | flags, path)
}

/// What is at `rel` beneath `dir`, not following a final symlink: its type,
/// or `None` if nothing is there.
pub fn kind_at(dir: &OwnedFd, rel: &Path) -> Option<FileType> {
    statat(dir, rel, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| FileType::from_raw_mode(st.st_mode))
}

/// Opens `rel` beneath `dir` as `O_PATH` (to bind it), no symlinks.
pub fn open_path_beneath(dir: &OwnedFd, rel: &Path, shown: &Path) -> Result<OwnedFd, PinError> {
    open_beneath(dir, rel, OFlags::PATH | OFlags::NOFOLLOW, shown)
}

/// Makes directory `rel` beneath `dir` (its parent must exist).
pub fn mkdir_beneath(dir: &OwnedFd, rel: &Path, shown: &Path) -> Result<(), PinError> {
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(PinError::Outside(shown.to_path_buf())),
    };
    let parent = open_beneath(dir, parent, OFlags::PATH | OFlags::DIRECTORY, shown)?;
    match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(io_err(shown, e)),
    }
}

/// Reads a small text file `rel` beneath `dir` (a `.git` pointer file).
pub fn read_small_beneath(dir: &OwnedFd, rel: &Path, max: u64) -> Option<String> {
    let fd = open_beneath(dir, rel, OFlags::RDONLY | OFlags::NONBLOCK, rel).ok()?;
    let file = File::from(fd);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(max).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Reads the regular file `rel` beneath the pinned directory `dir` (no
/// symlink anywhere; FIFOs and devices refused, so the call never hangs),
/// up to [`MAX_READ_BYTES`].
pub fn read_file_beneath(dir: &OwnedFd, rel: &Path, shown: &Path) -> Result<Vec<u8>, PinError> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = open_beneath(dir, rel, flags, shown)?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| io_err(shown, e))?;
    if !meta.is_file() {
        return Err(PinError::NotRegular(shown.to_path_buf()));
    }
    let too_large = |size| PinError::TooLarge {
        path: shown.to_path_buf(),
        size,
        max: MAX_READ_BYTES,
    };
    if meta.len() > MAX_READ_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut content = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_READ_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| io_err(shown, e))?;
    if content.len() as u64 > MAX_READ_BYTES {
        return Err(too_large(content.len() as u64));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn home() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(t.path()).unwrap().join("home");
        std::fs::create_dir_all(home.join("proj/sub")).unwrap();
        std::fs::write(home.join("proj/sub/file.txt"), "hello").unwrap();
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join(".ssh/id_rsa"), "KEY").unwrap();
        (t, home)
    }

    #[test]
    fn pins_real_folders_and_refuses_symlinks_anywhere_on_the_way() {
        let (_t, home) = home();
        let pinned = pin_dir(&home.join("proj/sub"), &home, &home, false).unwrap();
        assert_eq!(
            read_file_beneath(&pinned.fd, Path::new("file.txt"), Path::new("x")).unwrap(),
            b"hello"
        );
        // The attack: a folder replaced by a symlink to ~/.ssh.
        std::fs::rename(home.join("proj/sub"), home.join("proj/moved")).unwrap();
        symlink(home.join(".ssh"), home.join("proj/sub")).unwrap();
        assert!(matches!(
            pin_dir(&home.join("proj/sub"), &home, &home, false),
            Err(PinError::Symlink(_))
        ));
        // An intermediate symlink too.
        symlink(home.join("proj"), home.join("alias")).unwrap();
        assert!(matches!(
            pin_dir(&home.join("alias/x"), &home, &home, true),
            Err(PinError::Symlink(_))
        ));
        // The descriptor pinned before the swap still reads the old folder.
        assert!(
            read_file_beneath(&pinned.fd, Path::new("file.txt"), Path::new("x")).is_ok(),
            "the pinned descriptor keeps the original folder"
        );
    }

    #[test]
    fn reads_never_follow_a_planted_symlink_or_hang_on_a_fifo() {
        let (_t, home) = home();
        let proj = pin_dir(&home.join("proj"), &home, &home, false).unwrap();
        symlink(home.join(".ssh/id_rsa"), home.join("proj/key")).unwrap();
        assert!(matches!(
            read_file_beneath(&proj.fd, Path::new("key"), Path::new("key")),
            Err(PinError::Symlink(_))
        ));
        assert!(matches!(
            read_file_beneath(&proj.fd, Path::new("../.ssh/id_rsa"), Path::new("k")),
            Err(PinError::Outside(_))
        ));
        rustix::fs::mkfifoat(&proj.fd, "fifo", Mode::from_raw_mode(0o600)).unwrap();
        assert!(matches!(
            read_file_beneath(&proj.fd, Path::new("fifo"), Path::new("fifo")),
            Err(PinError::NotRegular(_))
        ));
    }

    #[test]
    fn missing_folders_are_made_and_a_self_loop_repaired() {
        let (_t, home) = home();
        let made = pin_dir(&home.join(".auto-memory/a"), &home, &home, true).unwrap();
        assert!(home.join(".auto-memory/a").is_dir());
        drop(made);
        symlink(".mcpb-cache", home.join(".mcpb-cache")).unwrap();
        pin_dir(&home.join(".mcpb-cache"), &home, &home, true).unwrap();
        assert!(home.join(".mcpb-cache").is_dir());
        assert!(pin_dir(&home.join("nope"), &home, &home, false).is_err());
    }

    #[test]
    fn folders_outside_home_are_rooted_at_the_root() {
        let (_t, home) = home();
        let outside = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(outside.path()).unwrap();
        let pinned = pin_dir(&real, &home, &home, false).unwrap();
        assert_eq!(pinned.path, real);
    }
}
