//! The wire protocol: connection modes, ids, concurrency, events, bad input.

use std::time::Duration;

use serde_json::{Value, json};

use super::harness::{Daemon, collect};

#[test]
fn one_shot_request_gets_one_reply_without_id() {
    let d = Daemon::start("host");
    let reply = d.one_shot("isRunning", json!({}));
    assert_eq!(
        reply,
        json!({"success": true, "result": {"running": false}})
    );
}

#[test]
fn one_shot_without_params_key_works() {
    let d = Daemon::start("host");
    let mut c = d.connect();
    c.send(&json!({"method": "getNetworkDrives"}));
    c.shutdown_write();
    assert_eq!(c.recv(), json!({"success": true, "result": {"drives": []}}));
    assert!(c.try_recv().is_none(), "connection closes after the reply");
}

#[test]
fn persistent_pipe_echoes_numeric_string_and_null_ids_verbatim() {
    let d = Daemon::start("host");
    let mut c = d.connect();
    c.send(&json!({"method": "configure", "id": 1, "params": {"userDataName": "x", "sessionOnly": true}}));
    c.send(&json!({"method": "isGuestConnected", "id": "req-abc"}));
    c.send(&json!({"method": "getNetworkDrives", "id": null}));
    c.send(&json!({"method": "isRunning", "id": 2.5}));
    let mut replies: Vec<Value> = (0..4).map(|_| c.recv()).collect();
    replies.sort_by_key(|r| r["id"].to_string());
    let ids: Vec<&Value> = replies.iter().map(|r| &r["id"]).collect();
    assert_eq!(
        ids,
        [&json!("req-abc"), &json!(1), &json!(2.5), &Value::Null]
    );
    assert!(replies.iter().all(|r| r["success"] == true));
}

#[test]
fn a_slow_call_does_not_block_a_poll_on_the_same_pipe() {
    // writeStdin to a process that never reads its stdin blocks once the
    // pipe and the daemon's stdin queue are full: a genuinely slow call.
    let d = Daemon::start("host");
    let mut c = d.connect();
    c.call(
        "spawn",
        json!({"id": "sleeper", "name": "s", "command": "/bin/sleep", "args": ["30"]}),
    );
    let chunk = "x".repeat(256 * 1024);
    for i in 0..80 {
        c.send(&json!({"method": "writeStdin", "id": 1000 + i, "params": {"id": "sleeper", "data": chunk}}));
    }
    c.send(&json!({"method": "isRunning", "id": "poll"}));
    // The poll's reply overtakes the writes stuck behind the full pipe.
    let mut seen_writes = 0;
    loop {
        let reply = c.recv();
        if reply["id"] == "poll" {
            assert_eq!(reply["result"]["running"], false);
            break;
        }
        seen_writes += 1;
    }
    assert!(
        seen_writes < 80,
        "all writes finished before the poll: {seen_writes}"
    );
    c.send(
        &json!({"method": "kill", "id": "kill", "params": {"id": "sleeper", "signal": "SIGKILL"}}),
    );
    // The stuck writes now complete (with an error: stdin is gone), some
    // of them possibly before the kill's own reply.
    let (mut rest, mut killed) = (0, false);
    while rest < 80 - seen_writes || !killed {
        let r = c.recv();
        if r["id"].is_number() {
            rest += 1;
        } else if r["id"] == "kill" {
            killed = true;
        }
    }
}

