//! The ring's synchronising sequences: publishing a frame (the producer counter), taking it
//! (its Acquire load, never moving back), returning and reading credits, and the doorbell
//! handshake on both sides (arm, re-check, and the peer's "ring only an armed sleeper"). Called
//! by the send, receive and wait paths with the endpoint blocks (`Region`s); it never decides
//! where bytes go (the callers do, with `proto::Ring`), only in which order the words that
//! announce them are written and read.
//!
//! The sequences are generic over the memory ([`Block`]) so that the same code runs under loom:
//! built with `--cfg loom`, `tests/loom_ring.rs` runs them over `rendezvous::model::Area`
//! (every word a loom atomic, each frame slot a cell whose unordered accesses loom reports),
//! and docs/MEMORY-ORDERING.md lists what each model checks. Over a `Region` every call is
//! inlined into the one load, store or fence it was before (no indirection on the fast path).

use std::sync::atomic::AtomicU64 as LocalU64;
use std::sync::atomic::Ordering::{self, Acquire, Relaxed, Release, SeqCst};

use ntbdrv::Region;

use super::block::{
    atomic_u32_at, atomic_u64_at, CR_CLOSED, CR_HEAD, CR_RX_SLEEPING, FLAG_FIN, FLAG_GONE,
    RX_FLAGS, RX_TAIL, RX_TX_WAITING,
};
use crate::proto::{
    credit_return, published, CreditReturn, FrameHeader, ProtoError, FRAME_SEQ_AT, SEQ_UNPUBLISHED,
};

/// One shared word of `T` (a `u32` or a `u64`): the operations the ring's sequences use.
pub trait Word<T> {
    fn load(&self, order: Ordering) -> T;
    fn store(&self, v: T, order: Ordering);
    fn compare_exchange(&self, current: T, new: T, ok: Ordering, err: Ordering) -> Result<T, T>;
    fn fetch_or(&self, v: T, order: Ordering) -> T;
}

/// A count of this process's interest of one kind in a connection (process memory; a loom atomic
/// in the models, so that loom interleaves the waiters at it too): each waiting thread counts 1
/// ([`arm_waiter`]), each epoll registration [`REGISTERED`] ([`register`]).
pub trait WaiterCount {
    fn load(&self, order: Ordering) -> u32;
    fn fetch_add(&self, v: u32, order: Ordering) -> u32;
    fn fetch_sub(&self, v: u32, order: Ordering) -> u32;
}

/// What an epoll registration adds to a [`WaiterCount`]: the low half of the count is the
/// waiting threads ([`WAITING`]), the high half the registrations.
pub const REGISTERED: u32 = 1 << 16;
/// The waiting threads' half of a [`WaiterCount`].
pub const WAITING: u32 = REGISTERED - 1;
/// Registrations beyond this many are not counted (see [`register`]); far below the count's
/// capacity, so that registrations racing past the check cannot wrap it.
const MOST_REGISTERED: u32 = 1 << 15;

macro_rules! count {
    ($atomic:ty) => {
        impl WaiterCount for $atomic {
            #[inline(always)]
            fn load(&self, order: Ordering) -> u32 {
                <$atomic>::load(self, order)
            }
            #[inline(always)]
            fn fetch_sub(&self, v: u32, order: Ordering) -> u32 {
                <$atomic>::fetch_sub(self, v, order)
            }
            #[inline(always)]
            fn fetch_add(&self, v: u32, order: Ordering) -> u32 {
                <$atomic>::fetch_add(self, v, order)
            }
        }
    };
}

count!(std::sync::atomic::AtomicU32);
#[cfg(loom)]
count!(loom::sync::atomic::AtomicU32);

/// An endpoint block as the ring's sequences reach it: its words by offset, and the fence of
/// the memory model the words live in.
pub trait Block {
    type W32: Word<u32>;
    type W64: Word<u64>;
    fn w32(&self, off: usize) -> &Self::W32;
    fn w64(&self, off: usize) -> &Self::W64;
    fn fence(order: Ordering);
}

