//! Properties of the wire parsers on generated inputs (proptest; the
//! `cargo fuzz` targets in `fuzz/` explore the same code much longer):
//! the frame codec, the request parser and method parameters, the agent
//! messages, the fast output writer, the streaming UTF-8 decoder and the
//! proxy-stream multiplexing of a VM's channel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use cowork_protocol::agent::{FromAgent, ToAgent};
use cowork_protocol::frame::{self, HEADER_LEN, MAX_FRAME_LEN};
use cowork_protocol::mux::{self, MuxError, StreamProtocol};
use cowork_protocol::params::{self, METHODS};
use cowork_protocol::rpc::parse_request;
use cowork_protocol::text::Utf8Stream;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tokio_util::codec::{Decoder, Encoder};

/// JSON without floats (their last-bit round trip is serde_json's
/// business, not ours), nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn object() -> impl Strategy<Value = Value> {
    prop::collection::vec(("[a-zA-Z]{1,12}", json_value()), 0..5)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

/// Decodes `pieces` fed one after the other: the frames, and whether the
/// stream hit an error.
fn decode_pieces(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut codec = frame::codec();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

/// `bytes` cut at the given positions (taken modulo the length).
fn split_at_points<'a>(bytes: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        out.push(&bytes[start..cut]);
        start = cut;
    }
    out
}

fn to_agent() -> impl Strategy<Value = ToAgent> {
    prop_oneof![
        (any::<u64>(), any::<String>(), object())
            .prop_map(|(id, method, params)| { ToAgent::Request { id, method, params } }),
        (any::<String>(), object())
            .prop_map(|(method, params)| ToAgent::Notification { method, params }),
    ]
}

fn from_agent() -> impl Strategy<Value = FromAgent> {
    // A `null` reads back as `None`.
    let opt_value = || prop::option::of(json_value().prop_filter("not null", |v| !v.is_null()));
    prop_oneof![
        (any::<u32>(), any::<String>(), opt_value()).prop_map(|(pid, version, confinement)| {
            FromAgent::Ready {
                pid,
                version,
                confinement,
            }
        }),
        (any::<u64>(), opt_value(), prop::option::of(any::<String>()))
            .prop_map(|(id, result, error)| FromAgent::Response { id, result, error }),
        (any::<String>(), any::<String>()).prop_map(|(id, data)| FromAgent::Stdout { id, data }),
        (any::<String>(), any::<String>()).prop_map(|(id, data)| FromAgent::Stderr { id, data }),
        (
            any::<String>(),
            prop::option::of(any::<i32>()),
            prop::option::of("SIG[A-Z]{2,6}")
        )
            .prop_map(|(id, code, signal)| FromAgent::Exit { id, code, signal }),
        (any::<String>(), any::<String>())
            .prop_map(|(id, message)| FromAgent::Error { id, message }),
    ]
}

fn mux_frame() -> impl Strategy<Value = mux::Frame> {
    let stream = 1u32..;
    prop_oneof![
        (stream.clone(), any::<bool>()).prop_map(|(stream, socks)| mux::Frame::Open {
            stream,
            protocol: if socks {
                StreamProtocol::Socks5
            } else {
                StreamProtocol::Http
            },
        }),
        (stream.clone(), prop::collection::vec(any::<u8>(), 1..200)).prop_map(|(stream, d)| {
            mux::Frame::Data {
                stream,
                data: Bytes::from(d),
            }
        }),
        (stream.clone(), 1u32..).prop_map(|(stream, bytes)| mux::Frame::Credit { stream, bytes }),
        stream
            .clone()
            .prop_map(|stream| mux::Frame::Close { stream }),
        stream.prop_map(|stream| mux::Frame::Reset { stream }),
    ]
}

