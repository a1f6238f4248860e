//! The wire protocol, as pure functions: ring geometry, frame headers, credit accounting, and the
//! rendezvous records (listener entries, offers, answers: in `records`). It must never panic on
//! what a peer wrote, nor read the clock, memory or a socket: callers pass values in and act on
//! what comes back.
//!
//! No I/O, no unsafe, no clocks: `ring`, `rendezvous` and the fuzz targets drive it. Everything
//! a peer writes into shared memory comes through here as plain bytes or integers and is
//! validated before it is used; a value that breaks the protocol is a [`ProtoError`], and the
//! caller resets the connection. `docs/PROTOCOL.md` describes the same layout in prose.

// Decodes what peers write: it must never panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::fmt;

/// Version of the protocol, carried in every offer and answer and in the control header.
pub const PROTOCOL_VERSION: u32 = 6;

/// Bytes of a frame header.
pub const FRAME_HDR: u64 = 16;
/// Where a frame header's sequence word is (bytes 8..16): stored last, it publishes the frame
/// (see [`published`]).
pub const FRAME_SEQ_AT: u64 = 8;
/// What a sender stores into the sequence word of the header slot after each frame before it
/// publishes the frame: no expected sequence number is ever this, so a receiver that reached
/// the slot never takes what an earlier lap left there for a published frame.
pub const SEQ_UNPUBLISHED: u64 = u64::MAX;
/// Frames start on this alignment (so a pad frame header always fits before the ring's end).
pub const FRAME_ALIGN: u64 = 16;
/// Bytes an endpoint block has beyond its ring's capacity: a block (an endpoint lease, a half
/// of a service's segment) is `BLOCK_OVERHEAD + capacity` bytes, a whole number of pages, and
/// starts on a page. What the window space, the leases and `RingLoc::check` count with; where
/// the ring lies in it is [`RING_START`].
pub const BLOCK_OVERHEAD: u64 = 4096;
/// Where ring position 0 is in an endpoint block: the header's words (the RX, CREDIT and LOCAL
/// lines, the counters, the identity, up to 0x238) lie below it, and the ring's first
/// `BLOCK_OVERHEAD - RING_START` bytes share the header's page, so a connection whose traffic
/// stays there ([`MIN_REACH`]) touches one page of each block, and a service segment's shared
/// page holds both headers and 1,472 bytes of each ring (version 6: 0x400 in version 5, and
/// `BLOCK_OVERHEAD` before). The block's last `BLOCK_OVERHEAD - RING_START` bytes, past the
/// ring, are never written.
pub const RING_START: u64 = 0x240;
/// Smallest and largest ring data capacity.
pub const MIN_RING: u64 = 4096;
pub const MAX_RING: u64 = 1 << 30;
/// Largest payload in one frame: bigger writes are split into several frames, so the receiver
/// can consume the first while the next is still being copied.
pub const MAX_FRAME_PAYLOAD: u64 = 256 << 10;

/// Frame flag: a pad frame that fills the ring up to its end; it carries no data.
pub const FRAME_PAD: u16 = 1;

/// The *reach* a sender starts with, and goes back to when its direction idles: it places its
/// frames (and the header slot after each) in the ring's first `reach` bytes, and goes back to
/// position 0 with a pad frame over the rest of the ring ([`Ring::place_within`]), so a
/// connection exchanging small messages touches only the page of the peer's block that holds
/// its header: the ring's bytes in that page. The reach grows ([`Ring::grow_reach`]) when a frame
/// does not fit in it or the receiver lags by more than it (the ring's memory grows with the
/// traffic, as TCP's buffers do), up to the whole ring.
pub const MIN_REACH: u64 = BLOCK_OVERHEAD - RING_START;

