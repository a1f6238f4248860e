//! Readiness: `poll` over a mix of NTB connections and kernel fds, and the bounded naps of a
//! readiness wait on armed connections (shared with `epoll`). Called by `hooks::poll`,
//! `select` and `epoll`; it never sleeps unboundedly on an armed connection.

use super::*;

/// The first kernel sleep of poll/select/epoll_wait while NTB connections are armed.
const LOST_WAKEUP_NAP: Duration = Duration::from_millis(20);

/// The longest: how long a doorbell the device lost can go unnoticed on a quiet connection.
const LONGEST_NAP: Duration = Duration::from_millis(320);

/// The bounded kernel sleeps of a readiness wait on armed NTB connections. A peer that published
/// just as we armed may not ring us (transport's `ARM_GRACE`); the first nap after arming is
/// short, so that costs at most [`LOST_WAKEUP_NAP`]. Once a nap has passed with nothing new, our
/// flags are long visible and any later publish rings: further naps only guard against a lost
/// doorbell, and double up to [`LONGEST_NAP`] so that a process with quiet connections sleeps
/// (a few wake-ups a second, not fifty). Anything that wakes the wait starts over.
pub(crate) struct Naps(Duration);

impl Naps {
    pub(crate) fn new() -> Naps {
        Naps(LOST_WAKEUP_NAP)
    }

    /// The next sleep, within `remaining` of the caller's own timeout (None = none).
    pub(crate) fn next(&self, remaining: Option<Duration>) -> Duration {
        remaining.map_or(self.0, |r| r.min(self.0))
    }

    /// The sleep ended with nothing to report: sleep longer next time.
    pub(crate) fn quiet(&mut self) {
        self.0 = (self.0 * 2).min(LONGEST_NAP);
    }

    /// Something happened: the next sleep after arming is short again.
    pub(crate) fn woke(&mut self) {
        self.0 = LOST_WAKEUP_NAP;
    }

    /// The naps of an `epoll_wait` by this thread: where its previous one left them, if no
    /// registration was added or changed since (in any set), else from the start. An app that
    /// waits with a short timeout (redis: 100 ms) would otherwise start over at every call.
    /// (epoll's registrations stay armed between calls; poll and select arm afresh each call
    /// and always start at [`LOST_WAKEUP_NAP`].)
    pub(crate) fn resume() -> Naps {
        let (armings, nap) = CARRIED.with(|c| c.get());
        if armings == ARMINGS.load(Relaxed) {
            Naps(nap)
        } else {
            Naps::new()
        }
    }

    /// The `epoll_wait` returns: keep where the naps are for this thread's next one.
    pub(crate) fn keep(&self) {
        CARRIED.with(|c| c.set((ARMINGS.load(Relaxed), self.0)));
    }
}

/// Bumped by every epoll registration of an NTB connection (a new arming): see [`Naps::resume`].
pub(crate) static ARMINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// `(ARMINGS, next nap)` when this thread's last `epoll_wait` returned.
    static CARRIED: std::cell::Cell<(u64, Duration)> =
        const { std::cell::Cell::new((u64::MAX, LOST_WAKEUP_NAP)) };
}

