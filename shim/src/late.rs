//! Late upgrade of a flagged connection made while the NTB link was down (PROTOCOL.md §6, *Late
//! upgrade*): such a connection is a *candidate*. Its application's kernel data calls pass a
//! gate, each a non-blocking call inside it (a blocking one waits in `poll` outside), so that
//! the plain byte counts (`Sock::tcp_tx`, `Sock::tcp_rx`) are exact whenever the gate is closed
//! and no byte is read as plain once the peer may be writing records. With the gate closed the
//! client offers the late upgrade (at a blocking data call, once the link is up and its hold
//! has passed; from a non-blocking call or a readiness check without waiting for the answer,
//! `nowait`) and the server answers it (at any data call, while one waits, and at readiness
//! checks: poll and select through `ops::poll`, `epoll_wait` through `look_set`); the
//! connection then goes on as an NTB connection, its epoll registrations (kept in the kernel's
//! form and recorded here meanwhile) moved to the NTB form. Called by the data hooks for a
//! candidate's entry (`ops::DataPath::Late`), by readiness and `epoll_ctl`, and by `shutdown`,
//! `sendfile`, `splice` and `fork`, which end the candidacy (not carried yet). It never writes
//! a byte on the socket the application did not send.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use libc::c_int;
use transport::{Connection, Reason};

use crate::config::{LogLevel, Role};
use crate::global;
use crate::sock::{Sock, State};
use crate::sys;

mod nowait;

/// First hold between a client's unanswered late offers (and after a lease failure).
const HOLD_MIN: Duration = Duration::from_millis(100);
/// Longest hold (a link that keeps flapping).
const HOLD_MAX: Duration = Duration::from_secs(3);
/// A try within this long of the last one doubles the hold.
const FLAP_WINDOW: Duration = Duration::from_secs(2);
/// Fruitless tries (a late offer unanswered, or no listener to offer to) after which a client
/// gives up: a plain server, or one that never looks (busy elsewhere, or an image that exec'd
/// and forgot the candidate).
const TRIES_MAX: u32 = 5;
/// How often a server looks for a late offer of its candidate.
const LOOK_EVERY: Duration = Duration::from_millis(10);
/// A waiting call's naps: the first, and the longest while the link is up (a server must look
/// well within the client's patience, 400 ms) and while it is down.
const NAP_MIN: Duration = Duration::from_millis(20);
const NAP_UP: Duration = Duration::from_millis(100);
const NAP_DOWN: Duration = Duration::from_millis(320);

/// A candidate's late-upgrade state (`Sock::late`).
pub struct Late {
    /// Readers: one non-blocking kernel data call of the application. Writer: the pairing, or
    /// the end of the candidacy.
    gate: RwLock<()>,
    /// The candidacy ended: calls go to the kernel as for any fallback.
    over: AtomicBool,
    tries: Mutex<Tries>,
    /// The application's epoll registrations of the socket, kept in the kernel's form while
    /// it is a candidate and moved to the NTB form at the pairing: (set, fd, events, data).
    regs: Mutex<Vec<(c_int, c_int, u32, u64)>>,
    /// A server candidate that sleeps on its process's late bell: registered in `BELLED`,
    /// after a look that bypassed the 10 ms pace (an offer posted just before the bell was
    /// published rang nothing).
    belled: AtomicBool,
    /// A client's late offer posted from a non-blocking call, waiting for its answer (`nowait`).
    pending: Mutex<Option<transport::LateOffer>>,
    /// What the application sent meanwhile (held, up to `EARLY_MAX`; `nowait`).
    held: Mutex<Vec<u8>>,
}

/// Server candidates (fds) that may sleep on this process's late bell. Whoever wakes on the
/// bell looks for the late offers of all of them (`ring`): a ring wakes every sleeper only
/// when each is already asleep, so the one that empties the line answers for the others.
static BELLED: Mutex<Vec<c_int>> = Mutex::new(Vec::new());

