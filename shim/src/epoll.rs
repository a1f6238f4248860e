//! epoll for NTB connections, on the application's own kernel epoll set.
//!
//! A connection on the NTB path has no kernel-visible data, so registering its socket would
//! report the wrong readiness. Instead `epoll_ctl` registers, in the application's epoll fd and
//! under an internal tag, the connection's doorbell line (which fires when the peer rings us) and
//! its TCP socket for input only, edge-triggered (which fires once when the peer's kernel closes
//! it: a socket at EOF stays readable, and must not wake every wait), and remembers
//! the application's events and data. `epoll_wait` answers from ring state: level-triggered
//! registrations are re-checked on every call (a drained doorbell line must not hide data still
//! in the ring), edge-triggered ones report when the peer did something new since the last
//! report, one-shot ones disable themselves. Everything else in the set is the kernel's.
//!
//! A client whose upgrade offer is still pending is registered as the kernel socket plus the
//! offer's doorbell line (the answer rings it); the first `epoll_wait` after the answer moves
//! the registration to the NTB form.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libc::c_int;

use crate::ops::{self, Detour};
use crate::sock::{Sock, State};
use crate::{global, sys, table};
use fdmap::{FdMap, FdSet};

/// High bits of `epoll_data` that mark our own registrations (the low 32 bits hold the fd).
const TAG: u64 = 0x5043_534B_0000_0000;
/// The same for the set's shared lines (the low 32 bits hold the `LineSet`'s fd).
const LINE_TAG: u64 = 0x5043_534C_0000_0000;
const TAG_MASK: u64 = 0xFFFF_FFFF_0000_0000;

fn is_ours(data: u64) -> bool {
    data & TAG_MASK == TAG || data & TAG_MASK == LINE_TAG
}

/// An epoll set's shared interrupt lines (the processes' lines from the fabric service, each
/// used by many connections): one `LineSet` per set, registered once in it (from the first
/// registration that needs it until the set is closed), with how many of the set's
/// registrations use each line (a line with none leaves the `LineSet`). A shared line is never emptied (it wakes many
/// sleepers); the `LineSet` takes each ring as an edge and is emptied when it wakes a wait.
struct Hub {
    lines: transport::LineSet,
    uses: FdMap<c_int, usize>,
}

fn hubs() -> &'static Mutex<FdMap<c_int, Hub>> {
    static HUBS: OnceLock<Mutex<FdMap<c_int, Hub>>> = OnceLock::new();
    HUBS.get_or_init(Default::default)
}

/// A registration of `epfd` uses shared line `line`.
fn add_line(epfd: c_int, line: c_int) -> Result<(), c_int> {
    let Ok(mut hubs) = hubs().lock() else {
        return Err(libc::EIO);
    };
    let hub = match hubs.entry(epfd) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let lines = transport::LineSet::new().ok_or(libc::ENOMEM)?;
            let tag = LINE_TAG | lines.fd() as u32 as u64;
            match kernel_ctl(
                epfd,
                libc::EPOLL_CTL_ADD,
                lines.fd(),
                libc::EPOLLIN as u32,
                tag,
            ) {
                0 => {}
                e => return Err(e),
            }
            e.insert(Hub {
                lines,
                uses: FdMap::default(),
            })
        }
    };
    let n = hub.uses.entry(line).or_default();
    if *n == 0 && !hub.lines.add(line) {
        hub.uses.remove(&line);
        return Err(libc::ENOMEM);
    }
    *n += 1;
    Ok(())
}

/// A registration of `epfd` that used shared line `line` left.
fn drop_line(epfd: c_int, line: c_int) {
    let Ok(mut hubs) = hubs().lock() else { return };
    let Some(hub) = hubs.get_mut(&epfd) else {
        return;
    };
    if let Some(n) = hub.uses.get_mut(&line) {
        *n -= 1;
        if *n == 0 {
            hub.uses.remove(&line);
            hub.lines.remove(line);
        }
    }
    // The hub stays, empty (never readable), until the set is closed (`forget_set`): a server
    // whose connections come and go one at a time would otherwise make and register a
    // `LineSet`, then unregister and close it, twice per connection (the upgrade moves the
    // registration from the offer's form to the connection's): ten system calls, among them
    // an epoll instance made and freed.
}

