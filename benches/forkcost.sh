#!/usr/bin/env bash
# User-space instructions per fork() in a process holding a listener on a flagged port, for each
# libpcisock.so given (and without the library): callgrind on benches/forkloop.c run with 10 and
# with 110 forks, the difference divided by 100 (so start-up does not count). The parent's
# instructions only (children are not traced). The library meets a fabric service of the run.
#
# usage: benches/forkcost.sh [--out FILE] [LIB...]   (default LIB: target/release/libpcisock.so)
# Needs: gcc, valgrind, a release build (the service is target/release/pcisock's).
set -euo pipefail
OUT=""
libs=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        -*) echo "forkcost.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
        *) libs+=("$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"); shift ;;
    esac
done
for t in gcc valgrind callgrind_annotate; do
    command -v "$t" >/dev/null || { echo "forkcost.sh: $t not installed" >&2; exit 2; }
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cli="$root/target/release/pcisock"
[[ ${#libs[@]} -gt 0 ]] || libs=("$root/target/release/libpcisock.so")
for l in "${libs[@]}"; do [[ -f "$l" ]] || { echo "forkcost.sh: no $l" >&2; exit 2; }; done
[[ -x "$cli" ]] || { echo "forkcost.sh: run cargo build --release first" >&2; exit 2; }
source "$root/benches/common.sh"
bench_init forkcost
gcc -O2 -o "$work/forkloop" "$root/benches/forkloop.c"
svc_dir="/run/pcisock-forkcost-$$"
"$cli" fabric start --socket "$svc_dir/fabric.sock" >/dev/null
trap '"$cli" fabric stop --socket "$svc_dir/fabric.sock" >/dev/null 2>&1 || true; rm -rf "$svc_dir"; bench_cleanup' EXIT INT TERM

count() { # $1 lib or "none", $2 forks -> total instructions
    local env=()
    next_port
    [[ $1 == none ]] || env=(LD_PRELOAD="$1" PCISOCK_PORTS="$port" PCISOCK_FABRIC="$svc_dir/fabric.sock")
    env "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$work/forkloop" "$2" "$port" \
        >/dev/null 2>&1 || { echo "forkcost.sh: forkloop failed under $1" >&2; exit 1; }
    callgrind_annotate "$work/cg" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
md="# Instructions per fork() with a listener on a flagged port"$'\n\n'
md+="\`benches/forkcost.sh ${libs[*]}\` at $(date -u '+%Y-%m-%dT%H:%MZ'): callgrind, the parent's user-space"$'\n'
md+="instructions per fork (110 forks less 10, over 100)."$'\n\n'"| library | instructions per fork |"$'\n'"|---|---:|"$'\n'
for l in none "${libs[@]}"; do
    a="$(count "$l" 10)"; b="$(count "$l" 110)"
    name="without the library"
    [[ $l == none ]] || name="\`$l\` (sha256 $(sha256sum "$l" | cut -c1-12))"
    md+="| $name | $(( (b - a) / 100 )) |"$'\n'
done
echo "$md"
[[ -z "$OUT" ]] || echo "$md" >"$OUT"
