//! Failover: a connection whose NTB path fails goes on over its own TCP socket, and comes back.
//!
//! Called by `Connection`'s send, receive and readiness paths, only when the connection is off
//! the ring (one relaxed load decides) or when a wait on the ring gives a reason to look
//! (`switch_due`). The protocol — what is sent at a switch and what a received record means —
//! is the pure `switchover` module; this is its I/O: detection, the TCP socket, the bytes
//! taken from it, fail-back with back-off, and the counters. It never writes a byte on the TCP
//! socket of a connection that was not upgraded (both ends are pcisock), so a plain peer never
//! sees a record.
//!
//! Detection (each end, for the direction it sends): the device's link is down or its
//! generation moved since this end joined the ring; a doorbell failed, or a DMA transfer
//! failed again on its retry; the peer spoke on the TCP socket (it switched); or a wait for credits saw no progress for `PCISOCK_FAILOVER_MS` while the peer's
//! TCP socket stayed open. A peer whose TCP socket ended died: that is EOF or ECONNRESET as
//! before, never a failover. Under `PCISOCK_STRICT=1` a connection resets instead.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ntbdrv::NtbDevice;

use super::block::{
    atomic_u32_at, atomic_u64_at, CR_CLOSED, CR_RX_SLEEPING, FLAG_FIN, FLAG_RST, L_SOCK_INODE,
    L_STATE, L_TX_SENDER, L_TX_SEQ, L_TX_TAIL, L_TX_TCP_SENT, RX_FLAGS, ST_ON_TCP, ST_SHUT_RD,
    ST_SHUT_WR,
};
use super::cursors::{RxPos, TxPos};
use super::{Connection, Counter, IoError, Readiness, RecvFlags, Tenancy};
use crate::proto::ProtoError;
use crate::switchover::{
    back_follows, is_later_epoch, next_epoch, shut_ahead, Reader, RxEvent, RxMode, RxSwitch, Step,
    TxSwitch, MAX_RECORD, RECORD_HDR,
};
use crate::sys;

/// First time a connection stays on TCP before it tries the ring again.
const HOLD_MIN: Duration = Duration::from_millis(100);
/// Longest (a link that keeps flapping).
const HOLD_MAX: Duration = Duration::from_secs(3);
/// A fail-over within this long of a fail-back doubles the hold (back-off).
const FLAP_WINDOW: Duration = Duration::from_secs(2);
/// Most bytes taken from the TCP socket at a time.
const TCP_CHUNK: usize = 256 << 10;
/// Fewest bytes taken from the TCP socket at a time: the room of the first read of a
/// connection's TCP spell, doubled each time a read fills its room, up to `TCP_CHUNK`
/// (`tcp::read_room`). A connection that takes a request in off the socket (an unreached one
/// of a burst) reads into a few kilobytes, not a chunk: 1,600 of them reading into 256 KiB each
/// at once left an nginx worker's heap 60 MB larger for good (the freed chunks scattered
/// through it), where a stream on TCP grows to the chunk within a few reads.
const TCP_FIRST: usize = 4 << 10;
/// How long a drain waits for ring bytes the END says were published (a bridge that dropped
/// them never delivers them: then the connection is reset, never silently short).
const DRAIN_PATIENCE: Duration = Duration::from_secs(1);
/// How long one look at the device's link serves every connection of the process.
const LINK_LOOK_EVERY: Duration = Duration::from_millis(1);

/// The device's link as this process last asked it. Asking is a register read on hardware (and
/// a store as well on the emulated device), and readiness asks for every connection at every
/// check of an epoll set: one answer serves them all for [`LINK_LOOK_EVERY`].
#[derive(Default)]
pub(crate) struct LinkLook {
    /// When the link was last asked: nanoseconds since the process's first look, plus one
    /// (0: never).
    at: AtomicU64,
    /// The answer: bit 32 up, bits 0..32 the link generation.
    word: AtomicU64,
}

impl LinkLook {
    /// `Some(generation)` if the link is up: asked now if `fresh` (a wait: the cache is left
    /// alone, so a waiting sender writes nothing a reader shares), else the last look if it is
    /// recent. Process-local words, Relaxed: a thread may pair a new time with the answer
    /// before, which is one look (at most 1 ms) old — a hint either way, as the link can
    /// change right after any look.
    fn get(&self, dev: &dyn NtbDevice, fresh: bool) -> Option<u32> {
        if fresh {
            let s = dev.link_state();
            return s.up.then_some(s.generation);
        }
        static FIRST: OnceLock<Instant> = OnceLock::new();
        let now = (FIRST.get_or_init(Instant::now).elapsed().as_nanos() as u64).saturating_add(1);
        let at = self.at.load(Relaxed);
        let word = if at != 0 && now.saturating_sub(at) < LINK_LOOK_EVERY.as_nanos() as u64 {
            self.word.load(Relaxed)
        } else {
            let s = dev.link_state();
            let w = u64::from(s.up) << 32 | u64::from(s.generation);
            self.word.store(w, Relaxed);
            self.at.store(now, Relaxed);
            w
        };
        (word >> 32 != 0).then_some(word as u32)
    }
}

