//! The soak (`--soak`): many spawns with output across many bwrap
//! sessions of one daemon, then an idle pause, with the daemon's resident
//! memory, descriptors, threads and process tree sampled along the way.
//! Both RSS and descriptors must come out flat: the last sample (after the
//! idle pause) within 10% of the first one taken after the warm-up.
//!
//! The warm-up is the first `warmup` spawns: they start every session's
//! sandbox and fill the daemon's bounded table of exited processes (it
//! remembers the last [`EXITED_KEPT`] exit codes for `isProcessRunning`,
//! about 1 MiB when full), so the default is one more than that bound.

pub use cowork_vm_service::processes::EXITED_KEPT;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::daemon::Daemon;

/// How far the last sample may be from the first after warm-up.
pub const FLAT_TOLERANCE: f64 = 0.10;

/// Each spawn prints the numbers 1 to this, one per line (692 bytes).
const LINES: u32 = 200;

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub spawns: usize,
    pub sessions: usize,
    pub sample_every: usize,
    /// Spawns before the first sample the verdict compares with.
    pub warmup: usize,
    pub idle: Duration,
    /// Spawns in flight at once.
    pub window: usize,
}

/// The daemon at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Spawns completed so far.
    pub spawns: usize,
    /// `before`, a count, or `idle N s`.
    pub label: String,
    pub seconds: f64,
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: usize,
    /// Processes below the daemon (sandboxes, agents, their children).
    pub procs: usize,
}

/// One metric's verdict: first sample after warm-up, last sample, change.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    pub first: f64,
    pub last: f64,
    pub change: f64,
    pub flat: bool,
}

impl Verdict {
    fn of(first: f64, last: f64) -> Verdict {
        let change = if first > 0.0 {
            (last - first) / first
        } else {
            0.0
        };
        Verdict {
            first,
            last,
            change,
            flat: change.abs() <= FLAT_TOLERANCE,
        }
    }
}

pub struct Soak {
    pub config: SoakConfig,
    pub samples: Vec<Sample>,
    /// Stdout bytes delivered, and expected.
    pub stdout_bytes: u64,
    pub expected_stdout_bytes: u64,
}

impl Soak {
    /// The first sample after warm-up and the last one.
    fn ends(&self) -> Option<(&Sample, &Sample)> {
        let first = self
            .samples
            .iter()
            .find(|s| s.spawns >= self.config.warmup.max(1))?;
        Some((first, self.samples.last()?))
    }

    pub fn rss(&self) -> Option<Verdict> {
        self.ends()
            .map(|(a, b)| Verdict::of(a.rss_kib as f64, b.rss_kib as f64))
    }

    pub fn fds(&self) -> Option<Verdict> {
        self.ends()
            .map(|(a, b)| Verdict::of(a.fds as f64, b.fds as f64))
    }

    pub fn is_flat(&self) -> bool {
        self.rss().is_some_and(|v| v.flat) && self.fds().is_some_and(|v| v.flat)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "soak: {} spawns with output ({} lines each) across {} bwrap sessions, {} in flight, \
             then {} s idle; warm-up {} spawns",
            c.spawns,
            LINES,
            c.sessions,
            c.window,
            c.idle.as_secs(),
            c.warmup
        );
        let _ = writeln!(
            out,
            "{:>12} {:>9} {:>10} {:>6} {:>8} {:>6}",
            "spawns", "time (s)", "RSS (MiB)", "fds", "threads", "procs"
        );
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{:>12} {:>9.1} {:>10.1} {:>6} {:>8} {:>6}",
                s.label,
                s.seconds,
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.threads,
                s.procs
            );
        }
        let _ = writeln!(
            out,
            "stdout delivered: {} of {} bytes",
            self.stdout_bytes, self.expected_stdout_bytes
        );
        for (name, verdict, unit, scale) in [
            ("RSS", self.rss(), " MiB", 1024.0),
            ("descriptors", self.fds(), "", 1.0),
        ] {
            let Some(v) = verdict else { continue };
            let _ = writeln!(
                out,
                "{name}: {:.1}{unit} after warm-up -> {:.1}{unit} at the end ({:+.1}%): {}",
                v.first / scale,
                v.last / scale,
                v.change * 100.0,
                if v.flat {
                    "flat"
                } else {
                    "NOT FLAT (more than 10% apart)"
                }
            );
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let verdict = |v: Option<Verdict>| {
            v.map(|v| json!({"first": v.first, "last": v.last, "change": v.change, "flat": v.flat}))
        };
        json!({
            "spawns": self.config.spawns,
            "sessions": self.config.sessions,
            "sampleEvery": self.config.sample_every,
            "warmup": self.config.warmup,
            "idleSeconds": self.config.idle.as_secs_f64(),
            "window": self.config.window,
            "samples": self.samples.iter().map(|s| json!({
                "spawns": s.spawns, "label": s.label, "seconds": s.seconds,
                "rssKib": s.rss_kib, "fds": s.fds, "threads": s.threads, "procs": s.procs,
            })).collect::<Vec<_>>(),
            "stdoutBytes": self.stdout_bytes,
            "expectedStdoutBytes": self.expected_stdout_bytes,
            "rss": verdict(self.rss()),
            "fds": verdict(self.fds()),
            "flat": self.is_flat(),
        })
    }
}

