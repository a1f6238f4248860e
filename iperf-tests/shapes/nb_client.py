"""An event-loop echo client that only makes non-blocking calls: `nb_client.py PORT BYTES MIB_PER_S`.

Connects to 127.0.0.1:PORT, makes the socket non-blocking and registers it with a `selectors`
selector (epoll), then sends BYTES of a 251-periodic pattern, paced to MIB_PER_S, and reads
the echo back, each only when the selector says the socket is ready; checks every byte, shuts
its write side once all is sent, and prints `ok bytes=BYTES` once all came back. Used by the
failover tests' late upgrade (a client that never blocks offers from its non-blocking calls).
"""

import selectors
import socket
import sys
import time

PERIOD = 251
PATTERN = bytes(i % PERIOD for i in range(PERIOD)) * ((1 << 20) // PERIOD + 2)


def main() -> None:
    port, total, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) * (1 << 20)
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    sent = got = 0
    shut = False
    t0 = time.monotonic()
    while got < total:
        allowed = min(total, int((time.monotonic() - t0) * rate))
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < allowed else 0)
        sel.modify(s, want)
        for _, mask in sel.select(timeout=0.01):
            if mask & selectors.EVENT_READ:
                try:
                    b = s.recv(256 * 1024)
                except BlockingIOError:
                    b = None
                if b is not None:
                    if not b:
                        sys.exit(f"end of stream after {got} of {total} bytes")
                    off = got % PERIOD
                    if b != PATTERN[off : off + len(b)]:
                        sys.exit(f"wrong bytes at {got}")
                    got += len(b)
            if mask & selectors.EVENT_WRITE and sent < allowed:
                off = sent % PERIOD
                n = min(allowed - sent, 64 * 1024)
                try:
                    sent += s.send(PATTERN[off : off + n])
                except BlockingIOError:
                    pass
        if sent == total and not shut:
            s.shutdown(socket.SHUT_WR)
            shut = True
    print(f"ok bytes={total}", flush=True)


if __name__ == "__main__":
    main()
