//! Connections paired by the host fabric service (docs/HOST-SERVICE.md): the process hands the
//! service its TCP sockets as proof, and gets for each connection one segment of its own and
//! the peer process's interrupt line. No device is mapped, no rendezvous memory is shared with
//! anyone; the data path is the same `Connection` as over the device.
//!
//! Descriptors: per connection only the application's TCP socket; per process one line of its
//! own (given with the service's hello; a new one per service connection, so a forked child
//! has its own) and one per peer process, each shared by the connections that use it (the
//! service names lines, and a line named twice is kept once).
//!
//! It must never map memory it was not given for a connection of its own, never take the
//! service's word for a connection it cannot prove with its own socket, and never wait for the
//! service on the data path: once paired, a connection runs without it (a service restart loses
//! no established connection).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fabric::{Client, ClientError, Pairing};

mod answer;
mod lines;
mod pairs;

pub(crate) use answer::answer_arrived;
use answer::look_before_sleep;

use crate::conn::{Role, Tally};
use crate::{
    lock, Connection, Endpoint, Listener, ListenerState, Outcome, Pending, ProcessState, Reason,
};

/// This process's connection to the service; a forked child opens its own (the service
/// answers each process for itself).
pub(crate) struct Link {
    path: PathBuf,
    client: Mutex<Option<(u32, Client)>>,
    /// Requests that need no answer, made while the connection was busy (see [`Link::fire`]).
    deferred: Mutex<Vec<Fire>>,
    /// The paired connections this process holds, with their socket: told to every new
    /// service connection with `Hold`, so a restarted service learns them again and a forked
    /// child that talks to the service counts as their holder.
    held: Mutex<Vec<(u64, RawFd)>>,
    /// This process's interrupt line on its current service connection (pid, line), and its
    /// tally page.
    own: Mutex<Option<Own>>,
    /// The lines this process keeps, by (service pid, the service's name for the line): a
    /// line named again (another connection with the same peer process) is the same one.
    lines: Mutex<HashMap<(u32, u64), Weak<OwnedFd>>>,
    /// The peer lines' tally pages, mapped once each, by the same key as `lines`.
    tallies: Mutex<HashMap<(u32, u64), Weak<Tally>>>,
    /// The lines most recently received, kept open after their connections end: a process that
    /// opens connection after connection to the same peer process (a client's loop, a server's
    /// clients) takes the same line each time instead of moving a new copy up and closing it.
    recent: Mutex<std::collections::VecDeque<PeerLine>>,
    /// Mappings of the segments of connections this process let go of cleanly: the service
    /// may give one again to the next connection with the same peer process.
    segments: crate::segcache::SegmentCache,
    /// The pid of the process that prepared a fork since its last request (0: none): its next
    /// request is preceded by `Forked`, so that the service closes the arenas of its pairs
    /// before any connection it could pair afterwards (docs/HOST-SERVICE.md, *Arenas*). A
    /// child copies the word, not the pid: it sends nothing for its parent's fork.
    forked: std::sync::atomic::AtomicU32,
    /// The bridge's device, mapped at this process's first connection paired across it (the
    /// environment names it: `PCISOCK_DEVICE`, `PCISOCK_EMU_*`).
    bridge: Mutex<Option<Arc<dyn ntbdrv::NtbDevice>>>,
}

/// This process's own line and tally page on its service connection, with the pid that made it
/// (a forked child has its parent's until it makes its own).
type Own = (u32, Arc<OwnedFd>, Option<Arc<Tally>>);

/// A peer process's line and its tally page.
type PeerLine = (Arc<OwnedFd>, Option<Arc<Tally>>);

/// Lines kept open after their last connection (see `Link::recent`).
const RECENT_LINES: usize = 4;

/// A request that needs no answer (the service gives none: wire version 4).
#[derive(Clone, Copy)]
enum Fire {
    Close(u64, bool, bool),
    Cancel(fabric::Offer),
    Unlisten(u64),
}

