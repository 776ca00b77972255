//! The daemon's request parser on an arbitrary frame body:
//! `cowork_protocol::rpc::parse_request`, then the typed parameters of the
//! method (`params::parse` with the dispatcher's type for each of the 21
//! methods) and the pure policy applied to a spawn, kill, mountPath or
//! deleteSessionDirs.
//!
//! Invariants: a request's params are an object; a request written back as
//! JSON parses to the same request; an error keeps the `id` of an object
//! body; the typed parse of a known method either succeeds or names the
//! method.
#![no_main]

use cowork_protocol::rpc::parse_request;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(req) => {
            assert!(req.params.is_object());
            let mut obj = Map::new();
            obj.insert("method".into(), Value::String(req.method.clone()));
            obj.insert("params".into(), req.params.clone());
            if let Some(id) = &req.id {
                obj.insert("id".into(), id.clone());
            }
            let text = serde_json::to_vec(&Value::Object(obj)).expect("encodes");
            let again = parse_request(&text).expect("a written request parses");
            assert_eq!(again.method, req.method);
            assert!(cowork_fuzz::json_eq(&again.params, &req.params));
            match (&again.id, &req.id) {
                (Some(a), Some(b)) => assert!(cowork_fuzz::json_eq(a, b)),
                (None, None) => {}
                other => panic!("id changed: {other:?}"),
            }
            let _ = cowork_fuzz::dispatch_params(&req.method, req.params);
        }
        Err(bad) => {
            assert!(!bad.reason.is_empty());
            if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(data) {
                assert_eq!(bad.id.as_ref(), map.get("id"), "{}", bad.reason);
            } else {
                assert!(bad.id.is_none());
            }
        }
    }
});
