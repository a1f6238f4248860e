//! The rendezvous area as loom sees it (built with `--cfg loom` only): the same code as over the
//! device's mapping, its words reached through loom's atomics instead of the mapping's.
//!
//! Who uses it: `transport/tests/loom_rendezvous.rs`, through [`super::RendezvousArea::model`]. loom's
//! atomics cannot live in a mapping, so the area is a set of *cells* laid out like the real
//! one: each synchronising word is a loom atomic of its width, and the bytes of each record are a
//! few cells of their own, written and read with Relaxed atomics (a cell larger than 8 bytes
//! holds an index into its list of the values written, so a cell reads as one value). So a read
//! of a record without the Acquire/Release pair that publishes it may return an older value of
//! any of its cells, and loom explores that; a record read while it is rewritten may come back
//! torn between its cells, as over the mapping (there torn at any byte: cells make the model
//! coarser, not stricter). Every access must cover whole cells: a mismatch between the code and
//! this layout panics, it is never quietly allowed.
//!
//! It must never be built into the product: nothing here maps memory, and it has no unsafe.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};

use ntbdrv::WindowError;

/// One cell of the model.
enum Cell {
    U32(AtomicU32),
    U64(AtomicU64),
    /// Record bytes of any other length: the index (in `values`) of the value last written.
    Bytes {
        at: AtomicUsize,
        values: Mutex<Vec<Box<[u8]>>>,
        /// In an exclusive area ([`Area::new_exclusive`]): loom's record of who read and wrote
        /// the cell, so a read and a write not ordered by happens-before fail the model (the
        /// cell itself holds nothing; the value is in `values`). Behind a std mutex, outside
        /// loom's view as `values` is, which only makes it shareable.
        race: Option<Mutex<loom::cell::UnsafeCell<()>>>,
    },
}

impl Cell {
    fn new(len: usize, exclusive: bool) -> Cell {
        match len {
            4 => Cell::U32(AtomicU32::new(0)),
            8 => Cell::U64(AtomicU64::new(0)),
            _ => Cell::Bytes {
                at: AtomicUsize::new(0),
                values: Mutex::new(vec![vec![0u8; len].into_boxed_slice()]),
                race: exclusive.then(|| Mutex::new(loom::cell::UnsafeCell::new(()))),
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Cell::U32(_) => 4,
            Cell::U64(_) => 8,
            Cell::Bytes { values, .. } => lock(values)[0].len(),
        }
    }

    fn write(&self, src: &[u8]) {
        match self {
            Cell::U32(w) => w.store(u32::from_le_bytes(word(src)), Relaxed),
            Cell::U64(w) => w.store(u64::from_le_bytes(word(src)), Relaxed),
            Cell::Bytes { at, values, race } => {
                if let Some(r) = race {
                    lock(r).with_mut(|_| ());
                }
                // The value is stored before its index is: the list is outside loom's view
                // (a std mutex), the index is what loom orders.
                let mut v = lock(values);
                v.push(src.into());
                let i = v.len() - 1;
                drop(v);
                at.store(i, Relaxed);
            }
        }
    }

    fn read(&self, dst: &mut [u8]) {
        match self {
            Cell::U32(w) => dst.copy_from_slice(&w.load(Relaxed).to_le_bytes()),
            Cell::U64(w) => dst.copy_from_slice(&w.load(Relaxed).to_le_bytes()),
            Cell::Bytes { at, values, race } => {
                if let Some(r) = race {
                    lock(r).with(|_| ());
                }
                let i = at.load(Relaxed);
                dst.copy_from_slice(&lock(values)[i]);
            }
        }
    }
}

fn word<const N: usize>(src: &[u8]) -> [u8; N] {
    src.try_into().expect("a cell is written whole")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A modelled area of `len` bytes (only its cells can be reached). Cloning it shares it, as
/// slicing a mapping does.
#[derive(Clone)]
pub struct Area {
    cells: Arc<BTreeMap<usize, Cell>>,
    len: usize,
}

impl std::fmt::Debug for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "model::Area({} cells, {:#x})",
            self.cells.len(),
            self.len
        )
    }
}

