//! The rendezvous records, as pure encoders and validating decoders: where a ring lives
//! ([`RingLoc`]), listener entries, offers and answers, and the [`Reason`] codes a fallback (or a
//! declining answer) carries. Called by `rendezvous`, the device transport and the fuzz targets;
//! like the rest of `proto` it must never panic on what a peer wrote, nor do I/O.

use std::fmt;

use super::*;

/// Where an endpoint's receive ring lives: `len` bytes at `offset` of its host's inbound window
/// `mw`, and the interrupt vector that wakes it (field `db_bit`: a doorbell bit in version 1's
/// first design, a message-signalled vector now).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RingLoc {
    pub mw: u32,
    pub offset: u64,
    pub len: u64,
    pub db_bit: u32,
}

impl RingLoc {
    /// Validate a location the peer sent against the device's limits.
    pub fn check(&self, mw_count: u32, mw_size: u64, db_bits: u32) -> Result<Ring, ProtoError> {
        if self.mw >= mw_count {
            return Err(ProtoError::BadRecord("window index"));
        }
        if self.db_bit >= db_bits {
            return Err(ProtoError::BadRecord("interrupt vector"));
        }
        if !self.offset.is_multiple_of(4096) || self.len <= BLOCK_OVERHEAD {
            return Err(ProtoError::BadRecord("ring alignment"));
        }
        if self
            .offset
            .checked_add(self.len)
            .is_none_or(|end| end > mw_size)
        {
            return Err(ProtoError::BadRecord("ring outside its window"));
        }
        self.len
            .checked_sub(BLOCK_OVERHEAD)
            .and_then(Ring::new)
            .ok_or(ProtoError::BadRecord("ring capacity"))
    }

    fn put(&self, b: &mut [u8]) {
        put(b, 0, &self.mw.to_le_bytes());
        put(b, 4, &self.db_bit.to_le_bytes());
        put(b, 8, &self.offset.to_le_bytes());
        put(b, 16, &self.len.to_le_bytes());
    }

    fn get(b: &[u8]) -> RingLoc {
        RingLoc {
            mw: le32(b.get(0..4).unwrap_or_default()),
            db_bit: le32(b.get(4..8).unwrap_or_default()),
            offset: le64(b.get(8..16).unwrap_or_default()),
            len: le64(b.get(16..24).unwrap_or_default()),
        }
    }
}

/// Copy `v` into `b` at `at` (the record buffers are sized for their layout; a short one is
/// left short rather than panicking).
fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(at..at.saturating_add(v.len())) {
        d.copy_from_slice(v);
    }
}

