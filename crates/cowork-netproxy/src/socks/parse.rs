//! SOCKS5 (RFC 1928) server-side messages as pure functions over bytes,
//! strict, for the server and for fuzzing.
//!
//! Each parser looks at the bytes received so far and answers
//! [`Parsed::Incomplete`] (read more), [`Parsed::Invalid`] (close, maybe
//! after [`SocksParseError::reply_code`]) or [`Parsed::Complete`] with the
//! message and the number of bytes it took; what follows belongs to the
//! next message (clients may pipeline the request after the greeting, and
//! data after the request).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The protocol version byte.
pub const VERSION: u8 = 5;
/// The "no authentication required" method.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// "No acceptable methods".
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
/// The longest greeting: version, count, 255 methods.
pub const MAX_GREETING_LEN: usize = 2 + 255;
/// The longest request: 4 header bytes, a length byte, 255 name bytes, port.
pub const MAX_REQUEST_LEN: usize = 4 + 1 + 255 + 2;

/// Reply codes (RFC 1928 section 6).
pub mod reply {
    pub const SUCCEEDED: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED_BY_RULESET: u8 = 0x02;
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const TTL_EXPIRED: u8 = 0x06;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// A parser's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// More bytes are needed.
    Incomplete,
    /// The bytes cannot be this message.
    Invalid(SocksParseError),
    /// The message and how many bytes it took.
    Complete(T, usize),
}

/// Why bytes are not a valid SOCKS5 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksParseError {
    #[error("version {0:#04x} is not SOCKS5")]
    Version(u8),
    #[error("the greeting offers no authentication method")]
    NoMethods,
    #[error("the reserved byte is {0:#04x}, not 0")]
    Reserved(u8),
    #[error("address type {0:#04x} is not supported")]
    AddressType(u8),
    #[error("the domain name is empty")]
    EmptyDomain,
    #[error("the domain name is not UTF-8")]
    DomainNotUtf8,
}

impl SocksParseError {
    /// The reply to send before closing, for errors in a request (none for
    /// a bad greeting: there is no reply format to use before the method
    /// is chosen).
    pub fn reply_code(&self) -> Option<u8> {
        match self {
            SocksParseError::AddressType(_) => Some(reply::ADDRESS_TYPE_NOT_SUPPORTED),
            SocksParseError::NoMethods => None,
            _ => Some(reply::GENERAL_FAILURE),
        }
    }
}

/// The client's method-selection message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub methods: Vec<u8>,
}

impl Greeting {
    /// Whether the client offers "no authentication", the only method
    /// served.
    pub fn offers_no_auth(&self) -> bool {
        self.methods.contains(&METHOD_NO_AUTH)
    }
}

/// A request's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
    Other(u8),
}

impl Command {
    fn from_byte(b: u8) -> Command {
        match b {
            1 => Command::Connect,
            2 => Command::Bind,
            3 => Command::UdpAssociate,
            other => Command::Other(other),
        }
    }
}

/// A request's destination address, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Ipv4(Ipv4Addr),
    /// The name as sent (UTF-8, 1 to 255 bytes, not yet normalized).
    Domain(String),
    Ipv6(Ipv6Addr),
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub address: Address,
    pub port: u16,
}

/// Parses the method-selection message: `05 N methods[N]`.
pub fn parse_greeting(buf: &[u8]) -> Parsed<Greeting> {
    let [version, count, rest @ ..] = buf else {
        return match buf.first() {
            Some(&v) if v != VERSION => Parsed::Invalid(SocksParseError::Version(v)),
            _ => Parsed::Incomplete,
        };
    };
    if *version != VERSION {
        return Parsed::Invalid(SocksParseError::Version(*version));
    }
    let count = usize::from(*count);
    if count == 0 {
        return Parsed::Invalid(SocksParseError::NoMethods);
    }
    match rest.get(..count) {
        Some(methods) => Parsed::Complete(
            Greeting {
                methods: methods.to_vec(),
            },
            2 + count,
        ),
        None => Parsed::Incomplete,
    }
}

