//! Model checks of the rendezvous area's shared-memory protocol (docs/MEMORY-ORDERING.md, the
//! transport's listener, offer and answer sync points) under loom, running the real code of
//! `transport/src/rendezvous.rs` over its loom model ([`RendezvousArea::model`]: one loopback area, two
//! slots per table).
//!
//! Each model sets the area up in the model's main thread (so every thread sees that), then
//! lets two or three parties race and checks what each saw and what is left. Built and run only
//! with `--cfg loom` (scripts/test.sh):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p pcisock-transport \
//!     --test loom_rendezvous --target-dir target/loom
//! ```
#![cfg(loom)]

mod loom_check;
use loom_check::check;

use std::sync::Arc;

use loom::thread;
use transport::proto::{Answer, Endpoint, ListenerEntry, Offer, RingLoc, SocketId};
use transport::proto::{ProtoError, PROTOCOL_VERSION};
use transport::rendezvous::{model, RendezvousArea, SlotGuard};

/// 127.0.0.1:`port`, as the kernel's view of a socket gives it (IPv4-mapped).
fn ep(port: u16) -> Endpoint {
    let mut ip = [0u8; 16];
    ip[10] = 0xff;
    ip[11] = 0xff;
    ip[12..].copy_from_slice(&[127, 0, 0, 1]);
    Endpoint { ip, port }
}

const SERVER: u16 = 5001;
/// The client port of the connection the server accepted, and of another connection.
const MINE: u16 = 40_000;
const OTHER: u16 = 40_001;

/// An offer for the connection from `client_port` to the server; the cookie tells offers apart.
fn offer(cookie: u64, client_port: u16) -> Offer {
    Offer {
        version: PROTOCOL_VERSION,
        cookie,
        client: ep(client_port),
        server: ep(SERVER),
        ring: RingLoc {
            mw: 0,
            offset: cookie << 20,
            len: 1 << 20,
            db_bit: cookie as u32,
        },
        late: None,
    }
}

/// The server's answer to the offer with `cookie`.
fn answer(cookie: u64) -> Answer {
    Answer {
        version: PROTOCOL_VERSION,
        cookie,
        decline: 0,
        ring: RingLoc {
            mw: 0,
            offset: (cookie + 100) << 20,
            len: 1 << 20,
            db_bit: 7,
        },
        sent: 0,
    }
}

type Taken = Option<(usize, u32, Result<Offer, ProtoError>)>;

/// The server side of an accept from 127.0.0.1:`client_port`: take the matching offer and, if
/// one was taken, answer it as `accept` does (with the index and generation the take returned).
/// Returns the cookie it answered.
fn take_and_answer(ctrl: &RendezvousArea, client_port: u16) -> Option<u64> {
    let taken: Taken = ctrl.take_offer(&ep(client_port), &ep(SERVER));
    let (index, generation, offer) = taken?;
    let offer = offer.expect("a taken offer decodes");
    assert!(
        offer.matches(&ep(client_port), &ep(SERVER)),
        "the server took an offer for another connection: {offer:?}"
    );
    ctrl.write_answer(index, generation, &answer(offer.cookie));
    Some(offer.cookie)
}

/// Post `offer`, withdraw it and give its slot back: its record stays behind in the slot.
fn leave_withdrawn_offer(ctrl: &RendezvousArea, offer: Offer) {
    let slot = ctrl.post_offer(&offer).unwrap();
    assert!(ctrl.withdraw(&slot));
    ctrl.finish_offer(slot);
}

fn answered(ctrl: &RendezvousArea, slot: &SlotGuard) -> Option<Answer> {
    ctrl.answer(slot)
        .map(|a| a.expect("an answer seen whole decodes"))
}

