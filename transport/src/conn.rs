//! One connection over the bridge: a ring per direction, each in its receiver's inbound window.
//!
//! Our lease (in our host's inbound window) holds our receive ring and the words the peer
//! writes to talk to us; the peer's lease, reached through our outbound window, holds the ring
//! we send into. Every word one side reads was written by the other into the reader's own
//! memory (write remote, read local):
//!
//! | line (offset in a lease) | written by | read by | holds |
//! |---|---|---|---|
//! | RX (0x000) | peer (as sender) | owner | `tail` (bytes produced), FIN/RST flags, "sender waits for credits" |
//! | CREDIT (0x040) | peer (as receiver) | owner | `head` of the owner's sends (credits), "receiver sleeps", "receiver closed" |
//! | LOCAL (0x080..) | owner | owner | a copy of the cursors (the owner's own are private), state, counters |
//!
//! The peer can write the whole block: every value read from it is checked before use (see
//! "What a peer can write" in docs/PROTOCOL.md), and this side's cursors live in process memory.
//!
//! Sleepers are woken by interrupts: each endpoint leases one message-signalled vector (the
//! ntb_msi "virtual doorbell"; a doorbell bit would do, but a side has only a few); a side that goes to
//! sleep says so in the other side's memory first, and the other side rings the bit only then.
//! The TCP socket stays open and idle: it is the liveness signal (a dead peer's kernel closes it).

// The data path: nothing a peer writes may make it panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ntbdrv::{BusAddr, Completion, DmaDesc, Lease, NtbDevice, Region, VectorLease, WindowLease};

use crate::proto::{
    Endpoint, Frame, FrameHeader, ProtoError, Ring, RingLoc, ENDPOINT_HDR, FRAME_HDR, FRAME_PAD,
};
use crate::{sys, CompletionMode, Settings, Shared};

mod failover;

// RX line: written by the peer.
const RX_TAIL: usize = 0x00;
const RX_FLAGS: usize = 0x08;
const RX_TX_WAITING: usize = 0x0C;
// CREDIT line: written by the peer.
const CR_HEAD: usize = 0x40;
const CR_RX_SLEEPING: usize = 0x48;
const CR_CLOSED: usize = 0x4C;
/// The CPU the peer last waited on, plus one (0: not known). A hint for `wait`.
const CR_PEER_CPU: usize = 0x50;
// LOCAL lines: ours, but in the block the peer can write. The cursors here are only a copy of
// the private ones in `Cursors`, for the other processes holding the connection (see
// `Connection::rx_pos`).
const L_RX_HEAD: usize = 0x80;
const L_RX_OFF: usize = 0x88;
const L_RX_SEQ: usize = 0x90;
const L_TX_TAIL: usize = 0xC0;
const L_TX_SEQ: usize = 0xC8;
// Counters (ours): read by `pcisock stats` through the device.
pub(crate) const C_BASE: usize = 0x100;
// Identity block (ours).
pub(crate) const INFO_BASE: usize = 0x200;
pub(crate) const INFO_MAGIC: u32 = 0x5043_4550; // "PCEP"

/// FIN: the sender will send no more. RST: the sender aborted. GONE: the peer closed and will
/// never write into this endpoint block again (its last write): the block may be reused.
const FLAG_FIN: u32 = 1;
const FLAG_RST: u32 = 2;
const FLAG_GONE: u32 = 4;

/// Per-connection counters, in the endpoint's lease.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub enum Counter {
    TxBytes = 0,
    RxBytes,
    TxFrames,
    RxFrames,
    DmaCopies,
    CpuCopies,
    DoorbellsRung,
    Polls,
    Sleeps,
    DmaFallbacks,
    /// Reads that returned data.
    Reads,
    /// Frames a read waited for and took instead of returning (read coalescing).
    Coalesced,
    /// Times our sending direction left the ring for the TCP socket, and came back.
    Failovers,
    Failbacks,
    /// Stream bytes sent and received over the TCP socket after a failover.
    TcpTxBytes,
    TcpRxBytes,
    /// Time our sending direction spent on TCP (finished spells), in microseconds.
    TcpMicros,
}

pub const COUNTER_NAMES: [&str; 17] = [
    "tx_bytes",
    "rx_bytes",
    "tx_frames",
    "rx_frames",
    "dma_copies",
    "cpu_copies",
    "doorbells",
    "polls",
    "sleeps",
    "dma_fallbacks",
    "reads",
    "coalesced",
    "failovers",
    "failbacks",
    "tcp_tx_bytes",
    "tcp_rx_bytes",
    "tcp_us",
];

/// What a send or receive can fail with; the shim maps these to errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoError {
    /// Nothing can move now and the call must not block (EAGAIN).
    WouldBlock,
    /// SO_RCVTIMEO / SO_SNDTIMEO expired (EAGAIN, as the kernel reports it).
    TimedOut,
    /// The peer closed its receiving side (EPIPE, and SIGPIPE unless suppressed).
    BrokenPipe,
    /// The peer aborted or died (ECONNRESET).
    Reset,
    /// A signal interrupted a blocking wait (EINTR).
    Interrupted,
    /// This side shut writing down (EPIPE).
    ShutDown,
    /// The peer broke the protocol; the connection is reset (ECONNRESET, counted).
    Protocol,
}

/// Readiness as poll reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer shut down its sending side (POLLRDHUP).
    pub rdhup: bool,
    /// Both directions are finished (POLLHUP).
    pub hup: bool,
    /// A pending error (POLLERR).
    pub error: bool,
}

/// Flags for [`Connection::recv`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RecvFlags {
    pub nonblock: bool,
    pub peek: bool,
    pub waitall: bool,
}

/// A bidirectional connection over the bridge.
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
    /// Where the connection's memory and interrupt lines come from.
    tenancy: Tenancy,
    /// Our lease: our receive ring and the peer-written words.
    mine: Region,
    /// Our interrupt line: the device vector this connection leased (emptied after it fires),
    /// or this process's line from the host fabric service, shared by its connections and
    /// never emptied (see `sys::wake_fd`).
    vector: Arc<OwnedFd>,
    shared_line: bool,
    /// The peer's lease, through our outbound window.
    theirs: Region,
    their_loc: RingLoc,
    rx_ring: Ring,
    tx_ring: Ring,
    tcp_fd: std::sync::atomic::AtomicI32,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub role: Role,
    rx_lock: Mutex<()>,
    waiters: Waiters,
    /// Consecutive empty non-blocking reads (to look at the TCP socket now and then).
    empty_reads: AtomicU32,
    /// Readiness checks since the TCP socket was last looked at (see `readiness`).
    tcp_looks: AtomicU32,
    /// What the TCP socket showed once the peer's kernel closed it (`TCP_*`): that is for good,
    /// so it is asked no more.
    tcp_end: AtomicU8,
    /// The CPU (plus one) we last told the peer we wait on (see `shares_cpu_with_peer`).
    cpu_told: AtomicU32,
    /// The consumer counter the receiver last returned, the highest valid value we read: the
    /// sender re-reads the peer's counter only when this leaves too little room.
    tx_head_seen: AtomicU64,
    /// Where we are in both rings (private: see `Cursors`; boxed, so that `Outcome`, which
    /// carries a connection by value, stays small).
    cur: Box<Cursors>,
    tx_lock: SendLock,
    /// Has this process sent on the connection since its last read? (A request/response
    /// exchange: its reads are not coalesced.)
    sent_since_read: AtomicBool,
    settings: Settings,
    /// Failover to the TCP socket and back (`failover`); boxed, read by one load on the fast
    /// path.
    fo: Box<failover::Failover>,
}

/// Where a connection's memory and interrupt lines come from, and so how it rings its peer and
/// what it gives back when it closes.
pub(crate) enum Tenancy {
    /// Leased from the device this process maps (the device rendezvous).
    Device {
        dev: Arc<dyn NtbDevice>,
        lease: WindowLease,
        bell: VectorLease,
    },
    /// The segment the host fabric service gave this connection alone, and the peer process's
    /// line (shared by that process's connections): the peer is rung through it; the segment
    /// goes away with its last mapping.
    Service { conn: u64, peer_line: Arc<OwnedFd> },
}

/// This side's position in both rings, in process memory. The peer can write anything in our
/// endpoint block, so nothing read from there decides where we read or write: the block's
/// LOCAL line holds only a copy, a hint for the other processes that hold the connection (a
/// forked child reads on, an exec'd image picks the connection up), taken only when it moved
/// ahead of ours and is consistent with it (`Connection::rx_pos`, `tx_pos`).
#[derive(Default)]
struct Cursors {
    /// Consumer counter: bytes of our ring consumed.
    rx_head: AtomicU64,
    /// Bytes of the frame at `rx_head` already read.
    rx_off: AtomicU64,
    /// Sequence number of the next data frame we receive.
    rx_seq: AtomicU64,
    /// The consumer counter last written into the sender's CREDIT line.
    rx_returned: AtomicU64,
    /// The highest producer counter the peer published (it never moves backwards).
    rx_tail_seen: AtomicU64,
    /// Producer counter: bytes produced into the peer's ring.
    tx_tail: AtomicU64,
    /// Sequence number of the next data frame we send.
    tx_seq: AtomicU64,
}

impl Cursors {
    /// A new image has no private cursors: it starts from the block's copy (left by the image
    /// before exec, or written by the peer: every value is validated where it is used, as the
    /// peer's own fields are).
    fn from_block(mine: &Region) -> Cursors {
        Cursors::seeded(
            RxPos {
                head: word64(mine, L_RX_HEAD).load(Relaxed),
                off: word64(mine, L_RX_OFF).load(Relaxed),
                seq: word64(mine, L_RX_SEQ).load(Relaxed),
            },
            TxPos {
                tail: word64(mine, L_TX_TAIL).load(Relaxed),
                seq: word64(mine, L_TX_SEQ).load(Relaxed),
            },
        )
    }

