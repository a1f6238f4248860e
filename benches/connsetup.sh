#!/usr/bin/env bash
# Connection set-up rate, two ways: benches/connsetup.c opens a connection, sends one 64-byte
# request, reads a 64-byte answer and closes, in a loop, against a server that serves each
# connection the same way; and nginx (one worker) serving a 16 KiB page to
# `wrk -c16 -H 'Connection: close'` (a new connection per request). Three columns, interleaved
# round by round: plain TCP; pcisock through the host fabric service (a private service of this
# run); pcisock through a device both ends map (PCISOCK_EMU_DIR, the device rendezvous). The
# pcisock columns of the loop run strict, so every counted connection went over the NTB path.
# Reports connections (requests) a second, medians, and the ratios.
#
# usage: benches/connsetup.sh [--runs N] [--seconds S] [--base DIR] [--out FILE]
#   --runs N      rounds (default 5)
#   --seconds S   seconds per run (default 2)
#   --base DIR    also two more columns: the service path with another build's libpcisock.so and
#                 pcisock from DIR (its own private service), and the device rendezvous with that
#                 build's libpcisock.so, interleaved with the others: an A/B of a change (DIR:
#                 e.g. the target/release of a checkout of the base commit)
#   --out FILE    also write the markdown to FILE (e.g. benches/results/connsetup.md)
# Needs: gcc, a release build (target/release/libpcisock.so and pcisock).
set -euo pipefail

RUNS=5 SECONDS_PER=2 OUT="" BASE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --seconds) SECONDS_PER="$2"; shift 2 ;;
        --base) BASE="$2"; shift 2 ;;
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
if [[ -n "$BASE" ]]; then
    BASE="$(cd "$BASE" && pwd)"
    [[ -f "$BASE/libpcisock.so" && -x "$BASE/pcisock" ]] ||
        { echo "connsetup.sh: --base $BASE has no libpcisock.so and pcisock" >&2; exit 2; }
fi
command -v gcc >/dev/null || { echo "connsetup.sh: gcc not found (apt-get install -y gcc)" >&2; exit 2; }

source "$root/benches/common.sh"
bench_init connsetup
gcc -O2 -o "$work/connsetup" "$root/benches/connsetup.c"
mkdir -m 700 "$work/emu" "$work/emu-base"
svc_dir="/run/pcisock-connsetup-$$"
"$cli" fabric start --socket "$svc_dir/fabric.sock" >/dev/null
[[ -z "$BASE" ]] || "$BASE/pcisock" fabric start --socket "$svc_dir/base.sock" >/dev/null
stop_service() {
    "$cli" fabric stop --socket "$svc_dir/fabric.sock" >/dev/null 2>&1 || true
    [[ -z "$BASE" ]] || "$BASE/pcisock" fabric stop --socket "$svc_dir/base.sock" >/dev/null 2>&1 || true
    rm -rf "$svc_dir"
}
trap 'stop_service; bench_cleanup' EXIT INT TERM

# The environment of column $1 for port $2.
env_of() {
    case "$1" in
        tcp) echo "X_PCISOCK_BENCH=tcp" ;;
        service) echo "LD_PRELOAD=$lib PCISOCK_PORTS=$2 PCISOCK_FABRIC=$svc_dir/fabric.sock" ;;
        base) echo "LD_PRELOAD=$BASE/libpcisock.so PCISOCK_PORTS=$2 PCISOCK_FABRIC=$svc_dir/base.sock" ;;
        device) echo "LD_PRELOAD=$lib PCISOCK_PORTS=$2 PCISOCK_EMU_DIR=$work/emu" ;;
        base-device) echo "LD_PRELOAD=$BASE/libpcisock.so PCISOCK_PORTS=$2 PCISOCK_EMU_DIR=$work/emu-base" ;;
    esac
}

# One nginx run of column $1 (one worker, 16 KiB page, a new connection per request):
# prints requests a second.
run_nginx() {
    local mode=$1
    next_port
    mkdir -p "$work/ngx/www" "$work/ngx/tmp"
    head -c 16384 /dev/urandom >"$work/ngx/www/page"
    nginx_bench_conf "$work/ngx" "$port"
    # shellcheck disable=SC2046
    env $(env_of "$mode" "$port") nginx -c "$work/ngx/nginx.conf" >/dev/null 2>&1 &
    local np=$!
    pids+=("$np")
    wait_listen "$port"
    local out
    # shellcheck disable=SC2046
    out=$(env $(env_of "$mode" "$port") wrk -c16 -t1 -d"${SECONDS_PER}s" -H 'Connection: close' \
        "http://127.0.0.1:$port/page" 2>&1)
    kill "$np" 2>/dev/null || true
    wait "$np" 2>/dev/null || true
    if grep -q "Socket errors\|Non-2xx" <<<"$out"; then
        echo "connsetup.sh: nginx $mode: wrk saw errors" >&2
        grep "Socket errors\|Non-2xx" <<<"$out" >&2
    fi
    awk '/Requests\/sec/ {print int($2)}' <<<"$out"
}

