#!/usr/bin/env python3
"""Byte-exact transfer check for twohost.sh: plain socket calls (so LD_PRELOAD=libpcisock.so
carries them), one connection, SHA-256 on both ends.

  blob.py recv PORT            accept one connection, read to EOF, print "BYTES SHA256"
  blob.py send HOST PORT FILE  send FILE, shut down the write side, wait for the peer to close,
                               print "BYTES SHA256"
  blob.py stream HOST PORT SECONDS
                               send pseudo-random bytes in writes of varying size (1 B to
                               256 KiB) for SECONDS from
                               the connection's start, then as `send`
"""
import hashlib
import random
import socket
import sys
import time


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
    elif mode == "stream":
        rng = random.Random(77)
        data = memoryview(rng.randbytes(4 << 20))
        conn = socket.create_connection((sys.argv[2], int(sys.argv[3])))
        end = time.monotonic() + float(sys.argv[4])  # from the connection's start
        off = 0
        while time.monotonic() < end:
            size = min(rng.randint(1, 256 << 10), len(data) - off)
            chunk = data[off : off + size]
            conn.sendall(chunk)
            h.update(chunk)
            n += size
            off = (off + size) % len(data)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)
        conn.close()
    else:
        sys.exit("usage: blob.py recv PORT | send HOST PORT FILE | stream HOST PORT SECONDS")
    print(n, h.hexdigest(), flush=True)


if __name__ == "__main__":
    main()
