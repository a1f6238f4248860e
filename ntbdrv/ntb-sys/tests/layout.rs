//! The Rust definitions of `ntb-sys` against what the C compiler computes from the same headers.
//!
//! `csrc/layout.c` (compiled and linked by build.rs) reports struct sizes, alignments, field
//! offsets and sizes, object-like macro values, function-like macro values and the VFIO ioctl
//! numbers as the C compiler sees them; each test compares one kind of thing. With feature
//! `regenerate`, one more test checks that the vendored `src/bindings.rs` is exactly what bindgen
//! produces on this machine.

use core::ffi::{c_char, CStr};
use core::mem::{align_of, offset_of, size_of};

use ntb_sys::*;

unsafe extern "C" {
    fn ntbsys_c_sizeof(ty: *const c_char) -> u64;
    fn ntbsys_c_alignof(ty: *const c_char) -> u64;
    fn ntbsys_c_field_count(ty: *const c_char) -> u64;
    fn ntbsys_c_offsetof(ty: *const c_char, field: *const c_char) -> u64;
    fn ntbsys_c_field_size(ty: *const c_char, field: *const c_char) -> u64;
    fn ntbsys_c_const(name: *const c_char) -> u64;
    fn ntbsys_c_reg_mw_xlat(i: u32) -> u32;
    fn ntbsys_c_reg_spad(n: u32) -> u32;
    fn ntbsys_c_dma_ch_base(c: u32) -> u32;
    fn ntbsys_c_bus_peer_mw(i: u32) -> u64;
}

/// What layout.c returns for a name it does not know.
const UNKNOWN: u64 = u64::MAX;

