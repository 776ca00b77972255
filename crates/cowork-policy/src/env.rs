//! The environment a spawned process gets.
//!
//! Base policy (all backends): the daemon's own environment minus every
//! `CLAUDE_CODE_*` key and the Electron/nesting keys, overlaid with the
//! client's `env`, `TERM=xterm-256color`, and `CLAUDE_CODE_OAUTH_TOKEN`
//! carried over from the daemon when the client did not set it at all.
//!
//! Decisions beyond the reference, per key:
//! * an explicit empty `CLAUDE_CODE_OAUTH_TOKEN` from the client is kept (it
//!   means "no token", Foundry mode) and is not replaced by the daemon's or
//!   the approved token; only the spawn's own `oauthToken` overrides it;
//! * an empty `ANTHROPIC_API_KEY` or `ANTHROPIC_AUTH_TOKEN` is dropped: the
//!   CLI treats an empty key as set and it breaks OAuth login.

use std::collections::BTreeMap;
use std::path::Path;

use crate::fs_view::FsView;
use crate::mounts::{MountMap, parse_guest_path, translate_guest_path};
use crate::paths::{join_within, resolve_subpath};

pub type EnvMap = BTreeMap<String, String>;

/// Keys never passed to a child: they make the CLI think it is nested
/// inside another session, or turn Electron binaries into Node.
pub const BLOCKED_KEYS: [&str; 3] = ["CLAUDECODE", "ELECTRON_RUN_AS_NODE", "ELECTRON_NO_ASAR"];
/// Prefix stripped from the daemon's own environment (the client sends what
/// the CLI should see).
pub const DAEMON_STRIPPED_PREFIX: &str = "CLAUDE_CODE_";
/// The OAuth token key.
pub const OAUTH_TOKEN_KEY: &str = "CLAUDE_CODE_OAUTH_TOKEN";
/// Keys whose empty value means "unset".
pub const EMPTY_MEANS_UNSET: [&str; 2] = ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"];

pub const CONFIG_DIR_KEY: &str = "CLAUDE_CONFIG_DIR";
pub const MEMORY_PATH_KEY: &str = "CLAUDE_COWORK_MEMORY_PATH_OVERRIDE";

fn keep(key: &str, value: &str) -> bool {
    let blocked = BLOCKED_KEYS.contains(&key);
    let empty_means_unset = value.is_empty() && EMPTY_MEANS_UNSET.contains(&key);
    !blocked && !empty_means_unset
}