impl Fire {
    fn send(self, c: &mut Client) -> Result<(), ClientError> {
        match self {
            Fire::Close(conn, server, clean) => c.close(conn, server, clean),
            Fire::Cancel(offer) => c.cancel_nowait(offer),
            Fire::Unlisten(id) => c.unlisten(id),
        }
    }
}

impl Link {
    /// See `Transport::before_fork`.
    pub(crate) fn before_fork(&self) {
        self.segments.before_fork();
        self.before_spawn();
    }

    /// See `Transport::before_spawn`: the next request is preceded by `Forked`.
    pub(crate) fn before_spawn(&self) {
        (self.forked).store(ntbdrv::process::pid(), SeqCst);
    }

    /// Reach the service at `path` now, so that a missing service is known at start-up; if
    /// none answers and `starter` names the `pcisock` program, start one there (detached, in
    /// its own session) and wait for it.
    pub(crate) fn open(path: &Path, starter: Option<&Path>) -> Result<Link, ClientError> {
        let c = match (Client::connect(path), starter) {
            (Ok(c), _) => c,
            (Err(_), Some(bin)) => {
                start(bin, path)?;
                Client::connect(path)?
            }
            (Err(e), None) => return Err(e),
        };
        let link = Link {
            path: path.to_path_buf(),
            client: Mutex::new(None),
            deferred: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            own: Mutex::new(None),
            lines: Mutex::new(HashMap::new()),
            tallies: Mutex::new(HashMap::new()),
            recent: Mutex::new(std::collections::VecDeque::new()),
            segments: Default::default(),
            forked: Default::default(),
            bridge: Mutex::new(None),
        };
        let c = link.introduced(c);
        *lock(&link.client) = Some((ntbdrv::process::pid(), c));
        Ok(link)
    }

    /// A new service connection: its line becomes this process's own.
    fn introduced(&self, mut c: Client) -> Client {
        if let Some(l) = c.line.take() {
            let fd = l.fd;
            let tally = c.tally.take().and_then(|t| Tally::map(&t));
            lock(&self.lines).insert((c.service_pid, l.id), Arc::downgrade(&fd));
            *lock(&self.own) = Some((ntbdrv::process::pid(), fd, tally));
        }
        c
    }

    /// This process's own line (on its current service connection).
    fn own_line(&self) -> Option<Arc<OwnedFd>> {
        let me = ntbdrv::process::pid();
        lock(&self.own)
            .as_ref()
            .filter(|(pid, ..)| *pid == me)
            .map(|(_, l, _)| l.clone())
    }

    /// This process's own tally page (on its current service connection).
    fn own_tally(&self) -> Option<Arc<Tally>> {
        let me = ntbdrv::process::pid();
        lock(&self.own)
            .as_ref()
            .filter(|(pid, ..)| *pid == me)
            .and_then(|(.., t)| t.clone())
    }

    /// A connection the service paired across the bridge: the bridge's device mapped (once per
    /// process) and the connection made on the slices the service named; if that fails, our
    /// end is let go of at once (the service gives its slice back) and the connection stays on
    /// TCP.
    fn bridged(
        &self,
        shared: &Arc<ProcessState>,
        b: fabric::Bridged,
        tcp_fd: RawFd,
        role: Role,
        local: Endpoint,
        peer: Endpoint,
    ) -> Result<Connection, Reason> {
        let dev = {
            let mut d = lock(&self.bridge);
            match d.as_ref() {
                Some(dev) => Ok(dev.clone()),
                None => ntbdrv::recommended::open_default()
                    .map(|dev| d.insert(dev).clone())
                    .map_err(|e| crate::OpenError::Device(e).reason()),
            }
        };
        let c = dev.and_then(|dev| {
            Connection::from_bridge(shared.clone(), dev, b, tcp_fd, role, local, peer)
        });
        if c.is_err() {
            self.close(b.conn, b.server);
        }
        c
    }

