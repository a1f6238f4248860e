#!/usr/bin/env bash
# The cost of one small write() through pcisock against TCP loopback, with no application work
# around it: benches/writeloop.c writes N times SIZE bytes in a plain loop to a reader that
# read()s with a 128 KiB buffer. Reports nanoseconds per write (the client's loop time / N),
# medians over interleaved rounds, and checks that the reader got every byte.
#
# usage: benches/smallwrite.sh [--runs N] [--sizes LIST] [--writes N] [--lib-b PATH] [--out FILE]
#   --runs N      rounds (default 8; the host's vCPU placement makes every cell bimodal)
#   --sizes LIST  comma-separated write sizes in bytes (default 64,1024)
#   --writes N    writes per run (default 2000000)
#   --lib-b PATH  also run a second build of libpcisock.so (column "pcisock B"), interleaved, for
#                 an A/B of a change
#   --out FILE    also write the markdown to FILE (e.g. benches/results/smallwrite.md)
#   --mode M      how the two ends meet: device (default: a private emulated device both map) or
#                 service (a private host fabric service, the default on one host)
#   --pin S,C     run the reader on CPU S and the writer on CPU C (taskset; e.g. 0,1 or 0,0): the
#                 unpinned cells are bimodal with the host's placement of the two processes
# Needs: gcc, a release build of libpcisock.so and pcisock (PCISOCK_LIB and PCISOCK_CLI override their
# paths; --mode service runs its service with that pcisock).
set -euo pipefail

RUNS=8 SIZES="64,1024" WRITES=2000000 LIB_B="" OUT="" MODE=device PIN=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --sizes) SIZES="$2"; shift 2 ;;
        --writes) WRITES="$2"; shift 2 ;;
        --lib-b) LIB_B="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --mode) MODE="$2"; shift 2 ;;
        --pin) PIN="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "smallwrite.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "smallwrite.sh: --runs must be a positive integer" >&2; exit 2; }
[[ "$WRITES" =~ ^[1-9][0-9]*$ ]] || { echo "smallwrite.sh: --writes must be a positive integer" >&2; exit 2; }
[[ "$MODE" == device || "$MODE" == service ]] || { echo "smallwrite.sh: --mode is device or service" >&2; exit 2; }
[[ -z "$PIN" || "$PIN" =~ ^[0-9]+,[0-9]+$ ]] || { echo "smallwrite.sh: --pin is SERVER_CPU,CLIENT_CPU" >&2; exit 2; }
spin=() cpin=()
if [[ -n "$PIN" ]]; then
    command -v taskset >/dev/null || { echo "smallwrite.sh: --pin needs taskset" >&2; exit 2; }
    spin=(taskset -c "${PIN%,*}") cpin=(taskset -c "${PIN#*,}")
fi
IFS=, read -ra sizes <<<"$SIZES"
for s in "${sizes[@]}"; do [[ "$s" =~ ^[1-9][0-9]*$ ]] || { echo "smallwrite.sh: bad size $s (bytes)" >&2; exit 2; }; done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
[[ -f "$lib" ]] || { echo "smallwrite.sh: $lib not found: run cargo build --release" >&2; exit 2; }
[[ -z "$LIB_B" || -f "$LIB_B" ]] || { echo "smallwrite.sh: --lib-b $LIB_B not found" >&2; exit 2; }
command -v gcc >/dev/null || { echo "smallwrite.sh: gcc not found (apt-get install -y gcc)" >&2; exit 2; }

source "$root/benches/common.sh"
bench_init smallwrite.sh
cli="${PCISOCK_CLI:-$root/target/release/pcisock}"
if [[ "$MODE" == service ]]; then
    [[ -x "$cli" ]] || { echo "smallwrite.sh: $cli not found: run cargo build --release" >&2; exit 2; }
    mkdir -m 700 "$work/svc"
    "$cli" fabric start --socket "$work/svc/fabric.sock" >/dev/null ||
        { echo "smallwrite.sh: could not start a host fabric service" >&2; exit 2; }
    trap '"$cli" fabric stop --socket "$work/svc/fabric.sock" >/dev/null 2>&1 || true; bench_cleanup' EXIT INT TERM
fi
gcc -O2 -Wall -o "$work/writeloop" "$root/benches/writeloop.c" ||
    { echo "smallwrite.sh: building benches/writeloop.c failed" >&2; exit 2; }

