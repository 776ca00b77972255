//! The sandbox's network: a private namespace whose only way out is the
//! daemon's allowlist proxy (`spawn.allowedDomains`). Attacks from inside,
//! daemon as the unprivileged test user.

use std::net::{Ipv6Addr, TcpListener};
use std::os::linux::net::SocketAddrExt;

use serde_json::{Value, json};

use super::harness::{Daemon, Options, Outcome, http_upstream, require_unprivileged_user, run_in};

fn start() -> Daemon {
    Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        ..Default::default()
    })
}

fn sh(d: &Daemon, session: &str, id: &str, script: &str, allowed: Value) -> Outcome {
    let extra = if allowed.is_null() {
        json!({})
    } else {
        json!({"allowedDomains": allowed})
    };
    run_in(d, session, id, &["/bin/sh", "-c", script], extra)
}

const CURL: &str = "curl -s --max-time 10";

#[test]
fn an_allowed_host_is_reachable_through_http_connect_and_socks5() {
    let d = start();
    let up = http_upstream("127.0.0.2", "hello from upstream");
    let url = format!("http://{up}/");
    let script = format!(
        "echo http=$({CURL} {url}); \
         echo connect=$({CURL} -p -x $HTTPS_PROXY {url}); \
         echo socks=$({CURL} --socks5-hostname 127.0.0.1:1080 {url}); \
         echo socks-ip=$({CURL} --socks5 127.0.0.1:1080 {url}); \
         env | grep -i _proxy= | sort"
    );
    let out = sh(&d, "s", "ok", &script, json!(["127.0.0.2"]));
    for line in ["http=", "connect=", "socks=", "socks-ip="] {
        assert!(
            out.stdout.contains(&format!("{line}hello from upstream")),
            "{line}: {out:?}"
        );
    }
    for var in [
        "HTTP_PROXY=http://127.0.0.1:3128",
        "HTTPS_PROXY=http://127.0.0.1:3128",
        "http_proxy=http://127.0.0.1:3128",
        "https_proxy=http://127.0.0.1:3128",
        "ALL_PROXY=socks5h://127.0.0.1:1080",
        "all_proxy=socks5h://127.0.0.1:1080",
        "NO_PROXY=localhost,127.0.0.1,::1",
        "no_proxy=localhost,127.0.0.1,::1",
    ] {
        assert!(out.stdout.contains(var), "{var}: {out:?}");
    }
}

#[test]
fn sandbox_blocks_hosts_not_in_the_allowlist_with_a_clear_403() {
    let d = start();
    let up = http_upstream("127.0.0.2", "secret");
    let script = format!(
        "{CURL} -i -x http://127.0.0.1:3128 http://not-listed.example/ ; echo; \
         {CURL} -p -x http://127.0.0.1:3128 http://{up}/ && echo TUNNELLED; \
         {CURL} --socks5-hostname 127.0.0.1:1080 http://{up}/ && echo SOCKSED; true"
    );
    let out = sh(&d, "s", "deny", &script, json!(["api.anthropic.com"]));
    assert!(out.stdout.starts_with("HTTP/1.1 403"), "{out:?}");
    assert!(
        out.stdout
            .to_ascii_lowercase()
            .contains("x-proxy-error: blocked-by-allowlist"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("not-listed.example"),
        "names the host: {out:?}"
    );
    for escaped in ["secret", "TUNNELLED", "SOCKSED"] {
        assert!(!out.stdout.contains(escaped), "{escaped}: {out:?}");
    }
    assert!(
        d.log()
            .contains("network egress to not-listed.example:80 blocked"),
        "logged at info: {}",
        d.log()
    );
}

#[test]
fn sandbox_blocks_names_that_resolve_to_loopback_unless_listed_exactly() {
    let d = start();
    let up = http_upstream("127.0.0.1", "host loopback service");
    let url = format!("http://localhost:{}/", up.port());
    // `--noproxy ''`: curl would otherwise skip the proxy for localhost
    // (NO_PROXY lists the sandbox's own loopback).
    let probe = format!("{CURL} -i --noproxy '' -x http://127.0.0.1:3128 {url}; echo");
    let wildcard = sh(&d, "a", "star", &probe, json!(["*"]));
    assert!(
        !wildcard.stdout.contains("host loopback service"),
        "'*' never reaches loopback: {wildcard:?}"
    );
    assert!(
        wildcard.stdout.starts_with("HTTP/1.1 403") && wildcard.stdout.contains("loopback"),
        "refused, saying why: {wildcard:?}"
    );
    let listed = sh(&d, "b", "exact", &probe, json!(["localhost"]));
    assert!(
        listed.stdout.contains("host loopback service"),
        "listed exactly on purpose: {listed:?}"
    );
}

#[test]
fn sandbox_cannot_reach_host_loopback_or_abstract_sockets_directly() {
    let d = start();
    let v4 = http_upstream("127.0.0.1", "v4 service");
    let v6_listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).ok();
    let v6_port = v6_listener
        .as_ref()
        .map(|l| l.local_addr().unwrap().port())
        .unwrap_or(9);
    let name = format!("cowork-test-abstract-{}", std::process::id());
    let abstract_addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _abstract = std::os::unix::net::UnixListener::bind_addr(&abstract_addr).unwrap();
    let code = format!(
        "import socket\n\
         def tcp(family, host, port):\n\
         \x20   s = socket.socket(family)\n\
         \x20   s.settimeout(3)\n\
         \x20   try:\n\
         \x20       s.connect((host, port)); return 'REACHED'\n\
         \x20   except OSError as e:\n\
         \x20       return 'refused'\n\
         print('v4', tcp(socket.AF_INET, '127.0.0.1', {v4port}))\n\
         print('v6', tcp(socket.AF_INET6, '::1', {v6_port}))\n\
         u = socket.socket(socket.AF_UNIX)\n\
         try:\n\
         \x20   u.connect('\\0{name}'); print('abstract REACHED')\n\
         except OSError:\n\
         \x20   print('abstract refused')\n\
         try:\n\
         \x20   l = socket.socket(socket.AF_UNIX); l.bind('\\0{name}'); print('abstract bound here')\n\
         except OSError as e:\n\
         \x20   print('abstract bind', e)\n\
         print(open('/proc/net/tcp').read())\n\
         print(open('/proc/net/tcp6').read())\n",
        v4port = v4.port(),
    );
    let out = run_in(
        &d,
        "s",
        "direct",
        &["/usr/bin/python3", "-c", &code],
        json!({}),
    );
    assert!(!out.stdout.contains("REACHED"), "{out:?}");
    // The host's listening ports are not in the sandbox's socket tables.
    for port in [v4.port(), v6_port] {
        let hex = format!(":{port:04X} ");
        assert!(!out.stdout.contains(&hex), "port {port} visible: {out:?}");
    }
    drop(v6_listener);
}