    /// This process let go of its last reference to its end of `conn` (`server`: the
    /// accepting end) after its last write into `segment` (its whole mapping, `id`); `clean`:
    /// no other process can hold the end (see `fabric::wire::Request::Close`). A clean end's
    /// mapping is kept for the service to give again.
    pub(crate) fn let_go(
        &self,
        conn: u64,
        server: bool,
        clean: bool,
        segment: (ntbdrv::SegmentIdentity, &ntbdrv::Region),
    ) {
        lock(&self.held).retain(|h| h.0 != conn);
        self.fire(Fire::Close(conn, server, clean));
        if clean {
            self.segments.keep(segment.0, segment.1.clone());
        }
    }

    /// Run `f` on this process's service connection: a new one after a fork (each process
    /// its own), and again once on a new one when the service went away (restarted) under it.
    fn with<R>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        let mut g = lock(&self.client);
        for attempt in 0..2 {
            let me = ntbdrv::process::pid();
            let fresh = !matches!(&*g, Some((pid, _)) if *pid == me);
            if fresh {
                *g = None;
                *g = Some((me, self.introduced(Client::connect(&self.path)?)));
            }
            let Some((_, c)) = g.as_mut() else {
                return Err(ClientError::Gone);
            };
            if fresh {
                // A new service connection: this process (a forked child, or one whose
                // service restarted) tells it what it holds, with the sockets as proof.
                let held = lock(&self.held).clone();
                for (_, fd) in held {
                    let _ = c.hold(fd);
                }
            }
            // A fork since the last request: told first (never answered), so that the service
            // knows before anything this process could pair after it.
            let forked = (self.forked)
                .compare_exchange(me, 0, SeqCst, SeqCst)
                .is_ok();
            if forked && c.forked().is_err() {
                (self.forked).store(me, SeqCst);
            }
            let deferred = std::mem::take(&mut *lock(&self.deferred));
            for d in deferred {
                let _ = d.send(c);
            }
            let r = f(c);
            if matches!(r, Err(ClientError::Gone | ClientError::Io(_))) {
                *g = None; // reconnect
                if attempt == 0 && !fresh {
                    continue; // the service went away since our last request: try its successor
                }
            }
            return r;
        }
        Err(ClientError::Gone)
    }

    /// Send a request that needs no answer now, or with the next request if the connection
    /// is busy. It may be busy in this very thread: closing one of our own descriptors inside
    /// [`Link::with`] runs the application's close path, which can let go of a stale
    /// connection (an fd the application closed behind our back) and so come here.
    fn fire(&self, f: Fire) {
        let free = self.client.try_lock().is_ok();
        if free {
            let _ = self.with(|c| f.send(c));
        } else {
            lock(&self.deferred).push(f);
        }
    }

    /// This process let go of its end of `conn` without using it (an accept given up).
    pub(crate) fn close(&self, conn: u64, server: bool) {
        lock(&self.held).retain(|h| h.0 != conn);
        self.fire(Fire::Close(conn, server, false));
    }

    /// This process holds `conn` on socket `tcp_fd`.
    pub(crate) fn note_held(&self, conn: u64, tcp_fd: RawFd) {
        let mut h = lock(&self.held);
        h.retain(|x| x.0 != conn);
        h.push((conn, tcp_fd));
    }
}

/// Start a service at `socket` with `pcisock fabric start --on-demand` (which returns once it
/// answers), with an empty environment: nothing of the application's (its preloads, its
/// settings) reaches the service. Another process starting one at the same moment is fine: one
/// of them wins the socket's lock and both then connect to it.
fn start(bin: &Path, socket: &Path) -> Result<(), ClientError> {
    let out = std::process::Command::new(bin)
        .args(["fabric", "start", "--on-demand", "--socket"])
        .arg(socket)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match out {
        Ok(_) => Ok(()),
        Err(e) => Err(ClientError::Io(e)),
    }
}

fn link(shared: &ProcessState) -> Result<&Link, Reason> {
    shared.service.as_ref().ok_or(Reason::NoDevice)
}

