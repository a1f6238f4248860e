//! A peer on another host that half-closes on TCP, and a forked child writing across failovers.

use super::*;

/// A peer on another host that shuts down writing while its direction is on TCP has only half-closed: the other
/// end's sends into a full ring wait for it to read, instead of failing as if it had died. On a two-host emulated
/// device (one process on each side, one network namespace), the client's direction fails over during a link-down
/// and the client shuts down writing there; the link comes back, the server's direction returns to the ring and
/// the server sends 8 MiB (eight rings) that the client reads only 1.5 s later. Its process cannot be asked from
/// the other host: before the SHUT record the kernel's FIN was taken for its death (the server's send failed with
/// EPIPE).
#[test]
fn a_half_close_on_tcp_from_another_host_is_not_death() {
    const SERVER: &str = r#"
import os, socket, sys, time
port, sig = int(sys.argv[1]), sys.argv[2]
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port)); l.listen(4); print("listening", flush=True)
c, _ = l.accept(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    n += len(b)
print("eof after", n, flush=True)
while not os.path.exists(sig + "/up"):
    time.sleep(0.01)
time.sleep(0.5)
block = bytes(range(256)) * 4096
for _ in range(8):
    c.sendall(block)
c.close(); print("sent", flush=True)
"#;
    const CLIENT: &str = r#"
import os, socket, sys, time
port, sig = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"r" * (1 << 20)); print("connected", flush=True)
while not os.path.exists(sig + "/down"):
    time.sleep(0.01)
s.sendall(b"t" * (3 << 20)); s.shutdown(socket.SHUT_WR); print("shut", flush=True)
while not os.path.exists(sig + "/up"):
    time.sleep(0.01)
time.sleep(2.0)
n, ok = 0, True
block = bytes(range(256)) * 4096
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    ok = ok and all(b[i] == (n + i) % 256 for i in range(0, len(b), 4093))
    n += len(b)
print("read", n, ok, flush=True)
sys.exit(0 if n == 8 << 20 and ok else 1)
"#;
    const PRESENCE: &str = r#"
import socket, sys, time
l = socket.socket(); l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(1); print("listening", flush=True)
time.sleep(120)
"#;
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let f = Fixture::new("failover_half_close_two_hosts");
    let port = free_port();
    let other = free_port();
    let two_host = [("PCISOCK_EMU_TOPOLOGY", "two-host")];
    let side = |role: &str, host: &str| {
        let mut e = env(&f, role, port).with_ports(format!("{port},{other}"));
        e.extra.push((two_host[0].0.into(), two_host[0].1.into()));
        e.extra.push(("PCISOCK_EMU_HOST".into(), host.into()));
        e
    };
    let sig = f.dir().display().to_string();
    let py = |name: &str, code: &str, args: &[&str], e: &PreloadEnv| {
        let mut v = vec!["-c", code];
        v.extend_from_slice(args);
        check(
            Proc::spawn(name, command("/usr/bin/python3", &v, Some(e)), f.dir()),
            &[],
        )
    };
    // Host 0 has a pcisock process before the server listens (its side of the link is up), as in hostmodel's
    // two-host tests: a client racing the link's first coming up could miss the server's listener.
    let (port_s, other_s) = (port.to_string(), other.to_string());
    let mut presence = py("presence", PRESENCE, &[&other_s], &side("presence", "0"));
    check(
        presence.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&presence],
    );
    let senv = side("server", "1");
    let mut server = py("server", SERVER, &[&port_s, &sig], &senv);
    check(
        server.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&server],
    );
    let cenv = side("client", "0");
    let mut client = py("client", CLIENT, &[&port_s, &sig], &cenv);
    check(
        client.wait_stdout(Duration::from_secs(20), |o| o.contains("connected")),
        &[&client, &server],
    );
    emu_with(f.emu_dir(), &two_host, &["emu", "fault", "link-down"]);
    std::fs::write(f.dir().join("down"), b"").unwrap();
    check(
        client.wait_stdout(Duration::from_secs(20), |o| o.contains("shut")),
        &[&client, &server],
    );
    check(
        server.wait_stdout(Duration::from_secs(20), |o| o.contains("eof after")),
        &[&client, &server],
    );
    emu_with(f.emu_dir(), &two_host, &["emu", "clear"]);
    std::fs::write(f.dir().join("up"), b"").unwrap();
    let sdone = server.wait_success(Duration::from_secs(30));
    let cdone = client.wait_success(Duration::from_secs(30));
    let _ = presence.terminate();
    check(sdone.and(cdone), &[&client, &server]);
    let s = senv.stats().unwrap_or_else(|e| panic!("{e}"));
    let c = cenv.stats().unwrap_or_else(|e| panic!("{e}"));
    // The path the test means: the client's direction failed over (it shut down on TCP), the server's came back.
    let (sc, cc) = (data_conn(&s, port), data_conn(&c, port));
    assert!(
        cc.failovers >= 1 && sc.failbacks >= 1 && sc.tx_bytes >= 4 << 20,
        "client {cc:?}\nserver {sc:?}\n{}\n{}",
        client.describe(),
        server.describe()
    );
}

