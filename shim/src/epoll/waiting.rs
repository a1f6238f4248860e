//! `epoll_wait` over a set with NTB registrations: settling pending ones, harvesting readiness from
//! the rings, and arming before a sleep in the kernel. The registrations themselves are the parent
//! module's. Called by the `epoll_wait` hooks. It must never sleep in the kernel without arming the
//! rings it answers for first, nor report a one-shot registration that fired and was not re-armed.

use std::hash::BuildHasherDefault;

use super::*;

/// Of `max` events a call may return, how many the kernel's fds in the set always get room for:
/// an eighth (at least one, once `max` is 2 or more). Without it, ring connections ready enough
/// to fill the caller's buffer on every call starved its kernel fds: nginx at 8,000 connections
/// accepted one connection per `epoll_wait` whose rings left room, and clients waiting for it
/// gave up (`NoAnswer`; behaviour `epoll_kernel_share`). Every harvest of a call stops there;
/// room the kernel does not use is left empty for that call (the ring connections held back
/// are reported by the next), and a slot taken by one of our own events (a line that rang, a
/// ring connection's socket) is that event's, which is then consumed, so the next call has it.
fn kernel_share(max: usize) -> usize {
    if max < 2 {
        0
    } else {
        (max / 8).max(1)
    }
}

pub(super) fn to_epoll(r: transport::Readiness, interest: u32) -> u32 {
    let mut out = 0u32;
    if r.readable {
        out |= interest & (libc::EPOLLIN | libc::EPOLLRDNORM) as u32;
    }
    if r.writable {
        out |= interest & WRITE;
    }
    if r.rdhup {
        out |= interest & libc::EPOLLRDHUP as u32;
    }
    if r.hup {
        out |= libc::EPOLLHUP as u32;
    }
    if r.error {
        out |= libc::EPOLLERR as u32;
    }
    out
}

/// Move pending registrations whose offer has settled to their final form.
/// Only those that may have news are looked at: their answer arrived or their time is up
/// (`Transport::pending_news`, one look for all), or their socket had an event (`poked`). A
/// client with thousands of connects waiting for their answers pays per answer, not per
/// waiting connect and wait.
fn settle(epfd: c_int, regs: &mut SetState, poked: &[c_int]) {
    if regs.pending.is_empty() {
        return;
    }
    let SetState {
        regs: all, pending, ..
    } = &mut *regs;
    pending.retain(|fd| {
        all.get(fd)
            .is_some_and(|r| matches!(r.form, Form::Pending { .. }))
    });
    let pending: Vec<c_int> = pending.iter().copied().collect();
    if pending.is_empty() {
        return;
    }
    let news: FdSet = match global::get().transport() {
        Ok(t) => {
            let guards: Vec<_> = pending
                .iter()
                .map(|fd| regs[fd].sock.state.lock().ok())
                .collect();
            let offers: Vec<Option<&transport::Pending>> = guards
                .iter()
                .map(|g| match g.as_deref() {
                    Some(State::Offered(Some(p))) => Some(&**p),
                    _ => None,
                })
                .collect();
            let known: Vec<&transport::Pending> = offers.iter().flatten().copied().collect();
            let mut answers = t.pending_news(&known).into_iter();
            let flags: Vec<bool> = offers
                .iter()
                .map(|o| o.is_none() || answers.next().unwrap_or(true))
                .collect();
            drop(guards);
            pending
                .iter()
                .zip(flags)
                .filter(|(fd, news)| *news || poked.contains(fd))
                .map(|(fd, _)| *fd)
                .collect()
        }
        Err(_) => pending.into_iter().collect(),
    };
    let mut to_kernel = Vec::new();
    let mut to_ntb = Vec::new();
    for &fd in &news {
        let Some(r) = regs.regs.get_mut(&fd) else {
            continue;
        };
        let fd = &fd;
        let Form::Pending { .. } = r.form else {
            continue;
        };
        // A non-blocking look: the answer may be there now.
        let _ = ops::data_path(*fd, true);
        let now = form_of(&r.sock);
        if now == Some(r.form) {
            continue;
        }
        let reformed = now.is_some_and(|f| reform(epfd, *fd, r.form, f, r.events));
        if !reformed {
            unregister(epfd, *fd, r.form);
        }
        let made = |f| match reformed {
            true => Ok(()),
            false => register(epfd, *fd, f, r.events),
        };
        match now.map(|f| (f, made(f))) {
            Some((f, Ok(()))) => {
                r.form = f;
                to_ntb.push(*fd);
                if let Some(c) = r.sock.conn.get() {
                    ops::ARMINGS.fetch_add(1, Relaxed);
                    r.interest = Some(interest(c, r.events));
                    c.rearm(r.events & READ != 0, r.events & WRITE != 0);
                }
            }
            _ => to_kernel.push(*fd),
        }
    }
    for fd in to_ntb {
        regs.add_cand(fd);
    }
    for fd in to_kernel {
        // Settled on TCP: from now on the kernel socket, with the application's own events.
        if let Some(r) = regs.remove(&fd) {
            count_reg(fd, false);
            kernel_ctl(epfd, libc::EPOLL_CTL_ADD, fd, r.events, r.data);
        }
    }
}

