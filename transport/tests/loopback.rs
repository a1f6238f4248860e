//! End-to-end over the emulated device on one host: the rendezvous, stream semantics, and which
//! path carried the bytes (the kernel sockets see none).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ntbdrv::emu::{Config, EmuDevice, Options};
use ntbdrv::NtbDevice;
use socket2::{Domain, Socket, Type};
use transport::{
    Connection, Counter, Endpoint, IoError, Outcome, Pending, Reason, RecvFlags, Settings,
    Transport,
};

struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn device(tag: &str) -> (Dir, Arc<dyn NtbDevice>) {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!("transport-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    let opts = Options {
        dir: p.clone(),
        name: "lo".into(),
        side: 0,
        config: Config {
            mw_size: 16 << 20,
            ..Config::default()
        },
    };
    let dev = EmuDevice::open(&opts).unwrap();
    (Dir(p), Arc::new(dev))
}

/// Side `side` of a two-host device in `dir` (made by the first caller).
fn two_host(dir: &std::path::Path, side: u32) -> Arc<dyn NtbDevice> {
    let opts = Options {
        dir: dir.to_path_buf(),
        name: "th".into(),
        side,
        config: Config {
            topology: ntbdrv::emu::Topology::TwoHost,
            mw_size: 16 << 20,
            ..Config::default()
        },
    };
    Arc::new(EmuDevice::open(&opts).unwrap())
}

fn transport(dev: &Arc<dyn NtbDevice>, ring: u64) -> Transport {
    Transport::open(
        dev.clone(),
        Settings {
            ring_bytes: ring,
            ..Settings::default()
        },
    )
    .unwrap()
}

type Pair = (Connection, Connection, Socket, std::net::TcpStream);

/// A connected pair: (client connection, server connection, the kernel sockets).
fn pair(t: &Transport) -> Pair {
    connect_pair(t).unwrap_or_else(|e| panic!("{e}"))
}

/// A pair, or why the upgrade did not happen.
fn connect_pair(t: &Transport) -> Result<Pair, String> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let listener = t
        .listen(l.as_raw_fd(), Endpoint::from_std(server_addr))
        .unwrap();
    let r = upgrade(t, &l);
    t.unlisten(listener);
    r
}

/// Connect to `l` (a pcisock listener is registered for it) and upgrade both ends.
fn upgrade(t: &Transport, l: &TcpListener) -> Result<Pair, String> {
    let server_addr = l.local_addr().unwrap();
    let (s, _, pending) = offer_from(t, server_addr).map_err(|r| format!("offer: {r}"))?;
    let upgraded = (|| {
        s.connect(&server_addr.into()).unwrap();
        let (srv, peer) = l.accept().unwrap();
        let sc = t.accept(
            srv.as_raw_fd(),
            Endpoint::from_std(server_addr),
            Endpoint::from_std(peer),
        );
        let cc = match t.complete(pending, s.as_raw_fd(), true) {
            Outcome::Connected(c) => c,
            Outcome::Tcp(r) => return Err(format!("client stayed on TCP: {r}")),
            Outcome::Waiting(_) => return Err("blocking completion returned Waiting".into()),
        };
        let sc = sc.map_err(|r| format!("server stayed on TCP: {r}"))?;
        Ok((cc, sc, srv))
    })();
    upgraded.map(|(cc, sc, srv)| (cc, sc, s, srv))
}

/// A client socket bound to an ephemeral port with its offer to `server` posted (not yet
/// connected): the socket, its address, and the pending offer.
fn offer_from(t: &Transport, server: SocketAddr) -> Result<(Socket, SocketAddr, Pending), Reason> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let local = s.local_addr().unwrap().as_socket().unwrap();
    let p = t.offer(
        Endpoint::from_std(local),
        Endpoint::from_std(server),
        s.as_raw_fd(),
    )?;
    Ok((s, local, p))
}

