//! The service itself: restarted mid-stream, or slow to answer an accept.

use super::*;

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
    // The lo lock before the server starts (its alarm runs from then).
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
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