/// Offer publish and answer: a client posts an offer in a slot that held a withdrawn offer of
/// another connection while the server, which accepted this connection, takes. The server sees
/// nothing or the whole new offer (never the old record under the new state), answers it with
/// its generation, and the client finds that answer.
#[test]
fn a_client_posts_while_the_server_takes() {
    check("post/take", || {
        let ctrl = Arc::new(RendezvousArea::model());
        leave_withdrawn_offer(&ctrl, offer(1, OTHER));

        let c = ctrl.clone();
        let client = thread::spawn(move || c.post_offer(&offer(2, MINE)).unwrap());
        let c = ctrl.clone();
        let server = thread::spawn(move || {
            // The accept of the old offer's connection finds nothing to take, ever.
            assert_eq!(take_and_answer(&c, OTHER), None);
            take_and_answer(&c, MINE)
        });
        let slot = client.join().unwrap();
        let took = server.join().unwrap();
        match took {
            Some(cookie) => {
                assert_eq!(cookie, 2);
                assert_eq!(answered(&ctrl, &slot), Some(answer(2)));
            }
            // The server looked before the offer was posted: the client can still withdraw.
            None => assert!(ctrl.withdraw(&slot)),
        }
    });
}

/// Offer race: a client withdraws its offer while the server takes it. Exactly one of them
/// wins, and each knows whether it did: the winning server's answer reaches the client.
#[test]
fn a_client_withdraws_while_the_server_takes() {
    check("withdraw/take", || {
        let ctrl = Arc::new(RendezvousArea::model());
        let slot = Arc::new(ctrl.post_offer(&offer(1, MINE)).unwrap());

        let (c, s) = (ctrl.clone(), slot.clone());
        let client = thread::spawn(move || c.withdraw(&s));
        let c = ctrl.clone();
        let server = thread::spawn(move || take_and_answer(&c, MINE));
        let withdrawn = client.join().unwrap();
        let took = server.join().unwrap();
        assert_ne!(
            withdrawn,
            took.is_some(),
            "exactly one of them owns the offer"
        );
        if took.is_some() {
            assert_eq!(answered(&ctrl, &slot), Some(answer(1)));
        }
    });
}

/// A reserved offer (CONNECTING) is posted while the server looks as `accept` does: for a
/// reserved offer for its port, then for posted ones. If the first look found no reserved
/// offer, the second finds the posted one whole (with its client port, not the reservation's 0).
#[test]
fn a_reserved_offer_is_posted_while_the_server_looks() {
    check("reserve/publish/take", || {
        let ctrl = Arc::new(RendezvousArea::model());
        let mut reserved = offer(1, MINE);
        reserved.client.port = 0;
        let slot = ctrl.reserve_offer(&reserved).unwrap();

        let c = ctrl.clone();
        let client = thread::spawn(move || {
            c.publish_offer(&slot, &offer(1, MINE));
            slot
        });
        let c = ctrl.clone();
        let server = thread::spawn(move || {
            let connecting = c.connecting_to(&ep(SERVER));
            (connecting, take_and_answer(&c, MINE))
        });
        let slot = client.join().unwrap();
        let (connecting, took) = server.join().unwrap();
        assert!(
            connecting || took.is_some(),
            "no offer was reserved, yet the posted one was not found"
        );
        match took {
            Some(cookie) => assert_eq!(answered(&ctrl, &slot), Some(answer(cookie))),
            None => assert!(ctrl.withdraw(&slot)),
        }
    });
}

/// Offer publish, reserved: a client reserves an offer for another listener's port in a slot
/// whose withdrawn offer was for this server's port, while the server asks whether a client is
/// connecting to it. The reservation is seen whole: its own server port, not the old record's.
#[test]
fn an_offer_is_reserved_while_the_server_asks() {
    check("reserve/connecting_to", || {
        let ctrl = Arc::new(RendezvousArea::model());
        leave_withdrawn_offer(&ctrl, offer(1, OTHER));

        let c = ctrl.clone();
        let client = thread::spawn(move || {
            let mut reserved = offer(2, 0);
            reserved.server.port = SERVER + 1;
            c.reserve_offer(&reserved).unwrap()
        });
        let c = ctrl.clone();
        let server = thread::spawn(move || c.connecting_to(&ep(SERVER)));
        client.join().unwrap();
        assert!(!server.join().unwrap(), "a reservation for another port");
        assert!(ctrl.connecting_to(&ep(SERVER + 1)));
    });
}

