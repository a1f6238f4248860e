#!/usr/bin/env bash
# Connection set-up rate: benches/connsetup.c opens a connection, sends one 64-byte request,
# reads a 64-byte answer and closes, in a loop, against a server that serves each connection
# the same way. Three columns, interleaved round by round: plain TCP; pcisock through the host
# fabric service (a private service of this run); pcisock through a device both ends map
# (PCISOCK_EMU_DIR, the device rendezvous). Both pcisock columns run strict, so every counted
# connection went over the NTB path. Reports connections a second (medians) and the ratios.
#
# usage: benches/connsetup.sh [--runs N] [--seconds S] [--out FILE]
#   --runs N      rounds (default 5)
#   --seconds S   seconds per run (default 2)
#   --out FILE    also write the markdown to FILE (e.g. benches/results/connsetup.md)
# Needs: gcc, a release build (target/release/libpcisock.so and pcisock).
set -euo pipefail

RUNS=5 SECONDS_PER=2 OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --seconds) SECONDS_PER="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "connsetup.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "connsetup.sh: --runs must be a positive integer" >&2; exit 2; }
[[ "$SECONDS_PER" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "connsetup.sh: --seconds must be a number" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="$root/target/release/libpcisock.so"
cli="$root/target/release/pcisock"
[[ -f "$lib" && -x "$cli" ]] || { echo "connsetup.sh: run cargo build --release first" >&2; exit 2; }
command -v gcc >/dev/null || { echo "connsetup.sh: gcc not found (apt-get install -y gcc)" >&2; exit 2; }

source "$root/benches/common.sh"
bench_init connsetup
gcc -O2 -o "$work/connsetup" "$root/benches/connsetup.c"
mkdir -m 700 "$work/emu"
svc_dir="/run/pcisock-connsetup-$$"
"$cli" fabric start --socket "$svc_dir/fabric.sock" >/dev/null
stop_service() { "$cli" fabric stop --socket "$svc_dir/fabric.sock" >/dev/null 2>&1 || true; rm -rf "$svc_dir"; }
trap 'stop_service; bench_cleanup' EXIT INT TERM

# One run of column $1: prints connections a second.
run() {
    local mode=$1 env=()
    next_port
    case "$mode" in
        tcp) env=() ;;
        service) env=(LD_PRELOAD="$lib" PCISOCK_PORTS="$port" PCISOCK_STRICT=1 PCISOCK_FABRIC="$svc_dir/fabric.sock") ;;
        device) env=(LD_PRELOAD="$lib" PCISOCK_PORTS="$port" PCISOCK_STRICT=1 PCISOCK_EMU_DIR="$work/emu") ;;
    esac
    env "${env[@]}" "$work/connsetup" server "$port" >"$work/server.out" 2>&1 &
    local sp=$!
    pids+=("$sp")
    wait_listen "$port"
    local out
    out=$(env "${env[@]}" "$work/connsetup" client "$port" "$SECONDS_PER")
    kill "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    awk '{print $6}' <<<"$out"
}

declare -A rates
modes=(tcp service device)
for r in $(seq "$RUNS"); do
    for m in "${modes[@]}"; do
        rates[$m]+="$(run "$m") "
    done
    echo "round $r: tcp ${rates[tcp]##* } ..." >&2
done

tcp=$(median <<<"${rates[tcp]}")
svc=$(median <<<"${rates[service]}")
dev=$(median <<<"${rates[device]}")
md="# Connection set-up rate

\`benches/connsetup.sh --runs $RUNS --seconds $SECONDS_PER\` on $(date -u +%Y-%m-%dT%H:%MZ),
$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), build $(git -C "$root" rev-parse --short HEAD).
One client loop: connect, a 64-byte request, a 64-byte answer, close; a server that serves each
connection the same way. Medians of $RUNS interleaved rounds (connections a second).

| path | connections/s | ÷ TCP | runs |
|---|---:|---:|---|
| TCP loopback | $tcp | 1.00 | ${rates[tcp]}|
| pcisock, host fabric service | $svc | $(ratio "$svc" "$tcp") | ${rates[service]}|
| pcisock, device rendezvous | $dev | $(ratio "$dev" "$tcp") | ${rates[device]}|
"
echo "$md"
[[ -z "$OUT" ]] || printf '%s' "$md" >"$OUT"
