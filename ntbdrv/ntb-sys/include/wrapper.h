/*
 * wrapper.h — the single input bindgen reads for ntb-sys (see build.rs, feature `regenerate`).
 *
 * ntbemu.h:          the emulated NTB device (register map, shared-memory layout).
 * linux/vfio.h:      the VFIO uapi the hardware backends drive (structs and flags; the ioctl
 *                    numbers are function-like macros bindgen cannot expand, so src/lib.rs states
 *                    them and tests/layout.rs checks them against the C compiler).
 * linux/pci_regs.h:  PCI configuration-space offsets and capability IDs.
 */
#include "ntbemu.h"
#include <linux/vfio.h>
#include <linux/pci_regs.h>
