//! End-to-end over the emulated device: a link fault moves a connection's stream to its TCP
//! socket and back, byte-exact, by sends or by readiness alone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ntbdrv::emu::{Config, EmuDevice, Options};
use transport::{Connection, Counter, RecvFlags};

use common::*;

/// The device of `device(tag)` opened a second time, for injecting faults.
fn faults_of(dir: &Dir) -> EmuDevice {
    EmuDevice::open(&Options {
        dir: dir.0.clone(),
        name: "lo".into(),
        side: 0,
        config: Config {
            mw_size: 16 << 20,
            ..Config::default()
        },
    })
    .unwrap()
}

/// Read exactly `n` bytes (blocking) and check them against `pattern` from `at`.
fn read_exact_pattern(s: &Connection, at: u64, n: u64) {
    let mut got = 0u64;
    let mut buf = vec![0u8; 7000];
    while got < n {
        let want = buf.len().min((n - got) as usize);
        let k = s
            .recv(
                &mut [&mut buf[..want]],
                RecvFlags::default(),
                Some(Duration::from_secs(10)),
            )
            .unwrap();
        assert!(k > 0, "EOF after {got} of {n} bytes");
        for (i, b) in buf[..k].iter().enumerate() {
            assert_eq!(
                *b,
                pattern(at + got + i as u64),
                "byte {}",
                at + got + i as u64
            );
        }
        got += k as u64;
    }
}

#[test]
fn a_link_fault_moves_the_stream_to_tcp_and_back_byte_exact() {
    let (d, dev) = device("failover");
    let faults = faults_of(&d);
    let t = transport(&dev, 64 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    let data: Vec<u8> = (0..(1u64 << 20)).map(pattern).collect();
    // Fill the ring and more: the sender waits for credits, sees the link go down, and goes on
    // over TCP while the receiver still has the ring's bytes to drain.
    let (c, sent) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            c.send(&[&data[..512 << 10]], false, None).unwrap();
            c
        });
        std::thread::sleep(Duration::from_millis(50));
        faults.faults().inject(ntbdrv::emu::Fault::LinkDown);
        // A peek on the draining side leaves the bytes where they are.
        let mut p = [0u8; 5];
        let n = s
            .recv(
                &mut [&mut p[..]],
                RecvFlags {
                    peek: true,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert!(
            n > 0
                && p[..n]
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == pattern(i as u64))
        );
        read_exact_pattern(&s, 0, 512 << 10);
        (h.join().unwrap(), 512u64 << 10)
    });
    assert!(
        c.counter(Counter::Failovers) >= 1,
        "the sender did not fail over"
    );
    assert!(c.counter(Counter::TcpTxBytes) > 0 && s.counter(Counter::TcpRxBytes) > 0);
    assert!(c.on_tcp());
    // The link comes back; after the hold the next send returns to the ring.
    faults.faults().clear();
    std::thread::sleep(Duration::from_millis(150));
    let ring_before = c.counter(Counter::TxBytes);
    c.send(&[&data[sent as usize..(sent as usize + 1000)]], false, None)
        .unwrap();
    assert_eq!(c.counter(Counter::Failbacks), 1, "not back on the ring");
    assert!(c.counter(Counter::TxBytes) >= ring_before + 1000);
    // Another fault while the reader has not read the bytes sent since: they are kept, in order.
    faults.faults().inject(ntbdrv::emu::Fault::LinkDown);
    let rest = &data[(sent as usize + 1000)..];
    std::thread::scope(|sc| {
        sc.spawn(|| {
            c.send(&[rest], false, None).unwrap();
            // Half-close on TCP: the reader gets every byte, then EOF.
            c.shutdown(false, true);
        });
        // MSG_WAITALL across a switch and many TCP records: one call, the whole request.
        let mut got = vec![0u8; data.len() - sent as usize];
        let (a, b) = got.split_at_mut(1000);
        let n = s
            .recv(
                &mut [a, b],
                RecvFlags {
                    waitall: true,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(n, got.len(), "MSG_WAITALL returned short on the TCP path");
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(sent + i as u64)));
    });
    let mut b = [0u8; 1];
    assert_eq!(s.recv(&mut [&mut b[..]], RecvFlags::default(), None), Ok(0));
    assert_eq!(c.counter(Counter::Failovers), 2);
    faults.faults().clear();
}

