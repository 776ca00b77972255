pub mod harness;

mod bwrap;
mod cgroup_v2;
mod claude_code;
mod contract;
mod doctor;
mod escapes;
mod hardening;
mod host;
mod install;
mod kvm;
mod launcher;
mod lifecycle;
mod network;
mod protocol;
mod reliability;
mod run;
