#!/usr/bin/env bash
# The cost pcisock adds to a hooked libc call on an fd it does not own (issue 5; target ≤ 5 ns).
# Builds benches/hookcost.c, runs it without and with LD_PRELOAD=libpcisock.so, interleaved
# ROUNDS times, and reports the median ns per call of each and the difference. Then, if valgrind
# is installed, user-space instructions per call with and without the preload (callgrind; these
# are stable on this VM, the timings are not): each call is made N and 2N times and the
# difference in instructions is divided by N.
#
# usage: benches/hookcost.sh [--rounds N] [--iters N] [--out FILE]
#   --rounds N  interleaved plain/preload pairs (default 7)
#   --iters N   calls per timed loop (default 2000000)
#   --out FILE  also write the markdown to FILE (e.g. benches/results/hookcost.md)
# Needs: gcc, a release build of libpcisock.so (PCISOCK_LIB overrides), valgrind (optional).
set -euo pipefail

ROUNDS=7 ITERS=2000000 OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --iters) ITERS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "hookcost.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ && "$ITERS" =~ ^[1-9][0-9]*$ ]] || { echo "hookcost.sh: --rounds and --iters must be positive integers" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "$root/benches/common.sh"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
[[ -f "$lib" ]] || { echo "hookcost.sh: $lib not found: run cargo build --release" >&2; exit 2; }
command -v gcc >/dev/null || { echo "hookcost.sh: gcc not found (apt-get install -y gcc)" >&2; exit 2; }

work="$(mktemp -d /tmp/pcisock-hookcost.XXXXXX)"
chmod 700 "$work"
trap 'rm -rf "$work"' EXIT INT TERM
gcc -O2 -Wall -o "$work/hookcost" "$root/benches/hookcost.c" || { echo "hookcost.sh: build failed" >&2; exit 2; }
# The preloaded runs get a private emulated-device dir, though no call here reaches the device.
mkdir -m 700 "$work/emu"
pre=(env LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$work/emu")

calls=(write_pipe_0 recv_ebadf fcntl_getfl)
declare -A res
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
lib_id() { echo "$(basename "$lib") sha256 $(sha256sum "$lib" | cut -c1-12), built $(date -u -r "$lib" +%Y-%m-%dT%H:%MZ)"; }
libinfo="$(lib_id)"
for r in $(seq "$ROUNDS"); do
    for mode in plain preload; do
        if [[ $mode == plain ]]; then out="$(timeout 60 "$work/hookcost" "$ITERS")"; else out="$(timeout 60 "${pre[@]}" "$work/hookcost" "$ITERS")"; fi
        for c in "${calls[@]}"; do
            v="$(awk -v c="$c" '$1 == c {sub("ns_per_call=", "", $2); print $2}' <<<"$out")"
            [[ -n "$v" ]] || { echo "hookcost.sh: no result for $c ($mode): $out" >&2; exit 1; }
            res[$c-$mode]+="$v "
        done
    done
    echo "  round $r done" >&2
done
minmax() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo=$1} {hi=$1} END {printf "%s–%s", lo, hi}'; }

timing="$(
    echo "| call | plain ns/call, median (min–max) | with libpcisock.so ns/call, median (min–max) | delta ns (median of preload − median of plain) | delta, paired median ns |"
    echo "|---|---:|---:|---:|---:|"
    for c in "${calls[@]}"; do
        a="$(median <<<"${res[$c-plain]}")"; b="$(median <<<"${res[$c-preload]}")"
        # Paired: round i preload minus round i plain, then the median of those.
        read -ra pa <<<"${res[$c-plain]}"; read -ra pb <<<"${res[$c-preload]}"
        d=""; for i in "${!pa[@]}"; do d+="$(awk -v x="${pb[$i]}" -v y="${pa[$i]}" 'BEGIN {printf "%.2f", x-y}') "; done
        echo "| \`$c\` | $a ($(minmax <<<"${res[$c-plain]}")) | $b ($(minmax <<<"${res[$c-preload]}")) | $(awk -v x="$b" -v y="$a" 'BEGIN {printf "%+.2f", x-y}') | $(median <<<"$d") |"
    done
)"

cg=""
if command -v valgrind >/dev/null; then
    N=100000
    ir() { # $1 = plain|preload, $2 = call, $3 = iterations → instructions collected
        local e=()
        [[ $1 == preload ]] && e=("${pre[@]}")
        timeout 300 "${e[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$work/hookcost" "$3" --once "$2" 2>&1 |
            awk '/Collected :/ {print $NF}'
    }
    cg="$(
        echo "| call | plain instructions/call | with libpcisock.so instructions/call | added by the hook |"
        echo "|---|---:|---:|---:|"
        for c in write recv fcntl; do
            p1="$(ir plain "$c" "$N")"; p2="$(ir plain "$c" $((2 * N)))"
            q1="$(ir preload "$c" "$N")"; q2="$(ir preload "$c" $((2 * N)))"
            [[ -n "$p1" && -n "$p2" && -n "$q1" && -n "$q2" ]] || { echo "hookcost.sh: callgrind gave no count for $c" >&2; exit 1; }
            awk -v c="$c" -v p1="$p1" -v p2="$p2" -v q1="$q1" -v q2="$q2" -v n="$N" \
                'BEGIN {a=(p2-p1)/n; b=(q2-q1)/n; printf "| `%s` | %.1f | %.1f | %+.1f |\n", c, a, b, b-a}'
        done
    )"
else
    echo "hookcost.sh: valgrind not installed: no instruction counts (apt-get install -y valgrind)" >&2
fi
ended="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
[[ "$(lib_id)" == "$libinfo" ]] || libinfo+=" (**rebuilt during the run**: now $(lib_id))"

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs) model $(grep -m1 '^model' /proc/cpuinfo | cut -d: -f2 | xargs)"
report="$(
    echo "# Hooked-call cost on an fd pcisock does not own"
    echo
    echo "Command: \`benches/hookcost.sh --rounds $ROUNDS --iters $ITERS\` (source: [benches/hookcost.c](../hookcost.c)). Date: $started – $ended. Machine: $(nproc) vCPUs, $cpu, kernel $(uname -r), library $libinfo, $(gcc --version | head -1)."
    echo
    echo "## Time per call ($ROUNDS interleaved rounds, $ITERS calls per loop)"
    echo
    echo "$timing"
    if [[ -n "$cg" ]]; then
        echo
        echo "## User-space instructions per call (callgrind, $(valgrind --version))"
        echo
        echo "Each call made $N and $((2 * N)) times; (difference in instructions) / $N. Includes the loop's own few instructions; the kernel's part of the syscall is not counted."
        echo
        echo "$cg"
    fi
)"
echo "$report"
[[ -z "$OUT" ]] || echo "$report" >"$OUT"