/// Why the service's answer keeps a connection on TCP.
fn reason(code: u32) -> Reason {
    Reason::from_code(code).unwrap_or(Reason::PeerDeclined)
}

fn failed(e: ClientError) -> Reason {
    match e {
        ClientError::Refused(_) | ClientError::Wire(_) | ClientError::Unexpected(_) => {
            Reason::BadPeer
        }
        ClientError::Io(_) | ClientError::Gone | ClientError::TimedOut => Reason::NoDevice,
    }
}

/// A client's offer to the service, waiting for the server's accept; or a server's accept,
/// waiting for the service's answer (`server`).
pub struct Offered {
    offer: fabric::Offer,
    /// The accepting end: the request is an `Accept`, which the service answers at once (it
    /// rings our line when it has); the connection completes at its first use.
    server: bool,
    /// This process's line, which the service rings when the offer is answered (shared: a
    /// wait sleeps on `sys::wake_fd`).
    line: Arc<OwnedFd>,
    pub(crate) local: Endpoint,
    remote: Endpoint,
    /// When the offer was made, or the host's servers last accepted a connection as far as
    /// this client knows (the answer timeout counts from it).
    progress: Instant,
    /// The service said the connection has not reached a server (`fabric::Stalled::Unreached`),
    /// and the bytes its client sent on TCP to reach one since (`None`: none yet).
    unreached: bool,
    plain: Option<u64>,
    /// The service was asked whether the offer stalled (or the first question's time passed
    /// while the kernel still connected the socket): the next question waits for the answer
    /// timeout.
    questioned: bool,
}

/// When a client first asks whether its offer stalled (or the answer timeout, if shorter).
/// Early, for one case: a burst that overflowed the listener's queue can leave a connected
/// client whose connection reached no server (the handshake's last segment dropped, SYN
/// cookies); TCP's client recovers with its first segment, which ours holds until the service
/// tells it so. TCP's own least retransmission timeout; a pending connect asks once this early.
const FIRST_QUESTION: Duration = Duration::from_millis(200);

/// Is it time to ask whether offer `o` stalled?
fn question_due(o: &Offered, timeout: Duration) -> bool {
    let waited = o.progress.elapsed();
    waited >= timeout || (!o.questioned && waited >= FIRST_QUESTION.min(timeout))
}

impl Offered {
    fn new(
        offer: fabric::Offer,
        server: bool,
        line: Arc<OwnedFd>,
        ends: (Endpoint, Endpoint),
    ) -> Offered {
        Offered {
            offer,
            server,
            line,
            local: ends.0,
            remote: ends.1,
            progress: Instant::now(),
            unreached: false,
            plain: None,
            questioned: false,
        }
    }
}

/// Does this offer wait for its client's first bytes to reach its server (see [`reach`])?
pub(crate) fn reaching(o: &Offered) -> bool {
    o.unreached && o.plain.is_none()
}

/// The client of `o` is about to send its first `bytes` on the TCP socket to reach a server its
/// connection has not reached: true once the service keeps the count (send them now; the
/// server's end reads them as the stream's plain start); false when the offer was answered
/// meanwhile (send nothing: its answer is on its way, and the bytes go wherever it says).
pub(crate) fn reach(shared: &ProcessState, o: &mut Offered, bytes: u64) -> bool {
    let Ok(link) = link(shared) else {
        return false;
    };
    if !reaching(o) || bytes == 0 {
        return false;
    }
    match link.with(|c| c.plain(&o.offer, bytes)) {
        Ok(()) => {
            o.plain = Some(bytes);
            true
        }
        Err(_) => {
            // Answered meanwhile (or the service went away): waited for as any offer.
            o.unreached = false;
            false
        }
    }
}