/// Waits (up to 2 s) until `ok` holds, calling it again and again; the last answer.
fn eventually(mut ok: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    ok()
}

fn nonblock() -> RecvFlags {
    RecvFlags {
        nonblock: true,
        ..Default::default()
    }
}

/// An application that only waits in poll/epoll on a ring that never fills never sends or receives on a failing
/// ring: readiness alone takes an idle connection off a downed link (each end its sending side), reports the
/// records the peer sent as readable only when they carry bytes (an END alone is nothing to read: a blocking reader
/// told otherwise sleeps in its read), and brings both sides back once the link is up again.
#[test]
fn readiness_alone_moves_an_idle_connection_off_a_downed_link_and_back() {
    let (_d, dev) = device("fo-ready");
    let t = transport(&dev, 64 << 10);
    let (cc, sc, _s, _srv) = pair(&t);
    let mut buf = [0u8; 64];
    assert_eq!(cc.send(&[b"ping"], false, None).unwrap(), 4);
    assert_eq!(sc.recv(&mut [&mut buf[..]], nonblock(), None), Ok(4));
    dev.link_disable().unwrap();
    std::thread::sleep(Duration::from_millis(5)); // past the process's last look at the link
    let r = cc.readiness();
    assert!(
        cc.sending_on_tcp(),
        "the client's readiness did not leave the ring: {r:?}"
    );
    sc.look_at_tcp(); // as an epoll wait does when the socket has news
    let r = sc.readiness();
    assert!(
        sc.sending_on_tcp(),
        "the server's readiness did not leave the ring: {r:?}"
    );
    assert!(!r.readable, "an END alone was reported readable: {r:?}");
    assert!(
        !cc.readiness().readable,
        "an END alone was reported readable"
    );
    // A request and its answer, over TCP.
    assert_eq!(cc.send(&[b"request"], false, None), Ok(7));
    assert!(
        eventually(|| sc.readiness().readable),
        "the request is not readable"
    );
    assert_eq!(sc.recv(&mut [&mut buf[..]], nonblock(), None), Ok(7));
    assert_eq!(&buf[..7], b"request");
    assert!(!sc.readiness().readable);
    assert_eq!(sc.send(&[b"answer"], false, None), Ok(6));
    assert!(
        eventually(|| cc.readiness().readable),
        "the answer is not readable"
    );
    assert_eq!(cc.recv(&mut [&mut buf[..]], nonblock(), None), Ok(6));
    assert_eq!(&buf[..6], b"answer");
    let on_tcp = (
        cc.counter(Counter::TcpTxBytes),
        sc.counter(Counter::TcpTxBytes),
    );
    assert_eq!(on_tcp, (7, 6));
    // The link is back: after the hold, readiness brings both sending sides back to the ring.
    dev.link_enable().unwrap();
    assert!(
        eventually(|| {
            cc.readiness();
            sc.readiness();
            !cc.sending_on_tcp() && !sc.sending_on_tcp()
        }),
        "not back on the ring"
    );
    let ring = cc.counter(Counter::TxBytes);
    assert_eq!(cc.send(&[b"again"], false, None), Ok(5));
    assert!(eventually(|| sc.readiness().readable));
    assert_eq!(sc.recv(&mut [&mut buf[..]], nonblock(), None), Ok(5));
    assert_eq!(&buf[..5], b"again");
    assert_eq!(
        cc.counter(Counter::TxBytes),
        ring + 5,
        "not sent on the ring"
    );
    for c in [&cc, &sc] {
        assert_eq!(
            (c.counter(Counter::Failovers), c.counter(Counter::Failbacks)),
            (1, 1)
        );
    }
}

