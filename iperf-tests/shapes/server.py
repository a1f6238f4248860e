"""Servers started the way they are deployed, for iperf-tests/tests/process_shapes.rs.

    server.py prefork PORT N     listen, then per connection fork a child that closes its copy of
                                 the listener and serves the connection (the classic forking server)
    server.py daemon PORT N      listen, fork, the parent exits at once; the child serves N
                                 connections (a daemonizing server)
    server.py dropuid PORT N     listen as root, setuid(nobody), then serve N connections
    server.py exec PORT N        listen, start a new program (fork + exec) that serves N
                                 connections on the inherited socket; the parent closes its copy

Serving a connection: read until EOF, then answer with the number of bytes read. Prints "ready"
once the kernel listens. Every process has a 30 s watchdog.
"""
import os
import signal
import socket
import sys

signal.alarm(30)
mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def serve(c):
    total = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        total += len(b)
    c.sendall(str(total).encode())
    c.close()


if mode == "serve-fd":  # the exec'd program of "exec": the listener is fd argv[4]
    s = socket.socket(fileno=int(sys.argv[4]))
    for _ in range(n):
        c, _ = s.accept()
        serve(c)
    sys.exit(0)

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)

if mode == "prefork":
    print("ready", flush=True)
    children = []
    for _ in range(n):
        c, _ = s.accept()
        pid = os.fork()
        if pid == 0:
            s.close()  # the child closes its inherited copy of the listener
            serve(c)
            os._exit(0)
        children.append(pid)
        c.close()
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            sys.exit(f"child {pid} failed: {status}")
elif mode == "daemon":
    child = os.fork()
    if child != 0:
        print(f"ready {child}", flush=True)
        os._exit(0)  # the parent that listened is gone; the child serves
    os.setsid()
    for _ in range(n):
        c, _ = s.accept()
        serve(c)
elif mode == "dropuid":
    os.setgid(65534)
    os.setuid(65534)  # nobody, after listen
    print("ready", flush=True)
    for _ in range(n):
        c, _ = s.accept()
        serve(c)
elif mode == "exec":
    import subprocess

    fd = s.fileno()
    child = subprocess.Popen(
        [sys.executable, __file__, "serve-fd", str(port), str(n), str(fd)], pass_fds=[fd]
    )
    s.close()  # only the new program holds the listener now
    print("ready", flush=True)
    sys.exit(child.wait())
else:
    sys.exit(f"unknown mode {mode}")