/// Two machines: the server often listens before the other host's bridge is up. Its listener is
/// published when the link comes up, and clients then upgrade (ivshmem guests found this).
#[test]
fn a_listener_made_while_the_link_is_down_is_published_when_it_comes_up() {
    let (_d, dev) = device("linkup");
    let t = transport(&dev, 64 << 10);
    dev.link_disable().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener = t
        .listen(l.as_raw_fd(), Endpoint::from_std(l.local_addr().unwrap()))
        .expect("a listener while the link is down");
    let before = upgrade(&t, &l)
        .err()
        .expect("no upgrade while the link is down");
    assert!(before.contains("LinkDown"), "{before}");
    dev.link_enable().unwrap();
    let t0 = std::time::Instant::now();
    let (cc, sc, _s, _srv) = loop {
        match upgrade(&t, &l) {
            Ok(p) => break p,
            Err(e) if e.contains("NoListener") && t0.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("after link-up: {e}"),
        }
    };
    assert_eq!(cc.send(&[b"up"], false, None).unwrap(), 2);
    let mut buf = [0u8; 2];
    let got = sc.recv(&mut [&mut buf[..]], RecvFlags::default(), None);
    assert_eq!((got.unwrap(), &buf), (2, b"up"));
    t.unlisten(listener);
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

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

#[test]
fn no_listener_means_tcp() {
    let (_d, dev) = device("nolistener");
    let t = transport(&dev, 16 << 10);
    let r = t.offer(
        Endpoint::from_std("127.0.0.1:40000".parse().unwrap()),
        Endpoint::from_std("127.0.0.1:40001".parse().unwrap()),
        -1,
    );
    assert_eq!(r.err(), Some(Reason::NoListener));
}

#[test]
fn accept_without_offer_is_tcp() {
    let (_d, dev) = device("nooffer");
    let t = transport(&dev, 16 << 10);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A plain client, still connected: NoOffer.
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, peer) = l.accept().unwrap();
    let local = Endpoint::from_std(l.local_addr().unwrap());
    let r = t.accept(s.as_raw_fd(), local, Endpoint::from_std(peer));
    assert_eq!(r.err(), Some(Reason::NoOffer));
    // A client that hung up before the accept (a pcisock client withdraws its offer first):
    // ClosedBeforeAccept, which nothing needs to fix.
    drop(c);
    let r = t.accept(s.as_raw_fd(), local, Endpoint::from_std(peer));
    assert_eq!(r.err(), Some(Reason::ClosedBeforeAccept));
}

#[test]
fn many_connections_return_their_window_space() {
    let (_d, dev) = device("many");
    let t = transport(&dev, 64 << 10);
    for _ in 0..300 {
        let (c, s, _a, _b) = pair(&t);
        c.send(&[b"x"], false, None).unwrap();
        let mut b = [0u8; 1];
        s.recv(&mut [&mut b[..]], RecvFlags::default(), None)
            .unwrap();
        drop(c);
        drop(s);
    }
}

/// Several offers outstanding at once (iperf -P 4 connects its streams in parallel).
#[test]
fn concurrent_offers_are_all_answered() {
    let (_d, dev) = device("concurrent");
    let t = transport(&dev, 64 << 10);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let _listener = t
        .listen(l.as_raw_fd(), Endpoint::from_std(server_addr))
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&"0.0.0.0:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let local = s.local_addr().unwrap().as_socket().unwrap();
        let p = t
            .offer(
                Endpoint::from_std(local),
                Endpoint::from_std(server_addr),
                s.as_raw_fd(),
            )
            .unwrap();
        clients.push((s, p));
    }
    for (s, _) in &clients {
        s.connect(&server_addr.into()).unwrap();
    }
    let mut servers = Vec::new();
    for _ in 0..4 {
        let (srv, peer) = l.accept().unwrap();
        let c = t.accept(
            srv.as_raw_fd(),
            Endpoint::from_std(server_addr),
            Endpoint::from_std(peer),
        );
        assert!(c.is_ok(), "accept of {peer}: {:?}", c.err());
        servers.push((srv, c.unwrap()));
    }
    for (s, p) in clients {
        assert!(matches!(
            t.complete(p, s.as_raw_fd(), true),
            Outcome::Connected(_)
        ));
    }
}

