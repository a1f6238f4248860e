#!/usr/bin/env bash
# What one connection costs an nginx worker, in system calls and CPU time: nginx (one worker, a
# 16 KiB page, sendfile on) serves `wrk -c16 -t1 -H 'Connection: close'` (a new connection per
# request) for a few seconds, twice per column: once under `strace -c -f` on the worker (system
# calls per request, by name: a count, not a timing, so it is the same on a busy machine), once
# without (the worker's and the fabric service's CPU microseconds per request, from
# /proc/PID/stat, and requests a second). Columns: plain TCP; pcisock through a host fabric
# service of this run; with --base, the same with another build (its own service). Rounds are
# interleaved; medians.
#
# usage: benches/setup-syscalls.sh [--runs N] [--seconds S] [--base DIR] [--out FILE]
#   --runs N      rounds of the CPU measurement (default 5; the strace count runs once)
#   --seconds S   seconds per run (default 2)
#   --base DIR    another build's libpcisock.so and pcisock (e.g. a checkout's target/release)
#   --out FILE    also write the markdown to FILE
# Needs: nginx, wrk, strace, a release build (target/release/libpcisock.so and pcisock).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="$root/target/release/libpcisock.so"
cli="$root/target/release/pcisock"
RUNS=5 SECONDS_PER=2 BASE="" OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --seconds) SECONDS_PER="$2"; shift 2 ;;
        --base) BASE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "setup-syscalls.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "setup-syscalls.sh: --runs must be a positive integer" >&2; exit 2; }
[[ "$SECONDS_PER" =~ ^[1-9][0-9]*$ ]] || { echo "setup-syscalls.sh: --seconds must be a positive integer" >&2; exit 2; }
[[ -f "$lib" && -x "$cli" ]] || { echo "setup-syscalls.sh: run cargo build --release first" >&2; exit 2; }
for t in nginx wrk strace; do
    command -v "$t" >/dev/null || { echo "setup-syscalls.sh: $t not found (apt-get install -y $t)" >&2; exit 2; }
done
if [[ -n "$BASE" ]]; then
    BASE="$(cd "$BASE" && pwd)"
    [[ -f "$BASE/libpcisock.so" && -x "$BASE/pcisock" ]] ||
        { echo "setup-syscalls.sh: --base $BASE has no libpcisock.so and pcisock" >&2; exit 2; }
fi

source "$root/benches/common.sh"
bench_init setup-syscalls
svc_dir="/run/pcisock-setup-syscalls-$$"
"$cli" fabric start --socket "$svc_dir/fabric.sock" >/dev/null
[[ -z "$BASE" ]] || "$BASE/pcisock" fabric start --socket "$svc_dir/base.sock" >/dev/null
stop_service() {
    "$cli" fabric stop --socket "$svc_dir/fabric.sock" >/dev/null 2>&1 || true
    [[ -z "$BASE" ]] || "$BASE/pcisock" fabric stop --socket "$svc_dir/base.sock" >/dev/null 2>&1 || true
    rm -rf "$svc_dir"
}
trap 'stop_service; bench_cleanup' EXIT INT TERM
mkdir -p "$work/ngx/www" "$work/ngx/tmp"
head -c 16384 /dev/urandom >"$work/ngx/www/page"
tick=$(getconf CLK_TCK)

columns=(tcp service)
[[ -z "$BASE" ]] || columns+=(base)

env_of() {
    case "$1" in
        tcp) echo "X_PCISOCK_BENCH=tcp" ;;
        service) echo "LD_PRELOAD=$lib PCISOCK_PORTS=$2 PCISOCK_FABRIC=$svc_dir/fabric.sock" ;;
        base) echo "LD_PRELOAD=$BASE/libpcisock.so PCISOCK_PORTS=$2 PCISOCK_FABRIC=$svc_dir/base.sock" ;;
    esac
}
service_pid() {
    case "$1" in
        service) pgrep -f "fabric start --foreground --socket $svc_dir/fabric.sock" | head -1 ;;
        base) pgrep -f "fabric start --foreground --socket $svc_dir/base.sock" | head -1 ;;
        *) echo "" ;;
    esac
}
cpu_ticks() { [[ -n "$1" ]] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }

