//! Waiting on a connection: arming the peer's doorbell flags, the doorbell line, the wait loop
//! (spin, yield, sleep), the TCP socket as liveness signal, and readiness for poll/select/epoll.
//! Called by the send and receive paths and by the shim's poll and epoll; it must never lose a
//! wake-up (clear, read back, re-check the ring).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ntbdrv::Region;

use super::block::{
    atomic_u32_at, atomic_u64_at, peer_alive, ring_at, CR_CLOSED, CR_HEAD, CR_PEER_CPU, FLAG_FIN,
    FLAG_RST, RX_FLAGS, RX_TAIL, ST_SHUT_RD, ST_SHUT_WR,
};
use super::cursors::RxPos;
use super::ringsync::{self, Arming};
use super::{Connection, Counter, IoError, Readiness, TallySlot, Tenancy, ARM_GRACE};
use crate::proto::{Frame, ProtoError};
use crate::{sys, CompletionMode};

/// `Connection::tcp_end`: the TCP socket is open (or was, when last asked), or ended.
pub(super) const TCP_OPEN: u8 = 0;
const TCP_EOF: u8 = 1;
const TCP_RESET: u8 = 2;

/// A readiness check looks at the TCP socket (a system call) once in this many calls; a
/// waiter's kernel sleep watches the socket meanwhile and makes the next check look
/// (`look_at_tcp`).
const TCP_LOOK_EVERY: u32 = 32;

/// Threads of this process waiting on the connection, and its epoll registrations.
#[derive(Default)]
pub(super) struct Waiters {
    /// Interested in data / in credits: the threads waiting (each arms its flag in the peer's
    /// memory) in the low half ([`ringsync::WAITING`]), the epoll registrations asking for
    /// them ([`Interest`]) in the high half. The flag is cleared only when both are none.
    rx: AtomicU32,
    tx: AtomicU32,
    /// Held by the one thread sleeping on the doorbell line.
    leader: Mutex<()>,
    /// Bumped by the leader on every wake-up; followers wait for it to change.
    generation: Mutex<u64>,
    cv: std::sync::Condvar,
}

/// First sleep on the doorbell line before re-checking (bounds the cost of a lost wake-up).
const LEADER_NAP: Duration = Duration::from_millis(20);
/// Longest, after naps that ran out with nothing ready (see `wait`).
const LONGEST_LEADER_NAP: Duration = Duration::from_millis(320);
/// Longest wait for the leader before re-checking.
const FOLLOWER_NAP: Duration = Duration::from_millis(10);

/// An epoll registration's interest in a connection's rings, counted while it lives (see
/// [`Connection::interest`]).
pub struct Interest {
    conn: Arc<Connection>,
    read: bool,
    write: bool,
}

impl Drop for Interest {
    fn drop(&mut self) {
        if self.read {
            ringsync::unregister(&self.conn.peer_block, Arming::Data, &self.conn.waiters.rx);
        }
        if self.write {
            ringsync::unregister(
                &self.conn.peer_block,
                Arming::Credits,
                &self.conn.waiters.tx,
            );
        }
    }
}

/// A timeout that starts counting when it is first needed (so calls that never wait never
/// read the clock).
pub(super) struct Deadline {
    timeout: Option<Duration>,
    at: Option<Instant>,
}

impl Deadline {
    pub(super) fn new(timeout: Option<Duration>) -> Deadline {
        Deadline { timeout, at: None }
    }

    pub(super) fn at(&mut self) -> Option<Instant> {
        let t = self.timeout?;
        if self.at.is_none() {
            // A timeout too long for the clock is no deadline.
            self.at = Instant::now().checked_add(t);
            if self.at.is_none() {
                self.timeout = None;
            }
        }
        self.at
    }
}

/// How long a waiter whose peer shares its CPU yields to it before it sleeps (adaptive) or
/// polls (poll mode): a few of the peer's turns.
const SAME_CPU_YIELD: Duration = Duration::from_micros(50);

pub(super) enum Wait {
    Ready,
    TimedOut,
    Interrupted,
}

