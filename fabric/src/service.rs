//! The service: one thread that owns the host's pairing state and answers every local process
//! on a `SOCK_SEQPACKET` Unix socket. It trusts nothing a client says about a connection: a
//! claim comes with the TCP socket itself, and the addresses, the network namespace and the
//! socket's identity are read from the kernel. It is never on a connection's data path.
//!
//! Every request has a bounded cost; malformed or out-of-order requests are refused with a
//! counted reason, and a client that keeps sending garbage is disconnected while everyone
//! else is served. A client whose process dies (its pidfd) or hangs up loses its listeners and
//! offers at once, and its connections' window space comes back when no holder is left.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::sockdiag;
use crate::sys::{self, Cred, TcpView};
use crate::wire::{Addr, Entry, Fallen, Refusal, Reply, Request, Status};

/// Service settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Receive ring bytes per connection and direction.
    pub ring_bytes: u64,
    /// Window space shared by all connections of the host.
    pub window_bytes: u64,
    /// Who may stop the service besides root.
    pub owner_uid: u32,
    /// How long an offer waits for its server's accept.
    pub offer_patience: Duration,
    /// Exit after this long with no client, listener, offer or connection (a service started
    /// on demand); `None`: run until stopped.
    pub idle_exit: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ring_bytes: 1 << 20,
            window_bytes: 512 << 20,
            owner_uid: sys::getuid(),
            offer_patience: Duration::from_secs(60),
            idle_exit: None,
        }
    }
}

/// Bytes of a segment's endpoint header before its ring (docs/PROTOCOL.md §2).
pub const SEGMENT_HEADER: u64 = 4096;
/// The ring every connection gets once the share of window space for larger rings is taken
/// (and the smallest one a connection gets at all).
const MIN_RING: u64 = 16 << 10;
/// The part of the window space (1/SHARE) that rings larger than `MIN_RING` may take: the
/// rest stays for thousands of connections of `MIN_RING` (512 MiB: 64 connections of 1 MiB
/// each way and then about 9,800 of 16 KiB), instead of the first 250 connections taking it
/// all.
const LARGE_SHARE: u64 = 4;
/// Listeners one process may publish.
const MAX_LISTENERS: usize = 1024;
/// Offers one process may have pending (a client opening thousands of connections at once
/// has as many offers waiting for the server's accepts).
const MAX_OFFERS: usize = 16384;
/// Refusals after which a client is disconnected.
const MAX_STRIKES: u32 = 16;
/// Replies kept for a client whose socket is full (it reads them as its connections settle:
/// a client opening thousands of connections at once has thousands of answers coming);
/// beyond this it is not reading at all, and is disconnected.
const MAX_OUTBOX: usize = 16384;
/// Messages read from one client per pass (fairness).
const PASS_BUDGET: usize = 256;
/// How often offers are looked at for their patience.
const EXPIRE_LOOK: Duration = Duration::from_millis(100);
/// How often orphaned connections are looked up in the kernel's socket table.
const ORPHAN_LOOK_MS: i32 = 250;
/// Fallbacks kept in the host-wide history (the oldest go first).
const HISTORY: usize = 64;

// Reason codes of docs/PROTOCOL.md §5 that the service gives.
const NO_LISTENER: u32 = 4;
const NO_ANSWER: u32 = 6;
const NO_WINDOW_SPACE: u32 = 7;
const NO_OFFER: u32 = 10;

struct Client {
    sock: OwnedFd,
    /// The kernel's credentials at connect time.
    cred: Cred,
    /// The process, once it said hello (None before).
    pidfd: Option<OwnedFd>,
    /// The process's interrupt line (given with hello): the line of every connection end it
    /// makes or accepts on this service connection.
    line: Option<Rc<Line>>,
    strikes: u32,
    /// Replies its socket had no room for yet, in order (sent when it has).
    outbox: std::collections::VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
}

/// An interrupt line (an eventfd a process gave with its hello), kept while its process's
/// service connection, an offer or a connection end refers to it: one descriptor per process,
/// not per connection.
struct Line {
    id: u64,
    fd: OwnedFd,
}

struct Listener {
    owner: u64,
    netns: u64,
    addr: Addr,
    port: u16,
    /// The listening socket (its inode): the listener is published while it exists.
    inode: u64,
    /// Its owner withdrew it or went away; it goes once the kernel no longer has the socket
    /// (a forked child or a daemonized server may hold it still).
    orphan: bool,
    /// Connections accepted on it (its servers' progress: see `Offer::seen`).
    accepted: u64,
}

struct Offer {
    /// The receive ring the client asked for.
    ring: u64,
    /// The service connection it was made on (0: that one closed while the process lives,
    /// as across an exec; the process takes it back with `Hold`).
    owner: u64,
    /// The process that made it.
    pid: u32,
    /// The `Connect` request this offer answers.
    request: u64,
    /// The client's own socket, held only until the server accepts (or the offer ends): the
    /// kernel's addresses of the connection are read from it then.
    socket: OwnedFd,
    /// The client's interrupt line: rung when the offer is answered.
    line: Rc<Line>,
    netns: u64,
    posted: Instant,
    /// Where its client connects (the claimed destination: which listeners' progress counts).
    dest: (Addr, u16),
    /// The accepts of those listeners when it was made, or when its client last asked whether
    /// it is stalled (`Cancel` with `stalled_only`).
    seen: u64,
    /// Its connected addresses are in `Service::offer_index`.
    indexed: bool,
    /// Indexed by the destination it claimed, before the kernel connected it (see
    /// `find_offer`): checked against its socket when found.
    provisional: bool,
}

