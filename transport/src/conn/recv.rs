//! The receive path: `recv` from the ring (or the TCP socket while switched), read coalescing,
//! credit return, and FIONREAD. Called by the shim's read hooks. Owns: the consumer side of our
//! ring (the credit policy itself is `proto::credit_return`'s). Whatever the peer writes, it must
//! never panic, read outside our ring, or return credits for bytes it has not consumed.

use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::{Duration, Instant};

use super::block::{
    atomic_u32_at, atomic_u64_at, ring_at, CR_CLOSED, CR_PEER_CPU, FLAG_FIN, FLAG_RST, L_RX_HEAD,
    L_RX_OFF, L_RX_SEQ, RX_FLAGS, RX_TAIL,
};
use super::cursors::RxPos;
use super::failover;
use super::ringsync;
use super::wait::{Deadline, Wait};
use super::{Connection, Counter, IoError, RecvFlags};
use crate::proto::{Frame, ProtoError};
use crate::CompletionMode;

/// Iterations of `recv`'s loop without a byte copied, a data frame consumed or a wait before
/// the peer is judged to be stalling us (a legitimate stream needs at most three: a pad frame,
/// a re-check after FIN, a re-check after the TCP socket ended).
const MAX_IDLE_TURNS: u32 = 16;

/// Longest spin of [`Connection::try_recv`] for a frame that is not there yet, before the
/// general path's wait (which spins again, up to the configured spin, then sleeps): a few of a
/// request/response peer's turns.
const FAST_SPIN: Duration = Duration::from_micros(2);

impl Connection {
    /// Bytes ready to read now (FIONREAD), counting whole published frames. A bad frame ends
    /// the count (the next `recv` reports it); the walk is bounded by the ring's size, since
    /// every frame moves the position forward and the tail is read once.
    pub fn readable_bytes(&self) -> usize {
        if !(self.fo.rx_off() || self.fo.spoke()) {
            let ring = self.ring_bytes(u64::MAX);
            // The records of a peer that switched count too: looked for on the TCP socket
            // when the ring holds nothing (they may be all there is), else as readiness looks
            // (now and then, and after an event on the socket).
            let _ = if ring == 0 {
                self.tcp_gone()
            } else {
                self.tcp_gone_lately()
            };
            if !self.fo.spoke() {
                return ring;
            }
        }
        self.readable_switched()
    }

    /// Bytes of the whole published frames below producer counter `limit` (see
    /// `readable_bytes`).
    pub(super) fn ring_bytes(&self, limit: u64) -> usize {
        let _g = self.rx_lock.lock();
        let RxPos {
            mut head,
            off,
            mut seq,
        } = self.rx_pos();
        let tail = atomic_u64_at(&self.own_block, RX_TAIL)
            .load(Acquire)
            .min(limit);
        let mut total = 0u64;
        let mut skip = off;
        while head < tail {
            match self.frame_at(head, tail, seq) {
                Ok(Frame::Pad { size }) if skip == 0 => head = head.saturating_add(size),
                Ok(Frame::Data { len, size }) => {
                    // The frame's length is the peer's word; the offset is ours.
                    let Some(n) = len.checked_sub(skip).filter(|&n| n > 0) else {
                        break;
                    };
                    total = total.saturating_add(n);
                    skip = 0;
                    head = head.saturating_add(size);
                    seq = seq.wrapping_add(1);
                }
                _ => break,
            }
        }
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    /// The peer's producer counter, loaded once: never behind what it published before. (That
    /// it is at most a ring ahead of our consumer counter is checked with the frame it
    /// announces, `check_frame`; a tail not ahead of it announces nothing.)
    pub(super) fn rx_tail(&self) -> Result<u64, ProtoError> {
        ringsync::rx_tail(&self.own_block, &self.cur.rx_tail_seen, self.rx_ring.cap())
    }

    /// The frame at consumer counter `head`, below producer counter `tail` (loaded before),
    /// validated.
    pub(super) fn frame_at(&self, head: u64, tail: u64, seq: u64) -> Result<Frame, ProtoError> {
        let h = ringsync::header(&self.own_block, ring_at(self.rx_ring.pos(head)));
        self.rx_ring.check_frame(head, tail, &h, seq)
    }

    /// The frame at consumer counter `head` if its header's sequence word publishes it (the
    /// expected number `seq`, `proto::published`), validated: what a receiver reads without
    /// the producer counter, whose line the sender writes after every frame.
    #[inline(always)]
    pub(super) fn published_frame(&self, head: u64, seq: u64) -> Option<Result<Frame, ProtoError>> {
        let h = ringsync::published_header(&self.own_block, ring_at(self.rx_ring.pos(head)), seq)?;
        Some(self.rx_ring.check_published(head, &h, seq))
    }

    pub(super) fn peer_flags(&self) -> u32 {
        ringsync::peer_flags(&self.own_block)
    }

    /// Receive into `bufs` (scatter), TCP-style: returns 0 at EOF.
    pub fn recv(
        &self,
        bufs: &mut [&mut [u8]],
        flags: RecvFlags,
        timeout: Option<Duration>,
    ) -> Result<usize, IoError> {
        let first = self.recv_once(bufs, flags, timeout);
        if !flags.waitall || flags.peek {
            return first;
        }
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        // MSG_WAITALL: the ring fills the whole request itself; over TCP (a failover) each
        // record comes on its own, and a switch can end a read early: go on until the request
        // is full, the stream ends, or an error or the timeout comes (the bytes so far are
        // returned then, the error with the next call, as the kernel does).
        let Ok(mut got) = first else {
            return first;
        };
        if got == 0 || got >= want {
            return Ok(got);
        }
        // A timeout too long for the clock is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        while got < want {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            let mut rest = failover::skip_mut(bufs, got);
            match self.recv_once(&mut rest, flags, left) {
                Ok(n) if n > 0 => got = got.saturating_add(n),
                _ => break,
            }
        }
        Ok(got)
    }

