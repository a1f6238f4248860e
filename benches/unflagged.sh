#!/usr/bin/env bash
# What libpcisock.so costs a socket it does not carry (issue 5: iperf3 on an unflagged port
# ≥ 0.95 of no preload). iperf3 over TCP loopback on a port no rule flags, with and without
# LD_PRELOAD=libpcisock.so on both sides, interleaved (order alternating per round); medians
# and the median of the per-round ratios. Every preloaded run must leave a stats file with no
# flagged connection at all (the sockets were never tracked), or the script fails.
#
# usage: benches/unflagged.sh [--runs N] [--time S] [--len SIZE] [--out FILE]
#   --runs N     rounds (default 7)
#   --time S     iperf3 -t per run (default 3)
#   --len SIZE   iperf3 -l (default 128K, iperf3's default)
#   --out FILE   also write the markdown to FILE (e.g. benches/results/unflagged.md)
# Needs: iperf3, python3, a release build of libpcisock.so (PCISOCK_LIB overrides).
set -euo pipefail

RUNS=7 TSEC=3 LEN=128K OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --time) TSEC="$2"; shift 2 ;;
        --len) LEN="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "unflagged.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ && "$TSEC" =~ ^[1-9][0-9]*$ ]] || { echo "unflagged.sh: --runs and --time must be positive integers" >&2; exit 2; }
[[ "$LEN" =~ ^[1-9][0-9]*[KM]?$ ]] || { echo "unflagged.sh: bad --len $LEN (e.g. 128K)" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
[[ -f "$lib" ]] || { echo "unflagged.sh: $lib not found: run cargo build --release" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "unflagged.sh: iperf3 not installed (apt-get install -y iperf3)" >&2; exit 2; }

# shellcheck source=common.sh
source "$root/benches/common.sh"
bench_init unflagged.sh
mkdir -m 700 "$work/emu"

# One run: prints the receiver's bits/s. $1 = plain|preload.
run() {
    local mode=$1 env=()
    next_port
    # PCISOCK_DEFAULT_PORTS=0 and no PCISOCK_PORTS: no rule flags this port.
    [[ $mode == preload ]] && env=(LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$work/emu" PCISOCK_DEFAULT_PORTS=0)
    rm -f "$work"/stats-*.json
    env "${env[@]}" ${env:+PCISOCK_STATS_FILE="$work/stats-s.json"} iperf3 -s -1 -p "$port" >"$work/s.log" 2>&1 &
    local spid=$!; pids+=("$spid")
    wait_listen "$port" || return 1
    local out
    out="$(env "${env[@]}" ${env:+PCISOCK_STATS_FILE="$work/stats-c.json"} timeout $((TSEC + 30)) iperf3 -c 127.0.0.1 -p "$port" -t "$TSEC" -l "$LEN" -J 2>"$work/c.err")" || {
        echo "unflagged.sh: iperf3 client ($mode) failed: $(cat "$work/c.err")" >&2; kill "$spid"; return 1; }
    wait "$spid" 2>/dev/null || true
    if [[ $mode == preload ]]; then
        for f in "$work/stats-s.json" "$work/stats-c.json"; do
            [[ -f $f ]] || { echo "unflagged.sh: no stats file $f from the preloaded run" >&2; return 1; }
            python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d["ntb_connections"] + d["tcp_connections"] != 0)' "$f" ||
                { echo "unflagged.sh: the preloaded run tracked a connection ($f): the port was flagged" >&2; return 1; }
        done
    fi
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))' <<<"$out"
}

gbit() { awk -v b="$1" 'BEGIN {printf "%.2f", b/1e9}'; }

declare -A res
ratios=""
started="$(date -u +%Y-%m-%dT%H:%MZ)"
for r in $(seq "$RUNS"); do
    order=(plain preload); (( r % 2 == 0 )) && order=(preload plain)
    declare -A this=()
    for mode in "${order[@]}"; do
        this[$mode]="$(run "$mode")"
        res[$mode]+="${this[$mode]} "
    done
    ratios+="$(awk -v a="${this[preload]}" -v b="${this[plain]}" 'BEGIN {printf "%.4f", a/b}') "
    printf '  round %d: plain %s, preload %s Gbit/s\n' "$r" "$(gbit "${this[plain]}")" "$(gbit "${this[preload]}")" >&2
done
mp="$(median <<<"${res[plain]}")"; mq="$(median <<<"${res[preload]}")"

# Timing on this VM spreads widely; instructions do not. The iperf3 client's user-space
# instructions for a fixed 1 GiB (8192 writes of 128 KiB) under callgrind, with and without the
# preload (server without it; the kernel's share of each call is not counted, and is the same).
cg=""
if command -v valgrind >/dev/null; then
    ir() { # $1 = plain|preload → instructions of the client
        local env=()
        next_port
        [[ $1 == preload ]] && env=(LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$work/emu" PCISOCK_DEFAULT_PORTS=0)
        iperf3 -s -1 -p "$port" >"$work/s.log" 2>&1 &
        local spid=$!; pids+=("$spid")
        wait_listen "$port" || return 1
        env "${env[@]}" timeout 300 valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
            iperf3 -c 127.0.0.1 -p "$port" -n 1G -l 128K 2>&1 | awk '/Collected :/ {print $NF}'
        wait "$spid" 2>/dev/null || true
    }
    a="$(ir plain)"; b="$(ir preload)"
    cg="$(
        echo
        echo "## User-space instructions of the iperf3 client, 1 GiB in 128 KiB writes (callgrind, $(valgrind --version))"
        echo
        echo "| no preload | libpcisock.so | added | added per write (8192 writes) |"
        echo "|---:|---:|---:|---:|"
        echo "| $a | $b | $((b - a)) | $(awk -v d=$((b - a)) 'BEGIN {printf "%.0f", d/8192}') |"
        echo
        echo "The added instructions include the library's one-time start-up (constructor, symbol lookup, configuration)."
    )"
fi
report="$(
    echo "# iperf3 on an unflagged port: libpcisock.so preloaded vs not"
    echo
    echo "Command: \`benches/unflagged.sh --runs $RUNS --time $TSEC --len $LEN\`. Date: $started – $(date -u +%H:%MZ). Machine: $(nproc) vCPUs, kernel $(uname -r), $(iperf3 -v 2>&1 | head -1 | cut -d' ' -f1-2). Library: $(basename "$lib") sha256 $(sha256sum "$lib" | cut -c1-12)."
    echo "Both sides preloaded in the preload runs, PCISOCK_DEFAULT_PORTS=0, a fresh port per run; every preloaded run's stats files show no tracked connection."
    echo
    echo "| | no preload Gbit/s | libpcisock.so Gbit/s | ratio of medians | median of per-round ratios | per-round ratios |"
    echo "|---|---:|---:|---:|---:|---|"
    echo "| iperf3 -t $TSEC -l $LEN | $(gbit "$mp") | $(gbit "$mq") | $(awk -v a="$mq" -v b="$mp" 'BEGIN {printf "%.3f", a/b}') | $(median <<<"$ratios") | $ratios|"
    echo "$cg"
)"
echo "$report"
[[ -n "$OUT" ]] && echo "$report" >"$OUT"
exit 0