# One run of column $1: prints connections a second.
run() {
    local mode=$1 env=()
    next_port
    case "$mode" in
        tcp) env=() ;;
        service) env=(LD_PRELOAD="$lib" PCISOCK_PORTS="$port" PCISOCK_STRICT=1 PCISOCK_FABRIC="$svc_dir/fabric.sock") ;;
        base) env=(LD_PRELOAD="$BASE/libpcisock.so" PCISOCK_PORTS="$port" PCISOCK_STRICT=1 PCISOCK_FABRIC="$svc_dir/base.sock") ;;
        device) env=(LD_PRELOAD="$lib" PCISOCK_PORTS="$port" PCISOCK_STRICT=1 PCISOCK_EMU_DIR="$work/emu") ;;
        base-device) env=(LD_PRELOAD="$BASE/libpcisock.so" PCISOCK_PORTS="$port" PCISOCK_STRICT=1 PCISOCK_EMU_DIR="$work/emu-base") ;;
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

declare -A rates ngx
modes=(tcp service device)
[[ -z "$BASE" ]] || modes+=(base base-device)
for r in $(seq "$RUNS"); do
    for m in "${modes[@]}"; do
        rates[$m]+="$(run "$m") "
        ngx[$m]+="$(run_nginx "$m") "
    done
    echo "round $r done" >&2
done

tcp=$(median <<<"${rates[tcp]}")
svc=$(median <<<"${rates[service]}")
dev=$(median <<<"${rates[device]}")
ntcp=$(median <<<"${ngx[tcp]}")
nsvc=$(median <<<"${ngx[service]}")
ndev=$(median <<<"${ngx[device]}")
base_row="" nbase_row="" base_note=""
if [[ -n "$BASE" ]]; then
    b=$(median <<<"${rates[base]}")
    nb=$(median <<<"${ngx[base]}")
    bd=$(median <<<"${rates[base-device]}")
    nbd=$(median <<<"${ngx[base-device]}")
    base_row="| pcisock, host fabric service, base build | $b | $(ratio "$b" "$tcp") | ${rates[base]}|
| pcisock, device rendezvous, base build | $bd | $(ratio "$bd" "$tcp") | ${rates[base-device]}|
"
    nbase_row="| pcisock, host fabric service, base build | $nb | $(ratio "$nb" "$ntcp") | ${ngx[base]}|
| pcisock, device rendezvous, base build | $nbd | $(ratio "$nbd" "$ntcp") | ${ngx[base-device]}|
"
    base_note="
Base build (\`--base $BASE\`): the service path with that build (its own private service), and
the device rendezvous with that build (its own device directory)."
fi
md="# Connection set-up rate

\`benches/connsetup.sh --runs $RUNS --seconds $SECONDS_PER${BASE:+ --base $BASE}\` on $(date -u +%Y-%m-%dT%H:%MZ),
$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), build $(git -C "$root" rev-parse --short HEAD).
One client loop: connect, a 64-byte request, a 64-byte answer, close; a server that serves each
connection the same way. Medians of $RUNS interleaved rounds (connections a second).$base_note

| path | connections/s | ÷ TCP | runs |
|---|---:|---:|---|
| TCP loopback | $tcp | 1.00 | ${rates[tcp]}|
| pcisock, host fabric service | $svc | $(ratio "$svc" "$tcp") | ${rates[service]}|
| pcisock, device rendezvous | $dev | $(ratio "$dev" "$tcp") | ${rates[device]}|
$base_row
nginx, one worker, a 16 KiB page, \`wrk -c16 -t1 -H 'Connection: close'\` (requests a second):

| path | requests/s | ÷ TCP | runs |
|---|---:|---:|---|
| TCP loopback | $ntcp | 1.00 | ${ngx[tcp]}|
| pcisock, host fabric service | $nsvc | $(ratio "$nsvc" "$ntcp") | ${ngx[service]}|
| pcisock, device rendezvous | $ndev | $(ratio "$ndev" "$ntcp") | ${ngx[device]}|
$nbase_row"
echo "$md"
[[ -z "$OUT" ]] || printf '%s' "$md" >"$OUT"
