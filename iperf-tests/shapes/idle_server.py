"""A server that holds idle connections: `idle_server.py PORT N recv|poll|epoll`.

Listens on 127.0.0.1:PORT, accepts N connections, prints `accepted N`, then waits for them to
be readable: one thread per connection in a blocking `recv` (recv), or one `select.poll` or
`select.epoll` wait over all of them (poll, epoll). Echoes what comes; exits once every
connection has ended. Used by the failover tests' late upgrade: server candidates of plain
clients that never offer, whose waits must cost nothing while they sleep.
"""

import select
import socket
import sys
import threading


def echo_one(conn: socket.socket) -> bool:
    b = conn.recv(65536)
    if not b:
        return False
    conn.sendall(b)
    return True


def main() -> None:
    port, n, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", port))
    lst.listen(n)
    conns = [lst.accept()[0] for _ in range(n)]
    print(f"accepted {n}", flush=True)
    if how == "recv":
        def run(c: socket.socket) -> None:
            while echo_one(c):
                pass

        ts = [threading.Thread(target=run, args=(c,)) for c in conns]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return
    p = select.epoll() if how == "epoll" else select.poll()
    by_fd = {}
    for c in conns:
        p.register(c.fileno(), select.POLLIN)
        by_fd[c.fileno()] = c
    while by_fd:
        for fd, _ in p.poll():
            if fd in by_fd and not echo_one(by_fd[fd]):
                p.unregister(fd)
                del by_fd[fd]


if __name__ == "__main__":
    main()
