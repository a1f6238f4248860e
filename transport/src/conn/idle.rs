//! Idle rings give their memory back: the sender of a direction, which alone knows where it will
//! write next, releases the pages of the peer's ring once the receiver has consumed everything
//! and the direction has stayed so for a while (`Connection::release_idle_tx`). Called by the
//! shim's idle sweep (readiness waits whose naps ran out); it never releases a page the receiver
//! may still read, nor races a send.
//!
//! Why it is safe without any change to the wire protocol (docs/PROTOCOL.md §2, *Idle rings*):
//! - the receiver reads only frames published to it and the header slot at its consumer
//!   counter. When the credits say it consumed every byte sent (`head == tail`, one Acquire
//!   load, after its last read of the ring), no published frame is left to read, and its
//!   consumer counter is our producer counter: the page of that header slot is kept.
//! - a released page reads as zeros in every process that maps it, and a later write faults in
//!   a fresh zero page. A zero sequence word publishes no frame: `proto::published` takes a
//!   header only for an expected number whose frame count is not 0, and such a number is not 0
//!   (the first frame of each stream, count 0 in any epoch, is published by the producer
//!   counter only). Frames the producer counter announces are written after the release.
//! - it runs under the send lock (taken only if that costs the sending thread nothing), with
//!   our producer counter and the credits read once; a direction on TCP, shut or reset, or
//!   that another process may send on (it forked with the connection), is left alone.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::block::ring_at;
use super::cursors::{RxPos, TxPos};
use super::{ringsync, Connection};
use crate::proto::{Frame, FrameHeader, FRAME_HDR, FRAME_PAD};

/// No producer counter (a ring never released, or not seen idle).
const NONE: u64 = u64::MAX;

/// The block is released in these units around the pages that are kept (its first, holding the
/// header and the ring's first bytes, and the one holding the next header slot): the smallest
/// page size; where pages are larger, `Region::release` rounds inwards, so the pages kept are
/// never touched.
const KEEP: u64 = 4096;

/// What the idle sweep knows of a connection's sending direction (process memory).
pub(super) struct IdleRing {
    /// The producer counter a look found wholly consumed, and when (the sweeper's clock, ms).
    seen_tail: AtomicU64,
    seen_ms: AtomicU64,
    /// The producer counter at which the peer's ring was released; nothing was sent since while
    /// it is still ours.
    released_at: AtomicU64,
    /// The ring's memory cannot be released (a BAR, a filesystem without holes): not asked again.
    refused: AtomicBool,
}

impl Default for IdleRing {
    fn default() -> IdleRing {
        IdleRing {
            seen_tail: AtomicU64::new(NONE),
            seen_ms: AtomicU64::new(0),
            released_at: AtomicU64::new(NONE),
            refused: AtomicBool::new(false),
        }
    }
}

/// What one look of the idle sweep did with a connection's sending direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleRelease {
    /// Sending, not yet consumed, or not ours to judge now (another thread sends, the direction
    /// is on TCP or closed, other processes hold the connection): nothing done.
    Busy,
    /// Nothing was ever sent: the ring holds at most the page the service prepared.
    Unused,
    /// Wholly consumed, since less than the idle time: looked at again later.
    Watching,
    /// The ring's pages were released (this many bytes), all but the block's first (the header
    /// and the ring's first bytes) and the one holding the next header slot. Where that slot
    /// was past the block's first page, the sender then moved it to position 0, behind a pad
    /// frame to the ring's end: a later look, once the receiver passed the pad, releases the
    /// slot's old page too.
    Released(usize),
    /// Released already, and nothing sent since.
    Kept,
    /// The memory cannot be released (not RAM this process can give back): counted once.
    Refused,
}

