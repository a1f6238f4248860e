#!/usr/bin/env bash
# User-space instructions per keep-alive request in an nginx worker (callgrind), plain TCP
# against pcisock builds: the one instrument here that the machine's noise does not move.
# nginx (one worker, a 17-byte `return 200`) runs under `valgrind --tool=callgrind`; `wrk -c 1`
# sends requests for --seconds; the worker's instruction total is divided by wrk's request
# count. pcisock runs through a fabric service of the run, strict, with PCISOCK_SPIN_US=0 by
# default (a spinning wait's instructions depend on how long the peer took, not on the code:
# --spin US to measure with spinning). Kernel instructions are not counted (TCP's stack is in
# the kernel), so the TCP column is nginx's own work, and each pcisock column's excess is what
# the library adds in user space.
#
# usage: benches/nginx-instructions.sh [--runs N] [--seconds S] [--spin US] [--top K] [--out FILE] [LIB...]
#   LIB         libpcisock.so builds to measure (default target/release/libpcisock.so)
#   --runs N    rounds, interleaved (default 3); the table gives medians
#   --seconds S seconds of wrk per run (default 3)
#   --spin US   PCISOCK_SPIN_US for the pcisock runs (default 0)
#   --top K     also list the K functions with the most instructions of the last run of each LIB
#   --out FILE  also write the markdown to FILE
# Needs: nginx, wrk, valgrind, a release build (the service is target/release/pcisock's).
set -euo pipefail

RUNS=3 SECS=3 SPIN=0 TOP=0 OUT=""
libs=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --seconds) SECS="$2"; shift 2 ;;
        --spin) SPIN="$2"; shift 2 ;;
        --top) TOP="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        -*) echo "nginx-instructions.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
        *) libs+=("$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"); shift ;;
    esac
