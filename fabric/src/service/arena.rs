//! Arenas: the memory of the connections between two processes. An arena is one sealed memfd
//! per (client pid, server pid, generation), of a fixed sparse size; each connection's segment
//! is a page-aligned range of it, so the service holds one descriptor and the kernel one shmem
//! inode per pair of processes instead of one per connection (issue 15). Called by pairing (a
//! range for a new connection), by liveness (a range freed), by `pool` (a range kept) and by
//! the request side (`Forked`, `Hold`: a generation closed).
//!
//! Who may see an arena (docs/HOST-SERVICE.md, *Arenas*): a process gets one only for a
//! connection it pairs or holds, and a holder gets the arena of the connection it proved, which
//! holds the pair's other connections of that generation too. So a generation takes new
//! connections only while nobody outside the pair may have it: it is closed when either
//! process forks (`Request::Forked`, sent before the forking process's next request, so before
//! any connection it could pair afterwards), when a `Hold` hands it out, and when either
//! process's service connection goes (exit, exec). A closed generation's ranges are never
//! handed out again (a freed one is a hole until the arena goes), and its descriptor is closed
//! once no connection and no kept range is left in it.

use super::*;

/// Bytes of every arena: sparse (a page costs memory only once written), and far more than the
/// window space lets the live connections between two processes use; an arena that fills up
/// anyway (fragments, kept ranges) is closed and the pair's next connections go into a new one.
/// Smaller under a file size limit (`RLIMIT_FSIZE`) below it.
pub const ARENA_BYTES: u64 = 64 << 30;

/// Fresh arenas made ahead (each with its first page given memory): a new pair's first
/// pairing takes one instead of making a memfd.
const SPARE_ARENAS: usize = 2;
/// Ranges carved ahead in an arena a turn paired in, of the size its last pairing used.
const READY_RANGES: usize = 4;

/// One pair's generation: a memfd and the ranges of it in use.
pub(super) struct Arena {
    pub(super) fd: Rc<OwnedFd>,
    /// The memfd's device and inode (what `Again` names it by).
    pub(super) ident: (u64, u64),
    /// The two processes, the smaller pid first.
    pair: (u32, u32),
    /// Takes new connections (the pair's open generation).
    open: bool,
    /// Free ranges below `top` as (offset, bytes), by offset, none adjacent to another.
    free: Vec<(u64, u64)>,
    /// Where the never used part of the arena starts, and the arena's bytes.
    top: u64,
    bytes: u64,
    /// Ranges handed out and not freed: live connections' and kept ones (`pool`).
    used: usize,
    /// Ranges carved ahead, each of `ready_bytes`, their first page given memory.
    ready: Vec<u64>,
    ready_bytes: u64,
}

/// The two processes of a pair, the smaller pid first (either may be the next client).
pub(super) fn pair_of(pids: (u32, u32)) -> (u32, u32) {
    (pids.0.min(pids.1), pids.0.max(pids.1))
}

/// A sealed arena whose first page, the first range's shared page (both endpoint headers and
/// both rings' first bytes), is given memory now.
fn fresh_arena() -> io::Result<OwnedFd> {
    // Within the file size limit, where one is set (a larger memfd would raise SIGXFSZ).
    let bytes = ARENA_BYTES.min(sys::file_size_limit() / 4096 * 4096);
    let fd = sys::segment(bytes)?;
    sys::prepare_pages(fd.as_raw_fd(), &[0])?;
    Ok(fd)
}

impl Arena {
    fn new(fd: OwnedFd, pair: (u32, u32), open: bool) -> io::Result<Arena> {
        let id = ntbdrv::Region::segment_identity(&fd)?;
        Ok(Arena {
            fd: Rc::new(fd),
            ident: (id.dev, id.inode),
            bytes: id.size,
            pair,
            open,
            free: Vec::new(),
            top: 0,
            used: 0,
            ready: Vec::new(),
            ready_bytes: 0,
        })
    }

    /// A range of `bytes` (a whole number of pages): carved ahead, else a new one (`carve`).
    /// The flag says whether its first page has memory already.
    fn take(&mut self, bytes: u64) -> Option<(u64, bool)> {
        match self.ready.pop() {
            Some(off) if self.ready_bytes == bytes => Some((off, true)),
            Some(off) => {
                self.ready.push(off);
                self.carve(bytes)
            }
            None => self.carve(bytes),
        }
    }

