//! `emu`: the emulated NTB device, pcisock's default backend.
//!
//! A device is one file under a per-user directory (mode 0700), mapped `MAP_SHARED` by every
//! process of every host that uses it, laid out by `ntbemu.h` (through `ntb-sys`): a header, and
//! per side an NT register page at PLX offsets, a PLX DMA function page, DMA descriptor rings, the
//! host resource table and the arena holding the side's inbound memory windows. A *loopback*
//! device has one side whose peer is itself; a *two-host* device has two.
//!
//! The emulation keeps what real hardware gives and nothing more: fixed windows, a few doorbell
//! bits whose interrupts reach sleepers through a futex or a per-bit FIFO (the stand-in for a
//! VFIO MSI-X eventfd), scratchpads, an asynchronous DMA engine whose IN_PROGRESS bit clears only
//! after the bytes are visible, link up/down — and fault injection. It must never offer a
//! shortcut a bridge could not (like reading a peer's private memory).//!
//! The rooms: `config.rs` (settings and layout arithmetic), `file.rs` (create, open and check a
//! device file), `device.rs` (the `NtbDevice` implementation), `irq.rs` (interrupt lines on one
//! kernel), `bridge.rs` (the same layout shared by two machines: mailbox and poller), `dma.rs`
//! (the DMA engine), `table.rs` (the host resource table), `fault.rs` (fault injection) and
//! `mapping.rs` (the shared mapping). This file holds the device handle and the helpers that
//! locate registers and windows in the mapping; it must never decide policy (who gets which
//! resource is the host table's, what a ring means is transport's).
#![allow(unsafe_code)]

mod bridge;
mod config;
mod device;
mod dma;
pub mod fault;
mod file;
mod irq;
pub(crate) mod mapping;
#[cfg(loom)]
pub mod sync;
#[cfg(not(loom))]
mod sync;
mod table;

use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Acquire;
use std::sync::Arc;

use ntb_sys as sys;

use crate::error::*;
use crate::region::Region;
use crate::{NtbDevice, SideId};

pub use bridge::Bridge;
use config::Layout;
pub use config::{Config, Options, Topology};
pub use fault::Fault;
use mapping::Mapping;

/// An open emulated device, as one side sees it.
pub struct EmuDevice {
    map: Arc<Mapping>,
    path: PathBuf,
    config: Config,
    layout: Layout,
    side: SideId,
    peer: SideId,
    /// Set when the layout lives in a PCI BAR shared by two machines (see [`Bridge`]).
    bridge: Option<Arc<dyn Bridge>>,
}

const HDR_SIZE: usize = sys::NTBEMU_HEADER_SIZE as usize;

impl EmuDevice {
    /// A second handle on the same mapping (for the DMA engine thread).
    fn view(&self) -> EmuDevice {
        EmuDevice {
            map: self.map.clone(),
            path: self.path.clone(),
            config: self.config,
            layout: self.layout,
            side: self.side,
            peer: self.peer,
            bridge: self.bridge.clone(),
        }
    }