done
for v in "$RUNS" "$SECS"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "nginx-instructions.sh: --runs and --seconds take positive integers" >&2; exit 2; }
done
[[ "$SPIN" =~ ^[0-9]+$ && "$TOP" =~ ^[0-9]+$ ]] || { echo "nginx-instructions.sh: --spin and --top take integers" >&2; exit 2; }
for t in nginx wrk valgrind callgrind_annotate; do
    command -v "$t" >/dev/null || { echo "nginx-instructions.sh: $t not installed" >&2; exit 2; }
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cli="$root/target/release/pcisock"
[[ ${#libs[@]} -gt 0 ]] || libs=("$root/target/release/libpcisock.so")
for l in "${libs[@]}"; do [[ -f "$l" ]] || { echo "nginx-instructions.sh: no $l" >&2; exit 2; }; done
[[ -x "$cli" ]] || { echo "nginx-instructions.sh: run cargo build --release first" >&2; exit 2; }

source "$root/benches/common.sh"
bench_init nginx-instructions
svc_dir="/run/pcisock-nginx-instructions-$$"
"$cli" fabric start --socket "$svc_dir/fabric.sock" >/dev/null
trap '"$cli" fabric stop --socket "$svc_dir/fabric.sock" >/dev/null 2>&1 || true; rm -rf "$svc_dir"; bench_cleanup' EXIT INT TERM

raw="$work/raw.csv"
echo "round,variant,requests,instructions_per_request" >"$raw"

one() { # $1 variant (tcp | index into libs), $2 round
    local v=$1 r=$2 d="$work/run" env=()
    rm -rf "$d"; mkdir -m 755 "$d"
    next_port
    nginx_keepalive_conf "$d" "$port"
    [[ $v == tcp ]] || env=(LD_PRELOAD="${libs[$v]}" PCISOCK_FABRIC="$svc_dir/fabric.sock"
        PCISOCK_PORTS="$port" PCISOCK_STRICT=1 PCISOCK_SPIN_US="$SPIN")
    env "${env[@]}" timeout $((SECS + 120)) valgrind --tool=callgrind --trace-children=yes \
        --callgrind-out-file="$d/cg.%p" nginx -c "$d/nginx.conf" >"$d/vg.out" 2>&1 &
    local ng=$!; pids+=("$ng")
    for _ in $(seq 300); do port_listening "$port" && break; sleep 0.1; done
    port_listening "$port" || { echo "nginx-instructions.sh: nginx did not listen under valgrind" >&2; exit 1; }
    sleep 1
    local req
    req="$(env "${env[@]}" timeout $((SECS + 30)) wrk -c 1 -t 1 -d "${SECS}s" "http://127.0.0.1:$port/" 2>&1 |
        awk '/requests in/ {print $1}')"
    local master
    master="$(pgrep -P "$ng" | head -1 || true)"
    kill -QUIT "${master:-$ng}" 2>/dev/null || true
    wait "$ng" 2>/dev/null || true
    pids=()
    # The worker's file is the one with the most instructions.
    local best=0 f n
    for f in "$d"/cg.*; do
        n="$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
        if [[ -n $n ]] && (( n > best )); then best=$n; cp "$f" "$work/last-$v.cg"; fi
    done
    if [[ -z $req || $req -eq 0 || $best -eq 0 ]]; then
        echo "$r,$v,FAIL," >>"$raw"; return 0
    fi
    echo "$r,$v,$req,$((best / req))" >>"$raw"
    local name=tcp
    [[ $v == tcp ]] || name="${libs[$v]}"
    echo "nginx-instructions.sh: round $r $name: $req requests, $((best / req)) instructions each" >&2
}

variants=(tcp)
for i in "${!libs[@]}"; do variants+=("$i"); done
start="$(date -u '+%Y-%m-%dT%H:%MZ')"
for r in $(seq "$RUNS"); do
    vs=("${variants[@]}")
    if (( r % 2 == 0 )); then
        vs=(); for ((i = ${#variants[@]} - 1; i >= 0; i--)); do vs+=("${variants[i]}"); done
    fi
    for v in "${vs[@]}"; do one "$v" "$r"; done
done

md="$(python3 - "$raw" "$start" "$RUNS" "$SECS" "$SPIN" "${libs[@]}" <<'PY'
import csv, hashlib, statistics, sys
raw, start, runs, secs, spin, *libs = sys.argv[1:]
rows = list(csv.DictReader(open(raw)))
def med(v):
    xs = [int(r["instructions_per_request"]) for r in rows if r["variant"] == v and r["instructions_per_request"]]
    return statistics.median(xs) if xs else None
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()[:12]
tcp = med("tcp")
L = ["# User-space instructions per keep-alive request in an nginx worker", "",
     f"`benches/nginx-instructions.sh --runs {runs} --seconds {secs} --spin {spin} {' '.join(libs)}` at {start}.",
     "callgrind on the nginx worker (one worker, `return 200`), `wrk -c 1`; pcisock strict through a",
     f"fabric service of the run, PCISOCK_SPIN_US={spin}. Medians of {runs} interleaved rounds.", "",
     "| variant | instructions/request | ÷ TCP | runs |", "|---|---:|---:|---|"]
for v, name in [("tcp", "TCP loopback (nginx alone)")] + [(str(i), f"`{l}` (sha256 {sha(l)})") for i, l in enumerate(libs)]:
    m = med(v)
    runs_ = " ".join(r["instructions_per_request"] or "FAIL" for r in rows if r["variant"] == v)
    ratio = f"{m / tcp:.2f}" if m and tcp else "n/a"
    L.append(f"| {name} | {m if m is not None else 'n/a'} | {ratio} | {runs_} |")
print("\n".join(L))
PY
)"
if (( TOP > 0 )); then
    for i in "${!libs[@]}"; do
        [[ -f "$work/last-$i.cg" ]] || continue
        md+=$'\n\n'"Top $TOP functions, ${libs[$i]} (last run):"$'\n\n```text\n'
        md+="$(callgrind_annotate "$work/last-$i.cg" 2>/dev/null | sed -n '/file:function/,$p' | sed -n "3,$((TOP + 2))p" | cut -c1-150)"
        md+=$'\n```'
    done
fi
echo "$md"
[[ -z "$OUT" ]] || echo "$md" >"$OUT"
