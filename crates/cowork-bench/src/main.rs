//! `cowork-bench`: measures cowork-vm-service against the reference daemon
//! and against the machine's own limits, side by side in one run.
//!
//! Every run starts fresh daemons on private sockets and homes; runs
//! alternate which implementation goes first, and each figure is the
//! median over runs (per-operation figures are a run's p50/p99 first).

mod daemon;
mod egress;
mod limits;
mod measure;
mod report;
mod soak;
mod stats;
mod vm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use daemon::{Daemon, Target};
use report::Results;
use stats::{median, percentile};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmark cowork-vm-service against the reference daemon and the machine's limits"
)]
struct Args {
    /// Our daemon binary (default: `cowork-vm-service` next to this one).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// The reference daemon's command line, e.g. 'node ../shared/reference/cowork-vm-service.js'.
    #[arg(long)]
    reference: Option<String>,
    /// Repetitions; figures are medians over runs.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// spawn -> exit samples per run on the host backend (RSS is read after them).
    #[arg(long, default_value_t = 1000)]
    spawns: usize,
    /// spawn -> exit samples per run into an existing bwrap session.
    #[arg(long, default_value_t = 300)]
    warm_spawns: usize,
    /// First spawns of new bwrap sessions per run (sandbox cold starts).
    #[arg(long, default_value_t = 20)]
    cold_spawns: usize,
    /// RPC samples per run (one-shot and pipelined each).
    #[arg(long, default_value_t = 2000)]
    rpcs: usize,
    /// Requests in flight for the pipelined RPC figure.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Bytes of stdout for the throughput figure.
    #[arg(long, default_value_t = 256 << 20)]
    stdout_bytes: u64,
    /// Spawns sent at once for the concurrency figure.
    #[arg(long, default_value_t = 50)]
    concurrent: usize,
    /// Bytes downloaded through the sandbox's proxy (and directly).
    #[arg(long, default_value_t = 1 << 30)]
    egress_bytes: u64,
    /// Connects timed to the first byte, through the proxy and directly.
    #[arg(long, default_value_t = 200)]
    connects: usize,
    /// Run the soak instead of the benchmark: our daemon on the bwrap
    /// backend, --soak-spawns spawns with output across --soak-sessions
    /// sessions, then --soak-idle-secs idle, sampling RSS and descriptors;
    /// exits 1 unless both are flat (last sample within 10% of the first
    /// after --soak-warmup spawns).
    #[arg(long)]
    soak: bool,
    /// Spawns of the soak.
    #[arg(long, default_value_t = 10_000)]
    soak_spawns: usize,
    /// Sessions (sandboxes) the soak's spawns go to, round robin.
    #[arg(long, default_value_t = 20)]
    soak_sessions: usize,
    /// Spawns between two samples.
    #[arg(long, default_value_t = 1000)]
    soak_sample_every: usize,
    /// Spawns before the sample the soak's verdict starts from: every
    /// sandbox started and the daemon's bounded table of exited processes
    /// full (default: one more than its 4,096 entries).
    #[arg(long, default_value_t = soak::EXITED_KEPT + 1)]
    soak_warmup: usize,
    /// Idle time after the soak's spawns, before the last sample.
    #[arg(long, default_value_t = 30)]
    soak_idle_secs: u64,
    /// `kvm`: measure the microVM backend instead (boots, spawns in the
    /// guest, idle CPU and memory); needs `cowork-vm-service setup-vm` and
    /// virtiofsd (COWORK_VM_GUEST_DIR, COWORK_VM_VIRTIOFSD_BIN pass through).
    #[arg(long, value_parser = ["kvm"])]
    backend: Option<String>,
    /// VM boots timed (kvm).
    #[arg(long, default_value_t = 5)]
    vm_boots: usize,
    /// spawn -> exit samples in the VM (kvm).
    #[arg(long, default_value_t = 100)]
    vm_spawns: usize,
    /// Seconds QEMU's idle CPU is measured over (kvm).
    #[arg(long, default_value_t = 30)]
    vm_idle_secs: u64,
    /// Tiny counts: checks that everything works, measures nothing useful.
    #[arg(long)]
    quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn apply_quick(&mut self) {
        if self.quick {
            self.runs = 1;
            self.spawns = 10;
            self.warm_spawns = 5;
            self.cold_spawns = 2;
            self.rpcs = 20;
            self.stdout_bytes = 1 << 20;
            self.concurrent = 5;
            self.egress_bytes = 16 << 20;
            self.connects = 10;
            self.soak_spawns = 200;
            self.soak_sessions = 4;
            self.soak_sample_every = 50;
            self.soak_warmup = 50;
            self.soak_idle_secs = 1;
        }
    }
}

fn our_daemon(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("this executable has no directory")?
            .join("cowork-vm-service"),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --workspace) or pass --daemon",
            path.display()
        );
    }
    Ok(path)
}

fn p(samples: &[f64], q: f64) -> f64 {
    percentile(samples, q).unwrap_or(f64::NAN)
}