/// An accept to handle: (client, request id, the accepted socket, the ring it asks for,
/// whether to ring its line when answered: `Accept`'s `nowait`).
type Accepted = (u64, u64, OwnedFd, u64, bool);

/// (namespace cookie, client address and port, server address and port).
type OfferKey = (u64, (Addr, u16), (Addr, u16));

struct Conn {
    /// The client's and the server's address and port.
    client: (Addr, u16),
    server: (Addr, u16),
    /// The processes holding each end, as (pid, end: 0 client, 1 server): the one that
    /// connected or accepted, and those that proved they hold one of its sockets since (`Hold`:
    /// forked children, new images). One process may hold both ends.
    holders: Vec<(u32, usize)>,
    netns: u64,
    /// Client end, server end.
    ends: [End; 2],
    /// The connection's memory: both ends' blocks (handed out again on `Hold`).
    segment: OwnedFd,
    bytes: u64,
}

/// One end of a paired connection.
struct End {
    /// The end's TCP socket (its inode): a `Hold` must hand over this socket.
    inode: u64,
    /// The line of the process that made this end (handed out again on `Hold`).
    line: Rc<Line>,
}

/// The service's state.
pub struct Service {
    opts: Options,
    listener: OwnedFd,
    clients: HashMap<u64, Client>,
    listeners: HashMap<u64, Listener>,
    offers: HashMap<u64, Offer>,
    /// Accepts read and not handled yet (handled after every other request of the same pass).
    accepts: std::collections::VecDeque<Accepted>,
    /// Offers by (namespace, client address, server address), once connected.
    offer_index: HashMap<OfferKey, u64>,
    conns: HashMap<u64, Conn>,
    /// pidfds of the processes holding connections.
    holders: HashMap<u32, OwnedFd>,
    /// Connections whose holders are all gone, but whose sockets may live on in processes the
    /// service never heard of (a child forked without a word): reclaimed when the kernel has
    /// neither socket any more.
    orphans: Vec<u64>,
    /// When the orphans were last looked at.
    orphans_seen: Instant,
    /// When offers were last looked at for their patience (see `expire_offers`).
    offers_seen: Instant,
    /// The service's own network namespace (its sockets table is the one it can read).
    netns: u64,
    next_id: u64,
    window_used: u64,
    counters: Counters,
    /// The recent fallbacks processes reported (`Fallback`), oldest first.
    history: std::collections::VecDeque<Fallen>,
    stop: bool,
}

#[derive(Default)]
struct Counters {
    paired: u64,
    declined: u64,
    refused: HashMap<Refusal, u64>,
    reclaimed: u64,
}

impl Listener {
    /// Whether a connection to `dest` in `netns` reaches this listener.
    fn serves(&self, netns: u64, dest: (Addr, u16)) -> bool {
        self.netns == netns
            && self.port == dest.1
            && (self.addr == dest.0 || unspecified(&self.addr))
    }
}

const UNSPECIFIED_V6: Addr = [0; 16];
const UNSPECIFIED_V4: Addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];

fn unspecified(a: &Addr) -> bool {
    *a == UNSPECIFIED_V6 || *a == UNSPECIFIED_V4
}

impl Service {
    /// A service answering on `listener` (a listening Unix socket from
    /// [`sys::listen_unix`]).
    pub fn new(listener: OwnedFd, opts: Options) -> Service {
        sys::raise_fd_limit();
        Service {
            opts,
            listener,
            clients: HashMap::new(),
            listeners: HashMap::new(),
            offers: HashMap::new(),
            accepts: std::collections::VecDeque::new(),
            offer_index: HashMap::new(),
            conns: HashMap::new(),
            holders: HashMap::new(),
            orphans: Vec::new(),
            orphans_seen: Instant::now(),
            offers_seen: Instant::now(),
            netns: sys::own_netns().unwrap_or(0),
            next_id: 1,
            window_used: 0,
            counters: Counters::default(),
            history: std::collections::VecDeque::with_capacity(HISTORY),
            stop: false,
        }
    }

    /// Serve until a `Stop` request (or, started on demand, until idle for long enough).
    pub fn run(&mut self) -> io::Result<()> {
        let mut idle_since = Instant::now();
        while !self.stop {
            self.turn(1000)?;
            let idle = self.clients.is_empty()
                && self.listeners.is_empty()
                && self.offers.is_empty()
                && self.conns.is_empty();
            if !idle {
                idle_since = Instant::now();
            } else if self
                .opts
                .idle_exit
                .is_some_and(|d| idle_since.elapsed() >= d)
            {
                break;
            }
        }
        Ok(())
    }

