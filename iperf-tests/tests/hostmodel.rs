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
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
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

#[test]
fn clients_of_other_users_meet_a_root_server() {
    let f = Fixture::new("hm_cross_user");
    let svc = Service::start(&f);
    transfer(&f, &svc, "plain", "root", &["nobody", "daemon"], 16 * MIB);
    assert_eq!(svc.count("paired"), 2);
}

#[test]
fn a_server_whose_children_close_the_listener_keeps_it() {
    let f = Fixture::new("hm_children_close");
    let svc = Service::start(&f);
    transfer(
        &f,
        &svc,
        "children-close",
        "root",
        &["root", "root"],
        8 * MIB,
    );
}

#[test]
fn a_daemonizing_server_keeps_its_listener() {
    let f = Fixture::new("hm_daemon");
    let svc = Service::start(&f);
    transfer(&f, &svc, "daemon", "root", &["root"], 8 * MIB);
}

#[test]
fn a_server_that_drops_privileges_after_listen() {
    let f = Fixture::new("hm_privdrop");
    let svc = Service::start(&f);
    transfer(&f, &svc, "privdrop", "root", &["daemon"], 8 * MIB);
}

/// A file under the stock web root, removed again when the test ends.
struct WebFile(PathBuf);

impl Drop for WebFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// nginx as Debian ships it: /etc/nginx/nginx.conf unchanged (root master, `user www-data`
/// workers, daemon on, port 80 from sites-enabled/default, sendfile on), curl and wrk as
/// clients: every byte on the NTB path, through the service, with the workers' privileges.
#[test]
fn nginx_with_the_stock_config_serves_over_ntb() {
    let nginx = iperf_tests::apps::require_bin("nginx", "nginx");
    let curl = iperf_tests::apps::require_bin("curl", "curl");
    let wrk = iperf_tests::apps::require_bin("wrk", "wrk");
    assert!(
        !iperf_tests::is_listening(80).unwrap(),
        "port 80 is taken: this test runs Debian's stock nginx, which listens there"
    );
    let f = Fixture::new("hm_nginx_stock");
    open_up(f.dir());
    let svc = Service::start(&f);
    let file = WebFile(PathBuf::from(format!(
        "/var/www/html/pcisock-{}.bin",
        std::process::id()
    )));
    iperf_tests::apps::write_payload(&file.0, 16 * MIB, 0x5eed).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&file.0, fs::Permissions::from_mode(0o644)).unwrap();

    let env = svc.env(&f, "nginx", 80);
    let mut master = check(
        Proc::spawn(
            "nginx",
            command(&nginx, &[] as &[&str], Some(&env)),
            f.dir(),
        ),
        &[],
    );
    // Daemon mode: the process we started exits once the master is running.
    check(master.wait_success(Duration::from_secs(20)), &[&master]);
    iperf_tests::wait_listening(80, Duration::from_secs(10)).unwrap();
    let stop = || {
        let _ = Command::new(&nginx).args(["-s", "quit"]).status();
        let t0 = Instant::now();
        while iperf_tests::is_listening(80).unwrap_or(false)
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    struct Stop<F: Fn()>(F);
    impl<F: Fn()> Drop for Stop<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _stop = Stop(stop);
    let pid: u32 = fs::read_to_string("/run/nginx.pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    let workers = loop {
        let w = iperf_tests::apps::descendants(pid);
        if !w.is_empty() || t0.elapsed() > Duration::from_secs(10) {
            break w;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!workers.is_empty(), "nginx has no workers");
    // Each worker drops to www-data right after the master forks it.
    let www = Command::new("id")
        .args(["-u", "www-data"])
        .output()
        .unwrap();
    let www = String::from_utf8_lossy(&www.stdout).trim().to_string();
    let uid_of = |w: u32| {
        let status = fs::read_to_string(format!("/proc/{w}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string()
    };
    let t0 = Instant::now();
    while workers.iter().any(|(w, _)| uid_of(*w) != www) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (w, _) in &workers {
        assert_eq!(uid_of(*w), www, "worker {w} does not run as www-data");
    }

    let url = format!("http://127.0.0.1/pcisock-{}.bin", std::process::id());
    let cenv = svc.env(&f, "curl", 80);
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    for i in 0..4 {
        let mut c = check(
            Proc::spawn(
                &format!("curl{i}"),
                command(
                    &curl,
                    &[
                        "-sS",
                        "-f",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{size_download}",
                        &url,
                    ],
                    Some(&cenv),
                ),
                f.dir(),
            ),
            &[],
        );
        check(c.wait_success(Duration::from_secs(60)), &[&c]);
        assert_eq!(
            c.stdout().trim(),
            (16 * MIB).to_string(),
            "curl{i} got a short file"
        );
    }
    let delta = lo.delta().unwrap();
    drop(lo);
    assert!(
        delta.tx_bytes < QUIET,
        "{} bytes crossed lo while curl fetched 64 MiB from nginx: not the NTB path",
        delta.tx_bytes
    );
    // wrk: keep-alive connections to the index page, every request answered.
    let wenv = svc.env(&f, "wrk", 80);
    let mut w = check(
        Proc::spawn(
            "wrk",
            command(
                &wrk,
                &["-c", "16", "-t", "2", "-d", "2s", "http://127.0.0.1/"],
                Some(&wenv),
            ),
            f.dir(),
        ),
        &[],
    );
    check(w.wait_success(Duration::from_secs(30)), &[&w]);
    let out = w.stdout();
    assert!(!out.contains("Socket errors"), "wrk saw errors:\n{out}");
    assert!(!out.contains("Non-2xx"), "wrk saw errors:\n{out}");
    assert!(svc.count("paired") >= 4 + 16, "{:?}", svc.status());
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

/// While a root server and a `nobody` client stream, a third user looks everywhere it can
/// (shared memory, temporary and runtime directories, every process's descriptors it may
/// open) for the payload: it finds none. Only the two processes map their connection.
#[test]
fn a_third_user_finds_none_of_the_payload() {
    let f = Fixture::new("hm_third_user");
    let svc = Service::start(&f);
    let (mut server, mut client, marker, _) = paced_pair(&f, &svc, "nobody", 48 * MIB, "0.004");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        client.is_running(),
        "the stream ended before the search: {}",
        client.describe()
    );
    let search = r#"
import os, sys
marker = sys.argv[1].encode()
found = []
def look(path):
    try:
        with open(path, "rb") as fh:
            while True:
                b = fh.read(1 << 20)
                if not b:
                    return
                if marker in b:
                    found.append(path)
                    return
    except Exception:
        pass
for top in ["/dev/shm", "/tmp", "/run", "/var/tmp"]:
    for root, dirs, files in os.walk(top):
        for n in files:
            look(os.path.join(root, n))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                look(f"/proc/{pid}/fd/{fd}")
        except Exception:
            pass
print("found", len(found), found[:5], flush=True)
"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid=backup",
            "--regid=backup",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            search,
        ])
        .arg(&marker)
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the search failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("found 0 "),
        "a third user read the payload: {text}"
    );
    check(
        client.wait_success(Duration::from_secs(60)),
        &[&client, &server],
    );
    check(server.wait_success(Duration::from_secs(20)), &[&server]);
}

