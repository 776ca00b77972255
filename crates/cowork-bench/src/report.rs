//! The figures, their limits, and how they are printed.

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub higher_is_better: bool,
    /// The limit figure this one is compared with.
    pub limit: Option<&'static str>,
}

const fn fig(
    key: &'static str,
    label: &'static str,
    higher_is_better: bool,
    limit: Option<&'static str>,
) -> Figure {
    Figure {
        key,
        label,
        higher_is_better,
        limit,
    }
}

pub const FIGURES: [Figure; 23] = [
    fig("start_ms", "daemon start -> first RPC (ms)", false, None),
    fig("idle_rss_mib", "idle RSS (MiB)", false, None),
    fig(
        "rss_after_spawns_mib",
        "RSS after the host spawns (MiB)",
        false,
        None,
    ),
    fig("rpc_one_shot_p50_ms", "one-shot RPC p50 (ms)", false, None),
    fig("rpc_one_shot_p99_ms", "one-shot RPC p99 (ms)", false, None),
    fig(
        "rpc_pipelined_p50_ms",
        "pipelined RPC p50 (ms)",
        false,
        None,
    ),
    fig(
        "rpc_pipelined_p99_ms",
        "pipelined RPC p99 (ms)",
        false,
        None,
    ),
    fig(
        "spawn_host_p50_ms",
        "spawn->exit host p50 (ms)",
        false,
        Some("fork_exec_p50_ms"),
    ),
    fig(
        "spawn_host_p99_ms",
        "spawn->exit host p99 (ms)",
        false,
        None,
    ),
    fig(
        "spawn_bwrap_cold_p50_ms",
        "spawn->exit bwrap new session p50 (ms)",
        false,
        Some("bare_bwrap_p50_ms"),
    ),
    fig(
        "spawn_bwrap_warm_p50_ms",
        "spawn->exit bwrap existing session p50 (ms)",
        false,
        Some("fork_exec_p50_ms"),
    ),
    fig(
        "spawn_bwrap_warm_p99_ms",
        "spawn->exit bwrap existing session p99 (ms)",
        false,
        None,
    ),
    fig(
        "stdout_mbps",
        "stdout throughput (MB/s)",
        true,
        Some("raw_pipe_mbps"),
    ),
    fig(
        "concurrent_ms",
        "concurrent spawns, all exited (ms)",
        false,
        None,
    ),
    fig(
        "egress_connect_mbps",
        "download via proxy CONNECT (MB/s)",
        true,
        Some("egress_direct_mbps"),
    ),
    fig(
        "egress_socks_mbps",
        "download via proxy SOCKS5 (MB/s)",
        true,
        Some("egress_direct_mbps"),
    ),
    fig(
        "egress_first_byte_p50_ms",
        "connect->first byte via proxy p50 (ms)",
        false,
        Some("egress_first_byte_direct_p50_ms"),
    ),
    fig(
        "egress_first_byte_p99_ms",
        "connect->first byte via proxy p99 (ms)",
        false,
        None,
    ),
    fig(
        "fork_exec_p50_ms",
        "limit: fork+exec /usr/bin/true p50 (ms)",
        false,
        None,
    ),
    fig(
        "bare_bwrap_p50_ms",
        "limit: bare bwrap, same layout p50 (ms)",
        false,
        None,
    ),
    fig(
        "bwrap_pid1_one_command_p50_ms",
        "limit: same, pid 1 = sh -c true p50 (ms)",
        false,
        None,
    ),
    fig(
        "egress_direct_mbps",
        "limit: direct loopback download (MB/s)",
        true,
        None,
    ),
    fig(
        "egress_first_byte_direct_p50_ms",
        "limit: direct connect->first byte p50 (ms)",
        false,
        None,
    ),
];

pub const RAW_PIPE: &str = "raw_pipe_mbps";

pub struct Results {
    pub runs: usize,
    pub ours: BTreeMap<&'static str, f64>,
    pub reference: Option<BTreeMap<&'static str, f64>>,
    pub limits: BTreeMap<&'static str, f64>,
}

