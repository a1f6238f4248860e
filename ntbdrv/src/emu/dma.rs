//! The emulated DMA engine: a PLX-style channel (registers at `0x200 + 0x100*c` of the side's DMA
//! page, descriptors in the side's ring area) run by a thread of the process that leased the
//! channel — the process is the channel's "IOMMU domain", so host memory it maps for DMA is
//! reachable by the engine and nothing else is. Owns: the engine thread and what the channel
//! registers mean. Must never copy to or from memory outside the device's windows and the host
//! ranges its process registered, nor clear IN_PROGRESS before the bytes are stored.
//!
//! A batch starts when the submitter writes CTRL with START and IN_PROGRESS; the engine copies
//! each descriptor, writes back its status, and clears IN_PROGRESS only after the last byte is
//! stored (Release), so a poller that sees the bit clear (Acquire) sees the bytes.
//!
//! # Safety
//! The engine turns bus addresses into pointers only through `resolve`, which checks them
//! against the device's windows and this process's registered host ranges (a destination only
//! against ranges registered writable, `map_host_mut`); the copies then stay inside those
//! ranges. The host-range table stays locked from the check to the end of the copy, so an
//! `unmap_host` (after which the caller may free the memory) waits for a copy in flight.
//!
//! The descriptors and the fault words live in the device file, which any process attached to
//! the device can write: nothing the engine does on their word may hang its owner. `Drop` stops
//! the engine (which looks at its stop flag between descriptors and during an injected delay)
//! and waits for it a bounded time.
#![allow(unsafe_code)]

use std::mem::offset_of;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ntb_sys as sys;

use super::{fault, sync, EmuDevice};
use crate::error::{DmaError, LeaseError};
use crate::futex;
use crate::{BusAddr, Completion, DmaChannel, DmaDesc, DmaStatus};

const RING_LEN: usize = sys::NTBEMU_DMA_RING_LEN as usize;
const DESC_SIZE: usize = std::mem::size_of::<sys::plx_dma_desc>();
/// Largest byte count a descriptor carries (27 bits).
pub const MAX_DESC_LEN: u64 = sys::PLX_DESC_SIZE_MASK as u64;
/// How long the engine spins for new work before it sleeps (hardware never sleeps; a thread on a
/// 2-core machine must).
const ENGINE_SPIN: Duration = Duration::from_micros(20);

type D = sys::plx_dma_desc;

/// A host range this process mapped for DMA.
#[derive(Clone, Copy, Debug)]
struct HostMap {
    start: u64,
    len: u64,
    /// Registered as a destination (`map_host_mut`); otherwise the engine only reads it.
    writable: bool,
}

type HostMaps = Arc<Mutex<Vec<HostMap>>>;

/// How long `Drop` waits for the engine thread to stop before leaving it (and the channel's
/// lease, which returns to the host when the process exits) behind.
const ENGINE_STOP_WAIT: Duration = Duration::from_secs(2);
/// The engine looks at its stop flag this often during an injected delay.
const DELAY_SLICE: Duration = Duration::from_millis(1);

pub(crate) struct EmuDma {
    dev: Arc<EmuDevice>,
    index: u32,
    slot: u32,
    maps: HostMaps,
    stop: Arc<AtomicBool>,
    engine: Option<JoinHandle<()>>,
    submit_lock: Mutex<()>,
}

impl EmuDma {
    pub(crate) fn acquire(dev: &EmuDevice) -> Result<Self, DmaError> {
        let count = dev.config.n_dma_ch;
        if count == 0 {
            return Err(DmaError::NoChannel { count });
        }
        let t = dev.table();
        let (index, slot) = match t.lease_index(sys::NTBEMU_LEASE_DMA, count, 0) {
            Err(_) if t.reclaim() > 0 => t.lease_index(sys::NTBEMU_LEASE_DMA, count, 0),
            r => r,
        }
        .map_err(|e| match e {
            LeaseError::TableFull => DmaError::NoChannel { count },
            _ => DmaError::NoChannel { count },
        })?;
        let dev = Arc::new(dev.view());
        // A channel may come back from a process that died mid-batch: reset it.
        let ch = Channel { dev: &dev, index };
        ch.reg(sys::PLX_DMA_CTRL).store(0, SeqCst);
        ch.reg(sys::PLX_DMA_RING_COUNT).store(0, SeqCst);
        ch.reg(sys::PLX_DMA_RING_NEXT).store(0, SeqCst);
        ch.reg(sys::NTBEMU_DMA_OWNER_PID)
            .store(std::process::id(), SeqCst);
        let maps: HostMaps = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let engine = {
            let (dev, maps, stop) = (dev.clone(), maps.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("ntbemu-dma{index}"))
                .spawn(move || engine(&dev, index, &maps, &stop))
                .map_err(|e| {
                    DmaError::Mapping(format!("cannot start the DMA engine thread: {e}"))
                })?
        };
        Ok(Self {
            dev,
            index,
            slot,
            maps,
            stop,
            engine: Some(engine),
            submit_lock: Mutex::new(()),
        })
    }

