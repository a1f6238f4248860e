//! End-to-end over the emulated device: the rendezvous that upgrades a TCP connection (listeners,
//! offers, answers, many at once), the window space and doorbell bits connections take and give
//! back, and what a crashed process leaves behind.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use ntbdrv::emu::{Config, EmuDevice, Options};
use ntbdrv::NtbDevice;
use socket2::{Domain, Socket, Type};
use transport::{Counter, Endpoint, Outcome, Reason, RecvFlags, Settings, Transport};

use common::*;

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
            t.complete(p, s.as_raw_fd(), true, 0),
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
                    client.complete(p, s.as_raw_fd(), true, 0),
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
    let outcome = client.complete(p, s.as_raw_fd(), true, 0);
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
        client.complete(p, s.as_raw_fd(), true, 0),
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
    let Outcome::Connected(_c) = t.complete(p, s.as_raw_fd(), true, 0) else {
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

/// A reader whose peer has not made its end yet spins for it (giving its CPU away every 64
/// looks, so that a peer runnable behind it on the same CPU runs at once), then sleeps: the
/// peer is making its end a few microseconds away (over the service, segments are reused: no
/// mapping, no page faults), and a reader that slept at once made the first request of every
/// connection wait for a ring (the set-up loop ran at 0.8 of its rate,
/// benches/results/connsetup-session12.md).
#[test]
fn a_reader_spins_for_a_peer_not_made_yet_then_sleeps() {
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
    // The client's end is not made: the read spins (more than one round of 64 checks: a
    // reader that slept at once made 64 at most), then sleeps until its 20 ms are up. A spin
    // is bounded by time, so a thread descheduled in its first 64 checks (a loaded machine)
    // makes only those: up to 5 reads, one of which must spin.
    let mut buf = [0u8; 64];
    let mut most = 0;
    for _ in 0..5 {
        let before = sc.counter(Counter::Polls);
        assert!(sc
            .recv(
                &mut [&mut buf],
                RecvFlags::default(),
                Some(Duration::from_millis(20))
            )
            .is_err());
        most = most.max(sc.counter(Counter::Polls) - before);
        if most > 64 {
            break;
        }
    }
    assert!(
        most > 64,
        "{most} checks at most in a read: no spin for a peer not made yet"
    );
    assert!(sc.counter(Counter::Sleeps) >= 1, "it never slept");
    // Once it is, the pair works as any other.
    let Outcome::Connected(cc) = t.complete(pending, s.as_raw_fd(), true, 0) else {
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
