#!/usr/bin/env bash
# Round-trip latency over TCP loopback and over pcisock with each completion mode:
# sockperf ping-pong (`sockperf sr` / `sockperf pp --full-rtt`), p50 and p99 RTT in µs, for
# message sizes 64 B, 1 KiB, 16 KiB and 64 KiB (sockperf's largest message is 65507 bytes, so
# "64K" runs as 65507). Paths: tcp, and pcisock with PCISOCK_COMPLETION=poll|doorbell|adaptive
# (both sides LD_PRELOAD, PCISOCK_STRICT=1, PCISOCK_PORTS=the port, a private 0700 device dir).
# Interleaved (size by size, path by path, inside each run); medians over runs.
#
# usage: benches/latency.sh [--runs N] [--time S] [--sizes LIST] [--pin] [--out FILE]
#   --runs N     runs per cell (default 3)
#   --time S     sockperf -t (default 3 seconds)
#   --sizes LIST comma-separated message sizes in bytes (default 64,1024,16384,65507)
#   --pin        server on CPU 0, client on CPU 1 (taskset): the two ends never share a CPU, so
#                every cell measures the cross-core round trip (unpinned, the host may put both
#                on one vCPU for a cell, which costs every mode a context switch per message)
#   --out FILE   also write the markdown to FILE (e.g. benches/results/latency.md)
#   --mps N      sockperf --mps (default 500000). sockperf 3.7 sizes its table of sequence numbers
#                for about 1 M messages/s; over pcisock the round trip is below 1 µs and an
#                unpaced `-t 3` run fails with "ERROR: _seqN > m_maxSequenceNo". At 500000 a
#                message is sent at most every 2 µs, which TCP (RTT ≥ 4 µs) never reaches.
# Needs: sockperf (apt-get install -y sockperf), a release build of libpcisock.so.
# A failed or hung run is recorded in the table as FAIL/HANG with sockperf's own error lines.
set -euo pipefail

RUNS=3 TIME=3 SIZES="64,1024,16384,65507" OUT="" MPS=500000 PIN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --time) TIME="$2"; shift 2 ;;
        --sizes) SIZES="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --mps) MPS="$2"; shift 2 ;;
        --pin) PIN=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "latency.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ && "$TIME" =~ ^[1-9][0-9]*$ ]] || { echo "latency.sh: --runs and --time must be positive integers" >&2; exit 2; }
IFS=, read -ra sizes <<<"$SIZES"
for s in "${sizes[@]}"; do [[ "$s" =~ ^[1-9][0-9]*$ && $s -le 65507 ]] || { echo "latency.sh: bad size $s (1..65507)" >&2; exit 2; }; done

srv_pin=() cli_pin=()
if [[ $PIN == 1 ]]; then
    command -v taskset >/dev/null || { echo "latency.sh: --pin needs taskset (util-linux)" >&2; exit 2; }
    srv_pin=(taskset -c 0) cli_pin=(taskset -c 1)
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
[[ -f "$lib" ]] || { echo "latency.sh: $lib not found: run cargo build --release" >&2; exit 2; }
command -v sockperf >/dev/null || { echo "latency.sh: sockperf not installed (apt-get install -y sockperf)" >&2; exit 2; }

# shellcheck source=common.sh
source "$root/benches/common.sh"
bench_init latency.sh
mkdir -m 700 "$work/emu"
# A fresh port for every run (next_port): sockperf's server does not set SO_REUSEADDR, so the
# previous run's TIME_WAIT would make its bind fail.

paths=(tcp poll doorbell adaptive)
failures="$work/failures"; : >"$failures"
raw=""

