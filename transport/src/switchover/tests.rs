//! The switch protocol's deterministic tests: records, both directions' state machines, the reader.

use super::*;

/// A BACK behind an END is found across DATA records; an incomplete or malformed record
/// stops the look.
#[test]
fn a_back_behind_an_end_is_found() {
    let rec = |kind, len: u32| {
        Record {
            kind,
            flags: 0,
            len,
            arg: 0,
        }
        .encode()
        .to_vec()
    };
    let mut w = rec(Kind::Data, 5);
    w.extend_from_slice(b"hello");
    assert!(!back_follows(&w));
    w.extend(rec(Kind::End, 0));
    assert!(!back_follows(&w));
    let mut with_back = w.clone();
    with_back.extend(rec(Kind::Back, 0));
    assert!(back_follows(&with_back));
    assert!(
        !back_follows(&with_back[..with_back.len() - 1]),
        "incomplete"
    );
    let mut bad = w.clone();
    bad.extend_from_slice(&[0u8; RECORD_HDR]);
    bad.extend(rec(Kind::Back, 0));
    assert!(!back_follows(&bad), "past a malformed record");
    // A DATA record whose payload is not all here hides what follows it.
    let mut short = rec(Kind::Data, 100);
    short.extend(rec(Kind::Back, 0));
    assert!(!back_follows(&short));
}

/// The sender's and receiver's view of one direction, with a ring that either lands every
/// write or loses the unpublished ones (the machines do not care which: the END carries
/// only what was published).
struct Pipe {
    tx: TxSwitch,
    rx: RxSwitch,
    reader: Reader,
    /// Bytes on TCP not yet read.
    wire: Vec<u8>,
    /// Ring frames published: (producer counter after it, sequence number, payload).
    ring: Vec<(u64, u64, Vec<u8>)>,
    tx_seq: u64,
    rx_seq: u64,
    tail: u64,
    head: u64,
    delivered: Vec<u8>,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            tx: TxSwitch::default(),
            rx: RxSwitch::new(1 << 16),
            reader: Reader::default(),
            wire: Vec::new(),
            ring: Vec::new(),
            tx_seq: 0,
            rx_seq: 0,
            tail: 0,
            head: 0,
            delivered: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        if self.tx.on_tcp() {
            let mut rest = bytes;
            while !rest.is_empty() {
                let r = self.tx.data(rest.len()).unwrap();
                self.wire.extend_from_slice(&r.encode());
                let (now, later) = rest.split_at(r.len as usize);
                self.wire.extend_from_slice(now);
                rest = later;
            }
        } else {
            self.tail += 16 + (bytes.len() as u64).div_ceil(16) * 16;
            self.ring.push((self.tail, self.tx_seq, bytes.to_vec()));
            self.tx_seq += 1;
        }
    }

    fn leave(&mut self, fin: bool) {
        let r = self.tx.leave_ring(self.tail, fin).unwrap();
        self.wire.extend_from_slice(&r.encode());
    }

    fn back(&mut self) {
        let (r, resume) = self.tx.back_to_ring().unwrap();
        assert_eq!(resume, self.tail);
        self.tx_seq = next_epoch(self.tx_seq);
        self.wire.extend_from_slice(&r.encode());
    }

    /// The receiver reads what it can, in order, as `failover` does.
    fn receive(&mut self) -> Result<(), ProtoError> {
        loop {
            let limit = self.rx.ring_limit(self.head);
            let mut progressed = false;
            // Ring frames below the limit.
            while let Some((end, seq, p)) = self.ring.first().cloned() {
                if end > limit || !matches!(self.rx.mode(), RxMode::Ring | RxMode::Drain { .. }) {
                    break;
                }
                if seq != self.rx_seq {
                    // Only a frame of the next epoch may come out of order: read TCP.
                    assert!(is_later_epoch(self.rx_seq, seq));
                    break;
                }
                self.rx_seq += 1;
                self.delivered.extend_from_slice(&p);
                self.head = end;
                self.ring.remove(0);
                progressed = true;
            }
            self.rx.drained(self.head, 0)?;
            match self.rx.mode() {
                RxMode::Ring if progressed && !self.ring.is_empty() => continue,
                // The ring is short of the END (writes that never landed): stuck.
                RxMode::Drain { .. } => return Ok(()),
                _ => {}
            }
            match self.reader.step(&self.wire, &mut self.rx, self.head, 0)? {
                Step::NeedMore => {
                    if !progressed {
                        return Ok(());
                    }
                }
                Step::Payload(n) => {
                    self.delivered.extend_from_slice(&self.wire[..n]);
                    self.wire.drain(..n);
                }
                Step::RendezvousArea(ev) => {
                    if ev == RxEvent::Back {
                        self.rx_seq = next_epoch(self.rx_seq);
                    }
                    self.wire.drain(..RECORD_HDR);
                }
            }
        }
    }
}

