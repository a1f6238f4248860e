//! The endpoint block's layout: where each word of a connection's lease lies (the RX and CREDIT
//! lines the peer writes, our LOCAL lines, counters, identity), the accessors for those words, and
//! what a block tells about its tenants (`peer_alive`, `peer_finished`). Used by every part of
//! `conn`, by `pcisock stats` (through `stats`) and by the device rendezvous's quarantine of
//! reused blocks; it never trusts a value read from a block (the callers validate them).

use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};

use ntbdrv::{FixedRegion, NtbDevice, Region};

use super::Info;
use crate::proto::RING_START;

// RX line: written by the peer, the producer counter alone (stored after every frame; a
// receiver waiting for data watches the next frame's header instead, so this line stays with
// the sender).
pub(super) const RX_TAIL: usize = 0x00;
// CREDIT line: written by the peer, all but `head` rarely (the peer's flags as a sender and its
// wait for credits included: a send reads them, and they must not share the line that moves
// with every frame).
pub(super) const RX_FLAGS: usize = 0x54;
pub(super) const RX_TX_WAITING: usize = 0x58;
pub(super) const CR_HEAD: usize = 0x40;
pub(super) const CR_RX_SLEEPING: usize = 0x48;
pub(super) const CR_CLOSED: usize = 0x4C;
/// The CPU the peer last waited on, plus one (0: not known). A hint for `wait`.
pub(super) const CR_PEER_CPU: usize = 0x50;
/// `CR_PEER_CPU` of an end whose peer is made but has not told a CPU yet (a CPU is told as
/// its number plus one, so this is never one); 0 there: the peer's end is not made yet.
pub(super) const PEER_MADE: u32 = u32::MAX;
/// The peer's slot in its process's tally page (over the host fabric service): count each ring
/// there before ringing (`conn::tally`; 0: none, a hint like every word here).
pub(super) const CR_TALLY: usize = 0x5C;
// LOCAL lines: ours, but in the block the peer can write. The cursors here are only a copy of
// the private ones in `Cursors`, for the other processes holding the connection (see
// `Connection::rx_pos`).
pub(super) const L_RX_HEAD: usize = 0x80;
pub(super) const L_RX_OFF: usize = 0x88;
pub(super) const L_RX_SEQ: usize = 0x90;
pub(super) const L_TX_TAIL: usize = 0xC0;
pub(super) const L_TX_SEQ: usize = 0xC8;
/// Failover's view of our sending direction, for the other processes holding the connection
/// (`Connection::claim_tx_view`): bytes sent on TCP since the END while ON_TCP (u64), and the
/// pid of the process whose view is current, the last to send or switch (u32, 0: none yet).
pub(super) const L_TX_TCP_SENT: usize = 0x98;
pub(super) const L_TX_SENDER: usize = 0xF8;
// Counters (ours): read by `pcisock stats` through the device.
pub(crate) const C_BASE: usize = 0x100;
// Identity block (ours): the magic, then `Info` (48 bytes) at +8.
pub(crate) const INFO_BASE: usize = 0x200;
pub(crate) const INFO_MAGIC: u32 = 0x5043_4550; // "PCEP"

// Every word of the header lies below the ring (the identity is the last), and the counters
// below the identity.
const _: () = assert!(INFO_BASE + 8 + 48 <= RING_START as usize);
const _: () = assert!(C_BASE + 8 * super::COUNTER_NAMES.len() <= INFO_BASE);

/// FIN: the sender will send no more. RST: the sender aborted. GONE: the peer closed and will
/// never write into this endpoint block again (its last write): the block may be reused.
pub(super) const FLAG_FIN: u32 = 1;
pub(super) const FLAG_RST: u32 = 2;
pub(super) const FLAG_GONE: u32 = 4;

