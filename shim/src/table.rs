//! The fd side table: which application fds pcisock tracks, indexed by fd number.
//!
//! A flat array of atomic pointers (fds below [`MAX_FD`]); the check an unflagged fd pays is one
//! bounds test and one relaxed load. An entry is an `Arc<Sock>` turned into a raw pointer.
//!
//! A data call borrows its entry with a *hazard pointer* ([`pin`]): it writes the pointer into a
//! slot of its thread's hazard record and loads the table slot again; a remover takes the
//! pointer out of the table, makes every thread's hazard stores visible with one
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (an asymmetric fence: the readers' side is a
//! compiler fence only), and releases the table's reference only when no hazard slot holds the
//! pointer; otherwise it leaves it on a retired list, freed by whoever finds it unprotected
//! later (the last pin released, the next removal). So a `write()` on a tracked fd takes no
//! locked instruction in the table, a blocked `read()` never holds up `close()` on another
//! thread, and nothing is freed under a reader.
//!
//! A thread's record has [`SLOTS_PER_THREAD`] slots, handed out by a bit mask in a thread-local
//! cell, so a signal handler that interrupts a pinned call and makes its own calls takes
//! another slot. Threads beyond [`RECORDS`], a fifth nested pin, a thread past its thread-local
//! destructors, or a kernel without `membarrier` take the old way: an `Arc` clone under a
//! reader count that removers wait out (a one-counter read-copy-update).
//!
//! # Safety
//! Non-null table slots hold pointers made by `Arc::into_raw` and own one strong count each.
//! A pointer leaves the table only by a swap to null; its owner then runs [`heavy_barrier`] and
//! waits for `READERS` to reach zero, and releases that count only once no hazard slot holds
//! the pointer (now, or later from the retired list). A reader either stores the pointer in a
//! hazard slot and finds it still in the table afterwards (then the remover's scan, which
//! follows its barrier, sees the hazard), or increments `READERS` before loading the slot and
//! takes its own strong count before decrementing `READERS`.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{
    compiler_fence, fence, AtomicBool, AtomicPtr, AtomicU8, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst},
};
use std::sync::Arc;

use crate::hazard;
use crate::sock::Sock;

/// fds at or above this are never tracked (their connections stay on TCP).
pub const MAX_FD: usize = 1 << 16;

static SLOTS: [AtomicPtr<Sock>; MAX_FD] = [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_FD];
static READERS: AtomicUsize = AtomicUsize::new(0);
/// Number of tracked fds (lets `poll`/`select` skip their scan when nothing is tracked).
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// One past the highest fd ever tracked: [`snapshot`] looks no further (a fork made it look at
/// all 65,536 slots, three times: 1.8 million instructions per fork of an nginx master).
static FD_HIGH: AtomicUsize = AtomicUsize::new(0);

/// Threads that can hold hazard records at once (more take the counted way).
pub const RECORDS: usize = 1024;
/// Hazard slots per thread: a call, and signal handlers nested in it.
pub const SLOTS_PER_THREAD: usize = 4;

/// One thread's hazard slots, on a cache line of its own (only its thread writes it; removers
/// read it).
#[repr(align(64))]
struct Record {
    taken: AtomicBool,
    slots: [AtomicPtr<Sock>; SLOTS_PER_THREAD],
}

static HAZARDS: [Record; RECORDS] = [const {
    Record {
        taken: AtomicBool::new(false),
        slots: [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS_PER_THREAD],
    }
}; RECORDS];
/// Records ever handed out (removers scan this many).
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// This thread's record (null: none yet, or [`NO_RECORD`]) and the slots of it in use (a bit
/// each).
struct ThreadHazard {
    record: Cell<*const Record>,
    used: Cell<u32>,
    /// The fd (plus one) this thread is closing (see [`close_begin`]).
    closing: Cell<u32>,
}

thread_local! {
    static MINE: ThreadHazard = const {
        ThreadHazard {
            record: Cell::new(std::ptr::null()),
            used: Cell::new(0),
            closing: Cell::new(0),
        }
    };
    /// Gives the record back when the thread exits (registered on first use).
    static RELEASE: RecordRelease = const { RecordRelease };
}