fn cstr(s: &'static str) -> &'static CStr {
    CStr::from_bytes_with_nul(s.as_bytes()).expect("NUL-terminated name")
}

fn c_sizeof(ty: &CStr) -> u64 {
    // SAFETY: `ty` is a valid NUL-terminated string; the C function only reads it.
    unsafe { ntbsys_c_sizeof(ty.as_ptr()) }
}

fn c_alignof(ty: &CStr) -> u64 {
    // SAFETY: `ty` is a valid NUL-terminated string; the C function only reads it.
    unsafe { ntbsys_c_alignof(ty.as_ptr()) }
}

fn c_field_count(ty: &CStr) -> u64 {
    // SAFETY: `ty` is a valid NUL-terminated string; the C function only reads it.
    unsafe { ntbsys_c_field_count(ty.as_ptr()) }
}

fn c_offsetof(ty: &CStr, field: &CStr) -> u64 {
    // SAFETY: both are valid NUL-terminated strings; the C function only reads them.
    unsafe { ntbsys_c_offsetof(ty.as_ptr(), field.as_ptr()) }
}

fn c_field_size(ty: &CStr, field: &CStr) -> u64 {
    // SAFETY: both are valid NUL-terminated strings; the C function only reads them.
    unsafe { ntbsys_c_field_size(ty.as_ptr(), field.as_ptr()) }
}

fn c_const(name: &CStr) -> u64 {
    // SAFETY: `name` is a valid NUL-terminated string; the C function only reads it.
    unsafe { ntbsys_c_const(name.as_ptr()) }
}

/// Size of the field `get` projects to (a closure `|s: &T| &s.field`).
fn field_size<T, F>(_get: impl Fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// Checks struct `$ty`'s size and alignment and each field's offset and size against C.
///
/// The list must name every field of the Rust struct (the destructuring pattern below has no
/// `..`, so a missing field is a compile error), and C must know exactly as many fields (so a
/// field layout.c lists but Rust lacks fails too).
macro_rules! check_struct {
    ($ty:ident { $($f:ident),* $(,)? }) => {{
        #[allow(dead_code)]
        fn exhaustive(v: &$ty) {
            let $ty { $($f: _),* } = v;
        }
        let ty = cstr(concat!(stringify!($ty), "\0"));
        assert_ne!(c_sizeof(ty), UNKNOWN, "layout.c does not know struct {}", stringify!($ty));
        assert_eq!(size_of::<$ty>() as u64, c_sizeof(ty), "sizeof(struct {})", stringify!($ty));
        assert_eq!(align_of::<$ty>() as u64, c_alignof(ty), "_Alignof(struct {})", stringify!($ty));
        let mut n = 0u64;
        $(
            n += 1;
            let f = cstr(concat!(stringify!($f), "\0"));
            let what = concat!(stringify!($ty), ".", stringify!($f));
            assert_ne!(c_offsetof(ty, f), UNKNOWN, "layout.c does not know {what}");
            assert_eq!(offset_of!($ty, $f) as u64, c_offsetof(ty, f), "offsetof {what}");
            assert_eq!(field_size(|s: &$ty| &s.$f) as u64, c_field_size(ty, f), "sizeof {what}");
        )*
        assert_eq!(n, c_field_count(ty), "number of fields of struct {}", stringify!($ty));
    }};
}

/// Checks each constant against the value of the C macro of the same name.
macro_rules! check_consts {
    ($($name:ident),* $(,)?) => {{
        $(
            let c = c_const(cstr(concat!(stringify!($name), "\0")));
            assert_ne!(c, UNKNOWN, "layout.c does not know {}", stringify!($name));
            assert_eq!(u64::from($name), c, "{}", stringify!($name));
        )*
    }};
}

#[test]
fn ntbemu_structs_match_c() {
    check_struct!(ntbemu_config {
        topology,
        n_sides,
        n_mw,
        n_db,
        n_spad,
        n_dma_ch,
        mw_size,
        mw_align,
    });
    check_struct!(ntbemu_header {
        magic,
        version,
        header_size,
        file_size,
        side_stride,
        side_base,
        owner_uid,
        init_done,
        config,
        fault_flags,
        fault_count,
        fault_dma_delay_ns,
        fault_hits,
        link_generation,
        link_waiters,
        reserved,
    });
    check_struct!(plx_dma_desc {
        flags_and_size,
        dst_addr_hi,
        src_addr_hi,
        dst_addr_lo,
        src_addr_lo
    });
    check_struct!(ntbemu_lease {
        kind,
        owner_pid,
        owner_start,
        index,
        tag,
        offset,
        len
    });
    check_struct!(ntbemu_host_table {
        lock,
        n_slots,
        generation,
        high_water,
        lock_seq,
        reserved,
        slots
    });
}

#[test]
fn vfio_structs_match_c() {
    check_struct!(vfio_info_cap_header { id, version, next });
    check_struct!(vfio_group_status { argsz, flags });
    check_struct!(vfio_device_info {
        argsz,
        flags,
        num_regions,
        num_irqs,
        cap_offset
    });
    check_struct!(vfio_region_info {
        argsz,
        flags,
        index,
        cap_offset,
        size,
        offset
    });
    check_struct!(vfio_irq_info {
        argsz,
        flags,
        index,
        count
    });
    check_struct!(vfio_irq_set {
        argsz,
        flags,
        index,
        start,
        count,
        data
    });
    check_struct!(vfio_iommu_type1_info {
        argsz,
        flags,
        iova_pgsizes,
        cap_offset
    });
    check_struct!(vfio_iommu_type1_dma_map {
        argsz,
        flags,
        vaddr,
        iova,
        size
    });
    check_struct!(vfio_iommu_type1_dma_unmap {
        argsz,
        flags,
        iova,
        size,
        data
    });
}

#[test]
fn ntbemu_constants_match_c() {
    check_consts!(
        NTBEMU_MAGIC,
        NTBEMU_VERSION,
        NTBEMU_MAX_SIDES,
        NTBEMU_MAX_MW,
        NTBEMU_MAX_DB,
        NTBEMU_MAX_SPAD,
        NTBEMU_MAX_DMA_CH,
        NTBEMU_DMA_RING_LEN,
        NTBEMU_HOST_SLOTS,
        NTBEMU_TOPO_LOOPBACK,
        NTBEMU_TOPO_TWO_HOST,
        NTBEMU_FAULT_LINK_DOWN,
        NTBEMU_FAULT_DMA_ERROR,
        NTBEMU_FAULT_DMA_SLOW,
        NTBEMU_FAULT_LOST_DB,
        NTBEMU_SIDE_NT_PAGE,
        NTBEMU_SIDE_DMA_PAGE,
        NTBEMU_SIDE_DMA_RINGS,
        NTBEMU_SIDE_HOST_TABLE,
        NTBEMU_SIDE_ARENA,
        NTBEMU_HEADER_SIZE,
        NTBEMU_REG_EMU_ID,
        NTBEMU_REG_EMU_VER,
        NTBEMU_REG_CAPS,
        NTBEMU_REG_LINK_CTRL,
        NTBEMU_REG_LINK_STATUS,
        NTBEMU_REG_DB_STATUS_HI,
        NTBEMU_REG_DB_MASK_HI,
        NTBEMU_REG_DB_WAITERS,
        NTBEMU_REG_DB_SEQ,
        NTBEMU_REG_MW_ALIGN,
        PLX_NT_BAR2_XLAT_LO,
        PLX_NT_BAR2_XLAT_HI,
        PLX_NT_BAR4_XLAT_LO,
        PLX_NT_BAR4_XLAT_HI,
        PLX_NT_DB_SET,
        PLX_NT_DB_CLEAR,
        PLX_NT_DB_MASK_SET,
        PLX_NT_DB_MASK_CLEAR,
        PLX_NT_PEER_DB_SET,
        PLX_NT_PEER_DB_CLEAR,
        PLX_NT_PEER_DB_MASK_SET,
        PLX_NT_PEER_DB_MASK_CLEAR,
        PLX_NT_SPAD0,
        PLX_NT_PORT_ID,
        PLX_DMA_SRC_LO,
        PLX_DMA_SRC_HI,
        PLX_DMA_DST_LO,
        PLX_DMA_DST_HI,
        PLX_DMA_COUNT,
        PLX_DMA_RING_ADDR_LO,
        PLX_DMA_RING_ADDR_HI,
        PLX_DMA_RING_NEXT,
        PLX_DMA_RING_COUNT,
        PLX_DMA_RING_LAST,
        PLX_DMA_PREF_LIMIT,
        PLX_DMA_CTRL,
        PLX_DMA_INTR_CTRL,
        PLX_DMA_INTR_STATUS,
        NTBEMU_DMA_SUBMIT_TAIL,
        NTBEMU_DMA_OWNER_PID,
        NTBEMU_DMA_DOORBELL,
        NTBEMU_DMA_DONE_SEQ,
        NTBEMU_DMA_DONE_WAITERS,
        PLX_DMA_CTRL_GRACEFUL_PAUSE,
        PLX_DMA_CTRL_ABORT,
        PLX_DMA_CTRL_WRITE_BACK,
        PLX_DMA_CTRL_START,
        PLX_DMA_CTRL_RING_STOP,
        PLX_DMA_CTRL_MODE_SGL_OFFCHIP,
        PLX_DMA_CTRL_DESC_INVALID,
        PLX_DMA_CTRL_ABORT_DONE,
        PLX_DMA_CTRL_IN_PROGRESS,
        PLX_DMA_INTR_ERROR,
        PLX_DMA_INTR_INVALID_DESC,
        PLX_DMA_INTR_DESC_DONE,
        PLX_DMA_INTR_ABORT_DONE,
        PLX_DESC_VALID,
        PLX_DESC_INT_WHEN_DONE,
        PLX_DESC_SIZE_MASK,
        PLX_DESC_WB_SUCCESS,
        PLX_DESC_WB_RD_FAIL,
        PLX_DESC_WB_WR_FAIL,
        NTBEMU_BUS_HOST,
        NTBEMU_LEASE_FREE,
        NTBEMU_LEASE_WINDOW,
        NTBEMU_LEASE_DOORBELL,
        NTBEMU_LEASE_DMA,
    );
    // The magic is the bytes "NTBEMU01" read as a little-endian u64.
    assert_eq!(NTBEMU_MAGIC.to_le_bytes(), *b"NTBEMU01");
}

#[test]
fn vfio_ioctls_match_c() {
    check_consts!(
        VFIO_GET_API_VERSION,
        VFIO_CHECK_EXTENSION,
        VFIO_SET_IOMMU,
        VFIO_GROUP_GET_STATUS,
        VFIO_GROUP_SET_CONTAINER,
        VFIO_GROUP_UNSET_CONTAINER,
        VFIO_GROUP_GET_DEVICE_FD,
        VFIO_DEVICE_GET_INFO,
        VFIO_DEVICE_GET_REGION_INFO,
        VFIO_DEVICE_GET_IRQ_INFO,
        VFIO_DEVICE_SET_IRQS,
        VFIO_DEVICE_RESET,
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
        VFIO_DEVICE_PCI_HOT_RESET,
        VFIO_DEVICE_IOEVENTFD,
        VFIO_DEVICE_FEATURE,
        VFIO_IOMMU_GET_INFO,
        VFIO_IOMMU_MAP_DMA,
        VFIO_IOMMU_UNMAP_DMA,
        VFIO_IOMMU_ENABLE,
        VFIO_IOMMU_DISABLE,
        // object-like VFIO macros and enum constants, expanded by bindgen
        VFIO_API_VERSION,
        VFIO_TYPE1v2_IOMMU,
        VFIO_PCI_BAR0_REGION_INDEX,
        VFIO_PCI_CONFIG_REGION_INDEX,
        VFIO_PCI_MSIX_IRQ_INDEX,
        VFIO_IRQ_SET_DATA_EVENTFD,
        VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_DMA_MAP_FLAG_READ,
        VFIO_DMA_MAP_FLAG_WRITE,
    );
    #[cfg(target_arch = "x86_64")]
    assert_eq!(VFIO_GET_API_VERSION, 0x3B64);
}

/// Arguments to try the function-like macros with: the valid range and past it (C wraps).
const ARGS: &[u32] = &[0, 1, 2, 3, 4, 7, 8, 31, 32, 1000, 0x0FFF_FFFF, u32::MAX];

#[test]
fn function_like_macros_match_c() {
    for &i in ARGS {
        // SAFETY: the four C functions take and return plain integers and touch no memory.
        let c = unsafe {
            (
                ntbsys_c_reg_mw_xlat(i),
                ntbsys_c_reg_spad(i),
                ntbsys_c_dma_ch_base(i),
                ntbsys_c_bus_peer_mw(i),
            )
        };
        assert_eq!(ntbemu_reg_mw_xlat(i), c.0, "NTBEMU_REG_MW_XLAT({i})");
        assert_eq!(ntbemu_reg_spad(i), c.1, "NTBEMU_REG_SPAD({i})");
        assert_eq!(plx_dma_ch_base(i), c.2, "PLX_DMA_CH_BASE({i})");
        assert_eq!(ntbemu_bus_peer_mw(i), c.3, "NTBEMU_BUS_PEER_MW({i})");
    }
    assert_eq!(ntbemu_reg_mw_xlat(1), 0x090);
    assert_eq!(ntbemu_reg_spad(31), 0xD7C);
    assert_eq!(plx_dma_ch_base(3), 0x500);
    assert_eq!(ntbemu_bus_peer_mw(2), (1 << 44) + (2 << 40));
}

/// The vendored `src/bindings.rs` is exactly what bindgen (feature `regenerate`, run by build.rs
/// into `$OUT_DIR`) produces here. On failure: run `ntbdrv/ntb-sys/regen.sh` and commit.
#[cfg(feature = "regenerate")]
#[test]
fn vendored_bindings_are_current() {
    let fresh = include_str!(concat!(env!("OUT_DIR"), "/bindings.rs"));
    let vendored = include_str!("../src/bindings.rs");
    if fresh != vendored {
        let line = fresh
            .lines()
            .zip(vendored.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| fresh.lines().count().min(vendored.lines().count()));
        panic!(
            "src/bindings.rs is stale: it differs from bindgen's output ({}/bindings.rs) from line \
             {}:\n  vendored: {:?}\n  bindgen:  {:?}\nrun ntbdrv/ntb-sys/regen.sh and commit src/bindings.rs",
            env!("OUT_DIR"),
            line + 1,
            vendored.lines().nth(line).unwrap_or("<end of file>"),
            fresh.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}