/// A wait on `epfd` woke for its shared lines: empty its `LineSet`.
fn take_lines(epfd: c_int) {
    if let Ok(hubs) = hubs().lock() {
        if let Some(hub) = hubs.get(&epfd) {
            hub.lines.take();
        }
    }
}

/// Events an application may ask for that we evaluate ourselves.
const READ: u32 = (libc::EPOLLIN | libc::EPOLLRDNORM | libc::EPOLLRDHUP) as u32;
const WRITE: u32 = (libc::EPOLLOUT | libc::EPOLLWRNORM) as u32;

/// One application registration of a tracked fd in one epoll set.
struct Reg {
    sock: Arc<Sock>,
    events: u32,
    data: u64,
    /// `Connection::activity` when we last reported this registration (edge-triggered), if
    /// `reported` (not an `Option`: its 8 bytes more made the set's table 11 % bigger).
    last_activity: u64,
    reported: bool,
    /// Its rarer flags: `marks::DISABLED`, `TALLIED`, `TOLD_REACHING`.
    marks: marks::Marks,
    /// How it is registered in the kernel now.
    form: Form,
    /// Its interest in the connection's rings while it is an enabled NTB registration: keeps a
    /// thread's wait on the same connection (poll, a blocking recv or send) from withdrawing,
    /// when it ends, the rings this registration asked for (`Connection::interest`).
    interest: Option<transport::Interest>,
    /// Listed in the set's `cand` (each registration once: see [`SetState::add_cand`]).
    cand: bool,
    /// Listed in the set's `to_arm`.
    to_arm: bool,
}

/// The interest of a registration asking for `events` in connection `c`.
fn interest(c: &Arc<transport::Connection>, events: u32) -> transport::Interest {
    c.interest(events & READ != 0, events & WRITE != 0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// NTB: doorbell line `vector` and the TCP socket (input only), both under our tag.
    /// `shared`: the line is the process's line from the service, used by many connections
    /// (see `add_line`).
    Ntb { vector: c_int, shared: bool },
    /// Pending offer: the kernel socket with the application's events under our tag, and the
    /// offer's doorbell line.
    Pending { vector: c_int, shared: bool },
}

/// One epoll set's registrations, and what `epoll_wait` needs to look at only some of them.
///
/// A wait evaluates the registrations that may have changed, not all of them: those the
/// application added or changed, those reported ready last time (level-triggered ones are
/// reported for as long as they stay ready), those whose TCP socket or own line had an event,
/// and when a shared line rang, those whose tally word moved (`tallies`: the peer counts each
/// ring for a connection there). All of them only when a ring cannot be told that way (a
/// device's lines, a ring nobody named), and at least every `FULL_EVERY` (`FULL_EVERY_TALLIED`
/// where the rings are told: a wake-up lost, a flag that a blocking waiter of the same
/// connection cleared). So a server with thousands of idle
/// connections and a few busy ones pays per busy connection on most waits, and a burst of
/// accepts does not cost a look at every connection per accept.
#[derive(Default)]
struct SetState {
    regs: FdMap<c_int, Reg>,
    /// Registrations to evaluate on the next wait (see above), each once (`Reg::cand`): a list,
    /// not a hash set, because a hash set's drain and clear cost its capacity, which the
    /// burst of a server's accepts (or a client's connects) grows to thousands, on every wait
    /// after (benches/results/scaling.md, session 13).
    cand: Vec<c_int>,
    /// When every registration was last evaluated (None: never).
    full_at: Option<Instant>,
    /// Every registration must be evaluated next (a ring no tally word told).
    full_due: bool,
    /// The tally words of the registrations (see [`tallies`]).
    tallies: tallies::Tallies,
    /// Every registration's flags must be set again in the peers' memory before the next
    /// sleep (a peer takes a flag when it rings; a shared line does not say whose).
    arm_due: bool,
    /// When every registration was last armed (None: never).
    armed_at: Option<Instant>,
    /// The registrations added as pending offers and not settled yet, as far as `settle` knows
    /// (one that went is dropped at its next look): a wait looks at these, not at every
    /// registration, while connects or accepts wait for their answers.
    pending: FdSet,
    /// The set has held a registration with a line of its own (a device's doorbell line, not
    /// a process's shared line from the service): it is evaluated and armed whole on every
    /// wait, as before the candidates. Candidates alone lost wake-ups there (nginx over the
    /// device: ~780 requests a second against 250,000 whole).
    device: bool,
    /// The registrations one `harvest` looks at (kept to save an allocation per look).
    scratch: Vec<c_int>,
    /// The registrations reported ready most recently (at most [`HOT`], newest last): a
    /// spinning wait looks at them on every round, as well as at the candidates. A peer rings
    /// once per arming and a wait arms only before it sleeps, so the next message of a
    /// connection just served comes unrung while its server spins; unlooked-at, it waited
    /// for the end of the spin or the next full look (nginx's edge-triggered registrations:
    /// up to `PCISOCK_SPIN_US` per keep-alive request).
    hot: Vec<c_int>,
    /// Threads of this process asleep in this set's kernel wait, counted (under the set's
    /// lock) from the arming before their sleep until they wake.
    sleepers: u32,
    /// A thread has slept in this set's own wait: the application waits on it directly (see
    /// [`SetState::arm_later`]).
    slept: bool,
    /// Registrations added or changed while nobody slept in the set, not armed then: the next
    /// wait arms them before it sleeps. Each once (`Reg::to_arm`), as `cand`.
    to_arm: Vec<c_int>,
    /// The set is (or was) inside another epoll set, or watched by poll or select: whoever
    /// sleeps for it there never arms its registrations, so they are armed at once.
    nested: bool,
}

/// The most registrations a spinning wait looks at beyond the candidates (see `SetState::hot`).
const HOT: usize = 16;

impl std::ops::Deref for SetState {
    type Target = FdMap<c_int, Reg>;
    fn deref(&self) -> &Self::Target {
        &self.regs
    }
}

impl std::ops::DerefMut for SetState {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.regs
    }
}