    /// One round: wait up to `timeout_ms` for something to do, then do all of it.
    pub fn turn(&mut self, timeout_ms: i32) -> io::Result<()> {
        let mut fds = vec![(self.listener.as_raw_fd(), libc::POLLIN)];
        let mut who = Vec::new();
        for (&id, c) in &self.clients {
            // A client with replies waiting for room: wake when it has some.
            let out = if c.outbox.is_empty() {
                0
            } else {
                libc::POLLOUT
            };
            fds.push((c.sock.as_raw_fd(), libc::POLLIN | out));
            who.push((id, false));
            if let Some(p) = &c.pidfd {
                fds.push((p.as_raw_fd(), libc::POLLIN));
                who.push((id, true));
            }
        }
        let holders: Vec<u32> = self.holders.keys().copied().collect();
        let first_holder = fds.len();
        fds.extend(self.holders.values().map(|p| (p.as_raw_fd(), libc::POLLIN)));
        let timeout_ms = if self.orphans.is_empty() && !self.listeners.values().any(|l| l.orphan) {
            timeout_ms
        } else {
            timeout_ms.min(ORPHAN_LOOK_MS)
        };
        let rev = sys::poll(&fds, timeout_ms)?;
        for (i, pid) in holders.into_iter().enumerate() {
            if rev[first_holder + i] != 0 {
                self.holder_died(pid);
            }
        }
        if rev[0] != 0 {
            while let Some(sock) = sys::accept_unix(self.listener.as_raw_fd())? {
                let Ok(cred) = sys::peer_cred(sock.as_raw_fd()) else {
                    continue;
                };
                let id = self.id();
                self.clients.insert(
                    id,
                    Client {
                        sock,
                        cred,
                        pidfd: None,
                        line: None,
                        strikes: 0,
                        outbox: Default::default(),
                    },
                );
            }
        }
        for (i, &(id, is_pidfd)) in who.iter().enumerate() {
            if !is_pidfd && rev[i + 1] & libc::POLLOUT != 0 {
                self.flush(id);
            }
            if is_pidfd && rev[i + 1] != 0 {
                // The process died: its service connection and everything it held go.
                let pid = self.clients.get(&id).map(|c| c.cred.pid);
                self.drop_client(id);
                if let Some(pid) = pid {
                    self.holder_died(pid);
                }
            }
        }
        self.pass();
        self.expire_offers();
        self.reclaim_orphans();
        Ok(())
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Read what every client sent (up to a budget each) and act on it: accepts last, so that
    /// a client's `Connect`, sent before its kernel connect began, is always known when the
    /// server's `Accept` for that connection is handled.
    fn pass(&mut self) {
        self.read(PASS_BUDGET);
        while let Some((client, request, socket, ring, nowait)) = self.accepts.pop_front() {
            self.accept(client, request, socket, ring);
            if nowait {
                self.ring_server(client);
            }
        }
    }

    /// Read up to `budget` messages from each client and act on them, except accepts, which
    /// queue in arrival order (`Service::accepts`).
    fn read(&mut self, budget: usize) {
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            for _ in 0..budget {
                let Some(c) = self.clients.get(&id) else {
                    break;
                };
                match sys::recv_msg(c.sock.as_raw_fd()) {
                    Ok(Some(m)) => {
                        if let Some(a) = self.handle(id, m) {
                            self.accepts.push_back(a);
                        }
                    }
                    Ok(None) => {
                        self.drop_client(id);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.drop_client(id);
                        break;
                    }
                }
            }
        }
    }

    /// Every client's waiting messages, read now: a request that found nothing it names (an
    /// accept without its offer, a hold without its connection) may have overtaken the message
    /// that makes it, sent earlier on another service connection (a `Connect` sent before the
    /// kernel connect, or before an exec).
    fn catch_up(&mut self) {
        self.read(1 << 16);
    }

    fn refuse(&mut self, client: u64, request: u64, why: Refusal) {
        *self.counters.refused.entry(why).or_default() += 1;
        // Garbage counts against the client; a claim the service turns down (not yours, not a
        // socket, over a limit) is an answer, not misbehaviour.
        let garbage = matches!(
            why,
            Refusal::Malformed | Refusal::OutOfOrder | Refusal::NotYou
        );
        let strikes = self.clients.get_mut(&client).map(|c| {
            c.strikes += garbage as u32;
            c.strikes
        });
        self.reply(client, request, Reply::Refused { why: why.code() }, &[]);
        if strikes.is_some_and(|s| s >= MAX_STRIKES) {
            self.drop_client(client);
        }
    }

