#!/usr/bin/env bash
# What failover costs: one iperf3 stream on the emulated device (PCISOCK_FABRIC=device), measured
# side by side in interleaved rounds:
#   - throughput with no fault, and with a fault storm (the link down 100 ms, up 100 ms, for the
#     whole run): the ratio is what a flapping link leaves of the stream;
#   - the time from `pcisock emu clear` after a 1 s outage until the data connection's sending
#     side is back on the ring (`pcisock stats --json`: path "ntb" again, polled every ~10 ms,
#     which bounds the resolution).
#
# usage: benches/failover.sh [--runs N] [--secs S] [--out FILE]
# Needs: iperf3, python3, a release build (libpcisock.so and pcisock; PCISOCK_LIB overrides).
set -euo pipefail

RUNS=3 SECS=6 OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --secs) SECS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "failover.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
cli="$(dirname "$lib")/pcisock"
[[ -f "$lib" && -x "$cli" ]] || { echo "failover.sh: build first (cargo build --release)" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "failover.sh: iperf3 not found" >&2; exit 2; }

work="$(mktemp -d)"
chmod 700 "$work"
trap 'rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))

# run MODE PORT: one iperf3 run; MODE storm|none|outage. Prints "MB/s" (storm, none) or the
# milliseconds from link-up to back on NTB (outage).
run() {
    local mode="$1" p="$2" dev="$work/dev-$2"
    mkdir -m 700 "$dev"
    export PCISOCK_EMU_DIR="$dev" PCISOCK_FABRIC=device PCISOCK_PORTS="$p"
    LD_PRELOAD="$lib" iperf3 -s -1 -p "$p" -J >"$work/s.json" 2>&1 &
    local sp=$!
    for _ in $(seq 100); do ss -ltnH "sport = :$p" | grep -q . && break; sleep 0.02; done
    LD_PRELOAD="$lib" iperf3 -c 127.0.0.1 -p "$p" -t "$SECS" -J >"$work/c.json" 2>&1 &
    local cp=$! result=""
    sleep 1
    case "$mode" in
        storm)
            local end=$((SECONDS + SECS - 1))
            while ((SECONDS < end)); do
                "$cli" emu fault link-down >/dev/null; sleep 0.1
                "$cli" emu clear >/dev/null; sleep 0.1
            done ;;
        outage)
            "$cli" emu fault link-down >/dev/null; sleep 1
            local t0 t1
            t0=$(date +%s%N)
            "$cli" emu clear >/dev/null
            # The data connection: the one that sent more than a megabyte over TCP.
            while "$cli" stats --json | python3 -c '
import json, sys
c = json.load(sys.stdin)["connections"]
sys.exit(0 if any(x["path"] == "tcp-failover" and x["counters"]["tcp_tx_bytes"] > 1e6 for x in c) else 1)'; do
                sleep 0.01
            done
            t1=$(date +%s%N)
            result=$(( (t1 - t0) / 1000000 )) ;;
    esac
    wait "$cp"; wait "$sp" || true
    unset PCISOCK_EMU_DIR PCISOCK_FABRIC PCISOCK_PORTS
    if [[ -z "$result" ]]; then
        result=$(python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['end']['sum_received']['bytes']/1e6/$SECS))" "$work/c.json")
    fi
    echo "$result"
}

none=() storm=() back=()
for r in $(seq "$RUNS"); do
    none+=("$(run none $((port + 3 * r)))")
    storm+=("$(run storm $((port + 3 * r + 1)))")
    back+=("$(run outage $((port + 3 * r + 2)))")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
mn=$(median "${none[@]}") ms=$(median "${storm[@]}") mb=$(median "${back[@]}")
report="# Failover cost

Command: \`benches/failover.sh --runs $RUNS --secs $SECS\`. Date: $(date -u +%Y-%m-%dT%H:%MZ). Machine: $(nproc) vCPUs, kernel $(uname -r), $(iperf3 --version | head -1). Library: libpcisock.so sha256 $(sha256sum "$lib" | cut -c1-12).
One iperf3 stream for $SECS s on the emulated device (\`PCISOCK_FABRIC=device\`), rounds interleaved; MB = 10^6 bytes/s received.

| measure | rounds | median |
|---|---|---:|
| no fault (MB/s) | ${none[*]} | $mn |
| fault storm: link down 100 ms / up 100 ms (MB/s) | ${storm[*]} | $ms |
| storm / no fault | | $(python3 -c "print(round($ms / max($mn, 1), 3))") |
| link up → data connection back on NTB (ms, polled every ~10 ms) | ${back[*]} | $mb |
"
echo "$report"
[[ -z "$OUT" ]] || echo "$report" >"$OUT"