/// The service is killed in the middle of a stream and started again: the stream is not on
/// its path and completes, byte for byte, on the NTB path; new connections meet through the
/// new service. Which path carried the stream is read from the kernel's counters of its own
/// TCP socket (`ss -ti` every 100 ms, by its 4-tuple), not from lo, which every other process
/// on the machine shares.
#[test]
fn a_service_restart_loses_no_connection() {
    let f = Fixture::new("hm_restart");
    let mut svc = Service::start(&f);
    let (mut server, mut client, _, port) = paced_pair(&f, &svc, "root", 32 * MIB, "0.004");
    let watch = SocketWatch::start(port);
    std::thread::sleep(Duration::from_millis(500));
    assert!(client.is_running(), "the stream ended before the restart");
    let _ = svc.proc.terminate();
    svc.restart(&f);
    let restarted = Instant::now();
    check(
        client.wait_success(Duration::from_secs(60)),
        &[&client, &server],
    );
    check(server.wait_success(Duration::from_secs(20)), &[&server]);
    let samples = watch.stop();
    // The server accepts one connection on the port: the stream's. It must have been watched
    // after the restart, and carried (nearly) nothing on TCP over its whole life: 32 MiB would
    // have crossed it had the stream left the NTB path.
    let after = samples
        .iter()
        .filter(|(at, socks)| *at > restarted && !socks.is_empty())
        .count();
    let most = samples
        .iter()
        .flat_map(|(_, socks)| socks.iter())
        .max_by_key(|s| s.bytes_received);
    assert!(
        after >= 3,
        "the stream's socket was seen in {after} samples after the restart: too few to tell its path"
    );
    eprintln!(
        "the stream's socket, most received on TCP: {most:?} ({after} samples after the restart)"
    );
    if let Some(s) = most {
        assert!(
            s.bytes_received < QUIET,
            "{} bytes crossed the stream's TCP socket ({} -> {}): it left the NTB path",
            s.bytes_received,
            s.peer,
            s.local
        );
    }
    // The new service pairs new connections.
    transfer(&f, &svc, "plain", "root", &["root"], 4 * MIB);
    assert_eq!(svc.count("paired"), 1);
}

