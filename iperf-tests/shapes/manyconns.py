"""manyconns: N connections at once between two processes, each driven by one epoll loop.

  manyconns.py server PORT N SIZE        accept N connections; on each, read SIZE bytes, check
                                         them, answer SIZE bytes; print "answered N" once all
                                         are answered, exit once every client has closed
  manyconns.py client PORT N SIZE GO     open N connections, send SIZE bytes on each, read and
                                         check the answers; print "held N" and keep every
                                         connection open until the file GO exists; then close

The bytes of connection i are the byte (i * 7 + offset) % 251 (the server's answer: the same
pattern from offset 1), so a byte of another connection, or a lost or repeated one, shows.
"""

import os
import resource
import select
import socket
import sys
import time


CYCLE = b""


def pattern(i, start, n, answer):
    global CYCLE
    if len(CYCLE) < n + 251:
        CYCLE = bytes(range(251)) * (n // 251 + 2)
    off = (i * 7 + (1 if answer else 0) + start) % 251
    return CYCLE[off : off + n]


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fail(msg):
    print(f"FAIL {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def server(port, n, size):
    raise_fd_limit()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)
    ls.setblocking(False)
    ep = select.epoll()
    ep.register(ls.fileno(), select.EPOLLIN)
    print("listening", flush=True)
    conns = {}  # fd -> [sock, index, got, out, sent]
    accepted = answered = closed = 0
    deadline = time.monotonic() + 120
    while closed < n:
        if time.monotonic() > deadline:
            fail(f"server: accepted {accepted}, answered {answered}, closed {closed} of {n}")
        for fd, ev in ep.poll(1.0):
            if fd == ls.fileno():
                while True:
                    try:
                        s, _ = ls.accept()
                    except BlockingIOError:
                        break
                    s.setblocking(False)
                    conns[s.fileno()] = [s, None, bytearray(), b"", 0]
                    ep.register(s.fileno(), select.EPOLLIN)
                    accepted += 1
                continue
            c = conns.get(fd)
            if c is None:
                continue
            s = c[0]
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    data = None
                except ConnectionError as e:
                    fail(f"server: recv: {e}")
                if data == b"":
                    if c[1] is None or c[4] < size:
                        fail(f"server: a client closed before its exchange ended ({len(c[2])} bytes read)")
                    ep.unregister(fd)
                    s.close()
                    del conns[fd]
                    closed += 1
                    continue
                if data:
                    c[2] += data
                    if c[1] is None and len(c[2]) >= 4:
                        c[1] = int.from_bytes(c[2][:4], "little")
                    if len(c[2]) > size:
                        fail("server: a client sent more than it should")
                    if len(c[2]) == size and not c[3] and c[4] == 0:
                        i = c[1]
                        if bytes(c[2][4:]) != pattern(i, 4, size - 4, False):
                            fail(f"server: connection {i} carried bytes that are not its own")
                        c[3] = pattern(i, 0, size, True)
                        ep.modify(fd, select.EPOLLIN | select.EPOLLOUT)
            if ev & select.EPOLLOUT and c[3]:
                try:
                    k = s.send(c[3][c[4]:])
                except BlockingIOError:
                    k = 0
                c[4] += k
                if c[4] == size:
                    c[3] = b"done"
                    ep.modify(fd, select.EPOLLIN)
                    answered += 1
                    if answered == n:
                        print(f"answered {n}", flush=True)
    print(f"closed {closed}", flush=True)


def client(port, n, size, go):
    raise_fd_limit()
    ep = select.epoll()
    conns = {}  # fd -> [sock, index, out, sent, got]
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        e = s.connect_ex(("127.0.0.1", port))
        if e not in (0, 115):  # EINPROGRESS
            fail(f"client: connect {i}: {os.strerror(e)}")
        out = i.to_bytes(4, "little") + pattern(i, 4, size - 4, False)
        conns[s.fileno()] = [s, i, out, 0, bytearray()]
        ep.register(s.fileno(), select.EPOLLOUT)
    done = 0
    deadline = time.monotonic() + 120
    while done < n:
        if time.monotonic() > deadline:
            fail(f"client: {done} of {n} exchanges done")
        for fd, ev in ep.poll(1.0):
            c = conns[fd]
            s = c[0]
            if ev & select.EPOLLERR:
                fail(f"client: connection {c[1]}: error")
            if ev & select.EPOLLOUT and c[3] < size:
                try:
                    c[3] += s.send(c[2][c[3]:])
                except BlockingIOError:
                    pass
                if c[3] == size:
                    ep.modify(fd, select.EPOLLIN)
            if ev & (select.EPOLLIN | select.EPOLLHUP):
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    fail(f"client: connection {c[1]} ended early ({len(c[4])} bytes read)")
                c[4] += data
                if len(c[4]) == size:
                    if bytes(c[4]) != pattern(c[1], 0, size, True):
                        fail(f"client: connection {c[1]} carried bytes that are not its answer")
                    ep.unregister(fd)
                    done += 1
    print(f"held {n}", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            fail("client: never told to go")
        time.sleep(0.02)
    for c in conns.values():
        c[0].close()
    print("done", flush=True)


if __name__ == "__main__":
    role, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if role == "server":
        server(port, n, size)
    else:
        client(port, n, size, sys.argv[5])
