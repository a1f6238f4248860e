//! Mappings of segments kept after their connections closed: the fabric service gives a closed
//! connection's segment, zeroed, to the next connection between the same two processes
//! (docs/HOST-SERVICE.md, *Segment reuse*), and a process that kept its mapping takes it again
//! instead of mapping the segment anew (no mmap, no munmap, no page faults on the pages it
//! touched before). Called by the service link when a pairing arrives and when a connection it
//! paired goes; it never hands a mapping to a connection whose segment is not that mapping's
//! file.
//!
//! A segment is known by its arena's identity (device and inode, one fstat of the descriptor
//! the service sends with every pairing) and its offset there: while a mapping of it is kept
//! its inode cannot be another file's. A kept mapping is not inherited by a forked child (a child could write into
//! the later connections that use it): before a fork ([`SegmentCache::before_fork`], from the
//! library's fork handlers) every kept mapping is marked `MADV_DONTFORK`, from then on a
//! mapping is marked as it is kept, and a mapping taken again is marked `MADV_DOFORK` only if
//! it was; so a process that never forks makes no `madvise` a connection (it made two: one as
//! it kept the mapping, one as it took it). A child forgets the entries it copied without
//! unmapping them (they are not mapped there). At most [`KEPT`] mappings; the cache's lock is
//! only tried, never waited for (a fork can leave it held in the child), except by
//! `before_fork`, in the parent.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use ntbdrv::{Region, SegmentIdentity};

/// Mappings kept (each a whole segment: two endpoint headers and two rings; their pages beyond
/// the first ones are freed by the service when it keeps the segment).
const KEPT: usize = 16;
/// How long a kept mapping waits for its next connection. A kept mapping keeps its arena
/// alive, and with it the pages of the arena's ranges that were let go of uncleanly (the
/// service never frees those while the arena lives: docs/HOST-SERVICE.md, *Arenas*): after a
/// client process with thousands of connections died, a server's kept mappings of them held
/// its arena's pages (8 MB for 2,000 connections) for as long as the server lived. Connections
/// that reuse a segment come within milliseconds of each other; older mappings go at the next
/// pairing or close of this process.
const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// How much of a segment with rings of `ring_bytes` is mapped: all of it, one stretch holding
/// both blocks (docs/PROTOCOL.md §2, *The shared page*).
fn segment_len(ring_bytes: u64) -> Option<usize> {
    usize::try_from(fabric::service::segment_bytes(ring_bytes)).ok()
}

/// The identity of the segment at `offset` of the arena `arena` (its file's), rings of
/// `ring_bytes`: what a kept mapping is found by.
fn identity_at(arena: SegmentIdentity, offset: u64, ring_bytes: u64) -> SegmentIdentity {
    SegmentIdentity {
        offset,
        size: fabric::service::segment_bytes(ring_bytes),
        ..arena
    }
}

#[derive(Default)]
pub(crate) struct SegmentCache {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// The process that made these mappings (a forked child has none of them).
    pid: u32,
    /// This process has prepared a fork (`before_fork`): mappings are marked as they are kept
    /// (a child copies this word, and its own first look clears it: `own`).
    forked: bool,
    maps: VecDeque<Entry>,
}

/// A kept mapping: the segment's identity, its mapping, whether it is marked `MADV_DONTFORK`
/// (since a fork's [`SegmentCache::before_fork`]), and when it was kept.
type Entry = (SegmentIdentity, Region, bool, std::time::Instant);

impl Kept {
    /// This process's entries (a forked child forgets what it copied: not mapped there, so
    /// not to be unmapped either).
    fn own(&mut self) -> &mut VecDeque<Entry> {
        let me = ntbdrv::process::pid();
        if self.pid != me {
            for m in self.maps.drain(..) {
                std::mem::forget(m);
            }
            self.pid = me;
            self.forked = false;
        }
        // Mappings kept too long go (`KEEP_FOR`), unmapped.
        self.maps.retain(|e| e.3.elapsed() < KEEP_FOR);
        &mut self.maps
    }
}

impl SegmentCache {
    /// The segment at `offset` of arena `fd`, both blocks of rings of `ring_bytes`, mapped:
    /// the mapping this process kept of it when the service gave it to us before (a
    /// connection with the same peer process that closed), else a new one (refused unless the
    /// arena is sealed against shrinking and the segment lies within it).
    pub(crate) fn map(
        &self,
        fd: &OwnedFd,
        offset: u64,
        ring_bytes: u64,
    ) -> Option<(ntbdrv::Region, ntbdrv::SegmentIdentity)> {
        let len = segment_len(ring_bytes)?;
        let arena = ntbdrv::Region::segment_identity(fd).ok()?;
        let id = identity_at(arena, offset, ring_bytes);
        if let Some(r) = self.take(id, len) {
            return Some((r, id));
        }
        let r = ntbdrv::Region::map_segment(fd, offset, len).ok()?;
        Some((r, id))
    }

    /// The kept mapping of the segment the service named by its arena's device and inode and
    /// its offset there (`fabric::Again`), rings of `ring_bytes`, if this process kept it.
    pub(crate) fn take_named(
        &self,
        a: &fabric::Again,
    ) -> Option<(ntbdrv::Region, ntbdrv::SegmentIdentity)> {
        let len = segment_len(a.ring_bytes)?;
        let arena = SegmentIdentity {
            dev: a.dev,
            inode: a.inode,
            offset: 0,
            size: 0,
        };
        let id = identity_at(arena, a.offset, a.ring_bytes);
        Some((self.take(id, len)?, id))
    }

