#!/usr/bin/env bash
# Time to failover of idle epoll waiters: one connection between two Python programs that wait
# only in epoll (selectors), idle for 1.5 s (their naps have grown to 320 ms), on the emulated
# device (PCISOCK_FABRIC=device). `pcisock emu fault link-down` is run, and the time until both
# directions have left the ring is measured: until each end's kernel socket has received the
# other's END record (16 bytes; `ss -tin` bytes_received, polled as fast as ss runs, about
# every 3 ms). Two builds A and B (a directory each holding libpcisock.so and pcisock), rounds
# interleaved A, B, A, B, …
#
# usage: benches/failover-wake.sh A_DIR B_DIR [--runs N] [--out FILE]
# Needs: python3, ss. Take the loopback lock while it runs:
#   flock /tmp/pcisock-iperf-tests-lo.lock benches/failover-wake.sh …
set -euo pipefail

[[ "${1:-}" == -h || "${1:-}" == --help ]] && { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0; }
[[ $# -ge 2 ]] || { echo "failover-wake.sh: usage: A_DIR B_DIR [--runs N] [--out FILE]" >&2; exit 2; }
A="$1" B="$2"; shift 2
RUNS=5 OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "failover-wake.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for d in "$A" "$B"; do
    [[ -f "$d/libpcisock.so" && -x "$d/pcisock" ]] || { echo "failover-wake.sh: $d has no libpcisock.so and pcisock" >&2; exit 2; }
done

work="$(mktemp -d)"
chmod 700 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))

cat >"$work/server.py" <<'EOF'
import selectors, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(1)
c, _ = l.accept(); c.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(c, selectors.EVENT_READ)
while True:
    for _ in sel.select():
        b = c.recv(65536)
        if not b:
            sys.exit(0)
        c.sendall(b)
EOF
cat >"$work/client.py" <<'EOF'
import selectors, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x"); assert s.recv(1) == b"x"; s.setblocking(False)
print("idle", flush=True)
sel = selectors.DefaultSelector(); sel.register(s, selectors.EVENT_READ)
while True:
    for _ in sel.select():
        if not s.recv(65536):
            sys.exit(0)
EOF
cat >"$work/measure.py" <<'EOF'
# Both sockets of the connection on PORT (the server's and the client's): bytes_received now;
# then run the fault and poll until each has received 16 more (the END). Prints milliseconds.
import re, subprocess, sys, time
port, cli = sys.argv[1], sys.argv[2]
def received():
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True).stdout
    # One header line and one indented line of counters per socket; bytes_received is left out
    # while it is 0 (an upgraded connection's socket carried nothing yet).
    return [int(m.group(1)) if (m := re.search(r"bytes_received:(\d+)", info)) else 0
            for info in out.split("\n")[1::2]]
before = received()
assert len(before) == 2, before
t0 = time.monotonic()
subprocess.run([cli, "emu", "fault", "link-down"], check=True, capture_output=True)
t_cli = time.monotonic()
while True:
    now = received()
    if len(now) == 2 and all(n >= b + 16 for n, b in zip(now, before)):
        break
    if time.monotonic() - t0 > 5:
        print("timeout"); sys.exit(0)
print(round((time.monotonic() - t0) * 1000, 1))
print("the fault command itself:", round((t_cli - t0) * 1000, 1), "ms", file=sys.stderr)
EOF

# round DIR PORT: one measurement with the build in DIR.
round() {
    local d="$1" p="$2" dev="$work/dev-$2"
    mkdir -m 700 "$dev"
    export PCISOCK_EMU_DIR="$dev" PCISOCK_FABRIC=device PCISOCK_PORTS="$p" PCISOCK_STRICT=0
    LD_PRELOAD="$d/libpcisock.so" python3 "$work/server.py" "$p" &
    local sp=$!; pids+=("$sp")
    for _ in $(seq 100); do ss -ltnH "sport = :$p" | grep -q . && break; sleep 0.02; done
    LD_PRELOAD="$d/libpcisock.so" python3 "$work/client.py" "$p" >"$work/c-$p" &
    local cp=$!; pids+=("$cp")
    for _ in $(seq 100); do grep -q idle "$work/c-$p" && break; sleep 0.02; done
    sleep 1.5
    python3 "$work/measure.py" "$p" "$d/pcisock"
    "$d/pcisock" emu clear >/dev/null
    kill "$cp" "$sp" 2>/dev/null || true
    wait "$cp" "$sp" 2>/dev/null || true
    unset PCISOCK_EMU_DIR PCISOCK_FABRIC PCISOCK_PORTS PCISOCK_STRICT
}

a=() b=()
for r in $(seq "$RUNS"); do
    a+=("$(round "$A" $((port + 2 * r)))")
    b+=("$(round "$B" $((port + 2 * r + 1)))")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
ma=$(median "${a[@]}") mb=$(median "${b[@]}")
report="| build | rounds (ms from \`pcisock emu fault link-down\` to both ENDs received) | median |
|---|---|---:|
| A: $A (libpcisock.so sha256 $(sha256sum "$A/libpcisock.so" | cut -c1-12)) | ${a[*]} | $ma |
| B: $B (libpcisock.so sha256 $(sha256sum "$B/libpcisock.so" | cut -c1-12)) | ${b[*]} | $mb |"
echo "$report"
[[ -z "$OUT" ]] || echo "$report" >"$OUT"
