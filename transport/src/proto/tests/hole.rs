//! Rings laid out in a service segment (`Ring::laid_out`, docs/PROTOCOL.md §2, *The shared
//! page*): the first block's ring, twice the pair's ring size, whose positions from
//! `SECOND - RING_START` to the end of the second block's last ring page are the second block
//! (its hole), and the second block's ring, which starts `SECOND + RING_START` into the shared
//! page.

use super::*;
use super::{place_reaching, xorshift, Receiver};

/// Where the second block starts in the shared page (`fabric::service::SECOND_BLOCK`).
const SECOND: u64 = 0x800;
/// The first ring's hole starts here, and ends at `hole_end` of the pair's ring size.
const H0: u64 = SECOND - RING_START;
/// A position 256 bytes before the hole.
const P: u64 = H0 - 0x100;
/// The pair's ring size of the two tests below, and the first ring's hole's end and capacity.
const RING: u64 = 8192;
const H1: u64 = PAGE + RING - RING_START;
const CAP: u64 = 2 * RING;
/// The first ring's reach past the hole: one page.
const R2: u64 = H1 + PAGE;

fn hole_end(ring: u64) -> u64 {
    PAGE + ring - RING_START
}

/// The first block's ring of a segment with rings of `ring` bytes.
fn first(ring: u64) -> Ring {
    Ring::laid_out(2 * ring, RING_START, Some((H0, hole_end(ring)))).unwrap()
}

fn second(ring: u64) -> Ring {
    Ring::laid_out(ring, SECOND + RING_START, None).unwrap()
}

#[test]
fn a_layout_is_checked() {
    let r = first(1 << 20);
    let h1 = hole_end(1 << 20);
    assert_eq!(r.hole(), Some((H0, h1)));
    assert_eq!((r.cap(), r.min_reach(), r.block_phase()), (2 << 20, H0, 0));
    assert_eq!(r.max_payload(), Ring::new(1 << 20).unwrap().max_payload());
    // Past the hole, each reach ends on a page of the block: one page, two, four, ...
    assert_eq!(r.grow_reach(0), h1 + PAGE);
    assert_eq!(r.grow_reach(h1 + PAGE), h1 + 2 * PAGE);
    assert_eq!(r.grow_reach(h1 + 2 * PAGE), h1 + 4 * PAGE);
    assert_eq!(r.grow_reach(h1 + 2 * PAGE + 16), h1 + 6 * PAGE);
    let s = second(1 << 20);
    let lead = SECOND + RING_START;
    assert_eq!(
        (s.hole(), s.min_reach(), s.block_phase()),
        (None, PAGE - lead, SECOND)
    );
    // The rest of the shared page, then the block's own pages: one, three, ...
    assert_eq!(s.grow_reach(0), 2 * PAGE - lead);
    assert_eq!(s.grow_reach(2 * PAGE - lead), 4 * PAGE - lead);
    assert_eq!(s.credit_ring(0), 2 * (PAGE - lead));
    assert_eq!(s.credit_ring(PAGE - lead + 0x40), 2 * (2 * PAGE - lead));
    assert_eq!(r.credit_ring(0), 2 * H0);
    // Past the hole, the reach counts without it: as a ring that starts on a page.
    assert_eq!(r.credit_ring(h1 + 0x40), 2 * (PAGE - RING_START));
    assert_eq!(r.credit_ring(h1 + PAGE), 2 * (2 * PAGE - RING_START));
    // The smallest rings: 2 KiB outside the hole, frames of a quarter of it.
    let m = first(MIN_RING);
    assert_eq!((m.cap(), m.max_payload()), (2 * MIN_RING, 512 - FRAME_HDR));
    // A device block's ring is one without either.
    let d = Ring::new(1 << 20).unwrap();
    assert_eq!(
        (d.hole(), d.min_reach(), d.block_phase()),
        (None, MIN_REACH, 0)
    );
    for bad in [
        Ring::laid_out(1 << 20, RING_START + 8, None),
        Ring::laid_out(1 << 20, RING_START - 16, None),
        Ring::laid_out(1 << 20, PAGE, None),
        Ring::laid_out((1 << 20) + 1, RING_START, None),
        // The hole: starting past the first page, unaligned, too near the ring's start,
        // ending before the first page's end, not on a page, at or past the ring's end, or
        // leaving the ring too little outside it.
        Ring::laid_out(CAP, RING_START, Some((PAGE - RING_START, H1))),
        Ring::laid_out(CAP, RING_START, Some((H0 + 8, H1))),
        Ring::laid_out(CAP, RING_START, Some((16, H1))),
        Ring::laid_out(CAP, RING_START, Some((H0, H0 + 0x100))),
        Ring::laid_out(CAP, RING_START, Some((H0, H1 + 16))),
        Ring::laid_out(CAP, RING_START, Some((H0, CAP - RING_START + PAGE))),
        Ring::laid_out(8192, RING_START, Some((0x40, 2 * PAGE - RING_START))),
        Ring::laid_out(CAP + 1, RING_START, Some((H0, H1))),
    ] {
        assert_eq!(bad, None);
    }
    assert!(Ring::laid_out(8192, RING_START, Some((H0, 2 * PAGE - RING_START))).is_some());
}

