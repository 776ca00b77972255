pub mod harness;

mod bwrap;
mod doctor;
mod host;
mod lifecycle;
mod protocol;
