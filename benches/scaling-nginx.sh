# Sourced by benches/scaling.sh for `--app nginx` (see its header): wrk -c N against nginx,
# pcisock through a fabric service of this run vs plain TCP, interleaved. Uses $work, $lib, $cli,
# $RUNS, $TSEC, $OUT, the counts array and common.sh's helpers.
for t in nginx wrk; do
    command -v "$t" >/dev/null || { echo "scaling.sh: $t not installed" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)"
[[ $(ulimit -n) -ge 20000 ]] || echo "scaling.sh: only $(ulimit -n) descriptors: 8,000 connections need about 16,500 (TCP)" >&2

# The service: its directory must be reachable by nginx's worker (user nobody when root runs
# nginx), so it is not under the 0700 work directory.
svcdir="$(mktemp -d /tmp/pcisock-scaling-svc.XXXXXX)"
chmod 755 "$svcdir"
svc="$svcdir/fabric.sock"
"$cli" fabric start --socket "$svc" >/dev/null
cleanup_svc() { "$cli" fabric stop --socket "$svc" >/dev/null 2>&1 || true; rm -rf "$svcdir"; bench_cleanup; }
trap cleanup_svc EXIT INT TERM
svc_pid="$("$cli" fabric status --socket "$svc" | awk '/pid/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) {print $i; exit}}')"
svc_count() { "$cli" fabric status --socket "$svc" 2>/dev/null | awk -v k="$1" '{for (i = 1; i < NF; i++) if ($i == k) {print $(i + 1); exit}}'; }
nfds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
mem_kb() { # $1 pid -> "rss pss" (kB), 0 0 if gone
    local r p
    r="$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)"
    p="$(awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || true)"
    echo "${r:-0} ${p:-0}"
}

raw="$work/raw.csv"
echo "round,n,variant,rps,errors,ntb_conns,tcp_conns,reasons,worker_fds0,worker_fds,wrk_fds,svc_fds0,svc_fds,svc_conns,worker_rss_kb,wrk_rss_kb,worker_pss_kb,wrk_pss_kb" >"$raw"

one_nginx() { # $1 n, $2 variant (tcp | pcisock), $3 round
    local n=$1 v=$2 r=$3 d="$work/r" env=()
    rm -rf "$d"; mkdir -m 755 "$d"
    next_port
    nginx_keepalive_conf "$d" "$port" 20000
    if [[ $v == pcisock ]]; then
        env=(LD_PRELOAD="$lib" PCISOCK_FABRIC="$svc" PCISOCK_PORTS="$port" PCISOCK_STATS_FILE="$d/%p.json")
    fi
    env "${env[@]}" timeout $((TSEC + 60)) nginx -c "$d/nginx.conf" >"$d/nginx.out" 2>&1 &
    local ng=$!; pids+=("$ng")
    wait_listen "$port" || { echo "$r,$n,$v,FAIL,nginx did not listen,,,,,,,,,,,,," >>"$raw"; kill "$ng" 2>/dev/null; wait "$ng" 2>/dev/null; pids=(); return 0; }
    local master="" worker=""
    for _ in $(seq 100); do
        master="$(pgrep -P "$ng" | head -1 || true)"
        [[ -n $master ]] && worker="$(pgrep -P "$master" | head -1 || true)"
        [[ -n $worker ]] && break; sleep 0.05
    done
    local wfd0; wfd0="$(nfds "${worker:-0}")"
    local sfd0; sfd0="$(nfds "${svc_pid:-0}")"
    local threads=2; (( n < 2 )) && threads=1
    env "${env[@]}" timeout $((TSEC + 60)) wrk -c "$n" -t "$threads" -d "${TSEC}s" "http://127.0.0.1:$port/" >"$d/wrk.out" 2>&1 &
    local wk=$!; pids+=("$wk")
    local wrk_pid=""
    for _ in $(seq 50); do wrk_pid="$(pgrep -P "$wk" -x wrk | head -1 || true)"; [[ -n $wrk_pid ]] && break; sleep 0.02; done
    sleep "$(awk -v t="$TSEC" 'BEGIN {print t * 0.6}')"
    local wfd wkfd sfd sconns wrss wpss krss kpss
    wfd="$(nfds "${worker:-0}")"; wkfd="$(nfds "${wrk_pid:-0}")"; sfd="$(nfds "${svc_pid:-0}")"
    sconns="$(svc_count connections)"
    read -r wrss wpss < <(mem_kb "${worker:-0}")
    read -r krss kpss < <(mem_kb "${wrk_pid:-0}")
    wait "$wk" || true
    kill -QUIT "$ng" 2>/dev/null || true
    wait "$ng" 2>/dev/null || true
    pids=()
    local rps errs
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$d/wrk.out")"
    errs="$(grep -E 'Socket errors|Non-2xx' "$d/wrk.out" | tr '\n,' ';.' || true)"
    local ntb="" tcp="" reasons=""
    if [[ $v == pcisock ]]; then
        read -r ntb tcp reasons < <(python3 - "$d" "${wrk_pid:-0}" <<'PY' || true
import json, sys, collections
try:
    s = json.load(open(f"{sys.argv[1]}/{sys.argv[2]}.json"))
except Exception:
    print("none none none"); sys.exit(0)
c = collections.Counter(x.get("reason") or "-" for x in s.get("connections", []) if x.get("path") != "ntb")
print(s.get("ntb_connections"), s.get("tcp_connections"), "/".join(f"{k}:{v}" for k, v in c.items()) or "-")
PY
)
    fi
    echo "$r,$n,$v,${rps:-FAIL},${errs:0:200},$ntb,$tcp,$reasons,$wfd0,$wfd,$wkfd,$sfd0,$sfd,$sconns,$wrss,$krss,$wpss,$kpss" >>"$raw"
    echo "scaling.sh: round $r n=$n $v: ${rps:-FAIL} req/s, ntb=$ntb tcp=$tcp $reasons, fds worker $wfd0->$wfd wrk $wkfd service $sfd0->$sfd ($sconns conns) ${errs:0:80}" >&2
}

