//! The request codec between a process and the host fabric service: pure (no I/O, no unsafe),
//! so every byte the service accepts from any local user goes through code that tests and
//! fuzzing drive directly. It never trusts a length, a kind, a version or a descriptor count it
//! did not check.
//!
//! A message is one `SOCK_SEQPACKET` datagram: a 16-byte header (magic, version, kind, request
//! id) and a body of a fixed number of little-endian u64 words per kind. File descriptors
//! travel beside it (`SCM_RIGHTS`); how many a kind carries is fixed too.

/// "PCFB".
pub const MAGIC: u32 = u32::from_le_bytes(*b"PCFB");
/// The service protocol's version; a message of another version is refused. 6 brought
/// `Namespace`. 7: no message changed, the ring protocol the paired processes speak did
/// (docs/PROTOCOL.md version 3: a frame's header publishes it, the sender's flags moved off the
/// producer counter's line), and processes of a version 6 build and of this one must not pair
/// over one service. 8: `Hello` carries the process's tally page beside its line, and `Paired`
/// the peer line's tally page (docs/HOST-SERVICE.md, *Tallies*). 9: `Bridged`, a pairing
/// with a process on the other host (docs/HOST-SERVICE.md, phase 3); and `Plain`, the refusal
/// `Unreached` and `Paired`'s `plain` (a client that sent its first bytes on TCP to reach a
/// server its connection had not reached: docs/HOST-SERVICE.md, *Unreached connections*).
/// 10: `Close` says whether the end let go `clean`ly (segments reused between the same two
/// processes: docs/HOST-SERVICE.md, *Segment reuse*). 11: no request changed; the rings the
/// service's segments carry may hold pad frames from a sender's reach to the ring's end
/// (docs/PROTOCOL.md §2, *Reach*, protocol version 4), which a version 10 receiver resets on.
/// 12: no request changed; the segments' rings start inside the blocks' first page, at
/// `service::RING_START` (docs/PROTOCOL.md §2, protocol version 5), where a version 11 build
/// would look for them a page further on.
/// 13: `Again`, a pairing whose segment and lines the process has already (a kept segment given
/// again), and `Refetch`, for one that has not (docs/HOST-SERVICE.md, *Segment reuse*).
/// 14: no request changed; a segment's two endpoint headers and its rings' first bytes share
/// one page (`service::SECOND_BLOCK`, docs/PROTOCOL.md §2, *The shared page*), where a version
/// 13 build would look for the second block half a segment on.
/// 15: no request changed; a segment is one stretch of memory, mapped once: the second block's
/// ring pages follow the shared page, and the first block's ring is twice as large with the
/// second block as its hole (`service::first_ring_hole`), where a version 14 build maps the
/// shared page twice and looks for the first block's ring pages right after it.
/// 16: a segment is a range of an *arena*, one memfd per pair of processes (`Paired` and
/// `Again` carry the range's `offset`), and `Forked`, which closes the arenas of the sender's
/// pairs to new connections (docs/HOST-SERVICE.md, *Arenas*).
pub const VERSION: u16 = 16;
/// Header bytes: magic u32, version u16, kind u16, request id u64.
pub const HEADER: usize = 16;
/// The largest message either side sends or accepts (an `Entry`, the longest, is 368 bytes
/// since version 5).
pub const MAX_MESSAGE: usize = 512;
/// The most descriptors a message carries.
pub const MAX_FDS: usize = 4;

/// Bytes of a peer's address in a message (IPv4 as IPv4-mapped IPv6).
pub type Addr = [u8; 16];