#[test]
fn every_method_answers_with_the_shapes_the_client_reads() {
    let d = Daemon::start("host");
    d.home_dir("proj");
    d.home_file("proj/a.txt", "hello");
    let mut c = d.connect();
    let proj = d.subpath("proj");
    let ok = |c: &mut super::harness::Client, m: &str, p: Value| c.call(m, p);
    assert_eq!(
        ok(
            &mut c,
            "configure",
            json!({"memoryMB": 4096, "cpuCount": 2})
        ),
        json!({})
    );
    assert_eq!(
        ok(
            &mut c,
            "createVM",
            json!({"bundlePath": "/x", "diskSizeGB": 10})
        ),
        json!({})
    );
    assert_eq!(
        ok(
            &mut c,
            "startVM",
            json!({"bundlePath": "/x", "memoryGB": 4})
        ),
        json!({})
    );
    assert_eq!(ok(&mut c, "isRunning", json!({})), json!({"running": true}));
    assert_eq!(
        ok(&mut c, "isGuestConnected", json!({})),
        json!({"connected": true})
    );
    let mounted = ok(
        &mut c,
        "mountPath",
        json!({"processId": "p1", "subpath": proj, "mountName": "proj", "mode": "rw"}),
    );
    assert_eq!(
        mounted["guestPath"],
        d.home.join("proj").to_string_lossy().as_ref()
    );
    let mut events = d.connect();
    events.subscribe();
    assert_eq!(
        ok(
            &mut c,
            "spawn",
            json!({"id": "p1", "name": "bold-sharp-clarke", "command": "/bin/cat", "args": [],
                   "additionalMounts": {"proj": {"path": proj, "mode": "rw"}}})
        ),
        json!({})
    );
    assert_eq!(
        ok(&mut c, "isProcessRunning", json!({"id": "p1"})),
        json!({"running": true})
    );
    assert_eq!(
        ok(&mut c, "writeStdin", json!({"id": "p1", "data": "ping\n"})),
        json!({})
    );
    let echoed = events.wait_event(Duration::from_secs(10), |e| e["id"] == "p1");
    assert_eq!(
        echoed,
        json!({"type": "stdout", "id": "p1", "data": "ping\n"})
    );
    assert_eq!(
        ok(&mut c, "kill", json!({"id": "p1", "signal": "SIGTERM"})),
        json!({})
    );
    let out = collect(&mut events, "p1", Duration::from_secs(10));
    assert_eq!(out.signal.as_deref(), Some("SIGTERM"));
    assert_eq!(
        ok(&mut c, "isProcessRunning", json!({"id": "p1"}))["running"],
        false
    );
    let read = ok(
        &mut c,
        "readFile",
        json!({"processName": "bold-sharp-clarke", "filePath": "/sessions/bold-sharp-clarke/mnt/proj/a.txt"}),
    );
    assert_eq!(read, json!({"content": "aGVsbG8="}));
    // No SDK binary there: accepted like the reference (step 4 of the
    // client's boot); a spawn of `claude` later says where it was expected.
    assert_eq!(
        ok(
            &mut c,
            "installSdk",
            json!({"sdkSubpath": d.subpath(".config/Claude/claude-code-vm"), "version": "2.1.87"}),
        ),
        json!({})
    );
    assert_eq!(
        ok(&mut c, "addApprovedOauthToken", json!({"token": "t"})),
        json!({})
    );
    assert_eq!(
        ok(&mut c, "setDebugLogging", json!({"enabled": true})),
        json!({})
    );
    assert_eq!(
        ok(
            &mut c,
            "sendGuestResponse",
            json!({"id": 99, "resultJson": "{}"})
        ),
        json!({})
    );
    let info = ok(&mut c, "getSessionsDiskInfo", json!({"lowWaterBytes": 0}));
    assert!(info["totalBytes"].as_u64().unwrap() > 0);
    assert!(info["freeBytes"].as_u64().unwrap() > 0);
    assert_eq!(info["sessions"][0]["name"], "bold-sharp-clarke");
    let pruned = ok(
        &mut c,
        "pruneSessionCaches",
        json!({"onlyIfFreeBytesBelow": 0, "includeSessionTmp": true, "sessionTmpOlderThanSeconds": 0}),
    );
    for key in ["prunedSessions", "skippedSessions"] {
        assert!(pruned[key].is_array(), "{pruned}");
    }
    assert!(pruned["freedBytes"].is_u64() && pruned["errors"].is_object());
    let deleted = ok(
        &mut c,
        "deleteSessionDirs",
        json!({"names": ["bold-sharp-clarke"]}),
    );
    assert_eq!(
        deleted,
        json!({"deleted": ["bold-sharp-clarke"], "errors": {}})
    );
    assert_eq!(
        ok(&mut c, "getNetworkDrives", json!({})),
        json!({"drives": []})
    );
    assert_eq!(ok(&mut c, "stopVM", json!({})), json!({}));
    assert_eq!(
        ok(&mut c, "isRunning", json!({})),
        json!({"running": false})
    );
    let mut sub = d.connect();
    assert_eq!(sub.subscribe(), json!({"success": true, "result": {}}));
}

#[test]
fn unknown_method_is_named_in_the_error() {
    let d = Daemon::start("host");
    let reply = d.connect().request("frobnicate", json!({}));
    assert_eq!(reply["success"], false);
    assert_eq!(reply["error"], "Unknown method: frobnicate");
}

#[test]
fn subscription_acks_first_then_current_state_then_events() {
    let d = Daemon::start("host");
    let mut early = d.connect();
    assert_eq!(early.subscribe(), json!({"success": true, "result": {}}));
    d.call("startVM", json!({"apiProbeURL": "http://127.0.0.1:9/"}));
    let first = early.recv();
    assert_eq!(
        first,
        json!({"type": "networkStatus", "status": "connected"})
    );
    // apiReachability is emitted after startVM (older clients wait for it).
    let reach = early.wait_event(Duration::from_secs(10), |e| e["type"] == "apiReachability");
    assert_eq!(reach["status"], "unreachable");
    // A subscriber arriving after startVM still learns the state.
    let mut late = d.connect();
    assert_eq!(late.subscribe(), json!({"success": true, "result": {}}));
    assert_eq!(
        late.recv(),
        json!({"type": "networkStatus", "status": "connected"})
    );
    assert_eq!(late.recv()["type"], "apiReachability");
}

