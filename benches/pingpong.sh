#!/usr/bin/env bash
# The 64-byte round trip against the machine's floor, in one run: the bare cache-line ping-pong
# between two processes (shared/tools/shmbench.c `pingpong 2line`), benches/sockpair.c's
# ping-pong over TCP loopback, and over pcisock through a private emulated device and through a
# private host fabric service. Two placements: the two ends on two CPUs (0 and 1, as the floor
# is measured) and both on CPU 0 (taskset). Interleaved rounds; medians of each run's p50 and
# p99 of the full round trip.
#
# usage: benches/pingpong.sh [--runs N] [--size B] [--seconds S] [--lib-b PATH] [--cli-b PATH] [--out FILE]
#   --runs N      rounds (default 5)
#   --size B      message size (default 64)
#   --seconds S   timed round trips per run, after 1,000 untimed ones (default 1)
#   --lib-b PATH  also run a second build of libpcisock.so (rows "… B"), interleaved
#   --cli-b PATH  the B build's pcisock, to run a host fabric service of its own for it (when
#                 the two builds speak different service protocols); default: one service
#   --out FILE    also write the markdown to FILE (e.g. benches/results/pingpong.md)
# Needs: gcc, taskset, 2 CPUs, a release build (target/release/libpcisock.so and pcisock;
# PCISOCK_LIB and PCISOCK_CLI override them), shared/tools/shmbench.c beside the repository.
set -euo pipefail

RUNS=5 SIZE=64 SECS=1 LIB_B="" CLI_B="" OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --seconds) SECS="$2"; shift 2 ;;
        --lib-b) LIB_B="$2"; shift 2 ;;
        --cli-b) CLI_B="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "pingpong.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "pingpong.sh: --runs must be a positive integer" >&2; exit 2; }
[[ "$SIZE" =~ ^[1-9][0-9]*$ ]] || { echo "pingpong.sh: --size must be a positive integer" >&2; exit 2; }
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "pingpong.sh: --seconds must be a positive integer" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
cli="${PCISOCK_CLI:-$root/target/release/pcisock}"
shm_src="$root/../shared/tools/shmbench.c"
[[ -f "$lib" && -x "$cli" ]] || { echo "pingpong.sh: $lib or $cli not found: run cargo build --release" >&2; exit 2; }
[[ -z "$LIB_B" || -f "$LIB_B" ]] || { echo "pingpong.sh: --lib-b $LIB_B not found" >&2; exit 2; }
[[ -z "$CLI_B" || -x "$CLI_B" ]] || { echo "pingpong.sh: --cli-b $CLI_B not found" >&2; exit 2; }
[[ -f "$shm_src" ]] || { echo "pingpong.sh: $shm_src not found (the floor)" >&2; exit 2; }
if ! command -v gcc >/dev/null || ! command -v taskset >/dev/null; then
    echo "pingpong.sh: needs gcc and taskset" >&2; exit 2
fi
(( $(nproc) >= 2 )) || { echo "pingpong.sh: needs 2 CPUs" >&2; exit 2; }

# shellcheck source=benches/common.sh
source "$root/benches/common.sh"
bench_init pingpong.sh
if ! gcc -O2 -Wall -o "$work/sockpair" "$root/benches/sockpair.c" ||
    ! gcc -O2 -march=native -o "$work/shmbench" "$shm_src"; then
    echo "pingpong.sh: building sockpair or shmbench failed" >&2; exit 2
fi
mkdir -m 700 "$work/svc" "$work/svc-b"
"$cli" fabric start --socket "$work/svc/fabric.sock" >/dev/null ||
    { echo "pingpong.sh: could not start a host fabric service" >&2; exit 2; }
svc_b="$work/svc/fabric.sock"
if [[ -n "$CLI_B" ]]; then
    svc_b="$work/svc-b/fabric.sock"
    "$CLI_B" fabric start --socket "$svc_b" >/dev/null ||
        { echo "pingpong.sh: could not start B's host fabric service" >&2; "$cli" fabric stop --socket "$work/svc/fabric.sock" >/dev/null 2>&1; exit 2; }
fi
trap '"$cli" fabric stop --socket "$work/svc/fabric.sock" >/dev/null 2>&1 || true; [[ -z "$CLI_B" ]] || "$CLI_B" fabric stop --socket "$svc_b" >/dev/null 2>&1 || true; bench_cleanup' EXIT INT TERM

