//! Host names and IP literals, normalized the same way for allowlist
//! patterns and for requested targets, so that comparing them is string
//! (or address) equality.
//!
//! Normal form of a name: ASCII, lower case, punycode for internationalized
//! labels (UTS 46 through [`idna::domain_to_ascii_cow`] with the URL deny
//! list), no trailing dot, labels of `[a-z0-9_-]`, 1 to 63 bytes each, 253
//! bytes in all. A name whose last label is a number (`127.1`, `0x7f.1`,
//! `2130706433`) is refused: resolvers read those as IPv4 addresses, so
//! they are neither names nor canonical addresses.
//!
//! Normal form of an IP literal: the address; an IPv4-mapped IPv6 literal
//! (`[::ffff:127.0.0.1]`) becomes the IPv4 address it maps.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest name accepted, in bytes, without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label accepted, in bytes (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// A normalized host: a name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A normalized DNS name (see the module docs).
    Name(String),
    /// An IP address (IPv4-mapped IPv6 already decoded).
    Ip(IpAddr),
}

impl Host {
    /// The host for an address, decoding an IPv4-mapped IPv6 address.
    pub fn from_ip(ip: IpAddr) -> Host {
        Host::Ip(canonical_ip(ip))
    }

    /// The name, if this is one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(name) => Some(name),
            Host::Ip(_) => None,
        }
    }
}

/// Shown as in an authority: IPv6 in brackets.
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Why a host is not valid. Displayed after the host ("... is empty").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("is empty")]
    Empty,
    #[error("contains whitespace or a control character")]
    Whitespace,
    #[error("contains {0:?}, which is not allowed in a host name")]
    BadChar(char),
    #[error("has an empty label")]
    EmptyLabel,
    #[error("has a label longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong,
    #[error("is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("is not a valid internationalized domain name")]
    Idna,
    #[error("is an IPv6 address without brackets (write it as [addr])")]
    UnbracketedIpv6,
    #[error("is not a valid bracketed IPv6 address")]
    BadIpv6,
    #[error("ends in a number but is not a dotted-quad IPv4 address")]
    NumericName,
}

/// Whether a bare IPv6 address (without brackets) is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brackets {
    /// IPv6 must be written `[addr]` (patterns, authorities).
    Required,
    /// `addr` is accepted too (a SOCKS5 domain field, where no port
    /// follows, so there is no ambiguity).
    Optional,
}

/// Parses and normalizes a host (no port).
pub fn parse_host(input: &str, brackets: Brackets) -> Result<Host, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(HostError::Whitespace);
    }
    if let Some(inner) = input.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(HostError::BadIpv6)?;
        // `Ipv6Addr::from_str` refuses zone ids (`%eth0`) and IPv4 forms.
        let ip: Ipv6Addr = inner.parse().map_err(|_| HostError::BadIpv6)?;
        return Ok(Host::from_ip(IpAddr::V6(ip)));
    }
    if input.contains(':') {
        return match (input.parse::<Ipv6Addr>(), brackets) {
            (Ok(ip), Brackets::Optional) => Ok(Host::from_ip(IpAddr::V6(ip))),
            (Ok(_), Brackets::Required) => Err(HostError::UnbracketedIpv6),
            (Err(_), _) if input.matches(':').count() > 1 => Err(HostError::UnbracketedIpv6),
            (Err(_), _) => Err(HostError::BadChar(':')),
        };
    }
    // Strict dotted quad: no octal, hex, short or leading-zero forms.
    if let Ok(ip) = input.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    normalize_name(input).map(Host::Name)
}

/// Normalizes a DNS name (see the module docs).
pub fn normalize_name(input: &str) -> Result<String, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if let Some(c) = input
        .chars()
        .find(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(if c.is_ascii_whitespace() || c.is_ascii_control() {
            HostError::Whitespace
        } else {
            HostError::BadChar(c)
        });
    }
    // Bound the work done on hostile input before the UTS 46 mapping.
    if input.len() > 4 * (MAX_NAME_LEN + 1) {
        return Err(HostError::TooLong);
    }
    let ascii = idna::domain_to_ascii_cow(input.as_bytes(), idna::AsciiDenyList::URL)
        .map_err(|_| HostError::Idna)?;
    let name = ascii.strip_suffix('.').unwrap_or(&ascii);
    if name.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    // The mapping may have produced characters the first check did not see
    // (full-width forms map to ASCII).
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(HostError::BadChar(c));
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong);
        }
        last = label;
    }
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong);
    }
    if is_numeric_label(last) {
        return Err(HostError::NumericName);
    }
    Ok(name.to_owned())
}

/// WHATWG "ends in a number": all decimal digits, or `0x` and hex digits.
fn is_numeric_label(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .map(|rest| rest.bytes().all(|b| b.is_ascii_hexdigit()));
    hex.unwrap_or_else(|| label.bytes().all(|b| b.is_ascii_digit()))
}