/// Epoll sets holding a registration of a server candidate: (set, fd, entry). Their
/// `epoll_wait` looks for the candidates' late offers between naps (`look_set`).
static WATCHED: Mutex<Vec<(c_int, c_int, Weak<Sock>)>> = Mutex::new(Vec::new());
/// `WATCHED` is not empty (the fast check of every `epoll_wait`).
static WATCHING: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Tries {
    /// No try (client) or look (server) before this.
    next: Option<Instant>,
    hold: Duration,
    last: Option<Instant>,
    unanswered: u32,
}

impl Late {
    pub fn new() -> Late {
        Late {
            gate: RwLock::new(()),
            over: AtomicBool::new(false),
            tries: Mutex::new(Tries::default()),
            regs: Mutex::new(Vec::new()),
            belled: AtomicBool::new(false),
            pending: Mutex::new(None),
            held: Mutex::new(Vec::new()),
        }
    }

    fn live(&self) -> bool {
        !self.over.load(Relaxed)
    }
}

/// Is `sock` a candidate whose candidacy goes on?
pub fn candidate(sock: &Sock) -> bool {
    sock.conn.get().is_none() && sock.late.get().is_some_and(|l| l.live())
}

/// End `sock`'s candidacy (a use the late upgrade does not carry yet): from now on its calls
/// go to the kernel as for any fallback. Waits for the calls inside the gate (non-blocking).
pub fn end(sock: &Sock) {
    end_on(sock, None)
}

/// [`end`], with `fd` the socket if known (a close, before the real one). A client's late
/// offer still pending is settled first, waiting (at most its patience): its held sends must
/// reach the peer, on TCP if it is withdrawn, or on the ring if the server took it (then the
/// connection has moved, and the caller finds it on the entry).
pub fn end_on(sock: &Sock, fd: Option<c_int>) {
    if let Some(l) = sock.late.get() {
        if l.live() {
            if sock.role == Role::Client && nowait::pending(l) {
                let fd = fd.unwrap_or_else(|| first_fd(sock, -1));
                if fd >= 0 && nowait::settle(sock, fd, l, true) {
                    move_registrations(l);
                }
            }
            let _g = l.gate.write().unwrap_or_else(|p| p.into_inner());
            l.over.store(true, Relaxed);
        }
    }
}

/// Does `sock` answer late offers at readiness checks (a server candidate)?
pub fn answers(sock: &Sock) -> bool {
    sock.role == Role::Server && candidate(sock)
}

/// How long a readiness wait (poll, select) over a server candidate sleeps between looks for
/// its client's late offer.
pub const LOOK_NAP: Duration = NAP_UP;

/// A readiness check over a server candidate: answer its client's late offer if one is posted
/// (a look at most every 10 ms). Never waits.
pub fn look(sock: &Sock, fd: c_int) {
    if let Some(l) = sock.late.get() {
        match sock.role {
            Role::Server => tick(sock, fd, l, false, false),
            // A client's offer is posted, or its answer taken, without waiting (settled
            // waiting if sends are held: the wait that follows may be for their answer).
            Role::Client => {
                if candidate(sock) && nowait::tick(sock, fd, l, true) {
                    move_registrations(l);
                }
            }
        }
    }
}

/// The late bell that wakes a wait over the server candidate `sock` (on `fd`), if its process
/// has one for the candidate's listener (`Transport::late_bell`): the wait then sleeps on the
/// bell and the socket with no nap, and calls [`ring`] when the bell woke it. The first time,
/// the candidate is registered for `ring` and looked at once more (an offer posted before the
/// bell was published rang nothing).
pub fn bell(sock: &Sock, fd: c_int) -> Option<c_int> {
    let late = sock.late.get()?;
    if sock.role != Role::Server || !late.live() {
        return None;
    }
    let bell = global::get().transport().ok()?.late_bell(sock.local)?;
    if !late.belled.swap(true, Relaxed) {
        if let Ok(mut b) = BELLED.lock() {
            if !b.contains(&fd) {
                b.push(fd);
            }
        }
        tick(sock, fd, late, false, true);
    }
    Some(bell)
}

