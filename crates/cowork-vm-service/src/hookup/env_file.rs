//! claude-desktop-debian's launcher environment file, read and edited as
//! text (pure: no I/O here).
//!
//! `${XDG_CONFIG_HOME:-~/.config}/claude-desktop-debian/environment` holds
//! `KEY=value` lines that the launcher (and its `--doctor`) export before
//! starting the client. Read the way the launcher reads it: blank lines and
//! lines whose first non-blank character is `#` are skipped, the key is
//! what precedes the first `=` with all blanks removed, the value is the
//! rest with blanks trimmed and one leading and one trailing quote (`"` or
//! `'`) stripped; the file is never executed. A variable is only exported
//! while it is still unset or empty, so the first non-empty value of a key
//! wins.
//!
//! [`install`] appends one marked block with our settings and turns each
//! earlier line that assigns one of the same keys into a comment with a
//! marker ([`SAVED_PREFIX`]); [`uninstall`] removes the block and brings
//! those lines back, so the user's own values return exactly as they were.
//! Every other line and comment is kept byte for byte.

use std::fmt::Write as _;

/// Selects the backend; the 3.x client patch activates only for `bwrap`.
pub const BACKEND_KEY: &str = "COWORK_VM_BACKEND";
/// The program the 3.x client runs as `$COWORK_NODE_PATH <script> -socket P`.
pub const NODE_PATH_KEY: &str = "COWORK_NODE_PATH";

/// First line of the block [`install`] writes.
pub const BEGIN_MARKER: &str = "# >>> cowork-vm-service install-client >>>";
/// Last line of that block.
pub const END_MARKER: &str = "# <<< cowork-vm-service install-client <<<";
/// Put in front of a user's line that the block overrides.
pub const SAVED_PREFIX: &str = "#cowork-vm-service-saved# ";
/// In the block when the file did not exist before [`install`].
const CREATED_NOTE: &str =
    "# (install-client created this file; uninstall-client deletes it if nothing else is left)";
const BLOCK_HELP: [&str; 2] = [
    "# Claude Desktop runs cowork-vm-service as its Cowork VM service. Undo with",
    "# `cowork-vm-service uninstall-client` (lines marked #cowork-vm-service-saved# come back).",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("{key} cannot be written to the environment file: its value contains a line break")]
    LineBreak { key: String },
    #[error(
        "line {line}: the `{BEGIN_MARKER}` block has no `{END_MARKER}` line; fix the file by hand"
    )]
    UnclosedBlock { line: usize },
}

/// `(key, value)` when `line` is an assignment the launcher reads.
pub fn assignment(line: &str) -> Option<(String, String)> {
    let blank = |c: char| c.is_ascii_whitespace();
    let rest = line.trim_start_matches(blank);
    if rest.is_empty() || rest.starts_with('#') {
        return None;
    }
    let (key, value) = line.split_once('=')?;
    let key: String = key.chars().filter(|c| !blank(*c)).collect();
    let value = value.trim_matches(blank);
    let value = value.strip_prefix(['"', '\'']).unwrap_or(value);
    let value = value.strip_suffix(['"', '\'']).unwrap_or(value);
    Some((key, value.to_string()))
}

/// The value the launcher exports for `key` from `text` (when the
/// variable is not already set in its environment).
pub fn effective(text: &str, key: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for (k, v) in text.lines().filter_map(assignment) {
        if k == key && value.as_deref().is_none_or(str::is_empty) {
            value = Some(v);
        }
    }
    value
}

/// What the file hooks the client up to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientSettings {
    pub backend: Option<String>,
    pub node_path: Option<String>,
    /// The file holds our block.
    pub managed: bool,
}

pub fn settings(text: &str) -> ClientSettings {
    ClientSettings {
        backend: effective(text, BACKEND_KEY),
        node_path: effective(text, NODE_PATH_KEY),
        managed: text.lines().any(|l| l.trim() == BEGIN_MARKER),
    }
}

/// The file's new text with `settings` (key, value) in force. `current`
/// is `None` when the file does not exist. Installing again replaces the
/// block (a moved binary is picked up) and keeps what was saved before.
pub fn install(current: Option<&str>, settings: &[(&str, &str)]) -> Result<String, EditError> {
    for (key, value) in settings {
        if value.contains(['\n', '\r']) {
            return Err(EditError::LineBreak {
                key: (*key).to_string(),
            });
        }
    }
    let (outside, block) = split_block(current.unwrap_or(""))?;
    let created = current.is_none() || block.iter().any(|l| l.trim() == CREATED_NOTE);
    let mut out = String::new();
    for line in outside {
        let overridden =
            assignment(line).is_some_and(|(k, _)| settings.iter().any(|(key, _)| *key == k));
        if overridden {
            out.push_str(SAVED_PREFIX);
        }
        out.push_str(line);
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(BEGIN_MARKER);
    out.push('\n');
    for line in BLOCK_HELP {
        out.push_str(line);
        out.push('\n');
    }
    if created {
        out.push_str(CREATED_NOTE);
        out.push('\n');
    }
    for (key, value) in settings {
        let _ = writeln!(out, "{key}={}", quoted(value));
    }
    out.push_str(END_MARKER);
    out.push('\n');
    Ok(out)
}

/// What [`uninstall`] leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Nothing of ours in the file.
    Untouched,
    /// The file's text as it was before [`install`].
    Text(String),
    /// [`install`] created the file and nothing else is in it: delete it.
    Delete,
}

