//! The host resource table: how the processes of one host share its side of the device. Owns: the
//! table, its lock word and the reclaim of dead holders' leases. Must never give one resource to
//! two live leases, nor let a dead, stopped or forged holder wedge the host.
//!
//! Window space, doorbell bits and DMA channels are leased through `struct ntbemu_host_table` in
//! the device file. Each lease names its process by pid and start time; a lease whose process is
//! gone is reclaimed. The table is guarded by a lock word holding the holder's pid, so a holder
//! that died inside the critical section cannot wedge the host: its lock is broken. Any process
//! attached to the device can write the word, and a live pid (1) in it says nothing about who
//! holds the lock: a lock seen held by the same holder, with no new acquisition (`lock_seq`),
//! for `LOCK_HOLD_MAX` is broken too. Critical sections take microseconds (a scan of the used
//! slots; a reclaim reads /proc once per lease), so only a stopped or forged holder lasts that
//! long.

use std::mem::offset_of;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use ntb_sys as sys;

use super::mapping::Mapping;
use super::sync;
use crate::error::LeaseError;
use crate::sysutil;
use crate::WindowLease;

type T = sys::ntbemu_host_table;
type L = sys::ntbemu_lease;

const SLOT_SIZE: usize = std::mem::size_of::<L>();

/// How long one holder may keep the table lock before a waiter breaks it (see the module doc).
const LOCK_HOLD_MAX: Duration = Duration::from_secs(2);

pub(crate) struct HostTable<'a> {
    map: &'a Mapping,
    base: usize,
}

/// One lease as read out of the table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub kind: u32,
    pub pid: u32,
    pub start: u64,
    pub index: u32,
    pub tag: u32,
    pub offset: u64,
    pub len: u64,
}

struct Guard<'a> {
    lock: &'a AtomicU32,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // Host table lock: see `sync::unlock`.
        super::sync::unlock(self.lock);
    }
}

impl<'a> HostTable<'a> {
    pub(crate) fn new(map: &'a Mapping, base: usize) -> Self {
        Self { map, base }
    }

