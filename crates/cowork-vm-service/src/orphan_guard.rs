//! Kills the host backend's process groups if the daemon dies without
//! cleaning up (`kill -9`).
//!
//! Host children are started with `posix_spawn` (vfork + exec), which is
//! much cheaper than forking the multi-threaded daemon but cannot set
//! `PR_SET_PDEATHSIG`. Instead a small guard process (`cowork-vm-service
//! guard`, hidden) reads `+PGID` / `-PGID` lines on its stdin, a pipe
//! whose only writer is the daemon; when the daemon dies the pipe ends and
//! the guard sends SIGKILL to every group still registered.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;

use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, Signal, kill_process_group};

/// The daemon's end.
pub struct OrphanGuard {
    writer: Mutex<File>,
}

impl OrphanGuard {
    /// Starts the guard process.
    pub fn start() -> std::io::Result<Self> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC)?;
        // Never block the runtime on a stalled guard: a lost line only
        // weakens the guarantee for one process.
        rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK)?;
        let exe = std::env::current_exe()?;
        Command::new(exe)
            .arg("guard")
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a Ctrl-C meant for `run` must not reach it.
            .process_group(0)
            .spawn()?;
        Ok(Self {
            writer: Mutex::new(File::from(write)),
        })
    }

    fn send(&self, line: &str) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.write_all(line.as_bytes()) {
            tracing::warn!("orphan guard: {e}");
        }
    }

    pub fn register(&self, pgid: Pid) {
        self.send(&format!("+{}\n", pgid.as_raw_nonzero()));
    }

    pub fn unregister(&self, pgid: Pid) {
        self.send(&format!("-{}\n", pgid.as_raw_nonzero()));
    }
}

/// Entry point of `cowork-vm-service guard`.
pub fn main() -> ExitCode {
    let mut groups = std::collections::HashSet::new();
    for line in BufReader::new(std::io::stdin().lock()).lines() {
        let Ok(line) = line else { break };
        apply(&mut groups, &line);
    }
    // The daemon is gone: nothing registered may outlive it.
    for pgid in groups {
        if let Some(pid) = Pid::from_raw(pgid) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
    ExitCode::SUCCESS
}

/// Applies one `+PGID` / `-PGID` line; anything else is ignored.
fn apply(groups: &mut std::collections::HashSet<i32>, line: &str) {
    let (op, num) = line.split_at(line.len().min(1));
    let Ok(pgid) = num.trim().parse::<i32>() else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    match op {
        "+" => {
            groups.insert(pgid);
        }
        "-" => {
            groups.remove(&pgid);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_table() {
        let mut g = std::collections::HashSet::new();
        for (line, want) in [
            ("+10", vec![10]),
            ("+11", vec![10, 11]),
            ("-10", vec![11]),
            ("+1", vec![11]),
            ("+-5", vec![11]),
            ("x12", vec![11]),
            ("+", vec![11]),
            ("", vec![11]),
        ] {
            apply(&mut g, line);
            let mut got: Vec<i32> = g.iter().copied().collect();
            got.sort_unstable();
            assert_eq!(got, want, "after {line:?}");
        }
    }
}
