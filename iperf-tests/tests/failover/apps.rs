//! Servers as deployed across a link-down/up cycle (redis, nginx with wrk), and connections made
//! while the link is down.

use super::*;

/// redis waits only in epoll_wait and its replies never fill a ring: neither end ever waits in a send or a receive,
/// so only readiness can notice the link going away. Across a 2.5 s link-down the requests go on over the
/// connections' TCP sockets (the kernel's counters of the server's sockets grow, and redis counts commands), and a
/// second after the link is back they are on the ring again (the kernel's counters stand still while redis goes on
/// counting).
#[test]
fn an_epoll_only_server_fails_over_and_back() {
    let server_bin = iperf_tests::apps::require_bin("redis-server", "redis-server");
    let bench_bin = iperf_tests::apps::require_bin("redis-benchmark", "redis-tools");
    let cli = iperf_tests::apps::require_bin("redis-cli", "redis-tools");
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let f = Fixture::new("failover_redis");
    let port = free_port();
    let port_s = port.to_string();
    let (se, ce) = (
        env(&f, "redis-server", port),
        env(&f, "redis-benchmark", port),
    );
    let dir = f.dir().display().to_string();
    let mut server = Proc::spawn(
        "redis-server",
        command(&server_bin, &redis_server_args(&port_s, &dir), Some(&se)),
        f.dir(),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    let mut bench = Proc::spawn(
        "redis-benchmark",
        command(
            &bench_bin,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port_s,
                "-t",
                "set",
                "-n",
                "100000000",
                "-c",
                "4",
                "-q",
            ],
            Some(&ce),
        ),
        f.dir(),
    )
    .unwrap();
    let t0 = Instant::now();
    let at = |ms: u64| Duration::from_millis(ms);
    let sample = || (redis_commands(&cli, port), tcp_sockets(port));
    sleep_until(t0, at(1500));
    let before = sample();
    link(f.emu_dir(), true);
    sleep_until(t0, at(2500));
    let out1 = sample();
    sleep_until(t0, at(3500));
    let out2 = sample();
    sleep_until(t0, at(4000));
    link(f.emu_dir(), false);
    sleep_until(t0, at(5500));
    let back1 = sample();
    sleep_until(t0, at(7000));
    let back2 = sample();
    let running = bench.is_running();
    let _ = bench.terminate();
    let _ = server.terminate();

    // (commands, bytes over TCP) in each interval between the samples.
    let step = |a: &(u64, Vec<TcpSocket>), b: &(u64, Vec<TcpSocket>)| {
        (b.0.saturating_sub(a.0), received_between(&a.1, &b.1))
    };
    let steps = [
        step(&before, &out1),
        step(&out1, &out2),
        step(&out2, &back1),
        step(&back1, &back2),
    ];
    eprintln!("redis (commands, bytes over TCP) from the link-down on: {steps:?}");
    let mut errors = Vec::new();
    if !running {
        errors.push("redis-benchmark stopped before the end of the test".to_owned());
    }
    // The second second of the outage: requests complete, over TCP (a SET of redis-benchmark is 45 bytes).
    let (cmds, bytes) = steps[1];
    if cmds < 1000 || bytes < 20 * cmds {
        errors.push(format!(
            "second 2 of the outage: {cmds} commands, {bytes} bytes over TCP (the connections did not fail over)"
        ));
    }
    // Back on the ring: redis goes on, lo does not.
    let (cmds, bytes) = steps[3];
    if cmds < 1000 || bytes > 64 << 10 {
        errors.push(format!(
            "1.5 s to 3 s after the link came back: {cmds} commands, {bytes} bytes over TCP (not back on NTB)"
        ));
    }
    let s = se.stats().unwrap_or_else(|e| panic!("{e}"));
    let moved = s
        .on_port(port)
        .filter(|c| c.failovers >= 1 && c.failbacks >= 1)
        .count();
    if moved < 4 || s.protocol_errors != 0 {
        errors.push(format!(
            "redis-server: {moved} of the benchmark's 4 connections moved to TCP and back\n{s}"
        ));
    }
    if let Ok(c) = ce.stats() {
        if c.protocol_errors != 0 {
            errors.push(format!("redis-benchmark: {c}"));
        }
    }
    assert!(
        errors.is_empty(),
        "{}\n(commands, bytes over TCP) from the link-down on: {steps:?}\n{}\n{}",
        errors.join("\n"),
        bench.describe(),
        server.describe()
    );
}