    fn lock(&self) -> Guard<'a> {
        let lock = self.map.u32_at(self.base + offset_of!(T, lock));
        let seq = self.map.u32_at(self.base + offset_of!(T, lock_seq));
        let me = sysutil::pid();
        let taken = || {
            seq.fetch_add(1, Relaxed);
            Guard { lock }
        };
        let mut spins = 0u32;
        // The holder and acquisition count we saw, and since when.
        let mut seen: Option<(u32, u32, Instant)> = None;
        loop {
            match super::sync::try_lock(lock, me) {
                Ok(()) => return taken(),
                Err(holder) => {
                    spins = spins.saturating_add(1);
                    if spins.is_multiple_of(64) {
                        let s = seq.load(Relaxed);
                        let stuck = match seen {
                            Some((h, q, since)) if h == holder && q == s => {
                                since.elapsed() >= LOCK_HOLD_MAX
                            }
                            _ => {
                                seen = Some((holder, s, Instant::now()));
                                false
                            }
                        };
                        // The holder died (or is a previous incarnation of our pid after fork
                        // and exec), or has held it too long: break its lock.
                        if (stuck || holder == me || !sysutil::pid_exists(holder))
                            && super::sync::break_lock(lock, holder, me)
                        {
                            return taken();
                        }
                    }
                    if spins < 16 {
                        std::hint::spin_loop();
                    } else if spins < 4096 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
        }
    }

    fn slot_off(&self, i: usize) -> usize {
        self.base + offset_of!(T, slots) + i * SLOT_SIZE
    }

    fn u32f(&self, i: usize, f: usize) -> &AtomicU32 {
        self.map.u32_at(self.slot_off(i) + f)
    }

    fn u64f(&self, i: usize, f: usize) -> &AtomicU64 {
        self.map.u64_at(self.slot_off(i) + f)
    }

    fn n_slots(&self) -> usize {
        (self
            .map
            .u32_at(self.base + offset_of!(T, n_slots))
            .load(Relaxed) as usize)
            .min(sys::NTBEMU_HOST_SLOTS as usize)
    }

    pub(crate) fn read(&self, i: usize) -> Slot {
        Slot {
            kind: sync::slot_kind(self.u32f(i, offset_of!(L, kind))),
            pid: self.u32f(i, offset_of!(L, owner_pid)).load(Relaxed),
            start: self.u64f(i, offset_of!(L, owner_start)).load(Relaxed),
            index: self.u32f(i, offset_of!(L, index)).load(Relaxed),
            tag: self.u32f(i, offset_of!(L, tag)).load(Relaxed),
            offset: self.u64f(i, offset_of!(L, offset)).load(Relaxed),
            len: self.u64f(i, offset_of!(L, len)).load(Relaxed),
        }
    }

    fn write(&self, i: usize, s: Slot) {
        self.u32f(i, offset_of!(L, owner_pid)).store(s.pid, Relaxed);
        self.u64f(i, offset_of!(L, owner_start))
            .store(s.start, Relaxed);
        self.u32f(i, offset_of!(L, index)).store(s.index, Relaxed);
        self.u32f(i, offset_of!(L, tag)).store(s.tag, Relaxed);
        self.u64f(i, offset_of!(L, offset)).store(s.offset, Relaxed);
        self.u64f(i, offset_of!(L, len)).store(s.len, Relaxed);
        // Readers outside the lock (`pcisock stats`) see `kind` last.
        sync::publish_slot(self.u32f(i, offset_of!(L, kind)), s.kind);
        self.map
            .u64_at(self.base + offset_of!(T, generation))
            .fetch_add(1, Relaxed);
    }

    /// Slots that may hold a lease: those below the high-water mark (a thousand connections'
    /// leases fill a few thousand of the table's slots; every lease scans only those).
    fn used(&self) -> usize {
        (sync::high_water(self.high_water()) as usize).min(self.n_slots())
    }

    fn high_water(&self) -> &AtomicU32 {
        self.map.u32_at(self.base + offset_of!(T, high_water))
    }

    /// A free slot (the caller holds the lock): the first freed one below the high-water mark,
    /// else the next never-used one.
    fn free_slot(&self) -> Option<usize> {
        let used = self.used();
        if let Some(i) = (0..used).find(|&i| self.read(i).kind == sys::NTBEMU_LEASE_FREE) {
            return Some(i);
        }
        if used == self.n_slots() {
            return None;
        }
        // The slot itself is written after this (lock-free readers, `pcisock stats`, look at
        // `kind` to know whether it is written yet).
        sync::raise_high_water(self.high_water(), used as u32 + 1);
        Some(used)
    }

    fn me() -> (u32, u64) {
        let pid = sysutil::pid();
        (pid, sysutil::start_time(pid).unwrap_or(0))
    }

    /// First-fit lease of `len` bytes (already aligned) in window `mw` of size `size`.
    pub(crate) fn lease_window(
        &self,
        mw: u32,
        len: u64,
        size: u64,
        tag: u32,
    ) -> Result<WindowLease, LeaseError> {
        let (pid, start) = Self::me();
        let _g = self.lock();
        let mut used: Vec<(u64, u64)> = (0..self.used())
            .map(|i| self.read(i))
            .filter(|s| s.kind == sys::NTBEMU_LEASE_WINDOW && s.index == mw)
            .map(|s| (s.offset, s.offset.saturating_add(s.len)))
            .collect();
        used.sort_unstable();
        let mut cursor = 0u64;
        let mut found = None;
        for (a, b) in used.iter().copied().chain(std::iter::once((size, size))) {
            if a >= cursor && a - cursor >= len {
                found = Some(cursor);
                break;
            }
            cursor = cursor.max(b);
        }
        let offset = found.ok_or(LeaseError::WindowFull { mw, len })?;
        let slot = self.free_slot().ok_or(LeaseError::TableFull)?;
        self.write(
            slot,
            Slot {
                kind: sys::NTBEMU_LEASE_WINDOW,
                pid,
                start,
                index: mw,
                tag,
                offset,
                len,
            },
        );
        Ok(WindowLease {
            mw,
            offset,
            len,
            slot: slot as u32,
        })
    }

    /// A host-owned reservation of exactly `offset..offset+len` (owner pid 0: never reclaimed).
    pub(crate) fn reserve(
        &self,
        mw: u32,
        offset: u64,
        len: u64,
        tag: u32,
    ) -> Result<WindowLease, LeaseError> {
        let _g = self.lock();
        let end = offset + len;
        for i in 0..self.used() {
            let s = self.read(i);
            if s.kind != sys::NTBEMU_LEASE_WINDOW || s.index != mw {
                continue;
            }
            if s.pid == 0 && s.offset == offset && s.len == len && s.tag == tag {
                return Ok(WindowLease {
                    mw,
                    offset,
                    len,
                    slot: i as u32,
                });
            }
            if s.offset < end && offset < s.offset.saturating_add(s.len) {
                return Err(LeaseError::WindowFull { mw, len });
            }
        }
        let slot = self.free_slot().ok_or(LeaseError::TableFull)?;
        self.write(
            slot,
            Slot {
                kind: sys::NTBEMU_LEASE_WINDOW,
                pid: 0,
                start: 0,
                index: mw,
                tag,
                offset,
                len,
            },
        );
        Ok(WindowLease {
            mw,
            offset,
            len,
            slot: slot as u32,
        })
    }

    /// Lease the lowest free index of `kind` below `count`; returns (index, slot).
    pub(crate) fn lease_index(
        &self,
        kind: u32,
        count: u32,
        tag: u32,
    ) -> Result<(u32, u32), LeaseError> {
        let (pid, start) = Self::me();
        let _g = self.lock();
        let mut taken = vec![false; count as usize];
        for i in 0..self.used() {
            let s = self.read(i);
            if s.kind == kind && (s.index as usize) < taken.len() {
                taken[s.index as usize] = true;
            }
        }
        let Some(index) = taken.iter().position(|t| !t) else {
            return Err(match kind {
                // Doorbell bits and interrupt vectors (message-signalled doorbells) run out;
                // the table's slots are another matter (TableFull).
                k if k == sys::NTBEMU_LEASE_DOORBELL || k == sys::NTBEMU_LEASE_VECTOR => {
                    LeaseError::DoorbellsExhausted { count }
                }
                _ => LeaseError::TableFull,
            });
        };
        let slot = self.free_slot().ok_or(LeaseError::TableFull)?;
        self.write(
            slot,
            Slot {
                kind,
                pid,
                start,
                index: index as u32,
                tag,
                offset: 0,
                len: 0,
            },
        );
        Ok((index as u32, slot as u32))
    }

    pub(crate) fn release(&self, slot: u32, kind: u32) -> Result<(), LeaseError> {
        let i = slot as usize;
        if i >= self.n_slots() {
            return Err(LeaseError::NotHeld { slot });
        }
        let _g = self.lock();
        let s = self.read(i);
        if s.kind != kind {
            return Err(LeaseError::NotHeld { slot });
        }
        self.write(
            i,
            Slot {
                kind: sys::NTBEMU_LEASE_FREE,
                pid: 0,
                start: 0,
                index: 0,
                tag: 0,
                offset: 0,
                len: 0,
            },
        );
        Ok(())
    }

    pub(crate) fn transfer(&self, slot: u32, kind: u32, pid: u32) -> Result<(), LeaseError> {
        let i = slot as usize;
        if i >= self.n_slots() {
            return Err(LeaseError::NotHeld { slot });
        }
        let start = sysutil::start_time(pid).ok_or(LeaseError::NoSuchProcess(pid))?;
        let _g = self.lock();
        let mut s = self.read(i);
        if s.kind != kind {
            return Err(LeaseError::NotHeld { slot });
        }
        s.pid = pid;
        s.start = start;
        self.write(i, s);
        Ok(())
    }

    /// Free every lease whose process is gone.
    pub(crate) fn reclaim(&self) -> usize {
        let _g = self.lock();
        let mut freed = 0;
        // A few processes hold thousands of leases: ask /proc once per owner, not per lease.
        let mut known: Vec<((u32, u64), bool)> = Vec::new();
        for i in 0..self.used() {
            let s = self.read(i);
            // Owner pid 0 marks a host-owned reservation, which no process death ends.
            if s.kind == sys::NTBEMU_LEASE_FREE || s.pid == 0 {
                continue;
            }
            let owner = (s.pid, s.start);
            let alive = match known.iter().find(|(o, _)| *o == owner) {
                Some(&(_, a)) => a,
                None => {
                    let a = sysutil::alive(s.pid, s.start);
                    known.push((owner, a));
                    a
                }
            };
            if !alive {
                self.write(
                    i,
                    Slot {
                        kind: sys::NTBEMU_LEASE_FREE,
                        pid: 0,
                        start: 0,
                        index: 0,
                        tag: 0,
                        offset: 0,
                        len: 0,
                    },
                );
                freed += 1;
            }
        }
        freed
    }

    /// Every lease in the table with its slot number.
    pub(crate) fn leases_with_slots(&self) -> Vec<(u32, Slot)> {
        (0..self.used())
            .map(|i| (i as u32, self.read(i)))
            .filter(|(_, s)| s.kind != sys::NTBEMU_LEASE_FREE)
            .collect()
    }

    /// Run `f` on the table's leases with the table locked: no lease is made or ended
    /// meanwhile.
    pub(crate) fn with_leases<R>(&self, f: impl FnOnce(&[Slot]) -> R) -> R {
        let _g = self.lock();
        f(&self.leases())
    }

    /// Every lease in the table (for diagnostics and tests).
    pub(crate) fn leases(&self) -> Vec<Slot> {
        (0..self.used())
            .map(|i| self.read(i))
            .filter(|s| s.kind != sys::NTBEMU_LEASE_FREE)
            .collect()
    }
}