    fn reply(&mut self, client: u64, request: u64, r: Reply, fds: &[RawFd]) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        let bytes = r.encode(request);
        if c.outbox.is_empty() {
            match sys::send_msg(c.sock.as_raw_fd(), &bytes, fds) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return self.drop_client(client),
            }
        }
        // No room in its socket now: kept, in order, until there is (a client that does not
        // read its replies at all is cut off).
        let copies: io::Result<Vec<OwnedFd>> = fds.iter().map(|&fd| sys::dup(fd)).collect();
        match copies {
            Ok(copies) if c.outbox.len() < MAX_OUTBOX => c.outbox.push_back((bytes, copies)),
            _ => self.drop_client(client),
        }
    }

    /// Send what a client's socket had no room for, as far as it has now.
    fn flush(&mut self, client: u64) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        while let Some((bytes, fds)) = c.outbox.front() {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            match sys::send_msg(c.sock.as_raw_fd(), bytes, &raw) {
                Ok(()) => {
                    c.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.drop_client(client),
            }
        }
    }

    /// Handle one message; an `Accept` is returned to be handled after the others.
    fn handle(&mut self, client: u64, m: sys::Received) -> Option<Accepted> {
        let decoded = if m.truncated {
            None
        } else {
            crate::wire::Request::decode(&m.bytes, m.fds.len()).ok()
        };
        let Some((req, id)) = decoded else {
            self.refuse(client, 0, Refusal::Malformed);
            return None;
        };
        let c = self.clients.get(&client)?;
        // The kernel's word on who sent this message, not the connection's first owner: a
        // forked child writing on its parent's connection is not its parent.
        let sender = m.cred.map_or(c.cred.pid, |cr| cr.pid);
        let hello_done = c.pidfd.is_some();
        match req {
            Request::Hello { pid } => {
                let line = m.fds.into_iter().next();
                if hello_done {
                    self.refuse(client, id, Refusal::OutOfOrder);
                } else if pid != sender || pid != c.cred.pid {
                    self.refuse(client, id, Refusal::NotYou);
                } else if !line
                    .as_ref()
                    .is_some_and(|l| sys::is_eventfd(l.as_raw_fd()))
                {
                    self.refuse(client, id, Refusal::BadSocket);
                } else {
                    match sys::pidfd(pid) {
                        Ok(p) => {
                            let line_id = self.id();
                            if let (Some(c), Some(fd)) = (self.clients.get_mut(&client), line) {
                                c.pidfd = Some(p);
                                c.line = Some(Rc::new(Line { id: line_id, fd }));
                            }
                            let w = Reply::Welcome {
                                service_pid: sys::getpid(),
                                ring_bytes: self.opts.ring_bytes,
                                window_bytes: self.opts.window_bytes,
                                line: line_id,
                            };
                            self.reply(client, id, w, &[]);
                        }
                        Err(_) => self.drop_client(client),
                    }
                }
                return None;
            }
            Request::Status => {
                let s = self.status();
                self.reply(client, id, Reply::Status(s), &[]);
                return None;
            }
            Request::List => {
                // What `ss -tn` shows any local user: the connections' addresses, their
                // holders' pids and ring sizes (no byte of them).
                let entries: Vec<Entry> = self
                    .conns
                    .iter()
                    .map(|(&conn, c)| {
                        let holder =
                            |end: usize| c.holders.iter().find(|h| h.1 == end).map_or(0, |h| h.0);
                        Entry {
                            conn,
                            ring_bytes: (c.bytes / 2).saturating_sub(SEGMENT_HEADER),
                            client_pid: holder(0),
                            server_pid: holder(1),
                            client: c.client,
                            server: c.server,
                        }
                    })
                    .collect();
                for e in entries {
                    self.reply(client, id, Reply::Entry(e), &[]);
                }
                self.reply(client, id, Reply::Done, &[]);
                return None;
            }
            Request::History => {
                // Addresses, pids and uids of connections that stayed on TCP: what `ss -tnp`
                // and /proc show any local user.
                let all: Vec<Fallen> = self.history.iter().copied().collect();
                for f in all {
                    self.reply(client, id, Reply::Fallen(f), &[]);
                }
                self.reply(client, id, Reply::Done, &[]);
                return None;
            }
            _ if !hello_done => {
                self.refuse(client, id, Refusal::OutOfOrder);
                return None;
            }
            _ if sender != c.cred.pid => {
                self.refuse(client, id, Refusal::NotYou);
                return None;
            }
            _ => {}
        }
        let mut fds = m.fds;
        match req {
            Request::Hello { .. } | Request::Status | Request::List | Request::History => {}
            Request::Fallback { reason, server } => {
                // Never answered (the sender does not wait): a socket that is not a connected
                // TCP socket is only counted.
                let sock = fds.pop()?;
                let who = m.cred.unwrap_or(self.clients[&client].cred);
                match sys::tcp_view(sock.as_raw_fd()) {
                    Ok(Some(TcpView {
                        local: Some(local),
                        peer: Some(peer),
                        ..
                    })) => {
                        if self.history.len() >= HISTORY {
                            self.history.pop_front();
                        }
                        self.history.push_back(Fallen {
                            when: std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs()),
                            pid: who.pid,
                            uid: who.uid,
                            reason,
                            server,
                            local,
                            peer,
                        });
                    }
                    _ => *self.counters.refused.entry(Refusal::BadSocket).or_default() += 1,
                }
            }
            Request::Stop => {
                let uid = m.cred.map_or(self.clients[&client].cred.uid, |c| c.uid);
                if uid == 0 || uid == self.opts.owner_uid {
                    self.reply(client, id, Reply::Done, &[]);
                    self.stop = true;
                } else {
                    self.refuse(client, id, Refusal::Forbidden);
                }
            }
            Request::Listen => {
                let sock = fds.pop()?;
                match sys::tcp_view(sock.as_raw_fd()) {
                    // Bound and not connected: listening, or about to (a listener is registered
                    // before the kernel listens, so that no client finds it missing). Holding a
                    // socket bound to the address is the proof.
                    Ok(Some(TcpView {
                        netns,
                        inode,
                        local: Some((addr, port)),
                        peer: None,
                        ..
                    })) if port != 0 => {
                        let mine = self.listeners.values().filter(|l| l.owner == client);
                        if mine.count() >= MAX_LISTENERS {
                            self.refuse(client, id, Refusal::Limit);
                        } else {
                            let l = self.id();
                            self.listeners.insert(
                                l,
                                Listener {
                                    owner: client,
                                    netns,
                                    addr,
                                    port,
                                    inode,
                                    orphan: false,
                                    accepted: 0,
                                },
                            );
                            self.reply(client, id, Reply::Listening { listener: l }, &[]);
                        }
                    }
                    _ => self.refuse(client, id, Refusal::BadSocket),
                }
            }
            Request::Unlisten { listener } => {
                if self
                    .listeners
                    .get(&listener)
                    .is_some_and(|l| l.owner == client)
                {
                    self.listeners.remove(&listener);
                    self.reply(client, id, Reply::Done, &[]);
                } else {
                    self.refuse(client, id, Refusal::NotYours);
                }
            }
            Request::Connect { addr, port, ring } => {
                let sock = fds.pop()?;
                let line = self.clients.get(&client)?.line.clone()?;
                let view = match sys::tcp_view(sock.as_raw_fd()) {
                    Ok(Some(v)) if !v.listening => v,
                    _ => {
                        self.refuse(client, id, Refusal::BadSocket);
                        return None;
                    }
                };
                if self.offers.values().filter(|o| o.owner == client).count() >= MAX_OFFERS {
                    self.refuse(client, id, Refusal::Limit);
                    return None;
                }
                let listening = self
                    .listeners
                    .values()
                    .any(|l| l.serves(view.netns, (addr, port)));
                if !listening {
                    self.counters.declined += 1;
                    self.reply(
                        client,
                        id,
                        Reply::Declined {
                            reason: NO_LISTENER,
                        },
                        &[],
                    );
                    // The client may be waiting on its line (it need not wait for this reply).
                    sys::ring(line.fd.as_raw_fd());
                    return None;
                }
                let conn = self.id();
                self.offers.insert(
                    conn,
                    Offer {
                        owner: client,
                        pid: sender,
                        ring,
                        request: id,
                        socket: sock,
                        line,
                        netns: view.netns,
                        posted: Instant::now(),
                        dest: (addr, port),
                        seen: self.accepted_at(view.netns, (addr, port)),
                        indexed: false,
                        provisional: false,
                    },
                );
                self.reply(client, id, Reply::Offered { conn }, &[]);
            }
            Request::Cancel {
                request,
                stalled_only,
            } => {
                let found = self
                    .offers
                    .iter()
                    .find(|(_, o)| o.owner == client && o.request == request)
                    .map(|(&c, _)| c);
                let progressing = stalled_only && found.is_some_and(|c| self.progressed(c));
                if progressing {
                    // As the device rendezvous does with its accept counter: a server working
                    // through a long backlog reaches its last clients late.
                    self.refuse(client, id, Refusal::Progressing);
                } else if let Some(conn) = found {
                    self.offers.remove(&conn);
                    self.reply(client, id, Reply::Done, &[]);
                } else {
                    self.refuse(client, id, Refusal::NotYours);
                }
            }
            Request::Accept { ring, nowait } => {
                let sock = fds.pop()?;
                return Some((client, id, sock, ring, nowait));
            }
            Request::Hold => {
                let sock = fds.pop()?;
                self.hold(client, id, sender, sock);
            }
            Request::Close { conn, server } => {
                let end = server as usize;
                let held = self
                    .conns
                    .get(&conn)
                    .is_some_and(|c| c.holders.contains(&(sender, end)));
                if held {
                    self.let_go(conn, sender, end);
                    self.reply(client, id, Reply::Done, &[]);
                } else {
                    self.refuse(client, id, Refusal::NotYours);
                }
            }
        }
        None
    }

    /// The server accepted `socket`: pair it with the offer whose socket is its mirror in the
    /// same namespace.
    fn accept(&mut self, server: u64, request: u64, socket: OwnedFd, ring: u64) {
        let view = match sys::tcp_view(socket.as_raw_fd()) {
            Ok(Some(
                v @ TcpView {
                    listening: false,
                    local: Some(_),
                    peer: Some(_),
                    ..
                },
            )) => v,
            _ => return self.refuse(server, request, Refusal::BadSocket),
        };
        drop(socket);
        if let Some(local) = view.local {
            self.accepted_on(server, view.netns, local);
        }
        let mut found = self.find_offer(view.netns, view.peer, view.local);
        if found.is_none() {
            // The client's `Connect` was in the service's socket before its kernel connect
            // began, so before this accept: if a client's budget left it unread in this pass,
            // read everything now (accepts found meanwhile wait their turn).
            self.catch_up();
            found = self.find_offer(view.netns, view.peer, view.local);
        }
        let Some(conn) = found else {
            self.counters.declined += 1;
            return self.reply(server, request, Reply::Declined { reason: NO_OFFER }, &[]);
        };
        let Some(offer) = self.offers.remove(&conn) else {
            return;
        };
        // The configured ring when there is room for it; as window space runs short, smaller
        // rings (down to MIN_RING) rather than no connection: more connections, each a little
        // slower (as the device rendezvous does).
        // What both ends asked for, within the service's limit, a power of two of at least
        // MIN_RING (the protocol's ring sizes).
        let asked = ring.min(offer.ring).min(self.opts.ring_bytes).max(MIN_RING);
        let mut ring = if asked.is_power_of_two() {
            asked
        } else {
            asked.next_power_of_two() / 2
        };
        // Rings above MIN_RING only within their share of the window; MIN_RING for the rest.
        let floor = MIN_RING.min(self.opts.ring_bytes);
        let large = self.opts.window_bytes / LARGE_SHARE;
        while ring / 2 >= floor && self.window_used + 2 * (SEGMENT_HEADER + ring) > large {
            ring /= 2;
        }
        let bytes = 2 * (SEGMENT_HEADER + ring);
        let declined = |s: &mut Service, reason: u32| {
            s.counters.declined += 1;
            s.reply(server, request, Reply::Declined { reason }, &[]);
            s.reply(offer.owner, offer.request, Reply::Declined { reason }, &[]);
            sys::ring(offer.line.fd.as_raw_fd());
        };
        if self.window_used + bytes > self.opts.window_bytes {
            return declined(self, NO_WINDOW_SPACE);
        }
        let Some(line_s) = self.clients.get(&server).and_then(|c| c.line.clone()) else {
            return declined(self, NO_OFFER);
        };
        let Ok(segment) = sys::segment(bytes) else {
            return declined(self, NO_WINDOW_SPACE);
        };
        let Some(client_inode) = sys::tcp_view(offer.socket.as_raw_fd())
            .ok()
            .flatten()
            .map(|v| v.inode)
        else {
            return declined(self, NO_OFFER);
        };
        let line_c = &offer.line;
        let (seg, lc, ls) = (
            segment.as_raw_fd(),
            line_c.fd.as_raw_fd(),
            line_s.fd.as_raw_fd(),
        );
        self.reply(
            server,
            request,
            Reply::Paired {
                conn,
                ring_bytes: ring,
                server: true,
                own_line: line_s.id,
                peer_line: line_c.id,
            },
            &[seg, ls, lc],
        );
        self.reply(
            offer.owner,
            offer.request,
            Reply::Paired {
                conn,
                ring_bytes: ring,
                server: false,
                own_line: line_c.id,
                peer_line: line_s.id,
            },
            &[seg, lc, ls],
        );
        sys::ring(lc);
        self.window_used += bytes;
        self.counters.paired += 1;
        let pid_of = |s: &Service, c: u64| s.clients.get(&c).map(|c| c.cred.pid);
        let holders: Vec<(u32, usize)> = [
            pid_of(self, offer.owner).map(|p| (p, 0)),
            pid_of(self, server).map(|p| (p, 1)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let Offer { line, .. } = offer;
        self.conns.insert(
            conn,
            Conn {
                client: view.peer.unwrap_or(([0; 16], 0)),
                server: view.local.unwrap_or(([0; 16], 0)),
                holders: Vec::new(),
                netns: view.netns,
                ends: [
                    End {
                        inode: client_inode,
                        line,
                    },
                    End {
                        inode: view.inode,
                        line: line_s,
                    },
                ],
                segment,
                bytes,
            },
        );
        for (pid, end) in holders {
            self.add_holder(conn, pid, end);
        }
        self.orphan_if_unheld(conn);
    }

    /// The answer to a `nowait` `Accept` of `server` is in its socket: ring its line. The
    /// server did not wait inside `accept` for it (it completes the connection at first use, as
    /// a client does its connect), so a thread or an epoll set waiting on that connection
    /// sleeps on the line, not on the service's socket.
    fn ring_server(&self, server: u64) {
        if let Some(l) = self.clients.get(&server).and_then(|c| c.line.as_ref()) {
            sys::ring(l.fd.as_raw_fd());
        }
    }

    /// `pid` holds end `end` of `conn` (watched until it dies).
    fn add_holder(&mut self, conn: u64, pid: u32, end: usize) {
        if !self.watch(pid) {
            return; // already gone
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.holders.contains(&(pid, end)) {
                c.holders.push((pid, end));
            }
        }
    }

    /// A process proved it holds one of a connection's sockets: count it as a holder and give
    /// it that end's segments and lines.
    fn hold(&mut self, client: u64, request: u64, pid: u32, socket: OwnedFd) {
        let Ok(Some(view)) = sys::tcp_view(socket.as_raw_fd()) else {
            return self.refuse(client, request, Refusal::BadSocket);
        };
        let look = |s: &Service| {
            s.conns.iter().find_map(|(&id, c)| {
                let side = c.ends.iter().position(|e| e.inode == view.inode)?;
                (c.netns == view.netns).then_some((id, side))
            })
        };
        let mut found = look(self);
        if found.is_none() {
            if let Some(offer) = self.offer_of(pid, &view) {
                return self.hold_offer(client, request, offer);
            }
            self.catch_up();
            found = look(self);
        }
        let Some((conn, side)) = found else {
            return match self.offer_of(pid, &view) {
                Some(offer) => self.hold_offer(client, request, offer),
                None => self.reply(client, request, Reply::Declined { reason: NO_OFFER }, &[]),
            };
        };
        self.add_holder(conn, pid, side);
        self.orphans.retain(|&o| o != conn);
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (me, peer) = (&c.ends[side], &c.ends[1 - side]);
        let fds = [
            c.segment.as_raw_fd(),
            me.line.fd.as_raw_fd(),
            peer.line.fd.as_raw_fd(),
        ];
        let r = Reply::Paired {
            conn,
            ring_bytes: c.bytes / 2 - SEGMENT_HEADER,
            server: side == 1,
            own_line: me.line.id,
            peer_line: peer.line.id,
        };
        self.reply(client, request, r, &fds);
    }

    /// The offer `pid` made on the socket `view` describes, if any.
    fn offer_of(&self, pid: u32, view: &TcpView) -> Option<u64> {
        self.offers.iter().find_map(|(&conn, o)| {
            (o.pid == pid
                && o.netns == view.netns
                && sys::tcp_view(o.socket.as_raw_fd())
                    .ok()
                    .flatten()
                    .is_some_and(|v| v.inode == view.inode))
            .then_some(conn)
        })
    }

    /// A process takes back offer `conn` it made before (its service connection closed, as at
    /// an exec): the offer answers this request from now on; the reply carries its line.
    fn hold_offer(&mut self, client: u64, request: u64, conn: u64) {
        let Some(o) = self.offers.get_mut(&conn) else {
            return;
        };
        o.owner = client;
        o.request = request;
        let (fd, line) = (o.line.fd.as_raw_fd(), o.line.id);
        self.reply(client, request, Reply::Reoffered { conn, line }, &[fd]);
    }

    /// A holder's process died: it holds nothing any more.
    fn holder_died(&mut self, pid: u32) {
        self.holders.remove(&pid);
        self.offers.retain(|_, o| o.pid != pid);
        let held: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.holders.iter().any(|h| h.0 == pid))
            .map(|(&k, _)| k)
            .collect();
        for conn in held {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.holders.retain(|h| h.0 != pid);
            }
            self.orphan_if_unheld(conn);
        }
    }

    /// `pid` let go of end `end` of `conn` (it said so): the connection goes when no holder
    /// is left.
    fn let_go(&mut self, conn: u64, pid: u32, end: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.holders.retain(|&h| h != (pid, end));
        }
        if !self
            .conns
            .values()
            .any(|c| c.holders.iter().any(|h| h.0 == pid))
            && !self.offers.values().any(|o| o.pid == pid)
        {
            self.holders.remove(&pid);
        }
        if self.conns.get(&conn).is_some_and(|c| c.holders.is_empty()) {
            self.reclaim(conn);
        }
    }

    /// A holder of `conn` died without letting go: if no holder is left, the connection goes
    /// once the kernel has neither of its sockets (looked up every `ORPHAN_LOOK_MS`: a process
    /// that inherited a socket without telling us still holds the connection).
    fn orphan_if_unheld(&mut self, conn: u64) {
        if self.conns.get(&conn).is_some_and(|c| c.holders.is_empty())
            && !self.orphans.contains(&conn)
        {
            self.orphans.push(conn);
        }
    }

    /// Is the kernel's socket table of `c`'s namespace readable here (the service's own)?
    fn sees_sockets_of(&self, c: &Conn) -> bool {
        self.netns != 0 && c.netns == self.netns
    }

    fn reclaim(&mut self, conn: u64) {
        self.orphans.retain(|&o| o != conn);
        if let Some(c) = self.conns.remove(&conn) {
            self.window_used = self.window_used.saturating_sub(c.bytes);
            self.counters.reclaimed += 1;
        }
    }

    fn reclaim_orphans(&mut self) {
        let listeners = self.listeners.values().any(|l| l.orphan);
        if (self.orphans.is_empty() && !listeners)
            || self.orphans_seen.elapsed() < Duration::from_millis(ORPHAN_LOOK_MS as u64)
        {
            return;
        }
        self.orphans_seen = Instant::now();
        self.withdraw_dead_listeners();
        // One exact look-up per end (by its 4-tuple), not a walk of the kernel's table: with
        // thousands of connections on the host that walk was the service's largest cost.
        let gone: Vec<u64> = self
            .orphans
            .iter()
            .copied()
            .filter(|id| {
                self.conns.get(id).is_none_or(|c| {
                    let ends = [(c.client, c.server), (c.server, c.client)];
                    !self.sees_sockets_of(c)
                        || !c.ends.iter().zip(ends).any(|(e, (local, peer))| {
                            // A failed look-up keeps the connection (it is asked again).
                            sockdiag::connected(e.inode, local, peer).unwrap_or(true)
                        })
                })
            })
            .collect();
        for conn in gone {
            self.reclaim(conn);
        }
    }

    /// The offer whose client socket is connected from `local` to `peer` in namespace
    /// `netns`. Each offer's addresses are read from its socket once, after its connect, and
    /// indexed: with a thousand offers waiting, an accept costs a look-up, not a thousand
    /// system calls.
    fn find_offer(
        &mut self,
        netns: u64,
        peer: Option<(Addr, u16)>,
        local: Option<(Addr, u16)>,
    ) -> Option<u64> {
        let key = (netns, peer?, local?);
        if let Some(&conn) = self.offer_index.get(&key) {
            let sure = self.offers.get(&conn).is_some_and(|o| {
                !o.provisional
                    || sys::tcp_view(o.socket.as_raw_fd())
                        .ok()
                        .flatten()
                        .is_some_and(|v| v.local == Some(key.1) && v.peer == Some(key.2))
            });
            if sure {
                return Some(conn);
            }
            self.offer_index.remove(&key);
        }
        let unseen: Vec<u64> = self
            .offers
            .iter()
            .filter(|(_, o)| !o.indexed && o.netns == netns)
            .map(|(&c, _)| c)
            .collect();
        let mut found = None;
        for conn in unseen {
            let Some(o) = self.offers.get_mut(&conn) else {
                continue;
            };
            let Some(v) = sys::tcp_view(o.socket.as_raw_fd()).ok().flatten() else {
                continue;
            };
            if let (Some(l), Some(p)) = (v.local, v.peer) {
                o.indexed = true;
                self.offer_index.insert((o.netns, l, p), conn);
                if (o.netns, l, p) == key {
                    found = Some(conn);
                    break;
                }
            } else if let Some(l) = v.local.filter(|l| l.1 != 0) {
                // Still connecting (a full backlog keeps thousands so for seconds): indexed by
                // the destination it claimed, so that it is not looked at again on every
                // accept that misses (each look is several system calls).
                o.indexed = true;
                o.provisional = true;
                self.offer_index.insert((o.netns, l, o.dest), conn);
            }
        }
        if found.is_none() {
            // An offer indexed by a claimed destination that was not where it connected (a
            // rare case: a redirect): one more look at those.
            let provisional: Vec<u64> = self
                .offers
                .iter()
                .filter(|(_, o)| o.provisional && o.netns == netns && o.dest != key.2)
                .map(|(&c, _)| c)
                .collect();
            for conn in provisional {
                let Some(o) = self.offers.get(&conn) else {
                    continue;
                };
                let v = sys::tcp_view(o.socket.as_raw_fd()).ok().flatten();
                if v.is_some_and(|v| v.local == Some(key.1) && v.peer == Some(key.2)) {
                    found = Some(conn);
                    break;
                }
            }
        }
        found
    }

    /// Offers past their patience go (looked for every `EXPIRE_LOOK`, not on every turn: with
    /// thousands of offers waiting, a look at each per message was most of the service's
    /// time).
    fn expire_offers(&mut self) {
        if self.offers_seen.elapsed() < EXPIRE_LOOK {
            return;
        }
        self.offers_seen = Instant::now();
        let offers = &self.offers;
        self.offer_index.retain(|_, c| offers.contains_key(c));
        let now = Instant::now();
        let patience = self.opts.offer_patience;
        let old: Vec<u64> = self
            .offers
            .iter()
            .filter(|(_, o)| now.duration_since(o.posted) >= patience)
            .map(|(&k, _)| k)
            .collect();
        for conn in old {
            if let Some(o) = self.offers.remove(&conn) {
                self.counters.declined += 1;
                self.reply(
                    o.owner,
                    o.request,
                    Reply::Declined { reason: NO_ANSWER },
                    &[],
                );
            }
        }
    }

    /// A client hung up or its process died: its listeners and offers go.
    fn drop_client(&mut self, client: u64) {
        let Some(gone) = self.clients.remove(&client) else {
            return;
        };
        // Its connections outlive its service connection (an exec): watch the process itself.
        let pid = gone.cred.pid;
        if self
            .conns
            .values()
            .any(|c| c.holders.iter().any(|h| h.0 == pid))
            && !self.watch(pid)
        {
            self.holder_died(pid);
        }
        // Its connections are held by its pid, not by this service connection: a process
        // that exec'd has closed the latter and still holds the former.
        for l in self.listeners.values_mut() {
            if l.owner == client {
                l.orphan = true;
            }
        }
        self.reclaim_listeners();
        // Its offers wait for the process itself (a new image after exec takes them back with
        // `Hold`), and go when it dies or their patience ends.
        let mut alive = Vec::new();
        for o in self.offers.values_mut().filter(|o| o.owner == client) {
            o.owner = 0;
            alive.push(o.pid);
        }
        for pid in alive {
            if !self.watch(pid) {
                self.offers.retain(|_, o| o.pid != pid);
            }
        }
    }

    /// Watch `pid` (its pidfd among the holders'); false if it is gone already.
    fn watch(&mut self, pid: u32) -> bool {
        // A process with a service connection is watched through that connection's pidfd
        // (no pidfd to open and close per connection it makes).
        if self
            .clients
            .values()
            .any(|c| c.cred.pid == pid && c.pidfd.is_some())
        {
            return true;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.holders.entry(pid) {
            match sys::pidfd(pid) {
                Ok(p) => {
                    e.insert(p);
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Withdraw orphaned listeners whose socket the kernel no longer has (outside the
    /// service's own namespace, whose socket table it cannot read, at once).
    fn reclaim_listeners(&mut self) {
        if self.listeners.values().any(|l| l.orphan) {
            self.withdraw_dead_listeners();
        }
    }

    /// Withdraw the orphaned listeners whose socket the kernel no longer has listening.
    fn withdraw_dead_listeners(&mut self) {
        let netns = self.netns;
        self.listeners.retain(|_, l| {
            !l.orphan
                || (netns != 0
                    && l.netns == netns
                    // A failed look-up keeps the listener (it is asked again).
                    && sockdiag::is_listening_at(l.inode, &l.addr, l.port).unwrap_or(true))
        });
    }

    /// A process accepted a connection on the listener at `local` in `netns`: count it (its
    /// servers' progress, see `Offer::seen`); and if that listener is an orphan (its publisher
    /// went away: a daemonizing parent, say), this process holds it now as far as anyone can
    /// tell, and its life says how long the listener lives; the kernel is asked again only once
    /// that process is gone. Without this a daemonized server's listener was looked up four
    /// times a second for as long as it ran.
    fn accepted_on(&mut self, client: u64, netns: u64, local: (Addr, u16)) {
        for l in self
            .listeners
            .values_mut()
            .filter(|l| l.serves(netns, local))
        {
            l.accepted += 1;
            if l.orphan {
                l.orphan = false;
                l.owner = client;
            }
        }
    }

    /// Did the listeners offer `conn` waits on accept anything since it was made or last
    /// asked about, within its patience? (Remembers what it saw.)
    fn progressed(&mut self, conn: u64) -> bool {
        let Some((netns, dest)) = self.offers.get(&conn).map(|o| (o.netns, o.dest)) else {
            return false;
        };
        let now = self.accepted_at(netns, dest);
        let patience = self.opts.offer_patience;
        let Some(o) = self.offers.get_mut(&conn) else {
            return false;
        };
        let moved = o.seen != now && o.posted.elapsed() < patience;
        o.seen = now;
        moved
    }

    /// The accepts of the listeners that serve `dest` in `netns`.
    fn accepted_at(&self, netns: u64, dest: (Addr, u16)) -> u64 {
        self.listeners
            .values()
            .filter(|l| l.serves(netns, dest))
            .map(|l| l.accepted)
            .sum()
    }

    pub fn status(&self) -> Status {
        Status {
            service_pid: sys::getpid(),
            clients: self.clients.len() as u64,
            listeners: self.listeners.len() as u64,
            offers: self.offers.len() as u64,
            connections: self.conns.len() as u64,
            window_used: self.window_used,
            window_bytes: self.opts.window_bytes,
            paired: self.counters.paired,
            declined: self.counters.declined,
            refused: self.counters.refused.values().sum(),
            reclaimed: self.counters.reclaimed,
        }
    }
}
