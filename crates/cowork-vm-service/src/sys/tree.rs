//! Measuring and deleting directory trees a sandbox made, however deep.
//!
//! A session's `/tmp` is written by sandboxed processes, so its shape is
//! hostile: a chain of 100,000 nested directories overflows any recursive
//! walk (std's `remove_dir_all` recurses once per level and keeps one
//! descriptor per level open) and would crash the daemon on every
//! `pruneSessionCaches`. These walks keep their own stack on the heap and
//! at most two directory descriptors open: a level's subdirectories are
//! listed once, its descriptor is closed, and the walk climbs back with
//! `openat(child, "..")`, checking that it arrived at the directory it
//! left (device and inode), so a directory moved meanwhile stops the walk
//! instead of leading it out of the tree. Symlinks are never followed:
//! every open is `O_NOFOLLOW`, and entries are examined with
//! `AT_SYMLINK_NOFOLLOW`.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use std::mem::MaybeUninit;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, fstat, openat, statat, unlinkat};

/// What a walk does with the entries of each directory.
trait Visit {
    /// A non-directory entry (or a directory that could not be entered).
    fn leaf(&mut self, dir: &OwnedFd, name: &OsStr, blocks: u64) -> io::Result<()>;
    /// A directory whose entries have all been visited.
    fn done(&mut self, parent: &OwnedFd, name: &OsStr, blocks: u64) -> io::Result<()>;
}

/// One directory on the walk's stack.
struct Level {
    /// Its name in its parent.
    name: OsString,
    /// Device and inode, to recognise it when climbing back to it.
    id: (u64, u64),
    blocks: u64,
    /// Subdirectories not yet walked.
    pending: Vec<OsString>,
}

fn identity(fd: &OwnedFd) -> io::Result<((u64, u64), u64)> {
    let st = fstat(fd)?;
    Ok(((st.st_dev, st.st_ino), st.st_blocks as u64))
}

fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Lists `fd`'s entries: subdirectories are returned, everything else goes
/// to `visit.leaf` right away.
fn list(fd: &OwnedFd, visit: &mut dyn Visit) -> io::Result<Vec<OsString>> {
    let mut subdirs = Vec::new();
    let mut leaves = Vec::new();
    // Read straight from `fd` (a `Dir` would reopen it first): one fresh
    // descriptor per level, read from its start.
    let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
    let mut dir = RawDir::new(fd, &mut buf);
    while let Some(entry) = dir.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsString::from_vec(name.to_vec());
        let kind = match entry.file_type() {
            FileType::Unknown => statat(fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode))?,
            known => known,
        };
        if kind == FileType::Directory {
            subdirs.push(name);
        } else {
            leaves.push(name);
        }
    }
    for name in leaves {
        let blocks = statat(fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| st.st_blocks as u64)
            .unwrap_or(0);
        visit.leaf(fd, &name, blocks)?;
    }
    Ok(subdirs)
}