/// Pending offers whose connection has reached no server (`Transport::reaching`: its
/// listener's queue overflowed) and that hold no bytes yet: writable, as their kernel socket is,
/// so that an event loop writes its request, whose first bytes then reach the server on TCP
/// (`ops::settle_offer`). Until then a pending offer reports nothing (its answer settles it),
/// and such an offer's answer needs those bytes first. Edge-triggered registrations hear it once
/// per spell; none once the bytes are held.
fn reaching_writable(
    st: &mut SetState,
    out: &mut Vec<libc::epoll_event>,
    max: usize,
    seen: &mut FdSet,
) {
    if st.pending.is_empty() {
        return;
    }
    let Ok(t) = global::get().transport() else {
        return;
    };
    let SetState { regs, pending, .. } = st;
    for fd in pending.iter() {
        let Some(r) = regs.get_mut(fd) else {
            continue;
        };
        if r.marks.has(marks::DISABLED) || r.events & libc::EPOLLOUT as u32 == 0 {
            continue;
        }
        // Never waits: a thread settling the offer holds its state.
        let reaching = r
            .sock
            .state
            .try_lock()
            .is_ok_and(|st| matches!(&*st, State::Offered(Some(p)) if t.reaching(p)))
            && r.sock.early.try_lock().is_ok_and(|e| e.is_empty());
        if !reaching {
            r.marks.set(marks::TOLD_REACHING, false);
            continue;
        }
        let edge = r.events & libc::EPOLLET as u32 != 0;
        if (edge && r.marks.has(marks::TOLD_REACHING)) || out.len() >= max || seen.contains(fd) {
            continue;
        }
        r.marks.set(marks::TOLD_REACHING, true);
        if r.events & libc::EPOLLONESHOT as u32 != 0 {
            r.marks.set(marks::DISABLED, true);
        }
        out.push(libc::epoll_event {
            events: libc::EPOLLOUT as u32,
            u64: r.data,
        });
        seen.insert(*fd);
    }
}

