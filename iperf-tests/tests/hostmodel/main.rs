//! The host model (docs/HOST-SERVICE.md): processes of any user and any shape meet through the
//! host fabric service, each getting its own connections' memory only. Every check proves the
//! path with the kernel's counters besides pcisock's own statistics: a quiet lo while megabytes
//! moved, or, where a stream runs for seconds (long enough for other traffic on the machine to
//! cross lo), the stream's own TCP socket (`ss -ti`), which nothing else moves.
//!
//! Each test runs its own service on a private socket under /run (`PCISOCK_FABRIC=PATH`), so
//! tests do not share state with each other or with a system service on the machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use iperf_tests::apps::as_user;
use iperf_tests::fabric::Service;
use iperf_tests::{
    check, command, free_port, tcp_sockets, Fixture, LoExpect, LoWindow, PreloadEnv, Proc, Stats,
    TcpSocket,
};

const MIB: u64 = 1 << 20;
/// At most this much may cross lo while a test moves its payload over the NTB path (the TCP
/// handshakes and closes of a few connections).
const QUIET: u64 = 256 << 10;

/// The payload's marker (every byte a client sends is from it; servers check they read
/// nothing else). It travels in the environment, which other users cannot read.
fn marker_of(f: &Fixture) -> String {
    format!("pcisock-marker-{}-{}-", f.name, std::process::id())
}

trait Marked {
    fn marked(self, marker: &str) -> Self;
}

impl Marked for PreloadEnv {
    fn marked(mut self, marker: &str) -> Self {
        self.extra.push(("HM_MARKER".into(), marker.into()));
        self
    }
}

/// A world-writable scratch directory for processes of other users (their stats files).
fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Python socket programs: `server` accepts (one connection per `conns`) and counts the bytes
/// it reads, checking each holds only the marker; `client` sends `bytes` of the marker.
const PY: &str = r#"
import os, signal, socket, sys, time
# A bounded life: a daemonized server leaves the harness's process tree, and must not outlive
# a failed test waiting for a client that never comes.
signal.alarm(120)
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "client":
    n, marker = int(sys.argv[3]), os.environ["HM_MARKER"].encode()
    src = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    pace = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if src:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", src))
    s.connect(("127.0.0.1", port))
    chunk = marker * (65536 // len(marker))
    sent = 0
    while sent < n:
        sent += s.send(chunk[: n - sent])
        if pace:
            time.sleep(pace)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(16) == b"ok", "no ok from the server"
    print("sent", sent, flush=True)
    sys.exit(0)

shape, conns, marker = sys.argv[3], int(sys.argv[4]), os.environ["HM_MARKER"].encode()
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port))
l.listen(64)