fn bytes(from: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| from.wrapping_add(i as u8)).collect()
}

#[test]
fn records_round_trip_and_reject_garbage() {
    for r in [
        Record {
            kind: Kind::Shut,
            flags: 0,
            len: 0,
            arg: 5,
        },
        Record {
            kind: Kind::Data,
            flags: 0,
            len: 7,
            arg: 99,
        },
        Record {
            kind: Kind::End,
            flags: END_FIN,
            len: 0,
            arg: 4096,
        },
        Record {
            kind: Kind::Back,
            flags: 0,
            len: 0,
            arg: 12,
        },
    ] {
        assert_eq!(Record::decode(&r.encode()), Ok(r));
    }
    let good = Record {
        kind: Kind::Data,
        flags: 0,
        len: 7,
        arg: 0,
    }
    .encode();
    for (i, v) in [(0, 0u8), (1, 9), (2, 1), (3, 1)] {
        let mut b = good;
        b[i] = v;
        assert!(Record::decode(&b).is_err(), "byte {i} = {v}");
    }
    let mut b = good;
    b[4..8].copy_from_slice(&(MAX_RECORD + 1).to_le_bytes());
    assert!(Record::decode(&b).is_err());
    b[4..8].copy_from_slice(&0u32.to_le_bytes());
    assert!(Record::decode(&b).is_err());
    // Plain application bytes (what a non-pcisock peer would send) are no record.
    assert!(Record::decode(b"GET / HTTP/1.1\r\n").is_err());
}

#[test]
fn ring_then_tcp_then_ring_keeps_every_byte_once_in_order() {
    let mut p = Pipe::new();
    let mut want = Vec::new();
    for (i, n) in [5usize, 100, 3].iter().enumerate() {
        let b = bytes(i as u8 * 10, *n);
        want.extend_from_slice(&b);
        p.send(&b);
    }
    // The receiver has read part of the ring before the switch.
    let (end, _, first) = p.ring.remove(0);
    p.delivered.extend_from_slice(&first);
    p.head = end;
    p.rx_seq = 1;
    p.leave(false);
    for n in [1usize, 300_000, 17] {
        let b = bytes(n as u8, n);
        want.extend_from_slice(&b);
        p.send(&b);
    }
    p.back();
    let b = bytes(7, 40);
    want.extend_from_slice(&b);
    p.send(&b);
    p.receive().unwrap();
    assert_eq!(p.delivered, want);
    assert_eq!(p.rx.mode(), RxMode::Ring);
}

#[test]
fn the_ring_is_drained_before_tcp_bytes_even_when_they_arrive_first() {
    let mut p = Pipe::new();
    p.send(b"ring");
    p.leave(false);
    p.send(b"tcp");
    // The receiver sees the END before it looked at its ring.
    let ev = p.reader.step(&p.wire, &mut p.rx, 0, 0).unwrap();
    assert_eq!(
        ev,
        Step::RendezvousArea(RxEvent::Switched {
            end: 32,
            fin: false
        })
    );
    p.wire.drain(..RECORD_HDR);
    assert_eq!(p.rx.ring_limit(0), 32);
    p.receive().unwrap();
    assert_eq!(p.delivered, b"ringtcp");
    assert_eq!(p.rx.mode(), RxMode::Tcp);
}

#[test]
fn switching_with_nothing_in_flight_and_flapping() {
    let mut p = Pipe::new();
    let mut want = Vec::new();
    for round in 0..40u8 {
        p.leave(false);
        p.back();
        let b = bytes(round, 1 + round as usize);
        want.extend_from_slice(&b);
        p.send(&b);
        if round % 3 == 0 {
            p.leave(false);
            let b = bytes(round ^ 0x55, 33);
            want.extend_from_slice(&b);
            p.send(&b);
            p.back();
        }
        if round % 5 == 0 {
            p.receive().unwrap();
        }
    }
    p.receive().unwrap();
    assert_eq!(p.delivered, want);
}

