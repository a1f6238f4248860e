//! The host model (docs/HOST-SERVICE.md): processes of any user and any shape meet through the
//! host fabric service, each getting its own connections' memory only. Every check proves the
//! path with the kernel's loopback counters (a quiet lo while megabytes moved) besides
//! pcisock's own statistics.
//!
//! Each test runs its own service on a private socket under /run (`PCISOCK_FABRIC=PATH`), so
//! tests do not share state with each other or with a system service on the machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use iperf_tests::{
    check, command, free_port, Fixture, LoExpect, LoWindow, PreloadEnv, Proc, Stats,
};

const MIB: u64 = 1 << 20;
/// At most this much may cross lo while a test moves its payload over the NTB path (the TCP
/// handshakes and closes of a few connections).
const QUIET: u64 = 256 << 10;

/// A fabric service of the test's own.
struct Service {
    proc: Proc,
    socket: PathBuf,
    dir: PathBuf,
}

impl Service {
    fn start(f: &Fixture) -> Service {
        let dir = PathBuf::from(format!(
            "/run/pcisock-test-{}-{}",
            std::process::id(),
            f.name
        ));
        let _ = fs::remove_dir_all(&dir);
        let socket = dir.join("fabric.sock");
        let cli = iperf_tests::Lib::cli().unwrap_or_else(|e| panic!("{e}"));
        let sock_s = socket.display().to_string();
        let proc = check(
            Proc::spawn(
                "fabric",
                command(
                    &cli,
                    &["fabric", "start", "--foreground", "--socket", &sock_s],
                    None,
                ),
                f.dir(),
            ),
            &[],
        );
        let svc = Service { proc, socket, dir };
        let t0 = Instant::now();
        while svc.status().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the service did not answer: {}",
                svc.proc.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        svc
    }

    /// `pcisock fabric status` as (name, value) pairs.
    fn status(&self) -> Result<Vec<(String, u64)>, String> {
        let cli = iperf_tests::Lib::cli()?;
        let out = Command::new(cli)
            .args(["fabric", "status", "--socket"])
            .arg(&self.socket)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut pairs = Vec::new();
        for w in words.windows(2) {
            if let Ok(n) = w[1].parse() {
                pairs.push((w[0].to_string(), n));
            }
        }
        Ok(pairs)
    }

    fn count(&self, name: &str) -> u64 {
        let st = self.status().unwrap_or_else(|e| panic!("status: {e}"));
        st.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {st:?}"))
    }

    /// The env of a preloaded process using this service, writing its stats file into the
    /// fixture's directory (opened to every user by [`py`]).
    fn env(&self, f: &Fixture, role: &str, port: u16) -> PreloadEnv {
        let mut e = f.preload(role).with_ports(port.to_string());
        e.stats_file = f.dir().join(format!("{role}.stats.json"));
        e.extra
            .push(("PCISOCK_FABRIC".into(), self.socket.display().to_string()));
        e
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.proc.terminate();
        let _ = fs::remove_dir_all(&self.dir);
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
import os, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "client":
    n, marker = int(sys.argv[3]), sys.argv[4].encode()
    s = socket.create_connection(("127.0.0.1", port))
    chunk = marker * (65536 // len(marker))
    sent = 0
    while sent < n:
        sent += s.send(chunk[: n - sent])
    s.shutdown(socket.SHUT_WR)
    assert s.recv(16) == b"ok", "no ok from the server"
    print("sent", sent, flush=True)
    sys.exit(0)

shape, conns, marker = sys.argv[3], int(sys.argv[4]), sys.argv[5].encode()
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port))
l.listen(64)

def serve():
    for _ in range(conns):
        c, _ = l.accept()
        got, rest = 0, b""
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            got += len(b)
            rest = (rest + b)[-len(marker):]
        c.sendall(b"ok")
        c.close()
        print("got", got, flush=True)

if shape == "plain":
    print("listening", flush=True)
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
    serve()
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

/// `cmd` run as `user` (root runs it as is).
fn as_user(user: &str, program: &str, args: &[&str], env: &PreloadEnv) -> Command {
    let mut full: Vec<String> = Vec::new();
    if user != "root" {
        full.extend([
            format!("--reuid={user}"),
            format!("--regid={}", group_of(user)),
            "--clear-groups".into(),
            program.into(),
        ]);
    }
    full.extend(args.iter().map(|s| s.to_string()));
    let prog = if user == "root" { program } else { "setpriv" };
    let args: Vec<&str> = full.iter().map(String::as_str).collect();
    command(prog, &args, Some(env))
}

fn group_of(user: &str) -> String {
    let out = Command::new("id").args(["-gn", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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
    let marker = format!("pcisock-{}-{}", f.name, std::process::id());
    let n_s = clients.len().to_string();
    let senv = svc.env(f, "server", port);
    let mut server = check(
        Proc::spawn(
            "server",
            as_user(
                server_user,
                "/usr/bin/python3",
                &[&prog_s, "server", &port_s, shape, &n_s, &marker],
                &senv,
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
        let cenv = svc.env(f, &format!("client{i}"), port);
        let mut c = check(
            Proc::spawn(
                &format!("client{i}"),
                as_user(
                    user,
                    "/usr/bin/python3",
                    &[&prog_s, "client", &port_s, &bytes_s, &marker],
                    &cenv,
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
