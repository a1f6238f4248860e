//! The application matrix: real Debian servers and clients under `LD_PRELOAD=libpcisock.so` on a flagged port
//! (`PCISOCK_PORTS`, strict), each bounded in time. Each test proves the fast path carried the bytes with the
//! application's own result (benchmark summary, SHA-256 of a download, echo compare), the clients' stats files
//! (connections on path `ntb`, NTB byte counts covering the payload), the servers' stats files, and the loopback
//! counters (lo carried less than 5% of the payload + 64 KiB).
//!
//! nginx (master + workers) writes one stats file per process (`PCISOCK_STATS_FILE=DIR/`), so the workers'
//! NTB bytes are checked too. socat's child per connection still shares one `PCISOCK_STATS_FILE`, which each
//! process rewrites at every close and at exit (the totals of whichever process wrote last): for it the server-side
//! check is only "no flagged connection fell back to TCP", and the byte proof is the client's file and lo.
//!
//! A missing binary fails the test with the Debian package to install (scripts/setup.sh).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use iperf_tests::apps::{
    interrupt, number_after, redis_server_args, require_bin, sha256, version_line, wait_stats,
    write_payload, ProcTree,
};
use iperf_tests::*;

const MIB: u64 = 1024 * 1024;
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Collects failed signals and panics with all of them and the processes' logs.
struct Verdict {
    name: &'static str,
    errors: Vec<String>,
}

impl Verdict {
    fn new(name: &'static str) -> Verdict {
        Verdict {
            name,
            errors: Vec::new(),
        }
    }

    fn push(&mut self, what: &str, r: Result<(), String>) {
        if let Err(e) = r {
            self.errors.push(format!("{what}: {e}"));
        }
    }

    fn finish(self, f: &Fixture, procs: &[&Proc]) {
        if self.errors.is_empty() {
            return;
        }
        let mut msg = format!("{} (logs in {}):", self.name, f.dir().display());
        for e in &self.errors {
            msg.push_str("\n- ");
            msg.push_str(&clip(e, 3000));
        }
        check::<()>(Err(msg), procs);
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} more bytes)", &s[..end], s.len() - end)
}

fn spawn(name: &str, program: &Path, args: &[&str], env: &PreloadEnv, dir: &Path) -> Proc {
    check(
        Proc::spawn(name, command(program, args, Some(env)), dir),
        &[],
    )
}

/// Runs a client to a successful exit within `timeout`.
fn run_client(
    name: &str,
    program: &Path,
    args: &[&str],
    env: &PreloadEnv,
    dir: &Path,
    timeout: Duration,
) -> (Proc, Result<(), String>) {
    let mut p = spawn(name, program, args, env, dir);
    let r = p.wait_success(timeout);
    if r.is_err() {
        let _ = p.terminate();
    }
    (p, r.map_err(|e| first_line(&e).to_owned()))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// The number before `marker` in `text` (e.g. "12345 requests in").
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let i = text.find(marker)?;
    text[..i].split_whitespace().last()?.parse().ok()
}

#[test]
fn redis_benchmark_set_get() {
    let server_bin = require_bin("redis-server", "redis-server");
    let bench_bin = require_bin("redis-benchmark", "redis-tools");
    eprintln!("{}", version_line(&server_bin, &["--version"]));
    let f = Fixture::new("app_redis");
    let port = free_port();
    let port_s = port.to_string();
    let senv = f.preload("redis-server").with_ports(&*port_s);
    let cenv = f.preload("redis-benchmark").with_ports(&*port_s);
    let dir = f.dir().display().to_string();
    let mut server = spawn(
        "redis-server",
        &server_bin,
        &redis_server_args(&port_s, &dir),
        &senv,
        f.dir(),
    );
    check(server.wait_listening(port, LISTEN_TIMEOUT), &[]);
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let (bench, r) = run_client(
        "redis-benchmark",
        &bench_bin,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port_s,
            "-t",
            "set,get",
            "-n",
            "20000",
            "-q",
        ],
        &cenv,
        f.dir(),
        CLIENT_TIMEOUT,
    );
    let delta = lo.delta().unwrap();
    drop(lo);
    let _ = server.terminate();

    let mut v = Verdict::new("redis_benchmark_set_get");
    v.push("redis-benchmark", r);
    let out = bench.stdout();
    for t in ["SET:", "GET:"] {
        if !out.contains(t) || !out.contains("requests per second") {
            v.errors.push(format!(
                "redis-benchmark printed no `{t} … requests per second` line"
            ));
        }
    }
    // 20,000 SETs (45-byte commands) and 20,000 GETs (36 bytes): at least 1,000,000 bytes of requests; replies of
    // 5 (+OK) and 9 bytes: at least 200,000. 50 client connections (plus redis-benchmark's CONFIG probe).
    let (req, rep) = (1_000_000, 200_000);
    if v.errors.is_empty() {
        v.push("lo", delta.check_fast_path(req + rep));
    }
    v.push(
        "redis-benchmark stats",
        cenv.stats().and_then(|s| s.check_ntb(port, 50, req, rep)),
    );
    v.push(
        "redis-server stats",
        senv.stats().and_then(|s| s.check_ntb(port, 50, rep, req)),
    );
    v.finish(&f, &[&server, &bench]);
}

