//! End-to-end over the emulated device on one host: stream semantics (order, peeks, timeouts,
//! close and reset, sendfile, coalescing, concurrent and forked senders), and which path carried
//! the bytes (the kernel sockets see none). The rendezvous is upgrade.rs's, a peer writing into
//! our block hostile_frames.rs's, link faults linkfault.rs's.

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use transport::{Counter, IoError, RecvFlags, Settings, Transport};

use common::*;

#[test]
fn stream_is_intact_in_both_directions() {
    let (_d, dev) = device("stream");
    let t = transport(&dev, 64 << 10);
    let (c, s, ks, kt) = pair(&t);
    let total: u64 = std::env::var("T_TOTAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32 << 20);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut sent = 0u64;
            let mut k = 1usize;
            while sent < total {
                let n = ((k * 7919) % 100_000 + 1).min((total - sent) as usize);
                let buf: Vec<u8> = (sent..sent + n as u64).map(pattern).collect();
                assert_eq!(c.send(&[&buf], false, None).unwrap(), n);
                sent += n as u64;
                k += 1;
            }
            c.shutdown(false, true);
        });
        let mut got = 0u64;
        let mut buf = vec![0u8; 70_000];
        loop {
            let n = s
                .recv(&mut [&mut buf[..]], RecvFlags::default(), None)
                .unwrap();
            if n == 0 {
                break;
            }
            for (i, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(got + i as u64), "byte {}", got + i as u64);
            }
            got += n as u64;
        }
        assert_eq!(got, total, "EOF after exactly the bytes sent");
    });
    // Reverse direction still open after the client's half-close.
    assert_eq!(s.send(&[b"reply"], false, None).unwrap(), 5);
    let mut r = [0u8; 16];
    let n = c
        .recv(
            &mut [&mut r[..]],
            RecvFlags {
                waitall: false,
                ..Default::default()
            },
            Some(Duration::from_secs(5)),
        )
        .unwrap();
    assert_eq!(&r[..n], b"reply");
    assert_eq!(c.counter(Counter::TxBytes), total);
    assert_eq!(s.counter(Counter::RxBytes), total);
    // The kernel sockets carried nothing.
    kt.set_nonblocking(true).unwrap();
    let mut probe = [0u8; 1];
    let e = kt
        .peek(&mut probe)
        .expect_err("no byte ever crossed the TCP socket");
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    drop(ks);
}

