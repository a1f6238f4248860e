//! The emulated device as an [`NtbDevice`]: link, windows, doorbells, vectors, scratchpads,
//! DMA channels and leases, each in terms of the registers and host table `mod.rs` locates.
//!
//! Owns: the trait's semantics on the emulation (bounds checks, link-down errors, injected
//! faults at the points hardware would fail). Must never give a caller more than a bridge
//! would: only the peer's *inbound* windows and registers a real NT port exposes.

use std::mem::offset_of;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::{Duration, Instant};

use ntb_sys as sys;

use super::bridge::{BRIDGE_LINK_NAP, BRIDGE_NAP, MB_DB};
use super::config::Topology;
use super::irq::kick_line;
use super::{dma, fault, sync, EmuDevice};
use crate::error::*;
use crate::region::Region;
use crate::sysutil;
use crate::{DmaChannel, DoorbellLease, Lease, LinkState, MwAlign, NtbDevice, SideId, WindowLease};

impl NtbDevice for EmuDevice {
    fn describe(&self) -> String {
        if let Some(b) = &self.bridge {
            return format!("{}, side {}", b.describe(), self.side);
        }
        let topo = match self.config.topology {
            Topology::Loopback => "loopback",
            Topology::TwoHost => "two-host",
        };
        format!("emu:{} ({topo}, side {})", self.path.display(), self.side)
    }

    fn side(&self) -> SideId {
        self.side
    }

    fn peer_side(&self) -> SideId {
        self.peer
    }

    fn link_state(&self) -> LinkState {
        let up = self.link_up();
        let status = if up { 1 | 3 << 16 | 8 << 20 } else { 0 };
        self.nt_reg(self.side, sys::NTBEMU_REG_LINK_STATUS)
            .store(status, Relaxed);
        LinkState {
            up,
            speed_gen: 3,
            width: 8,
            generation: self.link_generation().load(Acquire),
        }
    }

    fn link_enable(&self) -> Result<(), LinkError> {
        let ctrl = self.nt_reg(self.side, sys::NTBEMU_REG_LINK_CTRL);
        if ctrl.load(SeqCst) & 1 == 0 {
            // The generation first, then the link up (`new_link_generation`); two enables at
            // once may both bump it, which only says "something changed" once more.
            self.new_link_generation();
            if ctrl.fetch_or(1, SeqCst) & 1 == 0 {
                self.announce_link();
            }
        }
        if fault::active(self, sys::NTBEMU_FAULT_LINK_DOWN) {
            return Err(LinkError::HeldDown);
        }
        Ok(())
    }

    fn link_disable(&self) -> Result<(), LinkError> {
        let prev = self
            .nt_reg(self.side, sys::NTBEMU_REG_LINK_CTRL)
            .fetch_and(!1, SeqCst);
        if prev & 1 == 1 {
            self.bump_link();
        }
        Ok(())
    }

    fn link_wait(&self, seen: u32, timeout: Duration) -> LinkState {
        let deadline = Instant::now() + timeout;
        let waiters = self.header_u32(offset_of!(sys::ntbemu_header, link_waiters));
        loop {
            let g = self.link_generation().load(Acquire);
            if g != seen {
                return self.link_state();
            }
            let now = Instant::now();
            if now >= deadline {
                return self.link_state();
            }
            if self.bridge.is_some() {
                // Link events are rare and not urgent: a waiter (a listener waiting for the
                // other machine) must not cost a wake-up every 50 µs while the link is down.
                std::thread::sleep(BRIDGE_LINK_NAP.min(deadline - now));
                continue;
            }
            sync::sleep_unless(
                &sync::Futex,
                self.link_generation(),
                waiters,
                || self.link_generation().load(SeqCst) == seen,
                Some(deadline - now),
            );
        }
    }

    fn mw_count(&self) -> u32 {
        self.config.n_mw
    }

    fn mw_align(&self, mw: u32) -> Result<MwAlign, WindowError> {
        if mw >= self.config.n_mw {
            return Err(WindowError::NoSuchWindow {
                mw,
                count: self.config.n_mw,
            });
        }
        Ok(MwAlign {
            addr_align: self.config.mw_align,
            size_align: self.config.mw_align,
            size_max: self.config.mw_size,
        })
    }

    fn inbound(&self, mw: u32) -> Result<Region, WindowError> {
        self.window_region(self.side, mw)
    }

    fn outbound(&self, mw: u32) -> Result<Region, WindowError> {
        self.window_region(self.peer, mw)
    }

