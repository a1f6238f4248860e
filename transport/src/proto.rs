//! The wire protocol, as pure functions: ring geometry, frame headers, credit accounting, and
//! the rendezvous records (listener entries, offers, answers).
//!
//! No I/O, no unsafe, no clocks: `ring`, `rendezvous` and the fuzz targets drive it. Everything
//! a peer writes into shared memory comes through here as plain bytes or integers and is
//! validated before it is used; a value that breaks the protocol is a [`ProtoError`], and the
//! caller resets the connection. `docs/PROTOCOL.md` describes the same layout in prose.

// Decodes what peers write: it must never panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::fmt;

/// Version of the protocol, carried in every offer and answer and in the control header.
pub const PROTOCOL_VERSION: u32 = 2;

/// Bytes of a frame header.
pub const FRAME_HDR: u64 = 16;
/// Frames start on this alignment (so a pad frame header always fits before the ring's end).
pub const FRAME_ALIGN: u64 = 16;
/// Bytes of the endpoint block that precedes the ring data in an endpoint lease.
pub const ENDPOINT_HDR: u64 = 4096;
/// Smallest and largest ring data capacity.
pub const MIN_RING: u64 = 4096;
pub const MAX_RING: u64 = 1 << 30;
/// Largest payload in one frame: bigger writes are split into several frames, so the receiver
/// can consume the first while the next is still being copied.
pub const MAX_FRAME_PAYLOAD: u64 = 256 << 10;

/// Frame flag: a pad frame that fills the ring up to its end; it carries no data.
pub const FRAME_PAD: u16 = 1;

/// A protocol violation by the peer (or memory corruption): the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The peer's producer counter moved backwards or past the ring's capacity.
    BadTail { tail: u64, head: u64, cap: u64 },
    /// The consumer counter the peer returned is ahead of what was produced.
    BadCredit { head: u64, tail: u64 },
    /// A frame header with an impossible length or position.
    BadFrame { pos: u64, len: u32, flags: u16 },
    /// A frame out of sequence.
    BadSequence { expected: u64, got: u64 },
    /// The receiver's offset in a frame (its own) is not inside the frame the peer's header
    /// describes now: the header was rewritten after it was published.
    BadOffset { off: u64, len: u64 },
    /// A receive went this many turns without a byte, a data frame or a wait: the peer keeps
    /// the reader busy without sending.
    NoProgress { turns: u32 },
    /// A rendezvous record with an invalid field.
    BadRecord(&'static str),
    /// A record from another protocol version.
    Version { ours: u32, peer_block: u32 },
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadTail { tail, head, cap } => {
                write!(
                    f,
                    "producer counter {tail} impossible (consumer {head}, capacity {cap})"
                )
            }
            Self::BadCredit { head, tail } => {
                write!(f, "consumer counter {head} ahead of producer {tail}")
            }
            Self::BadFrame { pos, len, flags } => {
                write!(f, "bad frame at {pos}: length {len}, flags {flags:#x}")
            }
            Self::BadSequence { expected, got } => {
                write!(f, "frame sequence {got}, expected {expected}")
            }
            Self::BadOffset { off, len } => {
                write!(f, "read {off} bytes of a frame now {len} bytes long")
            }
            Self::NoProgress { turns } => {
                write!(f, "{turns} turns of a receive without progress")
            }
            Self::BadRecord(why) => write!(f, "bad rendezvous record: {why}"),
            Self::Version { ours, peer_block } => {
                write!(f, "protocol version {peer_block}, we speak {ours}")
            }
        }
    }
}

impl std::error::Error for ProtoError {}

/// Round `n` up to the frame alignment (a length within 15 of `u64::MAX`, which no frame has,
/// rounds down instead of overflowing: callers compare the size against the ring's room).
pub fn align_frame(n: u64) -> u64 {
    n.saturating_add(FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Geometry of one ring: `cap` bytes of data, a power of two. Producer (`tail`) and consumer
/// (`head`) are free-running byte counters; a counter's position in the ring is `counter % cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    cap: u64,
}

/// Where the producer puts its next frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// A pad frame to write first at this position, filling `pad` bytes up to the ring's end.
    pub pad: Option<(u64, u64)>,
    /// Ring position of the frame header; the payload follows it.
    pub pos: u64,
    /// Payload bytes that fit in this frame.
    pub len: u64,
    /// The producer counter after the frame.
    pub new_tail: u64,
}