/// The base environment shared by every backend.
pub fn base_env(daemon_env: &EnvMap, app_env: &EnvMap) -> EnvMap {
    let mut env: EnvMap = daemon_env
        .iter()
        .filter(|(k, v)| keep(k, v) && !k.starts_with(DAEMON_STRIPPED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in app_env {
        if keep(k, v) {
            env.insert(k.clone(), v.clone());
        } else {
            env.remove(k);
        }
    }
    env.insert("TERM".into(), "xterm-256color".into());
    if let Some(token) = daemon_env.get(OAUTH_TOKEN_KEY).filter(|t| !t.is_empty()) {
        env.entry(OAUTH_TOKEN_KEY.into())
            .or_insert_with(|| token.clone());
    }
    env
}

/// What an isolating backend (a sandbox, a VM) takes from the daemon's own
/// environment; everything else there (cloud keys, `GITHUB_TOKEN`,
/// `SSH_AUTH_SOCK`, the session bus, `XDG_RUNTIME_DIR`, our own `COWORK_*`
/// settings) stays outside. Exact keys:
/// * `PATH`: where commands are found (the sandbox has the host's `/usr`);
/// * `HOME`, `USER`, `LOGNAME`, `SHELL`: who and where the user is (the
///   sandbox's `$HOME` is the same path, empty or the skeleton home);
/// * `LANG`, `LANGUAGE`, `TZ`: how text and time are shown;
/// * `TERM`, `COLORTERM`: how output is drawn (`TERM` is then set anyway).
pub const SANDBOX_INHERITED_KEYS: [&str; 10] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "COLORTERM",
];
/// ... and every locale category (`LC_ALL`, `LC_CTYPE`, ...).
pub const SANDBOX_INHERITED_PREFIX: &str = "LC_";

/// The base environment of an isolating backend: the spawn's `env` over a
/// short allowlist of the daemon's ([`SANDBOX_INHERITED_KEYS`]), with the
/// same per-key rules as [`base_env`] (the daemon's OAuth token still fills
/// in when the client sent none: it is the token the user gave Cowork).
/// The host backend keeps the reference's whole-environment merge
/// ([`base_env`]): it isolates nothing anyway.
pub fn sandbox_env(daemon_env: &EnvMap, app_env: &EnvMap) -> EnvMap {
    let allowed: EnvMap = daemon_env
        .iter()
        .filter(|(k, _)| {
            SANDBOX_INHERITED_KEYS.contains(&k.as_str())
                || k.starts_with(SANDBOX_INHERITED_PREFIX)
                || k.as_str() == OAUTH_TOKEN_KEY
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    base_env(&allowed, app_env)
}

/// Fills `CLAUDE_CODE_OAUTH_TOKEN` from the spawn's `oauthToken` or the
/// token given to `addApprovedOauthToken`.
pub fn apply_oauth_tokens(env: &mut EnvMap, spawn_token: Option<&str>, approved: Option<&str>) {
    let spawn_token = spawn_token.filter(|t| !t.is_empty());
    let approved = approved.filter(|t| !t.is_empty());
    match env.get(OAUTH_TOKEN_KEY).map(String::as_str) {
        Some(current) if !current.is_empty() => {}
        // Explicitly empty: only the spawn's own token replaces it.
        Some(_) => {
            if let Some(t) = spawn_token {
                env.insert(OAUTH_TOKEN_KEY.into(), t.into());
            }
        }
        None => {
            if let Some(t) = spawn_token.or(approved) {
                env.insert(OAUTH_TOKEN_KEY.into(), t.into());
            }
        }
    }
}

/// Rewrites the two path-valued keys for a process running directly on the
/// host, where `/sessions/...` does not exist.
///
/// `CLAUDE_CONFIG_DIR`: a guest path is translated, and removed when it
/// cannot be (the reference set the literal string `"null"`); a host path
/// under `$HOME` has a doubled home prefix undone. The memory override is
/// translated, else resolved from its mount name, else removed.
pub fn translate_for_host(env: &mut EnvMap, map: &MountMap, home: &Path, fs: &dyn FsView) {
    if let Some(dir) = env.get(CONFIG_DIR_KEY).cloned() {
        if dir.starts_with("/sessions/") {
            match translate_guest_path(&dir, map) {
                Some(host) => {
                    env.insert(CONFIG_DIR_KEY.into(), host.to_string_lossy().into_owned());
                }
                None => {
                    env.remove(CONFIG_DIR_KEY);
                }
            }
        } else if let Some(relative) = Path::new(&dir)
            .strip_prefix(home)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
        {
            let fixed = resolve_subpath(&relative.to_string_lossy(), home, fs);
            env.insert(CONFIG_DIR_KEY.into(), fixed.to_string_lossy().into_owned());
        }
    }
    if let Some(mem) = env.get(MEMORY_PATH_KEY).cloned()
        && mem.starts_with("/sessions/")
    {
        let host = translate_guest_path(&mem, map).or_else(|| {
            let guest = parse_guest_path(&mem)?;
            let base = resolve_subpath(guest.mount, home, fs);
            join_within(&base, guest.rest)
        });
        match host {
            Some(h) => {
                env.insert(MEMORY_PATH_KEY.into(), h.to_string_lossy().into_owned());
            }
            None => {
                env.remove(MEMORY_PATH_KEY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs_view::FakeFs;
    use crate::mounts::{Mount, MountMode};
    use pretty_assertions::assert_eq;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn sandbox_env_takes_only_the_allowlist_from_the_daemon() {
        let daemon = env(&[
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/u"),
            ("USER", "u"),
            ("LANG", "de_DE.UTF-8"),
            ("LC_TIME", "C"),
            ("TZ", "Europe/Berlin"),
            ("AWS_SECRET_ACCESS_KEY", "aws"),
            ("GITHUB_TOKEN", "gh"),
            ("SSH_AUTH_SOCK", "/run/user/1000/ssh"),
            ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("COWORK_VM_BACKEND", "bwrap"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "daemon-token"),
            ("CLAUDE_CODE_OTHER", "x"),
        ]);
        let app = env(&[("GITHUB_TOKEN", "from-the-client"), ("FOO", "bar")]);
        let got = sandbox_env(&daemon, &app);
        let want = env(&[
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/u"),
            ("USER", "u"),
            ("LANG", "de_DE.UTF-8"),
            ("LC_TIME", "C"),
            ("TZ", "Europe/Berlin"),
            ("TERM", "xterm-256color"),
            // The client's env is the spawn's own: it passes.
            ("GITHUB_TOKEN", "from-the-client"),
            ("FOO", "bar"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "daemon-token"),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn base_env_table() {
        struct Case {
            why: &'static str,
            daemon: EnvMap,
            app: EnvMap,
            want_present: Vec<(&'static str, &'static str)>,
            want_absent: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                why: "blocked keys go, others stay, TERM forced",
                daemon: env(&[("PATH", "/usr/bin"), ("ELECTRON_RUN_AS_NODE", "1")]),
                app: env(&[
                    ("CLAUDECODE", "1"),
                    ("ELECTRON_NO_ASAR", "1"),
                    ("FOO", "bar"),
                    ("TERM", "dumb"),
                ]),
                want_present: vec![
                    ("PATH", "/usr/bin"),
                    ("FOO", "bar"),
                    ("TERM", "xterm-256color"),
                ],
                want_absent: vec!["CLAUDECODE", "ELECTRON_RUN_AS_NODE", "ELECTRON_NO_ASAR"],
            },
            Case {
                why: "daemon CLAUDE_CODE_* stripped, app CLAUDE_CODE_* kept",
                daemon: env(&[("CLAUDE_CODE_SSE_PORT", "1234")]),
                app: env(&[("CLAUDE_CODE_ENTRYPOINT", "cowork")]),
                want_present: vec![("CLAUDE_CODE_ENTRYPOINT", "cowork")],
                want_absent: vec!["CLAUDE_CODE_SSE_PORT"],
            },
            Case {
                why: "daemon oauth token forwarded when the app has none",
                daemon: env(&[(OAUTH_TOKEN_KEY, "daemon-tok")]),
                app: env(&[]),
                want_present: vec![(OAUTH_TOKEN_KEY, "daemon-tok")],
                want_absent: vec![],
            },
            Case {
                why: "app token wins over the daemon's",
                daemon: env(&[(OAUTH_TOKEN_KEY, "daemon-tok")]),
                app: env(&[(OAUTH_TOKEN_KEY, "app-tok")]),
                want_present: vec![(OAUTH_TOKEN_KEY, "app-tok")],
                want_absent: vec![],
            },
            Case {
                why: "explicit empty app token wins (Foundry mode)",
                daemon: env(&[(OAUTH_TOKEN_KEY, "daemon-tok")]),
                app: env(&[(OAUTH_TOKEN_KEY, "")]),
                want_present: vec![(OAUTH_TOKEN_KEY, "")],
                want_absent: vec![],
            },
            Case {
                why: "empty API keys mean unset, from either side",
                daemon: env(&[("ANTHROPIC_AUTH_TOKEN", "")]),
                app: env(&[("ANTHROPIC_API_KEY", ""), ("OTHER_EMPTY", "")]),
                want_present: vec![("OTHER_EMPTY", "")],
                want_absent: vec!["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"],
            },
            Case {
                why: "an empty app API key also removes the daemon's",
                daemon: env(&[("ANTHROPIC_API_KEY", "sk-daemon")]),
                app: env(&[("ANTHROPIC_API_KEY", "")]),
                want_present: vec![],
                want_absent: vec!["ANTHROPIC_API_KEY"],
            },
        ];
        for case in cases {
            let got = base_env(&case.daemon, &case.app);
            for (k, v) in &case.want_present {
                assert_eq!(
                    got.get(*k).map(String::as_str),
                    Some(*v),
                    "{}: {k}",
                    case.why
                );
            }
            for k in &case.want_absent {
                assert!(!got.contains_key(*k), "{}: {k} should be absent", case.why);
            }
        }
    }

    #[test]
    fn oauth_token_table() {
        let cases: [(Option<&str>, Option<&str>, Option<&str>, Option<&str>, &str); 7] = [
            (
                None,
                Some("spawn"),
                Some("approved"),
                Some("spawn"),
                "spawn param first",
            ),
            (
                None,
                None,
                Some("approved"),
                Some("approved"),
                "approved fallback",
            ),
            (None, None, None, None, "nothing to add"),
            (
                Some("env"),
                Some("spawn"),
                Some("approved"),
                Some("env"),
                "env value wins",
            ),
            (
                Some(""),
                None,
                Some("approved"),
                Some(""),
                "explicit empty beats approved",
            ),
            (
                Some(""),
                Some("spawn"),
                None,
                Some("spawn"),
                "spawn param beats explicit empty",
            ),
            (
                None,
                Some(""),
                Some("approved"),
                Some("approved"),
                "empty spawn param ignored",
            ),
        ];
        for (current, spawn, approved, want, why) in cases {
            let mut e = EnvMap::new();
            if let Some(c) = current {
                e.insert(OAUTH_TOKEN_KEY.into(), c.into());
            }
            apply_oauth_tokens(&mut e, spawn, approved);
            assert_eq!(e.get(OAUTH_TOKEN_KEY).map(String::as_str), want, "{why}");
        }
    }

    #[test]
    fn host_translation_table() {
        let home = Path::new("/home/u");
        let fs = FakeFs::new().dir("/home/u");
        let mut map = MountMap::new();
        for (name, host) in [
            (".claude", "/home/u/.claude"),
            (".auto-memory", "/home/u/mem"),
        ] {
            map.insert(Mount {
                name: name.into(),
                host: host.into(),
                mode: MountMode::ReadWrite,
            });
        }
        let cases: [(&str, &str, Option<&str>, &str); 9] = [
            (
                CONFIG_DIR_KEY,
                "/sessions/s/mnt/.claude",
                Some("/home/u/.claude"),
                "translated",
            ),
            (
                CONFIG_DIR_KEY,
                "/sessions/s/mnt/unknown",
                None,
                "untranslatable is removed, never \"null\"",
            ),
            (
                CONFIG_DIR_KEY,
                "/home/u/home/u/.claude",
                Some("/home/u/.claude"),
                "doubled home undone",
            ),
            (
                CONFIG_DIR_KEY,
                "/opt/claude",
                Some("/opt/claude"),
                "other host paths kept",
            ),
            (
                MEMORY_PATH_KEY,
                "/sessions/s/mnt/.auto-memory",
                Some("/home/u/mem"),
                "translated",
            ),
            (
                MEMORY_PATH_KEY,
                "/sessions/s/mnt/.notes/x",
                Some("/home/u/.notes/x"),
                "mount-name fallback",
            ),
            (
                MEMORY_PATH_KEY,
                "/sessions/s/other",
                None,
                "not a mount path: removed",
            ),
            (
                MEMORY_PATH_KEY,
                "/sessions/s/mnt/.notes/../../../etc",
                None,
                "traversal removed",
            ),
            (
                MEMORY_PATH_KEY,
                "/home/u/mem2",
                Some("/home/u/mem2"),
                "host path kept",
            ),
        ];
        for (key, value, want, why) in cases {
            let mut e = env(&[(key, value)]);
            translate_for_host(&mut e, &map, home, &fs);
            assert_eq!(e.get(key).map(String::as_str), want, "{key}={value}: {why}");
        }
    }
}