/// What a process asks the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// First message on a connection: the caller's pid as it believes it (the service checks it
    /// against the kernel's credentials); carries the process's interrupt line (an eventfd): its
    /// peers ring it for every connection this process makes or accepts on this service
    /// connection, and the service rings it when an offer is answered; and its tally page (a
    /// sealed memfd of `sys::TALLY_BYTES`): a peer that rings the line counts the ring in the
    /// page's word of the connection it rings for, so that a wake-up says which.
    Hello { pid: u32 },
    /// Publish a listener; carries the listening socket.
    Listen,
    /// Carries a NETLINK_SOCK_DIAG socket the sender made in its network namespace (since
    /// version 6), through which the service reads that namespace's socket table: whether an
    /// orphaned listener's or connection's socket still exists there (a pre-fork server in a
    /// container whose parent exited). Never answered; sent before the first `Listen`.
    Namespace,
    /// Withdraw a listener this process published. Never answered (since version 4; a
    /// listener that is not the sender's is only counted as refused): nobody waits for it.
    Unlisten { listener: u64 },
    /// A client is about to connect to `addr`:`port`; carries its socket, sent before the
    /// kernel connect starts (the service reads the connection's real addresses from the socket
    /// when the server accepts; the claimed destination only answers "is there a listener").
    /// The service rings the process's line (`Hello`) when the offer is paired or declined,
    /// and replies `Offered` (unless `quiet`, since version 4: a client that does not wait
    /// for it, a pipelined connect), then `Paired` or `Declined`.
    Connect {
        addr: Addr,
        port: u16,
        ring: u64,
        quiet: bool,
    },
    /// The client gives up an offer (its connect failed, or it closes): the offer that the
    /// `Connect` (or `Hold`) with this request id made or took back. `stalled_only`: only if
    /// the host's servers accepted nothing since the offer was made or last asked about
    /// (refused with `Progressing` otherwise: a server with a long backlog reaches its last
    /// clients late, and they wait on). `quiet` (since version 4): not answered at all (a
    /// client that gives up an offer and does not wait: its connect failed, or it closed).
    Cancel {
        request: u64,
        stalled_only: bool,
        quiet: bool,
    },
    /// The kernel accepted a connection; carries the accepted socket. Replies `Paired` or
    /// `Declined` (or `Refused`). `nowait` (since version 3): the server does not wait for the
    /// answer (a non-blocking accept completes the connection at its first use), so the
    /// service rings the process's line (`Hello`) once it has answered; a server that waits
    /// for the reply is not rung (a ring nobody waits for would wake its next sleep for
    /// nothing). `ring` (as in `Connect`): the receive ring this process asks for; a pair gets
    /// the smaller of its two ends' and the service's, smaller still when window space runs
    /// short.
    Accept { ring: u64, nowait: bool },
    /// This process holds the TCP socket it hands over (after a fork, or in a new image after
    /// exec): count it as a holder of the connection that socket carries and give it that
    /// connection's segments and lines again. Replies `Paired` or `Declined`.
    Hold,
    /// This process let go of its last reference to one end of a connection (`server`: the
    /// accepting end; a process may hold both ends of a connection to itself). Never
    /// answered (since version 4; a connection end the sender does not hold is only counted as
    /// refused): nobody waits for it. `clean` (version 9): no other process can hold the end
    /// (the sender never forked with it, nor picked it up after exec) and the sender wrote its
    /// last into the segment before it sent this: the service may zero the segment and give it
    /// to the same two processes' next connection (docs/HOST-SERVICE.md, *Segment reuse*).
    Close {
        conn: u64,
        server: bool,
        clean: bool,
    },
    /// What the service holds (counts only).
    Status,
    /// The live connections: one `Entry` each, then `Done`.
    List,
    /// Stop the service (its owner or root only).
    Stop,
    /// A connection of this process stays on TCP, with a reason code (docs/PROTOCOL.md §5):
    /// kept in the service's host-wide history of recent fallbacks. Carries the socket (the
    /// addresses recorded are the kernel's, not the sender's word). Never answered, not even
    /// by a refusal: the sender does not wait, and nothing of it may pile up on either side.
    Fallback { reason: u32, server: bool },
    /// The recent fallbacks of every process on this service, oldest first: one `Fallen`
    /// each, then `Done`.
    History,
    /// The client of the offer that the `Connect` with this request id made sends its first
    /// `bytes` on the TCP socket now, before any pairing (since version 9): its `Cancel` with
    /// `stalled_only` was refused `Unreached` (no server side of its connection exists: its
    /// listener's queue overflowed, and only a segment from the client makes the kernel create
    /// it). Replies `Done` once the count is kept with the offer (then the client sends them,
    /// and `Paired` tells the server end to read them as the stream's plain start), or
    /// `Refused` (the offer is paired or withdrawn already: the client sends nothing and waits
    /// for its answer).
    Plain { request: u64, bytes: u64 },
    /// The process was answered `Again` for its end of `conn` (`server`: the accepting end)
    /// but no longer has what it names (since version 13): replies `Paired` with the
    /// descriptors, to the end's own process only (else `Refused`).
    Refetch { conn: u64, server: bool },
    /// This process forked since its last request (since version 16; sent before its next
    /// one, never answered): the arenas of its pairs take no new connection, since a child
    /// that inherited mappings of some of their ranges may get the arena's descriptor with a
    /// `Hold` (docs/HOST-SERVICE.md, *Arenas*).
    Forked,
}

