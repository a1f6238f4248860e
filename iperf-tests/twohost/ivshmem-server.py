#!/usr/bin/env python3
"""A minimal ivshmem server for the two-host test bed (iperf-tests/twohost.sh).

Debian ships QEMU's ivshmem-doorbell device but not contrib/ivshmem-server, so the test bed
brings this one. It speaks the client-server protocol of QEMU's docs/specs/ivshmem-spec
("The ivshmem Client-Server Protocol"): every message is a little-endian int64, optionally with
one file descriptor (SCM_RIGHTS). On connect a client gets: version 0; its ID; -1 with the
shared-memory fd; for every other client, that client's ID N times with its N eventfds (to
interrupt it); its own ID N times with its own N eventfds (to be interrupted). Other clients
then get the new client's ID N times with its eventfds; a disconnect is the ID without an fd.

Usage: ivshmem-server.py SOCKET SHM_BYTES VECTORS   (runs until killed; the shared memory is an
anonymous memfd, gone when the server and both QEMUs are)
"""
import os
import select
import socket
import struct
import sys


def send(conn, value, fd=None):
    data = struct.pack("<q", value)
    if fd is None:
        conn.sendall(data)
    else:
        socket.send_fds(conn, [data], [fd])


def main():
    path, size, vectors = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if size <= 0 or size & (size - 1):
        sys.exit("ivshmem-server: the shared memory size must be a power of two")
    shm = os.memfd_create("ivshmem", os.MFD_CLOEXEC)
    os.ftruncate(shm, size)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    peers = {}  # id -> (conn, [eventfd; vectors])
    next_id = 0
    print(f"ivshmem-server: {path}, {size} bytes, {vectors} vectors", flush=True)
    while True:
        ready, _, _ = select.select([srv] + [c for c, _ in peers.values()], [], [])
        for r in ready:
            if r is srv:
                conn, _ = srv.accept()
                pid = next_id
                next_id += 1
                fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(vectors)]
                send(conn, 0)
                send(conn, pid)
                send(conn, -1, shm)
                for other, (oconn, ofds) in peers.items():
                    for fd in ofds:
                        send(conn, other, fd)
                    for fd in fds:
                        send(oconn, pid, fd)
                for fd in fds:
                    send(conn, pid, fd)
                peers[pid] = (conn, fds)
                print(f"ivshmem-server: peer {pid} connected", flush=True)
                continue
            pid = next(p for p, (c, _) in peers.items() if c is r)
            try:
                if r.recv(64):
                    continue  # clients never send; ignore stray bytes
            except OSError:
                pass
            conn, fds = peers.pop(pid)
            conn.close()
            for fd in fds:
                os.close(fd)
            for oconn, _ in peers.values():
                send(oconn, pid)
            print(f"ivshmem-server: peer {pid} disconnected", flush=True)


if __name__ == "__main__":
    main()