/// FIONREAD while the ring is drained up to the peer's END: the ring's bytes below the END and the payload of the
/// DATA records after it (not their headers), as the reads then return them. The sender fills the ring on a downed
/// link, and its wait for room sends the rest over TCP.
#[test]
fn fionread_counts_the_ring_up_to_the_end_and_the_records_after_it() {
    const N: usize = 100_000;
    let (_d, dev) = device("fo-fionread");
    let t = transport(&dev, 64 << 10);
    let (cc, sc, _s, _srv) = pair(&t);
    let data: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
    dev.link_disable().unwrap();
    assert_eq!(
        cc.send(&[&data], false, Some(Duration::from_secs(10))),
        Ok(N)
    );
    let on_tcp = cc.counter(Counter::TcpTxBytes) as usize;
    assert!(on_tcp > 0 && on_tcp < N, "{on_tcp} of {N} bytes over TCP");
    assert!(
        eventually(|| sc.readable_bytes() >= N),
        "FIONREAD {} of {N} ({on_tcp} over TCP)",
        sc.readable_bytes()
    );
    assert_eq!(sc.readable_bytes(), N);
    let mut buf = vec![0u8; N];
    // Part of the ring: the rest of it and the records remain.
    assert_eq!(sc.recv(&mut [&mut buf[..1000]], nonblock(), None), Ok(1000));
    assert_eq!(sc.readable_bytes(), N - 1000);
    let mut got = 1000;
    while got < N {
        let n = sc
            .recv(&mut [&mut buf[got..]], nonblock(), None)
            .unwrap_or_else(|e| panic!("after {got}: {e:?}"));
        got += n;
        assert_eq!(sc.readable_bytes(), N - got, "after {got}");
    }
    assert!(buf == data);
}

/// A peer that half-closes while its direction is on TCP (failover) still reads: its kernel's FIN after its last
/// record is not its death, so a send of ours that waits for its credits on the ring goes on until they come (it
/// failed with EPIPE: `failover::echo_is_byte_identical_across_many_faults` did so in about 1 run of 7).
#[test]
fn a_half_close_on_tcp_is_not_the_peers_death() {
    const N: usize = 256 << 10;
    let (_d, dev) = device("fo-halfclose");
    let t = transport(&dev, 64 << 10);
    let (cc, sc, _s, _srv) = pair(&t);
    let cc = Arc::new(cc);
    let sc = Arc::new(sc);
    dev.link_disable().unwrap();
    std::thread::sleep(Duration::from_millis(5)); // past the process's last look at the link
    cc.readiness();
    sc.look_at_tcp();
    sc.readiness();
    assert!(cc.sending_on_tcp() && sc.sending_on_tcp(), "not on TCP");
    // The client's last bytes and its half-close, over TCP; the server reads them and the end.
    assert_eq!(cc.send(&[b"last words"], false, None), Ok(10));
    cc.shutdown(false, true);
    let mut buf = vec![0u8; 64 << 10];
    let mut got = Vec::new();
    loop {
        match sc.recv(
            &mut [&mut buf[..]],
            RecvFlags::default(),
            Some(Duration::from_secs(5)),
        ) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("server's read: {e:?}"),
        }
    }
    assert_eq!(got, b"last words");
    // The link is back: the server's direction returns to the ring; the client's stays ended on TCP.
    dev.link_enable().unwrap();
    assert!(
        eventually(|| {
            sc.readiness();
            !sc.sending_on_tcp()
        }),
        "the server's direction did not come back to the ring"
    );
    // Four rings' worth: the server's send waits for credits that the client returns as it reads.
    let reader = {
        let cc = cc.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8 << 10];
            let mut n = 0usize;
            while n < N {
                std::thread::sleep(Duration::from_millis(2));
                match cc.recv(
                    &mut [&mut buf[..]],
                    RecvFlags::default(),
                    Some(Duration::from_secs(5)),
                ) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => panic!("client's read: {e:?}"),
                }
            }
            n
        })
    };
    let data = vec![7u8; N];
    let mut sent = 0;
    while sent < N {
        match sc.send(&[&data[sent..]], false, Some(Duration::from_secs(10))) {
            Ok(k) => sent += k,
            Err(e) => panic!("the server's send after {sent} bytes: {e:?} (the client's half-close taken for its death)"),
        }
    }
    assert_eq!(reader.join().unwrap(), N);
}
