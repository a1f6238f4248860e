//! The protocol's deterministic tests: ring geometry, frame placement, writing and validation,
//! the credit policy, and the rendezvous records, each driven with plain values.

use super::*;

mod hole;
mod reach;

/// A small seeded generator (xorshift64) for the models below.
fn xorshift(mut rng: u64) -> impl FnMut() -> u64 {
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

#[test]
fn ring_rejects_bad_capacity() {
    assert!(Ring::new(4095).is_none());
    assert!(Ring::new(3 << 12).is_none());
    assert!(Ring::new(MAX_RING * 2).is_none());
    assert_eq!(Ring::new(1 << 20).unwrap().cap(), 1 << 20);
}

#[test]
fn place_fills_then_waits_for_credits() {
    let r = Ring::new(4096).unwrap();
    let mut tail = 0;
    let mut frames = 0;
    let mut lens = Vec::new();
    while let Some(p) = r.place(tail, 0, 100).unwrap() {
        assert!(p.pos + FRAME_HDR + align_frame(p.len) <= r.cap());
        tail = p.new_tail;
        frames += 1;
        lens.push(p.len);
    }
    // One header slot stays free after the last frame: the sender marks it before it
    // publishes the frame (`SEQ_UNPUBLISHED`). So the 32nd frame holds 96 bytes, not 100.
    assert_eq!(frames, 4096 / (16 + 112));
    assert!(lens[..31].iter().all(|&l| l == 100));
    assert_eq!(lens[31], 96);
    assert_eq!(r.free(tail, 0).unwrap(), 4096 - tail);
    assert!(r.free(tail, 0).unwrap() >= FRAME_HDR);
    // Credits return: room again.
    assert!(r.place(tail, tail, 100).unwrap().is_some());
}

#[test]
fn every_placement_leaves_the_next_header_slot_inside_the_credits() {
    let r = Ring::new(4096).unwrap();
    for tail in (0..3 * 4096u64).step_by(16) {
        for used in [
            0u64,
            16,
            32,
            100 * 16,
            4096 - 48,
            4096 - 32,
            4096 - 16,
            4096,
        ] {
            let head = tail.saturating_sub(used);
            for want in [1u64, 16, 17, 64, 1000, 1008] {
                if let Some(p) = r.place(tail, head, want).unwrap() {
                    assert!(
                        p.new_tail + FRAME_HDR <= head + r.cap(),
                        "tail {tail} head {head} want {want}: {p:?}"
                    );
                }
                if let Some((_, new_tail)) = r.place_whole(tail, head, want) {
                    assert!(new_tail + FRAME_HDR <= head + r.cap());
                }
            }
        }
    }
}

#[test]
fn a_header_publishes_its_frame_only_with_the_expected_number_and_not_the_first() {
    assert!(published(5, 5));
    assert!(!published(4, 5));
    assert!(!published(SEQ_UNPUBLISHED, 5));
    // The first frame of a stream has no mark before it: zeros or another connection's frame
    // 0 in the slot would read as published.
    assert!(!published(0, 0));
    // Nor the first of a later epoch at count 0 (a sender that failed over before its first
    // frame and came back).
    let e1 = crate::switchover::next_epoch(0);
    assert!(!published(e1, e1));
    // A frame of a later epoch is not the one expected (`recv` finds it by the producer
    // counter and switches).
    assert!(!published(crate::switchover::next_epoch(7), 7));
}

#[test]
fn a_published_frame_is_checked_as_a_counted_one() {
    let r = Ring::new(4096).unwrap();
    let h = |len, flags, seq| FrameHeader { len, flags, seq };
    assert_eq!(
        r.check_published(128, &h(64, 0, 3), 3),
        Ok(Frame::Data { len: 64, size: 80 })
    );
    // Past the ring's end, too long, a stray pad, unaligned: as `check_frame`.
    assert!(r.check_published(4096 - 32, &h(64, 0, 3), 3).is_err());
    assert!(r.check_published(0, &h(4000, 0, 3), 3).is_err());
    assert!(r.check_published(128, &h(0, FRAME_PAD, 3), 3).is_err());
    assert!(r.check_published(8, &h(8, 0, 3), 3).is_err());
    assert_eq!(
        r.check_published(8192 - 16, &h(0, FRAME_PAD, 3), 3),
        Ok(Frame::Pad { size: 16 })
    );
}

/// Where `place_whole_within` answers, it answers as `place_within` does, for every reach (the
/// whole ring's is `place_whole` against `place`).
#[test]
fn place_whole_agrees_with_place() {
    let r = Ring::new(16384).unwrap();
    let mut answered = 0;
    for reach in [
        0,
        MIN_REACH,
        4096,
        Ring::new(1 << 20).unwrap().grow_reach(MIN_REACH),
        8192,
        16384,
    ] {
        for tail in (0..3 * 16384u64).step_by(48).chain([u64::MAX - 100, !15]) {
            for used in [0u64, 16, 100, 1000, 4000, 16384, 16385, 20000] {
                let head = tail.wrapping_sub(used);
                for want in [0u64, 1, 15, 16, 17, 64, 1000, 3000, 4000, 4081, 5000] {
                    let Some((pos, new_tail)) = r.place_whole_within(tail, head, want, reach)
                    else {
                        continue;
                    };
                    answered += 1;
                    let p = r.place_within(tail, head, want, reach).unwrap().unwrap();
                    assert_eq!(
                        (p.pad, p.pos, p.len, p.new_tail),
                        (None, pos, want, new_tail),
                        "reach {reach} tail {tail} head {head} want {want}"
                    );
                    if reach == 16384 {
                        assert_eq!(r.place_whole(tail, head, want), Some((pos, new_tail)));
                    }
                }
            }
        }
    }
    assert!(answered > 4000, "{answered}");
}

#[test]
fn place_pads_at_the_end() {
    let r = Ring::new(4096).unwrap();
    // Producer at 4096-32: a frame of 100 does not fit in 32 bytes... it fits 16 payload.
    let p = r.place(4096 - 32, 4096 - 32, 100).unwrap().unwrap();
    assert_eq!((p.pad, p.pos, p.len), (None, 4096 - 32, 16));
    // At 4096-16 only a header fits: pad, then place at 0.
    let p = r.place(4096 - 16, 4096 - 16, 100).unwrap().unwrap();
    assert_eq!(p.pad, Some((4096 - 16, 16)));
    assert_eq!(p.pos, 0);
    assert_eq!(p.new_tail, 4096 + 16 + 112);
    // Pad needed but no credits for it.
    assert_eq!(r.place(8192 - 16, 4096, 100).unwrap(), None);
}

#[test]
fn frames_round_trip_and_validate() {
    let r = Ring::new(8192).unwrap();
    let h = FrameHeader {
        len: 100,
        flags: 0,
        seq: 7,
    };
    assert_eq!(FrameHeader::decode(&h.encode()), h);
    assert_eq!(
        r.check_frame(0, 128, &h, 7).unwrap(),
        Frame::Data {
            len: 100,
            size: 128
        }
    );
    assert!(matches!(
        r.check_frame(0, 128, &h, 8),
        Err(ProtoError::BadSequence { .. })
    ));
    assert!(
        matches!(
            r.check_frame(0, 100, &h, 7),
            Err(ProtoError::BadFrame { .. })
        ),
        "frame beyond tail"
    );
    let huge = FrameHeader { len: u32::MAX, ..h };
    assert!(r.check_frame(0, 8192, &huge, 7).is_err());
    // The only pad a sender writes: the last 16 bytes, too few for a frame.
    let pad = FrameHeader {
        len: 0,
        flags: FRAME_PAD,
        seq: 7,
    };
    assert_eq!(
        r.check_frame(8192 - 16, 8192 + 64, &pad, 7).unwrap(),
        Frame::Pad { size: 16 }
    );
    assert!(
        r.check_frame(8192 - 32, 8192 + 64, &pad, 7).is_err(),
        "a pad must reach the end"
    );
    // A pad from past a sender's reach to the ring's end (`place_within`).
    let long_pad = FrameHeader {
        len: 8192 - 64 - 16,
        ..pad
    };
    assert_eq!(
        r.check_frame(64, 8192 + 64, &long_pad, 7),
        Ok(Frame::Pad { size: 8192 - 64 })
    );
    // ... but not beyond the published bytes, nor short of the end.
    assert!(r.check_frame(64, 4096, &long_pad, 7).is_err());
    assert!(r.check_frame(80, 8192 + 80, &long_pad, 7).is_err());
    // A whole lap of pads (a pad from position 0) is a peer stalling us.
    let lap = FrameHeader {
        len: 8192 - 16,
        ..pad
    };
    assert!(r.check_frame(0, 8192, &lap, 7).is_err());
    assert!(r.check_frame(8, 200, &h, 7).is_err(), "misaligned head");
    assert!(matches!(
        r.check_tail(10, 20),
        Err(ProtoError::BadTail { .. })
    ));
    assert!(matches!(
        r.check_tail(20000, 0),
        Err(ProtoError::BadTail { .. })
    ));
}

#[test]
fn a_producer_counter_about_to_overflow_is_refused() {
    // Such a counter can only come from memory a peer wrote (an exec'd image starts from
    // the block's copy): placing after it would wrap the counter.
    let r = Ring::new(4096).unwrap();
    let tail = u64::MAX - 15;
    assert!(matches!(
        r.place(tail, tail - 100, 10),
        Err(ProtoError::BadCredit { .. })
    ));
}

#[test]
fn credits_are_validated() {
    let r = Ring::new(4096).unwrap();
    assert_eq!(r.free(100, 50).unwrap(), 4096 - 50);
    assert!(matches!(
        r.free(100, 200),
        Err(ProtoError::BadCredit { .. })
    ));
    assert!(matches!(
        r.free(10_000, 0),
        Err(ProtoError::BadCredit { .. })
    ));
}

/// A producer and consumer driven by the pure functions alone move a byte stream intact
/// through a small ring, across many wraps, with random write and read sizes.
#[test]
fn credits_return_when_a_quarter_of_the_ring_has_gathered() {
    use CreditReturn::{IfSenderWaits, Nothing, Now};
    let cap = 4096;
    let q = cap / 4;
    for (head, returned, force, want) in [
        (0, 0, false, Nothing),
        // Nothing new, even before a sleep.
        (5000, 5000, true, Nothing),
        (16, 0, false, IfSenderWaits),
        (q - 16, 0, false, IfSenderWaits),
        (q - 16, 0, true, Now),
        (q, 0, false, Now),
        (3 * cap, 0, false, Now),
        (10 * cap + q - 16, 10 * cap, false, IfSenderWaits),
        (10 * cap + q, 10 * cap, false, Now),
        (u64::MAX - 15, u64::MAX - 15 - q, false, Now),
    ] {
        assert_eq!(
            credit_return(cap, head, returned, force),
            want,
            "head {head} returned {returned} force {force}"
        );
    }
    // The batch is a share of the ring, whatever its size.
    assert_eq!(credit_return(1 << 20, 255 << 10, 0, false), IfSenderWaits);
    assert_eq!(credit_return(1 << 20, 256 << 10, 0, false), Now);
}

#[test]
fn frame_writes_number_data_frames_and_pads_carry_the_next_number() {
    let r = Ring::new(4096).unwrap();
    // A frame without a pad.
    let p = r.place(0, 0, 100).unwrap().unwrap();
    let w = p.write(0, 100);
    let data = |len, seq| FrameHeader { len, flags: 0, seq };
    assert_eq!((w.pad, w.pos, w.header), (None, 0, data(100, 0)));
    assert_eq!((w.tail, w.next_seq), (p.new_tail, 1));
    // At 4096-16 only a header fits: a pad frame there, then the frame at 0; the pad carries
    // the frame's number without using it.
    let p = r.place(4096 - 16, 4096 - 16, 100).unwrap().unwrap();
    let w = p.write(7, 100);
    let pad = FrameHeader {
        len: 0,
        flags: FRAME_PAD,
        seq: 7,
    };
    assert_eq!(w.pad, Some((4096 - 16, pad)));
    assert_eq!((w.pos, w.header), (0, data(100, 7)));
    assert_eq!((w.tail, w.next_seq), (p.new_tail, 8));
    // The receiver takes them as written: the pad, then data frame 7.
    assert_eq!(
        r.check_frame(4096 - 16, w.tail, &pad, 7),
        Ok(Frame::Pad { size: 16 })
    );
    assert_eq!(
        r.check_frame(4096, w.tail, &w.header, 7),
        Ok(Frame::Data {
            len: 100,
            size: 16 + 112
        })
    );
    assert!(r.check_frame(4096, w.tail, &w.header, 8).is_err());
}

#[test]
fn a_short_write_makes_a_shorter_frame() {
    let r = Ring::new(4096).unwrap();
    let p = r.place(0, 0, 1000).unwrap().unwrap();
    assert_eq!(p.len, 1000);
    // A read that came up short (sendfile): 300 of the 1000 placed bytes.
    let w = p.write(0, 300);
    assert_eq!(w.header.len, 300);
    assert_eq!(w.tail, 16 + 304);
    assert_eq!(
        r.check_frame(0, w.tail, &w.header, 0),
        Ok(Frame::Data {
            len: 300,
            size: 320
        })
    );
    // The next frame starts where this one ends.
    assert_eq!(r.place(w.tail, 0, 10).unwrap().unwrap().pos, 320);
    // No frame claims bytes that were not placed, and none is empty.
    assert_eq!(p.write(0, 5000), p.write(0, 1000));
    assert_eq!(p.write(0, 1000).tail, p.new_tail);
    assert_eq!(p.write(0, 0).header.len, 1);
}

/// The sending end of the reach models (`reach.rs`, `hole.rs`), placing as
/// `Connection::place_reaching` does: within its reach against the credits it saw, then against
/// what the receiver `returned`; where that fails, grow the reach and place in the whole ring.
/// `None`: no room at all (wait for the receiver).
fn place_reaching(
    r: &Ring,
    tail: u64,
    want: u64,
    credited: &mut u64,
    returned: u64,
    reach: &mut u64,
) -> Option<Placement> {
    let mut p = r.place_within(tail, *credited, want, *reach).unwrap();
    if p.is_none() {
        *credited = returned;
        p = r.place_within(tail, *credited, want, *reach).unwrap();
    }
    p.or_else(|| {
        *reach = r.grow_reach(r.reach(*reach));
        r.place(tail, *credited, want).unwrap()
    })
}

/// The receiving end of the reach models: its position, the credits it returned, how far the
/// sender's frames reached in this lap (`Ring::credit_ring`), and the payload it took.
#[derive(Default)]
struct Receiver {
    head: u64,
    seq: u64,
    returned: u64,
    seen: u64,
    got: Vec<u8>,
}

impl Receiver {
    /// Read everything published up to `tail`, returning credits as `credit_return` says; a pad
    /// that ends the lap (reaches the ring's end) ends the sender's reach there.
    fn read_all(&mut self, r: &Ring, mem: &[u8], tail: u64) {
        while self.head < tail {
            let at = r.pos(self.head);
            let hb: [u8; 16] = mem[at as usize..at as usize + 16].try_into().unwrap();
            let h = FrameHeader::decode(&hb);
            if h.flags == FRAME_PAD && at + 16 + u64::from(h.len) >= r.cap() {
                self.seen = at;
            }
            take_frame(r, mem, tail, &mut self.head, &mut self.seq, &mut self.got);
            self.seen = self.seen.max(r.pos(self.head));
            if credit_return(r.credit_ring(self.seen), self.head, self.returned, false)
                == CreditReturn::Now
            {
                self.returned = self.head;
            }
        }
    }
}

/// The receiving end of the ring models below: take the frame at `head` out of `mem` (a pad
/// frame, or data frame number `rx_seq`, whose payload goes to `got`), validated as `recv` does.
fn take_frame(
    r: &Ring,
    mem: &[u8],
    tail: u64,
    head: &mut u64,
    rx_seq: &mut u64,
    got: &mut Vec<u8>,
) {
    let at = r.pos(*head) as usize;
    let hb: [u8; 16] = mem[at..at + 16].try_into().unwrap();
    match r
        .check_frame(*head, tail, &FrameHeader::decode(&hb), *rx_seq)
        .unwrap()
    {
        Frame::Pad { size } => *head += size,
        Frame::Data { len, size } => {
            got.extend_from_slice(&mem[at + 16..at + 16 + len as usize]);
            *head += size;
            *rx_seq += 1;
        }
    }
}

/// A sender and a receiver over one ring as a connection runs them: frames placed against the
/// credits the receiver last returned and written with `Placement::write` (some short, as
/// sendfile's reads can be), credits returned as `credit_return` says. The stream arrives
/// whole and in order, a sender that waits for room always gets it, and credits the sender did
/// not ask for go back at most once per quarter of the ring consumed.
#[test]
fn the_credit_policy_keeps_a_stream_flowing_with_few_returns() {
    let cap = 4096u64;
    let r = Ring::new(cap).unwrap();
    let mut mem = vec![0u8; cap as usize];
    let (mut tail, mut seq, mut credited, mut waiting) = (0u64, 0u64, 0u64, false);
    let (mut head, mut rx_seq, mut returned) = (0u64, 0u64, 0u64);
    let (mut unasked, mut asked) = (0u64, 0u64);
    let mut next = xorshift(0x0bad_cafe_1234_5678u64);
    let total = 300_000u64;
    let (mut sent, mut got) = (0u64, Vec::new());
    let mut steps = 0u64;
    while (got.len() as u64) < total {
        steps += 1;
        assert!(
            steps < 10 * total,
            "stalled: tail {tail} head {head} returned {returned} waiting {waiting}"
        );
        // The sender: a frame if the credits it saw leave room, else it waits for credits.
        if sent < total && !waiting {
            let want = (1 + next() % 900).min(total - sent);
            match r.place(tail, credited, want).unwrap() {
                Some(p) => {
                    let n = if next().is_multiple_of(4) {
                        1 + next() % p.len
                    } else {
                        p.len
                    };
                    let w = p.write(seq, n);
                    if let Some((at, h)) = w.pad {
                        mem[at as usize..at as usize + 16].copy_from_slice(&h.encode());
                    }
                    let at = w.pos as usize;
                    mem[at..at + 16].copy_from_slice(&w.header.encode());
                    for i in 0..n {
                        mem[at + 16 + i as usize] = ((sent + i) % 251) as u8;
                    }
                    (tail, seq) = (w.tail, w.next_seq);
                    sent += n;
                }
                None => waiting = true,
            }
        }
        // The receiver, a little slower than the sender (so the sender fills the ring and
        // waits): one frame, if one was published, then its credit decision.
        if head < tail && !next().is_multiple_of(3) {
            take_frame(&r, &mem, tail, &mut head, &mut rx_seq, &mut got);
        }
        match credit_return(cap, head, returned, false) {
            CreditReturn::Nothing => {}
            CreditReturn::IfSenderWaits if !waiting => {}
            CreditReturn::IfSenderWaits => {
                (returned, credited, waiting) = (head, head, false);
                asked += 1;
            }
            CreditReturn::Now => {
                (returned, credited, waiting) = (head, head, false);
                unasked += 1;
            }
        }
    }
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i as u64 % 251) as u8));
    assert!(asked > 0 && unasked > 0, "asked {asked} unasked {unasked}");
    assert!(
        unasked <= head / (cap / CREDIT_BATCH),
        "{unasked} returns nobody waited for over {head} bytes"
    );
}