/// redis after redis-benchmark's 50 clients have gone: the server sleeps (CPU ticks over an idle window), and its
/// clients were all on NTB.
#[test]
fn redis_idle_after_benchmark() {
    let server_bin = require_bin("redis-server", "redis-server");
    let bench_bin = require_bin("redis-benchmark", "redis-tools");
    let f = Fixture::new("app_redis_idle");
    let port = free_port();
    let port_s = port.to_string();
    let senv = f.preload("redis-server").with_ports(&*port_s);
    let cenv = f.preload("redis-benchmark").with_ports(&*port_s);
    let dir = f.dir().display().to_string();
    let mut server = spawn(
        "redis-server",
        &server_bin,
        &redis_server_args(&port_s, &dir),
        &senv,
        f.dir(),
    );
    check(server.wait_listening(port, LISTEN_TIMEOUT), &[]);
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let (bench, r) = run_client(
        "redis-benchmark",
        &bench_bin,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port_s,
            "-t",
            "set,get",
            "-n",
            "20000",
            "-q",
        ],
        &cenv,
        f.dir(),
        CLIENT_TIMEOUT,
    );
    let delta = lo.delta().unwrap();
    drop(lo);
    let mut v = Verdict::new("redis_idle_after_benchmark");
    let ok = r.is_ok();
    v.push("redis-benchmark", r);
    if ok {
        v.push("lo", delta.check_fast_path(1_200_000));
    }
    v.push(
        "redis-benchmark stats",
        cenv.stats()
            .and_then(|s| s.check_ntb(port, 50, 1_000_000, 200_000)),
    );
    match IdleCpu::measure(&[server.pid()], IDLE_WINDOW) {
        Ok(idle) => {
            eprintln!("redis after redis-benchmark: {idle}");
            v.push("idle redis-server", idle.check(IDLE_MAX_SHARE));
        }
        Err(e) => v.errors.push(format!("idle redis-server: {e}")),
    }
    let _ = server.terminate();
    v.finish(&f, &[&server, &bench]);
}

fn nginx_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "user root;
daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
    }}
}}
"
    )
}

#[test]
fn nginx_sendfile_curl_and_wrk() {
    let nginx = require_bin("nginx", "nginx");
    let curl = require_bin("curl", "curl");
    let wrk = require_bin("wrk", "wrk");
    eprintln!(
        "{} / {} / {}",
        version_line(&nginx, &["-v"]),
        version_line(&curl, &["--version"]),
        version_line(&wrk, &["-v"])
    );
    let f = Fixture::new("app_nginx");
    let port = free_port();
    let port_s = port.to_string();
    let root = f.dir().join("www");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(f.dir().join("tmp")).unwrap();
    let big = root.join("big.bin");
    write_payload(&big, 64 * MIB, 0xb16).unwrap();
    write_payload(&root.join("index.html"), 4096, 1).unwrap();
    let conf = f.dir().join("nginx.conf");
    fs::write(&conf, nginx_conf(f.dir(), port)).unwrap();
    let prefix = format!("{}/", f.dir().display());
    let error_log = f.dir().join("error.log").display().to_string();
    let conf_s = conf.display().to_string();

    // One stats file per nginx process (master and workers).
    let nginx_stats = f.dir().join("nginx-stats");
    fs::create_dir_all(&nginx_stats).unwrap();
    let mut senv = f.preload("nginx").with_ports(&*port_s);
    senv.stats_file = std::path::PathBuf::from(format!("{}/", nginx_stats.display()));
    let curl_env = f.preload("curl").with_ports(&*port_s);
    let wrk_env = f.preload("wrk").with_ports(&*port_s);
    let mut server = ProcTree::new(spawn(
        "nginx",
        &nginx,
        &["-p", &prefix, "-c", &conf_s, "-e", &error_log],
        &senv,
        f.dir(),
    ));
    check(server.proc.wait_listening(port, LISTEN_TIMEOUT), &[]);
    std::thread::sleep(Duration::from_millis(200));
    server.note_descendants();

    let mut v = Verdict::new("nginx_sendfile_curl_and_wrk");
    // curl downloads the 64 MiB file.
    let out = f.dir().join("big.download");
    let url = format!("http://127.0.0.1:{port}/big.bin");
    let out_s = out.display().to_string();
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let (curl_p, r) = run_client(
        "curl",
        &curl,
        &["-sS", "-f", "--max-time", "50", "-o", &out_s, &url],
        &curl_env,
        f.dir(),
        CLIENT_TIMEOUT,
    );
    let delta = lo.delta().unwrap();
    drop(lo);
    let curl_ok = r.is_ok();
    v.push("curl", r);
    if curl_ok {
        let (want, got) = (sha256(&big).unwrap(), sha256(&out));
        v.push(
            "download",
            match got {
                Ok(g) if g == want => Ok(()),
                Ok(g) => Err(format!(
                    "sha256 {g} != {want} ({} bytes)",
                    fs::metadata(&out).map(|m| m.len()).unwrap_or(0)
                )),
                Err(e) => Err(e),
            },
        );
        v.push("lo (curl)", delta.check_fast_path(64 * MIB));
    }
    v.push(
        "curl stats",
        curl_env
            .stats()
            .and_then(|s| s.check_ntb(port, 1, 0, 64 * MIB)),
    );

    // wrk: 2 threads, 10 connections, 3 s on the 4 KiB page.
    server.note_descendants();
    let url = format!("http://127.0.0.1:{port}/index.html");
    let (wrk_p, r) = run_client(
        "wrk",
        &wrk,
        &["-t2", "-c10", "-d3s", &url],
        &wrk_env,
        f.dir(),
        Duration::from_secs(30),
    );
    v.push("wrk", r);
    let wrk_out = wrk_p.stdout();
    let requests = number_before(&wrk_out, "requests in").unwrap_or(0);
    if requests == 0 {
        v.errors
            .push(format!("wrk completed no request: {}", wrk_out.trim()));
    }
    // Over plain TCP wrk reports no socket error on this setup; a "Socket errors:" line means connections broke.
    if let Some(line) = wrk_out.lines().find(|l| l.contains("Socket errors:")) {
        v.errors.push(format!(
            "wrk saw broken connections ({requests} requests): {}",
            line.trim()
        ));
    }
    v.push(
        "wrk stats",
        wrk_env
            .stats()
            .and_then(|s| s.check_ntb(port, 10, 0, requests * 4096)),
    );

    let killed = server.stop();
    if !killed.is_empty() {
        v.errors.push(format!(
            "nginx processes {killed:?} outlived the master's SIGTERM and were killed"
        ));
    }
    // Each nginx process's own file: nothing fell back to TCP, and the workers together sent the
    // download and the pages over NTB.
    v.push(
        "nginx stats (per process)",
        Stats::load_dir(&nginx_stats).and_then(|all| {
            for s in &all {
                s.check_ntb(port, 0, 0, 0)?;
            }
            let tx: u64 = all.iter().map(|s| s.ntb_tx_bytes).sum();
            let want = 64 * MIB + requests * 4096;
            if tx < want {
                return Err(format!(
                    "ntb_tx_bytes over {} nginx processes {tx} < {want}",
                    all.len()
                ));
            }
            Ok(())
        }),
    );
    // Every request was answered when it was ready, not when a timer ran out: the count of late wake-ups in
    // wrk's and the nginx processes' files (see `check_late_wakeups`; lost epoll wake-ups once made this run
    // 780 requests a second with every byte still on NTB).
    v.push(
        "late wake-ups (wrk and nginx)",
        wrk_env.stats().and_then(|w| {
            let all = Stats::load_dir(&nginx_stats)?;
            let procs: Vec<&Stats> = all.iter().chain([&w]).collect();
            let late: Vec<String> = procs
                .iter()
                .map(|s| {
                    format!(
                        "{}[{}] {}/{}",
                        s.program, s.pid, s.late_wakeups, s.wait_timeouts
                    )
                })
                .collect();
            eprintln!(
                "wrk: {requests} requests; late wake-ups / timed-out sleeps: {}",
                late.join(", ")
            );
            stats::check_late_wakeups(&procs, requests, LATE_MAX_SHARE, LATE_SLACK)
        }),
    );
    v.finish(&f, &[&server.proc, &curl_p, &wrk_p]);
}