// Little-endian integers from the start of `b` (0 if `b` is too short: never a panic on bytes
// a peer wrote).
fn le32(b: &[u8]) -> u32 {
    b.get(..4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn le64(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn le16(b: &[u8]) -> u16 {
    b.get(..2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

/// An IP endpoint: the address as 16 bytes (IPv4 as IPv4-mapped IPv6) and a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Endpoint {
    pub ip: [u8; 16],
    pub port: u16,
}

/// An address and port as the kernel's view of a socket gives them (IPv4 as IPv4-mapped IPv6).
impl From<([u8; 16], u16)> for Endpoint {
    fn from((ip, port): ([u8; 16], u16)) -> Endpoint {
        Endpoint { ip, port }
    }
}

impl Endpoint {
    pub fn from_std(addr: std::net::SocketAddr) -> Endpoint {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        Endpoint {
            ip,
            port: addr.port(),
        }
    }

    pub fn to_std(&self) -> std::net::SocketAddr {
        let v6 = std::net::Ipv6Addr::from(self.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(v6),
        };
        std::net::SocketAddr::new(ip, self.port)
    }

    pub fn is_unspecified(&self) -> bool {
        let v6 = std::net::Ipv6Addr::from(self.ip);
        v6.is_unspecified() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified())
    }
}

/// Size of one listener entry, offer or answer record in the control area.
pub const LISTENER_SIZE: usize = 64;
pub const OFFER_SIZE: usize = 128;
pub const ANSWER_SIZE: usize = 64;

/// A listener registered by the peer host: `addr` (unspecified = any address) and its port.
/// The first 8 bytes (state and generation) are the synchronising words, written atomically by
/// the rendezvous module; the record proper starts at byte 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerEntry {
    pub addr: Endpoint,
    pub pid: u32,
    pub start_time: u64,
    /// The kernel's listening socket (zero until the kernel listens, or if unknown): a listener
    /// lives as long as this socket does, whoever holds it.
    pub socket: SocketId,
}

/// The identity of a listening socket: its inode and its network namespace's inode (zero:
/// unknown). See `sockdiag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SocketId {
    pub inode: u64,
    pub netns: u64,
}

/// Offsets in a listener record (from its state word) of the listening socket's inode and its
/// network namespace's inode: 8-byte aligned, as they are filled in after the record is
/// published (atomically, once the kernel listens).
pub const LISTENER_INODE: usize = 40;
pub const LISTENER_NETNS: usize = 48;
/// Offset in a listener record of the listening process's *late bell*: an interrupt vector + 1
/// (0: none) that a client rings after posting a late offer (PROTOCOL.md §6, *Late upgrade*).
/// Written by the listening process after the record is published too; an older build leaves
/// it zero (its server candidates look on their own, in naps).
pub const LISTENER_BELL: usize = 56;

impl ListenerEntry {
    pub fn encode(&self) -> [u8; LISTENER_SIZE - 8] {
        let mut b = [0u8; LISTENER_SIZE - 8];
        b[0..16].copy_from_slice(&self.addr.ip);
        b[16..18].copy_from_slice(&self.addr.port.to_le_bytes());
        b[20..24].copy_from_slice(&self.pid.to_le_bytes());
        b[24..32].copy_from_slice(&self.start_time.to_le_bytes());
        b[LISTENER_INODE - 8..LISTENER_INODE].copy_from_slice(&self.socket.inode.to_le_bytes());
        b[LISTENER_NETNS - 8..LISTENER_NETNS].copy_from_slice(&self.socket.netns.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; LISTENER_SIZE - 8]) -> Result<ListenerEntry, ProtoError> {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&b[0..16]);
        let port = le16(&b[16..18]);
        if port == 0 {
            return Err(ProtoError::BadRecord("listener port 0"));
        }
        Ok(ListenerEntry {
            addr: Endpoint { ip, port },
            pid: le32(&b[20..24]),
            start_time: le64(&b[24..32]),
            socket: SocketId {
                inode: le64(&b[LISTENER_INODE - 8..LISTENER_INODE]),
                netns: le64(&b[LISTENER_NETNS - 8..LISTENER_NETNS]),
            },
        })
    }
}

/// A client's offer to upgrade one connection, posted in the server host's offer table before
/// the TCP connect, keyed by the connection's ports and the server address, and carrying a
/// random cookie that the answer must echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    pub version: u32,
    pub cookie: u64,
    /// The client's side of the connection (address unspecified if not yet known).
    pub client: Endpoint,
    /// The address the client connects to.
    pub server: Endpoint,
    /// The client's receive ring.
    pub ring: RingLoc,
    /// A late offer (PROTOCOL.md §6, *Late upgrade*): the connection exists already, made while
    /// the link was down, and the client had sent this many plain bytes on it (body 80..88,
    /// flagged by bit 0 of body 4..8). `None`: an offer made before the connect.
    pub late: Option<u64>,
}

/// Offer body flag (body 4..8): a late offer.
const OFFER_LATE: u32 = 1;

impl Offer {
    pub fn encode(&self) -> [u8; OFFER_SIZE - 8] {
        let mut b = [0u8; OFFER_SIZE - 8];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        b[16..32].copy_from_slice(&self.client.ip);
        b[32..34].copy_from_slice(&self.client.port.to_le_bytes());
        b[34..36].copy_from_slice(&self.server.port.to_le_bytes());
        b[40..56].copy_from_slice(&self.server.ip);
        self.ring.put(&mut b[56..80]);
        if let Some(sent) = self.late {
            b[4..8].copy_from_slice(&OFFER_LATE.to_le_bytes());
            b[80..88].copy_from_slice(&sent.to_le_bytes());
        }
        b
    }

