//! nginx: sendfile downloads with curl and wrk, idle keep-alive clients, and www-data workers that may not
//! use the device (they fall back with a reason).

use super::*;

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
/// nginx as Debian ships it runs its workers as www-data (`user www-data;`). Processes that
/// map the device themselves (`PCISOCK_FABRIC=device`; the host fabric service, the default,
/// carries these workers' connections: hostmodel/nginx.rs) cannot: the root master opens the
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