/// Of a request/response run's requests, the share that may have waited for a timer (a wake-up lost), and a few
/// more for races at the ends of the run (see `stats::check_late_wakeups`).
const LATE_MAX_SHARE: f64 = 0.001;
const LATE_SLACK: u64 = 20;

/// How long a server whose clients have gone is watched, and the share of it it may spend on the CPU.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
const IDLE_MAX_SHARE: f64 = 0.05;

/// One wrk run against `url` (preloaded, its own stats file `role`): its process, the requests it completed, and
/// the errors of the run (wrk failed, completed nothing, saw broken connections, or a connection was not on NTB).
fn wrk_on_ntb(
    f: &Fixture,
    wrk: &Path,
    role: &'static str,
    port: u16,
    conns: u64,
    url: &str,
    v: &mut Verdict,
) -> Proc {
    let env = f.preload(role).with_ports(port.to_string());
    let c = format!("-c{conns}");
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let (p, r) = run_client(
        role,
        wrk,
        &["-t2", &c, "-d1s", url],
        &env,
        f.dir(),
        Duration::from_secs(30),
    );
    let delta = lo.delta().unwrap();
    drop(lo);
    let ok = r.is_ok();
    v.push(role, r);
    let out = p.stdout();
    let requests = number_before(&out, "requests in").unwrap_or(0);
    if requests == 0 {
        v.errors
            .push(format!("{role} completed no request: {}", out.trim()));
    }
    if let Some(line) = out.lines().find(|l| l.contains("Socket errors:")) {
        v.errors.push(format!(
            "{role} saw broken connections ({requests} requests): {}",
            line.trim()
        ));
    }
    if ok && requests > 0 {
        v.push(
            &format!("lo ({role})"),
            delta.check_fast_path(requests * 4096),
        );
    }
    v.push(
        &format!("{role} stats"),
        env.stats()
            .and_then(|s| s.check_ntb(port, conns, 0, requests * 4096)),
    );
    p
}