    fn seeded(rx: RxPos, tx: TxPos) -> Cursors {
        Cursors {
            rx_head: AtomicU64::new(rx.head),
            rx_off: AtomicU64::new(rx.off),
            rx_seq: AtomicU64::new(rx.seq),
            // Unknown: whatever the image before exec returned, the next flush returns all.
            rx_returned: AtomicU64::new(0),
            rx_tail_seen: AtomicU64::new(rx.head),
            tx_tail: AtomicU64::new(tx.tail),
            tx_seq: AtomicU64::new(tx.seq),
        }
    }
}

/// A receive position: consumer counter, offset in the frame there, next sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RxPos {
    head: u64,
    off: u64,
    seq: u64,
}

/// A send position: producer counter and next sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TxPos {
    tail: u64,
    seq: u64,
}

/// The smallest data frame: a header and one aligned payload unit. Between two positions
/// `d` bytes apart lie at most `d / MIN_DATA_FRAME` data frames.
const MIN_DATA_FRAME: u64 = FRAME_HDR + crate::proto::FRAME_ALIGN;

/// No byte counter of a real stream reaches this (2^62 bytes: 146 years at 1 TB/s); a copy of
/// one at or above it came from the peer.
const COUNTER_LIMIT: u64 = 1 << 62;

/// Iterations of `recv`'s loop without a byte copied, a data frame consumed or a wait before
/// the peer is judged to be stalling us (a legitimate stream needs at most three: a pad frame,
/// a re-check after FIN, a re-check after the TCP socket ended).
const MAX_IDLE_TURNS: u32 = 16;

/// A connection the host fabric service paired, its lines resolved to this process's copies
/// (one descriptor per line, shared by the connections that use it).
pub(crate) struct ServicePair {
    pub conn: u64,
    pub ring_bytes: u64,
    pub server: bool,
    /// Both ends' blocks: the client's, then the server's.
    pub segment: OwnedFd,
    pub own_line: Arc<OwnedFd>,
    pub peer_line: Arc<OwnedFd>,
}

/// The connection's segment, mapped once: our block and the peer's, each an endpoint header
/// and a ring of the pair's size.
struct Segments {
    ring: Ring,
    mine: Region,
    theirs: Region,
    loc: RingLoc,
}

impl Segments {
    fn map(p: &ServicePair) -> Option<Segments> {
        let ring = Ring::new(p.ring_bytes)?;
        let len = ENDPOINT_HDR.checked_add(p.ring_bytes)? as usize;
        let both = Region::map_segment(&p.segment, len.checked_mul(2)?).ok()?;
        let (client, server) = (both.slice(0, len).ok()?, both.slice(len, len).ok()?);
        let (mine, theirs) = if p.server {
            (server, client)
        } else {
            (client, server)
        };
        let len = len as u64;
        Some(Segments {
            ring,
            mine,
            theirs,
            loc: RingLoc {
                mw: 0,
                offset: 0,
                len,
                db_bit: 0,
            },
        })
    }
}

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// The send side's lock, held across a whole send (which may wait for credits).
///
/// No locked instruction for the thread that sends on the connection: the lock is *biased* to
/// the first thread that sends by [`Connection::try_send`] (the common small send), which then
/// enters with plain stores (its `owner_in` flag, then a re-check that the lock is free and
/// still biased to it). Any other thread takes the lock with a compare-and-swap, and the first
/// such thread revokes the bias for good: it makes the owner's flag visible with one
/// `membarrier` (an asymmetric fence) and waits for the owner to leave. A locked instruction
/// right after the ring writes makes the sender wait until their cache lines have reached the
/// receiver's CPU (perf, iperf2 `-l 64`: 80 % of a 64-byte send with a `Mutex`), so every
/// release is a plain store. A thread that finds the lock taken spins a little, then yields,
/// then naps (at most 1 ms at a time): two threads sending on one connection at once is rare,
/// and the holder may be waiting for credits. Without `membarrier` there is no bias.
#[derive(Default)]
struct SendLock {
    held: AtomicBool,
    /// The thread token ([`thread_token`]) of the bias owner; [`UNBIASED`] before any, or
    /// [`REVOKED`].
    owner: AtomicU64,
    /// The owner is inside a send it entered by the biased way (written by the owner only).
    owner_in: AtomicBool,
}

const UNBIASED: u64 = 0;
const REVOKED: u64 = u64::MAX;

/// A token per thread, for the send lock's bias (0: the thread is past its thread-local
/// destructors, so it gets no bias).
#[inline]
fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    TOKEN
        .try_with(|t| match t.get() {
            0 => {
                let v = NEXT.fetch_add(1, Relaxed);
                t.set(v);
                v
            }
            v => v,
        })
        .unwrap_or(0)
}

struct SendGuard<'a> {
    lock: &'a SendLock,
    biased: bool,
}

impl SendLock {
    fn lock(&self) -> SendGuard<'_> {
        let mut tries = 0u32;
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            tries = tries.saturating_add(1);
            match tries {
                0..64 => std::hint::spin_loop(),
                64..128 => std::thread::yield_now(),
                _ => std::thread::sleep(Duration::from_micros(
                    (10u64 << ((tries - 128).min(7))).min(1000),
                )),
            }
        }
    }

    /// Take the lock by compare-and-swap if it is free, without waiting (then wait out a bias
    /// owner inside, revoking the bias if it is not ours).
    fn try_lock(&self) -> Option<SendGuard<'_>> {
        if self.held.load(Relaxed)
            || self
                .held
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_err()
        {
            return None;
        }
        match self.owner.load(SeqCst) {
            UNBIASED | REVOKED => {}
            o if o == thread_token() => {}
            _ => self.revoke(),
        }
        // An owner that entered before the revocation is still in: wait it out.
        while self.owner_in.load(Acquire) {
            std::hint::spin_loop();
        }
        Some(SendGuard {
            lock: self,
            biased: false,
        })
    }

    /// End the bias (we hold `held`): after the barrier, an owner either shows in `owner_in`
    /// or finds the bias gone when it re-checks.
    #[cold]
    fn revoke(&self) {
        self.owner.store(REVOKED, SeqCst);
        // SYNC POINT (send lock bias): the heavy half of the asymmetric fence; pairs with the
        // compiler fence in `try_lock_biased`. The process registered when the bias was given,
        // and a forked child registers on the spot, so it does not fail; if it did, an owner
        // already past its re-check could be missed by the load of `owner_in` that follows.
        if !sys::membarrier() {
            fence(SeqCst);
        }
    }

    /// The sender's way in: by plain stores if the lock is biased to this thread (the first
    /// thread to come here takes the bias), else by compare-and-swap; `None` if taken.
    #[inline]
    fn try_lock_biased(&self) -> Option<SendGuard<'_>> {
        let me = thread_token();
        let mut o = self.owner.load(Relaxed);
        if o == UNBIASED && me != 0 && sys::membarrier_ready() {
            o = match self.owner.compare_exchange(UNBIASED, me, SeqCst, Relaxed) {
                Ok(_) => me,
                Err(other) => other,
            };
        }
        if o != me || me == 0 {
            return self.try_lock();
        }
        if self.owner_in.load(Relaxed) {
            // Only we write it: a signal handler of ours interrupted our own send.
            return None;
        }
        self.owner_in.store(true, Relaxed);
        // SYNC POINT (send lock bias): the light half of the asymmetric fence (our flag before
        // our loads of `held` and `owner`); pairs with the membarrier in `revoke`.
        compiler_fence(SeqCst);
        if !self.held.load(Relaxed) && self.owner.load(Relaxed) == me {
            return Some(SendGuard {
                lock: self,
                biased: true,
            });
        }
        self.owner_in.store(false, Release);
        None
    }

    /// In a forked child: the owner may have been another thread, inside a send, that does
    /// not exist here.
    fn forked(&self) {
        self.owner_in.store(false, SeqCst);
    }
}

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        if self.biased {
            self.lock.owner_in.store(false, Release);
        } else {
            self.lock.held.store(false, Release);
        }
    }
}

/// `Connection::tcp_end`: the TCP socket is open (or was, when last asked), or ended.
const TCP_OPEN: u8 = 0;
const TCP_EOF: u8 = 1;
const TCP_RESET: u8 = 2;

/// A readiness check looks at the TCP socket (a system call) once in this many calls; a
/// waiter's kernel sleep watches the socket meanwhile and makes the next check look
/// (`look_at_tcp`).
const TCP_LOOK_EVERY: u32 = 32;

/// Smallest receive ring a connection falls back to when window space runs short.
const MIN_ADAPTIVE_RING: u64 = 64 << 10;

/// Our half of a connection before the peer's half is known (a client waiting for its answer).
pub(crate) struct HalfOpen {
    pub mine: Region,
    pub lease: WindowLease,
    pub bell: VectorLease,
    pub vector: OwnedFd,
    pub loc: RingLoc,
}