    fn ch(&self) -> Channel<'_> {
        Channel {
            dev: &self.dev,
            index: self.index,
        }
    }

    fn map(&self, start: u64, len: usize, writable: bool) -> Result<BusAddr, DmaError> {
        if len == 0
            || start
                .checked_add(len as u64)
                .is_none_or(|end| end > sys::NTBEMU_BUS_HOST)
        {
            return Err(DmaError::Mapping(format!(
                "cannot map {len} bytes at {start:#x}"
            )));
        }
        let mut maps = self
            .maps
            .lock()
            .map_err(|_| DmaError::Mapping("mapping table poisoned".into()))?;
        if maps.len() >= 4096 {
            return Err(DmaError::Mapping("too many host mappings".into()));
        }
        maps.push(HostMap {
            start,
            len: len as u64,
            writable,
        });
        Ok(BusAddr(sys::NTBEMU_BUS_HOST + start))
    }
}

impl Drop for EmuDma {
    fn drop(&mut self) {
        // A batch still running belongs to an owner that gave up on it: the engine abandons it
        // at its next descriptor (or delay slice) rather than making the drop wait for it.
        self.stop.store(true, SeqCst);
        let bell = self.ch().reg(sys::NTBEMU_DMA_DOORBELL);
        bell.store(0, SeqCst);
        futex::wake_all(bell);
        // No host range stays reachable: this waits only for a copy in flight (bounded by its
        // length), never for a delay.
        if let Ok(mut m) = self.maps.lock() {
            m.clear();
        }
        let stopped = match self.engine.take() {
            Some(h) => {
                let t0 = Instant::now();
                while !h.is_finished() && t0.elapsed() < ENGINE_STOP_WAIT {
                    std::thread::sleep(DELAY_SLICE);
                }
                let done = h.is_finished();
                if done {
                    let _ = h.join();
                }
                done
            }
            None => true,
        };
        if stopped {
            self.ch().reg(sys::NTBEMU_DMA_OWNER_PID).store(0, SeqCst);
            let _ = self.dev.table().release(self.slot, sys::NTBEMU_LEASE_DMA);
        }
        // Otherwise the engine thread still runs: keep the channel leased, so no other owner
        // gets a channel two engines serve.
    }
}

/// Register access for one channel.
struct Channel<'a> {
    dev: &'a EmuDevice,
    index: u32,
}

impl<'a> Channel<'a> {
    fn reg(&self, off: u32) -> &'a AtomicU32 {
        self.dev
            .dma_reg(self.dev.side, sys::plx_dma_ch_base(self.index) + off)
    }

    fn intr_status(&self) -> &'a AtomicU32 {
        // INTR_CTRL (16 bits) and INTR_STATUS (16 bits) read as one word at 0x3C: status is the
        // upper half, as on the PLX part.
        self.reg(sys::PLX_DMA_INTR_CTRL)
    }

    fn ring_off(&self) -> usize {
        self.dev.side_off(self.dev.side)
            + sys::NTBEMU_SIDE_DMA_RINGS as usize
            + self.index as usize * RING_LEN * DESC_SIZE
    }

    fn desc_u32(&self, i: usize, field: usize) -> &'a AtomicU32 {
        self.dev.map.u32_at(self.ring_off() + i * DESC_SIZE + field)
    }

    fn status(&self) -> DmaStatus {
        let in_progress = sync::in_progress(self.reg(sys::PLX_DMA_CTRL));
        let intr = self.intr_status().load(Acquire) >> 16;
        DmaStatus {
            in_progress,
            error: intr & (sys::PLX_DMA_INTR_ERROR | sys::PLX_DMA_INTR_INVALID_DESC) != 0,
            done: self.reg(sys::PLX_DMA_RING_NEXT).load(Acquire),
        }
    }
}

