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

use crate::client::Stalled;
use crate::sockdiag;
use crate::sys::{self, Cred, TcpView};
use crate::wire::{
    Addr, Again, EndCounters, Entry, Fallen, Refusal, Reply, Request, Status, END_COUNTERS,
};

mod arena;
mod bridge;
mod dispatch;
mod holders;
pub use arena::ARENA_BYTES;
pub use bridge::{BLOCK_INFO, BLOCK_INFO_MAGIC, MAILBOX_BYTES, MAILBOX_OFFSET};
mod liveness;
mod pairing;
mod pool;

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

/// Bytes an endpoint block has beyond its ring's capacity (docs/PROTOCOL.md §2): each half of
/// a segment, and each block the bridge leases, is `BLOCK_OVERHEAD + ring` bytes, a whole
/// number of pages (the transport checks at compile time that its layout says the same).
pub const BLOCK_OVERHEAD: u64 = 4096;
/// Where a block's ring starts: its header (the words below) and the ring's first bytes share
/// the block's first page.
pub const RING_START: u64 = 0x240;
/// Where a segment's second block (the server's end) starts: in the segment's first page, the
/// *shared page* (docs/PROTOCOL.md §2), which holds both endpoint headers and both rings' first
/// bytes. A segment with rings of `ring` bytes is one stretch of memory, mapped once:
/// - the second block is `BLOCK_OVERHEAD + ring` bytes from `SECOND_BLOCK`: its header, its
///   ring's first bytes in the shared page, and the rest of its ring in the pages right after
///   it ([`ring_pages`]);
/// - the first block (the client's) is the whole segment: its header at 0, its ring's first
///   bytes in the shared page before the second block's header, and the rest of its ring in
///   the segment's last pages, past the second block. Its ring is twice `ring` bytes, the
///   second block (from its header to its ring's last page) a hole its sender never writes,
///   so that it holds as many bytes as the second block's ([`first_ring_hole`]).
pub const SECOND_BLOCK: u64 = 0x800;
const _: () =
    assert!(SECOND_BLOCK >= RING_START + RING_START && SECOND_BLOCK + RING_START < BLOCK_OVERHEAD);

/// Bytes of a segment with rings of `ring` bytes: the shared page and both rings' own pages.
pub const fn segment_bytes(ring: u64) -> u64 {
    BLOCK_OVERHEAD + 2 * ring
}

/// The ring size of a segment of `bytes` (made by [`segment_bytes`]).
pub const fn segment_ring(bytes: u64) -> u64 {
    bytes.saturating_sub(BLOCK_OVERHEAD) / 2
}

/// Where each block's own ring pages (past the shared page) start in a segment with rings of
/// `ring` bytes: the first block's, then the second's.
pub const fn ring_pages(ring: u64) -> [u64; 2] {
    [BLOCK_OVERHEAD + ring, BLOCK_OVERHEAD]
}

/// The first block's ring in a segment with rings of `ring` bytes: its capacity (twice `ring`)
/// and its hole, the positions that are the second block (from its header to the end of its
/// ring's last page).
pub const fn first_ring_hole(ring: u64) -> (u64, (u64, u64)) {
    (
        2 * ring,
        (
            SECOND_BLOCK - RING_START,
            BLOCK_OVERHEAD + ring - RING_START,
        ),
    )
}

/// Where the words `List` reports lie in an endpoint block (docs/PROTOCOL.md §2; the
/// transport checks at compile time that its layout says the same): the state bits and the
/// counters.
pub const BLOCK_STATE: usize = 0xA0;
pub const BLOCK_COUNTERS: usize = 0x100;
/// The state bit of an end whose sending side is on TCP.
pub const STATE_ON_TCP: u32 = 8;
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
/// Other network namespaces whose socket tables the service keeps a sock_diag socket for.
const MAX_NAMESPACES: usize = 4096;
/// Offers one process may have pending (a client opening thousands of connections at once
/// has as many offers waiting for the server's accepts).
const MAX_OFFERS: usize = 16384;
/// Refusals after which a client is disconnected.
const MAX_STRIKES: u32 = 16;
/// Replies kept for a client whose socket is full (it reads them as its connections settle:
/// a client opening thousands of connections at once has thousands of answers coming);
/// beyond this it is not reading at all, and is disconnected.
const MAX_OUTBOX: usize = 16384;
/// How often the outbox of a client whose replies wait for its user's descriptors in flight
/// to drain (`Client::stalled`) is tried again.
const STALLED_LOOK_MS: i32 = 20;
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
const BAD_PEER: u32 = 9;
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
    /// Replies its socket had no room for yet, in order (sent when it has), each with the
    /// descriptors it carries: shared with the records they come from, never copies (a copy
    /// per queued reply ran the service out of descriptors under a burst of thousands of
    /// pairings, and a shortage must never cost a client its replies).
    outbox: std::collections::VecDeque<(Vec<u8>, Vec<Rc<OwnedFd>>)>,
    /// Its last send was refused for descriptors in flight (`ETOOMANYREFS`: the user's
    /// descriptors queued in sockets and not yet received reached its open-file limit): its
    /// outbox is tried again on the next look, not when its socket has room.
    stalled: bool,
    /// The network namespace it handed a sock_diag socket of (`Namespace`; 0: none).
    netns: u64,
}