# One ping-pong. $1 = path, $2 = size. Prints "p50 p99 avg" in µs, or "FAIL"/"HANG".
pp_run() {
    local path=$1 size=$2 env=()
    next_port
    if [[ $path != tcp ]]; then
        env=(LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$work/emu" PCISOCK_PORTS="$port" PCISOCK_STRICT=1 PCISOCK_COMPLETION="$path")
    fi
    env "${env[@]}" "${srv_pin[@]}" sockperf sr --tcp -i 127.0.0.1 -p "$port" >"$work/sr.log" 2>&1 &
    local spid=$!; pids+=("$spid")
    if ! wait_listen "$port"; then
        { echo "### $path, $size B: server did not listen"; sed 's/\x1b\[[0-9;]*m//g' "$work/sr.log" | tail -5; } >>"$failures"
        kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true; echo FAIL; return
    fi
    local rc=0
    env "${env[@]}" "${cli_pin[@]}" timeout $((TIME + 20)) sockperf pp --tcp -i 127.0.0.1 -p "$port" -m "$size" -t "$TIME" --mps "$MPS" --full-rtt >"$work/pp.log" 2>&1 || rc=$?
    kill "$spid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$spid" 2>/dev/null || break; sleep 0.02; done
    kill -9 "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
    local p50 p99 avg
    p50="$(awk '/percentile 50.000 =/ {print $NF}' "$work/pp.log")"
    p99="$(awk '/percentile 99.000 =/ {print $NF}' "$work/pp.log")"
    avg="$(awk '/Summary: Round trip is/ {print $(NF-1)}' "$work/pp.log")"
    if [[ $rc -ne 0 || -z "$p50" || -z "$p99" ]]; then
        local what=FAIL; [[ $rc -eq 124 ]] && what=HANG
        {
            echo "### $path, $size B: $what (client exit $rc$([[ $rc -eq 124 ]] && echo ", killed by timeout after $((TIME + 20)) s"))"
            echo '```'
            echo "client:"; sed 's/\x1b\[[0-9;]*m//g' "$work/pp.log" | grep -v '^$' | tail -8
            echo "server:"; sed 's/\x1b\[[0-9;]*m//g' "$work/sr.log" | grep -v '^$' | tail -5
            echo '```'
        } >>"$failures"
        echo "$what"; return
    fi
    echo "$p50 $p99 $avg"
}

declare -A p50s p99s avgs bad
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
lib_id() { echo "$(basename "$lib") sha256 $(sha256sum "$lib" | cut -c1-12), built $(date -u -r "$lib" +%Y-%m-%dT%H:%MZ)"; }
libinfo="$(lib_id)"
for r in $(seq "$RUNS"); do
    for size in "${sizes[@]}"; do
        for path in "${paths[@]}"; do
            res="$(pp_run "$path" "$size")"
            raw+="$r $size $path $res"$'\n'
            printf '  run %d %6s B %-9s %s\n' "$r" "$size" "$path" "$res" >&2
            if [[ $res == FAIL || $res == HANG ]]; then bad[$size-$path]+="$res "; continue; fi
            read -r a b c <<<"$res"
            p50s[$size-$path]+="$a "; p99s[$size-$path]+="$b "; avgs[$size-$path]+="$c "
        done
    done
done
ended="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
[[ "$(lib_id)" == "$libinfo" ]] || libinfo+=" (**rebuilt during the run**: now $(lib_id))"

cell() { # median p50 / p99 (µs) or the failures
    local k=$1 s=""
    if [[ -n "${p50s[$k]:-}" ]]; then
        s="$(median – <<<"${p50s[$k]}") / $(median – <<<"${p99s[$k]}")"
    fi
    if [[ -n "${bad[$k]:-}" ]]; then
        s+="${s:+ }($(wc -w <<<"${bad[$k]}")/$RUNS: ${bad[$k]% })"
    fi
    echo "${s:-–}"
}
table="$(
    echo "| message | TCP loopback p50 / p99 µs | pcisock poll p50 / p99 µs | pcisock doorbell p50 / p99 µs | pcisock adaptive p50 / p99 µs |"
    echo "|---:|---|---|---|---|"
    for size in "${sizes[@]}"; do
        echo "| $size B | $(cell "$size-tcp") | $(cell "$size-poll") | $(cell "$size-doorbell") | $(cell "$size-adaptive") |"
    done
)"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs) model $(grep -m1 '^model' /proc/cpuinfo | cut -d: -f2 | xargs)"
report="$(
    echo "# Round-trip latency: sockperf ping-pong, TCP vs pcisock completion modes"
    echo
    echo "Command: \`benches/latency.sh --runs $RUNS --time $TIME --sizes $SIZES --mps $MPS$([[ $PIN == 1 ]] && echo " --pin")\`; per cell: \`sockperf sr --tcp -i 127.0.0.1 -p PORT\` and \`sockperf pp --tcp -i 127.0.0.1 -p PORT -m SIZE -t $TIME --mps $MPS --full-rtt\`, pcisock cells with \`LD_PRELOAD=libpcisock.so PCISOCK_STRICT=1 PCISOCK_PORTS=PORT PCISOCK_COMPLETION=MODE\` on both sides. $([[ $PIN == 1 ]] && echo "Pinned: server \`taskset -c 0\`, client \`taskset -c 1\`." || echo "Unpinned.")"
    echo
    echo "Date: $started – $ended. Machine: $(nproc) vCPUs, $cpu, kernel $(uname -r), library $libinfo, $(sockperf --version 2>&1 | grep -m1 version). Median over $RUNS interleaved runs of sockperf's p50 and p99 (full round trip, µs)."
    echo
    echo "$table"
    echo
    echo "Notes:"
    echo
    echo "- \`--mps $MPS\` paces sockperf to at most one message per $(awk -v m="$MPS" 'BEGIN {printf "%g", 1e6/m}') µs. Without it, every pcisock run of 2 s or more fails with \`sockperf: ERROR: _seqN > m_maxSequenceNo\` (client exit 6). sockperf 3.7 sizes its sequence-number table for a bounded message rate, and pcisock's sub-µs round trip exceeds that rate. The failure is sockperf's, not lost data: the same runs pass with \`-t 1\` or with \`--mps 500000\`. TCP's round trip (≥ 4 µs) never reaches the pace, so its cells are unaffected. pcisock cells faster than the pace include up to one slot of idle time between messages (not inside the measured round trip)."
    echo "- The 64K size runs as 65507 B, because sockperf 3.7's largest message is 65507 bytes (65535 makes its server reject the message and close)."
    [[ $PIN == 1 ]] || echo "- Runs are unpinned on a 2-vCPU VM that is shared with other work, so placement varies per run: client and server on one vCPU, or on two (\`--pin\` keeps them apart). Since commit af906b8 a waiter whose peer last waited on the same CPU sleeps instead of spinning (\`adaptive\`) or yields every 64 polls (\`poll\`); before it, one-vCPU runs cost ≈ 118 µs (adaptive) and ≈ 230 µs (poll) per round trip. Pinned before/after figures: [same-cpu.md](same-cpu.md)."
    echo
    echo "Raw runs (run, size, path, p50, p99, avg µs):"
    echo
    echo '```'
    printf '%s' "$raw"
    echo '```'
    if [[ -s "$failures" ]]; then
        echo
        echo "## Failed runs"
        echo
        cat "$failures"
    fi
)"
echo "$report"
[[ -z "$OUT" ]] || echo "$report" >"$OUT"
