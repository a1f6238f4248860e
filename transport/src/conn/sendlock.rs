//! The send side's lock (`SendLock`), biased to the thread that sends on the connection. Taken by
//! the send paths (and failover's switch, and close); it never puts a locked instruction on the
//! bias owner's way. The receive side's lock is one too (`Connection::rx_lock`: `try_recv` takes
//! it the biased way, the general `recv` and FIONREAD by compare-and-swap).
//!
//! Built with `--cfg loom` (public then, for `tests/loom_sendlock.rs`), its words are loom's
//! atomics and the two halves of the asymmetric fence are what `membarrier` guarantees them to
//! be when they meet, SeqCst fences (docs/MEMORY-ORDERING.md, "the asymmetric fences"); the
//! production build is unchanged.

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicBool, AtomicU64};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
#[cfg(not(loom))]
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU64};
#[cfg(not(loom))]
use std::time::Duration;

#[cfg(not(loom))]
use crate::sys;

/// The light half of the asymmetric fence: a compiler fence, which the heavy half
/// ([`heavy_fence`], `membarrier`) makes a full barrier in this thread whenever it runs. Under
/// loom, a SeqCst fence.
#[inline(always)]
fn light_fence() {
    #[cfg(not(loom))]
    compiler_fence(SeqCst);
    #[cfg(loom)]
    fence(SeqCst);
}

/// The heavy half: `membarrier` (a full barrier on every CPU running a thread of the process),
/// or, if the kernel refused it, a full fence of our own (then a light half that ran before may
/// be missed: see `revoke`). Under loom, a SeqCst fence.
#[inline]
fn heavy_fence() {
    #[cfg(not(loom))]
    if !sys::membarrier() {
        fence(SeqCst);
    }
    #[cfg(loom)]
    fence(SeqCst);
}

/// Can the bias be given (the process is registered for `membarrier`)? Always under loom.
#[inline(always)]
fn bias_allowed() -> bool {
    #[cfg(not(loom))]
    return sys::membarrier_ready();
    #[cfg(loom)]
    return true;
}

/// A contender's pause between tries (`tries` so far): spin, then yield, then nap. Under loom,
/// a yield (loom runs another thread).
#[inline]
fn pause(tries: u32) {
    #[cfg(not(loom))]
    match tries {
        0..64 => std::hint::spin_loop(),
        64..128 => std::thread::yield_now(),
        _ => std::thread::sleep(Duration::from_micros(
            (10u64 << (tries.saturating_sub(128).min(7))).min(1000),
        )),
    }
    #[cfg(loom)]
    {
        let _ = tries;
        loom::thread::yield_now();
    }
}

/// A spin while waiting out the bias owner.
#[inline(always)]
fn spin() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::hint::spin_loop();
}

/// The send side's lock, held across a whole send (which may wait for credits).
///
/// No locked instruction for the thread that sends on the connection: the lock is *biased* to
/// the first thread that sends by [`Connection::try_send`] (the common small send), which from
/// its next send on enters with plain stores (its `owner_in` flag, then a re-check that the lock is free and
/// still biased to it). Any other thread takes the lock with a compare-and-swap, and the first
/// such thread revokes the bias for good: it makes the owner's flag visible with one
/// `membarrier` (an asymmetric fence) and waits for the owner to leave. A locked instruction
/// right after the ring writes makes the sender wait until their cache lines have reached the
/// receiver's CPU (perf, iperf2 `-l 64`: 80 % of a 64-byte send with a `Mutex`), so every
/// release is a plain store. A thread that finds the lock taken spins a little, then yields,
/// then naps (at most 1 ms at a time): two threads sending on one connection at once is rare,
/// and the holder may be waiting for credits. Without `membarrier` there is no bias.
///
/// [`Connection::try_send`]: super::Connection::try_send
#[derive(Default)]
pub struct SendLock {
    held: AtomicBool,
    /// The thread token ([`thread_token`]) of the bias owner; [`UNBIASED`] before any, or
    /// [`REVOKED`].
    owner: AtomicU64,
    /// The owner is inside a send it entered by the biased way (written by the owner only).
    owner_in: AtomicBool,
}

const UNBIASED: u64 = 0;
const REVOKED: u64 = u64::MAX;

/// A token per thread, for the send lock's bias: the thread's `pthread_self`, unique among the
/// process's live threads (a thread made after the bias owner exited may get the owner's value,
/// and with it the bias: the owner, gone, is inside no send). Not a thread-local: in the cdylib
/// those are general-dynamic, a `__tls_get_addr` call on every send and read. Under loom, a
/// counter in a loom thread-local (loom's threads are not threads).
#[cfg(not(loom))]
#[inline(always)]
fn thread_token() -> u64 {
    sys::thread_id()
}

#[cfg(loom)]
fn thread_token() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    loom::thread_local! {
        static TOKEN: std::cell::Cell<u64> = std::cell::Cell::new(0);
    }
    TOKEN.with(|t| match t.get() {
        0 => {
            let v = NEXT.fetch_add(1, Relaxed);
            t.set(v);
            v
        }
        v => v,
    })
}