/// Walks the directory `name` in `parent`, depth first, children before
/// their parent. Errors stop the walk.
fn walk(parent: OwnedFd, name: &OsStr, visit: &mut dyn Visit) -> io::Result<()> {
    let root_id = identity(&parent)?.0;
    let mut current = open_dir_at(&parent, name)?;
    drop(parent);
    let (id, blocks) = identity(&current)?;
    let pending = list(&current, visit)?;
    let mut stack = vec![Level {
        name: name.to_os_string(),
        id,
        blocks,
        pending,
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            return Ok(());
        };
        if let Some(child) = top.pending.pop() {
            match open_dir_at(&current, &child) {
                Ok(fd) => {
                    let (id, blocks) = identity(&fd)?;
                    current = fd;
                    let pending = list(&current, visit)?;
                    stack.push(Level {
                        name: child,
                        id,
                        blocks,
                        pending,
                    });
                }
                // Gone, or not a directory any more: nothing to walk.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        // Every entry of `top` is done: climb to its parent and finish it.
        let Some(done) = stack.pop() else {
            return Ok(());
        };
        let up = open_dir_at(&current, OsStr::new(".."))?;
        let (up_id, _) = identity(&up)?;
        let expected = stack.last().map_or(root_id, |l| l.id);
        if up_id != expected {
            return Err(io::Error::other(
                "a directory was moved during the walk; stopped",
            ));
        }
        current = up;
        visit.done(&current, &done.name, done.blocks)?;
    }
}

fn open_parent_of(path: &Path) -> io::Result<(OwnedFd, OsString)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no final name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let c = CString::new(parent.as_os_str().as_bytes())?;
    let fd = rustix::fs::open(
        c.as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((fd, name.to_os_string()))
}

/// Deletes as it goes, counting what it freed.
struct Remove(u64);

impl Visit for Remove {
    fn leaf(&mut self, dir: &OwnedFd, name: &OsStr, blocks: u64) -> io::Result<()> {
        match unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => self.0 = self.0.saturating_add(blocks.saturating_mul(512)),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn done(&mut self, parent: &OwnedFd, name: &OsStr, blocks: u64) -> io::Result<()> {
        match unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) => self.0 = self.0.saturating_add(blocks.saturating_mul(512)),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

struct Measure(u64);

impl Visit for Measure {
    fn leaf(&mut self, _dir: &OwnedFd, _name: &OsStr, blocks: u64) -> io::Result<()> {
        self.0 = self.0.saturating_add(blocks.saturating_mul(512));
        Ok(())
    }

    fn done(&mut self, _parent: &OwnedFd, _name: &OsStr, blocks: u64) -> io::Result<()> {
        self.0 = self.0.saturating_add(blocks.saturating_mul(512));
        Ok(())
    }
}

/// Deletes `path` and everything below it, without following symlinks (a
/// symlink at `path` itself is removed, not followed); returns the bytes
/// freed (allocated blocks). Missing is fine (0).
pub fn remove_tree(path: &Path) -> io::Result<u64> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        let blocks = std::os::unix::fs::MetadataExt::blocks(&meta).saturating_mul(512);
        return match std::fs::remove_file(path) {
            Ok(()) => Ok(blocks),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        };
    }
    let (parent, name) = open_parent_of(path)?;
    let mut remove = Remove(0);
    walk(parent, &name, &mut remove)?;
    Ok(remove.0)
}

/// Disk usage of a tree (allocated blocks), never following symlinks; 0 if
/// it cannot be read at all, what could be measured if the walk stops.
pub fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return std::os::unix::fs::MetadataExt::blocks(&meta).saturating_mul(512);
    }
    let Ok((parent, name)) = open_parent_of(path) else {
        return 0;
    };
    let mut measure = Measure(0);
    let _ = walk(parent, &name, &mut measure);
    measure.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `depth` nested directories `d/d/d/...` below `root`, made
    /// with descriptors (the path is far longer than PATH_MAX).
    fn make_chain(root: &Path, depth: usize) {
        let mut dir =
            rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
            dir = open_dir_at(&dir, OsStr::new("d")).unwrap();
        }
        let f = openat(
            &dir,
            "leaf.txt",
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, b"bottom").unwrap();
    }

    /// Deeper than the 15,000 levels that crashed the recursive walk; the
    /// 100,000-deep measurement runs with `COWORK_TREE_TEST_DEPTH=100000`
    /// (about 10 s here in a debug build, so not by default).
    fn depth() -> usize {
        std::env::var("COWORK_TREE_TEST_DEPTH")
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(20_000)
    }

    #[test]
    fn a_chain_deeper_than_any_stack_is_measured_and_deleted() {
        let levels = depth();
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("deep");
        std::fs::create_dir(&top).unwrap();
        make_chain(&top, levels);
        let started = std::time::Instant::now();
        let size = tree_size(&top);
        assert!(size >= levels as u64 * 512, "every level counted: {size}");
        assert_eq!(remove_tree(&top).unwrap(), size, "freed what was measured");
        assert!(!top.exists());
        eprintln!(
            "{levels}-deep chain measured and deleted in {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn symlinks_are_removed_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep.txt"), "keep").unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep.txt"), tree.join("link-file")).unwrap();
        let size = tree_size(&tree);
        assert!(size > 0);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep.txt")).unwrap(),
            "keep"
        );
        // A symlink as the root itself is removed, not followed.
        let link = t.path().join("root-link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert!(outside.join("keep.txt").exists());
        remove_tree(&t.path().join("missing")).unwrap();
    }

    #[test]
    fn wide_trees_with_files_and_empty_dirs_are_deleted() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("wide");
        for i in 0..50 {
            let d = tree.join(format!("d{i}/e/f"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("x"), vec![0u8; 5000]).unwrap();
            std::fs::create_dir_all(tree.join(format!("empty{i}"))).unwrap();
        }
        assert!(tree_size(&tree) >= 50 * 4096);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }
}
