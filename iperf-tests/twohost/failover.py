#!/usr/bin/env python3
"""The link fault of twohost.sh's `failover` check, run in the receiving guest.

  failover.py PORT DOWN_AFTER DOWN_FOR PEER BDF

Waits for the established TCP socket on local port PORT (the receiver's end of the stream),
samples its kernel counter `bytes_received` (`ss -tinH`, as iperf-tests/src/net.rs
`tcp_sockets` reads it) every 0.2 s, takes this machine's side of the bridge's link down
DOWN_AFTER seconds after the socket appeared (`PEER ivshmem BDF auto link-down`: for the other
machine its peer's side is gone, and the link status drops on both) and up again DOWN_FOR
seconds later (`link-up`), and goes on sampling until the socket is gone. Then it prints one
line of figures for the three spans, each over the samples inside it:

  before  from 0.5 s after the socket appeared to the link-down (the stream on the bridge)
  during  the outage, also as its quietest whole second (the whole outage if the samples are
          less than a second apart: the stream on its TCP socket)
  after   from 1 s after the link-up to the last sample that saw the socket (back on the bridge)

and exits 0 only if the socket carried under 64 KiB before, at least MIN_PER_S (256 KiB) in
every second of the outage, and under 1 MiB in at least 0.5 s after.
"""
import re
import subprocess
import sys
import time

KIB = 1024
MIN_PER_S = 256 * KIB


def received(port, peer):
    """(peer, bytes_received) of the established socket on local port `port` from `peer` (any
    peer if None: the one that received the most), or None if it is not there."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", "( sport = :%d )" % port],
        capture_output=True, text=True, check=True,
    ).stdout
    socks = []
    for line in out.splitlines():
        if line[:1].isspace():
            if socks:
                m = re.search(r"\bbytes_received:(\d+)", line)
                socks[-1][1] = int(m.group(1)) if m else 0
        else:
            f = line.split()
            if len(f) >= 4:
                socks.append([f[3], 0])
    socks = [s for s in socks if peer is None or s[0] == peer]
    return tuple(max(socks, key=lambda s: s[1])) if socks else None


def link(peer, bdf, what):
    r = subprocess.run([peer, "ivshmem", bdf, "auto", what], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("failover.py: ntbdrv-peer %s: %s" % (what, r.stderr.strip()))
    return r.stdout.strip()


def span(samples, t0, t1):
    """Bytes and seconds between the first and last samples in [t0, t1]."""
    s = [x for x in samples if t0 <= x[0] <= t1]
    if len(s) < 2:
        return 0, 0.0
    return s[-1][1] - s[0][1], s[-1][0] - s[0][0]


def main():
    port, down_after, down_for, peer_bin, bdf = (
        int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5])
    deadline = time.monotonic() + 60
    first = None
    while first is None:
        if time.monotonic() > deadline:
            sys.exit("failover.py: no established socket on port %d within 60 s" % port)
        first = received(port, None)
        if first is None:
            time.sleep(0.05)
    peer = first[0]
    t0 = time.monotonic()
    samples = [(0.0, first[1])]
    events = {}
    deadline = t0 + 120
    while time.monotonic() < deadline:
        now = time.monotonic() - t0
        if "down" not in events and now >= down_after:
            events["down"] = (now, time.monotonic() - t0, link(peer_bin, bdf, "link-down"))
        elif "down" in events and "up" not in events and now >= events["down"][1] + down_for:
            events["up"] = (now, time.monotonic() - t0, link(peer_bin, bdf, "link-up"))
        r = received(port, peer)
        if r is None:
            break
        samples.append((time.monotonic() - t0, r[1]))
        time.sleep(0.2)
    if "up" not in events:
        link(peer_bin, bdf, "link-up")
        sys.exit("failover.py: the stream ended before the link came back (%d samples)" % len(samples))
    (d0, d1, dsay), (u0, u1, usay) = events["down"], events["up"]
    before, before_s = span(samples, 0.5, d0)
    during, during_s = span(samples, d1, u0)
    # The quietest whole second of the outage, over consecutive samples (a loaded guest may
    # sample seldom: then the whole outage, if the samples span half a second).
    out = [x for x in samples if d1 <= x[0] <= u0]
    quietest = None
    for i, (t, b) in enumerate(out):
        later = [x for x in out[i:] if x[0] >= t + 1.0]
        if later:
            per_s = (later[0][1] - b) / (later[0][0] - t)
            quietest = per_s if quietest is None else min(quietest, per_s)
    if quietest is None and during_s >= 0.5:
        quietest = during / during_s
    after, after_s = span(samples, u1 + 1.0, samples[-1][0])
    ok = (before < 64 * KIB and before_s >= 0.3 and quietest is not None
          and quietest >= MIN_PER_S and after < 1024 * KIB and after_s >= 0.5)
    print("%s: the stream's TCP socket (%s) received %d bytes in the %.1f s before the link-down, "
          "%d in the %.1f s outage (quietest second %.0f KiB/s; link-down said '%s', link-up '%s'), "
          "%d in the %.1f s from 1 s after the link-up" % (
              "ok" if ok else "FAIL", peer, before, before_s, during, during_s,
              (quietest or 0) / KIB, dsay, usay, after, after_s))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