// The header's words (up to the identity's end, 0x238) lie below the ring, frame headers on
// the ring's 16-byte alignment, and the smallest reach holds the largest frame a smallest ring
// carries with the header slot after it.
const _: () = assert!(RING_START >= 0x240 && RING_START.is_multiple_of(64));
const _: () = assert!(RING_START < BLOCK_OVERHEAD && BLOCK_OVERHEAD.is_multiple_of(4096));
const _: () = assert!(MIN_REACH >= MIN_RING / 4 + FRAME_HDR);

/// A protocol violation by the peer (or memory corruption): the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The peer's producer counter moved backwards or past the ring's capacity.
    BadTail { tail: u64, head: u64, cap: u64 },
    /// The consumer counter the peer returned is ahead of what was produced.
    BadCredit { head: u64, tail: u64 },
    /// A frame header with an impossible length or position.
    BadFrame { pos: u64, len: u32, flags: u16 },
    /// A frame out of sequence.
    BadSequence { expected: u64, got: u64 },
    /// The receiver's offset in a frame (its own) is not inside the frame the peer's header
    /// describes now: the header was rewritten after it was published.
    BadOffset { off: u64, len: u64 },
    /// A receive went this many turns without a byte, a data frame or a wait: the peer keeps
    /// the reader busy without sending.
    NoProgress { turns: u32 },
    /// A rendezvous record with an invalid field.
    BadRecord(&'static str),
    /// A record from another protocol version.
    Version { ours: u32, peer_block: u32 },
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadTail { tail, head, cap } => {
                write!(
                    f,
                    "producer counter {tail} impossible (consumer {head}, capacity {cap})"
                )
            }
            Self::BadCredit { head, tail } => {
                write!(f, "consumer counter {head} ahead of producer {tail}")
            }
            Self::BadFrame { pos, len, flags } => {
                write!(f, "bad frame at {pos}: length {len}, flags {flags:#x}")
            }
            Self::BadSequence { expected, got } => {
                write!(f, "frame sequence {got}, expected {expected}")
            }
            Self::BadOffset { off, len } => {
                write!(f, "read {off} bytes of a frame now {len} bytes long")
            }
            Self::NoProgress { turns } => {
                write!(f, "{turns} turns of a receive without progress")
            }
            Self::BadRecord(why) => write!(f, "bad rendezvous record: {why}"),
            Self::Version { ours, peer_block } => {
                write!(f, "protocol version {peer_block}, we speak {ours}")
            }
        }
    }
}

impl std::error::Error for ProtoError {}

/// Round `n` up to the frame alignment (a length within 15 of `u64::MAX`, which no frame has,
/// rounds down instead of overflowing: callers compare the size against the ring's room).
pub fn align_frame(n: u64) -> u64 {
    n.saturating_add(FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Geometry of one ring: `cap` bytes of data, a power of two. Producer (`tail`) and consumer
/// (`head`) are free-running byte counters; a counter's position in the ring is `counter % cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    /// At most `MAX_RING`, and the largest payload of one frame (at most `MAX_FRAME_PAYLOAD`),
    /// fixed by it and kept so that the data path's every length check does not derive it
    /// again; `u32`s, as a ring is part of every connection, whose size clippy bounds
    /// (`Outcome`).
    cap: u32,
    max_payload: u32,
    /// Where position 0 lies in its page: [`RING_START`] in a block that starts on a page (the
    /// device's, the bridge's, a service segment's first block); further in a block that starts
    /// inside a page shared with the other block (a service segment's second: see
    /// [`Ring::laid_out`]). A reach ends where a page does.
    lead: u16,
    /// The ring's hole, `hole..hole_end` (`hole` 0: none): positions that are the other
    /// block's (a service segment's second block, its header and its whole ring: see
    /// [`Ring::laid_out`]). No frame, pad header or header slot is ever there.
    hole: u16,
    hole_end: u32,
}

/// Bytes of a page: the unit in which a ring's memory is touched, grown and released.
pub const PAGE: u64 = 4096;

/// Where the producer puts its next frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// A pad frame to write first at this position, filling `pad` bytes up to the ring's end.
    pub pad: Option<(u64, u64)>,
    /// Ring position of the frame header; the payload follows it.
    pub pos: u64,
    /// Payload bytes that fit in this frame.
    pub len: u64,
    /// The producer counter after the frame.
    pub new_tail: u64,
}

