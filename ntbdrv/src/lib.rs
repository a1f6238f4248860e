//! The NTB device layer: one trait, [`NtbDevice`], modelled on the Linux kernel's
//! `struct ntb_dev_ops` plus a DMA engine, and its backends.
//!
//! Callers are `transport` (connections over the bridge), the `pcisock` CLI and the benches. The
//! backends are [`emu`], an emulated device in shared memory that keeps hardware limits, and
//! [`ivshmem`], QEMU's inter-VM shared-memory PCI device between two virtual machines (the emu
//! layout in the device's BAR, interrupts through its Doorbell register); [`recommended`] is the
//! one place that picks the default. This crate knows nothing of sockets
//! and must never read memory a real bridge could not reach (for instance a peer's private
//! memory): code that works on `emu` must work on hardware.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod emu;
mod error;
mod futex;
pub mod ivshmem;
pub mod recommended;
mod region;
mod sysutil;
mod units;

/// Process identity helpers shared with the layers above (liveness checks of lease owners).
pub mod process {
    pub use crate::sysutil::{alive, pid, pid_exists, start_time};
}

use std::os::fd::OwnedFd;
use std::time::Duration;

pub use error::{
    DeviceError, DmaError, DoorbellError, LeaseError, LinkError, ScratchpadError, WindowError,
};
pub use region::{FixedRegion, Region, SegmentIdentity, CACHE_LINE};
pub use units::{format_size, parse_size};

/// The two sides of a bridge. On a loopback link the peer of side 0 is side 0 itself.
pub type SideId = u32;

/// Alignment and size limits of a memory window (`ntb_mw_get_align`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MwAlign {
    /// Required alignment of a translation address inside the window.
    pub addr_align: u64,
    /// Required alignment of a translation size.
    pub size_align: u64,
    /// Largest window size the hardware offers.
    pub size_max: u64,
}

/// Link state as `ntb_link_is_up` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Both sides have enabled the link and no fault holds it down.
    pub up: bool,
    /// PCIe generation (1..=5) reported for the link.
    pub speed_gen: u8,
    /// Lane count reported for the link.
    pub width: u8,
    /// Bumped on every change; pass it to [`NtbDevice::link_wait`] to wait for the next one.
    pub generation: u32,
}

/// How a caller learns that a DMA transfer finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Spin on the channel's IN_PROGRESS bit.
    Poll,
    /// Sleep until the engine's completion interrupt.
    Interrupt,
}

/// An address in the device's bus address space, as a DMA descriptor carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusAddr(pub u64);

/// One DMA descriptor: copy `len` bytes from `src` to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaDesc {
    pub src: BusAddr,
    pub dst: BusAddr,
    pub len: u32,
}

/// A channel's status register, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaStatus {
    /// The engine is still moving bytes; cleared only once they are visible at the destination.
    pub in_progress: bool,
    /// The last batch stopped on a failed descriptor.
    pub error: bool,
    /// Descriptors of the last batch that completed successfully.
    pub done: u32,
}

/// A window-space lease: `len` bytes at `offset` of inbound memory window `mw` of this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLease {
    pub mw: u32,
    pub offset: u64,
    pub len: u64,
    /// Slot in the host table; identifies the lease for [`NtbDevice::release`].
    pub slot: u32,
}

/// A doorbell-bit lease: this host's doorbell `bit` belongs to the holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorbellLease {
    pub bit: u32,
    pub slot: u32,
}

/// An interrupt-vector lease: this host's message-signalled vector `vector` belongs to the
/// holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorLease {
    pub vector: u32,
    pub slot: u32,
}

/// A resource lease of any kind, for [`NtbDevice::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    Window(WindowLease),
    Doorbell(DoorbellLease),
    Vector(VectorLease),
}

