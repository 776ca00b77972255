//! Proxy streams over one byte channel: how a VM's guest carries each
//! connection to its `127.0.0.1:3128` / `:1080` proxy endpoints to the
//! daemon's allowlist proxy (the `cowork.net` virtio-serial port).
//!
//! Binary framing, not JSON (the payload is raw TCP bytes):
//!
//! ```text
//! +---------+----------------+----------------+-------------------+
//! | kind u8 | stream u32 BE  | length u32 BE  | payload (length)  |
//! +---------+----------------+----------------+-------------------+
//! ```
//!
//! | kind | name   | payload | meaning |
//! |------|--------|---------|---------|
//! | 1    | OPEN   | 1 byte: 0 HTTP proxy, 1 SOCKS5 | the guest accepted a connection; it picks the (new, non-zero) stream id |
//! | 2    | DATA   | 1..=[`MAX_DATA`] bytes | bytes of the stream, in order |
//! | 3    | CREDIT | u32 BE, > 0 | the sender may send that many more DATA bytes on the stream |
//! | 4    | CLOSE  | empty | the sender will send no more DATA (half-close, like a FIN) |
//! | 5    | RESET  | empty | the stream is aborted in both directions; forget it |
//!
//! Flow control is per stream and direction: each side starts with
//! [`INITIAL_WINDOW`] bytes it may send, and the receiver grants more
//! (CREDIT) as it writes received bytes on to their destination, so one
//! slow connection never stalls the channel for the others and nothing
//! is buffered without bound. A stream is gone once both sides sent CLOSE
//! (or either sent RESET). Anything malformed (unknown kind, a length that
//! does not fit the kind, a DATA frame over [`MAX_DATA`], stream 0) is a
//! [`MuxError`]: the channel is then unusable and is closed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Size of a frame header.
pub const HEADER_LEN: usize = 9;
/// Largest DATA payload.
pub const MAX_DATA: usize = 64 * 1024;
/// What each side may send on a new stream before any CREDIT.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

const OPEN: u8 = 1;
const DATA: u8 = 2;
const CREDIT: u8 = 3;
const CLOSE: u8 = 4;
const RESET: u8 = 5;

/// Which proxy a stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProtocol {
    Http,
    Socks5,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Open {
        stream: u32,
        protocol: StreamProtocol,
    },
    Data {
        stream: u32,
        data: Bytes,
    },
    Credit {
        stream: u32,
        bytes: u32,
    },
    Close {
        stream: u32,
    },
    Reset {
        stream: u32,
    },
}

impl Frame {
    pub fn stream(&self) -> u32 {
        match self {
            Frame::Open { stream, .. }
            | Frame::Data { stream, .. }
            | Frame::Credit { stream, .. }
            | Frame::Close { stream }
            | Frame::Reset { stream } => *stream,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("stream 0 is reserved")]
    StreamZero,
    #[error("a {kind} frame cannot carry {len} bytes")]
    Length { kind: &'static str, len: u32 },
    #[error("unknown stream protocol {0}")]
    Protocol(u8),
    #[error("an empty CREDIT")]
    ZeroCredit,
    #[error("a DATA frame of {0} bytes (at most {MAX_DATA})")]
    TooLarge(usize),
}

impl From<MuxError> for std::io::Error {
    fn from(e: MuxError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// Encodes and decodes [`Frame`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct MuxCodec;

impl Decoder for MuxCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        Ok(decode(src)?)
    }
}

impl Encoder<Frame> for MuxCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        Ok(encode(&frame, dst)?)
    }
}

/// Takes one frame off the front of `src`, if a whole one is there.
pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, MuxError> {
    if src.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = src[0];
    let stream = u32::from_be_bytes([src[1], src[2], src[3], src[4]]);
    let len = u32::from_be_bytes([src[5], src[6], src[7], src[8]]);
    let name = match kind {
        OPEN => "OPEN",
        DATA => "DATA",
        CREDIT => "CREDIT",
        CLOSE => "CLOSE",
        RESET => "RESET",
        other => return Err(MuxError::Kind(other)),
    };
    if stream == 0 {
        return Err(MuxError::StreamZero);
    }
    let fits = match kind {
        OPEN => len == 1,
        DATA => len >= 1 && len as usize <= MAX_DATA,
        CREDIT => len == 4,
        _ => len == 0,
    };
    if !fits {
        return Err(MuxError::Length { kind: name, len });
    }
    let total = HEADER_LEN + len as usize;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    let payload = src.split_to(len as usize).freeze();
    Ok(Some(match kind {
        OPEN => Frame::Open {
            stream,
            protocol: match payload[0] {
                0 => StreamProtocol::Http,
                1 => StreamProtocol::Socks5,
                other => return Err(MuxError::Protocol(other)),
            },
        },
        DATA => Frame::Data {
            stream,
            data: payload,
        },
        CREDIT => {
            let bytes = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            if bytes == 0 {
                return Err(MuxError::ZeroCredit);
            }
            Frame::Credit { stream, bytes }
        }
        CLOSE => Frame::Close { stream },
        _ => Frame::Reset { stream },
    }))
}

