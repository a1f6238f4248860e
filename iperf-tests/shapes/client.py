"""client.py PORT N BYTES: N connections one after the other, each sending BYTES then
half-closing; the server must answer with the count it read. Exits 1 on any difference."""
import socket
import sys

port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
block = bytes(range(256)) * 4096  # 1 MiB
for i in range(n):
    # Under PCISOCK_STRICT=1 a connection that would fall back to TCP is refused: it raises.
    c = socket.create_connection(("127.0.0.1", port))
    left = size
    while left:
        k = min(left, len(block))
        c.sendall(block[:k])
        left -= k
    c.shutdown(socket.SHUT_WR)
    answer = b""
    while True:
        b = c.recv(64)
        if not b:
            break
        answer += b
    c.close()
    if answer != str(size).encode():
        sys.exit(f"connection {i}: server read {answer!r}, sent {size}")
print(f"ok {n} x {size}", flush=True)