    /// A new range of `bytes`: the first free one that fits, else from the top; `None` when
    /// the arena is full. The flag says whether its first page has memory already.
    fn carve(&mut self, bytes: u64) -> Option<(u64, bool)> {
        if let Some(i) = self.free.iter().position(|f| f.1 >= bytes) {
            let (off, len) = self.free[i];
            if len == bytes {
                self.free.remove(i);
            } else {
                self.free[i] = (off + bytes, len - bytes);
            }
            return Some((off, false));
        }
        let end = self.top.checked_add(bytes).filter(|&e| e <= self.bytes)?;
        let off = self.top;
        self.top = end;
        Some((off, off == 0))
    }

    /// Range `offset..offset + bytes` is free again (its pages freed already).
    fn give_back(&mut self, offset: u64, bytes: u64) {
        let i = self.free.partition_point(|f| f.0 < offset);
        self.free.insert(i, (offset, bytes));
        // Merged with its neighbours, the one after it first.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free.remove(i + 1).1;
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free.remove(i).1;
        }
    }
}

impl Service {
    /// A range of `bytes` for a connection between the processes `pids`: one of their closed
    /// connections' (`pool`, with its arena's identity: both processes kept their mappings of
    /// it, `Reply::Again`), else a new range of their open generation's arena (a new arena if
    /// they have none, or it is full). Returns the arena, the offset and, for a kept range, the
    /// identity to name it by.
    pub(super) fn take_segment(
        &mut self,
        bytes: u64,
        pids: (u32, u32),
    ) -> io::Result<(u64, u64, Option<ntbdrv::SegmentIdentity>)> {
        self.spare_bytes = bytes;
        if let Some((arena, offset)) = self.reuse(bytes, pids) {
            let a = &self.arenas[&arena];
            let id = ntbdrv::SegmentIdentity {
                dev: a.ident.0,
                inode: a.ident.1,
                offset,
                size: bytes,
            };
            return Ok((arena, offset, Some(id)));
        }
        let pair = pair_of(pids);
        for _ in 0..2 {
            let arena = match self.open_arenas.get(&pair) {
                Some(&a) => a,
                None => self.new_arena(pair)?,
            };
            let Some(a) = self.arenas.get_mut(&arena) else {
                break;
            };
            if let Some((offset, prepared)) = a.take(bytes) {
                if !prepared {
                    if let Err(e) = sys::prepare_pages(a.fd.as_raw_fd(), &[offset]) {
                        a.give_back(offset, bytes);
                        return Err(e);
                    }
                }
                a.used += 1;
                if !self.busy.contains(&arena) {
                    self.busy.push(arena);
                }
                return Ok((arena, offset, None));
            }
            // Full: this generation takes no more, the pair's next range is in a new one.
            self.close_arena(arena);
        }
        Err(io::Error::from(io::ErrorKind::OutOfMemory))
    }

    /// A new arena for `pair`, its open generation (a pair with an unknown pid, 0, gets one of
    /// its own that takes no other connection).
    fn new_arena(&mut self, pair: (u32, u32)) -> io::Result<u64> {
        let fd = match self.spare_arenas.pop() {
            Some(fd) => fd,
            None => fresh_arena()?,
        };
        self.arena_made = true;
        let open = pair.0 != 0;
        let id = self.id();
        self.arenas.insert(id, Arena::new(fd, pair, open)?);
        if open {
            self.open_arenas.insert(pair, id);
        }
        Ok(id)
    }

    /// After a turn's replies: ranges carved ahead in the open arenas the turn paired in (of
    /// the last pairing's size, their first page given memory), and fresh arenas if the turn
    /// made one, so that a pairing only takes what is ready.
    pub(super) fn make_spares(&mut self) {
        let bytes = self.spare_bytes;
        for arena in std::mem::take(&mut self.busy) {
            let Some(a) = self.arenas.get_mut(&arena).filter(|a| a.open) else {
                continue;
            };
            if a.ready_bytes != bytes {
                let stale = std::mem::take(&mut a.ready);
                let old = std::mem::replace(&mut a.ready_bytes, bytes);
                for off in stale {
                    let _ = sys::punch(a.fd.as_raw_fd(), off, old);
                    a.give_back(off, old);
                }
            }
            while a.ready.len() < READY_RANGES {
                let Some((off, prepared)) = a.carve(bytes) else {
                    break;
                };
                if !prepared && sys::prepare_pages(a.fd.as_raw_fd(), &[off]).is_err() {
                    a.give_back(off, bytes);
                    break;
                }
                a.ready.push(off);
            }
        }
        if std::mem::take(&mut self.arena_made) {
            while self.spare_arenas.len() < SPARE_ARENAS {
                match fresh_arena() {
                    Ok(fd) => self.spare_arenas.push(fd),
                    Err(_) => break,
                }
            }
        }
    }