/// Through the service a non-blocking accept (an event loop's) does not wait for the service's
/// answer: the connection completes at its first use. With the service stopped (SIGSTOP), the
/// server's `accept4` still returns (before, it waited for the answer until its request timed
/// out, 5 s, and then stayed on TCP); once the service runs again, the bytes go over NTB.
#[test]
fn an_accept_returns_without_waiting_for_the_service() {
    let f = Fixture::new("hm_accept_nowait");
    let svc = Service::start(&f);
    let prog = py(&f);
    let prog_s = prog.display().to_string();
    let port = free_port();
    let port_s = port.to_string();
    let marker = marker_of(&f);
    let go = f.dir().join("go");
    let go_s = go.display().to_string();
    let senv = svc.env(&f, "server", port).marked(&marker);
    let mut server = check(
        Proc::spawn(
            "server",
            command(
                "/usr/bin/python3",
                &[&prog_s, "server", &port_s, "announce", "1", &go_s],
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
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    // The client connects (its offer is in the service) and waits for its answer, longer than
    // the service will be stopped.
    let mut cenv = svc.env(&f, "client0", port).marked(&marker);
    cenv.extra
        .push(("PCISOCK_ANSWER_TIMEOUT_MS".into(), "30000".into()));
    let bytes = 4 * MIB;
    let bytes_s = bytes.to_string();
    let mut client = check(
        Proc::spawn(
            "client0",
            command(
                "/usr/bin/python3",
                &[&prog_s, "client", &port_s, &bytes_s],
                Some(&cenv),
            ),
            f.dir(),
        ),
        &[&server],
    );
    // Connected in the kernel: a connection to the port is in its backlog.
    let established = format!(":{port:04X} 01 ");
    let t0 = Instant::now();
    while !fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().any(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|r| r.ends_with(&format!(":{port:04X}")))
                && l.contains(" 01 ")
        })
    }) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the client never connected ({established})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    /// Lets the service run again however the test ends.
    struct Stopped(u32);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-CONT", &self.0.to_string()])
                .status();
        }
    }
    let svc_pid = svc.proc.pid();
    let stopped = Stopped(svc_pid);
    assert!(Command::new("kill")
        .args(["-STOP", &svc_pid.to_string()])
        .status()
        .unwrap()
        .success());
    fs::write(&go, b"").unwrap();
    let accepted = server.wait_stdout(Duration::from_secs(3), |o| o.contains("accepted"));
    drop(stopped);
    check(accepted, &[&server, &client]);
    check(
        client.wait_success(Duration::from_secs(60)),
        &[&client, &server],
    );
    check(server.wait_success(Duration::from_secs(20)), &[&server]);
    let delta = lo.delta().unwrap();
    drop(lo);
    assert!(
        delta.tx_bytes < QUIET,
        "{} bytes crossed lo: not the NTB path",
        delta.tx_bytes
    );
    let st = Stats::load(&f.dir().join("client0.stats.json")).unwrap();
    assert!(
        st.ntb_tx_bytes >= bytes,
        "{} bytes over NTB",
        st.ntb_tx_bytes
    );
}

