//! Bridge mode: the emulated device's layout in memory two *machines* share through a real
//! bridge (a PCI BAR such as QEMU ivshmem's BAR2): laying the device out there once, claiming a
//! side, the interrupt mailbox each side has in that memory, and the per-process poller that
//! turns mailbox bits into kicks of this machine's interrupt lines.
//!
//! Owns: the mailbox words (`MB_*`), the side claims, `post_interrupt` / `deliver_interrupts`
//! and the poller thread. Must never wait on a futex or name a file of the other machine: no
//! kernel object crosses the bridge, only the shared memory and the bridge's interrupt.

use std::mem::offset_of;
use std::path::PathBuf;
use std::sync::atomic::Ordering::{Acquire, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntb_sys as sys;

use super::config::{Config, Layout};
use super::file::{ensure_private_dir, init};
use super::irq::kick_line;
use super::mapping::Mapping;
use super::sync;
use super::{EmuDevice, HDR_SIZE};
use crate::error::DeviceError;
use crate::{sysutil, NtbDevice, SideId};

/// A device whose layout lives in memory that two *machines* share through a real bridge (a PCI
/// BAR, such as QEMU ivshmem's BAR2), rather than in a file both "hosts" of one kernel map.
///
/// What one kernel gave the emulation for free is then gone: a futex on the BAR is not shared
/// with the other kernel (and the kernel refuses futexes on a BAR mapping at all), and a FIFO
/// path names a file on one machine only. So in bridge mode an interrupt is a *message*: the
/// ringer sets the pending bit in the target side's mailbox in the BAR, bumps the mailbox
/// sequence, and asks the bridge to send the target machine an interrupt
/// ([`Bridge::kick`]); on the target machine a per-process poller thread takes the pending bits
/// and kicks that machine's own FIFO lines. Sleepers in `db_wait` and `link_wait` poll the
/// status words with short naps instead of futex waits.
pub trait Bridge: Send + Sync {
    /// "ivshmem 0000:00:04.0 (ID 1)", for `describe`.
    fn describe(&self) -> String;
    /// This machine's ID on the bridge.
    fn id(&self) -> u32;
    /// Send an interrupt to the machine with bridge ID `id` (the ivshmem Doorbell register).
    fn kick(&self, id: u32);
}

// Bridge-mode additions to the layout (they sit in space `ntbemu.h` leaves unused).
/// Header: per side, the bridge ID + 1 of the machine that claimed it (0 = unclaimed).
pub(super) const BRIDGE_CLAIM: usize = 0xF00;
/// Per side, between the host table and the arena: the interrupt mailbox.
const MAILBOX: usize = 0x10_0000;
/// Mailbox: bumped (SeqCst) after pending bits are set.
const MB_SEQ: usize = MAILBOX;
/// Mailbox: doorbell bits whose interrupt is pending (two words).
pub(super) const MB_DB: usize = MAILBOX + 0x40;
/// Mailbox: vectors whose interrupt is pending (a 2048-bit map).
const MB_VEC: usize = MAILBOX + 0x80;
/// Mailbox: the link as this side's machine last delivered it to its lines
/// ([`EmuDevice::link_word`]), so that one poller per machine kicks them per link change.
const MB_LINK: usize = MB_VEC + sys::NTBEMU_MAX_VECTORS as usize / 8;
const _: () = {
    assert!(
        sys::NTBEMU_SIDE_HOST_TABLE as usize + std::mem::size_of::<sys::ntbemu_host_table>()
            <= MAILBOX
    );
    assert!(MB_LINK + 4 <= sys::NTBEMU_SIDE_ARENA as usize);
    assert!(BRIDGE_CLAIM + 8 <= HDR_SIZE);
};
/// A bridge-mode sleeper's nap between two looks at the words it waits on.
pub(super) const BRIDGE_NAP: Duration = Duration::from_micros(50);
/// The same for link events.
pub(super) const BRIDGE_LINK_NAP: Duration = Duration::from_millis(2);

impl EmuDevice {
    /// Lay a two-host device out in `map`, memory a bridge shares between two machines (all
    /// zeros when fresh), or attach to the layout the other machine already made there, and
    /// claim `side` (or the first side not claimed by another machine). `path` names the
    /// device on this machine: its interrupt lines (FIFOs) live beside it.
    pub(crate) fn on_bridge(
        map: Mapping,
        path: PathBuf,
        config: &Config,
        side: Option<SideId>,
        bridge: Arc<dyn Bridge>,
    ) -> Result<Self, DeviceError> {
        config.validate()?;
        let layout = Layout::of(config);
        if layout.file_size > map.len() as u64 {
            return Err(DeviceError::BadConfig(format!(
                "the shared memory has {} bytes; this layout needs {}",
                map.len(),
                layout.file_size
            )));
        }
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir)?;
        }
        let done = map.u32_at(offset_of!(sys::ntbemu_header, init_done));
        // The machine whose claim (CAS 0 → 2) wins writes the layout and publishes init_done = 1
        // (`init`); the other waits for it (`sync`'s bridge device creation). The BAR is coherent
        // memory shared by both machines (ivshmem's BAR2).
        if sync::claim_layout(done) {
            init(&map, config, &layout);
        } else {
            let t0 = Instant::now();
            while sync::layout_pending(done) {
                if t0.elapsed() > Duration::from_secs(5) {
                    return Err(DeviceError::Corrupt {
                        path,
                        why: "the other machine never finished laying out the device".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let me = bridge.id() + 1;
        let claim = |s: SideId| map.u32_at(BRIDGE_CLAIM + 4 * s as usize);
        let side = match side {
            Some(s) if s < 2 => {
                claim(s).store(me, SeqCst);
                s
            }
            Some(s) => return Err(DeviceError::NoSuchSide { side: s, sides: 2 }),
            None => (0..2)
                .find(
                    |&s| match claim(s).compare_exchange(0, me, SeqCst, SeqCst) {
                        Ok(_) => true,
                        Err(cur) => cur == me,
                    },
                )
                .ok_or_else(|| {
                    DeviceError::BadConfig(format!(
                    "both sides of the shared memory are claimed by other machines (IDs {} and {})",
                    claim(0).load(Acquire).wrapping_sub(1),
                    claim(1).load(Acquire).wrapping_sub(1)
                ))
                })?,
        };
        Self::validate(map, path, side, None, Some(bridge))
    }
    /// Bridge mode: post an interrupt for doorbell `bits` and/or `vector` to `side`'s mailbox
    /// and send its machine the bridge's interrupt.
    pub(super) fn post_interrupt(&self, side: SideId, bits: u64, vector: Option<u32>) {
        let mb = self.side_off(side);
        // The pending bits (after the data the interrupt announces) come before the SEQ bump,
        // and both before the doorbell-register write; the target's poller loads SEQ, then
        // takes the pending bits (`sync`'s bridge interrupt).
        if bits != 0 {
            sync::post_pending(self.map.u32_at(mb + MB_DB), bits as u32);
            sync::post_pending(self.map.u32_at(mb + MB_DB + 4), (bits >> 32) as u32);
        }
        if let Some(v) = vector {
            sync::post_pending(
                self.map.u32_at(mb + MB_VEC + 4 * (v as usize / 32)),
                1 << (v % 32),
            );
        }
        sync::bump_mailbox(self.map.u32_at(mb + MB_SEQ));
        if let Some(b) = &self.bridge {
            let id = self
                .map
                .u32_at(BRIDGE_CLAIM + 4 * side as usize)
                .load(Acquire);
            if id != 0 {
                b.kick((id - 1) & 0xFFFF);
            }
        }
    }

    /// Bridge mode: take this side's pending interrupts and kick their lines on this machine.
    fn deliver_interrupts(&self) {
        let mb = self.side_off(self.side);
        let lo = sync::take_pending(self.map.u32_at(mb + MB_DB)) as u64;
        let hi = sync::take_pending(self.map.u32_at(mb + MB_DB + 4)) as u64;
        let (alo, ahi) = self.vector_armed(self.side);
        let armed = alo.load(SeqCst) as u64 | (ahi.load(SeqCst) as u64) << 32;
        let mut bits = (lo | hi << 32) & armed & self.db_valid_mask();
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            kick_line(&self.vector_path(self.side, bit));
        }
        for w in 0..sys::NTBEMU_MAX_VECTORS / 32 {
            let mut v = sync::take_pending(self.map.u32_at(mb + MB_VEC + 4 * w as usize));
            while v != 0 {
                let b = v.trailing_zeros();
                v &= v - 1;
                kick_line(&self.msi_path(self.side, w * 32 + b));
            }
        }
    }

    /// Bridge mode: the interrupt daemon's marker file (it holds the daemon's pid). While a
    /// live daemon receives the bridge's interrupts on this machine (VFIO MSI-X) and delivers
    /// them, the per-process pollers only look every 20 ms, as a safety net.
    pub(crate) fn irqd_marker(&self) -> PathBuf {
        self.path.with_extension("irqd")
    }

    /// Bridge mode, for the interrupt daemon: take this side's pending interrupts and kick
    /// their lines on this machine (what the per-process pollers do when no daemon runs).
    pub(crate) fn deliver_bridge_interrupts(&self) {
        self.deliver_interrupts();
    }

    /// Bridge mode: the link as the poller sees it, in one word: the generation, shifted, and
    /// whether the link is up (a link coming up bumps the generation before it reads up, so a
    /// poller may see the new generation with the link still down, then the link up).
    fn link_word(&self) -> u32 {
        // SYNC POINT (bridge link event): Acquire pairs with the SeqCst bump of the generation
        // (`sync::bump`, from `new_link_generation`) by either machine; the link words are
        // loaded with Acquire in `link_up`.
        let generation = self.link_generation().load(Acquire);
        generation.wrapping_shl(1) | self.link_up() as u32
    }

    /// Bridge mode, from the poller: a link event, as a link-state-change interrupt would
    /// deliver it. If the link moved since this poller's last look (`seen`), and no other
    /// poller of this machine delivered that state yet (a CAS on the side's `MB_LINK`), kick
    /// the line of every vector leased on this machine's side: a connection's sleeper (a
    /// blocking call, an epoll set) then looks at the link at once, not at the end of its
    /// nap. Only loads while nothing moves.
    fn deliver_link_event(&self, seen: &mut u32) {
        let now = self.link_word();
        if now == *seen {
            return;
        }
        *seen = now;
        let delivered = self.map.u32_at(self.side_off(self.side) + MB_LINK);
        // SYNC POINT (bridge link event): the CAS picks one poller of this machine per state
        // seen; the kicks (FIFO writes) come after the loads in `link_word`, and a sleeper
        // woken by one reads the line before it asks `link_state`, so it sees that state.
        let last = delivered.load(SeqCst);
        if last != now
            && delivered
                .compare_exchange(last, now, SeqCst, SeqCst)
                .is_ok()
        {
            self.kick_leased_vector_lines(self.side);
        }
    }

    fn irqd_alive(&self) -> bool {
        std::fs::read_to_string(self.irqd_marker())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(sysutil::pid_exists)
    }

    /// Bridge mode: make sure this process runs a poller for this side's mailbox. The bridge
    /// raises a real interrupt on this machine, but without a driver no process can wait on it;
    /// the interrupt daemon (`ntbdrv-ivshmem-irqd`, VFIO MSI-X) can, when one runs. Otherwise
    /// one thread per process polls the mailbox: every 50 µs for 20 ms after the last
    /// interrupt, then every 2 ms; with a live daemon, every 20 ms. At each look it also
    /// looks at the link, which no bridge interrupt announces (`deliver_link_event`).
    pub(super) fn start_poller(&self) {
        static STARTED: std::sync::Mutex<Vec<(u32, PathBuf)>> = std::sync::Mutex::new(Vec::new());
        let key = (sysutil::pid(), self.path.clone());
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        if started.contains(&key) {
            return; // (a forked child's pid differs: it starts its own)
        }
        let dev = self.view();
        let spawned = std::thread::Builder::new()
            .name("pcisock-bridge-irq".into())
            .spawn(move || {
                let seq = dev.map.u32_at(dev.side_off(dev.side) + MB_SEQ);
                let mut seen = sync::mailbox_seq(seq).wrapping_sub(1);
                let mut last = Instant::now();
                let (mut daemon, mut checked) = (dev.irqd_alive(), Instant::now());
                let mut link = dev.link_word();
                loop {
                    // A new SEQ: the pending bits posted before it are ours to take.
                    let now = sync::mailbox_seq(seq);
                    if now != seen {
                        seen = now;
                        last = Instant::now();
                        dev.deliver_interrupts();
                    }
                    dev.deliver_link_event(&mut link);
                    if checked.elapsed() > Duration::from_millis(100) {
                        (daemon, checked) = (dev.irqd_alive(), Instant::now());
                    }
                    std::thread::sleep(if daemon {
                        Duration::from_millis(20)
                    } else if last.elapsed() < Duration::from_millis(20) {
                        BRIDGE_NAP
                    } else {
                        Duration::from_millis(2)
                    });
                }
            });
        if spawned.is_ok() {
            started.push(key);
        }
    }
}
