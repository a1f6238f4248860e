//! The send path: `send`, the lock-free common `try_send`, `send_file`, frame placement
//! against the credits, the copy out (CPU or DMA), and publishing to the peer. Called by the
//! shim's write hooks; it never writes outside the peer's ring or beyond the credits it saw.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::{Duration, Instant};

use ntbdrv::{BusAddr, Completion, DmaDesc};

use super::block::{
    atomic_u32_at, payload_at, ring_at, CR_CLOSED, CR_TALLY, FLAG_RST, RX_FLAGS, ST_SHUT_WR,
};
use super::cursors::TxPos;
use super::failover;
use super::ringsync;
use super::wait::{Deadline, Wait};
use super::{Connection, Counter, IoError, Tenancy};
use crate::proto::{FrameHeader, FrameWrite, Placement, ProtoError, FRAME_HDR};
use crate::{sys, CompletionMode};

/// At most this many lines of a frame after its header's are handed to the shared cache by
/// `try_send` (`Connection::demote_lines`): a reply of up to about 1 KiB whole.
const DEMOTED_LINES: usize = 16;

impl Connection {
    /// Send `bufs` (gather). Blocking sends return once every byte is in the ring; non-blocking
    /// ones send what fits (EAGAIN if nothing).
    pub fn send(
        &self,
        bufs: &[&[u8]],
        nonblock: bool,
        timeout: Option<Duration>,
    ) -> Result<usize, IoError> {
        self.claim_tx_view();
        if self.fo.tx_off() {
            return self.send_switched(bufs, nonblock, timeout);
        }
        let mut moved = false;
        let r = self.send_ring(bufs, nonblock, timeout, &mut moved);
        if !moved {
            return r;
        }
        // The ring failed under this send: the rest goes over TCP (see `failover`).
        let sent = r?;
        let rest = failover::skip(bufs, sent);
        match self.send_switched(&rest, nonblock, timeout) {
            Ok(n) => Ok(sent.saturating_add(n)),
            Err(_) if sent > 0 => Ok(sent),
            Err(e) => Err(e),
        }
    }

