#!/usr/bin/env bash
# How far iperf2 itself lets any transport go (issue 5's -l 64 and -l 1M targets): in one
# interleaved run, iperf2's client rate over
#   tcp   plain TCP loopback,
#   ntb   pcisock (both sides LD_PRELOAD, PCISOCK_STRICT=1, a private 0700 device dir),
#   copy  benches/nullwrite.c preloaded with NULLWRITE_COPY=1: write() on the socket makes one
#         memcpy into a 1 MiB buffer and returns (the one copy a shared-memory sender makes;
#         no receiver, no synchronisation),
#   null  benches/nullwrite.c: write() on the socket returns at once (iperf2's own loop alone).
# null/tcp is the largest ratio to TCP any transport can show in iperf2 on this machine;
# copy/tcp the largest a transport that copies each byte once can show.
# For tcp and ntb it also reports CPU seconds per GB moved: user + system time of the iperf
# client (the shell's `times` for the child) and server (/proc/PID/stat, read after the client
# has finished and before the server is stopped), over the bytes of the run.
#
# usage: benches/ceiling.sh [--runs N] [--sizes LIST] [--out FILE]
#   --runs N      interleaved rounds (default 7); the table gives medians
#   --sizes LIST  comma-separated write sizes for iperf -l (default 64,1M)
#   --out FILE    also write the markdown to FILE (e.g. benches/results/ceiling.md)
# Needs: iperf (2.x), gcc, a release build of libpcisock.so (PCISOCK_LIB overrides).
set -euo pipefail

RUNS=7 SIZES="64,1M" OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --sizes) SIZES="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "ceiling.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "ceiling.sh: --runs must be a positive integer" >&2; exit 2; }
IFS=, read -ra sizes <<<"$SIZES"
for s in "${sizes[@]}"; do [[ "$s" =~ ^[1-9][0-9]*[KM]?$ ]] || { echo "ceiling.sh: bad size $s (e.g. 64, 128K, 1M)" >&2; exit 2; }; done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
[[ -f "$lib" ]] || { echo "ceiling.sh: $lib not found: run cargo build --release" >&2; exit 2; }
command -v iperf >/dev/null || { echo "ceiling.sh: iperf (2.x) not installed (apt-get install -y iperf)" >&2; exit 2; }
command -v gcc >/dev/null || { echo "ceiling.sh: gcc not found (apt-get install -y gcc)" >&2; exit 2; }

# shellcheck source=common.sh
source "$root/benches/common.sh"
bench_init ceiling.sh
gcc -O2 -Wall -shared -fPIC -o "$work/nullwrite.so" "$root/benches/nullwrite.c" -ldl ||
    { echo "ceiling.sh: building benches/nullwrite.c failed" >&2; exit 2; }

bytes() { local s=$1; case "$s" in *K) echo $(( ${s%K} << 10 ));; *M) echo $(( ${s%M} << 20 ));; *) echo "$s";; esac; }
# Bytes per run: 2^20 writes, clamped to 64 MiB … 8 GiB.
amount() { local a=$(( $(bytes "$1") << 20 )); (( a > 8589934592 )) && a=8589934592; (( a < 67108864 )) && a=67108864; echo "$a"; }

hz="$(getconf CLK_TCK)"
# CPU seconds (user + system) of a live process, from /proc/PID/stat.
proc_cpu() { awk -v hz="$hz" '{sub(/^.*\) /, ""); print ($12 + $13) / hz}' "/proc/$1/stat"; }
# Seconds in bash's `times` format (e.g. 1m2.345s).
tsec() { awk '{split($0, a, "m"); sub(/s$/, "", a[2]); print a[1] * 60 + a[2]}' <<<"$1"; }

