//! A connection the host fabric services paired across the bridge (docs/HOST-SERVICE.md,
//! phase 3): our end's block is a slice of this host's inbound window that our service leased,
//! the peer's a slice of the other host's, reached through our outbound window; each end's
//! reader sleeps on an interrupt vector its service leased. The rings are the device's
//! (`Connection::new` runs the same layout); only where the memory comes from, and who gives
//! it back (the services, when both ends are closed), differ. It never maps a slice the
//! service did not name, and checks each against the window before use.

use std::sync::atomic::Ordering::Release;
use std::sync::Arc;

use ntbdrv::NtbDevice;

use super::block::{atomic_u32_at, endpoint_block, INFO_BASE, INFO_MAGIC};
use super::{Connection, Info, Role, Tenancy};
use crate::proto::{Endpoint, Ring, RingLoc, BLOCK_OVERHEAD};
use crate::{ProcessState, Reason};

impl Connection {
    /// The connection `b` our service answered with, on the device `dev` this process maps.
    pub(crate) fn from_bridge(
        shared: Arc<ProcessState>,
        dev: Arc<dyn NtbDevice>,
        b: fabric::Bridged,
        tcp_fd: std::os::fd::RawFd,
        role: Role,
        local: Endpoint,
        peer: Endpoint,
    ) -> Result<Connection, Reason> {
        let ring = Ring::new(b.ring_bytes).ok_or(Reason::BadPeer)?;
        let len = BLOCK_OVERHEAD
            .checked_add(b.ring_bytes)
            .ok_or(Reason::BadPeer)?;
        if b.own.len < len || b.peer.len < len {
            return Err(Reason::BadPeer);
        }
        let slice = |r: Result<ntbdrv::Region, ntbdrv::WindowError>, off: u64| {
            r.and_then(|w| w.slice(off as usize, len as usize))
                .ok()
                .and_then(endpoint_block)
                .ok_or(Reason::BadPeer)
        };
        let own_block = slice(dev.inbound(b.own.mw), b.own.offset)?;
        let peer_block = slice(dev.outbound(b.peer.mw), b.peer.offset)?;
        let vector = dev.vector_fd(b.own.vector).map_err(|e| match e {
            ntbdrv::DoorbellError::Denied(_) => Reason::NoPermission,
            _ => Reason::NoDoorbell,
        })?;
        ntbdrv::drain_vector(&vector);
        let info = Info {
            role,
            local,
            peer,
            pid: ntbdrv::process::pid(),
        };
        let _ = own_block.write(INFO_BASE + 8, &info.encode());
        atomic_u32_at(&own_block, INFO_BASE).store(INFO_MAGIC, Release);
        let their_loc = RingLoc {
            mw: b.peer.mw,
            offset: b.peer.offset,
            len,
            db_bit: b.peer.vector,
        };
        let tenancy = Tenancy::Bridged { dev, conn: b.conn };
        let c = Connection::assemble(
            shared,
            tenancy,
            own_block,
            Arc::new(vector),
            peer_block,
            their_loc,
            ring,
            ring,
            tcp_fd,
            role,
            local,
            peer,
            Box::default(),
        );
        c.hold();
        Ok(c)
    }
}
