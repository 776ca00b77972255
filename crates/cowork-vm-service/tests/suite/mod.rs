pub mod harness;

mod host;
mod lifecycle;
mod protocol;
