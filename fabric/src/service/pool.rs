//! Segment reuse: the segment of a connection whose two ends let go cleanly is kept, its headers
//! zeroed, and given to the next connection between the same two processes, which both still have it
//! mapped (transport's segment cache): no new memfd, no new mapping, no page faults on pages
//! they touched before. Called by the liveness side (a connection reclaimed, a process gone)
//! and by pairing (`take_segment`).
//!
//! What makes it safe (docs/HOST-SERVICE.md, *Segment reuse*): a segment is kept only when
//! both ends' own processes said with their `Close` that they wrote their last into it and that
//! no other process of theirs holds the end (no fork with it, no pick-up after exec), and no
//! `Hold` ever gave it to another process; then the only processes that map it are the two that
//! get it again. Its endpoint headers are zeroed (written with zeros, never mapped or read)
//! before it is handed out, so the new connection starts from a fresh segment's state; what
//! its rings still hold is never taken for a frame (docs/PROTOCOL.md §2). A
//! process that lies about its `Close` can only disturb its own next connection with the same
//! peer, which it can write anyway. Kept segments are bounded per pair and in all, and go when
//! either process's service connection does.

use super::*;

/// Segments kept for one pair of processes.
const PER_PAIR: usize = 16;
/// Segments kept in all.
const IN_ALL: usize = 64;
/// Bytes at the start of each block whose pages a kept segment keeps (its header and the ring's
/// first bytes: what requests and answers of a few KiB touch); the rest of the ring is freed.
const BLOCK_KEPT: u64 = 64 << 10;

/// A closed connection's segment, kept for the same two processes.
pub(super) struct Pooled {
    /// The two processes, the smaller pid first (either may be the next client).
    pair: (u32, u32),
    segment: OwnedFd,
    bytes: u64,
}

fn pair_of(pids: (u32, u32)) -> (u32, u32) {
    (pids.0.min(pids.1), pids.0.max(pids.1))
}

/// Make segment `fd` of `bytes` start as a fresh one: both endpoint headers (the words below
/// `RING_START` of each block, in the shared page) written with zeros (the cursors, flags,
/// holders and counters every end starts from; the pages stay where they are, so the processes
/// that keep them mapped fault on none), in one write from the segment's start to the second
/// header's end (the first ring's bytes between them with it). The rings are left as their last
/// connection wrote them: the ring protocol never takes a frame a ring held before for a new
/// one (docs/PROTOCOL.md §2: the first frame of a stream is announced by the producer counter,
/// in the zeroed header, and each later one by a header whose slot its sender marked first).
/// Only each ring's pages beyond its block's first `BLOCK_KEPT` bytes are freed (a hole), so
/// that a kept segment holds little memory after a connection that moved a lot.
fn zero(fd: RawFd, bytes: u64) -> io::Result<()> {
    sys::write_zeros(fd, 0, (SECOND_BLOCK + RING_START).min(bytes))?;
    let ring = segment_ring(bytes);
    // Each block's ring pages past the shared page: the second block's right after it, the
    // first's in the segment's last pages.
    for start in ring_pages(ring) {
        let (from, end) = (start + BLOCK_KEPT - BLOCK_OVERHEAD, start + ring);
        if from < end && sys::next_data(fd, from)?.is_some_and(|(data, _)| data < end) {
            sys::punch(fd, from, end - from)?;
        }
    }
    Ok(())
}

/// A kept segment that goes: its pages are freed now (the processes that kept it mapped keep
/// no memory of it), and the descriptor closed.
fn discard(p: Pooled) {
    let _ = sys::punch(p.segment.as_raw_fd(), 0, p.bytes);
}

impl Service {
    /// The connection between the processes `pids` closed cleanly: keep its segment for their
    /// next connection, its headers zeroed now. Not if a reply still waiting in a client's
    /// outbox carries it.
    pub(super) fn keep(&mut self, pids: (u32, u32), segment: Rc<OwnedFd>, bytes: u64) {
        let Ok(segment) = Rc::try_unwrap(segment) else {
            return;
        };
        let pair = pair_of(pids);
        if pair.0 == 0 {
            return;
        }
        // Zeroed now (two pages written, two looks for pages to free: microseconds), so that
        // an accept read in the same turn as the close takes it: under load most are.
        let p = Pooled {
            pair,
            segment,
            bytes,
        };
        if zero(p.segment.as_raw_fd(), bytes).is_err() {
            return discard(p);
        }
        self.pool.push(p);
        // The oldest go first: of this pair beyond its share, then of all beyond the bound.
        if self.pool.iter().filter(|p| p.pair == pair).count() > PER_PAIR {
            if let Some(i) = self.pool.iter().position(|p| p.pair == pair) {
                discard(self.pool.remove(i));
            }
        }
        if self.pool.len() > IN_ALL {
            discard(self.pool.remove(0));
        }
    }

    /// A segment of `bytes` kept for the processes `pids`, if there is one.
    pub(super) fn reuse(&mut self, bytes: u64, pids: (u32, u32)) -> Option<OwnedFd> {
        let pair = pair_of(pids);
        let i = self
            .pool
            .iter()
            .rposition(|p| p.pair == pair && p.bytes == bytes)?;
        self.counters.reused += 1;
        Some(self.pool.remove(i).segment)
    }

    /// Process `pid` is gone, or its service connection is (an exec drops its mappings): the
    /// segments kept for it go.
    pub(super) fn forget_pooled(&mut self, pid: u32) {
        let (gone, kept) = std::mem::take(&mut self.pool)
            .into_iter()
            .partition(|p| p.pair.0 == pid || p.pair.1 == pid);
        self.pool = kept;
        gone.into_iter().for_each(discard);
    }
}
