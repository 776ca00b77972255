//! `cowork-vm-service --doctor`: which backend Cowork gets on this machine,
//! why, and what to do about every problem found.
//!
//! [`facts::gather`] looks at the machine; [`checks::diagnose`] turns the
//! facts into a [`report::Report`] (pure, so tests fake any machine); the
//! exit status is the number of failures.

pub mod apparmor;
pub mod checks;
pub mod client;
pub mod facts;
pub mod layers;
pub mod report;
pub mod vm;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::dirs::Dirs;
use crate::real_fs::RealFs;

/// Entry point of `--doctor` / `doctor`.
pub fn main(json: bool, socket: Option<PathBuf>) -> ExitCode {
    let dirs = Dirs::from_env();
    let socket = socket.unwrap_or_else(|| dirs.default_socket());
    let facts = facts::gather(&dirs, &socket);
    let report = checks::diagnose(&facts, &RealFs);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
        );
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", report.render_text(colour));
    }
    ExitCode::from(report.exit_status())
}
