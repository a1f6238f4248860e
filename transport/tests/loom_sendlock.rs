//! Model check of the send lock's bias (docs/MEMORY-ORDERING.md, process-local: send lock bias)
//! under loom, running the real `transport/src/conn/sendlock.rs`: built with `--cfg loom`, its
//! words are loom's atomics and both halves of its asymmetric fence are SeqCst fences, which is
//! what `membarrier` makes of them when they meet (the light half a compiler fence in the bias
//! owner, the heavy half the `membarrier` call in the revoker: the kernel runs a full barrier on
//! every CPU running one of our threads, so each light half falls either before or after it).
//! What the lock guards is a loom cell: two senders inside at once fail the model.
//!
//! Built and run only with `--cfg loom` (scripts/test.sh):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p pcisock-transport \
//!     --test loom_sendlock --target-dir target/loom
//! ```
#![cfg(loom)]

mod loom_check;
use loom_check::check;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use loom::thread;
use transport::conn::sendlock::SendLock;

/// What the lock guards (the ring's producer side; here a count of sends): loom's record of who
/// wrote it (a write not ordered after the last access by happens-before fails the model) beside
/// the value itself, outside loom's view (as the device's models keep their data).
#[derive(Default)]
struct Guarded {
    race: std::sync::Mutex<loom::cell::UnsafeCell<()>>,
    sends: std::sync::atomic::AtomicU32,
}

/// A connection's send lock and what it guards.
#[derive(Default)]
struct Conn {
    lock: SendLock,
    guarded: Guarded,
}

impl Conn {
    /// One send inside the lock: read and write what it guards.
    fn send_inside(&self) {
        self.guarded.race.lock().unwrap().with_mut(|_| ());
        let n = self.guarded.sends.load(Relaxed);
        self.guarded.sends.store(n + 1, Relaxed);
    }

    /// A small send (`Connection::try_send`): the biased way in, else (taken) the common path's
    /// `lock`.
    fn try_send(&self) {
        match self.lock.try_lock_biased() {
            Some(_g) => self.send_inside(),
            None => {
                let _g = self.lock.lock();
                self.send_inside();
            }
        }
    }

    /// Any other send (`send`, failover's switch, close): `lock`.
    fn send(&self) {
        let _g = self.lock.lock();
        self.send_inside();
    }
}

/// A connection on which one thread sends twice by `try_send` (it takes the bias, then enters by
/// plain stores) while another runs `other`: the connection once both are done, and what `other`
/// returned.
fn beside_the_owner<R: Send + 'static>(
    other: impl FnOnce(&Conn) -> R + Send + 'static,
) -> (Arc<Conn>, R) {
    let c = Arc::new(Conn::default());
    let o = c.clone();
    let owner = thread::spawn(move || {
        o.try_send();
        o.try_send();
    });
    let x = c.clone();
    let other = thread::spawn(move || other(&x));
    owner.join().unwrap();
    let r = other.join().unwrap();
    (c, r)
}

/// A thread sends twice by `try_send` (it takes the bias, then enters by plain stores) while
/// another sends once by `send` (it takes `held`, revokes the bias, and waits the owner out, or
/// takes the lock before there is a bias). The two are never inside at once (loom checks the
/// guarded cell) and no send is lost.
#[test]
fn send_lock_bias() {
    check("send lock bias", || {
        let (c, ()) = beside_the_owner(|x| x.send());
        assert_eq!(c.guarded.sends.load(Relaxed), 3, "a send lost");
    });
}

/// The idle sweep's way in (`try_lock_unrevoked`, `Connection::release_idle_tx`): a thread
/// sends twice by `try_send` (taking the bias) while another looks once: it enters only when
/// there is no bias (or it is revoked), never revokes one, and, having taken `held` as the
/// bias went to the owner, gives it back untouched. The two are never inside at once (loom
/// checks the guarded cell), no send is lost, and the bias stays the owner's: its second send
/// still enters by plain stores unless the look came before there was a bias.
#[test]
fn send_lock_unrevoked_look() {
    check("send lock unrevoked look", || {
        let (c, looked) = beside_the_owner(|x| {
            if let Some(_g) = x.lock.try_lock_unrevoked() {
                x.send_inside();
                true
            } else {
                false
            }
        });
        assert_eq!(
            c.guarded.sends.load(Relaxed),
            2 + looked as u32,
            "a send lost"
        );
        assert!(!c.lock.revoked(), "a look revoked the bias");
    });
}
