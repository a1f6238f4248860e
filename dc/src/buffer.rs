//! The DC buffer: the memory both devices reach by DMA, where each chunk lands between its read
//! and its write. An inbound memory window of the NTB device (leased, and released on drop), a
//! PCI device's p2pmem, or host memory (the staged baseline).
//!
//! Owns: choosing and leasing the memory, and telling whether the kernel backs it with huge
//! pages. Must never touch the bytes in it (the kernel does, through the ring) nor hold a window
//! lease past the copy.

use std::sync::Arc;

use ntbdrv::{format_size, Lease, NtbDevice, WindowLease};

use crate::manager;
use crate::sys::{self, DcMemory};
use crate::DcError;

/// The lease tag of DC buffers in the window ("PCDC").
const DC_TAG: u32 = 0x5043_4443;

/// A transparent huge page.
const HUGE: usize = 2 << 20;

/// Where a DC buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    /// An inbound memory window of the NTB device (the default).
    Window,
    /// PCI peer-to-peer memory, where the kernel offers it.
    P2pmem,
    /// Host memory: the conventional, staged baseline.
    Host,
}

impl BufferKind {
    /// `window`, `p2pmem` or `host`, as `--buffer` takes it.
    pub fn name(self) -> &'static str {
        match self {
            BufferKind::Window => "window",
            BufferKind::P2pmem => "p2pmem",
            BufferKind::Host => "host",
        }
    }
}

/// A DC buffer and what keeps it: a window lease (released on drop) or nothing more.
pub(crate) struct DcBuffer {
    pub(crate) mem: DcMemory,
    /// Where it is, for the report.
    pub(crate) place: String,
    lease: Option<(Arc<dyn NtbDevice>, WindowLease)>,
    /// Why a window buffer could not be collapsed into huge pages, if it could not.
    pub(crate) collapse: Option<String>,
}

impl Drop for DcBuffer {
    fn drop(&mut self) {
        if let Some((dev, lease)) = self.lease.take() {
            let _ = dev.release(Lease::Window(lease));
        }
    }
}

fn failed(why: String) -> DcError {
    DcError::Buffer(why)
}

/// A DC buffer of `len` bytes of `kind`.
pub(crate) fn dc_buffer(kind: BufferKind, len: usize) -> Result<DcBuffer, DcError> {
    match kind {
        BufferKind::Host => Ok(DcBuffer {
            mem: DcMemory::host(len).map_err(|e| failed(format!("host DC buffer: {e}")))?,
            place: "host memory (anonymous mapping)".into(),
            lease: None,
            collapse: None,
        }),
        BufferKind::Window => {
            let dev = ntbdrv::recommended::open_default()
                .map_err(|e| failed(format!("window DC buffer: NTB device: {e}")))?;
            let mut last = None;
            // First with room for the buffer in whole 2 MiB pages from a 2 MiB boundary: where
            // the window's memory comes in huge pages (as a real BAR is contiguous; on tmpfs
            // without them, collapsed below), each chunk then sits in one of them. Then, in a
            // window too small or too full for that, exactly the buffer.
            let whole = len.div_ceil(HUGE) * HUGE;
            let tries = (0..dev.mw_count()).flat_map(|mw| [(mw, whole + HUGE - 4096), (mw, len)]);
            for (mw, want) in tries {
                let lease = match dev.lease_window(mw, want as u64, DC_TAG) {
                    Ok(l) => l,
                    Err(e) => {
                        last = Some(e.to_string());
                        continue;
                    }
                };
                let region = dev.inbound(mw).and_then(|r| {
                    let at = r.as_ptr() as usize + lease.offset as usize;
                    let (pad, n) = if want > len {
                        ((HUGE - at % HUGE) % HUGE, whole)
                    } else {
                        (0, len)
                    };
                    r.slice(lease.offset as usize + pad, n)
                });
                // Contiguous like a BAR: collapsed into huge pages where the filesystem did not
                // give them (a range already in huge pages is left as it is).
                let mut collapse = None;
                let mem = match region.map_err(|e| e.to_string()).and_then(|r| {
                    collapse = r.collapse_huge().err().map(|e| e.to_string());
                    DcMemory::window(r).map_err(|e| e.to_string())
                }) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = dev.release(Lease::Window(lease));
                        return Err(failed(format!("window DC buffer: {e}")));
                    }
                };
                let place = format!(
                    "NTB window {mw} of {}, offset {:#x}",
                    dev.describe(),
                    lease.offset
                );
                return Ok(DcBuffer {
                    mem,
                    place,
                    lease: Some((dev, lease)),
                    collapse,
                });
            }
            Err(failed(format!(
                "window DC buffer: no room for {} in the NTB device's windows ({}); use a \
                 smaller --qd or --chunk, or --buffer host",
                format_size(len as u64),
                last.unwrap_or_else(|| "no windows".into())
            )))
        }
        BufferKind::P2pmem => {
            let devices = manager::p2pmem_devices();
            let Some((bdf, _)) = devices.iter().find(|(_, avail)| *avail >= len as u64) else {
                let why = if devices.is_empty() {
                    "no PCI device on this machine publishes p2pmem (no \
                     /sys/bus/pci/devices/*/p2pmem/: the kernel needs CONFIG_PCI_P2PDMA and a \
                     device that offers peer-to-peer memory, such as an NVMe controller memory \
                     buffer)"
                        .to_owned()
                } else {
                    let list: Vec<String> = devices
                        .iter()
                        .map(|(b, a)| format!("{b}: {} available", format_size(*a)))
                        .collect();
                    format!(
                        "no p2pmem device has {} free ({})",
                        format_size(len as u64),
                        list.join(", ")
                    )
                };
                return Err(failed(format!(
                    "p2pmem DC buffer: {why}; use --buffer window (the default) or host"
                )));
            };
            let dir = std::path::Path::new("/sys/bus/pci/devices").join(bdf);
            let mem = sys::p2pmem(&dir, len)
                .map_err(|e| failed(format!("p2pmem DC buffer on {bdf}: {e}")))?;
            Ok(DcBuffer {
                mem,
                place: format!("p2pmem of PCI device {bdf}"),
                lease: None,
                collapse: None,
            })
        }
    }
}

/// Bytes of the mapping holding `addr` that the kernel maps with huge pages (`/proc/self/smaps`:
/// AnonHugePages, ShmemPmdMapped, FilePmdMapped of that mapping), if it can tell.
pub(crate) fn huge_bytes(addr: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    let mut kb = 0u64;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                if inside {
                    break;
                }
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            for field in ["AnonHugePages:", "ShmemPmdMapped:", "FilePmdMapped:"] {
                if let Some(v) = line.strip_prefix(field) {
                    kb += v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
            }
        }
    }
    inside.then_some(kb << 10)
}