/// Answer: the server writes its answer while the client reads it, in a slot whose previous
/// answer (to an earlier offer of the same slot) is still there. The client sees no answer or
/// the whole new one, never the old bytes under the new state.
#[test]
fn the_server_answers_while_the_client_reads() {
    check("answer", || {
        let ctrl = Arc::new(RendezvousArea::model());
        let first = ctrl.post_offer(&offer(1, OTHER)).unwrap();
        assert_eq!(take_and_answer(&ctrl, OTHER), Some(1));
        assert_eq!(answered(&ctrl, &first), Some(answer(1)));
        ctrl.finish_offer(first);
        let slot = Arc::new(ctrl.post_offer(&offer(2, MINE)).unwrap());
        let (index, generation, _) = ctrl.take_offer(&ep(MINE), &ep(SERVER)).unwrap();

        let c = ctrl.clone();
        let server = thread::spawn(move || c.write_answer(index, generation, &answer(2)));
        let (c, s) = (ctrl.clone(), slot.clone());
        let client = thread::spawn(move || answered(&c, &s));
        server.join().unwrap();
        if let Some(a) = client.join().unwrap() {
            assert_eq!(a, answer(2));
        }
        assert_eq!(answered(&ctrl, &slot), Some(answer(2)));
    });
}

/// Listener publish: a server publishes a listener in a slot whose earlier listener (another
/// port) was withdrawn, while a client looks the slots up. It sees no listener or the whole new
/// one.
#[test]
fn a_listener_is_published_while_a_client_looks() {
    check("listener publish", || {
        let ctrl = Arc::new(RendezvousArea::model());
        let old = ctrl
            .add_listener(ep(SERVER + 1), SocketId::default())
            .unwrap();
        ctrl.remove_listener(&old);
        let me = model::pid();
        let start = ntbdrv::process::start_time(me).unwrap();

        let c = ctrl.clone();
        let server = thread::spawn(move || c.add_listener(ep(SERVER), SocketId::default()));
        let c = ctrl.clone();
        let client = thread::spawn(move || [c.model_listener(0), c.model_listener(1)]);
        let published = server.join().unwrap().unwrap();
        let want = ListenerEntry {
            addr: ep(SERVER),
            pid: me,
            start_time: start,
            socket: SocketId::default(),
        };
        for seen in client.join().unwrap().into_iter().flatten() {
            assert_eq!(seen, want);
        }
        assert_eq!(ctrl.model_listener(published.index), Some(want));
        assert!(!ctrl.find_listener(&ep(SERVER + 1), false));
        assert!(ctrl.find_listener(&ep(SERVER), false));
    });
}

/// Listener socket: the kernel listens on a published listener's socket while a client reads
/// the record and the owner's process looks its listener up by socket. A nonzero inode comes
/// with its namespace: never the inode without it.
#[test]
fn a_listener_s_socket_is_set_while_it_is_read() {
    check("listener socket", || {
        let ctrl = Arc::new(RendezvousArea::model());
        let socket = SocketId {
            inode: 11,
            netns: 21,
        };
        let slot = ctrl.add_listener(ep(SERVER), SocketId::default()).unwrap();

        let c = ctrl.clone();
        let server = thread::spawn(move || c.set_listener_socket(&slot, socket));
        let c = ctrl.clone();
        let client = thread::spawn(move || {
            let torn = SocketId {
                inode: socket.inode,
                netns: 0,
            };
            (c.model_listener(0), c.listener_of(torn))
        });
        server.join().unwrap();
        let (seen, torn) = client.join().unwrap();
        let seen = seen.expect("the listener stays published").socket;
        assert!(seen.inode == 0 || seen == socket, "a torn socket: {seen:?}");
        assert!(torn.is_none(), "a torn socket in the owner table");
        assert_eq!(ctrl.model_listener(0).unwrap().socket, socket);
        assert!(ctrl.listener_of(socket).is_some());
    });
}