/// A connection's endpoint block as the connection holds it: its header's length (the words
/// below the ring, `RING_START`) and its base's alignment checked once, when the connection is
/// made ([`endpoint_block`]), so that the words the data path touches at constant offsets cost
/// no run-time check.
pub(crate) type EndpointBlock = FixedRegion<{ RING_START as usize }>;

/// `r` as an [`EndpointBlock`]; `None` if it is shorter than an endpoint header or misaligned.
pub(crate) fn endpoint_block(r: Region) -> Option<EndpointBlock> {
    r.fixed().ok()
}

/// Memory whose words the block's accessors reach: a plain region (checked per access) or an
/// [`EndpointBlock`] (checked once).
pub(crate) trait Words {
    fn word32(&self, off: usize) -> Result<&AtomicU32, ntbdrv::WindowError>;
    fn word64(&self, off: usize) -> Result<&AtomicU64, ntbdrv::WindowError>;
}

impl Words for Region {
    #[inline(always)]
    fn word32(&self, off: usize) -> Result<&AtomicU32, ntbdrv::WindowError> {
        self.atomic_u32(off)
    }
    #[inline(always)]
    fn word64(&self, off: usize) -> Result<&AtomicU64, ntbdrv::WindowError> {
        self.atomic_u64(off)
    }
}

impl Words for EndpointBlock {
    #[inline(always)]
    fn word32(&self, off: usize) -> Result<&AtomicU32, ntbdrv::WindowError> {
        self.atomic_u32(off)
    }
    #[inline(always)]
    fn word64(&self, off: usize) -> Result<&AtomicU64, ntbdrv::WindowError> {
        self.atomic_u64(off)
    }
}

// The offsets are this module's constants, inside the endpoint header (below `RING_START`,
// checked below), and every region
// they are used on is a whole endpoint block (ours, or the peer's, whose length `RingLoc::check`
// validated): nothing a peer writes reaches these `expect`s.
#[allow(clippy::expect_used)]
#[inline(always)]
pub(crate) fn atomic_u32_at<W: Words + ?Sized>(r: &W, off: usize) -> &AtomicU32 {
    r.word32(off)
        .expect("endpoint layout offsets are in range and aligned")
}

#[allow(clippy::expect_used)]
#[inline(always)]
pub(crate) fn atomic_u64_at<W: Words + ?Sized>(r: &W, off: usize) -> &AtomicU64 {
    r.word64(off)
        .expect("endpoint layout offsets are in range and aligned")
}

/// Does a process that holds the endpoint block `peer_block` (its creator, or a holder it was
/// handed to) still live on this host? A pid reused by another process counts as alive: the
/// caller then only waits longer.
/// For a freshly leased block: `Some` if its previous tenant died while connected (the block's
/// identity and peer location are still there, and the peer has not made its last write), with
/// the peer's block when the peer is on this host (the block waits while a process holding it
/// lives; a peer on another host cannot be asked: quarantine).
pub(super) fn previous_peer(dev: &dyn NtbDevice, block: &Region) -> Option<Option<Region>> {
    if atomic_u32_at(block, INFO_BASE).load(Acquire) != INFO_MAGIC || peer_finished(block) {
        return None;
    }
    let len = atomic_u64_at(block, L_PEER_LEN).load(Acquire);
    if len == 0 {
        return None; // it never connected: no peer knows this block
    }
    let same_host = dev.side() == dev.peer_side();
    let peer_block = same_host
        .then(|| {
            dev.outbound(atomic_u32_at(block, L_PEER_MW).load(Relaxed))
                .and_then(|w| {
                    w.slice(
                        atomic_u64_at(block, L_PEER_OFF).load(Relaxed) as usize,
                        len as usize,
                    )
                })
                .ok()
        })
        .flatten();
    Some(peer_block)
}

pub(crate) fn peer_alive(peer_block: &Region) -> bool {
    let mut ib = [0u8; 48];
    let creator = peer_block
        .read(INFO_BASE + 8, &mut ib)
        .map(|()| Info::decode(&ib).pid)
        .unwrap_or(0);
    std::iter::once(creator)
        .chain((0..MAX_HOLDERS).map(|i| atomic_u32_at(peer_block, holder_pid(i)).load(SeqCst)))
        .any(|pid| pid != 0 && ntbdrv::process::pid_exists(pid))
}