fn split(addr: u64) -> (u16, u32) {
    ((addr >> 32) as u16, addr as u32)
}

impl DmaChannel for EmuDma {
    fn index(&self) -> u32 {
        self.index
    }

    fn map_host(&self, ptr: *const u8, len: usize) -> Result<BusAddr, DmaError> {
        self.map(ptr as u64, len, false)
    }

    fn map_host_mut(&self, ptr: *mut u8, len: usize) -> Result<BusAddr, DmaError> {
        self.map(ptr as u64, len, true)
    }

    fn unmap_host(&self, addr: BusAddr) -> Result<(), DmaError> {
        let start = addr
            .0
            .checked_sub(sys::NTBEMU_BUS_HOST)
            .ok_or(DmaError::BadAddress(addr))?;
        let mut maps = self
            .maps
            .lock()
            .map_err(|_| DmaError::Mapping("mapping table poisoned".into()))?;
        let i = maps
            .iter()
            .rposition(|m| m.start == start)
            .ok_or(DmaError::BadAddress(addr))?;
        maps.swap_remove(i);
        Ok(())
    }

    fn local_window_addr(&self, mw: u32, offset: u64) -> Result<BusAddr, DmaError> {
        let c = &self.dev.config;
        if mw >= c.n_mw || offset >= c.mw_size {
            return Err(DmaError::BadAddress(BusAddr(offset)));
        }
        Ok(BusAddr(mw as u64 * c.mw_size + offset))
    }

    fn peer_window_addr(&self, mw: u32, offset: u64) -> Result<BusAddr, DmaError> {
        let c = &self.dev.config;
        if mw >= c.n_mw || offset >= c.mw_size {
            return Err(DmaError::BadAddress(BusAddr(offset)));
        }
        Ok(BusAddr(sys::ntbemu_bus_peer_mw(mw) + offset))
    }

    fn submit(&self, descs: &[DmaDesc], interrupt: bool) -> Result<(), DmaError> {
        if descs.is_empty() || descs.len() > RING_LEN {
            return Err(DmaError::BadBatch {
                len: descs.len(),
                max: RING_LEN,
            });
        }
        if let Some(d) = descs
            .iter()
            .find(|d| d.len as u64 > MAX_DESC_LEN || d.len == 0)
        {
            return Err(DmaError::TooLong {
                len: d.len as u64,
                max: MAX_DESC_LEN,
            });
        }
        let _g = self.submit_lock.lock().map_err(|_| DmaError::Busy)?;
        let ch = self.ch();
        if ch.status().in_progress {
            return Err(DmaError::Busy);
        }
        for (i, d) in descs.iter().enumerate() {
            let (dhi, dlo) = split(d.dst.0);
            let (shi, slo) = split(d.src.0);
            ch.desc_u32(i, offset_of!(D, dst_addr_lo))
                .store(dlo, Relaxed);
            ch.desc_u32(i, offset_of!(D, src_addr_lo))
                .store(slo, Relaxed);
            // dst_addr_hi and src_addr_hi share one 32-bit word (offset 4).
            ch.desc_u32(i, offset_of!(D, dst_addr_hi))
                .store(dhi as u32 | (shi as u32) << 16, Relaxed);
            let flags = sys::PLX_DESC_VALID
                | if interrupt {
                    sys::PLX_DESC_INT_WHEN_DONE
                } else {
                    0
                }
                | d.len;
            ch.desc_u32(i, offset_of!(D, flags_and_size))
                .store(flags, Relaxed);
        }
        if descs.len() < RING_LEN {
            // Ring-stop mode: the engine stops at the first descriptor without VALID.
            ch.desc_u32(descs.len(), offset_of!(D, flags_and_size))
                .store(0, Relaxed);
        }
        ch.reg(sys::PLX_DMA_RING_COUNT)
            .store(descs.len() as u32, Relaxed);
        ch.reg(sys::PLX_DMA_RING_NEXT).store(0, Relaxed);
        // Clear the W1C status of the previous batch.
        ch.intr_status().store(0, Relaxed);
        // DMA start and engine wake-up: the descriptors written above are published by the
        // start; a sleeping engine is woken.
        sync::start_batch(
            &sync::Futex,
            ch.reg(sys::PLX_DMA_CTRL),
            ch.reg(sys::NTBEMU_DMA_DOORBELL),
            sys::PLX_DMA_CTRL_START
                | sys::PLX_DMA_CTRL_IN_PROGRESS
                | sys::PLX_DMA_CTRL_MODE_SGL_OFFCHIP
                | sys::PLX_DMA_CTRL_RING_STOP
                | sys::PLX_DMA_CTRL_WRITE_BACK,
        );
        Ok(())
    }

