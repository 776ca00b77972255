//! The environment that points a sandboxed process's tools at the two
//! proxy endpoints inside its network namespace.
//!
//! The sandbox has loopback only, so a tool that ignores these variables
//! fails to connect (no route); it cannot bypass the allowlist. Names are
//! resolved by the proxy (`socks5h`, CONNECT by name): there is no resolver
//! inside.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::env::EnvMap;

/// The HTTP proxy (CONNECT and absolute-form requests) inside a sandbox.
pub const HTTP_PROXY_ENDPOINT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3128);
/// The SOCKS5 proxy inside a sandbox.
pub const SOCKS_PROXY_ENDPOINT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1080);

pub const HTTP_PROXY_URL: &str = "http://127.0.0.1:3128";
/// `socks5h`: the proxy resolves names (`socks5` would make the client
/// resolve them, and there is no resolver in the sandbox).
pub const SOCKS_PROXY_URL: &str = "socks5h://127.0.0.1:1080";
/// Loopback stays direct: it is the sandbox's own.
pub const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// Every variable, in a stable order.
pub const PROXY_ENV: [(&str, &str); 14] = [
    // The convention read by curl and libcurl users (git over HTTP(S)),
    // Python's urllib and requests (pip), cargo, Go, reqwest, npm, Deno,
    // Bun, gRPC. curl reads only the lower-case `http_proxy`; others
    // prefer the upper case.
    ("HTTP_PROXY", HTTP_PROXY_URL),
    ("HTTPS_PROXY", HTTP_PROXY_URL),
    ("http_proxy", HTTP_PROXY_URL),
    ("https_proxy", HTTP_PROXY_URL),
    // Everything else (curl, git, and other libcurl users for non-HTTP
    // protocols; tools that take one proxy for all).
    ("ALL_PROXY", SOCKS_PROXY_URL),
    ("all_proxy", SOCKS_PROXY_URL),
    ("NO_PROXY", NO_PROXY),
    ("no_proxy", NO_PROXY),
    // Node.js >= 24 (backported to late 22.x): built-in `fetch` (and in
    // later releases the `http`/`https` modules) use HTTP(S)_PROXY and
    // NO_PROXY only when this is set; older Node ignores it.
    ("NODE_USE_ENV_PROXY", "1"),
    // npm reads these as its `proxy` / `https-proxy` settings; Yarn 1
    // (classic) reads only these, not HTTP(S)_PROXY (since 1.9).
    ("npm_config_proxy", HTTP_PROXY_URL),
    ("npm_config_https_proxy", HTTP_PROXY_URL),
    // Yarn 2+ (berry) ignores HTTP(S)_PROXY and reads only its own
    // settings, `httpProxy` / `httpsProxy`, as YARN_* variables. No
    // YARN_NO_PROXY: berry has no such setting and refuses to start.
    ("YARN_HTTP_PROXY", HTTP_PROXY_URL),
    ("YARN_HTTPS_PROXY", HTTP_PROXY_URL),
    // rsync's daemon protocol (`rsync host::module`) through an HTTP
    // CONNECT proxy; host:port, no scheme.
    ("RSYNC_PROXY", "127.0.0.1:3128"),
];

/// The proxy variables every sandboxed process gets.
pub fn proxy_env() -> EnvMap {
    PROXY_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Sets the proxy variables in `env`, replacing the client's (a proxy the
/// client names is unreachable from the sandbox's namespace anyway).
pub fn apply_proxy_env(env: &mut EnvMap) {
    env.extend(proxy_env());
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn env_table() {
        let env = proxy_env();
        let want: [(&str, &str); 14] = [
            ("ALL_PROXY", "socks5h://127.0.0.1:1080"),
            ("HTTPS_PROXY", "http://127.0.0.1:3128"),
            ("HTTP_PROXY", "http://127.0.0.1:3128"),
            ("NODE_USE_ENV_PROXY", "1"),
            ("NO_PROXY", "localhost,127.0.0.1,::1"),
            ("RSYNC_PROXY", "127.0.0.1:3128"),
            ("YARN_HTTPS_PROXY", "http://127.0.0.1:3128"),
            ("YARN_HTTP_PROXY", "http://127.0.0.1:3128"),
            ("all_proxy", "socks5h://127.0.0.1:1080"),
            ("http_proxy", "http://127.0.0.1:3128"),
            ("https_proxy", "http://127.0.0.1:3128"),
            ("no_proxy", "localhost,127.0.0.1,::1"),
            ("npm_config_https_proxy", "http://127.0.0.1:3128"),
            ("npm_config_proxy", "http://127.0.0.1:3128"),
        ];
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn urls_match_endpoints() {
        assert_eq!(HTTP_PROXY_URL, format!("http://{HTTP_PROXY_ENDPOINT}"));
        assert_eq!(SOCKS_PROXY_URL, format!("socks5h://{SOCKS_PROXY_ENDPOINT}"));
        assert_eq!(HTTP_PROXY_ENDPOINT.to_string(), "127.0.0.1:3128");
        assert_eq!(SOCKS_PROXY_ENDPOINT.to_string(), "127.0.0.1:1080");
    }

    #[test]
    fn apply_replaces_client_proxies() {
        let mut env = EnvMap::new();
        env.insert("HTTPS_PROXY".into(), "http://corp-proxy:8080".into());
        env.insert("PATH".into(), "/usr/bin".into());
        apply_proxy_env(&mut env);
        assert_eq!(env["HTTPS_PROXY"], HTTP_PROXY_URL);
        assert_eq!(env["PATH"], "/usr/bin");
        assert_eq!(env.len(), PROXY_ENV.len() + 1);
    }
}
