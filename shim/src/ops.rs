//! What each intercepted call does for a tracked fd. Every op returns a [`Detour`]: either the
//! result of our own handling, or [`Detour::Bypass`] — call the real libc function unchanged.
//! Ops take plain Rust values (slices, addresses); `hooks` turns C arguments into them and back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libc::c_int;
use transport::{Connection, Endpoint, IoError, Outcome, Reason, RecvFlags};

use crate::config::{LogLevel, Role};
use crate::global::{self, Global};
use crate::sock::{Sock, State};
use crate::{sys, table};

/// The first kernel sleep of poll/select/epoll_wait while NTB connections are armed.
const SAFETY_NAP: Duration = Duration::from_millis(20);

/// The longest: how long a doorbell the device lost can go unnoticed on a quiet connection.
const LONGEST_NAP: Duration = Duration::from_millis(320);

/// The bounded kernel sleeps of a readiness wait on armed NTB connections. A peer that published
/// just as we armed may not ring us (transport's `ARM_GRACE`); the first nap after arming is
/// short, so that costs at most [`SAFETY_NAP`]. Once a nap has passed with nothing new, our
/// flags are long visible and any later publish rings: further naps only guard against a lost
/// doorbell, and double up to [`LONGEST_NAP`] so that a process with quiet connections sleeps
/// (a few wake-ups a second, not fifty). Anything that wakes the wait starts over.
pub(crate) struct Naps(Duration);

impl Naps {
    pub(crate) fn new() -> Naps {
        Naps(SAFETY_NAP)
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
        self.0 = SAFETY_NAP;
    }

    /// The naps of an `epoll_wait` by this thread: where its previous one left them, if no
    /// registration was added or changed since (in any set), else from the start. An app that
    /// waits with a short timeout (redis: 100 ms) would otherwise start over at every call.
    /// (epoll's registrations stay armed between calls; poll and select arm afresh each call
    /// and always start at [`SAFETY_NAP`].)
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
        const { std::cell::Cell::new((u64::MAX, SAFETY_NAP)) };
}

/// How long a blocking connect looks for the server's answer before it returns.
const CONNECT_SPIN: Duration = Duration::from_millis(2);

/// Our result (a value, or an errno), or "call the real function".
pub enum Detour<T> {
    Ours(Result<T, c_int>),
    Bypass,
}

fn is_stream_inet(fd: c_int) -> bool {
    let ty = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE);
    let dom = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
    ty == Some(libc::SOCK_STREAM) && matches!(dom, Some(libc::AF_INET) | Some(libc::AF_INET6))
}

fn io_errno(e: IoError) -> c_int {
    match e {
        IoError::WouldBlock | IoError::TimedOut => libc::EAGAIN,
        IoError::BrokenPipe | IoError::ShutDown => libc::EPIPE,
        IoError::Reset | IoError::Protocol => libc::ECONNRESET,
        IoError::Interrupted => libc::EINTR,
    }
}

/// errno for a failed call on an NTB connection; a protocol error (the peer broke the ring's
/// rules, and the connection was reset and counted) is logged at `warn`.
fn conn_errno(sock: &Sock, op: &str, e: IoError) -> c_int {
    if e == IoError::Protocol {
        global::get().log(LogLevel::Warn, || {
            format!(
                "{} -> {}: {op}: the peer broke the protocol; connection reset",
                sock.local.to_std(),
                sock.peer.to_std()
            )
        });
    }
    io_errno(e)
}

fn fallback(g: &Global, sock: Sock, fd: c_int, reason: Reason) -> Result<(), c_int> {
    g.log(LogLevel::Info, || {
        format!(
            "fd {fd}: {} {} stays on TCP: {reason} ({})",
            sock.role,
            sock.peer.to_std(),
            reason.explain()
        )
    });
    if g.config.strict() {
        g.log(LogLevel::Error, || {
            format!("fd {fd}: PCISOCK_STRICT=1 refuses the TCP fallback ({reason})")
        });
        return Err(libc::ECONNREFUSED);
    }
    g.count_fallback(fd, reason, sock.role);
    table::insert(fd, Arc::new(sock));
    Ok(())
}

// ---- listen / accept -----------------------------------------------------------------------

