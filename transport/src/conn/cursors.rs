//! This side's position in both rings (`Cursors`, kept in process memory) and how a position
//! copied into the endpoint block by another holder of the connection is validated before use.
//! Used by the send and receive paths and by hand-over; it never takes a copied position that is
//! not consistent with our own.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

use ntbdrv::Region;

use super::block::{atomic_u64_at, L_RX_HEAD, L_RX_OFF, L_RX_SEQ, L_TX_SEQ, L_TX_TAIL};
use super::Connection;
use crate::proto::FRAME_HDR;
use crate::switchover::seq_count;

/// This side's position in both rings, in process memory. The peer can write anything in our
/// endpoint block, so nothing read from there decides where we read or write: the block's
/// LOCAL line holds only a copy, a hint for the other processes that hold the connection (a
/// forked child reads on, an exec'd image picks the connection up), taken only when it moved
/// ahead of ours and is consistent with it (`Connection::rx_pos`, `tx_pos`).
#[derive(Default)]
pub(super) struct Cursors {
    /// Consumer counter: bytes of our ring consumed.
    pub(super) rx_head: AtomicU64,
    /// Bytes of the frame at `rx_head` already read.
    pub(super) rx_off: AtomicU64,
    /// Sequence number of the next data frame we receive.
    pub(super) rx_seq: AtomicU64,
    /// The consumer counter last written into the sender's CREDIT line.
    pub(super) rx_returned: AtomicU64,
    /// The highest producer counter the peer published (it never moves backwards).
    pub(super) rx_tail_seen: AtomicU64,
    /// Producer counter: bytes produced into the peer's ring.
    tx_tail: AtomicU64,
    /// Sequence number of the next data frame we send.
    tx_seq: AtomicU64,
    /// How far into the peer's ring we place frames (`Ring::min_reach`: it grows with the
    /// traffic and goes back to the smallest when our direction idles; 0: the smallest).
    pub(super) tx_reach: AtomicU64,
    /// How far into our ring the peer's frames reached in this lap: the position of the pad
    /// frame that ended the last lap (where the peer's reach ended), raised by the frames read
    /// since; for our credit policy (`Ring::credit_ring`).
    pub(super) rx_reach: AtomicU64,
    /// The last fast read (`try_recv`) found nothing and its peer shares our CPU, where it
    /// cannot spin: reads go straight to the general path until a wait finds the peer on
    /// another CPU, or a general read finds data without waiting; and `try_send` leaves a
    /// reply's lines in our caches, where that peer reads them. (A hint, not a position:
    /// here because the connection itself must stay small.)
    pub(super) rx_fast_off: AtomicBool,
    /// What the idle sweep knows of our sending direction (`idle`; here, in the boxed part,
    /// so that the connection stays small).
    pub(super) idle: super::idle::IdleRing,
}

impl Cursors {
    /// A new image has no private cursors: it starts from the block's copy (left by the image
    /// before exec, or written by the peer: every value is validated where it is used, as the
    /// peer's own fields are).
    pub(super) fn from_block(own_block: &Region) -> Cursors {
        Cursors::seeded(
            RxPos {
                head: atomic_u64_at(own_block, L_RX_HEAD).load(Relaxed),
                off: atomic_u64_at(own_block, L_RX_OFF).load(Relaxed),
                seq: atomic_u64_at(own_block, L_RX_SEQ).load(Relaxed),
            },
            TxPos {
                tail: atomic_u64_at(own_block, L_TX_TAIL).load(Relaxed),
                seq: atomic_u64_at(own_block, L_TX_SEQ).load(Relaxed),
            },
        )
    }

    fn seeded(rx: RxPos, tx: TxPos) -> Cursors {
        Cursors {
            rx_head: AtomicU64::new(rx.head),
            rx_off: AtomicU64::new(rx.off),
            rx_seq: AtomicU64::new(rx.seq),
            // Unknown: whatever the image before exec returned, the next flush returns all.
            rx_returned: AtomicU64::new(0),
            rx_tail_seen: AtomicU64::new(rx.head),
            tx_tail: AtomicU64::new(tx.tail),
            tx_seq: AtomicU64::new(tx.seq),
            tx_reach: AtomicU64::new(0),
            rx_reach: AtomicU64::new(0),
            rx_fast_off: AtomicBool::new(false),
            idle: Default::default(),
        }
    }
}

