//! Mappings of segments kept after their connections closed: the fabric service gives a closed
//! connection's segment, zeroed, to the next connection between the same two processes
//! (docs/HOST-SERVICE.md, *Segment reuse*), and a process that kept its mapping takes it again
//! instead of mapping the segment anew (no mmap, no munmap, no page faults on the pages it
//! touched before). Called by the service link when a pairing arrives and when a connection it
//! paired goes; it never hands a mapping to a connection whose segment is not that mapping's
//! file.
//!
//! A segment is known by its file's identity (device and inode, one fstat of the descriptor
//! the service sends with every pairing): while a mapping of it is kept its inode cannot be
//! another file's. A kept mapping is not inherited by a forked child (`MADV_DONTFORK`: a child
//! could write into the later connections that use it), so a child forgets the entries it
//! copied without unmapping them (they are not mapped there). At most [`KEPT`] mappings; the
//! cache's lock is only tried, never waited for (a fork can leave it held in the child).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use ntbdrv::{Region, SegmentIdentity};

/// Mappings kept (each a whole segment: two endpoint headers and two rings; their pages beyond
/// the first ones are freed by the service when it keeps the segment).
const KEPT: usize = 16;

#[derive(Default)]
pub(crate) struct SegmentCache {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// The process that made these mappings (a forked child has none of them).
    pid: u32,
    maps: VecDeque<(SegmentIdentity, Region)>,
}

impl Kept {
    /// This process's entries (a forked child forgets what it copied: not mapped there, so
    /// not to be unmapped either).
    fn own(&mut self) -> &mut VecDeque<(SegmentIdentity, Region)> {
        let me = ntbdrv::process::pid();
        if self.pid != me {
            for m in self.maps.drain(..) {
                std::mem::forget(m);
            }
            self.pid = me;
        }
        &mut self.maps
    }
}

impl SegmentCache {
    /// Segment `fd`, both blocks of rings of `ring_bytes`, mapped: the mapping this process
    /// kept of it when the service gave it to us before (a connection with the same peer
    /// process that closed), else a new one.
    pub(crate) fn map(
        &self,
        fd: &OwnedFd,
        ring_bytes: u64,
    ) -> Option<(ntbdrv::Region, ntbdrv::SegmentIdentity)> {
        let block = crate::proto::BLOCK_OVERHEAD.checked_add(ring_bytes)?;
        let len = usize::try_from(block.checked_mul(2)?).ok()?;
        let id = ntbdrv::Region::segment_identity(fd).ok()?;
        if let Some(r) = self.take(id, len) {
            return Some((r, id));
        }
        let r = ntbdrv::Region::map_segment(fd, len).ok()?;
        Some((r, id))
    }

    /// The kept mapping of segment `id`, `len` bytes long, if there is one (taken out: it is a
    /// connection's now, and a child forked from here on inherits it).
    pub(crate) fn take(&self, id: SegmentIdentity, len: usize) -> Option<Region> {
        let mut k = self.inner.try_lock().ok()?;
        let maps = k.own();
        let i = maps.iter().position(|(i, r)| *i == id && r.len() == len)?;
        let (_, r) = maps.remove(i)?;
        drop(k);
        r.inherit_on_fork(true).ok()?;
        Some(r)
    }

    /// Keep the mapping `whole` of segment `id`, whose connection this process let go of for
    /// good (after its last write into it). Unmapped instead if it cannot be kept.
    pub(crate) fn keep(&self, id: SegmentIdentity, whole: Region) {
        let Ok(mut k) = self.inner.try_lock() else {
            return;
        };
        let maps = k.own();
        if maps.iter().any(|(i, _)| *i == id) || whole.inherit_on_fork(false).is_err() {
            return;
        }
        maps.push_back((id, whole));
        if maps.len() > KEPT {
            maps.pop_front();
        }
    }
}