macro_rules! word {
    ($t:ty, $atomic:ty) => {
        impl Word<$t> for $atomic {
            #[inline(always)]
            fn load(&self, order: Ordering) -> $t {
                <$atomic>::load(self, order)
            }
            #[inline(always)]
            fn store(&self, v: $t, order: Ordering) {
                <$atomic>::store(self, v, order)
            }
            #[inline(always)]
            fn compare_exchange(
                &self,
                current: $t,
                new: $t,
                ok: Ordering,
                err: Ordering,
            ) -> Result<$t, $t> {
                <$atomic>::compare_exchange(self, current, new, ok, err)
            }
            #[inline(always)]
            fn fetch_or(&self, v: $t, order: Ordering) -> $t {
                <$atomic>::fetch_or(self, v, order)
            }
        }
    };
}

word!(u32, std::sync::atomic::AtomicU32);
word!(u64, std::sync::atomic::AtomicU64);

impl Block for Region {
    type W32 = std::sync::atomic::AtomicU32;
    type W64 = std::sync::atomic::AtomicU64;
    #[inline(always)]
    fn w32(&self, off: usize) -> &Self::W32 {
        atomic_u32_at(self, off)
    }
    #[inline(always)]
    fn w64(&self, off: usize) -> &Self::W64 {
        atomic_u64_at(self, off)
    }
    #[inline(always)]
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

impl Block for super::block::EndpointBlock {
    type W32 = std::sync::atomic::AtomicU32;
    type W64 = std::sync::atomic::AtomicU64;
    #[inline(always)]
    fn w32(&self, off: usize) -> &Self::W32 {
        atomic_u32_at(self, off)
    }
    #[inline(always)]
    fn w64(&self, off: usize) -> &Self::W64 {
        atomic_u64_at(self, off)
    }
    #[inline(always)]
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

#[cfg(loom)]
word!(u32, loom::sync::atomic::AtomicU32);
#[cfg(loom)]
word!(u64, loom::sync::atomic::AtomicU64);

// The model's offsets are the block's constants, every one a cell of `model_block`: a layout
// mismatch is a bug of the model build, never reached by the product.
#[cfg(loom)]
#[allow(clippy::expect_used)]
impl Block for crate::rendezvous::model::Area {
    type W32 = loom::sync::atomic::AtomicU32;
    type W64 = loom::sync::atomic::AtomicU64;
    fn w32(&self, off: usize) -> &Self::W32 {
        self.atomic_u32(off).expect("a word of the modelled block")
    }
    fn w64(&self, off: usize) -> &Self::W64 {
        self.atomic_u64(off).expect("a word of the modelled block")
    }
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}

/// The FIN bit of the sender's flags, for the loom models.
#[cfg(loom)]
pub const FIN: u32 = FLAG_FIN;
/// The RST bit, for the loom models.
#[cfg(loom)]
pub const RST: u32 = super::block::FLAG_RST;

/// An endpoint block with a ring of [`crate::proto::MIN_RING`] bytes cut in frame slots of
/// `slot` bytes (a header cell and a payload cell each), for the loom models: its words are the
/// ring's (`RX` and `CREDIT` lines) and the frame slots are checked for data races (a read and
/// a write of one slot not ordered by happens-before fail the model).
#[cfg(loom)]
#[allow(clippy::arithmetic_side_effects)] // the model's layout: constants, never peer input
pub fn model_block(slot: usize) -> crate::rendezvous::model::Area {
    use crate::proto::{FRAME_HDR, MIN_RING, RING_START};
    let hdr = RING_START as usize;
    let mut cells = vec![
        (RX_TAIL, 8),
        (CR_HEAD, 8),
        (CR_RX_SLEEPING, 4),
        (CR_CLOSED, 4),
        (RX_FLAGS, 4),
        (RX_TX_WAITING, 4),
    ];
    let h = FRAME_HDR as usize;
    for at in (0..MIN_RING as usize).step_by(slot) {
        // The header's two words (length and flags; the sequence word), then the payload.
        cells.push((hdr + at, 8));
        cells.push((hdr + at + 8, 8));
        cells.push((hdr + at + h, slot - h));
    }
    crate::rendezvous::model::Area::new_exclusive(hdr + MIN_RING as usize, cells)
}

// ---- the producer --------------------------------------------------------------------------

/// Publish producer counter `tail` into the receiver's block (`peer_block`), after the bytes of
/// every frame below it.
#[inline(always)]
pub fn publish_tail<B: Block>(peer_block: &B, tail: u64) {
    // SYNC POINT (ring data): Release store of tail after the frame bytes; pairs with the
    // receiver's Acquire load in `rx_tail`.
    peer_block.w64(RX_TAIL).store(tail, Release);
}

/// Write the header `h` of a frame whose payload is in the receiver's ring (its block,
/// `peer_block`) at block offset `at`, and publish the frame: the length and flags, the
/// [`SEQ_UNPUBLISHED`] mark into the sequence word of the header slot after the frame (`next`,
/// a block offset; `None` for a pad frame, whose next slot, ring position 0, holds the frame
/// written before it), then the sequence word. [`publish_tail`] follows.
#[inline(always)]
pub fn publish_frame<B: Block>(peer_block: &B, at: usize, h: &FrameHeader, next: Option<usize>) {
    // The mark first: it follows the payload the caller just copied, so a frame whose payload
    // ends on the mark's line stores to that line back to back, and the header's line last.
    if let Some(next) = next {
        mark_next(peer_block, next);
    }
    publish_header(peer_block, at, h);
}

/// The first half of [`publish_frame`]: the [`SEQ_UNPUBLISHED`] mark into the sequence word of
/// the header slot at block offset `next`, for a writer that stores more (the payload's head,
/// on the header's line) before [`publish_header`].
#[inline(always)]
pub fn mark_next<B: Block>(peer_block: &B, next: usize) {
    peer_block
        .w64(next.wrapping_add(FRAME_SEQ_AT as usize))
        .store(SEQ_UNPUBLISHED, Relaxed);
}

/// The second half of [`publish_frame`]: the length and flags of the frame at block offset
/// `at`, then its sequence word (Release, the last store of the frame).
#[inline(always)]
pub fn publish_header<B: Block>(peer_block: &B, at: usize, h: &FrameHeader) {
    let seq_at = at.wrapping_add(FRAME_SEQ_AT as usize);
    peer_block
        .w64(at)
        .store(h.len as u64 | (h.flags as u64) << 32, Relaxed);
    // SYNC POINT (frame publication): Release store of the sequence word after the payload, the
    // length and the mark in the next slot; pairs with the Acquire load in `published_header`
    // (and `is_published`).
    peer_block.w64(seq_at).store(h.seq, Release);
}

/// The header at block offset `at` of our ring (`own_block`), if its sequence word says the
/// frame is published for a receiver expecting frame `expected` (`proto::published`): the
/// sequence word loaded once, then the length and flags. The caller validates the frame
/// (`Ring::check_published`).
#[inline(always)]
pub fn published_header<B: Block>(own_block: &B, at: usize, expected: u64) -> Option<FrameHeader> {
    // SYNC POINT (frame publication): Acquire pairs with the Release store in `publish_frame`;
    // the payload, length and the mark after the frame are visible.
    let seq = own_block
        .w64(at.wrapping_add(FRAME_SEQ_AT as usize))
        .load(Acquire);
    if !published(seq, expected) {
        return None;
    }
    let w = own_block.w64(at).load(Relaxed);
    Some(FrameHeader {
        len: w as u32,
        flags: (w >> 32) as u16,
        seq,
    })
}

/// Is the frame at block offset `at` published for a receiver expecting frame `expected`? (A
/// waiter's look, one line: the header it will read.)
#[inline(always)]
pub fn is_published<B: Block>(own_block: &B, at: usize, expected: u64) -> bool {
    // SYNC POINT (frame publication): as in `published_header`.
    published(
        own_block
            .w64(at.wrapping_add(FRAME_SEQ_AT as usize))
            .load(Acquire),
        expected,
    )
}

/// The header at block offset `at` of our ring (`own_block`), for a frame the producer counter
/// announced (after [`rx_tail`], whose Acquire made it visible): each word loaded once.
#[inline(always)]
pub fn header<B: Block>(own_block: &B, at: usize) -> FrameHeader {
    let seq = own_block
        .w64(at.wrapping_add(FRAME_SEQ_AT as usize))
        .load(Relaxed);
    let w = own_block.w64(at).load(Relaxed);
    FrameHeader {
        len: w as u32,
        flags: (w >> 32) as u16,
        seq,
    }
}

/// After [`publish_tail`]: is the receiver asleep, armed for data (its flag in our block,
/// `own_block`)? Takes the arming if so: the caller rings it (one ring per arming).
#[inline(always)]
pub fn take_data_arming<B: Block>(own_block: &B) -> bool {
    // SYNC POINT (data wake-up): no full fence before this load — it would cost a cross-core
    // cache line transfer per send, as much as the rest of the send. The load may pass the tail
    // store (store buffer), so a receiver arming at that instant can miss it; the receiver
    // covers that window by re-checking for `ARM_GRACE` after arming, and never sleeps longer
    // than `LEADER_NAP` (see `wait`). The first sender to see the flag takes it (the receiver
    // re-arms before it sleeps again), so a stream of sends to a waking receiver costs one
    // doorbell.
    let sleeping = own_block.w32(CR_RX_SLEEPING);
    sleeping.load(Relaxed) != 0 && sleeping.compare_exchange(1, 0, SeqCst, Relaxed).is_ok()
}

/// The receiver's consumer counter (in our block, `own_block`), loaded once and validated against
/// our producer counter `tail`: ahead of it is a protocol error; behind `seen` (the highest
/// valid value read before, kept up to date here), it counts as `seen` (credits never go
/// backwards).
#[inline(always)]
pub fn credits<B: Block>(own_block: &B, tail: u64, seen: &LocalU64) -> Result<u64, ProtoError> {
    // SYNC POINT (credits): Acquire pairs with the receiver's Release in `flush_credits`.
    let head = own_block.w64(CR_HEAD).load(Acquire);
    if head > tail {
        return Err(ProtoError::BadCredit { head, tail });
    }
    let before = seen.load(Relaxed);
    if before <= tail && before > head {
        return Ok(before);
    }
    seen.store(head, Relaxed);
    Ok(head)
}

/// Tell the receiver (its block, `peer_block`) that no frame follows the ones published: called
/// after the last [`publish_tail`].
#[inline]
pub fn send_fin<B: Block>(peer_block: &B) {
    // SYNC POINT (FIN): after our last tail store; pairs with the Acquire load of RX_FLAGS in
    // the peer's `peer_flags`.
    peer_block.w32(RX_FLAGS).fetch_or(FLAG_FIN, SeqCst);
}

/// Close our end: the closing side's last writes into the peer's block (`peer_block`): `closed`
/// (the peer's sends fail), `flag` (FIN, RST, or none when our stream ended on the TCP socket),
/// then GONE, after which we never write into that block again.
#[inline]
pub fn release<B: Block>(peer_block: &B, flag: u32) {
    peer_block.w32(CR_CLOSED).store(1, SeqCst);
    peer_block.w32(RX_FLAGS).fetch_or(flag, SeqCst);
    // SYNC POINT (endpoint release): our last write into the peer's block; pairs with the
    // Acquire load in `peer_finished`, after which the peer may give the block to another
    // connection.
    peer_block.w32(RX_FLAGS).fetch_or(FLAG_GONE, SeqCst);
}

/// Has the peer of our (closed) block (`own_block`) made its last write into it? Then the block
/// may be given to another connection.
#[inline]
pub fn peer_finished<B: Block>(own_block: &B) -> bool {
    // SYNC POINT (endpoint release): Acquire pairs with the SeqCst GONE in the peer's
    // `release`: every write of the peer into this block happens before our reuse of it.
    own_block.w32(RX_FLAGS).load(Acquire) & FLAG_GONE != 0
}

// ---- the consumer --------------------------------------------------------------------------

/// The sender's flags in our block (`own_block`): FIN, RST, GONE.
#[inline(always)]
pub fn peer_flags<B: Block>(own_block: &B) -> u32 {
    // SYNC POINT (FIN): Acquire pairs with `send_fin`; a FIN seen comes after every producer
    // counter the sender published, which `data_after` then sees.
    own_block.w32(RX_FLAGS).load(Acquire)
}

/// Is anything published beyond consumer counter `head`? Asked again after a FIN, before EOF
/// (the FIN follows the last producer counter, which an earlier look may have missed).
#[inline(always)]
pub fn data_after<B: Block>(own_block: &B, head: u64) -> bool {
    // SYNC POINT (ring data): as in `rx_tail`.
    own_block.w64(RX_TAIL).load(Acquire) > head
}

/// The sender's producer counter (in our block, `own_block`), loaded once: never behind `seen`, the
/// highest one it published before (kept up to date here). A ring of `cap` bytes.
#[inline(always)]
pub fn rx_tail<B: Block>(own_block: &B, seen: &LocalU64, cap: u64) -> Result<u64, ProtoError> {
    // SYNC POINT (ring data): Acquire load of the peer's tail pairs with the Release
    // store in `publish_tail` after the frame bytes; the bytes up to `tail` are visible.
    let tail = own_block.w64(RX_TAIL).load(Acquire);
    let before = seen.load(Relaxed);
    if tail != before {
        if tail < before {
            return Err(ProtoError::BadTail {
                tail,
                head: before,
                cap,
            });
        }
        seen.store(tail, Relaxed);
    }
    Ok(tail)
}

/// Return consumer counter `head` to the sender (its block, `peer_block`) when the credit policy
/// ([`credit_return`]: a quarter of a ring of `cap` bytes gathered since `returned`, the counter
/// last returned, kept up to date here; or `force`d) says so, or it says "if the sender waits"
/// and the sender's flag in our block (`own_block`) is set. True when the sender was armed for
/// credits: the caller rings it.
#[inline]
pub fn flush_credits<B: Block>(
    peer_block: &B,
    own_block: &B,
    head: u64,
    returned: &LocalU64,
    cap: u64,
    force: bool,
) -> bool {
    match credit_return(cap, head, returned.load(Relaxed), force) {
        CreditReturn::Nothing => return false,
        CreditReturn::IfSenderWaits => {
            // SYNC POINT (credit wake-up): a sender waiting for credits gets them at once. No
            // fence before the load: we stored nothing the sender's re-check reads (the store of
            // `head` below is what pairs with its arming), so one would order nothing and cost a
            // store-buffer drain per receive. A sender that arms just after this look is rung by
            // the next return, or by ours before we sleep or arm (`force`).
            if own_block.w32(RX_TX_WAITING).load(SeqCst) == 0 {
                return false;
            }
        }
        CreditReturn::Now => {}
    }
    returned.store(head, Relaxed);
    // SYNC POINT (credits): Release store of our consumer counter into the sender's memory
    // pairs with its Acquire load in `credits`; the space before `head` is free for reuse.
    peer_block.w64(CR_HEAD).store(head, Release);
    B::fence(SeqCst);
    // SYNC POINT (credit wake-up): pairs with the sender's SeqCst store of TX_WAITING in
    // `arm`, then its fence and its re-check of the credits; one ring per arming, as in
    // `take_data_arming`.
    let waiting = own_block.w32(RX_TX_WAITING);
    waiting.load(SeqCst) != 0 && waiting.compare_exchange(1, 0, SeqCst, Relaxed).is_ok()
}

// ---- the doorbell handshake ----------------------------------------------------------------

/// What a waiter arms in the peer's block: a ring when data comes (a receiver) or when credits
/// come (a sender).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arming {
    Data,
    Credits,
}

impl Arming {
    #[inline(always)]
    fn offset(self) -> usize {
        match self {
            Arming::Data => CR_RX_SLEEPING,
            Arming::Credits => RX_TX_WAITING,
        }
    }
}

/// Ask the peer (its block, `peer_block`) to ring us for `what`. The caller then calls [`armed`]
/// and re-checks the ring before it sleeps.
#[inline(always)]
pub fn arm<B: Block>(peer_block: &B, what: Arming) {
    // SYNC POINT (data wake-up), SYNC POINT (credit wake-up): SeqCst store of the flag, then
    // (`armed`) a SeqCst fence before the re-check; pairs with `take_data_arming` and with
    // `flush_credits`.
    peer_block.w32(what.offset()).store(1, SeqCst);
}

/// As [`arm`], for a waiter of this process counted in `count` (undone by [`disarm`]).
#[inline(always)]
pub fn arm_waiter<B: Block>(peer_block: &B, what: Arming, count: &impl WaiterCount) {
    count.fetch_add(1, SeqCst);
    arm(peer_block, what);
}

/// Count a standing interest in a kind of ring (an epoll registration, which [`arm`]s before each
/// of its sleeps and stays interested between them) in `count`, before its first [`arm`]: while
/// it is counted, no waiter's [`disarm`] clears the flag under it. Undone by [`unregister`].
/// False (not counted: its sleeps then end by their naps when a waiter's disarm clears the flag)
/// if the connection has [`MOST_REGISTERED`] registrations already.
#[inline]
pub fn register(count: &impl WaiterCount) -> bool {
    if count.load(Relaxed) / REGISTERED >= MOST_REGISTERED {
        return false;
    }
    count.fetch_add(REGISTERED, SeqCst);
    true
}

/// Undo one [`register`] that returned true, for a registration that asked the peer (its block,
/// `peer_block`) for `what`. The last interest of the kind in this process (no other
/// registration, no waiting thread) clears the flag, as [`disarm`] does: left set, it cost the
/// peer a ring and this process a wake-up for nothing, once per change, and an event loop that
/// adds EPOLLOUT for each request and takes it away once the request is written (wrk, many
/// clients) paid it on every request (benches/results/epoll-toggle.md).
#[inline]
pub fn unregister<B: Block>(peer_block: &B, what: Arming, count: &impl WaiterCount) {
    if count.fetch_sub(REGISTERED, SeqCst) == REGISTERED {
        clear_unless_wanted(peer_block, what, count);
    }
}

/// Clear the flag for `what` in the peer's block, then set it again if an interest of the kind
/// (`count`) came meanwhile: a waiter that armed (or a registration made) after our last look
/// keeps its flag.
#[inline]
fn clear_unless_wanted<B: Block>(peer_block: &B, what: Arming, count: &impl WaiterCount) {
    let flag = peer_block.w32(what.offset());
    flag.store(0, SeqCst);
    // Read with an RMW, which reads the latest count: a waiter whose increment comes after it
    // read ours, so our clear is ordered before its flag store; one whose increment came
    // before is counted here. (A SeqCst load would do in C11 too, but loom does not give
    // SeqCst loads and stores their total order (tokio-rs/loom#180) and then finds the flag
    // cleared under a sleeper: tests/loom_ring.rs.)
    if count.fetch_add(0, SeqCst) > 0 {
        flag.store(1, SeqCst);
    }
}

/// The fence between arming and re-checking the ring.
#[inline(always)]
pub fn armed<B: Block>() {
    B::fence(SeqCst);
}

/// Undo one arming for `what` after waking; `count` is this process's interest of that kind
/// (our own included: waiters and epoll registrations, see [`WaiterCount`]). The last one clears
/// the flag, so it never clears under a registration, which wants a ring at any time; a waiter
/// that armed or a registration made meanwhile keeps it.
#[inline]
pub fn disarm<B: Block>(peer_block: &B, what: Arming, count: &impl WaiterCount) {
    if count.fetch_sub(1, SeqCst) == 1 {
        clear_unless_wanted(peer_block, what, count);
    }
}
