//! How long an offer stands: while its servers make progress, and while its connection waits
//! in its listener's accept queue; once more after a process took it from the queue (its accept
//! may be on its way), and not after that; and while its connection has reached no server, for
//! the client's first bytes to reach it (`Unreached`, `Plain`).

use std::net::TcpListener;
use std::os::fd::AsRawFd;

use fabric::wire::Refusal;
use fabric::{Client, ClientError, Options, Pairing, Stalled};
use socket2::{Domain, Socket, Type};

mod common;
use common::{offer_and_connect, start, v4};

/// A client whose answer is late asks the service to give its offer up only if its servers made
/// no progress: while the listener it connects to accepts other connections, the offer stands
/// (refused `Progressing`); once nothing was accepted since it last asked, it goes. Another
/// listener's accepts are not its servers' progress.
#[test]
fn an_offer_stands_while_its_listener_accepts_others() {
    let svc = start(Options::default());
    let mut server = Client::connect(&svc.socket).unwrap();
    let mut client = Client::connect(&svc.socket).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    server.listen(l.as_raw_fd()).unwrap();
    server.listen(other.as_raw_fd()).unwrap();
    let to = l.local_addr().unwrap();
    let (_o1, _c1, a1) = offer_and_connect(&mut client, to, &l);
    let (o2, _c2, _a2) = offer_and_connect(&mut client, to, &l);
    let (o3, _c3, _a3) = offer_and_connect(&mut client, other.local_addr().unwrap(), &other);
    assert!(matches!(
        server.accept(a1.as_raw_fd(), 1 << 20),
        Ok(Pairing::Paired(_))
    ));
    // o2's listener accepted since o2 was made: it stands.
    assert_eq!(client.cancel_if_stalled(o2).unwrap(), Stalled::Stands);
    // Nothing since it last asked, but a process took its connection from the queue: its
    // `Accept` may be on its way, so it stands once more; then it goes (and is gone: a plain
    // cancel finds nothing).
    assert_eq!(client.cancel_if_stalled(o2).unwrap(), Stalled::Stands);
    assert_eq!(client.cancel_if_stalled(o2).unwrap(), Stalled::GivenUp);
    assert!(matches!(
        client.cancel(o2),
        Err(ClientError::Refused(Refusal::NotYours))
    ));
    // o3 waits on another listener, which accepted nothing (its connection was taken from the
    // queue: one grace).
    assert_eq!(client.cancel_if_stalled(o3).unwrap(), Stalled::Stands);
    assert_eq!(client.cancel_if_stalled(o3).unwrap(), Stalled::GivenUp);
}

/// A connection still in its listener's accept queue has reached no server yet: its offer is not
/// stalled however long it waits (on TCP its client would wait the same); once a process took it
/// from the queue, it stands one more time (that process's `Accept` may be on its way), then
/// it is stalled.
#[test]
fn an_offer_in_the_accept_queue_is_not_stalled() {
    let svc = start(Options::default());
    let (mut server, mut client) = (Client::connect(&svc.socket), Client::connect(&svc.socket));
    let (server, client) = (server.as_mut().unwrap(), client.as_mut().unwrap());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    server.listen(l.as_raw_fd()).unwrap();
    let to = l.local_addr().unwrap();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let o = client.offer(s.as_raw_fd(), v4(&to), to.port(), 1 << 20);
    let o = o.unwrap().unwrap();
    s.connect(&to.into()).unwrap();
    assert_eq!(client.cancel_if_stalled(o).unwrap(), Stalled::Stands);
    assert_eq!(
        client.cancel_if_stalled(o).unwrap(),
        Stalled::Stands,
        "nothing accepted: still queued"
    );
    let _taken = l.accept().unwrap();
    // Taken by a process that did not answer (yet): it may be on its way, once.
    assert_eq!(client.cancel_if_stalled(o).unwrap(), Stalled::Stands);
    assert_eq!(client.cancel_if_stalled(o).unwrap(), Stalled::GivenUp);
}

