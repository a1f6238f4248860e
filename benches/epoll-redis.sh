#!/usr/bin/env bash
# The cost of pcisock's readiness checks to an epoll-only application: redis-benchmark (SET and GET,
# -c CLIENTS, -n REQUESTS each) against a preloaded redis-server over a private emulated device, requests
# per second, medians over interleaved rounds of two library builds (A: this tree's; B: --lib-b).
#
# usage: benches/epoll-redis.sh --lib-b PATH [--runs N] [--requests N] [--clients N] [--out FILE]
#   --lib-b PATH    the other build of libpcisock.so (e.g. one of the commit before a change)
#   --runs N        rounds (default 5)
#   --requests N    requests of each kind per run (default 100000)
#   --clients N     redis-benchmark connections (default 8)
#   --out FILE      also write the markdown to FILE
# Needs: redis-server and redis-benchmark (scripts/setup.sh), a release build of libpcisock.so.
# Take /tmp/pcisock-iperf-tests-lo.lock around it (flock) so other tests' loopback counters stay clean.
set -euo pipefail

RUNS=5 REQUESTS=100000 CLIENTS=8 LIB_B="" OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --lib-b) LIB_B="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "epoll-redis.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -f "$LIB_B" ]] || { echo "epoll-redis.sh: --lib-b PATH is required and must exist" >&2; exit 2; }
for n in "$RUNS" "$REQUESTS" "$CLIENTS"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "epoll-redis.sh: counts must be positive integers" >&2; exit 2; }
done
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null ||
    { echo "epoll-redis.sh: redis-server/redis-benchmark not found (scripts/setup.sh)" >&2; exit 2; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
[[ -f "$lib" ]] || { echo "epoll-redis.sh: $lib not found: run cargo build --release" >&2; exit 2; }
source "$root/benches/common.sh"
bench_init epoll-redis.sh

# run LIB -> "set_rps get_rps"
run() {
    next_port
    rm -rf "$work/emu"; mkdir -m 700 "$work/emu"
    local env=(LD_PRELOAD="$1" PCISOCK_PORTS="$port" PCISOCK_FABRIC=device PCISOCK_EMU_DIR="$work/emu")
    env "${env[@]}" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --protected-mode no --daemonize no --dir "$work" >"$work/server.out" 2>&1 &
    local spid=$!; pids+=("$spid")
    wait_listen "$port" || return 1
    local out
    out="$(env "${env[@]}" timeout 120 redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -n "$REQUESTS" \
        -c "$CLIENTS" -q 2>&1 | tr '\r' '\n')"
    kill "$spid"; wait "$spid" 2>/dev/null || true
    local s g
    s="$(grep -o '^SET: [0-9.]*' <<<"$out" | tail -1 | cut -d' ' -f2)"
    g="$(grep -o '^GET: [0-9.]*' <<<"$out" | tail -1 | cut -d' ' -f2)"
    [[ -n "$s" && -n "$g" ]] || { echo "epoll-redis.sh: no result: $out" >&2; return 1; }
    echo "$s $g"
}

declare -A res
started="$(date -u +%Y-%m-%dT%H:%MZ)"
for r in $(seq "$RUNS"); do
    for v in a b; do
        read -r s g < <(run "$([[ $v == a ]] && echo "$lib" || echo "$LIB_B")")
        res[set-$v]+="$s "; res[get-$v]+="$g "
        printf '  round %d %s SET %s GET %s requests/s\n' "$r" "$v" "$s" "$g" >&2
    done
done
report="$(
    echo "Command: \`benches/epoll-redis.sh --lib-b B --runs $RUNS --requests $REQUESTS --clients $CLIENTS\`. Date: $started – $(date -u +%H:%MZ). Machine: $(nproc) vCPUs, kernel $(uname -r). A: sha256 $(sha256sum "$lib" | cut -c1-12); B: sha256 $(sha256sum "$LIB_B" | cut -c1-12)."
    echo
    echo "| requests/s (median of $RUNS) | A | B | A/B |"
    echo "|---|---|---|---|"
    for k in set get; do
        a="$(median <<<"${res[$k-a]}")"; b="$(median <<<"${res[$k-b]}")"
        echo "| ${k^^} | $a | $b | $(ratio "$a" "$b") |"
    done
)"
echo "$report"
[[ -z "$OUT" ]] || echo "$report" >"$OUT"
