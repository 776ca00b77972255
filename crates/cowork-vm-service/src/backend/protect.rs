//! Finding, in a writable mount, the paths `cowork_policy::protect` keeps
//! read-only, and opening them for binding. bwrap binds the descriptors;
//! the microVM's init binds the same paths inside the guest.
//!
//! Everything is looked at through the mount's pinned descriptor, without
//! following symlinks. Searched: the mount's top level, and one level of
//! subfolders for further repositories (a folder of checkouts, bare
//! repositories and git directories under any name); each git directory's
//! submodule git directories (`modules/`, at any depth: a submodule at
//! `libs/foo` keeps its own in `modules/libs/foo`) with their worktrees'
//! pointer files, worktree configs, and the hooks folder and included
//! files its config names (`core.hooksPath`, `include.path`). The search is
//! bounded so a huge project cannot make a sandbox slow to start, and it
//! fails closed: past a bound the mount is refused, since a sandbox could
//! otherwise pad a project until the next one stops looking.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use cowork_policy::protect::{
    IN_GIT_DIR, Kind, TOP_LEVEL, opted_out, parse_gitfile, protection_binds, resolve_in_mount,
};
use rustix::fs::FileType;

use crate::sys::pin::{kind_at, mkdir_beneath, open_path_beneath, read_small_beneath};

/// Subfolders of a mount's top level looked into for repositories.
const MAX_SUBFOLDERS: usize = 2048;
/// Git directories (the main one, submodules, worktrees, repositories in
/// subfolders) and folders looked through under `modules/`.
const MAX_GIT_DIRS: usize = 512;

/// A bind that protects (or pins) something inside a mount.
#[derive(Debug)]
pub struct Protection {
    /// Relative to the mount's root.
    pub rel: PathBuf,
    pub read_only: bool,
    pub fd: OwnedFd,
}

fn matches(kind: Option<FileType>, want: Kind) -> bool {
    matches!(
        (kind, want),
        (Some(FileType::RegularFile), Kind::File) | (Some(FileType::Directory), Kind::Dir)
    )
}

struct Search<'a> {
    mount: &'a OwnedFd,
    host: &'a Path,
    opt_out: &'a [String],
    found: Vec<PathBuf>,
    git_dirs: Vec<PathBuf>,
    /// Folders visited under `modules/` and `worktrees/`.
    visited: usize,
    /// Why the search stopped short (the mount is then refused).
    overflow: Option<String>,
}

