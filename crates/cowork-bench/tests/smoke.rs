//! Keeps the benchmark working: tiny counts, our daemon only, JSON out.
//! It asserts that every figure was measured, never how fast it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn quick_run_measures_every_figure() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_cowork-bench"));
    let daemon = bench.with_file_name("cowork-vm-service");
    assert!(
        daemon.is_file(),
        "{} missing: the workspace build makes it",
        daemon.display()
    );
    let out = Command::new(&bench)
        .args(["--quick", "--json", "--daemon"])
        .arg(&daemon)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = v["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    for want in [
        "start_ms",
        "idle_rss_mib",
        "rss_after_spawns_mib",
        "rpc_one_shot_p50_ms",
        "rpc_pipelined_p99_ms",
        "spawn_host_p50_ms",
        "spawn_bwrap_cold_p50_ms",
        "spawn_bwrap_warm_p50_ms",
        "stdout_mbps",
        "concurrent_ms",
        "fork_exec_p50_ms",
        "bare_bwrap_p50_ms",
        "bwrap_pid1_one_command_p50_ms",
    ] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
    for f in v["figures"].as_array().unwrap() {
        let ours = f["ours"].as_f64().unwrap();
        assert!(ours.is_finite() && ours > 0.0, "{f}");
    }
    assert!(v["limits"]["raw_pipe_mbps"].as_f64().unwrap() > 0.0);
}

/// The soak mode, tiny: every sample taken, all output delivered, a
/// verdict for RSS and descriptors (flatness itself is not asserted: the
/// quick counts are too small to mean anything).
#[test]
fn quick_soak_samples_the_daemon() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_cowork-bench"));
    let daemon = bench.with_file_name("cowork-vm-service");
    let out = Command::new(&bench)
        .args(["--soak", "--quick", "--json", "--daemon"])
        .arg(&daemon)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stderr: {stderr}"));
    let samples = v["samples"].as_array().unwrap();
    // Before, every 50 of the 200 spawns, after the idle pause.
    let labels: Vec<&str> = samples
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["before", "50", "100", "150", "200", "idle 1 s"]);
    for s in samples {
        assert!(
            s["rssKib"].as_u64().unwrap() > 0 && s["fds"].as_u64().unwrap() > 0,
            "{s}"
        );
    }
    assert_eq!(v["stdoutBytes"], v["expectedStdoutBytes"]);
    assert_eq!(v["expectedStdoutBytes"], 200 * 692);
    assert_eq!(out.status.success(), v["flat"] == true, "{stderr}");
    assert!(v["rss"]["flat"].is_boolean() && v["fds"]["flat"].is_boolean());
}
