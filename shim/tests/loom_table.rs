//! Model check of the fd table's hazard pointers (docs/MEMORY-ORDERING.md, process-local: fd
//! table) under loom, running the real sequences of `shim/src/hazard.rs` that `table.rs` calls
//! (`pin`: `protect`; a pin's end: `unprotect`; `retire_ptr`: `held`, after the heavy half of the
//! fence) over loom's atomics. Both halves of the asymmetric fence are SeqCst fences here: the
//! reader's compiler fence and the remover's `membarrier` order each other as two SeqCst fences
//! would (docs/MEMORY-ORDERING.md, "Model-checked under loom: the asymmetric fences", says why and
//! what that over-approximates). The entry's memory is a loom cell: a reader's access not ordered
//! after its initialisation, or a free not ordered after the reader's access, fails the model.
//!
//! Built and run only with `--cfg loom` (scripts/test.sh):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p pcisock-shim \
//!     --test loom_table --target-dir target/loom
//! ```
#![cfg(loom)]

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Relaxed, SeqCst};
use std::sync::Arc;

use loom::sync::atomic::{fence, AtomicPtr};
use loom::thread;
use pcisock::hazard;

/// Preemptions per execution when LOOM_MAX_PREEMPTIONS does not say (as the other models).
const DEFAULT_PREEMPTIONS: usize = 3;

/// Run `f` under loom, print how many executions it explored (the CI summary adds them up).
fn check(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    b.check(move || {
        counted.fetch_add(1, Relaxed);
        f()
    });
    println!("loom model {name}: {} executions", runs.load(Relaxed));
}

/// The entry's memory (a `Sock`): loom's record of who wrote and read it (an access not ordered
/// by happens-before after the last write fails the model).
#[derive(Default)]
struct Memory {
    race: std::sync::Mutex<loom::cell::UnsafeCell<()>>,
}

impl Memory {
    fn write(&self) {
        self.race.lock().unwrap().with_mut(|_| ());
    }
    fn read(&self) {
        self.race.lock().unwrap().with(|_| ());
    }
}

/// One fd's table slot, one reader thread's hazard slot, and the entry.
#[derive(Default)]
struct Table {
    slot: AtomicPtr<u64>,
    hazard: AtomicPtr<u64>,
    entry: Memory,
}

/// The two halves of the asymmetric fence, as `membarrier` makes them meet (see the module doc).
fn light() {
    fence(SeqCst);
}
fn heavy() {
    fence(SeqCst);
}

/// The entry's address (never dereferenced: its memory is `Table::entry`).
fn entry_ptr() -> *mut u64 {
    std::ptr::NonNull::<u64>::dangling().as_ptr()
}

/// A thread makes an entry and tracks an fd with it (`insert`: the entry written, then the
/// table's AcqRel swap), then stops tracking it (`remove`: the swap to null; `retire_ptr`: the
/// heavy half, then `held`, and the entry freed if no hazard holds it, else left retired) while
/// another thread makes a call on the fd (`pin`: a Relaxed look, then `protect` until it holds
/// what the slot holds; the call reads the entry; the pin's end: `unprotect`). The call never
/// reads an entry not yet written or already freed; a retired entry is freed once the pin ends.
#[test]
fn fd_table() {
    check("fd table", || {
        let t = Arc::new(Table::default());
        let r = t.clone();
        let remover = thread::spawn(move || {
            let p = entry_ptr();
            r.entry.write();
            let old = r.slot.swap(p, AcqRel);
            assert!(old.is_null());
            let old = r.slot.swap(std::ptr::null_mut(), AcqRel);
            heavy();
            if hazard::held([&r.hazard], old) {
                return true; // retired: freed by a later reclaim
            }
            r.entry.write(); // the table's count released: the entry freed
            false
        });
        let c = t.clone();
        let caller = thread::spawn(move || {
            let mut p = c.slot.load(Relaxed);
            while !p.is_null() {
                let q = hazard::protect(&c.hazard, &c.slot, p, light);
                if q == p {
                    c.entry.read(); // the call, on the pinned entry
                    break;
                }
                p = q;
            }
            hazard::unprotect(&c.hazard);
        });
        let retired = remover.join().unwrap();
        caller.join().unwrap();
        if retired {
            // `reclaim`, after the pin ended: no hazard holds it now.
            assert!(!hazard::held([&t.hazard], entry_ptr()));
            t.entry.write();
        }
    });
}
