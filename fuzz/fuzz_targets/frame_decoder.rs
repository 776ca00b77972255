//! The client/agent frame decoder (`cowork_protocol::frame::codec`, a
//! length-delimited codec with the 10 MiB limit) on an arbitrary byte
//! stream fed in arbitrary chunks.
//!
//! Input: one byte choosing the chunking (see `cowork_fuzz::chunks`), then
//! the stream. Invariants: the frames and the error do not depend on the
//! chunking; no frame exceeds the limit; the frames re-encoded with the
//! same codec are exactly the bytes consumed; a frame that is JSON
//! survives `frame::encode` and decoding again.
#![no_main]

use bytes::{Bytes, BytesMut};
use cowork_protocol::frame::{self, HEADER_LEN, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

/// Frames decoded, and whether the stream ended in an error.
fn decode(pieces: &[&[u8]]) -> (Vec<BytesMut>, bool) {
    let mut codec = frame::codec();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = decode(&[stream]);
    let pieces = cowork_fuzz::chunks(seed, stream);
    let split = decode(&pieces);
    assert_eq!(whole, split, "the chunking changed the result");
    let (frames, failed) = whole;

    let mut codec = frame::codec();
    let mut wire = BytesMut::new();
    for body in &frames {
        assert!(body.len() <= MAX_FRAME_LEN);
        codec
            .encode(Bytes::copy_from_slice(body), &mut wire)
            .expect("a decoded frame re-encodes");
    }
    assert_eq!(&wire[..], &stream[..wire.len()], "re-encoding differs");
    if !failed {
        // Only an incomplete frame can be left over at the end.
        let rest = &stream[wire.len()..];
        if rest.len() >= HEADER_LEN {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            assert!(len <= MAX_FRAME_LEN && rest.len() < HEADER_LEN + len);
        }
    } else {
        let rest = &stream[wire.len()..];
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        assert!(len > MAX_FRAME_LEN, "refused a {len}-byte frame");
    }

    for body in &frames {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
            let framed = frame::encode(&value).expect("a parsed body encodes");
            let (again, failed) = decode(&[&framed]);
            assert!(!failed && again.len() == 1);
            let back: serde_json::Value = serde_json::from_slice(&again[0]).expect("re-parses");
            assert!(cowork_fuzz::json_eq(&value, &back), "{value} != {back}");
        }
    }
});