/// The server's established TCP sockets on a port, sampled every 100 ms on a thread of its own
/// until [`SocketWatch::stop`] (the kernel's own counters of those sockets).
struct SocketWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Vec<TcpSocket>)>>,
}

impl SocketWatch {
    fn start(port: u16) -> SocketWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((Instant::now(), tcp_sockets(port)));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        SocketWatch { stop, thread }
    }

    fn stop(self) -> Vec<(Instant, Vec<TcpSocket>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the socket watch panicked")
    }
}

/// A network namespace of the test's own with lo up; removed on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let n = format!("pcisock-{name}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &n]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &n])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {n}");
        let ok = Command::new("ip")
            .args(["netns", "exec", &n, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(ok.success());
        Netns(n)
    }

    fn lo_tx(&self) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "cat",
                "/sys/class/net/lo/statistics/tx_bytes",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Two namespaces on one host, the same addresses and ports in both, at the same moment
/// (identical 4-tuples): each connection pairs within its own namespace (the service keys
/// every rendezvous by the namespace's cookie), each server reads only its own client's bytes,
/// and neither namespace's lo carries them.
#[test]
fn two_namespaces_with_identical_four_tuples_never_meet() {
    let f = Fixture::new("hm_netns");
    let svc = Service::start(&f);
    let prog_s = py(&f).display().to_string();
    let (port, src) = (7301u16, 7302u16);
    let (port_s, src_s) = (port.to_string(), src.to_string());
    let spaces = [Netns::new("hm-a"), Netns::new("hm-b")];
    let before: Vec<u64> = spaces.iter().map(Netns::lo_tx).collect();
    let mut servers = Vec::new();
    for (i, ns) in spaces.iter().enumerate() {
        let env = svc
            .env(&f, &format!("server{i}"), port)
            .marked(&format!("{}{i}", marker_of(&f)));
        let mut p = check(
            Proc::spawn(
                &format!("server{i}"),
                command(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns.0,
                        "/usr/bin/python3",
                        &prog_s,
                        "server",
                        &port_s,
                        "late",
                        "1",
                    ],
                    Some(&env),
                ),
                f.dir(),
            ),
            &[],
        );
        check(
            p.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
            &[&p],
        );
        servers.push(p);
    }
    let mut clients = Vec::new();
    for (i, ns) in spaces.iter().enumerate() {
        let env = svc
            .env(&f, &format!("client{i}"), port)
            .marked(&format!("{}{i}", marker_of(&f)));
        clients.push(check(
            Proc::spawn(
                &format!("client{i}"),
                command(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns.0,
                        "/usr/bin/python3",
                        &prog_s,
                        "client",
                        &port_s,
                        &(16 * MIB).to_string(),
                        &src_s,
                        "0.001",
                    ],
                    Some(&env),
                ),
                f.dir(),
            ),
            &[],
        ));
    }
    for (c, s) in clients.iter_mut().zip(servers.iter_mut()) {
        check(c.wait_success(Duration::from_secs(60)), &[c, s]);
        check(s.wait_success(Duration::from_secs(20)), &[s]);
    }
    for (ns, b) in spaces.iter().zip(before) {
        let d = ns.lo_tx() - b;
        assert!(
            d < QUIET,
            "{}: {d} bytes crossed its lo: not the NTB path",
            ns.0
        );
    }
    assert_eq!(svc.count("paired"), 2);
}

