//! Why a connection is refused, and how the refusal is shown to the
//! sandboxed program.
//!
//! HTTP proxy: `403 Forbidden` with `X-Proxy-Error: blocked-by-allowlist`,
//! `Connection: close` and a one-line body naming the destination, the
//! reason and how to allow it ([`http_denial`]). SOCKS5: reply code 0x02,
//! "connection not allowed by ruleset" (no text travels in SOCKS5; the
//! daemon's denial log carries [`denial_line`]).
//!
//! The hint is the caller's (the desktop client's users "add it to the
//! allowed domains", the CLI's "run with --allow-domain {host}"); `{host}`
//! in it is replaced by the refused host in allowlist syntax.

use std::fmt;
use std::net::SocketAddr;

use super::address::AddressRefusal;
use super::target::Target;

/// The header naming a proxy refusal.
pub const PROXY_ERROR_HEADER: &str = "X-Proxy-Error";
/// Its value for an allowlist refusal.
pub const BLOCKED_BY_ALLOWLIST: &str = "blocked-by-allowlist";

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No allowlist pattern matches.
    NotListed,
    /// A refused address, and whether it came from resolving a name (rather
    /// than being the requested IP literal).
    Address {
        refusal: AddressRefusal,
        via_name: bool,
    },
    /// The address is one of the proxy's own endpoints.
    ProxyLoop { addr: SocketAddr, via_name: bool },
}

/// Reads after the destination: "example.com:443 is not in the allowlist".
impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NotListed => f.write_str("is not in the allowlist"),
            DenyReason::Address {
                refusal,
                via_name: true,
            } => write!(
                f,
                "resolves to {refusal}, allowed only when the host is listed exactly"
            ),
            DenyReason::Address {
                refusal,
                via_name: false,
            } => write!(f, "is {refusal}, allowed only when listed exactly"),
            DenyReason::ProxyLoop {
                addr,
                via_name: true,
            } => write!(f, "resolves to this proxy's own endpoint ({addr})"),
            DenyReason::ProxyLoop {
                via_name: false, ..
            } => f.write_str("is this proxy's own endpoint"),
        }
    }
}

/// A refused destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{target} {reason}")]
pub struct Denial {
    pub target: Target,
    pub reason: DenyReason,
}

/// The one-line text of a refusal, ending in a newline: what, why, and
/// (when `hint` is not empty) how to allow it. `{host}` in `hint` is
/// replaced by the refused host.
pub fn denial_line(denial: &Denial, hint: &str) -> String {
    let mut line = format!("Blocked by the sandbox network allowlist: {denial}.");
    let hint = hint.trim().trim_end_matches('.');
    if !hint.is_empty() {
        let hint = hint.replace("{host}", &denial.target.host.to_string());
        line.push_str(" To allow it, ");
        line.push_str(&hint);
        line.push('.');
    }
    // One line whatever the hint holds.
    let mut line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.push('\n');
    line
}

/// An HTTP refusal, for the proxy to send as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpDenial {
    /// 403.
    pub status: u16,
    /// Header names and values (the body's length is the proxy's to add).
    pub headers: Vec<(&'static str, &'static str)>,
    /// [`denial_line`].
    pub body: String,
}

/// The HTTP 403 for a refusal.
pub fn http_denial(denial: &Denial, hint: &str) -> HttpDenial {
    HttpDenial {
        status: 403,
        headers: vec![
            (PROXY_ERROR_HEADER, BLOCKED_BY_ALLOWLIST),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Connection", "close"),
        ],
        body: denial_line(denial, hint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::address::vet_address;
    use pretty_assertions::assert_eq;

    fn denial(target: &str, reason: DenyReason) -> Denial {
        Denial {
            target: Target::parse_authority(target).unwrap(),
            reason,
        }
    }

    #[test]
    fn line_table() {
        let loopback = vet_address("127.0.0.1".parse().unwrap(), &[]).unwrap_err();
        let cases = [
            (
                denial("example.com:443", DenyReason::NotListed),
                "add it to the allowed domains",
                "Blocked by the sandbox network allowlist: example.com:443 is not in the \
                 allowlist. To allow it, add it to the allowed domains.\n",
            ),
            (
                denial("[::1]:80", DenyReason::NotListed),
                "run with --allow-domain {host}",
                "Blocked by the sandbox network allowlist: [::1]:80 is not in the allowlist. \
                 To allow it, run with --allow-domain [::1].\n",
            ),
            (
                denial(
                    "rebind.example:80",
                    DenyReason::Address {
                        refusal: loopback,
                        via_name: true,
                    },
                ),
                "run with --allow-domain {host}.",
                "Blocked by the sandbox network allowlist: rebind.example:80 resolves to a \
                 loopback address (127.0.0.1), allowed only when the host is listed exactly. \
                 To allow it, run with --allow-domain rebind.example.\n",
            ),
            (
                denial(
                    "127.0.0.1:80",
                    DenyReason::Address {
                        refusal: loopback,
                        via_name: false,
                    },
                ),
                "",
                "Blocked by the sandbox network allowlist: 127.0.0.1:80 is a loopback address \
                 (127.0.0.1), allowed only when listed exactly.\n",
            ),
            (
                denial(
                    "127.0.0.1:3128",
                    DenyReason::ProxyLoop {
                        addr: "127.0.0.1:3128".parse().unwrap(),
                        via_name: false,
                    },
                ),
                "multi\nline",
                "Blocked by the sandbox network allowlist: 127.0.0.1:3128 is this proxy's own \
                 endpoint. To allow it, multi line.\n",
            ),
        ];
        for (denial, hint, want) in cases {
            assert_eq!(denial_line(&denial, hint), want);
        }
    }

    #[test]
    fn http_403() {
        let d = denial("example.com:443", DenyReason::NotListed);
        let http = http_denial(&d, "add it to the allowed domains");
        assert_eq!(http.status, 403);
        assert_eq!(
            http.headers,
            vec![
                ("X-Proxy-Error", "blocked-by-allowlist"),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Connection", "close"),
            ]
        );
        assert_eq!(http.body, denial_line(&d, "add it to the allowed domains"));
        assert_eq!(d.to_string(), "example.com:443 is not in the allowlist");
    }
}
