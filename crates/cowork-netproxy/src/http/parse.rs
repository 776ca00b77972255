//! What an HTTP request to the proxy asks for, as pure functions.
//!
//! [`classify_request`] is the one judgement, used by the server on every
//! request hyper parsed, and by [`parse_request_head`], which parses raw
//! head bytes with `httparse` (hyper's own parser) for fuzzing and tests.

use http::{Method, Uri, uri::Scheme};

use cowork_policy::net::{Target, TargetError};

/// The default port of `http://`.
const HTTP_PORT: u16 = 80;
/// At most this many headers in a head ([`parse_request_head`]; hyper's
/// default is the same).
pub const MAX_HEADERS: usize = 100;

/// A request the proxy serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port`: a tunnel.
    Connect(Target),
    /// An absolute-form `http://` request, to forward in origin form.
    Forward {
        target: Target,
        /// Path and query, always starting with `/`.
        origin_form: String,
    },
}

impl ProxyRequest {
    pub fn target(&self) -> &Target {
        match self {
            ProxyRequest::Connect(target) | ProxyRequest::Forward { target, .. } => target,
        }
    }
}

/// Why a request is not one the proxy serves (answered with 400, or 431
/// for [`RequestError::TooLarge`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("this is a proxy: send CONNECT host:port or an absolute http:// URI")]
    NotAProxyRequest,
    #[error("scheme {0:?} is not served: use CONNECT for anything but http://")]
    UnsupportedScheme(String),
    #[error("CONNECT needs a host:port target")]
    BadConnectTarget,
    #[error("the URI has no host")]
    MissingHost,
    #[error("the Host header ({header}) does not match the URI's host ({uri})")]
    HostMismatch { uri: String, header: String },
    #[error("more than one Host header")]
    MultipleHosts,
    #[error("the Host header is not valid")]
    BadHostHeader,
    #[error("invalid destination: {0}")]
    BadTarget(#[from] TargetError),
}

/// Judges a parsed request: its method, request-target and the values of
/// its `Host` headers.
///
/// * `CONNECT` must carry an authority-form target `host:port`.
/// * Other methods must carry an absolute `http://` URI; its host and port
///   and those of the `Host` header (when present) must agree after
///   normalization.
/// * Origin-form (`GET /path`) and asterisk-form requests are not proxy
///   requests.
pub fn classify_request(
    method: &Method,
    uri: &Uri,
    host_headers: &[&[u8]],
) -> Result<ProxyRequest, RequestError> {
    if method == Method::CONNECT {
        let authority = uri
            .authority()
            .filter(|_| uri.scheme().is_none() && uri.path_and_query().is_none())
            .ok_or(RequestError::BadConnectTarget)?;
        return Ok(ProxyRequest::Connect(Target::parse_authority(
            authority.as_str(),
        )?));
    }
    let Some(scheme) = uri.scheme() else {
        return Err(RequestError::NotAProxyRequest);
    };
    if *scheme != Scheme::HTTP {
        return Err(RequestError::UnsupportedScheme(
            scheme.as_str().chars().take(32).collect(),
        ));
    }
    let authority = uri.authority().ok_or(RequestError::MissingHost)?;
    let target = Target::parse_authority_or(authority.as_str(), HTTP_PORT)?;
    match host_headers {
        [] => {}
        [header] => {
            let text = std::str::from_utf8(header).map_err(|_| RequestError::BadHostHeader)?;
            let from_header = Target::parse_authority_or(text.trim(), HTTP_PORT)
                .map_err(|_| RequestError::BadHostHeader)?;
            if from_header != target {
                return Err(RequestError::HostMismatch {
                    uri: target.to_string(),
                    header: from_header.to_string(),
                });
            }
        }
        _ => return Err(RequestError::MultipleHosts),
    }
    let origin_form = match uri.path_and_query().map(|pq| pq.as_str()) {
        None | Some("") => "/".to_owned(),
        Some(pq) if pq.starts_with('/') => pq.to_owned(),
        Some(pq) => format!("/{pq}"),
    };
    Ok(ProxyRequest::Forward {
        target,
        origin_form,
    })
}

/// The answer of [`parse_request_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadParse {
    /// The head is not complete yet.
    Incomplete,
    /// The request and the length of its head (the body, if any, follows).
    Complete {
        request: ProxyRequest,
        head_len: usize,
    },
}