/// Offers posted from several threads at once, answered by another transport instance (as two
/// processes would).
#[test]
fn offers_from_threads_are_all_answered() {
    let (_d, dev) = device("threads");
    let server = transport(&dev, 64 << 10);
    let client = Arc::new(transport(&dev, 64 << 10));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let _listener = server
        .listen(l.as_raw_fd(), Endpoint::from_std(server_addr))
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.bind(&"0.0.0.0:0".parse::<SocketAddr>().unwrap().into())
                    .unwrap();
                let local = s.local_addr().unwrap().as_socket().unwrap();
                let p = client
                    .offer(
                        Endpoint::from_std(local),
                        Endpoint::from_std(server_addr),
                        s.as_raw_fd(),
                    )
                    .unwrap();
                s.connect(&server_addr.into()).unwrap();
                let ok = matches!(
                    client.complete(p, s.as_raw_fd(), true),
                    Outcome::Connected(_)
                );
                (s, ok)
            })
        })
        .collect();
    let mut servers = Vec::new();
    for _ in 0..4 {
        let (srv, peer) = l.accept().unwrap();
        let c = server.accept(
            srv.as_raw_fd(),
            Endpoint::from_std(server_addr),
            Endpoint::from_std(peer),
        );
        assert!(c.is_ok(), "accept of {peer}: {:?}", c.err());
        servers.push((srv, c.unwrap()));
    }
    for t in threads {
        assert!(t.join().unwrap().1);
    }
}

/// A client whose server takes longer than the answer timeout to reach it in its backlog, while
/// accepting the connections ahead of it, still gets the NTB path (a server with hundreds of
/// clients accepts the last ones late); a server that accepts nothing is given up on.
#[test]
fn a_server_that_keeps_accepting_is_waited_for() {
    let (_d, dev) = device("slowaccept");
    let timeout = Duration::from_millis(300);
    let open = || {
        Transport::open(
            dev.clone(),
            Settings {
                ring_bytes: 64 << 10,
                answer_timeout: timeout,
                ..Settings::default()
            },
        )
        .unwrap()
    };
    let (client, server) = (open(), open());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let _listener = server
        .listen(l.as_raw_fd(), Endpoint::from_std(server_addr))
        .unwrap();

    // Five plain connections ahead of ours in the backlog, then our offer.
    let ahead: Vec<_> = (0..5)
        .map(|_| std::net::TcpStream::connect(server_addr).unwrap())
        .collect();
    let (s, local, p) = offer_from(&client, server_addr).unwrap();
    s.connect(&server_addr.into()).unwrap();

    // The server accepts one connection every half answer timeout: ours comes after 3 timeouts.
    let srv = std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..6 {
            std::thread::sleep(timeout / 2);
            let (k, peer) = l.accept().unwrap();
            let r = server.accept(
                k.as_raw_fd(),
                Endpoint::from_std(server_addr),
                Endpoint::from_std(peer),
            );
            got.push((peer, r.map(|_| ()), k));
        }
        (got, l, server)
    });
    let outcome = client.complete(p, s.as_raw_fd(), true);
    let (got, l, server) = srv.join().unwrap();
    let reasons: Vec<_> = got.iter().map(|(peer, r, _)| (*peer, *r)).collect();
    assert!(
        matches!(outcome, Outcome::Connected(_)),
        "client gave up: {:?}; server accepts: {reasons:?}",
        match outcome {
            Outcome::Tcp(r) => r.to_string(),
            _ => "waiting".into(),
        }
    );
    assert_eq!(reasons.last().unwrap(), &(local, Ok(())));
    for (peer, r) in &reasons[..5] {
        assert_eq!(*r, Err(Reason::NoOffer), "{peer}");
    }
    drop(ahead);

    // Now a server that accepts nothing more: the client stays on TCP after the timeout.
    let (s, _, p) = offer_from(&client, server_addr).unwrap();
    s.connect(&server_addr.into()).unwrap();
    assert!(matches!(
        client.complete(p, s.as_raw_fd(), true),
        Outcome::Tcp(Reason::NoAnswer)
    ));
    drop((l, server));
}

