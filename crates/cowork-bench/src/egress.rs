//! The sandbox's network: a download through the allowlist proxy (CONNECT
//! tunnel and SOCKS5) against the same download straight over host
//! loopback, and the time from `connect()` inside to the first byte of an
//! allowed host, against the same straight on the host.
//!
//! The upstreams run in this process on 127.0.0.2 (outside the sandbox's
//! `NO_PROXY`); the clients are curl (throughput) and a python3 loop
//! (first byte), run the same way inside the sandbox and on the host, so
//! the ratio is the proxy's cost.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::daemon::{Client, Daemon};

/// Serves `bytes` zeros as one HTTP response per connection.
fn bulk_server(bytes: u64) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.2:0").context("binding 127.0.0.2")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head);
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
                );
                if conn.write_all(header.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![0u8; 256 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if conn.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    Ok(addr)
}

/// Writes one byte as soon as a connection is accepted.
fn first_byte_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.2:0").context("binding 127.0.0.2")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"!");
        }
    });
    Ok(addr)
}

/// Times `n` connects to the first byte: directly to the upstream, or
/// through the SOCKS5 proxy inside a sandbox. Prints one ms figure a line.
fn first_byte_script(n: usize, target: SocketAddr, via_socks: bool) -> String {
    let (host, port) = (target.ip(), target.port());
    let connect = if via_socks {
        // greeting, no-auth, CONNECT to an IPv4 address, then the reply.
        format!(
            "s = socket.create_connection(('127.0.0.1', 1080))\n    \
             s.sendall(b'\\x05\\x01\\x00'); s.recv(2)\n    \
             s.sendall(b'\\x05\\x01\\x00\\x01' + socket.inet_aton('{host}') + ({port}).to_bytes(2, 'big'))\n    \
             r = b''\n    \
             while len(r) < 10: r += s.recv(10 - len(r))\n    "
        )
    } else {
        format!("s = socket.create_connection(('{host}', {port}))\n    ")
    };
    format!(
        "import socket, time\n\
         for _ in range({n}):\n    \
         t = time.perf_counter()\n    \
         {connect}\
         b = s.recv(1)\n    \
         print((time.perf_counter() - t) * 1000)\n    \
         s.close()\n"
    )
}

/// Runs `argv` in session `session` of `d` with `allowed` as its network
/// policy; returns its stdout.
fn run_in_sandbox(d: &Daemon, session: &str, argv: &[&str], allowed: &[String]) -> Result<String> {
    let mut events = d.connect()?;
    events.subscribe()?;
    let mut requests = d.connect()?;
    let id = format!("egress-{session}-{}", requests.next_id());
    requests.call(
        "spawn",
        json!({"id": id, "name": session, "command": argv[0], "args": &argv[1..],
               "allowedDomains": allowed, "isResume": false}),
    )?;
    collect_stdout(&mut events, &id)
}

fn collect_stdout(events: &mut Client, id: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let e: Value = events.recv()?;
        if e.get("id").and_then(Value::as_str) != Some(id) {
            continue;
        }
        match e.get("type").and_then(Value::as_str) {
            Some("stdout") => out.push_str(e["data"].as_str().unwrap_or_default()),
            Some("stderr") => eprint!("{}", e["data"].as_str().unwrap_or_default()),
            Some("exit") => {
                if e.get("exitCode") != Some(&json!(0)) {
                    bail!("{id} failed: {e}");
                }
                return Ok(out);
            }
            _ => {}
        }
    }
}

fn numbers(text: &str) -> Vec<f64> {
    text.split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn curl_speed(text: &str) -> Result<f64> {
    numbers(text)
        .first()
        .map(|bytes_per_s| bytes_per_s / 1e6)
        .context("curl printed no speed")
}

/// The figures of one run, for our daemon (bwrap backend).
pub fn measure(d: &Daemon, download: u64, connects: usize) -> Result<Vec<(&'static str, f64)>> {
    let bulk = bulk_server(download)?;
    let url = format!("http://{bulk}/");
    let allowed = vec![bulk.ip().to_string()];
    let curl = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{speed_download}\\n",
    ];
    let mut figures = Vec::new();
    let direct = Command::new(curl[0])
        .args(&curl[1..])
        .arg(&url)
        .output()
        .context("curl on the host")?;
    figures.push((
        "egress_direct_mbps",
        curl_speed(&String::from_utf8_lossy(&direct.stdout))?,
    ));
    let mut tunnel: Vec<&str> = curl.to_vec();
    tunnel.extend(["-p", "-x", "http://127.0.0.1:3128", &url]);
    figures.push((
        "egress_connect_mbps",
        curl_speed(&run_in_sandbox(d, "egress", &tunnel, &allowed)?)?,
    ));
    let mut socks: Vec<&str> = curl.to_vec();
    socks.extend(["--socks5-hostname", "127.0.0.1:1080", &url]);
    figures.push((
        "egress_socks_mbps",
        curl_speed(&run_in_sandbox(d, "egress", &socks, &allowed)?)?,
    ));

    let first = first_byte_server()?;
    let direct_script = first_byte_script(connects, first, false);
    let direct = Command::new("python3")
        .args(["-c", &direct_script])
        .output()
        .context("python3 on the host")?;
    let direct = numbers(&String::from_utf8_lossy(&direct.stdout));
    let proxied_script = first_byte_script(connects, first, true);
    let proxied = numbers(&run_in_sandbox(
        d,
        "egress",
        &["python3", "-c", &proxied_script],
        &[first.ip().to_string()],
    )?);
    let p = |v: &[f64], q| crate::stats::percentile(v, q).unwrap_or(f64::NAN);
    figures.push(("egress_first_byte_direct_p50_ms", p(&direct, 50.0)));
    figures.push(("egress_first_byte_p50_ms", p(&proxied, 50.0)));
    figures.push(("egress_first_byte_p99_ms", p(&proxied, 99.0)));
    Ok(figures)
}
