//! A requested destination, as it arrives in a CONNECT authority, an
//! absolute URI, a `Host` header or a SOCKS5 address, normalized like the
//! allowlist patterns (see [`super::host`]).

use std::fmt;
use std::net::IpAddr;

use super::host::{Brackets, Host, HostError, parse_host};

/// A normalized host and a port (never 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

/// Why a requested target is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("host {0}")]
    Host(#[from] HostError),
    #[error("the authority has no port")]
    MissingPort,
    #[error("the port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    #[error("the authority carries user information ('@')")]
    UserInfo,
    #[error("unexpected text after the bracketed IPv6 address")]
    AfterBracket,
}

impl Target {
    /// A target from a host (no port) and a port: a SOCKS5 domain, the host
    /// of a parsed URI. A bare IPv6 address is accepted here (no port can
    /// follow it); `[v6]` too.
    pub fn new(host: &str, port: u16) -> Result<Target, TargetError> {
        let host = parse_host(host, Brackets::Optional)?;
        Target::from_host(host, port)
    }

    /// A target from an address (a SOCKS5 IPv4/IPv6 request); an
    /// IPv4-mapped IPv6 address is decoded. Fails only for port 0.
    pub fn from_ip(ip: IpAddr, port: u16) -> Result<Target, TargetError> {
        Target::from_host(Host::from_ip(ip), port)
    }

    fn from_host(host: Host, port: u16) -> Result<Target, TargetError> {
        if port == 0 {
            return Err(TargetError::BadPort("0".into()));
        }
        Ok(Target { host, port })
    }

    /// Parses `host:port` or `[v6]:port` (a CONNECT authority); the port is
    /// required.
    pub fn parse_authority(authority: &str) -> Result<Target, TargetError> {
        Target::parse_authority_inner(authority, None)
    }

    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (a `Host` header,
    /// an absolute URI's authority); a missing port is `default_port`.
    pub fn parse_authority_or(authority: &str, default_port: u16) -> Result<Target, TargetError> {
        Target::parse_authority_inner(authority, Some(default_port))
    }

    fn parse_authority_inner(
        authority: &str,
        default_port: Option<u16>,
    ) -> Result<Target, TargetError> {
        if authority.contains('@') {
            return Err(TargetError::UserInfo);
        }
        let (host, port) = split_host_port(authority)?;
        let port = match (port, default_port) {
            (Some(port), _) => parse_port(port)?,
            (None, Some(default)) => default,
            (None, None) => return Err(TargetError::MissingPort),
        };
        let host = parse_host(host, Brackets::Required)?;
        Target::from_host(host, port)
    }
}

/// Shown as an authority: `host:port`, `[v6]:port`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Splits `host[:port]` / `[v6][:port]` without judging either part,
/// except that an unbracketed IPv6 address (several colons) is an error.
pub(crate) fn split_host_port(input: &str) -> Result<(&str, Option<&str>), TargetError> {
    if input.starts_with('[') {
        let Some(close) = input.find(']') else {
            return Err(HostError::BadIpv6.into());
        };
        let (host, rest) = input.split_at(close + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(TargetError::AfterBracket),
            },
        };
    }
    match input.matches(':').count() {
        0 => Ok((input, None)),
        1 => Ok(input
            .split_once(':')
            .map_or((input, None), |(h, p)| (h, Some(p)))),
        _ => Err(HostError::UnbracketedIpv6.into()),
    }
}

