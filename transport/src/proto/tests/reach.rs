//! The reach of a sender (`MIN_REACH`): frames placed inside the ring's first bytes behind a pad
//! to the ring's end, what the receiver accepts of such pads, and the credit policy that keeps
//! a small-message stream inside one page, each driven with plain values.

use super::*;
use super::{place_reaching, xorshift, Receiver};

/// A ring of a block that starts on a page (the device's, the bridge's).
fn dev() -> Ring {
    Ring::new(1 << 20).unwrap()
}

#[test]
fn place_within_keeps_frames_and_marks_inside_the_reach() {
    let r = Ring::new(16384).unwrap();
    let reach = MIN_REACH;
    // Fits where the producer stands.
    let p = r.place_within(0, 0, 100, reach).unwrap().unwrap();
    assert_eq!((p.pad, p.pos, p.len, p.new_tail), (None, 0, 100, 16 + 112));
    // At the reach's end the frame and the slot after it do not fit: a pad to the ring's end,
    // the frame at 0.
    let tail = 16384 * 3 + MIN_REACH - 128;
    let p = r.place_within(tail, tail, 100, reach).unwrap().unwrap();
    assert_eq!(p.pad, Some((MIN_REACH - 128, 16384 - MIN_REACH + 128)));
    assert_eq!((p.pos, p.len), (0, 100));
    assert_eq!(p.new_tail, 16384 * 4 + 128);
    // The frame ends exactly where the slot after it is the reach's last header.
    let p = r
        .place_within(MIN_REACH - 144, MIN_REACH - 144, 112, reach)
        .unwrap()
        .unwrap();
    assert_eq!((p.pad, p.pos), (None, MIN_REACH - 144));
    assert_eq!(p.new_tail + FRAME_HDR, MIN_REACH);
    // The smallest reach is the ring's part of the block's first page.
    assert_eq!(RING_START + MIN_REACH, BLOCK_OVERHEAD);
    // The pad needs credits for the rest of the ring too: a receiver that has not returned
    // this lap's bytes leaves none.
    let lap = MIN_REACH - 128;
    assert_eq!(r.place_within(tail, tail - lap, 100, reach).unwrap(), None);
    assert!(r.place(tail, tail - lap, 100).unwrap().is_some());
    // A frame larger than the reach never fits in it.
    assert_eq!(r.place_within(0, 0, 4090, reach).unwrap(), None);
    // The whole ring as the reach is `place`.
    assert_eq!(
        r.place_within(tail, tail, 100, 16384).unwrap(),
        r.place(tail, tail, 100).unwrap()
    );
    // Impossible counters are errors, as in `place`.
    assert!(r.place_within(100, 200, 10, reach).is_err());
    assert!(r
        .place_within(u64::MAX - 100, u64::MAX - 100, 10, reach)
        .is_err());
    // What it writes, the receiver takes: the pad, then the frame at 0.
    let w = r
        .place_within(tail, tail, 100, reach)
        .unwrap()
        .unwrap()
        .write(9, 100);
    let (at, pad) = w.pad.unwrap();
    assert_eq!(
        r.check_frame(tail, w.tail, &pad, 9),
        Ok(Frame::Pad { size: 16384 - at })
    );
    assert_eq!(
        r.check_frame(16384 * 4, w.tail, &w.header, 9),
        Ok(Frame::Data {
            len: 100,
            size: 16 + 112
        })
    );
}

#[test]
fn a_reach_grows_to_whole_pages_of_the_block() {
    // The header's page, then two pages, four, ... (3,520, 7,616, 15,808 bytes): each reach ends on a
    // page boundary of the block, twice as many pages as the one before.
    let mut reach = 0;
    for pages in [1u64, 2, 4, 8, 16] {
        reach = if pages == 1 {
            MIN_REACH
        } else {
            dev().grow_reach(reach)
        };
        assert_eq!(RING_START + reach, pages * BLOCK_OVERHEAD, "reach {reach}");
    }
    assert_eq!(dev().grow_reach(0), dev().grow_reach(MIN_REACH));
    // A ring caps it: 16 KiB of ring after four pages of reach.
    let r = Ring::new(16384).unwrap();
    assert_eq!(
        r.reach(dev().grow_reach(dev().grow_reach(MIN_REACH))),
        16384 - RING_START
    );
    assert_eq!(r.reach(dev().grow_reach(16384 - RING_START)), 16384);
    assert_eq!(r.reach(dev().grow_reach(u64::MAX)), 16384);
}

