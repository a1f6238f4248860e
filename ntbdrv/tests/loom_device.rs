//! Model checks of the emulated device's sync points (docs/MEMORY-ORDERING.md: device creation,
//! bridge device creation, doorbell status, doorbell interrupt and sleep, link event, DMA start,
//! engine wake-up, DMA completion, host table lock, host table high water, scratchpad, bridge interrupt) under
//! loom, running the real sequences of `ntbdrv/src/emu/sync.rs` (the ones `EmuDevice` and its
//! DMA engine call) over loom's atomics and a modelled futex (`sync::ModelFutex`: the word's
//! check and the sleep are one step, as under the kernel's futex lock; no timeout, so a lost
//! wake-up leaves a sleeper asleep for good and loom reports the deadlock). The data a sync point
//! announces (ring bytes, a DMA descriptor, the bytes a DMA copied) is tracked by a loom
//! `UnsafeCell` ([`Data`]): a read not ordered after its write by happens-before fails the model,
//! whatever value it saw.
//!
//! Built and run only with `--cfg loom` (scripts/test.sh):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p ntbdrv \
//!     --test loom_device --target-dir target/loom
//! ```
#![cfg(loom)]

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use loom::sync::atomic::AtomicU32;
use loom::thread;
use ntb_sys as sys;
use ntbdrv::emu::sync::{self, ModelFutex};

/// Preemptions per execution when LOOM_MAX_PREEMPTIONS does not say (as the transport's models).
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

/// Data a sync point announces: loom's record of who wrote and read it (a read not ordered after
/// the write by happens-before fails the model, whatever value it saw) beside the value itself
/// (outside loom's view, as the transport's model area keeps its bytes).
#[derive(Default)]
struct Data {
    race: std::sync::Mutex<loom::cell::UnsafeCell<()>>,
    value: std::sync::atomic::AtomicU32,
}

impl Data {
    fn write(&self, v: u32) {
        self.race.lock().unwrap().with_mut(|_| ());
        self.value.store(v, Relaxed);
    }
    fn read(&self) -> u32 {
        self.race.lock().unwrap().with(|_| ());
        self.value.load(Relaxed)
    }
}

/// One side's doorbell registers and the data a ring announces.
#[derive(Default)]
struct Doorbell {
    status_lo: AtomicU32,
    status_hi: AtomicU32,
    seq: AtomicU32,
    waiters: AtomicU32,
    futex: ModelFutex,
    /// What the ringer wrote before ringing (the ring data of a connection).
    data: Data,
}

/// The ringer writes data and rings bit 0 (`peer_db_set`: `ring_bits`, then
/// `raise_db_interrupt`: `announce`); the rung side waits for the bit as `db_wait` does (look,
/// then `sleep_unless`, again) and reads the data. It is never left asleep (doorbell interrupt
/// and sleep) and reads the data after its write (doorbell status).
#[test]
fn doorbell() {
    check("doorbell", || {
        let d = Arc::new(Doorbell::default());
        let r = d.clone();
        let ringer = thread::spawn(move || {
            r.data.write(7);
            sync::ring_bits(&r.status_lo, &r.status_hi, 1);
            sync::announce(&r.futex, &r.seq, &r.waiters, true);
        });
        loop {
            if sync::pending_bits(&d.status_lo, &d.status_hi) & 1 != 0 {
                assert_eq!(d.data.read(), 7);
                break;
            }
            sync::sleep_unless(
                &d.futex,
                &d.seq,
                &d.waiters,
                || sync::pending_bits(&d.status_lo, &d.status_hi) & 1 == 0,
                None,
            );
        }
        ringer.join().unwrap();
    });
}

