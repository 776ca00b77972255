//! Host system plumbing used by the daemon: inherited descriptors, tree
//! walks, per-session cgroups.

pub mod fds;
pub mod tree;
