//! Every fault kind `pcisock emu fault` offers, many times over, under an echo and iperf3; DMA
//! errors past a retry; strict mode.

use super::*;

/// The echo tool checks every byte it gets back against the stream it sent.
fn echo_across_faults(
    name: &str,
    bytes: u64,
    faults: u32,
    strict: bool,
) -> (Fixture, Proc, Proc, Stats) {
    let f = Fixture::new(name);
    let port = free_port();
    let (se, ce) = (
        env(&f, "server", port).with_strict(strict),
        env(&f, "client", port).with_strict(strict),
    );
    let echo = Lib::locate()
        .unwrap()
        .parent()
        .unwrap()
        .join("echo")
        .to_string_lossy()
        .into_owned();
    let port_s = port.to_string();
    let mut server = Proc::spawn(
        "echo-server",
        command(&echo, &["serve", &port_s], Some(&se)),
        f.dir(),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    let mut client = Proc::spawn(
        "echo-client",
        command(
            &echo,
            &["send", &port_s, &bytes.to_string(), "77"],
            Some(&ce),
        ),
        f.dir(),
    )
    .unwrap();
    // Faults of varying length and spacing while the stream runs.
    let mut rng = 0x1234_5678u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..faults {
        if !client.is_running() {
            break;
        }
        thread::sleep(Duration::from_millis(20 + next() % 60));
        link(f.emu_dir(), true);
        thread::sleep(Duration::from_millis(10 + next() % 120));
        link(f.emu_dir(), false);
    }
    let _ = client.wait_timeout(Duration::from_secs(60));
    let _ = server.wait_timeout(Duration::from_secs(10));
    let stats = ce.stats().unwrap_or_else(|e| panic!("{e}"));
    (f, client, server, stats)
}

#[test]
fn echo_is_byte_identical_across_many_faults() {
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let (_f, mut client, mut server, stats) =
        echo_across_faults("failover_echo", 384 * MIB + 4321, 60, false);
    check(
        client.wait_success(Duration::from_secs(1)),
        &[&client, &server],
    );
    check(
        server.wait_success(Duration::from_secs(1)),
        &[&client, &server],
    );
    assert!(
        client.stdout().starts_with("ok bytes="),
        "{}",
        client.describe()
    );
    assert!(
        stats.failovers >= 2 && stats.failbacks >= 1 && stats.protocol_errors == 0,
        "the faults did not move the connection: {stats}"
    );
}

/// Copies of 4 KiB and more go to the emulated DMA engine, so its faults have something to hit.
const DMA_ON: (&str, &str) = ("PCISOCK_DMA_THRESHOLD", "4096");

/// The faults the device counted as injected so far (`pcisock emu info`: "faults: … (N injected so far)").
fn fault_hits(emu_dir: &Path) -> u64 {
    let info = emu(emu_dir, &["emu", "info"]);
    info.lines()
        .find_map(|l| l.strip_prefix("faults:"))
        .and_then(|l| l.rsplit_once(" ("))
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fault count in `pcisock emu info`:\n{info}"))
}

/// Faults of every kind `pcisock emu fault` offers, one kind after the other, while `running()`: until the device
/// counted 100 of each (or 8 s passed), lost doorbells (one at a time), slow DMA (300 us a descriptor, 10 ms at a
/// time) and DMA errors (one descriptor at a time, which the retry covers; the last one two, a failure and its
/// retry, which moves the sender to TCP); then 100 link-downs (5-30 ms down, 10-40 ms up; the device does not
/// count those). The DMA kinds come first: they need the connection on the ring, where a link-down storm's
/// back-off would not leave it. Returns each kind with the faults injected.
fn fault_storm(emu_dir: &Path, running: &mut dyn FnMut() -> bool) -> Vec<(&'static str, u64)> {
    const EACH: u64 = 100;
    let mut rng = 0x9e37_79b9u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut done = Vec::new();
    for kind in ["lost-doorbell", "dma-slow", "dma-error"] {
        let start = fault_hits(emu_dir);
        let t0 = Instant::now();
        let mut hits = 0;
        while hits < EACH && running() && t0.elapsed() < Duration::from_secs(8) {
            if kind == "dma-slow" {
                emu(emu_dir, &["emu", "fault", "dma-slow", "--delay-us", "300"]);
                thread::sleep(Duration::from_millis(10));
            } else {
                let count = if kind == "dma-error" && hits + 2 >= EACH {
                    "2"
                } else {
                    "1"
                };
                let before = fault_hits(emu_dir);
                emu(emu_dir, &["emu", "fault", kind, "--count", count]);
                // Until the device used it (a fault left over would be the next kind's).
                let t = Instant::now();
                while fault_hits(emu_dir) == before && t.elapsed() < Duration::from_millis(300) {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            link(emu_dir, false);
            hits = fault_hits(emu_dir) - start;
            thread::sleep(Duration::from_millis(next() % 10));
        }
        done.push((kind, hits));
    }
    let mut downs = 0;
    while downs < EACH && running() {
        link(emu_dir, true);
        thread::sleep(Duration::from_millis(5 + next() % 25));
        link(emu_dir, false);
        downs += 1;
        thread::sleep(Duration::from_millis(10 + next() % 30));
    }
    done.push(("link-down", downs));
    done
}

/// Every kind of injected fault, 100 times each, under a paced echo with DMA on: every byte comes back in order.
#[test]
fn echo_is_byte_identical_across_100_faults_of_each_kind() {
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let f = Fixture::new("failover_echo_kinds");
    let port = free_port();
    let (mut se, mut ce) = (env(&f, "server", port), env(&f, "client", port));
    se.extra.push((DMA_ON.0.into(), DMA_ON.1.into()));
    ce.extra.push((DMA_ON.0.into(), DMA_ON.1.into()));
    let echo = Lib::locate()
        .unwrap()
        .parent()
        .unwrap()
        .join("echo")
        .to_string_lossy()
        .into_owned();
    let port_s = port.to_string();
    let mut server = Proc::spawn(
        "echo-server",
        command(&echo, &["serve", &port_s], Some(&se)),
        f.dir(),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    // 40 MiB/s for about 18 s: the storm takes about 12.
    let bytes = (720 * MIB + 999).to_string();
    let mut client = Proc::spawn(
        "echo-client",
        command(&echo, &["send", &port_s, &bytes, "91", "40"], Some(&ce)),
        f.dir(),
    )
    .unwrap();
    // The connection is on the ring before the first fault (one made while the link is down stays on TCP).
    thread::sleep(Duration::from_millis(500));
    let storm = fault_storm(f.emu_dir(), &mut || client.is_running());
    eprintln!("faults injected: {storm:?}");
    let done = client.wait_success(Duration::from_secs(60));
    let sdone = server.wait_success(Duration::from_secs(10));
    check(done.and(sdone), &[&client, &server]);
    assert!(
        client.stdout().starts_with("ok bytes="),
        "{}",
        client.describe()
    );
    let c = ce.stats().unwrap_or_else(|e| panic!("{e}"));
    let s = se.stats().unwrap_or_else(|e| panic!("{e}"));
    let short: Vec<_> = storm.iter().filter(|(_, n)| *n < 100).collect();
    assert!(
        short.is_empty() && c.dma_copies > 0 && c.failovers >= 2 && c.failbacks >= 1,
        "faults {storm:?} (fewer than 100: {short:?}); client {c}"
    );
    assert_eq!(
        c.protocol_errors + s.protocol_errors,
        0,
        "client {c}\nserver {s}"
    );
}

/// Every kind of injected fault, 100 times each, under an iperf3 stream with DMA on: both ends count the same
/// bytes and no protocol error.
#[test]
fn iperf3_survives_100_faults_of_each_kind() {
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let mut st = Stream::start_with("failover_iperf3_kinds", 18, &[DMA_ON]);
    thread::sleep(Duration::from_millis(500));
    let storm = {
        let client = &mut st.client;
        fault_storm(st.f.emu_dir(), &mut || client.is_running())
    };
    eprintln!("faults injected: {storm:?}");
    st.finish();
    let c = st.ce.stats().unwrap();
    let s = st.se.stats().unwrap();
    let short: Vec<_> = storm.iter().filter(|(_, n)| *n < 100).collect();
    assert!(
        short.is_empty() && c.dma_copies > 0 && c.failovers >= 2,
        "faults {storm:?} (fewer than 100: {short:?}); client {c}\n{:?}",
        data_conn(&c, st.port)
    );
    assert_eq!(
        c.protocol_errors + s.protocol_errors,
        0,
        "client {c}\nserver {s}"
    );
}

/// A DMA transfer that fails again on its retry is a failover trigger (the "DMA errors past a retry"):
/// with every descriptor failing for 1.5 s the stream moves to TCP, and returns once DMA works again.
#[test]
fn dma_errors_past_a_retry_fail_over_and_back() {
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let mut st = Stream::start_with("failover_dma_error", 5, &[DMA_ON]);
    let (f, port) = (&st.f, st.port);
    let t0 = Instant::now();
    sleep_until(t0, Duration::from_millis(1000));
    emu(f.emu_dir(), &["emu", "fault", "dma-error"]);
    sleep_until(t0, Duration::from_millis(2500));
    emu(f.emu_dir(), &["emu", "clear"]);
    st.finish();
    let stats = st.ce.stats().unwrap();
    let c = data_conn(&stats, port);
    assert!(
        c.failovers >= 1 && c.failbacks >= 1 && !c.on_tcp && stats.protocol_errors == 0,
        "client data connection: failovers {}, failbacks {}, on TCP at the end {}\n{stats}",
        c.failovers,
        c.failbacks,
        c.on_tcp
    );
}

#[test]
fn strict_mode_resets_instead_of_failing_over() {
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let (_f, mut client, server, stats) =
        echo_across_faults("failover_strict", 4096 * MIB, 3, true);
    let st = client.wait_timeout(Duration::from_secs(1)).unwrap();
    assert!(
        !st.success() && client.stderr().contains("reset"),
        "a strict connection must fail with ECONNRESET on a link fault\n{}\n{}",
        client.describe(),
        server.describe()
    );
    assert_eq!(
        stats.failover_tx_bytes + stats.failover_rx_bytes,
        0,
        "{stats}"
    );
}
