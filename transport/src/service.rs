//! Connections paired by the host fabric service (docs/HOST-SERVICE.md): the process hands the
//! service its TCP sockets as proof, and gets for each connection two segments and two
//! interrupt lines of its own. No device is mapped, no rendezvous memory is shared with
//! anyone; the data path is the same `Connection` as over the device.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabric::{Client, ClientError, Pairing};

use crate::conn::Role;
use crate::{
    lock, Connection, Endpoint, Listener, ListenerState, Outcome, Pending, Reason, Shared,
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
}

/// A request that needs no answer.
enum Fire {
    Close(u64, bool),
    Cancel(fabric::Offer),
    Unlisten(u64),
}

impl Link {
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
        Ok(Link {
            path: path.to_path_buf(),
            client: Mutex::new(Some((std::process::id(), c))),
            deferred: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
        })
    }

    /// Run `f` on this process's service connection: a new one after a fork (each process
    /// its own), and again once on a new one when the service went away (restarted) under it.
    fn with<R>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        let mut g = lock(&self.client);
        for attempt in 0..2 {
            let me = std::process::id();
            let fresh = !matches!(&*g, Some((pid, _)) if *pid == me);
            if fresh {
                *g = None;
                *g = Some((me, Client::connect(&self.path)?));
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
            let deferred = std::mem::take(&mut *lock(&self.deferred));
            for d in deferred {
                let _ = match d {
                    Fire::Close(conn, server) => c.close_nowait(conn, server),
                    Fire::Cancel(offer) => c.cancel_nowait(offer),
                    Fire::Unlisten(id) => c.unlisten_nowait(id),
                };
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
            let _ = self.with(|c| match f {
                Fire::Close(conn, server) => c.close_nowait(conn, server),
                Fire::Cancel(offer) => c.cancel_nowait(offer),
                Fire::Unlisten(id) => c.unlisten_nowait(id),
            });
        } else {
            lock(&self.deferred).push(f);
        }
    }

    /// This process let go of its last reference to its end of `conn`.
    pub(crate) fn close(&self, conn: u64, server: bool) {
        lock(&self.held).retain(|h| h.0 != conn);
        self.fire(Fire::Close(conn, server));
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

fn link(shared: &Shared) -> Result<&Link, Reason> {
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

/// A client's offer to the service, waiting for the server's accept.
pub struct Offered {
    offer: fabric::Offer,
    /// Our interrupt line, which the service rings when the offer is answered; it becomes
    /// the connection's line.
    line: OwnedFd,
    pub(crate) local: Endpoint,
    remote: Endpoint,
    posted: Instant,
}

pub(crate) fn listen(shared: &Shared, socket: RawFd) -> Result<Listener, Reason> {
    let id = link(shared)?.with(|c| c.listen(socket)).map_err(failed)?;
    Ok(Listener {
        state: Arc::new(Mutex::new(ListenerState::Service(id))),
        // The service judges the listener by its socket itself.
        socket: Arc::new(Mutex::new(crate::proto::SocketId::default())),
    })
}

pub(crate) fn unlisten(shared: &Shared, l: Listener) {
    let mut s = lock(&l.state);
    if let ListenerState::Service(id) = std::mem::replace(&mut *s, ListenerState::Gone) {
        if let Ok(link) = link(shared) {
            link.fire(Fire::Unlisten(id));
        }
    }
}

pub(crate) fn offer(
    shared: &Shared,
    local: Endpoint,
    remote: Endpoint,
    tcp_fd: RawFd,
) -> Result<Pending, Reason> {
    let line = fabric::sys::move_high(fabric::sys::line().map_err(|_| Reason::NoDoorbell)?);
    let raw = line.as_raw_fd();
    // Not waiting for the service's word: whether a listener exists comes back with the
    // pairing (the line is rung either way); the connect does not wait a round trip for it.
    let offer = link(shared)?
        .with(|c| {
            c.offer_nowait(
                tcp_fd,
                raw,
                remote.ip,
                remote.port,
                shared.settings.ring_bytes,
            )
        })
        .map_err(failed)?;
    Ok(Pending::Service(Offered {
        offer,
        line,
        local,
        remote,
        posted: Instant::now(),
    }))
}

pub(crate) fn cancel(shared: &Shared, o: Offered) {
    if let Ok(link) = link(shared) {
        link.fire(Fire::Cancel(o.offer));
    }
}

/// The descriptor a pending client polls for its answer.
pub(crate) fn pending_fd(p: &Pending) -> RawFd {
    match p {
        Pending::Service(o) => o.line.as_raw_fd(),
        Pending::Device(_) => -1,
    }
}

/// Wait for the server's side of an offer: up to `patience` (`None`: until the answer timeout
/// passes, or the peer talks over TCP or hangs up, when the offer is withdrawn).
pub(crate) fn complete(
    shared: &Arc<Shared>,
    mut o: Offered,
    tcp_fd: RawFd,
    patience: Option<Duration>,
) -> Outcome {
    let Ok(link) = link(shared) else {
        return Outcome::Tcp(Reason::NoDevice);
    };
    let t0 = Instant::now();
    let timeout = shared.settings.answer_timeout;
    let mut withdrawn = false;
    loop {
        ntbdrv::drain_vector(&o.line);
        match link.with(|c| c.paired(&mut o.offer, Duration::ZERO)) {
            Ok(Some(Pairing::Paired(mut p))) => {
                p.peer_line = fabric::sys::move_high(p.peer_line);
                // Keep our own line (its descriptor number may be registered in an epoll set
                // already); the service's copy of it is the same eventfd.
                std::mem::swap(&mut p.own_line, &mut o.line);
                return match Connection::from_service(
                    shared.clone(),
                    p,
                    tcp_fd,
                    Role::Client,
                    o.local,
                    o.remote,
                ) {
                    Ok(c) => Outcome::Connected(c),
                    Err(r) => Outcome::Tcp(r),
                };
            }
            Ok(Some(Pairing::Declined(code))) => return Outcome::Tcp(reason(code)),
            Ok(None) => {}
            Err(e) => return Outcome::Tcp(failed(e)),
        }
        // The answer timeout holds for a non-blocking completion too (an application waiting
        // in epoll for a server that does not accept settles on TCP, as with the device).
        // A peer that talks over TCP, or hangs up, is not upgrading.
        let tcp_says = !matches!(crate::sys::peek_tcp(tcp_fd), crate::sys::Peek::Open);
        if !withdrawn && (o.posted.elapsed() >= timeout || tcp_says) {
            match link.with(|c| c.cancel(o.offer)) {
                Ok(()) => return Outcome::Tcp(Reason::NoAnswer),
                // Paired meanwhile: the answer is on its way.
                Err(ClientError::Refused(_)) => withdrawn = true,
                Err(e) => return Outcome::Tcp(failed(e)),
            }
        }
        if withdrawn && o.posted.elapsed() >= timeout + Duration::from_secs(5) {
            return Outcome::Tcp(Reason::NoAnswer);
        }
        if let Some(p) = patience {
            // Not a busy spin: the service rings our line when it answers, so sleep on it
            // for what is left (a spinning client took the CPU the server and the service
            // needed to answer it).
            let left = p.saturating_sub(t0.elapsed());
            if left.is_zero() {
                return Outcome::Waiting(Pending::Service(o));
            }
            let _ = crate::sys::poll2(o.line.as_raw_fd(), tcp_fd, Some(left));
            continue;
        }
        let _ = crate::sys::poll2(o.line.as_raw_fd(), tcp_fd, Some(Duration::from_millis(50)));
    }
}

pub(crate) fn accept(
    shared: &Arc<Shared>,
    tcp_fd: RawFd,
    local: Endpoint,
    peer: Endpoint,
) -> Result<Connection, Reason> {
    let ring = shared.settings.ring_bytes;
    match link(shared)?
        .with(|c| c.accept(tcp_fd, ring))
        .map_err(failed)?
    {
        Pairing::Paired(mut p) => {
            p.own_line = fabric::sys::move_high(p.own_line);
            p.peer_line = fabric::sys::move_high(p.peer_line);
            Connection::from_service(shared.clone(), p, tcp_fd, Role::Server, local, peer)
        }
        Pairing::Declined(code) => Err(match reason(code) {
            // As with the device: a client that hung up before we accepted made no offer that
            // is still there.
            Reason::NoOffer => match crate::sys::peek_tcp(tcp_fd) {
                crate::sys::Peek::Eof | crate::sys::Peek::Reset | crate::sys::Peek::Unusable => {
                    Reason::ClosedBeforeAccept
                }
                crate::sys::Peek::Open | crate::sys::Peek::Data => Reason::NoOffer,
            },
            r => r,
        }),
    }
}

/// Tell the service that the connection on `tcp_fd` stays on TCP (its fallback history). Only
/// when the service connection is free: a report is not worth a deferral (the socket may be
/// gone by the time a deferred request goes out), nor a wait.
pub(crate) fn report_fallback(shared: &Shared, tcp_fd: RawFd, reason: Reason, server: bool) {
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
pub(crate) fn reattach(shared: &Arc<Shared>, tcp_fd: RawFd) -> Option<Outcome> {
    let link = link(shared).ok()?;
    match link.with(|c| c.hold(tcp_fd)).ok()? {
        fabric::Held::Paired(mut p) => {
            p.own_line = fabric::sys::move_high(p.own_line);
            p.peer_line = fabric::sys::move_high(p.peer_line);
            Connection::reattach_service(shared.clone(), p, tcp_fd).map(Outcome::Connected)
        }
        // An offer this process made before its exec: it waits on for its server.
        fabric::Held::Offer(offer, line) => {
            let view = fabric::sys::tcp_view(tcp_fd).ok()??;
            let o = Offered {
                offer,
                line: fabric::sys::move_high(line),
                local: view.local.map(Endpoint::from).unwrap_or_default(),
                remote: view.peer.map(Endpoint::from)?,
                posted: Instant::now(),
            };
            Some(complete(shared, o, tcp_fd, Some(Duration::ZERO)))
        }
        fabric::Held::Declined(_) => None,
    }
}
