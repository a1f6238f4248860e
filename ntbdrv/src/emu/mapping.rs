//! The device file's shared mapping and typed access to the words inside it.
//!
//! # Safety
//! `Mapping` owns a `MAP_SHARED` read-write mapping of the whole device file, whose length was
//! checked against the validated header before any accessor runs. Accessors check each offset
//! against the length and the type's alignment, then hand out atomics: every field that two
//! parties touch is accessed atomically. The mapping is unmapped only when the last `Arc` to it
//! (held by the device, its `Region`s and its DMA engines) is dropped.
#![allow(unsafe_code)]

use std::fs::File;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::region::Keepalive;

pub(crate) struct Mapping {
    map: memmap2::MmapRaw,
}

impl Keepalive for Mapping {}

impl Mapping {
    pub(crate) fn new(file: &File) -> std::io::Result<Self> {
        Ok(Self {
            map: memmap2::MmapOptions::new().map_raw(file)?,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
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
