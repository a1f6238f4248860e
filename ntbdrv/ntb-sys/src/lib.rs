//! Raw definitions shared with C: the emulated NTB device (`include/ntbemu.h`) and the kernel uapi
//! the hardware backends use (`<linux/vfio.h>`, `<linux/pci_regs.h>`). Definitions only: this crate
//! must never hold logic, I/O or a layout written by hand where bindgen or the C compiler can say
//! it.
//!
//! Everything from the headers comes from bindgen: [`bindings`](self) is the vendored
//! `src/bindings.rs`, generated from `include/wrapper.h` with the fixed options in `build.rs`
//! (`regen::builder`) and regenerated with `regen.sh`. Names are the C names (`ntbemu_header`,
//! `NTBEMU_SIDE_ARENA`, `vfio_region_info`, `PCI_COMMAND`, ...).
//!
//! bindgen cannot expand function-like macros, so this file adds their `const fn` equivalents
//! ([`ntbemu_reg_mw_xlat`], [`ntbemu_reg_spad`], [`plx_dma_ch_base`], [`ntbemu_bus_peer_mw`])
//! and the VFIO ioctl request numbers ([`VFIO_GET_API_VERSION`], ...). `tests/layout.rs` checks
//! all of them, and every struct size, field offset and constant of `ntbemu.h`, against what the
//! C compiler computes from the same headers (`csrc/layout.c`).
//!
//! The vendored bindings were generated for `x86_64-unknown-linux-gnu`; the `ntbemu.h` layout is
//! target-independent (fixed-width fields, natural alignment), and bindgen's layout checks in
//! `bindings.rs` fail the build on a target where any struct differs.
#![no_std]
#![deny(unsafe_code)]

/// bindgen's output for `include/wrapper.h`; everything in it is re-exported at the crate root.
///
/// # Safety
///
/// The only `unsafe` here is bindgen's boilerplate: `Default` impls that zero-fill plain-old-data
/// structs and unions (all-zero is a valid value of each, being integers and arrays of them), and
/// `__IncompleteArrayField::as_slice`/`as_mut_slice`, `unsafe fn`s whose callers must guarantee
/// that `len` elements really follow the struct (as the C flexible array member does).
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    unsafe_code,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod bindings;

pub use bindings::*;

// ---- function-like macros of ntbemu.h --------------------------------------------------------
//
// Each mirrors its C macro exactly, including C's unsigned wrap-around for out-of-range
// arguments; `tests/layout.rs` compares them with the macros as compiled by the C compiler.

/// `NTBEMU_REG_MW_XLAT(i)`: NT-page offset of memory window `i`'s inbound translation register
/// (the offset of the window in the side's own arena). Valid for `i < NTBEMU_MAX_MW`.
#[inline]
pub const fn ntbemu_reg_mw_xlat(i: u32) -> u32 {
    0x080u32.wrapping_add(16u32.wrapping_mul(i))
}

/// `NTBEMU_REG_SPAD(n)`: NT-page offset of scratchpad `n` of the side's own bank.
/// Valid for `n < NTBEMU_MAX_SPAD`.
#[inline]
pub const fn ntbemu_reg_spad(n: u32) -> u32 {
    0xD00u32.wrapping_add(4u32.wrapping_mul(n))
}

/// `PLX_DMA_CH_BASE(c)`: DMA-page offset of DMA channel `c`'s register block (add `PLX_DMA_*`).
/// Valid for `c < NTBEMU_MAX_DMA_CH`.
#[inline]
pub const fn plx_dma_ch_base(c: u32) -> u32 {
    0x200u32.wrapping_add(0x100u32.wrapping_mul(c))
}

/// `NTBEMU_BUS_PEER_MW(i)`: emulated bus address at which a side's DMA engine sees outbound
/// window `i` (the peer's inbound window `i`). Valid for `i < NTBEMU_MAX_MW`.
#[inline]
pub const fn ntbemu_bus_peer_mw(i: u32) -> u64 {
    (1u64 << 44).wrapping_add((i as u64) << 40)
}