#[test]
fn credit_ring_follows_the_senders_reach() {
    // Every sender starts at the smallest reach: credits gather for half of it.
    assert_eq!(Ring::new(1 << 20).unwrap().credit_ring(0), 2 * MIN_REACH);
    assert_eq!(
        Ring::new(1 << 20).unwrap().credit_ring(MIN_REACH - 64),
        2 * MIN_REACH
    );
    assert_eq!(
        Ring::new(1 << 20).unwrap().credit_ring(MIN_REACH),
        2 * MIN_REACH
    );
    // Past it: the next reach a sender grows to.
    assert_eq!(
        Ring::new(1 << 20).unwrap().credit_ring(MIN_REACH + 16),
        2 * dev().grow_reach(MIN_REACH)
    );
    let (two, four) = (8192 - RING_START, 16384 - RING_START);
    assert_eq!(Ring::new(1 << 20).unwrap().credit_ring(5000), 2 * two);
    assert_eq!(Ring::new(1 << 20).unwrap().credit_ring(two), 2 * two);
    assert_eq!(Ring::new(1 << 20).unwrap().credit_ring(two + 16), 2 * four);
    // Frames and pads up to the ring's end: the whole ring.
    assert_eq!(Ring::new(16384).unwrap().credit_ring(16384 - 16), 16384);
    assert_eq!(Ring::new(16384).unwrap().credit_ring(9000), 16384);
    assert_eq!(Ring::new(4096).unwrap().credit_ring(0), 4096);
}

/// Request/response traffic as a connection runs it with a reach: the sender places within its
/// reach against the credits it saw (then the receiver's counter), and grows the reach when
/// that fails; the receiver returns credits by `credit_return` over `credit_ring`. Small
/// messages that the receiver keeps up with never leave the block's first page, the header's
/// (so the pages of the ring past it are never touched); a receiver that lags
/// (a burst of messages before it reads) makes the reach grow; the stream is exact throughout.
#[test]
fn a_reach_keeps_small_messages_in_one_page_and_grows_with_a_lagging_receiver() {
    let cap = 16384u64;
    let r = Ring::new(cap).unwrap();
    let mut mem = vec![0u8; cap as usize];
    // The block's pages: the header's (with the ring's first bytes), then the ring's.
    let mut touched = [false; 5];
    let page = |pos: u64| ((RING_START + pos) / BLOCK_OVERHEAD) as usize;
    let (mut tail, mut seq, mut credited, mut reach) = (0u64, 0u64, 0u64, 0u64);
    let mut rx = Receiver::default();
    let mut next = xorshift(0x5eed_0f0a_11aa_u64);
    let mut sent = 0u64;
    for round in 0..4000u64 {
        // A burst of 1 message (or, in the second half, of 40 now and then) before the
        // receiver reads.
        let burst = if round >= 2000 && round % 50 == 0 {
            40
        } else {
            1
        };
        if round == 2000 {
            assert_eq!(touched, [true, false, false, false, false], "reach {reach}");
        }
        for _ in 0..burst {
            let want = 40 + next() % 200;
            let Some(p) = place_reaching(&r, tail, want, &mut credited, rx.returned, &mut reach)
            else {
                break;
            };
            let w = p.write(seq, p.len);
            if let Some((at, h)) = w.pad {
                mem[at as usize..at as usize + 16].copy_from_slice(&h.encode());
                touched[page(at)] = true;
            }
            let at = w.pos as usize;
            mem[at..at + 16].copy_from_slice(&w.header.encode());
            for i in 0..p.len {
                mem[at + 16 + i as usize] = ((sent + i) % 251) as u8;
            }
            for b in [at, at + 16 + p.len as usize - 1] {
                touched[page(b as u64)] = true;
            }
            // The mark in the next slot.
            touched[page(r.pos(w.tail))] = true;
            (tail, seq) = (w.tail, w.next_seq);
            sent += p.len;
        }
        rx.read_all(&r, &mem, tail);
    }
    assert!(rx
        .got
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i as u64 % 251) as u8));
    assert_eq!(rx.got.len() as u64, sent);
    assert!(
        r.reach(reach) > MIN_REACH,
        "a lagging receiver grows the reach"
    );
}