/// Our registrations that are ready now, as (events, data); edge and one-shot state updated.
/// Evaluates every registration if `full`, else the candidates and the registrations served
/// last (`SetState::hot`); leaves as
/// candidates for the next wait the level-triggered ones that are ready and those it had no
/// room to report. `seen`: the registrations this call reported already (each once per call).
fn harvest(
    st: &mut SetState,
    out: &mut Vec<libc::epoll_event>,
    max: usize,
    seen: &mut FdSet,
    full: bool,
    now: Instant,
) {
    let mut fds = std::mem::take(&mut st.scratch);
    fds.clear();
    if full {
        st.full_at = Some(now);
        st.full_due = false;
        st.cand.clear();
        fds.extend(st.regs.keys().copied());
        // Listed again as they are looked at (a registration that went leaves no word).
        st.tallies.relist();
        st.regs.values_mut().for_each(|r| {
            r.marks.set(marks::TALLIED, false);
            r.cand = false;
        });
    } else {
        // The candidates and the registrations served last (see `SetState::hot`), each once.
        for i in 0..st.hot.len() {
            let fd = st.hot[i];
            st.add_cand(fd);
        }
        std::mem::swap(&mut fds, &mut st.cand);
    }
    for &fd in &fds {
        let Some(r) = st.regs.get_mut(&fd) else {
            continue;
        };
        if !full {
            // Listed twice (a registration that went left its number, and one came back on
            // it): looked at once.
            if !r.cand {
                continue;
            }
            r.cand = false;
        }
        if !r.marks.has(marks::TALLIED) {
            if let Some(c) = r.sock.conn.get() {
                // A word that moved since the last listing is a ring the listing takes in
                // untold: its peer took the registration's flag, so it is armed again before
                // the next sleep (unarmed, its next message rang nothing and waited for a nap).
                if st.tallies.list(fd, c) && !r.to_arm {
                    r.to_arm = true;
                    st.to_arm.push(fd);
                }
                r.marks.set(marks::TALLIED, true);
            }
        }
        if r.marks.has(marks::DISABLED) {
            continue;
        }
        if out.len() >= max || seen.contains(&fd) {
            r.cand = true;
            st.cand.push(fd);
            continue;
        }
        let Some(c) = r.sock.conn.get() else { continue };
        // Activity before readiness: what the peer does between the two reads shows as a new
        // edge next time, instead of being taken for already reported. Only edge-triggered
        // registrations use it (level-triggered ones report readiness alone).
        let edge = r.events & libc::EPOLLET as u32 != 0;
        let a = if edge { c.activity() } else { 0 };
        let ev = to_epoll(c.readiness(), r.events);
        if ev == 0 {
            continue;
        }
        if edge {
            // Readiness itself may take news in (a failed-over connection's records read off
            // its TCP socket, whose kernel event then never comes): that is an edge too. The
            // activity before it is kept, so the next check reports once more at most.
            if r.reported && r.last_activity == a && c.activity() == a {
                continue;
            }
            r.last_activity = a;
            r.reported = true;
        } else {
            r.cand = true;
            st.cand.push(fd);
        }
        if r.events & libc::EPOLLONESHOT as u32 != 0 {
            // Spent until EPOLL_CTL_MOD: it asks for no ring.
            r.marks.set(marks::DISABLED, true);
            r.interest = None;
        }
        out.push(libc::epoll_event {
            events: ev,
            u64: r.data,
        });
        seen.insert(fd);
        if let Some(i) = st.hot.iter().position(|&h| h == fd) {
            st.hot.remove(i);
        } else if st.hot.len() >= HOT {
            st.hot.remove(0);
        }
        st.hot.push(fd);
    }
    // Forget the registrations that went.
    if st.hot.iter().any(|fd| !st.regs.contains_key(fd)) {
        let regs = &st.regs;
        st.hot.retain(|fd| regs.contains_key(fd));
    }
    st.scratch = fds;
}