// ---- VFIO ioctl request numbers ---------------------------------------------------------------
//
// <linux/vfio.h> defines every VFIO ioctl as `_IO(VFIO_TYPE, VFIO_BASE + n)` (no direction and
// size bits: the argument's size travels in its `argsz` field), which bindgen cannot expand.
// VFIO_TYPE is ';' (0x3B) and VFIO_BASE is 100 (both expanded by bindgen). tests/layout.rs
// checks the values below against the C macros. Pass them to `ioctl(2)` as the request
// (`as libc::Ioctl`).

/// `_IOC_NONE << _IOC_DIRSHIFT`: the direction bits of an `_IO` request. Zero with the generic
/// encoding (asm-generic/ioctl.h); `1 << 29` on the architectures with their own encoding.
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips32r6",
    target_arch = "mips64",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const IOC_NONE_BITS: u32 = 0;
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips32r6",
    target_arch = "mips64",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const IOC_NONE_BITS: u32 = 1 << 29;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)` (`VFIO_TYPE` and `VFIO_BASE` come from bindgen).
const fn vfio_io(n: u32) -> u32 {
    IOC_NONE_BITS | (VFIO_TYPE as u32) << 8 | (VFIO_BASE + n)
}

/// `VFIO_GET_API_VERSION` (container): returns `VFIO_API_VERSION`.
pub const VFIO_GET_API_VERSION: u32 = vfio_io(0);
/// `VFIO_CHECK_EXTENSION` (container): is an extension (e.g. `VFIO_TYPE1v2_IOMMU`) supported?
pub const VFIO_CHECK_EXTENSION: u32 = vfio_io(1);
/// `VFIO_SET_IOMMU` (container): choose the IOMMU model.
pub const VFIO_SET_IOMMU: u32 = vfio_io(2);
/// `VFIO_GROUP_GET_STATUS` (group): fills a `vfio_group_status`.
pub const VFIO_GROUP_GET_STATUS: u32 = vfio_io(3);
/// `VFIO_GROUP_SET_CONTAINER` (group): attach the group to a container fd.
pub const VFIO_GROUP_SET_CONTAINER: u32 = vfio_io(4);
/// `VFIO_GROUP_UNSET_CONTAINER` (group): detach it again.
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = vfio_io(5);
/// `VFIO_GROUP_GET_DEVICE_FD` (group): open a device by name (e.g. `"0000:03:00.0"`).
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = vfio_io(6);
/// `VFIO_DEVICE_GET_INFO` (device): fills a `vfio_device_info`.
pub const VFIO_DEVICE_GET_INFO: u32 = vfio_io(7);
/// `VFIO_DEVICE_GET_REGION_INFO` (device): fills a `vfio_region_info` (BARs, config space).
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO` (device): fills a `vfio_irq_info`.
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
/// `VFIO_DEVICE_SET_IRQS` (device): wire interrupts to eventfds with a `vfio_irq_set`.
pub const VFIO_DEVICE_SET_IRQS: u32 = vfio_io(10);
/// `VFIO_DEVICE_RESET` (device): function-level reset.
pub const VFIO_DEVICE_RESET: u32 = vfio_io(11);
/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` (device): which devices a hot reset would affect.
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u32 = vfio_io(12);
/// `VFIO_DEVICE_PCI_HOT_RESET` (device): secondary bus reset.
pub const VFIO_DEVICE_PCI_HOT_RESET: u32 = vfio_io(13);
/// `VFIO_DEVICE_IOEVENTFD` (device): turn writes to an eventfd into device writes.
pub const VFIO_DEVICE_IOEVENTFD: u32 = vfio_io(16);
/// `VFIO_DEVICE_FEATURE` (device): get/set/probe a `vfio_device_feature`.
pub const VFIO_DEVICE_FEATURE: u32 = vfio_io(17);
/// `VFIO_IOMMU_GET_INFO` (type1 container): fills a `vfio_iommu_type1_info`. Same number as
/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`, on a different kind of fd.
pub const VFIO_IOMMU_GET_INFO: u32 = vfio_io(12);
/// `VFIO_IOMMU_MAP_DMA` (type1 container): map process memory for device DMA
/// (`vfio_iommu_type1_dma_map`).
pub const VFIO_IOMMU_MAP_DMA: u32 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA` (type1 container): unmap it (`vfio_iommu_type1_dma_unmap`).
pub const VFIO_IOMMU_UNMAP_DMA: u32 = vfio_io(14);
/// `VFIO_IOMMU_ENABLE` (SPAPR TCE container).
pub const VFIO_IOMMU_ENABLE: u32 = vfio_io(15);
/// `VFIO_IOMMU_DISABLE` (SPAPR TCE container).
pub const VFIO_IOMMU_DISABLE: u32 = vfio_io(16);

// ---- layout facts the rest of the workspace relies on -----------------------------------------

const _: () = assert!(core::mem::size_of::<ntbemu_header>() == 4096);
const _: () = assert!(core::mem::size_of::<ntbemu_header>() == NTBEMU_HEADER_SIZE as usize);
const _: () = assert!(core::mem::size_of::<plx_dma_desc>() == 16);
const _: () = assert!(core::mem::size_of::<ntbemu_lease>() == 40);
// The host table holds its NTBEMU_HOST_SLOTS leases after a 64-byte head.
const _: () = assert!(
    64 + NTBEMU_HOST_SLOTS as usize * core::mem::size_of::<ntbemu_lease>()
        == core::mem::size_of::<ntbemu_host_table>()
);
// The host table fits between its own offset and the arena.
const _: () = assert!(
    NTBEMU_SIDE_HOST_TABLE as usize + core::mem::size_of::<ntbemu_host_table>()
        <= NTBEMU_SIDE_ARENA as usize
);
// The DMA rings fit between their offset and the host table.
const _: () = assert!(
    NTBEMU_SIDE_DMA_RINGS as usize
        + (NTBEMU_MAX_DMA_CH * NTBEMU_DMA_RING_LEN) as usize * core::mem::size_of::<plx_dma_desc>()
        <= NTBEMU_SIDE_HOST_TABLE as usize
);
// The register pages are 4 KiB each and in order; every register fits in its page.
const _: () = assert!(NTBEMU_SIDE_NT_PAGE + 0x1000 <= NTBEMU_SIDE_DMA_PAGE);
const _: () = assert!(NTBEMU_SIDE_DMA_PAGE + 0x1000 <= NTBEMU_SIDE_DMA_RINGS);
const _: () = assert!(NTBEMU_REG_DB_MASK_HI + 4 <= ntbemu_reg_mw_xlat(0));
const _: () = assert!(NTBEMU_REG_MW_ALIGN + 4 <= NTBEMU_REG_DB_STATUS_HI);
const _: () = assert!(NTBEMU_REG_VEC_ARMED_HI + 4 <= ntbemu_reg_mw_xlat(0));
const _: () = assert!(ntbemu_reg_mw_xlat(NTBEMU_MAX_MW - 1) + 16 <= PLX_NT_BAR2_XLAT_LO);
const _: () = assert!(ntbemu_reg_spad(NTBEMU_MAX_SPAD - 1) + 4 <= 0x1000);
const _: () =
    assert!(plx_dma_ch_base(NTBEMU_MAX_DMA_CH - 1) + NTBEMU_DMA_DONE_WAITERS + 4 <= 0x1000);
// The scratchpads do not overlap the PLX NT registers below them.
const _: () = assert!(PLX_NT_PORT_ID + 4 <= ntbemu_reg_spad(0));
// The outbound windows stay below the host-memory part of the emulated bus.
const _: () = assert!(ntbemu_bus_peer_mw(NTBEMU_MAX_MW) <= NTBEMU_BUS_HOST);