#[test]
fn stream_through_ring_model() {
    let r = Ring::new(4096).unwrap();
    let mut mem = vec![0u8; 4096];
    let (mut tail, mut head, mut tx_seq, mut rx_seq) = (0u64, 0u64, 0u64, 0u64);
    let mut next = xorshift(0x1234_5678_9abc_def0u64);
    let (mut sent, mut got) = (0u64, Vec::new());
    let total = 200_000u64;
    while (got.len() as u64) < total {
        // produce
        let want = 1 + next() % 700;
        if sent < total {
            if let Some(p) = r.place(tail, head, want.min(total - sent)).unwrap() {
                if let Some((pp, n)) = p.pad {
                    let h = FrameHeader {
                        len: (n - FRAME_HDR) as u32,
                        flags: FRAME_PAD,
                        seq: tx_seq,
                    };
                    mem[pp as usize..pp as usize + 16].copy_from_slice(&h.encode());
                }
                let h = FrameHeader {
                    len: p.len as u32,
                    flags: 0,
                    seq: tx_seq,
                };
                tx_seq += 1;
                let at = p.pos as usize;
                mem[at..at + 16].copy_from_slice(&h.encode());
                for i in 0..p.len {
                    mem[at + 16 + i as usize] = ((sent + i) % 251) as u8;
                }
                sent += p.len;
                tail = p.new_tail;
            }
        }
        // consume one frame
        if head < tail {
            take_frame(&r, &mem, tail, &mut head, &mut rx_seq, &mut got);
        }
    }
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i as u64 % 251) as u8));
    assert!(tail > 20 * 4096, "the model wrapped many times");
}