/// An IPv4-mapped IPv6 address as the IPv4 address; others unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn name(s: &str) -> Result<Host, HostError> {
        Ok(Host::Name(s.into()))
    }
    fn ip(s: &str) -> Result<Host, HostError> {
        Ok(Host::Ip(s.parse().unwrap()))
    }

    #[test]
    fn host_table() {
        let long_label = "a".repeat(64);
        let ok_label = "a".repeat(63);
        let long_name = format!("{ok_label}.{ok_label}.{ok_label}.{ok_label}");
        let max_name = format!("{ok_label}.{ok_label}.{ok_label}.{}", "a".repeat(61));
        let cases: Vec<(&str, Brackets, Result<Host, HostError>)> = vec![
            ("example.com", Brackets::Required, name("example.com")),
            ("Example.COM", Brackets::Required, name("example.com")),
            ("example.com.", Brackets::Required, name("example.com")),
            ("localhost", Brackets::Required, name("localhost")),
            (
                "under_score.example",
                Brackets::Required,
                name("under_score.example"),
            ),
            (
                "Bücher.example",
                Brackets::Required,
                name("xn--bcher-kva.example"),
            ),
            (
                "xn--bcher-kva.example",
                Brackets::Required,
                name("xn--bcher-kva.example"),
            ),
            (
                "XN--BCHER-KVA.example",
                Brackets::Required,
                name("xn--bcher-kva.example"),
            ),
            // Full-width letters and ideographic full stop map to ASCII.
            ("ｅxample。com", Brackets::Required, name("example.com")),
            ("127.0.0.2", Brackets::Required, ip("127.0.0.2")),
            ("[::1]", Brackets::Required, ip("::1")),
            ("[::ffff:127.0.0.1]", Brackets::Required, ip("127.0.0.1")),
            ("[::FFFF:7f00:1]", Brackets::Required, ip("127.0.0.1")),
            ("[2001:DB8::1]", Brackets::Required, ip("2001:db8::1")),
            ("::1", Brackets::Optional, ip("::1")),
            ("::ffff:10.0.0.1", Brackets::Optional, ip("10.0.0.1")),
            ("::1", Brackets::Required, Err(HostError::UnbracketedIpv6)),
            (
                "fe80::1%eth0",
                Brackets::Optional,
                Err(HostError::UnbracketedIpv6),
            ),
            (
                "[fe80::1%eth0]",
                Brackets::Required,
                Err(HostError::BadIpv6),
            ),
            ("[::1", Brackets::Required, Err(HostError::BadIpv6)),
            ("[example.com]", Brackets::Required, Err(HostError::BadIpv6)),
            ("[127.0.0.1]", Brackets::Required, Err(HostError::BadIpv6)),
            ("a:b", Brackets::Optional, Err(HostError::BadChar(':'))),
            ("", Brackets::Required, Err(HostError::Empty)),
            (".", Brackets::Required, Err(HostError::EmptyLabel)),
            ("a..b", Brackets::Required, Err(HostError::EmptyLabel)),
            (
                ".example.com",
                Brackets::Required,
                Err(HostError::EmptyLabel),
            ),
            (
                "example.com..",
                Brackets::Required,
                Err(HostError::EmptyLabel),
            ),
            (
                "exa mple.com",
                Brackets::Required,
                Err(HostError::Whitespace),
            ),
            (
                "example.com\n",
                Brackets::Required,
                Err(HostError::Whitespace),
            ),
            (
                "ex\u{0}ample.com",
                Brackets::Required,
                Err(HostError::Whitespace),
            ),
            (
                "exa%6dple.com",
                Brackets::Required,
                Err(HostError::BadChar('%')),
            ),
            (
                "user@example.com",
                Brackets::Required,
                Err(HostError::BadChar('@')),
            ),
            ("a*.com", Brackets::Required, Err(HostError::BadChar('*'))),
            ("a/b", Brackets::Required, Err(HostError::BadChar('/'))),
            (
                long_label.as_str(),
                Brackets::Required,
                Err(HostError::LabelTooLong),
            ),
            (max_name.as_str(), Brackets::Required, name(&max_name)),
            (
                long_name.as_str(),
                Brackets::Required,
                Err(HostError::TooLong),
            ),
            // Numbers a resolver would read as IPv4 are not names.
            ("127.1", Brackets::Required, Err(HostError::NumericName)),
            (
                "2130706433",
                Brackets::Required,
                Err(HostError::NumericName),
            ),
            (
                "0x7f.0.0.1",
                Brackets::Required,
                Err(HostError::NumericName),
            ),
            (
                "0x7f000001",
                Brackets::Required,
                Err(HostError::NumericName),
            ),
            (
                "127.0.0.01",
                Brackets::Required,
                Err(HostError::NumericName),
            ),
            ("1.2.3.4.5", Brackets::Required, Err(HostError::NumericName)),
            (
                "example.0x",
                Brackets::Required,
                Err(HostError::NumericName),
            ),
            ("1.example", Brackets::Required, name("1.example")),
            ("example.0xg", Brackets::Required, name("example.0xg")),
            ("xn--zz.example", Brackets::Required, Err(HostError::Idna)),
        ];
        for (input, brackets, want) in cases {
            assert_eq!(parse_host(input, brackets), want, "{input:?}");
        }
    }

    #[test]
    fn display_brackets_ipv6() {
        assert_eq!(Host::Ip("::1".parse().unwrap()).to_string(), "[::1]");
        assert_eq!(
            Host::Ip("10.0.0.1".parse().unwrap()).to_string(),
            "10.0.0.1"
        );
        assert_eq!(Host::Name("a.example".into()).to_string(), "a.example");
    }

    #[test]
    fn hostile_lengths_are_bounded() {
        let huge = "a.".repeat(100_000);
        assert_eq!(
            parse_host(&huge, Brackets::Required),
            Err(HostError::TooLong)
        );
    }
}