    /// The common read, before any other work: bytes of the data frames already published at
    /// our consumer counter into `buf`, with no other thread reading. `None`: nothing was
    /// consumed (the peer's next frame is not there yet, another thread reads, the direction is
    /// on TCP, or anything the general path must judge: a pad frame after data, a frame that
    /// fails its checks, FIN or RST), and [`Connection::recv`] does the call from the same
    /// position. A `blocking` read that finds nothing first spins briefly on the next frame's
    /// header ([`FAST_SPIN`]), as the general path's wait would first, when that wait would spin
    /// (not in doorbell mode, not on the peer's CPU, not before the peer's end is made). The
    /// position and the credits are committed once, at the end, exactly as `recv_ring`
    /// commits them; a read that coalesces (`coalesce`) commits before it waits for the next
    /// frame. Every value read from the ring is checked by the same steps as `recv_ring`'s
    /// (`published_frame`, `Ring::read_step`, the bounds-checked copy), and the turns without
    /// progress are bounded as there ([`MAX_IDLE_TURNS`]).
    pub fn try_recv(&self, buf: &mut [u8], blocking: bool) -> Option<usize> {
        let want = buf.len();
        if want == 0 || self.fo.rx_off() || self.cur.rx_fast_off.load(Relaxed) {
            return None;
        }
        let _g = self.rx_lock.try_lock_biased()?;
        let start = self.rx_pos();
        let RxPos {
            mut head,
            mut off,
            mut seq,
        } = start;
        let mut copied = 0usize;
        let mut frames = 0u64;
        let mut credit = false;
        let mut spun = false;
        let mut coalescing = None;
        let mut idle = 0u32;
        loop {
            idle = idle.saturating_add(1);
            if idle > MAX_IDLE_TURNS {
                break;
            }
            let frame = match self.published_frame(head, seq) {
                Some(Ok(f)) => f,
                // Not published yet: wait a little for it (a blocking read that found
                // nothing), or wait for the next frame of a stream (`coalesce`), or stop.
                None => {
                    if copied == 0 {
                        if blocking && !spun && self.spin_for_frame(head, seq) {
                            spun = true;
                            continue;
                        }
                        return None;
                    }
                    // As `recv_ring` does: a read that did not wait and found a short stream
                    // returns the credits and waits a little for the next frame.
                    if copied < want && blocking && !spun {
                        if credit {
                            self.return_credits(head, off, seq, false);
                            credit = false;
                        }
                        if self.coalesce(head, &mut coalescing) {
                            self.count(Counter::Coalesced, 1);
                            idle = 0;
                            continue;
                        }
                    }
                    break;
                }
                // A bad frame, or one of the sender's next epoch: the general path's to judge.
                Some(Err(_)) => break,
            };
            let at = RxPos { head, off, seq };
            let room = want.saturating_sub(copied);
            let Ok(step) = self.rx_ring.read_step(at, frame, room as u64) else {
                break;
            };
            if let Frame::Pad { size } = frame {
                self.note_pad(head, size);
            }
            // At most `room`: `n` fits a usize.
            let n = step.n as usize;
            let Some(dst) = buf.get_mut(copied..copied.saturating_add(n)) else {
                break;
            };
            if self.own_block.read(ring_at(step.from), dst).is_err() {
                break;
            }
            if n > 0 {
                idle = 0;
            }
            copied = copied.saturating_add(n);
            if step.passed_frame(&at) {
                credit = true;
                if let Frame::Data { .. } = frame {
                    frames = frames.saturating_add(1);
                }
            }
            RxPos { head, off, seq } = step.next;
            if copied == want {
                break;
            }
        }
        if copied == 0 {
            // Nothing for the caller (pads at most, not written back: only a read that copied
            // returns credits before it coalesces): the general path starts again from `start`.
            return None;
        }
        if credit || off != start.off || head != start.head {
            self.return_credits(head, off, seq, false);
        }
        self.count(Counter::RxFrames, frames);
        self.count(Counter::RxBytes, copied as u64);
        if copied > 0 {
            self.count(Counter::Reads, 1);
        }
        if self.sent_since_read.load(Relaxed) {
            self.sent_since_read.store(false, Relaxed);
        }
        Some(copied)
    }