#[test]
fn peek_waitall_nonblock_and_timeouts() {
    let (_d, dev) = device("flags");
    let t = transport(&dev, 16 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    let mut b = [0u8; 8];
    assert_eq!(
        s.recv(
            &mut [&mut b[..]],
            RecvFlags {
                nonblock: true,
                ..Default::default()
            },
            None
        ),
        Err(IoError::WouldBlock)
    );
    assert_eq!(
        s.recv(
            &mut [&mut b[..]],
            RecvFlags::default(),
            Some(Duration::from_millis(30))
        ),
        Err(IoError::TimedOut)
    );
    c.send(&[b"abc", b"def"], false, None).unwrap();
    assert_eq!(s.readable_bytes(), 6);
    let n = s
        .recv(
            &mut [&mut b[..4]],
            RecvFlags {
                peek: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(&b[..n], b"abcd");
    let n = s
        .recv(
            &mut [&mut b[..2], &mut [0u8; 0][..]],
            RecvFlags::default(),
            None,
        )
        .unwrap();
    assert_eq!(&b[..n], b"ab");
    std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            c.send(&[b"ghij"], false, None).unwrap();
        });
        let mut w = [0u8; 8];
        let n = s
            .recv(
                &mut [&mut w[..]],
                RecvFlags {
                    waitall: true,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(&w[..n], b"cdefghij", "MSG_WAITALL gathers across frames");
    });
    // A full ring: non-blocking send takes what fits, then EAGAIN.
    let big = vec![1u8; 64 << 10];
    let n = c.send(&[&big], true, None).unwrap();
    assert!(n > 0 && n < big.len());
    assert_eq!(c.send(&[&big], true, None), Err(IoError::WouldBlock));
    assert_eq!(
        c.send(&[&big], false, Some(Duration::from_millis(30))),
        Err(IoError::TimedOut)
    );
    assert!(!c.readiness().writable);
    let mut sink = vec![0u8; 1 << 20];
    s.recv(&mut [&mut sink[..]], RecvFlags::default(), None)
        .unwrap();
    assert!(
        c.readiness().writable,
        "credits returned make the sender writable"
    );
}

/// A timeout too long for the clock (SO_RCVTIMEO / SO_SNDTIMEO near their maximum) is no
/// deadline: the calls wait as without one, and never panic computing when it would end.
#[test]
fn timeouts_too_long_for_the_clock_are_no_deadline() {
    let (_d, dev) = device("longtimeout");
    let t = transport(&dev, 16 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    let forever = Some(Duration::MAX);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            c.send(&[b"abcd"], false, forever).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            c.send(&[b"efgh"], false, forever).unwrap();
        });
        let mut w = [0u8; 8];
        let n = s
            .recv(
                &mut [&mut w[..]],
                RecvFlags {
                    waitall: true,
                    ..Default::default()
                },
                forever,
            )
            .unwrap();
        assert_eq!(&w[..n], b"abcdefgh");
    });
    // A sender that waits for room, with such a timeout, until the reader drains the ring.
    let big = vec![7u8; 64 << 10];
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut sink = vec![0u8; 64 << 10];
            let mut got = 0;
            while got < big.len() {
                got += s
                    .recv(&mut [&mut sink[..]], RecvFlags::default(), forever)
                    .unwrap();
            }
        });
        assert_eq!(c.send(&[&big], false, forever), Ok(big.len()));
    });
}

