#!/usr/bin/env bash
# Scaling: N concurrent flagged connections, pcisock vs plain TCP loopback, interleaved in one
# run, with memory and descriptors per connection and which path carried the connections.
#
# usage: benches/scaling.sh [--app nginx|fanout] [--runs N] [--out FILE] [--counts LIST] [--time S]
#                          [--idle S]
#   --app A        nginx (default; issue 15): wrk -c N -t 2 against nginx (one worker, keep-alive,
#                  a 17-byte `return 200`), processes meeting through a fabric service of this
#                  run (the default on one host); fanout (issue 5): benches/fanout.c, bulk
#                  writes, through a private device
#   --runs N       interleaved rounds (default 3); the table gives medians
#   --out FILE     markdown result (default benches/results/scaling.md for nginx,
#                  benches/results/scaling-fanout.md for fanout): medians and every run
#   --counts LIST  comma list of connection counts (default 1,64,1000,8000 for nginx,
#                  1,8,64,1000 for fanout)
#   --time S       seconds per run (default 5 for nginx, 3 for fanout)
#   --idle S       nginx: after wrk, a hold phase (benches/holdconns.c: N connections make 8
#                  requests of 4,000 bytes each way, then stay open S seconds idle), system-wide
#                  memory per connection loaded and idle (default 5; 0: no hold phase)
# PCISOCK_LIB and PCISOCK_CLI (environment) name another build's libpcisock.so and pcisock (the
# service the nginx runs meet through): a base build for an A/B of a change.
# nginx: per round and count, tcp and pcisock (order reversed on even rounds). pcisock: both
# sides LD_PRELOAD with PCISOCK_PORTS=PORT and PCISOCK_FABRIC=the run's service; not strict (a
# connection that does not make it is counted by its reason in wrk's stats file). Sampled at
# 60 % of the run: the nginx worker's and wrk's VmRSS, Pss and open descriptors
# (/proc/PID/fd), the service's descriptors and its count of connections, and system-wide
# memory (/proc/meminfo MemTotal − MemAvailable, Shmem, Slab; /proc/net/sockstat TCP mem)
# against just before wrk; every 0.2 s, when the worker had accepted all N and the service had
# paired all N. Needs nginx, wrk and gcc; descriptors up to 20,000 (ulimit -Hn).
# fanout driver: benches/fanout.c (`fanout server PORT N` / `fanout client 127.0.0.1 PORT N S`: N
# connections in one process per side, epoll, 128 KiB writes for S seconds; the client's bytes /
# seconds is the rate, and the server must have read exactly those bytes). Not iperf 2: iperf
# 2.1.8 writes into its own freed per-stream objects with a hundred streams or more (valgrind
# memcheck, over plain TCP too) and aborts or hangs, and it watches its sockets with select().
# Variants per round and count, interleaved: tcp and ntb (PCISOCK_STRICT=1, default 1 MiB ring)
# up to 250 connections; above that (the two 256 MiB windows of a loopback device hold about 250
# connections' 1 MiB rings, both ends' on one host) tcp, ntb-128K (PCISOCK_RING_SIZE=128K,
# strict) and ntb-nostrict (default ring, PCISOCK_STRICT=0: the connections that do not fit stay
# on TCP with reason NoWindowSpace in the stats file).
# Each pcisock run gets a fresh private 0700 device dir and a fresh port. Memory: VmRSS
# (/proc/PID/status) and Pss (/proc/PID/smaps_rollup) of the fanout server and client, sampled
# during the transfer (max of the samples). Window leases: `pcisock stats --json` during it.
# Every process is bounded by `timeout` and ended by PID.
set -euo pipefail

RUNS=3 OUT="" COUNTS="" TSEC="" APP=nginx IDLE=5
while [[ $# -gt 0 ]]; do
    case "$1" in
        --app) APP="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --counts) COUNTS="$2"; shift 2 ;;
        --time) TSEC="$2"; shift 2 ;;
        --idle) IDLE="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "scaling.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$APP" in
    nginx) COUNTS="${COUNTS:-1,64,1000,8000}" TSEC="${TSEC:-5}" ;;
    fanout) COUNTS="${COUNTS:-1,8,64,1000}" TSEC="${TSEC:-3}" ;;
    *) echo "scaling.sh: --app is nginx or fanout" >&2; exit 2 ;;