#[test]
fn a_different_allowlist_starts_a_new_generation_and_no_list_joins_the_running_one() {
    let d = start();
    let up = http_upstream("127.0.0.2", "reached");
    let url = format!("http://{up}/");
    let first = sh(
        &d,
        "s",
        "first",
        "echo $(readlink /proc/self/ns/net) > /tmp/gen1; sleep 30 >/dev/null 2>&1 & echo started",
        json!(["127.0.0.2"]),
    );
    assert_eq!(first.stdout, "started\n");
    // Narrower policy: a new sandbox, which cannot reach the host.
    let narrower = sh(
        &d,
        "s",
        "narrower",
        &format!(
            "readlink /proc/self/ns/net; cat /tmp/gen1; {CURL} -x http://127.0.0.1:3128 {url}; echo"
        ),
        json!([]),
    );
    let lines: Vec<&str> = narrower.stdout.lines().collect();
    assert_ne!(
        lines[0], lines[1],
        "another network namespace: {narrower:?}"
    );
    assert!(!narrower.stdout.contains("reached"), "{narrower:?}");
    // No allowedDomains: it joins the running (narrower) sandbox.
    let joined = sh(
        &d,
        "s",
        "joined",
        &format!("readlink /proc/self/ns/net; {CURL} -x http://127.0.0.1:3128 {url}; echo"),
        Value::Null,
    );
    assert_eq!(joined.stdout.lines().next(), Some(lines[0]), "{joined:?}");
    assert!(
        !joined.stdout.contains("reached"),
        "no more than it had: {joined:?}"
    );
}

#[test]
fn garbage_on_both_proxy_ports_never_takes_the_daemon_down() {
    let d = start();
    let up = http_upstream("127.0.0.2", "still serving");
    let code = "import socket, time\n\
         def send(port, data, close=True):\n\
         \x20   s = socket.create_connection(('127.0.0.1', port), timeout=5)\n\
         \x20   s.sendall(data)\n\
         \x20   if close: s.close()\n\
         \x20   return s\n\
         for data in [b'\\x00\\xff garbage\\r\\n\\r\\n', b'GET\\r\\n\\r\\n', b'CONNECT\\r\\n\\r\\n',\n\
         \x20            b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n', b'A' * 100000 + b'\\r\\n\\r\\n']:\n\
         \x20   send(3128, data)\n\
         slow = send(3128, b'GET http://x/ HTTP/1.1\\r\\nHo', close=False)\n\
         for data in [b'\\x05', b'\\x05\\x01', b'\\x05\\x01\\x00\\x05\\x01', b'\\x04\\x01\\x00\\x50', b'\\xff' * 64]:\n\
         \x20   send(1080, data)\n\
         many = []\n\
         for i in range(1000):\n\
         \x20   try:\n\
         \x20       many.append(socket.create_connection(('127.0.0.1', 3128 if i % 2 else 1080), timeout=5))\n\
         \x20   except OSError as e:\n\
         \x20       print('connect', i, e); break\n\
         for s in many: s.close()\n\
         print('done', len(many))\n";
    let out = run_in(
        &d,
        "s",
        "garbage",
        &["/usr/bin/python3", "-c", code],
        json!({"allowedDomains": ["127.0.0.2"]}),
    );
    assert!(out.stdout.contains("done 1000"), "{out:?}");
    // The proxy, the sandbox and the daemon all still work.
    let after = sh(
        &d,
        "s",
        "after",
        &format!("{CURL} http://{up}/"),
        json!(["127.0.0.2"]),
    );
    assert_eq!(after.stdout, "still serving", "{after:?}");
    assert_eq!(d.call("getDaemonInfo", json!({}))["backend"], "bwrap");
}