#[test]
fn frames_go_around_the_hole() {
    let r = first(RING);
    // A frame that fits before the hole with its header slot goes there.
    let p = r.place_within(P, P, 200, H0).unwrap().unwrap();
    assert_eq!((p.pad, p.pos), (None, P));
    // One that does not: with the smallest reach, back to position 0 (a pad to the end,
    // which covers the hole; its payload is never written).
    let p = r.place_within(P, P, 0x100, H0).unwrap().unwrap();
    assert_eq!((p.pad, p.pos), (Some((P, CAP - P)), 0));
    // With a reach past the hole: just past it.
    let p = r.place_within(P, P, 0x100, R2).unwrap().unwrap();
    assert_eq!((p.pad, p.pos), (Some((P, H1 - P)), H1));
    assert_eq!(p.new_tail, H1 + 16 + 0x100);
    // A frame larger than the bytes before the hole, from past it: over the end and the hole.
    let w = R2 - 0x100;
    let p = r.place_within(w, w, 0x800, R2).unwrap().unwrap();
    assert_eq!((p.pad, p.pos), (Some((w, CAP - w + H1)), H1));
    // The whole-ring placement pads to the hole's end when not even a byte fits before it.
    let p = r.place(H0 - 16, H0 - 16, 100).unwrap().unwrap();
    assert_eq!((p.pad, p.pos), (Some((H0 - 16, H1 - H0 + 16)), H1));
    // And shortens a frame to what fits before the hole, with its slot.
    let p = r.place(P, P, 1000).unwrap().unwrap();
    assert_eq!((p.pad, p.pos, p.len), (None, P, H0 - P - 32));
    // The fast path answers only where no pad is needed.
    assert_eq!(r.place_whole_within(P, P, 200, R2), Some((P, P + 16 + 208)));
    assert_eq!(r.place_whole_within(P, P, 0xE0, R2), Some((P, P + 0xF0)));
    assert_eq!(r.place_whole_within(P, P, 0xF0, R2), None);
    assert_eq!(
        r.place_whole_within(H1, H1, 0x700, R2),
        Some((H1, H1 + 0x710))
    );
    // Our own counter in the hole is no counter we made.
    for at in [0x800, H1 - 16] {
        assert!(r.place(at, at, 10).is_err());
        assert!(r.place_within(at, at, 10, H0).is_err());
        assert_eq!(r.place_whole_within(at, at, 10, R2), None);
    }
}

