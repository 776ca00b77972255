//! One `allowedDomains` entry.
//!
//! Grammar (`[:port]` optional on every form; without it any port matches):
//!
//! | entry | matches |
//! | --- | --- |
//! | `example.com` | that name (case-insensitive, trailing dot ignored, IDN in punycode) |
//! | `*.example.com` | strict subdomains only (`a.example.com`, `a.b.example.com`), not `example.com` |
//! | `*` | every host; resolved addresses are still vetted |
//! | `127.0.0.2`, `[::1]` | that IP literal (IPv6 in brackets) |
//!
//! Anything else is refused with an [`InvalidPattern`] reason: schemes,
//! paths, user information, mid-string or partial wildcards (`a*.com`,
//! `a.*.com`, `**.com`), one-label wildcard bases (`*.com`), wildcards on
//! IP literals, empty labels, bad ports, unbracketed IPv6, whitespace,
//! over-long names. A refused entry is ignored: it never widens access.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::host::{Brackets, Host, HostError, parse_host};
use super::target::{Target, TargetError, parse_port, split_host_port};

/// The host part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `*`: every host.
    Any,
    /// An exact normalized name.
    Exact(String),
    /// `*.base`: names strictly under `base` (normalized, two labels or more).
    Subdomains(String),
    /// An exact IP literal.
    Ip(IpAddr),
}

/// A valid, normalized `allowedDomains` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    pub host: HostPattern,
    /// `None`: any port.
    pub port: Option<u16>,
}

/// How a pattern matched a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// An exact name or IP literal: waives the resolved-address checks.
    Exact,
    /// `*` or `*.base`.
    Wildcard,
}

impl Pattern {
    /// Parses one entry.
    pub fn parse(entry: &str) -> Result<Pattern, PatternError> {
        parse_pattern(entry).map_err(|reason| PatternError {
            entry: entry.chars().take(300).collect(),
            reason,
        })
    }

    /// How this pattern matches `target`, if it does.
    pub fn matches(&self, target: &Target) -> Option<Match> {
        if self.port.is_some_and(|port| port != target.port) {
            return None;
        }
        match (&self.host, &target.host) {
            (HostPattern::Any, _) => Some(Match::Wildcard),
            (HostPattern::Exact(want), Host::Name(name)) if want == name => Some(Match::Exact),
            (HostPattern::Subdomains(base), Host::Name(name)) => name
                .strip_suffix(base.as_str())
                .filter(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
                .map(|_| Match::Wildcard),
            (HostPattern::Ip(want), Host::Ip(ip)) if want == ip => Some(Match::Exact),
            _ => None,
        }
    }
}

impl FromStr for Pattern {
    type Err = PatternError;
    fn from_str(entry: &str) -> Result<Pattern, PatternError> {
        Pattern::parse(entry)
    }
}

/// The canonical text of the pattern: parsing it gives the same pattern.
impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Exact(name) => f.write_str(name)?,
            HostPattern::Subdomains(base) => write!(f, "*.{base}")?,
            HostPattern::Ip(ip) => write!(f, "{}", Host::Ip(*ip))?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// An entry that was refused, and why. Displayed for the daemon's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowed-domains entry {entry:?} ignored: {reason}")]
pub struct PatternError {
    /// The entry as given (at most 300 characters of it).
    pub entry: String,
    pub reason: InvalidPattern,
}

/// Why an entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPattern {
    #[error("it is empty")]
    Empty,
    #[error("it contains whitespace or a control character")]
    Whitespace,
    #[error("it has a scheme; write the host name only (example.com)")]
    Scheme,
    #[error("it has a path; write the host name only (example.com)")]
    Path,
    #[error("it has user information ('@')")]
    UserInfo,
    #[error("'*' is only allowed alone or as a leading '*.' label")]
    Wildcard,
    #[error("a wildcard needs a base of two labels or more (*.example.com, not *.com)")]
    WildcardBaseTooShort,
    #[error("a wildcard cannot apply to an IP address")]
    WildcardOnIp,
    #[error("the port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    #[error("the host {0}")]
    Host(HostError),
}

