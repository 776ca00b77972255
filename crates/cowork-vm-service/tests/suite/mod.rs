pub mod harness;

mod bwrap;
mod doctor;
mod host;
mod launcher;
mod lifecycle;
mod protocol;
mod run;
