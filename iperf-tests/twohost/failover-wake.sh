# failover-wake.sh ROLE A B ROOT BDF ROUNDS: the time to failover of an idle pair of epoll
# waiters across the twohost.sh guests (benches/failover-wake.sh on a bridge), A/B interleaved.
# A and B are directories under ROOT holding a libpcisock.so each; ROLE srv runs in guest 1 (in
# the background: it returns at once), cli in guest 2 (in the foreground, at most 55 s: about 8
# rounds under TCG). Round r uses build A when r is odd, B when even, and port 5100+r: guest 2's client connects, echoes
# one byte and waits in epoll; guest 1's server waits in epoll too; 2 s after the connection,
# guest 1 takes its side of the link down (`ntbdrv-peer ivshmem BDF auto link-down`) and
# measures until its socket has received the client's END (16 bytes: `ss -tinH`, one ss per
# look; the time the link-down command took is printed too), then brings the link back. Results in guest 1's command directory (fowake.out). For example:
#   TWOHOST_DEBUG='if [ $(hostname) = guest1 ]; then sh $PWD/iperf-tests/twohost/failover-wake.sh
#     srv A B $PWD 0000:00:04.0 6; else sh $PWD/iperf-tests/twohost/failover-wake.sh cli A B $PWD
#     0000:00:04.0 6; fi' iperf-tests/twohost.sh boot; cat target/twohost/g1/fowake.out
# (TWOHOST_KEEP=1 keeps the work directory; A and B relative to ROOT.)
role=$1 a=$2 b=$3 root=$4 bdf=$5 rounds=$6
build() { if [ $(($1 % 2)) = 1 ]; then echo "$a"; else echo "$b"; fi; }
# Round 0 (build B) is a warm-up, not counted: the first connection after boot may beat the
# listener's publication (the link comes up with its processes) and stay on TCP, with no END.
peer=$root/target/release/ntbdrv-peer
if [ "$role" = srv ]; then
    cat >/tmp/fw-srv.py <<'PY'
import selectors, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1]))); l.listen(1)
c, _ = l.accept(); c.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(c, selectors.EVENT_READ)
while True:
    for _ in sel.select():
        b = c.recv(65536)
        if not b:
            sys.exit(0)
        c.sendall(b)
PY
    cat >/tmp/fw-measure.py <<'PY'
import re, subprocess, sys, time
port, peer, bdf = sys.argv[1], sys.argv[2], sys.argv[3]
def received():
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return [int(m.group(1)) if (m := re.search(r"bytes_received:(\d+)", info)) else 0
            for info in out.split("\n")[1::2]]
t = time.monotonic()
while len(received()) != 1:
    if time.monotonic() - t > 20:
        print("no connection"); sys.exit(1)
    time.sleep(0.05)
time.sleep(2)
before = received()[0]
t0 = time.monotonic()
subprocess.run([peer, "ivshmem", bdf, "auto", "link-down"], check=True, capture_output=True)
t_cmd = time.monotonic()
while True:
    now = received()
    if now and now[0] >= before + 16:
        print("%.1f (link-down command %.1f)" % ((time.monotonic() - t0) * 1000, (t_cmd - t0) * 1000))
        break
    if time.monotonic() - t0 > 3:
        print("timeout"); break
time.sleep(0.3)
subprocess.run([peer, "ivshmem", bdf, "auto", "link-up"], check=True, capture_output=True)
PY
    (
        for r in $(seq 0 "$rounds"); do
            d=$root/$(build "$r") port=$((5100 + r))
            env PCISOCK_DEVICE=ivshmem:$bdf PCISOCK_PORTS=$port PCISOCK_STRICT=0 LD_PRELOAD=$d/libpcisock.so \
                python3 /tmp/fw-srv.py $port >/tmp/fw-srv.$r.out 2>&1 &
            spid=$!
            ms=$(python3 /tmp/fw-measure.py $port "$peer" "$bdf" 2>&1 | tail -1)
            echo "round $r $(build "$r") $ms" >>/run/twohost/fowake.out
            sleep 1
            kill $spid 2>/dev/null
        done
    ) >/dev/null 2>&1 &
else
    cat >/tmp/fw-cli.py <<'PY'
import selectors, socket, sys, time
t = time.monotonic()
while True:
    try:
        s = socket.create_connection(("10.77.0.1", int(sys.argv[1]))); break
    except OSError:
        if time.monotonic() - t > 15: sys.exit(1)
        time.sleep(0.1)
s.sendall(b"x"); assert s.recv(1) == b"x"; s.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(s, selectors.EVENT_READ)
end = time.monotonic() + 10
while time.monotonic() < end:
    for _ in sel.select(end - time.monotonic()):
        try:
            if not s.recv(65536): sys.exit(0)
        except BlockingIOError:
            pass
PY
    t0=$(date +%s)
    for r in $(seq 0 "$rounds"); do
        [ $(($(date +%s) - t0)) -lt 50 ] || break
        d=$root/$(build "$r") port=$((5100 + r))
        env PCISOCK_DEVICE=ivshmem:$bdf PCISOCK_PORTS=$port PCISOCK_STRICT=0 LD_PRELOAD=$d/libpcisock.so \
            python3 /tmp/fw-cli.py $port >/tmp/fw-cli.$r.out 2>&1
    done
fi