#[test]
fn close_gives_eof_then_epipe() {
    let (_d, dev) = device("close");
    let t = transport(&dev, 16 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    c.send(&[b"last"], false, None).unwrap();
    drop(c);
    let mut b = [0u8; 8];
    assert_eq!(
        s.recv(&mut [&mut b[..]], RecvFlags::default(), None)
            .unwrap(),
        4
    );
    assert_eq!(
        s.recv(&mut [&mut b[..]], RecvFlags::default(), None)
            .unwrap(),
        0,
        "EOF after the data"
    );
    let r = s.readiness();
    assert!(r.rdhup);
    // As tcp_poll: the peer's close is EOF; hang-up needs our side shut too.
    assert!(!r.hup, "the peer's close alone is not a hang-up");
    assert_eq!(s.send(&[b"x"], false, None), Err(IoError::BrokenPipe));
    s.shutdown(false, true);
    assert!(s.readiness().hup, "both directions shut: hang-up");
}

/// A peer process that exits without closing (wrk does) shows only through its kernel's close
/// of the TCP socket: an edge for edge-triggered readiness, EOF for a non-blocking read, and a
/// send that would wait for its credits for ever fails instead.
#[test]
fn a_peer_that_exits_without_closing_is_an_edge_eof_and_epipe() {
    let (_d, dev) = device("exit");
    let t = transport(&dev, 16 << 10);
    let (c, s, ks, _kt) = pair(&t);
    let before = s.activity();
    // The process exits: the kernel closes its socket, nothing runs the connection's close.
    std::mem::forget(c);
    drop(ks);
    // What an epoll or poll wake-up on the TCP socket does (`look_at_tcp`); the FIN may take a
    // moment to arrive.
    let mut seen = false;
    for _ in 0..2000 {
        s.look_at_tcp();
        if s.readiness().rdhup {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(seen, "the TCP socket's end never showed in readiness");
    assert_ne!(
        s.activity(),
        before,
        "an edge-triggered reader must be told of the end"
    );
    let mut b = [0u8; 8];
    let nonblock = RecvFlags {
        nonblock: true,
        ..Default::default()
    };
    assert_eq!(
        s.recv(&mut [&mut b[..]], nonblock, None),
        Ok(0),
        "EOF, not EAGAIN, once readiness reported the end"
    );
    // Nobody drains the ring: a blocking send fills it and then fails rather than wait.
    let big = vec![7u8; 64 << 10];
    let first = s.send(&[&big], false, Some(Duration::from_secs(2)));
    assert!(
        matches!(first, Ok(n) if n < big.len()),
        "the first send fills the ring: {first:?}"
    );
    assert!(s.readiness().writable, "a send would not block: it fails");
    assert_eq!(
        s.send(&[&big], false, Some(Duration::from_secs(2))),
        Err(IoError::BrokenPipe)
    );
    assert_eq!(s.send(&[&big], true, None), Err(IoError::BrokenPipe));
}

#[test]
fn close_with_unread_data_resets() {
    let (_d, dev) = device("rst");
    let t = transport(&dev, 16 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    s.send(&[b"unread"], false, None).unwrap();
    drop(c); // the client never read "unread": TCP would send RST
    let mut b = [0u8; 8];
    assert_eq!(
        s.recv(&mut [&mut b[..]], RecvFlags::default(), None),
        Err(IoError::Reset)
    );
}
/// sendfile moves the producer counter too: a later send must still see the right credits
/// (a stale cache once reset nginx's connections after a sendfile larger than the ring).
#[test]
fn send_after_sendfile_larger_than_the_ring() {
    let (d, dev) = device("sendfile");
    let t = transport(&dev, 16 << 10);
    let (c, s, _a, _b) = pair(&t);
    let path = d.0.join("payload");
    let data: Vec<u8> = (0..(200u64 << 10)).map(pattern).collect();
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut off = 0i64;
            while (off as usize) < data.len() {
                let left = data.len() - off as usize;
                let n = c
                    .send_file(file.as_raw_fd(), Some(&mut off), left, false, None)
                    .expect("sendfile");
                assert!(n > 0);
            }
            c.send(&[b"tail"], false, None)
                .expect("a send after sendfile");
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8192];
        while got.len() < data.len() + 4 {
            let n = s
                .recv(
                    &mut [&mut buf[..]],
                    RecvFlags::default(),
                    Some(Duration::from_secs(10)),
                )
                .unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got[..data.len()] == data[..], "file bytes intact");
        assert_eq!(&got[data.len()..], b"tail");
    });
}

/// Ping-pong of small messages as fast as two threads can go (sockperf's pattern): every
/// reply matches its request.
#[test]
fn fast_ping_pong_keeps_messages_intact() {
    let (_d, dev) = device("pingpong");
    let t = transport(&dev, 64 << 10);
    let (c, s, _a, _b) = pair(&t);
    const N: u64 = 200_000;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut buf = [0u8; 14];
            for _ in 0..N {
                let mut got = 0;
                while got < 14 {
                    got += s
                        .recv(&mut [&mut buf[got..]], RecvFlags::default(), None)
                        .unwrap();
                }
                buf[9] = 2;
                s.send(&[&buf], false, None).unwrap();
            }
        });
        let mut back = [0u8; 14];
        for i in 0..N {
            let mut msg = [0u8; 14];
            msg[..8].copy_from_slice(&i.to_be_bytes());
            msg[9] = 3;
            c.send(&[&msg], false, None).unwrap();
            let mut got = 0;
            while got < 14 {
                got += c
                    .recv(&mut [&mut back[got..]], RecvFlags::default(), None)
                    .unwrap();
            }
            assert_eq!(
                u64::from_be_bytes(back[..8].try_into().unwrap()),
                i,
                "reply {i}"
            );
            assert_eq!(back[9], 2);
        }
    });
}