/// A DMA channel held by this process. Dropping it stops the channel's use by this process and
/// returns it to the host's table.
pub trait DmaChannel: Send + Sync {
    /// The channel's index on this side.
    fn index(&self) -> u32;
    /// Make `len` bytes of this process's memory at `ptr` readable by the engine (the emulated
    /// counterpart of `VFIO_IOMMU_MAP_DMA` without `VFIO_DMA_MAP_FLAG_WRITE`) and return their
    /// bus address. The engine never writes there, whatever a descriptor says: this is how an
    /// application's send buffer is mapped.
    fn map_host(&self, ptr: *const u8, len: usize) -> Result<BusAddr, DmaError>;
    /// Make `len` bytes at `ptr` readable and writable by the engine: a destination (a receive
    /// buffer). The caller must own that memory exclusively until it unmaps it.
    fn map_host_mut(&self, ptr: *mut u8, len: usize) -> Result<BusAddr, DmaError>;
    /// Undo [`DmaChannel::map_host`] or [`DmaChannel::map_host_mut`].
    fn unmap_host(&self, addr: BusAddr) -> Result<(), DmaError>;
    /// Bus address of `offset` in this side's inbound window `mw`.
    fn local_window_addr(&self, mw: u32, offset: u64) -> Result<BusAddr, DmaError>;
    /// Bus address of `offset` in outbound window `mw` (the peer's inbound window).
    fn peer_window_addr(&self, mw: u32, offset: u64) -> Result<BusAddr, DmaError>;
    /// Start a batch of descriptors. The channel must be idle (IN_PROGRESS clear); with
    /// `interrupt` the engine raises its completion interrupt when the batch ends.
    fn submit(&self, descs: &[DmaDesc], interrupt: bool) -> Result<(), DmaError>;
    /// Read the status register.
    fn status(&self) -> DmaStatus;
    /// Wait until IN_PROGRESS clears, by polling or by the completion interrupt. Returns the
    /// final status; a failed descriptor is [`DmaError::TransferFailed`].
    fn wait(&self, how: Completion, timeout: Option<Duration>) -> Result<DmaStatus, DmaError>;
}

/// An NTB device as one side of the bridge sees it (`struct ntb_dev_ops`), plus the host-level
/// resource table that lets several processes of one host share it.
pub trait NtbDevice: Send + Sync {
    /// A short description of the device ("emu:loopback side 0", …).
    fn describe(&self) -> String;
    /// This host's side of the bridge.
    fn side(&self) -> SideId;
    /// The peer's side (equal to [`NtbDevice::side`] on a loopback link).
    fn peer_side(&self) -> SideId;

    // ---- link ------------------------------------------------------------------------------
    fn link_state(&self) -> LinkState;
    fn link_enable(&self) -> Result<(), LinkError>;
    fn link_disable(&self) -> Result<(), LinkError>;
    /// Wait until the link generation differs from `seen` (a link event) or the timeout passes.
    fn link_wait(&self, seen: u32, timeout: Duration) -> LinkState;

    // ---- memory windows ---------------------------------------------------------------------
    fn mw_count(&self) -> u32;
    fn mw_align(&self, mw: u32) -> Result<MwAlign, WindowError>;
    /// The local buffer the peer writes into through its outbound window `mw`.
    fn inbound(&self, mw: u32) -> Result<Region, WindowError>;
    /// The local mapping of the peer's inbound window `mw`.
    fn outbound(&self, mw: u32) -> Result<Region, WindowError>;

    // ---- doorbells --------------------------------------------------------------------------
    fn db_valid_mask(&self) -> u64;
    /// Pending doorbell bits of this side (masked bits included).
    fn db_read(&self) -> u64;
    fn db_clear(&self, bits: u64) -> Result<(), DoorbellError>;
    fn db_read_mask(&self) -> u64;
    /// Mask bits: they still latch in the status but raise no interrupt.
    fn db_set_mask(&self, bits: u64) -> Result<(), DoorbellError>;
    fn db_clear_mask(&self, bits: u64) -> Result<(), DoorbellError>;
    /// Ring the peer: set `bits` in the peer's doorbell status (`ntb_peer_db_set`).
    fn peer_db_set(&self, bits: u64) -> Result<(), DoorbellError>;
    /// Sleep until one of `bits` is pending on this side or the timeout passes; returns the
    /// pending subset of `bits` (empty on timeout).
    fn db_wait(&self, bits: u64, timeout: Option<Duration>) -> Result<u64, DoorbellError>;
    /// A kernel-visible interrupt line for doorbell `bit`: the fd becomes readable when the bit
    /// is rung while unmasked. Poll it with poll/epoll; [`drain_vector`] empties it.
    fn db_vector_fd(&self, bit: u32) -> Result<OwnedFd, DoorbellError>;