/// Register a flagged listener on the fabric. Called before the real `listen` for a bound
/// socket (a client that finds the kernel listener must find ours too: otherwise it falls back
/// with `NoListener`, or is refused under PCISOCK_STRICT=1), and after it for a socket that
/// `listen` bound to an ephemeral port.
pub fn register_listener(fd: c_int) -> Result<Listen, c_int> {
    if table::contains(fd) {
        return Ok(Listen::Decided); // listen() again on a tracked listener (backlog change)
    }
    let g = global::get();
    let Some(local) = sys::local_addr(fd) else {
        return Ok(Listen::Decided);
    };
    if local.port() == 0 {
        return Ok(Listen::Unbound);
    }
    if !g.config.may_flag_port(local.port()) || !is_stream_inet(fd) {
        return Ok(Listen::Decided);
    }
    if !g
        .config
        .decide(Role::Server, local.port(), Some(local.ip()), &g.program)
        .is_ntb()
    {
        return Ok(Listen::Decided);
    }
    let ep = Endpoint::from_std(local);
    let state = match g.transport() {
        Ok(t) => match t.listen(fd, ep) {
            Ok(l) => State::Listening(Some(l)),
            Err(r) => State::Tcp(r),
        },
        Err(_) => State::Tcp(g.unavailable()),
    };
    if let State::Tcp(r) = &state {
        g.log(LogLevel::Warn, || {
            format!("listener {local}: not on the NTB path: {r}")
        });
        if g.config.strict() {
            return Err(libc::ENODEV);
        }
    } else {
        g.log(LogLevel::Info, || {
            format!("listener {local} registered on the NTB fabric")
        });
    }
    table::insert(
        fd,
        Arc::new(Sock::new(
            Role::Server,
            ep,
            Endpoint::default(),
            sys::nonblocking(fd),
            state,
        )),
    );
    Ok(Listen::Registered)
}

/// What `register_listener` did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Registered now: withdraw it if the real `listen` fails.
    Registered,
    /// Nothing to register (not flagged, not a TCP socket, or already tracked).
    Decided,
    /// No port yet: decide again once `listen` has bound one.
    Unbound,
}

/// The real `listen` failed after `register_listener` registered `fd`: withdraw it.
pub fn abandon_listener(fd: c_int) {
    if let Some(s) = table::remove(fd) {
        settle(retire(s, Some(fd)));
    }
}

/// The real `listen` succeeded on the registered listener `fd`: from now on the listener lives
/// as long as the kernel's listening socket, whoever holds it.
pub fn kernel_listens(fd: c_int) {
    let Some(s) = table::get(fd) else { return };
    let g = global::get();
    let Ok(t) = g.transport() else { return };
    if let Ok(st) = s.state.lock() {
        if let State::Listening(Some(l)) = &*st {
            t.kernel_listens(l, fd);
        }
    };
}

/// After a successful real `accept` on `lfd` returned `fd`: upgrade it if the client offered.
pub fn after_accept(lfd: c_int, fd: c_int, nonblock: bool) -> Result<(), c_int> {
    let Some(l) = table::get(lfd) else {
        return Ok(());
    };
    // A new fd number from the kernel: any stale entry for it is gone.
    drop(table::remove(fd));
    let g = global::get();
    let listening = matches!(
        &*l.state.lock().map_err(|_| libc::EIO)?,
        State::Listening(_)
    );
    let local = sys::local_addr(fd)
        .map(Endpoint::from_std)
        .unwrap_or(l.local);
    let peer = sys::peer_addr(fd)
        .map(Endpoint::from_std)
        .unwrap_or_default();
    let sock = Sock::new(Role::Server, local, peer, nonblock, State::Ntb);
    let reason = if !listening {
        l.tcp_reason().unwrap_or(Reason::NoDevice)
    } else {
        // A blocking fd's first use would wait for the service's answer anyway: it completes
        // here, as it always did. A non-blocking one (an event loop: nginx) returns at once and
        // completes at first use, so the server goes on with its other connections meanwhile.
        let started = |t: &transport::Transport| {
            if nonblock {
                t.accept_started(fd, local, peer)
            } else {
                match t.accept(fd, local, peer) {
                    Ok(c) => Outcome::Connected(c),
                    Err(r) => Outcome::Tcp(r),
                }
            }
        };
        match g.transport() {
            Ok(t) => match started(t) {
                Outcome::Connected(conn) => {
                    let _ = sock.conn.set(Arc::new(conn));
                    g.ntb_connections.fetch_add(1, Relaxed);
                    g.log(LogLevel::Info, || {
                        format!("fd {fd}: accepted {} on the NTB path", peer.to_std())
                    });
                    table::insert(fd, Arc::new(sock));
                    return Ok(());
                }
                // Through the service: its answer comes to the first use of the fd (as a
                // client's does: `settle_offer`), so accept returns without a round trip.
                Outcome::Waiting(p) => {
                    *sock.state.lock().map_err(|_| libc::EIO)? = State::Offered(Some(p));
                    g.log(LogLevel::Debug, || {
                        format!("fd {fd}: accepted {}, upgrade asked for", peer.to_std())
                    });
                    table::insert(fd, Arc::new(sock));
                    return Ok(());
                }
                Outcome::Tcp(r) => r,
            },
            Err(_) => g.unavailable(),
        }
    };
    g.log(LogLevel::Debug, || {
        format!(
            "fd {fd}: accepted {} -> {}: {reason}",
            peer.to_std(),
            local.to_std()
        )
    });
    *sock.state.lock().map_err(|_| libc::EIO)? = State::Tcp(reason);
    fallback(g, sock, fd, reason).map_err(|e| {
        sys::close_raw(fd);
        if e == libc::ECONNREFUSED {
            libc::ECONNABORTED
        } else {
            e
        }
    })
}

