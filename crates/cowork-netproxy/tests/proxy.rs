//! The proxy end to end over loopback: a proxy on a `TcpListener`, small
//! upstream servers on 127.0.0.x, clients speaking raw bytes.
//!
//! No test reaches beyond this machine: every context uses `SafeDialer`,
//! which dials loopback only and maps the few public addresses used here
//! onto loopback servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pretty_assertions::assert_eq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use cowork_netproxy::{
    DenialEvent, Dialer, Limits, OwnAddresses, Protocol, ProxyContext, StaticResolver,
    serve_listener,
};
use cowork_policy::net::{AllowList, DenyReason};

// ---------------------------------------------------------------- harness

const HINT: &str = "run with --allow-domain {host}";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Dials loopback only; `map` sends a (pretend public) address to a
/// loopback one; everything else is refused without leaving the machine.
#[derive(Default)]
struct SafeDialer {
    map: HashMap<IpAddr, IpAddr>,
    dialled: Mutex<Vec<SocketAddr>>,
}

impl SafeDialer {
    fn mapping(pairs: &[(&str, &str)]) -> SafeDialer {
        SafeDialer {
            map: pairs.iter().map(|(a, b)| (ip(a), ip(b))).collect(),
            dialled: Mutex::default(),
        }
    }
    fn dialled(&self) -> Vec<SocketAddr> {
        self.dialled.lock().unwrap().clone()
    }
}

#[async_trait]
impl Dialer for SafeDialer {
    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.dialled.lock().unwrap().push(addr);
        let real = match self.map.get(&addr.ip()) {
            Some(mapped) => SocketAddr::new(*mapped, addr.port()),
            None if addr.ip().is_loopback() => addr,
            None => return Err(io::ErrorKind::ConnectionRefused.into()),
        };
        TcpStream::connect(real).await
    }
}

/// Collects denial events.
#[derive(Default)]
struct Denials(Mutex<Vec<DenialEvent>>);

impl Denials {
    fn take(&self) -> Vec<(String, u16, DenyReason)> {
        self.0
            .lock()
            .unwrap()
            .drain(..)
            .map(|e| (e.host().to_string(), e.port(), e.reason().clone()))
            .collect()
    }
}

struct Proxy {
    addr: SocketAddr,
    dialer: Arc<SafeDialer>,
    denials: Arc<Denials>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn test_limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(400),
        handshake_timeout: Duration::from_millis(400),
        resolve_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

struct ProxyBuilder {
    protocol: Protocol,
    allow: Option<Vec<String>>,
    resolver: StaticResolver,
    dialer: SafeDialer,
    limits: Limits,
    system_resolver: bool,
}

fn proxy(protocol: Protocol, allow: &[&str]) -> ProxyBuilder {
    ProxyBuilder {
        protocol,
        allow: Some(allow.iter().map(|s| s.to_string()).collect()),
        resolver: StaticResolver::new(),
        dialer: SafeDialer::default(),
        limits: test_limits(),
        system_resolver: false,
    }
}

impl ProxyBuilder {
    fn resolve(mut self, name: &str, addrs: &[&str]) -> ProxyBuilder {
        let addrs: Vec<IpAddr> = addrs.iter().map(|a| ip(a)).collect();
        self.resolver = self.resolver.with(name, &addrs);
        self
    }
    fn dialer(mut self, dialer: SafeDialer) -> ProxyBuilder {
        self.dialer = dialer;
        self
    }
    fn limits(mut self, f: impl FnOnce(&mut Limits)) -> ProxyBuilder {
        f(&mut self.limits);
        self
    }
    fn absent_allowlist(mut self) -> ProxyBuilder {
        self.allow = None;
        self
    }
    fn system_resolver(mut self) -> ProxyBuilder {
        self.system_resolver = true;
        self
    }
    async fn start(self) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let allowlist = Arc::new(AllowList::from_entries(self.allow.as_deref()));
        let dialer = Arc::new(self.dialer);
        let denials = Arc::new(Denials::default());
        let sink = Arc::clone(&denials);
        let mut ctx = ProxyContext::new("test-session", allowlist)
            .with_hint(HINT)
            .with_dialer(dialer.clone())
            .with_denial_sink(Arc::new(move |e: &DenialEvent| {
                sink.0.lock().unwrap().push(e.clone())
            }))
            .with_own_addresses(OwnAddresses::new(vec![ip("198.51.100.7")]))
            .with_proxy_endpoints(vec![addr])
            .with_limits(self.limits);
        if !self.system_resolver {
            ctx = ctx.with_resolver(Arc::new(self.resolver));
        }
        let task = tokio::spawn(serve_listener(listener, self.protocol, ctx));
        Proxy {
            addr,
            dialer,
            denials,
            task,
        }
    }
}