/// Bare bwrap starts timed between our cold starts (see `measure_target`).
#[derive(Default)]
struct BareSamples {
    /// `bwrap … /usr/bin/true`.
    bare: Vec<f64>,
    /// `bwrap … sh -c /usr/bin/true`: a pid 1 that starts one command.
    pid1_one_command: Vec<f64>,
}

/// Every figure of one implementation for one run. With `bare`, bare
/// bwrap starts are timed after each sandbox cold start, so the figures
/// compared in the table see the same moments of a noisy machine.
fn measure_target(
    target: &Target,
    args: &Args,
    run: usize,
    bwrap: bool,
    mut bare: Option<&mut BareSamples>,
) -> Result<BTreeMap<&'static str, f64>> {
    let mut m = BTreeMap::new();
    let label = target.label;
    {
        let (d, start) =
            Daemon::start(target, "host", &[]).with_context(|| format!("{label}: host daemon"))?;
        m.insert("start_ms", stats::ms(start));
        std::thread::sleep(Duration::from_millis(200));
        m.insert("idle_rss_mib", d.rss_kib()? as f64 / 1024.0);
        let one = measure::rpc_one_shot(&d, args.rpcs)
            .with_context(|| format!("{label}: one-shot RPC"))?;
        m.insert("rpc_one_shot_p50_ms", p(&one, 50.0));
        m.insert("rpc_one_shot_p99_ms", p(&one, 99.0));
        let piped = measure::rpc_pipelined(&d, args.rpcs, args.window)
            .with_context(|| format!("{label}: pipelined RPC"))?;
        m.insert("rpc_pipelined_p50_ms", p(&piped, 50.0));
        m.insert("rpc_pipelined_p99_ms", p(&piped, 99.0));
        let host = measure::spawn_exit(&d, "host", args.spawns, |_| "bench".into(), || Ok(()))
            .with_context(|| format!("{label}: host spawns"))?;
        m.insert("spawn_host_p50_ms", p(&host, 50.0));
        m.insert("spawn_host_p99_ms", p(&host, 99.0));
        m.insert("rss_after_spawns_mib", d.rss_kib()? as f64 / 1024.0);
        m.insert(
            "concurrent_ms",
            measure::concurrent_spawns(&d, args.concurrent)
                .with_context(|| format!("{label}: concurrent spawns"))?,
        );
        m.insert(
            "stdout_mbps",
            measure::stdout_throughput(&d, args.stdout_bytes)
                .with_context(|| format!("{label}: stdout throughput"))?,
        );
    }
    if bwrap {
        let (d, _) = Daemon::start(target, "bwrap", &[])
            .with_context(|| format!("{label}: bwrap daemon"))?;
        // The session's sandbox starts here (reference: nothing persists).
        measure::spawn_exit(&d, "warmup", 1, |_| "warm".into(), || Ok(()))?;
        let warm = measure::spawn_exit(&d, "warm", args.warm_spawns, |_| "warm".into(), || Ok(()))
            .with_context(|| format!("{label}: warm bwrap spawns"))?;
        m.insert("spawn_bwrap_warm_p50_ms", p(&warm, 50.0));
        m.insert("spawn_bwrap_warm_p99_ms", p(&warm, 99.0));
        let limits = if bare.is_some() {
            Some((
                limits::BareBwrap::new(limits::TRUE)?,
                limits::BareBwrap::new(limits::SH_RUNS_TRUE)?,
            ))
        } else {
            None
        };
        let cold = measure::spawn_exit(
            &d,
            "cold",
            args.cold_spawns,
            |i| format!("cold-{run}-{i}"),
            || {
                d.settle_after_new_session();
                if let (Some((alone, pid1)), Some(samples)) = (&limits, bare.as_deref_mut()) {
                    samples.bare.push(alone.sample()?);
                    samples.pid1_one_command.push(pid1.sample()?);
                }
                Ok(())
            },
        )
        .with_context(|| format!("{label}: cold bwrap spawns"))?;
        m.insert("spawn_bwrap_cold_p50_ms", p(&cold, 50.0));
        // The network's way out: ours only (the reference shares the
        // host's network and has no proxy).
        if bare.is_some() {
            for (key, value) in egress::measure(&d, args.egress_bytes, args.connects)
                .with_context(|| format!("{label}: egress"))?
            {
                m.insert(key, value);
            }
        }
    }
    Ok(m)
}

/// The machine's limits for one run; `bare` holds the bare bwrap samples
/// taken between our cold starts.
fn measure_limits(args: &Args, bare: &BareSamples) -> Result<BTreeMap<&'static str, f64>> {
    let mut m = BTreeMap::new();
    let fork = limits::fork_exec(args.spawns.min(1000))?;
    m.insert("fork_exec_p50_ms", p(&fork, 50.0));
    if !bare.bare.is_empty() {
        m.insert("bare_bwrap_p50_ms", p(&bare.bare, 50.0));
        m.insert(
            "bwrap_pid1_one_command_p50_ms",
            p(&bare.pid1_one_command, 50.0),
        );
    }
    m.insert("raw_pipe_mbps", limits::raw_pipe(args.stdout_bytes)?);
    Ok(m)
}