/// A hundred clients killed with SIGKILL in the middle of their connections: their server
/// reads their ends, and within 15 s the service holds nothing of them.
#[test]
fn a_hundred_killed_peers_leave_nothing_behind() {
    let f = Fixture::new("hm_killed");
    let svc = Service::start(&f);
    let prog_s = py(&f).display().to_string();
    let port = free_port();
    let port_s = port.to_string();
    let marker = marker_of(&f);
    let senv = svc.env(&f, "server", port).marked(&marker);
    let mut server = check(
        Proc::spawn(
            "server",
            command(
                "/usr/bin/python3",
                &[&prog_s, "server", &port_s, "hold", "0"],
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
    let clients = r#"
import os, socket, sys, time
port = int(sys.argv[1])
marker = os.environ["HM_MARKER"].encode()
kids = []
for _ in range(100):
    pid = os.fork()
    if pid == 0:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(marker * 100)
        time.sleep(120)
        os._exit(0)
    kids.append(pid)
print("connected", flush=True)
time.sleep(120)
"#;
    let cenv = svc.env(&f, "clients", port).marked(&marker);
    let mut c = check(
        Proc::spawn(
            "clients",
            command("/usr/bin/python3", &["-c", clients, &port_s], Some(&cenv)),
            f.dir(),
        ),
        &[&server],
    );
    check(
        c.wait_stdout(Duration::from_secs(30), |o| o.contains("connected")),
        &[&c, &server],
    );
    let t0 = Instant::now();
    while svc.count("connections") < 100 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        svc.count("connections"),
        100,
        "not every client is on the NTB path"
    );
    // SIGKILL the whole group of client processes.
    let kids = iperf_tests::apps::descendants(c.pid());
    for (pid, _) in &kids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let _ = c.terminate();
    let t0 = Instant::now();
    while svc.count("connections") > 0 && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        svc.count("connections"),
        0,
        "connections of killed peers left behind"
    );
    assert_eq!(
        svc.count("space"),
        0,
        "window space of killed peers left behind"
    );
    let _ = server.terminate();
}

/// The namespace is part of every key: a pcisock client in namespace B (whose own server is a
/// plain one) and a plain client in namespace A connect with the same 4-tuple, at the same
/// moment, to ports where only A's server runs under pcisock. A's server must not be paired
/// with B's client: it reads exactly its own plain client's bytes, over TCP, and B's client
/// carries its bytes to its own server.
#[test]
fn a_namespace_cannot_reach_another_namespaces_listener() {
    let f = Fixture::new("hm_netns_apart");
    let svc = Service::start(&f);
    let prog_s = py(&f).display().to_string();
    let (port, src) = (7311u16, 7312u16);
    let (port_s, src_s) = (port.to_string(), src.to_string());
    let (a, b) = (Netns::new("hm-apart-a"), Netns::new("hm-apart-b"));
    let ma = format!("{}A", marker_of(&f));
    let mb = format!("{}B", marker_of(&f));
    let in_ns = |ns: &Netns, args: &[&str]| {
        let mut v = vec![
            "netns",
            "exec",
            ns.0.as_str(),
            "/usr/bin/python3",
            prog_s.as_str(),
        ];
        v.extend_from_slice(args);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let spawn = |name: &str, args: Vec<String>, env: Option<&PreloadEnv>, marker: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = command("ip", &args, env);
        cmd.env("HM_MARKER", marker);
        check(Proc::spawn(name, cmd, f.dir()), &[])
    };
    // A: a pcisock server that accepts late; B: a plain server.
    let aenv = svc.env(&f, "server_a", port).with_strict(false).marked(&ma);
    let mut sa = spawn(
        "server_a",
        in_ns(&a, &["server", &port_s, "late", "1"]),
        Some(&aenv),
        &ma,
    );
    let mut sb = spawn(
        "server_b",
        in_ns(&b, &["server", &port_s, "plain", "1"]),
        None,
        &mb,
    );
    for s in [&mut sa, &mut sb] {
        check(
            s.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
            &[],
        );
    }
    // B: a pcisock client (not strict); A: a plain client. Same 4-tuple.
    let benv = svc.env(&f, "client_b", port).with_strict(false).marked(&mb);
    let n = (4 * MIB).to_string();
    let mut cb = spawn(
        "client_b",
        in_ns(&b, &["client", &port_s, &n, &src_s, "0.001"]),
        Some(&benv),
        &mb,
    );
    let mut ca = spawn(
        "client_a",
        in_ns(&a, &["client", &port_s, &n, &src_s, "0.001"]),
        None,
        &ma,
    );
    for (c, s) in [(&mut ca, &mut sa), (&mut cb, &mut sb)] {
        check(c.wait_success(Duration::from_secs(60)), &[c, s]);
        check(s.wait_success(Duration::from_secs(20)), &[s]);
    }
    assert_eq!(
        svc.count("paired"),
        0,
        "a connection was paired across namespaces"
    );
    // Both fallbacks are in the service's host-wide history, with the kernel's addresses
    // (each process in its own namespace) and the exact reasons: B's client found no
    // listener in its namespace, A's server found no offer for its plain client.
    let cli = iperf_tests::Lib::cli().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(cli)
        .arg("stats")
        .env("PCISOCK_FABRIC", &svc.socket)
        .output()
        .expect("pcisock stats");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |side: &str, reason: &str| {
        text.lines().any(|l| {
            l.contains(&format!(" {side} "))
                && l.contains(&format!(":{src} "))
                && l.contains(&format!(":{port} "))
                && l.ends_with(reason)
        })
    };
    assert!(
        text.contains("recent fallbacks to TCP") && line("client", "NoListener"),
        "client B's fallback is not in the history:\n{text}"
    );
    assert!(
        line("server", "NoOffer"),
        "server A's fallback is not in the history:\n{text}"
    );
}

/// A server that works through a long backlog (one accept every 100 ms) reaches its last
/// clients long after their answer timeout (300 ms here): they wait on while their listener
/// keeps accepting, and every one of the 15 connections goes over NTB (strict: a fallback
/// would fail the client).
#[test]
fn clients_in_a_long_backlog_wait_for_their_server() {
    const SERVER: &str = r#"
import socket, sys, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(64); print("listening", flush=True)
for _ in range(int(sys.argv[2])):
    time.sleep(0.1)
    c, _ = l.accept()
    b = b""
    while len(b) < 5:
        b += c.recv(5 - len(b))
    c.sendall(b"ok" + b)
    c.close()
"#;
    const CLIENTS: &str = r#"
import socket, sys, threading
port, n, bad = int(sys.argv[1]), int(sys.argv[2]), []
def one(i):
    try:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"%05d" % i)
        b = b""
        while len(b) < 7:
            r = s.recv(7 - len(b))
            if not r:
                break
            b += r
        if b != b"ok%05d" % i:
            bad.append((i, b))
        s.close()
    except OSError as e:
        bad.append((i, e))
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
print("bad", bad, flush=True)
sys.exit(1 if bad else 0)
"#;
    let f = Fixture::new("hm_backlog");
    let svc = Service::start(&f);
    let port = free_port();
    let (port_s, n) = (port.to_string(), "15");
    let py = |name: &str, code: &str, env: &PreloadEnv| {
        let mut e = env.clone();
        e.extra
            .push(("PCISOCK_ANSWER_TIMEOUT_MS".into(), "300".into()));
        check(
            Proc::spawn(
                name,
                command("/usr/bin/python3", &["-c", code, &port_s, n], Some(&e)),
                f.dir(),
            ),
            &[],
        )
    };
    let senv = svc.env(&f, "server", port);
    let mut s = py("server", SERVER, &senv);
    check(
        s.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&s],
    );
    let cenv = svc.env(&f, "clients", port);
    let mut c = py("clients", CLIENTS, &cenv);
    check(c.wait_success(Duration::from_secs(60)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(20)), &[&s]);
    let stats = cenv.stats().unwrap_or_else(|e| panic!("client stats: {e}"));
    let ntb = stats.on_port(port).filter(|c| c.path == "ntb").count();
    assert_eq!(ntb, 15, "client connections on NTB ({stats:?})");
}