/// `record` of `MINE` when a thread cannot have one (records exhausted, or the thread is past
/// its thread-local destructors): it takes the counted way without trying again.
const NO_RECORD: *const Record = std::ptr::dangling();

struct RecordRelease;

impl Drop for RecordRelease {
    fn drop(&mut self) {
        let _ = MINE.try_with(|m| {
            let r = m.record.replace(NO_RECORD);
            if let Some(rec) = HAZARDS.iter().find(|rec| std::ptr::eq(*rec, r)) {
                for s in &rec.slots {
                    s.store(std::ptr::null_mut(), Release);
                }
                rec.taken.store(false, Release);
            }
        });
    }
}

/// How readers and removers order the hazard store against the re-load of the table slot.
const MODE_UNKNOWN: u8 = 0;
/// `membarrier` works: readers need only a compiler fence.
const MODE_ASYMMETRIC: u8 = 1;
/// No `membarrier`: readers fence (a locked instruction), removers too.
const MODE_SYMMETRIC: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);

/// Decide the fence mode (once per process image: the library constructor, before the
/// application starts threads, and again in a forked child, where the registration does not
/// carry over and only the forking thread exists).
pub fn init_fences() {
    let m = if crate::sys::membarrier_register() {
        MODE_ASYMMETRIC
    } else {
        MODE_SYMMETRIC
    };
    MODE.store(m, SeqCst);
}

#[inline]
fn mode() -> u8 {
    match MODE.load(Relaxed) {
        MODE_UNKNOWN => {
            // A hook ran before the constructor (another library's constructor): no threads of
            // the application can be pinning yet, so deciding here is as good.
            init_fences();
            MODE.load(Relaxed)
        }
        m => m,
    }
}

/// The readers' half of the asymmetric fence: orders our hazard store before our re-load of the
/// table slot, as far as a remover that ran [`heavy_barrier`] after its swap can tell.
#[inline]
fn light_barrier(mode: u8) {
    if mode == MODE_ASYMMETRIC {
        compiler_fence(SeqCst);
    } else {
        fence(SeqCst);
    }
}

/// The removers' half: after it, every hazard store a reader made before it re-loaded the slot
/// we emptied is visible to us.
fn heavy_barrier() {
    if mode() == MODE_ASYMMETRIC {
        if crate::sys::membarrier_private_expedited() {
            return;
        }
        // Registered, yet refused (not seen: a registration lasts for the process image, and
        // an unregistered child registers on the spot). Readers fence from now on; one that
        // passed its compiler fence before this store has its hazard store drained by the
        // time we have yielded the CPU. Not a proof, but the best left without the kernel.
        MODE.store(MODE_SYMMETRIC, SeqCst);
        std::thread::yield_now();
    }
    // Readers fence themselves in this mode; this pairs with theirs.
    fence(SeqCst);
}

/// A slot's value while its fd is being closed: out of the table, but still open in the
/// kernel (see [`close_begin`]). Never dereferenced.
const CLOSING: *mut Sock = std::ptr::dangling_mut();

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

/// A tracked fd's entry, borrowed for the length of one call (see the module doc). Not `Send`:
/// it lives in its thread's hazard record.
pub struct Pinned {
    sock: NonNull<Sock>,
    /// The hazard slot holding `sock`, and its bit in the thread's `used` cell; or `None`: we
    /// own one strong count of `sock` instead.
    hazard: Option<Hazard>,
}

struct Hazard {
    slot: &'static AtomicPtr<Sock>,
    used: NonNull<Cell<u32>>,
    bit: u32,
    /// The table slot the entry was pinned from.
    from: &'static AtomicPtr<Sock>,
}

impl Hazard {
    /// Empty the slot and give it back to the thread.
    #[inline]
    fn clear(&self) {
        hazard::unprotect(self.slot);
        compiler_fence(SeqCst);
        // SAFETY: `used` is this thread's cell (a `Pinned` never leaves its thread), and the
        // thread's locals outlive every call it makes.
        let used = unsafe { self.used.as_ref() };
        used.set(used.get() & !self.bit);
    }
}