/// A client socket connected to `to` in the kernel's view of this host only: made in TCP repair
/// mode, so no segment left it and no server side exists (as when a listener's queue
/// overflowed and the handshake's last segment was dropped).
fn connected_unseen(c: &mut Client, to: std::net::SocketAddr) -> (fabric::Offer, Socket) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let set = |v: libc::c_int| {
        // SAFETY: a setsockopt of an int option on a socket this test owns, with its size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_TCP,
                libc::TCP_REPAIR,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "TCP_REPAIR {v} (needs CAP_NET_ADMIN)");
    };
    let o = c.offer(s.as_raw_fd(), v4(&to), to.port(), 1 << 20);
    let o = o.unwrap().unwrap();
    set(1);
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.connect(&to.into()).unwrap();
    // Out of repair mode without the window probe: still nothing sent.
    set(-1);
    (o, s)
}

/// An offer whose connection has no server side stands (`Unreached`) until its client's first
/// bytes reach the server: `Plain` keeps their count with the offer, once, and only after the
/// service said so; the service's patience for an offer still bounds it. Before, such an offer
/// was given up at its client's first "stalled?" question, and the connection stayed on TCP.
#[test]
fn an_offer_that_reached_no_server_stands_for_its_clients_first_bytes() {
    let svc = start(Options::default());
    let (mut server, mut client, mut other) = (
        Client::connect(&svc.socket),
        Client::connect(&svc.socket),
        Client::connect(&svc.socket),
    );
    let (server, client, other) = (
        server.as_mut().unwrap(),
        client.as_mut().unwrap(),
        other.as_mut().unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    server.listen(l.as_raw_fd()).unwrap();
    let to = l.local_addr().unwrap();
    // Not before the service said the connection reached no server.
    let (queued, _s, _a) = offer_and_connect(client, to, &l);
    assert!(matches!(
        client.plain(&queued, 100),
        Err(ClientError::Refused(Refusal::NotYours))
    ));
    let (o, _unseen) = connected_unseen(client, to);
    assert_eq!(client.cancel_if_stalled(o).unwrap(), Stalled::Unreached);
    // Another process cannot set the count of this client's offer (its request ids name its own).
    assert!(matches!(
        other.plain(&o, 100),
        Err(ClientError::Refused(Refusal::NotYours))
    ));
    assert!(matches!(
        client.plain(&o, 0),
        Err(ClientError::Refused(Refusal::NotYours))
    ));
    client.plain(&o, 100).expect("the count is kept");
    assert!(
        matches!(
            client.plain(&o, 200),
            Err(ClientError::Refused(Refusal::NotYours))
        ),
        "once per offer"
    );
    // Its bytes are on their way: it stands, without telling the client again.
    assert_eq!(client.cancel_if_stalled(o).unwrap(), Stalled::Stands);
    client.cancel(o).unwrap();
}

/// The service's patience for an offer bounds an unreached one too.
#[test]
fn an_unreached_offer_goes_after_the_services_patience() {
    let svc = start(Options {
        offer_patience: std::time::Duration::from_millis(200),
        ..Options::default()
    });
    let (mut server, mut client) = (Client::connect(&svc.socket), Client::connect(&svc.socket));
    let (server, client) = (server.as_mut().unwrap(), client.as_mut().unwrap());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    server.listen(l.as_raw_fd()).unwrap();
    let (o, _unseen) = connected_unseen(client, l.local_addr().unwrap());
    assert_eq!(client.cancel_if_stalled(o).unwrap(), Stalled::Unreached);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Expired by the service (declined), or given up at this question: gone either way.
    let gone = matches!(
        client.cancel_if_stalled(o),
        Ok(Stalled::GivenUp) | Err(ClientError::Refused(Refusal::NotYours))
    );
    assert!(gone);
}
