//! The real Claude Code CLI, driven through the daemon the way Cowork does,
//! against a small mock of the Anthropic Messages API on the host. The
//! mock sits on 127.0.0.2 (not in the sandbox's NO_PROXY), so the CLI can
//! only reach it through the sandbox's proxy, and only when the spawn's
//! `allowedDomains` lists it.
//!
//! The CLI comes from npm (`@anthropic-ai/claude-code`, a self-contained
//! native binary); `scripts/test.sh` installs it into a cache and names it
//! in `COWORK_TEST_CLAUDE`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::harness::{Daemon, Options, collect, require_unprivileged_user};

/// The CLI binary: `COWORK_TEST_CLAUDE`, else the cache scripts/test.sh
/// fills. Missing is a failure, not a skip.
fn claude_binary() -> PathBuf {
    let path = std::env::var_os("COWORK_TEST_CLAUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("cowork-vm-service-tests/claude-code/bin/claude")
        });
    std::fs::canonicalize(&path).unwrap_or_else(|_| {
        panic!(
            "the Claude Code CLI is not at {} (scripts/test.sh installs it: npm install -g \
             --prefix <cache>/claude-code @anthropic-ai/claude-code; or set COWORK_TEST_CLAUDE)",
            path.display()
        )
    })
}

/// One request the mock saw.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    host: String,
    body: String,
}

/// A mock of the Messages API: the first turn asks for the Bash tool to
/// write `proof` into the project, the next one (carrying the tool result)
/// finishes with text.
fn mock_api(command: String) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.2:0").expect("127.0.0.2 is a loopback address");
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (log, command) = (log.clone(), command.clone());
            std::thread::spawn(move || serve(conn, &log, &command));
        }
    });
    (addr, seen)
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Seen>>, command: &str) {
    conn.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut host = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "host" => host = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        log.lock().unwrap().push(Seen {
            request_line: request_line.trim_end().to_string(),
            host,
            body: body.clone(),
        });
        let response = if request_line.starts_with("POST /v1/messages") {
            let events = if body.contains("tool_result") || !body.contains("\"Bash\"") {
                text_turn("The proof file is written.")
            } else {
                tool_turn(command)
            };
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{events}",
                events.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
        };
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

fn message_start() -> Value {
    json!({"type": "message_start", "message": {
        "id": "msg_mock", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 1}}})
}

fn tool_turn(command: &str) -> String {
    let input = json!({"command": command, "description": "Write the proof file"}).to_string();
    sse(&[
        message_start(),
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": "Bash", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "input_json_delta", "partial_json": input}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"output_tokens": 30}}),
        json!({"type": "message_stop"}),
    ])
}

fn text_turn(text: &str) -> String {
    sse(&[
        message_start(),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 8}}),
        json!({"type": "message_stop"}),
    ])
}

/// A daemon with the CLI installed as Cowork's SDK, a project and a
/// `.claude` folder; returns the daemon and the SDK version directory.
fn cowork_daemon() -> Daemon {
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        ..Default::default()
    });
    let sdk_dir = d.home_dir(".config/Claude/claude-code-vm/2.1.197");
    let binary = claude_binary();
    let target = sdk_dir.join("claude");
    // A hard link where possible (the binary is about 245 MB).
    if std::fs::hard_link(&binary, &target).is_err() {
        std::fs::copy(&binary, &target).unwrap();
    }
    d.home_dir("proj");
    d.home_dir(".claude");
    d
}

/// Runs `claude -p` in session `s` as Cowork does; returns what it printed.
fn run_claude(d: &Daemon, api: SocketAddr, allowed: Value) -> super::harness::Outcome {
    let mut events = d.connect();
    events.subscribe();
    d.call("startVM", json!({}));
    d.call(
        "installSdk",
        json!({"sdkSubpath": d.subpath(".config/Claude/claude-code-vm"), "version": "2.1.197"}),
    );
    d.call(
        "spawn",
        json!({
            "id": "claude-1",
            "name": "s",
            "command": "/usr/local/bin/claude",
            "args": ["-p", "Write the proof file.", "--output-format", "stream-json",
                     "--verbose", "--allowedTools", "Bash"],
            "cwd": "/sessions/s/mnt/proj",
            "env": {
                "ANTHROPIC_BASE_URL": format!("http://{api}"),
                "ANTHROPIC_API_KEY": "sk-ant-test-key",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_AUTOUPDATER": "1",
                "DISABLE_TELEMETRY": "1",
                "DISABLE_ERROR_REPORTING": "1",
                "CLAUDE_CONFIG_DIR": "/sessions/s/mnt/.claude",
            },
            "additionalMounts": {
                "proj": {"path": d.subpath("proj"), "mode": "rw"},
                ".claude": {"path": d.subpath(".claude"), "mode": "rw"},
            },
            "allowedDomains": allowed,
            "isResume": false,
        }),
    );
    d.call(
        "writeStdin",
        json!({"id": "claude-1", "data": "", "eof": true}),
    );
    collect(&mut events, "claude-1", Duration::from_secs(120))
}

