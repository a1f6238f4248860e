//! The emulated device's synchronising sequences: the device laid out and published (in a file,
//! or in a bridge's memory by the one machine that claims it), a doorbell bit set and read, an
//! event counter announced to its futex sleepers (doorbell interrupts, DMA completion, link
//! events), a DMA batch started and the engine's sleep, a descriptor written back and
//! IN_PROGRESS cleared after the bytes, a bridge's interrupt posted and taken, a scratchpad
//! written and read, the host table's lock
//! taken and given back, its slots and high-water mark published. Called by
//! `file.rs`, `bridge.rs`, `device.rs`, `mod.rs`, `dma.rs` and `table.rs` with the device's
//! registers; it never
//! decides what a bit or a batch means, only in which order the words are written and read.
//!
//! Generic over the word ([`Word`]) and the sleep ([`Sleep`]) so that the same code runs under
//! loom: built with `--cfg loom`, `tests/loom_device.rs` runs these sequences over loom's atomics
//! and a modelled futex ([`ModelFutex`]), and docs/MEMORY-ORDERING.md lists what each model
//! checks. Over the mapped registers every call inlines to the loads, stores and futex calls it
//! was before.

use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{self, Acquire, Relaxed, Release, SeqCst};
use std::time::Duration;

use ntb_sys as sys;

/// One 32-bit device register or shared word: the operations the sequences use.
pub trait Word {
    fn load(&self, order: Ordering) -> u32;
    fn store(&self, v: u32, order: Ordering);
    fn swap(&self, v: u32, order: Ordering) -> u32;
    fn fetch_add(&self, v: u32, order: Ordering) -> u32;
    fn fetch_sub(&self, v: u32, order: Ordering) -> u32;
    fn fetch_or(&self, v: u32, order: Ordering) -> u32;
    fn fetch_and(&self, v: u32, order: Ordering) -> u32;
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32>;
}

