#!/usr/bin/env bash
# The iperf comparison: unmodified iperf2 and iperf3 over pcisock (emulated NTB) and over plain
# TCP loopback, interleaved in one run, medians of RUNS runs, and the ratio.
#
# usage: iperf-tests/compare.sh [--runs N] [--bytes SIZE] [--len SIZE] [--out FILE]
#   --runs N     runs per variant (default 5; this VM is noisy, see research/baseline.md §0)
#   --bytes SIZE bytes per iperf2 run (iperf -n; default 2G); iperf3 uses the same with -n
#   --len SIZE   write size (iperf -l; default 128K, iperf's default)
#   --out FILE   also write the table (markdown) to FILE
# Needs: iperf, iperf3 (Debian packages) and a release build (cargo build --release).
# Every process it starts is ended by PID; the emulated device lives in a private temp dir.
set -euo pipefail

RUNS=5 BYTES=2G LEN=128K OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --bytes) BYTES="$2"; shift 2 ;;
        --len) LEN="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --runs must be a positive integer" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
[[ -f "$lib" ]] || { echo "compare.sh: $lib not found: run cargo build --release" >&2; exit 2; }
for tool in iperf iperf3; do
    command -v "$tool" >/dev/null || { echo "compare.sh: $tool not installed (apt-get install -y iperf iperf3)" >&2; exit 2; }
done

# shellcheck source=../benches/common.sh
source "$root/benches/common.sh"
bench_init compare.sh

# One iperf2 run: prints bits/s. $1 = ntb|tcp, $2 = port
iperf2_run() {
    local mode=$1 port=$2 env=()
    if [[ $mode == ntb ]]; then
        env=(LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$work/emu" PCISOCK_PORTS="$port" PCISOCK_STRICT=1)
    fi
    env "${env[@]}" iperf -s -p "$port" >"$work/s.log" 2>&1 &
    local spid=$!; pids+=("$spid")
    wait_listen "$port"
    local out
    out="$(env "${env[@]}" timeout 120 iperf -c 127.0.0.1 -p "$port" -n "$BYTES" -l "$LEN" -y C 2>"$work/c.err")" || {
        echo "compare.sh: iperf2 client ($mode) failed: $(cat "$work/c.err")" >&2; kill "$spid"; return 1; }
    kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
    echo "$out" | tail -1 | awk -F, '{print $9}'
}

# One iperf3 run: prints receiver bits/s. $1 = ntb|tcp, $2 = port
iperf3_run() {
    local mode=$1 port=$2 env=()
    if [[ $mode == ntb ]]; then
        env=(LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$work/emu" PCISOCK_PORTS="$port" PCISOCK_STRICT=1)
    fi
    env "${env[@]}" iperf3 -s -1 -p "$port" >"$work/s3.log" 2>&1 &
    local spid=$!; pids+=("$spid")
    wait_listen "$port"
    local out
    out="$(env "${env[@]}" timeout 120 iperf3 -c 127.0.0.1 -p "$port" -n "$BYTES" -l "$LEN" -J 2>"$work/c3.err")" || {
        echo "compare.sh: iperf3 client ($mode) failed: $(cat "$work/c3.err")" >&2; kill "$spid"; return 1; }
    wait "$spid" 2>/dev/null || true
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_sent"]["bits_per_second"]))' <<<"$out"
}

gbit() { awk -v b="$1" 'BEGIN {printf "%.2f", b/1e9}'; }

mkdir -m 700 "$work/emu"
next_port

declare -A res
echo "pcisock vs TCP loopback: iperf2 and iperf3, -n $BYTES -l $LEN, $RUNS interleaved runs each" >&2
for i in $(seq "$RUNS"); do
    for tool in iperf2 iperf3; do
        for mode in ntb tcp; do
            bps="$(${tool}_run "$mode" "$port")"
            res[$tool-$mode]+="$bps "
            printf '  run %d %-6s %-3s %8s Gbit/s\n' "$i" "$tool" "$mode" "$(gbit "$bps")" >&2
        done
    done
done

table="$(
    echo "| tool | pcisock (emulated NTB) Gbit/s | TCP loopback Gbit/s | ratio |"
    echo "|---|---|---|---|"
    for tool in iperf2 iperf3; do
        n="$(tr ' ' '\n' <<<"${res[$tool-ntb]}" | grep . | median)"
        t="$(tr ' ' '\n' <<<"${res[$tool-tcp]}" | grep . | median)"
        echo "| $tool | $(gbit "$n") | $(gbit "$t") | $(awk -v a="$n" -v b="$t" 'BEGIN {printf "%.1fx", a/b}') |"
    done
)"
echo
echo "medians of $RUNS runs (-n $BYTES, -l $LEN), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r)"
echo "$table"
if [[ -n "$OUT" ]]; then
    {
        echo "# iperf over pcisock vs TCP loopback"
        echo
        echo "Command: \`iperf-tests/compare.sh --runs $RUNS --bytes $BYTES --len $LEN\`"
        echo
        echo "Medians of $RUNS interleaved runs, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r)."
        echo
        echo "$table"
    } >"$OUT"
fi
