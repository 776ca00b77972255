//! Is Claude Desktop hooked up to this binary? (pure: from [`ClientFacts`])
//!
//! The 3.x client runs `$COWORK_NODE_PATH <resources>/cowork-vm-service.js
//! -socket P` when `COWORK_VM_BACKEND` is exactly `bwrap`; GUI launches get
//! both from claude-desktop-debian's launcher environment file, which
//! `cowork-vm-service install-client` edits.

use std::path::{Path, PathBuf};

use super::report::{Check, Section, Status};
use crate::hookup::env_file::{self, BACKEND_KEY, NODE_PATH_KEY};

/// What the doctor reads about the hook-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFacts {
    /// The launcher environment file.
    pub env_file: PathBuf,
    /// `None`: no such file. `Err`: it cannot be read.
    pub text: Option<Result<String, String>>,
    /// The file's `COWORK_NODE_PATH`, resolved, when it names a file.
    pub node_path_resolved: Option<PathBuf>,
    /// That file is executable by us.
    pub node_path_executable: bool,
}

const INSTALL_HINT: &str = "run `cowork-vm-service install-client` (it shows the change first \
     with --dry-run); other launchers: put COWORK_VM_BACKEND=bwrap and COWORK_NODE_PATH=<this \
     binary> in the client's environment";

pub fn client_section(client: &ClientFacts, own_exe: Option<&Path>) -> Section {
    Section {
        title: "Claude Desktop hook-up".into(),
        checks: vec![hookup_check(client, own_exe)],
    }
}

fn hookup_check(client: &ClientFacts, own_exe: Option<&Path>) -> Check {
    let file = client.env_file.display();
    let text = match &client.text {
        None => {
            return Check::new(
                Status::Warn,
                format!("not hooked up: {file} does not exist"),
            )
            .hint(INSTALL_HINT);
        }
        Some(Err(e)) => return Check::new(Status::Fail, format!("cannot read {file}: {e}")),
        Some(Ok(text)) => text,
    };
    let settings = env_file::settings(text);
    let backend = settings.backend.as_deref().unwrap_or("");
    if backend != "bwrap" {
        let shown = if backend.is_empty() {
            "not set".to_string()
        } else {
            format!("{backend:?}")
        };
        return Check::new(
            Status::Warn,
            format!(
                "not hooked up: {file}: {BACKEND_KEY} is {shown}; the client only runs a \
                 replacement helper for exactly \"bwrap\""
            ),
        )
        .hint(INSTALL_HINT);
    }
    let Some(node_path) = settings.node_path.filter(|p| !p.is_empty()) else {
        return Check::new(
            Status::Warn,
            format!(
                "not hooked up: {file}: {NODE_PATH_KEY} is not set, so the launcher runs the \
                 reference daemon with node"
            ),
        )
        .hint(INSTALL_HINT);
    };
    let resolved = client.node_path_resolved.as_deref();
    let is_us = resolved.is_some() && resolved == own_exe;
    if is_us {
        return Check::new(
            Status::Pass,
            format!(
                "hooked up: {file} sets {BACKEND_KEY}=bwrap and {NODE_PATH_KEY}={node_path} \
                 (this binary)"
            ),
        );
    }
    if resolved.is_none() || !client.node_path_executable {
        return Check::new(
            Status::Fail,
            format!(
                "{file}: {NODE_PATH_KEY}={node_path} is missing or not executable: Cowork cannot \
                 start its VM service"
            ),
        )
        .hint(INSTALL_HINT);
    }
    let another_of_us = resolved
        .and_then(Path::file_name)
        .is_some_and(|n| n == "cowork-vm-service");
    let what = if another_of_us {
        "another cowork-vm-service binary than this one"
    } else {
        "not this binary (the reference daemon runs with it)"
    };
    Check::new(
        Status::Warn,
        format!("{file}: {NODE_PATH_KEY}={node_path} is {what}"),
    )
    .hint(INSTALL_HINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "/usr/bin/cowork-vm-service";

    fn facts(text: Option<&str>, resolved: Option<&str>, executable: bool) -> ClientFacts {
        ClientFacts {
            env_file: "/home/u/.config/claude-desktop-debian/environment".into(),
            text: text.map(|t| Ok(t.to_string())),
            node_path_resolved: resolved.map(PathBuf::from),
            node_path_executable: executable,
        }
    }

    #[test]
    fn hookup_table() {
        let hooked = env_file::install(
            Some("CLAUDE_USE_WAYLAND=1\n"),
            &[(BACKEND_KEY, "bwrap"), (NODE_PATH_KEY, OWN)],
        )
        .unwrap();
        let cases: [(&str, ClientFacts, Status, &str); 8] = [
            (
                "installed",
                facts(Some(&hooked), Some(OWN), true),
                Status::Pass,
                "hooked up: /home/u/.config/claude-desktop-debian/environment sets COWORK_VM_BACKEND=bwrap and COWORK_NODE_PATH=/usr/bin/cowork-vm-service (this binary)",
            ),
            (
                "set by hand, through a symlink",
                facts(
                    Some("COWORK_VM_BACKEND=bwrap\nCOWORK_NODE_PATH=/usr/local/bin/cvs\n"),
                    Some(OWN),
                    true,
                ),
                Status::Pass,
                "COWORK_NODE_PATH=/usr/local/bin/cvs (this binary)",
            ),
            (
                "no file",
                facts(None, None, false),
                Status::Warn,
                "not hooked up: /home/u/.config/claude-desktop-debian/environment does not exist",
            ),
            (
                "other backend",
                facts(Some("COWORK_VM_BACKEND=kvm\n"), None, false),
                Status::Warn,
                "COWORK_VM_BACKEND is \"kvm\"",
            ),
            (
                "no backend",
                facts(Some("CLAUDE_USE_WAYLAND=1\n"), None, false),
                Status::Warn,
                "COWORK_VM_BACKEND is not set",
            ),
            (
                "node (the reference)",
                facts(
                    Some("COWORK_VM_BACKEND=bwrap\nCOWORK_NODE_PATH=/usr/bin/node\n"),
                    Some("/usr/bin/node"),
                    true,
                ),
                Status::Warn,
                "is not this binary (the reference daemon runs with it)",
            ),
            (
                "an old copy of ours",
                facts(
                    Some("COWORK_VM_BACKEND=bwrap\nCOWORK_NODE_PATH=/opt/old/cowork-vm-service\n"),
                    Some("/opt/old/cowork-vm-service"),
                    true,
                ),
                Status::Warn,
                "is another cowork-vm-service binary than this one",
            ),
            (
                "a binary that is gone",
                facts(
                    Some("COWORK_VM_BACKEND=bwrap\nCOWORK_NODE_PATH=/gone/cowork-vm-service\n"),
                    None,
                    false,
                ),
                Status::Fail,
                "is missing or not executable",
            ),
        ];
        for (case, client, status, text) in cases {
            let check = hookup_check(&client, Some(Path::new(OWN)));
            assert_eq!(check.status, status, "{case}: {check:?}");
            assert!(check.title.contains(text), "{case}: {}", check.title);
        }
        let unreadable = ClientFacts {
            text: Some(Err("Permission denied".into())),
            ..facts(None, None, false)
        };
        assert_eq!(
            hookup_check(&unreadable, Some(Path::new(OWN))).status,
            Status::Fail
        );
    }
}
