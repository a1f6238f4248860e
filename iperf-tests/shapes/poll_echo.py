"""An echo server that waits in poll(2) before each read (select.poll): `poll_echo.py PORT`.

Accepts one connection on 127.0.0.1:PORT, echoes everything until EOF, then shuts down its write
side. Used by the failover tests' late upgrade (a server candidate that waits in poll answers its
client's late offer there).
"""

import select
import socket
import sys


def main() -> None:
    port = int(sys.argv[1])
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", port))
    lst.listen(1)
    conn, _ = lst.accept()
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