// ---- connect ---------------------------------------------------------------------------------

/// `connect`: for a flagged destination, offer the upgrade before the real connect.
pub fn connect(fd: c_int, addr: Option<SocketAddr>, real: impl Fn() -> c_int) -> Detour<c_int> {
    let Some(remote) = addr else {
        return Detour::Bypass;
    };
    let g = global::get();
    if !g.config.may_flag_port(remote.port()) {
        return Detour::Bypass;
    }
    if table::contains(fd) || !is_stream_inet(fd) {
        return Detour::Bypass;
    }
    if !g
        .config
        .decide(Role::Client, remote.port(), Some(remote.ip()), &g.program)
        .is_ntb()
    {
        return Detour::Bypass;
    }
    let nonblock = sys::nonblocking(fd);
    let remote_ep = Endpoint::from_std(remote);
    let t = match g.transport() {
        Ok(t) => t,
        Err(_) => {
            return Detour::Ours(connect_tcp(
                g,
                fd,
                remote_ep,
                nonblock,
                g.unavailable(),
                real,
            ))
        }
    };
    // The offer is keyed by our port. A socket the application bound has one now; otherwise
    // the kernel picks it in connect (reusing ports in TIME_WAIT as it does for any connect,
    // which a bind of port 0 cannot), so the offer is reserved first and posted right after.
    let bound = sys::local_addr(fd).filter(|a| a.port() != 0);
    g.log(LogLevel::Debug, || {
        format!(
            "fd {fd}: offering {} -> {remote}",
            bound.map_or("(port to come)".to_string(), |a| a.to_string())
        )
    });
    let offered = match bound {
        Some(local) => t.offer(Endpoint::from_std(local), remote_ep, fd),
        None => t.offer_unbound(remote_ep, fd),
    };
    let mut pending = match offered {
        Ok(p) => p,
        Err(reason) => return Detour::Ours(connect_tcp(g, fd, remote_ep, nonblock, reason, real)),
    };
    let r = real();
    let err = sys::errno();
    if r != 0 && err != libc::EINPROGRESS {
        t.cancel(pending);
        return Detour::Ours(Err(err));
    }
    let local_ep = match bound.or_else(|| sys::local_addr(fd).filter(|a| a.port() != 0)) {
        Some(local) => Endpoint::from_std(local),
        None => {
            // Connected without a port to name (cannot happen for TCP): stay on TCP.
            t.cancel(pending);
            let sock = Sock::new(
                Role::Client,
                Endpoint::default(),
                remote_ep,
                nonblock,
                State::Tcp(Reason::Unsupported),
            );
            let done = if r == 0 { Ok(0) } else { Err(err) };
            return Detour::Ours(fallback(g, sock, fd, Reason::Unsupported).and(done));
        }
    };
    if bound.is_none() {
        t.publish(&mut pending, local_ep);
    }
    // The kernel connect is done (or in progress): return at once, as TCP does. A blocking
    // connect first looks for the server's answer for a moment (the server usually answers
    // within microseconds, and a connection complete before the application forks or execs is
    // handed on whole); otherwise the upgrade completes on first use (a server may accept late,
    // after its other clients, and the client must not wait for that inside connect).
    let pending = if r == 0 {
        match t.complete_within(pending, fd, CONNECT_SPIN) {
            Outcome::Connected(c) => {
                let sock = Sock::new(Role::Client, local_ep, remote_ep, nonblock, State::Ntb);
                let _ = sock.conn.set(Arc::new(c));
                g.ntb_connections.fetch_add(1, Relaxed);
                g.log(LogLevel::Info, || {
                    format!("fd {fd}: connected to {remote} on the NTB path")
                });
                table::insert(fd, Arc::new(sock));
                return Detour::Ours(Ok(0));
            }
            Outcome::Tcp(reason) => {
                let sock = Sock::new(
                    Role::Client,
                    local_ep,
                    remote_ep,
                    nonblock,
                    State::Tcp(reason),
                );
                return Detour::Ours(
                    fallback(g, sock, fd, reason)
                        .map(|()| 0)
                        .inspect_err(|_| sys::shutdown_both(fd)),
                );
            }
            Outcome::Waiting(p) => p,
        }
    } else {
        pending
    };
    let sock = Sock::new(
        Role::Client,
        local_ep,
        remote_ep,
        nonblock,
        State::Offered(Some(pending)),
    );
    g.log(LogLevel::Debug, || {
        format!("fd {fd}: connected to {remote}, upgrade offered")
    });
    table::insert(fd, Arc::new(sock));
    Detour::Ours(if r != 0 {
        Err(libc::EINPROGRESS)
    } else {
        Ok(0)
    })
}