    /// The server endpoint of an offer whose client port is not known yet (a reserved
    /// offer): `None` for another version or port 0.
    pub fn decode_server(b: &[u8; OFFER_SIZE - 8]) -> Option<Endpoint> {
        if le32(&b[0..4]) != PROTOCOL_VERSION {
            return None;
        }
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&b[40..56]);
        let port = le16(&b[34..36]);
        (port != 0).then_some(Endpoint { ip, port })
    }

    pub fn decode(b: &[u8; OFFER_SIZE - 8]) -> Result<Offer, ProtoError> {
        let version = le32(&b[0..4]);
        if version != PROTOCOL_VERSION {
            return Err(ProtoError::Version {
                ours: PROTOCOL_VERSION,
                peer_block: version,
            });
        }
        let mut cip = [0u8; 16];
        cip.copy_from_slice(&b[16..32]);
        let mut sip = [0u8; 16];
        sip.copy_from_slice(&b[40..56]);
        let o = Offer {
            version,
            cookie: le64(&b[8..16]),
            client: Endpoint {
                ip: cip,
                port: le16(&b[32..34]),
            },
            server: Endpoint {
                ip: sip,
                port: le16(&b[34..36]),
            },
            ring: RingLoc::get(&b[56..80]),
            late: (le32(&b[4..8]) & OFFER_LATE != 0).then(|| le64(&b[80..88])),
        };
        if o.client.port == 0 || o.server.port == 0 {
            return Err(ProtoError::BadRecord("offer port 0"));
        }
        if o.cookie == 0 {
            return Err(ProtoError::BadRecord("offer cookie 0"));
        }
        Ok(o)
    }

    /// Does this offer describe the connection the server just accepted?
    pub fn matches(&self, peer: &Endpoint, local: &Endpoint) -> bool {
        self.client.port == peer.port
            && self.server.port == local.port
            && (self.client.is_unspecified() || self.client.ip == peer.ip)
            && (self.server.is_unspecified()
                || local.is_unspecified()
                || self.server.ip == local.ip)
    }
}

/// The server's answer to an offer, written into the client host's answer table at the offer's
/// slot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub version: u32,
    pub cookie: u64,
    /// Why the server declined, or 0 when it accepted.
    pub decline: u32,
    /// The server's receive ring (meaningful when accepted).
    pub ring: RingLoc,
    /// To a late offer: the plain bytes the server had sent on the connection (body 40..48;
    /// 0 otherwise).
    pub sent: u64,
}

impl Answer {
    pub fn encode(&self) -> [u8; ANSWER_SIZE - 8] {
        let mut b = [0u8; ANSWER_SIZE - 8];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..8].copy_from_slice(&self.decline.to_le_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        self.ring.put(&mut b[16..40]);
        b[40..48].copy_from_slice(&self.sent.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; ANSWER_SIZE - 8]) -> Result<Answer, ProtoError> {
        let version = le32(&b[0..4]);
        if version != PROTOCOL_VERSION {
            return Err(ProtoError::Version {
                ours: PROTOCOL_VERSION,
                peer_block: version,
            });
        }
        Ok(Answer {
            version,
            decline: le32(&b[4..8]),
            cookie: le64(&b[8..16]),
            ring: RingLoc::get(&b[16..40]),
            sent: le64(&b[40..48]),
        })
    }
}