impl std::ops::Deref for Pinned {
    type Target = Sock;
    #[inline]
    fn deref(&self) -> &Sock {
        // SAFETY: the hazard slot (or our strong count) keeps the entry alive while `self` lives.
        unsafe { self.sock.as_ref() }
    }
}

impl Drop for Pinned {
    #[inline]
    fn drop(&mut self) {
        match &self.hazard {
            Some(h) => {
                // Our accesses to the entry are done before a remover can see the slot empty.
                h.clear();
                // Only a pin whose entry left the table meanwhile can have held up its release:
                // other calls do not pay for the retired list while a blocked call holds an
                // entry on it.
                if h.from.load(Relaxed) != self.sock.as_ptr() && RETIRED_COUNT.load(Relaxed) != 0 {
                    reclaim();
                }
            }
            // SAFETY: the strong count we took in `pin_counted`.
            None => drop(unsafe { Arc::from_raw(self.sock.as_ptr()) }),
        }
    }
}

impl Pinned {
    /// A counted reference of its own, to keep beyond this call.
    pub fn to_arc(&self) -> Arc<Sock> {
        // SAFETY: the entry is alive while pinned (see `Deref`), and it came from Arc::into_raw.
        unsafe {
            Arc::increment_strong_count(self.sock.as_ptr());
            Arc::from_raw(self.sock.as_ptr())
        }
    }
}

/// Borrow the entry of `fd`, if tracked, for the length of a call: no locked instruction on the
/// common path (see the module doc).
#[inline]
pub fn pin(fd: i32) -> Option<Pinned> {
    pin_inlined(fd)
}

/// [`pin`], inlined into its caller: for the data hooks' fast paths (`try_send`, `try_recv`),
/// where the call, its saved registers and the copy of the `Pinned` it returns were about 20
/// instructions a call.
#[inline(always)]
pub fn pin_inlined(fd: i32) -> Option<Pinned> {
    let slot = SLOTS.get(fd as usize)?;
    let mut p = slot.load(Relaxed);
    if p.is_null() {
        return None;
    }
    if p == CLOSING {
        return pin_closing(fd, slot);
    }
    let mode = mode();
    let Ok(Some(h)) = MINE.try_with(|m| {
        let rec = m.record.get();
        let used = m.used.get();
        let i = used.trailing_ones();
        if rec.is_null() || rec == NO_RECORD || i as usize >= SLOTS_PER_THREAD {
            return None;
        }
        // Take the slot before writing it: a signal handler that runs in between sees the bit
        // and takes another (one that runs before this store gives back what it took).
        m.used.set(used | 1 << i);
        compiler_fence(SeqCst);
        // SAFETY: a non-null record other than NO_RECORD points into HAZARDS (static).
        let rec: &'static Record = unsafe { &*rec };
        Some(Hazard {
            slot: rec.slots.get(i as usize)?,
            used: NonNull::from(&m.used),
            bit: 1 << i,
            from: slot,
        })
    }) else {
        return pin_slow(fd, slot);
    };
    loop {
        // Our hazard store, our half of the fence, the re-load (`hazard`'s fd table).
        let q = hazard::protect(h.slot, slot, p, || light_barrier(mode));
        if q == p {
            return NonNull::new(p).map(|sock| Pinned {
                sock,
                hazard: Some(h),
            });
        }
        if q.is_null() || q == CLOSING {
            h.clear();
            return if q.is_null() {
                None
            } else {
                pin_closing(fd, slot)
            };
        }
        p = q;
    }
}