#[test]
fn an_end_after_fin_ends_the_stream() {
    let mut p = Pipe::new();
    p.send(b"last");
    p.leave(true);
    p.receive().unwrap();
    assert_eq!(p.delivered, b"last");
    assert!(p.rx.fin());
    assert_eq!(p.rx.mode(), RxMode::Tcp);
    // Nothing may follow a FIN.
    let mut rx = p.rx;
    let d = Record {
        kind: Kind::Data,
        flags: 0,
        len: 1,
        arg: 0,
    };
    assert!(rx.on_record(&d, p.head, 0).is_err());
}

/// A shutdown on TCP: SHUT after the DATA ends the stream there (EOF after every byte),
/// nothing may follow it, and a look at the unparsed records finds it, past DATA payloads
/// and from the middle of one, as it finds an END with FIN; the death of a sender (its
/// kernel's FIN with no SHUT) shows nothing.
#[test]
fn a_shut_on_tcp_ends_the_stream_and_is_seen_ahead() {
    let mut p = Pipe::new();
    p.send(b"ring");
    p.leave(false);
    p.send(b"tcp bytes");
    let before_shut = p.wire.clone();
    assert!(!shut_ahead(&Reader::default(), &before_shut), "a death");
    let shut = p.tx.shut().unwrap();
    assert_eq!(shut.arg, 9);
    assert!(p.tx.shut().is_none(), "once");
    assert!(p.tx.back_to_ring().is_none(), "no BACK after a SHUT");
    assert!(p.tx.data(1).is_none(), "no DATA after a SHUT");
    p.wire.extend_from_slice(&shut.encode());
    assert!(shut_ahead(&Reader::default(), &p.wire));
    // From inside the DATA payload (the END and DATA headers and 4 bytes parsed).
    let inside = Reader { left: 5 };
    assert!(shut_ahead(&inside, &p.wire[2 * RECORD_HDR + 4..]));
    assert!(!shut_ahead(
        &inside,
        &p.wire[2 * RECORD_HDR + 4..p.wire.len() - 1]
    ));
    p.receive().unwrap();
    assert_eq!(p.delivered, b"ringtcp bytes");
    assert!(p.rx.fin());
    let d = Record {
        kind: Kind::Data,
        flags: 0,
        len: 1,
        arg: 9,
    };
    assert!(p.rx.clone().on_record(&d, p.head, 0).is_err());
    // A SHUT that claims another byte count, or on the ring: refused.
    let mut rx = RxSwitch::new(4096);
    assert!(rx.on_record(&shut, 0, 0).is_err());
    let end = TxSwitch::default().leave_ring(0, false).unwrap();
    rx.on_record(&end, 0, 0).unwrap();
    assert!(rx.on_record(&Record { arg: 1, ..shut }, 0, 0).is_err());
    // An END with FIN is a half-close too.
    let fin_end = TxSwitch::default().leave_ring(0, true).unwrap().encode();
    assert!(shut_ahead(&Reader::default(), &fin_end));
}

#[test]
fn ends_that_would_duplicate_or_overrun_are_refused() {
    let end = |arg| Record {
        kind: Kind::End,
        flags: 0,
        len: 0,
        arg,
    };
    // Behind what we consumed: those bytes would be delivered twice.
    assert!(RxSwitch::new(4096).on_record(&end(32), 64, 0).is_err());
    // At our head but we are inside a frame there.
    assert!(RxSwitch::new(4096).on_record(&end(64), 64, 5).is_err());
    // More than a ring ahead, or not frame-aligned.
    assert!(RxSwitch::new(4096)
        .on_record(&end(64 + 4097), 64, 0)
        .is_err());
    assert!(RxSwitch::new(4096).on_record(&end(72), 64, 0).is_err());
    // DATA or BACK before any END, a second END, DATA out of sequence.
    let mut rx = RxSwitch::new(4096);
    let d = |arg| Record {
        kind: Kind::Data,
        flags: 0,
        len: 4,
        arg,
    };
    assert!(rx.on_record(&d(0), 0, 0).is_err());
    assert_eq!(
        rx.on_record(&end(0), 0, 0),
        Ok(RxEvent::Switched { end: 0, fin: false })
    );
    assert!(rx.on_record(&end(0), 0, 0).is_err());
    assert!(rx.on_record(&d(1), 0, 0).is_err());
    assert_eq!(rx.on_record(&d(0), 0, 0), Ok(RxEvent::Data { len: 4 }));
    let back = |arg| Record {
        kind: Kind::Back,
        flags: 0,
        len: 0,
        arg,
    };
    // A BACK that claims another byte count: a record was lost or doubled.
    assert!(rx.clone().on_record(&back(3), 0, 0).is_err());
    assert_eq!(rx.on_record(&back(4), 0, 0), Ok(RxEvent::Back));
}