/// What the service answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Welcome {
        service_pid: u32,
        ring_bytes: u64,
        window_bytes: u64,
        /// The service's name for the line the `Hello` carried.
        line: u64,
    },
    Listening {
        listener: u64,
    },
    /// A client's offer is registered; `Paired` follows (with the `Connect`'s request id) when
    /// the server accepts.
    Offered {
        conn: u64,
    },
    /// An offer made before is this process's again (after `Hold`); carries the offer's
    /// interrupt line (named `line`). `Paired` or `Declined` follows with the `Hold`'s request
    /// id.
    Reoffered {
        conn: u64,
        line: u64,
    },
    /// The connection is paired; carries four descriptors: the connection's memory (the arena
    /// its segment is the range `offset..offset + segment_bytes(ring_bytes)` of: the shared
    /// page, then the rings' own pages),
    /// this end's interrupt line, the peer end's, and the peer line's tally page. A line is shared by every connection of
    /// the process that gave it (`Hello`): `own_line` and `peer_line` name them, so that a
    /// process keeps one descriptor per line, not per connection.
    Paired {
        conn: u64,
        ring_bytes: u64,
        server: bool,
        own_line: u64,
        peer_line: u64,
        /// The bytes the client sent on the TCP socket before the pairing (`Plain`, since
        /// version 9; 0: none): the stream's plain start, read off the socket before anything
        /// else. 0 in the answer to a `Hold` (the connection's ends keep their own state).
        plain: u64,
        /// Where the segment starts in the arena (since version 16; a multiple of the page).
        offset: u64,
    },
    /// `Paired` without descriptors (since version 13): the connection's segment is one this
    /// process's last connection with the same peer process let go of cleanly (the process
    /// kept its mapping: the arena memfd's device and inode and the range's offset name it),
    /// and the lines are those of
    /// that pairing. A process that has not kept them asks with `Refetch`.
    Again(Again),
    /// The connection is paired with a process on the other host (through the bridge and the
    /// two hosts' services): no descriptor; this end's block is `own` in this host's inbound
    /// window, the peer end's is `peer` through the outbound window, rings of `ring_bytes`.
    Bridged {
        conn: u64,
        ring_bytes: u64,
        server: bool,
        own: Slice,
        peer: Slice,
    },
    /// The connection stays on TCP, with a reason code (docs/PROTOCOL.md §5).
    Declined {
        reason: u32,
    },
    Done,
    Status(Status),
    /// The request was refused: the reason as a [`Refusal`] code.
    Refused {
        why: u32,
    },
    /// One live connection (an answer to `List`; boxed: it is the largest by far).
    Entry(Box<Entry>),
    /// One recent fallback (an answer to `History`).
    Fallen(Fallen),
}

/// A pairing without descriptors (`Reply::Again`): the segment is named by its arena's
/// identity (the memfd's device and inode) and its offset there, the lines by the service's
/// names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Again {
    pub conn: u64,
    pub ring_bytes: u64,
    pub server: bool,
    pub own_line: u64,
    pub peer_line: u64,
    pub plain: u64,
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
}

