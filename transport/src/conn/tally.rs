//! Tally pages: which connections a shared line rang for (docs/HOST-SERVICE.md, *Tallies*).
//!
//! Over the host fabric service a process's connections share one interrupt line, and a ring
//! of it does not say which connection it was for. Each process therefore also has a tally
//! page (a sealed memfd it gives the service with its line, which the service hands to its
//! peers beside the line): one u32 word per connection end, at a slot the process chose for
//! the end and wrote into the peer's block (`CR_TALLY`). A peer that rings the line first adds
//! one to that word, so a waiter that wakes for the line looks at the words of its own
//! registrations and evaluates only those whose word moved, instead of every connection.
//!
//! Everything here is a hint. A peer can write any word of the page (it maps all of it) and
//! any slot number into our block: a wrong count costs the victim a look at one of its own
//! connections, a slot out of range counts in word 0, which no connection has (a ring nobody
//! can name: the waiter then looks at everything, as without tallies). It must never take a
//! count for data: the connection's own ring is always what decides.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Mutex};

use ntbdrv::Region;

/// Slots of a tally page, and slots per group (`fabric::sys`).
const SLOTS: usize = fabric::sys::TALLY_SLOTS;
const GROUP: usize = fabric::sys::TALLY_GROUP;

/// A tally page, mapped: this process's own (it hands out slots) or a peer process's (rung).
pub struct Tally {
    region: Region,
    /// Slots in use, a bit each (ours only; bit 0, the unnamed ring's word, always set).
    used: Mutex<Vec<u64>>,
    /// A peer's page's descriptor, held (never read) while it is mapped: `map_keeping`.
    _file: Option<Arc<OwnedFd>>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally").finish_non_exhaustive()
    }
}

impl Tally {
    /// Map the tally page `fd` (refused unless it is a whole page sealed against shrinking: a
    /// peer cannot truncate it under our writes).
    pub(crate) fn map(fd: &OwnedFd) -> Option<Arc<Tally>> {
        Tally::mapped(fd, None)
    }

    /// Map a peer's tally page `fd` and keep `fd` open while it is mapped: the service sends
    /// the page again with every pairing with that peer, and the fabric client recognizes a
    /// copy of a descriptor this process still holds (closing the copy at once, instead of
    /// moving it out of the application's numbers first and closing it after the look-up).
    pub(crate) fn map_keeping(fd: Arc<OwnedFd>) -> Option<Arc<Tally>> {
        Tally::mapped(&fd, Some(fd.clone()))
    }

    fn mapped(fd: &OwnedFd, file: Option<Arc<OwnedFd>>) -> Option<Arc<Tally>> {
        let region = Region::map_segment(fd, 0, fabric::sys::TALLY_BYTES as usize).ok()?;
        let mut used = vec![0u64; SLOTS / 64];
        if let Some(w) = used.first_mut() {
            *w = 1;
        }
        Some(Arc::new(Tally {
            region,
            used: Mutex::new(used),
            _file: file,
        }))
    }

    /// The count of rings in slot `slot`'s word (0 for a slot out of range). Read after its
    /// group's word ([`Tally::group_count`]): a ring moves the slot's word first.
    #[inline]
    pub fn count(&self, slot: u32) -> u32 {
        self.word(slot as usize).map_or(0, |w| w.load(Acquire))
    }

    /// The count of rings in the group of slots `group` (slots `group * GROUP ..`).
    #[inline]
    pub fn group_count(&self, group: u32) -> u32 {
        self.word(SLOTS.saturating_add(group as usize))
            .map_or(0, |w| w.load(Acquire))
    }

    /// The group of slot `slot`.
    #[inline]
    pub fn group_of(slot: u32) -> u32 {
        slot.checked_div(GROUP as u32).unwrap_or(0)
    }

    /// Count a ring for the connection whose end has slot `slot` (read from memory the peer
    /// writes: out of range, word 0): its word, then its group's. Before the line is rung, so a
    /// waiter woken by it finds both moved.
    #[inline]
    pub(crate) fn bump(&self, slot: u32) {
        let slot = if (slot as usize) < SLOTS { slot } else { 0 };
        let group = SLOTS.saturating_add(Tally::group_of(slot) as usize);
        for w in [slot as usize, group] {
            if let Some(w) = self.word(w) {
                w.fetch_add(1, Release);
            }
        }
    }

    /// Word `i` of the page (slots, then groups).
    fn word(&self, i: usize) -> Option<&std::sync::atomic::AtomicU32> {
        if i >= SLOTS.saturating_add(SLOTS / GROUP) {
            return None;
        }
        self.region.atomic_u32(i.checked_mul(4)?).ok()
    }

    /// A free slot of this (our own) page, for a new connection end; `None` when all are
    /// taken (the end then has none: its peer counts its rings as unnamed).
    pub(crate) fn take_slot(self: &Arc<Tally>) -> Option<TallySlot> {
        let mut used = self.used.lock().ok()?;
        let (i, w) = used.iter_mut().enumerate().find(|(_, w)| **w != u64::MAX)?;
        let bit = w.trailing_ones();
        *w |= 1u64.checked_shl(bit)?;
        Some(TallySlot {
            tally: self.clone(),
            slot: u32::try_from(i).ok()?.checked_mul(64)?.checked_add(bit)?,
        })
    }
}

/// A connection end's slot in its process's tally page, given back when the end goes.
#[derive(Debug)]
pub struct TallySlot {
    tally: Arc<Tally>,
    slot: u32,
}

impl TallySlot {
    /// The page.
    pub fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }

    /// The slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Drop for TallySlot {
    fn drop(&mut self) {
        if let Ok(mut used) = self.tally.used.lock() {
            if let Some(w) = used.get_mut(self.slot as usize / 64) {
                *w &= !1u64.rotate_left(self.slot);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn page() -> Arc<Tally> {
        Tally::map(&fabric::sys::tally().unwrap()).unwrap()
    }

    #[test]
    fn slots_are_handed_out_once_and_come_back() {
        let b = page();
        let s1 = b.take_slot().unwrap();
        let s2 = b.take_slot().unwrap();
        assert_eq!((s1.slot(), s2.slot()), (1, 2), "slot 0 is nobody's");
        drop(s1);
        assert_eq!(b.take_slot().unwrap().slot(), 1);
        let all: Vec<_> = std::iter::from_fn(|| b.take_slot()).collect();
        assert_eq!(all.len(), SLOTS - 2, "every slot but 0 and the one held");
    }

    #[test]
    fn a_ring_counts_in_its_slot_and_a_bad_slot_in_word_0() {
        let b = page();
        let s = b.take_slot().unwrap();
        b.bump(s.slot());
        b.bump(s.slot());
        assert_eq!(b.count(s.slot()), 2);
        b.bump(u32::MAX);
        b.bump(SLOTS as u32);
        assert_eq!(b.count(0), 2);
        assert_eq!(b.count(u32::MAX), 0);
        assert_eq!(b.group_count(0), 4, "slots 1 and 0 are in group 0");
        let far = SLOTS as u32 - 1;
        b.bump(far);
        assert_eq!(b.count(far), 1);
        assert_eq!(b.group_count(Tally::group_of(far)), 1);
        assert_eq!(b.group_count(SLOTS as u32), 0, "no group beyond the page");
    }

    #[test]
    fn a_page_of_the_wrong_size_or_unsealed_is_not_mapped() {
        assert!(Tally::map(&fabric::sys::segment(4096).unwrap()).is_none());
    }
}