#[test]
fn records_round_trip_and_validate() {
    let ring = RingLoc {
        mw: 1,
        offset: 8192,
        len: 4096 + (1 << 20),
        db_bit: 9,
    };
    let o = Offer {
        version: PROTOCOL_VERSION,
        cookie: 0xfeed,
        client: Endpoint::from_std("127.0.0.1:40000".parse().unwrap()),
        server: Endpoint::from_std("[::1]:5001".parse().unwrap()),
        ring,
        late: None,
    };
    assert_eq!(Offer::decode(&o.encode()).unwrap(), o);
    // A late offer carries the client's plain byte count, and an older offer's zero bytes
    // there are no late offer.
    let late = Offer {
        late: Some(0x1234_5678_9abc),
        ..o
    };
    assert_eq!(Offer::decode(&late.encode()).unwrap(), late);
    assert_eq!(o.encode()[4..8], [0u8; 4]);
    assert!(o.matches(
        &Endpoint::from_std("127.0.0.1:40000".parse().unwrap()),
        &Endpoint::from_std("[::1]:5001".parse().unwrap())
    ));
    assert!(!o.matches(
        &Endpoint::from_std("127.0.0.2:40000".parse().unwrap()),
        &Endpoint::from_std("[::1]:5001".parse().unwrap())
    ));
    let mut bad = o.encode();
    bad[0] = 9;
    assert!(matches!(
        Offer::decode(&bad),
        Err(ProtoError::Version { peer_block: 9, .. })
    ));
    let a = Answer {
        version: PROTOCOL_VERSION,
        cookie: 0xfeed,
        decline: 0,
        ring,
        sent: 77,
    };
    assert_eq!(Answer::decode(&a.encode()).unwrap(), a);
    assert_eq!(ring.check(2, 64 << 20, 64).unwrap().cap(), 1 << 20);
    assert!(RingLoc { mw: 2, ..ring }.check(2, 64 << 20, 64).is_err());
    assert!(RingLoc {
        offset: 64 << 20,
        ..ring
    }
    .check(2, 64 << 20, 64)
    .is_err());
    assert!(RingLoc {
        len: 4096 + 1000,
        ..ring
    }
    .check(2, 64 << 20, 64)
    .is_err());
    assert!(RingLoc { db_bit: 64, ..ring }
        .check(2, 64 << 20, 64)
        .is_err());
    assert!(RingLoc {
        offset: u64::MAX - 10,
        ..ring
    }
    .check(2, 64 << 20, 64)
    .is_err());
    let l = ListenerEntry {
        addr: Endpoint::from_std("0.0.0.0:5201".parse().unwrap()),
        pid: 5,
        start_time: 6,
        socket: SocketId { inode: 7, netns: 8 },
    };
    assert_eq!(ListenerEntry::decode(&l.encode()).unwrap(), l);
    assert!(l.addr.is_unspecified());
    for c in 1..=Reason::ALL.len() as u32 {
        assert_eq!(Reason::from_code(c).unwrap().code(), c);
    }
    assert_eq!(Reason::from_code(Reason::ALL.len() as u32 + 1), None);
}

