//! Host system plumbing used by the daemon: inherited descriptors, tree
//! walks, per-session cgroups.

pub mod cgroup;
pub mod cgroup_spawner;
pub mod fds;
pub mod pin;
pub mod privileges;
pub mod spawn;
pub mod tree;