/// nginx (keep-alive, two workers) after its keep-alive clients have gone: the master and both workers sleep
/// (CPU ticks over an idle window, counted by the kernel), and a second load is served as the first, every
/// connection on NTB with no socket error. wrk exits without closing its connections, so the workers learn of the
/// end only from the kernel's close of each TCP socket.
#[test]
fn nginx_idle_after_keepalive_clients_leave() {
    let nginx = require_bin("nginx", "nginx");
    let wrk = require_bin("wrk", "wrk");
    let f = Fixture::new("app_nginx_idle");
    let port = free_port();
    let port_s = port.to_string();
    let root = f.dir().join("www");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(f.dir().join("tmp")).unwrap();
    write_payload(&root.join("index.html"), 4096, 1).unwrap();
    let conf = f.dir().join("nginx.conf");
    // keepalive_timeout 30 s: longer than the idle window, so nginx closes a connection only when it hears its end.
    fs::write(&conf, nginx_conf(f.dir(), port)).unwrap();
    let prefix = format!("{}/", f.dir().display());
    let error_log = f.dir().join("error.log").display().to_string();
    let conf_s = conf.display().to_string();
    let senv = f.preload("nginx").with_ports(&*port_s);
    let mut server = ProcTree::new(spawn(
        "nginx",
        &nginx,
        &["-p", &prefix, "-c", &conf_s, "-e", &error_log],
        &senv,
        f.dir(),
    ));
    check(server.proc.wait_listening(port, LISTEN_TIMEOUT), &[]);
    std::thread::sleep(Duration::from_millis(200));
    server.note_descendants();
    let url = format!("http://127.0.0.1:{port}/index.html");

    let mut v = Verdict::new("nginx_idle_after_keepalive_clients_leave");
    let first = wrk_on_ntb(&f, &wrk, "wrk-first", port, 8, &url, &mut v);
    server.note_descendants();
    let mut pids = vec![server.proc.pid()];
    pids.extend(server.seen().iter().map(|&(pid, _)| pid));
    if pids.len() < 3 {
        v.errors.push(format!(
            "expected the nginx master and 2 workers, found pids {pids:?}"
        ));
    }
    match IdleCpu::measure(&pids, IDLE_WINDOW) {
        Ok(idle) => {
            eprintln!("nginx after wrk: {idle}");
            v.push("idle nginx", idle.check(IDLE_MAX_SHARE));
        }
        Err(e) => v.errors.push(format!("idle nginx: {e}")),
    }
    // Idle keep-alive connections that stay open: the workers may look at them now and then (a lost doorbell is
    // all there is to guard against), but must not poll them on a short timer.
    let hold_env = f.preload("holder").with_ports(&*port_s);
    let mut holder = spawn(
        "holder",
        &python3(),
        &["-c", HOLD_KEEPALIVE, &port_s, &HELD.to_string()],
        &hold_env,
        f.dir(),
    );
    match holder.wait_stdout(Duration::from_secs(20), |o| o.contains("holding")) {
        Ok(()) => match IdleCpu::measure(&pids, IDLE_WINDOW) {
            Ok(idle) => {
                eprintln!("nginx with {HELD} idle keep-alive connections: {idle}");
                v.push("nginx, idle connections open", idle.check(IDLE_MAX_SHARE));
                v.push(
                    "nginx, idle connections open",
                    idle.check_wakeups(IDLE_MAX_WAKEUPS),
                );
            }
            Err(e) => v.errors.push(format!("nginx, idle connections open: {e}")),
        },
        Err(e) => v.errors.push(format!("keep-alive holder: {e}")),
    }
    // The next load after the idle window: served as the first, all on NTB (counts, not rates).
    let second = wrk_on_ntb(&f, &wrk, "wrk-second", port, 64, &url, &mut v);
    // The holder writes its stats file at exit (SIGINT: a clean exit for Python).
    let _ = interrupt(&mut holder);
    let _ = holder.wait_timeout(Duration::from_secs(5));
    v.push(
        "holder stats",
        hold_env
            .stats()
            .and_then(|s| s.check_ntb(port, HELD, 0, HELD * 4096)),
    );

    let killed = server.stop();
    if !killed.is_empty() {
        v.errors.push(format!(
            "nginx processes {killed:?} outlived the master's SIGTERM and were killed"
        ));
    }
    v.push(
        "nginx stats (last writer)",
        senv.stats().and_then(|s| s.check_ntb(port, 0, 0, 0)),
    );
    v.finish(&f, &[&server.proc, &first, &second, &holder]);
}

/// Keep-alive connections held open by [`HOLD_KEEPALIVE`] in the nginx idle test.
const HELD: u64 = 32;
/// Wake-ups a second an idle server may make on average (its own timers, and a look at quiet connections).
const IDLE_MAX_WAKEUPS: f64 = 10.0;

/// Python: `PORT N` -> N keep-alive connections to 127.0.0.1:PORT, one GET /index.html (4096 bytes) on each, read
/// in full; prints "holding N", then sleeps with them open until interrupted. Its stats file is written at exit.
const HOLD_KEEPALIVE: &str = r#"
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    head, body = got.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        body += s.recv(65536)
    held.append(s)
print("holding", n, flush=True)
try:
    time.sleep(120)
except KeyboardInterrupt:
    pass
"#;

/// The real Python interpreter (a pyenv shim is a shell script).
fn python3() -> std::path::PathBuf {
    let launcher = require_bin("python3", "python3");
    std::process::Command::new(&launcher)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or(launcher)
}

