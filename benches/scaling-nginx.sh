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
nsocks() { find "/proc/$1/fd" -lname 'socket:*' 2>/dev/null | wc -l; }
mem_kb() { # $1 pid -> "rss pss" (kB), 0 0 if gone
    local r p
    r="$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)"
    p="$(awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || true)"
    echo "${r:-0} ${p:-0}"
}

# System-wide memory (kB): used (MemTotal − MemAvailable), Shmem (the service's segments are
# memfds), Slab, and the kernel's TCP socket buffers (/proc/net/sockstat `mem`, pages). Includes
# the kernel's memory for the TCP sockets, which RSS leaves out, and counts a page two processes
# map once.
sysmem() {
    local m s
    m="$(awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} /^Shmem:/ {sh = $2} /^Slab:/ {sl = $2}
        END {print t - a, sh, sl}' /proc/meminfo)"
    s="$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1) * 4}' /proc/net/sockstat)"
    echo "$m ${s:-0}"
}
gcc -O2 -Wall -D_GNU_SOURCE -o "$work/holdconns" "$root/benches/holdconns.c" || { echo "scaling.sh: building benches/holdconns.c failed" >&2; exit 2; }

raw="$work/raw.csv"
echo "round,n,variant,rps,errors,ntb_conns,tcp_conns,reasons,worker_fds0,worker_fds,wrk_fds,svc_fds0,svc_fds,svc_conns,worker_rss_kb,wrk_rss_kb,worker_pss_kb,wrk_pss_kb,accepted_s,ntb_s,sys0,sys,hold0,hold_loaded,hold_idle,hold_secs,hold_released" >"$raw"

one_nginx() { # $1 n, $2 variant (tcp | pcisock), $3 round
    local n=$1 v=$2 r=$3 d="$work/r" env=()
    rm -rf "$d"; mkdir -m 755 "$d"
    next_port
    nginx_keepalive_conf "$d" "$port" 20000
    if [[ $v == pcisock ]]; then
        env=(LD_PRELOAD="$lib" PCISOCK_FABRIC="$svc" PCISOCK_PORTS="$port" PCISOCK_STATS_FILE="$d/%p.json")
    fi
    env "${env[@]}" timeout $((TSEC + IDLE + 120)) nginx -c "$d/nginx.conf" >"$d/nginx.out" 2>&1 &
    local ng=$!; pids+=("$ng")
    wait_listen "$port" || { echo "$r,$n,$v,FAIL,nginx did not listen,,,,,,,,,,,,,,,,,,,,,," >>"$raw"; kill "$ng" 2>/dev/null; wait "$ng" 2>/dev/null; pids=(); return 0; }
    local master="" worker=""
    for _ in $(seq 100); do
        master="$(pgrep -P "$ng" | head -1 || true)"
        [[ -n $master ]] && worker="$(pgrep -P "$master" | head -1 || true)"
        [[ -n $worker ]] && break; sleep 0.05
    done
    local wfd0; wfd0="$(nfds "${worker:-0}")"
    local sfd0; sfd0="$(nfds "${svc_pid:-0}")"
    local wsk0; wsk0="$(nsocks "${worker:-0}")"
    local sys0; sys0="$(sysmem | tr ' ' '/')"
    local threads=2; (( n < 2 )) && threads=1
    local t0; t0="$(date +%s.%N)"
    env "${env[@]}" timeout $((TSEC + 60)) wrk -c "$n" -t "$threads" -d "${TSEC}s" "http://127.0.0.1:$port/" >"$d/wrk.out" 2>&1 &
    local wk=$!; pids+=("$wk")
    local wrk_pid=""
    for _ in $(seq 50); do wrk_pid="$(pgrep -P "$wk" -x wrk | head -1 || true)"; [[ -n $wrk_pid ]] && break; sleep 0.02; done
    # Every 0.2 s until wrk ends: when the worker had accepted all N (its descriptors) and, for
    # pcisock, when the service had paired all N; descriptors and memory at 60 % of the run.
    local at="" ntb_at="" sampled=0 tmid wfd="" wkfd="" sfd="" sconns="" wrss=0 wpss=0 krss=0 kpss=0 sys=""
    tmid="$(awk -v t="$TSEC" 'BEGIN {print t * 0.6}')"
    while kill -0 "$wk" 2>/dev/null; do
        local el; el="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')"
        if [[ -z $at ]] && (( $(nsocks "${worker:-0}") - wsk0 >= n )); then at=$el; fi
        if [[ $v == pcisock && -z $ntb_at ]] && (( $(svc_count connections || echo 0) >= n )); then ntb_at=$el; fi
        if (( sampled == 0 )) && awk -v e="$el" -v m="$tmid" 'BEGIN {exit !(e >= m)}'; then
            sampled=1
            wfd="$(nfds "${worker:-0}")"; wkfd="$(nfds "${wrk_pid:-0}")"; sfd="$(nfds "${svc_pid:-0}")"
            sconns="$(svc_count connections)"
            read -r wrss wpss < <(mem_kb "${worker:-0}")
            read -r krss kpss < <(mem_kb "${wrk_pid:-0}")
            sys="$(sysmem | tr ' ' '/')"
        fi
        sleep 0.2
    done
    wait "$wk" || true
    # The hold phase: N connections that each make 8 requests of /big with a 4,000-byte header
    # (every 16 KiB ring lapped twice each way), then stay open and idle.
    local h0="" hl="" hi="" hs="" hr=""
    if (( IDLE > 0 )); then
        sleep 1
        h0="$(sysmem | tr ' ' '/')"
        env "${env[@]}" PCISOCK_STATS_FILE="$d/hold.json" timeout $((IDLE + 90)) "$work/holdconns" "$port" "$n" 8 4000 /big "$IDLE" >"$d/hold.out" 2>"$d/hold.err" &
        local hc=$!; pids+=("$hc")
        for _ in $(seq 600); do grep -q '^loaded' "$d/hold.out" 2>/dev/null && break; kill -0 "$hc" 2>/dev/null || break; sleep 0.1; done
        if grep -q '^loaded' "$d/hold.out"; then
            hl="$(sysmem | tr ' ' '/')"
            hs="$(sed -n 's/.*secs=\([0-9.]*\).*/\1/p' "$d/hold.out")"
            sleep "$(awk -v t="$IDLE" 'BEGIN {print t - 1}')"
            hi="$(sysmem | tr ' ' '/')"
        else
            hs="FAIL: $(head -c 100 "$d/hold.err" | tr '\n,' ';.')"
        fi
        wait "$hc" || true
    fi
    kill -QUIT "$ng" 2>/dev/null || true
    wait "$ng" 2>/dev/null || true
    pids=()
    if [[ $v == pcisock && -f "$d/hold.json" ]]; then
        # Sending directions whose rings were given back (both sides') while the connections
        # idled: 2 N when every connection did.
        hr="$(python3 - "$d" <<'PY' || true
import json, glob, sys
print(sum(json.load(open(f)).get("ring_releases", 0) for f in glob.glob(f"{sys.argv[1]}/*.json")))
PY
)"
    fi
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
    echo "$r,$n,$v,${rps:-FAIL},${errs:0:200},$ntb,$tcp,$reasons,$wfd0,$wfd,$wkfd,$sfd0,$sfd,$sconns,$wrss,$krss,$wpss,$kpss,$at,$ntb_at,$sys0,$sys,$h0,$hl,$hi,$hs,$hr" >>"$raw"
    echo "scaling.sh: round $r n=$n $v: ${rps:-FAIL} req/s, ntb=$ntb tcp=$tcp $reasons, all accepted at ${at:-never} s, on NTB at ${ntb_at:-never} s, fds worker $wfd0->$wfd wrk $wkfd service $sfd0->$sfd ($sconns conns), sys $sys0 -> $sys, hold $h0 -> $hl -> $hi (${hs}s, ring releases $hr) ${errs:0:80}" >&2
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

