"""An echo server that waits for its connection to be readable before each read:
`poll_echo.py PORT [poll|epoll [ACCEPT_AFTER]]` (select.poll, the default, or select.epoll; the
accept made ACCEPT_AFTER seconds after listening, default 0).

Accepts one connection on 127.0.0.1:PORT, echoes everything until EOF with blocking reads and
writes, then shuts down its write side. Used by the failover tests' late upgrade (a server
candidate that waits in poll or epoll answers its client's late offer there).
"""

import select
import socket
import sys
import time


def main() -> None:
    port = int(sys.argv[1])
    how = sys.argv[2] if len(sys.argv) > 2 else "poll"
    accept_after = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", port))
    lst.listen(1)
    time.sleep(accept_after)
    conn, _ = lst.accept()
    if how == "epoll":
        p = select.epoll()
        p.register(conn.fileno(), select.EPOLLIN)
    else:
        p = select.poll()
        p.register(conn, select.POLLIN)
    while True:
        p.poll()
        b = conn.recv(256 * 1024)
        if not b:
            break
        conn.sendall(b)
    conn.shutdown(socket.SHUT_WR)


if __name__ == "__main__":
    main()
