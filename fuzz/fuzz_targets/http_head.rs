//! The proxy's HTTP request-head parser (`parse_request_head`, httparse
//! then `classify_request`) on arbitrary bytes, and `classify_request` on
//! a method, request-target and Host values taken from the input's lines
//! (reaching URIs httparse's byte rules would not let through).
//!
//! Invariants: a complete head's length is within the input and parsing
//! just the head gives the same request; an incomplete head is shorter
//! than the limit; a judged target's text parses back to the same target;
//! a forwarded request's origin form starts with `/`; a forwarded request
//! agrees with its Host header.
#![no_main]

use cowork_netproxy::{
    HeadParse, ProxyRequest, RequestError, classify_request, parse_request_head,
};
use cowork_policy::net::Target;
use libfuzzer_sys::fuzz_target;

/// A small limit, so the fuzzer reaches the too-large paths.
const MAX_HEAD: usize = 512;

fn check_request(request: &ProxyRequest) {
    let target = request.target();
    assert_ne!(target.port, 0);
    assert_eq!(
        Target::parse_authority(&target.to_string()).as_ref(),
        Ok(target),
        "canonical text of {target:?}"
    );
    if let ProxyRequest::Forward { origin_form, .. } = request {
        assert!(origin_form.starts_with('/'), "{origin_form:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_request_head(data, MAX_HEAD) {
        Ok(HeadParse::Complete { request, head_len }) => {
            assert!(head_len <= data.len() && head_len <= MAX_HEAD);
            check_request(&request);
            assert_eq!(
                parse_request_head(&data[..head_len], MAX_HEAD),
                Ok(HeadParse::Complete { request, head_len }),
                "the head alone parses differently"
            );
        }
        Ok(HeadParse::Incomplete) => assert!(data.len() < MAX_HEAD),
        Err(RequestError::TooLarge(n)) => assert_eq!(n, MAX_HEAD),
        Err(_) => {}
    }

    // Line 1: method; line 2: request-target; further lines: Host values.
    let mut lines = data.split(|&b| b == b'\n');
    let (Some(method), Some(target)) = (lines.next(), lines.next()) else {
        return;
    };
    let hosts: Vec<&[u8]> = lines.collect();
    let (Ok(method), Ok(uri)) = (
        http::Method::from_bytes(method),
        http::Uri::try_from(target),
    ) else {
        return;
    };
    if let Ok(request) = classify_request(&method, &uri, &hosts) {
        check_request(&request);
        match &request {
            ProxyRequest::Connect(t) => {
                assert_eq!(method, http::Method::CONNECT);
                let authority = uri.authority().expect("CONNECT has an authority");
                assert_eq!(Target::parse_authority(authority.as_str()).as_ref(), Ok(t));
            }
            ProxyRequest::Forward { target, .. } => {
                assert!(hosts.len() <= 1);
                if let Some(host) = hosts.first() {
                    let text = std::str::from_utf8(host).expect("a judged Host is UTF-8");
                    assert_eq!(
                        Target::parse_authority_or(text.trim(), 80).as_ref(),
                        Ok(target)
                    );
                }
            }
        }
    }
});