/// An echo server; counts its connections.
struct Echo {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn echo_server(bind: &str) -> Echo {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Echo { addr, connections }
}

/// A keep-alive HTTP/1.1 origin server answering
/// `<name> <method> <path> host=<host>`; counts its connections.
async fn http_server(bind: &str, name: &'static str) -> Echo {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(head_len) = read_head(&mut stream, &mut buf).await else {
                        return;
                    };
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut req = httparse::Request::new(&mut headers);
                    req.parse(&buf[..head_len]).unwrap();
                    let header = |n: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(n))
                            .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    };
                    let body_len: usize = header("content-length")
                        .map(|v| v.parse().unwrap())
                        .unwrap_or(0);
                    let hop =
                        header("proxy-connection").is_some() || header("keep-alive").is_some();
                    let text = format!(
                        "{name} {} {} host={} hop={hop}",
                        req.method.unwrap(),
                        req.path.unwrap(),
                        header("host").unwrap_or_default()
                    );
                    let chunked = header("transfer-encoding").is_some_and(|v| v == "chunked");
                    let mut rest = buf.split_off(head_len);
                    let body = if chunked {
                        let (body, used) = loop {
                            if let Some(done) = dechunk(&rest) {
                                break done;
                            }
                            let mut chunk = [0u8; 4096];
                            let n = stream.read(&mut chunk).await.unwrap();
                            assert!(n > 0);
                            rest.extend_from_slice(&chunk[..n]);
                        };
                        buf = rest.split_off(used);
                        body
                    } else {
                        while rest.len() < body_len {
                            let mut chunk = [0u8; 4096];
                            let n = stream.read(&mut chunk).await.unwrap();
                            assert!(n > 0);
                            rest.extend_from_slice(&chunk[..n]);
                        }
                        let body = String::from_utf8_lossy(&rest[..body_len]).into_owned();
                        buf = rest.split_off(body_len);
                        body
                    };
                    let text = format!("{text} body={body}");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\n\r\n{text}",
                        text.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Echo { addr, connections }
}

/// Decodes a complete chunked body (no trailers): the body and the bytes
/// it took, or `None` when more are needed.
fn dechunk(buf: &[u8]) -> Option<(String, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[at..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
        let data = line_end + 2;
        if buf.len() < data + size + 2 {
            return None;
        }
        if size == 0 {
            return Some((String::from_utf8(body).unwrap(), data + 2));
        }
        body.extend_from_slice(&buf[data..data + size]);
        at = data + size + 2;
    }
}

