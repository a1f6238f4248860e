//! One connection over the bridge: a ring per direction, each in its receiver's inbound window.
//! This module owns the connection's construction and its identity; it must never trust a word of
//! the block the peer writes, nor keep a cursor anywhere the peer can reach.
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
//!
//! This file holds the connection and its construction; the paths live in submodules: `block`
//! (the endpoint block's layout and word accessors), `cursors` (this side's ring positions),
//! `half_open` (our half before the peer's is known), `send`, `recv`, `ringsync` (the loads,
//! stores and fences that publish frames, return credits and arm doorbells, model-checked under
//! loom), `sendlock`, `wait`
//! (arming, the doorbell, waiting, readiness), `holders` (shutdown, close, fork and exec
//! hand-over), `failover` (the TCP socket as a fallback path) and `idle` (an idle sending
//! direction gives the peer's ring pages back).

// The data path: nothing a peer writes may make it panic.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::{Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8};
use std::sync::Arc;
use std::time::Duration;

use ntbdrv::{NtbDevice, Region, VectorLease, WindowLease};

use crate::proto::{Endpoint, Ring, RingLoc, BLOCK_OVERHEAD, RING_START};
use crate::settings::ConnSettings;
use crate::{sys, ProcessState};

mod block;
mod bridged;
mod cursors;
mod failover;
mod half_open;
mod holders;
mod idle;
mod recv;
mod tally;
// The ring's synchronising sequences; public to the loom models (`tests/loom_ring.rs`).
#[cfg(loom)]
pub mod ringsync;
#[cfg(not(loom))]
mod ringsync;
mod send;
// The send lock; public to its loom model (`tests/loom_sendlock.rs`).
#[cfg(loom)]
pub mod sendlock;
#[cfg(not(loom))]
mod sendlock;
mod wait;

pub(crate) use block::{
    atomic_u32_at, atomic_u64_at, peer_alive, peer_finished, C_BASE, INFO_BASE, INFO_MAGIC,
    L_STATE_PUB, ST_ON_TCP,
};
pub(crate) use failover::LinkLook;
pub(crate) use half_open::HalfOpen;

use block::{
    endpoint_block, EndpointBlock, CR_PEER_CPU, CR_TALLY, L_HOLDERS, L_HOLDER_PIDS, L_MY_BELL_SLOT,
    L_MY_BIT, L_PEER_BIT, L_PEER_LEN, L_PEER_MW, L_PEER_OFF, L_SOCK_INODE, PEER_MADE,
};
use cursors::Cursors;
pub use idle::IdleRelease;
use sendlock::SendLock;
pub use tally::{Tally, TallySlot};
pub use wait::Interest;
use wait::{Waiters, TCP_OPEN};

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
    pub(crate) shared: Arc<ProcessState>,
    /// Where the connection's memory and interrupt lines come from.
    tenancy: Tenancy,
    /// Our lease: our receive ring and the peer-written words.
    own_block: EndpointBlock,
    /// Our interrupt line: the device vector this connection leased (emptied after it fires),
    /// or this process's line from the host fabric service, shared by its connections and
    /// never emptied (see `sys::wake_fd`).
    vector: Arc<OwnedFd>,
    shared_line: bool,
    /// The peer's lease, through our outbound window.
    peer_block: EndpointBlock,
    their_loc: RingLoc,
    rx_ring: Ring,
    tx_ring: Ring,
    tcp_fd: std::sync::atomic::AtomicI32,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub role: Role,
    /// The receive side's lock: the same biased lock as the send side's, so the thread that
    /// reads the connection enters it by plain stores (`Connection::try_recv`).
    rx_lock: SendLock,
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
    settings: ConnSettings,
    /// Failover to the TCP socket and back (`failover`); boxed, read by one load on the fast
    /// path.
    fo: Box<failover::Failover>,
    /// What this process knows, in its own memory, of the other processes holding the
    /// connection (the holder words in the block are the peer's to write: `holders`).
    family: holders::Family,
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
    /// goes away with its last mapping. With the peer line's tally page (counted in before each
    /// ring, at the slot the peer wrote into our block) and our end's slot in our own page.
    Service {
        peer_line: Arc<OwnedFd>,
        peer_tally: Option<Arc<Tally>>,
        tally: Option<TallySlot>,
        /// The service's connection and its segment (boxed: `Outcome` carries a connection by
        /// value).
        segment: Box<ServiceSegment>,
    },
    /// Slices of the two hosts' windows the two hosts' services leased for this connection
    /// (phase 3): rung and failed over as over a device; the services give the memory back.
    Bridged { dev: Arc<dyn NtbDevice>, conn: u64 },
}

/// The connection the service paired, and its segment's whole mapping and identity (the
/// mapping is kept for reuse when the end closes cleanly: `segcache`).
pub(crate) struct ServiceSegment {
    pub conn: u64,
    pub identity: ntbdrv::SegmentIdentity,
    pub whole: Region,
}

