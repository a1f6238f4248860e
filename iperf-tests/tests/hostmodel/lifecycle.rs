//! What dies and what waits: SIGKILLed peers leave nothing behind; a long backlog's clients wait.

use super::*;

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
