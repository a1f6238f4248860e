//! [`Region`]: a bounds-checked view of device memory (a memory window, or part of one) that
//! another process or a peer host may read and write at the same time.
//!
//! Callers are `transport`'s rings and the benches. A `Region` never hands out `&[u8]` or
//! `&mut [u8]` to its bytes, because the peer can change them under us; it copies in and out,
//! and gives atomics for the words a protocol synchronises on.
//!
//! # Safety
//! A `Region` is a raw pointer and a length into a shared mapping that outlives it (the device
//! keeps the mapping alive for as long as any `Region` exists: see `emu::Mapping`). Every access
//! is checked against the length before the pointer is used. Concurrent writes by the peer make
//! byte copies racy at the hardware level, as they are on a real bridge; the protocol above
//! decides when bytes are stable, and validates every value it reads.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;

use crate::WindowError;

/// The cache line's size (x86-64's, and every CPU's a backend runs on today).
pub const CACHE_LINE: usize = 64;

/// Something that keeps a mapping alive.
pub(crate) trait Keepalive: Send + Sync {}

/// A memory segment handed to this process as a descriptor, mapped shared (held only to keep
/// the mapping alive).
struct Segment(#[allow(dead_code)] memmap2::MmapRaw);

impl Keepalive for Segment {}

/// A memory segment's identity: its file (device and inode) and its range there, `offset`
/// and `size` bytes (see [`Region::segment_identity`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentIdentity {
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
    pub size: u64,
}

/// A bounds-checked view of shared device memory.
#[derive(Clone)]
pub struct Region {
    base: *mut u8,
    len: usize,
    _keep: Arc<dyn Keepalive>,
}

// SAFETY: `Region` only accesses the mapping through bounds-checked copies and atomics; the
// mapping itself is shared memory meant for concurrent use by many threads and processes.
unsafe impl Send for Region {}
// SAFETY: as above; no method takes `&self` to non-atomic interior state.
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Region({:p}, {:#x})", self.base, self.len)
    }
}

impl Region {
    /// # Safety
    /// `base..base+len` must be mapped read-write for as long as `keep` lives.
    pub(crate) unsafe fn new(base: *mut u8, len: usize, keep: Arc<dyn Keepalive>) -> Self {
        Self {
            base,
            len,
            _keep: keep,
        }
    }