#[test]
fn socat_fork_exec_cat_echo() {
    let socat = require_bin("socat", "socat");
    eprintln!("{}", version_line(&socat, &["-V"]));
    let f = Fixture::new("app_socat");
    let port = free_port();
    let port_s = port.to_string();
    let senv = f.preload("socat").with_ports(&*port_s);
    let cenv = f.preload("client").with_ports(&*port_s);
    let listen = format!("TCP-LISTEN:{port},reuseaddr,fork,bind=127.0.0.1");
    let mut server = ProcTree::new(spawn(
        "socat",
        &socat,
        &["-t", "5", &listen, "EXEC:/bin/cat"],
        &senv,
        f.dir(),
    ));
    check(server.proc.wait_listening(port, LISTEN_TIMEOUT), &[]);
    let bytes = 4 * MIB;
    let echo = Path::new(env!("CARGO_BIN_EXE_echo"));
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let mut client = spawn(
        "echo-send",
        echo,
        &["send", &port_s, &bytes.to_string(), "77"],
        &cenv,
        f.dir(),
    );
    // Note the per-connection child while it runs.
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    let mut r = Err(String::new());
    while std::time::Instant::now() < deadline {
        server.note_descendants();
        match client.try_status() {
            Ok(Some(st)) if st.success() => {
                r = Ok(());
                break;
            }
            Ok(Some(st)) => {
                r = Err(format!("echo send failed: {st}"));
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                r = Err(e);
                break;
            }
        }
    }
    if r.as_ref().is_err_and(|e| e.is_empty()) {
        r = Err(format!(
            "echo send did not finish within {CLIENT_TIMEOUT:?}"
        ));
        let _ = client.terminate();
    }
    let delta = lo.delta().unwrap();
    drop(lo);
    let mut v = Verdict::new("socat_fork_exec_cat_echo");
    let ok = r.is_ok();
    v.push("client", r);
    if ok && !client.stdout().starts_with(&format!("ok bytes={bytes} ")) {
        v.errors
            .push(format!("echo send printed {:?}", client.stdout()));
    }
    if ok {
        v.push("lo", delta.check_fast_path(2 * bytes));
    }
    v.push(
        "client stats",
        cenv.stats()
            .and_then(|s| s.check_ntb(port, 1, bytes, bytes)),
    );
    let killed = server.stop();
    if !killed.is_empty() {
        v.errors.push(format!(
            "socat children {killed:?} outlived the listener and were killed"
        ));
    }
    v.push(
        "socat stats (last writer)",
        senv.stats().and_then(|s| s.check_ntb(port, 1, 0, 0)),
    );
    v.finish(&f, &[&server.proc, &client]);
}

#[test]
fn sockperf_ping_pong() {
    let sockperf = require_bin("sockperf", "sockperf");
    eprintln!("{}", version_line(&sockperf, &["--version"]));
    let f = Fixture::new("app_sockperf");
    let port = free_port();
    let port_s = port.to_string();
    let senv = f.preload("sockperf-server").with_ports(&*port_s);
    let cenv = f.preload("sockperf-client").with_ports(&*port_s);
    let mut server = spawn(
        "sockperf-sr",
        &sockperf,
        &["sr", "--tcp", "-i", "127.0.0.1", "-p", &port_s],
        &senv,
        f.dir(),
    );
    check(server.wait_listening(port, LISTEN_TIMEOUT), &[]);
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let (client, r) = run_client(
        "sockperf-pp",
        &sockperf,
        // `--mps 100000`: at its default (`max`) sockperf 3.7 sizes its sample buffer for a
        // TCP-like rate and aborts with "_seqN > m_maxSequenceNo" when the round trips come
        // faster (the NTB path does ~2 M/s here); a fixed rate keeps it inside its buffer.
        &[
            "pp",
            "--tcp",
            "-i",
            "127.0.0.1",
            "-p",
            &port_s,
            "-t",
            "2",
            "--mps",
            "100000",
        ],
        &cenv,
        f.dir(),
        Duration::from_secs(30),
    );
    let delta = lo.delta().unwrap();
    drop(lo);
    // The server writes its stats file when it closes the connection, on the client's EOF; a
    // SIGTERM kills it without its exit handlers, so let it see the EOF first (a busy machine
    // can take a while to schedule it).
    let t0 = Instant::now();
    while !senv.stats_file.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.terminate();
    let mut v = Verdict::new("sockperf_ping_pong");
    let ok = r.is_ok();
    v.push("sockperf pp", r);
    let out = client.stdout();
    if ok && !out.contains("Summary: Latency is") {
        v.errors
            .push("sockperf pp printed no `Summary: Latency is` line".to_owned());
    }
    // Each ping-pong message is 14 bytes (sockperf's default size).
    let sent = number_after(&out, "SentMessages=").unwrap_or(0);
    let payload = sent * 14;
    if ok {
        if sent == 0 {
            v.errors
                .push("sockperf pp reports no sent messages".to_owned());
        }
        v.push("lo", delta.check_fast_path(2 * payload));
    }
    v.push(
        "sockperf pp stats",
        cenv.stats()
            .and_then(|s| s.check_ntb(port, 1, payload, payload.saturating_sub(14))),
    );
    v.push(
        "sockperf sr stats",
        senv.stats().and_then(|s| s.check_ntb(port, 1, 0, 0)),
    );
    v.finish(&f, &[&server, &client]);
}