/// A connection that stayed on TCP, as `History` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallen {
    /// When the service heard of it (seconds since the Unix epoch).
    pub when: u64,
    /// Who reported it (the kernel's credentials of the sender).
    pub pid: u32,
    pub uid: u32,
    /// The reason code (docs/PROTOCOL.md §5; the service does not interpret it).
    pub reason: u32,
    /// The accepting end (else the connecting one).
    pub server: bool,
    /// The socket's addresses as the kernel has them.
    pub local: (Addr, u16),
    pub peer: (Addr, u16),
}

/// A live connection as `List` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub conn: u64,
    pub ring_bytes: u64,
    /// A process holding the client end and one holding the server end (0: none known).
    pub client_pid: u32,
    pub server_pid: u32,
    pub client: (Addr, u16),
    pub server: (Addr, u16),
    /// The client end's and the server end's counters (since version 5), as the service read
    /// them from the connection's segment: words its two processes write, and either of them
    /// can write anything there. For display only.
    pub ends: [EndCounters; 2],
}

/// Counters in an endpoint block (docs/PROTOCOL.md §2: the words at 0x100, in the order of
/// `transport::conn::COUNTER_NAMES`).
pub const END_COUNTERS: usize = 17;

/// One end's counters, as `List` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndCounters {
    /// Its sending side is on the TCP socket after a failover (state bit ON_TCP).
    pub on_tcp: bool,
    pub counters: [u64; END_COUNTERS],
}

/// The service's counts, as `Status` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub service_pid: u32,
    pub clients: u64,
    pub listeners: u64,
    pub offers: u64,
    pub connections: u64,
    pub window_used: u64,
    pub window_bytes: u64,
    pub paired: u64,
    pub declined: u64,
    pub refused: u64,
    pub reclaimed: u64,
}

pub use errors::{Refusal, WireError};

mod kinds;
use kinds::*;

/// How many descriptors a request of this kind must carry (for the receiver, which must know
/// before it decodes).
pub fn fds_of(kind_word: u16) -> usize {
    shape(kind_word).map_or(0, |s| s.1)
}

fn encode(kind: u16, id: u64, words: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + 8 * words.len());
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

/// The request id in a message's header if the header is one of ours (magic and version):
/// which request a message answers when the rest of it cannot be read (it arrived truncated).
pub fn header_id(b: &[u8]) -> Option<u64> {
    let h = b.get(..HEADER)?;
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let version = u16::from_le_bytes([h[4], h[5]]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[8..16]);
    (magic == MAGIC && version == VERSION).then_some(u64::from_le_bytes(id))
}

/// Split and check a message: (kind, request id, body words). `fds` is how many descriptors
/// arrived with it.
fn decode(b: &[u8], fds: usize) -> Result<(u16, u64, Vec<u64>), WireError> {
    if b.len() < HEADER {
        return Err(WireError::Short(b.len()));
    }
    if b.len() > MAX_MESSAGE {
        return Err(WireError::Long(b.len()));
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if magic != MAGIC {
        return Err(WireError::Magic(magic));
    }
    let version = u16_at(4);
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = u16_at(6);
    let (words, want_fds) = shape(kind).ok_or(WireError::Kind(kind))?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&b[8..16]);
    let id = u64::from_le_bytes(id);
    let body = &b[HEADER..];
    if body.len() != 8 * words {
        return Err(WireError::Body {
            kind,
            len: body.len(),
        });
    }
    if fds != want_fds {
        return Err(WireError::Fds {
            kind,
            want: want_fds,
            got: fds,
        });
    }
    let words = body
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    Ok((kind, id, words))
}