    fn db_valid_mask(&self) -> u64 {
        if self.config.n_db >= 64 {
            u64::MAX
        } else {
            (1u64 << self.config.n_db) - 1
        }
    }

    fn db_read(&self) -> u64 {
        let (lo, hi) = self.db_status_words(self.side);
        sync::pending_bits(lo, hi)
    }

    fn db_clear(&self, bits: u64) -> Result<(), DoorbellError> {
        self.check_bits(bits)?;
        let (lo, hi) = self.db_status_words(self.side);
        lo.fetch_and(!(bits as u32), SeqCst);
        hi.fetch_and(!((bits >> 32) as u32), SeqCst);
        Ok(())
    }

    fn db_read_mask(&self) -> u64 {
        let (lo, hi) = self.db_mask_words(self.side);
        lo.load(Acquire) as u64 | (hi.load(Acquire) as u64) << 32
    }

    fn db_set_mask(&self, bits: u64) -> Result<(), DoorbellError> {
        self.check_bits(bits)?;
        let (lo, hi) = self.db_mask_words(self.side);
        lo.fetch_or(bits as u32, SeqCst);
        hi.fetch_or((bits >> 32) as u32, SeqCst);
        Ok(())
    }

    fn db_clear_mask(&self, bits: u64) -> Result<(), DoorbellError> {
        self.check_bits(bits)?;
        let (lo, hi) = self.db_mask_words(self.side);
        lo.fetch_and(!(bits as u32), SeqCst);
        hi.fetch_and(!((bits >> 32) as u32), SeqCst);
        // Unmasking a pending bit raises its interrupt, as the hardware does.
        let pending = self.db_read() & bits;
        if pending != 0 {
            self.raise_db_interrupt(self.side, pending);
        }
        Ok(())
    }

    fn peer_db_set(&self, bits: u64) -> Result<(), DoorbellError> {
        self.check_bits(bits)?;
        if !self.link_up() {
            return Err(DoorbellError::LinkDown);
        }
        if fault::take(self, sys::NTBEMU_FAULT_LOST_DB) {
            return Ok(()); // the posted write vanished on the link
        }
        let (lo, hi) = self.db_status_words(self.peer);
        sync::ring_bits(lo, hi, bits);
        let (mlo, mhi) = self.db_mask_words(self.peer);
        let mask = mlo.load(SeqCst) as u64 | (mhi.load(SeqCst) as u64) << 32;
        let fire = bits & !mask;
        if fire != 0 {
            self.raise_db_interrupt(self.peer, fire);
        }
        Ok(())
    }