impl Search<'_> {
    fn add(&mut self, rel: PathBuf) {
        if opted_out(&rel, self.opt_out) {
            tracing::debug!("{}: protection opted out", self.host.join(&rel).display());
        } else {
            self.found.push(rel);
        }
    }

    fn top_level(&mut self, dir: &Path) {
        for p in TOP_LEVEL {
            let rel = dir.join(p.name);
            let kind = kind_at(self.mount, &rel);
            if matches(kind, p.kind) {
                self.add(rel);
            } else if kind == Some(FileType::Symlink) {
                tracing::warn!(
                    "{} is a symlink: it cannot be kept read-only in the sandbox",
                    self.host.join(&rel).display()
                );
            }
        }
        self.repository(dir);
    }

    /// `dir/.git`, a directory or a pointer file.
    fn repository(&mut self, dir: &Path) {
        let dot_git = dir.join(".git");
        match kind_at(self.mount, &dot_git) {
            Some(FileType::Directory) => self.git_dir(dot_git),
            Some(FileType::RegularFile) => {
                // The pointer itself: rewritten, it would name a git
                // directory the sandbox made.
                self.add(dot_git.clone());
                if let Some(text) = read_small_beneath(self.mount, &dot_git, 4096)
                    && let Some(target) = parse_gitfile(&text)
                {
                    match resolve_in_mount(self.host, dir, target) {
                        Some(git_dir) => self.git_dir(git_dir),
                        None => tracing::debug!(
                            "{}: its git directory {target} is outside this mount",
                            self.host.join(&dot_git).display()
                        ),
                    }
                }
            }
            Some(FileType::Symlink) => self.unprotectable(&dot_git),
            _ => {}
        }
    }

    fn unprotectable(&self, rel: &Path) {
        tracing::warn!(
            "{} is a symlink: it cannot be kept read-only in the sandbox",
            self.host.join(rel).display()
        );
    }

    fn git_dir(&mut self, git_dir: PathBuf) {
        if self.git_dirs.contains(&git_dir) {
            return;
        }
        if self.git_dirs.len() >= MAX_GIT_DIRS {
            self.overflow = Some(format!("more than {MAX_GIT_DIRS} git directories"));
            return;
        }
        // The empty path is the mount's root (a directory by construction).
        if !git_dir.as_os_str().is_empty()
            && kind_at(self.mount, &git_dir) != Some(FileType::Directory)
        {
            return;
        }
        self.git_dirs.push(git_dir.clone());
        for (name, kind) in IN_GIT_DIR {
            let rel = git_dir.join(name);
            let mut found = kind_at(self.mount, &rel);
            if found.is_none() && *kind == Kind::Dir {
                // A repository without hooks/: made (as `git init` would),
                // so a hook cannot be planted in it.
                let shown = self.host.join(&rel);
                match mkdir_beneath(self.mount, &rel, &shown) {
                    Ok(()) => found = kind_at(self.mount, &rel),
                    Err(e) => tracing::warn!("cannot create {}: {e}", shown.display()),
                }
            }
            if matches(found, *kind) {
                self.add(rel);
            } else if found == Some(FileType::Symlink) {
                self.unprotectable(&rel);
            }
        }
        // A worktree's git directory names the shared one.
        if let Some(text) = read_small_beneath(self.mount, &git_dir.join("commondir"), 4096)
            && let Some(common) = resolve_in_mount(self.host, &git_dir, text.trim())
        {
            self.git_dir(common);
        }
        self.named_by_config(&git_dir);
        for name in self.subdirs(&git_dir.join("worktrees")) {
            self.git_dir(git_dir.join("worktrees").join(name));
        }
        self.modules(&git_dir, &git_dir.join("modules"), Path::new(""));
    }

    /// Submodule git directories below `dir` (`<git_dir>/modules/<path>`):
    /// a folder that is not a git directory is a level of a submodule's
    /// path (`libs/` of `libs/foo`). Each one's worktree pointer file, at
    /// `<path>/.git` beside the superproject's git directory, is kept too.
    fn modules(&mut self, git_dir: &Path, dir: &Path, path: &Path) {
        for name in self.subdirs(dir) {
            let sub = dir.join(&name);
            let sub_path = path.join(&name);
            if is_git_dir_at(self.mount, &sub) {
                self.git_dir(sub.clone());
                if let Some(top) = git_dir.parent() {
                    let pointer = top.join(&sub_path).join(".git");
                    if kind_at(self.mount, &pointer) == Some(FileType::RegularFile) {
                        self.add(pointer);
                    }
                }
                // Nested submodules live in the submodule's own modules/.
            } else {
                self.modules(git_dir, &sub, &sub_path);
            }
        }
    }

    /// The hooks folder and included files a git directory's config names
    /// (`core.hooksPath`, `include.path`, `includeIf.*.path`), when they lie
    /// in the mount: the config is read-only, but what it points at would
    /// not be.
    fn named_by_config(&mut self, git_dir: &Path) {
        let Some(text) = read_small_beneath(self.mount, &git_dir.join("config"), 64 * 1024) else {
            return;
        };
        let worktree = git_dir.parent().map(Path::to_path_buf).unwrap_or_default();
        for (kind, value) in config_paths(&text) {
            let base = match kind {
                ConfigPath::HooksPath => &worktree,
                ConfigPath::Include => git_dir,
            };
            let Some(rel) = resolve_in_mount(self.host, base, value.as_str()) else {
                tracing::debug!(
                    "{}: {value} is outside this mount",
                    self.host.join(git_dir).display()
                );
                continue;
            };
            match kind_at(self.mount, &rel) {
                Some(FileType::Directory | FileType::RegularFile) => self.add(rel),
                Some(FileType::Symlink) => tracing::warn!(
                    "{} is a symlink: it cannot be kept read-only in the sandbox",
                    self.host.join(&rel).display()
                ),
                _ => {}
            }
        }
    }

    /// Subdirectory names of `rel`, counted against the bound.
    fn subdirs(&mut self, rel: &Path) -> Vec<String> {
        let names = list_dirs(self.mount, rel, MAX_GIT_DIRS + 1);
        self.visited += names.len();
        if names.len() > MAX_GIT_DIRS || self.visited > 4 * MAX_GIT_DIRS {
            self.overflow = Some(format!(
                "more than {MAX_GIT_DIRS} folders under {}",
                self.host.join(rel).display()
            ));
            return Vec::new();
        }
        names
    }
}

