//! Host system plumbing used by the daemon: inherited descriptors, tree
//! walks, per-session cgroups.

pub mod cgroup;
pub mod cgroup_spawner;
pub mod exec_stub;
pub mod fds;
pub mod keyring;
pub mod pin;
pub mod privileges;
pub mod scm_rights;
pub mod spawn;
pub mod spawner;
pub mod systemd_scope;
pub mod tree;