/// Two network namespaces joined by a veth pair act as two hosts over the emulated two-host
/// link (each namespace one side of the device): a client in one sends 16 MiB to a server in
/// the other, both strict, the server checks the bytes' SHA-256, and the veth between them
/// carries only the TCP handshakes while the payload crosses the emulated NTB link.
#[test]
fn two_namespaces_joined_by_a_veth_are_two_hosts() {
    let r = two_hosts("hm_two_hosts", 16 * MIB, None);
    assert!(
        r.carried < QUIET,
        "the veth carried {} bytes while 16 MiB crossed: the payload went over TCP",
        r.carried
    );
    for st in [&r.client, &r.server] {
        assert_eq!(
            st.on_port(r.port).filter(|c| c.path == "ntb").count(),
            1,
            "{st:?}"
        );
    }
}

/// Failover between two emulated hosts: a link-down of 1 s in the middle of a sha-256-checked
/// transfer moves it onto the veth (the network between the namespaces: its counters are the
/// kernel's evidence) and back, with every byte intact.
#[test]
fn a_link_down_between_two_hosts_moves_the_stream_to_the_network_and_back() {
    let r = two_hosts(
        "hm_two_hosts_failover",
        3 << 30,
        Some((Duration::from_millis(300), Duration::from_secs(1))),
    );
    assert!(
        r.during > 8 * MIB,
        "the veth carried only {} bytes during the outage: the stream stalled",
        r.during
    );
    let c = r
        .client
        .on_port(r.port)
        .max_by_key(|c| c.tx_bytes)
        .unwrap_or_else(|| panic!("{:?}", r.client));
    assert!(
        c.failovers >= 1 && c.failbacks >= 1 && c.failover_tx_bytes > 0 && c.tx_bytes > 0,
        "{c:?}"
    );
}

