//! Typed parameters and results of the 21 methods.
//!
//! Field names follow the desktop client. Unknown fields are ignored (the
//! client adds fields over time); wrong types are errors that name the field.
//! `null` is accepted wherever a field is optional.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every method the daemon answers, in the order of the reference's table.
pub const METHODS: [&str; 21] = [
    "configure",
    "createVM",
    "startVM",
    "stopVM",
    "isRunning",
    "isGuestConnected",
    "spawn",
    "kill",
    "writeStdin",
    "isProcessRunning",
    "mountPath",
    "readFile",
    "installSdk",
    "addApprovedOauthToken",
    "setDebugLogging",
    "sendGuestResponse",
    "getSessionsDiskInfo",
    "deleteSessionDirs",
    "pruneSessionCaches",
    "getNetworkDrives",
    "subscribeEvents",
];

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigureParams {
    #[serde(rename = "memoryMB")]
    pub memory_mb: Option<u64>,
    pub cpu_count: Option<u32>,
    pub user_data_name: Option<String>,
    pub user_data_root: Option<String>,
    pub session_only: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateVmParams {
    pub bundle_path: Option<String>,
    #[serde(rename = "diskSizeGB")]
    pub disk_size_gb: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartVmParams {
    pub bundle_path: Option<String>,
    #[serde(rename = "memoryGB")]
    pub memory_gb: Option<u64>,
    pub cpu_count: Option<u32>,
    #[serde(rename = "apiProbeURL")]
    pub api_probe_url: Option<String>,
}

/// One entry of `spawn.additionalMounts`: a root-relative host path and a
/// mode (`"ro"`, `"rw"`, `"rwd"`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MountSpec {
    pub path: Option<String>,
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpawnParams {
    pub id: String,
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: Option<EnvVars>,
    /// Insertion order matters: the first plain mount is the primary one.
    #[serde(default)]
    pub additional_mounts: Option<Ordered<Option<MountSpec>>>,
    pub is_resume: Option<bool>,
    pub allowed_domains: Option<Vec<String>>,
    pub one_shot: Option<bool>,
    pub mount_skeleton_home: Option<bool>,
    pub oauth_token: Option<String>,
    /// 2.x-era override of the working directory (root-relative subpath).
    pub shared_cwd_path: Option<String>,
}

/// A signal given by name (`"SIGTERM"`, `"TERM"`, any case) or number.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SignalSpec {
    Name(String),
    Number(i32),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct KillParams {
    pub id: String,
    pub signal: Option<SignalSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WriteStdinParams {
    pub id: String,
    pub data: Option<String>,
    /// Extension: close the process's stdin after writing `data`.
    pub eof: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProcessIdParams {
    pub id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPathParams {
    pub process_id: Option<String>,
    #[serde(default)]
    pub subpath: Option<String>,
    pub mount_name: Option<String>,
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadFileParams {
    pub process_name: Option<String>,
    pub file_path: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallSdkParams {
    pub sdk_subpath: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TokenParams {
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SetDebugLoggingParams {
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendGuestResponseParams {
    pub id: Value,
    pub result_json: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionsDiskInfoParams {
    pub low_water_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeleteSessionDirsParams {
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneSessionCachesParams {
    pub only_if_free_bytes_below: Option<u64>,
    pub include_session_tmp: Option<bool>,
    pub session_tmp_older_than_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeEventsParams {
    pub user_data_name: Option<String>,
    pub user_data_root: Option<String>,
}

// ---------------------------------------------------------------- results

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRunning {
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDiskUsage {
    pub name: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionsDiskInfo {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub sessions: Vec<SessionDiskUsage>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeleteSessionDirsResult {
    pub deleted: Vec<String>,
    pub errors: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneSessionCachesResult {
    pub pruned_sessions: Vec<String>,
    pub skipped_sessions: Vec<String>,
    pub freed_bytes: u64,
    pub errors: BTreeMap<String, String>,
}

// ------------------------------------------------------- helper containers

/// A JSON object read into a `Vec` in document order (insertion order is
/// meaningful for `additionalMounts`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for OrderedVisitor<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    // A repeated key keeps its first position, like a JS object.
                    if let Some(slot) = out.iter_mut().find(|(name, _)| *name == k) {
                        slot.1 = v;
                    } else {
                        out.push((k, v));
                    }
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(OrderedVisitor(std::marker::PhantomData))
    }
}

/// The `env` object of a spawn. Values must be strings; numbers and booleans
/// are accepted and stringified (as Node would), `null` drops the key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvVars(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for EnvVars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Ordered::<Value>::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (key, value) in raw.0 {
            let text = match value {
                Value::Null => continue,
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "env value of {key} must be a string, got {}",
                        crate::rpc::kind_of(&other)
                    )));
                }
            };
            out.insert(key, text);
        }
        Ok(EnvVars(out))
    }
}

/// Deserializes `params` for `method`, with an error that names both.
pub fn parse<T: for<'de> Deserialize<'de>>(method: &str, params: Value) -> Result<T, String> {
    serde_json::from_value(params).map_err(|e| format!("Invalid params for {method}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    #[test]
    fn spawn_params_keep_mount_order_and_coerce_env() {
        let p: SpawnParams = parse(
            "spawn",
            json!({
                "id": "p1", "name": "s", "command": "/bin/echo", "args": ["a"],
                "env": {"A": "1", "N": 5, "B": true, "GONE": null},
                "additionalMounts": {
                    "zeta": {"path": "home/u/z", "mode": "rw"},
                    ".claude": {"path": "home/u/.claude"},
                    "alpha": null
                },
                "isResume": false, "oauthToken": "t", "unknownFutureField": [1]
            }),
        )
        .unwrap();
        let names: Vec<_> = p
            .additional_mounts
            .unwrap()
            .0
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["zeta", ".claude", "alpha"]);
        let env = p.env.unwrap().0;
        assert_eq!(env.get("N").map(String::as_str), Some("5"));
        assert_eq!(env.get("B").map(String::as_str), Some("true"));
        assert!(!env.contains_key("GONE"));
    }

    #[test]
    fn wrong_types_name_the_method_and_field() {
        let cases = [
            (
                "spawn",
                json!({"id": 1, "name": "s", "command": "c"}),
                "invalid type",
            ),
            (
                "spawn",
                json!({"name": "s", "command": "c"}),
                "missing field `id`",
            ),
            (
                "spawn",
                json!({"id": "p", "name": "s", "command": "c", "env": {"A": [1]}}),
                "env value of A must be a string",
            ),
            (
                "kill",
                json!({"id": "p", "signal": {}}),
                "Invalid params for kill",
            ),
            ("setDebugLogging", json!({"enabled": "yes"}), "invalid type"),
        ];
        for (method, params, fragment) in cases {
            let err = match method {
                "spawn" => parse::<SpawnParams>(method, params).unwrap_err(),
                "kill" => parse::<KillParams>(method, params).unwrap_err(),
                _ => parse::<SetDebugLoggingParams>(method, params).unwrap_err(),
            };
            assert!(
                err.starts_with(&format!("Invalid params for {method}")),
                "{err}"
            );
            assert!(err.contains(fragment), "{err} lacks {fragment}");
        }
    }

    #[test]
    fn kill_signal_accepts_names_and_numbers() {
        let by_name: KillParams = parse("kill", json!({"id": "p", "signal": "TERM"})).unwrap();
        assert_eq!(by_name.signal, Some(SignalSpec::Name("TERM".into())));
        let by_num: KillParams = parse("kill", json!({"id": "p", "signal": 9})).unwrap();
        assert_eq!(by_num.signal, Some(SignalSpec::Number(9)));
        let none: KillParams = parse("kill", json!({"id": "p", "signal": null})).unwrap();
        assert_eq!(none.signal, None);
    }

    #[test]
    fn results_use_client_field_names() {
        let info = SessionsDiskInfo {
            total_bytes: 10,
            free_bytes: 4,
            sessions: vec![SessionDiskUsage {
                name: "s".into(),
                size_bytes: 3,
            }],
        };
        assert_eq!(
            serde_json::to_value(info).unwrap(),
            json!({"totalBytes": 10, "freeBytes": 4, "sessions": [{"name": "s", "sizeBytes": 3}]})
        );
        assert_eq!(
            serde_json::to_value(ProcessRunning {
                running: false,
                exit_code: Some(3)
            })
            .unwrap(),
            json!({"running": false, "exitCode": 3})
        );
        assert_eq!(
            serde_json::to_value(PruneSessionCachesResult::default()).unwrap(),
            json!({"prunedSessions": [], "skippedSessions": [], "freedBytes": 0, "errors": {}})
        );
    }
}