macro_rules! word {
    ($atomic:ty) => {
        impl Word for $atomic {
            #[inline(always)]
            fn load(&self, order: Ordering) -> u32 {
                <$atomic>::load(self, order)
            }
            #[inline(always)]
            fn store(&self, v: u32, order: Ordering) {
                <$atomic>::store(self, v, order)
            }
            #[inline(always)]
            fn swap(&self, v: u32, order: Ordering) -> u32 {
                <$atomic>::swap(self, v, order)
            }
            #[inline(always)]
            fn fetch_add(&self, v: u32, order: Ordering) -> u32 {
                <$atomic>::fetch_add(self, v, order)
            }
            #[inline(always)]
            fn fetch_sub(&self, v: u32, order: Ordering) -> u32 {
                <$atomic>::fetch_sub(self, v, order)
            }
            #[inline(always)]
            fn fetch_or(&self, v: u32, order: Ordering) -> u32 {
                <$atomic>::fetch_or(self, v, order)
            }
            #[inline(always)]
            fn fetch_and(&self, v: u32, order: Ordering) -> u32 {
                <$atomic>::fetch_and(self, v, order)
            }
            #[inline(always)]
            fn compare_exchange(
                &self,
                current: u32,
                new: u32,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u32, u32> {
                <$atomic>::compare_exchange(self, current, new, success, failure)
            }
        }
    };
}

word!(AtomicU32);
#[cfg(loom)]
word!(loom::sync::atomic::AtomicU32);

/// How a thread sleeps on a word until another wakes it (the futex, in any process), and the
/// fence of the memory model the words live in.
pub trait Sleep {
    type W: Word;
    fn fence(&self, order: Ordering);
    /// Sleep while `*w == seen` (checked atomically with the sleep), at most `timeout`.
    fn wait(&self, w: &Self::W, seen: u32, timeout: Option<Duration>);
    /// Wake every sleeper on `w`.
    fn wake_all(&self, w: &Self::W);
}

/// The kernel's futex on the mapped device.
pub struct Futex;

impl Sleep for Futex {
    type W = AtomicU32;
    #[inline(always)]
    fn fence(&self, order: Ordering) {
        std::sync::atomic::fence(order)
    }
    #[inline(always)]
    fn wait(&self, w: &AtomicU32, seen: u32, timeout: Option<Duration>) {
        crate::futex::wait(w, seen, timeout)
    }
    #[inline(always)]
    fn wake_all(&self, w: &AtomicU32) {
        crate::futex::wake_all(w)
    }
}

/// A futex for the loom models: the check of the word and the sleep are one step under a lock
/// that the wake takes too, as the kernel's futex queue lock makes them. No timeout: a sleeper
/// nobody wakes stays asleep, and loom reports the deadlock (a lost wake-up the real code's
/// bounded sleeps would only have delayed).
#[cfg(loom)]
#[derive(Default)]
pub struct ModelFutex {
    lock: loom::sync::Mutex<()>,
    woken: loom::sync::Condvar,
}

#[cfg(loom)]
impl Sleep for ModelFutex {
    type W = loom::sync::atomic::AtomicU32;
    fn fence(&self, order: Ordering) {
        loom::sync::atomic::fence(order)
    }
    fn wait(&self, w: &Self::W, seen: u32, _timeout: Option<Duration>) {
        let g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // The kernel reads the word after a full barrier, under its queue lock.
        loom::sync::atomic::fence(SeqCst);
        if w.load(SeqCst) == seen {
            drop(self.woken.wait(g));
        }
    }
    fn wake_all(&self, w: &Self::W) {
        let _ = w;
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.woken.notify_all();
    }
}

// ---- the device's creation -----------------------------------------------------------------

/// Publish a laid-out device: `init_done` = 1, after every word of its header and registers.
#[inline]
pub fn publish_device<W: Word>(done: &W) {
    // SYNC POINT (device creation), SYNC POINT (bridge device creation): Release after the
    // layout's Relaxed stores; pairs with the Acquire in `device_ready` (and in
    // `layout_pending`, on a bridge).
    done.store(1, Release);
}

/// Is the device laid out (`init_done` = 1), its header complete to read?
#[inline]
pub fn device_ready<W: Word>(done: &W) -> bool {
    // SYNC POINT (device creation): Acquire pairs with the Release in `publish_device`.
    done.load(Acquire) == 1
}

/// Bridge mode: claim the laying out of the device in fresh (zeroed) shared memory, `init_done`
/// 0 → 2. True if this machine won and must lay it out, then `publish_device`.
#[inline]
pub fn claim_layout<W: Word>(done: &W) -> bool {
    // SYNC POINT (bridge device creation): one CAS, so exactly one machine lays the device out
    // even when both attach at once.
    done.compare_exchange(0, 2, Acquire, Relaxed).is_ok()
}

/// Bridge mode: is the other machine still laying the device out (`init_done` = 2)?
#[inline]
pub fn layout_pending<W: Word>(done: &W) -> bool {
    // SYNC POINT (bridge device creation): Acquire pairs with the Release in `publish_device`:
    // the first look that sees it done sees the whole layout.
    done.load(Acquire) == 2
}

// ---- doorbells -------------------------------------------------------------------------------

/// Set doorbell `bits` in the rung side's status words (`lo`, `hi`), after the data they announce.
#[inline(always)]
pub fn ring_bits<W: Word>(lo: &W, hi: &W, bits: u64) {
    // SYNC POINT (doorbell status): SeqCst RMW publishes everything written before it (the
    // ring data the doorbell announces); pairs with the Acquire in `pending_bits`.
    lo.fetch_or(bits as u32, SeqCst);
    hi.fetch_or((bits >> 32) as u32, SeqCst);
}

/// The doorbell bits pending in our status words.
#[inline(always)]
pub fn pending_bits<W: Word>(lo: &W, hi: &W) -> u64 {
    // SYNC POINT (doorbell status): Acquire pairs with the ringer's SeqCst fetch_or in
    // `ring_bits`, which follows its writes of the data the doorbell announces.
    lo.load(Acquire) as u64 | (hi.load(Acquire) as u64) << 32
}

// ---- event counters and their sleepers ----------------------------------------------------------

/// Announce an event on counter `seq` (a doorbell interrupt, a DMA completion, a link event):
/// bump it, then wake its sleepers if `waiters` says there are any (and `wake`).
#[inline]
pub fn announce<S: Sleep>(s: &S, seq: &S::W, waiters: &S::W, wake: bool) {
    bump(seq);
    wake_after_bump(s, seq, waiters, wake);
}

/// The first half of [`announce`]: the counter moves. A link coming up bumps its generation
/// before the link reads up (and wakes its sleepers after, [`wake_after_bump`]), so a reader
/// that sees the link up sees the new generation.
#[inline]
pub fn bump<W: Word>(seq: &W) {
    // SYNC POINT (doorbell interrupt), SYNC POINT (link event), SYNC POINT (DMA completion): the
    // SeqCst increment, then (in `wake_after_bump`) the SeqCst load of the sleepers' count, pair
    // with `sleep_unless`'s SeqCst increment of the count and load of the counter: either the
    // sleeper sees the new counter (or the event itself), or we see the sleeper and wake it. No
    // lost wake-up.
    seq.fetch_add(1, SeqCst);
}

/// The second half of [`announce`], after [`bump`] (and whatever the event changes between
/// them): wake the counter's sleepers if `waiters` says there are any (and `wake`).
#[inline]
pub fn wake_after_bump<S: Sleep>(s: &S, seq: &S::W, waiters: &S::W, wake: bool) {
    // (The fence is the language's word for what the RMW already is on x86, a full barrier:
    // loom lets a SeqCst RMW and a SeqCst load of another word pass each other,
    // tokio-rs/loom#180, and finds the sleeper asleep without it.)
    s.fence(SeqCst);
    if wake && waiters.load(SeqCst) > 0 {
        s.wake_all(seq);
    }
}

/// Sleep (at most `timeout`) until counter `seq` moves, unless `nothing_yet` (asked after the
/// sleeper counted itself in `waiters` and read the counter) says the event came meanwhile. The
/// caller looks for its event again afterwards, whatever woke it.
#[inline]
pub fn sleep_unless<S: Sleep>(
    s: &S,
    seq: &S::W,
    waiters: &S::W,
    nothing_yet: impl FnOnce() -> bool,
    timeout: Option<Duration>,
) {
    // SYNC POINT (doorbell sleep), SYNC POINT (link event), SYNC POINT (DMA completion): see
    // `announce`.
    waiters.fetch_add(1, SeqCst);
    let seen = seq.load(SeqCst);
    if nothing_yet() {
        s.wait(seq, seen, timeout);
    }
    waiters.fetch_sub(1, SeqCst);
}

// ---- the DMA engine ----------------------------------------------------------------------------

/// Start a batch whose descriptors are written (Relaxed): `ctrl` gets `value` (START and
/// IN_PROGRESS among its bits), then a sleeping engine is woken through `bell`.
#[inline]
pub fn start_batch<S: Sleep>(s: &S, ctrl: &S::W, bell: &S::W, value: u32) {
    // SYNC POINT (DMA start): this SeqCst store publishes the descriptors written before it;
    // pairs with the engine's Acquire load of CTRL in `batch_started`.
    ctrl.store(value, SeqCst);
    // SYNC POINT (engine wake-up): the engine stores 1 in DOORBELL, fences and re-checks CTRL
    // before it sleeps (`engine_idle`); we store START and fence before we take DOORBELL. (On
    // x86 the SeqCst stores are full barriers already; the fences say it in the language's
    // model, where a SeqCst store and a SeqCst load of another word may pass each other in
    // loom: tokio-rs/loom#180.)
    s.fence(SeqCst);
    if bell.swap(0, SeqCst) == 1 {
        s.wake_all(bell);
    }
}

/// Has a batch been started (the engine's look at `ctrl`)?
#[inline(always)]
pub fn batch_started<W: Word>(ctrl: &W) -> bool {
    // SYNC POINT (DMA start): Acquire pairs with the submitter's SeqCst store in `start_batch`:
    // the descriptors are complete.
    ctrl.load(Acquire) & sys::PLX_DMA_CTRL_START != 0
}

/// The idle engine's sleep (at most `timeout`): announce it in `bell`, look at `ctrl` once more,
/// and sleep unless a batch started or `stopping`.
#[inline]
pub fn engine_idle<S: Sleep>(
    s: &S,
    ctrl: &S::W,
    bell: &S::W,
    stopping: impl FnOnce() -> bool,
    timeout: Option<Duration>,
) {
    // SYNC POINT (engine wake-up): see `start_batch`.
    bell.store(1, SeqCst);
    s.fence(SeqCst);
    if ctrl.load(SeqCst) & sys::PLX_DMA_CTRL_START == 0 && !stopping() {
        s.wait(bell, 1, timeout);
    }
}

/// Write descriptor `flags` back (VALID cleared, status set) after its bytes were copied.
#[inline(always)]
pub fn write_back<W: Word>(flags: &W, value: u32) {
    // SYNC POINT (DMA completion): Release, after the bytes.
    flags.store(value, Release);
}

/// End a batch: clear IN_PROGRESS in `ctrl` after every byte and write-back, then announce the
/// completion on `done_seq` (waking interrupt sleepers counted in `waiters` if `wake`).
#[inline]
pub fn end_batch<S: Sleep>(s: &S, ctrl: &S::W, done_seq: &S::W, waiters: &S::W, wake: bool) {
    // SYNC POINT (DMA completion): Release clear of IN_PROGRESS after every byte and
    // write-back; pairs with the Acquire load in `in_progress` (pollers and sleepers).
    ctrl.fetch_and(!sys::PLX_DMA_CTRL_IN_PROGRESS, Release);
    announce(s, done_seq, waiters, wake);
}

/// Is the batch still running? Seeing it ended means its bytes are visible.
#[inline(always)]
pub fn in_progress<W: Word>(ctrl: &W) -> bool {
    // SYNC POINT (DMA completion): Acquire pairs with the engine's Release clear in `end_batch`.
    ctrl.load(Acquire) & sys::PLX_DMA_CTRL_IN_PROGRESS != 0
}

// ---- bridge mode: the interrupt mailbox ---------------------------------------------------------

/// Post pending interrupt `bits` into a word of the target side's mailbox, after the data they
/// announce; `bump_mailbox` follows.
#[inline(always)]
pub fn post_pending<W: Word>(word: &W, bits: u32) {
    // SYNC POINT (bridge interrupt): SeqCst RMW after the data the interrupt announces; pairs
    // with the poller's swap in `take_pending`.
    word.fetch_or(bits, SeqCst);
}

/// Announce the bits just posted: bump the mailbox's SEQ (then the bridge's doorbell write, an
/// uncached MMIO store ordered after it on x86).
#[inline(always)]
pub fn bump_mailbox<W: Word>(seq: &W) {
    // SYNC POINT (bridge interrupt): after the bits; pairs with the Acquire in `mailbox_seq`: a
    // poller that sees the new SEQ takes the bits posted before it.
    seq.fetch_add(1, SeqCst);
}

/// The poller's look at the mailbox's SEQ: if it moved, `take_pending` every word.
#[inline(always)]
pub fn mailbox_seq<W: Word>(seq: &W) -> u32 {
    // SYNC POINT (bridge interrupt): Acquire pairs with the ringer's SeqCst bump in
    // `bump_mailbox`.
    seq.load(Acquire)
}

/// Take a mailbox word's pending bits (the poller's, or the interrupt daemon's).
#[inline(always)]
pub fn take_pending<W: Word>(word: &W) -> u32 {
    // SYNC POINT (bridge interrupt): SeqCst swap; reads the ringers' `post_pending` RMWs, and
    // with them the data they announce. Bits posted after it come with a later SEQ.
    word.swap(0, SeqCst)
}

// ---- scratchpads -------------------------------------------------------------------------------

/// Write a scratchpad register (ours or the peer's), after whatever its value announces.
#[inline(always)]
pub fn spad_store<W: Word>(reg: &W, v: u32) {
    // SYNC POINT (scratchpad): Release pairs with the Acquire in `spad_load` (the bank owner's
    // `spad_read`, or our `peer_spad_read`).
    reg.store(v, Release);
}

/// Read a scratchpad register: seeing a value means seeing what was written before it.
#[inline(always)]
pub fn spad_load<W: Word>(reg: &W) -> u32 {
    // SYNC POINT (scratchpad): Acquire pairs with the Release in `spad_store`.
    reg.load(Acquire)
}

// ---- the host table's lock ----------------------------------------------------------------------

/// Take the host table's lock word for `me` (a pid; 0 is free), or say who holds it.
#[inline]
pub fn try_lock<W: Word>(lock: &W, me: u32) -> Result<(), u32> {
    // SYNC POINT (host table lock): Acquire pairs with the Release in `unlock`: the slots as the
    // last holder left them.
    lock.compare_exchange(0, me, Acquire, Relaxed).map(|_| ())
}

/// Take the lock from `holder` (dead, or holding it too long): true if it was still its.
#[inline]
pub fn break_lock<W: Word>(lock: &W, holder: u32, me: u32) -> bool {
    // SYNC POINT (host table lock): as in `try_lock`.
    lock.compare_exchange(holder, me, Acquire, Relaxed).is_ok()
}

/// Give the lock back, after every write to the slots.
#[inline]
pub fn unlock<W: Word>(lock: &W) {
    // SYNC POINT (host table lock): Release pairs with the Acquire CAS in `try_lock`.
    lock.store(0, Release);
}

/// Under the lock: a slot's `kind`, stored after the slot's other fields (Relaxed).
#[inline(always)]
pub fn publish_slot<W: Word>(kind: &W, v: u32) {
    // SYNC POINT (host table lock): Release, for readers outside the lock (`pcisock stats`),
    // who load `kind` with Acquire in `slot_kind` and then the fields.
    kind.store(v, Release);
}

/// A slot's `kind`, then its fields may be read (with or without the lock).
#[inline(always)]
pub fn slot_kind<W: Word>(kind: &W) -> u32 {
    // SYNC POINT (host table lock): Acquire pairs with the Release in `publish_slot`.
    kind.load(Acquire)
}

/// Under the lock: raise the table's high-water mark to `to`, before the slot below it is
/// written.
#[inline(always)]
pub fn raise_high_water<W: Word>(mark: &W, to: u32) {
    // SYNC POINT (host table high water): Release pairs with the Acquire in `high_water`: a
    // reader that sees the mark sees every lease made before it moved (the slots the earlier
    // holders wrote under the lock).
    mark.store(to, Release);
}

/// The table's high-water mark: every slot that may hold a lease is below it.
#[inline(always)]
pub fn high_water<W: Word>(mark: &W) -> u32 {
    // SYNC POINT (host table high water): Acquire pairs with the Release in `raise_high_water`.
    mark.load(Acquire)
}