/// Removes our block and brings back the lines it had saved.
pub fn uninstall(current: &str) -> Result<Restored, EditError> {
    let (outside, block) = split_block(current)?;
    let saved = outside.iter().any(|l| l.starts_with(SAVED_PREFIX));
    if block.is_empty() && !saved {
        return Ok(Restored::Untouched);
    }
    let text: String = outside
        .iter()
        .map(|l| l.strip_prefix(SAVED_PREFIX).unwrap_or(l))
        .collect();
    let created = block.iter().any(|l| l.trim() == CREATED_NOTE);
    if created && text.trim().is_empty() {
        Ok(Restored::Delete)
    } else {
        Ok(Restored::Text(text))
    }
}

/// The lines (with their line ends) outside our blocks, and those inside.
fn split_block(text: &str) -> Result<(Vec<&str>, Vec<&str>), EditError> {
    let mut outside = Vec::new();
    let mut block = Vec::new();
    let mut open_at = None;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim();
        match open_at {
            None if trimmed == BEGIN_MARKER => {
                open_at = Some(n + 1);
                block.push(line);
            }
            None => outside.push(line),
            Some(_) => {
                block.push(line);
                if trimmed == END_MARKER {
                    open_at = None;
                }
            }
        }
    }
    match open_at {
        Some(line) => Err(EditError::UnclosedBlock { line }),
        None => Ok((outside, block)),
    }
}