/// This process's late bell woke a wait: empty it, then look for the late offers of every
/// server candidate that may sleep on it (clear, then look: a ring after the drain stays
/// latched for the next sleep). Candidates gone, moved or ended leave the list.
pub fn ring() {
    let Ok(t) = global::get().transport() else {
        return;
    };
    t.drain_late_bell();
    let fds: Vec<c_int> = match BELLED.lock() {
        Ok(b) => b.clone(),
        Err(_) => return,
    };
    let mut gone = Vec::new();
    for fd in fds {
        match crate::table::get(fd) {
            Some(s) if answers(&s) => {
                if let Some(l) = s.late.get() {
                    tick(&s, fd, l, false, true);
                }
            }
            _ => gone.push(fd),
        }
    }
    if !gone.is_empty() {
        if let Ok(mut b) = BELLED.lock() {
            b.retain(|f| !gone.contains(f));
        }
    }
}

/// Flags a candidate's reads and sends carry through the gate; others (MSG_OOB, MSG_ERRQUEUE…)
/// end the candidacy.
const RECV_FLAGS: c_int = libc::MSG_DONTWAIT
    | libc::MSG_PEEK
    | libc::MSG_WAITALL
    | libc::MSG_TRUNC
    | libc::MSG_CMSG_CLOEXEC;
const SEND_FLAGS: c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | libc::MSG_MORE | libc::MSG_EOR;

/// A read on a candidate. `None`: not carried here (the candidacy ended): the kernel's call.
pub fn recv(
    sock: &Sock,
    fd: c_int,
    bufs: &mut [&mut [u8]],
    flags: c_int,
) -> Option<Result<usize, c_int>> {
    let late = sock.late.get()?;
    if flags & !RECV_FLAGS != 0 {
        end(sock);
        return None;
    }
    let errno = sys::errno();
    let nonblock = sock.nonblocking() || flags & libc::MSG_DONTWAIT != 0;
    let peek = flags & libc::MSG_PEEK != 0;
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let deadline = sock.rcvtimeo().and_then(|t| Instant::now().checked_add(t));
    let mut got = 0usize;
    let mut nap = NAP_MIN;
    let r = loop {
        tick(sock, fd, late, !nonblock, false);
        let gate = late.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = sock.conn.get() {
            drop(gate);
            if got > 0 && !waitall {
                break Ok(got);
            }
            let mut rest = skip_mut(bufs, got);
            break match crate::ops::recv(sock, c, &mut rest, flags) {
                Ok(n) => Ok(got + n),
                Err(_) if got > 0 => Ok(got),
                Err(e) => Err(e),
            };
        }
        if !late.live() {
            drop(gate);
            // The candidacy ended meanwhile: what is left is the kernel's blocking call.
            if got > 0 && !waitall {
                break Ok(got);
            }
            let mut rest = skip_mut(bufs, got);
            let f = (flags & !libc::MSG_DONTWAIT) | if nonblock { libc::MSG_DONTWAIT } else { 0 };
            break match sys::recv_iov(fd, &mut rest, f) {
                Ok(n) => {
                    count(&sock.tcp_rx, n, peek);
                    Ok(got + n)
                }
                Err(_) if got > 0 => Ok(got),
                Err(e) => Err(e),
            };
        }
        if sock.role == Role::Client && nowait::pending(late) {
            drop(gate);
            if !nonblock {
                nowait::settle(sock, fd, late, true);
                continue;
            }
            if got > 0 {
                break Ok(got);
            }
            match nowait::recv(sock, fd, late, bufs, flags) {
                Some(r) => break r,
                None => continue,
            }
        }
        let mut rest = skip_mut(bufs, got);
        let r = sys::recv_iov(
            fd,
            &mut rest,
            (flags | libc::MSG_DONTWAIT) & !libc::MSG_WAITALL,
        );
        if let Ok(n) = r {
            count(&sock.tcp_rx, n, peek);
        }
        drop(gate);
        match r {
            Ok(0) => break Ok(got),
            Ok(n) => {
                got += n;
                if !waitall || got >= total {
                    break Ok(got);
                }
                nap = NAP_MIN;
            }
            Err(libc::EAGAIN) => {
                if nonblock {
                    break if got > 0 { Ok(got) } else { Err(libc::EAGAIN) };
                }
                match wait(sock, fd, libc::POLLIN, &mut nap, deadline) {
                    Ok(()) => {}
                    Err(_) if got > 0 => break Ok(got),
                    Err(e) => break Err(e),
                }
            }
            Err(_) if got > 0 => break Ok(got),
            Err(e) => break Err(e),
        }
    };
    if r.is_ok() {
        sys::set_errno(errno);
    }
    Some(r)
}