/// A connection's failover state. The first two words are all the fast path reads.
#[derive(Default)]
pub(super) struct Failover {
    /// Our receiving direction is off the plain ring: `recv` goes through `recv_switched`.
    rx_off: AtomicBool,
    /// Our sending direction is on TCP: `send` goes through `send_switched`.
    tx_off: AtomicBool,
    /// The peer wrote on the TCP socket (a record): look at it.
    spoke: AtomicBool,
    /// A receiver saw a reason to leave the ring while a sender held the send lock.
    tx_want: AtomicBool,
    /// Strict mode tripped: the connection is reset.
    broken: AtomicBool,
    /// This process's pid (0: not known yet); set again in a forked child (`adopt`).
    me: AtomicU32,
    /// The link generation when we (re)joined the ring.
    link_gen: AtomicU32,
    /// Bumped by whatever changes the connection off the ring's counters (a switch, records
    /// taken in, an event on the TCP socket): edge-triggered epoll sees it in `activity`.
    events: AtomicU32,
    rx: Lazy<RxSide>,
    tx: Lazy<TxSide>,
}

/// One side of the failover state, made at its first use ([`side`]): most connections never
/// leave the ring, and the two sides were 200 of the state's 232 bytes, carried by every
/// connection (benches/results/heap-session14.md).
type Lazy<T> = Mutex<Option<Box<T>>>;

/// A locked side of the failover state, made if it was not.
pub(super) struct Side<'a, T>(std::sync::MutexGuard<'a, Option<Box<T>>>);

// A `Side` is only made by `side`, which fills it, and nothing empties it while it is held:
// no peer's bytes reach this `expect`.
#[allow(clippy::expect_used)]
impl<T> std::ops::Deref for Side<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0
            .as_deref()
            .expect("a Side is made by `side`, which fills it")
    }
}

impl<T: Default> std::ops::DerefMut for Side<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

/// Lock a side of the failover state, making it if it is not made yet.
fn side<T: Default>(m: &Lazy<T>) -> Side<'_, T> {
    let mut g = lock(m);
    if g.is_none() {
        *g = Some(Box::default());
    }
    Side(g)
}

/// Read a side of the failover state without making it (a side never made reads as new).
fn peek<T: Default, R>(m: &Lazy<T>, f: impl FnOnce(&T) -> R) -> R {
    match lock(m).as_deref() {
        Some(t) => f(t),
        None => f(&T::default()),
    }
}

#[derive(Default)]
struct RxSide {
    sw: Option<RxSwitch>,
    reader: Reader,
    /// Bytes taken from the TCP socket and not parsed yet.
    raw: Vec<u8>,
    /// Stream bytes parsed out of DATA records, not read by the application yet.
    deliver: VecDeque<u8>,
    /// The TCP socket reached its end (0) or failed.
    end: Option<Result<(), IoError>>,
}

impl RxSide {
    /// Back on the ring with nothing left of the TCP spell: give the buffers' memory back. A
    /// connection that took records in once (a failover, a late start) kept up to a chunk
    /// (`TCP_CHUNK`, 256 KiB) of each for the rest of its life: 1,600 late-started connections of
    /// a burst held 415 MB of an nginx worker's heap. Only on the ring, so a stream on TCP does
    /// not allocate its chunk anew for every read.
    fn shed(&mut self) {
        let on_ring = self.sw.as_ref().is_none_or(|s| s.mode() == RxMode::Ring);
        if on_ring && self.raw.is_empty() && self.deliver.is_empty() {
            self.raw = Vec::new();
            self.deliver = VecDeque::new();
        }
    }
}

#[derive(Default)]
struct TxSide {
    sw: TxSwitch,
    /// On TCP since.
    since: Option<Instant>,
    /// How long to stay on TCP before trying the ring again.
    hold: Duration,
    /// The last fail-back.
    back_at: Option<Instant>,
}

impl Failover {
    pub(super) fn new(link_gen: u32) -> Failover {
        let f = Failover::default();
        f.link_gen.store(link_gen, Relaxed);
        f
    }