fn connect_tcp(
    g: &Global,
    fd: c_int,
    remote: Endpoint,
    nonblock: bool,
    reason: Reason,
    real: impl Fn() -> c_int,
) -> Result<c_int, c_int> {
    if g.config.strict() {
        g.log(LogLevel::Error, || {
            format!("fd {fd}: PCISOCK_STRICT=1 refuses the TCP fallback ({reason})")
        });
        // Recorded, as a server's refusals are: the stats file says why the connect failed.
        let local = sys::local_addr(fd)
            .map(Endpoint::from_std)
            .unwrap_or_default();
        drop(Sock::new(
            Role::Client,
            local,
            remote,
            nonblock,
            State::Tcp(reason),
        ));
        return Err(libc::ECONNREFUSED);
    }
    let r = real();
    let err = sys::errno();
    if r == 0 || err == libc::EINPROGRESS {
        let local = sys::local_addr(fd)
            .map(Endpoint::from_std)
            .unwrap_or_default();
        let sock = Sock::new(Role::Client, local, remote, nonblock, State::Tcp(reason));
        let _ = fallback(g, sock, fd, reason);
    }
    if r == 0 {
        Ok(0)
    } else {
        Err(err)
    }
}

/// Resolve a client still waiting for its answer. Returns the connection if it is on the NTB
/// path now; `Err(EAGAIN)` if the answer is not there and we must not block.
fn settle_offer(sock: &Sock, fd: c_int, block: bool) -> Result<Option<Arc<Connection>>, c_int> {
    if let Some(c) = sock.conn.get() {
        return Ok(Some(c.clone()));
    }
    let g = global::get();
    let mut st = sock.state.lock().map_err(|_| libc::EIO)?;
    if let State::Forsaken = &*st {
        g.log(LogLevel::Error, || {
            format!(
                "fd {fd}: inherited at a fork while another thread of the parent was connecting \
                 or closing it; which path it took is not known here, so this process cannot \
                 use it (EIO)"
            )
        });
        return Err(libc::EIO);
    }
    let State::Offered(p) = &mut *st else {
        return Ok(sock.conn.get().cloned());
    };
    let Some(pending) = p.take() else {
        return Ok(None);
    };
    let Ok(t) = g.transport() else {
        return Ok(None);
    };
    // The TCP connect must have finished before the answer can count.
    if sys::peer_addr(fd).is_none() {
        let so_error = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(0);
        if so_error != 0 || !block {
            if so_error != 0 {
                t.cancel(pending);
                *st = State::Tcp(Reason::Unsupported);
                return Ok(None);
            }
            *p = Some(pending);
            return Err(libc::EAGAIN);
        }
    }
    let early = std::mem::take(&mut *sock.early.lock().map_err(|_| libc::EIO)?);
    let outcome = t.complete(pending, fd, block || !early.is_empty());
    match outcome {
        Outcome::Connected(c) => {
            let c = Arc::new(c);
            // The bytes kept before the answer go first: the connection is published (and so
            // reachable by another thread's send without the state lock we hold) only after
            // them, or that send could overtake them.
            let flushed = if early.is_empty() {
                Ok(0)
            } else {
                c.send(&[&early], false, None)
            };
            let _ = sock.conn.set(c.clone());
            *st = State::Ntb;
            g.ntb_connections.fetch_add(1, Relaxed);
            g.log(LogLevel::Info, || {
                let how = match sock.role {
                    Role::Client => "connected to",
                    Role::Server => "accepted",
                };
                format!("fd {fd}: {how} {} on the NTB path", sock.peer.to_std())
            });
            flushed.map_err(io_errno)?;
            Ok(Some(c))
        }
        Outcome::Tcp(reason) => {
            *st = State::Tcp(reason);
            g.log(LogLevel::Info, || {
                format!(
                    "fd {fd}: {} {} stays on TCP: {reason} ({})",
                    sock.role,
                    sock.peer.to_std(),
                    reason.explain()
                )
            });
            if g.config.strict() {
                g.log(LogLevel::Error, || {
                    format!("fd {fd}: PCISOCK_STRICT=1 refuses the TCP fallback ({reason})")
                });
                sys::shutdown_both(fd);
                return Err(libc::ECONNREFUSED);
            }
            g.count_fallback(fd, reason, sock.role);
            if !early.is_empty() {
                sys::send_all(fd, &early)?;
                sock.tcp_tx.fetch_add(early.len() as u64, Relaxed);
            }
            Ok(None)
        }
        Outcome::Waiting(p2) => {
            *p = Some(p2);
            Err(libc::EAGAIN)
        }
    }
}

