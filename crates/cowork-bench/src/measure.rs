//! Measurements against a running daemon, driven like the desktop client.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::{Result, bail};
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

/// Reads events until `id` exits; returns the stdout bytes seen.
fn wait_exit(events: &mut Client, id: &str) -> Result<usize> {
    let mut stdout = 0;
    loop {
        let e = events.recv()?;
        if e.get("id").and_then(Value::as_str) != Some(id) {
            continue;
        }
        match e.get("type").and_then(Value::as_str) {
            Some("stdout") => stdout += e.get("data").and_then(Value::as_str).map_or(0, str::len),
            Some("exit") => {
                if e.get("exitCode") != Some(&json!(0)) {
                    bail!("{id} failed: {e}");
                }
                return Ok(stdout);
            }
            _ => {}
        }
    }
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
