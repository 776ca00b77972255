//! Rewriting a spawn's arguments for a process that runs on the host, where
//! guest paths (`/sessions/<s>/mnt/<m>/...`) must become host paths.
//!
//! * `--add-dir P` / `--plugin-dir P` with a guest path: translated (for a
//!   plugin dir, raised to the plugin root); untranslatable pairs are dropped.
//! * `--allowedTools CSV` / `--disallowedTools CSV`: each `Tool(pattern)`
//!   entry whose pattern is a guest path is translated; untranslatable
//!   entries are dropped (a rule that can never match is worse than none).

use std::path::{Path, PathBuf};

use crate::fs_view::FsView;
use crate::mounts::{MountMap, parse_guest_path, translate_guest_path};
use crate::paths::is_within;

const GUEST_PATH_FLAGS: [&str; 2] = ["--add-dir", "--plugin-dir"];
const TOOL_LIST_FLAGS: [&str; 2] = ["--allowedTools", "--disallowedTools"];

/// Translates guest paths in `args` (see the module docs).
pub fn clean_spawn_args(args: &[String], map: &MountMap, fs: &dyn FsView) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let value = args.get(i + 1);
        match value {
            Some(v) if GUEST_PATH_FLAGS.contains(&flag) && v.starts_with("/sessions/") => {
                if let Some(host) = translate_guest_path(v, map) {
                    let host = if flag == "--plugin-dir" {
                        let base = mount_base(v, map).unwrap_or_else(|| host.clone());
                        resolve_plugin_root(&host, &base, fs)
                    } else {
                        host
                    };
                    out.push(flag.to_string());
                    out.push(host.to_string_lossy().into_owned());
                }
                i += 2;
            }
            Some(v) if TOOL_LIST_FLAGS.contains(&flag) => {
                out.push(flag.to_string());
                out.push(translate_tool_list(v, map));
                i += 2;
            }
            _ => {
                out.push(flag.to_string());
                i += 1;
            }
        }
    }
    out
}

fn mount_base(guest: &str, map: &MountMap) -> Option<PathBuf> {
    let parsed = parse_guest_path(guest)?;
    map.lookup(parsed.mount).map(|m| m.host.clone())
}

/// Splits a tool list at top-level commas; commas inside parentheses belong
/// to the entry (`Bash(npm test, npm build)`). Entries are not trimmed.
pub fn split_tool_list(csv: &str) -> Vec<&str> {
    if csv.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, ch) in csv.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&csv[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&csv[start..]);
    out
}

/// `Tool(pattern)` with a word-character tool name and a pattern without
/// `)`; anything else is `None`.
fn split_tool_entry(entry: &str) -> Option<(&str, &str)> {
    let inner = entry.strip_suffix(')')?;
    let (tool, pattern) = inner.split_once('(')?;
    let tool_ok = !tool.is_empty() && tool.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let pattern_ok = !pattern.is_empty() && !pattern.contains(')');
    (tool_ok && pattern_ok).then_some((tool, pattern))
}

/// Translates guest paths inside one tool-list value.
pub fn translate_tool_list(csv: &str, map: &MountMap) -> String {
    let mut out: Vec<String> = Vec::new();
    for entry in split_tool_list(csv) {
        let Some((tool, pattern)) = split_tool_entry(entry) else {
            out.push(entry.to_string());
            continue;
        };
        // The app emits `//sessions/...` (path.join on an absolute path).
        let collapsed = format!("/{}", pattern.trim_start_matches('/'));
        let normalized = if pattern.starts_with('/') {
            collapsed.as_str()
        } else {
            pattern
        };
        if !normalized.starts_with("/sessions/") {
            out.push(entry.to_string());
            continue;
        }
        if let Some(host) = translate_guest_path(normalized, map) {
            out.push(format!("{tool}({})", host.display()));
        }
    }
    out.join(",")
}