/// The link changes (`bump_link`: `announce` on the generation) while a thread waits for it as
/// `link_wait` does; the waiter is never left asleep.
#[test]
fn link_event() {
    check("link event", || {
        let d = Arc::new(Doorbell::default());
        let c = d.clone();
        let changer = thread::spawn(move || {
            sync::announce(&c.futex, &c.seq, &c.waiters, true);
        });
        let seen = 0;
        while d.seq.load(std::sync::atomic::Ordering::Acquire) == seen {
            sync::sleep_unless(
                &d.futex,
                &d.seq,
                &d.waiters,
                || d.seq.load(std::sync::atomic::Ordering::SeqCst) == seen,
                None,
            );
        }
        changer.join().unwrap();
    });
}

/// A DMA channel's registers, a descriptor and the bytes a batch copies.
#[derive(Default)]
struct Channel {
    ctrl: AtomicU32,
    bell: AtomicU32,
    done_seq: AtomicU32,
    waiters: AtomicU32,
    desc_flags: AtomicU32,
    futex: ModelFutex,
    /// A descriptor's addresses (written Relaxed by `submit` in the device; a cell here, so an
    /// engine reading it unordered fails).
    desc: Data,
    /// The destination of the copy.
    dst: Data,
}

/// A batch is submitted (`submit`: the descriptor, then `start_batch`) while the engine idles
/// (`engine`: `batch_started`, else `engine_idle`, again): the engine is never left asleep with
/// a batch started (engine wake-up) and reads the whole descriptor (DMA start).
#[test]
fn dma_start() {
    check("DMA start", || {
        let ch = Arc::new(Channel::default());
        let s = ch.clone();
        let submitter = thread::spawn(move || {
            s.desc.write(0xD5);
            sync::start_batch(
                &s.futex,
                &s.ctrl,
                &s.bell,
                sys::PLX_DMA_CTRL_START | sys::PLX_DMA_CTRL_IN_PROGRESS,
            );
        });
        loop {
            if sync::batch_started(&ch.ctrl) {
                assert_eq!(ch.desc.read(), 0xD5);
                break;
            }
            sync::engine_idle(&ch.futex, &ch.ctrl, &ch.bell, || false, None);
        }
        submitter.join().unwrap();
    });
}

/// The engine copies, writes the descriptor back and ends the batch (`run_batch`: the bytes,
/// `write_back`, `end_batch`) while the submitter waits for it with interrupts (`wait`:
/// `in_progress`, else `sleep_unless`, again): it is never left asleep, and once IN_PROGRESS is
/// clear the copied bytes and the write-back are visible (DMA completion).
#[test]
fn dma_completion() {
    check("DMA completion", || {
        let ch = Arc::new(Channel::default());
        ch.ctrl.store(
            sys::PLX_DMA_CTRL_IN_PROGRESS,
            std::sync::atomic::Ordering::Relaxed,
        );
        ch.desc_flags
            .store(sys::PLX_DESC_VALID, std::sync::atomic::Ordering::Relaxed);
        let e = ch.clone();
        let engine = thread::spawn(move || {
            e.dst.write(0xC0);
            sync::write_back(&e.desc_flags, sys::PLX_DESC_WB_SUCCESS);
            sync::end_batch(&e.futex, &e.ctrl, &e.done_seq, &e.waiters, true);
        });
        loop {
            if !sync::in_progress(&ch.ctrl) {
                assert_eq!(ch.dst.read(), 0xC0);
                assert_eq!(
                    ch.desc_flags.load(std::sync::atomic::Ordering::Relaxed),
                    sys::PLX_DESC_WB_SUCCESS,
                    "IN_PROGRESS clear before the write-back"
                );
                break;
            }
            sync::sleep_unless(
                &ch.futex,
                &ch.done_seq,
                &ch.waiters,
                || sync::in_progress(&ch.ctrl),
                None,
            );
        }
        engine.join().unwrap();
    });
}

