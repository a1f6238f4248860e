//! Segment reuse: the segment of a connection whose two ends let go cleanly is kept, zeroed, and
//! given to the next connection between the same two processes, which both still have it
//! mapped (transport's segment cache): no new memfd, no new mapping, no page faults on pages
//! they touched before. Called by the liveness side (a connection reclaimed, a process gone)
//! and by pairing (`take_segment`).
//!
//! What makes it safe (docs/HOST-SERVICE.md, *Segment reuse*): a segment is kept only when
//! both ends' own processes said with their `Close` that they wrote their last into it and that
//! no other process of theirs holds the end (no fork with it, no pick-up after exec), and no
//! `Hold` ever gave it to another process; then the only processes that map it are the two that
//! get it again. It is zeroed (pages written with zeros or freed, never mapped or read)
//! before it is handed out, so the new connection starts from the fresh segment's state. A
//! process that lies about its `Close` can only disturb its own next connection with the same
//! peer, which it can write anyway. Kept segments are bounded per pair and in all, and go when
//! either process's service connection does.

use super::*;

/// Segments kept for one pair of processes.
const PER_PAIR: usize = 16;
/// Segments kept in all.
const IN_ALL: usize = 64;
/// Bytes of a kept segment's pages written with zeros in place rather than freed (the first
/// pages of both blocks, and what a request and an answer of a few KiB touch).
const ZEROED_IN_PLACE: u64 = 64 << 10;

/// A closed connection's segment, kept for the same two processes.
pub(super) struct Pooled {
    /// The two processes, the smaller pid first (either may be the next client).
    pair: (u32, u32),
    segment: OwnedFd,
    bytes: u64,
    /// Zeroed since its connection closed: ready to be handed out.
    zeroed: bool,
}

fn pair_of(pids: (u32, u32)) -> (u32, u32) {
    (pids.0.min(pids.1), pids.0.max(pids.1))
}

/// Zero segment `fd` of `bytes` as a fresh one reads. The pages its last connection touched
/// are written with zeros in place, up to `ZEROED_IN_PLACE` bytes (the processes keep them
/// mapped, and the next connection faults on none of them); beyond that they are freed (a hole:
/// zeros, and memory given back, which a connection that moved a lot would otherwise keep).
fn zero(fd: RawFd, bytes: u64) -> io::Result<()> {
    let mut kept = 0;
    let mut at = 0;
    while let Some((start, end)) = sys::next_data(fd, at)? {
        let end = end.min(bytes);
        if end <= start {
            break;
        }
        let len = end - start;
        if kept + len <= ZEROED_IN_PLACE {
            sys::write_zeros(fd, start, len)?;
            kept += len;
        } else {
            sys::punch(fd, start, len)?;
        }
        at = end;
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
    /// next connection (zeroed after this turn's replies, `zero_pooled`). Not if a reply still
    /// waiting in a client's outbox carries it.
    pub(super) fn keep(&mut self, pids: (u32, u32), segment: Rc<OwnedFd>, bytes: u64) {
        let Ok(segment) = Rc::try_unwrap(segment) else {
            return;
        };
        let pair = pair_of(pids);
        if pair.0 == 0 {
            return;
        }
        self.pool.push(Pooled {
            pair,
            segment,
            bytes,
            zeroed: false,
        });
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

    /// A zeroed segment of `bytes` kept for the processes `pids`, if there is one.
    pub(super) fn reuse(&mut self, bytes: u64, pids: (u32, u32)) -> Option<OwnedFd> {
        let pair = pair_of(pids);
        let i = self
            .pool
            .iter()
            .rposition(|p| p.pair == pair && p.bytes == bytes && p.zeroed)?;
        self.counters.reused += 1;
        Some(self.pool.remove(i).segment)
    }

    /// Zero the segments kept since the last turn (after its replies: off the pairing's path).
    pub(super) fn zero_pooled(&mut self) {
        let mut failed = Vec::new();
        for (i, p) in self.pool.iter_mut().enumerate().filter(|(_, p)| !p.zeroed) {
            match zero(p.segment.as_raw_fd(), p.bytes) {
                Ok(()) => p.zeroed = true,
                Err(_) => failed.push(i),
            }
        }
        for i in failed.into_iter().rev() {
            discard(self.pool.remove(i));
        }
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