    #[inline]
    pub(super) fn rx_off(&self) -> bool {
        self.rx_off.load(Relaxed)
    }

    #[inline]
    pub(super) fn tx_off(&self) -> bool {
        self.tx_off.load(Relaxed)
    }

    /// The peer wrote on the TCP socket (seen by a peek).
    pub(super) fn peer_spoke(&self) {
        self.spoke.store(true, Relaxed);
    }

    pub(super) fn spoke(&self) -> bool {
        self.spoke.load(Relaxed)
    }

    pub(super) fn engage_rx(&self) {
        self.rx_off.store(true, Relaxed);
    }

    /// In a child after fork: its pid, for `claim_tx_view`.
    pub(super) fn forked(&self, pid: u32) {
        self.me.store(pid, Relaxed);
    }

    fn me(&self) -> u32 {
        match self.me.load(Relaxed) {
            0 => {
                let p = ntbdrv::process::pid();
                self.me.store(p, Relaxed);
                p
            }
            p => p,
        }
    }

    /// Something changed that the ring's counters do not show (see `events`).
    pub(super) fn note_event(&self) {
        self.events.fetch_add(1, Relaxed);
    }

    pub(super) fn events(&self) -> u32 {
        self.events.load(Relaxed)
    }

    /// A doorbell could not be rung because the link is down: our sending direction leaves
    /// the ring at its next wait or readiness check (the caller may hold the send lock).
    pub(super) fn doorbell_failed(&self) {
        self.path_failed();
    }