/// Parses a request: `05 CMD 00 ATYP ADDR PORT`.
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    // Judge each byte as soon as it is there, so garbage fails fast.
    if let Some(&v) = buf.first().filter(|&&v| v != VERSION) {
        return Parsed::Invalid(SocksParseError::Version(v));
    }
    if let Some(&rsv) = buf.get(2).filter(|&&rsv| rsv != 0) {
        return Parsed::Invalid(SocksParseError::Reserved(rsv));
    }
    let [_, command, _, atyp, rest @ ..] = buf else {
        return Parsed::Incomplete;
    };
    let command = Command::from_byte(*command);
    let (address, addr_len) = match *atyp {
        1 => match rest.get(..4) {
            Some(b) => (Address::Ipv4(Ipv4Addr::new(b[0], b[1], b[2], b[3])), 4),
            None => return Parsed::Incomplete,
        },
        4 => match rest.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
            Some(b) => (Address::Ipv6(Ipv6Addr::from(b)), 16),
            None => return Parsed::Incomplete,
        },
        3 => {
            let Some(&len) = rest.first() else {
                return Parsed::Incomplete;
            };
            let len = usize::from(len);
            if len == 0 {
                return Parsed::Invalid(SocksParseError::EmptyDomain);
            }
            let Some(name) = rest.get(1..1 + len) else {
                return Parsed::Incomplete;
            };
            match std::str::from_utf8(name) {
                Ok(name) => (Address::Domain(name.to_owned()), 1 + len),
                Err(_) => return Parsed::Invalid(SocksParseError::DomainNotUtf8),
            }
        }
        other => return Parsed::Invalid(SocksParseError::AddressType(other)),
    };
    match rest.get(addr_len..addr_len + 2) {
        Some(&[hi, lo]) => Parsed::Complete(
            Request {
                command,
                address,
                port: u16::from_be_bytes([hi, lo]),
            },
            4 + addr_len + 2,
        ),
        _ => Parsed::Incomplete,
    }
}

