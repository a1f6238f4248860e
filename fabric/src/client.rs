//! The process side of the service: one connection per process (a forked child opens its
//! own), requests with the sockets they concern, and the replies — including a `Paired` that
//! arrives for an earlier `Connect` while another request waits (kept until asked for).
//! Used by the transport's service path and by the CLI. It never waits for a reply longer than
//! its patience (`REPLY_PATIENCE`, or what the caller gives; the one-way requests wait for
//! nothing), and never maps or reads connections' memory: the segments and lines it receives go
//! to its caller as descriptors.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::sys;
pub use crate::wire::Again;
use crate::wire::{Addr, Refusal, Reply, Request, Status, WireError};

/// A request that did not get what it asked for.
#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    /// The service refused the request.
    Refused(Refusal),
    /// The service's reply was not a well-formed message.
    Wire(WireError),
    /// A well-formed reply of the wrong kind.
    Unexpected(Reply),
    /// The service closed the connection.
    Gone,
    TimedOut,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "fabric service: {e}"),
            ClientError::Refused(r) => write!(f, "fabric service refused: {r}"),
            ClientError::Wire(WireError::Version(v)) => write!(
                f,
                "a fabric service of another version answers there (protocol version {v}; this \
                 build speaks {}): use that version's pcisock for it, or end its process",
                crate::wire::VERSION
            ),
            ClientError::Wire(e) => write!(f, "fabric service sent a bad reply: {e}"),
            ClientError::Unexpected(r) => write!(f, "fabric service sent {r:?}"),
            ClientError::Gone => f.write_str("fabric service closed the connection"),
            ClientError::TimedOut => f.write_str("fabric service did not answer in time"),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A paired connection: its memory (the arena whose range `offset..offset +
/// service::segment_bytes(ring_bytes)` is the connection's segment), this side's interrupt line and the peer's, with the service's names
/// for the two lines (a line is one per process, shared by its connections: a process that
/// has a line of that name already keeps one descriptor of it).
#[derive(Debug)]
pub struct Paired {
    pub conn: u64,
    pub ring_bytes: u64,
    pub server: bool,
    pub segment: OwnedFd,
    /// Where the segment starts in `segment` (the arena).
    pub offset: u64,
    pub own_line: Line,
    pub peer_line: Line,
    /// The peer line's tally page (see `Request::Hello`).
    pub peer_tally: Arc<OwnedFd>,
    /// The bytes the client sent on the TCP socket before the pairing (`Request::Plain`).
    pub plain: u64,
}

/// What a "stalled?" question about an offer found (see [`Client::cancel_if_stalled`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stalled {
    /// Given up: nothing reached a server that answers.
    GivenUp,
    /// The host's servers accepted other connections since, or the connection waits in its
    /// listener's queue: it stands, wait on.
    Stands,
    /// It stands, but its connection has not reached a server (no server side exists in the
    /// kernel: the listener's queue overflowed): only a segment from the client makes the
    /// kernel create it. Send the first bytes on TCP after [`Client::plain`] said so.
    Unreached,
}

/// A connection paired across the bridge (`Reply::Bridged`): this end's block in this host's
/// inbound window, the peer end's through the outbound window, each with the interrupt vector
/// its reader sleeps on.
#[derive(Debug, Clone, Copy)]
pub struct Bridged {
    pub conn: u64,
    pub ring_bytes: u64,
    pub server: bool,
    pub own: crate::wire::Slice,
    pub peer: crate::wire::Slice,
}

/// An interrupt line (an eventfd) and the service's name for it.
#[derive(Debug)]
pub struct Line {
    pub id: u64,
    /// One descriptor per line in this process however many replies name it (see
    /// `Client::shared`).
    pub fd: Arc<OwnedFd>,
}

/// How an offer or an accept ended.
#[derive(Debug)]
pub enum Pairing {
    Paired(Paired),
    /// Paired on a segment, and with lines, this process has already (`Reply::Again`): what
    /// it no longer has, it asks for with [`Client::refetch`].
    Again(Again),
    /// Paired with a process on the other host: the two ends' blocks on the bridge
    /// (`Reply::Bridged`).
    Bridged(Bridged),
    /// Stay on TCP, with this reason code (docs/PROTOCOL.md §5).
    Declined(u32),
}

/// What a `Hold` found.
#[derive(Debug)]
pub enum Held {
    Paired(Paired),
    /// An offer still waiting for its server, with its interrupt line.
    Offer(Offer, Line),
    Declined(u32),
}