/// Reads until a complete head is in `buf`; `None` on EOF.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(pos + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response as read by the client.
#[derive(Debug)]
struct Reply {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (body by Content-Length; none for a 200 to CONNECT).
async fn read_reply(stream: &mut TcpStream, connect: bool) -> Reply {
    tokio::time::timeout(IO_TIMEOUT, async {
        let mut buf = Vec::new();
        let head_len = read_head(stream, &mut buf).await.expect("a response head");
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&buf[..head_len]).unwrap();
        let status = resp.code.unwrap();
        let reason = resp.reason.unwrap().to_owned();
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = buf[head_len..].to_vec();
        assert!(
            !(connect && status == 200 && !body.is_empty()),
            "bytes after the 200"
        );
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF inside a body");
            body.extend_from_slice(&chunk[..n]);
        }
        Reply {
            status,
            reason,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
    .await
    .expect("a response in time")
}

async fn send(proxy: &Proxy, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Whether the proxy closed the stream (EOF or reset) within the timeout.
async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn connect_request(proxy: &Proxy, authority: &str) -> (TcpStream, Reply) {
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let mut stream = send(proxy, request.as_bytes()).await;
    let reply = read_reply(&mut stream, true).await;
    (stream, reply)
}

async fn assert_echoes(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).await.unwrap();
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, payload);
}

/// A CONNECT through the proxy that must work: the listener is alive.
async fn assert_still_serves(proxy: &Proxy, echo: &Echo) {
    let (mut stream, reply) = connect_request(proxy, &echo.addr.to_string()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_echoes(&mut stream, b"still alive").await;
}

/// SOCKS5: greeting + CONNECT request; returns the stream and reply code.
async fn socks_connect(proxy: &Proxy, address: &[u8], port: u16) -> (TcpStream, u8) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"\x05\x01\x00").await.unwrap();
    let mut method = [0u8; 2];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut method))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(method, [5, 0]);
    let mut request = vec![5, 1, 0];
    request.extend_from_slice(address);
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await.unwrap();
    let code = read_socks_reply(&mut stream).await;
    (stream, code)
}

async fn read_socks_reply(stream: &mut TcpStream) -> u8 {
    let mut reply = [0u8; 10];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((reply[0], reply[2], reply[3]), (5, 0, 1), "{reply:?}");
    reply[1]
}

fn socks_domain(name: &str) -> Vec<u8> {
    let mut v = vec![3, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v
}

fn socks_ip(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => [&[1u8][..], &v4.octets()].concat(),
        IpAddr::V6(v6) => [&[4u8][..], &v6.octets()].concat(),
    }
}

// ------------------------------------------------------------ HTTP CONNECT

#[tokio::test]
async fn connect_allowed_relays_both_ways_and_half_close() {
    let echo = echo_server("127.0.0.2:0").await;
    let proxy = proxy(Protocol::Http, &["127.0.0.2"]).start().await;
    let (mut stream, reply) = connect_request(&proxy, &echo.addr.to_string()).await;
    assert_eq!(
        (reply.status, reply.reason.as_str()),
        (200, "Connection established")
    );
    assert_echoes(&mut stream, b"hello through the tunnel").await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = stream.into_split();
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        // Half-close: the echo server sees EOF, finishes and closes.
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(got == big, "relayed {} of {} bytes", got.len(), big.len());
    assert_eq!(proxy.dialer.dialled(), vec![echo.addr]);
}

#[tokio::test]
async fn connect_denied_gets_403_with_header_and_hint() {
    let echo = echo_server("127.0.0.3:0").await;
    let proxy = proxy(Protocol::Http, &["example.com"]).start().await;
    let (mut stream, reply) = connect_request(&proxy, &echo.addr.to_string()).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("x-proxy-error"), Some("blocked-by-allowlist"));
    assert_eq!(reply.header("connection"), Some("close"));
    let port = echo.addr.port();
    assert_eq!(
        reply.body,
        format!(
            "Blocked by the sandbox network allowlist: 127.0.0.3:{port} is not in the \
             allowlist. To allow it, run with --allow-domain 127.0.0.3.\n"
        )
    );
    assert!(closed_by_peer(&mut stream).await);
    assert_eq!(proxy.dialer.dialled(), vec![]);
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);
    assert_eq!(
        proxy.denials.take(),
        vec![("127.0.0.3".into(), port, DenyReason::NotListed)]
    );
}