impl Request {
    fn kind(&self) -> u16 {
        match self {
            Request::Hello { .. } => K_HELLO,
            Request::Listen => K_LISTEN,
            Request::Namespace => K_NAMESPACE,
            Request::Unlisten { .. } => K_UNLISTEN,
            Request::Connect { .. } => K_CONNECT,
            Request::Cancel { .. } => K_CANCEL,
            Request::Accept { .. } => K_ACCEPT,
            Request::Hold => K_HOLD,
            Request::Close { .. } => K_CLOSE,
            Request::Status => K_STATUS,
            Request::List => K_LIST,
            Request::Stop => K_STOP,
            Request::Fallback { .. } => K_FALLBACK,
            Request::History => K_HISTORY,
            Request::Plain { .. } => K_PLAIN,
            Request::Refetch { .. } => K_REFETCH,
            Request::Forked => K_FORKED,
        }
    }

    /// How many descriptors go with this request.
    pub fn fds(&self) -> usize {
        fds_of(self.kind())
    }

    pub fn encode(&self, id: u64) -> Vec<u8> {
        let words: Vec<u64> = match *self {
            Request::Hello { pid } => vec![pid as u64],
            Request::Unlisten { listener } => vec![listener],
            Request::Cancel {
                request,
                stalled_only,
                quiet,
            } => vec![request, stalled_only as u64, quiet as u64],
            Request::Close {
                conn,
                server,
                clean,
            } => vec![conn, server as u64, clean as u64],
            Request::Plain { request, bytes } => vec![request, bytes],
            Request::Refetch { conn, server } => vec![conn, server as u64],
            Request::Connect {
                addr,
                port,
                ring,
                quiet,
            } => {
                let (a, b) = addr_words(&addr);
                vec![a, b, port as u64, ring, quiet as u64]
            }
            Request::Accept { ring, nowait } => vec![ring, nowait as u64],
            Request::Fallback { reason, server } => vec![reason as u64, server as u64],
            Request::Listen
            | Request::Namespace
            | Request::Hold
            | Request::Status
            | Request::List
            | Request::Stop
            | Request::History
            | Request::Forked => vec![],
        };
        encode(self.kind(), id, &words)
    }

    /// Decode a request that arrived with `fds` descriptors: (request, request id).
    pub fn decode(b: &[u8], fds: usize) -> Result<(Request, u64), WireError> {
        let (kind, id, w) = decode(b, fds)?;
        let r = match kind {
            K_HELLO => Request::Hello {
                pid: u32_word(kind, &w, 0)?,
            },
            K_LISTEN => Request::Listen,
            K_NAMESPACE => Request::Namespace,
            K_UNLISTEN => Request::Unlisten { listener: w[0] },
            K_CONNECT => Request::Connect {
                addr: words_addr(w[0], w[1]),
                port: u16::try_from(w[2]).map_err(|_| WireError::Value { kind, word: 2 })?,
                ring: w[3],
                quiet: bool_word(kind, &w, 4)?,
            },
            K_CANCEL => Request::Cancel {
                request: w[0],
                stalled_only: bool_word(kind, &w, 1)?,
                quiet: bool_word(kind, &w, 2)?,
            },
            K_ACCEPT => Request::Accept {
                ring: w[0],
                nowait: bool_word(kind, &w, 1)?,
            },
            K_HOLD => Request::Hold,
            K_LIST => Request::List,
            K_CLOSE => Request::Close {
                conn: w[0],
                server: bool_word(kind, &w, 1)?,
                clean: bool_word(kind, &w, 2)?,
            },
            K_STATUS => Request::Status,
            K_STOP => Request::Stop,
            K_FALLBACK => Request::Fallback {
                reason: u32_word(kind, &w, 0)?,
                server: bool_word(kind, &w, 1)?,
            },
            K_HISTORY => Request::History,
            K_FORKED => Request::Forked,
            K_PLAIN => Request::Plain {
                request: w[0],
                bytes: w[1],
            },
            K_REFETCH => Request::Refetch {
                conn: w[0],
                server: bool_word(kind, &w, 1)?,
            },
            _ => return Err(WireError::Kind(kind)),
        };
        Ok((r, id))
    }
}