/// `pcisock stats` on the fixture's device.
fn device_stats(emu_dir: &Path) -> String {
    let cli = Lib::cli().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(cli)
        .arg("stats")
        .env("PCISOCK_EMU_DIR", emu_dir)
        .output()
        .expect("run pcisock stats");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connections made while the link is down stay on TCP, with the reason (`LinkDown`) in the clients' stats and the
/// link's state in `pcisock stats`; nothing waits for the link (redis-benchmark's connections are in an epoll set,
/// which the late upgrade does not carry yet: `late.rs`). Connections made once it is back use the ring.
#[test]
fn connections_made_while_the_link_is_down_stay_on_tcp_and_say_why() {
    let server_bin = iperf_tests::apps::require_bin("redis-server", "redis-server");
    let bench_bin = iperf_tests::apps::require_bin("redis-benchmark", "redis-tools");
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let f = Fixture::new("failover_start_down");
    let port = free_port();
    let port_s = port.to_string();
    let se = env(&f, "redis-server", port);
    let dir = f.dir().display().to_string();
    let mut server = Proc::spawn(
        "redis-server",
        command(&server_bin, &redis_server_args(&port_s, &dir), Some(&se)),
        f.dir(),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    let bench = |role: &str| {
        let ce = env(&f, role, port);
        let mut p = Proc::spawn(
            role,
            command(
                &bench_bin,
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port_s,
                    "-t",
                    "set",
                    "-n",
                    "20000",
                    "-c",
                    "4",
                    "-q",
                ],
                Some(&ce),
            ),
            f.dir(),
        )
        .unwrap();
        let t0 = Instant::now();
        let done = p.wait_success(Duration::from_secs(30));
        (p, done, t0.elapsed(), ce.stats())
    };
    link(f.emu_dir(), true);
    let (down, down_done, down_took, down_stats) = bench("bench-link-down");
    let shown = device_stats(f.emu_dir());
    link(f.emu_dir(), false);
    let (up, up_done, _, up_stats) = bench("bench-link-up");
    let _ = server.terminate();

    eprintln!("redis-benchmark with the link down took {down_took:?}\n{shown}");
    let mut errors = Vec::new();
    if let Err(e) = &down_done {
        errors.push(format!(
            "redis-benchmark with the link down: {e} after {down_took:?}"
        ));
    }
    match &down_stats {
        Ok(s) => {
            if let Err(e) = s.check_tcp(port, 4, |r| r == "LinkDown") {
                errors.push(format!("with the link down: {e}"));
            }
        }
        Err(e) => errors.push(e.clone()),
    }
    if !shown
        .lines()
        .any(|l| l.contains("link") && l.contains("down"))
    {
        errors.push(format!(
            "`pcisock stats` does not say the link is down:\n{shown}"
        ));
    }
    if let Err(e) = &up_done {
        errors.push(format!("redis-benchmark with the link up: {e}"));
    }
    match &up_stats {
        Ok(s) if s.on_port(port).filter(|c| c.path == "ntb").count() >= 4 => {}
        Ok(s) => errors.push(format!("with the link back, not on NTB: {s}")),
        Err(e) => errors.push(e.clone()),
    }
    assert!(
        errors.is_empty(),
        "{}\n{}\n{}\n{}",
        errors.join("\n"),
        down.describe(),
        up.describe(),
        server.describe()
    );
}

/// nginx and wrk, both edge-triggered epoll applications on rings that never fill (4 KiB responses), across a
/// 2.5 s link-down: the requests go on over TCP (the kernel's counters of nginx's sockets grow), wrk sees no socket
/// error, and a second after the link is back the kernel's counters stand still while wrk goes on.
#[test]
fn edge_triggered_nginx_and_wrk_fail_over_and_back() {
    let nginx = iperf_tests::apps::require_bin("nginx", "nginx");
    let wrk = iperf_tests::apps::require_bin("wrk", "wrk");
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let f = Fixture::new("failover_nginx");
    let port = free_port();
    let d = f.dir().display().to_string();
    std::fs::create_dir_all(f.dir().join("www")).unwrap();
    std::fs::create_dir_all(f.dir().join("tmp")).unwrap();
    iperf_tests::apps::write_payload(&f.dir().join("www/index.html"), 4096, 1).unwrap();
    let conf = f.dir().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\ndaemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {d}/tmp/body;\nproxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\nuwsgi_temp_path {d}/tmp/uwsgi;\nscgi_temp_path {d}/tmp/scgi;\n\
             keepalive_timeout 30;\nkeepalive_requests 100000000;\n\
             server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n}}\n"
        ),
    )
    .unwrap();
    let mut se = env(&f, "nginx", port);
    let stats_dir = f.dir().join("nginx-stats");
    std::fs::create_dir_all(&stats_dir).unwrap();
    se.stats_file = std::path::PathBuf::from(format!("{}/", stats_dir.display()));
    let ce = env(&f, "wrk", port);
    let prefix = format!("{d}/");
    let conf_s = conf.display().to_string();
    let error_log = format!("{d}/error.log");
    let mut server = iperf_tests::apps::ProcTree::new(
        Proc::spawn(
            "nginx",
            command(
                &nginx,
                &["-p", &prefix, "-c", &conf_s, "-e", &error_log],
                Some(&se),
            ),
            f.dir(),
        )
        .unwrap(),
    );
    server
        .proc
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    server.note_descendants();
    let url = format!("http://127.0.0.1:{port}/index.html");
    let mut client = Proc::spawn(
        "wrk",
        command(&wrk, &["-t1", "-c4", "-d7s", &url], Some(&ce)),
        f.dir(),
    )
    .unwrap();
    let t0 = Instant::now();
    let at = |ms: u64| Duration::from_millis(ms);
    sleep_until(t0, at(1500));
    let before = tcp_sockets(port);
    link(f.emu_dir(), true);
    sleep_until(t0, at(2500));
    let out1 = tcp_sockets(port);
    sleep_until(t0, at(3500));
    let out2 = tcp_sockets(port);
    sleep_until(t0, at(4000));
    link(f.emu_dir(), false);
    sleep_until(t0, at(5000));
    let back1 = tcp_sockets(port);
    sleep_until(t0, at(6500));
    let back2 = tcp_sockets(port);
    let done = client.wait_success(Duration::from_secs(20));
    let _ = server.stop();
    let out = client.stdout();
    eprintln!(
        "nginx bytes over TCP from the link-down on: {:?}\n{out}",
        [
            received_between(&before, &out1),
            received_between(&out1, &out2),
            received_between(&out2, &back1),
            received_between(&back1, &back2)
        ]
    );

    let mut errors = Vec::new();
    if let Err(e) = done {
        errors.push(format!("wrk: {e}"));
    }
    if out.contains("Socket errors") || out.contains("Non-2xx") {
        errors.push("wrk saw errors".to_owned());
    }
    // A request of wrk is about 60 bytes: a thousand requests in the outage's second second, over TCP.
    let outage = received_between(&out1, &out2);
    let after = received_between(&back1, &back2);
    if outage < 60_000 {
        errors.push(format!(
            "second 2 of the outage: {} bytes over TCP (the connections did not fail over)",
            outage
        ));
    }
    if after > 64 << 10 {
        errors.push(format!(
            "{} bytes over TCP from 1 s to 2.5 s after the link came back: not back on NTB",
            after
        ));
    }
    let c = ce.stats().unwrap_or_else(|e| panic!("{e}"));
    let moved = c
        .on_port(port)
        .filter(|c| c.failovers >= 1 && c.failbacks >= 1)
        .count();
    if moved < 4 || c.protocol_errors != 0 {
        errors.push(format!(
            "wrk: {moved} of its 4 connections moved to TCP and back\n{c}"
        ));
    }
    assert!(
        errors.is_empty(),
        "{}\n{}\n{}",
        errors.join("\n"),
        client.describe(),
        server.proc.describe()
    );
}