/// Parses raw request-head bytes and judges them with
/// [`classify_request`]. `max_head_size` bounds the head: a longer
/// incomplete head is [`RequestError::TooLarge`].
pub fn parse_request_head(buf: &[u8], max_head_size: usize) -> Result<HeadParse, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head_size => {
            return Err(RequestError::TooLarge(max_head_size));
        }
        Ok(httparse::Status::Partial) => return Ok(HeadParse::Incomplete),
        Err(e) => return Err(RequestError::Malformed(e.to_string())),
    };
    if head_len > max_head_size {
        return Err(RequestError::TooLarge(max_head_size));
    }
    let malformed = |what: &str| RequestError::Malformed(what.to_owned());
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| malformed("bad method"))?;
    let uri: Uri = req
        .path
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| malformed("bad request target"))?;
    let hosts: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)
        .collect();
    let request = classify_request(&method, &uri, &hosts)?;
    Ok(HeadParse::Complete { request, head_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cowork_policy::net::HostError;
    use pretty_assertions::assert_eq;

    fn connect(t: &str) -> Result<HeadParse, RequestError> {
        Ok(ProxyRequest::Connect(Target::parse_authority(t).unwrap())).map(|request| {
            HeadParse::Complete {
                request,
                head_len: 0,
            }
        })
    }
    fn forward(t: &str, path: &str) -> Result<HeadParse, RequestError> {
        Ok(HeadParse::Complete {
            request: ProxyRequest::Forward {
                target: Target::parse_authority(t).unwrap(),
                origin_form: path.into(),
            },
            head_len: 0,
        })
    }
    /// The head length is checked separately: zero it for comparison.
    fn parse(head: &str) -> Result<HeadParse, RequestError> {
        match parse_request_head(head.as_bytes(), 64 * 1024) {
            Ok(HeadParse::Complete { request, head_len }) => {
                assert_eq!(head_len, head.len(), "{head:?}");
                Ok(HeadParse::Complete {
                    request,
                    head_len: 0,
                })
            }
            other => other,
        }
    }

    #[test]
    fn head_table() {
        let cases: Vec<(&str, Result<HeadParse, RequestError>)> = vec![
            (
                "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                connect("example.com:443"),
            ),
            (
                "CONNECT Example.COM.:443 HTTP/1.1\r\n\r\n",
                connect("example.com:443"),
            ),
            ("CONNECT [::1]:22 HTTP/1.1\r\n\r\n", connect("[::1]:22")),
            (
                "CONNECT 127.0.0.2:8080 HTTP/1.0\r\n\r\n",
                connect("127.0.0.2:8080"),
            ),
            // The Host header of a CONNECT is not judged.
            (
                "CONNECT a.example:443 HTTP/1.1\r\nHost: b.example\r\n\r\n",
                connect("a.example:443"),
            ),
            (
                "CONNECT example.com HTTP/1.1\r\n\r\n",
                Err(TargetError::MissingPort.into()),
            ),
            (
                "CONNECT http://example.com:443/ HTTP/1.1\r\n\r\n",
                Err(RequestError::BadConnectTarget),
            ),
            (
                "CONNECT / HTTP/1.1\r\n\r\n",
                Err(RequestError::BadConnectTarget),
            ),
            (
                "CONNECT 127.1:80 HTTP/1.1\r\n\r\n",
                Err(TargetError::Host(HostError::NumericName).into()),
            ),
            (
                "GET http://example.com/a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n",
                forward("example.com:80", "/a?b=c"),
            ),
            (
                "GET http://example.com HTTP/1.1\r\nHost: EXAMPLE.com.:80\r\n\r\n",
                forward("example.com:80", "/"),
            ),
            (
                "POST http://127.0.0.2:8080/x HTTP/1.0\r\n\r\n",
                forward("127.0.0.2:8080", "/x"),
            ),
            (
                "GET http://[::1]:8080/ HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
                forward("[::1]:8080", "/"),
            ),
            (
                "GET HTTP://Example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
                forward("example.com:80", "/"),
            ),
            (
                "GET http://example.com/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
                Err(RequestError::HostMismatch {
                    uri: "example.com:80".into(),
                    header: "evil.example:80".into(),
                }),
            ),
            (
                "GET http://example.com/ HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
                Err(RequestError::HostMismatch {
                    uri: "example.com:80".into(),
                    header: "example.com:8080".into(),
                }),
            ),
            (
                "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nHost: example.com\r\n\r\n",
                Err(RequestError::MultipleHosts),
            ),
            (
                "GET http://example.com/ HTTP/1.1\r\nHost: a b\r\n\r\n",
                Err(RequestError::BadHostHeader),
            ),
            (
                "GET /path HTTP/1.1\r\nHost: example.com\r\n\r\n",
                Err(RequestError::NotAProxyRequest),
            ),
            (
                "OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n",
                Err(RequestError::NotAProxyRequest),
            ),
            (
                "GET https://example.com/ HTTP/1.1\r\n\r\n",
                Err(RequestError::UnsupportedScheme("https".into())),
            ),
            (
                "GET ftp://example.com/ HTTP/1.1\r\n\r\n",
                Err(RequestError::UnsupportedScheme("ftp".into())),
            ),
            (
                "GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n",
                Err(TargetError::UserInfo.into()),
            ),
            ("GET http://example.com/", Ok(HeadParse::Incomplete)),
            ("", Ok(HeadParse::Incomplete)),
            (
                "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n",
                Ok(HeadParse::Incomplete),
            ),
        ];
        for (head, want) in cases {
            assert_eq!(parse(head), want, "{head:?}");
        }
    }

    #[test]
    fn garbage_and_limits() {
        let garbage: [&[u8]; 4] = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET\x00 / HTTP/1.1\r\n\r\n",
            b"hello world\r\n\r\n",
            b"\x05\x01\x00",
        ];
        for bytes in garbage {
            assert!(
                matches!(
                    parse_request_head(bytes, 1024),
                    Err(RequestError::Malformed(_))
                ),
                "{bytes:?}"
            );
        }
        let big = format!(
            "GET http://example.com/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(100)
        );
        assert_eq!(
            parse_request_head(big.as_bytes(), 64),
            Err(RequestError::TooLarge(64))
        );
        assert_eq!(
            parse_request_head(&big.as_bytes()[..80], 64),
            Err(RequestError::TooLarge(64))
        );
        assert_eq!(
            parse_request_head(&big.as_bytes()[..40], 64),
            Ok(HeadParse::Incomplete)
        );
    }

    #[test]
    fn body_bytes_after_the_head_are_not_consumed() {
        let msg = "POST http://a.example/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        match parse_request_head(msg.as_bytes(), 1024) {
            Ok(HeadParse::Complete { head_len, .. }) => assert_eq!(&msg[head_len..], "abc"),
            other => panic!("{other:?}"),
        }
    }
}
