//! `cowork-vm-service`: the Linux helper behind Claude Desktop's Cowork mode.
//!
//! ```text
//! desktop client --unix socket--> server --> service (dispatch) --> Backend
//!                                   |                               |- host
//!                                   v                               `- bwrap (agent inside)
//!                               event hub <-- process events
//! ```
//!
//! Modules, by layer:
//! * entry points: [`cli`], [`daemon`], [`run`], [`hookup`] (install-client),
//!   [`generate`] (man pages, completions);
//! * transport: [`socket`] (safe bind), [`server`] (connections), [`client`];
//! * dispatch: [`service`], [`events`], [`processes`], [`process_events`];
//! * execution: [`backend`], [`supervise`];
//! * host state: [`sessions`] (with [`spare_dir`]), [`read_file`], [`dirs`], [`real_fs`],
//!   [`logging`];
//! * build: [`lean_linking`] (with `build.rs`: fewer shared libraries to load).
//!
//! Policy decisions (paths, mounts, env, args, selection) live in the
//! `cowork-policy` crate; the wire format in `cowork-protocol`.

pub mod agent;
pub mod backend;
pub mod child_setup;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod dirs;
pub mod doctor;
pub mod events;
pub mod framing;
pub mod generate;
pub mod hookup;
pub mod lean_linking;
pub mod logging;
pub mod netmux;
pub mod process_events;
pub mod processes;
pub mod read_file;
pub mod real_fs;
pub mod run;
pub mod server;
pub mod service;
pub mod sessions;
pub mod socket;
pub mod spare_dir;
pub mod supervise;
pub mod sys;
