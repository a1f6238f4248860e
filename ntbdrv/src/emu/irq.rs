//! Interrupt lines on one kernel: what a doorbell ring does after its status bit is set (bump
//! the sequence word, wake futex sleepers, kick the per-bit FIFO of a bit with a listener) and
//! the FIFO paths that stand in for VFIO MSI-X eventfds.
//!
//! Owns: `raise_db_interrupt`, the line paths, the armed-bits registers and `kick_line`. Must
//! never keep a line open (an fd the application does not know about) nor write to anything but
//! a FIFO; on a bridge it hands the interrupt to the mailbox (`bridge.rs`) instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;

use ntb_sys as sys;

use super::EmuDevice;
use crate::{sysutil, SideId};

impl EmuDevice {
    pub(super) fn vector_path(&self, side: SideId, bit: u32) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!("{stem}.s{side}.db{bit}"))
    }

    pub(super) fn msi_path(&self, side: SideId, v: u32) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!("{stem}.s{side}.v{v}"))
    }

    pub(super) fn vector_armed(&self, side: SideId) -> (&AtomicU32, &AtomicU32) {
        (
            self.nt_reg(side, sys::NTBEMU_REG_VEC_ARMED_LO),
            self.nt_reg(side, sys::NTBEMU_REG_VEC_ARMED_HI),
        )
    }

    /// Deliver the interrupt for newly pending, unmasked `bits` on `side` (what the MSI-X
    /// message does on hardware): bump the sequence word, wake futex sleepers, kick the FIFOs of
    /// bits that have a listener.
    pub(super) fn raise_db_interrupt(&self, side: SideId, bits: u64) {
        if self.bridge.is_some() {
            self.nt_reg(side, sys::NTBEMU_REG_DB_SEQ)
                .fetch_add(1, SeqCst);
            // As below: only bits whose line has a listener interrupt (a line armed later must
            // not see an old ring).
            let (lo, hi) = self.vector_armed(side);
            let armed = lo.load(SeqCst) as u64 | (hi.load(SeqCst) as u64) << 32;
            if bits & armed != 0 {
                self.post_interrupt(side, bits & armed, None);
            }
            return;
        }
        // Doorbell interrupt: pairs with `db_wait`'s sleep — either the waiter sees the new SEQ
        // or status, or we see it counted and wake it.
        super::sync::announce(
            &super::sync::Futex,
            self.nt_reg(side, sys::NTBEMU_REG_DB_SEQ),
            self.nt_reg(side, sys::NTBEMU_REG_DB_WAITERS),
            true,
        );
        let (lo, hi) = self.vector_armed(side);
        let armed = lo.load(SeqCst) as u64 | (hi.load(SeqCst) as u64) << 32;
        let mut kick = bits & armed;
        if kick == 0 {
            return;
        }
        while kick != 0 {
            let bit = kick.trailing_zeros();
            kick &= kick - 1;
            kick_line(&self.vector_path(side, bit));
        }
    }
}

impl EmuDevice {
    /// A link event: kick the line of every leased interrupt vector on every side of the
    /// device, so that a process sleeping on one (a connection's reader or sender, an epoll
    /// set watching it) looks at the link at once rather than at the end of its nap. A line
    /// kicked for nothing costs its sleeper one wake-up per link event. After the generation
    /// moved (`bump_link`): a sleeper the kick wakes sees the new link state.
    pub(super) fn kick_vector_lines(&self) {
        let sides: SideId = match self.config.topology {
            super::Topology::Loopback => 1,
            super::Topology::TwoHost => 2,
        };
        for side in 0..sides {
            self.kick_leased_vector_lines(side);
        }
    }

    /// Kick the line of every vector leased on `side` (the link event's interrupt on one side;
    /// on a bridge, this machine's poller does it for its own side: `bridge.rs`).
    pub(super) fn kick_leased_vector_lines(&self, side: SideId) {
        let table = super::table::HostTable::new(
            &self.map,
            self.side_off(side) + sys::NTBEMU_SIDE_HOST_TABLE as usize,
        );
        for lease in table.leases() {
            if lease.kind == sys::NTBEMU_LEASE_VECTOR {
                kick_line(&self.msi_path(side, lease.index));
            }
        }
    }
}

/// Kick an interrupt line (FIFO) by path. Opened for each kick and closed at once: an fd kept
/// open here would be one the application does not know about (and might close or count).
/// O_RDWR, not O_WRONLY: a FIFO whose reader is gone answers a write with EPIPE and a SIGPIPE to
/// the application; holding both ends, it always has a reader. Only a FIFO is written
/// (`sysutil::open_fifo`).
pub(super) fn kick_line(path: &Path) {
    if let Ok(fd) = sysutil::open_fifo(path) {
        sysutil::kick(&fd);
    }
}