/// Before a sleep: ask the peers to ring (see `Connection::rearm`) for every registration if
/// that is due (a shared line rang, or `FULL_EVERY` passed), else only for the candidates
/// (flags the peers took since are those of connections that rang: the line said so) and the
/// registrations added or changed since the last sleep (`SetState::arm_later`). True if
/// anything was armed (the caller then re-checks for `ARM_GRACE`).
fn arm(st: &mut SetState, now: Instant) -> bool {
    let all = st.arm_all_now(now);
    if all {
        st.arm_due = false;
        st.armed_at = Some(now);
    }
    let mut later = std::mem::take(&mut st.to_arm);
    let mut any = false;
    let mut one = |r: &Reg| {
        if r.marks.has(marks::DISABLED) {
            return;
        }
        if let Some(c) = r.sock.conn.get() {
            c.rearm(r.events & READ != 0, r.events & WRITE != 0);
            any = true;
        }
    };
    if all {
        st.regs.values().for_each(&mut one);
    } else {
        // Each once (the flags say which lists hold a registration): the candidates, those
        // added or changed, and those served last: a peer that rang for one took its flag,
        // and a look that found its next message before any ring (a spinning wait) tells
        // nothing about it. Without them, a connection whose flag went unnoticed stayed
        // unarmed, and its next request waited for a nap (20 ms) until the next full arming
        // (idle-fanout.md).
        let regs = &st.regs;
        let hot = st.hot.iter().filter_map(|fd| regs.get(fd));
        let later_only = later
            .iter()
            .filter_map(|fd| regs.get(fd))
            .filter(|r| !r.cand);
        st.cand
            .iter()
            .filter_map(|fd| regs.get(fd))
            .chain(later_only)
            .chain(hot.filter(|r| !r.cand && !r.to_arm))
            .for_each(one);
    }
    // Armed only now: what their peers published before is looked for in the re-check.
    for fd in later.drain(..) {
        if let Some(r) = st.regs.get_mut(&fd) {
            r.to_arm = false;
        }
        st.add_cand(fd);
    }
    st.to_arm = later;
    any
}

/// The most events one [`wait`] returns. Its buffers are kept per thread with room for as many
/// events as it returns, twice (the kernel's and ours, 12 bytes an event each), and some
/// applications ask for far more than they can get at once: wrk asks for 3 events per
/// connection (144 bytes a connection at 2,000; benches/results/heap-session17.md). What is
/// ready beyond it is left for the next call, as the kernel leaves what does not fit; nginx
/// asks for 512.
const WAIT_MAX: usize = 1024;

/// The buffers of one [`wait`] (the kernel's events, ours to return), kept by each thread between
/// calls: made anew per call, a 512-event buffer zeroed and another allocated, they were a third
/// of an nginx worker's instructions per keep-alive request (callgrind: 6,400 of ~20,000 in
/// memset alone). A wait nested in a signal handler finds them taken and makes its own.
struct Bufs {
    kbuf: Vec<libc::epoll_event>,
    out: Vec<libc::epoll_event>,
    /// Our fds already reported by the current round of the call (each at most once per
    /// call, as the kernel does).
    seen: FdSet,
}

type Kept = (Vec<libc::epoll_event>, Vec<libc::epoll_event>, FdSet);

thread_local! {
    static BUFS: std::cell::Cell<Kept> = const {
        std::cell::Cell::new((Vec::new(), Vec::new(), FdSet::with_hasher(BuildHasherDefault::new())))
    };
}

impl Bufs {
    /// This thread's buffers, with room for `max` events each.
    fn take(max: usize) -> Bufs {
        let (mut kbuf, mut out, seen) = BUFS.try_with(|b| b.take()).unwrap_or_default();
        if kbuf.len() < max {
            kbuf.resize(max, libc::epoll_event { events: 0, u64: 0 });
        }
        out.clear();
        out.reserve(max);
        Bufs { kbuf, out, seen }
    }
}

impl Drop for Bufs {
    fn drop(&mut self) {
        let bufs = (
            std::mem::take(&mut self.kbuf),
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.seen),
        );
        let _ = BUFS.try_with(|b| b.set(bufs));
    }
}

