//! The proxy-stream multiplexing decoder of a VM's `cowork.net` channel
//! (`cowork_protocol::mux`, binary frames kind/stream/length/payload), on
//! an arbitrary byte stream fed in arbitrary chunks (which the guest
//! controls).
//!
//! Input: one byte choosing the chunking (see `cowork_fuzz::chunks`), then
//! the stream. Invariants: the frames and the error do not depend on the
//! chunking; every decoded frame is valid (non-zero stream, DATA of 1 to
//! `MAX_DATA` bytes, non-zero CREDIT) and re-encodes to exactly the bytes
//! it was decoded from; what is left after the last frame without an
//! error is a prefix of a frame.
#![no_main]

use bytes::BytesMut;
use cowork_protocol::mux::{self, Frame, HEADER_LEN, MAX_DATA, MuxError};
use libfuzzer_sys::fuzz_target;

fn decode(pieces: &[&[u8]]) -> (Vec<Frame>, Option<MuxError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match mux::decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = decode(&[stream]);
    let split = decode(&cowork_fuzz::chunks(seed, stream));
    assert_eq!(whole, split, "the chunking changed the result");
    let (frames, error) = whole;

    let mut wire = BytesMut::new();
    for frame in &frames {
        assert_ne!(frame.stream(), 0);
        match frame {
            Frame::Data { data, .. } => assert!(!data.is_empty() && data.len() <= MAX_DATA),
            Frame::Credit { bytes, .. } => assert_ne!(*bytes, 0),
            _ => {}
        }
        mux::encode(frame, &mut wire).expect("a decoded frame re-encodes");
    }
    assert_eq!(&wire[..], &stream[..wire.len()], "re-encoding differs");
    let rest = &stream[wire.len()..];
    match error {
        None if rest.len() >= HEADER_LEN => {
            // A valid header whose payload has not all arrived.
            let len = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) as usize;
            assert!(
                rest.len() < HEADER_LEN + len,
                "a whole frame was left undecoded"
            );
        }
        None => {}
        Some(_) => assert!(rest.len() >= HEADER_LEN, "an error before a whole header"),
    }
});