/// A decimal port from 1 to 65535 (at most 5 digits, no sign).
pub(crate) fn parse_port(port: &str) -> Result<u16, TargetError> {
    let bad = || TargetError::BadPort(port.chars().take(16).collect());
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn t(host: Host, port: u16) -> Result<Target, TargetError> {
        Ok(Target { host, port })
    }
    fn n(s: &str) -> Host {
        Host::Name(s.into())
    }
    fn i(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    #[test]
    fn authority_table() {
        let cases: Vec<(&str, Result<Target, TargetError>)> = vec![
            ("example.com:443", t(n("example.com"), 443)),
            ("EXAMPLE.com.:443", t(n("example.com"), 443)),
            ("bücher.example:80", t(n("xn--bcher-kva.example"), 80)),
            ("127.0.0.2:8080", t(i("127.0.0.2"), 8080)),
            ("[::1]:8080", t(i("::1"), 8080)),
            ("[::ffff:127.0.0.2]:22", t(i("127.0.0.2"), 22)),
            ("example.com:0443", t(n("example.com"), 443)),
            ("example.com", Err(TargetError::MissingPort)),
            ("[::1]", Err(TargetError::MissingPort)),
            ("example.com:", Err(TargetError::BadPort("".into()))),
            ("example.com:0", Err(TargetError::BadPort("0".into()))),
            (
                "example.com:65536",
                Err(TargetError::BadPort("65536".into())),
            ),
            ("example.com:+80", Err(TargetError::BadPort("+80".into()))),
            ("example.com:80a", Err(TargetError::BadPort("80a".into()))),
            (
                "example.com:100000",
                Err(TargetError::BadPort("100000".into())),
            ),
            ("::1:80", Err(HostError::UnbracketedIpv6.into())),
            ("[::1]80", Err(TargetError::AfterBracket)),
            ("[::1]:80:81", Err(TargetError::BadPort("80:81".into()))),
            ("[::1:80", Err(HostError::BadIpv6.into())),
            ("user:pw@example.com:80", Err(TargetError::UserInfo)),
            (":443", Err(HostError::Empty.into())),
            ("127.1:80", Err(HostError::NumericName.into())),
            ("exa mple.com:80", Err(HostError::Whitespace.into())),
        ];
        for (input, want) in cases {
            assert_eq!(Target::parse_authority(input), want, "{input:?}");
        }
    }

    #[test]
    fn default_port_table() {
        let cases: Vec<(&str, Result<Target, TargetError>)> = vec![
            ("example.com", t(n("example.com"), 80)),
            ("example.com:8080", t(n("example.com"), 8080)),
            ("[::1]", t(i("::1"), 80)),
            ("[::1]:81", t(i("::1"), 81)),
            ("::1", Err(HostError::UnbracketedIpv6.into())),
            ("", Err(HostError::Empty.into())),
        ];
        for (input, want) in cases {
            assert_eq!(Target::parse_authority_or(input, 80), want, "{input:?}");
        }
    }

    #[test]
    fn host_and_port_table() {
        let cases: Vec<(&str, u16, Result<Target, TargetError>)> = vec![
            ("Example.com", 443, t(n("example.com"), 443)),
            ("::1", 22, t(i("::1"), 22)),
            ("[::1]", 22, t(i("::1"), 22)),
            ("::ffff:10.1.2.3", 22, t(i("10.1.2.3"), 22)),
            ("10.1.2.3", 22, t(i("10.1.2.3"), 22)),
            ("example.com", 0, Err(TargetError::BadPort("0".into()))),
            ("example.com:80", 80, Err(HostError::BadChar(':').into())),
        ];
        for (host, port, want) in cases {
            assert_eq!(Target::new(host, port), want, "{host:?}");
        }
        assert_eq!(
            Target::from_ip("::ffff:127.0.0.1".parse().unwrap(), 80),
            t(i("127.0.0.1"), 80)
        );
    }

    #[test]
    fn display_is_an_authority() {
        let cases = [
            ("example.com:443", "example.com:443"),
            ("[::1]:80", "[::1]:80"),
            ("[::ffff:1.2.3.4]:80", "1.2.3.4:80"),
        ];
        for (input, shown) in cases {
            assert_eq!(Target::parse_authority(input).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn error_messages() {
        let cases = [
            ("example.com", "the authority has no port"),
            (
                "::1:80",
                "host is an IPv6 address without brackets (write it as [addr])",
            ),
            ("a b:80", "host contains whitespace or a control character"),
        ];
        for (input, msg) in cases {
            assert_eq!(Target::parse_authority(input).unwrap_err().to_string(), msg);
        }
    }
}