/// More connections at once than the device has doorbell bits (each endpoint has its own
/// interrupt vector).
#[test]
fn more_connections_than_doorbell_bits() {
    let (_d, dev) = device("wide");
    let t = transport(&dev, 16 << 10);
    let pairs: Vec<_> = (0..100).map(|_| pair(&t)).collect();
    for (i, (c, s, _, _)) in pairs.iter().enumerate() {
        let msg = format!("conn {i}");
        c.send(&[msg.as_bytes()], false, None).unwrap();
        let mut b = [0u8; 16];
        let n = s
            .recv(
                &mut [&mut b[..]],
                RecvFlags::default(),
                Some(Duration::from_secs(5)),
            )
            .unwrap();
        assert_eq!(&b[..n], msg.as_bytes());
    }
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

/// When the windows fill up, new connections get smaller rings instead of none.
#[test]
fn rings_shrink_when_windows_fill() {
    let (_d, dev) = device("shrink");
    // 2 windows of 16 MiB: 15 endpoints of 1 MiB per window, so 15 connections if rings were
    // fixed at 1 MiB; smaller rings fit in what is left.
    let t = transport(&dev, 1 << 20);
    let mut pairs = Vec::new();
    while pairs.len() < 100 {
        match connect_pair(&t).ok() {
            Some(p) => pairs.push(p),
            None => break,
        }
    }
    assert!(
        pairs.len() > 15,
        "only {} connections: rings did not shrink",
        pairs.len()
    );
    for (i, (c, s, _, _)) in pairs.iter().enumerate() {
        let msg = vec![i as u8; 100_000];
        std::thread::scope(|sc| {
            sc.spawn(|| c.send(&[&msg], false, None).unwrap());
            let mut got = vec![0u8; msg.len()];
            let n = s
                .recv(
                    &mut [&mut got[..]],
                    RecvFlags {
                        waitall: true,
                        ..Default::default()
                    },
                    Some(Duration::from_secs(10)),
                )
                .unwrap();
            assert_eq!(n, msg.len());
            assert!(got == msg, "connection {i}");
        });
    }
}

/// Like `pair`, but `None` when the device has no room for another connection.
/// Pin the calling thread to `cpu`; false if the machine has no such CPU for us.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it for cpu < 1024;
    // sched_setaffinity(0, …) only changes the calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[test]
fn peers_learn_whether_they_share_a_cpu() {
    let (_d, dev) = device("samecpu");
    let t = transport(&dev, 64 << 10);
    let (c, s, _a, _b) = pair(&t);
    std::thread::spawn(move || {
        assert!(pin_to(0));
        // The server has not waited yet: unknown, so not shared.
        assert!(!c.shares_cpu_with_peer());
        // The client told cpu 0, and the server runs there too.
        assert!(s.shares_cpu_with_peer());
        assert!(c.shares_cpu_with_peer());
        if pin_to(1) {
            // The client moved: the server's last word is still cpu 0 …
            assert!(!c.shares_cpu_with_peer());
            // … until the server (on cpu 1 too now) waits again.
            assert!(s.shares_cpu_with_peer());
            assert!(c.shares_cpu_with_peer());
        }
    })
    .join()
    .unwrap();
}

/// Run by `a_crashed_servers_listener_is_withdrawn` in a child process: listen on side 0 of the
/// device in `PCISOCK_TEST_DIR`, say so, and wait to be killed.
#[test]
#[ignore = "a helper process for a_crashed_servers_listener_is_withdrawn"]
fn listener_process() {
    let (Ok(dir), Ok(port)) = (
        std::env::var("PCISOCK_TEST_DIR"),
        std::env::var("PCISOCK_TEST_PORT"),
    ) else {
        return;
    };
    let t = transport(&two_host(std::path::Path::new(&dir), 0), 64 << 10);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The device rendezvous publishes the address; it does not need the socket.
    let _l = t.listen(-1, Endpoint::from_std(addr)).unwrap();
    println!("listening");
    std::thread::sleep(Duration::from_secs(60));
}

/// Two hosts: a server process killed while it listens leaves its record in the *peer's*
/// listener table, where the client host cannot tell it is dead; the next process to open the
/// transport on the server's host withdraws it.
#[test]
fn a_crashed_servers_listener_is_withdrawn() {
    use std::io::BufRead;
    let (d, _) = device("crash");
    let port = 40_000 + std::process::id() % 20_000;
    let client = transport(&two_host(&d.0, 1), 64 << 10); // (the link is up once both opened)
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "listener_process", "--ignored", "--nocapture"])
        .env("PCISOCK_TEST_DIR", &d.0)
        .env("PCISOCK_TEST_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    assert!(
        out.lines().any(|l| l.unwrap().contains("listening")),
        "the child listens"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let offer = |t: &Transport| {
        t.offer(
            Endpoint::from_std("127.0.0.1:39999".parse().unwrap()),
            Endpoint::from_std(format!("127.0.0.1:{port}").parse().unwrap()),
            -1,
        )
    };
    match offer(&client) {
        Ok(p) => client.cancel(p), // the stale record: what a client host sees after the crash
        Err(r) => panic!("the dead server's listener should still be visible, got {r}"),
    }
    let _server_host = transport(&two_host(&d.0, 0), 64 << 10);
    assert_eq!(offer(&client).err(), Some(Reason::NoListener));
}

