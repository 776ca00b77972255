#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (or those named in $FUZZ_TARGETS)
# one after the other, each for SECONDS_PER_TARGET (default 60) or, with
# FUZZ_RUNS=N, for N executions, in one process on one core (libFuzzer's
# default: no -jobs, no -workers), starting from a copy of its
# checked-in seed corpus (fuzz/corpus/<target>/ never grows).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]
#   FUZZ_RUNS=10000000 bash scripts/fuzz.sh
#   FUZZ_TARGETS="socks5 http_head" bash scripts/fuzz.sh 30
#
# Prints one line per target (executions, seconds, executions per second,
# result) and exits non-zero if any target crashed; the crashing input is
# kept under $FUZZ_WORK/artifacts/<target>/ (replay it with
# `cargo +nightly fuzz run <target> <file>` in fuzz/).
#
# FUZZ_SANITIZER: `none` (default: ten times the executions per second;
# the code under test is safe Rust, and overflow checks and debug
# assertions stay on) or `address`.
# FUZZ_WORK: scratch directory (default: a fresh temporary one, removed at
# the end unless a target crashed).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
runs="${FUZZ_RUNS:-}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
work="${FUZZ_WORK:-$(mktemp -d -t cowork-fuzz.XXXXXX)}"
mkdir -p "$work"

echo "Building the fuzz targets (sanitizer: $sanitizer)..."
cargo +nightly fuzz build -s "$sanitizer" >"$work/build.log" 2>&1 || {
    cat "$work/build.log" >&2
    exit 2
}

if [ -n "$runs" ]; then
    limit=(-runs="$runs")
else
    limit=(-max_total_time="$seconds")
fi

crashed=0
printf '%-16s %14s %8s %10s  %s\n' target executions seconds exec/s result
for target in $targets; do
    corpus="$work/corpus/$target"
    artifacts="$work/artifacts/$target/"
    rm -rf "$corpus" "$artifacts"
    mkdir -p "$corpus" "$artifacts"
    cp corpus/"$target"/* "$corpus"/
    log="$work/$target.log"
    start=$(date +%s.%N)
    status=0
    cargo +nightly fuzz run -s "$sanitizer" "$target" "$corpus" -- \
        "${limit[@]}" -print_final_stats=1 \
        -artifact_prefix="$artifacts" >"$log" 2>&1 || status=$?
    end=$(date +%s.%N)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
    rate=$(awk -v n="${execs:-0}" -v s="$elapsed" 'BEGIN { printf "%.0f", (s > 0) ? n / s : 0 }')
    if [ "$status" = 0 ] && [ -z "$(ls -A "$artifacts")" ]; then
        result="ok, no crash"
    else
        result="CRASHED (exit $status): $(ls "$artifacts" | head -1); log $log"
        crashed=1
    fi
    printf '%-16s %14s %8s %10s  %s\n' "$target" "${execs:-?}" "$elapsed" "$rate" "$result"
done

if [ "$crashed" = 0 ] && [ -z "${FUZZ_WORK:-}" ]; then
    rm -rf "$work"
else
    echo "Logs, grown corpora and artifacts: $work"
fi
exit "$crashed"
