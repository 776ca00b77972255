//! A delegated cgroup v2 subtree from the systemd user manager, the pure
//! half: whether to ask, which unit, with which properties, and what the
//! answer means. The daemon's `sys::systemd_scope` talks D-Bus.
//!
//! A daemon started by the desktop client shares the client's app scope
//! (`…/user@UID.service/app.slice/app-….scope`) with the client, so its
//! own cgroup cannot hold session cgroups (see [`super::cgroup::v2_decision`]).
//! The user manager can move the daemon into a transient scope of its own
//! with `Delegate=yes` (`StartTransientUnit`, the call behind
//! `systemd-run --user --scope`): the scope then belongs to the user, holds
//! only the daemon, and the delegated-subtree path applies unchanged.
//!
//! The manager moves the process by writing `cgroup.procs` as the user, and
//! the kernel allows that only when the user may write the `cgroup.procs`
//! of the common ancestor of both cgroups. Everything below the manager's
//! own cgroup (`user@UID.service`) is the user's; a login session's scope
//! (`user-UID.slice/session-N.scope`, an SSH or console login) is not, so a
//! daemon there is not moved and is told how to start instead.

/// The transient scope's unit name: one per daemon process; `nonce` (a
/// random number) keeps a leftover scope of a reused pid from colliding.
pub fn scope_unit(pid: u32, nonce: u32) -> String {
    format!("cowork-vm-service-{pid}-{nonce:08x}.scope")
}

/// One property of the `StartTransientUnit` call (`a(sv)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeProperty {
    /// `au`
    Pids(Vec<u32>),
    /// `b`
    Bool(bool),
    /// `s`
    Str(String),
}

/// The scope's properties: the daemon's pid, `Delegate=yes` (the subtree
/// is the daemon's to manage: session cgroups, their limits), a
/// description for `systemctl --user status`, and collection when it ends
/// even after a failure (a failed scope would otherwise stay listed).
/// No `Slice`: the manager's default (`app.slice`), beside the client.
pub fn scope_properties(pid: u32) -> Vec<(&'static str, ScopeProperty)> {
    vec![
        (
            "Description",
            ScopeProperty::Str(format!(
                "Cowork sandbox sessions of cowork-vm-service (pid {pid})"
            )),
        ),
        ("PIDs", ScopeProperty::Pids(vec![pid])),
        ("Delegate", ScopeProperty::Bool(true)),
        (
            "CollectMode",
            ScopeProperty::Str("inactive-or-failed".to_string()),
        ),
    ]
}

/// Whether the user manager can move a process in cgroup `own` (the v2
/// path of `/proc/self/cgroup`) when the manager's own cgroup is `manager`
/// (its `ControlGroup` property).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeDecision {
    Ask,
    /// No, and what to do instead.
    Refuse(String),
}

pub fn scope_decision(own: &str, manager: &str) -> ScopeDecision {
    let manager = manager.trim_end_matches('/');
    let below = !manager.is_empty()
        && own
            .strip_prefix(manager)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1);
    if below {
        ScopeDecision::Ask
    } else {
        ScopeDecision::Refuse(format!(
            "the daemon's cgroup {own} is outside the systemd user manager's {} (a login \
             session's scope, say), so the manager cannot move it into a delegated scope; \
             start the daemon with `systemd-run --user -p Delegate=yes \
             --unit=cowork-vm-service /usr/bin/cowork-vm-service`",
            if manager.is_empty() { "/" } else { manager }
        ))
    }
}

/// What a `JobRemoved` result (`done`, `failed`, `timeout`, …) means for
/// the scope job.
pub fn job_outcome(unit: &str, result: &str) -> Result<(), String> {
    match result {
        "done" => Ok(()),
        other => Err(format!(
            "the systemd user manager's job starting {unit} ended with result {other:?} \
             (see `journalctl --user -u {unit}`)"
        )),
    }
}

/// The socket files the session bus may be at: `DBUS_SESSION_BUS_ADDRESS`
/// (`;`-separated addresses), else `$XDG_RUNTIME_DIR/bus`, else
/// `/run/user/<uid>/bus` (where D-Bus clients look). `None` when an
/// address is of another kind (`unix:abstract=`, `tcp:`, …): then only
/// connecting tells. Lets the daemon skip the attempt where there is
/// plainly no bus (no socket file), as on a machine without a desktop.
pub fn bus_socket_paths(
    address: Option<&str>,
    runtime_dir: Option<&str>,
    uid: u32,
) -> Option<Vec<std::path::PathBuf>> {
    let Some(address) = address.filter(|a| !a.trim().is_empty()) else {
        let dir = runtime_dir
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("/run/user/{uid}"));
        return Some(vec![std::path::Path::new(&dir).join("bus")]);
    };
    address
        .split(';')
        .filter(|a| !a.is_empty())
        .map(|a| {
            let params = a.strip_prefix("unix:")?;
            let mut path = None;
            for kv in params.split(',') {
                match kv.split_once('=') {
                    Some(("path", p)) => path = Some(unescape(p)?),
                    Some(("guid", _)) => {}
                    _ => return None,
                }
            }
            path.map(std::path::PathBuf::from)
        })
        .collect()
}

