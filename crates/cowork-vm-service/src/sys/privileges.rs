//! `sudo cowork-vm-service ...`: become the user who ran sudo.
//!
//! Nothing the daemon (or `run`) does needs root, and a sandbox must not
//! get host uid 0 (it owns root-only files whatever its capabilities). So
//! when started as root by sudo (`SUDO_UID`, `SUDO_GID`), the process
//! switches to that user right at start, before any thread exists:
//! supplementary groups dropped, gid and uid set (real, effective and
//! saved), and `HOME`, `USER`, `LOGNAME` taken from the user database, so
//! state, config and logs are the user's. Root without sudo (containers,
//! CI) stays root; the sandbox then drops every capability and covers
//! root-only files (see `backend::bwrap::identity`).

use std::ffi::OsString;
use std::path::PathBuf;

use rustix::process::{Gid, Uid};

/// The account sudo was invoked from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokingUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("SUDO_UID={0} names no account in /etc/passwd")]
    UnknownUser(u32),
    #[error("cannot switch to uid {uid}: {source}")]
    Switch { uid: u32, source: rustix::io::Errno },
}

/// The invoking user, when we are root started by sudo: from `SUDO_UID`
/// (and `SUDO_GID`, else the account's own group) and a `passwd` text.
pub fn invoking_user(
    euid: u32,
    sudo_uid: Option<&str>,
    sudo_gid: Option<&str>,
    passwd: &str,
) -> Result<Option<InvokingUser>, PrivilegeError> {
    let number = |v: Option<&str>| v.and_then(|v| v.trim().parse::<u32>().ok());
    let Some(uid) = number(sudo_uid).filter(|u| *u != 0) else {
        return Ok(None);
    };
    if euid != 0 {
        return Ok(None);
    }
    let entry = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 5 && f[2].parse() == Ok(uid)).then(|| (f[0], f[3], f[5]))
    });
    let Some((name, primary_gid, home)) = entry else {
        return Err(PrivilegeError::UnknownUser(uid));
    };
    let gid = number(sudo_gid)
        .or_else(|| primary_gid.parse().ok())
        .unwrap_or(uid);
    Ok(Some(InvokingUser {
        uid,
        gid,
        name: name.to_string(),
        home: PathBuf::from(home),
    }))
}

/// Becomes the sudo user, if any; returns who. Must run before any other
/// thread exists (it changes this thread's credentials, which is the whole
/// process only while it is the only thread) and before anything reads
/// `HOME`.
pub fn become_invoking_user() -> Result<Option<InvokingUser>, PrivilegeError> {
    let var = |k: &str| std::env::var(k).ok();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some(user) = invoking_user(
        rustix::process::geteuid().as_raw(),
        var("SUDO_UID").as_deref(),
        var("SUDO_GID").as_deref(),
        &passwd,
    )?
    else {
        return Ok(None);
    };
    let switch = |source| PrivilegeError::Switch {
        uid: user.uid,
        source,
    };
    let gid = Gid::from_raw(user.gid);
    let uid = Uid::from_raw(user.uid);
    rustix::thread::set_thread_groups(&[]).map_err(switch)?;
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(switch)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(switch)?;
    let set = |k: &str, v: OsString| {
        // SAFETY: called from `main` before any other thread exists, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var(k, v) }
    };
    set("HOME", user.home.clone().into_os_string());
    set("USER", user.name.clone().into());
    set("LOGNAME", user.name.clone().into());
    Ok(Some(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          u:x:1000:1000:U:/home/u:/bin/bash\n\
                          other:x:1001:100::/home/other:/bin/sh\n";

    #[test]
    fn invoking_user_table() {
        let u = |uid, gid, name: &str, home: &str| InvokingUser {
            uid,
            gid,
            name: name.into(),
            home: home.into(),
        };
        let cases = [
            (
                0,
                Some("1000"),
                Some("1000"),
                Some(u(1000, 1000, "u", "/home/u")),
            ),
            (
                0,
                Some("1001"),
                None,
                Some(u(1001, 100, "other", "/home/other")),
            ),
            (
                0,
                Some(" 1000 "),
                Some("27"),
                Some(u(1000, 27, "u", "/home/u")),
            ),
            (1000, Some("1000"), None, None),
            (0, None, None, None),
            (0, Some("0"), None, None),
            (0, Some("x"), None, None),
        ];
        for (euid, sudo_uid, sudo_gid, want) in cases {
            assert_eq!(
                invoking_user(euid, sudo_uid, sudo_gid, PASSWD).unwrap(),
                want,
                "{euid} {sudo_uid:?}"
            );
        }
        assert!(matches!(
            invoking_user(0, Some("4242"), None, PASSWD),
            Err(PrivilegeError::UnknownUser(4242))
        ));
    }
}