impl Area {
    /// An area of `len` bytes, all zeros, whose reachable bytes are the `cells` (offset, length;
    /// 4 and 8 are words, other lengths record bytes). Call it inside the loom model, before the
    /// threads that share it are spawned.
    pub fn new(len: usize, cells: impl IntoIterator<Item = (usize, usize)>) -> Area {
        Area::build(len, cells, false)
    }

    /// As [`Area::new`], but its record cells must never be read and written concurrently (a
    /// ring's frame slots): loom fails the model when a read and a write of one are not ordered
    /// by happens-before, whatever values they saw.
    pub fn new_exclusive(len: usize, cells: impl IntoIterator<Item = (usize, usize)>) -> Area {
        Area::build(len, cells, true)
    }

    fn build(len: usize, cells: impl IntoIterator<Item = (usize, usize)>, exclusive: bool) -> Area {
        let mut map = BTreeMap::new();
        let mut end = 0;
        for (off, n) in cells {
            assert!(off >= end, "model cells overlap at {off:#x}");
            assert!(
                n > 0 && off + n <= len,
                "model cell {off:#x}+{n} outside the area"
            );
            assert!(n != 4 || off % 4 == 0, "model word {off:#x} misaligned");
            assert!(n != 8 || off % 8 == 0, "model word {off:#x} misaligned");
            map.insert(off, Cell::new(n, exclusive));
            end = off + n;
        }
        Area {
            cells: Arc::new(map),
            len,
        }
    }

    fn cell(&self, off: usize) -> &Cell {
        self.cells
            .get(&off)
            .unwrap_or_else(|| panic!("offset {off:#x} is not a cell of the modelled area"))
    }

    /// Visit the cells that tile `off..off+len` exactly, with each one's range in the access.
    fn tile(&self, off: usize, len: usize, mut f: impl FnMut(&Cell, std::ops::Range<usize>)) {
        let mut at = 0;
        while at < len {
            let c = self.cell(off + at);
            let n = c.len();
            assert!(
                at + n <= len,
                "an access of {len} bytes at {off:#x} ends inside the cell at {:#x}",
                off + at
            );
            f(c, at..at + n);
            at += n;
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the area has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `src` into the area at `offset` (Relaxed stores of the cells it covers).
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), WindowError> {
        self.tile(offset, src.len(), |c, r| c.write(&src[r]));
        Ok(())
    }

    /// Copy from the area at `offset` into `dst` (Relaxed loads of the cells it covers).
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), WindowError> {
        self.tile(offset, dst.len(), |c, r| c.read(&mut dst[r]));
        Ok(())
    }

    /// The 32-bit word at `offset`, for synchronisation.
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, WindowError> {
        match self.cell(offset) {
            Cell::U32(w) => Ok(w),
            _ => panic!("the cell at {offset:#x} is not a 32-bit word"),
        }
    }

    /// The 64-bit word at `offset`, for synchronisation.
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, WindowError> {
        match self.cell(offset) {
            Cell::U64(w) => Ok(w),
            _ => panic!("the cell at {offset:#x} is not a 64-bit word"),
        }
    }
}

loom::thread_local! {
    static PID: std::cell::Cell<u32> = std::cell::Cell::new(0);
}

/// The process id the rendezvous code sees on this loom thread: this process's, unless the
/// thread plays another process ([`play_pid`]).
pub fn pid() -> u32 {
    match PID.with(|p| p.get()) {
        0 => ntbdrv::process::pid(),
        p => p,
    }
}

/// Make this loom thread play process `pid` (0: this process again), e.g. one that has died
/// since it published a listener.
pub fn play_pid(pid: u32) {
    PID.with(|p| p.set(pid));
}