/// Has the peer of this (closed) endpoint block made its last write into it?
pub(crate) fn peer_finished(block: &Region) -> bool {
    super::ringsync::peer_finished(block)
}

// Where the peer's ring is and who we are: read back by `reattach` in an exec'd image.
pub(super) const L_PEER_MW: usize = 0xD0;
pub(super) const L_PEER_BIT: usize = 0xD4;
pub(super) const L_PEER_OFF: usize = 0xD8;
pub(super) const L_PEER_LEN: usize = 0xE0;
pub(super) const L_SOCK_INODE: usize = 0xE8;
pub(super) const L_MY_BIT: usize = 0xF0;
pub(super) const L_MY_BELL_SLOT: usize = 0xF4;
/// While the offer is pending (the peer's ring length is still 0): its slot and generation; the
/// cookie is kept where the peer's ring offset will go.
pub(super) const L_OFFER_SLOT: usize = 0xA8;
pub(super) const L_OFFER_GEN: usize = 0xAC;
pub(super) const L_STATE: usize = 0xA0;
/// Processes holding this endpoint (a forked child shares its parent's connections).
pub(super) const L_HOLDERS: usize = 0xA4;
/// Their pids, up to `MAX_HOLDERS` (for handing the leases on when one leaves).
pub(super) const L_HOLDER_PIDS: usize = 0xB0;
pub(super) const MAX_HOLDERS: usize = 4;

/// Where the ring byte at position `pos` (below the ring's capacity) is in the block.
// A ring position is below the ring's capacity, at most `MAX_RING` (2^30): no overflow.
#[allow(clippy::arithmetic_side_effects)]
#[inline(always)]
pub(super) const fn ring_at(pos: u64) -> usize {
    (RING_START + pos) as usize
}

/// Where the payload of the frame at ring position `pos` starts, as [`ring_at`].
#[allow(clippy::arithmetic_side_effects)]
#[inline(always)]
pub(super) const fn payload_at(pos: u64) -> usize {
    (RING_START + pos + crate::proto::FRAME_HDR) as usize
}

/// Where holder `i`'s pid is (`i` below [`MAX_HOLDERS`]).
// Every caller ranges `i` over `0..MAX_HOLDERS`: the offset is inside the holder table.
#[allow(clippy::arithmetic_side_effects)]
pub(super) const fn holder_pid(i: usize) -> usize {
    L_HOLDER_PIDS + 4 * i
}
pub(super) const ST_SHUT_RD: u32 = 1;
pub(super) const ST_SHUT_WR: u32 = 2;
pub(super) const ST_CLOSED: u32 = 4;
/// Our sending direction is on the TCP socket after a failover (for `pcisock stats`).
pub(crate) const ST_ON_TCP: u32 = 8;
pub(crate) const L_STATE_PUB: usize = L_STATE;

// The host fabric service reads an end's counters out of its segment for `pcisock stats`
// (fabric::service, `List`) without depending on this crate: its idea of the layout is this.
// Across the bridge it parks a block whose identity says a live end still uses it.
const _: () = {
    use fabric::service as svc;
    assert!(svc::BLOCK_STATE == L_STATE && svc::STATE_ON_TCP == ST_ON_TCP);
    assert!(svc::BLOCK_INFO == INFO_BASE && svc::BLOCK_INFO_MAGIC == INFO_MAGIC);
    assert!(svc::BLOCK_COUNTERS == C_BASE);
    assert!(svc::BLOCK_OVERHEAD == crate::proto::BLOCK_OVERHEAD);
    assert!(svc::RING_START == RING_START);
    assert!(fabric::wire::END_COUNTERS == super::COUNTER_NAMES.len());
};