/// The client half of `a_dead_processs_block_waits_for_its_peer`, run as a child process of
/// the test binary: connect to the listener at `PCISOCK_TEST_SERVER` over the device in
/// `PCISOCK_TEST_DIR`, say so, then wait to be killed.
#[test]
#[ignore = "a helper process for a_dead_processs_block_waits_for_its_peer"]
fn child_connects_and_waits() {
    let (Ok(dir), Ok(server)) = (
        std::env::var("PCISOCK_TEST_DIR"),
        std::env::var("PCISOCK_TEST_SERVER"),
    ) else {
        panic!("a helper process: a_dead_processs_block_waits_for_its_peer sets its environment");
    };
    let opts = Options {
        dir: dir.into(),
        name: "lo".into(),
        side: 0,
        config: Config {
            mw_size: 16 << 20,
            ..Config::default()
        },
    };
    let dev: Arc<dyn NtbDevice> = Arc::new(EmuDevice::open(&opts).unwrap());
    let t = transport(&dev, 64 << 10);
    let server: SocketAddr = server.parse().unwrap();
    let (s, _, p) = offer_from(&t, server).unwrap();
    s.connect(&server.into()).unwrap();
    let Outcome::Connected(_c) = t.complete(p, s.as_raw_fd(), true) else {
        panic!("the child's connection stayed on TCP");
    };
    println!("connected");
    std::thread::sleep(Duration::from_secs(60));
}

/// A process that dies while connected leaves its block to the host table, which hands it to the
/// next lease once the window needs it; the dead process's peer still writes into it when it
/// closes (FIN, then GONE). The block must wait for that peer, as a closed endpoint's does, or a
/// new connection that got it would see the old peer's end of stream.
#[test]
fn a_dead_processs_block_waits_for_its_peer() {
    let (d, dev) = device("deadblock");
    let t = transport(&dev, 64 << 10);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = l.local_addr().unwrap();
    let _listener = t.listen(l.as_raw_fd(), Endpoint::from_std(server)).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_connects_and_waits",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PCISOCK_TEST_DIR", &d.0)
        .env("PCISOCK_TEST_SERVER", server.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (srv, peer) = l.accept().unwrap();
    let old = t
        .accept(
            srv.as_raw_fd(),
            Endpoint::from_std(server),
            Endpoint::from_std(peer),
        )
        .unwrap_or_else(|r| panic!("the child's connection stayed on TCP: {r}"));
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("connected") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "the child ended before it connected"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The host table takes the dead child's leases back (as it does when a window fills).
    assert!(dev.reclaim() > 0, "nothing reclaimed from the dead child");

    // New connections lease first-fit: one of them is offered the child's block.
    let pairs: Vec<Pair> = (0..2).map(|_| pair(&t)).collect();
    // The dead child's peer closes now: its FIN and GONE go into the child's old block.
    drop(old);
    drop(srv);
    for (i, (cc, sc, _, _)) in pairs.iter().enumerate() {
        assert_eq!(cc.send(&[b"ping"], false, None).unwrap(), 4);
        let mut buf = [0u8; 4];
        let got = sc.recv(
            &mut [&mut buf[..]],
            RecvFlags::default(),
            Some(Duration::from_secs(2)),
        );
        assert_eq!(
            (got.ok(), &buf),
            (Some(4), b"ping"),
            "pair {i}, server side"
        );
        assert_eq!(sc.send(&[b"pong"], false, None).unwrap(), 4);
        let got = cc.recv(
            &mut [&mut buf[..]],
            RecvFlags::default(),
            Some(Duration::from_secs(2)),
        );
        assert_eq!(
            (got.ok(), &buf),
            (Some(4), b"pong"),
            "pair {i}, client side"
        );
    }
}

