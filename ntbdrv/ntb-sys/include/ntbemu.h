/*
 * ntbemu.h — register map and shared-memory layout of pcisock's emulated NTB device ("NTBEMU v1").
 *
 * This header is the single definition of the layout. `ntb-sys` runs bindgen over it (see
 * ntb-sys/build.rs and ntb-sys/src/bindings.rs); no Rust code restates these numbers.
 *
 * The NT register page mirrors a PLX PEX87xx NT port: offsets are relative to the PLX "NT base"
 * (BAR0 + 0x3E000 on NT0), so the doorbell and scratchpad registers sit where the real part has
 * them. The DMA page mirrors the PLX DMA function (10b5:87d0 BAR0): channel c at 0x200 + 0x100*c,
 * CTRL at +0x38 with START = bit 3 and IN_PROGRESS = bit 30. Fields the PLX part does not have
 * (64-bit doorbells, per-side scratchpad banks, link control) live in an extension area at the
 * start of the page, as the research note's "NTBEMU v1" map proposes.
 *
 * Everything here is little-endian, naturally aligned, and holds offsets, never pointers.
 */
#ifndef PCISOCK_NTBEMU_H
#define PCISOCK_NTBEMU_H

#include <stdint.h>

/* ---- device file header -------------------------------------------------------------------- */

#define NTBEMU_MAGIC 0x3130554D4542544EULL /* the bytes "NTBEMU01" read as a little-endian u64 */
#define NTBEMU_VERSION 2u

#define NTBEMU_MAX_SIDES 2u
#define NTBEMU_MAX_MW 8u
#define NTBEMU_MAX_DB 64u
#define NTBEMU_MAX_SPAD 32u
#define NTBEMU_MAX_DMA_CH 4u
#define NTBEMU_DMA_RING_LEN 64u
#define NTBEMU_HOST_SLOTS 8192u /* leases per host: a thousand connections on a loopback link hold four thousand */
/* Interrupt vectors per side for message-signalled wake-ups (the emulated counterpart of
 * ntb_msi's "virtual doorbells": a write of an MSI data word through the window), beside the
 * few doorbell bits. 2048 is the MSI-X table limit. */
#define NTBEMU_MAX_VECTORS 2048u

#define NTBEMU_TOPO_LOOPBACK 1u /* one host through its own bridge: the peer of side 0 is side 0 */
#define NTBEMU_TOPO_TWO_HOST 2u /* side 0 and side 1 are two hosts joined by the link */

/* Fault injection flags (ntbemu_header.fault_flags). Set by tests or `pcisock emu fault`. */
#define NTBEMU_FAULT_LINK_DOWN 0x1u  /* the link reports down and data-path ops fail */
#define NTBEMU_FAULT_DMA_ERROR 0x2u  /* descriptors complete with RD_FAIL (fault_count times, 0 = always) */
#define NTBEMU_FAULT_DMA_SLOW 0x4u   /* the engine sleeps fault_dma_delay_ns before each descriptor */
#define NTBEMU_FAULT_LOST_DB 0x8u    /* peer doorbell writes are dropped (fault_count times, 0 = always) */

/* Per-side block layout, relative to the side's base offset. */
#define NTBEMU_SIDE_NT_PAGE 0x0000u   /* NT register page, 4 KiB */
#define NTBEMU_SIDE_DMA_PAGE 0x1000u  /* DMA function page, 4 KiB */
#define NTBEMU_SIDE_DMA_RINGS 0x2000u /* NTBEMU_MAX_DMA_CH rings of NTBEMU_DMA_RING_LEN descriptors */
#define NTBEMU_SIDE_HOST_TABLE 0x4000u /* struct ntbemu_host_table */
#define NTBEMU_SIDE_ARENA 0x200000u   /* inbound memory windows: MW i at ARENA + i * mw_size */
#define NTBEMU_HEADER_SIZE 0x1000u

struct ntbemu_config {
    uint32_t topology;    /* NTBEMU_TOPO_* */
    uint32_t n_sides;     /* 1 for loopback, 2 for two-host */
    uint32_t n_mw;        /* memory windows per side, 1..NTBEMU_MAX_MW */
    uint32_t n_db;        /* doorbell bits, 1..NTBEMU_MAX_DB */
    uint32_t n_spad;      /* scratchpads per bank, 1..NTBEMU_MAX_SPAD */
    uint32_t n_dma_ch;    /* DMA channels per side, 0..NTBEMU_MAX_DMA_CH */
    uint64_t mw_size;     /* bytes per memory window, a multiple of mw_align */
    uint64_t mw_align;    /* translation address and size alignment */
};

