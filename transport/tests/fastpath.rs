//! The per-call fast path over the emulated device on one host: the fast read beside the
//! general one on one stream, and the rings an epoll registration asks its peer for (and takes
//! back when it goes). The stream semantics are loopback.rs's.

mod common;

use std::sync::Arc;
use std::time::Duration;

use transport::{Counter, RecvFlags};

use common::*;

/// The fast read (`try_recv`, what the shim's `read` and `recv` hooks call first) and the
/// general one (`recv`) take turns on one stream through a small ring (pad frames at every
/// lap's end, credits the sender waits for), with buffers smaller and larger than the frames,
/// blocking and not; halfway the reading moves to another thread (which takes the receive
/// lock from the first thread's bias). Every byte arrives once and in order: a fast read that
/// declined consumed nothing, one that read committed its position and returned the credits
/// (else the sender stalls on a full ring and the read times out).
#[test]
fn fast_and_general_reads_share_one_stream() {
    let (_d, dev) = device("tryrecv");
    let t = transport(&dev, 16 << 10);
    let (c, s, _a, _b) = pair(&t);
    const TOTAL: u64 = 3 << 20;
    let s = Arc::new(s);
    let read = |from: u64, until: u64, seed: u64| -> (u64, u64) {
        let (mut at, mut k, mut fast) = (from, seed, 0u64);
        let mut buf = vec![0u8; 8192];
        while at < until {
            k = k * 6364136223846793005 + 1442695040888963407;
            let want = (1 + (k >> 33) % 8192).min(until - at) as usize;
            let b = &mut buf[..want];
            let n = match s.try_recv(b, (k >> 20) & 1 == 0) {
                Some(n) => {
                    fast += 1;
                    n
                }
                None => s
                    .recv(
                        &mut [&mut *b],
                        RecvFlags::default(),
                        Some(Duration::from_secs(10)),
                    )
                    .unwrap_or_else(|e| panic!("at byte {at}: {e:?}")),
            };
            assert!(n > 0 && n <= want, "at byte {at}: read {n} of {want}");
            for (i, &x) in b[..n].iter().enumerate() {
                assert_eq!(x, pattern(at + i as u64), "byte {}", at + i as u64);
            }
            at += n as u64;
        }
        (at, fast)
    };
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut at = 0u64;
            let mut k = 1u64;
            while at < TOTAL {
                k = k * 6364136223846793005 + 1442695040888963407;
                let n = (1 + (k >> 33) % 3000).min(TOTAL - at);
                let m: Vec<u8> = (at..at + n).map(pattern).collect();
                let sent = match c.try_send(&m) {
                    Some(n) => n,
                    None => c.send(&[&m], false, None).unwrap(),
                };
                assert_eq!(sent as u64, n);
                at += n;
            }
        });
        let (half, fast1) = read(0, TOTAL / 2, 7);
        let (end, fast2) = sc.spawn(move || read(half, TOTAL, 11)).join().unwrap();
        assert_eq!(end, TOTAL);
        assert!(fast1 > 0 && fast2 > 0, "fast reads: {fast1}, {fast2}");
    });
}

/// An epoll registration that asked for credits and goes (an event loop takes EPOLLOUT away once
/// its request is written, and adds it again for the next: wrk) takes its flag with it, so the
/// peer's next credit return rings nobody; one that asked for data keeps the data flag while it
/// stays. Left set, every request cost the client an extra ring and wake-up (nginx rang wrk
/// twice per request: benches/results/epoll-toggle.md).
#[test]
fn a_registration_that_goes_takes_its_ring_with_it() {
    let (_d, dev) = device("regflag");
    let t = transport(&dev, 64 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    let c = Arc::new(c);
    let mut buf = [0u8; 64];
    for round in 0..50 {
        // The client's registration: readable and writable, armed as epoll_ctl does...
        let both = c.interest(true, true);
        c.rearm(true, true);
        // ...the request written, EPOLLOUT taken away (EPOLL_CTL_MOD: the new interest first).
        assert_eq!(c.send(&[&[round as u8; 64]], false, None).unwrap(), 64);
        let read_only = c.interest(true, false);
        drop(both);
        // The server reads the request (its credit return looks for a waiting sender)...
        let rung = s.counter(Counter::DoorbellsRung);
        let n = s
            .recv(&mut [&mut buf[..]], RecvFlags::default(), None)
            .unwrap();
        assert_eq!(n, 64);
        assert_eq!(
            s.counter(Counter::DoorbellsRung),
            rung,
            "round {round}: the server rang the client for credits nobody waits for"
        );
        // ...and answers: the client still asks for data, so that rings.
        assert_eq!(s.send(&[&buf[..]], false, None).unwrap(), 64);
        assert_eq!(
            s.counter(Counter::DoorbellsRung),
            rung + 1,
            "round {round}: the answer did not ring the registered client"
        );
        assert_eq!(
            c.recv(&mut [&mut buf[..]], RecvFlags::default(), None)
                .unwrap(),
            64
        );
        drop(read_only);
    }
}