    // ---- message-signalled interrupt vectors ------------------------------------------------
    // The ntb_msi model: besides the few doorbell bits, a side has many interrupt vectors that
    // the peer triggers by writing a message through the window (an MSI data word). Each has a
    // kernel-visible line like a doorbell bit's; there is no status register to read or clear:
    // emptying the line is the acknowledgement, and the caller re-checks its own state.

    /// How many vectors a side has.
    fn vector_count(&self) -> u32;
    /// Lease one of this side's vectors.
    fn lease_vector(&self, tag: u32) -> Result<VectorLease, LeaseError>;
    /// The kernel-visible line of this side's vector `v` (readable once triggered; empty it
    /// with [`drain_vector`]).
    fn vector_fd(&self, v: u32) -> Result<OwnedFd, DoorbellError>;
    /// Trigger the peer's vector `v`.
    fn peer_vector_trigger(&self, v: u32) -> Result<(), DoorbellError>;

    // ---- scratchpads ------------------------------------------------------------------------
    fn spad_count(&self) -> u32;
    fn spad_read(&self, idx: u32) -> Result<u32, ScratchpadError>;
    fn spad_write(&self, idx: u32, val: u32) -> Result<(), ScratchpadError>;
    fn peer_spad_read(&self, idx: u32) -> Result<u32, ScratchpadError>;
    fn peer_spad_write(&self, idx: u32, val: u32) -> Result<(), ScratchpadError>;

    // ---- DMA --------------------------------------------------------------------------------
    fn dma_channel_count(&self) -> u32;
    /// Lease a free DMA channel of this side for this process.
    fn dma_channel(&self) -> Result<Box<dyn DmaChannel>, DmaError>;

    // ---- host resource table ----------------------------------------------------------------
    /// Lease `len` bytes (rounded up to the window's alignment) of inbound window `mw`.
    fn lease_window(&self, mw: u32, len: u64, tag: u32) -> Result<WindowLease, LeaseError>;
    /// Reserve `len` bytes at exactly `offset` of inbound window `mw` for the host itself: the
    /// reservation belongs to no process and is never reclaimed. Reserving the same range with
    /// the same tag again returns the existing reservation (this is how every process of a host
    /// finds a well-known control area).
    fn reserve_window(
        &self,
        mw: u32,
        offset: u64,
        len: u64,
        tag: u32,
    ) -> Result<WindowLease, LeaseError>;
    /// Lease one doorbell bit of this side.
    fn lease_doorbell(&self, tag: u32) -> Result<DoorbellLease, LeaseError>;
    /// Return a lease to the table.
    fn release(&self, lease: Lease) -> Result<(), LeaseError>;
    /// Hand a lease to another live process of this host (e.g. a forked child that keeps a
    /// connection its parent closes).
    fn transfer(&self, lease: Lease, pid: u32) -> Result<(), LeaseError>;
    /// This host's window leases with `tag` (held by any process), e.g. to find the endpoint
    /// blocks a process held before it exec'd a new image.
    fn window_leases(&self, tag: u32) -> Vec<WindowLease>;
    /// Free every lease whose process is gone; returns how many were freed.
    fn reclaim(&self) -> usize;
}

/// Empty a doorbell vector fd returned by [`NtbDevice::db_vector_fd`] after it fired.
pub fn drain_vector(fd: &OwnedFd) {
    sysutil::drain_fd(fd);
}

/// Make a doorbell vector fd returned by [`NtbDevice::db_vector_fd`] readable, as if it fired,
/// without ringing anything on the device: wakes whoever of this host sleeps on the line (an
/// epoll set whose registration became ready by a change of its own, not by the peer).
pub fn kick_vector(fd: &OwnedFd) {
    sysutil::kick(fd);
}