#[test]
fn curl_from_python_http_server() {
    let curl = require_bin("curl", "curl");
    let py_launcher = require_bin("python3", "python3");
    // Resolve the real interpreter (a pyenv shim is a shell script).
    let python = std::process::Command::new(&py_launcher)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or(py_launcher);
    eprintln!("{}", version_line(&python, &["--version"]));
    let f = Fixture::new("app_python_http");
    let port = free_port();
    let port_s = port.to_string();
    let root = f.dir().join("www");
    fs::create_dir_all(&root).unwrap();
    let file = root.join("file.bin");
    let bytes = 16 * MIB;
    write_payload(&file, bytes, 0x16).unwrap();
    let senv = f.preload("python").with_ports(&*port_s);
    let cenv = f.preload("curl").with_ports(&*port_s);
    let root_s = root.display().to_string();
    let mut server = spawn(
        "http.server",
        &python,
        &[
            "-m",
            "http.server",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--directory",
            &root_s,
        ],
        &senv,
        f.dir(),
    );
    check(server.wait_listening(port, LISTEN_TIMEOUT), &[]);
    let out = f.dir().join("download.bin");
    let out_s = out.display().to_string();
    let url = format!("http://127.0.0.1:{port}/file.bin");
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let (curl_p, r) = run_client(
        "curl",
        &curl,
        &["-sS", "-f", "--max-time", "50", "-o", &out_s, &url],
        &cenv,
        f.dir(),
        CLIENT_TIMEOUT,
    );
    let delta = lo.delta().unwrap();
    drop(lo);
    let mut v = Verdict::new("curl_from_python_http_server");
    let ok = r.is_ok();
    v.push("curl", r);
    if ok {
        let (want, got) = (sha256(&file).unwrap(), sha256(&out));
        v.push(
            "download",
            match got {
                Ok(g) if g == want => Ok(()),
                Ok(g) => Err(format!("sha256 {g} != {want}")),
                Err(e) => Err(e),
            },
        );
        v.push("lo", delta.check_fast_path(bytes));
    }
    v.push(
        "curl stats",
        cenv.stats().and_then(|s| s.check_ntb(port, 1, 0, bytes)),
    );
    // The server rewrites its stats when the connection closes; then a clean exit (SIGINT) writes them again.
    let _ = wait_stats(&senv.stats_file, Duration::from_secs(5), |s| {
        s.ntb_tx_bytes >= bytes
    });
    v.push("SIGINT http.server", interrupt(&mut server));
    if server.wait_timeout(Duration::from_secs(10)).is_err() {
        let _ = server.terminate();
    }
    v.push(
        "http.server stats",
        senv.stats().and_then(|s| s.check_ntb(port, 1, bytes, 0)),
    );
    v.finish(&f, &[&server, &curl_p]);
}

/// Under PCISOCK_STRICT=1 a flagged connect that cannot take the NTB path fails, and the stats
/// file still says why: here the server is a plain listener (no pcisock), so `NoListener`.
#[test]
fn strict_refusal_is_recorded() {
    let curl = require_bin("curl", "curl");
    let f = Fixture::new("app_strict_refusal");
    let port = free_port();
    let plain = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind a plain listener");
    let cenv = f.preload("curl").with_ports(port.to_string());
    let url = format!("http://127.0.0.1:{port}/");
    let (_client, r) = run_client(
        "curl",
        &curl,
        &["-sS", "--max-time", "5", &url],
        &cenv,
        f.dir(),
        Duration::from_secs(20),
    );
    drop(plain);
    assert!(
        r.is_err(),
        "curl got through although strict mode refuses TCP"
    );
    let s = cenv.stats().expect("curl's stats file");
    let recs: Vec<_> = s.on_port(port).collect();
    assert!(
        recs.iter().any(|c| c.path == "tcp"
            && c.reason.as_deref() == Some("NoListener")
            && c.tx_bytes == 0
            && c.rx_bytes == 0),
        "no NoListener record for the refused connect: {recs:?}"
    );
    assert_eq!(
        s.tcp_connections, 0,
        "a refused connect is not a TCP connection"
    );
}

/// Compiles benches/fanout.c (the scaling driver: N connections in one process per side, epoll)
/// into `dir`.
fn build_fanout(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("fanout");
    iperf_tests::apps::compile_c(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/fanout.c"),
        &out,
        &["-O2", "-Wall", "-Werror"],
    );
    out
}

/// One fanout run of `n` connections for 2 s; returns (client bytes, server bytes) or why it
/// failed. Both processes run under `ulimit -n 8192` (a connection holds up to three fds).
fn fanout_run(
    f: &Fixture,
    fanout: &Path,
    n: usize,
    senv: &PreloadEnv,
    cenv: &PreloadEnv,
    port: u16,
) -> Result<(u64, u64), String> {
    let sh = Path::new("/bin/sh");
    let lim = "ulimit -n 8192 && exec \"$0\" \"$@\"";
    let (port_s, n_s) = (port.to_string(), n.to_string());
    let fan = fanout.to_str().expect("utf-8 path");
    let mut server = spawn(
        "fanout-server",
        sh,
        &["-c", lim, fan, "server", &port_s, &n_s],
        senv,
        f.dir(),
    );
    check(server.wait_listening(port, LISTEN_TIMEOUT), &[&server]);
    let (client, r) = run_client(
        "fanout-client",
        sh,
        &["-c", lim, fan, "client", "127.0.0.1", &port_s, &n_s, "2"],
        cenv,
        f.dir(),
        CLIENT_TIMEOUT,
    );
    let s = server.wait_success(CLIENT_TIMEOUT);
    if s.is_err() {
        let _ = server.terminate();
    }
    let bytes = |p: &Proc| number_after(&p.stdout(), "bytes=");
    match (r, s, bytes(&client), bytes(&server)) {
        (Ok(()), Ok(()), Some(c), Some(s)) => Ok((c, s)),
        (r, s, _, _) => Err(format!(
            "client: {r:?}, server: {s:?}\n{}\n{}",
            client.describe(),
            server.describe()
        )),
    }
}