impl Connection {
    fn ready(&self, read: bool) -> bool {
        // Only the direction asked about: the other may be on TCP and idle.
        let off = if read {
            self.fo.rx_off()
        } else {
            self.fo.tx_off()
        };
        if off {
            return self.ready_switched(read);
        }
        self.ready_ring(read) || (read && self.fo.spoke())
    }

    /// `ready` on the ring alone.
    pub(super) fn ready_ring(&self, read: bool) -> bool {
        if read {
            // Exactly what ends a `recv`: bytes, FIN or RST (a flag that does not, GONE alone
            // say, would make a waiting `recv` spin).
            // The next frame's header first: the producer counter's line moves with every
            // frame the sender writes, the header's is read anyway.
            let RxPos { head, seq, .. } = self.rx_pos();
            ringsync::is_published(&self.own_block, ring_at(self.rx_ring.pos(head)), seq)
                || atomic_u64_at(&self.own_block, RX_TAIL).load(Acquire) > head
                || self.peer_flags() & (FLAG_FIN | FLAG_RST) != 0
        } else {
            // A bad counter makes the connection "ready": the send reports it.
            let tail = self.tx_pos().tail;
            self.credits(tail)
                .and_then(|head| self.tx_ring.place(tail, head, 1))
                .map(|p| p.is_some())
                .unwrap_or(true)
                || self.send_blocked().is_some()
        }
    }

    /// Ask the peer to ring our doorbell when data (`read`) or credits (`write`) arrive; true if
    /// the condition already holds. Several threads may wait on one connection: each arms the
    /// flags it needs, and the flags are cleared by the last waiter of each kind.
    pub fn arm(&self, read: bool, write: bool) -> bool {
        if read {
            // Whoever waits for data must not hold back the sender's credits.
            self.flush_credits(true);
            ringsync::arm_waiter(&self.peer_block, Arming::Data, &self.waiters.rx);
        }
        if write {
            ringsync::arm_waiter(&self.peer_block, Arming::Credits, &self.waiters.tx);
        }
        ringsync::armed::<Region>();
        (read && self.ready(true)) || (write && self.ready(false))
    }

    /// Ask the peer to ring us on its next send (`read`) or credit return (`write`), without
    /// counting a waiter: for an epoll registration, which stays interested between waits (and
    /// must also wake an epoll set that contains this one). The peer rings once per arming.
    pub fn rearm(&self, read: bool, write: bool) {
        if read {
            self.flush_credits(true);
            ringsync::arm(&self.peer_block, Arming::Data);
        }
        if write {
            ringsync::arm(&self.peer_block, Arming::Credits);
        }
        ringsync::armed::<Region>();
    }

    /// Is the connection readable (`read`) or writable (`write`) now? (For a caller that armed
    /// several connections and re-checks them during [`ARM_GRACE`] before it sleeps.)
    pub fn ready_for(&self, read: bool, write: bool) -> bool {
        (read && self.ready(true)) || (write && self.ready(false))
    }

    /// Undo one [`Connection::arm`] with the same arguments, after waking. The flags stay set
    /// while another thread waits or an epoll registration ([`Connection::interest`]) asks for
    /// them. The last waiter empties our doorbell line, unless an epoll registration watches
    /// it: the ring that woke us may also have woken a thread asleep in that epoll set, which
    /// looks at the line only when it runs and would find it empty (its set empties it,
    /// [`Connection::ack`], as does a poll or a leader that the line woke for nothing).
    pub fn disarm(&self, read: bool, write: bool) {
        if read {
            ringsync::disarm(&self.peer_block, Arming::Data, &self.waiters.rx);
        }
        if write {
            ringsync::disarm(&self.peer_block, Arming::Credits, &self.waiters.tx);
        }
        if self.waiters.rx.load(SeqCst) == 0 && self.waiters.tx.load(SeqCst) == 0 {
            self.ack_doorbell();
        }
    }

    /// After a wake-up on the doorbell line (epoll): empty it, unless a thread of this process
    /// is sleeping on it (that thread empties it itself).
    pub fn ack(&self) {
        if self.nobody_waits() {
            self.ack_doorbell();
        }
    }

    /// Does an epoll registration ask for rings on this connection ([`Connection::interest`])?
    pub fn registered(&self) -> bool {
        (self.waiters.rx.load(Relaxed) | self.waiters.tx.load(Relaxed)) > ringsync::WAITING
    }