    /// Something on the path to the peer failed (a doorbell on a link that is down, a DMA
    /// transfer that failed again on its retry): our sending direction leaves the ring at its
    /// next wait or readiness check (the caller may hold the send lock).
    pub(super) fn path_failed(&self) {
        if !self.tx_off() {
            self.tx_want.store(true, Relaxed);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    /// Is this process's view of our sending direction's switch the current one: did it send
    /// or switch last (or nobody yet)? A process holding the connection that does not send (a
    /// parent that only polls while its forked child writes) must not move the direction off
    /// the ring or back: its view (producer counter, bytes sent on TCP) is stale, and an END or
    /// BACK from it would break the stream.
    pub(super) fn tx_view_current(&self) -> bool {
        let who = atomic_u32_at(&self.own_block, L_TX_SENDER).load(Relaxed);
        who == 0 || who == self.fo.me()
    }

    /// Before this process sends: if another process holding the connection sent or switched
    /// last, take its view of our sending direction from the block's LOCAL line (on TCP or
    /// not, bytes sent there since the END, the ring's sequence epoch after its fail-back) and
    /// become the process whose view is current. One load and a compare when nothing changed.
    pub(super) fn claim_tx_view(&self) {
        let me = self.fo.me();
        let sender = atomic_u32_at(&self.own_block, L_TX_SENDER);
        if sender.load(Relaxed) == me {
            return;
        }
        let st = self.shared_state();
        let on_tcp = st & ST_ON_TCP != 0;
        let ours = self.tx_pos();
        // A fail-back moves the sequence to the next epoch without moving the producer
        // counter, so `tx_pos` (which takes the copy only when it is ahead) does not see it.
        let tail = atomic_u64_at(&self.own_block, L_TX_TAIL).load(Relaxed);
        let seq = atomic_u64_at(&self.own_block, L_TX_SEQ).load(Relaxed);
        if tail == ours.tail && is_later_epoch(ours.seq, seq) {
            self.set_tx_pos(TxPos { tail, seq });
        }
        let sent = on_tcp.then(|| atomic_u64_at(&self.own_block, L_TX_TCP_SENT).load(Relaxed));
        // A side never made is a direction that never left the ring, which taking over a
        // view on the ring leaves as it is (`end` counts only on TCP, `leave_ring` sets the
        // hold): it is made only for a view on TCP.
        if on_tcp || lock(&self.fo.tx).is_some() {
            let mut tx = side(&self.fo.tx);
            tx.sw = TxSwitch::taken_over(sent, ours.tail, st & ST_SHUT_WR != 0);
            tx.since = match (on_tcp, tx.since) {
                (true, None) => Some(Instant::now()),
                (true, s) => s,
                (false, _) => None,
            };
            tx.hold = tx.hold.max(HOLD_MIN);
        }
        self.fo.tx_off.store(on_tcp, SeqCst);
        sender.store(me, Relaxed);
    }

    /// Record, for the other processes holding the connection, that this process's view of
    /// the sending direction is current and how many bytes it sent on TCP since the END.
    fn publish_tx_view(&self, sent: Option<u64>) {
        if let Some(n) = sent {
            atomic_u64_at(&self.own_block, L_TX_TCP_SENT).store(n, Relaxed);
        }
        atomic_u32_at(&self.own_block, L_TX_SENDER).store(self.fo.me(), Relaxed);
    }

    /// The device's link as this connection sees it: `Some(generation)` if up; asked now if
    /// `fresh`, else as this process last looked (see `LinkLook`).
    fn link_up(&self, fresh: bool) -> Option<u32> {
        match &self.tenancy {
            Tenancy::Device { dev, .. } | Tenancy::Bridged { dev, .. } => {
                self.shared.link.get(&**dev, fresh)
            }
            // Segments the service handed us are memory of this host: no link to lose.
            Tenancy::Service { .. } => Some(self.fo.link_gen.load(Relaxed)),
        }
    }

    /// Should our sending direction leave the ring? Asked by waits, not by the fast path.
    /// `stalled_since`: when a send began waiting for credits it has not had since.
    pub(super) fn switch_due(&self, stalled_since: Option<Instant>) -> bool {
        if self.fo.tx_off() {
            return false;
        }
        self.fo.tx_want.load(Relaxed) || self.link_moved(true) || self.stalled(stalled_since)
    }

    /// `switch_due` for readiness, which is asked for every connection at every check of a
    /// set: the link as this process last looked at it (at most `LINK_LOOK_EVERY` ago). A
    /// wait, which a sender on a dead link would spend writing into it, asks afresh.
    pub(super) fn switch_due_lately(&self) -> bool {
        !self.fo.tx_off() && (self.fo.tx_want.load(Relaxed) || self.link_moved(false))
    }

    /// Is the link down, or did it go down and up since we joined the ring with bytes of ours
    /// the receiver has not consumed (which a real bridge may have dropped)? A link that
    /// flapped while everything we sent was consumed lost nothing: the ring goes on.
    fn link_moved(&self, fresh: bool) -> bool {
        let seen = self.fo.link_gen.load(Relaxed);
        match self.link_up(fresh) {
            Some(g) if g == seen => false,
            None => true,
            Some(g) => {
                let tail = self.tx_pos().tail;
                if self.credits(tail) == Ok(tail) {
                    self.fo.link_gen.store(g, Relaxed);
                    false
                } else {
                    true
                }
            }
        }
    }

    /// A wait for credits that has seen none for the progress timeout while the receiver says
    /// it sleeps waiting for data (it cannot see what we published: the path is broken, not
    /// the reader slow — an application that does not read is a zero window, as on TCP), and
    /// the peer's TCP socket is open (a dead peer is not a failover: its socket ends).
    fn stalled(&self, since: Option<Instant>) -> bool {
        let limit = self.settings.failover_after();
        !limit.is_zero()
            && since.is_some_and(|t| t.elapsed() >= limit)
            && atomic_u32_at(&self.own_block, CR_RX_SLEEPING).load(Relaxed) != 0
            && self.tcp_gone().is_none()
    }

    /// Strict mode: fail the connection instead of moving it (ECONNRESET on both ends).
    fn trip(&self) -> IoError {
        if !self.fo.broken.swap(true, SeqCst) {
            atomic_u32_at(&self.peer_block, CR_CLOSED).store(1, SeqCst);
            atomic_u32_at(&self.peer_block, RX_FLAGS).fetch_or(FLAG_RST, SeqCst);
            self.ring_peer();
            sys::shutdown_write(self.tcp_fd());
        }
        IoError::Reset
    }

    /// Leave the ring for our sending direction, with the send lock held and our producer
    /// counter at `tail`: the END goes out first on TCP.
    pub(super) fn leave_ring(&self, tail: u64) -> Result<(), IoError> {
        if self.settings.strict {
            return Err(self.trip());
        }
        let mut tx = side(&self.fo.tx);
        let fin = self.shared_state() & ST_SHUT_WR != 0;
        let Some(end) = tx.sw.leave_ring(tail, fin) else {
            return Ok(());
        };
        self.fo.tx_want.store(false, Relaxed);
        let now = Instant::now();
        if tx
            .back_at
            .is_some_and(|b| now.duration_since(b) < FLAP_WINDOW)
        {
            tx.hold = tx.hold.saturating_mul(2).clamp(HOLD_MIN, HOLD_MAX);
        } else {
            tx.hold = HOLD_MIN;
        }
        tx.since = Some(now);
        self.publish_tx_view(Some(0));
        self.fo.tx_off.store(true, SeqCst);
        atomic_u32_at(&self.own_block, L_STATE).fetch_or(ST_ON_TCP, SeqCst);
        self.fo.note_event();
        self.count(Counter::Failovers, 1);
        self.write_all_tcp(&[&end.encode()])?;
        if fin {
            sys::shutdown_write(self.tcp_fd());
        }
        Ok(())
    }

    /// `shutdown(SHUT_WR)` while our sending direction is on TCP, with the send lock held: the
    /// SHUT record goes out before the kernel's FIN (a peer on another host cannot ask our
    /// process whether that FIN is a half-close or our death: the record says so).
    pub(super) fn send_shut_record(&self) {
        let shut = side(&self.fo.tx).sw.shut();
        if let Some(r) = shut {
            let _ = self.write_all_tcp(&[&r.encode()]);
        }
    }

    /// Did the peer say it shut down writing (a SHUT, or an END with FIN) in the records read
    /// or taken in so far? Then the end of its TCP socket is a half-close.
    pub(super) fn peer_said_shut(&self) -> bool {
        peek(&self.fo.rx, |rx| {
            rx.sw.is_some_and(|s| s.fin()) || shut_ahead(&rx.reader, &rx.raw)
        })
    }

    /// A reader (or a waiter) found a reason to switch: leave the ring for sending too, now if
    /// no send holds the lock, else the sender does at its next wait.
    pub(super) fn leave_ring_soon(&self) {
        if self.fo.tx_off() || !self.tx_view_current() {
            return;
        }
        match self.tx_lock.try_lock() {
            Some(_g) => {
                let _ = self.leave_ring(self.tx_pos().tail);
            }
            None => self.fo.tx_want.store(true, Relaxed),
        }
    }

    /// A connection upgraded late (made while the link was down, PROTOCOL.md §6): before
    /// anyone uses it, start both directions as if they had failed over at byte 0 — our
    /// sending side on TCP with the `sent` plain bytes the application sent counted as one
    /// DATA record after an END at producer counter 0, our receiving side reading records with
    /// the peer's `peer_sent` plain bytes as that record, of which the application read
    /// `read`. Fail-back (BACK, the next epoch) then brings each direction to the ring, at
    /// once: no hold.
    pub(crate) fn start_late(&self, sent: u64, peer_sent: u64, read: u64) {
        {
            let mut tx = side(&self.fo.tx);
            tx.sw = TxSwitch::taken_over(Some(sent), 0, false);
            tx.since = Some(Instant::now());
            tx.hold = Duration::ZERO;
        }
        {
            let mut rx = side(&self.fo.rx);
            rx.sw = Some(RxSwitch::late(self.rx_ring.cap(), peer_sent));
            rx.reader = Reader::pending(peer_sent.saturating_sub(read));
        }
        self.publish_tx_view(Some(sent));
        self.fo.tx_off.store(true, SeqCst);
        self.fo.rx_off.store(true, SeqCst);
        atomic_u32_at(&self.own_block, L_STATE).fetch_or(ST_ON_TCP, SeqCst);
        self.fo.note_event();
    }

    /// Back to the ring, with the send lock held, if the link is up and the hold has passed.
    fn try_back_to_ring(&self) -> bool {
        let mut tx = side(&self.fo.tx);
        if tx.since.is_none_or(|s| s.elapsed() < tx.hold) {
            return false;
        }
        let Some(gen) = self.link_up(true) else {
            return false;
        };
        let Some((back, resume)) = tx.sw.back_to_ring() else {
            return false;
        };
        if self.write_all_tcp(&[&back.encode()]).is_err() {
            return false;
        }
        let TxPos { seq, .. } = self.tx_pos();
        self.set_tx_pos(TxPos {
            tail: resume,
            seq: next_epoch(seq),
        });
        if let Some(s) = tx.since.take() {
            self.count(Counter::TcpMicros, s.elapsed().as_micros() as u64);
        }
        tx.back_at = Some(Instant::now());
        self.publish_tx_view(None);
        self.fo.link_gen.store(gen, Relaxed);
        // A request to leave made while we were on TCP is answered.
        self.fo.tx_want.store(false, Relaxed);
        self.fo.tx_off.store(false, SeqCst);
        atomic_u32_at(&self.own_block, L_STATE).fetch_and(!ST_ON_TCP, SeqCst);
        self.fo.note_event();
        self.count(Counter::Failbacks, 1);
        true
    }
}

mod tcp;
pub(super) use tcp::{skip, skip_mut};