start="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
for r in $(seq "$RUNS"); do
    for n in "${counts[@]}"; do
        vs=(tcp pcisock)
        (( r % 2 == 0 )) && vs=(pcisock tcp)
        for v in "${vs[@]}"; do one_nginx "$n" "$v" "$r"; done
    done
done
end="$(date -u '+%H:%M:%S UTC')"

python3 - "$raw" "$OUT" "$start" "$end" "$lib" "$*" "$TSEC" <<'PY'
import csv, sys, statistics, hashlib, platform
raw, out, start, end, lib, args, tsec = sys.argv[1:8]
rows = list(csv.DictReader(open(raw)))
sha = hashlib.sha256(open(lib, "rb").read()).hexdigest()[:12]
def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
def med(xs):
    xs = [x for x in (num(x) for x in xs) if x is not None]
    return statistics.median(xs) if xs else None
def f(x, fmt="{:.0f}"):
    return "n/a" if x is None else fmt.format(x)
ns = sorted({int(r["n"]) for r in rows})
def sel(n, v): return [r for r in rows if int(r["n"]) == n and r["variant"] == v]
def per(rs, n, a, b=None):
    vals = []
    for r in rs:
        x, y = num(r[a]), (num(r[b]) if b else 0.0)
        if x is not None and y is not None:
            vals.append((x - y) / n)
    return statistics.median(vals) if vals else None
L = ["| N | pcisock req/s | TCP req/s | ratio | on NTB (wrk's stats, per run) | descriptors per connection: nginx worker / wrk / service, pcisock (TCP) | memory per connection, RSS nginx worker + wrk, pcisock (TCP) |",
     "|---:|---:|---:|---:|---|---|---|"]
for n in ns:
    p, t = sel(n, "pcisock"), sel(n, "tcp")
    pm, tm = med([r["rps"] for r in p]), med([r["rps"] for r in t])
    ratio = f(pm / tm, "{:.2f}") if pm and tm else "n/a"
    conns = ", ".join(f'{r["ntb_conns"]}' + (f' (+{r["tcp_conns"]} TCP: {r["reasons"]})' if r["tcp_conns"] not in ("0", "", "None", "none") else "") for r in p)
    fd = lambda rs, a, b=None: f(per(rs, n, a, b), "{:.2f}")
    fds = f'{fd(p, "worker_fds", "worker_fds0")} / {fd(p, "wrk_fds")} / {fd(p, "svc_fds", "svc_fds0")} ({fd(t, "worker_fds", "worker_fds0")} / {fd(t, "wrk_fds")} / –)'
    mem = lambda rs: f(med([((num(r["worker_rss_kb"]) or 0) + (num(r["wrk_rss_kb"]) or 0)) / n for r in rs]), "{:.1f} kB")
    L.append(f"| {n} | {f(pm)} | {f(tm)} | {ratio} | {conns} | {fds} | {mem(p)} ({mem(t)}) |")
D = ["| round | N | variant | req/s | wrk errors | ntb | tcp | fallback reasons | worker fds before/during | wrk fds | service fds before/during (connections) | RSS worker/wrk kB | Pss worker/wrk kB |",
     "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    D.append(f'| {r["round"]} | {r["n"]} | {r["variant"]} | {r["rps"]} | {r["errors"]} | {r["ntb_conns"]} | {r["tcp_conns"]} | {r["reasons"]} | {r["worker_fds0"]}/{r["worker_fds"]} | {r["wrk_fds"]} | {r["svc_fds0"]}/{r["svc_fds"]} ({r["svc_conns"]}) | {r["worker_rss_kb"]}/{r["wrk_rss_kb"]} | {r["worker_pss_kb"]}/{r["wrk_pss_kb"]} |')
marker = "<!-- generated by benches/scaling.sh"
try:
    prose = open(out).read()
    prose = prose[: prose.index(marker)] if marker in prose else ""
except FileNotFoundError:
    prose = ""
with open(out, "w") as o:
    o.write(prose)
    o.write(f"<!-- generated by benches/scaling.sh {args} -->\n## Generated tables\n\n")
    o.write(f"Run {start} – {end}, {platform.node()}, library sha256 `{sha}`, wrk -t 2 -d {tsec}s (-t 1 at N=1), nginx with one worker.\n\n")
    o.write("Medians per N. Descriptors per connection: (during − before) / N for the nginx worker and the service, all of wrk's / N; sampled at 60 % of the run.\n\n")
    o.write("\n".join(L) + "\n\nAll runs:\n\n" + "\n".join(D) + "\n")
print(out)
PY