impl Connection {
    /// One look of the idle sweep at our sending direction, at `now_ms` (any clock in ms that
    /// does not go back): releases the peer's ring pages, all but the block's first and the one
    /// holding the next header slot, once every byte we sent has been consumed and nothing was sent for
    /// `idle_ms` (since a look found it so). See the module's doc for why that is safe.
    /// First, the credits of our receiving direction not returned yet go to the peer (as
    /// before a wait): its sender's own look then finds its ring consumed.
    pub fn release_idle_tx(&self, now_ms: u64, idle_ms: u64) -> IdleRelease {
        if !self.fo.rx_off() {
            self.pass_pad();
            self.flush_credits(true);
        }
        let st = &self.cur.idle;
        if st.refused.load(Relaxed) {
            return IdleRelease::Refused;
        }
        if self.family.is_shared() {
            return IdleRelease::Busy;
        }
        let Some(_g) = self.tx_lock.try_lock_unrevoked() else {
            return IdleRelease::Busy;
        };
        if self.fo.tx_off() || self.send_blocked().is_some() {
            return IdleRelease::Busy;
        }
        let TxPos { tail, seq } = self.tx_pos();
        if tail == 0 {
            return IdleRelease::Unused;
        }
        if st.released_at.load(Relaxed) == tail {
            return IdleRelease::Kept;
        }
        // SYNC POINT (ring release): the credits' Acquire load (`ringsync::credits`) that finds
        // every byte consumed pairs with the receiver's Release store of `head` in
        // `flush_credits`, made after its last read of the ring: those reads happen before the
        // pages go. A protocol error in the credits is the next send's to report.
        match self.credits(tail) {
            Ok(head) if head == tail => {}
            _ => {
                st.seen_tail.store(NONE, Relaxed);
                return IdleRelease::Busy;
            }
        }
        if st.seen_tail.load(Relaxed) != tail {
            st.seen_tail.store(tail, Relaxed);
            st.seen_ms.store(now_ms, Relaxed);
            return IdleRelease::Watching;
        }
        if now_ms.saturating_sub(st.seen_ms.load(Relaxed)) < idle_ms {
            return IdleRelease::Watching;
        }
        // The block's first page stays (the header, and the ring's first bytes), and the page
        // of the next header slot (the receiver looks at it): in the first one while the
        // sender's reach was the smallest. Every other page of the ring goes. The ring ends
        // at most `BLOCK_OVERHEAD` past its start, and `ring_at` of a position below the
        // capacity (a power of two of at least 4 KiB) is small: the sums do not overflow.
        // Pages are counted from the block's memory: a block that starts inside a page (a
        // service segment's second, `Ring::block_phase`) has its first page end before `KEEP`.
        let phase = self.tx_ring.block_phase();
        let page = |off: u64| (off.saturating_add(phase) & !(KEEP - 1)).saturating_sub(phase);
        let end = page((ring_at(self.tx_ring.cap()) as u64).saturating_add(KEEP - 1));
        let first = page(0).saturating_add(KEEP).saturating_sub(phase);
        let slot = page(ring_at(self.tx_ring.pos(tail)) as u64);
        let after = if slot == 0 {
            first
        } else {
            slot.saturating_add(KEEP)
        };
        // A ring's hole (a service segment's first ring: the second block, its header and its
        // ring) is not this ring's memory: its pages stay.
        let (hole_from, hole_to) = self.tx_ring.hole().map_or((end, end), |(h0, h1)| {
            let from = page((ring_at(h0) as u64).saturating_add(KEEP - 1));
            (from, page(ring_at(h1) as u64))
        });
        let ranges = [(first, slot), (after, end)]
            .into_iter()
            .flat_map(|(from, to)| [(from, to.min(hole_from)), (from.max(hole_to), to)])
            .map(|(from, to)| (from, to.saturating_sub(from)));
        let mut bytes = 0usize;
        for (at, len) in ranges {
            if len == 0 {
                continue;
            }
            match self.peer_block.release(at as usize, len as usize) {
                Ok(n) => bytes = bytes.saturating_add(n),
                Err(_) => {
                    st.refused.store(true, Relaxed);
                    self.shared
                        .counters
                        .ring_releases_refused
                        .fetch_add(1, Relaxed);
                    return IdleRelease::Refused;
                }
            }
        }
        st.seen_tail.store(NONE, Relaxed);
        if slot >= first {
            // The receiver keeps reading the slot's page (its readiness checks look at the
            // header slot at its consumer counter): the slot goes to position 0, in the block's
            // first page, and this direction is looked at again.
            self.pad_to_start(tail, seq);
            st.released_at.store(NONE, Relaxed);
        } else {
            st.released_at.store(tail, Relaxed);
        }
        // The ring starts small again (`Ring::min_reach`): the next frame goes to position 0,
        // behind a pad from the kept slot, and the reach grows again with the traffic.
        self.cur.tx_reach.store(0, Relaxed);
        let c = &self.shared.counters;
        c.ring_releases.fetch_add(1, Relaxed);
        c.ring_bytes_released.fetch_add(bytes as u64, Relaxed);
        IdleRelease::Released(bytes)
    }
}

impl Connection {
    /// Move our next header slot in the peer's ring from producer counter `tail` (next data
    /// frame `seq`) to position 0: a pad frame from it to the ring's end, whose payload is never
    /// written, with the mark at position 0 (`ringsync::publish_frame`), then the producer
    /// counter past it. A pad as every sender writes one (not at position 0, to the ring's end,
    /// carrying the next number without using it), only with no frame behind it yet: the
    /// receiver passes it (its next `recv`, or its idle sweep's `pass_pad`) and finds nothing
    /// published at position 0. No doorbell: there is nothing to read.
    fn pad_to_start(&self, tail: u64, seq: u64) {
        let pos = self.tx_ring.pos(tail);
        // `pos` is below the capacity and 16-aligned: the pad is at least a header and less
        // than the ring (at most `MAX_RING`), so its length fits a u32.
        let size = self.tx_ring.cap().saturating_sub(pos);
        let h = FrameHeader {
            len: size.saturating_sub(FRAME_HDR) as u32,
            flags: FRAME_PAD,
            seq,
        };
        ringsync::publish_frame(&self.peer_block, ring_at(pos), &h, Some(ring_at(0)));
        let tail = tail.saturating_add(size);
        self.set_tx_pos(TxPos { tail, seq });
        ringsync::publish_tail(&self.peer_block, tail);
    }

    /// Our receiving direction's idle look: a pad frame at our consumer counter (the peer's
    /// idle release moved its next header slot to position 0, `pad_to_start`) is passed, so
    /// that our reads of the ring stay in the block's first page and the peer's next look finds
    /// its ring consumed. Only where nothing else may read the ring (no other thread in a
    /// receive, no other process holding the connection); a bad frame is the next `recv`'s to
    /// report.
    fn pass_pad(&self) {
        if self.family.is_shared() {
            return;
        }
        let Some(_g) = self.rx_lock.try_lock_unrevoked() else {
            return;
        };
        let at = self.rx_pos();
        if at.off != 0 {
            return;
        }
        let frame = match self.published_frame(at.head, at.seq) {
            Some(f) => f,
            None => match self.rx_tail() {
                Ok(t) if t > at.head => self.frame_at(at.head, t, at.seq),
                _ => return,
            },
        };
        let Ok(frame @ Frame::Pad { size }) = frame else {
            return;
        };
        if let Ok(step) = self.rx_ring.read_step(at, frame, 0) {
            self.note_pad(at.head, size);
            let RxPos { head, off, seq } = step.next;
            self.return_credits(head, off, seq, false);
        }
    }
}