#[test]
fn a_drain_past_the_end_is_an_error() {
    let mut rx = RxSwitch::new(4096);
    let end = Record {
        kind: Kind::End,
        flags: 0,
        len: 0,
        arg: 128,
    };
    rx.on_record(&end, 64, 0).unwrap();
    assert_eq!(rx.drained(96, 0), Ok(false));
    assert_eq!(rx.drained(128, 8), Ok(false));
    assert!(rx.drained(144, 0).is_err());
}

#[test]
fn epochs() {
    assert_eq!(next_epoch(5), (1 << 48) | 5);
    assert!(is_later_epoch(5, (1 << 48) | 5));
    assert!(is_later_epoch(5, (2 << 48) | 5));
    assert!(!is_later_epoch(5, 6));
    assert!(!is_later_epoch(5, 5));
    assert!(!is_later_epoch(5, (1 << 48) | 6));
}

#[test]
fn payload_split_across_reads() {
    let mut tx = TxSwitch::default();
    let mut rx = RxSwitch::new(4096);
    let mut wire = tx.leave_ring(0, false).unwrap().encode().to_vec();
    wire.extend_from_slice(&tx.data(10).unwrap().encode());
    wire.extend_from_slice(b"0123456789");
    let mut reader = Reader::default();
    let mut got = Vec::new();
    let mut at = 0;
    // Feed one byte at a time: headers wait for 16 bytes, payload comes out byte by byte.
    for upto in 1..=wire.len() {
        loop {
            match reader.step(&wire[at..upto], &mut rx, 0, 0).unwrap() {
                Step::NeedMore => break,
                Step::Payload(n) => {
                    got.extend_from_slice(&wire[at..at + n]);
                    at += n;
                }
                Step::RendezvousArea(_) => at += RECORD_HDR,
            }
        }
    }
    assert_eq!(got, b"0123456789");
    assert!(reader.at_boundary());
}

/// A connection upgraded late: both ends start as if the sender had left the ring at counter 0
/// and sent its plain bytes in one DATA record. The receiver, which had read some of them,
/// reads the rest as payload, then the records, then the ring after the BACK: every byte once,
/// in order; a record whose offset does not follow the plain count is refused.
#[test]
fn a_late_upgrade_continues_the_plain_prefix() {
    let plain = bytes(1, 1000);
    let read = 300u64;
    let mut p = Pipe::new();
    p.tx = TxSwitch::taken_over(Some(plain.len() as u64), 0, false);
    p.rx = RxSwitch::late(1 << 16, plain.len() as u64);
    p.reader = Reader::pending(plain.len() as u64 - read);
    // What the application has not read yet is still on the socket, unframed.
    p.wire.extend_from_slice(&plain[read as usize..]);
    p.delivered.extend_from_slice(&plain[..read as usize]);
    let mut want = plain.clone();
    let b = bytes(50, 70_000);
    want.extend_from_slice(&b);
    p.send(&b);
    p.back();
    let b = bytes(9, 33);
    want.extend_from_slice(&b);
    p.send(&b);
    p.receive().unwrap();
    assert_eq!(p.delivered, want);
    assert_eq!(p.rx.mode(), RxMode::Ring);

    // A sender that claims another plain count is caught at its first record.
    let mut rx = RxSwitch::late(1 << 16, 1000);
    let mut reader = Reader::pending(0);
    let mut tx = TxSwitch::taken_over(Some(999), 0, false);
    let r = tx.data(5).unwrap().encode();
    assert!(reader.step(&r, &mut rx, 0, 0).is_err());
}