#[test]
fn thousand_connections_at_once() {
    let f = Fixture::new("app_fanout");
    let fanout = build_fanout(f.dir());
    // A thousand TCP handshakes (and, in the second run, TCP fallbacks) cross lo: no test that
    // needs lo quiet may run meanwhile.
    let _bulk = LoWindow::open(LoExpect::Bulk).unwrap();

    // A thousand connections, all on the NTB path: 128 KiB rings, so that the 2 000 endpoints of a
    // loopback link fit the device's two 256 MiB windows.
    let port = free_port();
    let ring = |e: PreloadEnv| PreloadEnv {
        extra: vec![("PCISOCK_RING_SIZE".into(), "128K".into())],
        ..e
    };
    let senv = ring(f.preload("server").with_ports(port.to_string()));
    let cenv = ring(f.preload("client").with_ports(port.to_string()));
    let (sent, got) =
        fanout_run(&f, &fanout, 1000, &senv, &cenv, port).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sent > 0 && sent == got,
        "client wrote {sent}, server read {got}"
    );
    for (who, env) in [("client", &cenv), ("server", &senv)] {
        let s = env.stats().unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            (s.ntb_connections, s.tcp_connections),
            (1000, 0),
            "{who}: {s}"
        );
    }

    // Default 1 MiB rings and no strict mode: the windows hold about 250 connections; the others
    // stay on TCP with reason NoWindowSpace, every byte arrives, and nothing hangs (a settling
    // offer used to deadlock epoll_wait; reclaiming leases used to take minutes).
    let port = free_port();
    let senv = f
        .preload("server-default")
        .with_ports(port.to_string())
        .with_strict(false);
    let cenv = f
        .preload("client-default")
        .with_ports(port.to_string())
        .with_strict(false);
    let (sent, got) =
        fanout_run(&f, &fanout, 400, &senv, &cenv, port).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sent > 0 && sent == got,
        "client wrote {sent}, server read {got}"
    );
    let s = cenv.stats().expect("client stats");
    assert_eq!(s.ntb_connections + s.tcp_connections, 400, "{s}");
    assert!(s.ntb_connections >= 100, "{s}");
    let other: Vec<_> = s
        .on_port(port)
        .filter(|c| c.path == "tcp" && c.reason.as_deref() != Some("NoWindowSpace"))
        .collect();
    assert!(other.is_empty(), "fell back for another reason: {other:?}");
}