/// A client's pending offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub conn: u64,
    request: u64,
}

/// Stashed replies a drained `Client::stash` keeps room for.
const STASH_KEPT: usize = 64;

/// A process's connection to the service.
pub struct Client {
    sock: OwnedFd,
    next: u64,
    /// Replies that arrived while another was awaited, by request id.
    stash: HashMap<u64, Received>,
    /// The lines and tally pages replies brought, by the service's id of the line (and
    /// whether it is the page): a reply that names one this process still has shares that
    /// descriptor, and the copy the kernel installed for it is closed at once. Every `Paired`
    /// carries both lines and the peer's page, so a burst of thousands of pairings kept until
    /// their connections are used held four descriptors each, and the process ran out of them
    /// (the kernel then drops a message's descriptors: `BadPeer`, and the cascade of
    /// benches/results/scaling.md). Now: its segment and one per distinct line.
    shared: HashMap<(u64, bool), Weak<OwnedFd>>,
    /// Requests whose reply arrived truncated while another was awaited: each fails when it is
    /// asked for (and only it).
    lost: std::collections::HashSet<u64>,
    /// A sock_diag socket of this process's namespace went to the service (`Namespace`).
    namespace_sent: bool,
    pub service_pid: u32,
    pub ring_bytes: u64,
    pub window_bytes: u64,
    /// This process's interrupt line, given with `Hello` (taken by whoever waits on it).
    pub line: Option<Line>,
    /// This process's tally page, given with `Hello` beside the line (taken with it).
    pub tally: Option<OwnedFd>,
}

/// A reply and the descriptors it brought (lines shared: `Client::shared`).
type Received = (Reply, Vec<Arc<OwnedFd>>);

/// How long one request waits for its reply.
const REPLY_PATIENCE: Duration = Duration::from_secs(5);

