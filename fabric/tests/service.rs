//! The service against real sockets: pairing by possession of the TCP socket, claims by a
//! third party, hostile requests, and the clean-up after a client's process dies.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric::wire::{Refusal, Reply, Request};
use fabric::{sys, Client, ClientError, Options, Pairing};
use socket2::{Domain, Socket, Type};

mod common;
use common::{map_segment as map, offer_and_connect, segment_of, start, v4};

#[test]
fn pairs_a_connection_by_possession_of_its_socket() {
    let svc = start(Options::default());
    let mut server = Client::connect(&svc.socket).unwrap();
    let mut client = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    server.listen(l.as_raw_fd()).unwrap();

    let (mut offer, _csock, accepted) = offer_and_connect(&mut client, to, &l);
    let Pairing::Paired(s) = server.accept(accepted.as_raw_fd(), 1 << 20).unwrap() else {
        panic!("the server's accept was declined");
    };
    let Pairing::Paired(c) = client
        .paired(&mut offer, Duration::from_secs(5))
        .unwrap()
        .expect("the client hears of the pairing")
    else {
        panic!("declined");
    };
    assert_eq!((s.conn, s.server, c.server), (c.conn, true, false));
    assert_eq!(s.ring_bytes, 1 << 20);

    // One segment holds both ends' blocks (docs/PROTOCOL.md §2, *The shared page*: both
    // headers in its first page, then the server's ring pages, then the client's), the same
    // memory for both processes.
    let (mut s_map, c_map) = (map(&s), map(&c));
    assert_eq!(segment_of(&s), segment_of(&c));
    assert_eq!(s_map.len() as u64, fabric::service::segment_bytes(1 << 20));
    let second = fabric::service::SECOND_BLOCK as usize;
    let pages = fabric::service::ring_pages(1 << 20)[1] as usize;
    s_map[second + 100] = 0xAB;
    s_map[200] = 0xCD;
    s_map[pages + 300] = 0xEF;
    assert_eq!(
        (c_map[second + 100], c_map[200], c_map[pages + 300]),
        (0xAB, 0xCD, 0xEF)
    );
    // Sealed: nobody can shrink a segment under its peer (that would SIGBUS it).
    let seals = sys::seals(s.segment.as_raw_fd()).unwrap();
    assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
    assert_ne!(seals & libc::F_SEAL_GROW, 0);
    let f = std::fs::File::from(c.segment.try_clone().unwrap());
    assert!(f.set_len(4096).is_err(), "a segment could be truncated");
    // Nor through a file of its own: another process of the same user opening the segment by
    // its /proc path (the seals are the memory's, not the descriptor's). The device file of
    // device mode has no such protection (docs/HOST-SERVICE.md, threat model).
    let reopened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", s.segment.as_raw_fd()))
        .unwrap();
    assert!(
        reopened.set_len(4096).is_err() && reopened.set_len(0).is_err(),
        "a segment reopened by its path could be truncated"
    );

    // Lines are one per process: each end's own line is the one its process said hello with,
    // and the peer's is the other's.
    let (cl, sl) = (client.line.as_ref().unwrap(), server.line.as_ref().unwrap());
    assert_eq!((c.own_line.id, c.peer_line.id), (cl.id, sl.id));
    assert_eq!((s.own_line.id, s.peer_line.id), (sl.id, cl.id));
    assert_ne!(cl.id, sl.id);
    // The client's line was rung when the pairing was sent; ringing the peer's line from the
    // server wakes the client's own line.
    let mut own = std::fs::File::from(c.own_line.fd.try_clone().unwrap());
    let mut v = [0u8; 8];
    // (The service rings the line right after it sends the reply.)
    assert_ne!(
        sys::poll_in(&[c.own_line.fd.as_raw_fd()], 5000).unwrap()[0],
        0
    );
    own.read_exact(&mut v).unwrap();
    assert_eq!(
        u64::from_ne_bytes(v),
        1,
        "the pairing rang the client's line once"
    );
    let mut ring = std::fs::File::from(s.peer_line.fd.try_clone().unwrap());
    ring.write_all(&1u64.to_ne_bytes()).unwrap();
    own.read_exact(&mut v).unwrap();
    assert_eq!(u64::from_ne_bytes(v), 1);

    let st = server.status().unwrap();
    assert_eq!((st.connections, st.paired, st.offers), (1, 1, 0));
    // The live connection as `List` shows it: the kernel's addresses, the holders, the ring.
    let list = client.list().unwrap();
    assert_eq!(list.len(), 1);
    let e = list[0];
    let me = sys::getpid();
    assert_eq!(
        (e.conn, e.client_pid, e.server_pid, e.ring_bytes),
        (s.conn, me, me, 1 << 20)
    );
    let csock_addr = _csock.local_addr().unwrap().as_socket().unwrap();
    assert_eq!(e.client, (v4(&csock_addr), csock_addr.port()));
    assert_eq!(e.server, (v4(&to), to.port()));
    assert_eq!(st.window_used, fabric::service::segment_bytes(1 << 20));
    // Each end's counters, read by the service from the segment: nothing written yet, zeros.
    assert_eq!(e.ends, [fabric::wire::EndCounters::default(); 2]);
    // Whatever the connection's processes (or a hostile peer) write there is copied out as it
    // is, for display: the client end's counters, the server end's state word (ON_TCP with
    // every other bit set too) and its last counter.
    use fabric::service::{BLOCK_COUNTERS, BLOCK_STATE};
    for i in 0..fabric::wire::END_COUNTERS {
        let at = BLOCK_COUNTERS + 8 * i;
        s_map[at..at + 8].copy_from_slice(&(u64::MAX - i as u64).to_ne_bytes());
    }
    s_map[second + BLOCK_STATE..][..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    let last = second + BLOCK_COUNTERS + 8 * (fabric::wire::END_COUNTERS - 1);
    s_map[last..last + 8].copy_from_slice(&12345u64.to_ne_bytes());
    let e = client.list().unwrap()[0];
    assert!(!e.ends[0].on_tcp && e.ends[1].on_tcp);
    assert_eq!(e.ends[0].counters[0], u64::MAX);
    assert_eq!(e.ends[0].counters[16], u64::MAX - 16);
    assert_eq!(e.ends[1].counters[..16], [0; 16]);
    assert_eq!(e.ends[1].counters[16], 12345);
}

/// A server that does not wait for the answer to its `Accept` (`nowait`, version 3) has its
/// line rung once the service answered, paired or declined, so a server sleeping on its line
/// (a read, an epoll set) hears of it; one that waits for the reply is not rung.
#[test]
fn an_accept_answer_rings_the_servers_line() {
    let svc = start(Options::default());
    let mut server = Client::connect(&svc.socket).unwrap();
    let mut client = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    server.listen(l.as_raw_fd()).unwrap();
    let line = server.line.take().expect("the server's line");
    let rang = |fd: &OwnedFd| {
        if sys::poll_in(&[fd.as_raw_fd()], 5000).unwrap()[0] == 0 {
            return 0;
        }
        let mut v = [0u8; 8];
        std::fs::File::from(fd.try_clone().unwrap())
            .read_exact(&mut v)
            .unwrap();
        u64::from_ne_bytes(v)
    };

    // Paired.
    let (_offer, _csock, accepted) = offer_and_connect(&mut client, to, &l);
    let mut a = server.accept_nowait(accepted.as_raw_fd(), 1 << 20).unwrap();
    assert!(
        rang(&line.fd) >= 1,
        "the pairing did not ring the server's line"
    );
    let Some(Pairing::Paired(p)) = server.paired(&mut a, Duration::ZERO).unwrap() else {
        panic!("the answer is not there when the line rings");
    };
    assert!(p.server);

    // Declined: a plain TCP client made no offer.
    let _plain = TcpStream::connect(to).unwrap();
    let (accepted, _) = l.accept().unwrap();
    let mut a = server.accept_nowait(accepted.as_raw_fd(), 1 << 20).unwrap();
    assert!(
        rang(&line.fd) >= 1,
        "the decline did not ring the server's line"
    );
    assert!(matches!(
        server.paired(&mut a, Duration::ZERO).unwrap(),
        Some(Pairing::Declined(_))
    ));

    // A server that waits for the answer is not rung (its next sleep would wake for nothing).
    let _plain = TcpStream::connect(to).unwrap();
    let (accepted, _) = l.accept().unwrap();
    assert!(matches!(
        server.accept(accepted.as_raw_fd(), 1 << 20).unwrap(),
        Pairing::Declined(_)
    ));
    assert_eq!(
        sys::poll_in(&[line.fd.as_raw_fd()], 200).unwrap()[0],
        0,
        "a waited-for accept rang the server's line"
    );
}

#[test]
fn a_third_party_can_neither_claim_nor_meddle() {
    let svc = start(Options::default());
    let mut server = Client::connect(&svc.socket).unwrap();
    let mut client = Client::connect(&svc.socket).unwrap();
    let mut other = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    let listener = server.listen(l.as_raw_fd()).unwrap();

    // The client offers and connects; before the server accepts, a third party connects too,
    // accepts that connection on the same port and claims it: it gets no offer.
    let (mut offer, _csock, accepted) = offer_and_connect(&mut client, to, &l);
    let _theirs = TcpStream::connect(to).unwrap();
    let (their_accepted, _) = l.accept().unwrap();
    assert!(matches!(
        other.accept(their_accepted.as_raw_fd(), 1 << 20).unwrap(),
        Pairing::Declined(10)
    ));
    // Not a socket, a listening socket as a client, someone else's listener or connection.
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert!(matches!(
        other.accept(file.as_raw_fd(), 1 << 20),
        Err(ClientError::Refused(Refusal::BadSocket))
    ));
    assert!(matches!(
        other.offer(l.as_raw_fd(), v4(&to), to.port(), 1 << 20),
        Err(ClientError::Refused(Refusal::BadSocket))
    ));
    // Unlisten is never answered (wire version 4): a listener that is not the sender's is
    // only counted as refused, and stays.
    let before = other.status().unwrap();
    other.unlisten(listener).unwrap();
    let after = other.status().unwrap();
    assert_eq!(after.refused, before.refused + 1);
    assert_eq!(after.listeners, before.listeners);
    assert!(matches!(
        other.cancel(offer),
        Err(ClientError::Refused(Refusal::NotYours))
    ));

    // The real pair still meets.
    let Pairing::Paired(s) = server.accept(accepted.as_raw_fd(), 1 << 20).unwrap() else {
        panic!("declined");
    };
    // (Connections are held by process: `other`, in this same process, could close it.)
    let _ = s;
    let got = client.paired(&mut offer, Duration::from_secs(5)).unwrap();
    assert!(matches!(got, Some(Pairing::Paired(_))));
    // No listener on another port: declined at once, nothing held.
    let s2 = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    assert_eq!(
        client
            .offer(s2.as_raw_fd(), v4(&to), to.port() ^ 1, 1 << 20)
            .unwrap(),
        Err(4)
    );
}

/// Raw seqpacket messages, as any local user could send them.
fn raw(socket: &Path) -> OwnedFd {
    sys::connect_unix(socket).unwrap()
}

fn refused(fd: &OwnedFd) -> Option<u32> {
    let rev = sys::poll_in(&[fd.as_raw_fd()], 5000).unwrap();
    if rev[0] == 0 {
        return None;
    }
    let m = sys::recv_msg(fd.as_raw_fd()).unwrap()?;
    match Reply::decode(&m.bytes, m.fds.len()).unwrap().0 {
        Reply::Refused { why } => Some(why),
        _ => None,
    }
}

#[test]
fn hostile_requests_are_refused_counted_and_the_service_keeps_serving() {
    let svc = start(Options::default());
    let evil = raw(&svc.socket);
    let me = sys::getpid();
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let line = sys::line().unwrap();
    let tally = sys::tally().unwrap();
    let small = sys::segment(4096).unwrap();
    let mut cases: Vec<(Vec<u8>, Vec<i32>, Refusal)> = vec![
        (b"garbage".to_vec(), vec![], Refusal::Malformed),
        (vec![0xff; 1000], vec![], Refusal::Malformed),
        (
            Request::Status.encode(1)[..15].to_vec(),
            vec![],
            Refusal::Malformed,
        ),
        // Before hello.
        (
            Request::Listen.encode(2),
            vec![file.as_raw_fd()],
            Refusal::OutOfOrder,
        ),
        // Somebody else's pid.
        (
            Request::Hello { pid: 1 }.encode(3),
            vec![line.as_raw_fd(), tally.as_raw_fd()],
            Refusal::NotYou,
        ),
        // A "line" that is not an eventfd (a file the peers would write into).
        (
            Request::Hello { pid: me }.encode(6),
            vec![file.as_raw_fd(), tally.as_raw_fd()],
            Refusal::BadSocket,
        ),
        // A "tally page" that is a file of the sender's choice, or a sealed page of the wrong
        // size (its peers map `TALLY_BYTES` of it).
        (
            Request::Hello { pid: me }.encode(7),
            vec![line.as_raw_fd(), file.as_raw_fd()],
            Refusal::BadSocket,
        ),
        (
            Request::Hello { pid: me }.encode(8),
            vec![line.as_raw_fd(), small.as_raw_fd()],
            Refusal::BadSocket,
        ),
        // A line without its tally page.
        (
            Request::Hello { pid: me }.encode(12),
            vec![line.as_raw_fd()],
            Refusal::Malformed,
        ),
    ];
    let mut bad_kind = Request::Status.encode(4);
    bad_kind[6] = 0x70;
    cases.push((bad_kind, vec![], Refusal::Malformed));
    // A descriptor where none belongs.
    cases.push((
        Request::Status.encode(5),
        vec![file.as_raw_fd()],
        Refusal::Malformed,
    ));
    for (i, (bytes, fds, want)) in cases.iter().enumerate() {
        sys::send_msg(evil.as_raw_fd(), bytes, fds).unwrap();
        assert_eq!(refused(&evil), Some(want.code()), "case {i}");
    }
    // After a proper hello: a second hello, and claims with the wrong descriptors.
    sys::send_msg(
        evil.as_raw_fd(),
        &Request::Hello { pid: me }.encode(9),
        &[line.as_raw_fd(), tally.as_raw_fd()],
    )
    .unwrap();
    let rev = sys::poll_in(&[evil.as_raw_fd()], 5000).unwrap();
    assert_ne!(rev[0], 0);
    let m = sys::recv_msg(evil.as_raw_fd()).unwrap().unwrap();
    assert!(matches!(
        Reply::decode(&m.bytes, 0).unwrap().0,
        Reply::Welcome { .. }
    ));
    sys::send_msg(
        evil.as_raw_fd(),
        &Request::Hello { pid: me }.encode(10),
        &[line.as_raw_fd(), tally.as_raw_fd()],
    )
    .unwrap();
    assert_eq!(refused(&evil), Some(Refusal::OutOfOrder.code()));
    sys::send_msg(
        evil.as_raw_fd(),
        &Request::Listen.encode(11),
        &[file.as_raw_fd()],
    )
    .unwrap();
    assert_eq!(refused(&evil), Some(Refusal::BadSocket.code()));
    // A "namespace" that is no sock_diag socket: never answered (one-way), only counted.
    sys::send_msg(
        evil.as_raw_fd(),
        &Request::Namespace.encode(12),
        &[file.as_raw_fd()],
    )
    .unwrap();

    // A client that keeps sending garbage is cut off; the service serves everyone else.
    let spammer = raw(&svc.socket);
    let mut cut_off = false;
    for _ in 0..64 {
        if sys::send_msg(spammer.as_raw_fd(), b"x", &[]).is_err() {
            cut_off = true;
            break;
        }
    }
    let t0 = Instant::now();
    while !cut_off && t0.elapsed() < Duration::from_secs(10) {
        match sys::recv_msg(spammer.as_raw_fd()) {
            Ok(None) | Err(_) => cut_off = true,
            Ok(Some(_)) => {}
        }
    }
    assert!(cut_off, "a client sending garbage was never disconnected");

    let mut good = Client::connect(&svc.socket).unwrap();
    let st = good.status().unwrap();
    assert_eq!(st.refused, 14 + 16, "every refusal is counted");
    assert_eq!(st.listeners, 0);
}

/// A process (python, as any program could) that says hello, publishes a listener and offers a
/// connection, then keeps its service connection open in a forked child and dies.
fn python_client(socket: &Path, port: u16) -> Child {
    let script = format!(
        r#"
import fcntl, os, socket, struct, sys, time
MAGIC = int.from_bytes(b"PCFB", "little")
VERSION = {version}
def msg(kind, rid, words=()):
    return struct.pack("<IHHQ", MAGIC, VERSION, kind, rid) + b"".join(struct.pack("<Q", w) for w in words)
u = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
u.connect({socket:?})
efd = os.eventfd(0)
tally = os.memfd_create("tally", os.MFD_ALLOW_SEALING); os.ftruncate(tally, {tally_bytes})
fcntl.fcntl(tally, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
socket.send_fds(u, [msg(1, 1, [os.getpid()])], [efd, tally]); u.recv(256)
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
socket.send_fds(u, [msg(2, 2)], [l.fileno()]); u.recv(256)
c = socket.socket()
addr = bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])
socket.send_fds(u, [msg(4, 3, [int.from_bytes(addr[:8], "little"), int.from_bytes(addr[8:], "little"), {port}, 1 << 20, 0])], [c.fileno()])
u.recv(256)
parent = os.getpid()
if os.fork() == 0:
    # Keep the inherited service connection open a while after the parent dies.
    while os.getppid() == parent:
        time.sleep(0.05)
    time.sleep(3); os._exit(0)
print("ready", flush=True)
time.sleep(60)
"#,
        socket = socket.to_str().unwrap(),
        port = port,
        version = fabric::wire::VERSION,
        tally_bytes = sys::TALLY_BYTES,
    );
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3")
}