/// An interrupt line (an eventfd a process gave with its hello), kept while its process's
/// service connection, an offer or a connection end refers to it: one descriptor per process,
/// not per connection.
struct Line {
    id: u64,
    fd: Rc<OwnedFd>,
    /// The process's tally page, handed to its peers with the line (`sys::is_tally` checked).
    tally: Rc<OwnedFd>,
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
    /// That socket's inode (read with its kind and namespace at `Connect`: the service's own
    /// descriptor keeps the same socket, so they stay true).
    inode: u64,
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
    /// It stood once already because a process had accepted its connection without answering
    /// (`Service::verdict`).
    graced: bool,
    /// Indexed by the destination it claimed, before the kernel connected it (see
    /// `find_offer`): checked against its socket when found.
    provisional: bool,
    /// The bytes its client sent on the TCP socket to reach a server its connection had not
    /// reached (`Plain`; 0: none): told to both ends in `Paired`.
    plain: u64,
    /// Its client was told its connection reached no server (`Refusal::Unreached`).
    unreached: bool,
    /// Toward a listener on the other host (through the bridge): its server's side is not in
    /// this host's socket tables, and a `Bridged` pairing carries no plain count, so it is
    /// never told `Unreached`.
    bridged: bool,
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
    holders: holders::Holders,
    netns: u64,
    /// Client end, server end.
    ends: [End; 2],
    /// The connection's memory: both ends' blocks, the range `offset..offset + bytes` of the
    /// arena `arena` (whose descriptor this is: handed out again on `Hold`).
    segment: Rc<OwnedFd>,
    arena: u64,
    offset: u64,
    bytes: u64,
    /// The processes that made the client end and the server end: the only ones that ever
    /// map the segment unless a `Hold` brought another (then `reusable` is false).
    pids: (u32, u32),
    /// Each end's own process let go of it `clean` (`Close`): it wrote its last into the
    /// segment, and no other process of its can hold the end.
    clean: [bool; 2],
    /// No process but `pids` was ever given the segment.
    reusable: bool,
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
    /// `Cancel`s with `stalled_only` read and not handled yet, as (client, request id, the
    /// offer's request, quiet): handled after the accepts of the same pass.
    doubts: std::collections::VecDeque<(u64, u64, u64, bool)>,
    /// Offers by (namespace, client address, server address), once connected.
    offer_index: HashMap<OfferKey, u64>,
    /// Boxed: the table keeps twice the room it needs after it grows, of 16-byte entries
    /// instead of the record's 160 (benches/results/heap-session17.md).
    conns: HashMap<u64, Box<Conn>>,
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
    /// Other namespaces' socket tables, through sock_diag sockets their processes handed over
    /// (`Namespace`), by namespace cookie: one per namespace while it has listeners or
    /// connections here.
    diags: HashMap<u64, crate::sockdiag::Diag>,
    /// Namespaces whose handed socket failed to answer (timed out, or answered garbage): their
    /// orphans are judged by their owners' lives, as with none.
    diags_failed: std::collections::HashSet<u64>,
    next_id: u64,
    window_used: u64,
    counters: Counters,
    /// The recent fallbacks processes reported (`Fallback`), oldest first.
    history: std::collections::VecDeque<Fallen>,
    /// The arenas (`arena`): one memfd per pair of processes and generation, by id.
    arenas: HashMap<u64, arena::Arena>,
    /// The open generation's arena of each pair (the smaller pid first).
    open_arenas: HashMap<(u32, u32), u64>,
    /// Fresh arenas made ahead (`arena`), for new pairs.
    spare_arenas: Vec<OwnedFd>,
    /// The arenas this turn's pairings took a range of: ranges are carved ahead in them.
    busy: Vec<u64>,
    /// This turn made an arena: fresh ones are made ahead.
    arena_made: bool,
    /// The size of the last pairing's segment (0: no pairing yet).
    spare_bytes: u64,
    /// Ranges of closed connections, kept for the next connection between the same two
    /// processes (`pool`).
    pool: Vec<pool::Pooled>,
    /// This service's side of the bridge to the other host's service (phase 3), if it pairs
    /// across one.
    bridge: Option<bridge::Bridge>,
    stop: bool,
}

