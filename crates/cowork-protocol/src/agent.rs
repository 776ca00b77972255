//! Messages between the daemon and its agent (pid 1 of a bubblewrap session
//! sandbox, or init of a VM), over the same length-prefixed framing.
//!
//! A sandbox's agent (bwrap) first sends one byte, [`LISTENERS_MARKER`],
//! with its proxy listeners attached. Then messages; their shapes follow
//! the guest convention of the reference's VM protocol so one agent serves
//! both isolating backends:
//!
//! * daemon -> agent: `{type:"request", id, method, params}` (`stdin`
//!   included: `params:{id, data, eof?}`), and `{type:"notification", ...}`
//!   for messages that need no answer (none yet; unknown ones are ignored);
//! * agent -> daemon: `{type:"response", id, result | error}`, the process
//!   events `{type:"stdout"|"stderr", id, data}`, `{type:"exit", id, code,
//!   signal}` (guest exits use `code`; the daemon translates to `exitCode`),
//!   `{type:"error", id, message}`, and `{type:"ready", ...}` once at start.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::frame::{self, FrameError};

/// The first byte a sandbox's agent sends, carrying (as `SCM_RIGHTS`) its
/// two listening proxy sockets: `127.0.0.1:3128` (HTTP) then
/// `127.0.0.1:1080` (SOCKS5). Framed messages follow it.
pub const LISTENERS_MARKER: u8 = b'L';

/// Methods the agent answers.
pub mod method {
    /// Start a process: params [`super::SpawnRequest`], result `{pid}`.
    pub const SPAWN: &str = "spawn";
    /// Signal a process group: params [`super::KillRequest`], result `{}`.
    pub const KILL: &str = "kill";
    /// Report activity: result [`super::AgentStatus`].
    pub const STATUS: &str = "status";
    /// Write to (or close) a process's stdin: params [`super::StdinWrite`],
    /// result `{}` once the data is in the process's pipe (so the daemon's
    /// `writeStdin` waits for a process that does not read, as a pipe
    /// write would, and nothing piles up in the agent).
    pub const STDIN: &str = "stdin";
    /// The first frame on a VM's agent port, a notification: params
    /// [`super::GuestSetup`]. The guest's init reads it before anything
    /// else (it says what to mount and who processes run as).
    pub const GUEST_SETUP: &str = "guestSetup";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ToAgent {
    Request {
        id: u64,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum FromAgent {
    Ready {
        pid: u32,
        version: String,
        /// What the agent confined itself with (a
        /// `cowork_policy::confine::ConfineReport`), when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confinement: Option<Value>,
    },
    Response {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Stdout {
        id: String,
        data: String,
    },
    Stderr {
        id: String,
        data: String,
    },
    Exit {
        id: String,
        code: Option<i32>,
        signal: Option<String>,
    },
    Error {
        id: String,
        message: String,
    },
}

impl FromAgent {
    /// The complete frame; output messages take the fast path
    /// ([`frame::encode_output`]), the rest go through serde.
    pub fn to_frame(&self) -> Result<Bytes, FrameError> {
        match self {
            FromAgent::Stdout { id, data } => frame::encode_output("stdout", id, data),
            FromAgent::Stderr { id, data } => frame::encode_output("stderr", id, data),
            other => frame::encode(other),
        }
    }
}

/// Everything the agent needs to start one process; the daemon has already
/// applied the env policy and chosen the working directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub id: String,
    /// Absolute path, or a bare name looked up in `env["PATH"]`.
    pub command: String,
    pub args: Vec<String>,
    /// The complete environment of the process (nothing is inherited).
    pub env: BTreeMap<String, String>,
    pub cwd: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillRequest {
    pub id: String,
    pub signal: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StdinWrite {
    pub id: String,
    #[serde(default)]
    pub data: String,
    #[serde(default)]
    pub eof: bool,
}

/// What a VM's init needs to know before its agent serves: the shares to
/// mount, the unprivileged user its processes run as, and the
/// confinement plan (a `cowork_policy::confine::ConfinePlan` as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestSetup {
    pub shares: Vec<GuestShare>,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confine_plan: Option<String>,
    #[serde(default)]
    pub hostname: String,
    /// `$HOME` of the processes: made (empty, theirs) when no share is
    /// mounted there.
    #[serde(default)]
    pub home: String,
    /// Directories to make before the shares are mounted (the session's
    /// `/sessions/<s>/mnt`, the working directory of a spawn without
    /// mounts).
    #[serde(default)]
    pub dirs: Vec<String>,
}

/// One virtiofs share as the guest mounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestShare {
    pub tag: String,
    pub path: String,
    pub read_only: bool,
    /// Paths inside a read-write share to bind onto themselves, in order
    /// (the project files the user's tools run code from, and the folders
    /// leading to them: see `cowork_policy::protect`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protect: Vec<GuestProtect>,
}

/// One bind of a path onto itself inside a share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestProtect {
    /// Relative to the share, plain (no `..`, no root).
    pub rel: String,
    pub read_only: bool,
}

/// What is alive in the sandbox: processes the daemon asked for, and every
/// other process (background jobs re-parented to the agent included).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub tracked: usize,
    pub other_processes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    #[test]
    fn guest_convention_shapes() {
        let req = ToAgent::Request {
            id: 1,
            method: method::KILL.into(),
            params: json!({"id": "p", "signal": 15}),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"type": "request", "id": 1, "method": "kill", "params": {"id": "p", "signal": 15}})
        );
        let exit: FromAgent =
            serde_json::from_value(json!({"type": "exit", "id": "p", "code": 0, "signal": null}))
                .unwrap();
        assert_eq!(
            exit,
            FromAgent::Exit {
                id: "p".into(),
                code: Some(0),
                signal: None
            }
        );
        let failed: FromAgent =
            serde_json::from_value(json!({"type": "response", "id": 4, "error": "nope"})).unwrap();
        assert_eq!(
            failed,
            FromAgent::Response {
                id: 4,
                result: None,
                error: Some("nope".into())
            }
        );
    }
}
