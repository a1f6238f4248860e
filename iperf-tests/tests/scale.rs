//! Thousands of connections at once, all on the NTB path, with default settings (the host
//! fabric service), at the descriptor cost of plain TCP (issue 15, item 2).
//!
//! One server and one client process (`shapes/manyconns.py`: one epoll loop each) open
//! `CONNS` connections at once and exchange `SIZE` bytes each way on every one, then hold them
//! all open. Checked while they are held: the service pairs every one of them (its
//! `connections`), each process holds at most one descriptor per connection plus a constant
//! (`/proc/PID/fd`: the TCP socket is the connection's only descriptor; the service's lines are
//! one per process), the service holds a constant: one arena per pair of processes, not one
//! segment per connection (docs/HOST-SERVICE.md, *Arenas*). After: both stats files count `CONNS` connections on NTB and none on TCP (strict
//! mode besides), and the kernel's loopback counter saw far less than the payload.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iperf_tests::fabric::Service;
use iperf_tests::{check, command, free_port, Fixture, LoDelta, LoExpect, LoWindow, Proc, Stats};

/// Connections at once (wrk -c8000 against nginx is the benchmark's; here what runs in CI in
/// seconds).
const CONNS: u64 = 3000;
/// Bytes each way per connection.
const SIZE: u64 = 32 << 10;
/// Descriptors a process may hold beyond one per connection (stdio, epoll, the service
/// connection and lines, a sleeping thread's wake set, Python's own).
const SLACK: u64 = 24;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shapes")
        .join("manyconns.py")
}

fn fds(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

#[test]
fn thousands_of_connections_all_on_ntb_at_one_descriptor_each() {
    let f = Fixture::new("scale_many");
    let svc = Service::start(&f);
    let svc_fds0 = fds(svc.proc.pid());
    let port = free_port();
    let (port_s, n_s, size_s) = (port.to_string(), CONNS.to_string(), SIZE.to_string());
    let prog = script().display().to_string();
    let go = f.dir().join("go");
    let go_s = go.display().to_string();

    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let senv = svc.env(&f, "server", port);
    let mut server = check(
        Proc::spawn(
            "server",
            command(
                "/usr/bin/python3",
                &[&prog, "server", &port_s, &n_s, &size_s],
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
    let server_fds0 = fds(server.pid());
    let cenv = svc.env(&f, "client", port);
    let mut client = check(
        Proc::spawn(
            "client",
            command(
                "/usr/bin/python3",
                &[&prog, "client", &port_s, &n_s, &size_s, &go_s],
                Some(&cenv),
            ),
            f.dir(),
        ),
        &[&server],
    );
    check(
        client.wait_stdout(Duration::from_secs(120), |o| o.contains("held")),
        &[&client, &server],
    );
    check(
        server.wait_stdout(Duration::from_secs(30), |o| o.contains("answered")),
        &[&client, &server],
    );

    // Everything held open: count.
    let paired = svc.count("connections");
    let (server_fds, client_fds, svc_fds) =
        (fds(server.pid()), fds(client.pid()), fds(svc.proc.pid()));
    fs::write(&go, b"").unwrap();
    check(
        client.wait_success(Duration::from_secs(60)),
        &[&client, &server],
    );
    check(
        server.wait_success(Duration::from_secs(60)),
        &[&client, &server],
    );
    let delta = lo.delta().unwrap();
    drop(lo);

    assert_eq!(
        paired,
        CONNS,
        "the service paired {paired} of {CONNS} connections held open: {:?}",
        svc.status()
    );
    assert!(
        server_fds - server_fds0 <= CONNS + SLACK,
        "the server holds {server_fds} descriptors for {CONNS} connections ({server_fds0} before)"
    );
    assert!(
        client_fds <= CONNS + SLACK,
        "the client holds {client_fds} descriptors for {CONNS} connections"
    );
    assert!(
        svc_fds - svc_fds0 <= SLACK,
        "the service holds {svc_fds} descriptors for {CONNS} connections ({svc_fds0} before)"
    );
    let payload = 2 * CONNS * SIZE;
    for (role, p) in [("server", &server), ("client", &client)] {
        let st = check(Stats::load(&f.stats_path(role)), &[p]);
        assert_eq!(
            (st.ntb_connections, st.tcp_connections),
            (CONNS, 0),
            "{role}: connections on NTB and on TCP"
        );
        assert!(
            st.ntb_tx_bytes >= CONNS * SIZE && st.ntb_rx_bytes >= CONNS * SIZE,
            "{role}: {} bytes sent and {} received over NTB, {} expected each way",
            st.ntb_tx_bytes,
            st.ntb_rx_bytes,
            CONNS * SIZE
        );
        assert_eq!(st.protocol_errors, 0, "{role}: protocol errors");
    }
    assert!(
        delta.bytes() <= LoDelta::fast_path_bound(payload),
        "{} bytes crossed lo while {CONNS} connections moved {payload} bytes: not the NTB path",
        delta.bytes()
    );
    let t0 = Instant::now();
    while svc.count("connections") > 0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(svc.count("connections"), 0, "connections left behind");
    assert_eq!(svc.count("space"), 0, "window space left behind");
}
