//! Session mounts: the map from mount names to host folders, how it is built
//! from a spawn's `additionalMounts` and earlier `mountPath` calls, which
//! host folders may be mounted, and guest-path translation through it.

use std::path::{Path, PathBuf};

use cowork_protocol::params::MountSpec;

use crate::fs_view::FsView;
use crate::names::validate_mount_name;
use crate::paths::{is_within, join_within, normalize, resolve_subpath};

/// Access a sandboxed process gets to a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MountMode {
    ReadOnly,
    ReadWrite,
}

impl MountMode {
    /// The client's mode string: `"ro"` is read-only, `"rw"`, `"rwd"` and a
    /// missing mode are read-write. Anything else fails closed to read-only.
    pub fn from_client(mode: Option<&str>) -> Self {
        match mode {
            None | Some("rw") | Some("rwd") => MountMode::ReadWrite,
            Some(_) => MountMode::ReadOnly,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MountMode::ReadOnly => "ro",
            MountMode::ReadWrite => "rw",
        }
    }
}

/// One named host folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mount {
    pub name: String,
    pub host: PathBuf,
    pub mode: MountMode,
}

/// Mount name -> host folder, in insertion order (the order decides the
/// primary mount and the bind order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MountMap {
    entries: Vec<Mount>,
}