/// Listener sweep: the listener of a process that died is withdrawn by a sweep while another
/// process publishes one and a client looks. The client sees each record whole; in the end the
/// dead one is gone and the live one published, whichever slot it got.
#[test]
fn a_dead_listener_is_swept_while_another_is_published() {
    /// A pid no process has (above any `pid_max`, below the owner word's marks).
    const DEAD: u32 = 0x3fff_fff1;
    check("listener sweep", || {
        let ctrl = Arc::new(RendezvousArea::model());
        model::play_pid(DEAD);
        ctrl.add_listener(ep(SERVER + 1), SocketId::default())
            .unwrap();
        model::play_pid(0);

        let c = ctrl.clone();
        let sweeper = thread::spawn(move || c.sweep_dead_listeners());
        let c = ctrl.clone();
        let server = thread::spawn(move || c.add_listener(ep(SERVER), SocketId::default()));
        let c = ctrl.clone();
        let client = thread::spawn(move || [c.model_listener(0), c.model_listener(1)]);
        assert_eq!(sweeper.join().unwrap(), 1);
        server.join().unwrap().unwrap();
        for seen in client.join().unwrap().into_iter().flatten() {
            let (port, pid) = (seen.addr.port, seen.pid);
            assert!(
                (port, pid) == (SERVER + 1, DEAD) || (port, pid) == (SERVER, model::pid()),
                "a torn listener: {seen:?}"
            );
        }
        assert!(!ctrl.find_listener(&ep(SERVER + 1), false));
        assert!(ctrl.find_listener(&ep(SERVER), false));
    });
}

/// Owner claim: a sweep (another process) judges a listener whose socket is gone while its
/// process withdraws it and publishes a new one, which may claim the same slot (the same pid:
/// only the generation tells the claims apart), its socket not known yet (judged by the live
/// process). The sweep withdraws the dead one or nothing: the new listener stays published.
#[test]
fn a_sweep_leaves_a_listener_claimed_again_while_it_judged() {
    check("owner claim", || {
        let ctrl = Arc::new(RendezvousArea::model());
        // A socket of our namespace that does not listen: the kernel says this listener is dead.
        let gone = SocketId {
            inode: u64::MAX - 1,
            netns: transport::sockdiag::netns().unwrap(),
        };
        let old = ctrl.add_listener(ep(SERVER), SocketId::default()).unwrap();
        ctrl.set_listener_socket(&old, gone);

        let c = ctrl.clone();
        let sweeper = thread::spawn(move || {
            model::play_pid(0x3fff_fff0); // another process of this host
            c.sweep_dead_listeners()
        });
        let c = ctrl.clone();
        let owner = thread::spawn(move || {
            c.remove_listener(&old);
            c.add_listener(ep(SERVER + 1), SocketId::default()).unwrap()
        });
        sweeper.join().unwrap();
        owner.join().unwrap();
        assert!(!ctrl.find_listener(&ep(SERVER), false), "the old listener");
        assert!(
            ctrl.find_listener(&ep(SERVER + 1), false),
            "the new listener was withdrawn by the sweep"
        );
    });
}

