"""Servers started the way they are deployed, for iperf-tests/tests/process_shapes.rs.

    server.py prefork PORT N     listen, then per connection fork a child that closes its copy of
                                 the listener and serves the connection (the classic forking server)
    server.py daemon PORT N      listen, fork, the parent exits at once; the child serves N
                                 connections (a daemonizing server)
    server.py dropuid PORT N     listen as root, setuid(nobody), then serve N connections
    server.py exec PORT N        listen, start a new program (fork + exec) that serves N
                                 connections on the inherited socket; the parent closes its copy
    server.py workers PORT N     listen, fork 3 workers that all accept on the one socket (the
                                 master keeps its copy), until SIGTERM
    server.py reuseport PORT N   fork 3 workers, each with its own SO_REUSEPORT listening socket
                                 on the port, until SIGTERM

On SIGTERM the master of "workers"/"reuseport" stops its workers and every process exits
cleanly (so the library writes its statistics at exit).

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

def workers_until_sigterm(work):
    # Each worker runs work() until SIGTERM; the master stops them on its own SIGTERM.
    pids = []
    ready_r, ready_w = os.pipe()
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            work(ready_w)
            os._exit(1)
        pids.append(pid)
    for _ in pids:
        os.read(ready_r, 1)

    def stop(*_):
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        for pid in pids:
            os.waitpid(pid, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        signal.pause()


if mode == "reuseport":

    def own_listener(ready_w):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(16)
        os.write(ready_w, b"x")
        while True:
            c, _ = s.accept()
            serve(c)

    workers_until_sigterm(own_listener)

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
elif mode == "workers":

    def shared_listener(ready_w):
        os.write(ready_w, b"x")
        while True:
            c, _ = s.accept()
            serve(c)

    workers_until_sigterm(shared_listener)
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