/// What a git config line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigPath {
    HooksPath,
    Include,
}

/// The `core.hooksPath` and `[include]`/`[includeIf ...]` `path` values of a
/// git config (git's syntax, simplified: keys are case-insensitive, values
/// may be quoted; `~/` paths are skipped, they are never in a mount).
fn config_paths(text: &str) -> Vec<(ConfigPath, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.split(']').next().unwrap_or("");
            section = name
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"').to_string();
        if value.is_empty() || value.starts_with('~') {
            continue;
        }
        match (section.as_str(), key.as_str()) {
            ("core", "hookspath") => out.push((ConfigPath::HooksPath, value)),
            ("include" | "includeif", "path") => out.push((ConfigPath::Include, value)),
            _ => {}
        }
    }
    out
}

/// Whether `rel` (the mount's root when empty) is a git directory
/// (`HEAD`, `objects/` and `refs/`, as git recognizes one).
fn is_git_dir_at(mount: &OwnedFd, rel: &Path) -> bool {
    kind_at(mount, &rel.join("HEAD")) == Some(FileType::RegularFile)
        && kind_at(mount, &rel.join("objects")) == Some(FileType::Directory)
        && kind_at(mount, &rel.join("refs")) == Some(FileType::Directory)
}

/// Subdirectory names of `rel` (not symlinks), at most `max`.
fn list_dirs(mount: &OwnedFd, rel: &Path, max: usize) -> Vec<String> {
    let Ok(fd) = open_path_beneath(mount, rel, rel) else {
        return Vec::new();
    };
    let Ok(dir) = rustix::fs::openat(
        &fd,
        ".",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return Vec::new();
    };
    let Ok(entries) = rustix::fs::Dir::new(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type() == FileType::Directory)
        .filter_map(|e| e.file_name().to_str().ok().map(String::from))
        .filter(|n| n != "." && n != "..")
        .take(max)
        .collect()
}