#[test]
fn a_dead_process_leaves_nothing_behind() {
    let svc = start(Options::default());
    let mut me = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    me.listen(l.as_raw_fd()).unwrap();
    let mut py = python_client(&svc.socket, l.local_addr().unwrap().port());
    let mut line = [0u8; 6];
    py.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"ready\n");
    let st = me.status().unwrap();
    assert_eq!((st.clients, st.listeners, st.offers), (2, 2, 1));

    // Its forked child keeps the service connection open; the process itself dies.
    // SAFETY: kill(2) on the child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(py.id() as i32, libc::SIGKILL) }, 0);
    py.wait().unwrap();
    let t0 = Instant::now();
    let st = loop {
        let st = me.status().unwrap();
        if st.listeners == 1 || t0.elapsed() > Duration::from_secs(10) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((st.clients, st.listeners, st.offers), (1, 1, 0));

    // A connection lives while a holder lives or the kernel still has one of its sockets.
    let mut client = Client::connect(&svc.socket).unwrap();
    let to = l.local_addr().unwrap();
    let (mut offer, csock, accepted) = offer_and_connect(&mut client, to, &l);
    let Pairing::Paired(s) = me.accept(accepted.as_raw_fd(), 1 << 20).unwrap() else {
        panic!("declined");
    };
    assert!(matches!(
        client.paired(&mut offer, Duration::from_secs(5)).unwrap(),
        Some(Pairing::Paired(_))
    ));
    assert_eq!(me.status().unwrap().connections, 1);
    // Whoever holds a socket of it (a forked child, a new image after exec) gets it again.
    let fabric::Held::Paired(again) = client.hold(accepted.as_raw_fd()).unwrap() else {
        panic!("hold declined");
    };
    assert_eq!((again.conn, again.server), (s.conn, true));
    let unrelated = TcpStream::connect(to).unwrap();
    assert!(matches!(
        client.hold(unrelated.as_raw_fd()).unwrap(),
        fabric::Held::Declined(10)
    ));
    // This process, holding both ends, lets go of them: the window space comes back at once.
    me.close(s.conn, true, false).unwrap();
    assert_eq!(me.status().unwrap().connections, 1, "one end is still held");
    client.close(s.conn, false, false).unwrap();
    // One-way, on another socket than this process's status requests: the service may read
    // those first. Wait until it has read it.
    let t0 = Instant::now();
    while me.status().unwrap().reclaimed == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the close was never read"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Close is never answered (wire version 4): an end the sender no longer holds is only
    // counted as refused.
    let refused = me.status().unwrap().refused;
    me.close(s.conn, true, false).unwrap();
    assert_eq!(me.status().unwrap().refused, refused + 1);
    drop((csock, accepted, unrelated));
    let st = me.status().unwrap();
    assert_eq!((st.connections, st.window_used, st.reclaimed), (0, 0, 1));
}

