//! Process-shared futex wait and wake on 32-bit words in shared memory: how the emulated device
//! delivers its interrupts (doorbells, DMA completion, link events) to sleeping threads. Called by
//! the emulated device's doorbell, DMA and link code. Every wait is bounded by the caller's timeout
//! and callers re-check their condition: a futex word must never be the only record of an event.
//!
//! # Safety
//! The words are `AtomicU32`s inside a `MAP_SHARED` file mapping, so the kernel keys the futex on
//! the file and offset and a wake in one process reaches a waiter in another. The calls pass only
//! the word's address and plain integers; the kernel validates both.
#![allow(unsafe_code)]

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleep while `*word == expected`, at most `timeout`. Returns on wake, timeout, signal or a
/// changed value; the caller re-checks its condition.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT (shared)
    // only reads it; `ts_ptr` is null or points at a live timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            0usize,
            0u32,
        );
    }
}

/// Wake every thread, in any process, sleeping on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; it never dereferences through it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        );
    }
}