pub(crate) fn listen(shared: &ProcessState, socket: RawFd) -> Result<Listener, Reason> {
    let id = link(shared)?.with(|c| c.listen(socket)).map_err(failed)?;
    Ok(Listener {
        state: Arc::new(Mutex::new(ListenerState::Service(id))),
        // The service judges the listener by its socket itself.
        socket: Arc::new(Mutex::new(crate::proto::SocketId::default())),
    })
}

pub(crate) fn unlisten(shared: &ProcessState, l: Listener) {
    let mut s = lock(&l.state);
    if let ListenerState::Service(id) = std::mem::replace(&mut *s, ListenerState::Gone) {
        if let Ok(link) = link(shared) {
            link.fire(Fire::Unlisten(id));
        }
    }
}

pub(crate) fn offer(
    shared: &ProcessState,
    local: Endpoint,
    remote: Endpoint,
    tcp_fd: RawFd,
) -> Result<Pending, Reason> {
    // Not waiting for the service's word: whether a listener exists comes back with the
    // pairing (the line is rung either way); the connect does not wait a round trip for it.
    let link = link(shared)?;
    let (offer, line) = link
        .with(|c| {
            let o = c.offer_nowait(tcp_fd, remote.ip, remote.port, shared.settings.ring_bytes)?;
            Ok((o, link.own_line()))
        })
        .map_err(failed)?;
    let line = line.ok_or(Reason::NoDoorbell)?;
    Ok(Pending::Service(Offered::new(
        offer,
        false,
        line,
        (local, remote),
    )))
}

/// Give up a pending offer. A server's accept has nothing to withdraw (the service answers it
/// at once, and a pairing makes this process a holder of the server end): its answer is taken
/// in, and a connection it paired is let go of at once, as a close would.
pub(crate) fn cancel(shared: &ProcessState, mut o: Offered) {
    let Ok(link) = link(shared) else {
        return;
    };
    if !o.server {
        return link.fire(Fire::Cancel(o.offer));
    }
    match link.with(|c| c.paired(&mut o.offer, ANSWER_PATIENCE)) {
        Ok(Some(Pairing::Paired(fabric::Paired { conn, .. })))
        | Ok(Some(Pairing::Again(fabric::Again { conn, .. })))
        | Ok(Some(Pairing::Bridged(fabric::Bridged { conn, .. }))) => link.close(conn, true),
        _ => {}
    }
}

/// How long a server waits for the service's answer to its `Accept` (which the service gives
/// at once): as long as any request waits for its reply.
const ANSWER_PATIENCE: Duration = Duration::from_secs(5);

/// The descriptor a pending client's answer rings: this process's line (shared, never
/// emptied: an epoll set registers it edge-triggered; a thread sleeps on `sys::wake_fd`).
pub(crate) fn pending_fd(p: &Pending) -> RawFd {
    match p {
        Pending::Service(o) => o.line.as_raw_fd(),
        Pending::Device(_) => -1,
    }
}

/// Which of `offers` may have news (one look at the service's socket for all of them): its
/// answer arrived, or its answer timeout passed. The others need no look until then (or until
/// their TCP socket shows something): an application waiting on thousands of pending connects
/// pays for the ones that moved, not for all of them on every wait.
pub(crate) fn news(shared: &ProcessState, offers: &[&Offered]) -> Vec<bool> {
    let timeout = shared.settings.answer_timeout;
    let Ok(link) = link(shared) else {
        return vec![true; offers.len()];
    };
    link.with(|c| {
        c.take_replies()?;
        Ok(offers
            .iter()
            .map(|o| question_due(o, timeout) || reaching(o) || c.answered(&o.offer))
            .collect())
    })
    .unwrap_or_else(|_| vec![true; offers.len()])
}