#[test]
fn fallbacks_are_kept_with_the_kernels_addresses_never_answered_and_bounded() {
    let svc = start(Options::default());
    let mut c = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    let s = TcpStream::connect(to).unwrap();
    let (accepted, _) = l.accept().unwrap();
    c.fallback_nowait(s.as_raw_fd(), 4, false).unwrap();
    c.fallback_nowait(accepted.as_raw_fd(), 6, true).unwrap();
    // A descriptor that is not a connected TCP socket is counted, not kept, and not answered.
    let before = c.status().unwrap().refused;
    let line = sys::line().unwrap();
    c.fallback_nowait(line.as_raw_fd(), 4, false).unwrap();
    c.fallback_nowait(l.as_raw_fd(), 4, true).unwrap();
    // None of the four reports is answered: nothing arrives on the client's connection.
    assert_eq!(sys::poll_in(&[c.fd()], 300).unwrap(), vec![0]);
    let h = c.history().unwrap();
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(c.status().unwrap().refused, before + 2);
    let me = std::process::id();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let ours = s.local_addr().unwrap().port();
    assert_eq!(
        (h[0].pid, h[0].uid, h[0].reason, h[0].server),
        (me, uid, 4, false)
    );
    assert_eq!((h[0].local.1, h[0].peer.1), (ours, to.port()));
    assert_eq!((h[0].local.0, h[0].peer.0), (v4(&to), v4(&to)));
    assert_eq!((h[1].reason, h[1].server), (6, true));
    assert_eq!((h[1].local.1, h[1].peer.1), (to.port(), ours));
    // The history keeps the newest 64.
    for _ in 0..70 {
        c.fallback_nowait(s.as_raw_fd(), 9, false).unwrap();
    }
    let h = c.history().unwrap();
    assert_eq!(h.len(), 64);
    assert!(h.iter().all(|f| f.reason == 9), "the oldest went first");
}