    /// Send into the ring; sets `moved` (with the sent count so far) when the ring failed and
    /// this side left it.
    fn send_ring(
        &self,
        bufs: &[&[u8]],
        nonblock: bool,
        timeout: Option<Duration>,
        moved: &mut bool,
    ) -> Result<usize, IoError> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let mut deadline = Deadline::new(timeout);
        let _g = self.tx_lock.lock();
        if self.fo.tx_off() {
            // A reader left the ring for us between our check and the lock.
            *moved = true;
            return Ok(0);
        }
        let TxPos { mut tail, mut seq } = self.tx_pos();
        let (mut bi, mut bo) = (0usize, 0usize);
        let mut sent = 0usize;
        // Woken, but still no room: has the peer died? (See `dead_peer`.)
        let mut woke_in_vain = false;
        // Since when this send waits for credits (the progress timeout of `failover`).
        let mut stalled: Option<Instant> = None;
        let result = loop {
            if let Some(e) = self.send_blocked() {
                break if sent > 0 { Ok(sent) } else { Err(e) };
            }
            let want = total.saturating_sub(sent) as u64;
            let place = match self.place(tail, want) {
                Ok(p) => p,
                Err(e) => break Err(self.protocol_error("send", e)),
            };
            let Some(p) = place else {
                // A full ring whose reader has gone never drains: fail as TCP does once the
                // peer's reset arrives, instead of waiting (or spinning) for ever.
                if let Some(e) = self.reader_gone(!nonblock) {
                    break if sent > 0 { Ok(sent) } else { Err(e) };
                }
                let since = *stalled.get_or_insert_with(Instant::now);
                if self.switch_due(Some(since)) {
                    match self.leave_ring(tail) {
                        Ok(()) => {
                            *moved = true;
                            break Ok(sent);
                        }
                        Err(e) => break if sent > 0 { Ok(sent) } else { Err(e) },
                    }
                }
                if sent > 0 && nonblock {
                    break Ok(sent);
                }
                if nonblock {
                    break Err(IoError::WouldBlock);
                }
                if woke_in_vain {
                    if let Some(e) = self.dead_peer() {
                        break if sent > 0 { Ok(sent) } else { Err(e) };
                    }
                }
                woke_in_vain = true;
                match self.wait(false, deadline.at()) {
                    Wait::Ready => continue,
                    Wait::TimedOut => {
                        break if sent > 0 {
                            Ok(sent)
                        } else {
                            Err(IoError::TimedOut)
                        }
                    }
                    Wait::Interrupted => {
                        break if sent > 0 {
                            Ok(sent)
                        } else {
                            Err(IoError::Interrupted)
                        }
                    }
                }
            };
            woke_in_vain = false;
            stalled = None;
            (tail, seq) = self.put_frame(&p, seq, bufs, &mut bi, &mut bo);
            sent = sent.saturating_add(p.len as usize);
            if sent == total {
                break Ok(sent);
            }
        };
        if sent > 0 {
            self.count(Counter::TxBytes, sent as u64);
            self.note_sent();
        }
        result
    }

    /// The common send, all or nothing and never waiting: `buf` whole in one frame, if the
    /// credits we last saw leave room for it, no other thread is sending, and nothing stops
    /// sends (shutdown, reset, a closed reader). `None`: nothing was sent; [`Connection::send`]
    /// does the rest (waits, errors, several frames). No locked instruction besides the send
    /// lock's.
    #[inline]
    pub fn try_send(&self, buf: &[u8]) -> Option<usize> {
        let want = buf.len() as u64;
        // A DMA copy, a pad frame before the ring's end: the general path.
        if want == 0
            || want > self.tx_ring.max_payload()
            || buf.len() >= self.settings.dma_threshold
        {
            return None;
        }
        let _g = self.tx_lock.try_lock_biased()?;
        // Sending on TCP (failover): the general path, which carries it there. Under the lock,
        // so a switch made by a send in flight is seen.
        if self.fo.tx_off() || self.send_blocked().is_some() {
            return None;
        }
        let TxPos { tail, seq } = self.tx_pos();
        // The credits we last saw, and only if they leave no room, the receiver's counter.
        // Inside our reach (`Ring::min_reach` and up); at its end, the general path pads.
        let reach = self.cur.tx_reach.load(Relaxed);
        let (pos, new_tail) = match self.tx_ring.place_whole_within(
            tail,
            self.tx_head_seen.load(Relaxed),
            want,
            reach,
        ) {
            Some(p) => p,
            None => self
                .tx_ring
                .place_whole_within(tail, self.credits(tail).ok()?, want, reach)?,
        };
        let h = FrameHeader {
            len: want as u32,
            flags: 0,
            seq,
        };
        // A reply (our first send since a read) to a peer on another CPU, which likely spins on
        // this header: written line by line, the header's last (the payload from its second
        // line on, the next slot's mark, then the payload's head, which shares the header's
        // line, and the header), so that each line's stores come back to back and the line the
        // peer watches is taken from it only at the end (64 B round trip p99 −15 %); and each
        // line, once written, handed to the shared cache (a hint, `cldemote`), so that the
        // peer's misses are served there rather than by a snoop of this core (both: 64 B
        // −20 to −55 ns, 256 B −180 ns). Not in a stream: its next frame's stores would fetch
        // the lines back (64 B writes 38 → 141 ns); nor for a peer on our CPU, which reads them
        // from our caches (benches/results/latency-session16.md).
        let to_waiter = !self.sent_since_read.load(Relaxed) && !self.cur.rx_fast_off.load(Relaxed);
        let dst = payload_at(pos);
        let next = ring_at(self.tx_ring.pos(new_tail));
        let split = if to_waiter {
            self.peer_block.line_rest(dst).min(buf.len())
        } else {
            0
        };
        let (head, rest) = buf.split_at(split);
        // In range: `place` put the frame inside the ring, which the region holds.
        self.peer_block.write(dst.wrapping_add(split), rest).ok()?;
        ringsync::mark_next(&self.peer_block, next);
        if to_waiter {
            // From the first line after the header's to the mark's (the payload's end when the
            // next slot is the ring's start).
            let end = if next > dst {
                next.wrapping_add(FRAME_HDR as usize)
            } else {
                dst.wrapping_add(buf.len())
            };
            self.demote_lines(dst.wrapping_add(self.peer_block.line_rest(dst)), end);
        }
        if !head.is_empty() {
            self.peer_block.write(dst, head).ok()?;
        }
        ringsync::publish_header(&self.peer_block, ring_at(pos), &h);
        if to_waiter {
            self.peer_block.demote(ring_at(pos));
        }
        self.set_tx_pos(TxPos {
            tail: new_tail,
            seq: seq.wrapping_add(1),
        });
        self.publish(new_tail);
        self.count(Counter::CpuCopies, 1);
        self.count(Counter::TxFrames, 1);
        self.count(Counter::TxBytes, want);
        self.note_sent();
        Some(buf.len())
    }

    /// Hand the lines of the peer's block from offset `line` (a line's start) up to `end` to
    /// the shared cache, at most [`DEMOTED_LINES`] of them (see `try_send`).
    #[inline(always)]
    fn demote_lines(&self, mut line: usize, end: usize) {
        for _ in 0..DEMOTED_LINES {
            if line >= end {
                break;
            }
            self.peer_block.demote(line);
            line = line.wrapping_add(ntbdrv::CACHE_LINE);
        }
    }

    /// Copy one placed frame's payload from `bufs` at (`bi`, `bo`), write its headers, publish
    /// it, and return the new producer counter and sequence number.
    #[inline]
    fn put_frame(
        &self,
        p: &Placement,
        seq: u64,
        bufs: &[&[u8]],
        bi: &mut usize,
        bo: &mut usize,
    ) -> (u64, u64) {
        self.copy_out(bufs, bi, bo, payload_at(p.pos), p.len as usize);
        let at = self.commit_frame(&p.write(seq, p.len));
        (at.tail, at.seq)
    }

    /// A frame whose payload is in the peer's ring: write and publish its header, then the pad
    /// frame's before it (a receiver at the pad reaches the frame only through it), record the
    /// new send position, publish it (ringing the peer if it sleeps), count it.
    #[inline]
    fn commit_frame(&self, w: &FrameWrite) -> TxPos {
        let next = ring_at(self.tx_ring.pos(w.tail));
        ringsync::publish_frame(&self.peer_block, ring_at(w.pos), &w.header, Some(next));
        if let Some((pos, h)) = w.pad {
            ringsync::publish_frame(&self.peer_block, ring_at(pos), &h, None);
        }
        let at = TxPos {
            tail: w.tail,
            seq: w.next_seq,
        };
        self.set_tx_pos(at);
        self.publish(w.tail);
        self.count(Counter::TxFrames, 1);
        at
    }

    /// Remember that this process sent since its last read (see `coalesce`): one plain store
    /// per change, not per send.
    #[inline]
    pub(super) fn note_sent(&self) {
        if !self.sent_since_read.load(Relaxed) {
            self.sent_since_read.store(true, Relaxed);
        }
    }

    /// sendfile(2) into the connection: read up to `count` bytes of file `fd` (at `*offset`, or
    /// at its file position) straight into the peer's ring, with no staging copy in our memory.
    /// Returns the bytes sent (0 at end of file); a file error is `Err(Ok(errno))`, a
    /// connection error `Err(Err(IoError))`.
    pub fn send_file(
        &self,
        fd: RawFd,
        offset: Option<&mut i64>,
        count: usize,
        nonblock: bool,
        timeout: Option<Duration>,
    ) -> Result<usize, Result<i32, IoError>> {
        if count == 0 {
            return Ok(0);
        }
        self.claim_tx_view();
        if self.fo.tx_off() {
            return self.send_file_switched(fd, offset, count, nonblock, timeout);
        }
        let mut deadline = Deadline::new(timeout);
        let _g = self.tx_lock.lock();
        if self.fo.tx_off() {
            drop(_g);
            return self.send_file_switched(fd, offset, count, nonblock, timeout);
        }
        let TxPos { mut tail, mut seq } = self.tx_pos();
        let mut off = offset.as_ref().map(|o| **o);
        let mut sent = 0usize;
        let mut woke_in_vain = false;
        let result = loop {
            if let Some(e) = self.send_blocked() {
                break if sent > 0 { Ok(sent) } else { Err(Err(e)) };
            }
            let p = match self
                .credits(tail)
                .and_then(|head| self.place_reaching(tail, head, count.saturating_sub(sent) as u64))
            {
                Ok(Some(p)) => p,
                Ok(None) => {
                    // As in `send`: a full ring whose reader has gone never drains.
                    if let Some(e) = self.reader_gone(!nonblock) {
                        break if sent > 0 { Ok(sent) } else { Err(Err(e)) };
                    }
                    if self.switch_due(None) {
                        // The next call goes over TCP (see `failover`).
                        if let Err(e) = self.leave_ring(tail) {
                            break if sent > 0 { Ok(sent) } else { Err(Err(e)) };
                        }
                        if sent > 0 {
                            break Ok(sent);
                        }
                        drop(_g);
                        return self.send_file_switched(fd, offset, count, nonblock, timeout);
                    }
                    if nonblock || sent > 0 {
                        break if sent > 0 {
                            Ok(sent)
                        } else {
                            Err(Err(IoError::WouldBlock))
                        };
                    }
                    if woke_in_vain {
                        if let Some(e) = self.dead_peer() {
                            break Err(Err(e));
                        }
                    }
                    woke_in_vain = true;
                    match self.wait(false, deadline.at()) {
                        Wait::Ready => continue,
                        Wait::TimedOut => break Err(Err(IoError::TimedOut)),
                        Wait::Interrupted => break Err(Err(IoError::Interrupted)),
                    }
                }
                Err(e) => break Err(Err(self.protocol_error("sendfile", e))),
            };
            woke_in_vain = false;
            let n = match sys::read_into_region(
                fd,
                &self.peer_block,
                payload_at(p.pos),
                p.len as usize,
                off,
            ) {
                Ok(0) => break Ok(sent),
                Ok(n) => n,
                Err(e) => break if sent > 0 { Ok(sent) } else { Err(Ok(e)) },
            };
            // A short read makes a shorter frame: the tail follows the bytes actually read.
            TxPos { tail, seq } = self.commit_frame(&p.write(seq, n as u64));
            sent = sent.saturating_add(n);
            if let Some(o) = off.as_mut() {
                *o = o.saturating_add(n as i64);
            }
            self.count(Counter::CpuCopies, 1);
            if sent == count || n < p.len as usize {
                break Ok(sent);
            }
        };
        if let (Some(o), Some(v)) = (offset, off) {
            *o = v;
        }
        self.count(Counter::TxBytes, sent as u64);
        if sent > 0 {
            self.note_sent();
        }
        result
    }

    /// Place a frame using the credits we last saw; only when they leave no room, read the
    /// receiver's counter again (a cache line the receiver writes: reading it on every send
    /// would cost a cross-core miss per send).
    fn place(&self, tail: u64, want: u64) -> Result<Option<Placement>, ProtoError> {
        let seen = self.tx_head_seen.load(Relaxed);
        // A cached value that does not fit our producer counter (an exec'd image starts from
        // 0; a sibling process may have sent meanwhile) is simply refreshed.
        let reach = self.cur.tx_reach.load(Relaxed);
        if let Ok(Some(p)) = self.tx_ring.place_within(tail, seen, want, reach) {
            if p.len == want.min(self.tx_ring.max_payload()) {
                return Ok(Some(p));
            }
        }
        let head = self.credits(tail)?;
        self.place_reaching(tail, head, want)
    }

    /// Place a frame inside our reach in the peer's ring (`Ring::min_reach` and up) with the credits
    /// `head`; where it does not fit there (a frame larger than the reach, or a receiver that
    /// lags by more than it), grow the reach (`Ring::grow_reach`: twice the block's pages), up
    /// to the whole ring, and place as the ring allows: the ring's memory grows with the
    /// traffic.
    fn place_reaching(
        &self,
        tail: u64,
        head: u64,
        want: u64,
    ) -> Result<Option<Placement>, ProtoError> {
        let reach = self.tx_ring.reach(self.cur.tx_reach.load(Relaxed));
        if reach < self.tx_ring.cap() {
            if let Some(p) = self.tx_ring.place_within(tail, head, want, reach)? {
                return Ok(Some(p));
            }
            self.cur
                .tx_reach
                .store(self.tx_ring.grow_reach(reach), Relaxed);
        }
        self.tx_ring.place(tail, head, want)
    }

    /// The receiver's consumer counter, loaded once and validated against our producer
    /// counter: ahead of it is a protocol error; behind what it returned before, it counts as
    /// what it returned before (credits never go backwards, so a wait for room that was seen
    /// ends).
    pub(super) fn credits(&self, tail: u64) -> Result<u64, ProtoError> {
        ringsync::credits(&self.own_block, tail, &self.tx_head_seen)
    }

    /// Copy `len` bytes of `bufs` (from position bi/bo) into the peer's ring at `at`, by CPU or
    /// by the DMA engine.
    fn copy_out(&self, bufs: &[&[u8]], bi: &mut usize, bo: &mut usize, at: usize, len: usize) {
        let mut done = 0;
        while done < len {
            let Some(buf) = bufs.get(*bi) else { break };
            let src = buf.get(*bo..).unwrap_or_default();
            let n = src.len().min(len.saturating_sub(done));
            let chunk = src.get(..n).unwrap_or_default();
            if !(n >= self.settings.dma_threshold && self.dma_copy(chunk, at.saturating_add(done)))
            {
                let _ = self.peer_block.write(at.saturating_add(done), chunk);
                self.count(Counter::CpuCopies, 1);
            }
            done = done.saturating_add(n);
            *bo = bo.saturating_add(n);
            if *bo >= buf.len() {
                *bi = bi.saturating_add(1);
                *bo = 0;
            }
        }
    }

    /// Copy by DMA into the peer's ring; false if no channel or the transfer failed twice (the
    /// caller then copies by CPU, so no byte is lost). A transfer that fails again on its retry
    /// says the path is bad: our sending direction leaves the ring at its next wait or
    /// readiness check (failover), as after a doorbell that failed.
    fn dma_copy(&self, chunk: &[u8], at: usize) -> bool {
        match self.dma_transfer(chunk, at) {
            Some(true) => true,
            None => false,
            Some(false) => {
                if self.dma_transfer(chunk, at) == Some(true) {
                    return true;
                }
                self.fo.path_failed();
                false
            }
        }
    }

    /// One DMA transfer of `chunk` into the peer's ring at `at`: `None` if there is no channel
    /// to try, else whether it completed.
    fn dma_transfer(&self, chunk: &[u8], at: usize) -> Option<bool> {
        let ch = self.shared.dma()?.lock().ok()?;
        let src = ch.map_host(chunk.as_ptr(), chunk.len()).ok()?;
        let ok = (|| {
            let dst = ch
                .peer_window_addr(
                    self.their_loc.mw,
                    self.their_loc.offset.saturating_add(at as u64),
                )
                .ok()?;
            let mut descs = Vec::with_capacity(chunk.len().div_ceil(1 << 20));
            let mut o = 0usize;
            while o < chunk.len() {
                let n = chunk.len().saturating_sub(o).min(1 << 20);
                descs.push(DmaDesc {
                    src: BusAddr(src.0.saturating_add(o as u64)),
                    dst: BusAddr(dst.0.saturating_add(o as u64)),
                    len: n as u32,
                });
                o = o.saturating_add(n);
            }
            for batch in descs.chunks(64) {
                let how = match self.settings.completion {
                    CompletionMode::Doorbell => Completion::Interrupt,
                    _ => Completion::Poll,
                };
                ch.submit(batch, how == Completion::Interrupt).ok()?;
                ch.wait(how, Some(Duration::from_secs(5))).ok()?;
            }
            Some(())
        })()
        .is_some();
        let _ = ch.unmap_host(src);
        if ok {
            self.count(Counter::DmaCopies, 1);
        } else {
            self.count(Counter::DmaFallbacks, 1);
        }
        Some(ok)
    }

    /// Publish our producer counter to the peer and ring it if it sleeps.
    #[inline]
    fn publish(&self, tail: u64) {
        ringsync::publish_tail(&self.peer_block, tail);
        if ringsync::take_data_arming(&self.own_block) {
            self.ring_peer();
        }
    }

    pub(super) fn ring_peer(&self) {
        let rung = match &self.tenancy {
            Tenancy::Device { dev, .. } | Tenancy::Bridged { dev, .. } => {
                match dev.peer_vector_trigger(self.their_loc.db_bit) {
                    Ok(()) => true,
                    Err(ntbdrv::DoorbellError::LinkDown) => {
                        self.fo.doorbell_failed();
                        false
                    }
                    Err(_) => false,
                }
            }
            Tenancy::Service {
                peer_line,
                peer_tally,
                ..
            } => {
                // Which connection this ring is for, counted where the peer looks.
                if let Some(t) = peer_tally {
                    t.bump(atomic_u32_at(&self.own_block, CR_TALLY).load(Relaxed));
                }
                fabric::sys::ring(peer_line.as_raw_fd())
            }
        };
        if rung {
            self.count(Counter::DoorbellsRung, 1);
        }
    }

    /// A sender woke without room: if the peer is gone (its kernel closed the TCP socket without
    /// the peer closing the connection: it died), no credit will ever come, and the send fails
    /// (ECONNRESET) instead of waiting, or spinning on the socket's readiness, for ever. Asked
    /// only after a wake-up that brought no room, so a sender streaming into a busy receiver
    /// pays no system call.
    fn dead_peer(&self) -> Option<IoError> {
        match self.tcp_gone()? {
            // The peer's half-close while its direction is on TCP: it still reads.
            Ok(()) if self.peer_half_closed() => None,
            r => Some(r.err().unwrap_or(IoError::Reset)),
        }
    }

    /// Why a send cannot proceed, if it cannot.
    #[inline]
    pub(super) fn send_blocked(&self) -> Option<IoError> {
        let st = self.shared_state();
        if st & ST_SHUT_WR != 0 {
            return Some(IoError::ShutDown);
        }
        if atomic_u32_at(&self.own_block, RX_FLAGS).load(Acquire) & FLAG_RST != 0 {
            return Some(IoError::Reset);
        }
        if atomic_u32_at(&self.own_block, CR_CLOSED).load(Acquire) != 0 {
            return Some(IoError::BrokenPipe);
        }
        None
    }
}