/// A frame header as decoded, validated against the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `len` payload bytes follow the header; the frame spans `size` bytes of the ring.
    Data { len: u64, size: u64 },
    /// Skip `size` bytes (to the ring's end, or to its hole's end).
    Pad { size: u64 },
}

// `Ring` keeps its capacity and largest payload in u32s.
const _: () = assert!(MAX_RING <= u32::MAX as u64);
const _: () = assert!(MAX_FRAME_PAYLOAD <= u32::MAX as u64);

impl Ring {
    /// A ring of `cap` bytes in a block that starts on a page, if `cap` is a power of two in
    /// `MIN_RING..=MAX_RING`.
    pub fn new(cap: u64) -> Option<Ring> {
        Ring::laid_out(cap, RING_START, None)
    }

    /// A ring of `cap` bytes whose position 0 lies `lead` bytes into its page and whose
    /// positions `hole` (`start..end`), if any, belong to another block: a service segment's
    /// first ring, which starts in the segment's shared page and runs on in its last pages,
    /// past the second block's header and ring (docs/PROTOCOL.md §2, *The shared page*). The
    /// hole starts in the ring's first page, after room for a few frames, and ends where a page
    /// of the block's memory does, before the ring's end. `None` for a capacity [`Ring::new`]
    /// refuses, a `lead` that is not frame-aligned or not inside a page, or a hole that is not
    /// so. A ring's largest frame is a quarter of the bytes it has outside its hole (rounded up
    /// to a power of two), at most [`MAX_FRAME_PAYLOAD`].
    pub fn laid_out(cap: u64, lead: u64, hole: Option<(u64, u64)>) -> Option<Ring> {
        let first = PAGE.checked_sub(lead).filter(|&f| f > 0)?;
        let ok_cap = cap.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&cap);
        let ok_lead = lead >= RING_START && lead.is_multiple_of(FRAME_ALIGN);
        let ok_hole = hole.is_none_or(|(h0, h1)| {
            h0.is_multiple_of(FRAME_ALIGN)
                && h0 >= FRAME_HDR.saturating_mul(4)
                && h0 < first
                && h1 >= first
                && h1.saturating_add(lead).is_multiple_of(PAGE)
                && h1 < cap
                && cap.saturating_sub(h1.saturating_sub(h0)) >= MIN_RING / 2
        });
        if !(ok_cap && ok_lead && ok_hole) {
            return None;
        }
        let (h0, h1) = hole.unwrap_or((0, 0));
        // Outside the hole: at least `h0` bytes (a few frames), a power of two at most `cap`.
        let own = cap
            .saturating_sub(h1.saturating_sub(h0))
            .next_power_of_two();
        Some(Ring {
            cap: cap as u32,
            // `own / 4` is at least 512 (`own` at least MIN_RING / 2), more than a header; at
            // most MAX_FRAME_PAYLOAD, a u32.
            max_payload: (own / 4).min(MAX_FRAME_PAYLOAD).saturating_sub(FRAME_HDR) as u32,
            // Below a page, a u16.
            lead: lead as u16,
            // `h0` below a page, `h1` below the capacity: a u16 and a u32.
            hole: h0 as u16,
            hole_end: h1 as u32,
        })
    }

    /// Positions in the ring's first page.
    #[inline]
    fn first_page(&self) -> u64 {
        PAGE.saturating_sub(u64::from(self.lead))
    }

    /// Where the ring's block starts in its page (0 for a block that starts on a page): its
    /// ring's position 0 is [`RING_START`] past the block's start.
    #[inline]
    pub fn block_phase(&self) -> u64 {
        u64::from(self.lead).saturating_sub(RING_START)
    }

    /// The hole, `(start, end)`, if the ring has one.
    #[inline]
    pub fn hole(&self) -> Option<(u64, u64)> {
        (self.hole != 0).then(|| (u64::from(self.hole), u64::from(self.hole_end)))
    }

    #[inline]
    pub fn cap(&self) -> u64 {
        u64::from(self.cap)
    }

    #[inline]
    // `cap` is private and at least MIN_RING (`Ring::new`): no underflow.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn pos(&self, counter: u64) -> u64 {
        counter & (self.cap() - 1)
    }

    /// Largest payload of one frame in this ring.
    #[inline]
    pub fn max_payload(&self) -> u64 {
        u64::from(self.max_payload)
    }

    /// Bytes the producer may still use, given the consumer counter the peer returned; an
    /// impossible counter is a protocol error.
    pub fn free(&self, tail: u64, head: u64) -> Result<u64, ProtoError> {
        tail.checked_sub(head)
            .and_then(|used| self.cap().checked_sub(used))
            .ok_or(ProtoError::BadCredit { head, tail })
    }

    /// Place a frame of up to `want` payload bytes (`want >= 1`), or `None` if the ring has no
    /// room for even one byte (wait for credits). Frames never wrap: if the space before the
    /// ring's end is too small, a pad frame fills it first.
    /// The frame ends at least a header before the consumer's counter plus the capacity: the
    /// sender marks the next header slot ([`SEQ_UNPUBLISHED`]) before it publishes the frame.
    pub fn place(&self, tail: u64, head: u64, want: u64) -> Result<Option<Placement>, ProtoError> {
        let free = self.free(tail, head)?.saturating_sub(FRAME_HDR);
        // A producer counter so large that the next frame would overflow it is no counter a
        // real stream reaches (2^64 bytes); it came from memory a peer can write.
        if tail.checked_add(self.cap()).is_none() {
            return Err(ProtoError::BadCredit { head, tail });
        }
        // Below, every difference is of a larger value by a smaller one (checked before it) and
        // every sum stays within `tail + cap`: the saturating forms never saturate.
        let pos = self.pos(tail);
        // Our own counter never stands in the hole (nothing is placed there).
        let Some(here) = self.room_at(pos) else {
            return Err(ProtoError::BadCredit { head, tail });
        };
        let want = want.clamp(1, self.max_payload());
        let mut pad = None;
        let (mut fpos, mut avail, mut t) = (pos, free, tail);
        if here < FRAME_HDR + FRAME_ALIGN {
            // Not even a one-byte frame fits before the hole or the end: pad up to the hole's
            // end, or to the ring's end.
            let (size, next) = self.pad_on(pos);
            if free < size {
                return Ok(None);
            }
            pad = Some((pos, size));
            fpos = next;
            avail = free
                .saturating_sub(size)
                .min(self.room_at(next).unwrap_or(0));
            t = tail.saturating_add(size);
        } else {
            avail = avail.min(here);
        }
        if avail < FRAME_HDR + FRAME_ALIGN {
            return Ok(None);
        }
        let len = want.min(avail.saturating_sub(FRAME_HDR));
        let mut size = FRAME_HDR.saturating_add(align_frame(len));
        let len = if size > avail {
            // Alignment would overrun the space: shrink the payload to an aligned length.
            size = avail & !(FRAME_ALIGN - 1);
            size.saturating_sub(FRAME_HDR)
        } else {
            len
        };
        if len == 0 {
            return Ok(None);
        }
        Ok(Some(Placement {
            pad,
            pos: fpos,
            len,
            new_tail: t.saturating_add(size),
        }))
    }

    /// Bytes a frame at `pos` may span: up to the ring's end (its header slot is then position
    /// 0), or before the hole with its header slot; `None` inside the hole.
    #[inline]
    fn room_at(&self, pos: u64) -> Option<u64> {
        match self.hole() {
            Some((h0, _)) if pos < h0 => Some(h0.saturating_sub(pos).saturating_sub(FRAME_HDR)),
            Some((_, h1)) if pos < h1 => None,
            _ => Some(self.cap().saturating_sub(pos)),
        }
    }

    /// The pad frame `place` writes at `pos` when nothing fits there: its size and the position
    /// after it (past the hole, or the ring's start).
    #[inline]
    fn pad_on(&self, pos: u64) -> (u64, u64) {
        match self.hole() {
            Some((h0, h1)) if pos < h0 => (h1.saturating_sub(pos), h1),
            _ => (self.cap().saturating_sub(pos), 0),
        }
    }

    /// The smallest reach a sender has in this ring, and goes back to when its direction
    /// idles: the ring's bytes in its first page ([`MIN_REACH`] in a block that starts on a
    /// page), or those before the hole.
    #[inline]
    pub fn min_reach(&self) -> u64 {
        match self.hole() {
            Some((h0, _)) => h0,
            None => self.first_page(),
        }
        .min(self.cap())
    }

    /// The reach a sender grows to from `reach` (at least [`Ring::min_reach`]): the ring's part
    /// of twice as many pages as `reach` touches, so that each reach ends on a page boundary
    /// (in a block that starts on a page: 3,520, 7,616, 15,808 bytes, …) and none touches a page it
    /// does not fill. In a ring with a hole, a reach before the hole grows to the first page
    /// past it, and one past it to twice the pages it has there. [`Ring::reach`] caps it at the
    /// ring.
    #[inline]
    pub fn grow_reach(&self, reach: u64) -> u64 {
        let reach = reach.max(self.min_reach());
        if let Some((_, h1)) = self.hole() {
            // The hole ends on a page of the block's memory: each reach past it does too.
            return match reach.checked_sub(h1) {
                None => h1.saturating_add(PAGE),
                Some(past) => {
                    h1.saturating_add(past.div_ceil(PAGE).max(1).saturating_mul(2 * PAGE))
                }
            };
        }
        let lead = u64::from(self.lead);
        reach
            .saturating_add(lead)
            .div_ceil(PAGE)
            .saturating_mul(2 * PAGE)
            .saturating_sub(lead)
    }

    /// The ring size a receiver's credit policy counts with ([`credit_return`]), having seen the
    /// peer's frames reach ring position `reach_seen` in the current lap (the position of the
    /// pad frame that ended the last lap, raised by the frames read since): a sender that wraps
    /// at its reach (`Ring::place_within`) needs the credits of its lap before the lap ends, so
    /// credits gather for a quarter of twice its reach (the smallest reach a sender has,
    /// [`Ring::min_reach`] and each [`Ring::grow_reach`] of it, at or above what was seen), not
    /// of the whole ring. Past a hole, the reach counts without it: the hole holds none of the
    /// sender's bytes (its pad over it ends no lap), and a credit ring of the whole ring's size
    /// left a sender with a reach just past the hole of a 1 MiB ring waiting for credits (and
    /// ringing for them) at every lap.
    #[inline]
    pub fn credit_ring(&self, reach_seen: u64) -> u64 {
        let lead = u64::from(self.lead);
        let seen = match self.hole() {
            Some((h0, h1)) if reach_seen >= h1 => reach_seen.saturating_sub(h1.saturating_sub(h0)),
            _ => reach_seen,
        };
        seen.max(self.min_reach())
            .checked_add(lead)
            .and_then(u64::checked_next_power_of_two)
            .map(|end| end.saturating_sub(lead))
            .and_then(|r| r.checked_mul(2))
            .map_or(self.cap(), |r| r.min(self.cap()))
    }

    /// A sender's reach (see [`MIN_REACH`]) in this ring: at least [`Ring::min_reach`], at most
    /// the capacity.
    #[inline]
    pub fn reach(&self, reach: u64) -> u64 {
        reach.clamp(self.min_reach(), self.cap())
    }

    /// Place a frame holding all `want` bytes (at most the largest payload) inside the ring's
    /// first `reach` bytes, with the header slot after it (the sender's mark goes there), and
    /// out of the hole: where the producer counter stands; else behind a pad frame, past the
    /// hole (a pad from the producer counter to the hole's end), or at position 0 (a pad that
    /// fills the ring from the producer counter to its end), or past the hole from position 0
    /// (a pad over the ring's end and the hole: a frame too large for the bytes before the
    /// hole). A pad's payload is never written: the pages past the reach stay untouched, and
    /// the hole's bytes are never ours. `None` when the frame does not fit in the reach at
    /// all, or the credits leave no room for it (with its pad): the sender then grows its
    /// reach and places as [`Ring::place`] does. A reach of the whole ring is [`Ring::place`].
    pub fn place_within(
        &self,
        tail: u64,
        head: u64,
        want: u64,
        reach: u64,
    ) -> Result<Option<Placement>, ProtoError> {
        let reach = self.reach(reach);
        if reach >= self.cap() {
            return self.place(tail, head, want);
        }
        let free = self.free(tail, head)?;
        if tail.checked_add(self.cap()).is_none() {
            return Err(ProtoError::BadCredit { head, tail });
        }
        // `want` is at most `max_payload` and `reach` below `cap`: the sums are small; `pos` is
        // below `cap`.
        let want = want.clamp(1, self.max_payload());
        let size = FRAME_HDR.saturating_add(align_frame(want));
        let need = size.saturating_add(FRAME_HDR);
        // Where a frame at `at` (and its header slot) must end: the reach, or the hole's start.
        let limit = |at: u64| match self.hole() {
            Some((h0, _)) if at < h0 => Some(h0.min(reach)),
            Some((_, h1)) if at < h1 => None,
            _ => Some(reach),
        };
        let pos = self.pos(tail);
        // Our own counter never stands in the hole (nothing is placed there).
        let Some(here) = limit(pos) else {
            return Err(ProtoError::BadCredit { head, tail });
        };
        let placed = |pad: Option<(u64, u64)>, at: u64| {
            let skip = pad.map_or(0, |(_, n)| n);
            (free >= skip.saturating_add(need)).then_some(Placement {
                pad,
                pos: at,
                len: want,
                new_tail: tail.saturating_add(skip).saturating_add(size),
            })
        };
        if pos.saturating_add(need) <= here {
            return Ok(placed(None, pos));
        }
        let cap = self.cap();
        let to_end = cap.saturating_sub(pos);
        // The pads that may take the frame somewhere it fits, the nearest first. A pad to the
        // ring's end never from position 0 (it would be the whole ring).
        let (past_hole, wrap_past_hole) = match self.hole() {
            Some((h0, h1)) if pos < h0 => (Some((h1.saturating_sub(pos), h1)), None),
            Some((_, h1)) => (None, Some((to_end.saturating_add(h1), h1))),
            None => (None, None),
        };
        let to_start = (pos != 0).then_some((to_end, 0));
        for (skip, at) in [past_hole, to_start, wrap_past_hole].into_iter().flatten() {
            if limit(at).is_some_and(|end| at.saturating_add(need) <= end) {
                return Ok(placed(Some((pos, skip)), at));
            }
        }
        Ok(None)
    }

    /// The common placement, cheaply: a frame holding all `want` bytes that fits before the
    /// ring's end and in the room `head` leaves (with the next header slot, as in `place`), with
    /// no pad frame; returns its position and
    /// the producer counter after it. `None` in every other case, impossible counters included
    /// (`place` sorts those out); where it answers, it answers as `place` does.
    #[inline(always)]
    pub fn place_whole(&self, tail: u64, head: u64, want: u64) -> Option<(u64, u64)> {
        self.place_whole_within(tail, head, want, self.cap())
    }

    /// [`Ring::place_whole`] for a sender with a `reach` (see [`MIN_REACH`]): below the
    /// capacity, the frame and the header slot after it must lie in the reach, as in
    /// [`Ring::place_within`]; where it answers, it answers as `place_within` does.
    #[inline(always)]
    pub fn place_whole_within(
        &self,
        tail: u64,
        head: u64,
        want: u64,
        reach: u64,
    ) -> Option<(u64, u64)> {
        if want == 0 || want > self.max_payload() {
            return None;
        }
        // `want` is at most `max_payload` (checked above): the frame's size is small.
        let size = FRAME_HDR.wrapping_add(align_frame(want));
        let room = self.cap().checked_sub(tail.checked_sub(head)?)?;
        tail.checked_add(self.cap())?;
        let pos = self.pos(tail);
        // `pos` is below `cap`; the frame ends at most `cap` past `tail`, which does not overflow.
        let reach = self.reach(reach);
        let mut end = if reach < self.cap() {
            reach.saturating_sub(FRAME_HDR)
        } else {
            self.cap()
        };
        if self.hole != 0 {
            // Before the hole, the frame and its header slot; never in it.
            match self.hole() {
                Some((h0, _)) if pos < h0 => end = end.min(h0.saturating_sub(FRAME_HDR)),
                Some((_, h1)) if pos < h1 => return None,
                _ => {}
            }
        }
        (room >= size.wrapping_add(FRAME_HDR) && end.saturating_sub(pos) >= size)
            .then_some((pos, tail.wrapping_add(size)))
    }

    /// Validate the producer counter read from shared memory against our consumer counter.
    #[inline]
    pub fn check_tail(&self, tail: u64, head: u64) -> Result<u64, ProtoError> {
        tail.checked_sub(head)
            .filter(|&d| d <= self.cap())
            .ok_or(ProtoError::BadTail {
                tail,
                head,
                cap: self.cap(),
            })
    }

    /// Validate a frame header found at consumer counter `head` with producer counter `tail`.
    // `pos` is below `cap`; the header's length is a u32, far from overflowing a u64 with a
    // header and alignment added.
    #[allow(clippy::arithmetic_side_effects)]
    #[inline]
    pub fn check_frame(
        &self,
        head: u64,
        tail: u64,
        hdr: &FrameHeader,
        expected_seq: u64,
    ) -> Result<Frame, ProtoError> {
        let avail = self.check_tail(tail, head)?;
        let pos = self.pos(head);
        let bad = || ProtoError::BadFrame {
            pos,
            len: hdr.len,
            flags: hdr.flags,
        };
        if !pos.is_multiple_of(FRAME_ALIGN) || avail < FRAME_HDR {
            return Err(bad());
        }
        // No frame header is ever in the hole.
        let Some(room) = self.room_at(pos) else {
            return Err(bad());
        };
        let to_end = self.cap() - pos;
        if hdr.flags == FRAME_PAD {
            // A pad frame fills the ring from its position to the end: space too small for a
            // frame (see `place`), or the rest of the ring past a sender's reach
            // (`place_within`). Never from position 0: each pad is followed by a data frame at
            // 0, so a peer cannot keep the reader skipping pads without sending. In a ring
            // with a hole, a pad may also end at the hole's end: from before the hole, or from
            // past it over the ring's end and the hole (a frame too large for the bytes before
            // the hole); a peer that keeps the reader skipping those meets `NoProgress`.
            let size = FRAME_HDR + hdr.len as u64;
            let legal = (size == to_end && pos != 0)
                || match self.hole() {
                    Some((h0, h1)) if pos < h0 => size == h1 - pos,
                    Some((_, h1)) => size == to_end + h1,
                    None => false,
                };
            if !legal || size > avail {
                return Err(bad());
            }
            return Ok(Frame::Pad { size });
        }
        if hdr.flags != 0 || hdr.len == 0 || hdr.len as u64 > self.max_payload() {
            return Err(bad());
        }
        // Before the hole, the frame leaves its header slot there too.
        let size = FRAME_HDR + align_frame(hdr.len as u64);
        if size > avail || size > room {
            return Err(bad());
        }
        if hdr.seq != expected_seq {
            return Err(ProtoError::BadSequence {
                expected: expected_seq,
                got: hdr.seq,
            });
        }
        Ok(Frame::Data {
            len: hdr.len as u64,
            size,
        })
    }
}