/// A host table with no lease slot left is `TableFull`, not `NoWindowSpace`: the windows have
/// room, the table that records leases does not (`pcisock explain` gives another fix).
#[test]
fn a_full_host_table_is_reported_as_table_full() {
    let (_d, dev) = device("tablefull");
    let t = transport(&dev, 64 << 10);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let _l = t
        .listen(server.as_raw_fd(), Endpoint::from_std(addr))
        .unwrap();
    // Window 1, then interrupt vectors, then window 0, until the table has no slot left (the
    // windows alone hold fewer leases of 4 KiB than the table has slots).
    let mut held = Vec::new();
    let full = |e: &ntbdrv::LeaseError| matches!(e, ntbdrv::LeaseError::TableFull);
    'fill: for step in 0..3 {
        loop {
            let r = match step {
                0 => dev
                    .lease_window(1, 4096, 0x7465_7374)
                    .map(ntbdrv::Lease::Window),
                1 => dev.lease_vector(0x7465_7374).map(ntbdrv::Lease::Vector),
                _ => dev
                    .lease_window(0, 4096, 0x7465_7374)
                    .map(ntbdrv::Lease::Window),
            };
            match r {
                Ok(l) => held.push(l),
                Err(e) if full(&e) => break 'fill,
                Err(_) => break,
            }
        }
    }
    assert!(
        dev.lease_window(0, 4096, 1).is_err_and(|e| full(&e)),
        "the table did not fill ({} leases)",
        held.len()
    );
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let local = sock.local_addr().unwrap().as_socket().unwrap();
    match t.offer(
        Endpoint::from_std(local),
        Endpoint::from_std(addr),
        sock.as_raw_fd(),
    ) {
        Err(Reason::TableFull) => {}
        Err(r) => panic!("a full host table gave {r}"),
        Ok(_) => panic!("an offer with a full host table"),
    }
    for l in held {
        dev.release(l).unwrap();
    }
}

// ---- hostile peers -------------------------------------------------------------------------------
//
// The peer can write anything anywhere in our endpoint block (its outbound window reaches all of
// it). These tests play such a peer by writing into the victim's block directly, after a real
// exchange, and check that the victim sees at worst an error on that connection.

/// The victim's endpoint block as its peer reaches it: through the peer's outbound window
/// (`peer` is the victim's peer connection, which knows where the victim's ring is).
fn victims_block(dev: &Arc<dyn NtbDevice>, peer: &Connection) -> ntbdrv::Region {
    let loc = peer.peer_ring();
    dev.outbound(loc.mw)
        .unwrap()
        .slice(loc.offset as usize, loc.len as usize)
        .unwrap()
}

/// Run `f` on another thread and fail the test if it does not return within a generous bound
/// (a watchdog for hangs, not a timing assertion: the calls under test never sleep this long).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not return: the victim hangs"))
}

const NONBLOCK: RecvFlags = RecvFlags {
    nonblock: true,
    peek: false,
    waitall: false,
};

/// Write a frame header (length, flags, sequence) at ring position `pos` of a victim's block.
fn write_header(block: &ntbdrv::Region, pos: usize, len: u32, flags: u16, seq: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..6].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    block.write(4096 + pos, &h).unwrap();
}

/// A published 1000-byte frame of which the victim read 500 bytes.
fn half_read_frame(
    tag: &str,
) -> (
    Dir,
    Arc<dyn NtbDevice>,
    Transport,
    Arc<Connection>,
    Connection,
) {
    let (d, dev) = device(tag);
    let t = transport(&dev, 16 << 10);
    let (c, s, ks, kt) = pair(&t);
    std::mem::forget((ks, kt)); // keep the kernel sockets open (the liveness signal)
    let data: Vec<u8> = (0..1000).map(pattern).collect();
    c.send(&[&data], false, None).unwrap();
    let mut b = [0u8; 500];
    assert_eq!(s.recv(&mut [&mut b[..]], NONBLOCK, None), Ok(500));
    assert_eq!(&b[..], &data[..500]);
    (d, dev, t, Arc::new(s), c)
}

#[test]
fn a_frame_header_shrunk_under_the_read_offset_resets_instead_of_spinning() {
    let (_d, dev, t, s, c) = half_read_frame("shrink");
    // The same sequence number, a length below what was already read.
    write_header(&victims_block(&dev, &c), 0, 100, 0, 0);
    let s2 = s.clone();
    let r = within("recv", move || {
        let mut b = [0u8; 1000];
        s2.recv(&mut [&mut b[..]], NONBLOCK, None)
    });
    assert_eq!(r, Err(IoError::Protocol));
    assert_eq!(t.counters().protocol_errors.load(Relaxed), 1);
}

