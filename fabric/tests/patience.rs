//! How long an offer stands: while its servers make progress, and while its connection waits
//! in its listener's accept queue; once more after a process took it from the queue (its accept
//! may be on its way), and not after that.

use std::net::TcpListener;
use std::os::fd::AsRawFd;

use fabric::wire::Refusal;
use fabric::{Client, ClientError, Options, Pairing};
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
    assert!(!client.cancel_if_stalled(o2).unwrap());
    // Nothing since it last asked, but a process took its connection from the queue: its
    // `Accept` may be on its way, so it stands once more; then it goes (and is gone: a plain
    // cancel finds nothing).
    assert!(!client.cancel_if_stalled(o2).unwrap());
    assert!(client.cancel_if_stalled(o2).unwrap());
    assert!(matches!(
        client.cancel(o2),
        Err(ClientError::Refused(Refusal::NotYours))
    ));
    // o3 waits on another listener, which accepted nothing (its connection was taken from the
    // queue: one grace).
    assert!(!client.cancel_if_stalled(o3).unwrap());
    assert!(client.cancel_if_stalled(o3).unwrap());
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
    assert!(!client.cancel_if_stalled(o).unwrap());
    assert!(
        !client.cancel_if_stalled(o).unwrap(),
        "nothing accepted: still queued"
    );
    let _taken = l.accept().unwrap();
    // Taken by a process that did not answer (yet): it may be on its way, once.
    assert!(!client.cancel_if_stalled(o).unwrap());
    assert!(client.cancel_if_stalled(o).unwrap());
}