/// A send on a candidate. `None`: not carried here (the candidacy ended): the kernel's call.
pub fn send(sock: &Sock, fd: c_int, bufs: &[&[u8]], flags: c_int) -> Option<Result<usize, c_int>> {
    let late = sock.late.get()?;
    if flags & !SEND_FLAGS != 0 {
        end(sock);
        return None;
    }
    let errno = sys::errno();
    let nonblock = sock.nonblocking() || flags & libc::MSG_DONTWAIT != 0;
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let deadline = sock.sndtimeo().and_then(|t| Instant::now().checked_add(t));
    let mut sent = 0usize;
    let mut nap = NAP_MIN;
    let r = loop {
        tick(sock, fd, late, !nonblock, false);
        let gate = late.gate.read().unwrap_or_else(|p| p.into_inner());
        let rest = skip(bufs, sent);
        if let Some(c) = sock.conn.get() {
            drop(gate);
            break match crate::ops::send(sock, c, &rest, flags) {
                Ok(n) => Ok(sent + n),
                Err(_) if sent > 0 => Ok(sent),
                Err(e) => Err(e),
            };
        }
        if !late.live() {
            drop(gate);
            let f = (flags & !libc::MSG_DONTWAIT) | if nonblock { libc::MSG_DONTWAIT } else { 0 };
            break match sys::send_iov(fd, &rest, f) {
                Ok(n) => {
                    count(&sock.tcp_tx, n, false);
                    Ok(sent + n)
                }
                Err(_) if sent > 0 => Ok(sent),
                Err(e) => Err(e),
            };
        }
        if sock.role == Role::Client && nowait::pending(late) {
            drop(gate);
            if !nonblock {
                nowait::settle(sock, fd, late, true);
                continue;
            }
            match nowait::send(sock, fd, late, &rest) {
                Some(n) => break Ok(sent + n),
                None => continue,
            }
        }
        let r = sys::send_iov(fd, &rest, flags | libc::MSG_DONTWAIT);
        if let Ok(n) = r {
            count(&sock.tcp_tx, n, false);
        }
        drop(gate);
        match r {
            Ok(n) => {
                sent += n;
                if sent >= total || nonblock {
                    break Ok(sent);
                }
                nap = NAP_MIN;
            }
            Err(libc::EAGAIN) => {
                if nonblock {
                    break if sent > 0 {
                        Ok(sent)
                    } else {
                        Err(libc::EAGAIN)
                    };
                }
                match wait(sock, fd, libc::POLLOUT, &mut nap, deadline) {
                    Ok(()) => {}
                    Err(_) if sent > 0 => break Ok(sent),
                    Err(e) => break Err(e),
                }
            }
            Err(_) if sent > 0 => break Ok(sent),
            Err(e) => break Err(e),
        }
    };
    if r.is_ok() {
        sys::set_errno(errno);
    }
    Some(r)
}

fn count(c: &std::sync::atomic::AtomicU64, n: usize, peek: bool) {
    if !peek {
        c.fetch_add(n as u64, Relaxed);
    }
}