def serve(announce=False):
    for _ in range(conns):
        if announce:
            # An event loop's accept (accept4 with SOCK_NONBLOCK), said when it returned.
            import ctypes
            fd = ctypes.CDLL(None).accept4(l.fileno(), None, None, socket.SOCK_NONBLOCK)
            assert fd >= 0, "accept4"
            print("accepted", flush=True)
            c = socket.socket(fileno=fd)
            c.setblocking(True)
        else:
            c, _ = l.accept()
        got = 0
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            # Every byte must be the marker's, in order: another connection's bytes would not be.
            off = got % len(marker)
            want = (marker * (len(b) // len(marker) + 2))[off : off + len(b)]
            if b != want:
                print("foreign bytes at", got, flush=True)
                os._exit(3)
            got += len(b)
        c.sendall(b"ok")
        c.close()
        print("got", got, flush=True)

if shape == "plain":
    print("listening", flush=True)
    serve()
elif shape == "announce":
    # Accepts once the file named by the fifth argument exists; says when each accept
    # returned, before the connection's first use.
    print("listening", flush=True)
    while not os.path.exists(sys.argv[5]):
        time.sleep(0.01)
    serve(True)
elif shape == "late":
    # Accept a while after the clients connected (their offers wait meanwhile).
    print("listening", flush=True)
    time.sleep(1.5)
    serve()
elif shape == "children-close":
    # A pre-fork pattern: the children close their inherited copy of the listener.
    kids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            l.close()
            os._exit(0)
        kids.append(pid)
    for k in kids:
        os.waitpid(k, 0)
    print("listening", flush=True)
    serve()
elif shape == "daemon":
    # The parent exits; the child serves (as `daemon()` does).
    if os.fork() != 0:
        print("listening", flush=True)
        os._exit(0)
    os.setsid()
    signal.alarm(120)  # a forked child does not inherit the alarm
    serve()
elif shape == "hold":
    # Many clients at once: each connection is read until EOF (or reset), then closed.
    import selectors
    sel = selectors.DefaultSelector()
    l.setblocking(False)
    sel.register(l, selectors.EVENT_READ)
    print("listening", flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is l:
                try:
                    c, _ = l.accept()
                except BlockingIOError:
                    continue
                sel.register(c, selectors.EVENT_READ)
                continue
            try:
                b = key.fileobj.recv(65536)
            except ConnectionError:
                b = b""
            if not b:
                sel.unregister(key.fileobj)
                key.fileobj.close()
elif shape == "privdrop":
    # Listen as root, then serve as nobody.
    import pwd
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
    print("listening", flush=True)
    serve()
"#;

fn py(f: &Fixture) -> PathBuf {
    let p = f.dir().join("prog.py");
    fs::write(&p, PY).unwrap();
    open_up(f.dir());
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// A server of `shape` as `server_user` and one client per entry of `clients` (a user each),
/// each sending `bytes`; the bytes must cross on the NTB path.
fn transfer(
    f: &Fixture,
    svc: &Service,
    shape: &str,
    server_user: &str,
    clients: &[&str],
    bytes: u64,
) {
    let prog = py(f);
    let prog_s = prog.display().to_string();
    let port = free_port();
    let port_s = port.to_string();
    let marker = marker_of(f);
    let n_s = clients.len().to_string();
    // The lo lock first: the server's alarm(120) runs from its start, and a wait for the lock
    // behind other tests must not eat it.
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let senv = svc.env(f, "server", port).marked(&marker);
    let mut server = check(
        Proc::spawn(
            "server",
            as_user(
                server_user,
                "/usr/bin/python3",
                &[&prog_s, "server", &port_s, shape, &n_s],
                Some(&senv),
            ),
            f.dir(),
        ),
        &[],
    );
    check(
        server.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&server],
    );
    iperf_tests::wait_listening(port, Duration::from_secs(10)).unwrap();
    let bytes_s = bytes.to_string();
    let mut procs = Vec::new();
    for (i, user) in clients.iter().enumerate() {
        let cenv = svc.env(f, &format!("client{i}"), port).marked(&marker);
        let mut c = check(
            Proc::spawn(
                &format!("client{i}"),
                as_user(
                    user,
                    "/usr/bin/python3",
                    &[&prog_s, "client", &port_s, &bytes_s],
                    Some(&cenv),
                ),
                f.dir(),
            ),
            &[&server],
        );
        check(c.wait_success(Duration::from_secs(60)), &[&c, &server]);
        procs.push(c);
    }
    let delta = lo.delta().unwrap();
    drop(lo);
    let moved = bytes * clients.len() as u64;
    assert!(
        delta.tx_bytes < QUIET,
        "{shape}: {} bytes crossed lo while {moved} bytes moved: not the NTB path\n{}",
        delta.tx_bytes,
        server.describe()
    );
    // pcisock's own count, from the client side's stats file.
    for (i, _) in clients.iter().enumerate() {
        let st = Stats::load(&f.dir().join(format!("client{i}.stats.json")));
        let st = st.unwrap_or_else(|e| panic!("client{i} stats: {e}"));
        assert!(
            st.ntb_tx_bytes >= bytes,
            "client{i} sent {} bytes over the bridge, expected {bytes}",
            st.ntb_tx_bytes
        );
    }
    let _ = server.wait_timeout(Duration::from_secs(10));
}

/// A server and a client (its own user) streaming for a few seconds, paced: (server, client).
fn paced_pair(
    f: &Fixture,
    svc: &Service,
    client_user: &str,
    bytes: u64,
    pace: &str,
) -> (Proc, Proc, String, u16) {
    let prog_s = py(f).display().to_string();
    let port = free_port();
    let port_s = port.to_string();
    let marker = marker_of(f);
    let senv = svc.env(f, "server", port).marked(&marker);
    let mut server = check(
        Proc::spawn(
            "server",
            as_user(
                "root",
                "/usr/bin/python3",
                &[&prog_s, "server", &port_s, "plain", "1"],
                Some(&senv),
            ),
            f.dir(),
        ),
        &[],
    );
    check(
        server.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&server],
    );
    let cenv = svc.env(f, "client0", port).marked(&marker);
    let bytes_s = bytes.to_string();
    let client = check(
        Proc::spawn(
            "client0",
            as_user(
                client_user,
                "/usr/bin/python3",
                &[&prog_s, "client", &port_s, &bytes_s, "0", pace],
                Some(&cenv),
            ),
            f.dir(),
        ),
        &[&server],
    );
    (server, client, marker, port)
}

mod bridged;
mod lifecycle;
mod namespaces;
mod nginx;
mod service;
mod spawn;
mod unreached;
mod users;