    /// Map the `len` bytes at `offset` of a memory file handed over as a descriptor (a
    /// connection's segment in the arena that the host's fabric service gives this process).
    /// Refused unless `offset` is a whole number of pages, the range lies within the file and
    /// the file is sealed against shrinking, so that no other holder can truncate it under our
    /// accesses (SIGBUS): an offset the service sent is untrusted input.
    pub fn map_segment(
        fd: &std::os::fd::OwnedFd,
        offset: u64,
        len: usize,
    ) -> std::io::Result<Region> {
        use std::io::{Error, ErrorKind};
        use std::os::fd::AsFd;
        // Looked at and mapped through the caller's descriptor (no copy of it: a connection's
        // set-up makes one segment per end, and each system call shows in its rate).
        let size = crate::sysutil::fd_size(fd.as_fd())?;
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= size);
        let page = crate::sysutil::page_size() as u64;
        if !fits || len == 0 || !offset.is_multiple_of(page) {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("file of {size} bytes has no segment of {len} bytes at {offset}"),
            ));
        }
        if !crate::sysutil::sealed_against_shrinking(fd.as_fd()) {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "segment not sealed against shrinking",
            ));
        }
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw(fd)?;
        let base = map.as_mut_ptr();
        // SAFETY: `map` is a shared read-write mapping of `len` bytes of a file that cannot
        // shrink below their end (checked above), kept alive by the Arc for as long as any Region of it lives.
        Ok(unsafe { Region::new(base, len, Arc::new(Segment(map))) })
    }

    /// The memory segment behind `fd` (a descriptor the fabric service handed over): its
    /// identity, which stays its own for as long as a mapping of it lives, so that a process
    /// can tell a segment it has mapped already (one fstat).
    pub fn segment_identity(fd: &std::os::fd::OwnedFd) -> std::io::Result<SegmentIdentity> {
        use std::os::fd::AsFd;
        let (dev, inode, size) = crate::sysutil::fd_identity(fd.as_fd())?;
        Ok(SegmentIdentity {
            dev,
            inode,
            offset: 0,
            size,
        })
    }

    /// Whether a child that this process forks inherits this region's whole pages
    /// (`madvise(MADV_DOFORK)` or `MADV_DONTFORK`). A mapping kept for later use, and used by
    /// no connection now, is not handed to a child: a child that inherited it could write into
    /// the connections that use it later.
    pub fn inherit_on_fork(&self, inherit: bool) -> std::io::Result<()> {
        let page = crate::sysutil::page_size();
        let start = (self.base as usize).next_multiple_of(page);
        let end = (self.base as usize + self.len).next_multiple_of(page);
        if end <= start {
            return Ok(());
        }
        let advice = if inherit {
            libc::MADV_DOFORK
        } else {
            libc::MADV_DONTFORK
        };
        // SAFETY: `start..end` covers the region's pages, all inside the one mapping of the
        // segment that `_keep` holds (a segment mapping starts on a page and is rounded up to
        // whole pages by the kernel); DOFORK and DONTFORK change only what a fork copies, not
        // the bytes or this process's access to them.
        let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Length in bytes.
    /// Ask the kernel to back this region's 2 MiB-aligned part with huge pages now, as a BAR
    /// is contiguous: what a window of the emulated device needs where its file's filesystem
    /// gives 4 KiB pages (tmpfs without `huge=`, as /dev/shm usually is). The device file is
    /// mapped on a 2 MiB boundary, so a region starting on one can be collapsed. Returns the
    /// bytes now in huge pages; an error says why none are (an old kernel, a filesystem that
    /// cannot, shmem huge pages set to `deny`, no free 2 MiB of memory). The bytes are not
    /// changed (holes become zeros, as they read already).
    pub fn collapse_huge(&self) -> std::io::Result<usize> {
        crate::emu::mapping::collapse(self.base, self.len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn check(&self, offset: usize, len: usize) -> Result<(), WindowError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(WindowError::OutOfRange {
                offset: offset as u64,
                len: len as u64,
                size: self.len as u64,
            }),
        }
    }

    /// A sub-region `offset..offset+len`.
    pub fn slice(&self, offset: usize, len: usize) -> Result<Region, WindowError> {
        self.check(offset, len)?;
        Ok(Region {
            // SAFETY: offset+len <= self.len was checked, so the result stays inside the mapping.
            base: unsafe { self.base.add(offset) },
            len,
            _keep: self._keep.clone(),
        })
    }

    /// Copy `src` into the region at `offset` (a posted write across the bridge).
    #[inline]
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), WindowError> {
        self.check(offset, src.len())?;
        // SAFETY: the destination range is inside the mapping (checked) and cannot overlap `src`,
        // which is ordinary process memory borrowed immutably.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(offset), src.len()) };
        Ok(())
    }

    /// Copy from the region at `offset` into `dst`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), WindowError> {
        self.check(offset, dst.len())?;
        // SAFETY: the source range is inside the mapping (checked); `dst` is exclusively borrowed
        // process memory, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(offset), dst.as_mut_ptr(), dst.len())
        };
        Ok(())
    }

    /// Copy `len` bytes from `src` (process memory) into the region at `offset`.
    ///
    /// # Safety
    /// `src..src+len` must be readable process memory for the duration of the call.
    pub unsafe fn write_raw(
        &self,
        offset: usize,
        src: *const u8,
        len: usize,
    ) -> Result<(), WindowError> {
        self.check(offset, len)?;
        // SAFETY: the destination is inside the mapping (checked); the caller vouches for `src`.
        unsafe { std::ptr::copy_nonoverlapping(src, self.base.add(offset), len) };
        Ok(())
    }

    /// Copy `len` bytes from the region at `offset` into `dst` (process memory).
    ///
    /// # Safety
    /// `dst..dst+len` must be writable process memory, not inside this region, for the call.
    pub unsafe fn read_raw(
        &self,
        offset: usize,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), WindowError> {
        self.check(offset, len)?;
        // SAFETY: the source is inside the mapping (checked); the caller vouches for `dst`.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(offset), dst, len) };
        Ok(())
    }

    /// Fill `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), WindowError> {
        self.check(offset, len)?;
        // SAFETY: the range is inside the mapping (checked).
        unsafe { std::ptr::write_bytes(self.base.add(offset), byte, len) };
        Ok(())
    }

    /// Give the memory behind the whole pages of `offset..offset+len` back to the system
    /// (`madvise(MADV_REMOVE)`: a hole punched in the file the region maps, so every process
    /// mapping it loses those pages; they read as zeros afterwards and a later write faults in
    /// a fresh zero page). Returns the bytes released (the range's whole pages only). Refused
    /// (an error, nothing changed) where the memory is not a shared writable mapping of a file
    /// that can punch holes: a PCI BAR (ivshmem, hardware), process memory, a filesystem
    /// without hole punching. The bytes are the peer's to change anyway: zeros are one more
    /// value a protocol above must not mistake for data.
    pub fn release(&self, offset: usize, len: usize) -> std::io::Result<usize> {
        self.check(offset, len)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let page = crate::sysutil::page_size();
        let start = (self.base as usize + offset).next_multiple_of(page);
        let end = (self.base as usize + offset + len) / page * page;
        if end <= start {
            return Ok(0);
        }
        // SAFETY: `start..end` is inside the mapping (checked above, then shrunk to whole
        // pages); MADV_REMOVE only changes the bytes of a shared file mapping (to zeros), which
        // other processes may change at any time under the region's contract, and fails
        // without effect on anything else.
        let r =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_REMOVE) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(end - start)
    }

    /// This region as one of at least `N` bytes with an 8-byte aligned base, both checked here
    /// once: its words at constant offsets below `N` are then reached with no run-time check.
    pub fn fixed<const N: usize>(self) -> Result<FixedRegion<N>, WindowError> {
        self.check(0, N)?;
        if !(self.base as usize).is_multiple_of(8) {
            return Err(WindowError::Misaligned {
                offset: 0,
                align: 8,
            });
        }
        Ok(FixedRegion { region: self })
    }

    /// The 32-bit word at `offset`, for synchronisation.
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, WindowError> {
        self.check(offset, 4)?;
        if !offset.is_multiple_of(4) || !(self.base as usize).is_multiple_of(4) {
            return Err(WindowError::Misaligned {
                offset: offset as u64,
                align: 4,
            });
        }
        // SAFETY: in range and 4-aligned (checked); the mapping outlives `&self`; AtomicU32 has
        // the layout of u32 and shared memory is the intended use.
        Ok(unsafe { &*(self.base.add(offset) as *const AtomicU32) })
    }

    /// The 64-bit word at `offset`, for synchronisation.
    #[inline]
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, WindowError> {
        self.check(offset, 8)?;
        if !offset.is_multiple_of(8) || !(self.base as usize).is_multiple_of(8) {
            return Err(WindowError::Misaligned {
                offset: offset as u64,
                align: 8,
            });
        }
        // SAFETY: in range and 8-aligned (checked); the mapping outlives `&self`.
        Ok(unsafe { &*(self.base.add(offset) as *const AtomicU64) })
    }

    /// Ask the CPU to start loading the cache line that holds byte `offset` (a hint: nothing is
    /// read into the program, nothing waits for it; an offset outside the region is ignored).
    /// For a reader that has just seen a frame published and will copy its next line soon
    /// after: the line's transfer overlaps the checks in between.
    #[inline(always)]
    pub fn prefetch(&self, offset: usize) {
        if offset < self.len {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: PREFETCHT0 (SSE, in the x86_64 baseline) loads nothing into a register and
            // cannot fault; the address is inside the mapping (checked).
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    self.base.add(offset) as *const i8,
                )
            };
        }
    }

    /// Ask the CPU to move the cache line that holds byte `offset` out of this core's private
    /// caches into the shared one (a hint: `cldemote`; where the CPU lacks it the instruction
    /// is a no-op; an offset outside the region is ignored). For a writer that has just
    /// published a line another core will read next: that core's miss is then served by the
    /// shared cache, without a snoop of ours.
    #[inline(always)]
    pub fn demote(&self, offset: usize) {
        if offset < self.len {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: CLDEMOTE (0F 1C /0, in the hint space: a no-op on CPUs without it) writes
            // no register, memory or flag and cannot fault; the address is inside the mapping
            // (checked).
            unsafe {
                core::arch::asm!(
                    "cldemote [{p}]",
                    p = in(reg) self.base.add(offset),
                    options(nostack, preserves_flags, readonly)
                )
            };
        }
    }

    /// Bytes from `offset` to the end of the cache line that holds it (0 at a line's start): how
    /// a writer splits a copy so that its stores to one line come back to back.
    #[inline(always)]
    pub fn line_rest(&self, offset: usize) -> usize {
        (self.base as usize).wrapping_add(offset).wrapping_neg() % CACHE_LINE
    }

    /// Raw base pointer, for a caller that must hand the address to the kernel (e.g. a read(2)
    /// straight into the window). Using it is the caller's unsafe business.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }
}

