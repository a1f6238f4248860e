#!/usr/bin/env bash
# Where a connection's memory goes: wrk -c N against nginx (benches/common.sh's keep-alive
# config, one worker), pcisock through a fabric service of this run or plain TCP, sampled once
# while wrk runs. Per connection (sample − just before wrk, / N): system-wide used memory
# (MemTotal − MemAvailable), Shmem (the service's segments are memfds), AnonPages, Slab and
# its largest caches (/proc/slabinfo: root only), the kernel's TCP socket buffers
# (/proc/net/sockstat `mem`); per process (nginx worker, wrk, the service): RSS split into
# anonymous and shared memory (/proc/PID/smaps_rollup), the memfd mappings (count, RSS) and the
# descriptors by kind.
#
# usage: benches/memory.sh [--variant tcp|pcisock] [--conns N] [--seconds S] [--at F]
#   --variant V   pcisock (default) or tcp
#   --conns N     wrk's connections (default 8000; the open-file limit must allow 2 N + some)
#   --seconds S   wrk's duration (default 16)
#   --at F        sample at this share of the run (default 0.6)
# PCISOCK_LIB and PCISOCK_CLI (environment) name another build's libpcisock.so and pcisock.
# Needs nginx, wrk, python3; run it under the loopback lock
# (flock /tmp/pcisock-iperf-tests-lo.lock benches/memory.sh ...).
set -euo pipefail

V=pcisock N=8000 T=16 AT=0.6
while [[ $# -gt 0 ]]; do
    case "$1" in
        --variant) V="$2"; shift 2 ;;
        --conns) N="$2"; shift 2 ;;
        --seconds) T="$2"; shift 2 ;;
        --at) AT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "memory.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $V == tcp || $V == pcisock ]] || { echo "memory.sh: --variant is tcp or pcisock" >&2; exit 2; }
for n in "$N" "$T"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "memory.sh: --conns and --seconds take positive integers" >&2; exit 2; }
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
cli="${PCISOCK_CLI:-$root/target/release/pcisock}"
for t in nginx wrk python3; do
    command -v "$t" >/dev/null || { echo "memory.sh: $t not installed" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)"
# shellcheck source=common.sh
source "$root/benches/common.sh"
bench_init memory.sh

svcdir="$(mktemp -d /tmp/pcisock-memory-svc.XXXXXX)"
chmod 755 "$svcdir"
svc="$svcdir/fabric.sock"
svc_pid=""
if [[ $V == pcisock ]]; then
    "$cli" fabric start --socket "$svc" >/dev/null
    svc_pid="$("$cli" fabric status --socket "$svc" | awk '/pid/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) {print $i; exit}}')"
fi
cleanup() { [[ $V == pcisock ]] && "$cli" fabric stop --socket "$svc" >/dev/null 2>&1; rm -rf "$svcdir"; bench_cleanup; }
trap cleanup EXIT INT TERM

# A snapshot of the system into $1: meminfo, slabinfo, sockstat.
snap() {
    cat /proc/meminfo >"$1.meminfo"
    cat /proc/slabinfo >"$1.slab" 2>/dev/null || : >"$1.slab"
    cat /proc/net/sockstat >"$1.sockstat"
}
# A process's memory and descriptors into $2 (pid $1).
proc_snap() {
    [[ -n $1 && -d /proc/$1 ]] || { : >"$2.rollup"; : >"$2.fds"; : >"$2.memfd"; return 0; }
    cat "/proc/$1/smaps_rollup" >"$2.rollup" 2>/dev/null || : >"$2.rollup"
    find "/proc/$1/fd" -maxdepth 1 -type l -printf '%l\n' 2>/dev/null |
        sed -E 's/^socket:.*/socket/; s/^anon_inode:\[?([a-z_]+)\]?.*/\1/; s/^pipe:.*/pipe/; s/^\/memfd:.*/memfd/; s/^\/dev\/.*/dev/' |
        sort | uniq -c | awk '{print $2 "=" $1}' | tr '\n' ' ' >"$2.fds"
    # memfd mappings (the segments, tally pages): count and resident kB.
    awk '/^[0-9a-f]+-[0-9a-f]+ / {m = ($0 ~ /\/memfd:/)} m && /^Rss:/ {n++; r += $2} END {print n + 0, r + 0}' \
        "/proc/$1/smaps" >"$2.memfd" 2>/dev/null || echo "0 0" >"$2.memfd"
    # Anonymous kB by mapping (heap, anonymous mappings, memfds, files), largest first.
    awk '/^[0-9a-f]+-[0-9a-f]+ / {k = ($6 == "" ? "[anonymous]" : $6); sub(/:.*/, ":", k)} /^Anonymous:/ {a[k] += $2}
        END {for (k in a) if (a[k] > 0) print a[k], k}' "/proc/$1/smaps" 2>/dev/null | sort -rn | head -4 |
        awk '{printf "%s %s kB; ", $2, $1}' >"$2.anon" || : >"$2.anon"
}

d="$work/r"; mkdir -m 755 "$d"
next_port
nginx_keepalive_conf "$d" "$port" 20000
env=()
[[ $V == pcisock ]] && env=(LD_PRELOAD="$lib" PCISOCK_FABRIC="$svc" PCISOCK_PORTS="$port")
env "${env[@]}" timeout $((T + 120)) nginx -c "$d/nginx.conf" >"$d/nginx.out" 2>&1 &
ng=$!; pids+=("$ng")
wait_listen "$port"
master="" worker=""
for _ in $(seq 100); do
    master="$(pgrep -P "$ng" | head -1 || true)"
    [[ -n $master ]] && worker="$(pgrep -P "$master" | head -1 || true)"
    [[ -n $worker ]] && break; sleep 0.05
