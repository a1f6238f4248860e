//! Arenas (docs/HOST-SERVICE.md, *Arenas*): the connections between two processes are ranges
//! of one memfd per pair and generation; a fork of either process (`Forked`) or a `Hold` closes
//! the generation, whose ranges then go to no new connection; a range that goes has its pages
//! freed; and the service holds one descriptor per arena, not one per connection.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use fabric::service::segment_bytes;
use fabric::wire::Request;
use fabric::{sys, Client, Options, Paired, Pairing};
use socket2::Socket;

mod common;
use common::{map_segment, offer_and_connect, pair_with, reclaimed, segment_of, start};

/// A connection paired between `client` and `server` (a kept range is asked for with
/// `Refetch`: this test's processes keep no mapping): (server end, client end, sockets).
fn pair(
    server: &mut Client,
    client: &mut Client,
    l: &TcpListener,
) -> (Paired, Paired, Socket, TcpStream) {
    pair_with(server, client, l, 64 << 10, descriptors)
}

fn descriptors(c: &mut Client, p: Pairing, server: bool) -> Paired {
    match p {
        Pairing::Paired(p) => p,
        Pairing::Again(a) => c.refetch(a.conn, server).expect("refetch"),
        other => panic!("not paired: {other:?}"),
    }
}

/// Did the pairing `p` name a kept range (`Again`)? Then (`Paired`) is a new one.
fn was_kept(p: &Pairing) -> bool {
    matches!(p, Pairing::Again(_))
}

/// Bytes of `p`'s segment whose pages exist (`SEEK_DATA`/`SEEK_HOLE` over its range).
fn resident(p: &Paired) -> u64 {
    let (fd, end) = (
        p.segment.as_raw_fd(),
        p.offset + segment_bytes(p.ring_bytes),
    );
    let mut at = p.offset;
    let mut n = 0;
    while let Some((data, hole)) = sys::next_data(fd, at).unwrap() {
        if data >= end {
            break;
        }
        n += hole.min(end) - data;
        at = hole;
    }
    n
}

fn setup() -> (common::Running, Client, Client, TcpListener) {
    let svc = start(Options {
        ring_bytes: 64 << 10,
        ..Options::default()
    });
    let mut server = Client::connect(&svc.socket).unwrap();
    let client = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    server.listen(l.as_raw_fd()).unwrap();
    (svc, server, client, l)
}

#[test]
fn the_connections_of_two_processes_are_ranges_of_one_arena() {
    let (_svc, mut server, mut client, l) = setup();
    let (s1, c1, _a, _b) = pair(&mut server, &mut client, &l);
    let (s2, c2, _c, _d) = pair(&mut server, &mut client, &l);
    let ((i1, o1), (i2, o2)) = (segment_of(&s1), segment_of(&s2));
    assert_eq!(i1, i2, "two connections of one pair in two arenas");
    assert_eq!((segment_of(&c1), segment_of(&c2)), ((i1, o1), (i2, o2)));
    // Page-aligned ranges that do not overlap; each end's writes reach its own peer only.
    let bytes = segment_bytes(s1.ring_bytes);
    assert!(o1 % 4096 == 0 && o2 % 4096 == 0);
    assert!(
        o1 + bytes <= o2 || o2 + bytes <= o1,
        "ranges overlap: {o1} {o2}"
    );
    map_segment(&s1).fill(0x11);
    let (m1, m2) = (map_segment(&c1), map_segment(&c2));
    assert!(m1.iter().all(|&b| b == 0x11) && m2.iter().all(|&b| b == 0));
    // `List` reads each connection's counters at its range's offset.
    let at = fabric::service::BLOCK_COUNTERS;
    map_segment(&s2)[at..at + 8].copy_from_slice(&4242u64.to_ne_bytes());
    let list = client.list().unwrap();
    let counters = |conn| list.iter().find(|e| e.conn == conn).unwrap().ends[0].counters[0];
    assert_eq!(
        (counters(s1.conn), counters(s2.conn)),
        (0x1111_1111_1111_1111, 4242)
    );
    // Sealed as a segment was: nobody can shrink the arena under a peer.
    let seals = sys::seals(s1.segment.as_raw_fd()).unwrap();
    assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
    assert_ne!(seals & libc::F_SEAL_GROW, 0);
    assert_ne!(seals & libc::F_SEAL_SEAL, 0);
}