# run VARIANT PLACEMENT -> "p50_us p99_us"
run() {
    local v=$1 pl=$2 env=() spin=(taskset -c 0) cpin=(taskset -c 1)
    [[ $pl == same ]] && cpin=(taskset -c 0)
    next_port
    case "$v" in
        device|device-b)
            rm -rf "$work/emu"; mkdir -m 700 "$work/emu"
            env=(LD_PRELOAD="$([[ $v == device ]] && echo "$lib" || echo "$LIB_B")" PCISOCK_EMU_DIR="$work/emu") ;;
        service|service-b)
            env=(LD_PRELOAD="$([[ $v == service ]] && echo "$lib" || echo "$LIB_B")"
                 PCISOCK_FABRIC="$([[ $v == service ]] && echo "$work/svc/fabric.sock" || echo "$svc_b")") ;;
    esac
    [[ $v != tcp ]] && env+=(PCISOCK_PORTS="$port" PCISOCK_STRICT=1)
    env "${env[@]}" timeout 60 "${spin[@]}" "$work/sockpair" server tcp "$port" >/dev/null 2>"$work/server.err" &
    local spid=$!; pids+=("$spid")
    wait_listen "$port" || return 1
    local out
    out="$(env "${env[@]}" timeout 60 "${cpin[@]}" "$work/sockpair" pingpong tcp "$port" "$SIZE" "$SECS" 2>"$work/client.err")" || {
        echo "pingpong.sh: client ($v, $pl) failed: $(cat "$work/client.err")" >&2; kill "$spid"; return 1; }
    wait "$spid" || { echo "pingpong.sh: server ($v, $pl) failed: $(cat "$work/server.err")" >&2; return 1; }
    awk '{print $1, $2}' <<<"$out"
}

floor() {
    "$work/shmbench" pingpong 2line 1000000 0 1 |
        awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); if (kv[1] == "rtt_p50_ns") p50 = kv[2] / 1000; if (kv[1] == "rtt_p99_ns") p99 = kv[2] / 1000}} END {print p50, p99}'
}

variants=(tcp device service)
[[ -n "$LIB_B" ]] && variants+=(device-b service-b)
declare -A p50 p99
started="$(date -u +%Y-%m-%dT%H:%MZ)"
for r in $(seq "$RUNS"); do
    read -r a b < <(floor)
    p50[floor]+="$a " p99[floor]+="$b "
    printf '  round %d floor (shmbench 2line, CPUs 0/1) p50 %s p99 %s µs\n' "$r" "$a" "$b" >&2
    for pl in split same; do
        for v in "${variants[@]}"; do
            read -r a b < <(run "$v" "$pl")
            p50[$v-$pl]+="$a " p99[$v-$pl]+="$b "
            printf '  round %d %-5s %-9s p50 %s p99 %s µs\n' "$r" "$pl" "$v" "$a" "$b" >&2
        done
    done
done

span() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo=$1} {hi=$1} END {printf "%s–%s", lo, hi}'; }
f50="$(median <<<"${p50[floor]}")"
report="$(
    echo "# Round trip against the floor: ${SIZE}-byte ping-pong"
    echo
    echo "Command: \`benches/pingpong.sh --runs $RUNS --size $SIZE --seconds $SECS$([[ -n "$LIB_B" ]] && echo " --lib-b B")$([[ -n "$CLI_B" ]] && echo " --cli-b B-CLI")\`. Date: $started – $(date -u +%H:%MZ). Machine: $(nproc) vCPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r). Library: $(basename "$lib") sha256 $(sha256sum "$lib" | cut -c1-12)$([[ -n "$LIB_B" ]] && echo "; B: sha256 $(sha256sum "$LIB_B" | cut -c1-12)")."
    echo "Floor: \`shmbench pingpong 2line 1000000 0 1\` (two processes, one cache line each way, busy polling, CPUs 0 and 1). The others: benches/sockpair.c \`pingpong\` (1,000 untimed round trips, then $SECS s of timed ones; TCP_NODELAY), both ends preloaded and strict for pcisock, through a private emulated device or a private host fabric service; \"two CPUs\": server on 0, client on 1; \"one CPU\": both on 0. Medians over $RUNS interleaved rounds of each run's p50 and p99 (µs, min–max of the p50s); ratio = p50 / the floor's p50."
    echo
    echo "| placement | path | p50 µs | p99 µs | p50 / floor |"
    echo "|---|---|---:|---:|---:|"
    echo "| two CPUs | floor (bare ping-pong) | $f50 ($(span <<<"${p50[floor]}")) | $(median <<<"${p99[floor]}") | 1.00 |"
    for pl in split same; do
        for v in "${variants[@]}"; do
            m="$(median <<<"${p50[$v-$pl]}")"
            name="$v"; [[ $v == *-b ]] && name="${v%-b} B"
            echo "| $([[ $pl == split ]] && echo "two CPUs" || echo "one CPU") | $name | $m ($(span <<<"${p50[$v-$pl]}")) | $(median <<<"${p99[$v-$pl]}") | $(ratio "$m" "$f50") |"
        done
    done
)"
echo "$report"
[[ -n "$OUT" ]] && echo "$report" >"$OUT"
exit 0