impl Client {
    /// Connect to the service at `path` and introduce this process, with a new interrupt
    /// line (see [`Client::line`]).
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let sock = sys::connect_unix(path)?;
        let line = sys::move_high(sys::line()?);
        let tally = sys::move_high(sys::tally()?);
        let mut c = Client {
            sock,
            next: 1,
            stash: HashMap::new(),
            shared: HashMap::new(),
            lost: std::collections::HashSet::new(),
            namespace_sent: false,
            service_pid: 0,
            ring_bytes: 0,
            window_bytes: 0,
            line: None,
            tally: None,
        };
        let id = c.send_fds(
            Request::Hello { pid: sys::getpid() },
            &[line.as_raw_fd(), tally.as_raw_fd()],
        )?;
        match c.wait(id, REPLY_PATIENCE)?.ok_or(ClientError::TimedOut)?.0 {
            Reply::Welcome {
                service_pid,
                ring_bytes,
                window_bytes,
                line: id,
            } => {
                c.service_pid = service_pid;
                c.ring_bytes = ring_bytes;
                c.window_bytes = window_bytes;
                let fd = Arc::new(line);
                c.shared.insert((id, false), Arc::downgrade(&fd));
                c.line = Some(Line { id, fd });
                c.tally = Some(tally);
                Ok(c)
            }
            r => Err(ClientError::Unexpected(r)),
        }
    }

    /// The connection's descriptor (readable when a reply, such as a `Paired` for an offer,
    /// has arrived).
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn send(&mut self, r: Request, fd: Option<RawFd>) -> Result<u64, ClientError> {
        let fds: Vec<RawFd> = fd.into_iter().collect();
        self.send_fds(r, &fds)
    }

    fn send_fds(&mut self, r: Request, fds: &[RawFd]) -> Result<u64, ClientError> {
        let id = self.next;
        self.next += 1;
        sys::send_msg(self.sock.as_raw_fd(), &r.encode(id), fds)?;
        Ok(id)
    }

    /// Wait up to `patience` for the reply to `id`.
    fn wait(&mut self, id: u64, patience: Duration) -> Result<Option<Received>, ClientError> {
        let t0 = Instant::now();
        loop {
            if let Some(r) = self.stash.remove(&id) {
                // A burst of connects (thousands stashed while one was awaited) leaves a table
                // of its size behind: given back once it drains (benches/results/
                // heap-session14.md: 130 bytes a connection in wrk at 2,000).
                if self.stash.is_empty() && self.stash.capacity() > STASH_KEPT {
                    self.stash = HashMap::new();
                }
                return Ok(Some(r));
            }
            if self.lost.remove(&id) {
                return Err(ClientError::Wire(WireError::Truncated));
            }
            let left = patience.saturating_sub(t0.elapsed());
            let rev = sys::poll_in(&[self.sock.as_raw_fd()], left.as_millis() as i32)?;
            if rev[0] == 0 {
                if t0.elapsed() >= patience {
                    return Ok(None);
                }
                continue;
            }
            let Some(m) = sys::recv_msg(self.sock.as_raw_fd())? else {
                return Err(ClientError::Gone);
            };
            if m.truncated {
                // Its descriptors did not all arrive (this process at its open-file limit: the
                // kernel drops them) or it is too long: it fails the request it answers, and
                // only that one (a wait for another reply goes on).
                match crate::wire::header_id(&m.bytes) {
                    Some(rid) if rid != id && rid != 0 => {
                        if self.lost.len() >= 4096 {
                            self.lost.clear();
                        }
                        self.lost.insert(rid);
                        continue;
                    }
                    _ => return Err(ClientError::Wire(WireError::Truncated)),
                }
            }
            let (reply, rid) = Reply::decode(&m.bytes, m.fds.len()).map_err(ClientError::Wire)?;
            if let Reply::Refused { why } = reply {
                if rid == id || rid == 0 {
                    return Err(Refusal::from_code(why)
                        .map(ClientError::Refused)
                        .unwrap_or(ClientError::Unexpected(reply)));
                }
            }
            let keep = rid != id || matches!(reply, Reply::Offered { .. });
            let fds = self.share(&reply, m.fds, keep);
            if !keep {
                return Ok(Some((reply, fds)));
            }
            // An `Offered` never hides the final answer to the same `Connect`.
            if !(matches!(reply, Reply::Offered { .. }) && self.stash.contains_key(&rid)) {
                self.stash.insert(rid, (reply, fds));
            }
        }
    }

    /// The descriptors of `reply`, each line and tally page shared with the copy this process
    /// has of it (`Client::shared`); `keep`: kept for a later request, out of the application's
    /// descriptor numbers meanwhile (see `sys::move_high`).
    fn share(&mut self, reply: &Reply, fds: Vec<OwnedFd>, keep: bool) -> Vec<Arc<OwnedFd>> {
        // Which descriptors are lines (and which line's page), by position.
        let lines: &[Option<(u64, bool)>] = match *reply {
            Reply::Paired {
                own_line,
                peer_line,
                ..
            } => &[
                None,
                Some((own_line, false)),
                Some((peer_line, false)),
                Some((peer_line, true)),
            ],
            Reply::Reoffered { line, .. } => &[Some((line, false))],
            _ => &[],
        };
        if self.shared.len() >= 64 && self.shared.len().is_power_of_two() {
            self.shared.retain(|_, w| w.strong_count() > 0);
        }
        fds.into_iter()
            .enumerate()
            .map(|(i, fd)| {
                let Some(&Some(key)) = lines.get(i) else {
                    // A segment (never shared).
                    return Arc::new(if keep { sys::move_high(fd) } else { fd });
                };
                if let Some(have) = self.shared.get(&key).and_then(Weak::upgrade) {
                    return have; // (`fd`, the kernel's copy, is closed here)
                }
                let fd = Arc::new(sys::move_high(fd));
                self.shared.insert(key, Arc::downgrade(&fd));
                fd
            })
            .collect()
    }

    fn call(&mut self, r: Request, fd: Option<RawFd>) -> Result<Received, ClientError> {
        let id = self.send(r, fd)?;
        self.wait(id, REPLY_PATIENCE)?.ok_or(ClientError::TimedOut)
    }

    /// Publish the listening socket `fd`. Before the first, the service gets a sock_diag socket
    /// of this process's network namespace (`Namespace`), so that it can tell whether the
    /// listener lives on in other processes once this one has gone, even when the service runs
    /// in another namespace (a container's server). Without one (no netlink here), the
    /// listener is judged by this process's life there.
    pub fn listen(&mut self, fd: RawFd) -> Result<u64, ClientError> {
        if !self.namespace_sent {
            if let Ok(diag) = crate::sockdiag::socket_here() {
                self.send(Request::Namespace, Some(diag.as_raw_fd()))?;
            }
            self.namespace_sent = true;
        }
        match self.call(Request::Listen, Some(fd))?.0 {
            Reply::Listening { listener } => Ok(listener),
            r => Err(ClientError::Unexpected(r)),
        }
    }

    /// Withdraw a listener. One-way: the service never answers it (a listener that is not
    /// ours is only counted as refused).
    pub fn unlisten(&mut self, listener: u64) -> Result<(), ClientError> {
        self.send(Request::Unlisten { listener }, None).map(|_| ())
    }

    /// Give up an offer without waiting: the service does not answer (the offer's own answer,
    /// if it was paired or declined before, may still arrive; nobody asks for it).
    pub fn cancel_nowait(&mut self, offer: Offer) -> Result<(), ClientError> {
        self.send(
            Request::Cancel {
                request: offer.request,
                stalled_only: false,
                quiet: true,
            },
            None,
        )
        .map(|_| ())
    }

    fn done(&mut self, r: Request) -> Result<(), ClientError> {
        match self.call(r, None)?.0 {
            Reply::Done => Ok(()),
            r => Err(ClientError::Unexpected(r)),
        }
    }

    /// Offer the upgrade of the client socket `fd`, about to connect to `addr`:`port` (call it
    /// before the kernel connect): the service rings this process's line when the offer is
    /// answered. `Err(reason)` comes back at once when nobody listens.
    pub fn offer(
        &mut self,
        fd: RawFd,
        addr: Addr,
        port: u16,
        ring: u64,
    ) -> Result<Result<Offer, u32>, ClientError> {
        let id = self.send_fds(
            Request::Connect {
                addr,
                port,
                ring,
                quiet: false,
            },
            &[fd],
        )?;
        match self
            .wait(id, REPLY_PATIENCE)?
            .ok_or(ClientError::TimedOut)?
        {
            (Reply::Offered { conn }, _) => Ok(Ok(Offer { conn, request: id })),
            (Reply::Declined { reason }, _) => Ok(Err(reason)),
            (r, _) => Err(ClientError::Unexpected(r)),
        }
    }

    /// Wait up to `patience` for the server's side of an offer.
    /// The same as [`Client::offer`] without waiting: the answer (`Offered`, then `Paired`, or
    /// `Declined`) is taken in by [`Client::paired`]. The `Connect` is in the service's
    /// socket before this returns, so before the caller's kernel connect starts: the service
    /// always knows of the offer when the server's `Accept` for that connection arrives.
    pub fn offer_nowait(
        &mut self,
        fd: RawFd,
        addr: Addr,
        port: u16,
        ring: u64,
    ) -> Result<Offer, ClientError> {
        // `quiet`: no `Offered` (nobody waits for it; the final answer names the connection).
        let id = self.send_fds(
            Request::Connect {
                addr,
                port,
                ring,
                quiet: true,
            },
            &[fd],
        )?;
        Ok(Offer {
            conn: 0,
            request: id,
        })
    }

    /// Wait up to `patience` for the server's side of an offer (an `Offered` on the way is
    /// taken in: it names the offer's connection).
    pub fn paired(
        &mut self,
        offer: &mut Offer,
        patience: Duration,
    ) -> Result<Option<Pairing>, ClientError> {
        let t0 = Instant::now();
        loop {
            match self.wait(offer.request, patience.saturating_sub(t0.elapsed()))? {
                None => return Ok(None),
                Some((Reply::Offered { conn }, _)) => offer.conn = conn,
                Some(r) => return pairing(r).map(Some),
            }
        }
    }

    /// Take in every reply that has arrived (kept for the requests that will ask for them),
    /// without waiting.
    pub fn take_replies(&mut self) -> Result<(), ClientError> {
        self.wait(0, Duration::ZERO).map(|_| ())
    }

    /// Has the final answer (`Paired` or `Declined`) to `offer` arrived and been taken in
    /// ([`Client::take_replies`]), or did it arrive truncated (then asking for it fails)?
    pub fn answered(&self, offer: &Offer) -> bool {
        self.lost.contains(&offer.request)
            || self
                .stash
                .get(&offer.request)
                .is_some_and(|(r, _)| !matches!(r, Reply::Offered { .. }))
    }

    /// Give up an offer.
    pub fn cancel(&mut self, offer: Offer) -> Result<(), ClientError> {
        self.done(Request::Cancel {
            request: offer.request,
            stalled_only: false,
            quiet: false,
        })
    }

    /// Give up an offer if it is stalled (see [`Stalled`]).
    pub fn cancel_if_stalled(&mut self, offer: Offer) -> Result<Stalled, ClientError> {
        match self.done(Request::Cancel {
            request: offer.request,
            stalled_only: true,
            quiet: false,
        }) {
            Ok(()) => Ok(Stalled::GivenUp),
            Err(ClientError::Refused(Refusal::Progressing)) => Ok(Stalled::Stands),
            Err(ClientError::Refused(Refusal::Unreached)) => Ok(Stalled::Unreached),
            Err(e) => Err(e),
        }
    }

    /// The client of `offer` is about to send its first `bytes` on the TCP socket to reach its
    /// server (after [`Stalled::Unreached`]): `Ok(())` once the service keeps the count with
    /// the offer (send them then, not before: the server's end must learn them from the
    /// pairing); `Err(Refused(NotYours))` when the offer is paired or withdrawn already (send
    /// nothing; its answer is on its way).
    pub fn plain(&mut self, offer: &Offer, bytes: u64) -> Result<(), ClientError> {
        self.done(Request::Plain {
            request: offer.request,
            bytes,
        })
    }

    /// The kernel accepted `fd`: pair it with its client's offer, if there is one, with rings
    /// of at most `ring` bytes.
    pub fn accept(&mut self, fd: RawFd, ring: u64) -> Result<Pairing, ClientError> {
        let r = self.call(
            Request::Accept {
                ring,
                nowait: false,
            },
            Some(fd),
        )?;
        pairing(r)
    }

    /// The same as [`Client::accept`] without waiting: the answer is taken in by
    /// [`Client::paired`] with the returned request (the service rings this process's line
    /// when it has answered).
    pub fn accept_nowait(&mut self, fd: RawFd, ring: u64) -> Result<Offer, ClientError> {
        let id = self.send(Request::Accept { ring, nowait: true }, Some(fd))?;
        Ok(Offer {
            conn: 0,
            request: id,
        })
    }

    /// This process holds `fd`, a socket of a paired connection, or of an offer it made
    /// before (after fork or exec): count it as a holder and get the connection's segments and
    /// lines again, or take the offer back.
    pub fn hold(&mut self, fd: RawFd) -> Result<Held, ClientError> {
        let id = self.send(Request::Hold, Some(fd))?;
        match self
            .wait(id, REPLY_PATIENCE)?
            .ok_or(ClientError::TimedOut)?
        {
            (Reply::Reoffered { conn, line }, fds) => match fds.into_iter().next() {
                Some(fd) => Ok(Held::Offer(
                    Offer { conn, request: id },
                    Line { id: line, fd },
                )),
                None => Err(ClientError::Wire(WireError::Fds {
                    kind: 0x89,
                    want: 1,
                    got: 0,
                })),
            },
            r => Ok(match pairing(r)? {
                Pairing::Paired(p) => Held::Paired(p),
                // Never an answer to `Hold` (a held connection's segment is not a kept one).
                Pairing::Again(_) => Held::Declined(0),
                Pairing::Declined(code) => Held::Declined(code),
                // Never an answer to `Hold` (the service holds no bridged connection for it).
                Pairing::Bridged(_) => Held::Declined(0),
            }),
        }
    }

    /// The descriptors of a pairing answered [`Pairing::Again`] (this process no longer has
    /// the segment's mapping or a line it names).
    pub fn refetch(&mut self, conn: u64, server: bool) -> Result<Paired, ClientError> {
        match pairing(self.call(Request::Refetch { conn, server }, None)?)? {
            Pairing::Paired(p) => Ok(p),
            _ => Err(ClientError::Gone),
        }
    }

    /// This process let go of its last reference to its end of `conn` (`server`: the
    /// accepting end; `clean`: see [`Request::Close`]). One-way: the service never answers it
    /// (an end that is not ours is only counted as refused).
    pub fn close(&mut self, conn: u64, server: bool, clean: bool) -> Result<(), ClientError> {
        let r = Request::Close {
            conn,
            server,
            clean,
        };
        self.send(r, None).map(|_| ())
    }

    /// This process forked since its last request: the arenas of its pairs take no new
    /// connection (never answered; see `Request::Forked`).
    pub fn forked(&mut self) -> Result<(), ClientError> {
        self.send(Request::Forked, None).map(|_| ())
    }

    pub fn status(&mut self) -> Result<Status, ClientError> {
        match self.call(Request::Status, None)?.0 {
            Reply::Status(s) => Ok(s),
            r => Err(ClientError::Unexpected(r)),
        }
    }

    /// The live connections.
    pub fn list(&mut self) -> Result<Vec<crate::wire::Entry>, ClientError> {
        self.collect(Request::List, |r| match r {
            Reply::Entry(e) => Some(**e),
            _ => None,
        })
    }

    /// The recent fallbacks of every process on this service, oldest first.
    pub fn history(&mut self) -> Result<Vec<crate::wire::Fallen>, ClientError> {
        self.collect(Request::History, |r| match r {
            Reply::Fallen(f) => Some(*f),
            _ => None,
        })
    }

    /// The replies to `r` that `item` takes, up to the `Done` that ends them.
    fn collect<T>(
        &mut self,
        r: Request,
        item: impl Fn(&Reply) -> Option<T>,
    ) -> Result<Vec<T>, ClientError> {
        let id = self.send(r, None)?;
        let mut out = Vec::new();
        loop {
            match self
                .wait(id, REPLY_PATIENCE)?
                .ok_or(ClientError::TimedOut)?
                .0
            {
                Reply::Done => return Ok(out),
                r => out.push(item(&r).ok_or(ClientError::Unexpected(r))?),
            }
        }
    }

    /// Tell the service that the connection on socket `fd` stays on TCP for `reason` (for
    /// its host-wide history). One-way: the service never answers it.
    pub fn fallback_nowait(
        &mut self,
        fd: RawFd,
        reason: u32,
        server: bool,
    ) -> Result<(), ClientError> {
        let _ = self.wait(0, Duration::ZERO);
        self.send(Request::Fallback { reason, server }, Some(fd))?;
        Ok(())
    }

    /// Ask the service to stop (its owner or root).
    pub fn stop(&mut self) -> Result<(), ClientError> {
        self.done(Request::Stop)
    }
}