/// A connection the host fabric service paired, its lines resolved to this process's copies
/// (one descriptor per line, shared by the connections that use it).
pub(crate) struct ServicePair {
    pub conn: u64,
    pub ring_bytes: u64,
    pub server: bool,
    /// Both ends' blocks, the client's then the server's, mapped (see `Link::map`), and the
    /// segment's identity.
    pub segment: Region,
    pub identity: ntbdrv::SegmentIdentity,
    pub own_line: Arc<OwnedFd>,
    pub peer_line: Arc<OwnedFd>,
    /// This process's tally page and the peer line's (see `tally`).
    pub own_tally: Option<Arc<Tally>>,
    pub peer_tally: Option<Arc<Tally>>,
}

/// The connection's segment, mapped once: our block and the peer's, each an endpoint header
/// and a ring of the pair's size, laid out in the segment's shared page (docs/PROTOCOL.md §2).
struct Segments {
    rx_ring: Ring,
    tx_ring: Ring,
    own_block: EndpointBlock,
    peer_block: EndpointBlock,
    loc: RingLoc,
}

impl Segments {
    /// Our block and the peer's in the segment's mapping (one stretch, docs/PROTOCOL.md §2,
    /// *The shared page*): the client's block is the whole segment, its ring twice the pair's
    /// size with the server's block as its hole; the server's starts `SECOND_BLOCK` into the
    /// shared page.
    fn map(p: &ServicePair) -> Option<Segments> {
        use fabric::service::{first_ring_hole, SECOND_BLOCK};
        let (cap, hole) = first_ring_hole(p.ring_bytes);
        let first = Ring::laid_out(cap, RING_START, Some(hole))?;
        let second = Ring::laid_out(p.ring_bytes, SECOND_BLOCK + RING_START, None)?;
        let both = &p.segment;
        let client = both
            .slice(0, BLOCK_OVERHEAD.checked_add(cap)? as usize)
            .ok()?;
        let server = both
            .slice(
                SECOND_BLOCK as usize,
                BLOCK_OVERHEAD.checked_add(p.ring_bytes)? as usize,
            )
            .ok()?;
        let (own_block, peer_block, rx_ring, tx_ring) = if p.server {
            (server, client, second, first)
        } else {
            (client, server, first, second)
        };
        Some(Segments {
            rx_ring,
            tx_ring,
            loc: RingLoc {
                mw: 0,
                offset: 0,
                len: peer_block.len() as u64,
                db_bit: 0,
            },
            own_block: endpoint_block(own_block)?,
            peer_block: endpoint_block(peer_block)?,
        })
    }
}

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
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

/// After arming, how long a waiter keeps re-checking before it sleeps: longer than a store
/// buffer takes to drain, so a publish whose flag check raced with our arming is still seen.
pub const ARM_GRACE: Duration = Duration::from_micros(5);

impl Connection {
    /// Join our half with the peer's ring location (validated by the caller).
    #[allow(clippy::too_many_arguments)] // all of a connection's identity, passed once
    pub(crate) fn new(
        shared: Arc<ProcessState>,
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
        let peer_block = match dev
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
        let Some(rx_ring) = half.loc.len.checked_sub(BLOCK_OVERHEAD).and_then(Ring::new) else {
            half.release(&*dev);
            return Err(crate::Reason::NoWindowSpace);
        };
        // What a new image needs to pick the connection up after exec (`Connection::reattach`).
        atomic_u32_at(&half.own_block, L_PEER_MW).store(their_loc.mw, Relaxed);
        atomic_u32_at(&half.own_block, L_PEER_BIT).store(their_loc.db_bit, Relaxed);
        atomic_u64_at(&half.own_block, L_PEER_OFF).store(their_loc.offset, Relaxed);
        atomic_u64_at(&half.own_block, L_PEER_LEN).store(their_loc.len, Relaxed);
        atomic_u32_at(&half.own_block, L_MY_BIT).store(half.bell.vector, Relaxed);
        atomic_u32_at(&half.own_block, L_MY_BELL_SLOT).store(half.bell.slot, Relaxed);
        let Some((own_block, peer_block)) =
            endpoint_block(half.own_block.clone()).zip(endpoint_block(peer_block))
        else {
            half.release(&*dev);
            return Err(crate::Reason::BadPeer);
        };
        let tenancy = Tenancy::Device {
            dev,
            lease: half.lease,
            bell: half.bell,
        };
        let c = Connection::assemble(
            shared,
            tenancy,
            own_block,
            Arc::new(half.vector),
            peer_block,
            their_loc,
            rx_ring,
            tx_ring,
            tcp_fd,
            role,
            local,
            peer,
            Box::default(),
        );
        c.hold();
        Ok(c)
    }