#[test]
fn a_fork_closes_the_generation_and_its_ranges_go_to_no_new_connection() {
    let (svc, mut server, mut client, l) = setup();
    let (s1, c1, _a, _b) = pair(&mut server, &mut client, &l);
    let (first, _) = segment_of(&s1);
    // A clean close: the range is kept for the pair's next connection (headers zeroed, ring
    // pages past the first 64 KiB of each block freed).
    map_segment(&s1).fill(0xAB);
    server.close(s1.conn, true, true).unwrap();
    client.close(c1.conn, false, true).unwrap();
    reclaimed(&mut server, 1);
    let (s2, c2, _c, _d) = pair(&mut server, &mut client, &l);
    assert_eq!(
        segment_of(&s2),
        segment_of(&s1),
        "a kept range was not given again"
    );
    assert!(map_segment(&s2)[..0x240].iter().all(|&b| b == 0));
    server.close(s2.conn, true, true).unwrap();
    client.close(c2.conn, false, true).unwrap();
    reclaimed(&mut server, 2);
    assert!(resident(&s2) > 0, "a kept range holds its first pages");

    // The client's process forks (told by a `Forked` before its next request): its arenas
    // take no new connection; the kept range goes, its pages freed; the next connection is in
    // a new arena.
    let mut raw = Client::connect(&svc.socket).unwrap();
    raw.forked().unwrap();
    // (One more request on that connection, so that the service has read the `Forked`.)
    raw.status().unwrap();
    assert_eq!(resident(&s2), 0, "a range that went holds pages");
    let (mut offer, _e, accepted) = offer_and_connect(&mut client, l.local_addr().unwrap(), &l);
    let p = server.accept(accepted.as_raw_fd(), 64 << 10).unwrap();
    assert!(!was_kept(&p), "a closed generation's kept range was reused");
    let s3 = descriptors(&mut server, p, true);
    let c3 = client.paired(&mut offer, Duration::from_secs(5)).unwrap();
    let c3 = descriptors(&mut client, c3.unwrap(), false);
    assert_ne!(
        segment_of(&s3).0,
        first,
        "a new connection in a closed generation"
    );
    assert_eq!(segment_of(&s3), segment_of(&c3));
    // And the new generation takes the pair's later connections.
    let (s4, _c4, _f, _g) = pair(&mut server, &mut client, &l);
    assert_eq!(segment_of(&s4).0, segment_of(&s3).0);
}

#[test]
fn a_hold_gets_the_arena_at_its_connections_offset_and_closes_the_generation() {
    let (svc, mut server, mut client, l) = setup();
    let (_s0, _c0, _a, _b) = pair(&mut server, &mut client, &l);
    let (s1, _c1, _c, accepted) = pair(&mut server, &mut client, &l);
    let mut other = Client::connect(&svc.socket).unwrap();
    let fabric::Held::Paired(h) = other.hold(accepted.as_raw_fd()).unwrap() else {
        panic!("hold declined");
    };
    assert_eq!(h.conn, s1.conn);
    assert_eq!(segment_of(&h), segment_of(&s1));
    assert_ne!(h.offset, 0, "the second connection's range starts at 0");
    map_segment(&s1)[4096] = 0x5A;
    assert_eq!(map_segment(&h)[4096], 0x5A);
    // The holder has the arena: no later connection goes into it.
    let (s2, _c2, _e, _f) = pair(&mut server, &mut client, &l);
    assert_ne!(segment_of(&s2).0, segment_of(&s1).0);
}

/// `Forked` is never answered, and never refused from a process that said hello.
#[test]
fn forked_is_one_way() {
    let (svc, _server, _client, _l) = setup();
    let mut c = Client::connect(&svc.socket).unwrap();
    c.forked().unwrap();
    c.forked().unwrap();
    assert_eq!(c.status().unwrap().refused, 0);
    assert_eq!(Request::Forked.fds(), 0);
}

#[test]
#[ignore = "a helper process for the_service_holds_one_descriptor_per_arena"]
fn arena_service() {
    let Ok(socket) = std::env::var("PCISOCK_TEST_SOCKET") else {
        return;
    };
    let bound = fabric::bind(Path::new(&socket)).expect("bind");
    let opts = Options {
        ring_bytes: 16 << 10,
        ..Options::default()
    };
    bound.serve(opts).expect("serve");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// 200 live connections between one pair of processes cost the service one descriptor (their
/// arena), not 200 (a memfd each before arenas).
#[test]
fn the_service_holds_one_descriptor_per_arena() {
    let svc = common::spawn_service("arena_service");
    let socket = svc.socket.clone();
    let mut server = Client::connect(&socket).unwrap();
    let mut client = Client::connect(&socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    server.listen(l.as_raw_fd()).unwrap();
    // One pairing first: the service's arena, spares and lines are made.
    let (s0, c0, cs0, a0) = pair(&mut server, &mut client, &l);
    let mut live = vec![(cs0, a0)];
    drop((s0, c0));
    let before = open_fds(svc.child.id());
    let mut arenas = std::collections::HashSet::new();
    for _ in 0..200 {
        let (s, c, cs, a) = pair(&mut server, &mut client, &l);
        arenas.insert(segment_of(&s).0);
        // The pairing's descriptors go; the connection stays live at the service.
        drop((s, c));
        live.push((cs, a));
    }
    assert_eq!(server.status().unwrap().connections, 201);
    assert_eq!(
        arenas.len(),
        1,
        "one pair's connections in {} arenas",
        arenas.len()
    );
    let after = open_fds(svc.child.id());
    assert!(
        after <= before + 4,
        "the service holds {after} descriptors with 201 connections, {before} with 1"
    );
}
