//! Fault injection: faults live in the device header, so a test or `pcisock emu fault` in one
//! process affects every process attached to the device, as a misbehaving link would. Owns: the
//! fault flags, their names (as `pcisock emu fault` takes them) and the hit counter. Must never
//! fake a fault inside one process only: a fault is state of the device, seen by every process
//! attached to it.

use std::mem::offset_of;
use std::sync::atomic::Ordering::{Acquire, SeqCst};
use std::time::Duration;

use ntb_sys as sys;

use super::EmuDevice;

type H = sys::ntbemu_header;

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The link reports down; doorbells, peer scratchpads and DMA to the peer fail.
    LinkDown,
    /// The next `count` DMA descriptors fail with a read error (0 = every descriptor).
    DmaError { count: u32 },
    /// The DMA engine waits `delay` before each descriptor.
    DmaSlow { delay: Duration },
    /// The next `count` peer doorbell writes are lost (0 = every one).
    LostDoorbell { count: u32 },
}

/// Every fault's flag in the header and its name (as `pcisock emu fault` takes and reports it).
const NAMES: [(u32, &str); 4] = [
    (sys::NTBEMU_FAULT_LINK_DOWN, "link-down"),
    (sys::NTBEMU_FAULT_DMA_ERROR, "dma-error"),
    (sys::NTBEMU_FAULT_DMA_SLOW, "dma-slow"),
    (sys::NTBEMU_FAULT_LOST_DB, "lost-doorbell"),
];

/// The names of the faults in `flags`, and `unknown(0x…)` for flags this build does not know.
pub fn names(flags: u32) -> Vec<String> {
    let mut out: Vec<String> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| (*n).to_owned())
        .collect();
    let rest = NAMES.iter().fold(flags, |f, (bit, _)| f & !bit);
    if rest != 0 {
        out.push(format!("unknown({rest:#x})"));
    }
    out
}

impl Fault {
    /// The fault's name: `link-down`, `dma-error`, `dma-slow` or `lost-doorbell`.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(bit, _)| *bit == self.flag())
            .map_or("unknown", |(_, n)| n)
    }

    fn flag(self) -> u32 {
        match self {
            Fault::LinkDown => sys::NTBEMU_FAULT_LINK_DOWN,
            Fault::DmaError { .. } => sys::NTBEMU_FAULT_DMA_ERROR,
            Fault::DmaSlow { .. } => sys::NTBEMU_FAULT_DMA_SLOW,
            Fault::LostDoorbell { .. } => sys::NTBEMU_FAULT_LOST_DB,
        }
    }
}

/// Handle for injecting and clearing faults on one device.
pub struct Faults<'a> {
    pub(super) dev: &'a EmuDevice,
}

impl Faults<'_> {
    /// Inject `fault` (counted faults share one counter: the last one set wins).
    pub fn inject(&self, fault: Fault) {
        let m = &self.dev.map;
        match fault {
            Fault::DmaError { count } | Fault::LostDoorbell { count } => {
                m.u32_at(offset_of!(H, fault_count)).store(count, SeqCst)
            }
            Fault::DmaSlow { delay } => m
                .u64_at(offset_of!(H, fault_dma_delay_ns))
                .store(delay.as_nanos().min(u64::MAX as u128) as u64, SeqCst),
            Fault::LinkDown => {}
        }
        m.u32_at(offset_of!(H, fault_flags))
            .fetch_or(fault.flag(), SeqCst);
        if fault == Fault::LinkDown {
            self.dev.bump_link();
        }
    }

    /// Clear every fault.
    pub fn clear(&self) {
        let flags = self.dev.map.u32_at(offset_of!(H, fault_flags));
        // A held-down link comes up: the generation moves before it reads up (as in
        // `link_enable`).
        if flags.load(SeqCst) & sys::NTBEMU_FAULT_LINK_DOWN != 0 {
            self.dev.new_link_generation();
        }
        let prev = flags.swap(0, SeqCst);
        if prev & sys::NTBEMU_FAULT_LINK_DOWN != 0 {
            self.dev.announce_link();
        }
    }

    /// The faults in force, as flags (`NTBEMU_FAULT_*`).
    pub fn flags(&self) -> u32 {
        self.dev
            .map
            .u32_at(offset_of!(H, fault_flags))
            .load(Acquire)
    }

    /// The names of the faults in force (see [`names`]).
    pub fn names(&self) -> Vec<String> {
        names(self.flags())
    }

    /// How many faults were actually injected since the device was made.
    pub fn hits(&self) -> u64 {
        self.dev.map.u64_at(offset_of!(H, fault_hits)).load(Acquire)
    }
}

/// Is `flag` in force (without consuming it)?
pub(super) fn active(dev: &EmuDevice, flag: u32) -> bool {
    dev.map.u32_at(offset_of!(H, fault_flags)).load(Acquire) & flag != 0
}

/// Consume one occurrence of a counted fault; true if it fires now.
pub(super) fn take(dev: &EmuDevice, flag: u32) -> bool {
    let flags = dev.map.u32_at(offset_of!(H, fault_flags));
    if flags.load(Acquire) & flag == 0 {
        return false;
    }
    let count = dev.map.u32_at(offset_of!(H, fault_count));
    let fire = loop {
        let c = count.load(SeqCst);
        if c == 0 {
            break true; // unlimited
        }
        if count.compare_exchange(c, c - 1, SeqCst, SeqCst).is_ok() {
            if c == 1 {
                flags.fetch_and(!flag, SeqCst);
            }
            break true;
        }
    };
    if fire {
        dev.map
            .u64_at(offset_of!(H, fault_hits))
            .fetch_add(1, SeqCst);
    }
    fire
}

/// The injected per-descriptor DMA delay, if the slow-DMA fault is in force.
pub(super) fn dma_delay(dev: &EmuDevice) -> Option<Duration> {
    if !active(dev, sys::NTBEMU_FAULT_DMA_SLOW) {
        return None;
    }
    dev.map
        .u64_at(offset_of!(H, fault_hits))
        .fetch_add(1, SeqCst);
    Some(Duration::from_nanos(
        dev.map
            .u64_at(offset_of!(H, fault_dma_delay_ns))
            .load(Acquire),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_cover_every_flag_and_say_unknown() {
        assert_eq!(names(0), Vec::<String>::new());
        assert_eq!(
            names(sys::NTBEMU_FAULT_LINK_DOWN | 0x100),
            vec!["link-down", "unknown(0x100)"]
        );
        for f in [
            Fault::LinkDown,
            Fault::DmaError { count: 1 },
            Fault::DmaSlow {
                delay: Duration::ZERO,
            },
            Fault::LostDoorbell { count: 0 },
        ] {
            assert_eq!(names(f.flag()), vec![f.name()]);
        }
    }
}