/// Wait for the server's side of an offer: up to `patience` (`None`: until the answer timeout
/// passes, or the peer talks over TCP or hangs up, when the offer is withdrawn). `early`: the
/// bytes the caller holds for the connection; when the service says the connection has not
/// reached a server (`reaching`), such a caller gets the offer back at once (`Waiting`), to
/// send them on TCP after [`reach`] (a caller holding none waits on: only a client's segment
/// reaches the server, and it has none to send, as on TCP).
pub(crate) fn complete(
    shared: &Arc<ProcessState>,
    mut o: Offered,
    tcp_fd: RawFd,
    patience: Option<Duration>,
    early: usize,
) -> Outcome {
    let Ok(link) = link(shared) else {
        return Outcome::Tcp(Reason::NoDevice);
    };
    let t0 = Instant::now();
    let timeout = shared.settings.answer_timeout;
    let mut withdrawn = false;
    loop {
        // Registered before the look: a ring after it reaches our sleep below.
        let sleep_fd = crate::sys::wake_fd(o.line.as_raw_fd()).unwrap_or(-1);
        match link.with(|c| {
            let svc = c.service_pid;
            c.paired(&mut o.offer, Duration::ZERO).map(|p| (svc, p))
        }) {
            Ok((svc, Some(p @ (Pairing::Paired(_) | Pairing::Again(_))))) => {
                let Ok((plain, Some(p))) = link.resolve(svc, p) else {
                    return Outcome::Tcp(Reason::BadPeer);
                };
                let role = if o.server { Role::Server } else { Role::Client };
                return match Connection::from_service(
                    shared.clone(),
                    p,
                    tcp_fd,
                    role,
                    o.local,
                    o.remote,
                ) {
                    Ok(c) => {
                        after_plain(&c, role, plain);
                        Outcome::Connected(c)
                    }
                    Err(r) => Outcome::Tcp(r),
                };
            }
            Ok((_, Some(Pairing::Bridged(b)))) => {
                let role = if o.server { Role::Server } else { Role::Client };
                return match link.bridged(shared, b, tcp_fd, role, o.local, o.remote) {
                    Ok(c) => Outcome::Connected(c),
                    Err(r) => Outcome::Tcp(r),
                };
            }
            Ok((_, Some(Pairing::Declined(code)))) if o.server => {
                return Outcome::Tcp(accept_declined(code, tcp_fd))
            }
            Ok((_, Some(Pairing::Declined(code)))) => return Outcome::Tcp(reason(code)),
            Ok((_, None)) => {}
            Err(e) => return Outcome::Tcp(failed(e)),
        }
        if o.server {
            // The service answers an accept at once: only a service gone quiet (or one that
            // restarted under us and never saw the request) keeps us waiting this long.
            if o.progress.elapsed() >= ANSWER_PATIENCE {
                return Outcome::Tcp(Reason::NoDevice);
            }
            let left = patience.map_or(Duration::from_millis(50), |p| {
                p.saturating_sub(t0.elapsed())
            });
            if left.is_zero() {
                return Outcome::Waiting(Pending::Service(o));
            }
            let _ = crate::sys::poll2(sleep_fd, -1, Some(left));
            crate::sys::wake_consume();
            continue;
        }
        // The answer timeout holds for a non-blocking completion too (an application waiting
        // in epoll for a server that does not accept settles on TCP, as with the device).
        // A peer that talks over TCP, or hangs up, is not upgrading.
        let tcp_says = !matches!(crate::sys::peek_tcp(tcp_fd), crate::sys::Peek::Open);
        // The early question only for a connection the kernel connected: one still in its
        // handshake (its SYN dropped by a full queue) has nothing to look up yet, and waits
        // for the answer timeout.
        let first = !o.questioned && o.progress.elapsed() < timeout;
        if first && !tcp_says && question_due(&o, timeout) && !crate::sys::connected(tcp_fd) {
            o.questioned = true;
        }
        if !withdrawn && (question_due(&o, timeout) || tcp_says) {
            o.questioned = true;
            // The timeout counts from the host's servers' last progress: while they accept
            // other connections the service refuses to call the offer stalled (a server
            // working through a long backlog reaches its last clients late), up to its own
            // patience for an offer.
            let r = if tcp_says {
                link.with(|c| c.cancel(o.offer))
                    .map(|()| fabric::Stalled::GivenUp)
            } else {
                link.with(|c| c.cancel_if_stalled(o.offer))
            };
            match r {
                Ok(fabric::Stalled::GivenUp) => return Outcome::Tcp(Reason::NoAnswer),
                Ok(fabric::Stalled::Stands) => o.progress = Instant::now(),
                Ok(fabric::Stalled::Unreached) => {
                    o.progress = Instant::now();
                    o.unreached = true;
                }
                // Paired meanwhile: the answer is on its way.
                Err(ClientError::Refused(_)) => withdrawn = true,
                Err(e) => return Outcome::Tcp(failed(e)),
            }
        }
        if withdrawn && o.progress.elapsed() >= timeout + Duration::from_secs(5) {
            return Outcome::Tcp(Reason::NoAnswer);
        }
        if early > 0 && reaching(&o) {
            return Outcome::Waiting(Pending::Service(o));
        }
        if let Some(p) = patience {
            let left = p.saturating_sub(t0.elapsed());
            if left.is_zero() {
                return Outcome::Waiting(Pending::Service(o));
            }
            if look_before_sleep(shared, link, &o, left) {
                continue;
            }
            // Then sleep: the service rings our line when it answers.
            let _ = crate::sys::poll2(sleep_fd, tcp_fd, Some(left));
            crate::sys::wake_consume();
            continue;
        }
        let _ = crate::sys::poll2(sleep_fd, tcp_fd, Some(Duration::from_millis(50)));
        crate::sys::wake_consume();
    }
}