    /// No thread of this process waits on the connection (epoll registrations aside).
    fn nobody_waits(&self) -> bool {
        self.waiters.rx.load(SeqCst) & ringsync::WAITING == 0
            && self.waiters.tx.load(SeqCst) & ringsync::WAITING == 0
    }

    /// An epoll registration's standing interest in data (`read`) and/or credits (`write`):
    /// until the returned [`Interest`] is dropped, no waiter's [`Connection::disarm`] clears
    /// those flags in the peer's memory (a thread asleep in the epoll set would miss the next
    /// message or credits, and wake only by its nap). Take it before the registration's first
    /// [`Connection::rearm`].
    pub fn interest(self: &Arc<Self>, read: bool, write: bool) -> Interest {
        Interest {
            read: read && ringsync::register(&self.waiters.rx),
            write: write && ringsync::register(&self.waiters.tx),
            conn: self.clone(),
        }
    }

    /// Wake whoever sleeps on this connection's interrupt line (an epoll set whose registration
    /// was re-armed or added while data was already waiting: nothing will ring for it), as the
    /// kernel's epoll_ctl wakes the waiters of a set when a registration is ready at once.
    pub fn kick_local(&self) {
        if self.shared_line {
            if let Some(t) = self.tally() {
                t.tally().bump(t.slot());
            }
            fabric::sys::ring(self.vector.as_raw_fd());
        } else {
            ntbdrv::kick_vector(&self.vector);
        }
    }

    /// Our end's slot in this process's tally page (over the service: which connections a ring
    /// of the shared line was for; `None` on a device, or with every slot taken).
    pub fn tally(&self) -> Option<&TallySlot> {
        match &self.tenancy {
            Tenancy::Service { tally, .. } => tally.as_ref(),
            Tenancy::Device { .. } | Tenancy::Bridged { .. } => None,
        }
    }

    /// Is our interrupt line this process's line from the service, shared by its connections
    /// and never emptied (an epoll set registers it edge-triggered, once; `poll` sleeps on
    /// [`Connection::sleep_fd`] instead)?
    pub fn shared_line(&self) -> bool {
        self.shared_line
    }

    /// What a thread sleeps on to hear our interrupt line: the line itself (a device vector),
    /// or this thread's wake set with the line registered in it (a shared line). Call it
    /// before arming; after the sleep, [`Connection::woke`].
    pub fn sleep_fd(&self) -> RawFd {
        if self.shared_line {
            sys::wake_fd(self.vector.as_raw_fd()).unwrap_or(-1)
        } else {
            self.vector.as_raw_fd()
        }
    }

    /// After a sleep on [`Connection::sleep_fd`]: take what woke us (the line, or this
    /// thread's wake set's edges), then the caller re-checks the ring.
    pub fn woke(&self) {
        if self.shared_line {
            sys::wake_consume();
        } else {
            ntbdrv::drain_vector(&self.vector);
        }
    }

    /// Clear our doorbell: empty the interrupt line and the status bit (the kernel discipline:
    /// clear, then the caller re-checks the ring). A shared line is never emptied: each of its
    /// sleepers takes its own edge (`woke`).
    fn ack_doorbell(&self) {
        if !self.shared_line {
            ntbdrv::drain_vector(&self.vector);
        }
    }