struct ntbemu_header {
    uint64_t magic;          /* NTBEMU_MAGIC */
    uint32_t version;        /* NTBEMU_VERSION */
    uint32_t header_size;    /* NTBEMU_HEADER_SIZE */
    uint64_t file_size;      /* total size of the device file */
    uint64_t side_stride;    /* bytes between side blocks */
    uint64_t side_base;      /* offset of side 0's block */
    uint32_t owner_uid;      /* creator; a file owned by another uid is refused */
    uint32_t init_done;      /* 1 once the creator finished initialising (Release store) */
    struct ntbemu_config config;
    /* fault injection (shared by all processes attached to the device) */
    uint32_t fault_flags;    /* NTBEMU_FAULT_* */
    uint32_t fault_count;    /* remaining faults for counted kinds; 0 = unlimited */
    uint64_t fault_dma_delay_ns;
    uint64_t fault_hits;     /* faults actually injected */
    /* link events: bumped on every link state change; futex word */
    uint32_t link_generation;
    uint32_t link_waiters;
    uint8_t reserved[3976];
};

/* ---- NT register page ------------------------------------------------------------------------ */

/* Extension area (NTBEMU only). */
#define NTBEMU_REG_EMU_ID 0x000u        /* RO 0x4542544E "NTBE" */
#define NTBEMU_REG_EMU_VER 0x004u       /* RO version */
#define NTBEMU_REG_CAPS 0x008u          /* RO [7:0] n_mw [15:8] n_spad [23:16] n_db [27:24] n_dma_ch */
#define NTBEMU_REG_LINK_CTRL 0x010u     /* RW bit0: link enabled by this side */
#define NTBEMU_REG_LINK_STATUS 0x014u   /* RO bit0: up; [19:16] gen; [25:20] width */
#define NTBEMU_REG_DB_STATUS_HI 0x040u  /* doorbell status bits 32..63 (bits 0..31 at PLX 0xC4C) */
#define NTBEMU_REG_DB_MASK_HI 0x044u    /* doorbell mask bits 32..63 (bits 0..31 at PLX 0xC54) */
#define NTBEMU_REG_DB_WAITERS 0x048u    /* number of threads sleeping on this side's doorbells */
#define NTBEMU_REG_DB_SEQ 0x04Cu        /* bumped on every delivered doorbell interrupt; futex word */
#define NTBEMU_REG_VEC_ARMED_LO 0x050u  /* doorbell bits 0..31 whose interrupt line (FIFO) has a listener */
#define NTBEMU_REG_VEC_ARMED_HI 0x054u  /* the same for bits 32..63 */
#define NTBEMU_REG_MW_ALIGN 0x01Cu      /* RO address/size alignment of memory windows */
#define NTBEMU_REG_MW_XLAT(i) (0x080u + 16u * (i)) /* inbound translation (offset in own arena) */
/* MW_ALIGN sits at 0x01C, clear of the translation registers 0x080..0x100 (8 windows). */

/* PLX PEX87xx NT port registers (offsets from the NT base). */
#define PLX_NT_BAR2_XLAT_LO 0xC3Cu
#define PLX_NT_BAR2_XLAT_HI 0xC40u
#define PLX_NT_BAR4_XLAT_LO 0xC44u
#define PLX_NT_BAR4_XLAT_HI 0xC48u
#define PLX_NT_DB_SET 0xC4Cu            /* virtual-side IRQ Set; reads give the status (bits 0..31) */
#define PLX_NT_DB_CLEAR 0xC50u          /* IRQ Clear, write 1 to clear */
#define PLX_NT_DB_MASK_SET 0xC54u       /* IRQ Set-Mask; reads give the mask (bits 0..31) */
#define PLX_NT_DB_MASK_CLEAR 0xC58u     /* IRQ Clear-Mask */
#define PLX_NT_PEER_DB_SET 0xC5Cu       /* link-side IRQ Set: ring the peer */
#define PLX_NT_PEER_DB_CLEAR 0xC60u
#define PLX_NT_PEER_DB_MASK_SET 0xC64u
#define PLX_NT_PEER_DB_MASK_CLEAR 0xC68u
#define PLX_NT_SPAD0 0xC6Cu             /* PLX mailboxes 0..7: alias of the own bank's SPAD[0..7] */
#define PLX_NT_PORT_ID 0xC8Cu           /* bit31: link side (side 1) */
#define NTBEMU_REG_SPAD(n) (0xD00u + 4u * (n))  /* own scratchpad bank, n < 32 */

/* ---- DMA function page (PLX 10b5:87d0 BAR0) ------------------------------------------------- */