impl SetState {
    /// Is every registration to be evaluated at `now`?
    fn full_now(&self, now: Instant) -> bool {
        let every = self.every();
        self.device || self.full_due || self.full_at.is_none_or(|t| now - t >= every)
    }

    /// Is every registration to be armed at `now`?
    fn arm_all_now(&self, now: Instant) -> bool {
        let every = self.every();
        self.device || self.arm_due || self.armed_at.is_none_or(|t| now - t >= every)
    }

    /// How long the set goes without looking at (and arming) every registration.
    fn every(&self) -> Duration {
        if self.tallies.is_empty() {
            FULL_EVERY
        } else {
            FULL_EVERY_TALLIED
        }
    }

    /// A shared line rang: which registrations for, from their tally words (they become
    /// candidates, and are armed again before the next sleep: their peers took the flags).
    /// False if the ring cannot be told: then every registration is looked at and armed.
    fn told_rings(&mut self) -> bool {
        let SetState { regs, tallies, .. } = self;
        let mut rung = Vec::new();
        let told = tallies.rung(&mut rung, |fd, page, slot| {
            regs.get(&fd)
                .and_then(|r| r.sock.conn.get())
                .and_then(|c| c.tally())
                .is_some_and(|t| t.slot() == slot && Arc::ptr_eq(t.tally(), page))
        });
        for fd in rung {
            self.add_cand(fd);
            self.add_to_arm(fd);
        }
        told
    }

    /// Make registration `fd` a candidate of the next look, unless it is one already (a
    /// registration that went is not listed).
    fn add_cand(&mut self, fd: c_int) {
        if let Some(r) = self.regs.get_mut(&fd) {
            if !r.cand {
                r.cand = true;
                self.cand.push(fd);
            }
        }
    }

    /// Arm registration `fd` before the next sleep, unless it is listed for that already.
    fn add_to_arm(&mut self, fd: c_int) {
        if let Some(r) = self.regs.get_mut(&fd) {
            if !r.to_arm {
                r.to_arm = true;
                self.to_arm.push(fd);
            }
        }
    }

    /// May registration `fd`, added or changed now, be armed (and the set's sleepers woken if
    /// it is ready) by the next wait instead of at once? Yes when no thread sleeps in the set
    /// and the application waits on it directly: the next wait looks at it (a candidate) and
    /// arms it before any sleep. Arming at once asked the peer for a ring nobody may need, and
    /// a ready registration cost a ring of our own line: an event loop that adds EPOLLOUT
    /// before each request and takes it away once the request is written (wrk) paid both per
    /// request. A set nobody has slept in directly, or one inside another set or polled
    /// ([`SetState::nested`]), is armed at once, as the kernel's epoll_ctl wakes.
    fn arm_later(&mut self, fd: c_int) -> bool {
        if self.sleepers == 0 && self.slept && !self.device && !self.nested {
            self.add_to_arm(fd);
            true
        } else {
            false
        }
    }
}

