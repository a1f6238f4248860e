#!/usr/bin/env bash
# The data path through the host fabric service against through a device both ends map: the
# same Connection over sealed memfd segments and eventfd lines (service) or over window leases
# and FIFO lines (device). Interleaved round by round: iperf3 (default 128 KiB writes, 2 s) and
# iperf2 -l 64 (2 s), both ends preloaded and strict. Medians in Gbit/s.
#
# usage: benches/service-vs-device.sh [--runs N] [--out FILE]
# Needs: iperf, iperf3, python3, a release build (target/release/libpcisock.so and pcisock).
set -euo pipefail
RUNS=5 OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "service-vs-device.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "service-vs-device.sh: --runs must be a positive integer" >&2; exit 2; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="$root/target/release/libpcisock.so"
cli="$root/target/release/pcisock"
[[ -f "$lib" && -x "$cli" ]] || { echo "service-vs-device.sh: run cargo build --release first" >&2; exit 2; }
source "$root/benches/common.sh"
bench_init service-vs-device
mkdir -m 700 "$work/emu"
svc_dir="/run/pcisock-svd-$$"
"$cli" fabric start --socket "$svc_dir/fabric.sock" >/dev/null
trap '"$cli" fabric stop --socket "$svc_dir/fabric.sock" >/dev/null 2>&1 || true; rm -rf "$svc_dir"; bench_cleanup' EXIT INT TERM

env_of() {
    case "$1" in
        service) echo "LD_PRELOAD=$lib PCISOCK_PORTS=$2 PCISOCK_STRICT=1 PCISOCK_FABRIC=$svc_dir/fabric.sock" ;;
        device) echo "LD_PRELOAD=$lib PCISOCK_PORTS=$2 PCISOCK_STRICT=1 PCISOCK_EMU_DIR=$work/emu" ;;
    esac
}

declare -A i3 i2
for r in $(seq "$RUNS"); do
    for mode in service device; do
        next_port
        # shellcheck disable=SC2046
        env $(env_of "$mode" "$port") iperf3 -s -p "$port" -1 >/dev/null 2>&1 &
        sp=$!; pids+=("$sp"); wait_listen "$port"
        # shellcheck disable=SC2046
        i3[$mode]+="$(env $(env_of "$mode" "$port") iperf3 -c 127.0.0.1 -p "$port" -t 2 -J |
            python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,1))') "
        wait "$sp" 2>/dev/null || true
        next_port
        # shellcheck disable=SC2046
        env $(env_of "$mode" "$port") iperf -s -p "$port" >/dev/null 2>&1 &
        sp=$!; pids+=("$sp"); wait_listen "$port"
        # shellcheck disable=SC2046
        i2[$mode]+="$(env $(env_of "$mode" "$port") iperf -c 127.0.0.1 -p "$port" -l 64 -t 2 -y C |
            tail -1 | awk -F, '{printf "%.2f", $9/1e9}') "
        kill "$sp" 2>/dev/null || true; wait "$sp" 2>/dev/null || true
    done
    echo "round $r done" >&2
done
md="# The data path: host fabric service against device

\`benches/service-vs-device.sh --runs $RUNS\` on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs
($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), build $(git -C "$root" rev-parse --short HEAD).
Both ends preloaded and strict; interleaved rounds; medians (Gbit/s).

| test | service | device | service ÷ device | service runs | device runs |
|---|---:|---:|---:|---|---|
| iperf3, 2 s | $(median <<<"${i3[service]}") | $(median <<<"${i3[device]}") | $(ratio "$(median <<<"${i3[service]}")" "$(median <<<"${i3[device]}")") | ${i3[service]}| ${i3[device]}|
| iperf2 -l 64, 2 s | $(median <<<"${i2[service]}") | $(median <<<"${i2[device]}") | $(ratio "$(median <<<"${i2[service]}")" "$(median <<<"${i2[device]}")") | ${i2[service]}| ${i2[device]}|
"
echo "$md"
[[ -z "$OUT" ]] || printf '%s' "$md" >"$OUT"
