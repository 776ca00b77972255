//! Pure policy of `cowork-vm-service`: every decision about paths, mounts,
//! environments, arguments, signals, sandbox command lines and backend
//! selection, as functions of their inputs. No function here performs I/O;
//! the few filesystem facts a decision needs come through [`fs_view::FsView`],
//! and host facts for backend selection through [`selection::HostProbe`].

pub mod args;
pub mod bwrap_argv;
pub mod bwrap_config;
pub mod command;
pub mod confine;
pub mod env;
pub mod fs_view;
pub mod mounts;
pub mod names;
pub mod net;
pub mod paths;
pub mod protect;
pub mod qemu_argv;
pub mod selection;
pub mod signal;