/// A frame header as decoded, validated against the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `len` payload bytes follow the header; the frame spans `size` bytes of the ring.
    Data { len: u64, size: u64 },
    /// Skip `size` bytes (to the ring's end).
    Pad { size: u64 },
}

impl Ring {
    /// A ring of `cap` bytes, if `cap` is a power of two in `MIN_RING..=MAX_RING`.
    pub fn new(cap: u64) -> Option<Ring> {
        (cap.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&cap)).then_some(Ring { cap })
    }

    #[inline]
    pub fn cap(&self) -> u64 {
        self.cap
    }

    #[inline]
    // `cap` is private and at least MIN_RING (`Ring::new`): no underflow.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn pos(&self, counter: u64) -> u64 {
        counter & (self.cap - 1)
    }

    /// Largest payload of one frame in this ring.
    #[inline]
    // `cap / 4` is at least MIN_RING / 4 = 1024 (`Ring::new`), more than FRAME_HDR.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn max_payload(&self) -> u64 {
        (self.cap / 4).min(MAX_FRAME_PAYLOAD) - FRAME_HDR
    }

    /// Bytes the producer may still use, given the consumer counter the peer returned; an
    /// impossible counter is a protocol error.
    pub fn free(&self, tail: u64, head: u64) -> Result<u64, ProtoError> {
        tail.checked_sub(head)
            .and_then(|used| self.cap.checked_sub(used))
            .ok_or(ProtoError::BadCredit { head, tail })
    }

    /// Place a frame of up to `want` payload bytes (`want >= 1`), or `None` if the ring has no
    /// room for even one byte (wait for credits). Frames never wrap: if the space before the
    /// ring's end is too small, a pad frame fills it first.
    pub fn place(&self, tail: u64, head: u64, want: u64) -> Result<Option<Placement>, ProtoError> {
        let free = self.free(tail, head)?;
        // A producer counter so large that the next frame would overflow it is no counter a
        // real stream reaches (2^64 bytes); it came from memory a peer can write.
        if tail.checked_add(self.cap).is_none() {
            return Err(ProtoError::BadCredit { head, tail });
        }
        // Below, every difference is of a larger value by a smaller one (checked before it) and
        // every sum stays within `tail + cap`: the saturating forms never saturate.
        let pos = self.pos(tail);
        let to_end = self.cap.saturating_sub(pos);
        let want = want.clamp(1, self.max_payload());
        let mut pad = None;
        let (mut fpos, mut avail, mut t) = (pos, free, tail);
        if to_end < FRAME_HDR + FRAME_ALIGN {
            // Not even a one-byte frame fits before the end: pad to the end.
            if free < to_end {
                return Ok(None);
            }
            pad = Some((pos, to_end));
            fpos = 0;
            avail = free.saturating_sub(to_end);
            t = tail.saturating_add(to_end);
        } else {
            avail = avail.min(to_end);
        }
        if avail < FRAME_HDR + FRAME_ALIGN {
            return Ok(None);
        }
        let len = want.min(avail.saturating_sub(FRAME_HDR));
        let mut size = FRAME_HDR.saturating_add(align_frame(len));
        let len = if size > avail {
            // Alignment would overrun the space: shrink the payload to an aligned length.
            size = avail & !(FRAME_ALIGN - 1);
            size.saturating_sub(FRAME_HDR)
        } else {
            len
        };
        if len == 0 {
            return Ok(None);
        }
        Ok(Some(Placement {
            pad,
            pos: fpos,
            len,
            new_tail: t.saturating_add(size),
        }))
    }

    /// The common placement, cheaply: a frame holding all `want` bytes that fits before the
    /// ring's end and in the room `head` leaves, with no pad frame; returns its position and
    /// the producer counter after it. `None` in every other case, impossible counters included
    /// (`place` sorts those out); where it answers, it answers as `place` does.
    #[inline]
    pub fn place_whole(&self, tail: u64, head: u64, want: u64) -> Option<(u64, u64)> {
        if want == 0 || want > self.max_payload() {
            return None;
        }
        // `want` is at most `max_payload` (checked above): the frame's size is small.
        let size = FRAME_HDR.wrapping_add(align_frame(want));
        let room = self.cap.checked_sub(tail.checked_sub(head)?)?;
        tail.checked_add(self.cap)?;
        let pos = self.pos(tail);
        // `pos` is below `cap`; the frame ends at most `cap` past `tail`, which does not overflow.
        (room >= size && self.cap.wrapping_sub(pos) >= size)
            .then_some((pos, tail.wrapping_add(size)))
    }

    /// Validate the producer counter read from shared memory against our consumer counter.
    pub fn check_tail(&self, tail: u64, head: u64) -> Result<u64, ProtoError> {
        tail.checked_sub(head)
            .filter(|&d| d <= self.cap)
            .ok_or(ProtoError::BadTail {
                tail,
                head,
                cap: self.cap,
            })
    }

    /// Validate a frame header found at consumer counter `head` with producer counter `tail`.
    // `pos` is below `cap`; the header's length is a u32, far from overflowing a u64 with a
    // header and alignment added.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn check_frame(
        &self,
        head: u64,
        tail: u64,
        hdr: &FrameHeader,
        expected_seq: u64,
    ) -> Result<Frame, ProtoError> {
        let avail = self.check_tail(tail, head)?;
        let pos = self.pos(head);
        let bad = || ProtoError::BadFrame {
            pos,
            len: hdr.len,
            flags: hdr.flags,
        };
        if !pos.is_multiple_of(FRAME_ALIGN) || avail < FRAME_HDR {
            return Err(bad());
        }
        let to_end = self.cap - pos;
        if hdr.flags == FRAME_PAD {
            // A pad frame only fills space too small for a frame (see `place`): a pad anywhere
            // else would let a peer keep the reader skipping pads without sending.
            let size = FRAME_HDR + hdr.len as u64;
            if size != to_end || to_end >= FRAME_HDR + FRAME_ALIGN || size > avail {
                return Err(bad());
            }
            return Ok(Frame::Pad { size });
        }
        if hdr.flags != 0 || hdr.len == 0 || hdr.len as u64 > self.max_payload() {
            return Err(bad());
        }
        let size = FRAME_HDR + align_frame(hdr.len as u64);
        if size > avail || size > to_end {
            return Err(bad());
        }
        if hdr.seq != expected_seq {
            return Err(ProtoError::BadSequence {
                expected: expected_seq,
                got: hdr.seq,
            });
        }
        Ok(Frame::Data {
            len: hdr.len as u64,
            size,
        })
    }
}

/// A frame header: `len` payload bytes, flags, and the frame's sequence number (data frames are
/// numbered from 0 per direction; pad frames carry the next number without using it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub flags: u16,
    pub seq: u64,
}

impl FrameHeader {
    #[inline]
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..6].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; 16]) -> FrameHeader {
        FrameHeader {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            flags: u16::from_le_bytes([b[4], b[5]]),
            seq: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }
}

// ---- rendezvous records ------------------------------------------------------------------------

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
        if !self.offset.is_multiple_of(4096) || self.len <= ENDPOINT_HDR {
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
            .checked_sub(ENDPOINT_HDR)
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
}

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
}

impl Answer {
    pub fn encode(&self) -> [u8; ANSWER_SIZE - 8] {
        let mut b = [0u8; ANSWER_SIZE - 8];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..8].copy_from_slice(&self.decline.to_le_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        self.ring.put(&mut b[16..40]);
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
}

impl Reason {
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Every reason, in code order.
    pub const ALL: [Reason; 16] = {
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
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests;