fn pairing((reply, fds): Received) -> Result<Pairing, ClientError> {
    match reply {
        Reply::Paired {
            conn,
            ring_bytes,
            server,
            own_line,
            peer_line,
            plain,
            offset,
        } => {
            let got = fds.len();
            let mut it = fds.into_iter();
            let (Some(segment), Some(own), Some(peer), Some(peer_tally)) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(ClientError::Wire(WireError::Fds {
                    kind: 0x84,
                    want: 4,
                    got,
                }));
            };
            // A segment is never shared (`Client::share`): the one reference.
            let segment = Arc::try_unwrap(segment).map_err(|_| {
                ClientError::Wire(WireError::Fds {
                    kind: 0x84,
                    want: 4,
                    got,
                })
            })?;
            Ok(Pairing::Paired(Paired {
                conn,
                ring_bytes,
                server,
                segment,
                offset,
                own_line: Line {
                    id: own_line,
                    fd: own,
                },
                peer_line: Line {
                    id: peer_line,
                    fd: peer,
                },
                peer_tally,
                plain,
            }))
        }
        Reply::Bridged {
            conn,
            ring_bytes,
            server,
            own,
            peer,
        } => Ok(Pairing::Bridged(Bridged {
            conn,
            ring_bytes,
            server,
            own,
            peer,
        })),
        Reply::Again(a) => Ok(Pairing::Again(a)),
        Reply::Declined { reason } => Ok(Pairing::Declined(reason)),
        r => Err(ClientError::Unexpected(r)),
    }
}

/// The file name of a default service socket: it carries the service protocol's version, so
/// that after an upgrade the processes of the new version start and meet their own service
/// while those of the old one keep theirs (a service refuses another version's messages: with
/// one name for all versions, every new process fell back to TCP until the old service went).
pub fn socket_name() -> String {
    format!("fabric-v{}.sock", crate::wire::VERSION)
}

/// The system service's socket: `/run/pcisock/fabric-vN.sock`.
pub fn system_socket() -> std::path::PathBuf {
    Path::new("/run/pcisock").join(socket_name())
}

/// The service a process uses by default: the system service when one answers; else, for
/// root, the system service's socket (root starts it there); else this user's.
pub fn default_socket() -> std::path::PathBuf {
    let system = system_socket();
    if sys::connect_unix(&system).is_ok() || sys::getuid() == 0 {
        return system;
    }
    user_socket()
}

/// This user's service socket: `$XDG_RUNTIME_DIR/pcisock/fabric-vN.sock`, else
/// `/dev/shm/pcisock-<uid>/fabric-vN.sock`.
pub fn user_socket() -> std::path::PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("pcisock").join(socket_name()),
        _ => Path::new(&format!("/dev/shm/pcisock-{}", sys::getuid())).join(socket_name()),
    }
}