#[test]
fn the_receiver_takes_only_the_pads_a_sender_writes_and_no_frame_in_the_hole() {
    let r = first(RING);
    let hdr = |len: u64, pad: bool| FrameHeader {
        len: len as u32,
        flags: if pad { FRAME_PAD } else { 0 },
        seq: 3,
    };
    let check = |pos: u64, h: FrameHeader| r.check_frame(pos, pos + CAP, &h, 3);
    // Pads: to the hole's end from before it (from position 0 too), to the ring's end, over
    // the ring's end and the hole from past it.
    assert_eq!(
        check(P, hdr(H1 - P - 16, true)),
        Ok(Frame::Pad { size: H1 - P })
    );
    assert_eq!(check(0, hdr(H1 - 16, true)), Ok(Frame::Pad { size: H1 }));
    assert_eq!(
        check(P, hdr(CAP - P - 16, true)),
        Ok(Frame::Pad { size: CAP - P })
    );
    assert_eq!(
        check(H1 + 0x200, hdr(CAP - H1 - 0x200 + H1 - 16, true)),
        Ok(Frame::Pad { size: CAP - 0x200 })
    );
    // Not: a pad into the hole, a pad past the hole's end from before it, a wrapping pad from
    // before the hole, a pad over the whole ring.
    for (pos, len) in [
        (P, 0x200 - 16),
        (P, H1 + 0x100 - P - 16),
        (P, CAP - P + H1 - 16),
        (0, CAP - 16),
    ] {
        assert!(
            check(pos, hdr(len, true)).is_err(),
            "pad at {pos:#x} of {len:#x}"
        );
    }
    // Data: before the hole only with its header slot before it too; never in it.
    assert!(check(P, hdr(H0 - P - 32, false)).is_ok());
    assert!(check(P, hdr(H0 - P - 16, false)).is_err());
    for pos in [H0, 0x800, PAGE - RING_START, H1 - 16] {
        assert!(check(pos, hdr(16, false)).is_err(), "a frame at {pos:#x}");
        assert!(
            check(pos, hdr(H1 - pos - 16, true)).is_err(),
            "a pad at {pos:#x}"
        );
    }
    assert!(check(H1, hdr(1000, false)).is_ok());
}

/// A sender and a receiver over each ring of a segment as a connection runs them (reach,
/// growth, credits), with small messages, a lagging receiver now and then, and now and then a
/// message larger than the bytes before the hole. No byte is ever written in the hole, small
/// messages stay in the shared page, and the stream arrives exact.
#[test]
fn streams_over_the_shared_page_never_touch_the_hole() {
    for ring in [4096, 16384, 1 << 20] {
        for (r, name) in [(first(ring), "first"), (second(ring), "second")] {
            run(r, &format!("{name}, rings of {ring} bytes"));
        }
    }
}

fn run(r: Ring, name: &str) {
    let cap = r.cap();
    let lead = RING_START + r.block_phase();
    let mut mem = vec![0u8; cap as usize];
    let mut touched = vec![false; (lead + cap).div_ceil(PAGE) as usize];
    let page = |pos: u64| ((lead + pos) / PAGE) as usize;
    let in_hole = |pos: u64| r.hole().is_some_and(|(h0, h1)| (h0..h1).contains(&pos));
    let (mut tail, mut seq, mut credited, mut reach) = (0u64, 0u64, 0u64, 0u64);
    let mut rx = Receiver::default();
    let mut next = xorshift(0x0e_5ba9_e000_u64);
    let mut sent = 0u64;
    for round in 0..6000u64 {
        let burst = if round >= 2000 && round % 50 == 0 {
            30
        } else {
            1
        };
        if round == 2000 {
            assert!(
                touched[0] && touched[1..].iter().all(|t| !t),
                "{name}: small messages left the first page (reach {reach})"
            );
        }
        for _ in 0..burst {
            let want = if round >= 3000 && round % 7 == 0 {
                900 + next() % 2500
            } else {
                40 + next() % 200
            };
            let Some(p) = place_reaching(&r, tail, want, &mut credited, rx.returned, &mut reach)
            else {
                break;
            };
            let w = p.write(seq, p.len);
            let mut wrote = |at: u64, bytes: &[u8]| {
                for (i, &b) in bytes.iter().enumerate() {
                    let pos = at + i as u64;
                    assert!(!in_hole(pos), "{name}: a write at {pos:#x}");
                    mem[pos as usize] = b;
                    touched[page(pos)] = true;
                }
            };
            if let Some((at, h)) = w.pad {
                wrote(at, &h.encode());
            }
            wrote(w.pos, &w.header.encode());
            let body: Vec<u8> = (0..p.len).map(|i| ((sent + i) % 251) as u8).collect();
            wrote(w.pos + 16, &body);
            // The mark in the next slot.
            wrote(r.pos(w.tail), &SEQ_UNPUBLISHED.to_le_bytes());
            (tail, seq) = (w.tail, w.next_seq);
            sent += p.len;
        }
        rx.read_all(&r, &mem, tail);
    }
    assert!(
        rx.got
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i as u64 % 251) as u8),
        "{name}"
    );
    assert_eq!(rx.got.len() as u64, sent, "{name}");
    assert!(
        r.reach(reach) > r.min_reach(),
        "{name}: a lagging receiver grows the reach"
    );
}