fn sample(d: &Daemon, spawns: usize, label: String, start: Instant) -> Result<Sample> {
    Ok(Sample {
        spawns,
        label,
        seconds: start.elapsed().as_secs_f64(),
        rss_kib: d.rss_kib()?,
        fds: d.fd_count()?,
        threads: d.threads()?,
        procs: d.descendants()?,
    })
}

/// The bytes `seq 1 LINES` prints.
fn seq_bytes() -> u64 {
    (1..=LINES).map(|i| i.to_string().len() as u64 + 1).sum()
}

/// Runs the soak against `d` (a daemon on the bwrap backend).
pub fn run(d: &Daemon, config: &SoakConfig) -> Result<Soak> {
    if config.sessions == 0 || config.window == 0 || config.sample_every == 0 {
        bail!("the soak needs at least one session, one spawn in flight and a sample interval");
    }
    let start = Instant::now();
    let mut samples = vec![sample(d, 0, "before".into(), start)?];
    let mut events = d.connect()?;
    events.subscribe()?;
    let mut requests = d.connect()?;
    let per_spawn = seq_bytes();
    let lines = LINES.to_string();
    // id -> stdout bytes seen so far.
    let mut in_flight: HashMap<String, u64> = HashMap::new();
    let mut sent = 0;
    let mut done = 0;
    let mut stdout_bytes = 0;
    while done < config.spawns {
        while sent < config.spawns && in_flight.len() < config.window {
            let id = format!("soak-{sent}");
            let session = format!("soak-{}", sent % config.sessions);
            requests.send(&json!({
                "method": "spawn",
                "id": id,
                "params": {"id": id, "name": session, "command": "/usr/bin/seq",
                           "args": ["1", lines], "isResume": false},
            }))?;
            in_flight.insert(id, 0);
            sent += 1;
        }
        let event = events.recv().context("reading events")?;
        let Some(id) = event.get("id").and_then(Value::as_str) else {
            continue;
        };
        let Some(seen) = in_flight.get_mut(id) else {
            continue;
        };
        match event.get("type").and_then(Value::as_str) {
            Some("stdout") => {
                *seen += event
                    .get("data")
                    .and_then(Value::as_str)
                    .map_or(0, |s| s.len() as u64);
            }
            Some("exit") => {
                if event.get("exitCode") != Some(&json!(0)) {
                    bail!("soak spawn failed: {event}");
                }
                let got = *seen;
                in_flight.remove(id);
                if got != per_spawn {
                    bail!("soak spawn lost output: {got} of {per_spawn} bytes");
                }
                stdout_bytes += got;
                done += 1;
                // The ack of a spawn precedes its events: it is there.
                let reply = requests.recv().context("reading a spawn reply")?;
                if reply.get("success") != Some(&Value::Bool(true)) {
                    bail!("spawn failed: {reply}");
                }
                if done % config.sample_every == 0 || done == config.spawns {
                    samples.push(sample(d, done, done.to_string(), start)?);
                }
            }
            Some("error") => bail!("soak spawn failed: {event}"),
            _ => {}
        }
    }
    drop(events);
    drop(requests);
    std::thread::sleep(config.idle);
    samples.push(sample(
        d,
        done,
        format!("idle {} s", config.idle.as_secs()),
        start,
    )?);
    Ok(Soak {
        config: config.clone(),
        samples,
        stdout_bytes,
        expected_stdout_bytes: per_spawn * config.spawns as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soak(points: &[(usize, u64, usize)]) -> Soak {
        Soak {
            config: SoakConfig {
                spawns: 3000,
                sessions: 2,
                sample_every: 1000,
                warmup: 1000,
                idle: Duration::from_secs(1),
                window: 2,
            },
            samples: points
                .iter()
                .map(|&(spawns, rss_kib, fds)| Sample {
                    spawns,
                    label: spawns.to_string(),
                    seconds: 0.0,
                    rss_kib,
                    fds,
                    threads: 1,
                    procs: 0,
                })
                .collect(),
            stdout_bytes: 0,
            expected_stdout_bytes: 0,
        }
    }

    #[test]
    fn flat_compares_the_last_sample_with_the_first_after_warm_up() {
        // The sample before any spawn (warm-up) does not count.
        let s = soak(&[
            (0, 1000, 10),
            (1000, 5000, 60),
            (2000, 5200, 61),
            (3000, 5400, 60),
        ]);
        assert!(s.is_flat(), "{}", s.table());
        assert!((s.rss().unwrap().change - 0.08).abs() < 1e-9);
        let grew = soak(&[(0, 1000, 10), (1000, 5000, 60), (3000, 5600, 60)]);
        assert!(!grew.is_flat());
        assert!(grew.table().contains("NOT FLAT"));
        let leaked = soak(&[(0, 1000, 10), (1000, 5000, 60), (3000, 5000, 67)]);
        assert!(!leaked.fds().unwrap().flat);
        assert!(soak(&[(0, 1000, 10)]).rss().is_none());
        // With a longer warm-up, the growth before it does not count.
        let mut filling = soak(&[
            (0, 1000, 10),
            (1000, 5000, 60),
            (2000, 6000, 60),
            (3000, 6100, 60),
        ]);
        assert!(!filling.is_flat());
        filling.config.warmup = 2000;
        assert!(filling.is_flat(), "{}", filling.table());
        assert_eq!(filling.rss().unwrap().first, 6000.0);
    }

    #[test]
    fn seq_output_size() {
        // 1-9: 2 bytes each, 10-99: 3, 100-200: 4.
        assert_eq!(seq_bytes(), 9 * 2 + 90 * 3 + 101 * 4);
    }
}