/// A [`Region`] of at least `N` bytes whose base is 8-byte aligned ([`Region::fixed`] checked
/// both): a word's accessor checks only what the offset itself does not settle, so for a
/// constant offset below `N` (a connection's endpoint header: counters, credits, flags) it is
/// a plain address computation. Everything else is the region's (it dereferences to it).
#[derive(Clone, Debug)]
pub struct FixedRegion<const N: usize> {
    region: Region,
}

impl<const N: usize> std::ops::Deref for FixedRegion<N> {
    type Target = Region;
    #[inline(always)]
    fn deref(&self) -> &Region {
        &self.region
    }
}

impl<const N: usize> FixedRegion<N> {
    /// The region itself.
    #[inline(always)]
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// As [`Region::atomic_u32`]; below `N`, the bounds were checked by [`Region::fixed`].
    #[inline(always)]
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, WindowError> {
        if !offset.is_multiple_of(4) {
            return Err(WindowError::Misaligned {
                offset: offset as u64,
                align: 4,
            });
        }
        if offset >= N || N - offset < 4 {
            self.region.check(offset, 4)?;
        }
        // SAFETY: in range (below `N`, which `fixed` checked the region holds, or checked just
        // now), 4-aligned (the offset, and the base, which `fixed` checked is 8-aligned); the
        // mapping outlives `&self`.
        Ok(unsafe { &*(self.region.base.add(offset) as *const AtomicU32) })
    }

