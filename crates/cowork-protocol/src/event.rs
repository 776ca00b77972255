//! Events the daemon pushes to subscribed connections.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::frame::{self, FrameError};

/// One event frame, `{"type": ..., ...}`. Field names are the client's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    Stdout {
        id: String,
        data: String,
    },
    Stderr {
        id: String,
        data: String,
    },
    /// `exitCode` is null when the process died of a signal, in which case
    /// `signal` names it (`"SIGTERM"`); both keys are always present.
    Exit {
        id: String,
        #[serde(rename = "exitCode")]
        exit_code: Option<i32>,
        signal: Option<String>,
        #[serde(
            rename = "oomKillCount",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        oom_kill_count: Option<u64>,
    },
    Error {
        id: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fatal: Option<bool>,
    },
    NetworkStatus {
        status: NetworkStatus,
    },
    ApiReachability {
        status: ApiReachability,
    },
    StartupStep {
        step: String,
        status: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkStatus {
    Connected,
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiReachability {
    Unknown,
    Reachable,
    ProbablyUnreachable,
    Unreachable,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Event {
    /// The complete frame; output events take the fast path
    /// ([`frame::encode_output`]), the rest go through serde.
    pub fn to_frame(&self) -> Result<Bytes, FrameError> {
        match self {
            Event::Stdout { id, data } => frame::encode_output("stdout", id, data),
            Event::Stderr { id, data } => frame::encode_output("stderr", id, data),
            other => frame::encode(other),
        }
    }

    pub fn output(stream: Stream, id: String, data: String) -> Self {
        match stream {
            Stream::Stdout => Event::Stdout { id, data },
            Stream::Stderr => Event::Stderr { id, data },
        }
    }

    pub fn exit(id: String, exit_code: Option<i32>, signal: Option<String>) -> Self {
        Event::Exit {
            id,
            exit_code,
            signal,
            oom_kill_count: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    #[test]
    fn events_serialize_with_the_client_field_names() {
        let cases = [
            (
                Event::output(Stream::Stdout, "p".into(), "hi".into()),
                json!({"type": "stdout", "id": "p", "data": "hi"}),
            ),
            (
                Event::exit("p".into(), Some(0), None),
                json!({"type": "exit", "id": "p", "exitCode": 0, "signal": null}),
            ),
            (
                Event::exit("p".into(), None, Some("SIGTERM".into())),
                json!({"type": "exit", "id": "p", "exitCode": null, "signal": "SIGTERM"}),
            ),
            (
                Event::Error {
                    id: "p".into(),
                    message: "m".into(),
                    fatal: None,
                },
                json!({"type": "error", "id": "p", "message": "m"}),
            ),
            (
                Event::NetworkStatus {
                    status: NetworkStatus::Connected,
                },
                json!({"type": "networkStatus", "status": "connected"}),
            ),
            (
                Event::ApiReachability {
                    status: ApiReachability::ProbablyUnreachable,
                },
                json!({"type": "apiReachability", "status": "probably_unreachable"}),
            ),
            (
                Event::StartupStep {
                    step: "start_vm".into(),
                    status: "started".into(),
                },
                json!({"type": "startupStep", "step": "start_vm", "status": "started"}),
            ),
        ];
        for (event, want) in cases {
            assert_eq!(serde_json::to_value(&event).unwrap(), want);
        }
    }
}