impl Reply {
    fn kind(&self) -> u16 {
        match self {
            Reply::Welcome { .. } => K_WELCOME,
            Reply::Listening { .. } => K_LISTENING,
            Reply::Offered { .. } => K_OFFERED,
            Reply::Reoffered { .. } => K_REOFFERED,
            Reply::Paired { .. } => K_PAIRED,
            Reply::Bridged { .. } => K_BRIDGED,
            Reply::Again(_) => K_AGAIN,
            Reply::Declined { .. } => K_DECLINED,
            Reply::Done => K_DONE,
            Reply::Status(_) => K_STATUS_REPLY,
            Reply::Refused { .. } => K_REFUSED,
            Reply::Entry(_) => K_ENTRY,
            Reply::Fallen(_) => K_FALLEN,
        }
    }

    /// How many descriptors go with this reply.
    pub fn fds(&self) -> usize {
        fds_of(self.kind())
    }

    pub fn encode(&self, id: u64) -> Vec<u8> {
        let words: Vec<u64> = match *self {
            Reply::Welcome {
                service_pid,
                ring_bytes,
                window_bytes,
                line,
            } => vec![service_pid as u64, ring_bytes, window_bytes, line],
            Reply::Listening { listener } => vec![listener],
            Reply::Offered { conn } => vec![conn],
            Reply::Reoffered { conn, line } => vec![conn, line],
            Reply::Paired {
                conn,
                ring_bytes,
                server,
                own_line,
                peer_line,
                plain,
                offset,
            } => vec![
                conn,
                ring_bytes,
                server as u64,
                own_line,
                peer_line,
                plain,
                offset,
            ],
            Reply::Again(a) => vec![
                a.conn,
                a.ring_bytes,
                a.server as u64,
                a.own_line,
                a.peer_line,
                a.plain,
                a.dev,
                a.inode,
                a.offset,
            ],
            Reply::Bridged {
                conn,
                ring_bytes,
                server,
                own,
                peer,
            } => [
                vec![conn, ring_bytes, server as u64],
                own.words(),
                peer.words(),
            ]
            .concat(),
            Reply::Declined { reason } => vec![reason as u64],
            Reply::Refused { why } => vec![why as u64],
            Reply::Done => vec![],
            Reply::Entry(ref e) => {
                let (ca, cb) = addr_words(&e.client.0);
                let (sa, sb) = addr_words(&e.server.0);
                let flags = e.ends[0].on_tcp as u64 | (e.ends[1].on_tcp as u64) << 1;
                let mut w = vec![
                    e.conn,
                    e.ring_bytes,
                    e.client_pid as u64,
                    e.server_pid as u64,
                    ca,
                    cb,
                    sa,
                    sb,
                    (e.client.1 as u64) | (e.server.1 as u64) << 16,
                    flags,
                ];
                for end in &e.ends {
                    w.extend_from_slice(&end.counters);
                }
                w
            }
            Reply::Fallen(f) => {
                let (la, lb) = addr_words(&f.local.0);
                let (pa, pb) = addr_words(&f.peer.0);
                vec![
                    f.when,
                    f.pid as u64 | (f.uid as u64) << 32,
                    f.reason as u64 | (f.server as u64) << 32,
                    la,
                    lb,
                    pa,
                    pb,
                    f.local.1 as u64 | (f.peer.1 as u64) << 16,
                ]
            }
            Reply::Status(s) => vec![
                s.service_pid as u64,
                s.clients,
                s.listeners,
                s.offers,
                s.connections,
                s.window_used,
                s.window_bytes,
                s.paired,
                s.declined,
                s.refused,
                s.reclaimed,
            ],
        };
        encode(self.kind(), id, &words)
    }