cp "$raw" "/tmp/scaling-nginx-raw.csv" && echo "scaling.sh: every run's numbers also in /tmp/scaling-nginx-raw.csv" >&2
python3 - "$raw" "$OUT" "$start" "$end" "$lib" "$*" "$TSEC" "$IDLE" <<'PY'
import csv, sys, statistics, hashlib, platform
raw, out, start, end, lib, args, tsec, idle = sys.argv[1:9]
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
def sysper(rs, n, a, b, i=0):
    """Median over runs of (sample a − sample b) / n, field i of the sysmem samples, kB."""
    vals = []
    for r in rs:
        try:
            vals.append((float(r[a].split("/")[i]) - float(r[b].split("/")[i])) / n)
        except (ValueError, IndexError, AttributeError):
            pass
    return statistics.median(vals) if vals else None
kb = lambda x: f(x, "{:.1f}")
L = ["| N | pcisock req/s | TCP req/s | ratio | on NTB (wrk's stats, per run) | all accepted at, s: pcisock (TCP), per run | all on NTB at, s | descriptors per connection: nginx worker / wrk / service, pcisock (TCP) | memory per connection under wrk, system-wide, kB: pcisock (TCP) | RSS nginx worker + wrk, kB: pcisock (TCP) |",
     "|---:|---:|---:|---:|---|---|---|---|---|---|"]
for n in ns:
    p, t = sel(n, "pcisock"), sel(n, "tcp")
    pm, tm = med([r["rps"] for r in p]), med([r["rps"] for r in t])
    ratio = f(pm / tm, "{:.2f}") if pm and tm else "n/a"
    conns = ", ".join(f'{r["ntb_conns"]}' + (f' (+{r["tcp_conns"]} TCP: {r["reasons"]})' if r["tcp_conns"] not in ("0", "", "None", "none") else "") for r in p)
    acc = lambda rs, k: ", ".join(r[k] or "never" for r in rs)
    fd = lambda rs, a, b=None: f(per(rs, n, a, b), "{:.2f}")
    fds = f'{fd(p, "worker_fds", "worker_fds0")} / {fd(p, "wrk_fds")} / {fd(p, "svc_fds", "svc_fds0")} ({fd(t, "worker_fds", "worker_fds0")} / {fd(t, "wrk_fds")} / –)'
    mem = lambda rs: f(med([((num(r["worker_rss_kb"]) or 0) + (num(r["wrk_rss_kb"]) or 0)) / n for r in rs]), "{:.1f}")
    L.append(f"| {n} | {f(pm)} | {f(tm)} | {ratio} | {conns} | {acc(p, 'accepted_s')} ({acc(t, 'accepted_s')}) | {acc(p, 'ntb_s')} | {fds} | {kb(sysper(p, n, 'sys', 'sys0'))} ({kb(sysper(t, n, 'sys', 'sys0'))}) | {mem(p)} ({mem(t)}) |")
