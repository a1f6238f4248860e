#!/usr/bin/env python3
"""Byte-exact transfer check for twohost.sh: plain socket calls (so LD_PRELOAD=libpcisock.so
carries them), one connection, SHA-256 on both ends.

  blob.py recv PORT            accept one connection, read to EOF, print "BYTES SHA256"
  blob.py send HOST PORT FILE  send FILE, shut down the write side, wait for the peer to close,
                               print "BYTES SHA256"
"""
import hashlib
import socket
import sys


def main():
    mode = sys.argv[1]
    h = hashlib.sha256()
    n = 0
    if mode == "recv":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", int(sys.argv[2])))
        srv.listen(1)
        print("listening", flush=True, file=sys.stderr)
        conn, _ = srv.accept()
        while True:
            b = conn.recv(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
        conn.close()
    elif mode == "send":
        data = open(sys.argv[4], "rb").read()
        conn = socket.create_connection((sys.argv[2], int(sys.argv[3])))
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # EOF once the receiver has read everything and closed
        conn.close()
        h.update(data)
        n = len(data)
    else:
        sys.exit("usage: blob.py recv PORT | send HOST PORT FILE")
    print(n, h.hexdigest(), flush=True)


if __name__ == "__main__":
    main()
