//! A link taken down for seconds mid-stream, and a link that flaps.

use super::*;

#[test]
fn link_down_for_4s_mid_stream_moves_to_tcp_and_back() {
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let mut st = Stream::start("failover_link_down", 10);
    let (f, port) = (&st.f, st.port);
    let t0 = Instant::now();
    // Samples of the server's sockets: across the fault, and after it.
    let at = |s: u64| Duration::from_millis(s);
    sleep_until(t0, at(3000));
    link(f.emu_dir(), true);
    let mut during = Vec::new();
    for ms in [3500, 4500, 5500, 6500] {
        sleep_until(t0, at(ms));
        during.push(sample(port));
    }
    sleep_until(t0, at(7000));
    link(f.emu_dir(), false);
    sleep_until(t0, at(8000));
    let back = sample(port);
    // Until 9.5 s, while the stream (10 s from about t0) runs: the last of these that still sees it counts.
    let mut after = Vec::new();
    for ms in (8250..=9500).step_by(250) {
        sleep_until(t0, at(ms));
        after.push(sample(port));
    }
    st.finish();

    let mut errors = Vec::new();
    // The stream's own socket, by its exact 4-tuple (the other one is iperf3's control connection): the server's
    // socket that had received the most when the outage ended. Its counters are the kernel's, and other traffic
    // on lo does not move them.
    let peer = during
        .last()
        .and_then(|s| s.socks.iter().max_by_key(|s| s.bytes_received))
        .map(|s| s.peer.clone())
        .unwrap_or_default();
    // While the link is down the stream goes on over TCP: every second of the outage moves bytes on its socket
    // (at least 8 MiB/s over the time actually between two samples; a stream that stalls instead of failing over
    // moves none, and TCP on lo moves hundreds of MB/s even on a loaded machine).
    for (i, w) in during.windows(2).enumerate() {
        match (w[0].received(&peer), w[1].received(&peer)) {
            (Some(a), Some(b)) => {
                let secs = w[1].at.duration_since(w[0].at).as_secs_f64();
                let moved = b.saturating_sub(a);
                eprintln!(
                    "outage second {}: {:.0} MiB/s over TCP",
                    i + 1,
                    moved as f64 / secs / MIB as f64
                );
                if (moved as f64) < 8.0 * MIB as f64 * secs {
                    errors.push(format!(
                        "second {} of the outage: only {moved} bytes over TCP in {secs:.2} s (the stream stalled \
                         instead of failing over)",
                        i + 1
                    ));
                }
            }
            _ => errors.push(format!(
                "second {} of the outage: no stream socket from {peer:?} on port {port}",
                i + 1
            )),
        }
    }
    // A second after the link is back the stream is on the ring again: its socket is quiet while iperf3 goes on
    // (at most 1 MiB over at least 0.5 s of the 1.5 s after; on TCP it would be hundreds of MiB).
    let last = after
        .iter()
        .rev()
        .find_map(|s| s.received(&peer).map(|b| (s.at, b)));
    match (back.received(&peer), last) {
        (Some(b0), Some((t1, b1))) if t1.duration_since(back.at) >= Duration::from_millis(500) => {
            let moved = b1.saturating_sub(b0);
            eprintln!(
                "after the link came back: {moved} bytes over TCP in {:.2} s",
                t1.duration_since(back.at).as_secs_f64()
            );
            if moved > MIB {
                errors.push(format!(
                    "{moved} bytes over TCP in the {:.2} s from 1 s after the link came back: not back on NTB",
                    t1.duration_since(back.at).as_secs_f64()
                ));
            }
        }
        _ => errors.push(format!(
            "the stream's socket from {peer:?} was not seen for 0.5 s from 1 s after the link came back"
        )),
    }
    let stats = st.ce.stats().unwrap();
    let c = data_conn(&stats, port);
    if c.failovers < 1 || c.failbacks < 1 || c.failover_tx_bytes < 32 * MIB || c.on_tcp {
        errors.push(format!(
            "client data connection: failovers {}, failbacks {}, {} bytes over TCP, on TCP at the end: {}",
            c.failovers, c.failbacks, c.failover_tx_bytes, c.on_tcp
        ));
    }
    if stats.tcp_connections != 0 || stats.protocol_errors != 0 {
        errors.push(format!("client: {stats}"));
    }
    let s = st.se.stats().unwrap();
    if data_conn(&s, port).failover_rx_bytes < 32 * MIB || s.protocol_errors != 0 {
        errors.push(format!("server: {s}"));
    }
    assert!(
        errors.is_empty(),
        "{}\nclient {c:?}\nserver {s}\n{}\n{}",
        errors.join("\n"),
        st.client.describe(),
        st.server.proc.describe()
    );
}

#[test]
fn a_flapping_link_does_not_thrash() {
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let mut st = Stream::start("failover_flapping", 7);
    let (f, port) = (&st.f, st.port);
    // 40 flaps (down, then up) in 7 s.
    let t0 = Instant::now();
    for i in 0..40u64 {
        sleep_until(t0, Duration::from_millis(i * 170 + 100));
        link(f.emu_dir(), true);
        sleep_until(t0, Duration::from_millis(i * 170 + 185));
        link(f.emu_dir(), false);
    }
    let out = st.finish();
    let stats = st.ce.stats().unwrap();
    let c = data_conn(&stats, port);
    // Back-off: the hold on TCP doubles with each failover that follows a fail-back closely, so 40 flaps
    // move the connection a handful of times, not 40.
    assert!(
        (1..=12).contains(&c.failovers) && c.failbacks <= c.failovers && stats.protocol_errors == 0,
        "client data connection moved {} times and back {} times in 40 flaps\n{stats}",
        c.failovers,
        c.failbacks
    );
    assert!(out.sum_received.bytes > 0);
}