#[derive(Default)]
struct Counters {
    paired: u64,
    declined: u64,
    refused: HashMap<Refusal, u64>,
    reclaimed: u64,
    /// Connections given a pooled segment.
    reused: u64,
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
        sys::batch_scheduling();
        Service {
            opts,
            listener,
            clients: HashMap::new(),
            listeners: HashMap::new(),
            offers: HashMap::new(),
            accepts: std::collections::VecDeque::new(),
            doubts: std::collections::VecDeque::new(),
            offer_index: HashMap::new(),
            conns: HashMap::new(),
            holders: HashMap::new(),
            orphans: Vec::new(),
            orphans_seen: Instant::now(),
            offers_seen: Instant::now(),
            netns: sys::own_netns().unwrap_or(0),
            diags: HashMap::new(),
            diags_failed: std::collections::HashSet::new(),
            next_id: 1,
            window_used: 0,
            counters: Counters::default(),
            history: std::collections::VecDeque::with_capacity(HISTORY),
            arenas: HashMap::new(),
            open_arenas: HashMap::new(),
            spare_arenas: Vec::new(),
            busy: Vec::new(),
            arena_made: false,
            spare_bytes: 0,
            pool: Vec::new(),
            bridge: None,
            stop: false,
        }
    }

    /// Pair across the bridge of `dev` too (this host's side of it): meet the other host's
    /// service there (docs/HOST-SERVICE.md, phase 3).
    pub fn attach_bridge(&mut self, dev: std::sync::Arc<dyn ntbdrv::NtbDevice>) -> io::Result<()> {
        self.bridge = Some(bridge::open(dev)?);
        Ok(())
    }

    /// Serve until a `Stop` request (or, started on demand, until idle for long enough).
    pub fn run(&mut self) -> io::Result<()> {
        let mut idle_since = Instant::now();
        while !self.stop {
            self.turn(1000)?;
            let idle = self.clients.is_empty()
                && self.listeners.is_empty()
                && self.offers.is_empty()
                && self.conns.is_empty()
                && self.bridge.as_ref().is_none_or(|b| b.conns() == 0);
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
            // A client with replies waiting for room: wake when it has some (one waiting for
            // its user's descriptors in flight to drain is tried again on a timer instead).
            let out = if c.outbox.is_empty() || c.stalled {
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
        let stalled: Vec<u64> = (self.clients.iter())
            .filter(|(_, c)| c.stalled)
            .map(|(&id, _)| id)
            .collect();
        let timeout_ms = if stalled.is_empty() {
            timeout_ms
        } else {
            timeout_ms.min(STALLED_LOOK_MS)
        };
        let timeout_ms = match &self.bridge {
            Some(b) => {
                fds.push((b.line.as_raw_fd(), libc::POLLIN));
                timeout_ms.min(bridge::LOOK_MS)
            }
            None => timeout_ms,
        };
        let rev = sys::poll(&fds, timeout_ms)?;
        for id in stalled {
            self.flush(id);
        }
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
                        stalled: false,
                        netns: 0,
                    },
                );
            }
        }
        // The clients with something to read (a message, or a hang-up: read to see it).
        let mut ready = Vec::new();
        for (i, &(id, is_pidfd)) in who.iter().enumerate() {
            if !is_pidfd && rev[i + 1] & libc::POLLOUT != 0 {
                self.flush(id);
            }
            if !is_pidfd && rev[i + 1] & !libc::POLLOUT != 0 {
                ready.push(id);
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
        self.pass(&ready);
        self.bridge_turn();
        self.expire_offers();
        self.shrink_offers();
        self.reclaim_orphans();
        self.make_spares();
        Ok(())
    }

    pub(super) fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn status(&self) -> Status {
        Status {
            service_pid: sys::getpid(),
            clients: self.clients.len() as u64,
            listeners: self.listeners.len() as u64,
            offers: self.offers.len() as u64,
            connections: (self.conns.len() + self.bridge.as_ref().map_or(0, |b| b.conns())) as u64,
            window_used: self.window_used,
            window_bytes: self.opts.window_bytes,
            paired: self.counters.paired,
            declined: self.counters.declined,
            refused: self.counters.refused.values().sum(),
            reclaimed: self.counters.reclaimed,
        }
    }
}
