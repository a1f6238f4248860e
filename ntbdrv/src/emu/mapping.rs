//! The device file's shared mapping and typed access to the words inside it.
//!
//! The file is mapped at an address that is a multiple of 2 MiB, so that every 2 MiB-aligned
//! offset of the file (the sides, their arenas and windows are laid out on such offsets) is
//! 2 MiB-aligned in memory too: the kernel can then back a window with huge pages, when the
//! filesystem gives them or a user of the window asks for them (`MADV_COLLAPSE`), as a real BAR
//! is contiguous. Owns the mapping's life; must never hand out a reference outside it.
//!
//! # Safety
//! `Mapping` owns a `MAP_SHARED` read-write mapping of the whole device file, whose length was
//! checked against the validated header before any accessor runs. Accessors check each offset
//! against the length and the type's alignment, then hand out atomics: every field that two
//! parties touch is accessed atomically. The mapping is unmapped only when the last `Arc` to it
//! (held by the device, its `Region`s and its DMA engines) is dropped.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::region::Keepalive;

/// A transparent huge page (PMD size on x86-64 and arm64 with 4 KiB pages).
const HUGE: usize = 2 << 20;

pub(crate) struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access through it goes
// through atomics or `Region`s whose users synchronise (as `memmap2::MmapRaw` is Send + Sync).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Keepalive for Mapping {}

impl Mapping {
    /// Map all of `file` (its length now), shared and read-write, at a 2 MiB-aligned address.
    pub(crate) fn new(file: &File) -> io::Result<Self> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty file cannot be mapped",
            ));
        }
        let span = len
            .checked_add(HUGE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
        let res = crate::sysutil::reserve(span)?;
        let start = res as usize;
        let at = start.div_ceil(HUGE) * HUGE;
        // SAFETY: `at..at + len` lies inside the reservation just made (it has HUGE bytes to
        // spare), which nothing else uses, so MAP_FIXED replaces only our own reservation.
        let base = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        let err = (base == libc::MAP_FAILED).then(io::Error::last_os_error);
        // The reservation around the mapping (all of it, if the mapping failed) goes back.
        let (head, tail_at) = (at - start, at + len.div_ceil(4096) * 4096);
        let tail = (start + span).saturating_sub(tail_at);
        // SAFETY: both ranges are parts of our reservation outside the file mapping.
        unsafe {
            if let Some(e) = err {
                libc::munmap(res, span);
                return Err(e);
            }
            if head > 0 {
                libc::munmap(res, head);
            }
            if tail > 0 {
                libc::munmap(tail_at as *mut libc::c_void, tail);
            }
        }
        Ok(Self {
            base: base as *mut u8,
            len,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base
    }

    /// The 32-bit word at `off`. Panics on an out-of-range or misaligned offset: offsets come
    /// from this crate's layout code and the validated header, so that is a bug, not bad input.
    pub(crate) fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len(),
            "u32 offset {off:#x} out of the mapping"
        );
        // SAFETY: in range and aligned (mmap bases are page-aligned); lives as long as `self`.
        unsafe { &*(self.base().add(off) as *const AtomicU32) }
    }

    /// The 64-bit word at `off` (same contract as [`Mapping::u32_at`]).
    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.len(),
            "u64 offset {off:#x} out of the mapping"
        );
        // SAFETY: in range and aligned; lives as long as `self`.
        unsafe { &*(self.base().add(off) as *const AtomicU64) }
    }

    /// Pointer to `off..off+len`, checked to be inside the mapping.
    pub(crate) fn ptr(&self, off: usize, len: usize) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        if end > self.len() {
            return None;
        }
        // SAFETY: `off <= len` of the mapping, so the pointer stays inside it (or one past).
        Some(unsafe { self.base().add(off) })
    }
}

/// `madvise` advice to collapse a range into huge pages now (Linux 6.1; not in the libc crate).
const MADV_COLLAPSE: libc::c_int = 25;

/// Back the 2 MiB-aligned part of `base..base + len` (memory of a shared or anonymous mapping
/// that stays mapped for the call) with huge pages now: populated for writing first (the kernel
/// collapses only pages that are there; holes become zero pages of the file, data already there
/// stays), then collapsed (`MADV_COLLAPSE`, independent of the THP settings unless shmem's is
/// `deny`). Returns the bytes now in huge pages. Neither advice changes the bytes.
pub(crate) fn collapse(base: *mut u8, len: usize) -> io::Result<usize> {
    let start = (base as usize).div_ceil(HUGE) * HUGE;
    let end = (base as usize).saturating_add(len) / HUGE * HUGE;
    if end <= start {
        return Ok(0);
    }
    for advice in [libc::MADV_POPULATE_WRITE, MADV_COLLAPSE] {
        // SAFETY: the range lies inside the caller's live mapping; madvise with these advices
        // does not change its contents or unmap it.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(end - start)
}

/// Whether this kernel collapses shared memory (tmpfs, memfd) into huge pages on request: a
/// 2 MiB memfd mapped as a device file is, populated and collapsed.
pub(crate) fn collapse_probe() -> io::Result<()> {
    // SAFETY: the name is a NUL-terminated literal; the flags are plain integers.
    let fd = unsafe { libc::memfd_create(c"ntbdrv-collapse-probe".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns; the File closes it.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(HUGE as u64)?;
    let map = Mapping::new(&file)?;
    collapse(map.base(), map.len()).map(|_| ())
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes at `base`; no reference into it outlives
        // `self` (accessors borrow `self`, regions hold an `Arc` to it).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_mapped_on_a_huge_page_boundary() {
        let path = std::env::temp_dir().join(format!("ntbdrv-mapping-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(3 * 4096 + 100).unwrap();
        let maps: Vec<Mapping> = (0..4).map(|_| Mapping::new(&f).unwrap()).collect();
        for m in &maps {
            assert_eq!(m.base() as usize % HUGE, 0);
            assert_eq!(m.len(), 3 * 4096 + 100);
            m.u32_at(3 * 4096 + 96)
                .store(7, std::sync::atomic::Ordering::Relaxed);
        }
        assert_eq!(
            maps[0]
                .u32_at(3 * 4096 + 96)
                .load(std::sync::atomic::Ordering::Relaxed),
            7
        );
        let _ = std::fs::remove_file(&path);
        assert!(Mapping::new(&tempfile_empty()).is_err());
    }

    fn tempfile_empty() -> File {
        let path = std::env::temp_dir().join(format!("ntbdrv-mapping-e-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