/// A reply: `05 REP 00 ATYP BND.ADDR BND.PORT`.
pub fn encode_reply(code: u8, bound: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[VERSION, code, 0]);
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn greeting_table() {
        let g = |m: &[u8]| Greeting {
            methods: m.to_vec(),
        };
        let cases: Vec<(&[u8], Parsed<Greeting>)> = vec![
            (b"", Parsed::Incomplete),
            (b"\x05", Parsed::Incomplete),
            (b"\x05\x01", Parsed::Incomplete),
            (b"\x05\x01\x00", Parsed::Complete(g(&[0]), 3)),
            (b"\x05\x02\x02\x00\x05\x01", Parsed::Complete(g(&[2, 0]), 4)),
            (b"\x05\x00", Parsed::Invalid(SocksParseError::NoMethods)),
            (
                b"\x04\x01\x00",
                Parsed::Invalid(SocksParseError::Version(4)),
            ),
            (b"G", Parsed::Invalid(SocksParseError::Version(b'G'))),
            (
                b"GET / HTTP/1.1",
                Parsed::Invalid(SocksParseError::Version(b'G')),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse_greeting(bytes), want, "{bytes:?}");
        }
        assert!(g(&[2, 0]).offers_no_auth());
        assert!(!g(&[2]).offers_no_auth());
        let mut long = vec![5, 255];
        long.extend(std::iter::repeat_n(2, 255));
        assert_eq!(
            parse_greeting(&long),
            Parsed::Complete(g(&long[2..]), MAX_GREETING_LEN)
        );
    }

    #[test]
    fn request_table() {
        let req = |command, address, port| Request {
            command,
            address,
            port,
        };
        let v4 = |s: &str| Address::Ipv4(s.parse().unwrap());
        let v6 = |s: &str| Address::Ipv6(s.parse().unwrap());
        let dom = |s: &str| Address::Domain(s.into());
        let cases: Vec<(&[u8], Parsed<Request>)> = vec![
            (b"", Parsed::Incomplete),
            (b"\x05\x01\x00", Parsed::Incomplete),
            (b"\x05\x01\x00\x01\x7f\x00\x00", Parsed::Incomplete),
            (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00", Parsed::Incomplete),
            (
                b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
                Parsed::Complete(req(Command::Connect, v4("127.0.0.1"), 80), 10),
            ),
            (
                b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50extra",
                Parsed::Complete(req(Command::Connect, v4("127.0.0.1"), 80), 10),
            ),
            (
                b"\x05\x01\x00\x03\x0bexample.com\x01\xbb",
                Parsed::Complete(req(Command::Connect, dom("example.com"), 443), 18),
            ),
            (b"\x05\x01\x00\x03\x0bexample.co", Parsed::Incomplete),
            (b"\x05\x01\x00\x03", Parsed::Incomplete),
            (
                b"\x05\x01\x00\x04\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\x1f\x90",
                Parsed::Complete(req(Command::Connect, v6("::1"), 8080), 22),
            ),
            (b"\x05\x01\x00\x04\0\0\0\0\0\0\0\0", Parsed::Incomplete),
            (
                b"\x05\x02\x00\x01\x01\x02\x03\x04\x00\x15",
                Parsed::Complete(req(Command::Bind, v4("1.2.3.4"), 21), 10),
            ),
            (
                b"\x05\x03\x00\x01\x01\x02\x03\x04\x00\x00",
                Parsed::Complete(req(Command::UdpAssociate, v4("1.2.3.4"), 0), 10),
            ),
            (
                b"\x05\x09\x00\x01\x01\x02\x03\x04\x00\x01",
                Parsed::Complete(req(Command::Other(9), v4("1.2.3.4"), 1), 10),
            ),
            (b"\x04\x01", Parsed::Invalid(SocksParseError::Version(4))),
            (
                b"\x05\x01\x01",
                Parsed::Invalid(SocksParseError::Reserved(1)),
            ),
            (
                b"\x05\x01\x00\x02",
                Parsed::Invalid(SocksParseError::AddressType(2)),
            ),
            (
                b"\x05\x01\x00\x03\x00\x00\x50",
                Parsed::Invalid(SocksParseError::EmptyDomain),
            ),
            (
                b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50",
                Parsed::Invalid(SocksParseError::DomainNotUtf8),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse_request(bytes), want, "{bytes:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_valid_message_is_incomplete() {
        let msgs: [&[u8]; 3] = [
            b"\x05\x01\x00\x03\x0bexample.com\x01\xbb",
            b"\x05\x01\x00\x04\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\x1f\x90",
            b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
        ];
        for msg in msgs {
            for end in 0..msg.len() {
                assert_eq!(parse_request(&msg[..end]), Parsed::Incomplete, "{end}");
            }
        }
    }

    #[test]
    fn replies() {
        let cases: [(u8, &str, &[u8]); 3] = [
            (
                reply::SUCCEEDED,
                "0.0.0.0:0",
                b"\x05\x00\x00\x01\0\0\0\0\0\0",
            ),
            (
                reply::NOT_ALLOWED_BY_RULESET,
                "10.1.2.3:1080",
                b"\x05\x02\x00\x01\x0a\x01\x02\x03\x04\x38",
            ),
            (
                reply::HOST_UNREACHABLE,
                "[::1]:80",
                b"\x05\x04\x00\x04\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\x00\x50",
            ),
        ];
        for (code, bound, want) in cases {
            assert_eq!(encode_reply(code, bound.parse().unwrap()), want);
        }
        assert_eq!(
            SocksParseError::AddressType(9).reply_code(),
            Some(reply::ADDRESS_TYPE_NOT_SUPPORTED)
        );
        assert_eq!(
            SocksParseError::Reserved(1).reply_code(),
            Some(reply::GENERAL_FAILURE)
        );
    }
}