esac
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "scaling.sh: --runs must be a positive integer" >&2; exit 2; }
[[ "$TSEC" =~ ^[1-9][0-9]*$ ]] || { echo "scaling.sh: --time must be a positive integer" >&2; exit 2; }
[[ "$IDLE" =~ ^[0-9]+$ && ( "$IDLE" == 0 || "$IDLE" -ge 3 ) ]] || { echo "scaling.sh: --idle is 0 or at least 3 seconds" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $APP == nginx ]]; then
    OUT="${OUT:-$root/benches/results/scaling.md}"
else
    OUT="${OUT:-$root/benches/results/scaling-fanout.md}"
fi
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
cli="${PCISOCK_CLI:-$root/target/release/pcisock}"
[[ -f "$lib" ]] || { echo "scaling.sh: $lib not found: run cargo build --release" >&2; exit 2; }
[[ -x "$cli" ]] || { echo "scaling.sh: $cli not found: run cargo build --release" >&2; exit 2; }
for t in gcc timeout python3 pgrep; do
    command -v "$t" >/dev/null || { echo "scaling.sh: $t not installed" >&2; exit 2; }
done
IFS=, read -ra counts <<<"$COUNTS"
for n in "${counts[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "scaling.sh: bad count '$n'" >&2; exit 2; }
done
# (Soft and hard: bash's ulimit -n sets both, so the nginx mode, which needs more, does its own.)
[[ $APP == fanout ]] && { ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"; }
mkdir -p "$(dirname "$OUT")"

# shellcheck source=common.sh
source "$root/benches/common.sh"
bench_init scaling.sh
if [[ $APP == nginx ]]; then
    # shellcheck source=scaling-nginx.sh
    source "$root/benches/scaling-nginx.sh"
    exit 0
fi
gcc -O2 -Wall -o "$work/fanout" "$root/benches/fanout.c" || { echo "scaling.sh: building benches/fanout.c failed" >&2; exit 2; }
# The child of a `timeout` PID.
child_of() { for _ in $(seq 50); do local c; c="$(pgrep -P "$1" | head -1 || true)"; [[ -n "$c" ]] && { echo "$c"; return 0; }; sleep 0.02; done; echo ""; }
mem_kb() { # $1 pid -> "rss pss" (kB), 0 0 if gone
    local r p
    r="$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)"
    p="$(awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || true)"
    echo "${r:-0} ${p:-0}"
}

raw="$work/raw.csv"   # every run; copied into FILE's "All runs" table
echo "round,n,variant,mbps,conns_reported,client_errors,ntb_conns,tcp_conns,reasons,srv_rss_kb,cli_rss_kb,srv_pss_kb,cli_pss_kb,window_leases,live_ntb,errs" >"$raw"

# One run. $1 = n, $2 = variant (tcp | ntb | ntb-128K | ntb-nostrict), $3 = round.
one_run() {
    local n=$1 v=$2 r=$3 env=() d="$work/r"
    rm -rf "$d"; mkdir -m 700 "$d"
    next_port
    if [[ $v != tcp ]]; then
        mkdir -m 700 "$d/emu"
        env=(LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$d/emu" PCISOCK_PORTS="$port" PCISOCK_STRICT=1)
        [[ $v == ntb-128K ]] && env+=(PCISOCK_RING_SIZE=128K)
        [[ $v == ntb-nostrict ]] && env+=(PCISOCK_STRICT=0)
    fi
    local tmax=$((TSEC + 40))
    env "${env[@]}" ${env:+PCISOCK_STATS_FILE="$d/s.json"} timeout "$tmax" "$work/fanout" server "$port" "$n" >"$d/s.log" 2>"$d/s.err" &
    local st=$!; pids+=("$st")
    wait_listen "$port" || { kill "$st" 2>/dev/null || true; wait "$st" 2>/dev/null || true; pids=()
        echo "$r,$n,$v,FAIL,0,0,,,,0,0,0,0,,,no listener: $(head -c 200 "$d/s.err" | tr '\n,' ';.')" >>"$raw"; return 0; }
    local sp; sp="$(child_of "$st")"
    env "${env[@]}" ${env:+PCISOCK_STATS_FILE="$d/c.json"} timeout "$tmax" "$work/fanout" client 127.0.0.1 "$port" "$n" "$TSEC" >"$d/c.log" 2>"$d/c.err" &
    local ct=$!; pids+=("$ct")
    local cp; cp="$(child_of "$ct")"
    # Sample memory at 40%, 65% and 90% of the transfer; keep the max of each.
    local srss=0 spss=0 crss=0 cpss=0 leases="" live="" f
    for f in 0.4 0.25 0.25; do
        sleep "$(awk -v t="$TSEC" -v f="$f" 'BEGIN {print t * f}')"
        read -r a b < <(mem_kb "${sp:-0}"); (( a > srss )) && srss=$a; (( b > spss )) && spss=$b
        read -r a b < <(mem_kb "${cp:-0}"); (( a > crss )) && crss=$a; (( b > cpss )) && cpss=$b
        if [[ $v != tcp && $f == 0.4 ]]; then
            PCISOCK_EMU_DIR="$d/emu" timeout 10 "$cli" stats --json >"$d/stats.json" 2>/dev/null || true
            read -r leases live < <(python3 - "$d/stats.json" <<'EOF' || true
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("? ?"); sys.exit(0)
w = sum(l.get("window", 0) for l in d.get("leases", []) if l.get("owner") != "host")
print(w, sum(1 for c in d.get("connections", []) if c.get("path") == "ntb"))
EOF
)
        fi
    done
    local crc=0 src=0
    wait "$ct" || crc=$?
    wait "$st" || src=$?
    pids=()
    # Aggregate: the client's bytes / its seconds; the server must have read every byte.
    local agg cb sb
    cb="$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' "$d/c.log")"; sb="$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' "$d/s.log")"
    agg="$(awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}}
        END {if (v["secs"] > 0) printf "%.1f %d\n", v["bytes"] / v["secs"] / 1e6, v["conns"]; else print "FAIL 0"}' "$d/c.log")"
    [[ -n "$cb" && "$cb" == "$sb" ]] || agg="FAIL 0"
    local cerr; cerr="$(grep -c . "$d/c.err" || true)"
    local errs; errs="$(sort "$d/c.err" "$d/s.err" | uniq -c | sort -rn | head -3 | awk '{$1=$1; print}' | tr '\n,' ';.' )"
    [[ $crc -ne 0 ]] && errs="client rc $crc; $errs"
    [[ $src -ne 0 ]] && errs="server rc $src; $errs"
    [[ -n "$cb" && "$cb" != "$sb" ]] && errs="client wrote $cb bytes, server read ${sb:-none}; $errs"
    local ntb="" tcp="" reasons=""
    if [[ $v != tcp ]]; then
        read -r ntb tcp reasons < <(python3 - "$d/c.json" <<'EOF' || true
import json, sys, collections
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("none none none"); sys.exit(0)
c = collections.Counter(x.get("reason") or "-" for x in d.get("connections", []) if x.get("path") != "ntb")
print(d.get("ntb_connections"), d.get("tcp_connections"), "/".join(f"{k}:{v}" for k, v in c.items()) or "-")
EOF
)
    fi
    echo "$r,$n,$v,${agg% *},${agg#* },$cerr,$ntb,$tcp,$reasons,$srss,$crss,$spss,$cpss,$leases,$live,${errs:0:300}" >>"$raw"
    echo "scaling.sh: round $r n=$n $v: ${agg% *} MB/s, conns ${agg#* }, ntb=$ntb tcp=$tcp $reasons, rss s/c ${srss}/${crss} kB, leases $leases live $live ${errs:0:120}" >&2
    rm -rf "$d"
}

start="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
for r in $(seq "$RUNS"); do
    for n in "${counts[@]}"; do
        vs=(tcp ntb)
        (( n > 250 )) && vs=(tcp ntb-128K ntb-nostrict)
        # Alternate the order between rounds.
        (( r % 2 == 0 )) && vs=($(printf '%s\n' "${vs[@]}" | tac))
        for v in "${vs[@]}"; do one_run "$n" "$v" "$r"; done
    done
done
end="$(date -u '+%H:%M:%S UTC')"

# Summary: medians per (n, variant).
python3 - "$raw" "$OUT" "$start" "$end" "$lib" "$*" <<'EOF'
import csv, sys, statistics, hashlib, platform
raw, out, start, end, lib, args = sys.argv[1:7]
rows = list(csv.DictReader(open(raw)))
sha = hashlib.sha256(open(lib, "rb").read()).hexdigest()[:12]
def med(xs):
    xs = [float(x) for x in xs if x not in ("", "FAIL", "?", "None", "none")]
    return statistics.median(xs) if xs else None
def f(x, fmt="{:.0f}"):
    return "n/a" if x is None else fmt.format(x)
ns = sorted({int(r["n"]) for r in rows})
def sel(n, v): return [r for r in rows if int(r["n"]) == n and r["variant"] == v]
L = []
L.append("| N | pcisock MB/s | TCP MB/s | ratio | NTB conns (client stats, per run) | RSS/conn pcisock (srv+cli) | RSS/conn TCP (srv+cli) | Pss/conn pcisock | Pss/conn TCP |")
L.append("|---:|---:|---:|---:|---|---:|---:|---:|---:|")
def memper(rs, n, a, b):
    return med([(float(r[a]) + float(r[b])) / n for r in rs])
for n in ns:
    for v in ["ntb", "ntb-128K", "ntb-nostrict"]:
        p = sel(n, v)
        if not p: continue
        t = sel(n, "tcp")
        pm, tm = med([r["mbps"] for r in p]), med([r["mbps"] for r in t])
        ratio = f(pm / tm, "{:.2f}") if pm and tm else "n/a"
        conns = ", ".join(f'{r["ntb_conns"]}' + (f' (+{r["tcp_conns"]} tcp: {r["reasons"]})' if r["tcp_conns"] not in ("0", "", "None") or r["reasons"] not in ("-", "") else "") for r in p)
        label = str(n) if v == "ntb" else f"{n} ({v})"
        L.append(f"| {label} | {f(pm)} | {f(tm)} | {ratio} | {conns} | {f(memper(p, n, 'srv_rss_kb', 'cli_rss_kb'), '{:.0f} kB')} | {f(memper(t, n, 'srv_rss_kb', 'cli_rss_kb'), '{:.0f} kB')} | {f(memper(p, n, 'srv_pss_kb', 'cli_pss_kb'), '{:.0f} kB')} | {f(memper(t, n, 'srv_pss_kb', 'cli_pss_kb'), '{:.0f} kB')} |")
D = ["| round | N | variant | MB/s | connections reported | client stderr lines | ntb | tcp | fallback reasons | RSS srv/cli kB | Pss srv/cli kB | window leases (live) | live NTB conns | stderr (top) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    D.append(f'| {r["round"]} | {r["n"]} | {r["variant"]} | {r["mbps"]} | {r["conns_reported"]} | {r["client_errors"]} | {r["ntb_conns"]} | {r["tcp_conns"]} | {r["reasons"]} | {r["srv_rss_kb"]}/{r["cli_rss_kb"]} | {r["srv_pss_kb"]}/{r["cli_pss_kb"]} | {r["window_leases"]} | {r["live_ntb"]} | {r["errs"].replace("|", "/")} |')
# Keep what a person wrote above the generated part (the reading of the results).
marker = "<!-- generated by benches/scaling.sh"
try:
    prose = open(out).read()
    prose = prose[: prose.index(marker)] if marker in prose else ""
except FileNotFoundError:
    prose = ""
with open(out, "w") as o:
    o.write(prose)
    o.write(f"<!-- generated by benches/scaling.sh {args} -->\n## Generated tables\n\n")
    o.write(f"Run {start} – {end}, {platform.node()}, library sha256 `{sha}`.\n\n")
    o.write("\n".join(L) + "\n\nAll runs:\n\n" + "\n".join(D) + "\n")
print(out)
EOF
