//! Segment reuse: the segment (a range of the pair's arena) of a connection whose two ends let go
//! cleanly is kept, its headers zeroed, and given to the next connection between the same two
//! processes in the same open generation, which both still have it mapped (transport's segment
//! cache, by the arena's identity and the range's offset): no new memfd, no new mapping, no page faults on pages
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
//! their generation closes (`arena`: either process forked, or its service connection went).

use super::arena::pair_of;
use super::*;

/// Segments kept for one pair of processes.
const PER_PAIR: usize = 16;
/// Segments kept in all.
const IN_ALL: usize = 64;
/// Bytes at the start of each block whose pages a kept segment keeps (its header and the ring's
/// first bytes: what requests and answers of a few KiB touch); the rest of the ring is freed.
const BLOCK_KEPT: u64 = 64 << 10;

/// A closed connection's range, kept for the same two processes.
pub(super) struct Pooled {
    /// The two processes, the smaller pid first (either may be the next client).
    pair: (u32, u32),
    arena: u64,
    offset: u64,
    bytes: u64,
}

/// Make the segment at `at` of arena `fd`, `bytes` long, start as a fresh one: both endpoint
/// headers (the words below `RING_START` of each block, in the shared page) written with zeros
/// (the cursors, flags, holders and counters every end starts from; the pages stay where they
/// are, so the processes that keep them mapped fault on none), in one write from the segment's
/// start to the second header's end (the first ring's bytes between them with it). The rings
/// are left as their last connection wrote them: the ring protocol never takes a frame a ring
/// held before for a new one (docs/PROTOCOL.md §2: the first frame of a stream is announced by
/// the producer counter, in the zeroed header, and each later one by a header whose slot its
/// sender marked first). Only each ring's pages beyond its block's first `BLOCK_KEPT` bytes are
/// freed (a hole), so that a kept segment holds little memory after a connection that moved a
/// lot.
fn zero(fd: RawFd, at: u64, bytes: u64) -> io::Result<()> {
    sys::write_zeros(fd, at, (SECOND_BLOCK + RING_START).min(bytes))?;
    let ring = segment_ring(bytes);
    // Each block's ring pages past the shared page: the second block's right after it, the
    // first's in the segment's last pages.
    for start in ring_pages(ring) {
        let (from, end) = (at + start + BLOCK_KEPT - BLOCK_OVERHEAD, at + start + ring);
        if from < end && sys::next_data(fd, from)?.is_some_and(|(data, _)| data < end) {
            sys::punch(fd, from, end - from)?;
        }
    }
    Ok(())
}

impl Service {
    /// The connection between the processes `pids` on range `offset..offset + bytes` of
    /// `arena` closed cleanly: keep the range for their next connection, its headers zeroed
    /// now; freed instead when the arena's generation is closed (it takes no new connection).
    pub(super) fn keep(&mut self, pids: (u32, u32), arena: u64, offset: u64, bytes: u64) {
        let pair = pair_of(pids);
        let fd = self.arenas.get(&arena).map(|a| a.fd.as_raw_fd());
        // Zeroed now (two pages written, two looks for pages to free: microseconds), so that
        // an accept read in the same turn as the close takes it: under load most are.
        let kept = pair.0 != 0
            && self.arena_open(arena)
            && fd.is_some_and(|fd| zero(fd, offset, bytes).is_ok());
        if !kept {
            return self.free_range(arena, offset, bytes, true);
        }
        self.pool.push(Pooled {
            pair,
            arena,
            offset,
            bytes,
        });
        // The oldest go first: of this pair beyond its share, then of all beyond the bound.
        if self.pool.iter().filter(|p| p.pair == pair).count() > PER_PAIR {
            if let Some(i) = self.pool.iter().position(|p| p.pair == pair) {
                let p = self.pool.remove(i);
                self.free_range(p.arena, p.offset, p.bytes, true);
            }
        }
        if self.pool.len() > IN_ALL {
            let p = self.pool.remove(0);
            self.free_range(p.arena, p.offset, p.bytes, true);
        }
    }

    /// A range of `bytes` kept for the processes `pids`, if there is one: (arena, offset).
    pub(super) fn reuse(&mut self, bytes: u64, pids: (u32, u32)) -> Option<(u64, u64)> {
        let pair = pair_of(pids);
        let i = self
            .pool
            .iter()
            .rposition(|p| p.pair == pair && p.bytes == bytes)?;
        self.counters.reused += 1;
        let p = self.pool.remove(i);
        Some((p.arena, p.offset))
    }

    /// Arena `arena` closed: the ranges kept in it go (a closed generation's ranges are never
    /// given to a new connection).
    pub(super) fn forget_pooled_in(&mut self, arena: u64) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pool)
            .into_iter()
            .partition(|p| p.arena == arena);
        self.pool = kept;
        for p in gone {
            self.free_range(p.arena, p.offset, p.bytes, true);
        }
    }
}