/// Random bytes as headers and records never panic, and never validate into something out
/// of bounds (the property the fuzz targets check at scale).
#[test]
fn random_input_is_rejected_or_in_bounds() {
    let r = Ring::new(1 << 16).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&x.to_le_bytes());
        b[8..].copy_from_slice(&x.rotate_left(17).to_le_bytes());
        let head = (x >> 7) & !15 & 0xFFFF_FFFF;
        let tail = head + (x >> 40) % (1 << 17);
        if let Ok(f) = r.check_frame(head, tail, &FrameHeader::decode(&b), x.rotate_left(3) & 1) {
            let size = match f {
                Frame::Data { size, .. } | Frame::Pad { size } => size,
            };
            assert!(r.pos(head) + size <= r.cap() && size <= tail - head);
        }
        let mut rec = [0u8; OFFER_SIZE - 8];
        for (i, c) in rec.chunks_mut(8).enumerate() {
            c.copy_from_slice(&x.rotate_left(i as u32).to_le_bytes());
        }
        if let Ok(o) = Offer::decode(&rec) {
            if let Ok(ring) = o.ring.check(2, 64 << 20, 64) {
                assert!(o.ring.offset + o.ring.len <= 64 << 20 && ring.cap() >= MIN_RING);
            }
        }
    }
}