impl HalfOpen {
    /// Lease window space and an interrupt vector, and initialise our endpoint block.
    pub(crate) fn new(
        dev: &dyn NtbDevice,
        ring_bytes: u64,
        role: Role,
        local: Endpoint,
        peer: Endpoint,
        park: &dyn Fn(WindowLease, Region, Option<Region>),
    ) -> Result<HalfOpen, crate::Reason> {
        use crate::Reason;
        // The configured ring if there is room for it; when the windows fill up, smaller rings
        // (down to MIN_ADAPTIVE_RING) rather than no connection: more connections, each a
        // little slower. The peer learns the size from the offer or answer.
        let mut lease = None;
        let mut ring = ring_bytes;
        // The host resource table ran out of lease slots (not of window space).
        let mut table_full = false;
        'sizes: loop {
            for mw in 0..dev.mw_count() {
                loop {
                    let l = match dev.lease_window(mw, ENDPOINT_HDR + ring, crate::ENDPOINT_TAG) {
                        Ok(l) => l,
                        Err(e) => {
                            table_full |= matches!(e, ntbdrv::LeaseError::TableFull);
                            break;
                        }
                    };
                    // A block the host table took back from a process that died while connected
                    // may still be written by that connection's peer: keep it out of use (held
                    // by us, as a closed endpoint's block is) and take another. Each parked
                    // block stays leased, so the window runs out rather than this loop.
                    let block = dev
                        .inbound(l.mw)
                        .and_then(|w| w.slice(l.offset as usize, l.len as usize));
                    match block.map(|b| (previous_peer(dev, &b), b)) {
                        Ok((Some(theirs), b)) => park(l, b, theirs),
                        _ => {
                            lease = Some(l);
                            break 'sizes;
                        }
                    }
                }
            }
            if ring / 2 < MIN_ADAPTIVE_RING.min(ring_bytes) {
                break;
            }
            ring /= 2;
        }
        let lease = lease.ok_or(if table_full {
            Reason::TableFull
        } else {
            Reason::NoWindowSpace
        })?;
        let len = lease.len;
        let bell = match dev.lease_vector(crate::ENDPOINT_TAG) {
            Ok(b) => b,
            Err(e) => {
                let _ = dev.release(Lease::Window(lease));
                return Err(match e {
                    ntbdrv::LeaseError::TableFull => Reason::TableFull,
                    _ => Reason::NoDoorbell,
                });
            }
        };
        let undo = |dev: &dyn NtbDevice| {
            let _ = dev.release(Lease::Window(lease));
            let _ = dev.release(Lease::Vector(bell));
        };
        let mine = match dev
            .inbound(lease.mw)
            .and_then(|w| w.slice(lease.offset as usize, len as usize))
        {
            Ok(r) => r,
            Err(_) => {
                undo(dev);
                return Err(Reason::NoWindowSpace);
            }
        };
        let vector = match dev.vector_fd(bell.vector) {
            Ok(v) => v,
            Err(e) => {
                undo(dev);
                return Err(match e {
                    ntbdrv::DoorbellError::Denied(_) => Reason::NoPermission,
                    _ => Reason::NoDoorbell,
                });
            }
        };
        ntbdrv::drain_vector(&vector);
        // A fresh endpoint block: zero the header (the previous tenant's words), then identity.
        let _ = mine.fill(0, ENDPOINT_HDR as usize, 0);
        let info = Info {
            role,
            local,
            peer,
            pid: std::process::id(),
        };
        let _ = mine.write(INFO_BASE + 8, &info.encode());
        word32(&mine, L_MY_BIT).store(bell.vector, Relaxed);
        word32(&mine, L_MY_BELL_SLOT).store(bell.slot, Relaxed);
        word32(&mine, INFO_BASE).store(INFO_MAGIC, Release);
        Ok(HalfOpen {
            mine,
            lease,
            bell,
            vector,
            loc: RingLoc {
                mw: lease.mw,
                offset: lease.offset,
                len,
                db_bit: bell.vector,
            },
        })
    }

    /// Our local endpoint became known (the kernel chose the port in connect): rewrite the
    /// identity in our block.
    pub(crate) fn set_local(&self, role: Role, local: Endpoint, peer: Endpoint) {
        let info = Info {
            role,
            local,
            peer,
            pid: std::process::id(),
        };
        let _ = self.mine.write(INFO_BASE + 8, &info.encode());
    }

    /// Record the posted offer in our block (slot, generation, cookie, the socket's inode), so a
    /// new image of this process can take the offer over after exec.
    pub(crate) fn record_offer(&self, index: u32, generation: u32, cookie: u64, tcp_fd: RawFd) {
        word32(&self.mine, L_OFFER_SLOT).store(index, Relaxed);
        word32(&self.mine, L_OFFER_GEN).store(generation, Relaxed);
        word64(&self.mine, L_PEER_OFF).store(cookie, Relaxed);
        word64(&self.mine, L_PEER_LEN).store(0, Relaxed);
        word64(&self.mine, L_SOCK_INODE).store(sys::inode(tcp_fd).unwrap_or(0), Release);
    }

    /// After exec: our half of a connection whose offer was still pending, found by the
    /// socket's inode; returns it with the offer's slot, generation and cookie and the ends.
    #[allow(clippy::type_complexity)]
    pub(crate) fn reattach(
        dev: &dyn NtbDevice,
        lease: WindowLease,
        tcp_fd: RawFd,
    ) -> Option<(HalfOpen, u32, u32, u64, Endpoint, Endpoint)> {
        let mine = dev
            .inbound(lease.mw)
            .ok()?
            .slice(lease.offset as usize, lease.len as usize)
            .ok()?;
        if word32(&mine, INFO_BASE).load(Acquire) != INFO_MAGIC
            || word64(&mine, L_PEER_LEN).load(Acquire) != 0
        {
            return None;
        }
        let inode = sys::inode(tcp_fd)?;
        if inode == 0 || word64(&mine, L_SOCK_INODE).load(Acquire) != inode {
            return None;
        }
        let mut ib = [0u8; 48];
        mine.read(INFO_BASE + 8, &mut ib).ok()?;
        let info = Info::decode(&ib);
        if info.pid != std::process::id() {
            return None;
        }
        let bell = VectorLease {
            vector: word32(&mine, L_MY_BIT).load(Relaxed),
            slot: word32(&mine, L_MY_BELL_SLOT).load(Relaxed),
        };
        let vector = dev.vector_fd(bell.vector).ok()?;
        let loc = RingLoc {
            mw: lease.mw,
            offset: lease.offset,
            len: lease.len,
            db_bit: bell.vector,
        };
        let index = word32(&mine, L_OFFER_SLOT).load(Relaxed);
        let generation = word32(&mine, L_OFFER_GEN).load(Relaxed);
        let cookie = word64(&mine, L_PEER_OFF).load(Relaxed);
        Some((
            HalfOpen {
                mine,
                lease,
                bell,
                vector,
                loc,
            },
            index,
            generation,
            cookie,
            info.local,
            info.peer,
        ))
    }

    pub(crate) fn release(self, dev: &dyn NtbDevice) {
        word32(&self.mine, INFO_BASE).store(0, Release);
        let _ = dev.release(Lease::Window(self.lease));
        let _ = dev.release(Lease::Vector(self.bell));
    }
}

/// Identity of an endpoint, kept in its lease for `pcisock stats`.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    pub role: Role,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub pid: u32,
}

impl Info {
    pub(crate) fn encode(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0..4].copy_from_slice(&self.pid.to_le_bytes());
        b[4] = matches!(self.role, Role::Server) as u8;
        b[8..24].copy_from_slice(&self.local.ip);
        b[24..26].copy_from_slice(&self.local.port.to_le_bytes());
        b[26..28].copy_from_slice(&self.peer.port.to_le_bytes());
        b[32..48].copy_from_slice(&self.peer.ip);
        b
    }

    pub(crate) fn decode(b: &[u8; 48]) -> Info {
        let mut lip = [0u8; 16];
        lip.copy_from_slice(&b[8..24]);
        let mut pip = [0u8; 16];
        pip.copy_from_slice(&b[32..48]);
        Info {
            pid: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            role: if b[4] == 1 {
                Role::Server
            } else {
                Role::Client
            },
            local: Endpoint {
                ip: lip,
                port: u16::from_le_bytes([b[24], b[25]]),
            },
            peer: Endpoint {
                ip: pip,
                port: u16::from_le_bytes([b[26], b[27]]),
            },
        }
    }
}

// The offsets are this module's constants, inside the 4 KiB endpoint header, and every region
// they are used on is a whole endpoint block (ours, or the peer's, whose length `RingLoc::check`
// validated): nothing a peer writes reaches these `expect`s.
#[allow(clippy::expect_used)]
#[inline]
pub(crate) fn word32(r: &Region, off: usize) -> &AtomicU32 {
    r.atomic_u32(off)
        .expect("endpoint layout offsets are in range and aligned")
}

#[allow(clippy::expect_used)]
#[inline]
pub(crate) fn word64(r: &Region, off: usize) -> &AtomicU64 {
    r.atomic_u64(off)
        .expect("endpoint layout offsets are in range and aligned")
}

/// Threads of this process waiting on the connection.
#[derive(Default)]
struct Waiters {
    /// Waiting for data / for credits (each arms its flag in the peer's memory).
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

/// A timeout that starts counting when it is first needed (so calls that never wait never
/// read the clock).
struct Deadline {
    timeout: Option<Duration>,
    at: Option<Instant>,
}

impl Deadline {
    fn new(timeout: Option<Duration>) -> Deadline {
        Deadline { timeout, at: None }
    }

    fn at(&mut self) -> Option<Instant> {
        let t = self.timeout?;
        Some(*self.at.get_or_insert_with(|| Instant::now() + t))
    }
}

/// How long a waiter whose peer shares its CPU yields to it before it sleeps (adaptive) or
/// polls (poll mode): a few of the peer's turns.
const SAME_CPU_YIELD: Duration = Duration::from_micros(50);

/// After arming, how long a waiter keeps re-checking before it sleeps: longer than a store
/// buffer takes to drain, so a publish whose flag check raced with our arming is still seen.
pub const ARM_GRACE: Duration = Duration::from_micros(5);

enum Wait {
    Ready,
    TimedOut,
    Interrupted,
}

impl Connection {
    /// Join our half with the peer's ring location (validated by the caller).
    #[allow(clippy::too_many_arguments)] // all of a connection's identity, passed once
    pub(crate) fn new(
        shared: Arc<Shared>,
        half: HalfOpen,
        their_loc: RingLoc,
        tx_ring: Ring,
        tcp_fd: RawFd,
        role: Role,
        local: Endpoint,
        peer: Endpoint,
    ) -> Result<Connection, crate::Reason> {
        let Some(dev) = shared.dev.clone() else {
            return Err(crate::Reason::NoDevice);
        };
        let theirs = match dev
            .outbound(their_loc.mw)
            .and_then(|w| w.slice(their_loc.offset as usize, their_loc.len as usize))
        {
            Ok(r) => r,
            Err(_) => {
                half.release(&*dev);
                return Err(crate::Reason::BadPeer);
            }
        };
        // Our lease's length comes from the device's window alignment, which a peer can
        // influence (the shared header in bridge mode): a lease that makes no ring is refused.
        let Some(rx_ring) = half.loc.len.checked_sub(ENDPOINT_HDR).and_then(Ring::new) else {
            half.release(&*dev);
            return Err(crate::Reason::NoWindowSpace);
        };
        // What a new image needs to pick the connection up after exec (`Connection::reattach`).
        word32(&half.mine, L_PEER_MW).store(their_loc.mw, Relaxed);
        word32(&half.mine, L_PEER_BIT).store(their_loc.db_bit, Relaxed);
        word64(&half.mine, L_PEER_OFF).store(their_loc.offset, Relaxed);
        word64(&half.mine, L_PEER_LEN).store(their_loc.len, Relaxed);
        word32(&half.mine, L_MY_BIT).store(half.bell.vector, Relaxed);
        word32(&half.mine, L_MY_BELL_SLOT).store(half.bell.slot, Relaxed);
        let tenancy = Tenancy::Device {
            dev,
            lease: half.lease,
            bell: half.bell,
        };
        let c = Connection::assemble(
            shared,
            tenancy,
            half.mine,
            Arc::new(half.vector),
            theirs,
            their_loc,
            rx_ring,
            tx_ring,
            tcp_fd,
            role,
            local,
            peer,
            Box::default(),
        );
        c.hold(tcp_fd);
        Ok(c)
    }