/// Before a fork: complete every accepted connection still waiting for the service's answer
/// (which comes at once). The answer goes to this process's service connection, which a child
/// does not share (it opens its own), so a child that inherited the fd could never complete it;
/// completed now, the connection is handed on whole, as a settled one always was.
pub fn settle_accepts() {
    let _ = std::panic::catch_unwind(|| {
        for (fd, sock) in table::snapshot() {
            // An entry another thread holds is being settled by it (or is a client's, waiting
            // for its server): left to the child's rules (`fork::child`). The transport is
            // only asked about a pending entry (which it made): a fork never opens it.
            let waiting = sock.conn.get().is_none()
                && sock.state.try_lock().is_ok_and(|st| match &*st {
                    State::Offered(Some(p)) => global::get()
                        .transport()
                        .is_ok_and(|t| t.pending_is_accept(p)),
                    _ => false,
                });
            if waiting {
                let _ = settle_offer(&sock, fd, true);
            }
        }
    });
}

/// The data path of a tracked fd: its entry, whose connection is set ([`Sock::ntb`]), or
/// `Kernel` to use the kernel socket. The entry is pinned in the fd table (a hazard pointer,
/// no locked instruction) and the connection borrowed from it, not cloned: an `Arc` clone and
/// its drop are two locked instructions on every data call.
pub enum DataPath {
    Ntb(table::Pinned),
    Kernel,
}

/// A non-blocking send before the server answered: keep up to `EARLY_MAX` bytes, as a TCP send
/// buffer would. `Some(n)` bytes were kept; `None`: no room (EAGAIN), or the connection settled
/// meanwhile (the caller tries again).
pub fn stash_early(fd: c_int, bufs: &[&[u8]]) -> Option<usize> {
    let sock = table::get(fd)?;
    let st = sock.state.lock().ok()?;
    if !matches!(&*st, State::Offered(Some(_))) {
        return None;
    }
    let mut early = sock.early.lock().ok()?;
    let room = crate::sock::EARLY_MAX.saturating_sub(early.len());
    let mut n = 0;
    for b in bufs {
        let take = b.len().min(room - n);
        early.extend_from_slice(&b[..take]);
        n += take;
        if n == room {
            break;
        }
    }
    (n > 0).then_some(n)
}

/// Which path a data call on `fd` takes (settling a pending upgrade first); `None`: not ours.
///
/// Called by hooks before their own guard: a panic in here (settling an offer builds the
/// connection from what the peer answered) is caught and becomes EIO, never unwinds into the
/// application.
pub fn data_path(fd: c_int, dontwait: bool) -> Option<Result<DataPath, c_int>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        data_path_unguarded(fd, dontwait)
    }))
    .unwrap_or(Some(Err(libc::EIO)))
}

