//! Small tools: socat's fork-exec echo, sockperf ping-pong, curl against Python's http.server, and a strict
//! refusal recorded in the stats file.

use super::*;

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