    /// A connection the host fabric service paired: our segment and line, the peer's segment
    /// and line, rings of `ring_bytes` each way.
    #[allow(clippy::too_many_arguments)] // all of a connection's identity, passed once
    pub(crate) fn from_service(
        shared: Arc<ProcessState>,
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
        shared: Arc<ProcessState>,
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
            pid: ntbdrv::process::pid(),
        };
        let _ = seg.own_block.write(INFO_BASE + 8, &info.encode());
        atomic_u32_at(&seg.own_block, INFO_BASE).store(INFO_MAGIC, Release);
        let c = Connection::from_segments(shared, p, seg, tcp_fd, info, Box::default());
        c.hold();
        c
    }

    /// A connection the service paired, from its mapped segments: the service told that this
    /// process holds it on `tcp_fd`, its identity `info`, its cursors `cur` (fresh, or from the
    /// block after exec).
    fn from_segments(
        shared: Arc<ProcessState>,
        p: ServicePair,
        seg: Segments,
        tcp_fd: RawFd,
        info: Info,
        cur: Box<Cursors>,
    ) -> Connection {
        if let Some(link) = &shared.service {
            link.note_held(p.conn, tcp_fd);
        }
        // Our end's slot, told to the peer (which counts its rings for us there).
        let tally = p.own_tally.as_ref().and_then(Tally::take_slot);
        atomic_u32_at(&seg.peer_block, CR_TALLY)
            .store(tally.as_ref().map_or(0, |b| b.slot()), Release);
        let tenancy = Tenancy::Service {
            peer_line: p.peer_line,
            peer_tally: p.peer_tally,
            tally,
            segment: Box::new(ServiceSegment {
                conn: p.conn,
                identity: p.identity,
                whole: p.segment,
            }),
        };
        Connection::assemble(
            shared,
            tenancy,
            seg.own_block,
            p.own_line,
            seg.peer_block,
            seg.loc,
            seg.rx_ring,
            seg.tx_ring,
            tcp_fd,
            info.role,
            info.local,
            info.peer,
            cur,
        )
    }

    /// This process holds the connection (alone, so far), on the kernel socket it was
    /// assembled with (whose inode `assemble` read).
    fn hold(&self) {
        atomic_u32_at(&self.own_block, L_HOLDERS).store(1, SeqCst);
        atomic_u32_at(&self.own_block, L_HOLDER_PIDS).store(ntbdrv::process::pid(), SeqCst);
        atomic_u64_at(&self.own_block, L_SOCK_INODE).store(self.family.sock_inode(), Release);
    }

    #[allow(clippy::too_many_arguments)] // every part of a connection, put together once
    fn assemble(
        shared: Arc<ProcessState>,
        tenancy: Tenancy,
        own_block: EndpointBlock,
        vector: Arc<OwnedFd>,
        peer_block: EndpointBlock,
        their_loc: RingLoc,
        rx_ring: Ring,
        tx_ring: Ring,
        tcp_fd: RawFd,
        role: Role,
        local: Endpoint,
        peer: Endpoint,
        cur: Box<Cursors>,
    ) -> Connection {
        let settings = ConnSettings::of(&shared.settings);
        let link_gen = match &tenancy {
            Tenancy::Device { dev, .. } | Tenancy::Bridged { dev, .. } => {
                dev.link_state().generation
            }
            Tenancy::Service { .. } => 0,
        };
        let shared_line = matches!(tenancy, Tenancy::Service { .. });
        let c = Connection {
            shared,
            tenancy,
            own_block,
            vector,
            shared_line,
            peer_block,
            their_loc,
            rx_ring,
            tx_ring,
            tcp_fd: std::sync::atomic::AtomicI32::new(tcp_fd),
            local,
            peer,
            role,
            rx_lock: SendLock::default(),
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
            family: holders::Family::new(sys::inode(tcp_fd).unwrap_or(0)),
        };
        // Tell the peer that this end is made (no CPU yet: that is told at its first wait): a
        // waiter whose peer's word is still 0 sleeps at once instead of spinning (see `wait`).
        atomic_u32_at(&c.peer_block, CR_PEER_CPU).store(PEER_MADE, Relaxed);
        c
    }

    #[inline(always)]
    // `c` is one of the 17 counters: its offset is inside the counter block.
    #[allow(clippy::arithmetic_side_effects)]
    fn count(&self, c: Counter, n: u64) {
        // Statistics only: a plain add (no locked instruction on the hot path); a rare race
        // between this process's send and receive paths may lose a count of the shared ones.
        let w = atomic_u64_at(&self.own_block, C_BASE + 8 * c as usize);
        w.store(w.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// A counter's value.
    // As in `count`: a constant offset.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn counter(&self, c: Counter) -> u64 {
        atomic_u64_at(&self.own_block, C_BASE + 8 * c as usize).load(Relaxed)
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

    /// The peer's ring location.
    pub fn peer_ring(&self) -> RingLoc {
        self.their_loc
    }
}
