//! A new sandbox's first command, started before the agent's own set-up.
//!
//! The daemon writes a sandbox's first `spawn` request right after
//! starting bwrap, long before the agent runs. Taking that request off the
//! channel first thing and starting its process before the runtime exists
//! lets the command's exec (on another core) overlap the agent's set-up:
//! about 0.13 ms of every new session's first command on the CI machine.
//! Anything else (another method, a partial or malformed frame) is left on
//! the channel for the normal request loop.

use std::io;
use std::os::fd::OwnedFd;

use bytes::BytesMut;
use cowork_protocol::agent::{SpawnRequest, ToAgent, method};
use cowork_protocol::frame;
use rustix::net::{RecvFlags, recv};
use tokio_util::codec::Decoder;

use super::children::{LaunchFailure, Launched, launch};

/// How much of the channel is looked at; a first request larger than this
/// (a huge environment) simply takes the normal path.
const PEEK_LEN: usize = 16 * 1024;

/// The first request, already launched.
pub(crate) struct EarlySpawn {
    pub request_id: u64,
    pub launched: Result<Launched, LaunchFailure>,
}

/// Takes a complete `spawn` request waiting on `channel` and launches it.
/// An error means the channel is unusable (a frame was half consumed).
pub(crate) fn take(channel: &OwnedFd) -> io::Result<Option<EarlySpawn>> {
    let mut peeked = vec![0u8; PEEK_LEN];
    let Ok((waiting, _)) = recv(
        channel,
        &mut peeked[..],
        RecvFlags::PEEK | RecvFlags::DONTWAIT,
    ) else {
        // Nothing waiting yet (or a transient error): the normal path.
        return Ok(None);
    };
    let Some((request_id, req, frame_len)) = parse_spawn(&peeked[..waiting]) else {
        return Ok(None);
    };
    consume(channel, frame_len)?;
    Ok(Some(EarlySpawn {
        request_id,
        launched: launch(req),
    }))
}

/// The first frame of `bytes` if it is a complete, well-formed `spawn`
/// request: its id, the request, and the frame's length on the wire.
fn parse_spawn(bytes: &[u8]) -> Option<(u64, SpawnRequest, usize)> {
    let mut buf = BytesMut::from(bytes);
    let body = frame::codec().decode(&mut buf).ok()??;
    let frame_len = bytes.len() - buf.len();
    match serde_json::from_slice(&body).ok()? {
        ToAgent::Request { id, method, params } if method == method::SPAWN => {
            let req = serde_json::from_value(params).ok()?;
            Some((id, req, frame_len))
        }
        _ => None,
    }
}

/// Reads exactly `len` bytes that a peek showed are waiting.
fn consume(channel: &OwnedFd, len: usize) -> io::Result<()> {
    let mut sink = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match recv(channel, &mut sink[done..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok((n, _)) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cowork_protocol::agent::ToAgent;
    use serde_json::json;

    fn request(method: &str, params: serde_json::Value) -> Vec<u8> {
        let message = ToAgent::Request {
            id: 7,
            method: method.into(),
            params,
        };
        frame::encode(&message).unwrap().to_vec()
    }

    fn spawn_params() -> serde_json::Value {
        json!({"id": "p", "command": "/usr/bin/true", "args": [], "env": {}, "cwd": "/"})
    }

    #[test]
    fn only_a_complete_well_formed_spawn_is_taken() {
        let spawn = request("spawn", spawn_params());
        let mut two = spawn.clone();
        two.extend(request("status", json!({})));
        let cases: [(&str, &[u8], Option<usize>); 6] = [
            ("a spawn", &spawn, Some(spawn.len())),
            ("a spawn, then more", &two, Some(spawn.len())),
            ("half a spawn", &spawn[..spawn.len() - 1], None),
            ("another method", &request("status", json!({})), None),
            (
                "bad spawn params",
                &request("spawn", json!({"id": 1})),
                None,
            ),
            ("nothing", b"", None),
        ];
        for (what, bytes, want) in cases {
            let got = parse_spawn(bytes).map(|(id, req, len)| {
                assert_eq!((id, req.command.as_str()), (7, "/usr/bin/true"), "{what}");
                len
            });
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn take_consumes_exactly_the_first_frame() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let ours = OwnedFd::from(ours);
        let mut theirs = theirs;
        assert!(take(&ours).unwrap().is_none(), "nothing waiting");
        let mut bytes = request("spawn", spawn_params());
        let status = request("status", json!({}));
        bytes.extend(&status);
        std::io::Write::write_all(&mut theirs, &bytes).unwrap();
        let early = take(&ours).unwrap().expect("the spawn is taken");
        assert_eq!(early.request_id, 7);
        assert!(early.launched.is_ok());
        let mut rest = vec![0u8; status.len()];
        let stream = std::os::unix::net::UnixStream::from(ours);
        std::io::Read::read_exact(&mut &stream, &mut rest).unwrap();
        assert_eq!(rest, status, "the next frame is left for the request loop");
    }
}
