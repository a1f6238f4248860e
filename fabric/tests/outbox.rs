//! Replies a client has no room for yet wait in its outbox, without costing the service a
//! descriptor each: a burst of pairings toward a client that reads late, served by a service
//! close to its open-file limit, reaches the client whole; and the client keeps them for later
//! at one descriptor each, not one per line they name.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use fabric::{Client, Options, Pairing};
use socket2::{Domain, Socket, Type};

mod common;
use common::v4;

/// Connections in the burst: more pairing replies than a client's service socket holds
/// (`net.unix.max_dgram_qlen`, 512 by default, or fewer by its send buffer).
const BURST: usize = 1200;
/// The service's open-file limit: room for a segment per connection and its own few
/// descriptors, not for three more per reply waiting in an outbox.
const SERVICE_NOFILE: u64 = BURST as u64 + 160;

#[test]
#[ignore = "a helper process for a_burst_of_pairings_to_a_late_reader_arrives_whole"]
fn service_with_few_descriptors() {
    let Ok(socket) = std::env::var("PCISOCK_TEST_SOCKET") else {
        return;
    };
    let lim = libc::rlimit {
        rlim_cur: SERVICE_NOFILE,
        rlim_max: SERVICE_NOFILE,
    };
    // SAFETY: setrlimit reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let bound = fabric::bind(Path::new(&socket)).expect("bind");
    let opts = Options {
        ring_bytes: 4096,
        ..Options::default()
    };
    bound.serve(opts).expect("serve");
}

#[test]
fn a_burst_of_pairings_to_a_late_reader_arrives_whole() {
    raise_own_limit();
    let svc = common::spawn_service("service_with_few_descriptors");
    let socket = svc.socket.clone();
    let mut server = Client::connect(&socket).unwrap();
    let mut client = Client::connect(&socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    server.listen(l.as_raw_fd()).unwrap();

    // Every offer made and connected first; then the server accepts them all while the client
    // reads nothing: its pairing replies pile up in its socket, then in its outbox.
    let mut offers = Vec::with_capacity(BURST);
    let mut sockets: Vec<(Socket, TcpStream)> = Vec::with_capacity(BURST);
    for _ in 0..BURST {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let offer = client
            .offer(s.as_raw_fd(), v4(&to), to.port(), 4096)
            .expect("offer")
            .expect("a listener is published");
        s.connect(&to.into()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        offers.push(offer);
        sockets.push((s, accepted));
    }
    for (_, accepted) in &sockets {
        // The server's own reply comes at once; its descriptors are closed as it is dropped.
        match server.accept(accepted.as_raw_fd(), 4096).expect("accept") {
            Pairing::Paired(_) => {}
            Pairing::Declined(why) => panic!("declined: {why:?}"),
            Pairing::Bridged(b) => panic!("paired across a bridge it does not have: {b:?}"),
            Pairing::Again(a) => panic!("a segment given again on first pairings: {a:?}"),
        }
    }
    let st = server.status().unwrap();
    assert_eq!(st.paired, BURST as u64);

    // The client takes in every reply without using one yet (an application that connected a
    // thousand sockets and uses them later): it holds each connection's segment and one copy
    // of each line and tally page, not four descriptors a pairing.
    let before = open_fds();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !offers.iter().all(|o| client.answered(o)) {
        assert!(Instant::now() < deadline, "the pairings never all arrived");
        client.take_replies().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let held = open_fds() - before;
    assert!(
        held <= BURST + 4,
        "{held} descriptors held for {BURST} pairings kept for later (4 a pairing before)"
    );

    // Now the client reads: every pairing is there, in a connection the service kept.
    for (i, offer) in offers.iter_mut().enumerate() {
        match client.paired(offer, Duration::from_secs(10)) {
            Ok(Some(Pairing::Paired(_))) => {}
            other => panic!(
                "pairing {i} of {BURST} did not reach the late reader: {other:?} \
                 (a service short of descriptors dropped the client)"
            ),
        }
    }
    let st = server.status().unwrap();
    assert_eq!(
        st.connections, BURST as u64,
        "every connection is still live"
    );
}

/// Room in this process for both ends' sockets and the pairings' descriptors.
fn raise_own_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