/// `fd` is being closed by another thread: wait until its close is done (then the kernel
/// answers the call: EBADF, or the new file if the number was given out again). A call from a
/// signal handler that interrupted this thread's own close of `fd` goes to the kernel at once.
#[cold]
fn pin_closing(fd: i32, slot: &AtomicPtr<Sock>) -> Option<Pinned> {
    if MINE
        .try_with(|m| m.closing.get() == fd as u32 + 1)
        .unwrap_or(true)
    {
        return None;
    }
    let mut n = 0u32;
    while slot.load(Acquire) == CLOSING {
        n = n.saturating_add(1);
        if n < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    pin(fd)
}

/// `pin` for a thread without a record yet (it adopts one), or that cannot have one.
#[cold]
fn pin_slow(fd: i32, slot: &AtomicPtr<Sock>) -> Option<Pinned> {
    if MINE.try_with(|m| m.record.get().is_null()).unwrap_or(false) {
        adopt_record();
        return pin(fd);
    }
    pin_counted(slot)
}

/// Give this thread a hazard record (once), or mark it as taking the counted way.
#[cold]
fn adopt_record() {
    let got = HAZARDS.iter().position(|rec| {
        !rec.taken.load(Relaxed)
            && rec
                .taken
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
    });
    let registered = RELEASE.try_with(|_| ()).is_ok();
    let _ = MINE.try_with(|m| match got.and_then(|i| HAZARDS.get(i).map(|r| (i, r))) {
        // A signal handler that ran meanwhile may have adopted one already: keep that one.
        Some((i, rec)) if registered && m.record.get().is_null() => {
            HIGH.fetch_max(i + 1, SeqCst);
            m.record.set(rec);
        }
        Some((_, rec)) => {
            rec.taken.store(false, Release);
            if m.record.get().is_null() {
                m.record.set(NO_RECORD);
            }
        }
        None => m.record.set(NO_RECORD),
    });
}

/// The counted way: an `Arc` clone under the reader count.
fn pin_counted(slot: &AtomicPtr<Sock>) -> Option<Pinned> {
    READERS.fetch_add(1, SeqCst);
    let p = slot.load(Acquire);
    let r = NonNull::new(p).filter(|_| p != CLOSING).map(|sock| {
        // SAFETY: `p` came from Arc::into_raw and its count is held by the table; a remover
        // waits for READERS to drain before it can release it, and we hold READERS here.
        unsafe { Arc::increment_strong_count(p) };
        Pinned { sock, hazard: None }
    });
    READERS.fetch_sub(1, SeqCst);
    r
}

/// The entry for `fd`, if tracked, as a reference of its own (to keep beyond the call).
#[inline]
pub fn get(fd: i32) -> Option<Arc<Sock>> {
    pin(fd).map(|p| p.to_arc())
}

/// Track `fd` (replacing any stale entry). Returns false if the fd is too large to track.
pub fn insert(fd: i32, sock: Arc<Sock>) -> bool {
    match replace(fd, sock) {
        Ok(old) => {
            drop(old);
            true
        }
        Err(()) => false,
    }
}

/// Track `fd` with `sock` in one step (a call on `fd` meanwhile finds the old entry or the
/// new one, never none) and return the entry it had, which no longer counts `fd` among its
/// fds. `Err` if the fd is too large to track.
pub fn replace(fd: i32, sock: Arc<Sock>) -> Result<Option<Arc<Sock>>, ()> {
    let Some(slot) = SLOTS.get(fd as usize) else {
        return Err(());
    };
    if let Ok(mut fds) = sock.fds.lock() {
        fds.add(fd);
    }
    // Before the slot is filled: a snapshot that sees the entry sees it within its bound.
    FD_HIGH.fetch_max(fd as usize + 1, Relaxed);
    let new = Arc::into_raw(sock) as *mut Sock;
    let old = slot.swap(new, AcqRel);
    if old.is_null() {
        COUNT.fetch_add(1, Relaxed);
        return Ok(None);
    }
    if old == CLOSING {
        // The number was closed and given out again before its closer finished (it counts
        // the slot as ours now: `close_end` finds it taken).
        return Ok(None);
    }
    if old == new {
        // The same entry again (a dup2 between two fds of one socket): the table held one
        // count for `fd` and now holds two.
        retire_ptr(old);
        return Ok(None);
    }
    Ok(Some(take_out(fd, old)))
}

/// Stop tracking `fd`; returns its entry.
pub fn remove(fd: i32) -> Option<Arc<Sock>> {
    let slot = SLOTS.get(fd as usize)?;
    let old = slot.swap(std::ptr::null_mut(), AcqRel);
    if old.is_null() {
        return None;
    }
    COUNT.fetch_sub(1, Relaxed);
    if old == CLOSING {
        return None;
    }
    Some(take_out(fd, old))
}

/// `close(fd)` is about to close a tracked fd: take its entry out of the table (returned), but
/// leave the slot marked until [`close_end`], after the kernel's close. A call on `fd` from
/// another thread meanwhile waits for the close to finish instead of going to the kernel
/// socket, which is still open and is not where the stream's bytes go.
pub fn close_begin(fd: i32) -> Option<Arc<Sock>> {
    let slot = SLOTS.get(fd as usize)?;
    let mut old = slot.load(Acquire);
    loop {
        if old.is_null() || old == CLOSING {
            return None;
        }
        match slot.compare_exchange(old, CLOSING, AcqRel, Acquire) {
            Ok(_) => break,
            Err(now) => old = now,
        }
    }
    let _ = MINE.try_with(|m| m.closing.set(fd as u32 + 1));
    Some(take_out(fd, old))
}

/// The kernel's close of `fd` (begun by [`close_begin`]) is done.
pub fn close_end(fd: i32) {
    let _ = MINE.try_with(|m| m.closing.set(0));
    if let Some(slot) = SLOTS.get(fd as usize) {
        if slot
            .compare_exchange(CLOSING, std::ptr::null_mut(), AcqRel, Relaxed)
            .is_ok()
        {
            COUNT.fetch_sub(1, Relaxed);
        }
    }
}

/// `old`, just swapped out of `fd`'s slot, as a reference of its own; the table's count is
/// retired, and `fd` leaves the entry's fds.
fn take_out(fd: i32, old: *mut Sock) -> Arc<Sock> {
    // SAFETY: we swapped the pointer out, so the table's strong count is ours: the entry is
    // alive until `retire_ptr` gives that count up, and we take one of our own first.
    let sock = unsafe {
        Arc::increment_strong_count(old);
        Arc::from_raw(old)
    };
    retire_ptr(old);
    // Another fd (a dup) may still refer to the same kernel socket: the connection watches
    // that one from now on.
    if let Ok(mut fds) = sock.fds.lock() {
        fds.remove(fd);
        if let (Some(c), Some(next)) = (sock.conn.get(), fds.first()) {
            if c.tcp_fd() == fd {
                c.set_tcp_fd(next);
            }
        }
    }
    sock
}

/// Pointers out of the table whose strong count waits for hazards to clear (see the module
/// doc). A spin lock, not a `Mutex`: a forked child resets it (the thread holding it may not
/// exist there).
static RETIRED_LOCK: AtomicBool = AtomicBool::new(false);
static RETIRED_COUNT: AtomicUsize = AtomicUsize::new(0);
static RETIRED: RetiredList = RetiredList(std::cell::UnsafeCell::new(Vec::new()));

struct RetiredList(std::cell::UnsafeCell<Vec<usize>>);

// SAFETY: the vector is only touched under RETIRED_LOCK (see `with_retired`).
unsafe impl Sync for RetiredList {}

/// Run `f` on the retired list under its lock; `None` if another thread holds it (it will look
/// at the list itself).
fn with_retired<T>(wait: bool, f: impl FnOnce(&mut Vec<usize>) -> T) -> Option<T> {
    let mut n = 0u32;
    while RETIRED_LOCK
        .compare_exchange_weak(false, true, Acquire, Relaxed)
        .is_err()
    {
        if !wait {
            return None;
        }
        n += 1;
        if n > 64 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    // SAFETY: we hold RETIRED_LOCK, the list's only way in.
    let r = f(unsafe { &mut *RETIRED.0.get() });
    RETIRED_COUNT.store(
        // SAFETY: as above, still held.
        unsafe { (*RETIRED.0.get()).len() },
        Relaxed,
    );
    RETIRED_LOCK.store(false, Release);
    Some(r)
}

/// Does any hazard slot hold `p`?
fn hazard_holds(p: *mut Sock) -> bool {
    let high = HIGH.load(SeqCst).min(RECORDS);
    HAZARDS
        .get(..high)
        .unwrap_or_default()
        .iter()
        .any(|rec| hazard::held(&rec.slots, p))
}

/// Give up the table's strong count of `p`, which was just swapped out of the table: now if no
/// hazard holds it, else later (from the retired list).
fn retire_ptr(p: *mut Sock) {
    // SYNC POINT (fd table): after our swap, make every reader's hazard store visible; pairs
    // with `light_barrier` in `pin`.
    heavy_barrier();
    wait_readers();
    if !hazard_holds(p) {
        // SAFETY: out of the table, no counted reader between its load and its increment
        // (READERS drained), and no hazard holds it: the table's count is ours to release.
        drop(unsafe { Arc::from_raw(p) });
    } else {
        with_retired(true, |l| l.push(p as usize));
    }
    reclaim();
}

/// Release the retired pointers no hazard holds any more.
fn reclaim() {
    let free = with_retired(false, |l| {
        let mut free = Vec::new();
        l.retain(|&p| {
            let held = hazard_holds(p as *mut Sock);
            if !held {
                free.push(p);
            }
            held
        });
        free
    });
    for p in free.unwrap_or_default() {
        // SAFETY: retired pointers were swapped out of the table and passed a heavy barrier
        // (in `retire_ptr`) before they were listed; no hazard holds this one now, and no new
        // hazard can protect it (a reader that re-loads the table slot no longer finds it).
        drop(unsafe { Arc::from_raw(p as *mut Sock) });
    }
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

/// In the child after a fork: only the forking thread exists now, so a reader count, hazards
/// or the retired list's lock that another thread of the parent held at the fork can never be
/// given back: reset them (the retired entries are released by the next reclaim). Then call
/// `f` on every tracked entry without allocating (after `_Fork` in a multithreaded parent,
/// malloc's locks may be held by threads that no longer exist). When `f` returns an entry, the
/// fd's slot takes it instead, and the old entry's count is leaked: the child must never drop
/// an entry a vanished thread of the parent was changing (see `fork::child`).
pub fn for_each_in_child(mut f: impl FnMut(&Sock) -> Option<Arc<Sock>>) {
    READERS.store(0, SeqCst);
    RETIRED_LOCK.store(false, SeqCst);
    let me = MINE.try_with(|m| m.record.get()).unwrap_or(NO_RECORD);
    for rec in HAZARDS.iter().take(HIGH.load(SeqCst)) {
        if !std::ptr::eq(rec, me) {
            for s in &rec.slots {
                s.store(std::ptr::null_mut(), SeqCst);
            }
            rec.taken.store(false, SeqCst);
        }
    }
    init_fences();
    if !any() {
        return;
    }
    for slot in &SLOTS {
        let mut p = slot.load(Acquire);
        if p == CLOSING {
            // Another thread of the parent was closing it: the child's copy of the fd is
            // open, its entry gone with that thread.
            slot.store(std::ptr::null_mut(), SeqCst);
            COUNT.fetch_sub(1, Relaxed);
            p = std::ptr::null_mut();
        }
        if !p.is_null() {
            // SAFETY: a non-null slot holds a live `Arc<Sock>` owned by the table, and in the
            // single-threaded child nobody can remove it while we look.
            if let Some(instead) = f(unsafe { &*p }) {
                // The table's count of the old entry is never given back (leaked on purpose).
                slot.store(Arc::into_raw(instead) as *mut Sock, SeqCst);
            }
        }
    }
}

/// Every tracked (fd, entry): for the stats file and a fork.
pub fn snapshot() -> Vec<(i32, Arc<Sock>)> {
    if !any() {
        return Vec::new();
    }
    (0..FD_HIGH.load(Relaxed).min(MAX_FD) as i32)
        .filter(|&fd| contains(fd))
        .filter_map(|fd| get(fd).map(|s| (fd, s)))
        .collect()
}
