#!/usr/bin/env bash
# Keep-alive request rate and its cost: nginx (one worker, a 17-byte `return 200`) against
# `wrk -c N -t 1` on long-lived connections, plain TCP and pcisock through a fabric service of
# this run (the default way on one host), optionally a second build (--base), interleaved round
# by round. For each run: requests a second, CPU microseconds per request of the nginx worker
# and of wrk (user + system, from /proc and time(1)), and for pcisock the doorbells each side
# rang per request (its stats file): a ring the peer did not need costs it a wake-up.
#
# usage: benches/keepalive.sh [--runs N] [--seconds S] [--conns LIST] [--base DIR] [--out FILE]
#   --runs N      rounds (default 5); the table gives medians
#   --seconds S   seconds per run (default 2)
#   --conns LIST  comma list of connection counts (default 1,16)
#   --base DIR    also the pcisock column with another build's libpcisock.so and pcisock from DIR
#                 (its own service): an A/B of a change
#   --out FILE    also write the markdown to FILE
# Needs: nginx, wrk, a release build (target/release/libpcisock.so and pcisock).
set -euo pipefail

RUNS=5 SECS=2 CONNS=1,16 OUT="" BASE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --seconds) SECS="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --base) BASE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "keepalive.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "keepalive.sh: --runs must be a positive integer" >&2; exit 2; }
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "keepalive.sh: --seconds must be a positive integer" >&2; exit 2; }
[[ "$CONNS" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "keepalive.sh: --conns must be a comma list of counts" >&2; exit 2; }
for t in nginx wrk; do command -v "$t" >/dev/null || { echo "keepalive.sh: $t not installed" >&2; exit 2; }; done
[[ -x /usr/bin/time ]] || { echo "keepalive.sh: /usr/bin/time not installed (apt-get install -y time)" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="$root/target/release/libpcisock.so"
cli="$root/target/release/pcisock"
[[ -f "$lib" && -x "$cli" ]] || { echo "keepalive.sh: run cargo build --release first" >&2; exit 2; }
if [[ -n "$BASE" ]]; then
    BASE="$(cd "$BASE" && pwd)"
    [[ -f "$BASE/libpcisock.so" && -x "$BASE/pcisock" ]] ||
        { echo "keepalive.sh: --base $BASE has no libpcisock.so and pcisock" >&2; exit 2; }
fi

source "$root/benches/common.sh"
bench_init keepalive
svc_dir="/run/pcisock-keepalive-$$"
"$cli" fabric start --socket "$svc_dir/fabric.sock" >/dev/null
[[ -z "$BASE" ]] || "$BASE/pcisock" fabric start --socket "$svc_dir/base.sock" >/dev/null
stop_service() {
    "$cli" fabric stop --socket "$svc_dir/fabric.sock" >/dev/null 2>&1 || true
    [[ -z "$BASE" ]] || "$BASE/pcisock" fabric stop --socket "$svc_dir/base.sock" >/dev/null 2>&1 || true
    rm -rf "$svc_dir"
}
trap 'stop_service; bench_cleanup' EXIT INT TERM
ulimit -n "$(ulimit -Hn)"
hz="$(getconf CLK_TCK)"

raw="$work/raw.csv"
echo "round,conns,variant,rps,requests,nginx_us,wrk_us,nginx_rings,wrk_rings" >"$raw"

one() { # $1 conns, $2 variant (tcp | pcisock | base), $3 round
    local n=$1 v=$2 r=$3 d="$work/run" env=()
    rm -rf "$d"; mkdir -m 755 "$d" "$d/stats"
    next_port
    nginx_keepalive_conf "$d" "$port" 4096
    case $v in
        pcisock) env=(LD_PRELOAD="$lib" PCISOCK_FABRIC="$svc_dir/fabric.sock") ;;
        base) env=(LD_PRELOAD="$BASE/libpcisock.so" PCISOCK_FABRIC="$svc_dir/base.sock") ;;
    esac
    [[ $v == tcp ]] || env+=(PCISOCK_PORTS="$port" PCISOCK_STRICT=1 PCISOCK_STATS_FILE="$d/stats/%p.json")
    env "${env[@]}" timeout $((SECS + 30)) nginx -c "$d/nginx.conf" >"$d/nginx.out" 2>&1 &
    local ng=$!; pids+=("$ng")
    if ! wait_listen "$port"; then
        kill "$ng" 2>/dev/null || true; wait "$ng" 2>/dev/null || true; pids=()
        echo "$r,$n,$v,FAIL,,,,," >>"$raw"; return 0
    fi
    # timeout -> nginx master -> its worker.
    local master="" worker=""
    for _ in $(seq 50); do
        master="$(pgrep -P "$ng" | head -1 || true)"
        [[ -n $master ]] && worker="$(pgrep -P "$master" | head -1 || true)"
        [[ -n $worker ]] && break; sleep 0.05
    done
    [[ -n $worker ]] || { kill "$ng" 2>/dev/null || true; wait "$ng" 2>/dev/null || true; pids=(); echo "$r,$n,$v,FAIL,,,,," >>"$raw"; return 0; }
    local t0 t1
    t0="$(awk '{print $14 + $15}' "/proc/$worker/stat")"
    env "${env[@]}" /usr/bin/time -f "CPU %U %S" timeout $((SECS + 30)) \
        wrk -c "$n" -t 1 -d "${SECS}s" "http://127.0.0.1:$port/" >"$d/wrk.out" 2>&1 || true
    t1="$(awk '{print $14 + $15}' "/proc/$worker/stat" 2>/dev/null || echo "$t0")"
    kill -QUIT "$ng" 2>/dev/null || true
    wait "$ng" 2>/dev/null || true
    pids=()
    local rps req wcpu
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$d/wrk.out")"
    req="$(awk '/requests in/ {print $1}' "$d/wrk.out")"
    wcpu="$(awk '/^CPU/ {print $2 + $3}' "$d/wrk.out")"
    local rings=","
    if [[ $v != tcp ]]; then
        rings="$(python3 - "$d/stats" "${req:-0}" "$worker" <<'PY'
import glob, json, sys
req = max(1, int(sys.argv[2] or 0))
by = {}
for f in glob.glob(f"{sys.argv[1]}/*.json"):
    try:
        s = json.load(open(f))
    except Exception:
        continue
    who = "nginx" if str(s.get("pid")) == sys.argv[3] else s.get("program")
    by[who] = s.get("doorbells", 0) / req
print(f'{by.get("nginx", float("nan")):.2f},{by.get("wrk", float("nan")):.2f}')
PY
)"
    fi
    if [[ -z $rps || -z $req ]]; then
        echo "$r,$n,$v,FAIL,,,,," >>"$raw"; return 0
    fi
    awk -v r="$r" -v n="$n" -v v="$v" -v rps="$rps" -v req="$req" -v w=$((t1 - t0)) -v hz="$hz" \
        -v k="${wcpu:-0}" -v rings="$rings" 'BEGIN {
            printf "%s,%s,%s,%s,%s,%.2f,%.2f,%s\n", r, n, v, rps, req, w / hz * 1e6 / req, k * 1e6 / req, rings
        }' >>"$raw"
    echo "keepalive.sh: round $r c=$n $v: $rps req/s, rings nginx/wrk ${rings/,//}" >&2
}