/// What [`two_hosts`] saw.
struct TwoHosts {
    port: u16,
    /// Bytes on the veth from the client's start to its end, and during the injected outage.
    carried: u64,
    during: u64,
    client: iperf_tests::Stats,
    server: iperf_tests::Stats,
}

/// Two namespaces joined by a veth, one side each of a two-host device: a client in the first
/// sends `n` bytes to a server in the second, which answers with their count and sha-256 (the
/// client exits 0 only if they match). With `fault` = (after, for), the link is held down
/// from `after` the client's start for `for` (the processes are then not strict: they fail
/// over).
fn two_hosts(name: &str, n: u64, fault: Option<(Duration, Duration)>) -> TwoHosts {
    const SERVER: &str = r#"
import hashlib, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[2], int(sys.argv[1]))); l.listen(4); print("listening", flush=True)
c, _ = l.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
c.sendall(("%d %s" % (n, h.hexdigest())).encode()); c.close()
"#;
    const CLIENT: &str = r#"
import hashlib, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
block = bytes((i * 7 + 3) % 251 for i in range(1 << 20)); h = hashlib.sha256()
s = socket.create_connection(("10.199.0.2", port))
for _ in range(n >> 20):
    s.sendall(block); h.update(block)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(256)
    if not b:
        break
    got += b