/// A tracked fd in a poll set: its entry and, if on the NTB path, its connection.
/// `poll` over a set with tracked fds. `timeout` None = forever.
pub fn poll(
    fds: &mut [libc::pollfd],
    timeout: Option<Duration>,
    real_poll: &dyn Fn(&mut [libc::pollfd], Option<Duration>) -> c_int,
) -> Detour<c_int> {
    if !table::any() || !fds.iter().any(|p| table::contains(p.fd)) {
        return Detour::Bypass;
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    // Which entries are NTB connections (or pending offers that may become one). Their
    // connections are borrowed from the entries below, not cloned: an `Arc` clone is a locked
    // instruction, and the first one after a send waits for the send's ring writes to land.
    let conns: Vec<Option<Arc<Sock>>> = fds
        .iter()
        .map(|p| {
            table::get(p.fd).filter(|s| {
                s.conn.get().is_some()
                    || matches!(
                        &*s.state.lock().expect("sock state"),
                        State::Offered(Some(_))
                    )
            })
        })
        .collect();
    // Server candidates of a late upgrade (`late`) answer their clients' late offers here too.
    // Pinned to look (no locked instruction); only a candidate's entry is counted.
    let cands: Vec<(c_int, Arc<Sock>)> = fds
        .iter()
        .filter_map(|p| {
            let s = table::pin(p.fd)?;
            crate::late::candidate(&s).then(|| (p.fd, s.to_arc()))
        })
        .collect();
    if conns.iter().all(|c| c.is_none()) {
        if cands.is_empty() {
            return Detour::Bypass;
        }
        return late_poll(fds, &cands, deadline, real_poll);
    }
    let g = global::get();
    let mut spin = g.transport().map(|t| t.settings().spin).unwrap_or_default();
    // Spinning on the CPU a peer needs only delays it (benches/results/same-cpu.md).
    if conns
        .iter()
        .flatten()
        .any(|s| s.conn.get().is_some_and(|c| c.shares_cpu_with_peer()))
    {
        spin = Duration::ZERO;
    }
    let t0 = Instant::now();
    let mut first = true;
    let mut naps = Naps::new();
    // The last sleep ran out its time: what the next look finds ready is late (see
    // `ShimState::woke_by_timer`).
    let mut timed_out = false;
    // Connections whose doorbell line, watched by an epoll registration too, ended the last
    // sleep: see the drain before the sleep below.
    let mut rung: Vec<Arc<Connection>> = Vec::new();
    loop {
        for (fd, s) in &cands {
            crate::late::look(s, *fd);
        }
        // 1. Readiness of our connections, and a non-blocking look at the kernel fds.
        let mut ready = 0;
        let mut ours_ready = 0;
        for (i, p) in fds.iter_mut().enumerate() {
            p.revents = 0;
            if let Some(s) = &conns[i] {
                let settled;
                let c = match s.conn.get() {
                    Some(c) => Some(&**c),
                    None => {
                        settled = settle_offer(s, p.fd, false, false).ok().flatten();
                        settled.as_deref()
                    }
                };
                if let Some(c) = c {
                    p.revents = revents(c, p.events);
                    ours_ready += usize::from(p.revents != 0);
                } else if p.events & libc::POLLOUT != 0 && reaching_empty(s) {
                    // Writable while its connection has reached no server and it holds no
                    // bytes yet: the request the application writes then reaches it (see
                    // `epoll::waiting::reaching_writable`).
                    p.revents = libc::POLLOUT;
                    ours_ready += 1;
                } else if s.conn.get().is_none()
                    && !matches!(&*s.state.lock().expect("sock state"), State::Offered(_))
                {
                    // Settled to TCP: the kernel answers for it below.
                    p.revents = -1;
                }
            } else {
                p.revents = -1;
            }
        }
        let mut kernel: Vec<libc::pollfd> = fds
            .iter()
            .filter(|p| p.revents == -1)
            .map(|p| libc::pollfd { revents: 0, ..*p })
            .collect();
        if !kernel.is_empty() {
            let r = real_poll(&mut kernel, Some(Duration::ZERO));
            if r < 0 {
                return Detour::Ours(Err(sys::errno()));
            }
        }
        let mut k = kernel.iter();
        for p in fds.iter_mut() {
            if p.revents == -1 {
                p.revents = k.next().map_or(0, |kp| kp.revents);
            }
            if p.revents != 0 {
                ready += 1;
            }
        }
        if std::mem::take(&mut timed_out) {
            g.woke_by_timer(ours_ready);
        }
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if ready > 0 || expired {
            return Detour::Ours(Ok(ready));
        }
        if t0.elapsed() < spin || first {
            first = false;
            std::hint::spin_loop();
            continue;
        }
        // A device's doorbell line that an epoll registration also watches is left to the epoll
        // set to empty (`Connection::disarm`): emptied at once, it could take the wake-up of a
        // thread asleep in that set. Left readable with no set waiting, it would end each sleep
        // here at once: a line that woke us for nothing of ours is emptied.
        for c in rung.drain(..) {
            c.ack();
        }
        // 2. Sleep in the kernel: our connections' doorbell lines and TCP sockets, plus the
        //    application's other fds.
        let mut set: Vec<libc::pollfd> = Vec::with_capacity(fds.len() * 2);
        let mut armed: Vec<(Arc<Connection>, bool, bool)> = Vec::new();
        // Where each armed connection's TCP socket sits in `set`, if it is watched.
        let mut tcp_at: Vec<Option<usize>> = Vec::new();
        // Where each armed connection's doorbell line sits in `set`.
        let mut line_at: Vec<usize> = Vec::new();
        for (i, p) in fds.iter().enumerate() {
            match &conns[i] {
                Some(s) => {
                    if let Some(c) = s.conn.get() {
                        let want_r =
                            p.events & (libc::POLLIN | libc::POLLRDNORM | libc::POLLRDHUP) != 0;
                        let want_w = p.events & (libc::POLLOUT | libc::POLLWRNORM) != 0;
                        // Before arming: a ring after the arming must reach what we sleep on.
                        let line = c.sleep_fd();
                        let already = c.arm(want_r, want_w);
                        armed.push((c.clone(), want_r, want_w));
                        if already {
                            set.clear();
                            break;
                        }
                        line_at.push(set.len());
                        set.push(libc::pollfd {
                            fd: line,
                            events: libc::POLLIN,
                            revents: 0,
                        });
                        // A socket that has ended stays readable (EOF): watching it would end
                        // every sleep at once, and readiness already knows.
                        if c.tcp_ended() {
                            tcp_at.push(None);
                        } else {
                            tcp_at.push(Some(set.len()));
                            // After a failover the sends go to the socket: room there is
                            // what a writer waits for.
                            let out = if want_w && c.sending_on_tcp() {
                                libc::POLLOUT
                            } else {
                                0
                            };
                            set.push(libc::pollfd {
                                fd: c.tcp_fd(),
                                events: libc::POLLIN | libc::POLLRDHUP | out,
                                revents: 0,
                            });
                        }
                    } else {
                        // A pending offer: the answer rings our doorbell line; the kernel
                        // reports the TCP connect.
                        if let Ok(mut st) = s.state.lock() {
                            if let State::Offered(Some(pend)) = &mut *st {
                                if let Ok(t) = g.transport() {
                                    set.push(libc::pollfd {
                                        fd: t.pending_sleep_fd(pend),
                                        events: libc::POLLIN,
                                        revents: 0,
                                    });
                                }
                            }
                        }
                        set.push(libc::pollfd {
                            fd: p.fd,
                            events: libc::POLLOUT,
                            revents: 0,
                        });
                    }
                }
                None => set.push(libc::pollfd { revents: 0, ..*p }),
            }
        }
        if !set.is_empty() && !armed.is_empty() {
            // A peer may have published just as we armed (see `transport::ARM_GRACE`).
            let g0 = Instant::now();
            while g0.elapsed() < transport::ARM_GRACE {
                if armed.iter().any(|(c, r, w)| c.ready_for(*r, *w)) {
                    set.clear();
                    break;
                }
                std::hint::spin_loop();
            }
        }
        if !set.is_empty() {
            // Bounded while connections are armed: an interrupt lost to a race costs at most one
            // nap, never a hang (see `Naps`).
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let r = real_poll(&mut set, Some(naps.next(remaining)));
            let err = sys::errno();
            // The wake set's edges are taken; what they announced is re-checked above.
            transport::wake_consume();
            if r == 0 {
                naps.quiet();
                timed_out = true;
                // Quiet: idle rings give their pages back.
                g.idle_sweep();
            } else {
                naps.woke();
            }
            for (c, r, w) in &armed {
                c.disarm(*r, *w);
            }
            // Every armed connection put its TCP socket in the set unless it had ended (an
            // already-ready one emptied the set, and we did not sleep).
            for ((c, _, _), at) in armed.iter().zip(&line_at) {
                if r > 0 && set[*at].revents != 0 && c.registered() && !c.shared_line() {
                    rung.push(c.clone());
                }
            }
            for ((c, _, _), at) in armed.iter().zip(&tcp_at) {
                if at.is_some_and(|at| set[at].revents != 0) {
                    // The peer's kernel spoke (closed, reset): readiness must look now.
                    c.look_at_tcp();
                }
            }
            if r < 0 && err == libc::EINTR {
                return Detour::Ours(Err(libc::EINTR));
            }
        } else {
            for (c, r, w) in &armed {
                c.disarm(*r, *w);
            }
        }
    }
}

/// `poll` over kernel fds only, some of them server candidates of a late upgrade: the kernel's
/// wait, in naps of at most `late::LOOK_NAP`, with a look for the candidates' late offers
/// before each. Once one moves onto the ring, the rest of the wait is `poll`'s own.
fn late_poll(
    fds: &mut [libc::pollfd],
    cands: &[(c_int, Arc<Sock>)],
    deadline: Option<Instant>,
    real_poll: &dyn Fn(&mut [libc::pollfd], Option<Duration>) -> c_int,
) -> Detour<c_int> {
    loop {
        for (fd, s) in cands {
            crate::late::look(s, *fd);
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if cands.iter().any(|(_, s)| s.conn.get().is_some()) {
            return poll(fds, remaining, real_poll);
        }
        // Every candidate that still answers sleeps on this process's late bell: the kernel's
        // wait over the fds and the bell, with no nap.
        let bells: Vec<Option<c_int>> = cands
            .iter()
            .filter(|(_, s)| crate::late::answers(s))
            .map(|(fd, s)| crate::late::bell(s, *fd))
            .collect();
        if let Some(Some(bell)) = bells
            .first()
            .copied()
            .filter(|b| bells.iter().all(|x| x == b))
        {
            let mut all: Vec<libc::pollfd> = fds.to_vec();
            all.push(libc::pollfd {
                fd: bell,
                events: libc::POLLIN,
                revents: 0,
            });
            let mut r = real_poll(&mut all, remaining);
            if r < 0 {
                return Detour::Ours(Err(sys::errno()));
            }
            for (p, q) in fds.iter_mut().zip(&all) {
                p.revents = q.revents;
            }
            if all[fds.len()].revents != 0 {
                crate::late::ring();
                r -= 1;
            }
            if r != 0 || remaining.is_some_and(|r| r.is_zero()) {
                return Detour::Ours(Ok(r));
            }
            continue;
        }
        let nap = remaining.map_or(crate::late::LOOK_NAP, |r| r.min(crate::late::LOOK_NAP));
        let live = cands.iter().any(|(_, s)| crate::late::answers(s));
        // Candidacies that ended leave the kernel's wait, whole.
        let r = real_poll(fds, if live { Some(nap) } else { remaining });
        if r != 0 || !live || remaining.is_some_and(|r| r <= nap) {
            return Detour::Ours(if r < 0 { Err(sys::errno()) } else { Ok(r) });
        }
    }
}

pub(super) fn revents(c: &Connection, events: i16) -> i16 {
    let r = c.readiness();
    let mut out = 0i16;
    if r.readable {
        out |= events & (libc::POLLIN | libc::POLLRDNORM);
    }
    if r.writable {
        out |= events & (libc::POLLOUT | libc::POLLWRNORM);
    }
    if r.rdhup {
        out |= events & libc::POLLRDHUP;
    }
    if r.hup {
        out |= libc::POLLHUP;
    }
    if r.error {
        out |= libc::POLLERR;
    }
    out
}

/// A pending offer whose connection has reached no server (`Transport::reaching`), holding no
/// bytes yet. Never waits for a thread that is settling it.
fn reaching_empty(s: &Sock) -> bool {
    let Ok(t) = global::get().transport() else {
        return false;
    };
    s.state
        .try_lock()
        .is_ok_and(|st| matches!(&*st, State::Offered(Some(p)) if t.reaching(p)))
        && s.early.try_lock().is_ok_and(|e| e.is_empty())
}