/// D-Bus address values escape bytes as `%xx`.
fn unescape(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_socket_paths_table() {
        use std::path::PathBuf;
        let p = |s: &str| Some(vec![PathBuf::from(s)]);
        let table: &[(Option<&str>, Option<&str>, Option<Vec<PathBuf>>)] = &[
            (
                Some("unix:path=/run/user/1000/bus"),
                None,
                p("/run/user/1000/bus"),
            ),
            (
                Some("unix:path=/run/user/1000/bus,guid=0123abcd"),
                Some("/ignored"),
                p("/run/user/1000/bus"),
            ),
            (Some("unix:path=/tmp/a%20b"), None, p("/tmp/a b")),
            (
                Some("unix:path=/a;unix:path=/b"),
                None,
                Some(vec![PathBuf::from("/a"), PathBuf::from("/b")]),
            ),
            // Kinds only connecting can tell about.
            (Some("unix:abstract=/tmp/dbus-x,guid=1"), None, None),
            (Some("unix:path=/a;tcp:host=localhost,port=1"), None, None),
            (Some("unix:runtime=yes"), None, None),
            (Some("unix:path=/a%zz"), None, None),
            // Unset or empty: where clients look by default.
            (None, Some("/run/user/1000"), p("/run/user/1000/bus")),
            (Some(""), Some("/x"), p("/x/bus")),
            (None, None, p("/run/user/1000/bus")),
            (None, Some(""), p("/run/user/1000/bus")),
        ];
        for (address, runtime, want) in table {
            assert_eq!(
                &bus_socket_paths(*address, *runtime, 1000),
                want,
                "{address:?} {runtime:?}"
            );
        }
    }

    #[test]
    fn scope_properties_delegate_and_hold_only_the_daemon() {
        let props = scope_properties(4242);
        assert_eq!(
            scope_unit(4242, 0xbeef),
            "cowork-vm-service-4242-0000beef.scope"
        );
        let get = |name: &str| {
            props
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("PIDs"), Some(ScopeProperty::Pids(vec![4242])));
        assert_eq!(get("Delegate"), Some(ScopeProperty::Bool(true)));
        assert_eq!(
            get("CollectMode"),
            Some(ScopeProperty::Str("inactive-or-failed".into()))
        );
        assert!(matches!(get("Description"), Some(ScopeProperty::Str(d)) if d.contains("4242")));
        assert_eq!(get("Slice"), None, "the manager's default slice");
        let mut names: Vec<_> = props.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), props.len(), "no property twice");
    }

    #[test]
    fn scope_decision_table() {
        let m = "/user.slice/user-1000.slice/user@1000.service";
        let table: &[(&str, &str, bool)] = &[
            // A desktop app's scope, where the client runs.
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-claude.scope",
                m,
                true,
            ),
            // A terminal inside the user manager's tree.
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/vte-spawn-1.scope",
                m,
                true,
            ),
            // The manager's trailing slash does not matter.
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope",
                "/user.slice/user-1000.slice/user@1000.service/",
                true,
            ),
            // An SSH or console login: root's, not the user's.
            ("/user.slice/user-1000.slice/session-3.scope", m, false),
            // Another user's manager whose name is a prefix of ours.
            (
                "/user.slice/user-1000.slice/user@1000.service2/app.slice/x.scope",
                m,
                false,
            ),
            // The manager's own cgroup itself is not below it.
            (m, m, false),
            // The root cgroup, a container, a system service.
            ("/", m, false),
            ("/system.slice/foo.service", m, false),
            // A manager at the root (a container's user manager) has no
            // cgroup of its own to be below.
            ("/app.slice/x.scope", "/", false),
            ("/app.slice/x.scope", "", false),
        ];
        for (own, manager, ask) in table {
            let got = scope_decision(own, manager);
            assert_eq!(
                matches!(got, ScopeDecision::Ask),
                *ask,
                "own {own} manager {manager}: {got:?}"
            );
            if let ScopeDecision::Refuse(why) = got {
                assert!(
                    why.contains(own) && why.contains("systemd-run --user"),
                    "{why}"
                );
            }
        }
    }

    #[test]
    fn job_outcome_table() {
        assert_eq!(job_outcome("u.scope", "done"), Ok(()));
        for bad in ["failed", "timeout", "canceled", "dependency", "skipped", ""] {
            let e = job_outcome("u.scope", bad).unwrap_err();
            assert!(
                e.contains("u.scope") && e.contains("journalctl --user"),
                "{e}"
            );
        }
    }
}