    fn status(&self) -> DmaStatus {
        self.ch().status()
    }

    fn wait(&self, how: Completion, timeout: Option<Duration>) -> Result<DmaStatus, DmaError> {
        let ch = self.ch();
        let deadline = timeout.map(|t| Instant::now() + t);
        let seq = ch.reg(sys::NTBEMU_DMA_DONE_SEQ);
        let waiters = ch.reg(sys::NTBEMU_DMA_DONE_WAITERS);
        let mut spins = 0u32;
        loop {
            // DMA completion: `status` loads IN_PROGRESS with Acquire (`sync::in_progress`);
            // seeing it clear means the bytes are visible.
            let s = ch.status();
            if !s.in_progress {
                if s.error {
                    return Err(DmaError::TransferFailed { index: s.done });
                }
                return Ok(s);
            }
            let remaining = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return Err(DmaError::Timeout),
                },
                None => None,
            };
            match how {
                Completion::Poll => {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(1024) {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                Completion::Interrupt => {
                    // Bounded sleep: a batch submitted without INT_WHEN_DONE raises no
                    // interrupt, and the wait must not hang on it.
                    let nap = remaining.map_or(Duration::from_millis(10), |r| {
                        r.min(Duration::from_millis(10))
                    });
                    sync::sleep_unless(
                        &sync::Futex,
                        seq,
                        waiters,
                        || ch.status().in_progress,
                        Some(nap),
                    );
                }
            }
        }
    }
}

/// Where a descriptor's bus address points, checked: a window, or a host range the owner
/// registered (for a destination, one registered writable). `maps` is the locked host-range
/// table, held by the caller until the copy ends.
fn resolve(dev: &EmuDevice, maps: &[HostMap], addr: u64, len: u64, write: bool) -> Option<*mut u8> {
    let c = &dev.config;
    let arena = c.n_mw as u64 * c.mw_size;
    let end = addr.checked_add(len)?;
    if end <= arena {
        return dev.map.ptr(
            dev.side_off(dev.side) + sys::NTBEMU_SIDE_ARENA as usize + addr as usize,
            len as usize,
        );
    }
    for mw in 0..c.n_mw {
        let base = sys::ntbemu_bus_peer_mw(mw);
        if addr >= base && end <= base + c.mw_size {
            if !dev.link_up() {
                return None;
            }
            let off = dev.arena_off(dev.peer, mw) + (addr - base) as usize;
            return dev.map.ptr(off, len as usize);
        }
    }
    if addr >= sys::NTBEMU_BUS_HOST {
        let start = addr - sys::NTBEMU_BUS_HOST;
        let end = start.checked_add(len)?;
        if maps
            .iter()
            .any(|m| start >= m.start && end <= m.start + m.len && (m.writable || !write))
        {
            return Some(start as *mut u8);
        }
    }
    None
}

fn engine(dev: &EmuDevice, index: u32, maps: &HostMaps, stop: &AtomicBool) {
    let ch = Channel { dev, index };
    let ctrl = ch.reg(sys::PLX_DMA_CTRL);
    let bell = ch.reg(sys::NTBEMU_DMA_DOORBELL);
    let mut idle_since = Instant::now();
    while !stop.load(Acquire) {
        if !sync::batch_started(ctrl) {
            if idle_since.elapsed() < ENGINE_SPIN {
                std::hint::spin_loop();
                continue;
            }
            sync::engine_idle(
                &sync::Futex,
                ctrl,
                bell,
                || stop.load(SeqCst),
                Some(Duration::from_millis(100)),
            );
            idle_since = Instant::now();
            continue;
        }
        ctrl.fetch_and(!sys::PLX_DMA_CTRL_START, SeqCst);
        run_batch(&ch, maps, stop);
        idle_since = Instant::now();
    }
}