/// Start the upgrade of the connection the kernel accepted on `tcp_fd`: the `Accept` goes to
/// the service without waiting for its answer, and the connection completes at its first use
/// ([`complete`], as a client's connect does): an accept costs no round trip to the service,
/// and a server accepting a burst of connections sends their accepts one after the other.
pub(crate) fn accept_started(
    shared: &ProcessState,
    tcp_fd: RawFd,
    local: Endpoint,
    peer: Endpoint,
) -> Result<Pending, Reason> {
    let ring = shared.settings.ring_bytes;
    let link = link(shared)?;
    let (offer, line) = link
        .with(|c| Ok((c.accept_nowait(tcp_fd, ring)?, link.own_line())))
        .map_err(failed)?;
    let line = line.ok_or(Reason::NoDoorbell)?;
    Ok(Pending::Service(Offered::new(
        offer,
        true,
        line,
        (local, peer),
    )))
}

/// Is `p` a server's accept waiting for the service's answer (not a client's offer)?
pub(crate) fn is_accept(p: &Pending) -> bool {
    matches!(p, Pending::Service(o) if o.server)
}

/// Why an accept the service declined stays on TCP.
fn accept_declined(code: u32, tcp_fd: RawFd) -> Reason {
    match reason(code) {
        // As with the device: a client that hung up before we accepted made no offer that
        // is still there.
        Reason::NoOffer => match crate::sys::peek_tcp(tcp_fd) {
            crate::sys::Peek::Eof | crate::sys::Peek::Reset | crate::sys::Peek::Unusable => {
                Reason::ClosedBeforeAccept
            }
            crate::sys::Peek::Open | crate::sys::Peek::Data => Reason::NoOffer,
        },
        r => r,
    }
}

/// How long a blocking accept paired with this process's own offer waits for the ring the
/// service sends the client end after the replies (microseconds, unless the service is slow).
const OWN_RING_WAIT: Duration = Duration::from_millis(50);

