//! The processes below the agent, read from `/proc`.
//!
//! Why ending them this way is complete (host backend): the agent is a
//! child subreaper, so a process that loses its parent (a double fork, a
//! `setsid` daemon, `nohup ... &` after the shell exits) is re-parented to
//! the nearest living subreaper above it, which is the agent or another
//! process that is itself below the agent. Leaving a process group or
//! session changes nothing about parentage. So every process started
//! through the agent stays in the agent's subtree for as long as the agent
//! lives, and [`end_all`] kills the subtree until it is empty: a process
//! that forks while being killed leaves a child that is re-parented into
//! the subtree and found by the next round. The only way out is the
//! agent's own death by SIGKILL before it has ended them (then its orphans
//! go to init); the daemon never kills the host agent before it reports
//! it is done.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// Parent of `pid` from the text of `/proc/<pid>/stat` (`None` if it does
/// not parse). The command name in parentheses may contain anything,
/// including `) `, so the fields are read after its last `)`.
pub(crate) fn parent_from_stat(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// Every process whose chain of parents leads to `root` (not `root`
/// itself), given `(pid, parent)` pairs.
pub(crate) fn subtree(root: i32, parents: &[(i32, i32)]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for &(pid, ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(kids) = children.get(&p) {
            for &k in kids {
                // A pid can appear once only, but guard against a corrupt
                // table making a cycle.
                if k != root && !found.contains(&k) {
                    found.push(k);
                    stack.push(k);
                }
            }
        }
    }
    found
}

/// `(pid, parent)` of every process this `/proc` shows.
fn process_table() -> Vec<(i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, parent_from_stat(&stat)?))
        })
        .collect()
}

/// The processes below the calling process.
pub(crate) fn below_me() -> Vec<i32> {
    subtree(
        rustix::process::getpid().as_raw_nonzero().get(),
        &process_table(),
    )
}

/// Sends `signal` to every process below us; returns how many there were.
pub(crate) fn signal_all(signal: Signal) -> usize {
    let pids = below_me();
    for &pid in &pids {
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = kill_process(pid, signal);
        }
    }
    pids.len()
}

/// SIGTERM to everything below us, up to `grace` for it to go (the
/// caller's reaper collects the exits meanwhile: `pause` yields to it),
/// then SIGKILL rounds until nothing is left.
pub(crate) async fn end_all(grace: Duration) {
    let pause = || tokio::time::sleep(Duration::from_millis(20));
    if signal_all(Signal::TERM) == 0 {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        pause().await;
        if below_me().is_empty() {
            return;
        }
    }
    // Bounded: each round kills every process there is; only processes
    // forked during the round survive it, and they cannot fork once killed.
    for _ in 0..1000 {
        if signal_all(Signal::KILL) == 0 {
            return;
        }
        pause().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn parent_is_read_after_the_last_parenthesis() {
        let cases = [
            ("1 (init) S 0 1 1 0", Some(0)),
            ("42 (sleep) S 7 42 42 0 -1", Some(7)),
            ("43 (a) b) S) R 9 43", Some(9)),
            ("44 (x y z) Z 12 1", Some(12)),
            ("garbage", None),
            ("45 (x) S", None),
        ];
        for (stat, want) in cases {
            assert_eq!(parent_from_stat(stat), want, "{stat}");
        }
    }

    #[test]
    fn subtree_follows_every_generation_and_nothing_else() {
        let table = [
            (10, 1),  // us
            (11, 10), // child
            (12, 11), // grandchild
            (13, 12), // great-grandchild
            (14, 10), // re-parented orphan
            (20, 1),  // someone else
            (21, 20),
        ];
        let mut got = subtree(10, &table);
        got.sort_unstable();
        assert_eq!(got, [11, 12, 13, 14]);
        assert_eq!(subtree(99, &table), Vec::<i32>::new());
        // A corrupt table with a cycle terminates.
        let cyclic = [(2, 3), (3, 2), (4, 1)];
        let mut got = subtree(2, &cyclic);
        got.sort_unstable();
        assert_eq!(got, [3]);
    }

    #[test]
    fn below_me_sees_a_real_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(below_me().contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!below_me().contains(&pid));
    }
}