/// Wait outside the gate for `events` on the socket, one nap at most (the caller looks for a
/// late offer between naps; the nap doubles while nothing comes); a server candidate with a
/// late bell sleeps on the bell and the socket instead, until either (or the deadline).
/// EAGAIN past the deadline (SO_RCVTIMEO, SO_SNDTIMEO), EINTR for a signal (`restarting`
/// restarts the call if its handler says so, as the kernel would).
fn wait(
    sock: &Sock,
    fd: c_int,
    events: i16,
    nap: &mut Duration,
    deadline: Option<Instant>,
) -> Result<(), c_int> {
    if let Some(bell) = bell(sock, fd) {
        let left = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(libc::EAGAIN);
                }
                Some(left)
            }
            None => None,
        };
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: bell,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        sys::poll_fds(&mut fds, left)?;
        if fds[1].revents != 0 {
            ring();
        }
        return Ok(());
    }
    let up = global::get().transport().is_ok_and(|t| t.link_is_up());
    let cap = if up { NAP_UP } else { NAP_DOWN };
    let mut t = (*nap).min(cap);
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(libc::EAGAIN);
        }
        t = t.min(left);
    }
    let r = sys::poll1(fd, events, t)?;
    if r == 0 {
        *nap = (*nap * 2).min(cap);
    }
    Ok(())
}

/// Look for the late upgrade: a server answers its client's late offer; a client (`may_offer`:
/// a blocking call, which may wait for the answer) offers one once the link is up and its hold
/// has passed. Made with the gate closed, so the counts are exact and nothing is read meanwhile.
/// `force`: a server looks now, whatever its pace (woken by its late bell).
fn tick(sock: &Sock, fd: c_int, late: &Late, may_offer: bool, force: bool) {
    if !late.live() || sock.conn.get().is_some() {
        return;
    }
    if sock.role == Role::Client {
        if !may_offer {
            // A non-blocking call: post the offer, or take its answer, without waiting.
            if nowait::tick(sock, fd, late, false) {
                move_registrations(late);
            }
            return;
        }
        if nowait::pending(late) {
            // A blocking call after a non-blocking one posted the offer: wait for its answer.
            if nowait::settle(sock, fd, late, true) {
                move_registrations(late);
            }
            return;
        }
    }
    let now = Instant::now();
    {
        let Ok(mut tr) = late.tries.lock() else {
            return;
        };
        if tr.next.is_some_and(|n| now < n) && !force {
            return;
        }
        if sock.role == Role::Server {
            tr.next = now.checked_add(LOOK_EVERY);
        }
    }
    let g = global::get();
    let Ok(t) = g.transport() else {
        return;
    };
    if !t.link_is_up() {
        return;
    }
    let gate = late.gate.write().unwrap_or_else(|p| p.into_inner());
    if !late.live() || sock.conn.get().is_some() {
        return;
    }
    let (sent, read) = (sock.tcp_tx.load(Relaxed), sock.tcp_rx.load(Relaxed));
    let tcp_fd = first_fd(sock, fd);
    let r = match sock.role {
        Role::Server => match t.late_accept(tcp_fd, sock.local, sock.peer, sent, read) {
            None => return,
            Some(r) => r,
        },
        Role::Client => t.late_upgrade(tcp_fd, sock.local, sock.peer, sent, read),
    };
    match r {
        Ok(c) => {
            paired(sock, fd, late, c, gate);
            move_registrations(late);
        }
        Err(reason) => failed(sock, fd, late, reason),
    }
}

/// The entry's first fd, which a connection it makes watches (the one it was made on, as a
/// connection made at connect or accept does), not the dup `fd` a call came through: an
/// application that closes the dup (a writer thread's clone) while another thread waits on
/// the connection would otherwise leave that waiter polling a closed number (POLLNVAL: reset).
fn first_fd(sock: &Sock, fd: c_int) -> c_int {
    sock.fds.lock().ok().and_then(|f| f.first()).unwrap_or(fd)
}

/// The pairing is made (with the gate closed, given here and let go of): the entry goes on as
/// an NTB connection. The caller then moves its epoll registrations (`move_registrations`,
/// outside the gate: `epoll::ctl` may end a candidacy, which takes it).
fn paired(
    sock: &Sock,
    fd: c_int,
    _late: &Late,
    c: Connection,
    gate: std::sync::RwLockWriteGuard<'_, ()>,
) {
    adopt(sock, fd, c);
    drop(gate);
}

