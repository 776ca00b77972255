//! The proxy's SOCKS5 handshake parsers (`parse_greeting`, `parse_request`)
//! on arbitrary bytes, and the destination the server makes of a request.
//!
//! Invariants: a complete message took at most the bytes given, encodes
//! back to exactly those bytes, parses the same from just those bytes, and
//! every shorter prefix is incomplete; a request's destination, when
//! valid, prints as an authority that parses back to it.
#![no_main]

use cowork_netproxy::{
    Parsed, SocksAddress, SocksCommand, SocksRequest, parse_greeting, parse_request,
};
use cowork_policy::net::Target;
use libfuzzer_sys::fuzz_target;

fn encode_request(req: &SocksRequest) -> Vec<u8> {
    let command = match req.command {
        SocksCommand::Connect => 1,
        SocksCommand::Bind => 2,
        SocksCommand::UdpAssociate => 3,
        SocksCommand::Other(b) => b,
    };
    let mut out = vec![5, command, 0];
    match &req.address {
        SocksAddress::Ipv4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        SocksAddress::Domain(name) => {
            out.push(3);
            out.push(u8::try_from(name.len()).expect("a parsed name fits a byte"));
            out.extend_from_slice(name.as_bytes());
        }
        SocksAddress::Ipv6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&req.port.to_be_bytes());
    out
}

fn check_prefixes<T: std::fmt::Debug + PartialEq>(msg: &[u8], parse: fn(&[u8]) -> Parsed<T>) {
    for end in 0..msg.len() {
        assert_eq!(
            parse(&msg[..end]),
            Parsed::Incomplete,
            "prefix {end} of {msg:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_greeting(data) {
        Parsed::Complete(greeting, n) => {
            assert!(n <= data.len());
            let mut encoded = vec![5, u8::try_from(greeting.methods.len()).expect("fits")];
            encoded.extend_from_slice(&greeting.methods);
            assert_eq!(&encoded[..], &data[..n]);
            assert_eq!(parse_greeting(&data[..n]), Parsed::Complete(greeting, n));
            check_prefixes(&data[..n], parse_greeting);
        }
        Parsed::Incomplete => assert!(data.len() < 2 + 255),
        Parsed::Invalid(e) => assert!(e.reply_code().is_none_or(|c| c == 1 || c == 8)),
    }
    match parse_request(data) {
        Parsed::Complete(req, n) => {
            assert!(n <= data.len());
            assert_eq!(encode_request(&req), &data[..n]);
            assert_eq!(parse_request(&data[..n]), Parsed::Complete(req.clone(), n));
            check_prefixes(&data[..n], parse_request);
            let target = match &req.address {
                SocksAddress::Ipv4(ip) => Target::from_ip((*ip).into(), req.port),
                SocksAddress::Ipv6(ip) => Target::from_ip((*ip).into(), req.port),
                SocksAddress::Domain(name) => Target::new(name, req.port),
            };
            if let Ok(target) = target {
                assert_eq!(
                    Target::parse_authority(&target.to_string()).as_ref(),
                    Ok(&target)
                );
            } else if !matches!(req.address, SocksAddress::Domain(_)) {
                assert_eq!(req.port, 0, "an address target fails only for port 0");
            }
        }
        Parsed::Incomplete => assert!(data.len() < 4 + 1 + 255 + 2),
        Parsed::Invalid(e) => assert!(e.reply_code().is_some()),
    }
});
