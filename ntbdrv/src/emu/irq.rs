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
