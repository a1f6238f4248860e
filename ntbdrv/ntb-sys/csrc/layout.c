/*
 * layout.c — what the C compiler says about ntbemu.h and the VFIO uapi, for tests/layout.rs.
 *
 * build.rs compiles this file into a static library linked into ntb-sys. Nothing in the crate
 * calls it; the layout test declares these functions and compares every struct size, field
 * offset, field size, object-like macro, function-like macro and VFIO ioctl number with the Rust
 * definitions (bindgen's vendored src/bindings.rs and the hand-written const fns in src/lib.rs).
 *
 * Lookups by name return UINT64_MAX for a name this file does not know.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <linux/vfio.h>

#include "ntbemu.h"

/* ---- structs ------------------------------------------------------------------------------- */

struct ntbsys_type {
    const char *name;
    uint64_t size;
    uint64_t align;
};

struct ntbsys_field {
    const char *type;
    const char *name;
    uint64_t offset;
    uint64_t size;
};

#define T(ty) { #ty, sizeof(struct ty), _Alignof(struct ty) }
#define F(ty, f) { #ty, #f, offsetof(struct ty, f), sizeof(((struct ty *)0)->f) }

static const struct ntbsys_type TYPES[] = {
    T(ntbemu_config),
    T(ntbemu_header),
    T(plx_dma_desc),
    T(ntbemu_lease),
    T(ntbemu_host_table),
    T(vfio_info_cap_header),
    T(vfio_group_status),
    T(vfio_device_info),
    T(vfio_region_info),
    T(vfio_irq_info),
    T(vfio_irq_set),
    T(vfio_iommu_type1_info),
    T(vfio_iommu_type1_dma_map),
    T(vfio_iommu_type1_dma_unmap),
};

