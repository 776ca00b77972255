//! Paths inside a writable project that the user's own tools run code from
//! on the host, kept read-only in the sandbox.
//!
//! A sandbox with a read-write project could plant `core.fsmonitor` in
//! `.git/config` (the user's next `git status` runs it), a hook, an
//! `.envrc`, a VS Code task, an MCP server in `.mcp.json`, or a line in a
//! shell start-up file. Each such path that exists when the sandbox starts
//! is bound read-only over itself, and every directory between the mount's
//! root and it is bound onto itself first: a mount point cannot be renamed
//! or removed, so `.git` cannot be moved aside and replaced by a writable
//! copy. Git directories are found through `.git` pointer files too
//! (worktrees, submodules), and a repository's missing `hooks/` is created
//! (git makes it at `init`; an empty one is git's normal layout, not a
//! placeholder in the user's project).
//!
//! A `.git` pointer file is itself read-only (rewritten, it would send git
//! to a git directory the sandbox made, with a config of its choosing).
//!
//! What cannot be protected this way: a protected name that does not exist
//! yet (binding needs something to bind; srt creates placeholder files in
//! users' projects for that, and we do not), and one that is a symlink
//! (bubblewrap binds what it points to). Both are listed in the README. The
//! sharpest case is a `commondir` written into a git directory that had
//! none: git then reads `config` and `hooks` from the folder it names.

use std::path::{Component, Path, PathBuf};

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// A protected name at a project's top level, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protected {
    pub name: &'static str,
    pub kind: Kind,
    pub why: &'static str,
}

/// Protected names directly inside a writable mount.
pub const TOP_LEVEL: &[Protected] = &[
    Protected {
        name: ".gitmodules",
        kind: Kind::File,
        why: "submodule URLs and update commands git runs",
    },
    Protected {
        name: ".gitconfig",
        kind: Kind::File,
        why: "git configuration (a home folder mounted as a project)",
    },
    Protected {
        name: ".bashrc",
        kind: Kind::File,
        why: "run by every interactive bash",
    },
    Protected {
        name: ".bash_profile",
        kind: Kind::File,
        why: "run by login bash",
    },
    Protected {
        name: ".zshrc",
        kind: Kind::File,
        why: "run by every interactive zsh",
    },
    Protected {
        name: ".zprofile",
        kind: Kind::File,
        why: "run by login zsh",
    },
    Protected {
        name: ".profile",
        kind: Kind::File,
        why: "run by login shells",
    },
    Protected {
        name: ".envrc",
        kind: Kind::File,
        why: "run by direnv when the user enters the folder",
    },
    Protected {
        name: ".vscode",
        kind: Kind::Dir,
        why: "editor tasks and launch configurations",
    },
    Protected {
        name: ".idea",
        kind: Kind::Dir,
        why: "editor run configurations",
    },
    Protected {
        name: ".mcp.json",
        kind: Kind::File,
        why: "MCP servers Claude Code starts for the project",
    },
    Protected {
        name: ".claude/settings.json",
        kind: Kind::File,
        why: "Claude Code's project hooks, run by a `claude` on the host",
    },
    Protected {
        name: ".claude/settings.local.json",
        kind: Kind::File,
        why: "Claude Code's local project hooks, run by a `claude` on the host",
    },
    Protected {
        name: ".claude/hooks",
        kind: Kind::Dir,
        why: "the scripts Claude Code's project hooks run",
    },
    Protected {
        name: ".devcontainer",
        kind: Kind::Dir,
        why: "dev container commands (`postCreateCommand`) editors run",
    },
    Protected {
        name: ".devcontainer.json",
        kind: Kind::File,
        why: "dev container commands (`postCreateCommand`) editors run",
    },
    Protected {
        name: "mise.toml",
        kind: Kind::File,
        why: "mise tasks and hooks run when the user enters the folder",
    },
    Protected {
        name: ".pre-commit-config.yaml",
        kind: Kind::File,
        why: "commands pre-commit runs at the user's next commit",
    },
    Protected {
        name: ".mise.toml",
        kind: Kind::File,
        why: "mise tasks and hooks run when the user enters the folder",
    },
];

/// Protected names inside a git directory: its configuration (`core.*`
/// commands such as `fsmonitor`, `sshCommand`, `pager`) and its hooks.
/// `commondir` (a worktree's or a redirected repository's shared git
/// directory, where git then takes `config` and `hooks` from) and `gitdir`
/// (a worktree's way back) choose which of those apply.
pub const IN_GIT_DIR: &[(&str, Kind)] = &[
    ("config", Kind::File),
    ("config.worktree", Kind::File),
    ("hooks", Kind::Dir),
    ("commondir", Kind::File),
    ("gitdir", Kind::File),
];

/// The target of a `.git` pointer file (`gitdir: <path>`), as git reads it:
/// the first line, leading/trailing blanks removed.
pub fn parse_gitfile(content: &str) -> Option<&str> {
    let line = content.lines().next()?;
    let target = line.strip_prefix("gitdir:")?.trim();
    (!target.is_empty()).then_some(target)
}