done
sleep 0.5
snap "$work/before"
proc_snap "$worker" "$work/before.worker"
proc_snap "$svc_pid" "$work/before.svc"
env "${env[@]}" timeout $((T + 60)) wrk -c "$N" -t 2 -d "${T}s" "http://127.0.0.1:$port/" >"$d/wrk.out" 2>&1 &
wk=$!; pids+=("$wk")
wrk_pid=""
for _ in $(seq 50); do wrk_pid="$(pgrep -P "$wk" -x wrk | head -1 || true)"; [[ -n $wrk_pid ]] && break; sleep 0.02; done
sleep "$(awk -v t="$T" -v a="$AT" 'BEGIN {print t * a}')"
snap "$work/at"
proc_snap "$worker" "$work/at.worker"
proc_snap "$wrk_pid" "$work/at.wrk"
proc_snap "$svc_pid" "$work/at.svc"
wait "$wk" || true
rps="$(awk '/^Requests\/sec:/ {print $2}' "$d/wrk.out")"
echo "memory.sh: $V N=$N wrk ${T}s, sampled at ${AT}: ${rps:-FAIL} req/s; $(grep -E 'Socket errors' "$d/wrk.out" || true)" >&2

python3 - "$work" "$N" "$V" "${rps:-FAIL}" <<'PY'
import sys, os
work, n, v, rps = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def meminfo(p):
    m = {}
    for line in open(p):
        k, rest = line.split(":", 1)
        m[k] = int(rest.split()[0])
    return m
def slab(p):
    s = {}
    for line in open(p):
        if line.startswith(("slabinfo", "#")):
            continue
        f = line.split()
        s[f[0]] = int(f[2]) * int(f[3]) / 1024  # num_objs * objsize, kB
    return s
def sock(p):
    for line in open(p):
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1]) * 4, int(f[f.index("inuse") + 1])
    return 0, 0
def rollup(p):
    r = {}
    if os.path.exists(p):
        for line in open(p):
            if ":" in line and line.split(":", 1)[1].strip().endswith("kB"):
                k, rest = line.split(":", 1)
                r[k] = int(rest.split()[0])
    return r
b, a = meminfo(f"{work}/before.meminfo"), meminfo(f"{work}/at.meminfo")
per = lambda x: f"{x / n:.2f}"
used = lambda m: m["MemTotal"] - m["MemAvailable"]
print(f"### {v}, N = {n}: {rps} req/s\n")
print("| system-wide, kB per connection (sample − before) / N | |")
print("|---|---:|")
print(f"| used (MemTotal − MemAvailable) | {per(used(a) - used(b))} |")
print(f"| taken from free memory (MemFree before − at) | {per(b['MemFree'] - a['MemFree'])} |")
for k in ["Cached", "SReclaimable"]:
    print(f"| {k} | {per(a[k] - b[k])} |")
for k in ["Shmem", "AnonPages", "Slab", "SUnreclaim", "KernelStack", "PageTables", "Percpu"]:
    print(f"| {k} | {per(a[k] - b[k])} |")
tb, ta = sock(f"{work}/before.sockstat"), sock(f"{work}/at.sockstat")
print(f"| TCP socket buffers (sockstat mem) | {per(ta[0] - tb[0])} |")
print(f"| TCP sockets in use | {(ta[1] - tb[1]) / n:.2f} per connection |")
# What the connections hold, item by item, with each process's own anonymous memory instead of
# the system's AnonPages (which moves with whatever else the machine runs meanwhile): "used"
# also moves with the page cache and everything else the kernel estimates as available.
def anon_of(who):
    r, r0 = rollup(f"{work}/at.{who}.rollup"), rollup(f"{work}/before.{who}.rollup")
    return r.get("Anonymous", 0) - (r0.get("Anonymous", 0) if who != "wrk" else 0)
procs = sum(anon_of(w) for w in ["worker", "wrk", "svc"])
items = (a["Shmem"] - b["Shmem"]) + procs + (a["Slab"] - b["Slab"]) + (a["PageTables"] - b["PageTables"]) + (ta[0] - tb[0])
print(f"| the processes' anonymous memory (worker, wrk, service) | {per(procs)} |")
print(f"| **by items**: Shmem + the processes' anonymous + Slab + PageTables + TCP buffers | **{per(items)}** |")
sb, sa = slab(f"{work}/before.slab"), slab(f"{work}/at.slab")
if sa:
    top = sorted(((sa.get(k, 0) - sb.get(k, 0), k) for k in sa), reverse=True)[:12]
    print("\n| slab cache | kB per connection |")
    print("|---|---:|")
    for dk, k in top:
        print(f"| {k} | {per(dk)} |")
print("\n| process | RSS | anonymous | shared (file + shmem) | Pss | Pss_Anon | Pss_Shmem | memfd mappings (RSS kB) | anonymous by mapping, at the sample | descriptors |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|---|")
for who in ["worker", "wrk", "svc"]:
    r = rollup(f"{work}/at.{who}.rollup")
    if not r:
        continue
    r0 = rollup(f"{work}/before.{who}.rollup") if who != "wrk" else {}
    d = lambda k: r.get(k, 0) - r0.get(k, 0)
    mf = open(f"{work}/at.{who}.memfd").read().split()
    fds = open(f"{work}/at.{who}.fds").read().strip()
    anon = open(f"{work}/at.{who}.anon").read().strip()
    shared = d("Rss") - d("Anonymous")
    print(f"| {who} (kB per connection, over before) | {per(d('Rss'))} | {per(d('Anonymous'))} | {per(shared)} | {per(d('Pss'))} | {per(d('Pss_Anon'))} | {per(d('Pss_Shmem'))} | {mf[0]} ({mf[1]}) | {anon} | {fds} |")
PY