IFS=, read -r -a counts <<<"$CONNS"
variants=(tcp pcisock)
[[ -z "$BASE" ]] || variants+=(base)
start="$(date -u '+%Y-%m-%dT%H:%MZ')"
for r in $(seq "$RUNS"); do
    for n in "${counts[@]}"; do
        vs=("${variants[@]}")
        if (( r % 2 == 0 )); then
            vs=(); for ((i = ${#variants[@]} - 1; i >= 0; i--)); do vs+=("${variants[i]}"); done
        fi
        for v in "${vs[@]}"; do one "$n" "$v" "$r"; done
    done
done

md="$(python3 - "$raw" "$start" "$lib" "${BASE:-}" "$RUNS" "$SECS" "$CONNS" <<'PY'
import csv, hashlib, statistics, subprocess, sys
raw, start, lib, base, runs, secs, conns = sys.argv[1:8]
rows = list(csv.DictReader(open(raw)))
def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
def med(xs):
    xs = [x for x in map(num, xs) if x is not None]
    return statistics.median(xs) if xs else None
def f(x, fmt="{:.0f}"):
    return "n/a" if x is None else fmt.format(x)
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()[:12]
try:
    rev = subprocess.run(["git", "-C", lib.rsplit("/target/", 1)[0], "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
except Exception:
    rev = "?"
variants = ["tcp", "pcisock"] + (["base"] if base else [])
name = {"tcp": "TCP loopback", "pcisock": "pcisock (this build)", "base": "pcisock (--base)"}
cmd = f"benches/keepalive.sh --runs {runs} --seconds {secs} --conns {conns}" + (f" --base {base}" if base else "")
L = ["# Keep-alive requests: nginx and wrk, TCP against pcisock", "",
     f"`{cmd}` at {start}; build {rev} (libpcisock.so sha256 {sha(lib)}"
     + (f", base {sha(base + '/libpcisock.so')}" if base else "") + ").",
     "nginx one worker, `return 200` of 17 bytes; `wrk -c N -t 1`; pcisock strict, through a fabric",
     "service of the run. Medians of the interleaved rounds (order reversed on even rounds).", "",
     "| N | variant | requests/s | ÷ TCP | CPU µs/request nginx | CPU µs/request wrk | doorbells/request nginx | doorbells/request wrk |",
     "|---:|---|---:|---:|---:|---:|---:|---:|"]
for n in conns.split(","):
    tcp = med(r["rps"] for r in rows if r["conns"] == n and r["variant"] == "tcp")
    for v in variants:
        p = [r for r in rows if r["conns"] == n and r["variant"] == v]
        rps = med(r["rps"] for r in p)
        ratio = f(rps / tcp, "{:.2f}") if rps and tcp else "n/a"
        L.append(f"| {n} | {name[v]} | {f(rps)} | {ratio} | {f(med(r['nginx_us'] for r in p), '{:.1f}')} | "
                 f"{f(med(r['wrk_us'] for r in p), '{:.1f}')} | {f(med(r['nginx_rings'] for r in p), '{:.2f}')} | "
                 f"{f(med(r['wrk_rings'] for r in p), '{:.2f}')} |")
L += ["", "Every run (requests/s):", "", "| N | variant | runs |", "|---:|---|---|"]
for n in conns.split(","):
    for v in variants:
        L.append(f"| {n} | {v} | {' '.join(r['rps'] for r in rows if r['conns'] == n and r['variant'] == v)} |")
print("\n".join(L))
PY
)"
echo "$md"
[[ -z "$OUT" ]] || echo "$md" >"$OUT"