pub(crate) fn accept(
    shared: &Arc<ProcessState>,
    tcp_fd: RawFd,
    local: Endpoint,
    peer: Endpoint,
) -> Result<Connection, Reason> {
    let ring = shared.settings.ring_bytes;
    let link = link(shared)?;
    // Watch our line from before the accept: if the client is this process (its own offer),
    // the service rings our line for the client's answer right after the replies.
    let watch = link
        .own_line()
        .and_then(|l| crate::sys::wake_fd(l.as_raw_fd()));
    if watch.is_some() {
        // Edges of rings before this accept are not the one we may wait for.
        crate::sys::wake_consume();
    }
    match link
        .with(|c| Ok((c.service_pid, c.accept(tcp_fd, ring)?)))
        .map_err(failed)?
    {
        (svc, p @ (Pairing::Paired(_) | Pairing::Again(_))) => {
            let own_client = match &p {
                Pairing::Paired(p) => p.own_line.id == p.peer_line.id,
                Pairing::Again(a) => a.own_line == a.peer_line,
                _ => false,
            };
            let Ok((plain, Some(p))) = link.resolve(svc, p) else {
                return Err(Reason::BadPeer);
            };
            if let (true, Some(w)) = (own_client, watch) {
                // Let that ring land before `accept` returns: an epoll set the application
                // makes for the connection next takes it as an old edge when it adds our line.
                // Landing after, it would make the set readable for nothing (an epoll set
                // nested in another woke its outer set while the connection was idle).
                let _ = crate::sys::poll1(w, libc::POLLIN, Some(OWN_RING_WAIT));
                crate::sys::wake_consume();
            }
            let c = Connection::from_service(shared.clone(), p, tcp_fd, Role::Server, local, peer)?;
            after_plain(&c, Role::Server, plain);
            Ok(c)
        }
        (_, Pairing::Bridged(b)) => link.bridged(shared, b, tcp_fd, Role::Server, local, peer),
        (_, Pairing::Declined(code)) => Err(accept_declined(code, tcp_fd)),
    }
}

/// A connection whose client sent its first `plain` bytes on TCP to reach the server
/// ([`reach`]): each direction starts as failed over at its plain count, and goes back to the
/// ring at its first send (PROTOCOL.md §6, *Late upgrade*; the server sent nothing before the
/// pairing, and neither end read anything).
fn after_plain(c: &Connection, role: Role, plain: u64) {
    if plain > 0 {
        match role {
            Role::Client => c.start_late(plain, 0, 0),
            Role::Server => c.start_late(0, plain, 0),
        }
    }
}

/// Tell the service that the connection on `tcp_fd` stays on TCP (its fallback history). Only
/// when the service connection is free: a report is not worth a deferral (the socket may be
/// gone by the time a deferred request goes out), nor a wait.
pub(crate) fn report_fallback(shared: &ProcessState, tcp_fd: RawFd, reason: Reason, server: bool) {
    let Ok(link) = link(shared) else {
        return;
    };
    // No service to tell, or one that is not answering.
    if reason == Reason::NoDevice {
        return;
    }
    if link.client.try_lock().is_ok() {
        let _ = link.with(|c| c.fallback_nowait(tcp_fd, reason.code(), server));
    }
}

/// In a new image after exec: the connection the service paired that `tcp_fd` carries, if
/// this process holds it (the socket is the proof).
pub(crate) fn reattach(shared: &Arc<ProcessState>, tcp_fd: RawFd) -> Option<Outcome> {
    let link = link(shared).ok()?;
    match link.with(|c| Ok((c.service_pid, c.hold(tcp_fd)?))).ok()? {
        (svc, fabric::Held::Paired(p)) => {
            let p = link.pair(svc, p)?;
            Connection::reattach_service(shared.clone(), p, tcp_fd).map(Outcome::Connected)
        }
        // An offer this process made before its exec: it waits on for its server.
        (svc, fabric::Held::Offer(offer, line)) => {
            let view = fabric::sys::tcp_view(tcp_fd).ok()??;
            let ends = (
                view.local.map(Endpoint::from).unwrap_or_default(),
                view.peer.map(Endpoint::from)?,
            );
            let o = Offered::new(offer, false, link.line(svc, line), ends);
            Some(complete(shared, o, tcp_fd, Some(Duration::ZERO), 0))
        }
        (_, fabric::Held::Declined(_)) => None,
    }
}