/// A relative path with no `..`, `.` or root components (`a/b/c`), or
/// `None`: what may be joined below a mount.
pub fn plain_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Resolves `target` (from a pointer file in `dir`, both relative to the
/// mount's root; `target` may be absolute, given with `mount_host` as the
/// mount's host path) to a path inside the mount, lexically; `None` if it
/// leaves the mount.
pub fn resolve_in_mount(mount_host: &Path, dir: &Path, target: &str) -> Option<PathBuf> {
    let target = Path::new(target);
    let joined = if target.is_absolute() {
        target.strip_prefix(mount_host).ok()?.to_path_buf()
    } else {
        dir.join(target)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether the user opted `rel` out of protection: an entry names the
/// path relative to a mount's root (`.git/hooks`, `sub/.envrc`) or, to opt
/// it out everywhere, its last part(s) (`.vscode`, `.git/config`).
pub fn opted_out(rel: &Path, opt_out: &[String]) -> bool {
    opt_out.iter().any(|entry| {
        let entry = Path::new(entry.trim_matches('/'));
        !entry.as_os_str().is_empty() && (rel == entry || rel.ends_with(entry))
    })
}

/// One bind inside a mount: `rel` onto itself, read-only (protected) or
/// read-write (a pinned ancestor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectBind {
    pub rel: PathBuf,
    pub read_only: bool,
}

/// The binds that protect `found` (existing protected paths, relative to
/// the mount's root): every ancestor below the root pinned, shallowest
/// first, then the protected paths read-only, shallowest first. A path
/// that is itself protected is not also pinned (a read-only bind is a
/// mount point too), and one below a read-only directory needs nothing.
pub fn protection_binds(found: &[PathBuf]) -> Vec<ProtectBind> {
    let mut protected: Vec<PathBuf> = found.to_vec();
    protected.sort();
    protected.dedup();
    // A protected path inside a protected directory is covered by it.
    let covering = protected.clone();
    protected.retain(|p| !covering.iter().any(|c| c != p && p.starts_with(c)));
    let mut pins: Vec<PathBuf> = Vec::new();
    for p in &protected {
        let mut ancestor = PathBuf::new();
        let parts: Vec<_> = p.components().collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            ancestor.push(part);
            if !protected.contains(&ancestor) && !pins.contains(&ancestor) {
                pins.push(ancestor.clone());
            }
        }
    }
    let depth = |p: &PathBuf| p.components().count();
    pins.sort_by(|a, b| depth(a).cmp(&depth(b)).then(a.cmp(b)));
    protected.sort_by(|a, b| depth(a).cmp(&depth(b)).then(a.cmp(b)));
    pins.into_iter()
        .map(|rel| ProtectBind {
            rel,
            read_only: false,
        })
        .chain(protected.into_iter().map(|rel| ProtectBind {
            rel,
            read_only: true,
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn gitfile_table() {
        let cases = [
            ("gitdir: ../.git/modules/sub\n", Some("../.git/modules/sub")),
            (
                "gitdir:/abs/main/.git/worktrees/wt",
                Some("/abs/main/.git/worktrees/wt"),
            ),
            ("gitdir:   spaced  \nsecond line", Some("spaced")),
            ("gitdir:", None),
            ("not a pointer", None),
            ("", None),
        ];
        for (content, want) in cases {
            assert_eq!(parse_gitfile(content), want, "{content:?}");
        }
    }

    #[test]
    fn resolve_in_mount_table() {
        let host = Path::new("/home/u/proj");
        let cases = [
            ("sub", "../.git/modules/sub", Some(".git/modules/sub")),
            ("", ".git", Some(".git")),
            ("a/b", "../../x", Some("x")),
            ("a", "../../outside", None),
            (
                "",
                "/home/u/proj/.git/worktrees/w",
                Some(".git/worktrees/w"),
            ),
            ("", "/home/u/other/.git", None),
            ("", "./.git/./x", Some(".git/x")),
        ];
        for (dir, target, want) in cases {
            assert_eq!(
                resolve_in_mount(host, Path::new(dir), target),
                want.map(PathBuf::from),
                "{dir} {target}"
            );
        }
    }

    #[test]
    fn plain_relative_table() {
        assert_eq!(plain_relative(Path::new("a/b")), Some("a/b".into()));
        assert_eq!(plain_relative(Path::new("./a")), Some("a".into()));
        assert_eq!(plain_relative(Path::new("a/../b")), None);
        assert_eq!(plain_relative(Path::new("/a")), None);
        assert_eq!(plain_relative(Path::new("")), None);
    }

    #[test]
    fn opt_out_table() {
        let opt = vec![
            ".vscode".to_string(),
            ".git/hooks".into(),
            "sub/.envrc".into(),
        ];
        let cases = [
            (".vscode", true),
            ("sub/.vscode", true),
            (".git/hooks", true),
            ("sub/.git/hooks", true),
            (".git/config", false),
            ("sub/.envrc", true),
            (".envrc", false),
            (".vscode-not", false),
        ];
        for (rel, want) in cases {
            assert_eq!(opted_out(Path::new(rel), &opt), want, "{rel}");
        }
        assert!(!opted_out(Path::new(".envrc"), &["/".to_string()]));
    }

    #[test]
    fn binds_pin_ancestors_first_then_protect() {
        let found: Vec<PathBuf> = [
            ".git/config",
            ".git/hooks",
            ".git/modules/lib/config",
            ".git/modules/lib/hooks",
            ".mcp.json",
            ".vscode",
            ".vscode/tasks.json",
            "app/.git/config",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let got: Vec<(String, bool)> = protection_binds(&found)
            .into_iter()
            .map(|b| (b.rel.display().to_string(), b.read_only))
            .collect();
        let want: Vec<(String, bool)> = [
            (".git", false),
            ("app", false),
            (".git/modules", false),
            ("app/.git", false),
            (".git/modules/lib", false),
            (".mcp.json", true),
            (".vscode", true),
            (".git/config", true),
            (".git/hooks", true),
            ("app/.git/config", true),
            (".git/modules/lib/config", true),
            (".git/modules/lib/hooks", true),
        ]
        .iter()
        .map(|(p, ro)| (p.to_string(), *ro))
        .collect();
        assert_eq!(got, want);
        assert_eq!(protection_binds(&[]), vec![]);
    }
}