/// A value as written to the file: quoted when the launcher's trimming or
/// quote stripping would otherwise change it.
fn quoted(value: &str) -> String {
    let edge = |c: char| c.is_ascii_whitespace() || c == '"' || c == '\'';
    if value.is_empty() || value.starts_with(edge) || value.ends_with(edge) {
        format!("\"{value}\"")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    const OURS: [(&str, &str); 2] = [
        (BACKEND_KEY, "bwrap"),
        (NODE_PATH_KEY, "/usr/bin/cowork-vm-service"),
    ];

    fn block(created: bool) -> String {
        let mut b = format!("{BEGIN_MARKER}\n{}\n{}\n", BLOCK_HELP[0], BLOCK_HELP[1]);
        if created {
            b.push_str(CREATED_NOTE);
            b.push('\n');
        }
        b.push_str("COWORK_VM_BACKEND=bwrap\nCOWORK_NODE_PATH=/usr/bin/cowork-vm-service\n");
        b.push_str(END_MARKER);
        b.push('\n');
        b
    }

    #[test]
    fn lines_are_read_like_the_launcher_reads_them() {
        let cases: [(&str, Option<(&str, &str)>); 14] = [
            ("KEY=value", Some(("KEY", "value"))),
            ("  KEY = value  ", Some(("KEY", "value"))),
            ("KEY=\"quoted value\"", Some(("KEY", "quoted value"))),
            ("KEY='single'", Some(("KEY", "single"))),
            // One quote at each end, independently, as the launcher does.
            ("KEY=\"\"x\"\"", Some(("KEY", "\"x\""))),
            ("KEY=\"open", Some(("KEY", "open"))),
            ("KEY=a=b", Some(("KEY", "a=b"))),
            ("KEY=", Some(("KEY", ""))),
            ("KEY=value\r", Some(("KEY", "value"))),
            ("K E Y=v", Some(("KEY", "v"))),
            ("export KEY=v", Some(("exportKEY", "v"))),
            ("# KEY=v", None),
            ("   # KEY=v", None),
            ("no equals sign", None),
        ];
        for (line, want) in cases {
            let got = assignment(line);
            let want = want.map(|(k, v)| (k.to_string(), v.to_string()));
            assert_eq!(got, want, "{line:?}");
        }
        assert_eq!(assignment(""), None);
        assert_eq!(assignment("  \t "), None);
    }

    #[test]
    fn the_first_non_empty_value_wins() {
        let cases: [(&str, Option<&str>); 6] = [
            ("", None),
            ("OTHER=1\n", None),
            ("K=a\nK=b\n", Some("a")),
            ("K=\nK=b\n", Some("b")),
            ("K=\n", Some("")),
            ("#K=a\nK=b", Some("b")),
        ];
        for (text, want) in cases {
            assert_eq!(effective(text, "K").as_deref(), want, "{text:?}");
        }
    }

    /// (case, file before or None, file after install)
    #[test]
    fn install_table() {
        let saved = SAVED_PREFIX;
        let cases: [(&str, Option<String>, String); 7] = [
            ("no file yet", None, block(true)),
            ("empty file", Some(String::new()), block(false)),
            (
                "other lines and comments are kept",
                Some("# mine\nCLAUDE_USE_WAYLAND=1\n\n".into()),
                format!("# mine\nCLAUDE_USE_WAYLAND=1\n\n{}", block(false)),
            ),
            (
                "earlier values are saved as marked comments",
                Some("COWORK_VM_BACKEND=host\n# note\n  COWORK_NODE_PATH = /usr/bin/node\n".into()),
                format!(
                    "{saved}COWORK_VM_BACKEND=host\n# note\n{saved}  COWORK_NODE_PATH = /usr/bin/node\n{}",
                    block(false)
                ),
            ),
            (
                "commented and other-key lines are left alone",
                Some("#COWORK_VM_BACKEND=kvm\nexport COWORK_VM_BACKEND=x\n".into()),
                format!(
                    "#COWORK_VM_BACKEND=kvm\nexport COWORK_VM_BACKEND=x\n{}",
                    block(false)
                ),
            ),
            (
                "no final newline",
                Some("CLAUDE_DISABLE_GPU=1".into()),
                format!("CLAUDE_DISABLE_GPU=1\n{}", block(false)),
            ),
            (
                "CRLF lines keep their ends",
                Some("A=1\r\nCOWORK_VM_BACKEND=host\r\n".into()),
                format!("A=1\r\n{saved}COWORK_VM_BACKEND=host\r\n{}", block(false)),
            ),
        ];
        for (case, before, want) in cases {
            let after = install(before.as_deref(), &OURS).unwrap();
            assert_eq!(after, want, "{case}");
            let s = settings(&after);
            assert_eq!(s.backend.as_deref(), Some("bwrap"), "{case}");
            assert_eq!(
                s.node_path.as_deref(),
                Some("/usr/bin/cowork-vm-service"),
                "{case}"
            );
            assert!(s.managed, "{case}");
            // Installing again changes nothing.
            assert_eq!(install(Some(&after), &OURS).unwrap(), after, "{case}");
        }
    }

    #[test]
    fn uninstall_restores_what_was_there() {
        let originals = [
            "",
            "# mine\nCLAUDE_USE_WAYLAND=1\n\n",
            "COWORK_VM_BACKEND=host\n# note\n  COWORK_NODE_PATH = /usr/bin/node\n",
            "A=1\r\nCOWORK_VM_BACKEND=host\r\n",
            "COWORK_VM_BACKEND=kvm\nCOWORK_VM_BACKEND=host\n",
        ];
        for original in originals {
            let installed = install(Some(original), &OURS).unwrap();
            assert_eq!(
                uninstall(&installed).unwrap(),
                Restored::Text(original.to_string()),
                "{original:?}"
            );
            // A second install (a moved binary) still restores the first state.
            let moved = install(
                Some(&installed),
                &[(BACKEND_KEY, "bwrap"), (NODE_PATH_KEY, "/x")],
            )
            .unwrap();
            assert_eq!(
                uninstall(&moved).unwrap(),
                Restored::Text(original.to_string())
            );
        }
        let created = install(None, &OURS).unwrap();
        assert_eq!(uninstall(&created).unwrap(), Restored::Delete);
        // The user added lines since: the file stays, with them.
        let grown = format!("{created}CLAUDE_DISABLE_GPU=1\n");
        assert_eq!(
            uninstall(&grown).unwrap(),
            Restored::Text("CLAUDE_DISABLE_GPU=1\n".into())
        );
        assert_eq!(
            uninstall("COWORK_VM_BACKEND=host\n").unwrap(),
            Restored::Untouched
        );
        assert_eq!(uninstall("").unwrap(), Restored::Untouched);
    }

    #[test]
    fn values_that_trimming_would_change_are_quoted() {
        let cases = [
            ("/usr/bin/cowork-vm-service", "/usr/bin/cowork-vm-service"),
            (
                "/opt/my tools/cowork-vm-service",
                "/opt/my tools/cowork-vm-service",
            ),
            (" /lead", "\" /lead\""),
            ("trail ", "\"trail \""),
            ("it's'", "\"it's'\""),
            ("", "\"\""),
        ];
        for (value, written) in cases {
            assert_eq!(quoted(value), written);
            let text = install(None, &[(NODE_PATH_KEY, value)]).unwrap();
            assert_eq!(effective(&text, NODE_PATH_KEY).as_deref(), Some(value));
        }
    }

    #[test]
    fn broken_input_is_refused() {
        assert_eq!(
            install(None, &[(NODE_PATH_KEY, "/a\nCLAUDE_X=1")]),
            Err(EditError::LineBreak {
                key: NODE_PATH_KEY.into()
            })
        );
        let unclosed = format!("A=1\n{BEGIN_MARKER}\nCOWORK_VM_BACKEND=bwrap\n");
        assert_eq!(
            uninstall(&unclosed),
            Err(EditError::UnclosedBlock { line: 2 })
        );
        assert!(install(Some(&unclosed), &OURS).is_err());
    }
}