# run VARIANT SIZE -> "ns_per_write" (and checks the byte count)
run() {
    local v=$1 size=$2 env=()
    next_port
    case "$v" in
        ntb|ntb-b)
            env=(LD_PRELOAD="$([[ $v == ntb ]] && echo "$lib" || echo "$LIB_B")" PCISOCK_PORTS="$port" PCISOCK_STRICT=1)
            if [[ "$MODE" == service ]]; then
                env+=(PCISOCK_FABRIC="$work/svc/fabric.sock")
            else
                rm -rf "$work/emu"; mkdir -m 700 "$work/emu"
                env+=(PCISOCK_EMU_DIR="$work/emu")
            fi ;;
    esac
    env "${env[@]}" timeout 120 "${spin[@]}" "$work/writeloop" server "$port" >"$work/server.out" 2>&1 &
    local spid=$!; pids+=("$spid")
    wait_listen "$port" || return 1
    local out
    out="$(env "${env[@]}" timeout 120 "${cpin[@]}" "$work/writeloop" client "$port" "$size" "$WRITES" 2>"$work/client.err")" || {
        echo "smallwrite.sh: client ($v, $size B) failed: $(cat "$work/client.err")" >&2; kill "$spid"; return 1; }
    wait "$spid" || { echo "smallwrite.sh: server ($v, $size B) failed: $(cat "$work/server.out")" >&2; return 1; }
    local got
    got="$(cat "$work/server.out")"
    [[ "$got" == "$((size * WRITES))" ]] || {
        echo "smallwrite.sh: $v, $size B: the reader got $got bytes, expected $((size * WRITES))" >&2; return 1; }
    echo "${out%% *}"
}

variants=(tcp ntb)
[[ -n "$LIB_B" ]] && variants+=(ntb-b)
declare -A res
started="$(date -u +%Y-%m-%dT%H:%MZ)"
for r in $(seq "$RUNS"); do
    for size in "${sizes[@]}"; do
        for v in "${variants[@]}"; do
            ns="$(run "$v" "$size")"
            res[$size-$v]+="$ns "
            printf '  round %d %5s B %-5s %8s ns/write\n' "$r" "$size" "$v" "$ns" >&2
        done
    done
done

span() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo=$1} {hi=$1} END {printf "%.0f–%.0f", lo, hi}'; }
report="$(
    echo "# Small writes: ns per write() through pcisock and over TCP loopback"
    echo
    echo "Command: \`benches/smallwrite.sh --runs $RUNS --sizes $SIZES --writes $WRITES --mode $MODE$([[ -n "$PIN" ]] && echo " --pin $PIN")$([[ -n "$LIB_B" ]] && echo " --lib-b B")\`. Date: $started – $(date -u +%H:%MZ). Machine: $(nproc) vCPUs, kernel $(uname -r). Library: $(basename "$lib") sha256 $(sha256sum "$lib" | cut -c1-12)$([[ -n "$LIB_B" ]] && echo "; B: sha256 $(sha256sum "$LIB_B" | cut -c1-12)")."
    echo "benches/writeloop.c: $WRITES write()s of SIZE bytes in a plain loop, the reader read()s with a 128 KiB buffer; both ends under the library (PCISOCK_STRICT=1) for pcisock, meeting through $([[ $MODE == service ]] && echo "a private host fabric service" || echo "a private emulated device"). Medians of $RUNS interleaved rounds (min–max); every run checked that the reader got every byte."
    echo
    if [[ -n "$LIB_B" ]]; then
        echo "| write size | TCP ns/write | pcisock ns/write | pcisock B ns/write | TCP / pcisock | TCP / pcisock B |"
        echo "|---:|---:|---:|---:|---:|---:|"
    else
        echo "| write size | TCP ns/write | pcisock ns/write | TCP / pcisock |"
        echo "|---:|---:|---:|---:|"
    fi
    for size in "${sizes[@]}"; do
        t="$(median <<<"${res[$size-tcp]}")" n="$(median <<<"${res[$size-ntb]}")"
        row="| $size | $(printf '%.0f' "$t") ($(span <<<"${res[$size-tcp]}")) | $(printf '%.0f' "$n") ($(span <<<"${res[$size-ntb]}"))"
        if [[ -n "$LIB_B" ]]; then
            b="$(median <<<"${res[$size-ntb-b]}")"
            row+=" | $(printf '%.0f' "$b") ($(span <<<"${res[$size-ntb-b]}")) | $(ratio "$t" "$n") | $(ratio "$t" "$b") |"
        else
            row+=" | $(ratio "$t" "$n") |"
        fi
        echo "$row"
    done
)"
echo "$report"
[[ -n "$OUT" ]] && echo "$report" >"$OUT"
exit 0
