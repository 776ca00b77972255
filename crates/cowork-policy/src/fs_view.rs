//! The few filesystem facts policy decisions depend on, behind a trait so the
//! policy stays pure: the daemon passes a real implementation, tests pass
//! [`FakeFs`].

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Read-only questions about the filesystem.
pub trait FsView {
    /// Whether `path` exists, following symlinks (Node's `existsSync`).
    fn exists(&self, path: &Path) -> bool;
    /// Whether `path` is a regular file the caller may execute.
    fn is_executable_file(&self, path: &Path) -> bool;
    /// The symlink-free absolute path, if `path` exists.
    fn canonicalize(&self, path: &Path) -> Option<PathBuf>;
    /// The target of `path` if it is a symlink.
    fn read_link(&self, path: &Path) -> Option<PathBuf>;
}

/// An in-memory filesystem for tests: directories, files and symlinks.
#[derive(Debug, Clone, Default)]
pub struct FakeFs {
    nodes: BTreeMap<PathBuf, Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Dir,
    File { executable: bool },
    Symlink(PathBuf),
}

impl FakeFs {
    pub fn new() -> Self {
        let mut fs = Self::default();
        fs.nodes.insert(PathBuf::from("/"), Node::Dir);
        fs
    }

    /// Adds a directory and its parents.
    pub fn dir(mut self, path: &str) -> Self {
        self.add_parents(Path::new(path));
        self.nodes.insert(PathBuf::from(path), Node::Dir);
        self
    }

    /// Adds a file (and its parent directories).
    pub fn file(mut self, path: &str, executable: bool) -> Self {
        self.add_parents(Path::new(path));
        self.nodes
            .insert(PathBuf::from(path), Node::File { executable });
        self
    }

    /// Adds a symlink at `path` pointing to `target` (relative or absolute).
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.add_parents(Path::new(path));
        self.nodes
            .insert(PathBuf::from(path), Node::Symlink(PathBuf::from(target)));
        self
    }

    fn add_parents(&mut self, path: &Path) {
        let mut cur = path.parent();
        while let Some(p) = cur {
            self.nodes.entry(p.to_path_buf()).or_insert(Node::Dir);
            cur = p.parent();
        }
    }

    /// Resolves every symlink along `path`; `None` if something is missing
    /// or a loop is found.
    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let mut todo: Vec<PathBuf> = Vec::new();
        let mut resolved = PathBuf::from("/");
        let mut hops = 0;
        let push_components = |todo: &mut Vec<PathBuf>, p: &Path| {
            let parts: Vec<PathBuf> = p
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(PathBuf::from(n)),
                    Component::ParentDir => Some(PathBuf::from("..")),
                    _ => None,
                })
                .collect();
            todo.extend(parts.into_iter().rev());
        };
        push_components(&mut todo, path);
        while let Some(part) = todo.pop() {
            if part.as_os_str() == ".." {
                resolved.pop();
                continue;
            }
            let candidate = resolved.join(&part);
            match self.nodes.get(&candidate)? {
                Node::Symlink(target) => {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    if target.is_absolute() {
                        resolved = PathBuf::from("/");
                    }
                    push_components(&mut todo, target);
                }
                _ => resolved = candidate,
            }
        }
        Some(resolved)
    }
}

impl FsView for FakeFs {
    fn exists(&self, path: &Path) -> bool {
        self.resolve(path).is_some()
    }

    fn is_executable_file(&self, path: &Path) -> bool {
        self.resolve(path)
            .and_then(|p| self.nodes.get(&p).cloned())
            .is_some_and(|n| matches!(n, Node::File { executable: true }))
    }

    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        self.resolve(path)
    }

    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        match self.nodes.get(path)? {
            Node::Symlink(t) => Some(t.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_fs_follows_relative_and_absolute_links() {
        let fs = FakeFs::new()
            .dir("/var/home/u")
            .symlink("/home", "var/home")
            .symlink("/var/home/u/etc-link", "/etc")
            .dir("/etc");
        assert_eq!(
            fs.canonicalize(Path::new("/home/u")),
            Some(PathBuf::from("/var/home/u"))
        );
        assert_eq!(
            fs.canonicalize(Path::new("/home/u/etc-link")),
            Some(PathBuf::from("/etc"))
        );
        assert!(!fs.exists(Path::new("/home/u/missing")));
        let looped = FakeFs::new().symlink("/a", "/a");
        assert!(!looped.exists(Path::new("/a")));
    }
}