/// Sleep `d` (an injected delay), looking at `stop` every `DELAY_SLICE`; false if stopped.
fn delay(d: Duration, stop: &AtomicBool) -> bool {
    let t0 = Instant::now();
    loop {
        if stop.load(Acquire) {
            return false;
        }
        let left = d.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(DELAY_SLICE));
    }
}

fn run_batch(ch: &Channel<'_>, maps: &HostMaps, stop: &AtomicBool) {
    let dev = ch.dev;
    let count = (ch.reg(sys::PLX_DMA_RING_COUNT).load(Acquire) as usize).min(RING_LEN);
    let mut intr = 0u32;
    let mut want_irq = false;
    let mut done = 0u32;
    for i in 0..count {
        let flags = ch.desc_u32(i, offset_of!(D, flags_and_size)).load(Acquire);
        if flags & sys::PLX_DESC_VALID == 0 {
            intr |= sys::PLX_DMA_INTR_INVALID_DESC;
            break;
        }
        want_irq |= flags & sys::PLX_DESC_INT_WHEN_DONE != 0;
        let len = (flags & sys::PLX_DESC_SIZE_MASK) as u64;
        let hi = ch.desc_u32(i, offset_of!(D, dst_addr_hi)).load(Relaxed);
        let dst = ((hi & 0xFFFF) as u64) << 32
            | ch.desc_u32(i, offset_of!(D, dst_addr_lo)).load(Relaxed) as u64;
        let src = ((hi >> 16) as u64) << 32
            | ch.desc_u32(i, offset_of!(D, src_addr_lo)).load(Relaxed) as u64;
        // The owner dropped the channel: abandon the batch (as a failed read).
        let stopped = fault::dma_delay(dev).is_some_and(|d| !delay(d, stop)) || stop.load(Acquire);
        let wb = if stopped || fault::take(dev, sys::NTBEMU_FAULT_DMA_ERROR) {
            sys::PLX_DESC_WB_RD_FAIL
        } else {
            // Held until the copy ends: an unmap (after which the memory may be freed) waits.
            match maps.lock() {
                Err(_) => sys::PLX_DESC_WB_RD_FAIL,
                Ok(m) => match (
                    resolve(dev, &m, src, len, false),
                    resolve(dev, &m, dst, len, true),
                ) {
                    (None, _) => sys::PLX_DESC_WB_RD_FAIL,
                    (_, None) => sys::PLX_DESC_WB_WR_FAIL,
                    (Some(s), Some(d)) => {
                        // SAFETY: `resolve` checked both ranges lie inside the device mapping
                        // or a host range the owning process registered (the destination one
                        // registered writable), and the lock held on the table keeps them
                        // registered until the copy ends; `copy` tolerates overlap.
                        unsafe { std::ptr::copy(s, d, len as usize) };
                        sys::PLX_DESC_WB_SUCCESS
                    }
                },
            }
        };
        // Write-back: VALID cleared, status bit set (Release: after the bytes).
        sync::write_back(
            ch.desc_u32(i, offset_of!(D, flags_and_size)),
            wb | len as u32,
        );
        if wb != sys::PLX_DESC_WB_SUCCESS {
            intr |= sys::PLX_DMA_INTR_ERROR;
            break;
        }
        done += 1;
    }
    if intr == 0 {
        intr |= sys::PLX_DMA_INTR_DESC_DONE;
    }
    ch.reg(sys::PLX_DMA_RING_NEXT).store(done, Release);
    ch.intr_status().fetch_or(intr << 16, Release);
    sync::end_batch(
        &sync::Futex,
        ch.reg(sys::PLX_DMA_CTRL),
        ch.reg(sys::NTBEMU_DMA_DONE_SEQ),
        ch.reg(sys::NTBEMU_DMA_DONE_WAITERS),
        want_irq,
    );
}