    /// Decode a reply that arrived with `fds` descriptors: (reply, the request id it answers).
    pub fn decode(b: &[u8], fds: usize) -> Result<(Reply, u64), WireError> {
        let (kind, id, w) = decode(b, fds)?;
        let r = match kind {
            K_WELCOME => Reply::Welcome {
                service_pid: u32_word(kind, &w, 0)?,
                ring_bytes: w[1],
                window_bytes: w[2],
                line: w[3],
            },
            K_LISTENING => Reply::Listening { listener: w[0] },
            K_OFFERED => Reply::Offered { conn: w[0] },
            K_REOFFERED => Reply::Reoffered {
                conn: w[0],
                line: w[1],
            },
            K_PAIRED => Reply::Paired {
                conn: w[0],
                ring_bytes: w[1],
                server: match w[2] {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Value { kind, word: 2 }),
                },
                own_line: w[3],
                peer_line: w[4],
                plain: w[5],
                offset: page_word(kind, &w, 6)?,
            },
            K_AGAIN => Reply::Again(Again {
                conn: w[0],
                ring_bytes: w[1],
                server: bool_word(kind, &w, 2)?,
                own_line: w[3],
                peer_line: w[4],
                plain: w[5],
                dev: w[6],
                inode: w[7],
                offset: page_word(kind, &w, 8)?,
            }),
            K_BRIDGED => Reply::Bridged {
                conn: w[0],
                ring_bytes: w[1],
                server: bool_word(kind, &w, 2)?,
                own: Slice::from_words(kind, &w, 3)?,
                peer: Slice::from_words(kind, &w, 6)?,
            },
            K_DECLINED => Reply::Declined {
                reason: u32_word(kind, &w, 0)?,
            },
            K_ENTRY => {
                if w[8] >> 32 != 0 {
                    return Err(WireError::Value { kind, word: 8 });
                }
                if w[9] >> 2 != 0 {
                    return Err(WireError::Value { kind, word: 9 });
                }
                let end = |i: usize| {
                    let mut counters = [0u64; END_COUNTERS];
                    counters.copy_from_slice(&w[10 + i * END_COUNTERS..][..END_COUNTERS]);
                    EndCounters {
                        on_tcp: w[9] >> i & 1 == 1,
                        counters,
                    }
                };
                Reply::Entry(Box::new(Entry {
                    conn: w[0],
                    ring_bytes: w[1],
                    client_pid: u32_word(kind, &w, 2)?,
                    server_pid: u32_word(kind, &w, 3)?,
                    client: (words_addr(w[4], w[5]), (w[8] & 0xffff) as u16),
                    server: (words_addr(w[6], w[7]), (w[8] >> 16 & 0xffff) as u16),
                    ends: [end(0), end(1)],
                }))
            }
            K_REFUSED => Reply::Refused {
                why: u32_word(kind, &w, 0)?,
            },
            K_FALLEN => {
                if w[2] >> 33 != 0 || w[7] >> 32 != 0 {
                    return Err(WireError::Value {
                        kind,
                        word: if w[2] >> 33 != 0 { 2 } else { 7 },
                    });
                }
                Reply::Fallen(Fallen {
                    when: w[0],
                    pid: w[1] as u32,
                    uid: (w[1] >> 32) as u32,
                    reason: w[2] as u32,
                    server: w[2] >> 32 == 1,
                    local: (words_addr(w[3], w[4]), (w[7] & 0xffff) as u16),
                    peer: (words_addr(w[5], w[6]), (w[7] >> 16 & 0xffff) as u16),
                })
            }
            K_DONE => Reply::Done,
            K_STATUS_REPLY => Reply::Status(Status {
                service_pid: u32_word(kind, &w, 0)?,
                clients: w[1],
                listeners: w[2],
                offers: w[3],
                connections: w[4],
                window_used: w[5],
                window_bytes: w[6],
                paired: w[7],
                declined: w[8],
                refused: w[9],
                reclaimed: w[10],
            }),
            _ => return Err(WireError::Kind(kind)),
        };
        Ok((r, id))
    }
}

/// The first two bytes of the kind field of a raw message, if it has a header (the receiver
/// uses it only to say how many descriptors a well-formed message would carry).
pub fn peek_kind(b: &[u8]) -> Option<u16> {
    (b.len() >= HEADER).then(|| u16::from_le_bytes([b[6], b[7]]))
}

mod errors;
mod words;
pub use words::Slice;
use words::{addr_words, bool_word, page_word, u32_word, words_addr};

#[cfg(test)]
mod tests;
