//! Many connections: a thousand at once (benches/fanout.c), and a hundred thousand short ones.

use super::*;

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