/// Two processes (pids 1 and 2) take the host table's lock as `HostTable::lock` does
/// (`try_lock`, again while it is held), change a slot (read it, write it) and give the lock back
/// (`unlock`): the changes never overlap (loom checks the slot) and none is lost.
#[test]
fn host_table_lock() {
    check("host table lock", || {
        let lock = Arc::new(AtomicU32::new(0));
        let slot = Arc::new(Data::default());
        let lease = |lock: &AtomicU32, slot: &Data, me: u32| {
            while sync::try_lock(lock, me).is_err() {
                thread::yield_now();
            }
            let n = slot.read();
            slot.write(n + 1);
            sync::unlock(lock);
        };
        let (l, s) = (lock.clone(), slot.clone());
        let other = thread::spawn(move || lease(&l, &s, 2));
        lease(&lock, &slot, 1);
        other.join().unwrap();
        assert_eq!(slot.read(), 2, "a lease lost");
    });
}

/// A process lays a device out (`init`: the header's words Relaxed, then `publish_device`) while
/// another attaches (`validate`: `device_ready`, then the header): an attacher that takes the
/// device reads the whole header (device creation). In a file the link into place already keeps
/// a half-made device out of sight; the model checks the flag as if it were the only guard (on a
/// bridge it is).
#[test]
fn device_creation() {
    check("device creation", || {
        let done = Arc::new(AtomicU32::new(0));
        let header = Arc::new(Data::default());
        let (d, h) = (done.clone(), header.clone());
        let creator = thread::spawn(move || {
            h.write(sys::NTBEMU_VERSION);
            sync::publish_device(&*d);
        });
        if sync::device_ready(&*done) {
            assert_eq!(header.read(), sys::NTBEMU_VERSION);
        }
        creator.join().unwrap();
    });
}

/// Two machines attach to a bridge's fresh memory at once (`on_bridge`): the one whose
/// `claim_layout` wins lays the device out and publishes it, the other waits while
/// `layout_pending`; both then take the device (`validate`: `device_ready`) and read the header.
/// Exactly one writes the layout (loom checks the header's cell: two writers race), and nobody
/// reads it half-written (bridge device creation).
#[test]
fn bridge_device_creation() {
    check("bridge device creation", || {
        let done = Arc::new(AtomicU32::new(0));
        let header = Arc::new(Data::default());
        let attach = |done: &AtomicU32, header: &Data| {
            if sync::claim_layout(done) {
                header.write(sys::NTBEMU_VERSION);
                sync::publish_device(done);
            } else {
                while sync::layout_pending(done) {
                    thread::yield_now();
                }
            }
            assert!(
                sync::device_ready(done),
                "a machine took an unfinished device"
            );
            assert_eq!(header.read(), sys::NTBEMU_VERSION);
        };
        let (d, h) = (done.clone(), header.clone());
        let other = thread::spawn(move || attach(&d, &h));
        attach(&done, &header);
        other.join().unwrap();
    });
}

/// A host table's slot: `kind` (a loom word) and the other fields (a cell, written Relaxed under
/// the lock in the device).
#[derive(Default)]
struct Slot {
    kind: AtomicU32,
    fields: Data,
}