    /// As [`Region::atomic_u64`]; below `N`, the bounds were checked by [`Region::fixed`].
    #[inline(always)]
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, WindowError> {
        if !offset.is_multiple_of(8) {
            return Err(WindowError::Misaligned {
                offset: offset as u64,
                align: 8,
            });
        }
        if offset >= N || N - offset < 8 {
            self.region.check(offset, 8)?;
        }
        // SAFETY: in range (below `N`, which `fixed` checked the region holds, or checked just
        // now), 8-aligned (the offset, and the base, which `fixed` checked); the mapping
        // outlives `&self`.
        Ok(unsafe { &*(self.region.base.add(offset) as *const AtomicU64) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    struct Heap(#[allow(dead_code)] Vec<u64>);
    impl Keepalive for Heap {}

    /// A region over `words` zeroed words of process memory (8-aligned).
    fn heap(words: usize) -> Region {
        let mut v = vec![0u64; words];
        let base = v.as_mut_ptr() as *mut u8;
        // SAFETY: the vector's buffer (which moving the vector does not move) lives as long as
        // the region's keepalive.
        unsafe { Region::new(base, words * 8, Arc::new(Heap(v))) }
    }

    #[test]
    fn releasing_memory_that_is_no_shared_file_is_refused_and_changes_nothing() {
        // Process memory stands for what cannot punch holes (a PCI BAR is refused the same
        // way: no file behind it that can): an error, and the bytes stay.
        let r = heap(4096); // 32 KiB: whole pages inside, wherever the buffer starts
        r.fill(0, 32768, 0xA5).unwrap();
        assert!(r.release(0, 32768).is_err());
        let mut b = vec![0u8; 32768];
        r.read(0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0xA5));
        assert!(r.release(8, 32768).is_err(), "out of range");
        assert_eq!(
            r.release(0, 100).unwrap_or(1),
            0,
            "no whole page: nothing to do"
        );
    }

    #[test]
    fn line_rest_counts_to_the_end_of_the_line_by_address_and_demote_is_harmless() {
        let r = heap(64); // 512 B
                          // Where the first line starts in the region, wherever the buffer starts.
        let first = r.line_rest(0);
        assert!(first < CACHE_LINE);
        assert_eq!((r.as_ptr() as usize + first) % CACHE_LINE, 0);
        assert_eq!(r.line_rest(first), 0, "a line's start");
        assert_eq!(r.line_rest(first + 1), CACHE_LINE - 1);
        assert_eq!(r.line_rest(first + 48), 16);
        assert_eq!(r.line_rest(first + CACHE_LINE - 1), 1);
        // A sub-region keeps the addresses' lines, not its own offsets'.
        assert_eq!(r.slice(first + 16, 128).unwrap().line_rest(0), 48);
        // A hint: the bytes stay, and an offset outside the region is ignored.
        r.fill(0, 512, 0x5A).unwrap();
        r.demote(first);
        r.demote(first + CACHE_LINE);
        r.demote(512);
        r.demote(usize::MAX);
        let mut b = vec![0u8; 512];
        r.read(0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0x5A));
    }

    #[test]
    fn a_fixed_region_checks_once_and_then_only_what_the_offset_leaves_open() {
        let r = heap(1024); // 8 KiB
        assert!(r.clone().fixed::<16384>().is_err(), "shorter than N");
        assert!(
            r.slice(4, 4096).unwrap().fixed::<64>().is_err(),
            "a base that is not 8-aligned"
        );
        let f = r.clone().fixed::<4096>().unwrap();
        f.atomic_u64(8).unwrap().store(7, Relaxed);
        assert_eq!(r.atomic_u64(8).unwrap().load(Relaxed), 7);
        f.atomic_u32(4092).unwrap().store(9, Relaxed);
        assert_eq!(r.atomic_u32(4092).unwrap().load(Relaxed), 9);
        assert!(
            f.atomic_u64(4).is_err() && f.atomic_u32(2).is_err(),
            "misaligned offsets"
        );
        // Beyond N the region's own bounds hold.
        assert!(f.atomic_u64(8192 - 8).is_ok() && f.atomic_u32(8192 - 4).is_ok());
        assert!(f.atomic_u64(8192).is_err() && f.atomic_u32(8192).is_err());
        assert!(f.atomic_u64(usize::MAX - 7).is_err() && f.atomic_u32(usize::MAX - 3).is_err());
    }
}
