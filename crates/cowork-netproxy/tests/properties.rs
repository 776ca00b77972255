//! Properties of the proxy's handshake parsers on generated inputs
//! (proptest; `fuzz/` has the long-running `cargo fuzz` targets): SOCKS5
//! greetings and requests, HTTP request heads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use cowork_netproxy::{
    HeadParse, Parsed, ProxyRequest, SocksAddress, SocksCommand, SocksRequest, parse_greeting,
    parse_request, parse_request_head,
};
use cowork_policy::net::Target;
use proptest::prelude::*;

fn command() -> impl Strategy<Value = (u8, SocksCommand)> {
    any::<u8>().prop_map(|b| {
        let c = match b {
            1 => SocksCommand::Connect,
            2 => SocksCommand::Bind,
            3 => SocksCommand::UdpAssociate,
            other => SocksCommand::Other(other),
        };
        (b, c)
    })
}

/// A SOCKS5 address and its encoding (type byte included).
fn address() -> impl Strategy<Value = (Vec<u8>, SocksAddress)> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| {
            let mut enc = vec![1];
            enc.extend_from_slice(&b);
            (enc, SocksAddress::Ipv4(Ipv4Addr::from(b)))
        }),
        any::<[u8; 16]>().prop_map(|b| {
            let mut enc = vec![4];
            enc.extend_from_slice(&b);
            (enc, SocksAddress::Ipv6(Ipv6Addr::from(b)))
        }),
        // Any UTF-8 of 1 to 255 bytes.
        any::<String>()
            .prop_filter("1..=255 bytes", |s| (1..=255).contains(&s.len()))
            .prop_map(|name| {
                let mut enc = vec![3, name.len() as u8];
                enc.extend_from_slice(name.as_bytes());
                (enc, SocksAddress::Domain(name))
            }),
    ]
}

/// A DNS name of a few lower-case labels, the last one not numeric.
fn host_name() -> impl Strategy<Value = String> {
    // No `--`: `xn--` labels are punycode, judged by their own rules.
    prop::collection::vec("[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,6})?", 2..4).prop_map(|l| l.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The parse of a valid request's encoding is that request, it takes
    /// exactly the encoded bytes whatever follows, and every shorter
    /// prefix is incomplete.
    #[test]
    fn socks5_parse_of_a_valid_encoding_returns_the_request(
        (cmd_byte, command) in command(),
        (addr_enc, address) in address(),
        port in any::<u16>(),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut msg = vec![5, cmd_byte, 0];
        msg.extend_from_slice(&addr_enc);
        msg.extend_from_slice(&port.to_be_bytes());
        let want = SocksRequest { command, address, port };
        for end in 0..msg.len() {
            prop_assert_eq!(parse_request(&msg[..end]), Parsed::Incomplete);
        }
        let len = msg.len();
        msg.extend_from_slice(&trailing);
        prop_assert_eq!(parse_request(&msg), Parsed::Complete(want, len));
    }

    /// A valid greeting parses to its methods, whatever follows.
    #[test]
    fn socks5_greeting_round_trips(
        methods in prop::collection::vec(any::<u8>(), 1..=255),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut msg = vec![5, methods.len() as u8];
        msg.extend_from_slice(&methods);
        let len = msg.len();
        msg.extend_from_slice(&trailing);
        match parse_greeting(&msg) {
            Parsed::Complete(g, n) => {
                prop_assert_eq!(n, len);
                prop_assert_eq!(g.offers_no_auth(), methods.contains(&0));
                prop_assert_eq!(g.methods, methods);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// Arbitrary bytes never panic the parsers; what they accept fits the
    /// input.
    #[test]
    fn handshake_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Parsed::Complete(_, n) = parse_greeting(&bytes) {
            prop_assert!(n <= bytes.len());
        }
        if let Parsed::Complete(_, n) = parse_request(&bytes) {
            prop_assert!(n <= bytes.len());
        }
        match parse_request_head(&bytes, 256) {
            Ok(HeadParse::Complete { head_len, .. }) => prop_assert!(head_len <= bytes.len()),
            Ok(HeadParse::Incomplete) => prop_assert!(bytes.len() < 256),
            Err(_) => {}
        }
    }

    /// `CONNECT host:port` in any letter case, with or without a trailing
    /// dot, is a tunnel to the normalized target; the head length is the
    /// head's.
    #[test]
    fn connect_heads_name_their_target(
        name in host_name(),
        upper in prop::collection::vec(any::<bool>(), 0..40),
        dot in any::<bool>(),
        port in 1u16..,
        body in "[a-z]{0,10}",
    ) {
        let shown: String = name
            .chars()
            .zip(upper.iter().chain(std::iter::repeat(&false)))
            .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
            .collect();
        let dot = if dot { "." } else { "" };
        let head = format!("CONNECT {shown}{dot}:{port} HTTP/1.1\r\nHost: {shown}:{port}\r\n\r\n");
        let want = Target::parse_authority(&format!("{name}:{port}")).unwrap();
        let msg = format!("{head}{body}");
        prop_assert_eq!(
            parse_request_head(msg.as_bytes(), 64 * 1024),
            Ok(HeadParse::Complete { request: ProxyRequest::Connect(want), head_len: head.len() })
        );
    }

    /// An absolute-form request is forwarded in origin form, to the URI's
    /// host; a different Host header is refused.
    #[test]
    fn forwarded_requests_keep_path_and_check_host(
        name in host_name(),
        other in host_name(),
        path in "(/[a-z0-9._~-]{0,8}){0,4}(\\?[a-z=&]{0,10})?",
    ) {
        let head = format!("GET http://{name}{path} HTTP/1.1\r\nHost: {name}\r\n\r\n");
        let origin = if path.starts_with('/') { path.clone() } else { format!("/{path}") };
        let want = ProxyRequest::Forward {
            target: Target::parse_authority_or(&name, 80).unwrap(),
            origin_form: origin,
        };
        prop_assert_eq!(
            parse_request_head(head.as_bytes(), 64 * 1024),
            Ok(HeadParse::Complete { request: want, head_len: head.len() })
        );
        let spoofed = format!("GET http://{name}{path} HTTP/1.1\r\nHost: {other}\r\n\r\n");
        let parsed = parse_request_head(spoofed.as_bytes(), 64 * 1024);
        prop_assert_eq!(name == other, parsed.is_ok(), "{:?}", parsed);
    }
}
