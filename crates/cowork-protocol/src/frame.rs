//! Length-prefixed framing: a 4-byte big-endian length, then the body.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::LengthDelimitedCodec;

use crate::json_string::push_json_string;

/// Largest body accepted or produced, in bytes (the client's own limit).
pub const MAX_FRAME_LEN: usize = 10 * 1024 * 1024;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Errors while turning a message into a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("cannot encode message as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("frame body of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
}

/// The codec for reading (and writing) frames, with the 10 MiB limit set
/// explicitly (tokio-util's default is 8 MiB).
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(HEADER_LEN)
        .big_endian()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

/// Serializes `message` into a complete frame (prefix included), ready to be
/// written as is. Encoding once and cloning the `Bytes` lets one event go to
/// many subscribers without re-serializing.
pub fn encode<T: Serialize + ?Sized>(message: &T) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(128);
    buf.put_u32(0);
    {
        let mut writer = (&mut buf).writer();
        serde_json::to_writer(&mut writer, message)?;
    }
    finish(buf)
}

/// `{"type":KIND,"id":ID,"data":DATA}` as a complete frame: the shape of
/// both a client output event ([`crate::event::Event::Stdout`]) and an
/// agent's output message ([`crate::agent::FromAgent::Stdout`]), byte for
/// byte what [`encode`] makes of them, but written with the fast string
/// writer and a buffer sized up front (these frames carry most bytes).
pub fn encode_output(kind: &str, id: &str, data: &str) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + data.len() + id.len() + 64);
    buf.put_u32(0);
    buf.extend_from_slice(b"{\"type\":");
    push_json_string(&mut buf, kind);
    buf.extend_from_slice(b",\"id\":");
    push_json_string(&mut buf, id);
    buf.extend_from_slice(b",\"data\":");
    push_json_string(&mut buf, data);
    buf.put_u8(b'}');
    finish(buf)
}

/// Fills in the length prefix of a frame built after a placeholder.
fn finish(mut buf: BytesMut) -> Result<Bytes, FrameError> {
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // The body length fits in u32 because it is at most MAX_FRAME_LEN.
    let prefix = (len as u32).to_be_bytes();
    buf[..HEADER_LEN].copy_from_slice(&prefix);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio_util::codec::FramedRead;

    #[test]
    fn encode_writes_big_endian_length_then_json() {
        let frame = encode(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(&frame[..4], &[0, 0, 0, 7]);
        assert_eq!(&frame[4..], br#"{"a":1}"#);
    }

    #[test]
    fn output_frames_equal_the_serde_encoding_of_events_and_agent_messages() {
        use crate::agent::FromAgent;
        use crate::event::{Event, Stream};
        for data in [
            "",
            "hi\n",
            "\"q\" \\ \u{1} é😀",
            &"0123456789\n".repeat(500),
        ] {
            for (kind, stream) in [("stdout", Stream::Stdout), ("stderr", Stream::Stderr)] {
                let fast = encode_output(kind, "id-\"1\"", data).unwrap();
                let event = Event::output(stream, "id-\"1\"".into(), data.into());
                assert_eq!(fast, encode(&event).unwrap(), "{kind} {data:?}");
                assert_eq!(fast, event.to_frame().unwrap(), "{kind} {data:?}");
                let agent = match stream {
                    Stream::Stdout => FromAgent::Stdout {
                        id: "id-\"1\"".into(),
                        data: data.into(),
                    },
                    Stream::Stderr => FromAgent::Stderr {
                        id: "id-\"1\"".into(),
                        data: data.into(),
                    },
                };
                assert_eq!(fast, encode(&agent).unwrap(), "{kind} {data:?}");
                assert_eq!(fast, agent.to_frame().unwrap(), "{kind} {data:?}");
            }
        }
        let big = "x".repeat(MAX_FRAME_LEN);
        assert!(matches!(
            encode_output("stdout", "p", &big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn encode_refuses_bodies_over_the_limit() {
        let big = "x".repeat(MAX_FRAME_LEN);
        match encode(&big) {
            Err(FrameError::TooLarge { len, .. }) => assert_eq!(len, MAX_FRAME_LEN + 2),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn codec_splits_concatenated_frames_and_rejects_oversized_lengths() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode(&1).unwrap());
        wire.extend_from_slice(&encode(&"two").unwrap());
        wire.extend_from_slice(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        let mut frames = FramedRead::new(&wire[..], codec());
        assert_eq!(&frames.next().await.unwrap().unwrap()[..], b"1");
        assert_eq!(&frames.next().await.unwrap().unwrap()[..], b"\"two\"");
        assert!(frames.next().await.unwrap().is_err());
    }
}