#[test]
fn events_reach_every_live_subscriber_even_after_one_leaves() {
    let d = Daemon::start("host");
    let mut a = d.connect();
    let mut b = d.connect();
    let gone = {
        let mut g = d.connect();
        g.subscribe();
        g
    };
    a.subscribe();
    b.subscribe();
    drop(gone);
    d.call(
        "spawn",
        json!({"id": "e1", "name": "s", "command": "/bin/echo", "args": ["both"]}),
    );
    for events in [&mut a, &mut b] {
        let out = collect(events, "e1", Duration::from_secs(10));
        assert_eq!((out.stdout.as_str(), out.exit_code), ("both\n", Some(0)));
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[test]
fn bad_frames_get_errors_and_the_connection_keeps_serving() {
    let d = Daemon::start("host");
    let mut c = d.connect();
    let cases: [(&[u8], &str); 4] = [
        (b"", "empty frame"),
        (b"{not json", "invalid JSON"),
        (b"[1,2,3]", "must be a JSON object"),
        (b"\"just a string\"", "must be a JSON object"),
    ];
    for (body, fragment) in cases {
        c.send_raw(&frame(body));
        let reply = c.recv();
        assert_eq!(reply["success"], false, "{reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(fragment),
            "{reply}"
        );
    }
    let typed = [
        json!({"method": "spawn", "id": 7, "params": {"id": 5, "name": "s", "command": "x"}}),
        json!({"method": "spawn", "id": 8, "params": {"name": "s"}}),
        json!({"method": "kill", "id": 9, "params": {"id": ["p"]}}),
        json!({"method": "setDebugLogging", "id": 10, "params": {"enabled": "yes"}}),
        json!({"method": "readFile", "id": 11, "params": []}),
        json!({"method": 42, "id": 12}),
        json!({"method": "spawn", "id": 13, "params": {"id": "p", "name": "../etc", "command": "/bin/true"}}),
        json!({"method": "deleteSessionDirs", "id": 14, "params": {"names": "all"}}),
    ];
    for request in typed {
        c.send(&request);
        let reply = c.recv();
        assert_eq!(reply["id"], request["id"], "{reply}");
        assert_eq!(reply["success"], false, "{request} -> {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.contains("Invalid params") || error.contains("must be"),
            "{request} -> {error}"
        );
    }
    assert_eq!(c.call("isRunning", json!({})), json!({"running": false}));
}

#[test]
fn oversized_frame_closes_only_that_connection() {
    let d = Daemon::start("host");
    let mut bystander = d.connect();
    bystander.subscribe();
    let mut c = d.connect();
    c.send_raw(&(10 * 1024 * 1024 + 1u32).to_be_bytes());
    // The daemon may already have closed the connection (EPIPE).
    let _ = c.try_send_raw(b"{\"method\":\"isRunning\"}");
    assert!(c.try_recv().is_none(), "connection must be closed");
    assert!(d.log().contains("oversized frame"), "{}", d.log());
    // Others keep working, including existing subscribers.
    assert_eq!(d.call("isRunning", json!({})), json!({"running": false}));
    d.call(
        "spawn",
        json!({"id": "after", "name": "s", "command": "/bin/true"}),
    );
    assert_eq!(
        collect(&mut bystander, "after", Duration::from_secs(10)).exit_code,
        Some(0)
    );
}

#[test]
fn a_frame_of_exactly_the_limit_is_read() {
    let d = Daemon::start("host");
    let mut c = d.connect();
    let padding = 10 * 1024 * 1024 - r#"{"method":"isRunning","id":1,"pad":""}"#.len();
    let body = format!(
        r#"{{"method":"isRunning","id":1,"pad":"{}"}}"#,
        "x".repeat(padding)
    );
    assert_eq!(body.len(), 10 * 1024 * 1024);
    c.send_raw(&frame(body.as_bytes()));
    assert_eq!(c.recv()["result"]["running"], false);
}

#[test]
fn frames_split_across_writes_and_coalesced_frames_are_both_handled() {
    let d = Daemon::start("host");
    let mut c = d.connect();
    let one = frame(br#"{"method":"isRunning","id":1}"#);
    for byte in &one {
        c.send_raw(&[*byte]);
    }
    assert_eq!(c.recv()["id"], 1);
    let mut two = frame(br#"{"method":"isRunning","id":2}"#);
    two.extend(frame(br#"{"method":"isRunning","id":3}"#));
    c.send_raw(&two);
    let ids: Vec<Value> = (0..2).map(|_| c.recv()["id"].clone()).collect();
    assert!(ids.contains(&json!(2)) && ids.contains(&json!(3)));
}