    /// A connection the host fabric service paired: our segment and line, the peer's segment
    /// and line, rings of `ring_bytes` each way.
    #[allow(clippy::too_many_arguments)] // all of a connection's identity, passed once
    pub(crate) fn from_service(
        shared: Arc<Shared>,
        p: ServicePair,
        tcp_fd: RawFd,
        role: Role,
        local: Endpoint,
        peer: Endpoint,
    ) -> Result<Connection, crate::Reason> {
        let seg = Segments::map(&p).ok_or(crate::Reason::BadPeer)?;
        Ok(Connection::service_fresh(
            shared, p, seg, tcp_fd, role, local, peer,
        ))
    }

    /// A new end of a connection the service paired: identity written, held by this process.
    #[allow(clippy::too_many_arguments)] // all of a connection's identity, passed once
    fn service_fresh(
        shared: Arc<Shared>,
        p: ServicePair,
        seg: Segments,
        tcp_fd: RawFd,
        role: Role,
        local: Endpoint,
        peer: Endpoint,
    ) -> Connection {
        let info = Info {
            role,
            local,
            peer,
            pid: std::process::id(),
        };
        let _ = seg.mine.write(INFO_BASE + 8, &info.encode());
        word32(&seg.mine, INFO_BASE).store(INFO_MAGIC, Release);
        if let Some(link) = &shared.service {
            link.note_held(p.conn, tcp_fd);
        }
        let tenancy = Tenancy::Service {
            conn: p.conn,
            peer_line: p.peer_line,
        };
        let c = Connection::assemble(
            shared,
            tenancy,
            seg.mine,
            p.own_line,
            seg.theirs,
            seg.loc,
            seg.ring,
            seg.ring,
            tcp_fd,
            role,
            local,
            peer,
            Box::default(),
        );
        c.hold(tcp_fd);
        c
    }

    /// This process holds the connection (alone, so far), on kernel socket `tcp_fd`.
    fn hold(&self, tcp_fd: RawFd) {
        word32(&self.mine, L_HOLDERS).store(1, SeqCst);
        word32(&self.mine, L_HOLDER_PIDS).store(std::process::id(), SeqCst);
        word64(&self.mine, L_SOCK_INODE).store(sys::inode(tcp_fd).unwrap_or(0), Release);
    }

    #[allow(clippy::too_many_arguments)] // every part of a connection, put together once
    fn assemble(
        shared: Arc<Shared>,
        tenancy: Tenancy,
        mine: Region,
        vector: Arc<OwnedFd>,
        theirs: Region,
        their_loc: RingLoc,
        rx_ring: Ring,
        tx_ring: Ring,
        tcp_fd: RawFd,
        role: Role,
        local: Endpoint,
        peer: Endpoint,
        cur: Box<Cursors>,
    ) -> Connection {
        let settings = shared.settings.clone();
        let link_gen = match &tenancy {
            Tenancy::Device { dev, .. } => dev.link_state().generation,
            Tenancy::Service { .. } => 0,
        };
        let shared_line = matches!(tenancy, Tenancy::Service { .. });
        Connection {
            shared,
            tenancy,
            mine,
            vector,
            shared_line,
            theirs,
            their_loc,
            rx_ring,
            tx_ring,
            tcp_fd: std::sync::atomic::AtomicI32::new(tcp_fd),
            local,
            peer,
            role,
            rx_lock: Mutex::new(()),
            waiters: Waiters::default(),
            empty_reads: AtomicU32::new(0),
            tcp_looks: AtomicU32::new(0),
            tcp_end: AtomicU8::new(TCP_OPEN),
            cpu_told: AtomicU32::new(0),
            tx_head_seen: AtomicU64::new(0),
            cur,
            tx_lock: SendLock::default(),
            sent_since_read: AtomicBool::new(false),
            settings,
            fo: Box::new(failover::Failover::new(link_gen)),
        }
    }