impl Ring {
    /// Validate a frame found at consumer counter `head` whose header's sequence word holds
    /// the expected number (`published` said so): as [`Ring::check_frame`], with the frame's
    /// own sequence word for the producer counter (the sender stores that after it). The frame
    /// must lie inside the ring, before its end, where a sender with the receiver's credits
    /// could have written it.
    #[inline]
    pub fn check_published(
        &self,
        head: u64,
        hdr: &FrameHeader,
        expected_seq: u64,
    ) -> Result<Frame, ProtoError> {
        self.check_frame(head, head.saturating_add(self.cap()), hdr, expected_seq)
    }
}

/// Is the frame whose header holds sequence word `word` published, for a receiver expecting
/// frame `expected`? A sender stores the word last (Release), after the payload, the rest of the
/// header and the [`SEQ_UNPUBLISHED`] mark in the slot after the frame; so the word a receiver
/// finds at its consumer counter is the expected number only once that frame is whole. Not for
/// the first frame of a stream (frame count 0): no mark precedes it, and what the ring held
/// before (zeros, another connection's frames) may read as its number; the producer counter
/// announces that one.
#[inline]
pub fn published(word: u64, expected: u64) -> bool {
    word == expected && crate::switchover::seq_count(expected) != 0
}

/// A placed frame as the sender writes it: the pad frame before it (if any) and its own header,
/// and where the stream stands after it. Both send paths (`send`, `send_file`) number and close
/// their frames through [`Placement::write`], so sequencing has one rule in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameWrite {
    /// The pad frame's header and its ring position, written before the frame.
    pub pad: Option<(u64, FrameHeader)>,
    /// Ring position of the frame's header; the payload follows it.
    pub pos: u64,
    /// The frame's header.
    pub header: FrameHeader,
    /// The producer counter after the frame (what the sender publishes).
    pub tail: u64,
    /// The sequence number of the next data frame.
    pub next_seq: u64,
}