pub struct SendGuard<'a> {
    lock: &'a SendLock,
    biased: bool,
}

impl SendLock {
    pub fn lock(&self) -> SendGuard<'_> {
        let mut tries = 0u32;
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            tries = tries.saturating_add(1);
            pause(tries);
        }
    }

    /// Take the lock by compare-and-swap if it is free, without waiting (then wait out a bias
    /// owner inside, revoking the bias if it is not ours).
    pub fn try_lock(&self) -> Option<SendGuard<'_>> {
        if !self.take_held() {
            return None;
        }
        match self.owner.load(SeqCst) {
            UNBIASED | REVOKED => {}
            o if o == thread_token() => {}
            _ => self.revoke(),
        }
        Some(self.entered_unbiased())
    }

    /// `held`, by compare-and-swap if it looks free (false: it is taken).
    fn take_held(&self) -> bool {
        !self.held.load(Relaxed)
            && self
                .held
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
    }

    /// With `held` taken and no bias left to honour: wait out an owner that entered before the
    /// revocation (or before the look that found none), and enter.
    fn entered_unbiased(&self) -> SendGuard<'_> {
        while self.owner_in.load(Acquire) {
            spin();
        }
        SendGuard {
            lock: self,
            biased: false,
        }
    }

    /// Take the lock only if that costs its bias owner nothing: by the biased way if the bias
    /// is ours, by compare-and-swap if there is no bias (or it is revoked), else `None` without
    /// revoking (a look from another thread, the idle sweep's, must not put a `membarrier` and a
    /// locked instruction on every later send of the thread that sends on the connection).
    /// Taking `held` and giving it back untouched when the bias turns out to be another
    /// thread's is harmless: nothing was done under it.
    pub fn try_lock_unrevoked(&self) -> Option<SendGuard<'_>> {
        let me = thread_token();
        match self.owner.load(SeqCst) {
            o if o == me => return self.try_lock_biased(),
            UNBIASED | REVOKED => {}
            _ => return None,
        }
        if !self.take_held() {
            return None;
        }
        match self.owner.load(SeqCst) {
            UNBIASED | REVOKED => {}
            // Biased to another thread since our look (or to us, by a signal handler of ours
            // that sent meanwhile): leave it be.
            _ => {
                self.held.store(false, Release);
                return None;
            }
        }
        Some(self.entered_unbiased())
    }

    /// End the bias (we hold `held`): after the barrier, an owner either shows in `owner_in`
    /// or finds the bias gone when it re-checks.
    #[cold]
    fn revoke(&self) {
        self.owner.store(REVOKED, SeqCst);
        // SYNC POINT (send lock bias): the heavy half of the asymmetric fence; pairs with the
        // compiler fence in `try_lock_biased`. The process registered when the bias was given,
        // and a forked child registers on the spot, so it does not fail; if it did, an owner
        // already past its re-check could be missed by the load of `owner_in` that follows.
        heavy_fence();
    }

    /// The sender's way in: by plain stores if the lock is biased to this thread (the first
    /// thread to come here takes the bias), else by compare-and-swap; `None` if taken.
    #[inline(always)]
    pub fn try_lock_biased(&self) -> Option<SendGuard<'_>> {
        let me = thread_token();
        let mut o = self.owner.load(Relaxed);
        if o == UNBIASED && bias_allowed() {
            o = match self.owner.compare_exchange(UNBIASED, me, SeqCst, Relaxed) {
                // The bias is ours from the next send on: this one takes `held` by CAS, which
                // orders it (and every biased send after it) after any sender that took the
                // lock while there was no bias to revoke, and that thread's look at `owner` may
                // have missed ours (the loom model finds both inside at once without this).
                Ok(_) => return self.try_lock(),
                Err(other) => other,
            };
        }
        if o != me {
            return self.try_lock();
        }
        if self.owner_in.load(Relaxed) {
            // Only we write it: a signal handler of ours interrupted our own send.
            return None;
        }
        self.owner_in.store(true, Relaxed);
        // SYNC POINT (send lock bias): the light half of the asymmetric fence (our flag before
        // our loads of `held` and `owner`); pairs with the membarrier in `revoke`.
        light_fence();
        if !self.held.load(Relaxed) && self.owner.load(Relaxed) == me {
            return Some(SendGuard {
                lock: self,
                biased: true,
            });
        }
        self.owner_in.store(false, Release);
        None
    }

    /// Has the bias been revoked? (For the loom model of `try_lock_unrevoked`.)
    #[cfg(loom)]
    pub fn revoked(&self) -> bool {
        self.owner.load(SeqCst) == REVOKED
    }

    /// In a forked child: the owner may have been another thread, inside a send, that does
    /// not exist here.
    pub fn forked(&self) {
        self.owner_in.store(false, SeqCst);
    }
}

impl Drop for SendGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.biased {
            self.lock.owner_in.store(false, Release);
        } else {
            self.lock.held.store(false, Release);
        }
    }
}