/// Read coalescing: a blocking read that finds data waiting on a stream keeps taking frames
/// that arrive within the gap, and returns them in one read; it does not after this side sent
/// (request/response), when it had to wait for the first frame, when non-blocking, or when off.
/// The gap is long here (1 s) and the frames come 20 ms or 300 ms apart, so the outcome does
/// not depend on timing.
#[test]
fn stream_reads_coalesce_and_exchanges_do_not() {
    let (_d, dev) = device("coalesce");
    let coalescing = |gap_ms: u64| {
        Transport::open(
            dev.clone(),
            Settings {
                ring_bytes: 64 << 10,
                completion: transport::CompletionMode::Poll,
                rx_coalesce: Duration::from_millis(gap_ms),
                ..Settings::default()
            },
        )
        .unwrap()
    };
    let t = coalescing(1000);
    let (c, s, _a, _b) = pair(&t);
    let msg = [7u8; 64];
    let mut buf = [0u8; 4096];
    let read = |flags: RecvFlags, buf: &mut [u8]| s.recv(&mut [buf], flags, None).unwrap();
    // One frame waiting, the next 20 ms later: one read returns both.
    std::thread::scope(|sc| {
        c.send(&[&msg], false, None).unwrap();
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            c.send(&[&msg], false, None).unwrap();
        });
        assert_eq!(read(RecvFlags::default(), &mut buf), 128);
    });
    assert_eq!(s.counter(Counter::Coalesced), 1);
    assert_eq!(s.counter(Counter::Reads), 1);
    // The same after this side sent: a request/response exchange is not held back.
    s.send(&[b"ok"], false, None).unwrap();
    std::thread::scope(|sc| {
        c.send(&[&msg], false, None).unwrap();
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            c.send(&[&msg], false, None).unwrap();
        });
        assert_eq!(read(RecvFlags::default(), &mut buf), 64);
        assert_eq!(read(RecvFlags::default(), &mut buf), 64);
    });
    // A read that had to wait for its first frame returns it at once.
    std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            c.send(&[&msg], false, None).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            c.send(&[&msg], false, None).unwrap();
        });
        assert_eq!(read(RecvFlags::default(), &mut buf), 64);
        assert_eq!(read(RecvFlags::default(), &mut buf), 64);
    });
    // Non-blocking reads never wait.
    c.send(&[&msg], false, None).unwrap();
    let nonblock = RecvFlags {
        nonblock: true,
        ..Default::default()
    };
    assert_eq!(read(nonblock, &mut buf), 64);
    assert_eq!(
        s.counter(Counter::Coalesced),
        1,
        "only the first read coalesced"
    );
    // A read that fills its buffer returns at once; the rest stays for the next read.
    c.send(&[&msg, &msg], false, None).unwrap();
    assert_eq!(read(RecvFlags::default(), &mut buf[..64]), 64);
    assert_eq!(read(nonblock, &mut buf), 64);
    let mut b = [0u8; 2];
    assert_eq!(c.recv(&mut [&mut b[..]], nonblock, None), Ok(2));
    assert_eq!(&b, b"ok");
    // Off (a zero gap): the second frame waits for the next read.
    let t0 = coalescing(0);
    let (c0, s0, _a0, _b0) = pair(&t0);
    std::thread::scope(|sc| {
        c0.send(&[&msg], false, None).unwrap();
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            c0.send(&[&msg], false, None).unwrap();
        });
        assert_eq!(
            s0.recv(&mut [&mut buf[..]], RecvFlags::default(), None),
            Ok(64)
        );
        assert_eq!(
            s0.recv(&mut [&mut buf[..]], RecvFlags::default(), None),
            Ok(64)
        );
    });
    assert_eq!(s0.counter(Counter::Coalesced), 0);
}