/// The value after `key=` in `fanout churn`'s line.
fn churn_field(line: &str, key: &str) -> u64 {
    number_after(line, &format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in fanout churn's output {line:?}"))
}

/// 100,000 connections opened, used and closed one after another, strict: every one on the NTB
/// path; no fd, memory or window space left behind (the kernel's connect reuses ports in
/// TIME_WAIT, and so must the upgrade: a bind of port 0 before connect ran out of ports after
/// ~15,000 connections).
#[test]
fn hundred_thousand_short_connections() {
    const N: u64 = 100_000;
    let f = Fixture::new("app_churn");
    let fanout = build_fanout(f.dir());
    // 100,000 TCP handshakes and teardowns cross lo: no test that needs lo quiet may run meanwhile.
    let _bulk = LoWindow::open(LoExpect::Bulk).unwrap();
    let port = free_port();
    let senv = f.preload("server").with_ports(port.to_string());
    let cenv = f.preload("client").with_ports(port.to_string());
    let (port_s, n_s) = (port.to_string(), N.to_string());
    let mut server = spawn(
        "fanout-server",
        &fanout,
        &["server", &port_s, &n_s],
        &senv,
        f.dir(),
    );
    check(server.wait_listening(port, LISTEN_TIMEOUT), &[&server]);
    // The client holds on for 3 s after its last connection: time to look at its leases.
    let mut client = spawn(
        "fanout-churn",
        &fanout,
        &["churn", "127.0.0.1", &port_s, &n_s, "3"],
        &cenv,
        f.dir(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while !client.stdout().contains("conns=") {
        if std::time::Instant::now() > deadline || client.try_status().is_ok_and(|s| s.is_some()) {
            check::<()>(Err("the churn did not finish".into()), &[&client, &server]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cli = Lib::cli().unwrap_or_else(|e| panic!("{e}"));
    let stats = std::process::Command::new(cli)
        .args(["stats", "--json"])
        .env("PCISOCK_EMU_DIR", f.emu_dir())
        .output()
        .expect("pcisock stats");
    let json = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.status.success() && json.contains("\"leases\":["),
        "pcisock stats --json: {json} {}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let held: u64 = json
        .split("{\"pid\":")
        .filter(|e| e.starts_with(&format!("{},", client.pid())))
        .filter_map(|e| number_after(e, "\"window\":"))
        .sum();
    check(client.wait_success(Duration::from_secs(30)), &[&client]);
    check(server.wait_success(Duration::from_secs(30)), &[&server]);
    let line = client.stdout();
    assert_eq!(churn_field(&line, "conns"), N, "{line}");
    assert_eq!(
        number_after(&server.stdout(), "bytes="),
        Some(16 * N),
        "server: {}",
        server.stdout()
    );
    assert_eq!(
        churn_field(&line, "fds_before"),
        churn_field(&line, "fds_after"),
        "fd leak: {line}"
    );
    let grew =
        churn_field(&line, "rss_kb_after") as i64 - churn_field(&line, "rss_kb_before") as i64;
    assert!(
        grew < 8 << 10,
        "RSS grew by {grew} kB over 90,000 connections: {line}"
    );
    // A just-closed connection's ring waits for its peer to let go; no more than a few remain.
    assert!(
        held <= 4,
        "the client still holds {held} window leases after {N} closed connections"
    );
    for (who, env) in [("client", &cenv), ("server", &senv)] {
        let s = env.stats().unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!((s.ntb_connections, s.tcp_connections), (N, 0), "{who}");
    }
}

/// nginx as Debian ships it runs its workers as www-data (`user www-data;`). Processes that
/// map the device themselves (`PCISOCK_FABRIC=device`; the host fabric service, the default,
/// carries these workers' connections: hostmodel.rs) cannot: the root master opens the
/// device, the workers cannot make their connections' interrupt lines in root's 0700 device
/// directory. Every connection stays on TCP, and it must say exactly why: `NoPermission` (it
/// said `NoDoorbell`, "no interrupt vector left"), in the workers' own stats files (one per
/// process) and the client's, and in the one line `pcisock run` prints when the client exits.
#[test]
fn nginx_www_data_workers_fall_back_with_no_permission() {
    // SAFETY: getuid has no arguments and cannot fail.
    if unsafe { libc::getuid() } != 0 || !Path::new("/etc/passwd").exists() {
        eprintln!("skipped: needs root");
        return;
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    if !passwd.lines().any(|l| l.starts_with("www-data:")) {
        eprintln!("skipped: no www-data user");
        return;
    }
    let nginx = require_bin("nginx", "nginx");
    let curl = require_bin("curl", "curl");
    let cli = check(Lib::cli(), &[]);
    let f = Fixture::new("app_nginx_www_data");
    // The workers (www-data) read the pages and write their stats under the test directory.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(f.dir(), fs::Permissions::from_mode(0o711)).unwrap();
    let stats_dir = f.dir().join("nginx-stats");
    fs::create_dir_all(&stats_dir).unwrap();
    fs::set_permissions(&stats_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let root = f.dir().join("www");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(f.dir().join("tmp")).unwrap();
    let page = root.join("page.bin");
    write_payload(&page, 2 * MIB, 0x3d).unwrap();
    fs::set_permissions(&page, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();

    let _bulk = LoWindow::open(LoExpect::Bulk).unwrap();
    let port = free_port();
    let port_s = port.to_string();
    let conf = f.dir().join("nginx.conf");
    fs::write(
        &conf,
        nginx_conf(f.dir(), port).replacen("user root;", "user www-data;", 1),
    )
    .unwrap();
    let prefix = format!("{}/", f.dir().display());
    let error_log = f.dir().join("error.log").display().to_string();
    let conf_s = conf.display().to_string();
    let device = |mut e: PreloadEnv| {
        e.extra.push(("PCISOCK_FABRIC".into(), "device".into()));
        e
    };
    let mut senv = device(f.preload("nginx").with_ports(&*port_s).with_strict(false));
    senv.stats_file = std::path::PathBuf::from(format!("{}/", stats_dir.display()));
    let curl_env = device(f.preload("curl").with_ports(&*port_s).with_strict(false));
    let mut server = ProcTree::new(spawn(
        "nginx",
        &nginx,
        &["-p", &prefix, "-c", &conf_s, "-e", &error_log],
        &senv,
        f.dir(),
    ));
    check(server.proc.wait_listening(port, LISTEN_TIMEOUT), &[]);
    std::thread::sleep(Duration::from_millis(200));
    server.note_descendants();

    let mut v = Verdict::new("nginx_www_data_workers_fall_back_with_no_permission");
    let out = f.dir().join("page.download");
    let url = format!("http://127.0.0.1:{port}/page.bin");
    let out_s = out.display().to_string();
    let cli_s = cli.display().to_string();
    let curl_s = curl.display().to_string();
    let (curl_p, r) = run_client(
        "curl",
        &cli,
        &[
            "run",
            "--",
            &curl_s,
            "-sS",
            "-f",
            "--max-time",
            "20",
            "-o",
            &out_s,
            &url,
        ],
        &curl_env,
        f.dir(),
        CLIENT_TIMEOUT,
    );
    v.push(&format!("curl (via {cli_s} run)"), r);
    v.push(
        "download",
        match (sha256(&page), sha256(&out)) {
            (Ok(a), Ok(b)) if a == b => Ok(()),
            (a, b) => Err(format!("sha256 {b:?} != {a:?}")),
        },
    );
    let report = curl_p.stderr();
    let want = "pcisock run: 1 of 1 flagged connection fell back to TCP: 1 NoPermission (16);";
    if !report.lines().any(|l| l.starts_with(want)) || report.lines().count() != 1 {
        v.errors.push(format!(
            "pcisock run's report: want one line starting {want:?}, got {report:?}"
        ));
    }
    v.push(
        "curl stats",
        curl_env
            .stats()
            .and_then(|s| s.check_tcp(port, 1, |r| r == "NoPermission")),
    );
    let _ = server.stop();
    // The workers' own files: the connection they accepted fell back for NoPermission.
    let mut fallbacks = 0;
    for e in fs::read_dir(&stats_dir).unwrap() {
        let text = fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        if let Some(n) = number_after(&text, "\"NoPermission\":") {
            fallbacks += n;
        }
        if number_after(&text, "\"ntb_connections\":").unwrap_or(0) != 0 {
            v.errors
                .push(format!("an nginx process counted NTB connections: {text}"));
        }
    }
    if fallbacks == 0 {
        v.errors.push(format!(
            "no nginx worker recorded a NoPermission fallback in {}",
            stats_dir.display()
        ));
    }
    v.finish(&f, &[&server.proc, &curl_p]);
}