#[tokio::test]
async fn connect_by_name_to_loopback_needs_exact_listing() {
    let echo = echo_server("127.0.0.2:0").await;
    let port = echo.addr.port();
    // A wildcard admits the name, but it resolves to loopback: refused.
    let wild = proxy(Protocol::Http, &["*.example.test", "*"])
        .resolve("rebind.example.test", &["127.0.0.2"])
        .start()
        .await;
    let (_, reply) = connect_request(&wild, &format!("rebind.example.test:{port}")).await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(
        reply
            .body
            .contains("resolves to a loopback address (127.0.0.2)"),
        "{}",
        reply.body
    );
    assert_eq!(wild.dialer.dialled(), vec![]);
    // An IP literal through `*` is vetted too.
    let (_, reply) = connect_request(&wild, &echo.addr.to_string()).await;
    assert_eq!(reply.status, 403);
    assert!(
        reply.body.contains("is a loopback address"),
        "{}",
        reply.body
    );

    // Listed exactly: allowed on purpose.
    let exact = proxy(Protocol::Http, &["Rebind.Example.Test."])
        .resolve("rebind.example.test", &["127.0.0.2"])
        .start()
        .await;
    let (mut stream, reply) = connect_request(&exact, &format!("REBIND.example.test:{port}")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_echoes(&mut stream, b"on purpose").await;
}

#[tokio::test]
async fn connect_localhost_through_the_system_resolver() {
    let echo = echo_server("127.0.0.1:0").await;
    let proxy = proxy(Protocol::Http, &["localhost"])
        .system_resolver()
        .start()
        .await;
    let (mut stream, reply) =
        connect_request(&proxy, &format!("localhost:{}", echo.addr.port())).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_echoes(&mut stream, b"via /etc/hosts").await;
}

#[tokio::test]
async fn resolved_addresses_are_vetted_and_dialled_in_order() {
    let echo = echo_server("127.0.0.2:0").await;
    let port = echo.addr.port();
    // 8.8.8.8 stands for a public address; SafeDialer maps it to the echo
    // server.
    let proxy = proxy(Protocol::Http, &["*.example.test"])
        .resolve(
            "mixed.example.test",
            &["10.0.0.1", "169.254.169.254", "::1", "8.8.8.8"],
        )
        .resolve("private.example.test", &["10.0.0.1", "192.168.1.1"])
        .resolve("own.example.test", &["198.51.100.7"])
        .dialer(SafeDialer::mapping(&[("8.8.8.8", "127.0.0.2")]))
        .start()
        .await;
    let (mut stream, reply) = connect_request(&proxy, &format!("mixed.example.test:{port}")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_echoes(&mut stream, b"public only").await;
    assert_eq!(
        proxy.dialer.dialled(),
        vec![SocketAddr::new(ip("8.8.8.8"), port)]
    );
    let (_, reply) = connect_request(&proxy, &format!("private.example.test:{port}")).await;
    assert_eq!(reply.status, 403);
    assert!(
        reply.body.contains("a private-network address (10.0.0.1)"),
        "{}",
        reply.body
    );
    let (_, reply) = connect_request(&proxy, "nxdomain.example.test:443").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.header("x-proxy-error"), Some("unresolvable-host"));
    assert_eq!(proxy.dialer.dialled().len(), 1);
}

#[tokio::test]
async fn dial_falls_through_to_the_next_vetted_address() {
    let echo = echo_server("127.0.0.2:0").await;
    let port = echo.addr.port();
    let proxy = proxy(Protocol::Http, &["two.example.test"])
        .resolve("two.example.test", &["127.0.0.9", "127.0.0.2"])
        .start()
        .await;
    let (mut stream, reply) = connect_request(&proxy, &format!("two.example.test:{port}")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_echoes(&mut stream, b"second address").await;
    assert_eq!(
        proxy.dialer.dialled(),
        vec![
            SocketAddr::new(ip("127.0.0.9"), port),
            SocketAddr::new(ip("127.0.0.2"), port)
        ]
    );
}

#[tokio::test]
async fn connect_to_the_proxy_itself_is_refused() {
    let proxy = proxy(Protocol::Http, &["127.0.0.1"]).start().await;
    let (_, reply) = connect_request(&proxy, &proxy.addr.to_string()).await;
    assert_eq!(reply.status, 403);
    assert!(
        reply.body.contains("this proxy's own endpoint"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn absent_allowlist_allows_public_destinations_only() {
    let echo = echo_server("127.0.0.2:0").await;
    let port = echo.addr.port();
    let proxy = proxy(Protocol::Http, &[])
        .absent_allowlist()
        .resolve("public.example.test", &["8.8.8.8"])
        .dialer(SafeDialer::mapping(&[("8.8.8.8", "127.0.0.2")]))
        .start()
        .await;
    let (_, reply) = connect_request(&proxy, &format!("public.example.test:{port}")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let (_, reply) = connect_request(&proxy, &echo.addr.to_string()).await;
    assert_eq!(reply.status, 403);
    // An empty list allows nothing.
    let empty = proxy_empty().await;
    let (_, reply) = connect_request(&empty, "public.example.test:443").await;
    assert_eq!(reply.status, 403);
}

async fn proxy_empty() -> Proxy {
    proxy(Protocol::Http, &[])
        .resolve("public.example.test", &["8.8.8.8"])
        .start()
        .await
}

// -------------------------------------------------------------- plain HTTP

#[tokio::test]
async fn plain_http_is_forwarded_in_origin_form() {
    let server = http_server("127.0.0.2:0", "A").await;
    let authority = server.addr.to_string();
    let proxy = proxy(Protocol::Http, &["127.0.0.2"]).start().await;
    let request = format!(
        "POST http://{authority}/hello?x=1 HTTP/1.1\r\nHost: {authority}\r\n\
         Proxy-Connection: keep-alive\r\nContent-Length: 5\r\n\r\nworld"
    );
    let mut stream = send(&proxy, request.as_bytes()).await;
    let reply = read_reply(&mut stream, false).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        format!("A POST /hello?x=1 host={authority} hop=false body=world")
    );
    assert_eq!(
        reply.header("keep-alive"),
        None,
        "hop-by-hop header passed on"
    );
}

#[tokio::test]
async fn plain_http_chunked_body_is_reframed() {
    let server = http_server("127.0.0.2:0", "A").await;
    let authority = server.addr.to_string();
    let proxy = proxy(Protocol::Http, &["127.0.0.2"]).start().await;
    // Both framings: the chunked one wins and the length is dropped.
    let request = format!(
        "POST http://{authority}/c HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 99\r\n\
         Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    );
    let mut stream = send(&proxy, request.as_bytes()).await;
    let reply = read_reply(&mut stream, false).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.ends_with("body=abcde"), "{}", reply.body);
}

#[tokio::test]
async fn plain_http_host_header_must_match_the_uri() {
    let server = http_server("127.0.0.2:0", "A").await;
    let authority = server.addr.to_string();
    let proxy = proxy(Protocol::Http, &["127.0.0.2", "127.0.0.3"])
        .start()
        .await;
    let request = format!(
        "GET http://{authority}/ HTTP/1.1\r\nHost: 127.0.0.3:{}\r\n\r\n",
        server.addr.port()
    );
    let mut stream = send(&proxy, request.as_bytes()).await;
    let reply = read_reply(&mut stream, false).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.body.contains("does not match"), "{}", reply.body);
    assert_eq!(server.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn keep_alive_requests_are_each_checked_and_never_cross_hosts() {
    let a = http_server("127.0.0.2:0", "A").await;
    let b = http_server("127.0.0.3:0", "B").await;
    let denied = http_server("127.0.0.4:0", "D").await;
    let proxy = proxy(Protocol::Http, &["127.0.0.2", "127.0.0.3"])
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let get = |server: &Echo, path: &str| {
        let authority = server.addr.to_string();
        format!("GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
    };
    for (server, path, want) in [
        (&a, "/1", "A GET /1"),
        (&a, "/2", "A GET /2"),
        (&b, "/3", "B GET /3"),
        (&a, "/4", "A GET /4"),
    ] {
        stream
            .write_all(get(server, path).as_bytes())
            .await
            .unwrap();
        let reply = read_reply(&mut stream, false).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.body.starts_with(want), "{} for {want}", reply.body);
    }

    // Pipelined requests to two hosts: each answered by its own host.
    let pipelined = format!("{}{}", get(&b, "/p1"), get(&a, "/p2"));
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let first = read_reply(&mut stream, false).await;
    assert!(first.body.starts_with("B GET /p1"), "{}", first.body);
    let second = read_reply(&mut stream, false).await;
    assert!(second.body.starts_with("A GET /p2"), "{}", second.body);
    // A request to an unlisted host on the same connection is refused.
    stream
        .write_all(get(&denied, "/5").as_bytes())
        .await
        .unwrap();
    let reply = read_reply(&mut stream, false).await;
    assert_eq!(reply.status, 403);
    assert!(closed_by_peer(&mut stream).await);
    assert_eq!(denied.connections.load(Ordering::SeqCst), 0);
    // A reused for /1 and /2; new connections after each switch.
    assert_eq!(a.connections.load(Ordering::SeqCst), 3);
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn origin_form_and_other_schemes_get_400() {
    let proxy = proxy(Protocol::Http, &["*"]).start().await;
    for request in [
        "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "CONNECT example.com HTTP/1.1\r\n\r\n",
    ] {
        let mut stream = send(&proxy, request.as_bytes()).await;
        let reply = read_reply(&mut stream, false).await;
        assert_eq!(reply.status, 400, "{request:?}: {reply:?}");
        assert_eq!(reply.header("x-proxy-error"), Some("bad-request"));
    }
}

// ------------------------------------------------------------------ SOCKS5

#[tokio::test]
async fn socks5_domain_ipv4_and_ipv6_allowed() {
    let echo = echo_server("127.0.0.2:0").await;
    let port = echo.addr.port();
    let proxy = proxy(
        Protocol::Socks5,
        &["echo.example.test", "127.0.0.2", "[::1]"],
    )
    .resolve("echo.example.test", &["127.0.0.2"])
    .start()
    .await;
    let (mut stream, code) = socks_connect(&proxy, &socks_domain("Echo.Example.Test"), port).await;
    assert_eq!(code, 0);
    assert_echoes(&mut stream, b"by name").await;
    let (mut stream, code) = socks_connect(&proxy, &socks_ip(ip("127.0.0.2")), port).await;
    assert_eq!(code, 0);
    assert_echoes(&mut stream, b"by IPv4").await;
    // An IPv4-mapped IPv6 address is the IPv4 address.
    let (mut stream, code) = socks_connect(&proxy, &socks_ip(ip("::ffff:127.0.0.2")), port).await;
    assert_eq!(code, 0);
    assert_echoes(&mut stream, b"by mapped IPv6").await;

    let Ok(v6) = TcpListener::bind("[::1]:0").await else {
        eprintln!("no IPv6 loopback here: IPv6 part skipped");
        return;
    };
    let v6_port = v6.local_addr().unwrap().port();
    drop(v6);
    let echo6 = echo_server(&format!("[::1]:{v6_port}")).await;
    let (mut stream, code) = socks_connect(&proxy, &socks_ip(ip("::1")), echo6.addr.port()).await;
    assert_eq!(code, 0);
    assert_echoes(&mut stream, b"by IPv6").await;
}

#[tokio::test]
async fn socks5_denied_replies_not_allowed() {
    let echo = echo_server("127.0.0.3:0").await;
    let port = echo.addr.port();
    let proxy = proxy(Protocol::Socks5, &["*.example.test"])
        .resolve("rebind.example.test", &["127.0.0.3"])
        .start()
        .await;
    for address in [
        socks_ip(ip("127.0.0.3")),
        socks_domain("other.test"),
        socks_domain("rebind.example.test"),
        socks_ip(ip("::1")),
    ] {
        let (mut stream, code) = socks_connect(&proxy, &address, port).await;
        assert_eq!(code, 2, "{address:?}");
        assert!(closed_by_peer(&mut stream).await);
    }
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);
    let reasons: Vec<String> = proxy
        .denials
        .take()
        .into_iter()
        .map(|(host, _, reason)| format!("{host} {reason}"))
        .collect();
    assert_eq!(
        reasons,
        vec![
            "127.0.0.3 is not in the allowlist".to_string(),
            "other.test is not in the allowlist".to_string(),
            "rebind.example.test resolves to a loopback address (127.0.0.3), allowed only \
             when the host is listed exactly"
                .to_string(),
            "[::1] is not in the allowlist".to_string(),
        ]
    );
}

#[tokio::test]
async fn socks5_only_connect_and_no_auth() {
    let echo = echo_server("127.0.0.2:0").await;
    let proxy = proxy(Protocol::Socks5, &["127.0.0.2"]).start().await;
    // BIND and UDP ASSOCIATE: "command not supported".
    for command in [2u8, 3] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let mut msg = vec![5, 1, 0, 5, command, 0];
        msg.extend(socks_ip(ip("127.0.0.2")));
        msg.extend(echo.addr.port().to_be_bytes());
        // Greeting and request in one write (pipelined).
        stream.write_all(&msg).await.unwrap();
        let mut method = [0u8; 2];
        stream.read_exact(&mut method).await.unwrap();
        assert_eq!(read_socks_reply(&mut stream).await, 7, "command {command}");
    }
    // Username/password only: no acceptable method.
    let mut stream = send(&proxy, b"\x05\x01\x02").await;
    let mut method = [0u8; 2];
    stream.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [5, 0xff]);
    assert!(closed_by_peer(&mut stream).await);
    // Data pipelined after the request reaches the upstream first.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut msg = vec![5, 1, 0, 5, 1, 0];
    msg.extend(socks_ip(ip("127.0.0.2")));
    msg.extend(echo.addr.port().to_be_bytes());
    msg.extend_from_slice(b"early");
    stream.write_all(&msg).await.unwrap();
    let mut method = [0u8; 2];
    stream.read_exact(&mut method).await.unwrap();
    assert_eq!(read_socks_reply(&mut stream).await, 0);
    let mut early = [0u8; 5];
    stream.read_exact(&mut early).await.unwrap();
    assert_eq!(&early, b"early");
}

// -------------------------------------------------------------- robustness

#[tokio::test]
async fn clients_that_half_close_after_the_request_get_their_answer() {
    let echo = echo_server("127.0.0.2:0").await;
    let server = http_server("127.0.0.2:0", "A").await;
    let proxy = proxy(Protocol::Http, &["127.0.0.2"]).start().await;
    // `printf 'GET http://...' | nc`: the write side closes at once.
    let request = format!(
        "GET http://{0}/x HTTP/1.1\r\nHost: {0}\r\n\r\n",
        server.addr
    );
    let mut stream = send(&proxy, request.as_bytes()).await;
    stream.shutdown().await.unwrap();
    let reply = read_reply(&mut stream, false).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.starts_with("A GET /x"), "{}", reply.body);
    // The same for a CONNECT: the tunnel opens, the EOF is passed on and
    // the echo server's close comes back.
    let request = format!("CONNECT {} HTTP/1.1\r\n\r\n", echo.addr);
    let mut stream = send(&proxy, request.as_bytes()).await;
    stream.shutdown().await.unwrap();
    let reply = read_reply(&mut stream, true).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(closed_by_peer(&mut stream).await);
}

#[tokio::test]
async fn hostile_http_clients_never_take_the_listener_down() {
    let echo = echo_server("127.0.0.2:0").await;
    let proxy = proxy(Protocol::Http, &["127.0.0.2"])
        .limits(|l| l.max_head_size = 8 * 1024)
        .start()
        .await;
    // Garbage request line.
    let mut stream = send(&proxy, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").await;
    let reply = read_reply(&mut stream, false).await;
    assert_eq!(reply.status, 400);
    assert_still_serves(&proxy, &echo).await;
    // Oversized head.
    let huge = format!(
        "GET http://{}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        echo.addr,
        "a".repeat(20 * 1024)
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = stream.write_all(huge.as_bytes()).await;
    let reply = read_reply(&mut stream, false).await;
    assert_eq!(reply.status, 431);
    assert_still_serves(&proxy, &echo).await;
    // Slow client: half a head, then nothing; closed after the header
    // read timeout.
    let mut stream = send(&proxy, b"CONNECT 127.0.0.2:1 HT").await;
    let started = std::time::Instant::now();
    assert!(closed_by_peer(&mut stream).await);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Idle client: nothing at all.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(closed_by_peer(&mut stream).await);
    // Cut off mid-head.
    let mut stream = send(&proxy, b"GET http://127.0.0.2/ HTTP/1.1\r\nHo").await;
    stream.shutdown().await.unwrap();
    assert!(closed_by_peer(&mut stream).await);
    // A client that half-closes after its CONNECT still gets its tunnel.
    let request = format!("CONNECT {} HTTP/1.1\r\n\r\n", echo.addr);
    let mut stream = send(&proxy, request.as_bytes()).await;
    let reply = read_reply(&mut stream, true).await;
    assert_eq!(reply.status, 200);
    stream.shutdown().await.unwrap();
    assert!(closed_by_peer(&mut stream).await);
    assert_still_serves(&proxy, &echo).await;
}

#[tokio::test]
async fn hostile_socks_clients_never_take_the_listener_down() {
    let echo = echo_server("127.0.0.2:0").await;
    let proxy = proxy(Protocol::Socks5, &["127.0.0.2"]).start().await;
    let port = echo.addr.port();
    let cases: [&[u8]; 6] = [
        b"\x05\x01",                     // greeting cut in half
        b"\x05\x01\x00\x05\x01\x00",     // request cut in half
        b"GET / HTTP/1.1\r\n\r\n",       // not SOCKS5
        b"\x05\x00",                     // no methods
        b"\x05\x01\x00\x05\x01\x07\x01", // reserved byte not 0
        b"\x05\x01\x00\x05\x01\x00\x09", // unknown address type
    ];
    for bytes in cases {
        let mut stream = send(&proxy, bytes).await;
        stream.shutdown().await.unwrap();
        assert!(closed_by_peer(&mut stream).await, "{bytes:?}");
    }
    // Slow handshake: greeting, then nothing; closed after the timeout.
    let mut stream = send(&proxy, b"\x05\x01\x00").await;
    let started = std::time::Instant::now();
    assert!(closed_by_peer(&mut stream).await);
    assert!(started.elapsed() < Duration::from_secs(3));
    let (mut stream, code) = socks_connect(&proxy, &socks_ip(ip("127.0.0.2")), port).await;
    assert_eq!(code, 0);
    assert_echoes(&mut stream, b"still alive").await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_slot() {
    let echo = echo_server("127.0.0.2:0").await;
    let proxy = proxy(Protocol::Http, &["127.0.0.2"])
        .limits(|l| {
            l.max_connections = 2;
            l.header_read_timeout = Duration::from_secs(30);
        })
        .start()
        .await;
    let idle1 = TcpStream::connect(proxy.addr).await.unwrap();
    let idle2 = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = format!("CONNECT {} HTTP/1.1\r\n\r\n", echo.addr);
    let mut third = send(&proxy, request.as_bytes()).await;
    let mut buf = [0u8; 64];
    let waited = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(waited.is_err(), "served beyond the cap");
    drop(idle1);
    let reply = read_reply(&mut third, true).await;
    assert_eq!(reply.status, 200);
    drop(idle2);
}