#[test]
fn a_frame_is_read_in_steps_and_then_passed() {
    let r = Ring::new(4096).unwrap();
    // A frame at counter 8192 + 256 (third lap), 1000 payload bytes.
    let frame = Frame::Data {
        len: 1000,
        size: FRAME_HDR + align_frame(1000),
    };
    let mut at = ReadPos {
        head: 8192 + 256,
        off: 0,
        seq: 7,
    };
    let mut got = Vec::new();
    for room in [300, 0, 300, 4096] {
        let step = r.read_step(at, frame, room).unwrap();
        assert_eq!(step.from, 256 + FRAME_HDR + at.off);
        got.push(step.n);
        assert_eq!(step.passed_frame(&at), at.off + step.n == 1000);
        at = step.next;
    }
    assert_eq!(got, [300, 0, 300, 400]);
    assert_eq!(
        at,
        ReadPos {
            head: 8192 + 256 + FRAME_HDR + align_frame(1000),
            off: 0,
            seq: 8,
        }
    );
}

#[test]
fn an_offset_the_frame_does_not_have_is_an_error_not_a_stall() {
    let r = Ring::new(4096).unwrap();
    // The reader took 500 bytes of a 1000-byte frame; the peer then rewrote its length to 100
    // (issue 13: the old loop copied nothing and went round for ever).
    let at = ReadPos {
        head: 0,
        off: 500,
        seq: 0,
    };
    let shrunk = Frame::Data {
        len: 100,
        size: FRAME_HDR + align_frame(100),
    };
    assert_eq!(
        r.read_step(at, shrunk, 64),
        Err(ProtoError::BadOffset { off: 500, len: 100 })
    );
    let exact = Frame::Data {
        len: 500,
        size: FRAME_HDR + align_frame(500),
    };
    assert_eq!(
        r.read_step(at, exact, 64),
        Err(ProtoError::BadOffset { off: 500, len: 500 })
    );
    // A pad frame is skipped whole, from its start only.
    let pad = Frame::Pad { size: 32 };
    let at_pad = ReadPos {
        head: 4096 - 32,
        off: 0,
        seq: 3,
    };
    let step = r.read_step(at_pad, pad, 100).unwrap();
    assert_eq!((step.n, step.next.head, step.next.seq), (0, 4096, 3));
    assert!(step.passed_frame(&at_pad));
    assert_eq!(
        r.read_step(ReadPos { off: 1, ..at_pad }, pad, 100),
        Err(ProtoError::BadOffset { off: 1, len: 0 })
    );
}

#[test]
fn every_step_stays_inside_the_frame() {
    let r = Ring::new(1 << 16).unwrap();
    for len in [1u64, 15, 16, 17, 1000, 4096, r.max_payload()] {
        let size = FRAME_HDR + align_frame(len);
        let frame = Frame::Data { len, size };
        for head in [0u64, 16, (1 << 16) - size, (5 << 16) + 32] {
            if r.pos(head) + size > r.cap() {
                continue;
            }
            for room in [1u64, 7, 64, 1 << 20] {
                let mut at = ReadPos {
                    head,
                    off: 0,
                    seq: 1,
                };
                let mut total = 0;
                loop {
                    let step = r.read_step(at, frame, room).unwrap();
                    assert!(step.n >= 1, "room {room} left, yet no byte taken");
                    assert!(step.from + step.n <= r.pos(head) + size);
                    total += step.n;
                    if step.passed_frame(&at) {
                        assert_eq!(
                            step.next,
                            ReadPos {
                                head: head + size,
                                off: 0,
                                seq: 2
                            }
                        );
                        break;
                    }
                    at = step.next;
                }
                assert_eq!(total, len);
            }
        }
    }
}