impl MountMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces; a replaced entry keeps its original position, as
    /// a JavaScript object key would.
    pub fn insert(&mut self, mount: Mount) {
        match self.entries.iter_mut().find(|m| m.name == mount.name) {
            Some(slot) => *slot = mount,
            None => self.entries.push(mount),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Mount> {
        self.entries.iter().find(|m| m.name == name)
    }

    /// Looks a guest mount name up the way the client's names drift: exact,
    /// then with a leading dot added, then with it removed (the app's path
    /// normalizer strips leading dots).
    pub fn lookup(&self, name: &str) -> Option<&Mount> {
        self.get(name)
            .or_else(|| self.get(&format!(".{name}")))
            .or_else(|| name.strip_prefix('.').and_then(|bare| self.get(bare)))
    }

    /// The user's project folder: the first mount whose name does not start
    /// with a dot and is not `uploads`.
    pub fn primary(&self) -> Option<&Mount> {
        self.entries
            .iter()
            .find(|m| !m.name.starts_with('.') && m.name != "uploads")
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mount> {
        self.entries.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A mount that was asked for and refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedMount {
    pub name: String,
    pub reason: String,
}

/// Host folders that are never mounted into a session: the system's own
/// trees (and everything below them) ...
const FORBIDDEN_TREES: &[&str] = &[
    "/usr", "/etc", "/var", "/boot", "/proc", "/sys", "/dev", "/run", "/root",
];
/// ... and roots that would expose far more than one project.
const FORBIDDEN_EXACT: &[&str] = &[
    "/", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/tmp", "/home", "/nix", "/opt",
    "/srv", "/mnt", "/media",
];
/// Folders in a home that hold credentials; a session never needs them.
pub const CREDENTIAL_DIRS: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".kube",
    ".docker",
    ".password-store",
    ".local/share/keyrings",
    ".config/gcloud",
    ".config/gh",
];

/// Folders in a home the user's own session runs code from (git's and the
/// shells' configuration, autostart entries, user services, `~/.local/bin`
/// on `PATH`) or that hold this daemon's state (other sessions' `/tmp`):
/// never mounted, and nothing containing them is.
pub const HOST_CODE_DIRS: &[&str] = &[
    ".config/git",
    ".config/fish",
    ".config/zsh",
    ".oh-my-zsh",
    ".bashrc.d",
    ".config/autostart",
    ".config/systemd",
    ".config/environment.d",
    ".config/plasma-workspace",
    ".local/share/applications",
    ".config/nvim",
    ".config/Code",
    ".config/claude-desktop-debian",
    ".config/Claude/logs",
    ".config/Claude/Claude Extensions",
    ".config/Claude/claude-code-vm",
    ".config/Claude/claude-code",
    ".local/bin",
    ".cargo",
    ".local/share/cowork-vm-service",
    // Browsers' and sync tools' stored logins.
    ".mozilla",
    ".config/google-chrome",
    ".config/chromium",
    ".config/BraveSoftware",
    ".config/rclone",
];
/// Where the desktop client keeps the Claude Code binaries `installSdk`
/// names (bound read-only into sandboxes; never mounted).
pub const SDK_STORE: &str = ".config/Claude/claude-code-vm";
/// Folders that may be mounted from inside, never as a whole: the desktop
/// client's own configuration (its MCP servers, this daemon's config file)
/// sits directly in it, its skills and SDK folders below.
const NEVER_WHOLE: &[&str] = &[".config/Claude"];

/// Whose machine this is, for deciding which host folders may be mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountRules {
    /// The daemon's `$HOME`, as given and as its real path.
    pub home: PathBuf,
    pub home_real: PathBuf,
    /// Home folders of the machine's other accounts (from the user
    /// database), never mounted.
    pub other_homes: Vec<PathBuf>,
}

impl MountRules {
    fn is_own_home(&self, path: &Path) -> bool {
        is_within(path, &self.home) || is_within(path, &self.home_real)
    }

    fn forbidden_reason(&self, path: &Path) -> Option<String> {
        if FORBIDDEN_EXACT.iter().any(|f| path == Path::new(f)) {
            return Some(format!("{} is a system path", path.display()));
        }
        // A git directory's insides (its config and hooks) are kept
        // read-only in a mounted project; mounted on their own they would
        // not be.
        if path.components().any(|c| c.as_os_str() == ".git") {
            return Some(format!(
                "{} is inside a git directory; mount the project that holds it",
                path.display()
            ));
        }
        for home in [&self.home, &self.home_real] {
            if let Ok(rest) = path.strip_prefix(home)
                && let Some(dir) = CREDENTIAL_DIRS
                    .iter()
                    .find(|d| rest.starts_with(Path::new(d)))
            {
                return Some(format!("{} holds credentials (~/{dir})", path.display()));
            }
        }
        for home in [&self.home, &self.home_real] {
            if home.as_os_str().is_empty() {
                continue;
            }
            if is_within(home, path) {
                let how = if path == home.as_path() {
                    "is"
                } else {
                    "contains"
                };
                return Some(format!(
                    "{} {how} your home folder ({}), with its credentials and start-up files; \
                     mount a project folder inside it",
                    path.display(),
                    home.display()
                ));
            }
            let Ok(rest) = path.strip_prefix(home) else {
                continue;
            };
            if let Some(dir) = CREDENTIAL_DIRS
                .iter()
                .chain(HOST_CODE_DIRS)
                .chain(NEVER_WHOLE)
                .find(|d| Path::new(d).starts_with(rest))
            {
                return Some(format!(
                    "{} contains ~/{dir}, which a session must not reach",
                    path.display()
                ));
            }
            if let Some(dir) = HOST_CODE_DIRS
                .iter()
                .find(|d| rest.starts_with(Path::new(d)))
            {
                return Some(format!(
                    "{} is where your own session runs code from or keeps logins, or where this \
                     daemon keeps its state (~/{dir})",
                    path.display()
                ));
            }
        }
        if self.is_own_home(path) {
            return None;
        }
        if let Some(other) = self
            .other_homes
            .iter()
            .find(|h| h.as_path() != Path::new("/") && is_within(path, h))
        {
            return Some(format!(
                "{} is in another user's home ({})",
                path.display(),
                other.display()
            ));
        }
        // The folders next to our home are other accounts' homes, whether or
        // not the user database we read lists them (accounts made since,
        // LDAP and SSSD users, systemd-homed).
        for home in [&self.home, &self.home_real] {
            if let Some(parent) = home.parent()
                && parent != Path::new("/")
                && !parent.as_os_str().is_empty()
                && is_within(path, parent)
                && path != parent
            {
                return Some(format!(
                    "{} is in another user's home folder (next to yours under {})",
                    path.display(),
                    parent.display()
                ));
            }
        }
        FORBIDDEN_TREES
            .iter()
            .find(|f| is_within(path, Path::new(f)))
            .map(|f| format!("{} is under the system path {f}", path.display()))
    }
}

/// Checks a host folder about to become a session mount. Folders inside
/// `$HOME` and project folders elsewhere are fine; system trees, other
/// users' homes and credential folders are not, whether named directly or
/// reached through a symlink.
pub fn check_mount_source(host: &Path, rules: &MountRules, fs: &dyn FsView) -> Result<(), String> {
    let normalized = normalize(host);
    if let Some(reason) = rules.forbidden_reason(&normalized) {
        return Err(reason);
    }
    // Inside a git directory under any name (`foo.git/hooks`): its config
    // and hooks would be writable on their own.
    if let Some(git_dir) = normalized
        .ancestors()
        .skip(1)
        .take(4)
        .find(|a| is_git_dir(a, fs))
    {
        return Err(format!(
            "{} is inside the git directory {}; mount the project that holds it",
            normalized.display(),
            git_dir.display()
        ));
    }
    if let Some(real) = fs.canonicalize(&normalized)
        && real != normalized
        && let Some(reason) = rules.forbidden_reason(&real)
    {
        return Err(format!("symlink resolves to {}: {reason}", real.display()));
    }
    Ok(())
}

/// Whether `dir` holds what makes a git directory (`HEAD`, `objects`,
/// `refs`).
fn is_git_dir(dir: &Path, fs: &dyn FsView) -> bool {
    dir.parent().is_some()
        && ["HEAD", "objects", "refs"]
            .iter()
            .all(|n| fs.exists(&dir.join(n)))
}

/// Checks the folder `installSdk` names, bound read-only into every
/// sandbox: inside the client's SDK store it must be reached without a
/// symlink (a sandbox that could write there must not make it point
/// elsewhere); anywhere else, the rules of a mount.
pub fn check_sdk_folder(dir: &Path, rules: &MountRules, fs: &dyn FsView) -> Result<(), String> {
    let normalized = normalize(dir);
    let in_store = [&rules.home, &rules.home_real]
        .iter()
        .any(|h| !h.as_os_str().is_empty() && is_within(&normalized, &h.join(SDK_STORE)));
    if in_store {
        return match fs.canonicalize(&normalized) {
            Some(real) if real == normalized => Ok(()),
            Some(real) => Err(format!(
                "{} resolves to {} through a symlink",
                normalized.display(),
                real.display()
            )),
            // Nothing there yet: nothing is bound (a later `claude` fails
            // naming the path).
            None => Ok(()),
        };
    }
    check_mount_source(&normalized, rules, fs)
}

/// Builds a session's mount map from the mounts recorded by `mountPath`
/// (`binds`) overlaid with the spawn's `additionalMounts` (which win).
/// Entries without a path are skipped silently (as the reference does);
/// bad names and forbidden folders are returned as rejections.
pub fn build_mount_map(
    additional: &[(String, Option<MountSpec>)],
    binds: &[Mount],
    rules: &MountRules,
    fs: &dyn FsView,
) -> (MountMap, Vec<RejectedMount>) {
    let home = rules.home.as_path();
    let mut map = MountMap::new();
    let mut rejected = Vec::new();
    for bind in binds {
        map.insert(bind.clone());
    }
    for (name, spec) in additional {
        let Some(MountSpec {
            path: Some(path),
            mode,
        }) = spec
        else {
            continue;
        };
        if let Err(e) = validate_mount_name(name) {
            rejected.push(RejectedMount {
                name: name.clone(),
                reason: e.to_string(),
            });
            continue;
        }
        let host = resolve_subpath(path, home, fs);
        if let Err(reason) = check_mount_source(&host, rules, fs) {
            rejected.push(RejectedMount {
                name: name.clone(),
                reason,
            });
            continue;
        }
        map.insert(Mount {
            name: name.clone(),
            host,
            mode: MountMode::from_client(mode.as_deref()),
        });
    }
    (map, rejected)
}

/// The parts of a guest path `/sessions/<session>/mnt/<mount>[/<rest>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPath<'a> {
    pub session: &'a str,
    pub mount: &'a str,
    /// Empty, or starting with `/`.
    pub rest: &'a str,
}

/// Splits a guest path into its parts; `None` for anything else.
pub fn parse_guest_path(path: &str) -> Option<GuestPath<'_>> {
    let after = path.strip_prefix("/sessions/")?;
    let (session, after) = after.split_once('/')?;
    let after = after.strip_prefix("mnt/")?;
    let (mount, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    };
    if session.is_empty() || mount.is_empty() {
        return None;
    }
    Some(GuestPath {
        session,
        mount,
        rest,
    })
}