/// The protection binds for the writable mount `mount` (host path
/// `host`), each with its descriptor, in bind order.
pub fn protections(
    mount: &OwnedFd,
    host: &Path,
    opt_out: &[String],
) -> Result<Vec<Protection>, String> {
    let mut search = Search {
        mount,
        host,
        opt_out,
        found: Vec::new(),
        git_dirs: Vec::new(),
        visited: 0,
        overflow: None,
    };
    search.top_level(Path::new(""));
    // A bare repository (or a git directory under another name) mounted
    // as a whole: its own config and hooks.
    if is_git_dir_at(mount, Path::new("")) {
        search.git_dir(PathBuf::new());
    }
    // Every subfolder, hidden and build folders too (`build/`, `.tools/`,
    // `node_modules/` can hold a checkout), and git directories under any
    // name (`foo.git`, a `--separate-git-dir`): a few stats each.
    let names = list_dirs(mount, Path::new(""), MAX_SUBFOLDERS + 1);
    if names.len() > MAX_SUBFOLDERS {
        search.overflow = Some(format!("more than {MAX_SUBFOLDERS} folders at its top"));
    }
    for name in names.iter().take(MAX_SUBFOLDERS) {
        let dir = Path::new(name);
        if is_git_dir_at(mount, dir) {
            search.git_dir(dir.to_path_buf());
        } else {
            search.repository(dir);
        }
    }
    if let Some(why) = search.overflow {
        return Err(format!(
            "{}: {why}; its git configuration cannot all be kept read-only, so it is not \
             mounted read-write (mount it read-only, or a smaller folder)",
            host.display()
        ));
    }
    Ok(protection_binds(&search.found)
        .into_iter()
        .filter_map(|b| {
            let shown = host.join(&b.rel);
            match open_path_beneath(mount, &b.rel, &shown) {
                Ok(fd) => Some(Protection {
                    rel: b.rel,
                    read_only: b.read_only,
                    fd,
                }),
                Err(e) => {
                    tracing::warn!("cannot protect {}: {e}", shown.display());
                    None
                }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pin::pin_dir;

    fn names(p: &[Protection]) -> Vec<(String, bool)> {
        p.iter()
            .map(|p| (p.rel.display().to_string(), p.read_only))
            .collect()
    }

    #[test]
    fn config_paths_table() {
        let text = "[core]\n\tHooksPath = .husky/_\n\tbare = false\n[include]\n\tpath = config.local\n                    [includeIf \"gitdir:~/work/\"]\n\tpath = \"../shared.inc\"\n[include]\n\tpath = ~/.gitconfig.extra\n                    [alias]\n\tpath = not-an-include\n";
        assert_eq!(
            config_paths(text),
            vec![
                (ConfigPath::HooksPath, ".husky/_".to_string()),
                (ConfigPath::Include, "config.local".to_string()),
                (ConfigPath::Include, "../shared.inc".to_string()),
            ]
        );
        assert!(config_paths("").is_empty());
        assert!(config_paths("[core]\nhooksPath =\n").is_empty());
    }

    #[test]
    fn finds_repositories_pointer_files_and_top_level_names() {
        let t = tempfile::tempdir().unwrap();
        let proj = std::fs::canonicalize(t.path()).unwrap().join("proj");
        for d in [
            ".git/modules/lib",
            ".vscode",
            "app/.git",
            "node_modules/x/.git",
            "build/.git",
            "lib",
        ] {
            std::fs::create_dir_all(proj.join(d)).unwrap();
        }
        std::fs::write(proj.join(".git/config"), "[core]").unwrap();
        std::fs::write(proj.join(".git/modules/lib/config"), "[core]").unwrap();
        std::fs::write(proj.join("lib/.git"), "gitdir: ../.git/modules/lib\n").unwrap();
        std::fs::write(proj.join(".mcp.json"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", proj.join(".envrc")).unwrap();
        let pinned = pin_dir(&proj, &proj, &proj, false).unwrap();
        let got = names(&protections(&pinned.fd, &proj, &[".vscode".to_string()]).unwrap());
        let want: Vec<(String, bool)> = [
            (".git", false),
            ("app", false),
            ("build", false),
            ("lib", false),
            (".git/modules", false),
            ("app/.git", false),
            ("build/.git", false),
            (".git/modules/lib", false),
            (".mcp.json", true),
            (".git/config", true),
            (".git/hooks", true),
            ("lib/.git", true),
            ("app/.git/hooks", true),
            ("build/.git/hooks", true),
            (".git/modules/lib/config", true),
            (".git/modules/lib/hooks", true),
        ]
        .iter()
        .map(|(p, ro)| (p.to_string(), *ro))
        .collect();
        assert_eq!(got, want);
        assert!(proj.join(".git/hooks").is_dir(), "missing hooks/ made");
        assert!(
            !proj.join("node_modules/x/.git/hooks").exists(),
            "two levels down: not searched"
        );
    }
}