fn medians(runs: &[BTreeMap<&'static str, f64>]) -> BTreeMap<&'static str, f64> {
    let mut keys: Vec<&'static str> = runs.iter().flat_map(|r| r.keys().copied()).collect();
    keys.dedup();
    let mut out = BTreeMap::new();
    for k in keys {
        let values: Vec<f64> = runs.iter().filter_map(|r| r.get(k).copied()).collect();
        if let Some(v) = median(&values) {
            out.insert(k, v);
        }
    }
    out
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.apply_quick();
    let ours = Target {
        label: "ours",
        argv: vec![
            our_daemon(args.daemon.clone())?
                .to_string_lossy()
                .into_owned(),
        ],
    };
    let reference = args.reference.as_ref().map(|r| Target {
        label: "reference",
        argv: r.split_whitespace().map(String::from).collect(),
    });
    let bwrap = limits::bwrap_path().is_some();
    if args.soak {
        return run_soak(&ours, &args, bwrap);
    }
    if args.backend.as_deref() == Some("kvm") {
        let vm_args = vm::VmArgs {
            boots: if args.quick { 1 } else { args.vm_boots },
            spawns: if args.quick { 5 } else { args.vm_spawns },
            idle_secs: if args.quick { 2 } else { args.vm_idle_secs },
        };
        let figures = vm::measure(&ours, &vm_args)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&figures)?);
        } else {
            for (k, v) in &figures {
                println!("{k:<34} {v:>10.1}");
            }
        }
        return Ok(());
    }
    if !bwrap {
        eprintln!("bwrap is not installed: bwrap figures are skipped");
    }
    let mut ours_runs = Vec::new();
    let mut ref_runs = Vec::new();
    let mut limit_runs = Vec::new();
    for run in 0..args.runs {
        eprintln!("run {}/{}", run + 1, args.runs);
        // Alternate who goes first so drift on a noisy machine hits both.
        let ours_first = run % 2 == 0;
        let mut bare = BareSamples::default();
        if ours_first {
            ours_runs.push(measure_target(&ours, &args, run, bwrap, Some(&mut bare))?);
        }
        if let Some(r) = &reference {
            ref_runs.push(measure_target(r, &args, run, bwrap, None)?);
        }
        if !ours_first {
            ours_runs.push(measure_target(&ours, &args, run, bwrap, Some(&mut bare))?);
        }
        let mut limits = measure_limits(&args, &bare)?;
        // The direct downloads and connects were taken next to ours.
        if let Some(last) = ours_runs.last_mut() {
            let direct: Vec<&'static str> = last
                .keys()
                .copied()
                .filter(|k| k.contains("_direct_"))
                .collect();
            for key in direct {
                if let Some(v) = last.remove(key) {
                    limits.insert(key, v);
                }
            }
        }
        limit_runs.push(limits);
    }
    let results = Results {
        runs: args.runs,
        ours: medians(&ours_runs),
        reference: reference.is_some().then(|| medians(&ref_runs)),
        limits: medians(&limit_runs),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results.to_json(&args_json(&args)))?
        );
    } else {
        print!("{}", results.table());
        println!(
            "\nmedians of {} runs; spawns {}, warm {}, cold {}, rpcs {}, stdout {} MiB, concurrent {}, \
             download {} MiB, connects {}",
            args.runs,
            args.spawns,
            args.warm_spawns,
            args.cold_spawns,
            args.rpcs,
            args.stdout_bytes >> 20,
            args.concurrent,
            args.egress_bytes >> 20,
            args.connects
        );
    }

    Ok(())
}

/// `--soak`: prints the curve, fails unless it is flat.
fn run_soak(ours: &Target, args: &Args, bwrap: bool) -> Result<()> {
    if !bwrap {
        bail!("the soak runs on the bwrap backend, and bwrap is not installed");
    }
    let config = soak::SoakConfig {
        spawns: args.soak_spawns,
        sessions: args.soak_sessions,
        sample_every: args.soak_sample_every,
        warmup: args.soak_warmup,
        idle: Duration::from_secs(args.soak_idle_secs),
        window: args.soak_sessions,
    };
    let (d, _) = Daemon::start(ours, "bwrap", &[]).context("ours: bwrap daemon")?;
    let result = soak::run(&d, &config).context("soak")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result.to_json())?);
    } else {
        print!("{}", result.table());
    }
    if !result.is_flat() {
        bail!("the soak's RSS or descriptor count is not flat");
    }
    Ok(())
}

fn args_json(a: &Args) -> serde_json::Value {
    serde_json::json!({
        "runs": a.runs, "spawns": a.spawns, "warmSpawns": a.warm_spawns,
        "coldSpawns": a.cold_spawns, "rpcs": a.rpcs, "window": a.window,
        "stdoutBytes": a.stdout_bytes, "concurrent": a.concurrent,
        "egressBytes": a.egress_bytes, "connects": a.connects,
    })
}
