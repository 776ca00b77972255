//! Request and response envelopes between the desktop client and the daemon.

use serde::Serialize;
use serde_json::{Map, Value};

/// A parsed request. `id` is kept as the exact JSON value the client sent
/// (numbers stay numbers, strings stay strings, `null` stays `null`) and is
/// `None` only when the key was absent.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    /// Always an object; a missing or `null` `params` becomes `{}`.
    pub params: Value,
}

/// Why a frame is not a usable request. `id` is whatever could be recovered
/// so the error reply can still be matched by the client.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub id: Option<Value>,
    pub reason: String,
}

/// Parses one frame body into a [`Request`].
pub fn parse_request(body: &[u8]) -> Result<Request, BadRequest> {
    if body.is_empty() {
        return Err(BadRequest {
            id: None,
            reason: "empty frame: expected a JSON request object".into(),
        });
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| BadRequest {
        id: None,
        reason: format!("invalid JSON: {e}"),
    })?;
    let Value::Object(mut map) = value else {
        return Err(BadRequest {
            id: None,
            reason: format!("request must be a JSON object, got {}", kind_of(&value)),
        });
    };
    let id = map.remove("id");
    let method = match map.remove("method") {
        Some(Value::String(m)) => m,
        Some(other) => {
            return Err(BadRequest {
                id,
                reason: format!("\"method\" must be a string, got {}", kind_of(&other)),
            });
        }
        None => {
            return Err(BadRequest {
                id,
                reason: "request has no \"method\"".into(),
            });
        }
    };
    let params = match map.remove("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p,
        Some(other) => {
            return Err(BadRequest {
                id,
                reason: format!(
                    "\"params\" of {method} must be an object, got {}",
                    kind_of(&other)
                ),
            });
        }
    };
    Ok(Request { id, method, params })
}

/// A response frame. `result` is present on success, `error` on failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Response {
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl Response {
    pub fn success(id: Option<Value>, result: Value) -> Self {
        Self {
            success: true,
            result: Some(result),
            error: None,
            id,
        }
    }

    pub fn failure(id: Option<Value>, error: impl Into<String>) -> Self {
        Self {
            success: false,
            result: None,
            error: Some(error.into()),
            id,
        }
    }
}

/// A short human name for a JSON value's type, for error messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    #[test]
    fn parse_request_table() {
        struct Case {
            body: &'static str,
            want: Result<(Option<Value>, &'static str, Value), &'static str>,
        }
        let cases = [
            Case {
                body: r#"{"method":"isRunning"}"#,
                want: Ok((None, "isRunning", json!({}))),
            },
            Case {
                body: r#"{"method":"kill","id":7,"params":{"id":"p"}}"#,
                want: Ok((Some(json!(7)), "kill", json!({"id":"p"}))),
            },
            Case {
                body: r#"{"method":"x","id":"abc","params":null}"#,
                want: Ok((Some(json!("abc")), "x", json!({}))),
            },
            Case {
                body: r#"{"method":"x","id":null}"#,
                want: Ok((Some(Value::Null), "x", json!({}))),
            },
            Case {
                body: "",
                want: Err("empty frame"),
            },
            Case {
                body: "{not json",
                want: Err("invalid JSON"),
            },
            Case {
                body: "[1,2]",
                want: Err("must be a JSON object, got an array"),
            },
            Case {
                body: r#"{"id":1}"#,
                want: Err("has no \"method\""),
            },
            Case {
                body: r#"{"method":5}"#,
                want: Err("\"method\" must be a string"),
            },
            Case {
                body: r#"{"method":"spawn","params":[1]}"#,
                want: Err("\"params\" of spawn must be an object"),
            },
        ];
        for case in cases {
            let got = parse_request(case.body.as_bytes());
            match (got, case.want) {
                (Ok(req), Ok((id, method, params))) => {
                    assert_eq!(
                        (req.id, req.method.as_str(), req.params),
                        (id, method, params)
                    );
                }
                (Err(e), Err(fragment)) => assert!(
                    e.reason.contains(fragment),
                    "{:?}: {:?} lacks {fragment:?}",
                    case.body,
                    e.reason
                ),
                (got, want) => panic!("{:?}: got {got:?}, want {want:?}", case.body),
            }
        }
    }

    #[test]
    fn bad_request_keeps_the_id_when_it_could_be_read() {
        let err = parse_request(br#"{"id":"q1","method":3}"#).unwrap_err();
        assert_eq!(err.id, Some(json!("q1")));
    }

    #[test]
    fn response_echoes_id_only_when_present() {
        let with = serde_json::to_value(Response::success(Some(json!(3)), json!({}))).unwrap();
        assert_eq!(with, json!({"success": true, "result": {}, "id": 3}));
        let null_id = serde_json::to_value(Response::failure(Some(Value::Null), "e")).unwrap();
        assert_eq!(null_id, json!({"success": false, "error": "e", "id": null}));
        let without = serde_json::to_value(Response::success(None, json!({"a": 1}))).unwrap();
        assert_eq!(without, json!({"success": true, "result": {"a": 1}}));
    }
}