/// Why a flagged connection is not (or no longer) on the NTB path. Stable codes: they appear in
/// `pcisock stats` and `pcisock explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Reason {
    /// No rule flags this connection.
    NotFlagged = 1,
    /// The NTB device could not be opened.
    NoDevice = 2,
    /// The link is down.
    LinkDown = 3,
    /// The peer has no pcisock listener on that port (a plain peer, or not on the fabric).
    NoListener = 4,
    /// The peer declined the offer.
    PeerDeclined = 5,
    /// The peer never answered the offer in time.
    NoAnswer = 6,
    /// No window space for the rings.
    NoWindowSpace = 7,
    /// No interrupt vector (or doorbell bit) free.
    NoDoorbell = 8,
    /// The peer sent an invalid offer or answer.
    BadPeer = 9,
    /// The accepted connection had no offer (the client has no pcisock, or is not flagged).
    NoOffer = 10,
    /// Not an IPv4/IPv6 stream socket.
    NotInet = 11,
    /// The rendezvous tables, or the host resource table's lease slots, are full.
    TableFull = 12,
    /// The configuration is invalid (pass-through).
    BadConfig = 13,
    /// The socket was used in a way pcisock cannot carry (e.g. data sent before the upgrade).
    Unsupported = 14,
    /// The client closed the connection before the server accepted it, and no offer was left
    /// (a pcisock client withdraws its offer when it closes): the server reads end-of-file, as
    /// over TCP, and no byte travels either way.
    ClosedBeforeAccept = 15,
    /// This process may not use the NTB device's files: its directory, device file or an
    /// interrupt line (FIFO) is another user's, or not open to it (EACCES, EPERM) — typically
    /// a worker that dropped privileges after its master opened the device.
    NoPermission = 16,
    /// Between hosts through the host fabric services: this process (or its peer) is neither
    /// root nor in group `pcisock`, and the bridge can only be mapped whole, with every
    /// connection of the host in it (docs/HOST-SERVICE.md, phase 3).
    Untrusted = 17,
}

impl Reason {
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Every reason, in code order.
    pub const ALL: [Reason; 17] = {
        use Reason::*;
        [
            NotFlagged,
            NoDevice,
            LinkDown,
            NoListener,
            PeerDeclined,
            NoAnswer,
            NoWindowSpace,
            NoDoorbell,
            BadPeer,
            NoOffer,
            NotInet,
            TableFull,
            BadConfig,
            Unsupported,
            ClosedBeforeAccept,
            NoPermission,
            Untrusted,
        ]
    };

    pub fn from_code(c: u32) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == c)
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::NotFlagged => "NotFlagged",
            Reason::NoDevice => "NoDevice",
            Reason::LinkDown => "LinkDown",
            Reason::NoListener => "NoListener",
            Reason::PeerDeclined => "PeerDeclined",
            Reason::NoAnswer => "NoAnswer",
            Reason::NoWindowSpace => "NoWindowSpace",
            Reason::NoDoorbell => "NoDoorbell",
            Reason::BadPeer => "BadPeer",
            Reason::NoOffer => "NoOffer",
            Reason::NotInet => "NotInet",
            Reason::TableFull => "TableFull",
            Reason::BadConfig => "BadConfig",
            Reason::Unsupported => "Unsupported",
            Reason::ClosedBeforeAccept => "ClosedBeforeAccept",
            Reason::NoPermission => "NoPermission",
            Reason::Untrusted => "Untrusted",
        }
    }

    /// One line for `pcisock explain`.
    pub fn explain(self) -> &'static str {
        match self {
            Reason::NotFlagged => "no configuration rule flags this port, address and program",
            Reason::NoDevice => "the NTB device could not be opened (see PCISOCK_LOG=warn)",
            Reason::LinkDown => "the NTB link is down",
            Reason::NoListener => {
                "the peer has no pcisock listener on this port (plain peer or not on the fabric)"
            }
            Reason::PeerDeclined => "the peer declined the upgrade",
            Reason::NoAnswer => "the peer did not answer the upgrade offer in time",
            Reason::NoWindowSpace => "no memory-window space left for the connection's rings",
            Reason::NoDoorbell => "no interrupt vector left on this host",
            Reason::BadPeer => "the peer sent an invalid offer or answer",
            Reason::NoOffer => {
                "the client made no upgrade offer (plain client or not flagged there)"
            }
            Reason::NotInet => "not an IPv4/IPv6 stream socket",
            Reason::TableFull => {
                "the rendezvous tables or the host's lease table (window and vector leases) are full"
            }
            Reason::BadConfig => {
                "the configuration is invalid, so pcisock passes everything through"
            }
            Reason::Unsupported => "the socket was used in a way pcisock cannot carry",
            Reason::ClosedBeforeAccept => {
                "the client closed the connection before the server accepted it (nothing to carry)"
            }
            Reason::NoPermission => {
                "this process may not open the NTB device's files (another user's, e.g. after a privilege drop)"
            }
            Reason::Untrusted => {
                "between hosts, only processes of root or group pcisock may map the bridge (it holds every connection of the host)"
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