/// Two processes lease a slot as `HostTable::lease_window` does under the lock (`try_lock`; the
/// next never-used slot: `high_water`, `raise_high_water`; the fields, then `publish_slot`;
/// `unlock`) while `pcisock stats` reads the table without it (`leases`: `high_water`, then each
/// slot below it: `slot_kind`, and the fields of a leased one). A reader that sees the mark at 2
/// sees the first lease in slot 0 (host table high water), and the fields of every slot it sees
/// leased (the slots' `kind`, host table lock).
#[test]
fn host_table_high_water() {
    check("host table high water", || {
        let lock = Arc::new(AtomicU32::new(0));
        let mark = Arc::new(AtomicU32::new(0));
        let slots: Arc<[Slot; 2]> = Arc::default();
        let lease = |lock: &AtomicU32, mark: &AtomicU32, slots: &[Slot; 2], me: u32| {
            while sync::try_lock(lock, me).is_err() {
                thread::yield_now();
            }
            let used = sync::high_water(mark);
            sync::raise_high_water(mark, used + 1);
            let s = &slots[used as usize];
            s.fields.write(me);
            sync::publish_slot(&s.kind, sys::NTBEMU_LEASE_WINDOW);
            sync::unlock(lock);
        };
        let (l, m, s) = (lock.clone(), mark.clone(), slots.clone());
        let first = thread::spawn(move || lease(&l, &m, &s, 1));
        let (l, m, s) = (lock.clone(), mark.clone(), slots.clone());
        let second = thread::spawn(move || lease(&l, &m, &s, 2));
        // The reader in a thread of its own too: loom then runs it before, between and after the
        // leases (in the model's main thread, loom ran it before both in every execution).
        let reader = thread::spawn(move || {
            let used = sync::high_water(&*mark);
            for (i, s) in slots.iter().enumerate().take(used as usize) {
                let kind = sync::slot_kind(&s.kind);
                if kind == sys::NTBEMU_LEASE_FREE {
                    assert!(
                        i + 1 == used as usize,
                        "slot {i} seen free below the mark {used}: a lease made before it was missed"
                    );
                } else {
                    assert!(matches!(s.fields.read(), 1 | 2));
                }
            }
        });
        first.join().unwrap();
        second.join().unwrap();
        reader.join().unwrap();
    });
}

/// One side writes what a scratchpad value announces (a cell), then the value into the peer's
/// scratchpad (`peer_spad_write`: `spad_store`); the peer reads its scratchpad (`spad_read`:
/// `spad_load`) and, seeing the value, what it announces (scratchpad).
#[test]
fn scratchpad() {
    check("scratchpad", || {
        let reg = Arc::new(AtomicU32::new(0));
        let meaning = Arc::new(Data::default());
        let (r, m) = (reg.clone(), meaning.clone());
        let writer = thread::spawn(move || {
            m.write(0x5A);
            sync::spad_store(&*r, 1);
        });
        if sync::spad_load(&*reg) == 1 {
            assert_eq!(meaning.read(), 0x5A);
        }
        writer.join().unwrap();
    });
}

/// Two ringers on the other machine each write the data an interrupt announces and post its bit
/// into our mailbox (`post_interrupt`: `post_pending`, `bump_mailbox`) while our poller polls
/// (`start_poller`: `mailbox_seq`; when it moved, `deliver_interrupts`: `take_pending`). Once the
/// poller has seen SEQ at 2 and taken the bits, it has both (no lost interrupt), and it reads each
/// bit's data after its write (bridge interrupt).
#[test]
fn bridge_interrupt() {
    check("bridge interrupt", || {
        let seq = Arc::new(AtomicU32::new(0));
        let pending = Arc::new(AtomicU32::new(0));
        let data: Arc<[Data; 2]> = Arc::default();
        let ringers: Vec<_> = (0..2)
            .map(|i| {
                let (seq, pending, data) = (seq.clone(), pending.clone(), data.clone());
                thread::spawn(move || {
                    data[i].write(0xB0 + i as u32);
                    sync::post_pending(&*pending, 1 << i);
                    sync::bump_mailbox(&*seq);
                })
            })
            .collect();
        let poller = thread::spawn(move || {
            let mut seen = sync::mailbox_seq(&*seq).wrapping_sub(1);
            let mut got = 0u32;
            loop {
                let now = sync::mailbox_seq(&*seq);
                if now != seen {
                    seen = now;
                    let bits = sync::take_pending(&*pending);
                    for (i, d) in data.iter().enumerate() {
                        if bits & 1 << i != 0 {
                            assert_eq!(d.read(), 0xB0 + i as u32);
                        }
                    }
                    got |= bits;
                    if seen == 2 {
                        assert_eq!(got, 3, "SEQ moved past a post whose bit was not taken");
                        break;
                    }
                }
                thread::yield_now();
            }
        });
        for r in ringers {
            r.join().unwrap();
        }
        poller.join().unwrap();
    });
}