/// A connection held by a parent and its forked child, the child writing across two link-downs while the parent
/// only watches the socket with poll (readiness checks, which can move a direction off the ring or back), then the
/// parent writing the last block: the server's count and sha-256 of what it received match what the two sent.
#[test]
fn a_forked_child_writing_across_failovers_keeps_the_stream_right() {
    const SERVER: &str = r#"
import hashlib, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(4); print("listening", flush=True)
c, _ = l.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
c.sendall(("%d %s" % (n, h.hexdigest())).encode()); c.close()
"#;
    const CLIENT: &str = r#"
import hashlib, os, select, socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
block = bytes((i * 7 + 3) % 251 for i in range(1 << 16))
s = socket.create_connection(("127.0.0.1", port))
s.sendall(block); print("connected", flush=True)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < secs:
        s.sendall(block); n += 1
        time.sleep(0.001)
    os.write(w, str(n).encode()); os._exit(0)
os.close(w)
p = select.poll(); p.register(s, select.POLLIN)
while os.waitpid(pid, os.WNOHANG)[0] == 0:
    p.poll(20)
n = 2 + int(os.read(r, 64))
s.sendall(block); s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(256)
    if not b:
        break
    got += b
h = hashlib.sha256()
for _ in range(n):
    h.update(block)
want = "%d %s" % (n << 16, h.hexdigest())
print("server says", got.decode(), "want", want, flush=True)
sys.exit(0 if got.decode() == want else 1)
"#;
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let f = Fixture::new("failover_forked_child");
    let port = free_port();
    let port_s = port.to_string();
    let (se, ce) = (env(&f, "server", port), env(&f, "client", port));
    let py = |name: &str, code: &str, args: &[&str], e: &PreloadEnv| {
        let mut v = vec!["-c", code];
        v.extend_from_slice(args);
        check(
            Proc::spawn(name, command("/usr/bin/python3", &v, Some(e)), f.dir()),
            &[],
        )
    };
    let mut server = py("server", SERVER, &[&port_s], &se);
    check(
        server.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&server],
    );
    let mut client = py("client", CLIENT, &[&port_s, "2.5"], &ce);
    check(
        client.wait_stdout(Duration::from_secs(20), |o| o.contains("connected")),
        &[&client, &server],
    );
    let t0 = Instant::now();
    for (down, up) in [(400, 800), (1500, 1900)] {
        sleep_until(t0, Duration::from_millis(down));
        link(f.emu_dir(), true);
        sleep_until(t0, Duration::from_millis(up));
        link(f.emu_dir(), false);
    }
    let cdone = client.wait_success(Duration::from_secs(30));
    let sdone = server.wait_success(Duration::from_secs(10));
    check(cdone.and(sdone), &[&client, &server]);
    let s = se.stats().unwrap_or_else(|e| panic!("{e}"));
    let c = data_conn(&s, port);
    assert!(
        c.failovers >= 1 && c.failover_rx_bytes > 0 && s.protocol_errors == 0,
        "the server's connection did not see the client's direction fail over: {c:?}\n{s}"
    );
}