/// The longest an epoll set goes without evaluating every registration.
const FULL_EVERY: Duration = Duration::from_millis(5);

/// The same for a set whose rings are told by tally words (a look at every registration of a
/// server with thousands of idle connections costs milliseconds: benches/results/idle-fanout.md).
const FULL_EVERY_TALLIED: Duration = Duration::from_millis(250);

type Set = Mutex<SetState>;

/// Has any epoll set ever held one of our registrations? (Keeps `close` of other fds cheap.)
pub static IN_USE: AtomicBool = AtomicBool::new(false);

/// Per fd number: how many registrations it has in the sets we keep, plus [`A_SET`] if it is one
/// of those sets. `close` of any other fd takes none of this module's locks, which matters for
/// pcisock's own fds: the transport closes them (a settled offer's doorbell line) while `wait`
/// holds a set's lock, and looking for them there would deadlock.
static INVOLVED: [AtomicU32; table::MAX_FD] = [const { AtomicU32::new(0) }; table::MAX_FD];
const A_SET: u32 = 1 << 31;

/// Per fd number: it was given to some epoll set to watch (`EPOLL_CTL_ADD`). An epoll set among
/// them sits inside another set, which sleeps for it in the kernel: see [`SetState::nested`].
/// (A number closed and reused keeps its mark: the set made on it then arms at once, as before.)
static WATCHED: [AtomicBool; table::MAX_FD] = [const { AtomicBool::new(false) }; table::MAX_FD];

/// Is `fd` one of the epoll sets we keep?
fn is_set(fd: c_int) -> bool {
    INVOLVED
        .get(fd as usize)
        .is_some_and(|n| n.load(Relaxed) & A_SET != 0)
}

/// `fd` (not one of ours) is being added to an epoll set (`epfd`'s `EPOLL_CTL_ADD`): if it is
/// one of our sets, it is nested from now on.
pub fn watched(fd: c_int) {
    if let Some(w) = WATCHED.get(fd as usize) {
        w.store(true, Relaxed);
    }
    polled(fd);
}

/// `fd` is being watched by poll or select: if it is one of our sets, it is nested from now on.
pub fn polled(fd: c_int) {
    if is_set(fd) {
        if let Some(set) = set_of(fd) {
            if let Ok(mut st) = set.lock() {
                st.nested = true;
            }
        }
    }
}

/// Does closing `fd` concern a set we keep (one of its registrations, or the set itself)?
pub fn involves(fd: c_int) -> bool {
    match INVOLVED.get(fd as usize) {
        Some(n) => n.load(Relaxed) != 0,
        None => IN_USE.load(Relaxed), // not counted: look
    }
}

/// A registration of `fd` was added to (`true`) or removed from a set.
fn count_reg(fd: c_int, added: bool) {
    if let Some(n) = INVOLVED.get(fd as usize) {
        if added {
            n.fetch_add(1, Relaxed);
        } else {
            n.fetch_sub(1, Relaxed);
        }
    }
}

fn sets() -> &'static Mutex<FdMap<c_int, Arc<Set>>> {
    static SETS: OnceLock<Mutex<FdMap<c_int, Arc<Set>>>> = OnceLock::new();
    SETS.get_or_init(Default::default)
}

fn set_of(epfd: c_int) -> Option<Arc<Set>> {
    sets().lock().ok()?.get(&epfd).cloned()
}

/// Does any epoll set track an fd? (The fast check of `epoll_wait`.)
pub fn tracks(epfd: c_int) -> bool {
    sets()
        .lock()
        .map(|s| {
            s.get(&epfd)
                .is_some_and(|set| set.lock().map(|r| !r.is_empty()).unwrap_or(false))
        })
        .unwrap_or(false)
}