/// A late upgrade failed for `reason` (with the gate closed): a client tries again later or
/// gives up; a server's look ends the candidacy.
fn failed(sock: &Sock, fd: c_int, late: &Late, reason: Reason) {
    let again = sock.role == Role::Client && again(late, reason);
    if !again {
        late.over.store(true, Relaxed);
    }
    if reason == Reason::BadPeer {
        // The peer took the offer and broke the protocol: it may be sending records.
        sys::shutdown_both(fd);
    }
    global::get().log(LogLevel::Debug, || {
        format!(
            "fd {fd}: late upgrade to {}: {reason}{}",
            sock.peer.to_std(),
            if again { " (will try again)" } else { "" }
        )
    });
}

/// A client's late offer failed for `reason`: try again later (true; the hold set, doubled for
/// a try within `FLAP_WINDOW` of the last) or give up.
fn again(late: &Late, reason: Reason) -> bool {
    let Ok(mut tr) = late.tries.lock() else {
        return false;
    };
    let retry = match reason {
        // No listener yet may be a server whose listener is published only now that the link
        // is up (it listened while the link was down): tried again, as an unanswered offer is.
        Reason::NoAnswer | Reason::NoListener => {
            tr.unanswered += 1;
            tr.unanswered < TRIES_MAX
        }
        Reason::LinkDown | Reason::TableFull | Reason::NoWindowSpace | Reason::NoDoorbell => true,
        _ => false,
    };
    let now = Instant::now();
    tr.hold = if tr.last.is_some_and(|l| now.duration_since(l) < FLAP_WINDOW) {
        (tr.hold * 2).clamp(HOLD_MIN, HOLD_MAX)
    } else {
        HOLD_MIN
    };
    tr.last = Some(now);
    tr.next = now.checked_add(tr.hold);
    retry
}

/// The pairing is made: the entry goes on as an NTB connection.
fn adopt(sock: &Sock, fd: c_int, c: Connection) {
    let g = global::get();
    let _ = sock.conn.set(Arc::new(c));
    if let Ok(mut st) = sock.state.lock() {
        if let State::Tcp(reason) = std::mem::replace(&mut *st, State::Ntb) {
            g.uncount_fallback(reason);
        }
    }
    g.ntb_connections.fetch_add(1, Relaxed);
    g.log(LogLevel::Info, || {
        format!(
            "fd {fd}: {} {} moved onto the NTB path (late upgrade, after {} bytes sent and {} read on TCP)",
            sock.role,
            sock.peer.to_std(),
            sock.tcp_tx.load(Relaxed),
            sock.tcp_rx.load(Relaxed)
        )
    });
}

/// `epoll_ctl` on a candidate: made on the kernel's registration as before, and recorded, so
/// that the pairing moves it to the NTB form (`move_registrations`); a server candidate's set
/// looks for its late offers in `epoll_wait` (`look_set`). `None`: not a candidate (any more).
pub fn epoll_ctl(
    sock: &Arc<Sock>,
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: Option<&libc::epoll_event>,
) -> Option<Result<c_int, c_int>> {
    let late = sock.late.get()?;
    let _gate = late.gate.read().unwrap_or_else(|p| p.into_inner());
    if !candidate(sock) {
        return None;
    }
    let (events, data) = event.map_or((0, 0), |e| (e.events, e.u64));
    if op != libc::EPOLL_CTL_DEL && event.is_none() {
        return Some(Err(libc::EFAULT));
    }
    match sys::epoll_ctl(epfd, op, fd, events, data) {
        0 => {}
        e => return Some(Err(e)),
    }
    if let Ok(mut regs) = late.regs.lock() {
        regs.retain(|r| (r.0, r.1) != (epfd, fd));
        if op != libc::EPOLL_CTL_DEL {
            regs.push((epfd, fd, events, data));
        }
    }
    if let Ok(mut w) = WATCHED.lock() {
        w.retain(|(e, f, s)| (*e, *f) != (epfd, fd) && s.strong_count() > 0);
        if op != libc::EPOLL_CTL_DEL {
            w.push((epfd, fd, Arc::downgrade(sock)));
        }
        WATCHING.store(!w.is_empty(), Relaxed);
    }
    Some(Ok(0))
}

