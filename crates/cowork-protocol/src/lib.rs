//! The wire protocol spoken by `cowork-vm-service`.
//!
//! Every connection, in both directions, carries frames:
//!
//! ```text
//! +----------------+---------------------------------+
//! | length: u32 BE | body: `length` bytes UTF-8 JSON |
//! +----------------+---------------------------------+
//! ```
//!
//! A body is at most [`frame::MAX_FRAME_LEN`] (10 MiB), the limit the desktop
//! client enforces on its side.
//!
//! * Client -> daemon: a request `{method, params?, id?}` ([`rpc`]).
//! * Daemon -> client: a response `{success, result | error, id?}` where `id`
//!   is echoed verbatim iff the request carried one ([`rpc`]), or, on a
//!   connection that called `subscribeEvents`, event frames `{type, ...}`
//!   ([`event`]).
//! * Daemon <-> agent (inside a sandbox or VM): the guest convention
//!   `{type: "request" | "response" | "notification" | <event>}` ([`agent`]).
//!
//! Method parameters are typed in [`params`]; [`text`] holds the streaming
//! UTF-8 decoder used for process output, [`json_string`] the fast writer
//! behind [`frame::encode_output`], [`mux`] the binary framing of a VM's
//! proxy streams.

pub mod agent;
pub mod event;
pub mod frame;
pub mod json_string;
pub mod mux;
pub mod params;
pub mod rpc;
pub mod text;