/// Appends `frame` to `dst`.
pub fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), MuxError> {
    let stream = frame.stream();
    if stream == 0 {
        return Err(MuxError::StreamZero);
    }
    let (kind, payload): (u8, &[u8]) = match frame {
        Frame::Open { protocol, .. } => (
            OPEN,
            match protocol {
                StreamProtocol::Http => &[0],
                StreamProtocol::Socks5 => &[1],
            },
        ),
        Frame::Data { data, .. } => {
            if data.is_empty() || data.len() > MAX_DATA {
                return Err(MuxError::TooLarge(data.len()));
            }
            (DATA, data)
        }
        Frame::Credit { bytes, .. } => {
            if *bytes == 0 {
                return Err(MuxError::ZeroCredit);
            }
            dst.reserve(HEADER_LEN + 4);
            dst.put_u8(CREDIT);
            dst.put_u32(stream);
            dst.put_u32(4);
            dst.put_u32(*bytes);
            return Ok(());
        }
        Frame::Close { .. } => (CLOSE, &[]),
        Frame::Reset { .. } => (RESET, &[]),
    };
    dst.reserve(HEADER_LEN + payload.len());
    dst.put_u8(kind);
    dst.put_u32(stream);
    dst.put_u32(payload.len() as u32);
    dst.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn all_kinds() -> Vec<Frame> {
        vec![
            Frame::Open {
                stream: 1,
                protocol: StreamProtocol::Http,
            },
            Frame::Open {
                stream: 2,
                protocol: StreamProtocol::Socks5,
            },
            Frame::Data {
                stream: 1,
                data: Bytes::from_static(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n"),
            },
            Frame::Data {
                stream: 7,
                data: Bytes::from(vec![0xAB; MAX_DATA]),
            },
            Frame::Credit {
                stream: 1,
                bytes: 65536,
            },
            Frame::Close { stream: 1 },
            Frame::Reset { stream: u32::MAX },
        ]
    }

    #[test]
    fn frames_round_trip_one_byte_at_a_time() {
        let mut wire = BytesMut::new();
        for f in all_kinds() {
            encode(&f, &mut wire).unwrap();
        }
        let mut src = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            src.put_u8(*b);
            while let Some(f) = decode(&mut src).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, all_kinds());
        assert!(src.is_empty());
    }

    #[test]
    fn the_header_layout_is_kind_stream_length() {
        let mut wire = BytesMut::new();
        encode(
            &Frame::Data {
                stream: 0x0102_0304,
                data: Bytes::from_static(b"hi"),
            },
            &mut wire,
        )
        .unwrap();
        assert_eq!(&wire[..], &[2, 1, 2, 3, 4, 0, 0, 0, 2, b'h', b'i']);
    }

    #[test]
    fn malformed_frames_are_errors() {
        let frame = |kind: u8, stream: u32, payload: &[u8]| {
            let mut b = BytesMut::new();
            b.put_u8(kind);
            b.put_u32(stream);
            b.put_u32(payload.len() as u32);
            b.extend_from_slice(payload);
            b
        };
        let oversized = {
            let mut b = BytesMut::new();
            b.put_u8(DATA);
            b.put_u32(1);
            b.put_u32(MAX_DATA as u32 + 1);
            b
        };
        let cases: Vec<(&str, BytesMut, MuxError)> = vec![
            ("unknown kind", frame(9, 1, b""), MuxError::Kind(9)),
            ("stream zero", frame(CLOSE, 0, b""), MuxError::StreamZero),
            (
                "empty data",
                frame(DATA, 1, b""),
                MuxError::Length {
                    kind: "DATA",
                    len: 0,
                },
            ),
            (
                "oversized data, before its payload arrives",
                oversized,
                MuxError::Length {
                    kind: "DATA",
                    len: MAX_DATA as u32 + 1,
                },
            ),
            (
                "close with payload",
                frame(CLOSE, 1, b"x"),
                MuxError::Length {
                    kind: "CLOSE",
                    len: 1,
                },
            ),
            ("bad protocol", frame(OPEN, 1, &[7]), MuxError::Protocol(7)),
            (
                "zero credit",
                frame(CREDIT, 1, &[0, 0, 0, 0]),
                MuxError::ZeroCredit,
            ),
            (
                "short credit",
                frame(CREDIT, 1, &[1]),
                MuxError::Length {
                    kind: "CREDIT",
                    len: 1,
                },
            ),
        ];
        for (what, mut bytes, want) in cases {
            assert_eq!(decode(&mut bytes), Err(want), "{what}");
        }
        let mut dst = BytesMut::new();
        assert!(encode(&Frame::Close { stream: 0 }, &mut dst).is_err());
        assert!(
            encode(
                &Frame::Data {
                    stream: 1,
                    data: Bytes::new()
                },
                &mut dst
            )
            .is_err()
        );
        assert!(dst.is_empty(), "nothing is written for a refused frame");
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_loop() {
        // A small xorshift: deterministic "random" channels.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 3 == 0 && !bytes.is_empty() {
                bytes[0] = (next() % 6) as u8; // a plausible kind
            }
            let mut src = BytesMut::from(&bytes[..]);
            let mut frames = 0;
            while let Ok(Some(f)) = decode(&mut src) {
                let mut re = BytesMut::new();
                encode(&f, &mut re).expect("a decoded frame encodes");
                frames += 1;
                assert!(frames <= len, "progress on every frame");
            }
        }
    }

    #[test]
    fn a_partial_header_or_payload_waits() {
        let mut wire = BytesMut::new();
        encode(&Frame::Close { stream: 3 }, &mut wire).unwrap();
        let mut part = BytesMut::from(&wire[..5]);
        assert_eq!(decode(&mut part), Ok(None));
        let mut data = BytesMut::new();
        encode(
            &Frame::Data {
                stream: 3,
                data: Bytes::from_static(b"abc"),
            },
            &mut data,
        )
        .unwrap();
        let mut part = BytesMut::from(&data[..HEADER_LEN + 1]);
        assert_eq!(decode(&mut part), Ok(None));
        assert_eq!(part.len(), HEADER_LEN + 1, "nothing consumed");
    }
}
