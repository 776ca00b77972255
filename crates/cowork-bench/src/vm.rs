//! `cowork-bench --backend kvm`: the microVM's figures (ours only; the
//! reference's KVM path needs the official rootfs and vhost-vsock).
//!
//! * boot: a fresh daemon per boot, `startVM` timed until it returns (it
//!   returns once the guest's agent answers), then `stopVM`; failures and
//!   boots over the limit are counted, never hidden;
//! * spawn to exit of `/usr/bin/true` in a warm session VM;
//! * idle CPU of QEMU over 30 s (after a settle);
//! * host memory of an idle 256 MiB session VM: QEMU plus its virtiofsd
//!   processes (and, apart, our guard processes), as PSS: they share the
//!   guest's memory, which a sum of RSS would count several times.
//!
//! The daemon gets the VM settings of the environment it runs in
//! (`COWORK_VM_GUEST_DIR`, `COWORK_VM_VIRTIOFSD_BIN`, `COWORK_VM_ACCEL`)
//! and a shared cache, so the initramfs is built once for all boots.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::daemon::{Daemon, Target};
use crate::measure;
use crate::stats::{median, ms, percentile};

/// Settings of the VM figures.
pub struct VmArgs {
    pub boots: usize,
    pub spawns: usize,
    pub idle_secs: u64,
}

fn passed_env(cache: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        "COWORK_VM_GUEST_DIR",
        "COWORK_VM_VIRTIOFSD_BIN",
        "COWORK_VM_ACCEL",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
    .collect();
    env.push(("XDG_CACHE_HOME".into(), cache.into()));
    env
}

fn start(target: &Target, env: &[(String, String)]) -> Result<Daemon> {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(Daemon::start(target, "kvm", &pairs)?.0)
}

/// `(pid, comm, utime+stime ticks, rss KiB)` of every process below `root`.
fn descendants(root: u32) -> Vec<(u32, String, u64, u64)> {
    let mut table: Vec<(u32, u32, String, u64, u64)> = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ppid: u32 = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let cpu: u64 = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // PSS, not RSS: QEMU and every virtiofsd map the same guest
        // memory (memfd), which RSS would count once per process.
        let rss = std::fs::read_to_string(e.path().join("smaps_rollup"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Pss:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0);
        table.push((pid, ppid, comm, cpu, rss));
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, comm, cpu, rss) in &table {
            if *ppid == p {
                out.push((*pid, comm.clone(), *cpu, *rss));
                frontier.push(*pid);
            }
        }
    }
    out
}

/// `/proc/PID/stat` counts CPU time in USER_HZ, which Linux fixes at 100.
fn clock_ticks() -> f64 {
    100.0
}

pub fn measure(target: &Target, args: &VmArgs) -> Result<BTreeMap<&'static str, f64>> {
    let cache = crate::daemon::scratch_dir("cowork-bench-vmcache-")?;
    let env = passed_env(&cache.path().to_string_lossy());
    let mut m = BTreeMap::new();
    // Boots (the first one also builds the initramfs: it is not counted).
    {
        let d = start(target, &env)?;
        d.one_shot("startVM", json!({}))
            .context("warm-up boot (builds the initramfs)")?;
    }
    let mut boots = Vec::new();
    let mut failed = 0;
    for i in 0..args.boots {
        let d = start(target, &env)?;
        let t = Instant::now();
        let reply = d.one_shot("startVM", json!({}));
        let took = ms(t.elapsed());
        match reply {
            Ok(r) if r.get("success") == Some(&json!(true)) => boots.push(took),
            other => {
                failed += 1;
                eprintln!("boot {i}: failed after {took:.0} ms: {other:?}");
            }
        }
        let _ = d.one_shot("stopVM", json!({}));
        eprintln!("boot {}/{}: {took:.0} ms", i + 1, args.boots);
    }
    m.insert("vm_boot_p50_ms", median(&boots).unwrap_or(f64::NAN));
    m.insert(
        "vm_boot_max_ms",
        boots.iter().copied().fold(f64::NAN, f64::max),
    );
    m.insert("vm_boots", boots.len() as f64);
    m.insert("vm_boots_failed", failed as f64);
    // A warm session VM of 256 MiB: spawns, idle CPU, memory.
    let d = start(target, &env)?;
    d.one_shot("configure", json!({"memoryMB": 256, "cpuCount": 1}))?;
    d.one_shot("startVM", json!({}))?;
    measure::spawn_exit(&d, "vm-warmup", 1, |_| "vm".into(), || Ok(()))
        .context("first spawn (boots the session VM)")?;
    let spawns = measure::spawn_exit(&d, "vm", args.spawns, |_| "vm".into(), || Ok(()))
        .context("spawns in the VM")?;
    m.insert(
        "vm_spawn_true_p50_ms",
        percentile(&spawns, 50.0).unwrap_or(f64::NAN),
    );
    m.insert(
        "vm_spawn_true_p99_ms",
        percentile(&spawns, 99.0).unwrap_or(f64::NAN),
    );
    // The startVM VM retires once the session's is up.
    std::thread::sleep(Duration::from_secs(10));
    let helpers = descendants(d.pid());
    let qemus: Vec<_> = helpers
        .iter()
        .filter(|h| h.1.starts_with("qemu-system"))
        .collect();
    if qemus.len() != 1 {
        bail!("expected one QEMU after the settle, found {}", qemus.len());
    }
    let qemu = qemus[0].0;
    let cpu_of = |pid: u32| -> u64 {
        descendants(d.pid())
            .iter()
            .find(|h| h.0 == pid)
            .map_or(0, |h| h.2)
    };
    let before = cpu_of(qemu);
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let after = cpu_of(qemu);
    m.insert(
        "vm_idle_qemu_cpu_pct",
        (after - before) as f64 / clock_ticks() / args.idle_secs as f64 * 100.0,
    );
    let helpers = descendants(d.pid());
    let sum = |pred: &dyn Fn(&str) -> bool| -> f64 {
        helpers
            .iter()
            .filter(|h| pred(&h.1))
            .map(|h| h.3 as f64 / 1024.0)
            .sum()
    };
    m.insert(
        "vm_idle_pss_qemu_virtiofsd_mib",
        sum(&|c| c.starts_with("qemu-system") || c.starts_with("virtiofsd")),
    );
    m.insert(
        "vm_idle_pss_guards_mib",
        sum(&|c| c.starts_with("cowork-vm-ser")),
    );
    let _ = d.one_shot("stopVM", json!({}));
    Ok(m)
}