    #[inline]
    fn count(&self, c: Counter, n: u64) {
        // Statistics only: a plain add (no locked instruction on the hot path); a rare race
        // between this process's send and receive paths may lose a count of the shared ones.
        let w = word64(&self.mine, C_BASE + 8 * c as usize);
        w.store(w.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// A counter's value.
    pub fn counter(&self, c: Counter) -> u64 {
        word64(&self.mine, C_BASE + 8 * c as usize).load(Relaxed)
    }

    /// The kernel TCP socket this connection shadows.
    pub fn tcp_fd(&self) -> RawFd {
        self.tcp_fd.load(Relaxed)
    }

    /// The application closed the fd this connection watched, but another fd refers to the
    /// same kernel socket (dup): watch that one from now on.
    pub fn set_tcp_fd(&self, fd: RawFd) {
        self.tcp_fd.store(fd, Relaxed);
    }

    /// The doorbell interrupt line of this endpoint (readable when the peer rang us).
    pub fn vector_fd(&self) -> RawFd {
        self.vector.as_raw_fd()
    }

    // ---- receive ------------------------------------------------------------------------------

    /// Bytes ready to read now (FIONREAD), counting whole published frames. A bad frame ends
    /// the count (the next `recv` reports it); the walk is bounded by the ring's size, since
    /// every frame moves the position forward and the tail is read once.
    pub fn readable_bytes(&self) -> usize {
        if self.fo.rx_off() {
            return self.readable_switched();
        }
        let _g = self.rx_lock.lock();
        let RxPos {
            mut head,
            off,
            mut seq,
        } = self.rx_pos();
        let tail = word64(&self.mine, RX_TAIL).load(Acquire);
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

    /// Our receive position: the private one, or the copy in our block if another process
    /// holding the connection (a forked child, an exec'd image) read on and moved it ahead.
    /// The copy is taken only when it is consistent with ours: ahead, frame-aligned, its offset
    /// inside a frame, and its sequence number no further ahead than
    /// the frames that fit between the two. Anything else is the peer's writing and is ignored;
    /// what is taken is validated again where it is used (`check_frame`, the offset against
    /// the frame's length), as the peer's own fields are.
    fn rx_pos(&self) -> RxPos {
        let ours = RxPos {
            head: self.cur.rx_head.load(Relaxed),
            off: self.cur.rx_off.load(Relaxed),
            seq: self.cur.rx_seq.load(Relaxed),
        };
        let head = word64(&self.mine, L_RX_HEAD).load(Relaxed);
        let off = word64(&self.mine, L_RX_OFF).load(Relaxed);
        if (head, off) <= (ours.head, ours.off) {
            return ours;
        }
        let seq = word64(&self.mine, L_RX_SEQ).load(Relaxed);
        let ahead = head - ours.head;
        let consistent = head.is_multiple_of(crate::proto::FRAME_ALIGN)
            && head < COUNTER_LIMIT
            && off < self.rx_ring.max_payload()
            && seq >= ours.seq
            && seq - ours.seq <= ahead / MIN_DATA_FRAME;
        if consistent {
            RxPos { head, off, seq }
        } else {
            ours
        }
    }

    /// Our send position, as `rx_pos` for the producer counter.
    #[inline]
    fn tx_pos(&self) -> TxPos {
        let ours = TxPos {
            tail: self.cur.tx_tail.load(Relaxed),
            seq: self.cur.tx_seq.load(Relaxed),
        };
        let tail = word64(&self.mine, L_TX_TAIL).load(Relaxed);
        if tail <= ours.tail {
            return ours;
        }
        let seq = word64(&self.mine, L_TX_SEQ).load(Relaxed);
        let ahead = tail - ours.tail;
        let consistent = tail.is_multiple_of(crate::proto::FRAME_ALIGN)
            && tail < COUNTER_LIMIT
            && seq >= ours.seq
            && seq - ours.seq <= ahead / MIN_DATA_FRAME;
        if consistent {
            TxPos { tail, seq }
        } else {
            ours
        }
    }

    /// Record our send position (privately, and the copy in the block).
    #[inline]
    fn set_tx_pos(&self, p: TxPos) {
        self.cur.tx_tail.store(p.tail, Relaxed);
        self.cur.tx_seq.store(p.seq, Relaxed);
        word64(&self.mine, L_TX_TAIL).store(p.tail, Relaxed);
        word64(&self.mine, L_TX_SEQ).store(p.seq, Relaxed);
    }

    /// The peer's producer counter, loaded once: never behind what it published before. (That
    /// it is at most a ring ahead of our consumer counter is checked with the frame it
    /// announces, `check_frame`; a tail not ahead of it announces nothing.)
    fn rx_tail(&self) -> Result<u64, ProtoError> {
        // SYNC POINT (ring data): Acquire load of the peer's tail pairs with the Release
        // store in `publish` after the frame bytes; the bytes up to `tail` are visible.
        let tail = word64(&self.mine, RX_TAIL).load(Acquire);
        let seen = self.cur.rx_tail_seen.load(Relaxed);
        if tail != seen {
            if tail < seen {
                return Err(ProtoError::BadTail {
                    tail,
                    head: seen,
                    cap: self.rx_ring.cap(),
                });
            }
            self.cur.rx_tail_seen.store(tail, Relaxed);
        }
        Ok(tail)
    }

    fn frame_at(&self, head: u64, tail: u64, seq: u64) -> Result<Frame, ProtoError> {
        let mut hb = [0u8; 16];
        let at = ENDPOINT_HDR as usize + self.rx_ring.pos(head) as usize;
        self.mine
            .read(at, &mut hb)
            .map_err(|_| ProtoError::BadTail {
                tail,
                head,
                cap: self.rx_ring.cap(),
            })?;
        self.rx_ring
            .check_frame(head, tail, &FrameHeader::decode(&hb), seq)
    }

    fn peer_flags(&self) -> u32 {
        word32(&self.mine, RX_FLAGS).load(Acquire)
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
        let deadline = timeout.map(|t| Instant::now() + t);
        while got < want {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            let mut rest = failover::skip_mut(bufs, got);
            match self.recv_once(&mut rest, flags, left) {
                Ok(n) if n > 0 => got += n,
                _ => break,
            }
        }
        Ok(got)
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
    fn recv_ring(
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
        let _g = self.rx_lock.lock().map_err(|_| IoError::Protocol)?;
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
            idle += 1;
            if idle > MAX_IDLE_TURNS {
                break Err(self.protocol_error("recv", ProtoError::NoProgress { turns: idle }));
            }
            let tail = match self.rx_tail() {
                Ok(t) => t.min(limit),
                Err(e) => break Err(self.protocol_error("recv", e)),
            };
            if head < tail {
                let frame = match self.frame_at(head, tail, seq) {
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
                match frame {
                    Frame::Pad { size } => {
                        if off != 0 {
                            let e = ProtoError::BadOffset { off, len: 0 };
                            break Err(self.protocol_error("recv", e));
                        }
                        head += size;
                        credit |= !flags.peek;
                        continue;
                    }
                    Frame::Data { len, size } => {
                        // The length is the peer's (and may have been rewritten since we read
                        // part of the frame); the offset is ours.
                        if off >= len {
                            let e = ProtoError::BadOffset { off, len };
                            break Err(self.protocol_error("recv", e));
                        }
                        let base = ENDPOINT_HDR as usize
                            + self.rx_ring.pos(head) as usize
                            + FRAME_HDR as usize;
                        let mut unreadable = false;
                        while off < len && bi < bufs.len() {
                            let Some(buf) = bufs.get_mut(bi) else { break };
                            let whole = buf.len();
                            let dst = buf.get_mut(bo..).unwrap_or_default();
                            let n = dst.len().min((len - off) as usize);
                            let dst = dst.get_mut(..n).unwrap_or_default();
                            if self.mine.read(base + off as usize, dst).is_err() {
                                unreadable = true;
                                break;
                            }
                            off += n as u64;
                            bo += n;
                            copied += n;
                            if n > 0 {
                                idle = 0;
                            }
                            if bo >= whole {
                                bi += 1;
                                bo = 0;
                            }
                        }
                        if unreadable {
                            let e = ProtoError::BadFrame {
                                pos: self.rx_ring.pos(head),
                                len: len as u32,
                                flags: 0,
                            };
                            break Err(self.protocol_error("recv", e));
                        }
                        if off == len {
                            idle = 0;
                            head += size;
                            seq = seq.wrapping_add(1);
                            off = 0;
                            credit = true;
                            self.count(Counter::RxFrames, 1);
                        }
                        if copied == want {
                            break Ok(copied);
                        }
                        continue;
                    }
                }
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
                if word64(&self.mine, RX_TAIL).load(Acquire) > head {
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
                if word64(&self.mine, RX_TAIL).load(Acquire) > head {
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
        let gap = self.settings.rx_coalesce;
        if gap.is_zero()
            || self.settings.completion == CompletionMode::Doorbell
            || self.sent_since_read.load(Relaxed)
        {
            return false;
        }
        let now = Instant::now();
        match *since {
            Some(t0) if now.duration_since(t0) >= gap * 50 => return false,
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
            if word64(&self.mine, RX_TAIL).load(Acquire) > head {
                return true;
            }
            if self.peer_flags() != 0 {
                return false;
            }
            n += 1;
            if n.is_multiple_of(16) && now.elapsed() >= gap {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Record what we consumed, and return the credits to the sender when enough have
    /// gathered (a quarter of the ring), when the sender waits for them, or when `force`d
    /// (before we sleep or arm, so a sender is never left waiting on credits we hold).
    fn return_credits(&self, head: u64, off: u64, seq: u64, force: bool) {
        self.cur.rx_head.store(head, Relaxed);
        self.cur.rx_off.store(off, Relaxed);
        self.cur.rx_seq.store(seq, Relaxed);
        // The copy for the other processes holding the connection (see `rx_pos`).
        word64(&self.mine, L_RX_HEAD).store(head, Relaxed);
        word64(&self.mine, L_RX_OFF).store(off, Relaxed);
        word64(&self.mine, L_RX_SEQ).store(seq, Relaxed);
        self.flush_credits(force);
    }

    fn flush_credits(&self, force: bool) {
        let head = self.cur.rx_head.load(Relaxed);
        let returned = self.cur.rx_returned.load(Relaxed);
        if head == returned {
            return;
        }
        if !force && head.saturating_sub(returned) < self.rx_ring.cap() / 4 {
            fence(SeqCst);
            // SYNC POINT (credit wake-up): a sender waiting for credits gets them at once.
            if word32(&self.mine, RX_TX_WAITING).load(SeqCst) == 0 {
                return;
            }
        }
        self.cur.rx_returned.store(head, Relaxed);
        // SYNC POINT (credits): Release store of our consumer counter into the sender's memory
        // pairs with its Acquire load in `send`; the space before `head` is free for reuse.
        word64(&self.theirs, CR_HEAD).store(head, Release);
        fence(SeqCst);
        // SYNC POINT (credit wake-up): pairs with the sender's SeqCst store of TX_WAITING; one
        // ring per arming, as in `publish`.
        let waiting = word32(&self.mine, RX_TX_WAITING);
        if waiting.load(SeqCst) != 0 && waiting.compare_exchange(1, 0, SeqCst, Relaxed).is_ok() {
            self.ring_peer();
        }
    }

    /// The peer broke the protocol (`why`, found by `op`): reset the connection.
    fn protocol_error(&self, op: &str, why: ProtoError) -> IoError {
        self.shared.counters.protocol_errors.fetch_add(1, Relaxed);
        let _ = self.shared.counters.first_protocol_error.set(format!(
            "{op} {:?} {} -> {}: {why}",
            self.role,
            self.local.to_std(),
            self.peer.to_std()
        ));
        word32(&self.theirs, CR_CLOSED).store(1, SeqCst);
        word32(&self.theirs, RX_FLAGS).fetch_or(FLAG_RST, SeqCst);
        self.ring_peer();
        IoError::Protocol
    }

    // ---- send ---------------------------------------------------------------------------------

    /// Send `bufs` (gather). Blocking sends return once every byte is in the ring; non-blocking
    /// ones send what fits (EAGAIN if nothing).
    pub fn send(
        &self,
        bufs: &[&[u8]],
        nonblock: bool,
        timeout: Option<Duration>,
    ) -> Result<usize, IoError> {
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
            Ok(n) => Ok(sent + n),
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
            let want = (total - sent) as u64;
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
            sent += p.len as usize;
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
        let (pos, new_tail) =
            match self
                .tx_ring
                .place_whole(tail, self.tx_head_seen.load(Relaxed), want)
            {
                Some(p) => p,
                None => self
                    .tx_ring
                    .place_whole(tail, self.credits(tail).ok()?, want)?,
            };
        let base = ENDPOINT_HDR as usize + pos as usize;
        let h = FrameHeader {
            len: want as u32,
            flags: 0,
            seq,
        };
        // Both in range: `place` put the frame inside the ring, which the region holds.
        self.theirs.write(base + FRAME_HDR as usize, buf).ok()?;
        self.theirs.write(base, &h.encode()).ok()?;
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

    /// Write one placed frame (and the pad frame before it) from `bufs` at (`bi`, `bo`),
    /// publish it, and return the new producer counter and sequence number.
    #[inline]
    fn put_frame(
        &self,
        p: &crate::proto::Placement,
        seq: u64,
        bufs: &[&[u8]],
        bi: &mut usize,
        bo: &mut usize,
    ) -> (u64, u64) {
        if let Some((pos, n)) = p.pad {
            let h = FrameHeader {
                len: (n - FRAME_HDR) as u32,
                flags: FRAME_PAD,
                seq,
            };
            let _ = self
                .theirs
                .write(ENDPOINT_HDR as usize + pos as usize, &h.encode());
        }
        let base = ENDPOINT_HDR as usize + p.pos as usize;
        let len = p.len as usize;
        self.copy_out(bufs, bi, bo, base + FRAME_HDR as usize, len);
        let h = FrameHeader {
            len: len as u32,
            flags: 0,
            seq,
        };
        let _ = self.theirs.write(base, &h.encode());
        let seq = seq.wrapping_add(1);
        let tail = p.new_tail;
        self.set_tx_pos(TxPos { tail, seq });
        self.publish(tail);
        self.count(Counter::TxFrames, 1);
        (tail, seq)
    }

    /// Remember that this process sent since its last read (see `coalesce`): one plain store
    /// per change, not per send.
    #[inline]
    fn note_sent(&self) {
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
                .and_then(|head| self.tx_ring.place(tail, head, (count - sent) as u64))
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
            let base = ENDPOINT_HDR as usize + p.pos as usize;
            let n = match sys::read_into_region(
                fd,
                &self.theirs,
                base + FRAME_HDR as usize,
                p.len as usize,
                off,
            ) {
                Ok(0) => break Ok(sent),
                Ok(n) => n,
                Err(e) => break if sent > 0 { Ok(sent) } else { Err(Ok(e)) },
            };
            if let Some((pos, n)) = p.pad {
                let h = FrameHeader {
                    len: (n - FRAME_HDR) as u32,
                    flags: FRAME_PAD,
                    seq,
                };
                let _ = self
                    .theirs
                    .write(ENDPOINT_HDR as usize + pos as usize, &h.encode());
            }
            let _ = self.theirs.write(
                base,
                &FrameHeader {
                    len: n as u32,
                    flags: 0,
                    seq,
                }
                .encode(),
            );
            seq = seq.wrapping_add(1);
            // A short read makes a shorter frame: the tail follows the bytes actually read.
            tail = p.new_tail - (FRAME_HDR + crate::proto::align_frame(p.len))
                + FRAME_HDR
                + crate::proto::align_frame(n as u64);
            sent += n;
            if let Some(o) = off.as_mut() {
                *o += n as i64;
            }
            self.set_tx_pos(TxPos { tail, seq });
            self.publish(tail);
            self.count(Counter::TxFrames, 1);
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
    fn place(&self, tail: u64, want: u64) -> Result<Option<crate::proto::Placement>, ProtoError> {
        let seen = self.tx_head_seen.load(Relaxed);
        // A cached value that does not fit our producer counter (an exec'd image starts from
        // 0; a sibling process may have sent meanwhile) is simply refreshed.
        if let Ok(Some(p)) = self.tx_ring.place(tail, seen, want) {
            if p.len == want.min(self.tx_ring.max_payload()) {
                return Ok(Some(p));
            }
        }
        let head = self.credits(tail)?;
        self.tx_ring.place(tail, head, want)
    }

    /// The receiver's consumer counter, loaded once and validated against our producer
    /// counter: ahead of it is a protocol error; behind what it returned before, it counts as
    /// what it returned before (credits never go backwards, so a wait for room that was seen
    /// ends).
    fn credits(&self, tail: u64) -> Result<u64, ProtoError> {
        // SYNC POINT (credits): Acquire pairs with the receiver's Release in `flush_credits`.
        let head = word64(&self.mine, CR_HEAD).load(Acquire);
        if head > tail {
            return Err(ProtoError::BadCredit { head, tail });
        }
        let seen = self.tx_head_seen.load(Relaxed);
        if seen <= tail && seen > head {
            return Ok(seen);
        }
        self.tx_head_seen.store(head, Relaxed);
        Ok(head)
    }

    /// Copy `len` bytes of `bufs` (from position bi/bo) into the peer's ring at `at`, by CPU or
    /// by the DMA engine.
    fn copy_out(&self, bufs: &[&[u8]], bi: &mut usize, bo: &mut usize, at: usize, len: usize) {
        let mut done = 0;
        while done < len {
            let Some(buf) = bufs.get(*bi) else { break };
            let src = buf.get(*bo..).unwrap_or_default();
            let n = src.len().min(len - done);
            let chunk = src.get(..n).unwrap_or_default();
            if !(n >= self.settings.dma_threshold && self.dma_copy(chunk, at + done)) {
                let _ = self.theirs.write(at + done, chunk);
                self.count(Counter::CpuCopies, 1);
            }
            done += n;
            *bo += n;
            if *bo >= buf.len() {
                *bi += 1;
                *bo = 0;
            }
        }
    }

    /// Copy by DMA into the peer's ring; false if no channel or the transfer failed (the caller
    /// then copies by CPU, so no byte is lost).
    fn dma_copy(&self, chunk: &[u8], at: usize) -> bool {
        let Some(ch) = self.shared.dma() else {
            return false;
        };
        let ch = match ch.lock() {
            Ok(c) => c,
            Err(_) => return false,
        };
        let Ok(src) = ch.map_host(chunk.as_ptr(), chunk.len()) else {
            return false;
        };
        let ok = (|| {
            let dst = ch
                .peer_window_addr(self.their_loc.mw, self.their_loc.offset + at as u64)
                .ok()?;
            let mut descs = Vec::with_capacity(chunk.len().div_ceil(1 << 20));
            let mut o = 0usize;
            while o < chunk.len() {
                let n = (chunk.len() - o).min(1 << 20);
                descs.push(DmaDesc {
                    src: BusAddr(src.0 + o as u64),
                    dst: BusAddr(dst.0 + o as u64),
                    len: n as u32,
                });
                o += n;
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
        ok
    }

    /// Publish our producer counter to the peer and ring it if it sleeps.
    #[inline]
    fn publish(&self, tail: u64) {
        // SYNC POINT (ring data): Release store of tail after the frame bytes; pairs with the
        // receiver's Acquire load in `recv`.
        word64(&self.theirs, RX_TAIL).store(tail, Release);
        // SYNC POINT (data wake-up): no full fence here — it would cost a cross-core cache
        // line transfer per send, as much as the rest of the send. The load may pass our tail
        // store (store buffer), so a receiver arming at that instant can miss it; the receiver
        // covers that window by re-checking for `ARM_GRACE` after arming, and never sleeps
        // longer than `LEADER_NAP` (see `wait`).
        let sleeping = word32(&self.mine, CR_RX_SLEEPING);
        // One ring per arming: the first sender to see the flag takes it (the receiver re-arms
        // before it sleeps again), so a stream of sends to a waking receiver costs one doorbell.
        if sleeping.load(Relaxed) != 0 && sleeping.compare_exchange(1, 0, SeqCst, Relaxed).is_ok() {
            self.ring_peer();
        }
    }

    fn ring_peer(&self) {
        let rung = match &self.tenancy {
            Tenancy::Device { dev, .. } => dev.peer_vector_trigger(self.their_loc.db_bit).is_ok(),
            Tenancy::Service { peer_line, .. } => fabric::sys::ring(peer_line.as_raw_fd()),
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
        self.tcp_gone().map(|r| r.err().unwrap_or(IoError::Reset))
    }

    /// Why a send cannot proceed, if it cannot.
    #[inline]
    fn send_blocked(&self) -> Option<IoError> {
        let st = self.shared_state();
        if st & ST_SHUT_WR != 0 {
            return Some(IoError::ShutDown);
        }
        if word32(&self.mine, RX_FLAGS).load(Acquire) & FLAG_RST != 0 {
            return Some(IoError::Reset);
        }
        if word32(&self.mine, CR_CLOSED).load(Acquire) != 0 {
            return Some(IoError::BrokenPipe);
        }
        None
    }

    // ---- waiting ------------------------------------------------------------------------------

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
    fn ready_ring(&self, read: bool) -> bool {
        if read {
            // Exactly what ends a `recv`: bytes, FIN or RST (a flag that does not, GONE alone
            // say, would make a waiting `recv` spin).
            let head = self.rx_pos().head;
            word64(&self.mine, RX_TAIL).load(Acquire) > head
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
            self.waiters.rx.fetch_add(1, SeqCst);
            // SYNC POINT (data wake-up): see `publish`.
            word32(&self.theirs, CR_RX_SLEEPING).store(1, SeqCst);
        }
        if write {
            self.waiters.tx.fetch_add(1, SeqCst);
            // SYNC POINT (credit wake-up): see `return_credits`.
            word32(&self.theirs, RX_TX_WAITING).store(1, SeqCst);
        }
        fence(SeqCst);
        (read && self.ready(true)) || (write && self.ready(false))
    }

    /// Ask the peer to ring us on its next send (`read`) or credit return (`write`), without
    /// counting a waiter: for an epoll registration, which stays interested between waits (and
    /// must also wake an epoll set that contains this one). The peer rings once per arming.
    pub fn rearm(&self, read: bool, write: bool) {
        if read {
            self.flush_credits(true);
            word32(&self.theirs, CR_RX_SLEEPING).store(1, SeqCst);
        }
        if write {
            word32(&self.theirs, RX_TX_WAITING).store(1, SeqCst);
        }
        fence(SeqCst);
    }

    /// Is the connection readable (`read`) or writable (`write`) now? (For a caller that armed
    /// several connections and re-checks them during [`ARM_GRACE`] before it sleeps.)
    pub fn ready_for(&self, read: bool, write: bool) -> bool {
        (read && self.ready(true)) || (write && self.ready(false))
    }

    /// Undo one [`Connection::arm`] with the same arguments, after waking.
    pub fn disarm(&self, read: bool, write: bool) {
        for (on, count, off) in [
            (read, &self.waiters.rx, CR_RX_SLEEPING),
            (write, &self.waiters.tx, RX_TX_WAITING),
        ] {
            if on && count.fetch_sub(1, SeqCst) == 1 {
                word32(&self.theirs, off).store(0, SeqCst);
                // A waiter that armed meanwhile must keep its flag.
                if count.load(SeqCst) > 0 {
                    word32(&self.theirs, off).store(1, SeqCst);
                }
            }
        }
        if self.waiters.rx.load(SeqCst) == 0 && self.waiters.tx.load(SeqCst) == 0 {
            self.ack_doorbell();
        }
    }

    /// After a wake-up on the doorbell line (epoll): empty it, unless a thread of this process
    /// is sleeping on it (that thread empties it itself).
    pub fn ack(&self) {
        if self.waiters.rx.load(SeqCst) == 0 && self.waiters.tx.load(SeqCst) == 0 {
            self.ack_doorbell();
        }
    }

    /// Wake whoever sleeps on this connection's interrupt line (an epoll set whose registration
    /// was re-armed or added while data was already waiting: nothing will ring for it), as the
    /// kernel's epoll_ctl wakes the waiters of a set when a registration is ready at once.
    pub fn kick_local(&self) {
        if self.shared_line {
            fabric::sys::ring(self.vector.as_raw_fd());
        } else {
            ntbdrv::kick_vector(&self.vector);
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
    fn wait(&self, read: bool, deadline: Option<Instant>) -> Wait {
        let mut spin = match self.settings.completion {
            CompletionMode::Poll => Duration::MAX,
            CompletionMode::Doorbell => Duration::ZERO,
            CompletionMode::Adaptive => self.settings.spin,
        };
        // Spinning on the CPU the peer needs to make progress only delays it (by a whole
        // spin, or a time slice in poll mode). Give it the CPU instead: yield to it for a
        // while (a runnable peer runs at once, as the kernel switches a TCP reader's CPU to its
        // writer), then sleep (adaptive), or go on polling with a yield every 64 checks.
        let mut yield_every = 4096;
        let same_cpu = spin > Duration::ZERO && self.shares_cpu_with_peer();
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
        // A reader spins on the next frame's lines too (see `touch_next_frame`).
        let next = if read {
            self.rx_ring.pos(self.rx_pos().head) as usize
        } else {
            usize::MAX
        };
        while !self.ready(read) {
            self.touch_next_frame(next);
            n += 1;
            if n.is_multiple_of(64) {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    self.count(Counter::Polls, n as u64);
                    return Wait::TimedOut;
                }
                if now.duration_since(t0) >= spin {
                    break;
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
        }
        self.count(Counter::Polls, n as u64);
        if self.ready(read) {
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
                    nap = (nap * 2).min(LONGEST_LEADER_NAP);
                };
                self.woke();
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

    /// A spinning reader loads the first two cache lines where the next frame will land (ring
    /// position `pos`; `usize::MAX`: not a reader), beside the producer counter: when the
    /// sender writes the frame and then the counter, all three lines come over in parallel,
    /// instead of the frame's after the counter's. The values are not used (`recv` reads the
    /// frame once the counter announces it), so a peer writing anything there changes nothing.
    #[inline]
    fn touch_next_frame(&self, pos: usize) {
        if pos == usize::MAX {
            return;
        }
        let at = ENDPOINT_HDR as usize + pos;
        if let Ok(w) = self.mine.atomic_u64(at) {
            std::hint::black_box(w.load(Relaxed));
        }
        if (pos + 64) < self.rx_ring.cap() as usize {
            if let Ok(w) = self.mine.atomic_u64(at + 64) {
                std::hint::black_box(w.load(Relaxed));
            }
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
            n += 1;
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
            word32(&self.theirs, CR_PEER_CPU).store(tag, Relaxed);
        }
        word32(&self.mine, CR_PEER_CPU).load(Relaxed) == tag
    }

    /// Has the peer's kernel closed the TCP socket (peer gone)? `Some(Ok)` = orderly (FIN),
    /// `Some(Err(Reset))` = reset. Data arriving over TCP after the upgrade also counts as
    /// gone: the peer is broken.
    fn tcp_gone(&self) -> Option<Result<(), IoError>> {
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
    fn reader_gone(&self, look: bool) -> Option<IoError> {
        let gone = if look {
            self.tcp_gone()
        } else {
            match self.tcp_end.load(Relaxed) {
                TCP_EOF => Some(Ok(())),
                TCP_RESET => Some(Err(IoError::Reset)),
                _ => None,
            }
        };
        gone.map(|g| g.err().unwrap_or(IoError::BrokenPipe))
    }

    /// What `readiness` needs of the TCP socket: asked once in `TCP_LOOK_EVERY` calls (a system
    /// call per check would make every poll, select and epoll scan pay one per connection),
    /// and always once the socket has ended.
    fn tcp_gone_lately(&self) -> Option<Result<(), IoError>> {
        let n = self.tcp_looks.load(Relaxed);
        if n == 0 || self.tcp_end.load(Relaxed) != TCP_OPEN {
            self.tcp_looks.store(TCP_LOOK_EVERY - 1, Relaxed);
            self.tcp_gone()
        } else {
            self.tcp_looks.store(n - 1, Relaxed);
            None
        }
    }

    /// The kernel reported an event on the TCP socket (a waiter slept on it): the next
    /// readiness check looks at it.
    pub fn look_at_tcp(&self) {
        self.tcp_looks.store(0, Relaxed);
    }

    /// A value that changes whenever something the peer did could make the connection newly
    /// readable or writable (data produced, credits returned, flags set, its kernel's close of
    /// the TCP socket seen): edge-triggered readiness reports an edge when it moves. A peer
    /// that exits without closing shows only through the TCP socket, and an edge-triggered
    /// reader (nginx) must hear of it, or it keeps the dead connection.
    pub fn activity(&self) -> u64 {
        let tail = word64(&self.mine, RX_TAIL).load(Acquire);
        let head = word64(&self.mine, CR_HEAD).load(Acquire);
        let flags = word32(&self.mine, RX_FLAGS).load(Acquire) as u64
            | (word32(&self.mine, CR_CLOSED).load(Acquire) as u64) << 8
            | (self.tcp_end.load(Relaxed) as u64) << 16;
        tail.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ head.rotate_left(29) ^ flags.rotate_left(58)
    }

    /// Is there a byte to read? Padding at the ring's end is not one: an application told
    /// "readable" must not get EAGAIN (wrk counts that as a read error).
    fn data_ready(&self) -> bool {
        let RxPos { mut head, seq, .. } = self.rx_pos();
        // SYNC POINT (ring data): as in `recv`.
        let tail = word64(&self.mine, RX_TAIL).load(Acquire);
        // At most one padding frame per lap of the ring.
        for _ in 0..2 {
            if head >= tail {
                return false;
            }
            match self.frame_at(head, tail, seq) {
                Ok(Frame::Pad { size }) => head = head.saturating_add(size),
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
        let data = self.data_ready() || self.fo.spoke();
        let reset = flags & FLAG_RST != 0 || matches!(gone, Some(Err(_)));
        let eof = flags & FLAG_FIN != 0 || gone.is_some();
        let closed = word32(&self.mine, CR_CLOSED).load(Acquire) != 0;
        let st = self.shared_state();
        // As the kernel's tcp_poll: hang-up when both directions are shut (the peer's FIN or our
        // SHUT_RD, and our SHUT_WR), or on a reset; the peer's close alone is only EOF. (A server
        // that keeps a connection the client closed, asking for no events, must not be woken.)
        let shut_rd = eof || st & ST_SHUT_RD != 0;
        let writable = self.ready(false);
        if !writable && gone.is_none() && self.switch_due(None) {
            // A full ring on a failed link: the next send goes over TCP (`failover`).
            self.leave_ring_soon();
            return self.readiness_switched();
        }
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

    // ---- teardown -----------------------------------------------------------------------------

    #[inline]
    fn shared_state(&self) -> u32 {
        word32(&self.mine, L_STATE).load(Acquire)
    }

    /// shutdown(2): SHUT_WR sends FIN through the ring; SHUT_RD stops reading.
    pub fn shutdown(&self, read: bool, write: bool) {
        if write {
            let _g = self.tx_lock.lock();
            if self.fo.tx_off() {
                // On TCP: the kernel's FIN ends the stream after the last record.
                word32(&self.mine, L_STATE).fetch_or(ST_SHUT_WR, SeqCst);
                sys::shutdown_write(self.tcp_fd());
            } else if word32(&self.mine, L_STATE).fetch_or(ST_SHUT_WR, SeqCst) & ST_SHUT_WR == 0 {
                // SYNC POINT (FIN): after our last tail store; pairs with the Acquire load of
                // RX_FLAGS in the peer's `recv`.
                word32(&self.theirs, RX_FLAGS).fetch_or(FLAG_FIN, SeqCst);
                self.ring_peer();
            }
        }
        if read {
            word32(&self.mine, L_STATE).fetch_or(ST_SHUT_RD, SeqCst);
        }
    }

    /// The last reference is going away: tell the peer (FIN, or RST if we drop unread data, as
    /// TCP does) and return our resources once the peer can no longer write into them.
    pub(crate) fn close(&self) {
        self.drain_tcp_at_close();
        let unread = word64(&self.mine, RX_TAIL).load(Acquire) > self.rx_pos().head;
        let flag = if self.fo.tx_off() {
            // Our stream is on the TCP socket (`failover`): the kernel's FIN or RST ends it
            // after our last record; a FIN in the ring would end it before them.
            0
        } else if unread {
            FLAG_RST
        } else {
            FLAG_FIN
        };
        word32(&self.mine, L_STATE).fetch_or(ST_SHUT_WR | ST_SHUT_RD | ST_CLOSED, SeqCst);
        word32(&self.theirs, CR_CLOSED).store(1, SeqCst);
        word32(&self.theirs, RX_FLAGS).fetch_or(flag, SeqCst);
        // SYNC POINT (endpoint release): our last write into the peer's block; pairs with the
        // Acquire load in `peer_finished`, after which the peer may give the block to another
        // connection.
        word32(&self.theirs, RX_FLAGS).fetch_or(FLAG_GONE, SeqCst);
        self.ring_peer();
        word32(&self.mine, INFO_BASE).store(0, Release);
        match &self.tenancy {
            Tenancy::Device { lease, bell, .. } => {
                let peer_done = peer_finished(&self.mine);
                self.shared.retire_connected(
                    self.mine.clone(),
                    *lease,
                    *bell,
                    peer_done,
                    self.theirs.clone(),
                );
            }
            // Fresh segments per connection: nobody else can be given this memory, so there
            // is nothing to quarantine (the service counts the window space back once no
            // process holds the connection: see `release_holder`).
            Tenancy::Service { .. } => {}
        }
    }

    /// A fork is about to happen: the child will hold this connection too. Called before the
    /// fork (so a parent that closes its copy at once does not close the connection under the
    /// child), then [`Connection::adopt`] in the child records the child's pid.
    pub fn add_holder(&self) {
        word32(&self.mine, L_HOLDERS).fetch_add(1, SeqCst);
    }

    /// The fork announced by [`Connection::add_holder`] failed: there is no child.
    pub fn cancel_holder(&self) {
        word32(&self.mine, L_HOLDERS).fetch_sub(1, SeqCst);
    }

    /// In a child after fork: record this process as a holder.
    pub fn adopt(&self, pid: u32) {
        self.tx_lock.forked();
        for i in 0..MAX_HOLDERS {
            if word32(&self.mine, L_HOLDER_PIDS + 4 * i)
                .compare_exchange(0, pid, SeqCst, SeqCst)
                .is_ok()
            {
                break;
            }
        }
    }

    /// This process lets go of the connection. Returns true if it was the last holder (the
    /// caller then closes it); otherwise the leases move to a remaining live holder, so the
    /// connection outlives this process.
    pub(crate) fn release_holder(&self) -> bool {
        if let (Tenancy::Service { conn, .. }, Some(link)) = (&self.tenancy, &self.shared.service) {
            link.close(*conn, self.role == Role::Server);
        }
        let me = std::process::id();
        for i in 0..MAX_HOLDERS {
            let _ =
                word32(&self.mine, L_HOLDER_PIDS + 4 * i).compare_exchange(me, 0, SeqCst, SeqCst);
        }
        let before = word32(&self.mine, L_HOLDERS).fetch_sub(1, SeqCst);
        if before <= 1 {
            word32(&self.mine, L_HOLDERS).store(0, SeqCst);
            return true;
        }
        // Another process holds it: hand it our leases. A child that was just forked records
        // its pid right after the fork; give it a moment to appear.
        let t0 = Instant::now();
        loop {
            let heir = (0..MAX_HOLDERS)
                .map(|i| word32(&self.mine, L_HOLDER_PIDS + 4 * i).load(SeqCst))
                .find(|&p| p != 0 && p != me && ntbdrv::process::start_time(p).is_some());
            if let Some(pid) = heir {
                if let Tenancy::Device { dev, lease, bell } = &self.tenancy {
                    let _ = dev.transfer(Lease::Window(*lease), pid);
                    let _ = dev.transfer(Lease::Vector(*bell), pid);
                }
                return false;
            }
            if t0.elapsed() > Duration::from_millis(50) {
                // The count says someone holds it, but we cannot name them: keep the leases
                // (they return to the host when this process exits) and leave it open.
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// After exec: rebuild the connection this process held on kernel socket `tcp_fd` before
    /// it replaced its image, from the endpoint block in `lease` (found by the socket's inode).
    pub(crate) fn reattach(
        shared: Arc<Shared>,
        lease: WindowLease,
        tcp_fd: RawFd,
    ) -> Option<Connection> {
        let dev = shared.dev.clone()?;
        let mine = dev
            .inbound(lease.mw)
            .ok()?
            .slice(lease.offset as usize, lease.len as usize)
            .ok()?;
        if word32(&mine, INFO_BASE).load(Acquire) != INFO_MAGIC {
            return None;
        }
        let inode = sys::inode(tcp_fd)?;
        if inode == 0 || word64(&mine, L_SOCK_INODE).load(Acquire) != inode {
            return None;
        }
        if word32(&mine, L_STATE).load(Acquire) & ST_CLOSED != 0 {
            return None;
        }
        let me = std::process::id();
        if !(0..MAX_HOLDERS).any(|i| word32(&mine, L_HOLDER_PIDS + 4 * i).load(SeqCst) == me) {
            return None;
        }
        let their_loc = RingLoc {
            mw: word32(&mine, L_PEER_MW).load(Relaxed),
            db_bit: word32(&mine, L_PEER_BIT).load(Relaxed),
            offset: word64(&mine, L_PEER_OFF).load(Relaxed),
            len: word64(&mine, L_PEER_LEN).load(Relaxed),
        };
        let mw_size = dev.mw_align(0).ok()?.size_max;
        let tx_ring = their_loc
            .check(dev.mw_count(), mw_size, dev.vector_count())
            .ok()?;
        let rx_ring = Ring::new(lease.len.checked_sub(ENDPOINT_HDR)?)?;
        let theirs = dev
            .outbound(their_loc.mw)
            .ok()?
            .slice(their_loc.offset as usize, their_loc.len as usize)
            .ok()?;
        let bell = VectorLease {
            vector: word32(&mine, L_MY_BIT).load(Relaxed),
            slot: word32(&mine, L_MY_BELL_SLOT).load(Relaxed),
        };
        let vector = dev.vector_fd(bell.vector).ok()?;
        let mut ib = [0u8; 48];
        mine.read(INFO_BASE + 8, &mut ib).ok()?;
        let info = Info::decode(&ib);
        let tenancy = Tenancy::Device { dev, lease, bell };
        let cur = Box::new(Cursors::from_block(&mine));
        Some(Connection::assemble(
            shared,
            tenancy,
            mine,
            Arc::new(vector),
            theirs,
            their_loc,
            rx_ring,
            tx_ring,
            tcp_fd,
            info.role,
            info.local,
            info.peer,
            cur,
        ))
    }

    /// After exec (or in a process that proved it holds the socket): rebuild the connection
    /// the service paired, from the segments it handed over again, if it is still open.
    pub(crate) fn reattach_service(
        shared: Arc<Shared>,
        p: ServicePair,
        tcp_fd: RawFd,
    ) -> Option<Connection> {
        let seg = Segments::map(&p)?;
        if word32(&seg.mine, L_STATE).load(Acquire) & ST_CLOSED != 0 {
            return None;
        }
        if word32(&seg.mine, INFO_BASE).load(Acquire) != INFO_MAGIC {
            // Paired after the image before exec stopped waiting for it: this end was never
            // used, so it starts fresh, its identity read from the socket.
            let view = fabric::sys::tcp_view(tcp_fd).ok()??;
            let (local, peer) = (Endpoint::from(view.local?), Endpoint::from(view.peer?));
            let role = if p.server { Role::Server } else { Role::Client };
            return Some(Connection::service_fresh(
                shared, p, seg, tcp_fd, role, local, peer,
            ));
        }
        // This process used the connection before (its image before exec): go on from where
        // the block's hints say it was.
        let mut ib = [0u8; 48];
        seg.mine.read(INFO_BASE + 8, &mut ib).ok()?;
        let info = Info::decode(&ib);
        if let Some(link) = &shared.service {
            link.note_held(p.conn, tcp_fd);
        }
        let tenancy = Tenancy::Service {
            conn: p.conn,
            peer_line: p.peer_line,
        };
        let cur = Box::new(Cursors::from_block(&seg.mine));
        Some(Connection::assemble(
            shared, tenancy, seg.mine, p.own_line, seg.theirs, seg.loc, seg.ring, seg.ring, tcp_fd,
            info.role, info.local, info.peer, cur,
        ))
    }

    /// The peer's ring location.
    pub fn peer_ring(&self) -> RingLoc {
        self.their_loc
    }
}

/// Does a process that holds the endpoint block `theirs` (its creator, or a holder it was
/// handed to) still live on this host? A pid reused by another process counts as alive: the
/// caller then only waits longer.
/// For a freshly leased block: `Some` if its previous tenant died while connected (the block's
/// identity and peer location are still there, and the peer has not made its last write), with
/// the peer's block when the peer is on this host (the block waits while a process holding it
/// lives; a peer on another host cannot be asked: quarantine).
fn previous_peer(dev: &dyn NtbDevice, block: &Region) -> Option<Option<Region>> {
    if word32(block, INFO_BASE).load(Acquire) != INFO_MAGIC || peer_finished(block) {
        return None;
    }
    let len = word64(block, L_PEER_LEN).load(Acquire);
    if len == 0 {
        return None; // it never connected: no peer knows this block
    }
    let same_host = dev.side() == dev.peer_side();
    let theirs = same_host
        .then(|| {
            dev.outbound(word32(block, L_PEER_MW).load(Relaxed))
                .and_then(|w| {
                    w.slice(
                        word64(block, L_PEER_OFF).load(Relaxed) as usize,
                        len as usize,
                    )
                })
                .ok()
        })
        .flatten();
    Some(theirs)
}

pub(crate) fn peer_alive(theirs: &Region) -> bool {
    let mut ib = [0u8; 48];
    let creator = theirs
        .read(INFO_BASE + 8, &mut ib)
        .map(|()| Info::decode(&ib).pid)
        .unwrap_or(0);
    std::iter::once(creator)
        .chain((0..MAX_HOLDERS).map(|i| word32(theirs, L_HOLDER_PIDS + 4 * i).load(SeqCst)))
        .any(|pid| pid != 0 && ntbdrv::process::pid_exists(pid))
}

/// Has the peer of this (closed) endpoint block made its last write into it?
pub(crate) fn peer_finished(block: &Region) -> bool {
    word32(block, RX_FLAGS).load(Acquire) & FLAG_GONE != 0
}

// Where the peer's ring is and who we are: read back by `reattach` in an exec'd image.
const L_PEER_MW: usize = 0xD0;
const L_PEER_BIT: usize = 0xD4;
const L_PEER_OFF: usize = 0xD8;
const L_PEER_LEN: usize = 0xE0;
const L_SOCK_INODE: usize = 0xE8;
const L_MY_BIT: usize = 0xF0;
const L_MY_BELL_SLOT: usize = 0xF4;
/// While the offer is pending (the peer's ring length is still 0): its slot and generation; the
/// cookie is kept where the peer's ring offset will go.
const L_OFFER_SLOT: usize = 0xA8;
const L_OFFER_GEN: usize = 0xAC;
const L_STATE: usize = 0xA0;
/// Processes holding this endpoint (a forked child shares its parent's connections).
const L_HOLDERS: usize = 0xA4;
/// Their pids, up to `MAX_HOLDERS` (for handing the leases on when one leaves).
const L_HOLDER_PIDS: usize = 0xB0;
const MAX_HOLDERS: usize = 4;
const ST_SHUT_RD: u32 = 1;
const ST_SHUT_WR: u32 = 2;
const ST_CLOSED: u32 = 4;
/// Our sending direction is on the TCP socket after a failover (for `pcisock stats`).
pub(crate) const ST_ON_TCP: u32 = 8;
pub(crate) const L_STATE_PUB: usize = L_STATE;
