pub mod harness;

mod bwrap;
mod host;
mod lifecycle;
mod protocol;