fn data_path_unguarded(fd: c_int, dontwait: bool) -> Option<Result<DataPath, c_int>> {
    let sock = table::pin(fd)?;
    if sock.conn.get().is_some() {
        return Some(Ok(DataPath::Ntb(sock)));
    }
    let block = !(sock.nonblocking() || dontwait);
    Some(match settle_offer(&sock, fd, block) {
        // Settled onto the bridge: `settle_offer` set the entry's connection.
        Ok(Some(_)) => Ok(DataPath::Ntb(sock)),
        Ok(None) => Ok(DataPath::Kernel),
        Err(e) => Err(e),
    })
}

// ---- data ------------------------------------------------------------------------------------

pub fn recv(
    sock: &Sock,
    c: &Connection,
    bufs: &mut [&mut [u8]],
    flags: c_int,
) -> Result<usize, c_int> {
    let f = RecvFlags {
        nonblock: sock.nonblocking() || flags & libc::MSG_DONTWAIT != 0,
        peek: flags & libc::MSG_PEEK != 0,
        waitall: flags & libc::MSG_WAITALL != 0,
    };
    let r = c.recv(bufs, f, sock.rcvtimeo());
    match r {
        Ok(0) => global::get().log(LogLevel::Debug, || {
            format!(
                "{} -> {}: recv: end of stream",
                sock.local.to_std(),
                sock.peer.to_std()
            )
        }),
        Err(e) if e != IoError::WouldBlock => global::get().log(LogLevel::Debug, || {
            format!(
                "{} -> {}: recv: {e:?}",
                sock.local.to_std(),
                sock.peer.to_std()
            )
        }),
        _ => {}
    }
    r.map_err(|e| conn_errno(sock, "recv", e))
}

pub fn send(sock: &Sock, c: &Connection, bufs: &[&[u8]], flags: c_int) -> Result<usize, c_int> {
    let nonblock = sock.nonblocking() || flags & libc::MSG_DONTWAIT != 0;
    match c.send(bufs, nonblock, sock.sndtimeo()) {
        Ok(n) => Ok(n),
        Err(e) => {
            let errno = conn_errno(sock, "send", e);
            if errno == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
                sys::raise_sigpipe();
            }
            Err(errno)
        }
    }
}

pub fn sendfile(
    sock: &Sock,
    c: &Connection,
    in_fd: c_int,
    offset: Option<&mut i64>,
    count: usize,
) -> Result<usize, c_int> {
    match c.send_file(in_fd, offset, count, sock.nonblocking(), sock.sndtimeo()) {
        Ok(n) => Ok(n),
        Err(Ok(errno)) => Err(errno),
        Err(Err(e)) => {
            let errno = conn_errno(sock, "sendfile", e);
            if errno == libc::EPIPE {
                sys::raise_sigpipe();
            }
            Err(errno)
        }
    }
}

// ---- control ---------------------------------------------------------------------------------

/// A listener whose last fd in this process is being closed: settled by [`after_close`] once
/// the real close is done.
#[must_use]
pub struct Closing(transport::Listener);

/// `close_range`: forget the fd (before the real close, so a reused fd number is never ours). A
/// listener comes back, to be handed to [`after_close`] after the real close.
pub fn before_close(fd: c_int) -> Option<Closing> {
    forget_epoll(fd);
    table::remove(fd).and_then(|s| retire(s, Some(fd)))
}

/// `close`: as [`before_close`], but the fd stays marked as closing until the caller's
/// `table::close_end` after the real close, so that another thread's call on it in between
/// waits instead of reaching the kernel socket.
pub fn begin_close(fd: c_int) -> Option<Closing> {
    forget_epoll(fd);
    table::close_begin(fd).and_then(|s| retire(s, Some(fd)))
}

fn forget_epoll(fd: c_int) {
    if crate::epoll::IN_USE.load(Relaxed) {
        crate::epoll::forget_fd(fd);
        crate::epoll::forget_set(fd);
    }
}

/// After the real close of a listener's last fd here: withdraw it unless the kernel's
/// listening socket lives on in another process (a forked child's or parent's copy).
pub fn after_close(c: Closing) {
    if let Ok(t) = global::get().transport() {
        t.close_listener(c.0);
    }
}

/// A listener whose fd is already closed: settle it now.
fn settle(c: Option<Closing>) {
    if let Some(c) = c {
        after_close(c);
    }
}

/// The kernel gave out the number of an fd that was closed behind our back (`fclose` of an
/// `fdopen` stream, a raw `close` system call): forget what it was, as `close` would have,
/// without touching the new fd.
pub fn forget_reused(fd: c_int) {
    if crate::epoll::involves(fd) {
        crate::epoll::forget_fd(fd);
        crate::epoll::forget_set(fd);
    }
    if let Some(s) = table::remove(fd) {
        settle(retire(s, None));
    }
}