want = "%d %s" % (n, h.hexdigest())
print("server says", got.decode(), flush=True)
sys.exit(0 if got.decode() == want else 1)
"#;

    let f = Fixture::new(name);
    // Names of their own: the two tests that use this run at once in one process.
    let (a, b) = (
        Netns::new(&format!("{name}-a")),
        Netns::new(&format!("{name}-b")),
    );
    let tag = std::process::id() % 10_000 * 10 + name.len() as u32 % 10;
    let (va, vb) = (format!("pca{tag}"), format!("pcb{tag}"));
    let ip = |args: &[&str]| {
        let ok = Command::new("ip").args(args).status().unwrap();
        assert!(ok.success(), "ip {args:?}");
    };
    ip(&[
        "link", "add", &va, "netns", &a.0, "type", "veth", "peer", "name", &vb, "netns", &b.0,
    ]);
    for (ns, dev, addr) in [(&a, &va, "10.199.0.1/24"), (&b, &vb, "10.199.0.2/24")] {
        ip(&["-n", &ns.0, "addr", "add", addr, "dev", dev]);
        ip(&["-n", &ns.0, "link", "set", dev, "up"]);
    }
    let veth_bytes = || -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &a.0, "cat"])
            .arg(format!("/sys/class/net/{va}/statistics/tx_bytes"))
            .arg(format!("/sys/class/net/{va}/statistics/rx_bytes"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|w| w.parse::<u64>().unwrap())
            .sum()
    };
    let port = free_port();
    let port_s = port.to_string();
    let n = n.to_string();
    let side = |role: &str, host: &str| {
        let mut e = f
            .preload(role)
            .with_ports(port_s.clone())
            .with_strict(fault.is_none());
        e.extra
            .push(("PCISOCK_EMU_TOPOLOGY".into(), "two-host".into()));
        e.extra.push(("PCISOCK_EMU_HOST".into(), host.into()));
        e
    };
    let in_ns = |name: &str, ns: &Netns, code: &str, args: &[&str], env: &PreloadEnv| {
        let mut v = vec![
            "netns",
            "exec",
            ns.0.as_str(),
            "/usr/bin/python3",
            "-c",
            code,
        ];
        v.extend_from_slice(args);
        check(
            Proc::spawn(name, command("ip", &v, Some(env)), f.dir()),
            &[],
        )
    };
    // Host A has a pcisock process before the server starts (its link side is up), as on two
    // machines in service: a listener published while the link is down reaches the peer only
    // once the link comes up, by a thread, so a client racing the link's first coming up
    // could miss it.
    let other = free_port().to_string();
    let mut penv = side("presence", "0");
    penv = penv.with_ports(format!("{port_s},{other}"));
    let mut presence = in_ns("presence", &a, SERVER, &[&other, "10.199.0.1"], &penv);
    check(
        presence.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&presence],
    );
    let senv = side("server", "1");
    let mut s = in_ns("server", &b, SERVER, &[&port_s, "10.199.0.2"], &senv);
    check(
        s.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&s],
    );
    let before = veth_bytes();
    let cenv = side("client", "0");
    let mut c = in_ns("client", &a, CLIENT, &[&port_s, &n], &cenv);
    let mut during = 0;
    if let Some((after, hold)) = fault {
        let emu = |args: &[&str]| {
            let out = Command::new(iperf_tests::Lib::cli().unwrap())
                .args(args)
                .env("PCISOCK_EMU_DIR", f.emu_dir())
                .env("PCISOCK_EMU_TOPOLOGY", "two-host")
                .output()
                .unwrap();
            assert!(out.status.success(), "pcisock {args:?}");
        };
        std::thread::sleep(after);
        let t = veth_bytes();
        emu(&["emu", "fault", "link-down"]);
        std::thread::sleep(hold);
        during = veth_bytes() - t;
        emu(&["emu", "clear"]);
    }
    check(c.wait_success(Duration::from_secs(60)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(20)), &[&s]);
    let _ = presence.terminate();
    let stats = |e: &PreloadEnv| e.stats().unwrap_or_else(|e| panic!("stats: {e}"));
    TwoHosts {
        port,
        carried: veth_bytes() - before,
        during,
        client: stats(&cenv),
        server: stats(&senv),
    }
}