/// Several threads sending on one connection at once, through a ring smaller than two records,
/// so a sender keeps waiting for credits in the middle of its record while holding the send
/// lock: every record arrives whole (not interleaved with another thread's frames), and each
/// thread's records arrive in its order.
#[test]
fn concurrent_senders_keep_each_send_whole() {
    let (_d, dev) = device("senders");
    let t = transport(&dev, 4 << 10);
    let (c, s, _a, _b) = pair(&t);
    const THREADS: u64 = 4;
    const RECORDS: u64 = 2_000;
    const LEN: usize = 3000;
    let record = |id: u64, n: u64| -> Vec<u8> {
        let mut r = vec![0u8; LEN];
        r[..8].copy_from_slice(&id.to_le_bytes());
        r[8..16].copy_from_slice(&n.to_le_bytes());
        for (i, b) in r[16..].iter_mut().enumerate() {
            *b = (id as usize * 31 + n as usize * 7 + i) as u8;
        }
        r
    };
    std::thread::scope(|sc| {
        for id in 0..THREADS {
            let c = &c;
            sc.spawn(move || {
                for n in 0..RECORDS {
                    // Bounded: a broken lock corrupts the ring, and the test must fail, not hang.
                    let sent = c.send(&[&record(id, n)], false, Some(Duration::from_secs(10)));
                    assert_eq!(sent, Ok(LEN), "thread {id}, record {n}");
                }
            });
        }
        let mut next = [0u64; THREADS as usize];
        let mut rec = vec![0u8; LEN];
        for _ in 0..THREADS * RECORDS {
            let mut got = 0;
            while got < LEN {
                let r = s.recv(
                    &mut [&mut rec[got..]],
                    RecvFlags::default(),
                    Some(Duration::from_secs(10)),
                );
                got += r.unwrap_or_else(|e| panic!("recv: {e:?} (records so far: {next:?})"));
            }
            let id = u64::from_le_bytes(rec[..8].try_into().unwrap());
            assert!(id < THREADS, "record from thread {id}: records were mixed");
            let n = next[id as usize];
            assert!(
                rec == record(id, n),
                "thread {id}'s record {n} was split, mixed or out of order"
            );
            next[id as usize] += 1;
        }
    });
}
#[test]
fn a_forked_child_and_its_parent_read_and_send_in_turn() {
    // The cursors are private to each process; the copy in the block lets the parent go on
    // where its forked child stopped (and is taken only when it is consistent: the tests above).
    let (_d, dev) = device("forkturns");
    let t = transport(&dev, 16 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    let data: Vec<u8> = (0..2000).map(pattern).collect();
    c.send(&[&data[..1000]], false, None).unwrap();
    c.send(&[&data[1000..]], false, None).unwrap();
    // SAFETY: the child only receives and sends on the connection (no allocation on these
    // paths) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut b = [0u8; 1500];
        let ok = s.recv(&mut [&mut b[..]], NONBLOCK, None) == Ok(1500)
            && b[..] == data[..1500]
            && s.send(&[b"abc"], true, None) == Ok(3);
        // SAFETY: ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    assert!(pid > 0);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let mut b = [0u8; 1000];
    let n = s.recv(&mut [&mut b[..]], NONBLOCK, None).unwrap();
    assert_eq!(
        &b[..n],
        &data[1500..],
        "the parent reads on after its child"
    );
    s.send(&[b"def"], false, None).unwrap();
    let mut b = [0u8; 16];
    let mut got = Vec::new();
    while got.len() < 6 {
        let n = c
            .recv(&mut [&mut b[..]], RecvFlags::default(), None)
            .unwrap();
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, b"abcdef", "the parent sends after its child");
}

#[test]
fn a_blocking_send_to_a_dead_peer_with_a_full_ring_ends() {
    // The peer's process is gone without closing (its kernel closed the TCP socket; nothing
    // was written into our block) and its ring is full: the send can never go on, and must
    // not spin forever.
    let (_d, dev) = device("deadfull");
    let t = transport(&dev, 16 << 10);
    let (c, s, ks, kt) = pair(&t);
    std::mem::forget(s); // never closed: no FIN, no "closed" flag
    let big = vec![3u8; 64 << 10];
    assert!(c.send(&[&big], true, None).unwrap() > 0);
    drop(kt); // the peer's kernel closes its socket
    let c = Arc::new(c);
    let c2 = c.clone();
    let r = within("a blocking send", move || c2.send(&[&big], false, None));
    assert!(
        matches!(r, Err(IoError::Reset | IoError::BrokenPipe)),
        "{r:?}"
    );
    drop(ks);
}

#[test]
fn a_gone_flag_alone_does_not_make_a_blocking_recv_spin_past_its_timeout() {
    // GONE without FIN or RST (only a hostile peer writes that) made the connection "ready" for
    // a waiting reader that then found nothing to do, and woke again at once, for ever.
    let (_d, dev) = device("goneonly");
    let t = transport(&dev, 16 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    victims_block(&dev, &c)
        .atomic_u32(0x54)
        .unwrap()
        .store(4, std::sync::atomic::Ordering::Release);
    let s = Arc::new(s);
    let r = within("a blocking recv with a timeout", move || {
        let mut b = [0u8; 16];
        s.recv(
            &mut [&mut b[..]],
            RecvFlags::default(),
            Some(Duration::from_millis(30)),
        )
    });
    assert_eq!(r, Err(IoError::TimedOut));
}

/// The send lock's bias: one thread sends by `try_send` (it takes the bias) while another
/// joins by `send` at a different point in each round (it revokes the bias, waiting out a
/// biased send in flight), and a third by `try_send` (by compare-and-swap once revoked). Every
/// message must arrive whole and in its sender's order: no two sends ever wrote into the ring
/// at once. `try_send` is all or nothing: when it declines, nothing was sent.
#[test]
fn biased_send_lock_keeps_concurrent_senders_apart() {
    let (_d, dev) = device("biased");
    let t = transport(&dev, 64 << 10);
    const MSG: usize = 48;
    const PER_THREAD: u64 = 3_000;
    const THREADS: u64 = 3;
    let message = |thread: u64, i: u64| {
        let mut m = [0u8; MSG];
        m[..8].copy_from_slice(&thread.to_le_bytes());
        m[8..16].copy_from_slice(&i.to_le_bytes());
        for (k, b) in m[16..].iter_mut().enumerate() {
            *b = (thread * 131 + i * 7 + k as u64) as u8;
        }
        m
    };
    for round in 0..200u64 {
        let (c, s, _a, _b) = pair(&t);
        let sent_by_owner = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|sc| {
            for th in 0..THREADS {
                let (c, sent_by_owner) = (&c, &sent_by_owner);
                sc.spawn(move || {
                    if th > 0 {
                        // Join after the owner has sent a different number of messages each
                        // round (the revocation lands at a different point of its sends).
                        let after = (round * 37 + th * 11) % 500;
                        while sent_by_owner.load(Relaxed) < after {
                            std::hint::spin_loop();
                        }
                    }
                    for i in 0..PER_THREAD {
                        let m = message(th, i);
                        let by_try = th != 1 && c.try_send(&m) == Some(MSG);
                        if !by_try {
                            assert_eq!(c.send(&[&m], false, None), Ok(MSG));
                        }
                        if th == 0 {
                            sent_by_owner.store(i + 1, Relaxed);
                        }
                    }
                });
            }
            let mut next = [0u64; THREADS as usize];
            let mut buf = vec![0u8; 64 << 10];
            let mut have = 0usize;
            let mut messages = 0u64;
            while messages < THREADS * PER_THREAD {
                // A broken lock corrupts the ring or stalls it: a stall fails here.
                have += s
                    .recv(
                        &mut [&mut buf[have..]],
                        RecvFlags::default(),
                        Some(Duration::from_secs(10)),
                    )
                    .unwrap_or_else(|e| panic!("round {round}: {e:?} after {messages}"));
                let whole = have / MSG * MSG;
                for m in buf[..whole].chunks(MSG) {
                    let th = u64::from_le_bytes(m[..8].try_into().unwrap());
                    let i = u64::from_le_bytes(m[8..16].try_into().unwrap());
                    assert!(
                        th < THREADS,
                        "round {round}, message {messages}: thread {th}"
                    );
                    assert_eq!(
                        i, next[th as usize],
                        "round {round}: thread {th} out of order"
                    );
                    assert_eq!(m, &message(th, i)[..], "round {round}: message damaged");
                    next[th as usize] += 1;
                    messages += 1;
                }
                buf.copy_within(whole..have, 0);
                have -= whole;
            }
        });
    }
}