/// The last reference to a tracked fd's entry is going: flush bytes kept before the answer
/// (while the kernel socket `fd` is still open), withdraw offers, keep the record. A listener
/// is returned, to be settled once its fd is closed ([`after_close`]).
fn retire(s: Arc<Sock>, fd: Option<c_int>) -> Option<Closing> {
    let g = global::get();
    let mut closing = None;
    if Arc::strong_count(&s) == 1 {
        // (Its statistics record is kept when the entry is dropped: see `Sock::drop`.)
        // Bytes sent before the answer must still reach the peer, whichever path it is; and an
        // accepted connection closed before its first use is completed, so that it closes as
        // one (the peer reads EOF, the service hears of it) rather than vanish unanswered.
        let accepting = || {
            s.state.lock().is_ok_and(|st| {
                matches!(&*st, State::Offered(Some(p))
                    if g.transport().is_ok_and(|t| t.pending_is_accept(p)))
            })
        };
        if let Some(fd) = fd.filter(|_| s.early.lock().is_ok_and(|e| !e.is_empty()) || accepting())
        {
            let _ = settle_offer(&s, fd, true);
        }
        if let Ok(mut st) = s.state.lock() {
            match std::mem::replace(&mut *st, State::Ntb) {
                State::Listening(Some(l)) => closing = Some(Closing(l)),
                State::Offered(Some(p)) => {
                    if let Ok(t) = g.transport() {
                        t.cancel(p);
                    }
                }
                other => *st = other,
            }
        }
    }
    closing
}

pub fn shutdown(fd: c_int, how: c_int) -> Detour<c_int> {
    let Some(s) = table::get(fd) else {
        return Detour::Bypass;
    };
    let Some(c) = s.conn.get() else {
        // A shutdown of the kernel socket would reach a peer whose stream is not on it.
        if s.state
            .lock()
            .is_ok_and(|st| matches!(*st, State::Forsaken))
        {
            return Detour::Ours(Err(libc::EIO));
        }
        return Detour::Bypass;
    };
    let (rd, wr) = match how {
        libc::SHUT_RD => (true, false),
        libc::SHUT_WR => (false, true),
        libc::SHUT_RDWR => (true, true),
        _ => return Detour::Ours(Err(libc::EINVAL)),
    };
    c.shutdown(rd, wr);
    // Our own readiness changed (hang-up, EOF for reads): wake this process's sleepers on the
    // connection, as the kernel does on shutdown.
    c.kick_local();
    Detour::Ours(Ok(0))
}

/// Keep O_NONBLOCK in step (after a successful real F_SETFL / FIONBIO).
pub fn set_nonblock(fd: c_int, on: bool) {
    if let Some(s) = table::get(fd) {
        s.nonblock.store(on, Relaxed);
    }
}