/// Multiplexed frames decoded from `pieces`, and the error that ended
/// them.
fn decode_mux(pieces: &[&[u8]]) -> (Vec<mux::Frame>, Option<MuxError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match mux::decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// Parses `value` with the dispatcher's parameter type of `method`.
fn parse_params(method: &str, value: Value) -> Result<(), String> {
    use params::*;
    match method {
        "configure" => parse::<ConfigureParams>(method, value).map(drop),
        "createVM" => parse::<CreateVmParams>(method, value).map(drop),
        "startVM" => parse::<StartVmParams>(method, value).map(drop),
        "spawn" => parse::<SpawnParams>(method, value).map(drop),
        "kill" => parse::<KillParams>(method, value).map(drop),
        "writeStdin" => parse::<WriteStdinParams>(method, value).map(drop),
        "isProcessRunning" => parse::<ProcessIdParams>(method, value).map(drop),
        "mountPath" => parse::<MountPathParams>(method, value).map(drop),
        "readFile" => parse::<ReadFileParams>(method, value).map(drop),
        "installSdk" => parse::<InstallSdkParams>(method, value).map(drop),
        "addApprovedOauthToken" => parse::<TokenParams>(method, value).map(drop),
        "setDebugLogging" => parse::<SetDebugLoggingParams>(method, value).map(drop),
        "sendGuestResponse" => parse::<SendGuestResponseParams>(method, value).map(drop),
        "getSessionsDiskInfo" => parse::<SessionsDiskInfoParams>(method, value).map(drop),
        "deleteSessionDirs" => parse::<DeleteSessionDirsParams>(method, value).map(drop),
        "pruneSessionCaches" => parse::<PruneSessionCachesParams>(method, value).map(drop),
        "subscribeEvents" => parse::<SubscribeEventsParams>(method, value).map(drop),
        _ => Ok(()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Frames encoded by the codec come back whole, in order, however the
    /// stream is cut.
    #[test]
    fn frames_round_trip_through_any_split(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut codec = frame::codec();
        let mut wire = BytesMut::new();
        for body in &bodies {
            codec.encode(Bytes::copy_from_slice(body), &mut wire).unwrap();
        }
        let (frames, failed) = decode_pieces(&split_at_points(&wire, &points));
        prop_assert!(!failed);
        prop_assert_eq!(frames, bodies);
    }

    /// Arbitrary bytes in arbitrary chunks never panic the decoder, and the
    /// chunking does not change what it decodes.
    #[test]
    fn frame_decoder_is_split_independent(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = decode_pieces(&[&bytes]);
        prop_assert_eq!(decode_pieces(&split_at_points(&bytes, &points)), whole);
    }

    /// A length prefix over the limit is an error, never a 4 GiB buffer.
    #[test]
    fn oversized_length_prefix_is_refused(len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX) {
        let (frames, failed) = decode_pieces(&[&len.to_be_bytes(), b"xx"]);
        prop_assert!(frames.is_empty() && failed);
    }

    /// The fast output writer is byte for byte serde's encoding, and parses
    /// back to the message, for any id and data text.
    #[test]
    fn encode_output_equals_serde(id in any::<String>(), data in any::<String>()) {
        let fast = frame::encode_output("stderr", &id, &data).unwrap();
        let msg = FromAgent::Stderr { id, data };
        prop_assert_eq!(&fast, &frame::encode(&msg).unwrap());
        let back: FromAgent = serde_json::from_slice(&fast[HEADER_LEN..]).unwrap();
        prop_assert_eq!(back, msg);
    }

    /// Agent messages, both directions, survive encoding and parsing.
    #[test]
    fn agent_messages_round_trip(to in to_agent(), from in from_agent()) {
        let framed = frame::encode(&to).unwrap();
        prop_assert_eq!(serde_json::from_slice::<ToAgent>(&framed[HEADER_LEN..]).unwrap(), to);
        let framed = from.to_frame().unwrap();
        prop_assert_eq!(serde_json::from_slice::<FromAgent>(&framed[HEADER_LEN..]).unwrap(), from);
    }

    /// Arbitrary bytes never panic the request or agent parsers.
    #[test]
    fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_request(&bytes);
        let _ = serde_json::from_slice::<FromAgent>(&bytes);
        let _ = serde_json::from_slice::<ToAgent>(&bytes);
    }

    /// A request written by a client parses to its method, id and params;
    /// a missing or null `params` is `{}`.
    #[test]
    fn requests_round_trip(
        method in any::<String>(),
        id in prop::option::of(json_value()),
        params in prop::option::of(object()),
    ) {
        let mut obj = Map::new();
        obj.insert("method".into(), Value::String(method.clone()));
        if let Some(id) = &id {
            obj.insert("id".into(), id.clone());
        }
        if let Some(params) = &params {
            obj.insert("params".into(), params.clone());
        }
        let req = parse_request(&serde_json::to_vec(&obj).unwrap()).unwrap();
        prop_assert_eq!(req.method, method);
        prop_assert_eq!(req.id, id);
        prop_assert_eq!(req.params, params.unwrap_or_else(|| json!({})));
    }

    /// Any object as the params of any method: parsed or refused with an
    /// error naming the method, never a panic.
    #[test]
    fn params_of_every_method_parse_or_name_the_method(
        method in prop::sample::select(&METHODS[..]),
        params in object(),
    ) {
        if let Err(e) = parse_params(method, params) {
            prop_assert!(e.starts_with(&format!("Invalid params for {method}")), "{}", e);
        }
    }

    /// A spawn keeps its mounts in the order the client wrote them and
    /// its env values as strings.
    #[test]
    fn spawn_params_keep_mount_order(
        names in prop::collection::vec("[a-z.]{1,8}", 0..6),
        env in prop::collection::btree_map("[A-Z_]{1,8}", any::<String>(), 0..4),
    ) {
        let mounts: Map<String, Value> = names
            .iter()
            .map(|n| (n.clone(), json!({"path": format!("home/u/{n}"), "mode": "rw"})))
            .collect();
        let p: params::SpawnParams = params::parse("spawn", json!({
            "id": "p", "name": "s", "command": "c",
            "additionalMounts": mounts, "env": env,
        })).unwrap();
        let got: Vec<String> = p.additional_mounts.unwrap().0.into_iter().map(|(n, _)| n).collect();
        let mut want: Vec<String> = Vec::new();
        for n in names {
            if !want.contains(&n) {
                want.push(n);
            }
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(p.env.unwrap().0, env);
    }

    /// Multiplexed stream frames come back whole, in order, however the
    /// channel cuts them.
    #[test]
    fn mux_frames_round_trip_through_any_split(
        frames in prop::collection::vec(mux_frame(), 0..8),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            mux::encode(f, &mut wire).unwrap();
        }
        prop_assert_eq!(decode_mux(&split_at_points(&wire, &points)), (frames, None));
    }

    /// Arbitrary channel bytes never panic the mux decoder, and the
    /// chunking does not change what it decodes or where it fails.
    #[test]
    fn mux_decoder_is_split_independent(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = decode_mux(&[&bytes]);
        prop_assert_eq!(decode_mux(&split_at_points(&bytes, &points)), whole);
    }

    /// Output decoded chunk by chunk is the text that was written, however
    /// it was cut (characters split across reads arrive whole).
    #[test]
    fn utf8_stream_reassembles_split_text(
        text in any::<String>(),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = Utf8Stream::new();
        let mut out = String::new();
        for piece in split_at_points(text.as_bytes(), &points) {
            out.push_str(&stream.decode(piece));
        }
        out.push_str(&stream.finish());
        prop_assert_eq!(out, text);
    }
}
