#!/usr/bin/env bash
# One busy connection among many idle ones (benches/idlefan.c): an epoll server (level-triggered,
# echoing) with N connections, N - 1 of them idle, the last one sending 64 bytes, reading them back
# and pausing GAP µs, so that the server falls asleep before each request and each request wakes
# it. Plain TCP and pcisock through a fabric service of this run, optionally a second build
# (--base, its own service), interleaved round by round. Per run: the round trip's p50 and p99
# (µs) and the server's CPU ticks over the request phase (/proc/PID/stat, after the connections
# are made).
#
# usage: benches/idlefan.sh [--runs N] [--conns LIST] [--gap US] [--seconds S] [--base DIR]
#   --runs N      rounds (default 3)
#   --conns LIST  comma list of connection counts (default 1,4000)
#   --gap US      pause between requests in µs (default 1000)
#   --seconds S   seconds of requests per run (default 3)
#   --base DIR    also pcisock with DIR/libpcisock.so and DIR/pcisock (an A/B of a change)
# Needs: gcc, a release build (target/release/libpcisock.so and pcisock).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh

runs=3 conns=1,4000 gap=1000 seconds=3 base=""
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --gap) gap=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --base) base=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "idlefan.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
lib=$PWD/target/release/libpcisock.so cli=$PWD/target/release/pcisock
[ -f "$lib" ] && [ -x "$cli" ] || { echo "idlefan.sh: build first: cargo build --release" >&2; exit 1; }
if [ -n "$base" ]; then
    [ -f "$base/libpcisock.so" ] && [ -x "$base/pcisock" ] || { echo "idlefan.sh: no build in $base" >&2; exit 1; }
fi
ulimit -n 20000 || { echo "idlefan.sh: needs 20000 descriptors (ulimit -n)" >&2; exit 1; }

bench_init idlefan
gcc -O2 -Wall -o "$work/idlefan" benches/idlefan.c
"$cli" fabric start --socket "$work/fab.sock" >/dev/null
pids+=("$(pgrep -n -f "fabric.*$work/fab.sock")")
if [ -n "$base" ]; then
    "$base/pcisock" fabric start --socket "$work/fab-base.sock" >/dev/null
    pids+=("$(pgrep -n -f "fabric.*$work/fab-base.sock")")
fi

# run VARIANT N: prints "p50 p99 ticks"
run() {
    local variant=$1 n=$2 pre=(env) sp line res s0 s1
    next_port
    case $variant in
        pcisock) pre=(env LD_PRELOAD="$lib" PCISOCK_FABRIC="$work/fab.sock" PCISOCK_PORTS=$port PCISOCK_STRICT=1) ;;
        base) pre=(env LD_PRELOAD="$base/libpcisock.so" PCISOCK_FABRIC="$work/fab-base.sock" PCISOCK_PORTS=$port PCISOCK_STRICT=1) ;;
    esac
    "${pre[@]}" "$work/idlefan" server "$port" & sp=$!
    pids+=("$sp")
    wait_listen "$port"
    exec 3< <("${pre[@]}" "$work/idlefan" client "$port" "$n" "$seconds" "$gap")
    read -r -u 3 line
    sleep 0.5
    s0=$(awk '{print $14+$15}' "/proc/$sp/stat")
    read -r -u 3 res
    s1=$(awk '{print $14+$15}' "/proc/$sp/stat")
    exec 3<&-
    kill "$sp"; wait "$sp" 2>/dev/null || true
    set -- $res
    echo "$1 $2 $((s1 - s0))"
}

variants=(tcp pcisock)
[ -n "$base" ] && variants+=(base)
declare -A p50 p99 ticks
echo "round,conns,variant,p50_us,p99_us,server_ticks"
for r in $(seq "$runs"); do
    for n in ${conns//,/ }; do
        for v in "${variants[@]}"; do
            set -- $(run "$v" "$n")
            echo "$r,$n,$v,$1,$2,$3"
            p50[$n,$v]+="$1 "; p99[$n,$v]+="$2 "; ticks[$n,$v]+="$3 "
        done
    done
done
echo
echo "Medians of $runs rounds (request phase ${seconds} s, gap ${gap} µs; ticks: $(getconf CLK_TCK) a second):"
echo
echo "| connections | variant | p50 µs | p99 µs | server CPU ticks |"
echo "|---:|---|---:|---:|---:|"
for n in ${conns//,/ }; do
    for v in "${variants[@]}"; do
        echo "| $n | $v | $(median <<<"${p50[$n,$v]}") | $(median <<<"${p99[$n,$v]}") | $(median <<<"${ticks[$n,$v]}") |"
    done
done