    fn db_wait(&self, bits: u64, timeout: Option<Duration>) -> Result<u64, DoorbellError> {
        self.check_bits(bits)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let seq = self.nt_reg(self.side, sys::NTBEMU_REG_DB_SEQ);
        let waiters = self.nt_reg(self.side, sys::NTBEMU_REG_DB_WAITERS);
        loop {
            let pending = self.db_read() & bits;
            if pending != 0 {
                return Ok(pending);
            }
            let remaining = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return Ok(0),
                },
                None => None,
            };
            if self.bridge.is_some() {
                // Poll the status word (the peer machine cannot wake a futex here).
                std::thread::sleep(remaining.map_or(BRIDGE_NAP, |r| r.min(BRIDGE_NAP)));
                continue;
            }
            // Doorbell sleep: pairs with `raise_db_interrupt` (no lost wake-up).
            sync::sleep_unless(
                &sync::Futex,
                seq,
                waiters,
                || self.db_read() & bits == 0,
                remaining,
            );
        }
    }

    fn db_vector_fd(&self, bit: u32) -> Result<OwnedFd, DoorbellError> {
        if bit >= self.config.n_db {
            return Err(DoorbellError::InvalidBits {
                bits: 1u64.checked_shl(bit).unwrap_or(0),
                valid: self.db_valid_mask(),
            });
        }
        let path = self.vector_path(self.side, bit);
        sysutil::mkfifo(&path).map_err(|e| DoorbellError::line("mkfifo", &path, e))?;
        // O_RDWR keeps a writer on the FIFO, so poll never reports a hang-up.
        let fd = sysutil::open_fifo(&path).map_err(|e| DoorbellError::line("open", &path, e))?;
        if self.bridge.is_some() {
            // A ring posted before this line had its listener is not this listener's interrupt
            // (on a device file it would have kicked no FIFO). Cleared before arming: a ring
            // after the arming is.
            let mb = self.side_off(self.side) + MB_DB + 4 * (bit as usize / 32);
            self.map.u32_at(mb).fetch_and(!(1 << (bit % 32)), SeqCst);
        }
        let (lo, hi) = self.vector_armed(self.side);
        if bit < 32 {
            lo.fetch_or(1 << bit, SeqCst);
        } else {
            hi.fetch_or(1 << (bit - 32), SeqCst);
        }
        if self.bridge.is_some() {
            self.start_poller();
        }
        Ok(fd)
    }

    fn vector_count(&self) -> u32 {
        sys::NTBEMU_MAX_VECTORS
    }

    fn lease_vector(&self, tag: u32) -> Result<crate::VectorLease, LeaseError> {
        let t = self.table();
        let n = sys::NTBEMU_MAX_VECTORS;
        let (vector, slot) = match t.lease_index(sys::NTBEMU_LEASE_VECTOR, n, tag) {
            Err(_) if t.reclaim() > 0 => t.lease_index(sys::NTBEMU_LEASE_VECTOR, n, tag),
            r => r,
        }
        .map_err(|e| match e {
            LeaseError::TableFull => LeaseError::TableFull,
            _ => LeaseError::DoorbellsExhausted { count: n },
        })?;
        Ok(crate::VectorLease { vector, slot })
    }

    fn vector_fd(&self, v: u32) -> Result<OwnedFd, DoorbellError> {
        if v >= sys::NTBEMU_MAX_VECTORS {
            return Err(DoorbellError::Vector(format!(
                "vector {v} does not exist (the side has {})",
                sys::NTBEMU_MAX_VECTORS
            )));
        }
        let path = self.msi_path(self.side, v);
        sysutil::mkfifo(&path).map_err(|e| DoorbellError::line("mkfifo", &path, e))?;
        if self.bridge.is_some() {
            self.start_poller();
        }
        // O_RDWR keeps a writer on the FIFO, so poll never reports a hang-up.
        sysutil::open_fifo(&path).map_err(|e| DoorbellError::line("open", &path, e))
    }

    fn peer_vector_trigger(&self, v: u32) -> Result<(), DoorbellError> {
        if v >= sys::NTBEMU_MAX_VECTORS {
            return Err(DoorbellError::Vector(format!(
                "vector {v} does not exist (the side has {})",
                sys::NTBEMU_MAX_VECTORS
            )));
        }
        if !self.link_up() {
            return Err(DoorbellError::LinkDown);
        }
        if fault::take(self, sys::NTBEMU_FAULT_LOST_DB) {
            return Ok(()); // the message write vanished on the link
        }
        if self.bridge.is_some() {
            self.post_interrupt(self.peer, 0, Some(v));
        } else {
            // The MSI message: a kick on the vector's line.
            kick_line(&self.msi_path(self.peer, v));
        }
        Ok(())
    }

    fn spad_count(&self) -> u32 {
        self.config.n_spad
    }

    fn spad_read(&self, idx: u32) -> Result<u32, ScratchpadError> {
        self.spad_check(idx)?;
        Ok(sync::spad_load(
            self.nt_reg(self.side, sys::ntbemu_reg_spad(idx)),
        ))
    }

    fn spad_write(&self, idx: u32, val: u32) -> Result<(), ScratchpadError> {
        self.spad_check(idx)?;
        sync::spad_store(self.nt_reg(self.side, sys::ntbemu_reg_spad(idx)), val);
        Ok(())
    }

    fn peer_spad_read(&self, idx: u32) -> Result<u32, ScratchpadError> {
        self.spad_check(idx)?;
        if !self.link_up() {
            return Err(ScratchpadError::LinkDown);
        }
        Ok(sync::spad_load(
            self.nt_reg(self.peer, sys::ntbemu_reg_spad(idx)),
        ))
    }

    fn peer_spad_write(&self, idx: u32, val: u32) -> Result<(), ScratchpadError> {
        self.spad_check(idx)?;
        if !self.link_up() {
            return Err(ScratchpadError::LinkDown);
        }
        sync::spad_store(self.nt_reg(self.peer, sys::ntbemu_reg_spad(idx)), val);
        Ok(())
    }

    fn dma_channel_count(&self) -> u32 {
        self.config.n_dma_ch
    }

    fn dma_channel(&self) -> Result<Box<dyn DmaChannel>, DmaError> {
        dma::EmuDma::acquire(self).map(|c| Box::new(c) as Box<dyn DmaChannel>)
    }

    fn lease_window(&self, mw: u32, len: u64, tag: u32) -> Result<WindowLease, LeaseError> {
        if mw >= self.config.n_mw {
            return Err(LeaseError::Window(WindowError::NoSuchWindow {
                mw,
                count: self.config.n_mw,
            }));
        }
        if len == 0 || len > self.config.mw_size {
            return Err(LeaseError::Window(WindowError::OutOfRange {
                offset: 0,
                len,
                size: self.config.mw_size,
            }));
        }
        let len = len.div_ceil(self.config.mw_align) * self.config.mw_align;
        let t = self.table();
        match t.lease_window(mw, len, self.config.mw_size, tag) {
            Err(LeaseError::WindowFull { .. }) if t.reclaim() > 0 => {
                t.lease_window(mw, len, self.config.mw_size, tag)
            }
            r => r,
        }
    }

    fn reserve_window(
        &self,
        mw: u32,
        offset: u64,
        len: u64,
        tag: u32,
    ) -> Result<WindowLease, LeaseError> {
        if mw >= self.config.n_mw {
            return Err(LeaseError::Window(WindowError::NoSuchWindow {
                mw,
                count: self.config.n_mw,
            }));
        }
        let al = self.config.mw_align;
        if !offset.is_multiple_of(al) || len == 0 || !len.is_multiple_of(al) {
            return Err(LeaseError::Window(WindowError::Misaligned {
                offset,
                align: al,
            }));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.config.mw_size)
        {
            return Err(LeaseError::Window(WindowError::OutOfRange {
                offset,
                len,
                size: self.config.mw_size,
            }));
        }
        let t = self.table();
        match t.reserve(mw, offset, len, tag) {
            Err(LeaseError::WindowFull { .. }) if t.reclaim() > 0 => {
                t.reserve(mw, offset, len, tag)
            }
            r => r,
        }
    }

    fn lease_doorbell(&self, tag: u32) -> Result<DoorbellLease, LeaseError> {
        let t = self.table();
        let r = match t.lease_index(sys::NTBEMU_LEASE_DOORBELL, self.config.n_db, tag) {
            Err(LeaseError::DoorbellsExhausted { .. }) if t.reclaim() > 0 => {
                t.lease_index(sys::NTBEMU_LEASE_DOORBELL, self.config.n_db, tag)
            }
            r => r,
        }?;
        // A fresh lease starts with its bit clear, whatever the previous holder left.
        let _ = self.db_clear(1u64 << r.0);
        Ok(DoorbellLease {
            bit: r.0,
            slot: r.1,
        })
    }

    fn release(&self, lease: Lease) -> Result<(), LeaseError> {
        match lease {
            Lease::Window(w) => self.table().release(w.slot, sys::NTBEMU_LEASE_WINDOW),
            Lease::Vector(v) => self.table().release(v.slot, sys::NTBEMU_LEASE_VECTOR),
            Lease::Doorbell(d) => {
                let (lo, hi) = self.vector_armed(self.side);
                if d.bit < 32 {
                    lo.fetch_and(!(1 << d.bit), SeqCst);
                } else {
                    hi.fetch_and(!(1 << (d.bit - 32)), SeqCst);
                }
                self.table().release(d.slot, sys::NTBEMU_LEASE_DOORBELL)
            }
        }
    }

    fn transfer(&self, lease: Lease, pid: u32) -> Result<(), LeaseError> {
        let (slot, kind) = match lease {
            Lease::Window(w) => (w.slot, sys::NTBEMU_LEASE_WINDOW),
            Lease::Doorbell(d) => (d.slot, sys::NTBEMU_LEASE_DOORBELL),
            Lease::Vector(v) => (v.slot, sys::NTBEMU_LEASE_VECTOR),
        };
        self.table().transfer(slot, kind, pid)
    }

    fn reclaim(&self) -> usize {
        self.table().reclaim()
    }

    fn window_leases(&self, tag: u32) -> Vec<WindowLease> {
        self.table()
            .leases_with_slots()
            .into_iter()
            .filter(|(_, s)| s.kind == sys::NTBEMU_LEASE_WINDOW && s.tag == tag)
            .map(|(slot, s)| WindowLease {
                mw: s.index,
                offset: s.offset,
                len: s.len,
                slot,
            })
            .collect()
    }
}

impl EmuDevice {
    fn spad_check(&self, idx: u32) -> Result<(), ScratchpadError> {
        if idx >= self.config.n_spad {
            return Err(ScratchpadError::NoSuchScratchpad {
                idx,
                count: self.config.n_spad,
            });
        }
        Ok(())
    }
}