impl Placement {
    /// This frame carrying `n` payload bytes as data frame number `seq`: `n` is at most the
    /// placed length (a sendfile read that came up short makes a shorter frame, and the
    /// producer counter follows the bytes actually written; an `n` outside `1..=len` is clamped
    /// into it, so a frame never claims bytes that were not placed); a pad frame before it
    /// carries the same number without using it.
    pub fn write(&self, seq: u64, n: u64) -> FrameWrite {
        let n = n.clamp(1, self.len.max(1));
        // A pad frame is at least a header (`place` pads only from a 16-aligned position) and
        // less than the ring (at most `MAX_RING`), a payload at most `max_payload`: both
        // lengths fit their u32.
        let pad = self.pad.map(|(pos, size)| {
            let h = FrameHeader {
                len: size.saturating_sub(FRAME_HDR) as u32,
                flags: FRAME_PAD,
                seq,
            };
            (pos, h)
        });
        // The frame's aligned payload shrinks by what a short read left out.
        let tail = self
            .new_tail
            .saturating_sub(align_frame(self.len))
            .saturating_add(align_frame(n));
        FrameWrite {
            pad,
            pos: self.pos,
            header: FrameHeader {
                len: n as u32,
                flags: 0,
                seq,
            },
            tail,
            next_seq: seq.wrapping_add(1),
        }
    }
}

mod reading;
pub use reading::*;

mod records;
pub use records::*;

#[cfg(test)]
mod tests;