/// Climbs from `path` (at most two levels, never above `mount_base`) to the
/// directory holding `.claude-plugin/plugin.json` or `manifest.json`;
/// returns `path` itself when none is found.
pub fn resolve_plugin_root(path: &Path, mount_base: &Path, fs: &dyn FsView) -> PathBuf {
    let mut candidate = path.to_path_buf();
    for _ in 0..3 {
        if fs.exists(&candidate.join(".claude-plugin/plugin.json"))
            || fs.exists(&candidate.join("manifest.json"))
        {
            return candidate;
        }
        let Some(parent) = candidate.parent() else {
            break;
        };
        if parent == candidate || !is_within(parent, mount_base) {
            break;
        }
        candidate = parent.to_path_buf();
    }
    path.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs_view::FakeFs;
    use crate::mounts::{Mount, MountMode};
    use pretty_assertions::assert_eq;

    fn map(entries: &[(&str, &str)]) -> MountMap {
        let mut m = MountMap::new();
        for (name, host) in entries {
            m.insert(Mount {
                name: (*name).into(),
                host: PathBuf::from(host),
                mode: MountMode::ReadWrite,
            });
        }
        m
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    // Ported from the reference's cleanSpawnArgs cases (section 9.5).
    #[test]
    fn clean_spawn_args_table() {
        let fs = FakeFs::new()
            .file("/h/plugins/p1/.claude-plugin/plugin.json", false)
            .dir("/h/plugins/p1/skills/s");
        let m = map(&[
            ("plugins", "/h/plugins"),
            ("proj", "/h/proj"),
            (".auto-memory", "/host/memory"),
            ("data", "/h/data"),
        ]);
        let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
            (
                "passthrough",
                vec!["-p", "hi", "--verbose"],
                vec!["-p", "hi", "--verbose"],
            ),
            (
                "plugin dir raised to its root",
                vec!["--plugin-dir", "/sessions/s/mnt/plugins/p1/skills/s"],
                vec!["--plugin-dir", "/h/plugins/p1"],
            ),
            (
                "add-dir with subdir",
                vec!["--add-dir", "/sessions/s/mnt/proj/sub"],
                vec!["--add-dir", "/h/proj/sub"],
            ),
            (
                "unmapped plugin dir dropped with its flag",
                vec!["a", "--plugin-dir", "/sessions/s/mnt/nope", "b"],
                vec!["a", "b"],
            ),
            (
                "non-guest plugin dir kept",
                vec!["--plugin-dir", "/opt/plugin"],
                vec!["--plugin-dir", "/opt/plugin"],
            ),
            (
                "several flags, one unmapped",
                vec![
                    "--add-dir",
                    "/sessions/s/mnt/proj",
                    "--add-dir",
                    "/sessions/s/mnt/x",
                    "--plugin-dir",
                    "/sessions/s/mnt/plugins/p1",
                ],
                vec!["--add-dir", "/h/proj", "--plugin-dir", "/h/plugins/p1"],
            ),
            (
                "allowedTools entries translated",
                vec![
                    "--allowedTools",
                    "Read,Edit,Edit(//sessions/abc/mnt/.auto-memory/**),Write(/sessions/abc/mnt/.auto-memory/**)",
                ],
                vec![
                    "--allowedTools",
                    "Read,Edit,Edit(/host/memory/**),Write(/host/memory/**)",
                ],
            ),
            (
                "disallowedTools translated",
                vec![
                    "--disallowedTools",
                    "Bash(rm),Edit(//sessions/abc/mnt/data/secret/**)",
                ],
                vec!["--disallowedTools", "Bash(rm),Edit(/h/data/secret/**)"],
            ),
            (
                "unknown mount entry dropped, others remain",
                vec!["--allowedTools", "Read,Edit(/sessions/a/mnt/zzz/**),Write"],
                vec!["--allowedTools", "Read,Write"],
            ),
            (
                "mcp tool names translated",
                vec![
                    "--allowedTools",
                    "mcp__server__tool(/sessions/a/mnt/proj/x)",
                ],
                vec!["--allowedTools", "mcp__server__tool(/h/proj/x)"],
            ),
            (
                "dangling flag kept",
                vec!["x", "--add-dir"],
                vec!["x", "--add-dir"],
            ),
            ("empty", vec![], vec![]),
        ];
        for (why, input, want) in cases {
            assert_eq!(
                clean_spawn_args(&strings(&input), &m, &fs),
                strings(&want),
                "{why}"
            );
        }
    }

    #[test]
    fn split_tool_list_table() {
        let cases: [(&str, Vec<&str>); 5] = [
            ("", vec![]),
            ("Read,Write", vec!["Read", "Write"]),
            (
                "Bash(npm test, npm build),Read",
                vec!["Bash(npm test, npm build)", "Read"],
            ),
            ("Read,Bash(a,(b),c)", vec!["Read", "Bash(a,(b),c)"]),
            ("a,,b", vec!["a", "", "b"]),
        ];
        for (csv, want) in cases {
            assert_eq!(split_tool_list(csv), want, "{csv:?}");
        }
    }

    #[test]
    fn plugin_root_table() {
        let fs = FakeFs::new()
            .file("/h/p/.claude-plugin/plugin.json", false)
            .dir("/h/p/a/b/c")
            .file("/h/m/manifest.json", false)
            .dir("/h/m/x/y")
            .file("/h/manifest.json", false)
            .dir("/h/deep/a/b/c");
        let cases = [
            ("/h/p", "/h", "/h/p", "root at the same level"),
            ("/h/p/a", "/h", "/h/p", "one level up"),
            ("/h/m/x/y", "/h", "/h/m", "two levels up via manifest.json"),
            ("/h/p/a/b/c", "/h", "/h/p/a/b/c", "stops after three levels"),
            (
                "/h/deep/a",
                "/h/deep",
                "/h/deep/a",
                "never above the mount base",
            ),
            ("/h/none", "/h", "/h", "base itself may hold the manifest"),
        ];
        for (path, base, want, why) in cases {
            assert_eq!(
                resolve_plugin_root(Path::new(path), Path::new(base), &fs),
                PathBuf::from(want),
                "{why}"
            );
        }
    }
}
