#!/usr/bin/env bash
# Whose proc inodes: the kernel's proc_inode_cache and dentry object counts (/proc/slabinfo,
# root only) before, during and after `wrk -c N` against nginx (benches/common.sh's keep-alive
# config, one worker), then after wrk, nginx and the service exit one by one. A process's
# /proc/PID/fd/N inodes go when it exits, so each step shows that process's share: on a machine
# where something lists the processes' descriptors it is about one inode per open descriptor,
# with or without the library (benches/results/memory-session16.md).
#
# usage: benches/proc-inodes.sh [--variant tcp|pcisock] [--conns N] [--seconds S]
#   --variant V   pcisock (default: through a fabric service of this run) or tcp
#   --conns N     wrk's connections (default 2000)
#   --seconds S   wrk's duration (default 6; sampled 4 s in)
# PCISOCK_LIB and PCISOCK_CLI (environment) name another build's libpcisock.so and pcisock.
# Needs root (slabinfo), nginx, wrk; run it under the loopback lock
# (flock /tmp/pcisock-iperf-tests-lo.lock benches/proc-inodes.sh ...).
set -euo pipefail

V=pcisock N=2000 T=6
while [[ $# -gt 0 ]]; do
    case "$1" in
        --variant) V="$2"; shift 2 ;;
        --conns) N="$2"; shift 2 ;;
        --seconds) T="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "proc-inodes.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $V == tcp || $V == pcisock ]] || { echo "proc-inodes.sh: --variant is tcp or pcisock" >&2; exit 2; }
for n in "$N" "$T"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "proc-inodes.sh: --conns and --seconds take positive integers" >&2; exit 2; }
done
((T >= 5)) || { echo "proc-inodes.sh: --seconds must be at least 5 (sampled 4 s in)" >&2; exit 2; }
[[ -r /proc/slabinfo ]] || { echo "proc-inodes.sh: /proc/slabinfo is not readable (run as root)" >&2; exit 2; }
for t in nginx wrk; do
    command -v "$t" >/dev/null || { echo "proc-inodes.sh: $t not installed" >&2; exit 2; }
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
cli="${PCISOCK_CLI:-$root/target/release/pcisock}"
ulimit -n "$(ulimit -Hn)"
# shellcheck source=common.sh
source "$root/benches/common.sh"
bench_init proc-inodes.sh
chmod 755 "$work"
svc="$work/svc/fabric.sock"
mkdir -m 755 "$work/svc"
counts() { awk '/^proc_inode_cache / {p = $2} /^dentry / {d = $2} END {printf "%d %d", p, d}' /proc/slabinfo; }
row() { read -r p d <<<"$(counts)"; echo "| $1 | $p | $d |"; }

env=()
if [[ $V == pcisock ]]; then
    "$cli" fabric start --socket "$svc" >/dev/null
    env=(LD_PRELOAD="$lib" PCISOCK_FABRIC="$svc")
fi
next_port
nginx_keepalive_conf "$work" "$port" 20000
[[ $V == pcisock ]] && env+=(PCISOCK_PORTS="$port")
env "${env[@]}" nginx -c "$work/nginx.conf" >"$work/nginx.out" 2>&1 &
ng=$!; pids+=("$ng")
wait_listen "$port"
sleep 0.5
echo "### $V, wrk -c $N"
echo
echo "| step | proc_inode_cache | dentry |"
echo "|---|---:|---:|"
row "before wrk"
env "${env[@]}" wrk -c "$N" -t 2 -d "${T}s" "http://127.0.0.1:$port/" >"$work/wrk.out" 2>&1 &
wk=$!; pids+=("$wk")
sleep 4
row "during wrk"
wait "$wk" || true
sleep 0.3
row "wrk exited"
kill "$ng"; wait "$ng" 2>/dev/null || true
sleep 0.3
row "nginx exited"
if [[ $V == pcisock ]]; then
    "$cli" fabric stop --socket "$svc" >/dev/null 2>&1 || true
    sleep 0.3
    row "service stopped"
fi
echo
grep -E '^Requests/sec|Socket errors' "$work/wrk.out" || echo "wrk: no result (see its output above)"