impl Results {
    fn ours_or_limit(&self, key: &str) -> Option<f64> {
        self.ours.get(key).or_else(|| self.limits.get(key)).copied()
    }

    /// How many times better we are than the reference (ref/ours for
    /// times and sizes, ours/ref for throughput).
    fn advantage(&self, f: &Figure) -> Option<f64> {
        let ours = *self.ours.get(f.key)?;
        let theirs = *self.reference.as_ref()?.get(f.key)?;
        Some(if f.higher_is_better {
            ours / theirs
        } else {
            theirs / ours
        })
    }

    fn limit_ratio(&self, f: &Figure) -> Option<(f64, f64)> {
        let limit = *self.limits.get(f.limit?)?;
        let ours = *self.ours.get(f.key)?;
        Some((limit, ours / limit))
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<46} {:>10} {:>10} {:>9} {:>10} {:>10}\n",
            "figure", "ours", "reference", "x better", "limit", "ours/limit"
        );
        let num = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"))
        };
        let mut rows: Vec<&Figure> = FIGURES.iter().collect();
        let raw = fig(RAW_PIPE, "limit: raw pipe (MB/s)", true, None);
        rows.push(&raw);
        for f in rows {
            let ours = self.ours_or_limit(f.key);
            if ours.is_none() {
                continue;
            }
            let theirs = self.reference.as_ref().and_then(|r| r.get(f.key).copied());
            let limit = self.limit_ratio(f);
            out.push_str(&format!(
                "{:<46} {:>10} {:>10} {:>9} {:>10} {:>10}\n",
                f.label,
                num(ours, 3),
                num(theirs, 3),
                self.advantage(f)
                    .map_or_else(|| "-".to_string(), |a| format!("{a:.1}x")),
                num(limit.map(|l| l.0), 3),
                limit.map_or_else(|| "-".to_string(), |l| format!("{:.2}", l.1)),
            ));
        }
        out
    }

    pub fn to_json(&self, counts: &Value) -> Value {
        let figures: Vec<Value> = FIGURES
            .iter()
            .filter(|f| self.ours_or_limit(f.key).is_some())
            .map(|f| {
                json!({
                    "key": f.key,
                    "label": f.label,
                    "ours": self.ours_or_limit(f.key),
                    "reference": self.reference.as_ref().and_then(|r| r.get(f.key)),
                    "advantage": self.advantage(f),
                    "limit": self.limit_ratio(f).map(|l| l.0),
                    "oursOverLimit": self.limit_ratio(f).map(|l| l.1),
                })
            })
            .collect();
        json!({
            "runs": self.runs,
            "counts": counts,
            "figures": figures,
            "limits": self.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantage_and_limit_ratios_point_the_right_way() {
        let r = Results {
            runs: 1,
            ours: BTreeMap::from([("spawn_host_p50_ms", 1.0), ("stdout_mbps", 400.0)]),
            reference: Some(BTreeMap::from([
                ("spawn_host_p50_ms", 4.0),
                ("stdout_mbps", 100.0),
            ])),
            limits: BTreeMap::from([("fork_exec_p50_ms", 0.5), ("raw_pipe_mbps", 800.0)]),
        };
        let by_key = |k: &str| {
            FIGURES
                .iter()
                .find(|f| f.key == k)
                .unwrap_or_else(|| panic!("{k}"))
        };
        assert_eq!(r.advantage(by_key("spawn_host_p50_ms")), Some(4.0));
        assert_eq!(r.advantage(by_key("stdout_mbps")), Some(4.0));
        assert_eq!(r.limit_ratio(by_key("spawn_host_p50_ms")), Some((0.5, 2.0)));
        assert_eq!(r.limit_ratio(by_key("stdout_mbps")), Some((800.0, 0.5)));
        let table = r.table();
        assert!(table.contains("4.0x"), "{table}");
    }
}