# One run: prints the client's rate in bits/s and the CPU seconds of client + server. $1 =
# variant, $2 = size.
run() {
    local v=$1 size=$2 senv=() cenv=()
    next_port
    case "$v" in
        ntb) rm -rf "$work/emu"; mkdir -m 700 "$work/emu"
             senv=(LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$work/emu" PCISOCK_PORTS="$port" PCISOCK_STRICT=1); cenv=("${senv[@]}") ;;
        copy) cenv=(LD_PRELOAD="$work/nullwrite.so" NULLWRITE_COPY=1) ;;
        null) cenv=(LD_PRELOAD="$work/nullwrite.so") ;;
    esac
    env "${senv[@]}" iperf -s -p "$port" >"$work/s.log" 2>&1 &
    local spid=$!; pids+=("$spid")
    wait_listen "$port" || return 1
    local out ccpu scpu
    # In a subshell, so that `times` reports this client's children only.
    out="$(env "${cenv[@]}" timeout 120 iperf -c 127.0.0.1 -p "$port" -l "$size" -n "$(amount "$size")" -y C 2>"$work/c.err"; rc=$?; times >"$work/times"; exit $rc)" || {
        echo "ceiling.sh: iperf client ($v, -l $size) failed: $(cat "$work/c.err")" >&2; kill "$spid"; return 1; }
    read -r cu cs < <(sed -n 2p "$work/times")
    ccpu="$(awk -v a="$(tsec "$cu")" -v b="$(tsec "$cs")" 'BEGIN {print a + b}')"
    scpu="$(proc_cpu "$spid")"
    kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
    echo "$(echo "$out" | grep , | tail -1 | awk -F, '{print $9}') $(awk -v a="$ccpu" -v b="$scpu" 'BEGIN {print a + b}')"
}

minmax() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo=$1} {hi=$1} END {printf "%.0f–%.0f", lo/8e6, hi/8e6}'; }
mbs() { awk -v b="$1" 'BEGIN {printf "%.0f", b/8e6}'; }
range() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo=$1} {hi=$1} END {printf "%.3f–%.3f", lo, hi}'; }

variants=(tcp ntb copy null)
declare -A res cpu
started="$(date -u +%Y-%m-%dT%H:%MZ)"
for r in $(seq "$RUNS"); do
    for size in "${sizes[@]}"; do
        for v in "${variants[@]}"; do
            read -r bps secs < <(run "$v" "$size") || true
            [[ -n "${secs:-}" ]] || exit 1
            res[$size-$v]+="$bps "
            # CPU seconds per GB (10^9 bytes) of this run.
            spg="$(awk -v s="$secs" -v b="$(amount "$size")" 'BEGIN {printf "%.3f", s / (b / 1e9)}')"
            cpu[$size-$v]+="$spg "
            printf '  round %d -l %-4s %-4s %8s MB/s %7s CPU s/GB\n' "$r" "$size" "$v" "$(mbs "$bps")" "$spg" >&2
        done
    done
done

report="$(
    echo "# iperf2's own ceiling against TCP and pcisock"
    echo
    echo "Command: \`benches/ceiling.sh --runs $RUNS --sizes $SIZES\`. Date: $started – $(date -u +%H:%MZ). Machine: $(nproc) vCPUs, kernel $(uname -r), $(iperf -v 2>&1 | head -1). Library: $(basename "$lib") sha256 $(sha256sum "$lib" | cut -c1-12)."
    echo "Medians of $RUNS interleaved rounds (client rate, MB = 10^6 bytes/s; min–max in brackets)."
    echo
    echo "| -l | TCP | pcisock | one memcpy, no receiver | no-op write | pcisock / TCP | copy / TCP (one-copy ceiling) | no-op / TCP (iperf2 ceiling) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    for size in "${sizes[@]}"; do
        declare -A m=()
        for v in "${variants[@]}"; do m[$v]="$(median <<<"${res[$size-$v]}")"; done
        echo "| $size | $(mbs "${m[tcp]}") ($(minmax <<<"${res[$size-tcp]}")) | $(mbs "${m[ntb]}") ($(minmax <<<"${res[$size-ntb]}")) | $(mbs "${m[copy]}") ($(minmax <<<"${res[$size-copy]}")) | $(mbs "${m[null]}") ($(minmax <<<"${res[$size-null]}")) | $(ratio "${m[ntb]}" "${m[tcp]}") | $(ratio "${m[copy]}" "${m[tcp]}") | $(ratio "${m[null]}" "${m[tcp]}") |"
    done
    echo
    echo "CPU seconds per GB moved (10^9 bytes; user + system of the iperf client and server, medians; min–max in brackets). The one-copy and no-op rows have no receiver and are left out."
    echo
    echo "| -l | TCP | pcisock | pcisock / TCP |"
    echo "|---:|---:|---:|---:|"
    for size in "${sizes[@]}"; do
        ct="$(median <<<"${cpu[$size-tcp]}")" cn="$(median <<<"${cpu[$size-ntb]}")"
        echo "| $size | $(printf '%.3f' "$ct") ($(range <<<"${cpu[$size-tcp]}")) | $(printf '%.3f' "$cn") ($(range <<<"${cpu[$size-ntb]}")) | $(ratio "$cn" "$ct") |"
    done
)"
echo "$report"
[[ -n "$OUT" ]] && echo "$report" >"$OUT"
exit 0