/// Offer race across two uses of a slot: a client withdraws its offer and posts another for
/// connection `again` in the same slot while the server, which accepted connection `MINE`,
/// takes. Whatever the server took, it took it whole and for its own connection, and its
/// answer (carrying the taken offer's generation) reaches the client that made that offer.
fn withdrawn_and_posted_again(again: u16) {
    let ctrl = Arc::new(RendezvousArea::model());
    let first = Arc::new(ctrl.post_offer(&offer(1, MINE)).unwrap());

    let (c, f) = (ctrl.clone(), first.clone());
    let client = thread::spawn(move || {
        if !c.withdraw(&f) {
            return None;
        }
        c.finish_offer(SlotGuard {
            index: f.index,
            generation: f.generation,
        });
        Some(c.post_offer(&offer(2, again)).unwrap())
    });
    let c = ctrl.clone();
    let server = thread::spawn(move || take_and_answer(&c, MINE));
    let second = client.join().unwrap();
    let took = server.join().unwrap();
    match (took, second) {
        (Some(1), None) => assert_eq!(answered(&ctrl, &first), Some(answer(1))),
        (Some(2), Some(second)) => assert_eq!(
            answered(&ctrl, &second),
            Some(answer(2)),
            "the answer to the second offer does not reach its client"
        ),
        (None, Some(second)) => assert!(ctrl.withdraw(&second)),
        other => panic!(
            "server took {:?}, client posted again: {}",
            other.0,
            other.1.is_some()
        ),
    }
}

#[test]
fn a_client_withdraws_and_posts_again_while_the_server_takes() {
    check("withdraw/post again/take", || {
        withdrawn_and_posted_again(MINE)
    });
}

#[test]
fn another_connection_s_offer_takes_the_slot_while_the_server_takes() {
    check("withdraw/post other/take", || {
        withdrawn_and_posted_again(OTHER)
    });
}

/// Answer rewrite: a server answers an earlier use of a slot so late that its client gave the
/// slot up and another offer took it, was taken and answered; the late answer rewrites the slot
/// while that client reads its own. The client sees its whole answer or none (it looks again
/// later), never the late one and never a mix of the two.
#[test]
fn a_late_answer_rewrites_the_slot_while_the_client_reads() {
    check("answer rewrite", || {
        let ctrl = Arc::new(RendezvousArea::model());
        // The first client's offer is taken, never answered in time; the client gives up.
        let first = ctrl.post_offer(&offer(1, OTHER)).unwrap();
        let (late_index, late_gen, _) = ctrl.take_offer(&ep(OTHER), &ep(SERVER)).unwrap();
        ctrl.finish_offer(first);
        // Another offer takes the slot and is answered.
        let slot = Arc::new(ctrl.post_offer(&offer(2, MINE)).unwrap());
        assert_eq!(slot.index, late_index, "the new offer reuses the slot");
        assert_eq!(take_and_answer(&ctrl, MINE), Some(2));

        let c = ctrl.clone();
        let late = thread::spawn(move || c.write_answer(late_index, late_gen, &answer(1)));
        let (c, s) = (ctrl.clone(), slot.clone());
        let client = thread::spawn(move || c.answer(&s));
        late.join().unwrap();
        match client.join().unwrap() {
            None => {}
            Some(Ok(a)) => assert_eq!(a, answer(2), "the client took another answer"),
            Some(Err(e)) => panic!("the client read a torn answer: {e:?}"),
        }
    });
}

/// Late bell: a server process publishes its late bell in its listener record and then looks
/// for late offers, while a client posts a late offer and then reads the bells to ring. Either
/// the client sees the bell (and rings it) or the server's look takes the offer: a server
/// candidate asleep on the bell is never left with an offer nobody rang for.
#[test]
fn a_late_bell_is_published_while_a_client_posts_a_late_offer() {
    check("late bell", || {
        let ctrl = Arc::new(RendezvousArea::model());
        ctrl.add_listener(ep(SERVER), SocketId::default()).unwrap();

        let c = ctrl.clone();
        let server = thread::spawn(move || {
            c.set_bell(5);
            c.take_late_offer(&ep(MINE), &ep(SERVER)).is_some()
        });
        let c = ctrl.clone();
        let client = thread::spawn(move || {
            let late = Offer {
                late: Some(3),
                ..offer(1, MINE)
            };
            let _slot = c.post_offer(&late).unwrap();
            c.listener_bells(&ep(SERVER), false)
        });
        let took = server.join().unwrap();
        let bells = client.join().unwrap();
        assert!(
            took || bells == [5],
            "the offer was left untaken and its client saw bells {bells:?}"
        );
    });
}