# One run of column $1; $2 = strace or cpu. Prints "requests cpu_worker_us cpu_service_us
# req_per_s" (cpu) or "requests" and leaves the strace summary in $work/strace.$1 (strace).
run() {
    local mode=$1 how=$2
    next_port
    nginx_bench_conf "$work/ngx" "$port"
    # shellcheck disable=SC2046
    env $(env_of "$mode" "$port") nginx -c "$work/ngx/nginx.conf" >/dev/null 2>&1 &
    local np=$!
    pids+=("$np")
    wait_listen "$port"
    local worker
    for _ in $(seq 50); do
        worker=$(pgrep -P "$np" | head -1) && [[ -n "$worker" ]] && break
        sleep 0.1
    done
    local sp="" svc a s out n
    svc=$(service_pid "$mode")
    if [[ "$how" == strace ]]; then
        strace -c -f -p "$worker" -o "$work/strace.$mode" 2>/dev/null &
        sp=$!
        sleep 0.5
    fi
    a=$(cpu_ticks "$worker"); s=$(cpu_ticks "$svc")
    # shellcheck disable=SC2046
    out=$(env $(env_of "$mode" "$port") wrk -c16 -t1 -d"${SECONDS_PER}s" -H 'Connection: close' \
        "http://127.0.0.1:$port/page" 2>&1)
    local b t
    b=$(cpu_ticks "$worker"); t=$(cpu_ticks "$svc")
    if [[ -n "$sp" ]]; then
        kill -INT "$sp" 2>/dev/null || true
        wait "$sp" 2>/dev/null || true
    fi
    kill "$np" 2>/dev/null || true
    wait "$np" 2>/dev/null || true
    if grep -q "Socket errors\|Non-2xx" <<<"$out"; then
        echo "setup-syscalls.sh: $mode: wrk saw errors" >&2
        grep "Socket errors\|Non-2xx" <<<"$out" >&2
    fi
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    [[ -n "$n" && "$n" -gt 0 ]] || { echo "setup-syscalls.sh: $mode: no requests" >&2; exit 1; }
    if [[ "$how" == strace ]]; then
        echo "$n"
    else
        awk -v n="$n" -v a="$a" -v b="$b" -v s="$s" -v t="$t" -v tick="$tick" -v secs="$SECONDS_PER" \
            'BEGIN { printf "%d %.1f %.1f %d\n", n, (b - a) * 1e6 / tick / n, (t - s) * 1e6 / tick / n, n / secs }'
    fi
}

declare -A calls wcpu scpu rate
for m in "${columns[@]}"; do
    n=$(run "$m" strace)
    calls[$m]=$(awk -v n="$n" '$NF == "total" { printf "%.1f", $4 / n }' "$work/strace.$m")
    awk -v n="$n" 'NR > 2 && NF >= 5 && $NF != "total" { printf "%s %.2f\n", $NF, $4 / n }' \
        "$work/strace.$m" | sort -k2 -nr >"$work/by-name.$m"
done
for r in $(seq "$RUNS"); do
    order=("${columns[@]}")
    if (( r % 2 == 0 )); then
        order=(); for ((i = ${#columns[@]} - 1; i >= 0; i--)); do order+=("${columns[i]}"); done
    fi
    for m in "${order[@]}"; do
        read -r _ w s q <<<"$(run "$m" cpu)"
        wcpu[$m]+="$w "; scpu[$m]+="$s "; rate[$m]+="$q "
    done
    echo "round $r done" >&2
done

name() {
    case "$1" in
        tcp) echo "TCP loopback" ;;
        service) echo "pcisock, host fabric service" ;;
        base) echo "pcisock, host fabric service, base build" ;;
    esac
}
{
    echo "# What one connection costs an nginx worker"
    echo
    echo "\`benches/setup-syscalls.sh --runs $RUNS --seconds $SECONDS_PER${BASE:+ --base $BASE}\` on $(date -u +%Y-%m-%dT%H:%MZ),"
    echo "$(nproc) CPUs, build $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), load average $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "nginx, one worker, a 16 KiB page, \`wrk -c16 -t1 -H 'Connection: close'\`. System calls per request: one"
    echo "run under \`strace -c -f\` on the worker. CPU: the worker's and the service's user+system time per"
    echo "request; medians of $RUNS interleaved rounds without strace."
    echo
    echo "| path | system calls / request | worker CPU µs / request | service CPU µs / request | requests/s |"
    echo "|---|---:|---:|---:|---:|"
    for m in "${columns[@]}"; do
        echo "| $(name "$m") | ${calls[$m]} | $(median <<<"${wcpu[$m]}") | $(median <<<"${scpu[$m]}") | $(median <<<"${rate[$m]}") |"
    done
    echo
    echo "System calls per request by name (the strace run):"
    echo
    for m in "${columns[@]}"; do
        echo "- $(name "$m"): $(awk '$2 >= 0.05 { printf "%s%s %s", sep, $1, $2; sep = ", " }' "$work/by-name.$m")"
    done
    echo
    echo "Runs (worker µs, service µs, requests/s):"
    echo
    for m in "${columns[@]}"; do
        echo "- $(name "$m"): ${wcpu[$m]}/ ${scpu[$m]}/ ${rate[$m]}"
    done
} | tee "${OUT:-/dev/null}"