/// A listener whose publisher hung up lives exactly as long as the kernel has its socket
/// listening (asked by sock_diag), and a process that accepts on it holds it from then on.
#[test]
fn an_orphaned_listener_lives_while_its_socket_listens() {
    let svc = start(Options::default());
    let listeners = |c: &mut Client| c.status().unwrap().listeners;
    let mut watcher = Client::connect(&svc.socket).unwrap();
    let wait_for = |c: &mut Client, want: u64| {
        let t0 = Instant::now();
        while listeners(c) != want {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "listeners never {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Published, then its publisher goes (the socket stays open here, as in a daemon's child).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut publisher = Client::connect(&svc.socket).unwrap();
    publisher.listen(l.as_raw_fd()).unwrap();
    drop(publisher);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(listeners(&mut watcher), 1, "the socket still listens");
    // The kernel closes it: withdrawn within a few looks.
    drop(l);
    wait_for(&mut watcher, 0);

    // Again; this time a process accepts on it before the socket closes: it holds the
    // listener now, so the listener stays while that process does, and goes with it.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    let mut publisher = Client::connect(&svc.socket).unwrap();
    publisher.listen(l.as_raw_fd()).unwrap();
    drop(publisher);
    let mut acceptor = Client::connect(&svc.socket).unwrap();
    let _c = TcpStream::connect(to).unwrap();
    let (s, _) = l.accept().unwrap();
    assert!(matches!(
        acceptor.accept(s.as_raw_fd(), 1 << 20),
        Ok(Pairing::Declined(_))
    ));
    drop(l);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(listeners(&mut watcher), 1, "adopted by the acceptor");
    drop(acceptor);
    wait_for(&mut watcher, 0);
}

/// Requests nobody waits for are never answered (wire version 4): a pipelined `Connect` gets
/// no `Offered`, and `Close`, `Unlisten` and a quiet `Cancel` get nothing, refused or not (a
/// refusal is only counted). Each answer was a message the service sent and the process read
/// for nothing, on the path of every connection.
#[test]
fn one_way_requests_are_never_answered() {
    let svc = start(Options::default());
    let mut server = Client::connect(&svc.socket).unwrap();
    let mut client = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    let listener = server.listen(l.as_raw_fd()).unwrap();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let mut offer = client
        .offer_nowait(s.as_raw_fd(), v4(&to), to.port(), 1 << 20)
        .unwrap();
    assert_eq!(
        sys::poll_in(&[client.fd()], 300).unwrap(),
        vec![0],
        "a pipelined connect was answered before its pairing"
    );
    s.connect(&to.into()).unwrap();
    let (accepted, _) = l.accept().unwrap();
    let Pairing::Paired(p) = server.accept(accepted.as_raw_fd(), 1 << 20).unwrap() else {
        panic!("declined");
    };
    assert!(matches!(
        client.paired(&mut offer, Duration::from_secs(5)).unwrap(),
        Some(Pairing::Paired(_))
    ));
    let before = server.status().unwrap();
    server.close(p.conn, true, false).unwrap();
    // Refused, only counted: an end no longer held, someone else's listener, an offer gone.
    server.close(p.conn, true, false).unwrap();
    client.unlisten(listener).unwrap();
    client.cancel_nowait(offer).unwrap();
    server.unlisten(listener).unwrap();
    assert_eq!(
        sys::poll_in(&[server.fd(), client.fd()], 300).unwrap(),
        vec![0, 0],
        "a one-way request was answered"
    );
    let after = server.status().unwrap();
    assert_eq!(after.refused, before.refused + 3);
    assert_eq!((before.listeners, after.listeners), (1, 0));
    drop((s, accepted));
}

/// Segments made ahead (ranges carved ahead in the pair's arena) are each one connection's
/// only: every pairing gets a range no other connection had, all zeros, even after the earlier connections wrote
/// theirs and closed, and each with its own seals.
#[test]
fn every_pairing_gets_a_fresh_segment_of_its_own() {
    let svc = start(Options {
        ring_bytes: 16 << 10,
        ..Options::default()
    });
    let mut server = Client::connect(&svc.socket).unwrap();
    let mut client = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    server.listen(l.as_raw_fd()).unwrap();
    let mut seen = Vec::new();
    let mut kept = Vec::new();
    for round in 0..12u8 {
        let (mut offer, csock, accepted) = offer_and_connect(&mut client, to, &l);
        let Pairing::Paired(s) = server.accept(accepted.as_raw_fd(), 16 << 10).unwrap() else {
            panic!("declined");
        };
        let Some(Pairing::Paired(c)) = client.paired(&mut offer, Duration::from_secs(5)).unwrap()
        else {
            panic!("the client was not paired");
        };
        let id = segment_of(&s);
        assert!(!seen.contains(&id), "a segment was handed out twice");
        seen.push(id);
        let (mut s_map, c_map) = (map(&s), map(&c));
        assert!(
            s_map.iter().all(|&b| b == 0),
            "round {round}: a new segment held bytes"
        );
        let seals = sys::seals(s.segment.as_raw_fd()).unwrap();
        assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
        // Write every page, as a connection's ends might; the next pairing must not see it.
        for b in s_map.iter_mut().step_by(512) {
            *b = round + 1;
        }
        assert_eq!(c_map[4096], round + 1);
        client.close(s.conn, false, false).unwrap();
        server.close(s.conn, true, false).unwrap();
        // Half the rounds keep their mappings (a process that never unmaps its old segment).
        if round % 2 == 0 {
            kept.push((s_map, c_map, csock, accepted));
        }
    }
    assert_eq!(
        kept[0].0[0], 1,
        "a kept mapping is its connection's memory still"
    );
}