impl From<TargetError> for InvalidPattern {
    fn from(e: TargetError) -> InvalidPattern {
        match e {
            TargetError::Host(e) => InvalidPattern::Host(e),
            TargetError::BadPort(p) => InvalidPattern::BadPort(p),
            TargetError::UserInfo => InvalidPattern::UserInfo,
            TargetError::AfterBracket => InvalidPattern::Host(HostError::BadIpv6),
            TargetError::MissingPort => InvalidPattern::BadPort(String::new()),
        }
    }
}

fn parse_pattern(entry: &str) -> Result<Pattern, InvalidPattern> {
    if entry.is_empty() {
        return Err(InvalidPattern::Empty);
    }
    if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidPattern::Whitespace);
    }
    if entry.contains("://") {
        return Err(InvalidPattern::Scheme);
    }
    if entry.contains(['/', '?', '#']) {
        return Err(InvalidPattern::Path);
    }
    if entry.contains('@') {
        return Err(InvalidPattern::UserInfo);
    }
    // `*` and `*:port`.
    if let Some(rest) = entry
        .strip_prefix('*')
        .filter(|r| r.is_empty() || r.starts_with(':'))
    {
        let port = rest.strip_prefix(':').map(parse_port).transpose()?;
        return Ok(Pattern {
            host: HostPattern::Any,
            port,
        });
    }
    // `*.base[:port]`.
    if let Some(rest) = entry.strip_prefix("*.") {
        if rest.starts_with('[') {
            return Err(InvalidPattern::WildcardOnIp);
        }
        if rest.contains('*') {
            return Err(InvalidPattern::Wildcard);
        }
        let (base, port) = split_host_port(rest)?;
        let port = port.map(parse_port).transpose()?;
        let host = match parse_host(base, Brackets::Required) {
            Ok(Host::Name(base)) if base.contains('.') => HostPattern::Subdomains(base),
            Ok(Host::Name(_)) => return Err(InvalidPattern::WildcardBaseTooShort),
            Ok(Host::Ip(_)) | Err(HostError::NumericName) => {
                return Err(InvalidPattern::WildcardOnIp);
            }
            Err(e) => return Err(InvalidPattern::Host(e)),
        };
        return Ok(Pattern { host, port });
    }
    if entry.contains('*') {
        return Err(InvalidPattern::Wildcard);
    }
    let (host, port) = split_host_port(entry)?;
    let port = port.map(parse_port).transpose()?;
    let host = match parse_host(host, Brackets::Required).map_err(InvalidPattern::Host)? {
        Host::Name(name) => HostPattern::Exact(name),
        Host::Ip(ip) => HostPattern::Ip(ip),
    };
    Ok(Pattern { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn exact(name: &str, port: Option<u16>) -> Result<Pattern, InvalidPattern> {
        Ok(Pattern {
            host: HostPattern::Exact(name.into()),
            port,
        })
    }
    fn sub(base: &str, port: Option<u16>) -> Result<Pattern, InvalidPattern> {
        Ok(Pattern {
            host: HostPattern::Subdomains(base.into()),
            port,
        })
    }
    fn ip(addr: &str, port: Option<u16>) -> Result<Pattern, InvalidPattern> {
        Ok(Pattern {
            host: HostPattern::Ip(addr.parse().unwrap()),
            port,
        })
    }
    fn any(port: Option<u16>) -> Result<Pattern, InvalidPattern> {
        Ok(Pattern {
            host: HostPattern::Any,
            port,
        })
    }

    #[test]
    fn parse_table() {
        let label = "a".repeat(63);
        let long = format!("{label}.{label}.{label}.{label}.com");
        let long_label = format!("{}.com", "a".repeat(64));
        let cases: Vec<(&str, Result<Pattern, InvalidPattern>)> = vec![
            ("example.com", exact("example.com", None)),
            ("EXAMPLE.Com.", exact("example.com", None)),
            ("Bücher.example", exact("xn--bcher-kva.example", None)),
            (
                "xn--bcher-kva.example",
                exact("xn--bcher-kva.example", None),
            ),
            ("localhost", exact("localhost", None)),
            ("example.com:443", exact("example.com", Some(443))),
            ("*.example.com", sub("example.com", None)),
            ("*.Example.COM.", sub("example.com", None)),
            ("*.co.uk", sub("co.uk", None)),
            ("*.example.com:8443", sub("example.com", Some(8443))),
            ("*.bücher.example", sub("xn--bcher-kva.example", None)),
            ("*", any(None)),
            ("*:443", any(Some(443))),
            ("127.0.0.2", ip("127.0.0.2", None)),
            ("127.0.0.2:8080", ip("127.0.0.2", Some(8080))),
            ("[::1]", ip("::1", None)),
            ("[::1]:8080", ip("::1", Some(8080))),
            ("[::ffff:127.0.0.2]", ip("127.0.0.2", None)),
            ("[2001:DB8::1]:443", ip("2001:db8::1", Some(443))),
            // Refused.
            ("", Err(InvalidPattern::Empty)),
            (" example.com", Err(InvalidPattern::Whitespace)),
            ("example.com ", Err(InvalidPattern::Whitespace)),
            ("exa\tmple.com", Err(InvalidPattern::Whitespace)),
            ("http://example.com", Err(InvalidPattern::Scheme)),
            ("https://example.com/", Err(InvalidPattern::Scheme)),
            ("example.com/path", Err(InvalidPattern::Path)),
            ("example.com?q", Err(InvalidPattern::Path)),
            ("example.com#f", Err(InvalidPattern::Path)),
            ("user@example.com", Err(InvalidPattern::UserInfo)),
            ("a*.com", Err(InvalidPattern::Wildcard)),
            ("a.*.com", Err(InvalidPattern::Wildcard)),
            ("*a.example.com", Err(InvalidPattern::Wildcard)),
            ("**.example.com", Err(InvalidPattern::Wildcard)),
            ("*.*.example.com", Err(InvalidPattern::Wildcard)),
            ("example.*", Err(InvalidPattern::Wildcard)),
            ("*.com", Err(InvalidPattern::WildcardBaseTooShort)),
            ("*.com.", Err(InvalidPattern::WildcardBaseTooShort)),
            ("*.", Err(InvalidPattern::Host(HostError::Empty))),
            ("*.127.0.0.1", Err(InvalidPattern::WildcardOnIp)),
            ("*.[::1]", Err(InvalidPattern::WildcardOnIp)),
            ("*.0.1", Err(InvalidPattern::WildcardOnIp)),
            (
                "a..example.com",
                Err(InvalidPattern::Host(HostError::EmptyLabel)),
            ),
            (
                ".example.com",
                Err(InvalidPattern::Host(HostError::EmptyLabel)),
            ),
            (
                "*..example.com",
                Err(InvalidPattern::Host(HostError::EmptyLabel)),
            ),
            ("example.com:", Err(InvalidPattern::BadPort("".into()))),
            ("example.com:0", Err(InvalidPattern::BadPort("0".into()))),
            (
                "example.com:65536",
                Err(InvalidPattern::BadPort("65536".into())),
            ),
            (
                "example.com:https",
                Err(InvalidPattern::BadPort("https".into())),
            ),
            ("*:x", Err(InvalidPattern::BadPort("x".into()))),
            ("::1", Err(InvalidPattern::Host(HostError::UnbracketedIpv6))),
            (
                "fe80::1",
                Err(InvalidPattern::Host(HostError::UnbracketedIpv6)),
            ),
            ("[::1", Err(InvalidPattern::Host(HostError::BadIpv6))),
            ("[::1]x", Err(InvalidPattern::Host(HostError::BadIpv6))),
            (
                "[fe80::1%25eth0]",
                Err(InvalidPattern::Host(HostError::BadIpv6)),
            ),
            (long.as_str(), Err(InvalidPattern::Host(HostError::TooLong))),
            (
                long_label.as_str(),
                Err(InvalidPattern::Host(HostError::LabelTooLong)),
            ),
            ("127.1", Err(InvalidPattern::Host(HostError::NumericName))),
            (
                "ex%41mple.com",
                Err(InvalidPattern::Host(HostError::BadChar('%'))),
            ),
            ("exa_mple.com", exact("exa_mple.com", None)),
        ];
        for (entry, want) in cases {
            let got = Pattern::parse(entry).map_err(|e| {
                assert_eq!(e.entry, entry);
                e.reason
            });
            assert_eq!(got, want, "{entry:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        let entries = [
            ("example.com", "example.com"),
            ("EXAMPLE.com.:443", "example.com:443"),
            ("*.Bücher.example:8443", "*.xn--bcher-kva.example:8443"),
            ("*", "*"),
            ("*:80", "*:80"),
            ("127.0.0.2:8080", "127.0.0.2:8080"),
            ("[::1]", "[::1]"),
            ("[::FFFF:7f00:2]:1", "127.0.0.2:1"),
        ];
        for (entry, canonical) in entries {
            let pattern = Pattern::parse(entry).unwrap();
            assert_eq!(pattern.to_string(), canonical);
            assert_eq!(Pattern::parse(canonical).unwrap(), pattern);
        }
    }

    #[test]
    fn match_table() {
        let target = |s: &str| Target::parse_authority(s).unwrap();
        let cases: Vec<(&str, &str, Option<Match>)> = vec![
            ("example.com", "example.com:443", Some(Match::Exact)),
            ("example.com", "EXAMPLE.COM.:80", Some(Match::Exact)),
            ("example.com", "a.example.com:443", None),
            ("example.com", "example.org:443", None),
            ("example.com", "notexample.com:443", None),
            (
                "Bücher.example",
                "xn--bcher-kva.example:443",
                Some(Match::Exact),
            ),
            (
                "xn--bcher-kva.example",
                "bücher.example:443",
                Some(Match::Exact),
            ),
            ("example.com:443", "example.com:443", Some(Match::Exact)),
            ("example.com:443", "example.com:80", None),
            ("*.example.com", "a.example.com:443", Some(Match::Wildcard)),
            ("*.example.com", "a.b.example.com:1", Some(Match::Wildcard)),
            ("*.example.com", "example.com:443", None),
            ("*.example.com", "aexample.com:443", None),
            ("*.example.com", "a.example.com.evil:443", None),
            (
                "*.example.com:8443",
                "a.example.com:8443",
                Some(Match::Wildcard),
            ),
            ("*.example.com:8443", "a.example.com:443", None),
            ("*", "anything.example:1", Some(Match::Wildcard)),
            ("*", "8.8.8.8:53", Some(Match::Wildcard)),
            ("*", "[::1]:53", Some(Match::Wildcard)),
            ("*:443", "x.example:443", Some(Match::Wildcard)),
            ("*:443", "x.example:80", None),
            ("127.0.0.2", "127.0.0.2:8080", Some(Match::Exact)),
            ("127.0.0.2", "[::ffff:127.0.0.2]:8080", Some(Match::Exact)),
            ("127.0.0.2", "127.0.0.3:8080", None),
            ("127.0.0.2:8080", "127.0.0.2:8081", None),
            ("[::1]:8080", "[::1]:8080", Some(Match::Exact)),
            ("[::1]", "[0:0::1]:1", Some(Match::Exact)),
            ("[::1]", "127.0.0.1:1", None),
            ("localhost", "localhost:80", Some(Match::Exact)),
            ("localhost", "127.0.0.1:80", None),
            ("example.com", "93.184.216.34:80", None),
        ];
        for (pattern, t, want) in cases {
            let pattern = Pattern::parse(pattern).unwrap();
            assert_eq!(pattern.matches(&target(t)), want, "{pattern} vs {t}");
        }
    }

    #[test]
    fn error_message() {
        assert_eq!(
            Pattern::parse("*.com").unwrap_err().to_string(),
            "allowed-domains entry \"*.com\" ignored: a wildcard needs a base of two labels \
             or more (*.example.com, not *.com)"
        );
        assert_eq!(
            Pattern::parse("::1").unwrap_err().to_string(),
            "allowed-domains entry \"::1\" ignored: the host is an IPv6 address without \
             brackets (write it as [addr])"
        );
    }
}