#[test]
fn readable_bytes_survives_a_shrunk_frame_header() {
    let (_d, dev, _t, s, c) = half_read_frame("fionread");
    assert_eq!(s.readable_bytes(), 500);
    write_header(&victims_block(&dev, &c), 0, 100, 0, 0);
    let n = within("readable_bytes", move || s.readable_bytes());
    assert!(n <= 1000, "FIONREAD reports {n} bytes of a 1000-byte frame");
}

#[test]
fn the_read_offset_in_the_block_is_not_the_receivers_state() {
    let (_d, dev, _t, s, c) = half_read_frame("offword");
    // The LOCAL line (0x80: consumer counter, 0x88: offset in the frame, 0x90: sequence) is in
    // the block too: the peer can write it.
    let block = victims_block(&dev, &c);
    block.atomic_u64(0x88).unwrap().store(5000, Relaxed);
    let s2 = s.clone();
    let r = within("recv", move || {
        let mut b = [0u8; 1000];
        s2.recv(&mut [&mut b[..]], NONBLOCK, None)
            .map(|n| b[..n].to_vec())
    });
    match r {
        Ok(got) => assert_eq!(got, (500..1000).map(pattern).collect::<Vec<_>>()),
        Err(e) => assert_eq!(e, IoError::Protocol),
    }
    // Moving the offset back does not make the victim read bytes twice.
    let (_d2, dev2, _t2, s, c) = half_read_frame("offback");
    victims_block(&dev2, &c)
        .atomic_u64(0x88)
        .unwrap()
        .store(0, Relaxed);
    let mut b = [0u8; 1000];
    let n = s.recv(&mut [&mut b[..]], NONBLOCK, None).unwrap();
    assert_eq!(&b[..n], &(500..1000).map(pattern).collect::<Vec<_>>()[..]);
}

#[test]
fn a_pad_frame_that_is_not_at_the_rings_end_is_a_protocol_error() {
    // A pad frame only ever fills the last 16 bytes of the ring (a whole frame fits anywhere
    // else); a pad at position 0 spanning the whole ring is a peer stalling the reader with pads.
    let (_d, dev) = device("padflood");
    let t = transport(&dev, 16 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    let cap = 16u64 << 10;
    let block = victims_block(&dev, &c);
    write_header(&block, 0, (cap - 16) as u32, 1, 0);
    block
        .atomic_u64(0)
        .unwrap()
        .store(cap, std::sync::atomic::Ordering::Release);
    let mut b = [0u8; 64];
    assert_eq!(
        s.recv(&mut [&mut b[..]], NONBLOCK, None),
        Err(IoError::Protocol)
    );
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
        .atomic_u32(0x08)
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

/// A reader whose peer has not made its end yet sleeps at once: it does not spin (the peer is
/// still being paired, or runnable on this very CPU behind the spinner: a server spinning for
/// the first request of each new connection kept its client from sending it).
#[test]
fn a_reader_does_not_spin_for_a_peer_not_made_yet() {
    let (_d, dev) = device("notmade");
    let t = transport(&dev, 64 << 10);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let listener = t
        .listen(l.as_raw_fd(), Endpoint::from_std(server_addr))
        .unwrap();
    let (s, _, pending) = offer_from(&t, server_addr).unwrap();
    s.connect(&server_addr.into()).unwrap();
    let (srv, peer) = l.accept().unwrap();
    let sc = t
        .accept(
            srv.as_raw_fd(),
            Endpoint::from_std(server_addr),
            Endpoint::from_std(peer),
        )
        .unwrap();
    // The client's end is not made: the read waits 20 ms without a spin (one round of
    // checks, 64, before it looks at the clock; a 50 µs spin is thousands).
    let mut buf = [0u8; 64];
    assert!(sc
        .recv(
            &mut [&mut buf],
            RecvFlags::default(),
            Some(Duration::from_millis(20))
        )
        .is_err());
    let polls = sc.counter(Counter::Polls);
    assert!(polls <= 64, "{polls} checks for a peer not made yet");
    // Once it is, the pair works as any other.
    let Outcome::Connected(cc) = t.complete(pending, s.as_raw_fd(), true) else {
        panic!("client stayed on TCP");
    };
    cc.send(&[b"hi"], false, None).unwrap();
    assert_eq!(
        sc.recv(&mut [&mut buf], RecvFlags::default(), None)
            .unwrap(),
        2
    );
    t.unlisten(listener);
}