    /// The kept mapping of segment `id`, `len` bytes long, if there is one (taken out: it is a
    /// connection's now, and a child forked from here on inherits it).
    pub(crate) fn take(&self, id: SegmentIdentity, len: usize) -> Option<Region> {
        let mut k = self.inner.try_lock().ok()?;
        let maps = k.own();
        let i = maps
            .iter()
            .position(|(i, r, _, _)| *i == id && r.len() == len)?;
        let (_, r, marked, _) = maps.remove(i)?;
        drop(k);
        if marked {
            r.inherit_on_fork(true).ok()?;
        }
        Some(r)
    }

    /// Keep the mapping `whole` of segment `id`, whose connection this process let go of for
    /// good (after its last write into it). Unmapped instead if it cannot be kept.
    pub(crate) fn keep(&self, id: SegmentIdentity, whole: Region) {
        let Ok(mut k) = self.inner.try_lock() else {
            return;
        };
        k.own();
        if k.maps.iter().any(|(i, _, _, _)| *i == id) {
            return;
        }
        let marked = k.forked;
        if marked && whole.inherit_on_fork(false).is_err() {
            return;
        }
        k.maps
            .push_back((id, whole, marked, std::time::Instant::now()));
        if k.maps.len() > KEPT {
            k.maps.pop_front();
        }
    }

    /// A fork is about to be made: no kept mapping may be inherited. Each is marked
    /// `MADV_DONTFORK` (once; one that cannot be marked is unmapped instead), and so is every
    /// mapping this process keeps from now on (one kept by another thread as the fork is made
    /// is either marked here or as it is kept: both take the lock, which this waits for, in
    /// the parent, where its holder lets go at once).
    pub(crate) fn before_fork(&self) {
        let mut k = match self.inner.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        k.own();
        k.forked = true;
        k.maps.retain_mut(|(_, r, marked, _)| {
            *marked = *marked || r.inherit_on_fork(false).is_ok();
            *marked
        });
    }
}

#[cfg(test)]
mod tests {
    use super::SegmentCache;

    /// Is the mapping that starts at `addr` in this process's memory map?
    fn mapped(addr: usize) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|l| l.starts_with(&format!("{addr:x}-")))
    }

    /// A segment is mapped at its offset in the arena, and one that does not lie within the
    /// arena, or lies in one that is not sealed, is refused: never a mapping that would fault
    /// (SIGBUS) or reach past the arena.
    #[test]
    fn a_segment_is_mapped_at_its_offset_within_its_arena() {
        use std::os::unix::fs::FileExt;
        let ring = 4096;
        let seg = fabric::service::segment_bytes(ring);
        let arena = fabric::sys::segment(4 * seg).unwrap();
        let cache = SegmentCache::default();
        let (r, id) = cache.map(&arena, 2 * seg, ring).unwrap();
        assert_eq!((id.offset, id.size), (2 * seg, seg));
        r.write(0, b"head").unwrap();
        let mut b = [0u8; 4];
        let file = std::fs::File::from(arena.try_clone().unwrap());
        file.read_exact_at(&mut b, 2 * seg).unwrap();
        assert_eq!(&b, b"head");
        // Past the end, partly past it, an offset that wraps, one inside a page: refused.
        for off in [4 * seg, 3 * seg + 4096, u64::MAX - 4095, 2 * seg + 8] {
            assert!(cache.map(&arena, off, ring).is_none(), "offset {off}");
        }
        // A file its sender could shrink under us (not a sealed memfd): refused.
        let path = std::env::temp_dir().join(format!("segcache-{}", std::process::id()));
        let loose = std::fs::File::create(&path).unwrap();
        loose.set_len(4 * seg).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(cache.map(&loose.into(), 0, ring).is_none());
    }

    /// A kept mapping goes once it waited `KEEP_FOR` for a connection: the next pairing or
    /// close of this process unmaps it (and with it what it kept of its arena).
    #[test]
    fn a_kept_mapping_goes_after_its_time() {
        let ring = 4096;
        let len = 2 * (crate::proto::BLOCK_OVERHEAD + ring);
        let cache = SegmentCache::default();
        let fd = fabric::sys::segment(len).unwrap();
        let (r, id) = cache.map(&fd, 0, ring).unwrap();
        let addr = r.as_ptr() as usize;
        cache.keep(id, r);
        assert!(mapped(addr), "kept");
        std::thread::sleep(super::KEEP_FOR + std::time::Duration::from_millis(50));
        assert!(mapped(addr), "nothing unmaps it by itself");
        let other = fabric::sys::segment(len).unwrap();
        let (r2, id2) = cache.map(&other, 0, ring).unwrap();
        assert!(
            !mapped(addr),
            "the next pairing unmapped the old kept mapping"
        );
        assert!(cache.take(id, r2.len()).is_none());
        cache.keep(id2, r2);
    }

    /// A mapping kept before a fork, and one kept after it, are not a child's; one taken
    /// again for a connection is.
    #[test]
    fn a_forked_child_inherits_no_kept_mapping() {
        let ring = 4096;
        let len = 2 * (crate::proto::BLOCK_OVERHEAD + ring);
        let cache = SegmentCache::default();
        let mut kept = Vec::new();
        for _ in 0..3 {
            let fd = fabric::sys::segment(len).unwrap();
            let (r, id) = cache.map(&fd, 0, ring).unwrap();
            kept.push((r.as_ptr() as usize, id, r.len()));
            cache.keep(id, r);
            if kept.len() == 1 {
                cache.before_fork();
            }
        }
        let (addr, id, len) = kept[2];
        assert!(mapped(addr));
        assert!(crate::sys::in_forked_child(|| kept
            .iter()
            .all(|k| !mapped(k.0))));
        let taken = cache.take(id, len).unwrap();
        assert!(crate::sys::in_forked_child(|| mapped(addr)));
        drop(taken);
    }
}