#define PLX_DMA_CH_BASE(c) (0x200u + 0x100u * (c))
#define PLX_DMA_SRC_LO 0x00u
#define PLX_DMA_SRC_HI 0x04u
#define PLX_DMA_DST_LO 0x08u
#define PLX_DMA_DST_HI 0x0Cu
#define PLX_DMA_COUNT 0x10u            /* [31] valid [30] interrupt [26:0] bytes (block mode) */
#define PLX_DMA_RING_ADDR_LO 0x14u
#define PLX_DMA_RING_ADDR_HI 0x18u
#define PLX_DMA_RING_NEXT 0x1Cu        /* index of the next descriptor the engine will read */
#define PLX_DMA_RING_COUNT 0x20u
#define PLX_DMA_RING_LAST 0x24u
#define PLX_DMA_PREF_LIMIT 0x34u
#define PLX_DMA_CTRL 0x38u
#define PLX_DMA_INTR_CTRL 0x3Cu        /* 16 bits */
#define PLX_DMA_INTR_STATUS 0x3Eu      /* 16 bits, W1C */
#define NTBEMU_DMA_SUBMIT_TAIL 0x40u   /* extension: index one past the last valid descriptor */
#define NTBEMU_DMA_OWNER_PID 0x44u     /* extension: pid of the process running the engine */
#define NTBEMU_DMA_DOORBELL 0x48u      /* extension: futex word the engine sleeps on */
#define NTBEMU_DMA_DONE_SEQ 0x4Cu      /* extension: bumped when a descriptor completes; futex word */
#define NTBEMU_DMA_DONE_WAITERS 0x50u  /* extension: threads sleeping on DONE_SEQ */

#define PLX_DMA_CTRL_GRACEFUL_PAUSE (1u << 0)
#define PLX_DMA_CTRL_ABORT (1u << 1)
#define PLX_DMA_CTRL_WRITE_BACK (1u << 2)
#define PLX_DMA_CTRL_START (1u << 3)
#define PLX_DMA_CTRL_RING_STOP (1u << 4)
#define PLX_DMA_CTRL_MODE_SGL_OFFCHIP (2u << 5)
#define PLX_DMA_CTRL_DESC_INVALID (1u << 8)
#define PLX_DMA_CTRL_ABORT_DONE (1u << 10)
#define PLX_DMA_CTRL_IN_PROGRESS (1u << 30)

#define PLX_DMA_INTR_ERROR (1u << 0)
#define PLX_DMA_INTR_INVALID_DESC (1u << 1)
#define PLX_DMA_INTR_DESC_DONE (1u << 2)
#define PLX_DMA_INTR_ABORT_DONE (1u << 3)

#define PLX_DESC_VALID (1u << 31)
#define PLX_DESC_INT_WHEN_DONE (1u << 30)
#define PLX_DESC_SIZE_MASK 0x07FFFFFFu
#define PLX_DESC_WB_SUCCESS (1u << 30)
#define PLX_DESC_WB_RD_FAIL (1u << 29)
#define PLX_DESC_WB_WR_FAIL (1u << 28)

/* struct plx_dma_hw_std_desc: 16 bytes, little-endian. Addresses are 48-bit bus addresses. */
struct plx_dma_desc {
    uint32_t flags_and_size;
    uint16_t dst_addr_hi;
    uint16_t src_addr_hi;
    uint32_t dst_addr_lo;
    uint32_t src_addr_lo;
};

/*
 * Emulated bus address space seen by a side's DMA engine (48 bits):
 *   [0, 2^40)                        own arena (inbound windows)
 *   NTBEMU_BUS_PEER_MW(i) + off      outbound window i: the peer's inbound window i
 *   NTBEMU_BUS_HOST + iova           host memory mapped for DMA by the engine's process
 */
#define NTBEMU_BUS_PEER_MW(i) ((1ULL << 44) + ((uint64_t)(i) << 40))
#define NTBEMU_BUS_HOST (1ULL << 47)

/* ---- host resource table ---------------------------------------------------------------------
 * Processes of one host share its side of the device. Window space, doorbell bits and DMA channels
 * are leased through this table; a lease names its process (pid and start time, so a recycled pid
 * is not mistaken for the owner) and is reclaimed when that process is gone.
 */
#define NTBEMU_LEASE_FREE 0u
#define NTBEMU_LEASE_WINDOW 1u
#define NTBEMU_LEASE_DOORBELL 2u
#define NTBEMU_LEASE_DMA 3u
#define NTBEMU_LEASE_VECTOR 4u

struct ntbemu_lease {
    uint32_t kind;        /* NTBEMU_LEASE_* */
    uint32_t owner_pid;
    uint64_t owner_start; /* /proc/<pid>/stat field 22 (start time in clock ticks) */
    uint32_t index;       /* window index, doorbell bit or DMA channel */
    uint32_t tag;         /* caller's tag (for diagnostics) */
    uint64_t offset;      /* window leases: offset in the window */
    uint64_t len;         /* window leases: length */
};

struct ntbemu_host_table {
    uint32_t lock;        /* 0 = free, else the holder's pid (a dead holder's lock is broken, and
                             so is one held unchanged for NTBEMU_LOCK_HOLD_MAX_MS) */
    uint32_t n_slots;     /* NTBEMU_HOST_SLOTS */
    uint64_t generation;  /* bumped on every change */
    uint32_t high_water;  /* slots at this index and above have never been used: scans stop here */
    uint32_t lock_seq;    /* bumped by every holder as it takes the lock (0 in older files) */
    uint8_t reserved[40];
    struct ntbemu_lease slots[NTBEMU_HOST_SLOTS];
};

#endif /* PCISOCK_NTBEMU_H */