H = ["| N | loaded: used (TCP) | idle: used (TCP) | Shmem loaded → idle, pcisock | Slab loaded → idle: pcisock (TCP) | TCP socket buffers loaded → idle: pcisock (TCP) | ring releases per connection (2: both directions) | hold's requests, s: pcisock (TCP) |",
     "|---:|---|---|---|---|---|---|---|"]
for n in ns:
    p, t = sel(n, "pcisock"), sel(n, "tcp")
    if not any(r["hold_loaded"] for r in p + t):
        continue
    two = lambda rs, i: f'{kb(sysper(rs, n, "hold_loaded", "hold0", i))} → {kb(sysper(rs, n, "hold_idle", "hold0", i))}'
    rel = med([(num(r["hold_released"]) or 0) / n for r in p])
    fmt2 = "{:.2f}"
    hp, ht = ", ".join(r["hold_secs"] for r in p), ", ".join(r["hold_secs"] for r in t)
    H.append(f'| {n} | {kb(sysper(p, n, "hold_loaded", "hold0"))} ({kb(sysper(t, n, "hold_loaded", "hold0"))}) | {kb(sysper(p, n, "hold_idle", "hold0"))} ({kb(sysper(t, n, "hold_idle", "hold0"))}) | {two(p, 1)} | {two(p, 2)} ({two(t, 2)}) | {two(p, 3)} ({two(t, 3)}) | {f(rel, fmt2)} | {hp} ({ht}) |')
D = ["| round | N | variant | req/s | wrk errors | ntb | tcp | fallback reasons | worker fds before/during | wrk fds | service fds before/during (connections) | RSS worker/wrk kB | Pss worker/wrk kB | all accepted / on NTB at, s | system kB before → at 60 % (used/Shmem/Slab/TCP mem) | hold: before → loaded → idle | hold s, ring releases |",
     "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    D.append(f'| {r["round"]} | {r["n"]} | {r["variant"]} | {r["rps"]} | {r["errors"]} | {r["ntb_conns"]} | {r["tcp_conns"]} | {r["reasons"]} | {r["worker_fds0"]}/{r["worker_fds"]} | {r["wrk_fds"]} | {r["svc_fds0"]}/{r["svc_fds"]} ({r["svc_conns"]}) | {r["worker_rss_kb"]}/{r["wrk_rss_kb"]} | {r["worker_pss_kb"]}/{r["wrk_pss_kb"]} | {r["accepted_s"] or "never"} / {r["ntb_s"] or "–"} | {r["sys0"]} → {r["sys"]} | {r["hold0"]} → {r["hold_loaded"]} → {r["hold_idle"]} | {r["hold_secs"]}, {r["hold_released"]} |')
marker = "<!-- generated by benches/scaling.sh"
try:
    prose = open(out).read()
    prose = prose[: prose.index(marker)] if marker in prose else ""
except FileNotFoundError:
    prose = ""
with open(out, "w") as o:
    o.write(prose)
    o.write(f"<!-- generated by benches/scaling.sh {args} -->\n## Generated tables\n\n")
    o.write(f"Run {start} – {end}, {platform.node()}, library sha256 `{sha}`, wrk -t 2 -d {tsec}s (-t 1 at N=1), nginx with one worker, hold phase idle {idle} s.\n\n")
    o.write("Medians per N. Descriptors per connection: (during − before) / N for the nginx worker and the service, all of wrk's / N; sampled at 60 % of the run. "
            "All accepted at: seconds from wrk's start until the worker held N more sockets; all on NTB at: until the service counted N connections (sampled every 0.2 s, 'never' within the run). "
            "System-wide memory per connection: (sample − before) / N of MemTotal − MemAvailable (kB), which includes the kernel's memory for the TCP sockets and counts a page shared by two processes once; the machine is shared, so other work moves it too.\n\n")
    o.write("\n".join(L) + "\n\n")
    if len(H) > 2:
        o.write("Hold phase (after wrk, same nginx): `holdconns` opens N connections, each makes 8 requests of /big (a 4,000-byte header each way: every 16 KiB ring lapped twice), then they stay open and idle; system-wide memory per connection (kB) against just before it, once all are loaded and again after the idle time less 1 s:\n\n")
        o.write("\n".join(H) + "\n\n")
    o.write("All runs:\n\n" + "\n".join(D) + "\n")
print(out)
PY