/// Drop the events of our own registrations (tagged) from what a kernel wait returned, keeping
/// the others in order; returns how many are left.
pub fn strip_ours(events: &mut [libc::epoll_event]) -> usize {
    let mut kept = 0;
    for i in 0..events.len() {
        let ev = events[i];
        if !is_ours(ev.u64) {
            events[kept] = ev;
            kept += 1;
        }
    }
    kept
}

fn kernel_ctl(epfd: c_int, op: c_int, fd: c_int, events: u32, data: u64) -> c_int {
    sys::epoll_ctl(epfd, op, fd, events, data)
}

/// Add the kernel registrations of `form` for `fd`.
fn register(epfd: c_int, fd: c_int, form: Form, app_events: u32) -> Result<(), c_int> {
    let tag = TAG | fd as u32 as u64;
    let excl = app_events & libc::EPOLLEXCLUSIVE as u32;
    let (sock_events, vector, shared) = socket_events(form, app_events);
    match kernel_ctl(epfd, libc::EPOLL_CTL_ADD, fd, sock_events, tag) {
        0 => {}
        libc::EEXIST => {
            let e = kernel_ctl(epfd, libc::EPOLL_CTL_MOD, fd, sock_events, tag);
            if e != 0 {
                return Err(e);
            }
        }
        e => return Err(e),
    }
    if shared {
        return add_line(epfd, vector).inspect_err(|_| {
            kernel_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0);
        });
    }
    match kernel_ctl(
        epfd,
        libc::EPOLL_CTL_ADD,
        vector,
        libc::EPOLLIN as u32 | excl,
        tag,
    ) {
        0 | libc::EEXIST => Ok(()),
        e => {
            kernel_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0);
            Err(e)
        }
    }
}

/// Registration `fd` (of `form` now) takes form `to`, which rings the same doorbell line (a
/// pending offer or accept settled onto the ring): its socket's events change in place (a
/// `MOD`, which re-arms its edge as an `ADD` would) and the line's registration stays. False
/// (nothing changed) when the line differs or the kernel refuses: unregister and register.
fn reform(epfd: c_int, fd: c_int, form: Form, to: Form, app_events: u32) -> bool {
    if form.vector() != to.vector() || form.shared() != to.shared() {
        return false;
    }
    let (sock_events, _, _) = socket_events(to, app_events);
    kernel_ctl(
        epfd,
        libc::EPOLL_CTL_MOD,
        fd,
        sock_events,
        TAG | fd as u32 as u64,
    ) == 0
}

/// What registration `form` asks of its kernel socket, for the application's `app_events`;
/// with its line, and whether that line is shared among connections.
fn socket_events(form: Form, app_events: u32) -> (u32, c_int, bool) {
    let excl = app_events & libc::EPOLLEXCLUSIVE as u32;
    match form {
        // Edge-triggered: the socket of a peer that has gone stays readable (EOF) for as long
        // as the application keeps the fd, and a level-triggered registration would wake
        // every wait at once. One event per change of the socket is all readiness needs: the
        // end it saw is remembered by the connection (`look_at_tcp`).
        // EPOLLOUT when the application asks for it: idle on the ring (one event when added),
        // it is what wakes a writer whose sends moved to the socket after a failover.
        Form::Ntb { vector, shared } => (
            (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32
                | (app_events & libc::EPOLLOUT as u32)
                | excl,
            vector,
            shared,
        ),
        // Edge-triggered too: a connected socket stays writable while the offer waits for its
        // answer, which rings the offer's line; one event per change of the socket settles it.
        Form::Pending { vector, shared } => (
            app_events & !libc::EPOLLONESHOT as u32 | libc::EPOLLET as u32,
            vector,
            shared,
        ),
    }
}

fn unregister(epfd: c_int, fd: c_int, form: Form) {
    kernel_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0);
    if form.shared() {
        drop_line(epfd, form.vector());
    } else {
        kernel_ctl(epfd, libc::EPOLL_CTL_DEL, form.vector(), 0, 0);
    }
}

impl Form {
    fn vector(self) -> c_int {
        match self {
            Form::Ntb { vector, .. } | Form::Pending { vector, .. } => vector,
        }
    }

    fn shared(self) -> bool {
        match self {
            Form::Ntb { shared, .. } | Form::Pending { shared, .. } => shared,
        }
    }
}