/// The pairing is made: the candidate's epoll registrations leave the kernel's form and are
/// made again in the NTB form (`epoll::ctl`; a thread asleep in the set's kernel wait drops the
/// tagged events that wakes it, and waits on as ours). One whose set or fd is gone (the kernel
/// no longer holds it) is dropped.
fn move_registrations(late: &Late) {
    let regs = match late.regs.lock() {
        Ok(mut r) => std::mem::take(&mut *r),
        Err(_) => return,
    };
    for (epfd, fd, events, data) in regs {
        if sys::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0) != 0 {
            continue;
        }
        let ev = libc::epoll_event { events, u64: data };
        if let crate::ops::Detour::Ours(Err(e)) =
            crate::epoll::ctl(epfd, libc::EPOLL_CTL_ADD, fd, Some(&ev))
        {
            global::get().log(LogLevel::Warn, || {
                format!("fd {fd}: its epoll registration in {epfd} could not move to the NTB path (errno {e})")
            });
        }
    }
    if let Ok(mut w) = WATCHED.lock() {
        w.retain(|(_, _, s)| s.upgrade().is_some_and(|s| candidate(&s)));
        WATCHING.store(!w.is_empty(), Relaxed);
    }
}

/// What `epoll_wait` on `epfd` is to do about server candidates registered in it.
pub enum SetLook {
    /// None there: the kernel's wait, whole.
    None,
    /// Some there, none paired: wait in the kernel in naps of at most [`LOOK_NAP`].
    Nap,
    /// Some there, none paired, all sleeping on this process's late bell (the line): wait in
    /// the kernel for the set or the bell, with no nap, and [`ring`] when the bell woke it.
    Bell(c_int),
    /// One moved onto the ring (its registration is ours now): look again.
    Paired,
}

/// Before a kernel `epoll_wait` on `epfd`: look for the late offers of the server candidates
/// registered in it (at most every 10 ms each). One load when no set holds a candidate.
pub fn look_set(epfd: c_int) -> SetLook {
    if !WATCHING.load(Relaxed) {
        return SetLook::None;
    }
    let socks: Vec<(c_int, Arc<Sock>)> = match WATCHED.lock() {
        Ok(mut w) => {
            // Entries of candidates that are gone, or moved, or ended, leave the list (and
            // the fast check says so once it is empty).
            w.retain(|(_, _, s)| s.upgrade().is_some_and(|s| candidate(&s)));
            WATCHING.store(!w.is_empty(), Relaxed);
            w.iter()
                .filter(|(e, _, _)| *e == epfd)
                .filter_map(|(_, f, s)| s.upgrade().map(|s| (*f, s)))
                .collect()
        }
        Err(_) => return SetLook::None,
    };
    let mut live = false;
    for (fd, s) in &socks {
        look(s, *fd);
        if s.conn.get().is_some() {
            return SetLook::Paired;
        }
        live |= answers(s);
    }
    if !live {
        return SetLook::None;
    }
    let bells: Vec<Option<c_int>> = socks
        .iter()
        .filter(|(_, s)| answers(s))
        .map(|(fd, s)| bell(s, *fd))
        .collect();
    match bells.first().copied() {
        Some(Some(b)) if bells.iter().all(|x| *x == Some(b)) => SetLook::Bell(b),
        _ => SetLook::Nap,
    }
}

/// The slices of `bufs` after the first `n` bytes.
fn skip<'a>(bufs: &[&'a [u8]], mut n: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs {
        if n >= b.len() {
            n -= b.len();
        } else {
            out.push(&b[n..]);
            n = 0;
        }
    }
    out
}

/// `bufs` without their first `n` bytes.
fn skip_mut<'a>(bufs: &'a mut [&mut [u8]], mut n: usize) -> Vec<&'a mut [u8]> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs.iter_mut() {
        if n >= b.len() {
            n -= b.len();
        } else {
            out.push(&mut b[n..]);
            n = 0;
        }
    }
    out
}