/// A receive position: consumer counter, offset in the frame there, next sequence number (the
/// protocol's [`ReadPos`](crate::proto::ReadPos), whose steps `Ring::read_step` computes).
pub(super) use crate::proto::ReadPos as RxPos;

/// A send position: producer counter and next sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TxPos {
    pub(super) tail: u64,
    pub(super) seq: u64,
}

/// The smallest data frame: a header and one aligned payload unit. Between two positions
/// `d` bytes apart lie at most `d / MIN_DATA_FRAME` data frames.
const MIN_DATA_FRAME: u64 = FRAME_HDR + crate::proto::FRAME_ALIGN;

/// No byte counter of a real stream reaches this (2^62 bytes: 146 years at 1 TB/s); a copy of
/// one at or above it came from the peer.
const COUNTER_LIMIT: u64 = 1 << 62;

impl Connection {
    /// Our receive position: the private one, or the copy in our block if another process
    /// holding the connection (a forked child, an exec'd image) read on and moved it ahead.
    /// The copy is taken only when it is consistent with ours: ahead, frame-aligned, its offset
    /// inside a frame, and its sequence number no further ahead than
    /// the frames that fit between the two. Anything else is the peer's writing and is ignored;
    /// what is taken is validated again where it is used (`check_frame`, the offset against
    /// the frame's length), as the peer's own fields are.
    pub(super) fn rx_pos(&self) -> RxPos {
        let ours = RxPos {
            head: self.cur.rx_head.load(Relaxed),
            off: self.cur.rx_off.load(Relaxed),
            seq: self.cur.rx_seq.load(Relaxed),
        };
        let head = atomic_u64_at(&self.own_block, L_RX_HEAD).load(Relaxed);
        let off = atomic_u64_at(&self.own_block, L_RX_OFF).load(Relaxed);
        if (head, off) <= (ours.head, ours.off) {
            return ours;
        }
        let seq = atomic_u64_at(&self.own_block, L_RX_SEQ).load(Relaxed);
        // Ahead of ours (checked above), and `seq` checked before it is subtracted.
        let ahead = head.saturating_sub(ours.head);
        let consistent = head.is_multiple_of(crate::proto::FRAME_ALIGN)
            && head < COUNTER_LIMIT
            && off < self.rx_ring.max_payload()
            && seq >= ours.seq
            && seq.saturating_sub(ours.seq) <= ahead / MIN_DATA_FRAME;
        if consistent {
            RxPos { head, off, seq }
        } else {
            ours
        }
    }

    /// Our send position, as `rx_pos` for the producer counter.
    #[inline]
    pub(super) fn tx_pos(&self) -> TxPos {
        let ours = TxPos {
            tail: self.cur.tx_tail.load(Relaxed),
            seq: self.cur.tx_seq.load(Relaxed),
        };
        let tail = atomic_u64_at(&self.own_block, L_TX_TAIL).load(Relaxed);
        if tail <= ours.tail {
            return ours;
        }
        let seq = atomic_u64_at(&self.own_block, L_TX_SEQ).load(Relaxed);
        let ahead = tail.saturating_sub(ours.tail);
        // Frames counted without the epoch: the holder that wrote the copy may have gone to TCP
        // and back since (each fail-back starts a new epoch, `switchover`).
        let (count, our_count) = (seq_count(seq), seq_count(ours.seq));
        let consistent = tail.is_multiple_of(crate::proto::FRAME_ALIGN)
            && tail < COUNTER_LIMIT
            && count >= our_count
            && count.saturating_sub(our_count) <= ahead / MIN_DATA_FRAME;
        if consistent {
            TxPos { tail, seq }
        } else {
            ours
        }
    }

    /// Record our send position (privately, and the copy in the block).
    #[inline]
    pub(super) fn set_tx_pos(&self, p: TxPos) {
        self.cur.tx_tail.store(p.tail, Relaxed);
        self.cur.tx_seq.store(p.seq, Relaxed);
        atomic_u64_at(&self.own_block, L_TX_TAIL).store(p.tail, Relaxed);
        atomic_u64_at(&self.own_block, L_TX_SEQ).store(p.seq, Relaxed);
    }
}