/// A registration whose doorbell line is `vector` left the set (`regs` no longer holds it).
/// The kernel keeps one registration per line and set, tagged with the fd that added it: if
/// another fd of the same connection (a dup) is still registered, it takes the line over;
/// otherwise the line goes. (Left behind under the departed fd's tag, the line would wake the
/// set without ever being emptied, or, deleted, leave the dup with no doorbell at all.)
fn release_vector(epfd: c_int, regs: &FdMap<c_int, Reg>, form: Form) {
    let vector = form.vector();
    if form.shared() {
        return drop_line(epfd, vector);
    }
    kernel_ctl(epfd, libc::EPOLL_CTL_DEL, vector, 0, 0);
    if let Some((other, r)) = regs.iter().find(|(_, r)| r.form.vector() == vector) {
        let excl = r.events & libc::EPOLLEXCLUSIVE as u32;
        kernel_ctl(
            epfd,
            libc::EPOLL_CTL_ADD,
            vector,
            libc::EPOLLIN as u32 | excl,
            TAG | *other as u32 as u64,
        );
    }
}

/// The form a tracked fd needs now, if it is one we evaluate (an NTB connection or a pending
/// offer); `None` leaves it to the kernel.
fn form_of(sock: &Sock) -> Option<Form> {
    if let Some(c) = sock.conn.get() {
        return Some(Form::Ntb {
            vector: c.vector_fd(),
            shared: c.shared_line(),
        });
    }
    let st = sock.state.lock().ok()?;
    if let State::Offered(Some(p)) = &*st {
        let t = global::get().transport().ok()?;
        return Some(Form::Pending {
            vector: t.pending_fd(p),
            shared: t.pending_shared(p),
        });
    }
    None
}

/// `epoll_ctl` on a tracked fd.
pub fn ctl(epfd: c_int, op: c_int, fd: c_int, event: Option<&libc::epoll_event>) -> Detour<c_int> {
    let Some(sock) = table::get(fd) else {
        return Detour::Bypass;
    };
    // A candidate of a late upgrade keeps the kernel's registration, recorded to move to the
    // NTB form at the pairing (`late`).
    if let Some(r) = crate::late::epoll_ctl(&sock, epfd, op, fd, event) {
        return Detour::Ours(r);
    }
    let set = {
        let Ok(mut all) = sets().lock() else {
            return Detour::Ours(Err(libc::EIO));
        };
        if let Some(n) = INVOLVED.get(epfd as usize) {
            n.fetch_or(A_SET, Relaxed);
        }
        all.entry(epfd)
            .or_insert_with(|| {
                Arc::new(Mutex::new(SetState {
                    nested: WATCHED.get(epfd as usize).is_some_and(|w| w.load(Relaxed)),
                    ..SetState::default()
                }))
            })
            .clone()
    };
    let Ok(mut regs) = set.lock() else {
        return Detour::Ours(Err(libc::EIO));
    };
    match op {
        libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD => {
            let Some(ev) = event else {
                return Detour::Ours(Err(libc::EFAULT));
            };
            let (events, data) = (ev.events, ev.u64);
            if op == libc::EPOLL_CTL_ADD && regs.contains_key(&fd) {
                return Detour::Ours(Err(libc::EEXIST));
            }
            // A new arming: epoll waits start their naps over (see `ops::Naps::resume`).
            ops::ARMINGS.fetch_add(1, Relaxed);
            if op == libc::EPOLL_CTL_MOD {
                let st = &mut *regs;
                match st.regs.get_mut(&fd) {
                    Some(r) => {
                        r.events = events;
                        r.data = data;
                        r.marks.set(marks::DISABLED, false);
                        r.reported = false;
                        if let Form::Pending { .. } = r.form {
                            let form = r.form;
                            if let Err(e) = register(epfd, fd, form, events) {
                                return Detour::Ours(Err(e));
                            }
                        }
                        // Armed here, as ADD does, before the look at readiness, unless no
                        // thread sleeps in this set and the next wait will arm it
                        // (`SetState::arm_later`): a thread may already sleep in this set,
                        // armed while the registration was a spent one-shot (skipped) or asked
                        // for other events, and the peer took the flag when it rang for what
                        // fired. Unarmed, the peer's next message or credit rang nothing and
                        // the sleeper woke by its nap (behaviour epoll_wakeups: 199 waits of
                        // 400 ended late).
                        if let Some(c) = sock.conn.get() {
                            r.interest = Some(interest(c, events));
                        }
                        st.add_cand(fd);
                        if !st.arm_later(fd) {
                            if let Some(c) = sock.conn.get() {
                                c.rearm(events & READ != 0, events & WRITE != 0);
                            }
                            wake_if_ready(&sock, events);
                        }
                        return Detour::Ours(Ok(0));
                    }
                    None => return Detour::Bypass, // registered with the kernel before we tracked it
                }
            }
            let Some(form) = form_of(&sock) else {
                return Detour::Bypass;
            };
            // Before our first tagged registration reaches the kernel: a thread already asleep
            // in this set's kernel wait may be woken by it, and must then know to strip our
            // events (`epoll_wait_any`); set after, it returned one to the application.
            IN_USE.store(true, Release);
            if let Err(e) = register(epfd, fd, form, events) {
                return Detour::Ours(Err(e));
            }
            let interest = sock.conn.get().map(|c| interest(c, events));
            count_reg(fd, true);
            if matches!(form, Form::Pending { .. }) {
                regs.pending.insert(fd);
            }
            regs.device |= !form.shared();
            regs.insert(
                fd,
                Reg {
                    sock,
                    events,
                    data,
                    last_activity: 0,
                    reported: false,
                    marks: marks::Marks::default(),
                    form,
                    interest,
                    cand: false,
                    to_arm: false,
                },
            );
            regs.add_cand(fd);
            if !regs.arm_later(fd) {
                if let Some(r) = regs.get(&fd) {
                    if let Some(c) = r.sock.conn.get() {
                        c.rearm(events & READ != 0, events & WRITE != 0);
                    }
                    wake_if_ready(&r.sock, events);
                }
            }
            Detour::Ours(Ok(0))
        }
        libc::EPOLL_CTL_DEL => match regs.remove(&fd) {
            Some(r) => {
                count_reg(fd, false);
                kernel_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0);
                release_vector(epfd, &regs, r.form);
                Detour::Ours(Ok(0))
            }
            None => Detour::Bypass,
        },
        _ => Detour::Ours(Err(libc::EINVAL)),
    }
}