/// Keep SO_RCVTIMEO / SO_SNDTIMEO in step (after a successful real setsockopt).
pub fn set_timeout(fd: c_int, recv: bool, tv: libc::timeval) {
    if let Some(s) = table::get(fd) {
        let ns = (tv.tv_sec.max(0) as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(tv.tv_usec.max(0) as u64 * 1000);
        if recv {
            s.rcvtimeo_ns.store(ns, Relaxed);
        } else {
            s.sndtimeo_ns.store(ns, Relaxed);
        }
    }
}

/// Keep SO_TIMESTAMP / SO_TIMESTAMPNS in step (after a successful real setsockopt).
pub fn set_timestamping(fd: c_int, kind: u8, on: bool) {
    if let Some(s) = table::get(fd) {
        s.timestamp.store(if on { kind } else { 0 }, Relaxed);
    }
}

/// Which receive timestamp recvmsg must report on an NTB connection (0 none, 1 timeval,
/// 2 timespec).
pub fn timestamping(fd: c_int) -> u8 {
    table::get(fd).map_or(0, |s| {
        if s.conn.get().is_some() {
            s.timestamp.load(Relaxed)
        } else {
            0
        }
    })
}

/// FIONREAD / SIOCINQ on an NTB connection.
pub fn readable_bytes(fd: c_int) -> Option<usize> {
    let s = table::get(fd)?;
    s.conn.get().map(|c| c.readable_bytes())
}

/// dup/dup2/dup3/F_DUPFD: the new fd shares the old one's entry.
pub fn after_dup(old: c_int, new: c_int) {
    if old == new {
        return;
    }
    // The dup closed what `new` was: as `close` does for it (its epoll registrations, or the
    // epoll set it was).
    if crate::epoll::involves(new) {
        crate::epoll::forget_fd(new);
        crate::epoll::forget_set(new);
    }
    // Replace `new`'s entry in one step: a write on `new` racing a dup2 onto it finds one
    // entry or the other, never none (it would go to the kernel socket, outside the stream).
    let prev = match table::get(old) {
        Some(s) => table::replace(new, s).ok().flatten(),
        None => table::remove(new),
    };
    if let Some(s) = prev {
        settle(retire(s, None));
    }
}

// ---- readiness -------------------------------------------------------------------------------

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
    if conns.iter().all(|c| c.is_none()) {
        return Detour::Bypass;
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
    // `Global::woke_by_timer`).
    let mut timed_out = false;
    // Connections whose doorbell line, watched by an epoll registration too, ended the last
    // sleep: see the drain before the sleep below.
    let mut rung: Vec<Arc<Connection>> = Vec::new();
    loop {
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
                        settled = settle_offer(s, p.fd, false).ok().flatten();
                        settled.as_deref()
                    }
                };
                if let Some(c) = c {
                    p.revents = revents(c, p.events);
                    ours_ready += usize::from(p.revents != 0);
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

fn revents(c: &Connection, events: i16) -> i16 {
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

/// At load: a process that exec'd a new image keeps the fds of the old one. Pick up the NTB
/// connections it held on inherited sockets, so they go on over the bridge (socat's
/// `EXEC:…,nofork`, a shell that runs a filter on its socket).
/// At load: an inherited listening socket whose listener was published before the exec (by
/// this process or the one it inherited the socket from) is taken over, so this image answers
/// the offers that clients make to it. One not flagged for this program is left alone.
fn adopt_listener(g: &Global, fd: c_int) {
    let Some(local) = sys::local_addr(fd) else {
        return;
    };
    if !g.config.may_flag_port(local.port())
        || !g
            .config
            .decide(Role::Server, local.port(), Some(local.ip()), &g.program)
            .is_ntb()
    {
        return;
    }
    let Ok(t) = g.transport() else { return };
    let Some(l) = t.adopt_listener(fd) else {
        return;
    };
    g.log(LogLevel::Info, || {
        format!("fd {fd}: listener {local} taken over from before exec")
    });
    table::insert(
        fd,
        Arc::new(Sock::new(
            Role::Server,
            Endpoint::from_std(local),
            Endpoint::default(),
            sys::nonblocking(fd),
            State::Listening(Some(l)),
        )),
    );
}

pub fn reattach_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let g = global::get();
    let mut candidates = Vec::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<c_int>().ok()) else {
            continue;
        };
        let is_socket =
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        if !is_socket || !is_stream_inet(fd) {
            continue;
        }
        if sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1) {
            adopt_listener(g, fd);
            continue;
        }
        let (Some(local), Some(peer)) = (sys::local_addr(fd), sys::peer_addr(fd)) else {
            continue;
        };
        if g.config.may_flag_port(local.port()) || g.config.may_flag_port(peer.port()) {
            candidates.push(fd);
        }
    }
    if candidates.is_empty() {
        return;
    }
    let Ok(t) = g.transport() else { return };
    for fd in candidates {
        let (local, peer) = match (sys::local_addr(fd), sys::peer_addr(fd)) {
            (Some(l), Some(p)) => (Endpoint::from_std(l), Endpoint::from_std(p)),
            _ => continue,
        };
        let nonblock = sys::nonblocking(fd);
        let sock = match t.reattach(fd) {
            None => continue,
            Some(Outcome::Connected(c)) => {
                let role = match c.role {
                    transport::Role::Client => Role::Client,
                    transport::Role::Server => Role::Server,
                };
                let sock = Sock::new(role, c.local, c.peer, nonblock, State::Ntb);
                let _ = sock.conn.set(Arc::new(c));
                sock
            }
            // An offer still waiting for its answer completes on first use, as before exec.
            Some(Outcome::Waiting(p)) => {
                Sock::new(Role::Client, local, peer, nonblock, State::Offered(Some(p)))
            }
            Some(Outcome::Tcp(reason)) => {
                Sock::new(Role::Client, local, peer, nonblock, State::Tcp(reason))
            }
        };
        g.log(LogLevel::Info, || {
            format!("fd {fd}: NTB connection taken over from before exec")
        });
        table::insert(fd, Arc::new(sock));
    }
}
