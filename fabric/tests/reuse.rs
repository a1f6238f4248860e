//! Segment reuse (docs/HOST-SERVICE.md, *Segment reuse*): the segment of a connection whose two
//! ends let go cleanly goes, its headers zeroed, to the next connection between the same
//! processes; one
//! that any other process may still write into (an end let go of uncleanly, a forked or exec'd
//! holder, an end still held) never does.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use fabric::{sys, Client, Options, Paired, Pairing};
use socket2::Socket;

mod common;
use common::{map_segment, offer_and_connect, pair_with, reclaimed, segment_of, start};

/// A connection paired between `client` and `server`: (server end, client end, the client's
/// socket, the server's accepted socket).
fn pair(
    server: &mut Client,
    client: &mut Client,
    l: &TcpListener,
) -> (Paired, Paired, Socket, TcpStream) {
    pair_with(server, client, l, 1 << 20, descriptors)
}

/// The pairing `p` with its descriptors: a reused segment comes named (`Again`, by the memfd's
/// device and inode, which the process kept a mapping of); this test's processes keep none, so
/// they ask for it (`Refetch`), and it is the segment named.
fn descriptors(c: &mut Client, p: Pairing, server: bool) -> Paired {
    match p {
        Pairing::Paired(p) => p,
        Pairing::Again(a) => {
            assert_eq!(a.server, server);
            let p = c.refetch(a.conn, server).expect("refetch");
            let meta = std::fs::File::from(p.segment.try_clone().unwrap())
                .metadata()
                .unwrap();
            assert_eq!(
                (meta.dev(), meta.ino(), p.offset),
                (a.dev, a.inode, a.offset),
                "named another segment"
            );
            assert_eq!(
                (p.conn, p.own_line.id, p.peer_line.id),
                (a.conn, a.own_line, a.peer_line)
            );
            p
        }
        other => panic!("not paired: {other:?}"),
    }
}

/// The segment (its arena's inode, its offset there).
fn inode(p: &Paired) -> (u64, u64) {
    segment_of(p)
}

/// Write `byte` over the whole segment, as two ends' headers and traffic would.
fn scribble(p: &Paired, byte: u8) {
    map_segment(p).fill(byte);
}

/// Does a reused segment start as a fresh one? Both endpoint headers (each block's first
/// `RING_START` bytes, both in the shared page) read as zeros: every word an end starts from.
/// Its rings may hold what the last connection wrote (the ring protocol never takes it for a
/// frame), but only in each block's first 64 KiB: the rest is given back.
fn fresh(p: &Paired) -> bool {
    use fabric::service::{ring_pages, segment_bytes, RING_START, SECOND_BLOCK};
    let len = segment_bytes(p.ring_bytes) as usize;
    let mut buf = vec![1u8; len];
    let fd = p.segment.as_raw_fd();
    assert_eq!(sys::pread(fd, &mut buf, p.offset).unwrap(), len);
    let ring = p.ring_bytes as usize;
    let zeros = |from: usize, to: usize| buf[from..to].iter().all(|&x| x == 0);
    let headers = [0, SECOND_BLOCK as usize]
        .iter()
        .all(|&b| zeros(b, b + RING_START as usize));
    // Each ring's own pages past their first 60 KiB (with the shared page, the block's first
    // 64 KiB).
    let rings = ring_pages(ring as u64)
        .iter()
        .all(|&p| zeros(p as usize + (60 << 10), p as usize + ring));
    headers && rings
}

fn setup() -> (common::Running, Client, Client, TcpListener) {
    let svc = start(Options::default());
    let mut server = Client::connect(&svc.socket).unwrap();
    let client = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    server.listen(l.as_raw_fd()).unwrap();
    (svc, server, client, l)
}

#[test]
fn a_clean_close_gives_the_segment_zeroed_to_the_same_processes_next_connection() {
    let (_svc, mut server, mut client, l) = setup();
    let (s, c, _cs, _a) = pair(&mut server, &mut client, &l);
    let first = inode(&s);
    scribble(&s, 0xAB);
    server.close(s.conn, true, true).unwrap();
    client.close(c.conn, false, true).unwrap();
    reclaimed(&mut server, 1);

    let (s2, c2, _cs2, _a2) = pair(&mut server, &mut client, &l);
    assert_ne!(s2.conn, s.conn);
    assert_eq!(
        (inode(&s2), inode(&c2)),
        (first, first),
        "the closed connection's segment was not given again"
    );
    assert!(
        fresh(&s2),
        "a reused segment carries its last connection's header words, or all its ring pages"
    );
}