/// A registration was added or changed (a one-shot re-armed): if it is ready now, wake the
/// threads that sleep in this set's kernel wait, as the kernel's `epoll_ctl` does. Nothing
/// else would: the peer rang (or not) before, and its line was emptied meanwhile.
fn wake_if_ready(sock: &Sock, events: u32) {
    if let Some(c) = sock.conn.get() {
        if to_epoll(c.readiness(), events) != 0 {
            c.kick_local();
        }
    }
}

/// An fd is being closed (called before the real close): it leaves every epoll set we track it
/// in, with its kernel registrations.
pub fn forget_fd(fd: c_int) {
    if !involves(fd) {
        return;
    }
    let Ok(all) = sets().lock() else { return };
    for (epfd, set) in all.iter() {
        if let Ok(mut regs) = set.lock() {
            if let Some(r) = regs.remove(&fd) {
                count_reg(fd, false);
                // The kernel drops a registration when its file closes, not its fd: a dup or a
                // forked child keeps the socket open, and the registration (tagged with this fd)
                // would go on reporting the socket's events here. The fd is still open.
                kernel_ctl(*epfd, libc::EPOLL_CTL_DEL, fd, 0, 0);
                // The doorbell line belongs to the connection, which may outlive this fd (dup).
                release_vector(*epfd, &regs, r.form);
            }
        }
    }
}

/// An epoll fd is being closed.
pub fn forget_set(epfd: c_int) {
    if !involves(epfd) {
        return;
    }
    let Ok(mut all) = sets().lock() else { return };
    if let Some(n) = INVOLVED.get(epfd as usize) {
        n.fetch_and(!A_SET, Relaxed);
    }
    if let Some(set) = all.remove(&epfd) {
        if let Ok(regs) = set.lock() {
            for fd in regs.keys() {
                count_reg(*fd, false);
            }
        }
    }
    if let Ok(mut h) = hubs().lock() {
        h.remove(&epfd);
    }
}

mod fdmap;
mod marks;
mod tallies;
mod waiting;
use waiting::to_epoll;
#[cfg_attr(any(test, loom), allow(unused_imports))]
pub use waiting::wait;
