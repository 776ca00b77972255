//! The messages between the daemon and its agent: `FromAgent` (what the
//! daemon reads from a sandbox or VM, which a compromised sandbox
//! controls) and `ToAgent` (what the agent reads), from arbitrary frame
//! bodies, plus the agent's typed request parameters.
//!
//! Invariants: a parsed message re-encoded with `to_frame` / `frame::encode`
//! parses back to an equal message; the fast output encoder
//! (`frame::encode_output`) agrees with serde on arbitrary id and data
//! text.
#![no_main]

use cowork_protocol::agent::{FromAgent, KillRequest, SpawnRequest, StdinWrite, ToAgent, method};
use cowork_protocol::frame::{self, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn body(frame: &[u8]) -> &[u8] {
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - HEADER_LEN);
    &frame[HEADER_LEN..]
}

/// Equality of messages, with `json_eq` for their free-form JSON parts.
fn from_agent_eq(a: &FromAgent, b: &FromAgent) -> bool {
    let opt = |x: &Option<Value>, y: &Option<Value>| match (x, y) {
        (Some(x), Some(y)) => cowork_fuzz::json_eq(x, y),
        (None, None) => true,
        _ => false,
    };
    match (a, b) {
        (
            FromAgent::Ready {
                pid,
                version,
                confinement,
            },
            FromAgent::Ready {
                pid: p2,
                version: v2,
                confinement: c2,
            },
        ) => pid == p2 && version == v2 && opt(confinement, c2),
        (
            FromAgent::Response { id, result, error },
            FromAgent::Response {
                id: i2,
                result: r2,
                error: e2,
            },
        ) => id == i2 && error == e2 && opt(result, r2),
        _ => a == b,
    }
}

fn check_request_params(method_name: &str, params: &Value) {
    match method_name {
        method::SPAWN => {
            if let Ok(req) = serde_json::from_value::<SpawnRequest>(params.clone()) {
                let text = serde_json::to_vec(&req).expect("encodes");
                let back: SpawnRequest = serde_json::from_slice(&text).expect("parses back");
                assert_eq!(back, req);
            }
        }
        method::KILL => {
            if let Ok(req) = serde_json::from_value::<KillRequest>(params.clone()) {
                let text = serde_json::to_vec(&req).expect("encodes");
                assert_eq!(serde_json::from_slice::<KillRequest>(&text).ok(), Some(req));
            }
        }
        method::STDIN => {
            if let Ok(req) = serde_json::from_value::<StdinWrite>(params.clone()) {
                let text = serde_json::to_vec(&req).expect("encodes");
                assert_eq!(serde_json::from_slice::<StdinWrite>(&text).ok(), Some(req));
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = serde_json::from_slice::<FromAgent>(data) {
        let framed = msg.to_frame().expect("a parsed message encodes");
        let back: FromAgent = serde_json::from_slice(body(&framed)).expect("parses back");
        assert!(from_agent_eq(&msg, &back), "{msg:?} != {back:?}");
        if matches!(msg, FromAgent::Stdout { .. } | FromAgent::Stderr { .. }) {
            // The fast path must be byte for byte what serde writes.
            assert_eq!(framed, frame::encode(&msg).expect("encodes"));
        }
    }
    if let Ok(msg) = serde_json::from_slice::<ToAgent>(data) {
        let framed = frame::encode(&msg).expect("a parsed message encodes");
        let back: ToAgent = serde_json::from_slice(body(&framed)).expect("parses back");
        match (&msg, &back) {
            (
                ToAgent::Request { id, method, params },
                ToAgent::Request {
                    id: i2,
                    method: m2,
                    params: p2,
                },
            ) => {
                assert!(id == i2 && method == m2 && cowork_fuzz::json_eq(params, p2));
                check_request_params(method, params);
            }
            (
                ToAgent::Notification { method, params },
                ToAgent::Notification {
                    method: m2,
                    params: p2,
                },
            ) => assert!(method == m2 && cowork_fuzz::json_eq(params, p2)),
            _ => panic!("{msg:?} became {back:?}"),
        }
    }
    // The fast writer on arbitrary text: the input split at its first NUL
    // (or middle) into an id and output data.
    let text = String::from_utf8_lossy(data);
    let (id, out) = match text.find('\0') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => text.split_at(text.floor_char_boundary(text.len() / 2)),
    };
    let fast = frame::encode_output("stdout", id, out).expect("small output encodes");
    let msg = FromAgent::Stdout {
        id: id.into(),
        data: out.into(),
    };
    assert_eq!(
        fast,
        frame::encode(&msg).expect("encodes"),
        "fast writer differs"
    );
    let back: FromAgent = serde_json::from_slice(body(&fast)).expect("parses back");
    assert_eq!(back, msg);
});
