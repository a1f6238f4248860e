#!/usr/bin/env bash
# A burst of connects against nginx, two builds side by side: nginx (one worker, keep-alive,
# benches/common.sh's config, listen backlog 511 as stock nginx) serving `wrk -c N -t 2` for S
# seconds, every process preloaded with build A, then with build B, round after round (A B A B),
# each build with a host fabric service of its own. Per run: wrk's requests a second, the
# connections each side counted on NTB and on TCP with their fallback reasons (its stats files),
# and wrk's socket errors. With N in the thousands the listener's queues overflow (SYN cookies,
# dropped handshakes: docs/HOST-SERVICE.md, *Unreached connections*).
#
# usage: benches/burst-ab.sh --base DIR [--new DIR] [--conns N] [--runs R] [--seconds S] [--out FILE]
#   --base DIR    build A: a directory with libpcisock.so and pcisock (e.g. main's target/release,
#                 copied)
#   --new DIR     build B (default: this checkout's target/release)
#   --conns N     wrk's connections (default 8000; the open-file limit must allow 2 N + some)
#   --runs R      rounds (default 3)
#   --seconds S   seconds per run (default 16)
#   --out FILE    also write the markdown to FILE
# Needs: nginx, wrk, python3. Takes the loopback lock (/tmp/pcisock-iperf-tests-lo.lock).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
A="" B="$root/target/release" N=8000 R=3 T=16 OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) A="$2"; shift 2 ;;
        --new) B="$2"; shift 2 ;;
        --conns) N="$2"; shift 2 ;;
        --runs) R="$2"; shift 2 ;;
        --seconds) T="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "burst-ab.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n "$A" ]] || { echo "burst-ab.sh: --base DIR is required (see --help)" >&2; exit 2; }
for n in "$N" "$R" "$T"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "burst-ab.sh: --conns, --runs and --seconds take positive integers" >&2; exit 2; }
done
for d in "$A" "$B"; do
    [[ -f "$d/libpcisock.so" && -x "$d/pcisock" ]] || { echo "burst-ab.sh: $d has no libpcisock.so and pcisock" >&2; exit 2; }
done
A="$(cd "$A" && pwd)" B="$(cd "$B" && pwd)"
# shellcheck source=benches/common.sh
source "$root/benches/common.sh"
ulimit -n "$(ulimit -Hn)"
work="$(mktemp -d /tmp/pcisock-burst-XXXXXX)"
chmod 755 "$work"
ng="" svc=""
cleanup() {
    [[ -n "$ng" ]] && kill "$ng" 2>/dev/null || true
    [[ -n "$svc" ]] && "$svc" fabric stop --socket "$work/fab.sock" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
exec 9>/tmp/pcisock-iperf-tests-lo.lock
flock 9

port=""
rows=()
one() { # $1 build dir, $2 label, $3 round
    local dir=$1 d="$work/run"
    rm -rf "$d"; mkdir -m 755 "$d"
    next_port
    nginx_keepalive_conf "$d" "$port" 20000
    svc="$dir/pcisock"
    "$svc" fabric start --socket "$work/fab.sock" >/dev/null
    local env=(LD_PRELOAD="$dir/libpcisock.so" PCISOCK_FABRIC="$work/fab.sock" PCISOCK_PORTS="$port"
        PCISOCK_STATS_FILE="$d/%p.json")
    env "${env[@]}" nginx -c "$d/nginx.conf" >"$d/nginx.out" 2>&1 &
    ng=$!
    sleep 1
    env "${env[@]}" timeout $((T + 60)) wrk -c "$N" -t 2 -d "${T}s" "http://127.0.0.1:$port/" >"$d/wrk.out" 2>&1 || true
    kill "$ng" 2>/dev/null || true
    wait "$ng" 2>/dev/null || true
    ng=""
    "$svc" fabric stop --socket "$work/fab.sock" >/dev/null 2>&1 || true
    svc=""
    local row
    row="$(python3 - "$d" "$2" "$3" <<'PY'
import glob, json, re, sys
d, label, rnd = sys.argv[1:4]
wrk = open(d + "/wrk.out").read()
m = re.search(r"Requests/sec:\s*([0-9.]+)", wrk)
errs = re.search(r"Socket errors:(.*)", wrk)
side = {}
for f in glob.glob(d + "/*.json"):
    s = json.load(open(f))
    reasons = ",".join(f"{k}:{v}" for k, v in sorted(s.get("fallbacks", {}).items())) or "-"
    side[s["program"]] = f'{s["ntb_connections"]} / {s["tcp_connections"]} ({reasons})'
print(f'| {rnd} | {label} | {m.group(1) if m else "FAIL"} | {side.get("wrk", "?")} | {side.get("nginx", "?")} | {errs.group(1).strip() if errs else "-"} |')
PY
)"
    [[ $row == *FAIL* ]] && { echo "burst-ab.sh: run failed; wrk said: $(tail -3 "$d/wrk.out" | tr "\n" " ") nginx said: $(tail -2 "$d/nginx.out" | tr "\n" " ")" >&2; }
    rows+=("$row")
    echo "burst-ab.sh: $row" >&2
}
start="$(date -u +%FT%TZ)"
for r in $(seq "$R"); do
    one "$A" A "$r"
    one "$B" B "$r"
done
sha() { sha256sum "$1/libpcisock.so" | cut -c1-12; }
{
    echo "\`benches/burst-ab.sh --conns $N --runs $R --seconds $T\` on $start, $(nproc) CPUs."
    echo "A: $A (libpcisock.so sha256 \`$(sha "$A")\`); B: $B (\`$(sha "$B")\`)."
    echo
    echo "| round | build | wrk req/s | wrk: on NTB / on TCP (reasons) | nginx: on NTB / on TCP (reasons) | wrk socket errors |"
    echo "|---|---|---:|---|---|---|"
    printf '%s\n' "${rows[@]}"
} | tee ${OUT:+"$OUT"}