/// `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on a set with NTB registrations. `real_wait`
/// calls the kernel with a timeout (None = forever).
pub fn wait(
    epfd: c_int,
    events: &mut [libc::epoll_event],
    timeout: Option<Duration>,
    real_wait: &dyn Fn(&mut [libc::epoll_event], Option<Duration>) -> c_int,
) -> Detour<c_int> {
    let Some(set) = set_of(epfd) else {
        return Detour::Bypass;
    };
    if events.is_empty() {
        return Detour::Ours(Err(libc::EINVAL));
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut spin = global::get()
        .transport()
        .map(|t| t.settings().spin)
        .unwrap_or_default();
    // Looked at once per call, on the first pass below.
    let mut cpu_checked = spin.is_zero();
    let t0 = Instant::now();
    let max = events.len().min(WAIT_MAX);
    let ntb_max = max - kernel_share(max);
    let mut bufs = Bufs::take(max);
    let Bufs { kbuf, out, seen } = &mut bufs;
    let mut naps = ops::Naps::resume();
    // The last sleep ran out its time: what the next look finds ready is late (see
    // `ShimState::woke_by_timer`).
    let mut timed_out = false;
    // The spinning looks so far, and how often they yield (see the end of the loop).
    let (mut spins, mut yield_every) = (0u32, 1u32);
    loop {
        out.clear();
        if !seen.is_empty() {
            seen.clear();
        }
        let spin_phase;
        // Counted in the set's sleepers for the kernel wait below.
        let mut asleep = false;
        {
            let Ok(mut regs) = set.lock() else {
                return Detour::Ours(Err(libc::EIO));
            };
            if regs.is_empty() {
                drop(regs);
                return Detour::Bypass;
            }
            // Spinning on the CPU a peer needs only delays it (benches/results/same-cpu.md).
            // (A look at a few registrations: the peers of one application tend to share.)
            if !cpu_checked {
                cpu_checked = true;
                if regs
                    .values()
                    .take(16)
                    .any(|r| r.sock.conn.get().is_some_and(|c| c.shares_cpu_with_peer()))
                {
                    spin = Duration::ZERO;
                }
            }
            settle(epfd, &mut regs, &[]);
            // One look at the clock per round (a spinning wait makes many rounds).
            let now = Instant::now();
            let full = regs.full_now(now);
            harvest(&mut regs, out, ntb_max, seen, full, now);
            reaching_writable(&mut regs, out, ntb_max, seen);
            if std::mem::take(&mut timed_out) {
                global::get().woke_by_timer(out.len());
            }
            spin_phase = out.is_empty() && now - t0 < spin;
            let full = regs.arm_all_now(now);
            let sleep_next = out.is_empty() && !spin_phase;
            if sleep_next && arm(&mut regs, now) {
                // Armed: re-check for a moment, so a peer that published just before it could
                // see our flag is not missed (see `transport::ARM_GRACE`). What changed while
                // the flags were down is looked for once in every registration armed.
                let g0 = Instant::now();
                let mut first = full;
                loop {
                    harvest(&mut regs, out, ntb_max, seen, first, g0);
                    first = false;
                    if !out.is_empty() || g0.elapsed() >= transport::ARM_GRACE {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            // Counted before the lock goes: a registration added or changed from now on is
            // armed at once (`SetState::arm_later`).
            if sleep_next && out.is_empty() {
                regs.sleepers += 1;
                regs.slept = true;
                asleep = true;
            }
        }
        let ready_now = !out.is_empty();
        if ready_now {
            naps.woke();
        }
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        // Spinning only for the spin time: past it, the kernel sleeps even with nothing to arm
        // (one-shot registrations waiting to be re-armed, offers waiting for their answer, which
        // wake us through their own kernel registrations).
        let spinning = !ready_now && spin_phase && !expired;
        // The kernel's part: at once if we have something (or are still spinning), else block.
        let wait_for = if ready_now || spinning || expired {
            Duration::ZERO
        } else {
            // Bounded while our connections are armed: an interrupt lost to a race costs at
            // most one nap, never a hang (see `ops::Naps`).
            naps.next(deadline.map(|d| d.saturating_duration_since(Instant::now())))
        };
        let room = max - out.len();
        let n = if room > 0 {
            real_wait(&mut kbuf[..room], Some(wait_for))
        } else {
            0
        };
        let err = sys::errno();
        if std::mem::take(&mut asleep) {
            if let Ok(mut regs) = set.lock() {
                regs.sleepers -= 1;
            }
        }
        if n == 0 && !wait_for.is_zero() {
            naps.quiet();
        }
        // The registrations stay armed (`rearm`): an epoll set inside another one must still
        // be woken while nobody waits on it directly. Only the doorbell lines that fired are
        // emptied (below): a read of every armed line after every sleep cost a quiet server a
        // system call per connection per nap.
        if n == 0 && !wait_for.is_zero() {
            // A nap ran out: look at everything (a wake-up may have been lost).
            timed_out = true;
            if let Ok(mut regs) = set.lock() {
                regs.full_due = true;
            }
        }
        if n == 0 && !wait_for.is_zero() {
            // Quiet: idle rings give their pages back (outside the set's lock).
            global::get().idle_sweep();
        }
        if n < 0 {
            if err == libc::EINTR && out.is_empty() {
                naps.keep();
                return Detour::Ours(Err(libc::EINTR));
            }
        } else {
            let mut poked = false;
            let mut rang = false;
            let mut poked_fds = Vec::new();
            for ev in &kbuf[..n as usize] {
                let data = ev.u64;
                if data & TAG_MASK == LINE_TAG {
                    take_lines(epfd);
                    poked = true; // re-evaluated below
                    rang = true;
                } else if data & TAG_MASK == TAG {
                    poked = true; // one of ours moved: re-evaluated below
                    poked_fds.push((data & 0xFFFF_FFFF) as c_int);
                } else {
                    out.push(*ev);
                }
            }
            if poked {
                naps.woke();
                if let Ok(mut regs) = set.lock() {
                    // Empty the doorbell lines that fired, so this set (and a set that holds
                    // it) stops looking readable to the kernel once the ring is drained.
                    for fd in &poked_fds {
                        if let Some(c) = regs.get(fd).and_then(|r| r.sock.conn.get()) {
                            c.ack();
                            // The event may be the TCP socket's (the peer's kernel closed it):
                            // readiness looks at it now.
                            c.look_at_tcp();
                        }
                    }
                    for fd in &poked_fds {
                        regs.add_cand(*fd);
                    }
                    if rang && !regs.told_rings() {
                        // A peer rang for some of them, and took their flags; which, neither
                        // the line nor the tally words say.
                        regs.full_due = true;
                        regs.arm_due = true;
                    }
                    settle(epfd, &mut regs, &poked_fds);
                    let now = Instant::now();
                    let full = regs.full_now(now);
                    harvest(&mut regs, out, ntb_max, seen, full, now);
                    reaching_writable(&mut regs, out, ntb_max, seen);
                }
            }
        }
        if !out.is_empty() || expired {
            let k = out.len().min(max);
            events[..k].copy_from_slice(&out[..k]);
            naps.keep();
            return Detour::Ours(Ok(k as c_int));
        }
        if spinning {
            // A spinning wait gives its CPU to whatever else is runnable there (the peer it
            // waits for, on a machine with fewer CPUs than busy processes) between its looks;
            // when a yield comes back at once (nothing else wanted the CPU), only every
            // `YIELD_SPARSE`th look, so that on a free CPU the spin stays a spin.
            spins += 1;
            if spins % yield_every == 0 {
                let t = Instant::now();
                std::thread::yield_now();
                yield_every = if t.elapsed() < YIELD_RAN_NOTHING {
                    YIELD_SPARSE
                } else {
                    1
                };
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// A yield that came back sooner than this ran nothing else (a system call and back).
const YIELD_RAN_NOTHING: Duration = Duration::from_micros(3);
/// Looks between yields of a spinning wait whose last yield ran nothing else.
const YIELD_SPARSE: u32 = 16;