static const struct ntbsys_field FIELDS[] = {
    F(ntbemu_config, topology),
    F(ntbemu_config, n_sides),
    F(ntbemu_config, n_mw),
    F(ntbemu_config, n_db),
    F(ntbemu_config, n_spad),
    F(ntbemu_config, n_dma_ch),
    F(ntbemu_config, mw_size),
    F(ntbemu_config, mw_align),

    F(ntbemu_header, magic),
    F(ntbemu_header, version),
    F(ntbemu_header, header_size),
    F(ntbemu_header, file_size),
    F(ntbemu_header, side_stride),
    F(ntbemu_header, side_base),
    F(ntbemu_header, owner_uid),
    F(ntbemu_header, init_done),
    F(ntbemu_header, config),
    F(ntbemu_header, fault_flags),
    F(ntbemu_header, fault_count),
    F(ntbemu_header, fault_dma_delay_ns),
    F(ntbemu_header, fault_hits),
    F(ntbemu_header, link_generation),
    F(ntbemu_header, link_waiters),
    F(ntbemu_header, reserved),

    F(plx_dma_desc, flags_and_size),
    F(plx_dma_desc, dst_addr_hi),
    F(plx_dma_desc, src_addr_hi),
    F(plx_dma_desc, dst_addr_lo),
    F(plx_dma_desc, src_addr_lo),

    F(ntbemu_lease, kind),
    F(ntbemu_lease, owner_pid),
    F(ntbemu_lease, owner_start),
    F(ntbemu_lease, index),
    F(ntbemu_lease, tag),
    F(ntbemu_lease, offset),
    F(ntbemu_lease, len),

    F(ntbemu_host_table, lock),
    F(ntbemu_host_table, n_slots),
    F(ntbemu_host_table, generation),
    F(ntbemu_host_table, high_water),
    F(ntbemu_host_table, lock_seq),
    F(ntbemu_host_table, reserved),
    F(ntbemu_host_table, slots),

    F(vfio_info_cap_header, id),
    F(vfio_info_cap_header, version),
    F(vfio_info_cap_header, next),

    F(vfio_group_status, argsz),
    F(vfio_group_status, flags),

    F(vfio_device_info, argsz),
    F(vfio_device_info, flags),
    F(vfio_device_info, num_regions),
    F(vfio_device_info, num_irqs),
    F(vfio_device_info, cap_offset),

    F(vfio_region_info, argsz),
    F(vfio_region_info, flags),
    F(vfio_region_info, index),
    F(vfio_region_info, cap_offset),
    F(vfio_region_info, size),
    F(vfio_region_info, offset),

    F(vfio_irq_info, argsz),
    F(vfio_irq_info, flags),
    F(vfio_irq_info, index),
    F(vfio_irq_info, count),

    F(vfio_irq_set, argsz),
    F(vfio_irq_set, flags),
    F(vfio_irq_set, index),
    F(vfio_irq_set, start),
    F(vfio_irq_set, count),
    /* `data` is a flexible array member: offsetof only, its sizeof is not defined */
    { "vfio_irq_set", "data", offsetof(struct vfio_irq_set, data), 0 },

    F(vfio_iommu_type1_info, argsz),
    F(vfio_iommu_type1_info, flags),
    F(vfio_iommu_type1_info, iova_pgsizes),
    F(vfio_iommu_type1_info, cap_offset),

    F(vfio_iommu_type1_dma_map, argsz),
    F(vfio_iommu_type1_dma_map, flags),
    F(vfio_iommu_type1_dma_map, vaddr),
    F(vfio_iommu_type1_dma_map, iova),
    F(vfio_iommu_type1_dma_map, size),

    F(vfio_iommu_type1_dma_unmap, argsz),
    F(vfio_iommu_type1_dma_unmap, flags),
    F(vfio_iommu_type1_dma_unmap, iova),
    F(vfio_iommu_type1_dma_unmap, size),
    { "vfio_iommu_type1_dma_unmap", "data", offsetof(struct vfio_iommu_type1_dma_unmap, data), 0 },
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const struct ntbsys_type *find_type(const char *ty)
{
    for (size_t i = 0; i < N(TYPES); i++)
        if (strcmp(TYPES[i].name, ty) == 0)
            return &TYPES[i];
    return NULL;
}

static const struct ntbsys_field *find_field(const char *ty, const char *f)
{
    for (size_t i = 0; i < N(FIELDS); i++)
        if (strcmp(FIELDS[i].type, ty) == 0 && strcmp(FIELDS[i].name, f) == 0)
            return &FIELDS[i];
    return NULL;
}

uint64_t ntbsys_c_sizeof(const char *ty)
{
    const struct ntbsys_type *t = find_type(ty);
    return t ? t->size : UINT64_MAX;
}

uint64_t ntbsys_c_alignof(const char *ty)
{
    const struct ntbsys_type *t = find_type(ty);
    return t ? t->align : UINT64_MAX;
}

/* Number of fields of `ty` listed above (so the test notices a field C has and Rust lacks). */
uint64_t ntbsys_c_field_count(const char *ty)
{
    uint64_t n = 0;
    if (!find_type(ty))
        return UINT64_MAX;
    for (size_t i = 0; i < N(FIELDS); i++)
        n += strcmp(FIELDS[i].type, ty) == 0;
    return n;
}

uint64_t ntbsys_c_offsetof(const char *ty, const char *f)
{
    const struct ntbsys_field *x = find_field(ty, f);
    return x ? x->offset : UINT64_MAX;
}

uint64_t ntbsys_c_field_size(const char *ty, const char *f)
{
    const struct ntbsys_field *x = find_field(ty, f);
    return x ? x->size : UINT64_MAX;
}

/* ---- object-like macros and ioctl numbers --------------------------------------------------- */

struct ntbsys_const {
    const char *name;
    uint64_t value;
};

#define C(m) { #m, (uint64_t)(m) }

static const struct ntbsys_const CONSTS[] = {
    /* ntbemu.h, every object-like macro */
    C(NTBEMU_MAGIC),
    C(NTBEMU_VERSION),
    C(NTBEMU_MAX_SIDES),
    C(NTBEMU_MAX_MW),
    C(NTBEMU_MAX_DB),
    C(NTBEMU_MAX_SPAD),
    C(NTBEMU_MAX_DMA_CH),
    C(NTBEMU_DMA_RING_LEN),
    C(NTBEMU_HOST_SLOTS),
    C(NTBEMU_TOPO_LOOPBACK),
    C(NTBEMU_TOPO_TWO_HOST),
    C(NTBEMU_FAULT_LINK_DOWN),
    C(NTBEMU_FAULT_DMA_ERROR),
    C(NTBEMU_FAULT_DMA_SLOW),
    C(NTBEMU_FAULT_LOST_DB),
    C(NTBEMU_SIDE_NT_PAGE),
    C(NTBEMU_SIDE_DMA_PAGE),
    C(NTBEMU_SIDE_DMA_RINGS),
    C(NTBEMU_SIDE_HOST_TABLE),
    C(NTBEMU_SIDE_ARENA),
    C(NTBEMU_HEADER_SIZE),
    C(NTBEMU_REG_EMU_ID),
    C(NTBEMU_REG_EMU_VER),
    C(NTBEMU_REG_CAPS),
    C(NTBEMU_REG_LINK_CTRL),
    C(NTBEMU_REG_LINK_STATUS),
    C(NTBEMU_REG_DB_STATUS_HI),
    C(NTBEMU_REG_DB_MASK_HI),
    C(NTBEMU_REG_DB_WAITERS),
    C(NTBEMU_REG_DB_SEQ),
    C(NTBEMU_REG_MW_ALIGN),
    C(PLX_NT_BAR2_XLAT_LO),
    C(PLX_NT_BAR2_XLAT_HI),
    C(PLX_NT_BAR4_XLAT_LO),
    C(PLX_NT_BAR4_XLAT_HI),
    C(PLX_NT_DB_SET),
    C(PLX_NT_DB_CLEAR),
    C(PLX_NT_DB_MASK_SET),
    C(PLX_NT_DB_MASK_CLEAR),
    C(PLX_NT_PEER_DB_SET),
    C(PLX_NT_PEER_DB_CLEAR),
    C(PLX_NT_PEER_DB_MASK_SET),
    C(PLX_NT_PEER_DB_MASK_CLEAR),
    C(PLX_NT_SPAD0),
    C(PLX_NT_PORT_ID),
    C(PLX_DMA_SRC_LO),
    C(PLX_DMA_SRC_HI),
    C(PLX_DMA_DST_LO),
    C(PLX_DMA_DST_HI),
    C(PLX_DMA_COUNT),
    C(PLX_DMA_RING_ADDR_LO),
    C(PLX_DMA_RING_ADDR_HI),
    C(PLX_DMA_RING_NEXT),
    C(PLX_DMA_RING_COUNT),
    C(PLX_DMA_RING_LAST),
    C(PLX_DMA_PREF_LIMIT),
    C(PLX_DMA_CTRL),
    C(PLX_DMA_INTR_CTRL),
    C(PLX_DMA_INTR_STATUS),
    C(NTBEMU_DMA_SUBMIT_TAIL),
    C(NTBEMU_DMA_OWNER_PID),
    C(NTBEMU_DMA_DOORBELL),
    C(NTBEMU_DMA_DONE_SEQ),
    C(NTBEMU_DMA_DONE_WAITERS),
    C(PLX_DMA_CTRL_GRACEFUL_PAUSE),
    C(PLX_DMA_CTRL_ABORT),
    C(PLX_DMA_CTRL_WRITE_BACK),
    C(PLX_DMA_CTRL_START),
    C(PLX_DMA_CTRL_RING_STOP),
    C(PLX_DMA_CTRL_MODE_SGL_OFFCHIP),
    C(PLX_DMA_CTRL_DESC_INVALID),
    C(PLX_DMA_CTRL_ABORT_DONE),
    C(PLX_DMA_CTRL_IN_PROGRESS),
    C(PLX_DMA_INTR_ERROR),
    C(PLX_DMA_INTR_INVALID_DESC),
    C(PLX_DMA_INTR_DESC_DONE),
    C(PLX_DMA_INTR_ABORT_DONE),
    C(PLX_DESC_VALID),
    C(PLX_DESC_INT_WHEN_DONE),
    C(PLX_DESC_SIZE_MASK),
    C(PLX_DESC_WB_SUCCESS),
    C(PLX_DESC_WB_RD_FAIL),
    C(PLX_DESC_WB_WR_FAIL),
    C(NTBEMU_BUS_HOST),
    C(NTBEMU_LEASE_FREE),
    C(NTBEMU_LEASE_WINDOW),
    C(NTBEMU_LEASE_DOORBELL),
    C(NTBEMU_LEASE_DMA),

    /* linux/vfio.h ioctl numbers (src/lib.rs states these by hand) */
    C(VFIO_GET_API_VERSION),
    C(VFIO_CHECK_EXTENSION),
    C(VFIO_SET_IOMMU),
    C(VFIO_GROUP_GET_STATUS),
    C(VFIO_GROUP_SET_CONTAINER),
    C(VFIO_GROUP_UNSET_CONTAINER),
    C(VFIO_GROUP_GET_DEVICE_FD),
    C(VFIO_DEVICE_GET_INFO),
    C(VFIO_DEVICE_GET_REGION_INFO),
    C(VFIO_DEVICE_GET_IRQ_INFO),
    C(VFIO_DEVICE_SET_IRQS),
    C(VFIO_DEVICE_RESET),
    C(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO),
    C(VFIO_DEVICE_PCI_HOT_RESET),
    C(VFIO_DEVICE_IOEVENTFD),
    C(VFIO_DEVICE_FEATURE),
    C(VFIO_IOMMU_GET_INFO),
    C(VFIO_IOMMU_MAP_DMA),
    C(VFIO_IOMMU_UNMAP_DMA),
    C(VFIO_IOMMU_ENABLE),
    C(VFIO_IOMMU_DISABLE),
    /* and a few object-like VFIO macros bindgen does expand, as a sanity check */
    C(VFIO_API_VERSION),
    C(VFIO_TYPE1v2_IOMMU),
    C(VFIO_PCI_BAR0_REGION_INDEX),
    C(VFIO_PCI_CONFIG_REGION_INDEX),
    C(VFIO_PCI_MSIX_IRQ_INDEX),
    C(VFIO_IRQ_SET_DATA_EVENTFD),
    C(VFIO_IRQ_SET_ACTION_TRIGGER),
    C(VFIO_DMA_MAP_FLAG_READ),
    C(VFIO_DMA_MAP_FLAG_WRITE),
};

uint64_t ntbsys_c_const(const char *name)
{
    for (size_t i = 0; i < N(CONSTS); i++)
        if (strcmp(CONSTS[i].name, name) == 0)
            return CONSTS[i].value;
    return UINT64_MAX;
}

/* ---- function-like macros ------------------------------------------------------------------ */

uint32_t ntbsys_c_reg_mw_xlat(uint32_t i) { return NTBEMU_REG_MW_XLAT(i); }
uint32_t ntbsys_c_reg_spad(uint32_t n) { return NTBEMU_REG_SPAD(n); }
uint32_t ntbsys_c_dma_ch_base(uint32_t c) { return PLX_DMA_CH_BASE(c); }
uint64_t ntbsys_c_bus_peer_mw(uint32_t i) { return NTBEMU_BUS_PEER_MW(i); }