    /// Wait until the ring is readable (`read`) or has room, or the deadline passes: spin, then
    /// sleep on the doorbell line and the TCP socket (a dead peer's kernel closes it). One
    /// thread per connection sleeps on the line; others wait for it to report a wake-up.
    pub(super) fn wait(&self, read: bool, deadline: Option<Instant>) -> Wait {
        let mut spin = match self.settings.completion {
            CompletionMode::Poll => Duration::MAX,
            CompletionMode::Doorbell => Duration::ZERO,
            CompletionMode::Adaptive => self.settings.spin(),
        };
        // Spinning on the CPU the peer needs to make progress only delays it (by a whole
        // spin, or a time slice in poll mode). Give it the CPU instead: yield to it for a
        // while (a runnable peer runs at once, as the kernel switches a TCP reader's CPU to its
        // writer), then sleep (adaptive), or go on polling with a yield every 64 checks.
        let mut yield_every = 4096;
        let same_cpu = spin > Duration::ZERO && self.shares_cpu_with_peer();
        if read && !same_cpu && self.cur.rx_fast_off.load(Relaxed) {
            // The peer is on another CPU now: the fast read may spin for it again.
            self.cur.rx_fast_off.store(false, Relaxed);
        }
        // A peer that has not made its end yet (every end says so when it is made:
        // `Connection::assemble`) may be runnable on this very CPU behind us (a server that
        // spun here for the first request of each new connection kept its client, woken on
        // the same CPU, from sending it: the connection set-up loop over the service ran at 0.6
        // of its rate), or making its end on the other CPU, a few microseconds away since
        // segments are reused (no mapping, no page faults: sleeping at once made the server's
        // first read wait for a ring, and the loop ran at 0.8 of its rate). Spin, but give the
        // CPU away every 64 looks, so that a peer behind us on this CPU runs at once.
        if self.settings.completion == CompletionMode::Adaptive
            && !same_cpu
            && atomic_u32_at(&self.own_block, CR_PEER_CPU).load(Relaxed) == 0
        {
            yield_every = 64;
        }
        if same_cpu {
            if let Some(w) = self.yield_to_peer(read, deadline) {
                return w;
            }
            if self.settings.completion == CompletionMode::Adaptive {
                spin = Duration::ZERO;
            }
            yield_every = 64;
        }
        let t0 = Instant::now();
        let mut n = 0u32;
        // A reader spins on the next frame's header (the line it will read: the sender
        // publishes the frame there, `ringsync::publish_frame`), and looks at everything else
        // (the producer counter, flags, another holder's reads) once in 64 turns. It no longer
        // loads the frame's next line as it spins (version 2 loaded the first two lines beside
        // the counter): with the header watched, that load won 3 % of the median round trip and
        // cost 27 % of the 99th percentile, the line taken from the sender while it writes it
        // (benches/results/pingpong-latency.md).
        let next = if read {
            let RxPos { head, seq, .. } = self.rx_pos();
            Some((self.rx_ring.pos(head) as usize, seq))
        } else {
            None
        };
        let ready = loop {
            if let Some((pos, seq)) = next {
                if ringsync::is_published(&self.own_block, ring_at(pos as u64), seq) {
                    break true;
                }
            }
            if (next.is_none() || n.is_multiple_of(64)) && self.ready(read) {
                break true;
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    self.count(Counter::Polls, n as u64);
                    return Wait::TimedOut;
                }
                if now.duration_since(t0) >= spin {
                    break false;
                }
                if n.is_multiple_of(1024) && self.switch_due(None) {
                    return self.switch_in_wait(read);
                }
                if n.is_multiple_of(yield_every) {
                    // Let the peer run if it shares our CPU, and notice a dead peer.
                    std::thread::yield_now();
                    if self.tcp_gone().is_some() {
                        return Wait::Ready;
                    }
                }
            }
            std::hint::spin_loop();
        };
        self.count(Counter::Polls, n as u64);
        if ready || self.ready(read) {
            return Wait::Ready;
        }
        if self.switch_due(None) {
            return self.switch_in_wait(read);
        }
        self.idle_checks(read);
        // Before arming: a ring after the arming must reach what we sleep on.
        let sleep_fd = self.sleep_fd();
        if self.arm(read, !read) {
            self.disarm(read, !read);
            return Wait::Ready;
        }
        // The grace period (see `publish`): a peer that published just before it could see
        // our flag is caught here instead of costing a nap. A peer on our CPU cannot publish
        // while we spin: let it run once instead.
        if same_cpu {
            std::thread::yield_now();
        }
        let g0 = Instant::now();
        while g0.elapsed() < ARM_GRACE {
            if self.ready(read) {
                self.disarm(read, !read);
                return Wait::Ready;
            }
            std::hint::spin_loop();
        }
        self.count(Counter::Sleeps, 1);
        let r = match self.waiters.leader.try_lock() {
            Ok(_leader) => {
                // Bounded, so a wake-up lost to a racing waiter costs at most this much. A nap
                // that ran out with nothing ready is followed by a longer one, still armed
                // (our flag is long visible by then: only a lost doorbell is left to guard
                // against), so an idle blocking reader wakes a few times a second, not fifty,
                // and does not spin again between naps.
                let mut nap = LEADER_NAP;
                let r = loop {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    let this = left.map_or(nap, |l| l.min(nap));
                    let r = sys::poll2(sleep_fd, self.tcp_fd(), Some(this));
                    let quiet = matches!(r, Err(libc::ETIMEDOUT))
                        && !self.ready(read)
                        && left.is_none_or(|l| l > this)
                        && !self.switch_due(None);
                    if !quiet {
                        break r;
                    }
                    nap = nap.saturating_mul(2).min(LONGEST_LEADER_NAP);
                };
                // A device's line that an epoll registration watches stays readable while what
                // we waited for is ready: the ring may be a thread's in that epoll set too (see
                // `disarm`). The next wake-up that finds nothing empties it.
                if self.shared_line || !self.registered() || !self.ready(read) {
                    self.woke();
                }
                if let Ok(mut g) = self.waiters.generation.lock() {
                    *g = g.wrapping_add(1);
                }
                self.waiters.cv.notify_all();
                r
            }
            Err(_) => {
                let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let nap = remaining.map_or(FOLLOWER_NAP, |r| r.min(FOLLOWER_NAP));
                if let Ok(g) = self.waiters.generation.lock() {
                    let g0 = *g;
                    let _ = self.waiters.cv.wait_timeout_while(g, nap, |x| *x == g0);
                }
                Ok(0)
            }
        };
        self.disarm(read, !read);
        match r {
            Err(libc::EINTR) => Wait::Interrupted,
            _ if deadline.is_some_and(|d| Instant::now() >= d) && !self.ready(read) => {
                Wait::TimedOut
            }
            _ => Wait::Ready,
        }
    }

    /// The peer shares our CPU: yield to it until the ring is ready, for at most
    /// [`SAME_CPU_YIELD`] (a runnable peer takes the CPU at each yield; an idle one costs a
    /// system call per turn). `Some` if the wait is over (ready, or the deadline passed).
    fn yield_to_peer(&self, read: bool, deadline: Option<Instant>) -> Option<Wait> {
        let t0 = Instant::now();
        let mut n = 0u64;
        let w = loop {
            if self.ready(read) {
                break Some(Wait::Ready);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break Some(Wait::TimedOut);
            }
            if now.duration_since(t0) >= SAME_CPU_YIELD {
                break None;
            }
            n = n.wrapping_add(1);
            std::thread::yield_now();
        };
        self.count(Counter::Polls, n);
        w
    }

    /// A wait found that our sending direction should leave the ring: a sender goes back to
    /// its loop (which leaves); a reader makes the sending side leave and waits on.
    fn switch_in_wait(&self, read: bool) -> Wait {
        if read {
            self.leave_ring_soon();
        }
        Wait::Ready
    }

    /// A reader about to sleep: a sending side left on TCP by an earlier fault, which no send
    /// brings back, comes back now if it may.
    fn idle_checks(&self, read: bool) {
        if read && self.fo.tx_off() {
            self.back_if_idle();
        }
    }

    /// Does the peer wait on the CPU we run on? Tells the peer our CPU too (a posted write, only
    /// when it changed). Both are hints: the scheduler moves threads at any time.
    pub fn shares_cpu_with_peer(&self) -> bool {
        let Some(cpu) = sys::current_cpu() else {
            return false;
        };
        let tag = cpu.wrapping_add(1);
        // A load and a store, not a swap: a locked instruction here would make every wait,
        // poll and coalescing read pay for the ring writes still in flight. Two threads racing
        // only tell the peer twice.
        if self.cpu_told.load(Relaxed) != tag {
            self.cpu_told.store(tag, Relaxed);
            atomic_u32_at(&self.peer_block, CR_PEER_CPU).store(tag, Relaxed);
        }
        atomic_u32_at(&self.own_block, CR_PEER_CPU).load(Relaxed) == tag
    }

    /// Has the peer's kernel closed the TCP socket (peer gone)? `Some(Ok)` = orderly (FIN),
    /// `Some(Err(Reset))` = reset. Data arriving over TCP after the upgrade also counts as
    /// gone: the peer is broken.
    pub(super) fn tcp_gone(&self) -> Option<Result<(), IoError>> {
        match self.tcp_end.load(Relaxed) {
            TCP_EOF => return Some(Ok(())),
            TCP_RESET => return Some(Err(IoError::Reset)),
            _ => {}
        }
        let (end, r) = match sys::peek_tcp(self.tcp_fd()) {
            sys::Peek::Open => return None,
            // A record: the peer switched to TCP (`failover`); the socket is open.
            sys::Peek::Data => {
                self.fo.peer_spoke();
                return None;
            }
            sys::Peek::Unusable => return Some(Err(IoError::Reset)),
            sys::Peek::Eof => (TCP_EOF, Some(Ok(()))),
            sys::Peek::Reset => (TCP_RESET, Some(Err(IoError::Reset))),
        };
        self.tcp_end.store(end, Relaxed);
        r
    }

    /// Has the peer's kernel closed the TCP socket, as far as we know without a system call?
    /// (Sticky: a socket that ended stays ended.) A waiter stops watching a socket that ended:
    /// it stays readable for ever and would wake every sleep at once.
    pub fn tcp_ended(&self) -> bool {
        self.tcp_end.load(Relaxed) != TCP_OPEN
    }

    /// The send side's view of a dead peer, for a sender facing a full ring: `Some` if the
    /// peer's kernel closed the TCP socket (asked with a system call when `look`, else only
    /// what is already known), as the error the send reports.
    pub(super) fn reader_gone(&self, look: bool) -> Option<IoError> {
        let gone = if look {
            self.tcp_gone()
        } else {
            match self.tcp_end.load(Relaxed) {
                TCP_EOF => Some(Ok(())),
                TCP_RESET => Some(Err(IoError::Reset)),
                _ => None,
            }
        };
        match gone? {
            Ok(()) if self.peer_half_closed() => None,
            g => Some(g.err().unwrap_or(IoError::BrokenPipe)),
        }
    }

    /// Is the end of the TCP socket the peer's half-close rather than its death? Only while the
    /// peer's direction is on the socket (`failover`): its `shutdown(SHUT_WR)` is then the
    /// kernel's FIN after its last record, which a dead peer's kernel sends too. When the peer
    /// is on this host (the service's segments; a loopback device) its process tells them
    /// apart (it may have half-closed and died since); a peer on another host cannot be asked:
    /// there its SHUT record before the FIN (or an END with FIN) says it half-closed (PROTOCOL
    /// §6). A hostile peer that forges live pids or a SHUT only keeps our sends to it waiting,
    /// as a zero window would.
    pub(super) fn peer_half_closed(&self) -> bool {
        if !self.fo.rx_off() {
            return false;
        }
        let here = match &self.tenancy {
            Tenancy::Service { .. } => true,
            Tenancy::Device { dev, .. } | Tenancy::Bridged { dev, .. } => {
                dev.side() == dev.peer_side()
            }
        };
        if here {
            peer_alive(&self.peer_block)
        } else {
            self.peer_said_shut()
        }
    }

    /// What `readiness` needs of the TCP socket: asked once in `TCP_LOOK_EVERY` calls (a system
    /// call per check would make every poll, select and epoll scan pay one per connection),
    /// and always once the socket has ended.
    pub(super) fn tcp_gone_lately(&self) -> Option<Result<(), IoError>> {
        let n = self.tcp_looks.load(Relaxed);
        if n == 0 || self.tcp_end.load(Relaxed) != TCP_OPEN {
            self.tcp_looks.store(TCP_LOOK_EVERY - 1, Relaxed);
            self.tcp_gone()
        } else {
            self.tcp_looks.store(n.saturating_sub(1), Relaxed);
            None
        }
    }

    /// The kernel reported an event on the TCP socket (a waiter slept on it): the next
    /// readiness check looks at it.
    pub fn look_at_tcp(&self) {
        self.tcp_looks.store(0, Relaxed);
        // Records on the socket change nothing on the ring: an edge-triggered registration
        // must see a new edge (`activity`).
        self.fo.note_event();
    }

    /// A value that changes whenever something the peer did could make the connection newly
    /// readable or writable (data produced, credits returned, flags set, its kernel's close of
    /// the TCP socket seen): edge-triggered readiness reports an edge when it moves. A peer
    /// that exits without closing shows only through the TCP socket, and an edge-triggered
    /// reader (nginx) must hear of it, or it keeps the dead connection.
    pub fn activity(&self) -> u64 {
        let tail = atomic_u64_at(&self.own_block, RX_TAIL).load(Acquire);
        let head = atomic_u64_at(&self.own_block, CR_HEAD).load(Acquire);
        let flags = atomic_u32_at(&self.own_block, RX_FLAGS).load(Acquire) as u64
            | (atomic_u32_at(&self.own_block, CR_CLOSED).load(Acquire) as u64) << 8
            | (self.tcp_end.load(Relaxed) as u64) << 16
            | (self.fo.events() as u64) << 24;
        tail.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ head.rotate_left(29) ^ flags.rotate_left(58)
    }

    /// Is there a byte to read? Padding at the ring's end is not one: an application told
    /// "readable" must not get EAGAIN (wrk counts that as a read error).
    pub(super) fn data_ready(&self) -> bool {
        let RxPos { mut head, seq, .. } = self.rx_pos();
        // SYNC POINT (ring data): as in `recv`.
        let tail = atomic_u64_at(&self.own_block, RX_TAIL).load(Acquire);
        // At most one padding frame per lap of the ring.
        for _ in 0..2 {
            if head >= tail {
                return false;
            }
            match self.frame_at(head, tail, seq) {
                Ok(Frame::Pad { size }) => head = head.saturating_add(size),
                // A frame of the sender's next epoch: the records before it (on the TCP
                // socket) come first, and say when it is readable.
                Err(ProtoError::BadSequence { expected, got })
                    if crate::switchover::is_later_epoch(expected, got) =>
                {
                    return false
                }
                // Data, or a bad frame that `recv` reports (an error is "readable" too).
                _ => return true,
            }
        }
        head < tail
    }

    /// Readiness as poll/select/epoll report it. A peer that died shows through its kernel's
    /// close of the TCP socket, which this looks at once in `TCP_LOOK_EVERY` calls and right
    /// after [`Connection::look_at_tcp`].
    pub fn readiness(&self) -> Readiness {
        if self.fo.rx_off() || self.fo.tx_off() {
            return self.readiness_switched();
        }
        let flags = self.peer_flags();
        let gone = self.tcp_gone_lately();
        if gone.is_none() {
            // An application that only waits here (epoll, on a ring that never fills) never
            // sends or receives on a failing ring: the path is checked here too (one process
            // look at the link a millisecond). Our sending side leaves if it is due (the link
            // is down, or was lost with bytes unconsumed, or a doorbell could not be rung);
            // the records of a peer that left are taken in before anything is reported.
            let due = self.switch_due_lately();
            if due || self.fo.spoke() {
                if due {
                    self.leave_ring_soon();
                }
                return self.readiness_switched();
            }
        }
        let data = self.data_ready() || self.fo.spoke();
        let reset = flags & FLAG_RST != 0 || matches!(gone, Some(Err(_)));
        let eof = flags & FLAG_FIN != 0 || gone.is_some();
        let closed = atomic_u32_at(&self.own_block, CR_CLOSED).load(Acquire) != 0;
        let st = self.shared_state();
        // As the kernel's tcp_poll: hang-up when both directions are shut (the peer's FIN or our
        // SHUT_RD, and our SHUT_WR), or on a reset; the peer's close alone is only EOF. (A server
        // that keeps a connection the client closed, asking for no events, must not be woken.)
        let shut_rd = eof || st & ST_SHUT_RD != 0;
        let writable = self.ready(false);
        Readiness {
            readable: data || eof || reset,
            // A send to a peer whose kernel closed the TCP socket does not block either: it
            // fills the ring or fails (see `reader_gone`).
            writable: writable || reset || closed || gone.is_some(),
            rdhup: eof,
            hup: reset || (shut_rd && st & ST_SHUT_WR != 0),
            error: reset,
        }
    }
}
