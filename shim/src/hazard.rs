//! The fd table's hazard-pointer sequences (`SYNC POINT (fd table)`): a reader protecting an
//! entry it loaded from a table slot and giving it back, and a remover asking whether any reader
//! still holds an entry it took out. Called by `table.rs` over its static slots and records,
//! with its two fence halves (a compiler fence in readers, `membarrier` in removers); it never
//! decides what an entry is or when it is freed, only in which order the words are written and
//! read.
//!
//! Generic over the pointer word ([`PtrWord`]) so that the same code runs under loom: built with
//! `--cfg loom`, `tests/loom_table.rs` runs these sequences over loom's atomics, and
//! docs/MEMORY-ORDERING.md says what the model checks. Over the table's `AtomicPtr`s every call
//! inlines to the loads and stores it was before (the write hook's machine code is unchanged).

use std::sync::atomic::Ordering::{self, Acquire, Relaxed, Release, SeqCst};

/// A pointer word of the table or of a hazard record: the operations the sequences use.
pub trait PtrWord<T> {
    fn load(&self, order: Ordering) -> *mut T;
    fn store(&self, p: *mut T, order: Ordering);
}

impl<T> PtrWord<T> for std::sync::atomic::AtomicPtr<T> {
    #[inline(always)]
    fn load(&self, order: Ordering) -> *mut T {
        std::sync::atomic::AtomicPtr::load(self, order)
    }
    #[inline(always)]
    fn store(&self, p: *mut T, order: Ordering) {
        std::sync::atomic::AtomicPtr::store(self, p, order)
    }
}

#[cfg(loom)]
impl<T> PtrWord<T> for loom::sync::atomic::AtomicPtr<T> {
    fn load(&self, order: Ordering) -> *mut T {
        loom::sync::atomic::AtomicPtr::load(self, order)
    }
    fn store(&self, p: *mut T, order: Ordering) {
        loom::sync::atomic::AtomicPtr::store(self, p, order)
    }
}

/// Reader: protect `p`, just loaded from `slot`, with `hazard` (a slot of our thread's record):
/// store it there, pass `light` (our half of the fence), and load the table slot again. `p` is
/// protected if that gives `p` again; otherwise the caller tries the new value (or none).
#[inline(always)]
pub fn protect<T, W: PtrWord<T>>(hazard: &W, slot: &W, p: *mut T, light: impl FnOnce()) -> *mut T {
    hazard.store(p, Relaxed);
    // SYNC POINT (fd table): our hazard store before the re-load; pairs with the swap and
    // `heavy_barrier` in the remover's `retire_ptr` (then `held`): either the remover's scan
    // sees our hazard, or our re-load sees the slot it emptied.
    light();
    slot.load(Acquire)
}

/// Reader: empty the hazard slot, after every access to the entry.
#[inline(always)]
pub fn unprotect<T, W: PtrWord<T>>(hazard: &W) {
    // SYNC POINT (fd table): Release, after our accesses to the entry; a remover's scan that
    // sees the slot empty frees the entry after them.
    hazard.store(std::ptr::null_mut(), Release);
}

/// Remover: does one of `hazards` hold `p`? Asked after `p` left the table and the heavy half of
/// the fence ran; false means no reader can reach `p` any more.
#[inline]
pub fn held<'a, T: 'a, W: PtrWord<T> + 'a>(
    hazards: impl IntoIterator<Item = &'a W>,
    p: *mut T,
) -> bool {
    // SYNC POINT (fd table): SeqCst loads after the heavy barrier; see `protect`.
    hazards.into_iter().any(|h| h.load(SeqCst) == p)
}