    /// The range `offset..offset + bytes` of `arena` goes: its connection closed and it is not
    /// kept, or a kept one is let go of. `clean`: both ends' processes made their last write
    /// into it and nobody else maps it (`Conn::clean`): its pages are freed now (the mappings
    /// the processes kept of it hold no memory), and it is free for the same open generation's
    /// later connections. Any other range is left as it is, and never given out again: a
    /// process the service never heard of may still use it (a child that inherited the end
    /// and never talked to the service, with the peer), as a closed connection's memfd lived on
    /// in its mappings before arenas; its pages go with the arena's last mapping. The arena
    /// goes with its last range once closed.
    pub(super) fn free_range(&mut self, arena: u64, offset: u64, bytes: u64, clean: bool) {
        let Some(a) = self.arenas.get_mut(&arena) else {
            return;
        };
        a.used = a.used.saturating_sub(1);
        if clean {
            let _ = sys::punch(a.fd.as_raw_fd(), offset, bytes);
            if a.open {
                a.give_back(offset, bytes);
            }
        }
        if !a.open && a.used == 0 {
            self.arenas.remove(&arena);
        }
    }

    /// Is `arena` the open generation of its pair?
    pub(super) fn arena_open(&self, arena: u64) -> bool {
        self.arenas.get(&arena).is_some_and(|a| a.open)
    }

    /// `arena` takes no new connection from now on (its descriptor was handed to a holder, or
    /// it is full): its kept and ready ranges go, and the arena too once no connection is left.
    pub(super) fn close_arena(&mut self, arena: u64) {
        let Some(a) = self.arenas.get_mut(&arena) else {
            return;
        };
        if a.open {
            a.open = false;
            if self.open_arenas.get(&a.pair) == Some(&arena) {
                self.open_arenas.remove(&a.pair);
            }
        }
        for off in std::mem::take(&mut a.ready) {
            let _ = sys::punch(a.fd.as_raw_fd(), off, a.ready_bytes);
        }
        a.free.clear();
        self.forget_pooled_in(arena);
        if self.arenas.get(&arena).is_some_and(|a| a.used == 0) {
            self.arenas.remove(&arena);
        }
    }

    /// Every open generation of process `pid` closes: it forked (a child may hold some of
    /// their ranges' mappings, and with a `Hold` the arena), or its service connection went
    /// (exit, exec), or it died.
    pub(super) fn close_generations(&mut self, pid: u32) {
        let open: Vec<u64> = (self.open_arenas.iter())
            .filter(|((a, b), _)| *a == pid || *b == pid)
            .map(|(_, &id)| id)
            .collect();
        for arena in open {
            self.close_arena(arena);
        }
    }

    /// The arenas the service holds (one descriptor each, spares aside).
    pub fn arenas(&self) -> usize {
        self.arenas.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges are page runs that never overlap: a freed one is taken again first-fit, merged
    /// with free neighbours on both sides, and the top is used only when nothing free fits.
    #[test]
    fn ranges_are_carved_first_fit_and_merged_when_given_back() {
        let mut a = Arena::new(sys::segment(1 << 20).unwrap(), (1, 2), true).unwrap();
        let p = 4096;
        let r: Vec<u64> = (0..4).map(|_| a.carve(3 * p).unwrap().0).collect();
        assert_eq!(r, [0, 3 * p, 6 * p, 9 * p]);
        a.give_back(3 * p, 3 * p);
        a.give_back(9 * p, 3 * p);
        // A smaller range takes the first free one's start, the rest of it stays free.
        assert_eq!(a.carve(p), Some((3 * p, false)));
        assert_eq!(a.free, [(4 * p, 2 * p), (9 * p, 3 * p)]);
        // Given back between two free ranges: one range of all three.
        a.give_back(6 * p, 3 * p);
        assert_eq!(a.free, [(4 * p, 8 * p)]);
        a.give_back(3 * p, p);
        assert_eq!(a.free, [(3 * p, 9 * p)]);
        // Too large for any free range: from the top.
        assert_eq!(a.carve(10 * p), Some((12 * p, false)));
        // Past the arena's bytes: none.
        assert_eq!(a.carve(1 << 20), None);
        // Carved ahead ranges go first, for their size only.
        a.ready_bytes = 2 * p;
        a.ready.push(40 * p);
        assert_eq!(a.take(p), Some((3 * p, false)));
        assert_eq!(a.take(2 * p), Some((40 * p, true)));
    }
}