    /// `try_recv`'s short wait: spin on the header of the frame at `head` (sequence number
    /// `seq`) for at most [`FAST_SPIN`] (or the configured spin, if shorter), when the general
    /// path's wait would spin too. True if the frame was published meanwhile; false at once if
    /// the peer set a flag (FIN, RST: the general path reports them).
    fn spin_for_frame(&self, head: u64, seq: u64) -> bool {
        if self.settings.completion == CompletionMode::Doorbell
            || atomic_u32_at(&self.own_block, CR_PEER_CPU).load(Relaxed) == 0
        {
            return false;
        }
        if self.shares_cpu_with_peer() {
            // The peer needs our CPU to write: the general path yields to it (`wait`), and
            // the next reads go there at once (until a wait or a read without one clears it).
            self.cur.rx_fast_off.store(true, Relaxed);
            return false;
        }
        let budget = self.settings.spin().min(FAST_SPIN);
        let at = ring_at(self.rx_ring.pos(head));
        let t0 = Instant::now();
        let mut n = 0u32;
        let published = loop {
            // The line after the header's, on every turn: a frame of more than 48 bytes of
            // payload ends there, and the writer stores to it (the payload's tail, then the next
            // slot's mark: `ringsync::publish_frame`, `Connection::try_send`) back to back
            // before it writes the header's line (the payload's head, then the header), so the
            // line is fetched as soon as it is written, not after the header is seen
            // (benches/results/latency-session14.md: 64 B round trip −17 %, p99 level; with the
            // writer's old store order the same prefetch cost p99 +17–37 %).
            self.own_block.prefetch(at.wrapping_add(64));
            if ringsync::is_published(&self.own_block, at, seq) {
                // Again: a fetch made before the writer's last store to that line is stale.
                self.own_block.prefetch(at.wrapping_add(64));
                break true;
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && (self.peer_flags() != 0 || t0.elapsed() >= budget) {
                break false;
            }
            std::hint::spin_loop();
        };
        self.count(Counter::Polls, u64::from(n));
        published
    }

    /// One receive: from the ring, or from the TCP socket while this direction is switched.
    fn recv_once(
        &self,
        bufs: &mut [&mut [u8]],
        flags: RecvFlags,
        timeout: Option<Duration>,
    ) -> Result<usize, IoError> {
        if self.fo.rx_off() {
            return self.recv_switched(bufs, flags, timeout);
        }
        match self.recv_ring(bufs, flags, timeout, u64::MAX) {
            // The ring stopped at a switch of the peer's (see `failover`).
            Ok(0) if self.fo.rx_off() => self.recv_switched(bufs, flags, timeout),
            r => r,
        }
    }

    /// Receive from the ring, reading no further than producer counter `limit` (a drain stops
    /// at the peer's END); stops with `Ok(0)` and `fo.rx_off` set where the peer switched.
    pub(super) fn recv_ring(
        &self,
        bufs: &mut [&mut [u8]],
        flags: RecvFlags,
        timeout: Option<Duration>,
        limit: u64,
    ) -> Result<usize, IoError> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return Ok(0);
        }
        let mut deadline = Deadline::new(timeout);
        let _g = self.rx_lock.lock();
        let start = self.rx_pos();
        let RxPos {
            mut head,
            mut off,
            mut seq,
        } = start;
        let (mut bi, mut bo) = (0usize, 0usize); // position in bufs
        let mut copied = 0usize;
        let mut credit = false;
        let mut waited = false;
        // When read coalescing began (see `coalesce`), if it did.
        let mut coalescing = None;
        // Turns of the loop since the last byte, data frame or wait (see `MAX_IDLE_TURNS`).
        let mut idle = 0u32;
        let result = loop {
            idle = idle.saturating_add(1);
            if idle > MAX_IDLE_TURNS {
                break Err(self.protocol_error("recv", ProtoError::NoProgress { turns: idle }));
            }
            // The next frame by its own header (no drain: that stops at a producer counter),
            // else by the producer counter.
            let by_header = if limit == u64::MAX {
                self.published_frame(head, seq)
            } else {
                None
            };
            let (tail, by_header) = match by_header {
                Some(f) => (head.saturating_add(1), Some(f)),
                None => match self.rx_tail() {
                    Ok(t) => (t.min(limit), None),
                    Err(e) => break Err(self.protocol_error("recv", e)),
                },
            };
            if head < tail {
                let frame = match by_header.unwrap_or_else(|| self.frame_at(head, tail, seq)) {
                    Ok(f) => f,
                    // A frame of the sender's next epoch: it came back to the ring after TCP
                    // bytes we have not read (see `switchover`).
                    Err(ProtoError::BadSequence { expected, got })
                        if crate::switchover::is_later_epoch(expected, got) =>
                    {
                        self.fo.engage_rx();
                        break Ok(copied);
                    }
                    Err(e) => break Err(self.protocol_error("recv", e)),
                };
                let at = RxPos { head, off, seq };
                if let Frame::Pad { size } = frame {
                    self.note_pad(head, size);
                    match self.rx_ring.read_step(at, frame, 0) {
                        Ok(step) => {
                            head = step.next.head;
                            credit |= !flags.peek;
                            continue;
                        }
                        Err(e) => break Err(self.protocol_error("recv", e)),
                    }
                }
                // Copy out of the frame buffer by buffer: each step is the protocol's
                // (`Ring::read_step`), which checks our offset against the frame's length.
                let mut failed = None;
                let mut passed = false;
                while bi < bufs.len() {
                    let Some(buf) = bufs.get_mut(bi) else { break };
                    let whole = buf.len();
                    let dst = buf.get_mut(bo..).unwrap_or_default();
                    let at = RxPos { head, off, seq };
                    let step = match self.rx_ring.read_step(at, frame, dst.len() as u64) {
                        Ok(step) => step,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    };
                    // At most the buffer's room: `n` fits a usize.
                    let n = step.n as usize;
                    let dst = dst.get_mut(..n).unwrap_or_default();
                    if self.own_block.read(ring_at(step.from), dst).is_err() {
                        let len = match frame {
                            Frame::Data { len, .. } => len as u32,
                            Frame::Pad { .. } => 0,
                        };
                        failed = Some(ProtoError::BadFrame {
                            pos: self.rx_ring.pos(head),
                            len,
                            flags: 0,
                        });
                        break;
                    }
                    // At most the frame's and the buffers' lengths.
                    bo = bo.saturating_add(n);
                    copied = copied.saturating_add(n);
                    if n > 0 {
                        idle = 0;
                    }
                    if bo >= whole {
                        bi = bi.saturating_add(1);
                        bo = 0;
                    }
                    passed = step.passed_frame(&at);
                    RxPos { head, off, seq } = step.next;
                    if passed {
                        break;
                    }
                }
                if let Some(e) = failed {
                    break Err(self.protocol_error("recv", e));
                }
                if passed {
                    idle = 0;
                    credit = true;
                    self.count(Counter::RxFrames, 1);
                }
                if copied == want {
                    break Ok(copied);
                }
                continue;
            }
            if limit != u64::MAX {
                // Draining up to an END: what is below it is all there is on the ring.
                break if copied > 0 || head >= limit {
                    Ok(copied)
                } else {
                    Err(IoError::WouldBlock)
                };
            }
            if copied > 0 && !flags.waitall {
                if copied < want && !waited && !flags.peek && !flags.nonblock {
                    if credit {
                        // The sender may be waiting for room while we wait for its next frame.
                        self.return_credits(head, off, seq, false);
                        credit = false;
                    }
                    if self.coalesce(head, &mut coalescing) {
                        self.count(Counter::Coalesced, 1);
                        continue;
                    }
                }
                break Ok(copied);
            }
            let pf = self.peer_flags();
            if pf & FLAG_RST != 0 {
                break if copied > 0 {
                    Ok(copied)
                } else {
                    Err(IoError::Reset)
                };
            }
            if pf & FLAG_FIN != 0 {
                // FIN is set after the last tail: re-check the tail before reporting EOF (the
                // next turn validates it; it cannot move back).
                if ringsync::data_after(&self.own_block, head) {
                    continue;
                }
                break Ok(copied);
            }
            if self.fo.spoke() {
                // The peer wrote on the TCP socket: it switched (`failover`).
                self.fo.engage_rx();
                break Ok(copied);
            }
            // Has the peer died? (Its kernel closed the TCP socket.) A system call: asked after
            // a wait, and on every 64th empty non-blocking read, not on the hot path; an end
            // already seen (readiness reported it) is answered without one.
            let look = waited
                || self.tcp_ended()
                || (flags.nonblock && self.empty_reads.fetch_add(1, Relaxed) % 64 == 63);
            let gone = look.then(|| self.tcp_gone()).flatten();
            if self.fo.spoke() {
                self.fo.engage_rx();
                break Ok(copied);
            }
            if let Some(e) = gone {
                if atomic_u64_at(&self.own_block, RX_TAIL).load(Acquire) > head {
                    continue;
                }
                break if copied > 0 { Ok(copied) } else { e.map(|_| 0) };
            }
            if flags.nonblock {
                break if copied > 0 {
                    Ok(copied)
                } else {
                    Err(IoError::WouldBlock)
                };
            }
            if !flags.peek && credit {
                // Return credits before sleeping, so a sender blocked on a full ring can go on.
                self.return_credits(head, off, seq, true);
                credit = false;
            }
            waited = true;
            idle = 0;
            let until = deadline.at();
            match self.wait(true, until) {
                // SO_RCVTIMEO holds even if every wake-up is in vain.
                Wait::Ready if until.is_some_and(|d| Instant::now() >= d) => {
                    break if copied > 0 {
                        Ok(copied)
                    } else {
                        Err(IoError::TimedOut)
                    };
                }
                Wait::Ready => {}
                Wait::TimedOut => {
                    break if copied > 0 {
                        Ok(copied)
                    } else {
                        Err(IoError::TimedOut)
                    }
                }
                Wait::Interrupted => {
                    break if copied > 0 {
                        Ok(copied)
                    } else {
                        Err(IoError::Interrupted)
                    }
                }
            }
        };
        if !flags.peek {
            if credit || off != start.off || head != start.head {
                self.return_credits(head, off, seq, false);
            }
            self.count(Counter::RxBytes, copied as u64);
            if copied > 0 {
                self.count(Counter::Reads, 1);
                if self.sent_since_read.load(Relaxed) {
                    self.sent_since_read.store(false, Relaxed);
                }
                if !waited && self.cur.rx_fast_off.load(Relaxed) {
                    // Data was there: the fast path would have taken it.
                    self.cur.rx_fast_off.store(false, Relaxed);
                }
            }
        }
        result
    }

    /// Read coalescing: wait a little for the next frame instead of returning a short read.
    ///
    /// A blocking read that found data waiting (it did not have to wait), on a connection this
    /// process has not sent on since its last read, is reading a stream: a sender writing
    /// small messages back to back. Returning each frame at once makes the application pay its
    /// per-read cost per message: iperf2's server posts a report per read, and at `-l 64` it
    /// stalled for milliseconds on its own report queue while the sender waited for credits.
    /// TCP gives such a reader big reads. So wait up to `rx_coalesce` for the next frame, and
    /// go on while frames keep coming within that gap, for at most 50 gaps in all (`since`
    /// keeps when the first wait began). A request/response exchange (we sent since our last
    /// read), a peer on our CPU, doorbell mode (no spinning) and FIN/RST end it at once.
    /// Returns true when another frame has arrived.
    fn coalesce(&self, head: u64, since: &mut Option<Instant>) -> bool {
        let gap = self.settings.rx_coalesce();
        if gap.is_zero()
            || self.settings.completion == CompletionMode::Doorbell
            || self.sent_since_read.load(Relaxed)
        {
            return false;
        }
        let now = Instant::now();
        match *since {
            Some(t0) if now.duration_since(t0) >= gap.saturating_mul(50) => return false,
            Some(_) => {}
            None => {
                // Spinning on the CPU the sender needs would only hold it back.
                if self.shares_cpu_with_peer() {
                    return false;
                }
                *since = Some(now);
            }
        }
        let mut n = 0u32;
        loop {
            // SYNC POINT (ring data): as in `recv`; the caller reads the frame after it.
            if atomic_u64_at(&self.own_block, RX_TAIL).load(Acquire) > head {
                return true;
            }
            if self.peer_flags() != 0 {
                return false;
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(16) && now.elapsed() >= gap {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Record what we consumed, and return the credits to the sender when enough have
    /// gathered (a quarter of the ring), when the sender waits for them, or when `force`d
    /// (before we sleep or arm, so a sender is never left waiting on credits we hold).
    #[inline]
    pub(super) fn return_credits(&self, head: u64, off: u64, seq: u64, force: bool) {
        self.cur.rx_head.store(head, Relaxed);
        self.cur.rx_off.store(off, Relaxed);
        self.cur.rx_seq.store(seq, Relaxed);
        // The copy for the other processes holding the connection (see `rx_pos`).
        atomic_u64_at(&self.own_block, L_RX_HEAD).store(head, Relaxed);
        atomic_u64_at(&self.own_block, L_RX_OFF).store(off, Relaxed);
        atomic_u64_at(&self.own_block, L_RX_SEQ).store(seq, Relaxed);
        self.flush_credits(force);
    }

    /// A pad frame of `size` bytes at consumer counter `head`: if it ends the lap, the peer's
    /// reach ends there (or the ring does), which our credit policy follows
    /// (`Ring::credit_ring`); one that ends at the hole's end is inside the lap.
    #[inline]
    pub(super) fn note_pad(&self, head: u64, size: u64) {
        let pos = self.rx_ring.pos(head);
        if pos.saturating_add(size) >= self.rx_ring.cap() {
            self.cur.rx_reach.store(pos, Relaxed);
        }
    }

    pub(super) fn flush_credits(&self, force: bool) {
        let head = self.cur.rx_head.load(Relaxed);
        // How far the peer's frames reached in this lap (a hint for the credit policy).
        let pos = self.rx_ring.pos(head);
        let mut seen = self.cur.rx_reach.load(Relaxed);
        if pos > seen {
            self.cur.rx_reach.store(pos, Relaxed);
            seen = pos;
        }
        let cap = self.rx_ring.credit_ring(seen);
        if ringsync::flush_credits(
            &self.peer_block,
            &self.own_block,
            head,
            &self.cur.rx_returned,
            cap,
            force,
        ) {
            self.ring_peer();
        }
    }

    /// The peer broke the protocol (`why`, found by `op`): reset the connection.
    pub(super) fn protocol_error(&self, op: &str, why: ProtoError) -> IoError {
        self.shared.counters.protocol_errors.fetch_add(1, Relaxed);
        let _ = self.shared.counters.first_protocol_error.set(format!(
            "{op} {:?} {} -> {}: {why}",
            self.role,
            self.local.to_std(),
            self.peer.to_std()
        ));
        atomic_u32_at(&self.peer_block, CR_CLOSED).store(1, SeqCst);
        atomic_u32_at(&self.peer_block, RX_FLAGS).fetch_or(FLAG_RST, SeqCst);
        self.ring_peer();
        IoError::Protocol
    }
}
