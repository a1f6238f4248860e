//! The fd side table: which application fds pcisock tracks, indexed by fd number.
//!
//! A flat array of atomic pointers (fds below [`MAX_FD`]); the check an unflagged fd pays is one
//! bounds test and one relaxed load. An entry is an `Arc<Sock>` turned into a raw pointer.
//! Readers that find a non-null slot take a reference under a reader count; a writer that
//! removes an entry waits for the count to drain before it drops its reference, so a reader
//! never clones a freed `Arc` (a one-counter read-copy-update).
//!
//! # Safety
//! Non-null slots hold pointers made by `Arc::into_raw` and own one strong count each. A pointer
//! leaves the table only by a swap to null, after which its owner waits for `READERS` to reach
//! zero before releasing that count; readers increment `READERS` before loading a slot and
//! increment the strong count before decrementing `READERS`.
#![allow(unsafe_code)]

use std::sync::atomic::{
    AtomicPtr, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, SeqCst},
};
use std::sync::Arc;

use crate::sock::Sock;

/// fds at or above this are never tracked (their connections stay on TCP).
pub const MAX_FD: usize = 1 << 16;

static SLOTS: [AtomicPtr<Sock>; MAX_FD] = [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_FD];
static READERS: AtomicUsize = AtomicUsize::new(0);
/// Number of tracked fds (lets `poll`/`select` skip their scan when nothing is tracked).
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Is anything tracked at all?
#[inline]
pub fn any() -> bool {
    COUNT.load(Relaxed) != 0
}

/// Is `fd` tracked? (The hot-path check: no reference taken.)
#[inline]
pub fn contains(fd: i32) -> bool {
    (fd as usize) < MAX_FD && !SLOTS[fd as usize].load(Relaxed).is_null()
}

/// The entry for `fd`, if tracked.
#[inline]
pub fn get(fd: i32) -> Option<Arc<Sock>> {
    let slot = SLOTS.get(fd as usize)?;
    if slot.load(Relaxed).is_null() {
        return None;
    }
    READERS.fetch_add(1, SeqCst);
    let p = slot.load(Acquire);
    let r = if p.is_null() {
        None
    } else {
        // SAFETY: `p` came from Arc::into_raw and its count is held by the table; a remover
        // waits for READERS to drain before dropping it, and we hold READERS here.
        unsafe {
            Arc::increment_strong_count(p);
            Some(Arc::from_raw(p))
        }
    };
    READERS.fetch_sub(1, SeqCst);
    r
}

/// Track `fd` (replacing any stale entry). Returns false if the fd is too large to track.
pub fn insert(fd: i32, sock: Arc<Sock>) -> bool {
    let Some(slot) = SLOTS.get(fd as usize) else {
        return false;
    };
    if let Ok(mut fds) = sock.fds.lock() {
        if !fds.contains(&fd) {
            fds.push(fd);
        }
    }
    let old = slot.swap(Arc::into_raw(sock) as *mut Sock, AcqRel);
    if old.is_null() {
        COUNT.fetch_add(1, Relaxed);
    } else {
        release(old);
    }
    true
}

/// Stop tracking `fd`; returns its entry.
pub fn remove(fd: i32) -> Option<Arc<Sock>> {
    let slot = SLOTS.get(fd as usize)?;
    let old = slot.swap(std::ptr::null_mut(), AcqRel);
    if old.is_null() {
        return None;
    }
    COUNT.fetch_sub(1, Relaxed);
    wait_readers();
    // SAFETY: we swapped the pointer out, so the table's strong count is ours now, and no
    // reader can still be between its load and its increment (READERS drained).
    let sock = unsafe { Arc::from_raw(old) };
    // Another fd (a dup) may still refer to the same kernel socket: the connection watches
    // that one from now on.
    if let Ok(mut fds) = sock.fds.lock() {
        fds.retain(|&f| f != fd);
        if let (Some(c), Some(&next)) = (sock.conn.get(), fds.first()) {
            if c.tcp_fd() == fd {
                c.set_tcp_fd(next);
            }
        }
    }
    Some(sock)
}

fn wait_readers() {
    let mut n = 0u32;
    while READERS.load(SeqCst) != 0 {
        n += 1;
        if n > 64 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn release(p: *mut Sock) {
    wait_readers();
    // SAFETY: the pointer was swapped out of the table, which owned one strong count.
    drop(unsafe { Arc::from_raw(p) });
}

/// In the child after a fork: only the forking thread exists now, so a reader count another
/// thread of the parent held at the fork can never drain; and call `f` on every tracked entry
/// without allocating (after `_Fork` in a multithreaded parent, malloc's locks may be held by
/// threads that no longer exist).
pub fn for_each_in_child(mut f: impl FnMut(&Sock)) {
    READERS.store(0, SeqCst);
    if !any() {
        return;
    }
    for slot in &SLOTS {
        let p = slot.load(Acquire);
        if !p.is_null() {
            // SAFETY: a non-null slot holds a live `Arc<Sock>` owned by the table, and in the
            // single-threaded child nobody can remove it while we look.
            f(unsafe { &*p });
        }
    }
}

/// Every tracked (fd, entry), for the stats file.
pub fn snapshot() -> Vec<(i32, Arc<Sock>)> {
    if !any() {
        return Vec::new();
    }
    (0..MAX_FD as i32)
        .filter_map(|fd| get(fd).map(|s| (fd, s)))
        .collect()
}
