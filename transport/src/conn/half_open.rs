//! Our half of a connection before the peer's half is known (`HalfOpen`): leasing window
//! space and an interrupt vector, initialising our endpoint block, and taking a pending offer
//! over after exec. Called by the device rendezvous (`lib.rs`); it never reuses a block whose
//! previous peer may still write into it.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use ntbdrv::{Lease, NtbDevice, Region, VectorLease, WindowLease};

use super::block::{
    atomic_u32_at, atomic_u64_at, previous_peer, INFO_BASE, INFO_MAGIC, L_MY_BELL_SLOT, L_MY_BIT,
    L_OFFER_GEN, L_OFFER_SLOT, L_PEER_LEN, L_PEER_OFF, L_SOCK_INODE,
};
use super::{Info, Role};
use crate::proto::{Endpoint, RingLoc, BLOCK_OVERHEAD, RING_START};
use crate::sys;

/// Smallest receive ring a connection falls back to when window space runs short.
const MIN_ADAPTIVE_RING: u64 = 64 << 10;

/// Our half of a connection before the peer's half is known (a client waiting for its answer).
pub(crate) struct HalfOpen {
    pub own_block: Region,
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
                    let l = match dev.lease_window(
                        mw,
                        BLOCK_OVERHEAD.saturating_add(ring),
                        crate::ENDPOINT_TAG,
                    ) {
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
                        Ok((Some(peer_block), b)) => park(l, b, peer_block),
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
        let own_block = match dev
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
        // A fresh endpoint block: zero the header (the previous tenant's words; the ring, from
        // `RING_START` on, is never taken for frames: docs/PROTOCOL.md §2), then identity.
        let _ = own_block.fill(0, RING_START as usize, 0);
        let info = Info {
            role,
            local,
            peer,
            pid: ntbdrv::process::pid(),
        };
        let _ = own_block.write(INFO_BASE + 8, &info.encode());
        atomic_u32_at(&own_block, L_MY_BIT).store(bell.vector, Relaxed);
        atomic_u32_at(&own_block, L_MY_BELL_SLOT).store(bell.slot, Relaxed);
        atomic_u32_at(&own_block, INFO_BASE).store(INFO_MAGIC, Release);
        Ok(HalfOpen {
            own_block,
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
            pid: ntbdrv::process::pid(),
        };
        let _ = self.own_block.write(INFO_BASE + 8, &info.encode());
    }

    /// Record the posted offer in our block (slot, generation, cookie, the socket's inode), so a
    /// new image of this process can take the offer over after exec.
    pub(crate) fn record_offer(&self, index: u32, generation: u32, cookie: u64, tcp_fd: RawFd) {
        atomic_u32_at(&self.own_block, L_OFFER_SLOT).store(index, Relaxed);
        atomic_u32_at(&self.own_block, L_OFFER_GEN).store(generation, Relaxed);
        atomic_u64_at(&self.own_block, L_PEER_OFF).store(cookie, Relaxed);
        atomic_u64_at(&self.own_block, L_PEER_LEN).store(0, Relaxed);
        atomic_u64_at(&self.own_block, L_SOCK_INODE)
            .store(sys::inode(tcp_fd).unwrap_or(0), Release);
    }

    /// After exec: our half of a connection whose offer was still pending, found by the
    /// socket's inode; returns it with the offer's slot, generation and cookie and the ends.
    #[allow(clippy::type_complexity)]
    pub(crate) fn reattach(
        dev: &dyn NtbDevice,
        lease: WindowLease,
        tcp_fd: RawFd,
    ) -> Option<(HalfOpen, u32, u32, u64, Endpoint, Endpoint)> {
        let own_block = dev
            .inbound(lease.mw)
            .ok()?
            .slice(lease.offset as usize, lease.len as usize)
            .ok()?;
        if atomic_u32_at(&own_block, INFO_BASE).load(Acquire) != INFO_MAGIC
            || atomic_u64_at(&own_block, L_PEER_LEN).load(Acquire) != 0
        {
            return None;
        }
        let inode = sys::inode(tcp_fd)?;
        if inode == 0 || atomic_u64_at(&own_block, L_SOCK_INODE).load(Acquire) != inode {
            return None;
        }
        let mut ib = [0u8; 48];
        own_block.read(INFO_BASE + 8, &mut ib).ok()?;
        let info = Info::decode(&ib);
        if info.pid != ntbdrv::process::pid() {
            return None;
        }
        let bell = VectorLease {
            vector: atomic_u32_at(&own_block, L_MY_BIT).load(Relaxed),
            slot: atomic_u32_at(&own_block, L_MY_BELL_SLOT).load(Relaxed),
        };
        let vector = dev.vector_fd(bell.vector).ok()?;
        let loc = RingLoc {
            mw: lease.mw,
            offset: lease.offset,
            len: lease.len,
            db_bit: bell.vector,
        };
        let index = atomic_u32_at(&own_block, L_OFFER_SLOT).load(Relaxed);
        let generation = atomic_u32_at(&own_block, L_OFFER_GEN).load(Relaxed);
        let cookie = atomic_u64_at(&own_block, L_PEER_OFF).load(Relaxed);
        Some((
            HalfOpen {
                own_block,
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
        atomic_u32_at(&self.own_block, INFO_BASE).store(0, Release);
        let _ = dev.release(Lease::Window(self.lease));
        let _ = dev.release(Lease::Vector(self.bell));
    }
}