#[test]
fn claude_code_reaches_the_allowed_api_through_the_proxy_and_runs_bash_in_the_sandbox() {
    let d = cowork_daemon();
    let command = "echo proof-from-the-sandbox > /sessions/s/mnt/proj/proof.txt".to_string();
    let (api, seen) = mock_api(command);
    let out = run_claude(&d, api, json!([api.ip().to_string()]));
    let proof = d.home.join("proj/proof.txt");
    assert_eq!(
        std::fs::read_to_string(&proof).ok().as_deref(),
        Some("proof-from-the-sandbox\n"),
        "the Bash tool ran inside the sandbox and wrote into the mounted host folder: {out:?}"
    );
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(out.stdout.contains("\"type\":\"result\""), "{out:?}");
    let seen = seen.lock().unwrap().clone();
    let posts: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.request_line.starts_with("POST /v1/messages"))
        .collect();
    assert!(posts.len() >= 2, "two turns: {seen:?}");
    assert!(
        posts
            .iter()
            .any(|p| p.body.contains("tool_result") && p.body.contains("toolu_mock_1")),
        "the second turn carries the tool's result: {seen:?}"
    );
    // The sandbox has no route of its own: reaching the mock at all means
    // the request went through the proxy, which dialled it from the host.
    assert!(posts.iter().all(|p| p.host == api.to_string()), "{seen:?}");
}

#[test]
fn claude_code_cannot_reach_an_api_left_out_of_allowed_domains() {
    let d = cowork_daemon();
    let (api, seen) = mock_api("echo leaked > /sessions/s/mnt/proj/proof.txt".to_string());
    let mut events = d.connect();
    events.subscribe();
    // Runs in the background: the CLI retries an unreachable API for
    // minutes, so the test stops it once the proxy's denial is logged.
    let handle = {
        let socket = d.socket.clone();
        let user = d.user.clone();
        let home = d.home.clone();
        let subpath = |rel: &str| {
            home.join(rel)
                .to_string_lossy()
                .trim_start_matches('/')
                .to_string()
        };
        let (sdk, proj, claude_dir) = (
            subpath(".config/Claude/claude-code-vm"),
            subpath("proj"),
            subpath(".claude"),
        );
        std::thread::spawn(move || {
            let mut c = super::harness::Client::connect_as(&socket, user.as_ref());
            c.call("startVM", json!({}));
            c.call(
                "installSdk",
                json!({"sdkSubpath": sdk, "version": "2.1.197"}),
            );
            c.call(
                "spawn",
                json!({
                    "id": "claude-2", "name": "s", "command": "claude",
                    "args": ["-p", "Write the proof file.", "--output-format", "stream-json",
                             "--verbose", "--allowedTools", "Bash"],
                    "cwd": "/sessions/s/mnt/proj",
                    "env": {
                        "ANTHROPIC_BASE_URL": format!("http://{api}"),
                        "ANTHROPIC_API_KEY": "sk-ant-test-key",
                        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                        "DISABLE_AUTOUPDATER": "1",
                        "CLAUDE_CONFIG_DIR": "/sessions/s/mnt/.claude",
                    },
                    "additionalMounts": {
                        "proj": {"path": proj, "mode": "rw"},
                        ".claude": {"path": claude_dir, "mode": "rw"},
                    },
                    "allowedDomains": ["api.anthropic.com"],
                }),
            );
            c.call(
                "writeStdin",
                json!({"id": "claude-2", "data": "", "eof": true}),
            );
        })
    };
    handle.join().unwrap();
    super::harness::eventually(
        Duration::from_secs(60),
        "the proxy refuses the mock",
        || {
            d.log().contains(&format!(
                "network egress to {}:{} blocked",
                api.ip(),
                api.port()
            ))
        },
    );
    d.call("kill", json!({"id": "claude-2", "signal": "SIGKILL"}));
    let out = collect(&mut events, "claude-2", Duration::from_secs(20));
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| !s.request_line.starts_with("POST")),
        "the API was never reached: {:?}",
        seen.lock().unwrap()
    );
    assert!(!d.home.join("proj/proof.txt").exists(), "{out:?}");
}