/// The session name of any `/sessions/<name>...` path.
pub fn guest_session(path: &str) -> Option<&str> {
    let after = path.strip_prefix("/sessions/")?;
    let name = after.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// Translates a guest path to the host path behind its mount; `None` if it
/// is not a guest path, the mount is unknown, or `..` would leave the mount.
pub fn translate_guest_path(path: &str, map: &MountMap) -> Option<PathBuf> {
    let guest = parse_guest_path(path)?;
    let mount = map.lookup(guest.mount)?;
    join_within(&mount.host, guest.rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs_view::FakeFs;
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

    fn spec(path: &str, mode: Option<&str>) -> Option<MountSpec> {
        Some(MountSpec {
            path: Some(path.into()),
            mode: mode.map(Into::into),
        })
    }

    // Ported from the reference's translateGuestPath cases (section 9.5).
    #[test]
    fn translate_guest_path_table() {
        let skills = map(&[(".skills", "/h/skills"), ("proj", "/h/proj")]);
        let bare = map(&[("skills", "/h/skills")]);
        let empty = MountMap::new();
        let cases: [(&str, &MountMap, Option<&str>); 14] = [
            ("", &skills, None),
            ("/tmp/sessions/a/mnt/proj", &skills, None),
            ("/home/u/file", &skills, None),
            ("/sessions/a/mnt/proj", &empty, None),
            ("/sessions/a/mnt/.skills/x", &skills, Some("/h/skills/x")),
            ("/sessions/a/mnt/skills/x", &skills, Some("/h/skills/x")),
            ("/sessions/a/mnt/.skills/x", &bare, Some("/h/skills/x")),
            ("/sessions/a/mnt/proj", &skills, Some("/h/proj")),
            ("/sessions/a/mnt/nope/x", &skills, None),
            (
                "/sessions/a/mnt/proj/a/b/c.txt",
                &skills,
                Some("/h/proj/a/b/c.txt"),
            ),
            ("/sessions/a/mnt/proj/../../etc/passwd", &skills, None),
            ("/sessions/a/mnt/proj/./x/../y", &skills, Some("/h/proj/y")),
            ("/sessions/a/proj", &skills, None),
            ("/sessions/a", &skills, None),
        ];
        for (path, m, want) in cases {
            assert_eq!(
                translate_guest_path(path, m),
                want.map(PathBuf::from),
                "{path:?}"
            );
        }
    }

    #[test]
    fn guest_session_extracts_the_name() {
        assert_eq!(guest_session("/sessions/bold/mnt/x"), Some("bold"));
        assert_eq!(guest_session("/sessions/bold"), Some("bold"));
        assert_eq!(guest_session("/sessions/"), None);
        assert_eq!(guest_session("/tmp"), None);
    }

    #[test]
    fn primary_mount_skips_dot_mounts_and_uploads() {
        let cases: [(&[(&str, &str)], Option<&str>); 4] = [
            (&[], None),
            (
                &[(".claude", "/a"), ("uploads", "/b"), ("proj", "/c")],
                Some("proj"),
            ),
            (&[(".claude", "/a"), ("uploads", "/b")], None),
            (&[("second", "/a"), ("first", "/b")], Some("second")),
        ];
        for (entries, want) in cases {
            assert_eq!(map(entries).primary().map(|m| m.name.as_str()), want);
        }
    }

    #[test]
    fn replaced_entries_keep_their_position() {
        let mut m = map(&[("a", "/1"), ("b", "/2")]);
        m.insert(Mount {
            name: "a".into(),
            host: "/3".into(),
            mode: MountMode::ReadOnly,
        });
        let order: Vec<_> = m
            .iter()
            .map(|e| (e.name.as_str(), e.host.clone()))
            .collect();
        assert_eq!(
            order,
            [("a", PathBuf::from("/3")), ("b", PathBuf::from("/2"))]
        );
    }

    #[test]
    fn build_mount_map_table() {
        let home = Path::new("/home/u");
        let fs = FakeFs::new()
            .dir("/home/u/proj")
            .dir("/mnt/storage/proj")
            .dir("/etc")
            .symlink("/home/u/sneaky", "/etc");
        let binds = vec![Mount {
            name: "skills".into(),
            host: "/home/u/.config/Claude/skills".into(),
            mode: MountMode::ReadOnly,
        }];
        let additional = vec![
            ("proj".to_string(), spec("home/u/proj", Some("rw"))),
            ("uploads".to_string(), spec("home/u/up", Some("ro"))),
            ("skills".to_string(), spec("home/u/other-skills", None)),
            ("nopath".to_string(), Some(MountSpec::default())),
            ("null".to_string(), None),
            ("etc".to_string(), spec("etc", None)),
            ("sneaky".to_string(), spec("home/u/sneaky", None)),
            ("../x".to_string(), spec("home/u/proj", None)),
            ("far".to_string(), spec("mnt/storage/proj", Some("rwd"))),
            ("weird".to_string(), spec("home/u/w", Some("banana"))),
        ];
        let rules = MountRules {
            home: home.into(),
            home_real: home.into(),
            other_homes: vec![],
        };
        let (m, rejected) = build_mount_map(&additional, &binds, &rules, &fs);
        let got: Vec<_> = m
            .iter()
            .map(|e| (e.name.as_str(), e.host.to_str().unwrap(), e.mode.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("skills", "/home/u/other-skills", "rw"),
                ("proj", "/home/u/proj", "rw"),
                ("uploads", "/home/u/up", "ro"),
                ("far", "/mnt/storage/proj", "rw"),
                ("weird", "/home/u/w", "ro"),
            ]
        );
        let names: Vec<_> = rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["etc", "sneaky", "../x"]);
        assert!(rejected[1].reason.contains("symlink resolves to /etc"));
    }

    #[test]
    fn mount_source_table() {
        let fs = FakeFs::new()
            .dir("/home/u")
            .dir("/home/u/store/foo.git/hooks")
            .dir("/home/u/store/foo.git/objects")
            .dir("/home/u/store/foo.git/refs")
            .file("/home/u/store/foo.git/HEAD", false)
            .dir("/etc")
            .dir("/var/home/u/proj")
            .dir("/var/log")
            .dir("/home/alice/secret")
            .symlink("/home/u/logs", "/var/log")
            .symlink("/home/u/other", "/home/alice/secret");
        let user = MountRules {
            home: "/home/u".into(),
            home_real: "/var/home/u".into(),
            other_homes: vec![
                "/home/alice".into(),
                "/var/lib/postgresql".into(),
                "/".into(),
            ],
        };
        let root = MountRules {
            home: "/root".into(),
            home_real: "/root".into(),
            other_homes: vec!["/home/u".into()],
        };
        let tmp_home = MountRules {
            home: "/tmp/t/home".into(),
            home_real: "/tmp/t/home".into(),
            other_homes: vec![],
        };
        let cases: &[(&str, &MountRules, Result<(), &str>)] = &[
            ("/home/u", &user, Err("is your home folder (/home/u)")),
            (
                "/var/home/u",
                &user,
                Err("is your home folder (/var/home/u)"),
            ),
            ("/tmp/t", &tmp_home, Err("contains your home folder")),
            ("/tmp/t/home/proj", &tmp_home, Ok(())),
            ("/home/u/.config", &user, Err("contains ~/.config/")),
            ("/home/u/.local", &user, Err("contains ~/.local/")),
            (
                "/home/u/.local/share",
                &user,
                Err("contains ~/.local/share/"),
            ),
            (
                "/home/u/.config/Claude",
                &user,
                Err("contains ~/.config/Claude"),
            ),
            ("/home/u/.config/Claude/skills", &user, Ok(())),
            ("/home/u/.config/nvim", &user, Err("~/.config/nvim")),
            (
                "/home/u/.config/Claude/claude-code-vm",
                &user,
                Err("~/.config/Claude/claude-code-vm"),
            ),
            (
                "/home/u/.config/Claude/logs",
                &user,
                Err("~/.config/Claude/logs"),
            ),
            ("/home/u/.cargo/bin", &user, Err("runs code from")),
            ("/home/u/.mozilla/firefox", &user, Err("runs code from")),
            (
                "/home/u/.config/Claude/local-agent-mode-sessions",
                &user,
                Ok(()),
            ),
            ("/home/u/.config/git", &user, Err("~/.config/git")),
            ("/home/u/.config/systemd/user", &user, Err("runs code from")),
            ("/home/u/.local/bin", &user, Err("~/.local/bin")),
            (
                "/home/u/.local/share/cowork-vm-service/sessions/s/tmp",
                &user,
                Err("keeps its state"),
            ),
            ("/root", &root, Err("is your home folder")),
            ("/home/u/proj", &user, Ok(())),
            ("/var/home/u/proj", &user, Ok(())),
            ("/mnt/storage/proj", &user, Ok(())),
            ("/tmp/build", &user, Ok(())),
            ("/opt/project", &user, Ok(())),
            ("/", &user, Err("system path")),
            ("/home", &user, Err("system path")),
            ("/usr", &user, Err("under the system path /usr")),
            ("/usr/bin", &user, Err("under the system path /usr")),
            ("/usr/local", &user, Err("under the system path /usr")),
            ("/etc/ssh", &user, Err("/etc")),
            ("/var/log", &user, Err("/var")),
            ("/var/lib", &user, Err("/var")),
            ("/boot", &user, Err("/boot")),
            ("/proc/self", &user, Err("/proc")),
            ("/sys/kernel", &user, Err("/sys")),
            ("/dev/shm", &user, Err("/dev")),
            ("/run/user/1000", &user, Err("/run")),
            ("/root", &user, Err("/root")),
            ("/tmp", &user, Err("system path")),
            ("/mnt", &user, Err("system path")),
            (
                "/home/alice",
                &user,
                Err("another user's home (/home/alice)"),
            ),
            ("/home/alice/proj", &user, Err("another user's home")),
            (
                "/home/newcomer/proj",
                &user,
                Err("another user's home folder"),
            ),
            ("/home/u/.ssh", &user, Err("holds credentials (~/.ssh)")),
            ("/var/home/u/.gnupg/x", &user, Err("holds credentials")),
            ("/home/u/logs", &user, Err("symlink resolves to /var/log")),
            ("/home/u/other", &user, Err("another user's home")),
            ("/root/project", &root, Ok(())),
            ("/root/.ssh", &root, Err("holds credentials (~/.ssh)")),
        ];
        for &(path, rules, want) in cases {
            let got = check_mount_source(Path::new(path), rules, &fs);
            match (want, got) {
                (Ok(()), Ok(())) => {}
                (Err(part), Err(reason)) => assert!(reason.contains(part), "{path}: {reason}"),
                (want, got) => panic!("{path}: want {want:?}, got {got:?}"),
            }
        }
        assert!(
            check_mount_source(Path::new("/home/u/proj"), &root, &fs).is_err(),
            "root's daemon does not mount a user's home"
        );
    }

    #[test]
    fn sdk_folder_table() {
        let fs = FakeFs::new()
            .dir("/home/u/.config/Claude/claude-code-vm/2.1.0")
            .dir("/home/u/.local/share/keyrings")
            .symlink(
                "/home/u/.config/Claude/claude-code-vm/2.1.1",
                "/home/u/.local/share",
            )
            .dir("/home/u/tools/sdk/1.0");
        let user = MountRules {
            home: "/home/u".into(),
            home_real: "/home/u".into(),
            other_homes: vec![],
        };
        let cases: &[(&str, Result<(), &str>)] = &[
            ("/home/u/.config/Claude/claude-code-vm/2.1.0", Ok(())),
            (
                "/home/u/.config/Claude/claude-code-vm/2.1.1",
                Err("through a symlink"),
            ),
            ("/home/u/.config/Claude/claude-code-vm/9.9", Ok(())),
            ("/home/u/tools/sdk/1.0", Ok(())),
            ("/home/u/.config", Err("contains ~/.config/")),
            ("/home/u", Err("is your home folder")),
            ("/home/u/.local/share", Err("contains ~/.local/share/")),
        ];
        for &(dir, want) in cases {
            let got = check_sdk_folder(Path::new(dir), &user, &fs);
            match (want, got) {
                (Ok(()), Ok(())) => {}
                (Err(part), Err(reason)) => assert!(reason.contains(part), "{dir}: {reason}"),
                (want, got) => panic!("{dir}: want {want:?}, got {got:?}"),
            }
        }
    }
}