#[test]
fn a_segment_an_end_may_still_write_into_is_never_given_again() {
    let (_svc, mut server, mut client, l) = setup();
    // A stale end: the server end of `held` is never let go of (a process still holding it,
    // and writing); `done` closes cleanly on both ends.
    let (hs, hc, _hcs, _ha) = pair(&mut server, &mut client, &l);
    let (ds, dc, _dcs, _da) = pair(&mut server, &mut client, &l);
    let (held, done) = (inode(&hs), inode(&ds));
    client.close(hc.conn, false, true).unwrap();
    server.close(ds.conn, true, true).unwrap();
    client.close(dc.conn, false, true).unwrap();
    reclaimed(&mut server, 1);
    let (s2, _c2, _cs2, _a2) = pair(&mut server, &mut client, &l);
    assert_eq!(inode(&s2), done, "the cleanly closed segment is reused");
    // The stale end writes on: the new connection never sees it.
    scribble(&hs, 0xEE);
    assert_ne!(inode(&s2), held);
    assert!(fresh(&s2));

    // An end let go of uncleanly (its process forked with it: a child may write on) keeps the
    // segment from reuse, though both ends' closes came.
    server.close(s2.conn, true, false).unwrap();
    client.close(s2.conn, false, true).unwrap();
    reclaimed(&mut server, 2);
    let (s3, c3, _cs3, _a3) = pair(&mut server, &mut client, &l);
    assert_ne!(inode(&s3), done, "reused after an unclean close");

    // A connection another process picked up (`Hold`: a forked child that talked to the
    // service, a new image after exec) is never reused either, even if both ends close clean.
    let mut other = Client::connect(&_svc.socket).unwrap();
    let fabric::Held::Paired(_h) = other.hold(_a3.as_raw_fd()).unwrap() else {
        panic!("hold declined");
    };
    let third = inode(&s3);
    other.close(s3.conn, true, true).unwrap();
    server.close(s3.conn, true, true).unwrap();
    client.close(c3.conn, false, true).unwrap();
    reclaimed(&mut server, 3);
    let (s4, _c4, _cs4, _a4) = pair(&mut server, &mut client, &l);
    assert_ne!(inode(&s4), third, "reused after another process held it");
}

#[test]
fn a_kept_segment_is_named_again_and_refetched_only_by_its_own_end() {
    let (svc, mut server, mut client, l) = setup();
    let (s, c, _cs, _a) = pair(&mut server, &mut client, &l);
    let meta = std::fs::File::from(s.segment.try_clone().unwrap())
        .metadata()
        .unwrap();
    server.close(s.conn, true, true).unwrap();
    client.close(c.conn, false, true).unwrap();
    reclaimed(&mut server, 1);

    // No descriptor for either end: the segment by its identity, the lines by their names.
    let (mut offer, _cs2, accepted) = offer_and_connect(&mut client, l.local_addr().unwrap(), &l);
    let Pairing::Again(sa) = server.accept(accepted.as_raw_fd(), 1 << 20).unwrap() else {
        panic!("a kept segment's pairing carried descriptors to the server");
    };
    let Some(Pairing::Again(ca)) = client.paired(&mut offer, Duration::from_secs(5)).unwrap()
    else {
        panic!("a kept segment's pairing carried descriptors to the client");
    };
    assert_eq!(
        (sa.dev, sa.inode, sa.offset),
        (meta.dev(), meta.ino(), s.offset)
    );
    assert_eq!(
        (ca.dev, ca.inode, ca.offset),
        (meta.dev(), meta.ino(), s.offset)
    );
    assert_eq!((sa.own_line, sa.peer_line), (s.own_line.id, s.peer_line.id));
    assert_eq!((ca.own_line, ca.peer_line), (c.own_line.id, c.peer_line.id));

    // Another process, and the client for the server's end, are refused.
    let mut third = Client::connect(&svc.socket).unwrap();
    assert!(third.refetch(sa.conn, true).is_err());
    assert!(third.refetch(ca.conn, false).is_err());
    assert!(client.refetch(sa.conn, true).is_err());
    let p = client
        .refetch(ca.conn, false)
        .expect("the client's own end");
    assert_eq!(inode(&p), (meta.ino(), s.offset));
}
