//! Measurements against a running daemon, driven like the desktop client.

use std::collections::VecDeque;
use std::time::Instant;

use std::borrow::Cow;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::daemon::{Client, Daemon};
use crate::stats::ms;

/// One-shot requests: connect, send without id, read the reply, close.
pub fn rpc_one_shot(d: &Daemon, n: usize) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let reply = d.one_shot("isRunning", json!({}))?;
        samples.push(ms(t.elapsed()));
        if reply.get("success") != Some(&Value::Bool(true)) {
            bail!("isRunning failed: {reply}");
        }
    }
    Ok(samples)
}

/// Requests on one connection with `window` in flight; each sample is the
/// time from writing a request to reading its reply.
pub fn rpc_pipelined(d: &Daemon, n: usize, window: usize) -> Result<Vec<f64>> {
    let mut c = d.connect()?;
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut samples = Vec::with_capacity(n);
    let mut sent = 0;
    while samples.len() < n {
        while sent < n && in_flight.len() < window {
            let id = c.next_id();
            in_flight.push_back((id, Instant::now()));
            c.send(&json!({"method": "isRunning", "params": {}, "id": id}))?;
            sent += 1;
        }
        let reply = c.recv()?;
        let Some(id) = reply.get("id").and_then(Value::as_u64) else {
            bail!("reply without id: {reply}");
        };
        let Some(pos) = in_flight.iter().position(|(i, _)| *i == id) else {
            bail!("reply for an unknown id {id}");
        };
        if let Some((_, t)) = in_flight.remove(pos) {
            samples.push(ms(t.elapsed()));
        }
    }
    Ok(samples)
}

fn spawn_request(id: &str, session: &str, command: &str, args: &[&str]) -> Value {
    json!({
        "method": "spawn",
        "id": id,
        "params": {"id": id, "name": session, "command": command, "args": args, "isResume": false},
    })
}

/// The fields of an event the measurements look at, borrowed from the
/// frame: like the desktop client's own parser, the bench should not be
/// the slowest stage of the stdout figure.
#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "exitCode", default)]
    exit_code: Option<i64>,
}

/// Reads events until `id` exits; returns the stdout bytes seen.
fn wait_exit(events: &mut Client, id: &str) -> Result<usize> {
    let mut stdout = 0;
    loop {
        let frame = events.recv_raw()?;
        let e: EventView = serde_json::from_slice(frame)?;
        if e.id.as_deref() != Some(id) {
            continue;
        }
        match e.kind.as_ref() {
            "stdout" => {
                let data = e.data.map_or("\"\"", RawValue::get);
                stdout += json_string_len(data)
                    .with_context(|| format!("stdout data is not a JSON string: {data:.80}"))?;
            }
            "exit" => {
                if e.exit_code != Some(0) {
                    bail!("{id} failed: {}", String::from_utf8_lossy(frame));
                }
                return Ok(stdout);
            }
            _ => {}
        }
    }
}

/// The UTF-8 length of the string a JSON string literal (quotes included)
/// stands for, without building it.
fn json_string_len(literal: &str) -> Option<usize> {
    let body = literal.strip_prefix('"')?.strip_suffix('"')?.as_bytes();
    let mut len = 0;
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'\\' {
            len += 1;
            i += 1;
            continue;
        }
        match body.get(i + 1)? {
            b'u' => {
                let hex = std::str::from_utf8(body.get(i + 2..i + 6)?).ok()?;
                let unit = u32::from_str_radix(hex, 16).ok()?;
                i += 6;
                len += match unit {
                    // A high surrogate: its low half follows as another \u.
                    0xd800..=0xdbff => {
                        i += 6;
                        4
                    }
                    0..=0x7f => 1,
                    0x80..=0x7ff => 2,
                    _ => 3,
                };
            }
            _ => {
                len += 1;
                i += 2;
            }
        }
    }
    Some(len)
}

/// `spawn` -> `exit` event for `/usr/bin/true`, `n` times, in the session
/// `session(i)`; `between` runs after each sample, outside the timing.
pub fn spawn_exit(
    d: &Daemon,
    tag: &str,
    n: usize,
    session: impl Fn(usize) -> String,
    mut between: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    let mut events = d.connect()?;
    events.subscribe()?;
    let mut requests = d.connect()?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let frame = Client::frame(&spawn_request(&id, &session(i), "/usr/bin/true", &[]))?;
        let t = Instant::now();
        requests.send_raw(&frame)?;
        wait_exit(&mut events, &id)?;
        samples.push(ms(t.elapsed()));
        let reply = requests.recv()?;
        if reply.get("success") != Some(&Value::Bool(true)) {
            bail!("spawn failed: {reply}");
        }
        between()?;
    }
    Ok(samples)
}

/// The shell pipeline that writes `bytes` of text (also the raw-pipe limit).
pub fn producer(bytes: u64) -> String {
    format!("yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU | head -c {bytes}")
}

/// MB/s of stdout delivered as events for one process writing `bytes`.
pub fn stdout_throughput(d: &Daemon, bytes: u64) -> Result<f64> {
    let mut events = d.connect()?;
    events.subscribe()?;
    let mut requests = d.connect()?;
    let script = producer(bytes);
    let frame = Client::frame(&spawn_request("tput", "tput", "/bin/sh", &["-c", &script]))?;
    let t = Instant::now();
    requests.send_raw(&frame)?;
    let got = wait_exit(&mut events, "tput")?;
    let secs = t.elapsed().as_secs_f64();
    if got as u64 != bytes {
        bail!("stdout lost data: {got} of {bytes} bytes delivered");
    }
    Ok(bytes as f64 / 1e6 / secs)
}

/// Wall time from sending `n` spawns at once until every exit event.
pub fn concurrent_spawns(d: &Daemon, n: usize) -> Result<f64> {
    let mut events = d.connect()?;
    events.subscribe()?;
    let mut requests = d.connect()?;
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend(Client::frame(&spawn_request(
            &format!("conc-{i}"),
            "conc",
            "/usr/bin/true",
            &[],
        ))?);
    }
    let t = Instant::now();
    requests.send_raw(&burst)?;
    let mut exited = 0;
    while exited < n {
        let e = events.recv()?;
        if e.get("type").and_then(Value::as_str) == Some("exit") {
            if e.get("exitCode") != Some(&json!(0)) {
                bail!("concurrent spawn failed: {e}");
            }
            exited += 1;
        }
    }
    let wall = ms(t.elapsed());
    for _ in 0..n {
        requests.recv()?;
    }
    Ok(wall)
}

#[cfg(test)]
mod tests {
    use super::json_string_len;

    #[test]
    fn json_string_len_matches_the_decoded_string() {
        for s in [
            "",
            "plain",
            "line\nnext\ttab \"q\" back\\slash",
            "\u{1}\u{1f}",
            "é€😀",
            "\u{2028}",
        ] {
            let literal = serde_json::to_string(s).unwrap();
            assert_eq!(json_string_len(&literal), Some(s.len()), "{literal}");
        }
        // Escaped forms serde_json does not produce but a client may get.
        assert_eq!(
            json_string_len(r#""\u00e9\ud83d\ude00\/""#),
            Some(2 + 4 + 1)
        );
        assert_eq!(json_string_len("not a literal"), None);
    }
}