    /// Leases held on this side's host table: (kind, pid, index, offset, len), for diagnostics.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.table()
            .leases()
            .into_iter()
            .map(|s| LeaseInfo {
                kind: match s.kind {
                    k if k == sys::NTBEMU_LEASE_WINDOW => "window",
                    k if k == sys::NTBEMU_LEASE_DOORBELL => "doorbell",
                    k if k == sys::NTBEMU_LEASE_DMA => "dma",
                    k if k == sys::NTBEMU_LEASE_VECTOR => "vector",
                    _ => "unknown",
                },
                pid: s.pid,
                start: s.start,
                index: s.index,
                tag: s.tag,
                offset: s.offset,
                len: s.len,
            })
            .collect()
    }

    /// This side's interrupt-vector lines (FIFOs) that no lease holds: a closed connection's
    /// line stays for the next lease of its vector to reuse. Their paths.
    pub fn idle_lines(&self) -> Vec<PathBuf> {
        self.table()
            .with_leases(|leases| self.idle_lines_given(leases))
    }

    /// Remove this side's idle interrupt-vector lines (see [`EmuDevice::idle_lines`]); returns
    /// how many. Under the host table's lock, so a vector leased meanwhile keeps its line (a
    /// new lease makes its line after the lease). Not on a bridge, whose lines the interrupt
    /// daemon may hold.
    pub fn remove_idle_lines(&self) -> usize {
        if self.bridge.is_some() {
            return 0;
        }
        self.table().with_leases(|leases| {
            self.idle_lines_given(leases)
                .iter()
                .filter(|p| std::fs::remove_file(p).is_ok())
                .count()
        })
    }

    fn idle_lines_given(&self, leases: &[table::Slot]) -> Vec<PathBuf> {
        let held: std::collections::HashSet<u32> = leases
            .iter()
            .filter(|s| s.kind == sys::NTBEMU_LEASE_VECTOR)
            .map(|s| s.index)
            .collect();
        let Some(stem) = self.path.file_stem().and_then(|s| s.to_str()) else {
            return Vec::new();
        };
        let prefix = format!("{stem}.s{}.v", self.side);
        let Some(dir) = self.path.parent() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        use std::os::unix::fs::FileTypeExt;
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_fifo()))
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .and_then(|v| v.parse::<u32>().ok())
                    .is_some_and(|v| !held.contains(&v))
            })
            .map(|e| e.path())
            .collect()
    }

    /// The device file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's fixed configuration.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Fault injection on this device (shared by every attached process).
    pub fn faults(&self) -> fault::Faults<'_> {
        fault::Faults { dev: self }
    }

    // ---- layout helpers ----------------------------------------------------------------------

    fn side_off(&self, side: SideId) -> usize {
        (self.layout.side_base + side as u64 * self.layout.side_stride) as usize
    }

    /// A 32-bit register of `side`'s NT page.
    fn nt_reg(&self, side: SideId, off: u32) -> &AtomicU32 {
        self.map
            .u32_at(self.side_off(side) + sys::NTBEMU_SIDE_NT_PAGE as usize + off as usize)
    }

    /// A 32-bit register of `side`'s DMA page.
    fn dma_reg(&self, side: SideId, off: u32) -> &AtomicU32 {
        self.map
            .u32_at(self.side_off(side) + sys::NTBEMU_SIDE_DMA_PAGE as usize + off as usize)
    }

    fn header_u32(&self, field: usize) -> &AtomicU32 {
        self.map.u32_at(field)
    }

    fn arena_off(&self, side: SideId, mw: u32) -> usize {
        self.side_off(side)
            + sys::NTBEMU_SIDE_ARENA as usize
            + (mw as u64 * self.config.mw_size) as usize
    }

    fn window_region(&self, side: SideId, mw: u32) -> Result<Region, WindowError> {
        if mw >= self.config.n_mw {
            return Err(WindowError::NoSuchWindow {
                mw,
                count: self.config.n_mw,
            });
        }
        let len = self.config.mw_size as usize;
        let off = self.arena_off(side, mw);
        let ptr = self.map.ptr(off, len).ok_or(WindowError::OutOfRange {
            offset: off as u64,
            len: len as u64,
            size: self.map.len() as u64,
        })?;
        // SAFETY: `ptr..ptr+len` is inside the mapping (checked by `Mapping::ptr`), and the
        // region holds an Arc to the mapping, so it stays mapped for the region's life.
        Ok(unsafe { Region::new(ptr, len, self.map.clone()) })
    }

    fn check_bits(&self, bits: u64) -> Result<(), DoorbellError> {
        let valid = self.db_valid_mask();
        if bits & !valid != 0 {
            return Err(DoorbellError::InvalidBits { bits, valid });
        }
        Ok(())
    }

    fn db_status_words(&self, side: SideId) -> (&AtomicU32, &AtomicU32) {
        (
            self.nt_reg(side, sys::PLX_NT_DB_SET),
            self.nt_reg(side, sys::NTBEMU_REG_DB_STATUS_HI),
        )
    }

    fn db_mask_words(&self, side: SideId) -> (&AtomicU32, &AtomicU32) {
        (
            self.nt_reg(side, sys::PLX_NT_DB_MASK_SET),
            self.nt_reg(side, sys::NTBEMU_REG_DB_MASK_HI),
        )
    }

    fn link_generation(&self) -> &AtomicU32 {
        self.header_u32(offset_of!(sys::ntbemu_header, link_generation))
    }

    /// A link event that already changed what `link_up` reads (the link went down): a new
    /// generation, then the waiters are told.
    fn bump_link(&self) {
        self.new_link_generation();
        self.announce_link();
    }

    /// The first half of a link event whose change is still to be made: the generation moves
    /// *before* the link reads up, so a reader that sees it up sees the generation of its
    /// coming up (never the one it had while down; `link_state` reads the link first, then
    /// the generation with Acquire). Then make the change and `announce_link`.
    fn new_link_generation(&self) {
        sync::bump(self.link_generation());
    }

    /// Tell the link's waiters and sleepers that it changed (after the change).
    fn announce_link(&self) {
        // Link event: pairs with the Acquire load in `link_wait` and its sleep. No futex
        // crosses a bridge (its sleepers poll).
        sync::wake_after_bump(
            &sync::Futex,
            self.link_generation(),
            self.header_u32(offset_of!(sys::ntbemu_header, link_waiters)),
            self.bridge.is_none(),
        );
        if self.bridge.is_none() {
            // A link event interrupts, as a link-state-change interrupt does on hardware:
            // every connection's line, so its sleeper looks at the link now. (On a bridge each
            // machine's poller does it for its side: `deliver_link_event`.)
            self.kick_vector_lines();
        }
    }

    fn link_up(&self) -> bool {
        if fault::active(self, sys::NTBEMU_FAULT_LINK_DOWN) {
            return false;
        }
        let me = self
            .nt_reg(self.side, sys::NTBEMU_REG_LINK_CTRL)
            .load(Acquire)
            & 1
            == 1;
        let peer = self
            .nt_reg(self.peer, sys::NTBEMU_REG_LINK_CTRL)
            .load(Acquire)
            & 1
            == 1;
        me && peer
    }

    fn table(&self) -> table::HostTable<'_> {
        table::HostTable::new(
            &self.map,
            self.side_off(self.side) + sys::NTBEMU_SIDE_HOST_TABLE as usize,
        )
    }
}

/// Whether this kernel collapses shared memory into huge pages on request
/// ([`Region::collapse_huge`] on a window of a device on tmpfs without `huge=`): tried on a
/// 2 MiB memfd mapped as a device file is. For `pcisock doctor`.
pub fn collapse_probe() -> std::io::Result<()> {
    mapping::collapse_probe()
}

/// One lease in a host table, for diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub kind: &'static str,
    pub pid: u32,
    /// The owner's start time (with the pid, tells a live owner from a recycled pid).
    pub start: u64,
    pub index: u32,
    pub tag: u32,
    pub offset: u64,
    pub len: u64,
}
