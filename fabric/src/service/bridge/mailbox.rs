//! This service's side of the bridge (see `bridge`): the mailbox the peer service writes and
//! the one it reads, the endpoint blocks leased in this host's inbound window, and who is
//! trusted with the bridge. It never reads a word of the peer's without bounding it first (a
//! message index by the mailbox's size, a slice by the window's).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::Arc;

use ntbdrv::{Lease, NtbDevice, Region, VectorLease, WindowLease};

use super::super::*;
use crate::wire::Slice;

/// Where the mailbox lies in inbound window 0: after the device rendezvous's control area (its
/// 256 KiB at offset 0), so that the two never overlap on one device.
pub const MAILBOX_OFFSET: u64 = 256 << 10;
pub const MAILBOX_BYTES: u64 = 64 << 10;
/// Host-table tags: the mailbox ("PCMB") and the endpoint blocks the service leases ("PCSB").
pub(in crate::service) const MAILBOX_TAG: u32 = 0x5043_4d42;
pub(in crate::service) const BLOCK_TAG: u32 = 0x5043_5342;
/// Mailbox header words (written by the peer service): its session (random, non-zero; a new
/// one is a restarted peer), the vector it listens on, its heartbeat, how many messages it
/// wrote, how many of ours it consumed.
pub(in crate::service) const MB_SESSION: usize = 0x00;
pub(in crate::service) const MB_VECTOR: usize = 0x08;
pub(in crate::service) const MB_BEAT: usize = 0x10;
pub(in crate::service) const MB_TAIL: usize = 0x40;
pub(in crate::service) const MB_ACK: usize = 0x80;
pub(in crate::service) const MB_SLOTS: usize = 0x1000;
pub(in crate::service) const MSG: usize = 128;
pub(in crate::service) const SLOTS: u64 = (MAILBOX_BYTES as usize - MB_SLOTS) as u64 / MSG as u64;
/// A peer whose heartbeat did not move for this long is not there (its offers are not asked
/// for: `NoListener` at once).
pub(in crate::service) const PEER_SILENCE: Duration = Duration::from_secs(3);
/// How often the heartbeat is written (the service looks at the bridge at least this often).
pub(in crate::service) const BEAT_EVERY: Duration = Duration::from_millis(300);
pub(in crate::service) const LOOK_MS: i32 = 300;
/// How long an accept waits for the peer service's offer.
pub(in crate::service) const ASK_PATIENCE: Duration = Duration::from_secs(2);
/// The endpoint block's header bytes and the identity word a live end keeps set
/// (docs/PROTOCOL.md §2; the transport checks at compile time that its layout says the same).
pub const BLOCK_INFO: usize = 0x200;
pub const BLOCK_INFO_MAGIC: u32 = 0x5043_4550;

/// Reason codes (docs/PROTOCOL.md §5) this side gives.
pub const UNTRUSTED: u32 = 17;

pub(in crate::service) const M_LISTEN: u64 = 1;
pub(in crate::service) const M_ASK: u64 = 2;
pub(in crate::service) const M_OFFER: u64 = 3;
pub(in crate::service) const M_PAIRED: u64 = 4;
pub(in crate::service) const M_CLOSED: u64 = 5;

/// An accept on this host waiting for the peer service's offer.
pub(in crate::service) struct Ask {
    pub(in crate::service) server: u64,
    pub(in crate::service) request: u64,
    pub(in crate::service) nowait: bool,
    pub(in crate::service) pid: u32,
    pub(in crate::service) ring: u64,
    pub(in crate::service) client: (Addr, u16),
    pub(in crate::service) local: (Addr, u16),
    pub(in crate::service) posted: Instant,
    /// The accepted socket's inode and namespace (the server end's, once paired).
    pub(in crate::service) socket: (u64, u64),
}

/// A client's offer this host sent to the peer with its block, waiting for `Paired`.
pub(in crate::service) struct Out {
    pub(in crate::service) client: u64,
    pub(in crate::service) request: u64,
    pub(in crate::service) pid: u32,
    pub(in crate::service) line: Rc<Line>,
    pub(in crate::service) block: Block,
    pub(in crate::service) addrs: ((Addr, u16), (Addr, u16)),
    /// The client's socket's inode and namespace.
    pub(in crate::service) socket: (u64, u64),
}

/// An endpoint block this service leased in its own inbound window, with its reader's vector.
#[derive(Clone, Copy)]
pub(in crate::service) struct Block {
    pub(in crate::service) lease: WindowLease,
    pub(in crate::service) vector: VectorLease,
}

impl Block {
    pub(in crate::service) fn slice(&self) -> Slice {
        Slice {
            mw: self.lease.mw,
            vector: self.vector.vector,
            offset: self.lease.offset,
            len: self.lease.len,
        }
    }
}

/// A connection paired across the bridge, as this host sees it: its end here.
pub(in crate::service) struct Bridged {
    pub(in crate::service) peer_id: u64,
    pub(in crate::service) block: Block,
    /// The processes holding this host's end (one end per host).
    pub(in crate::service) holders: Vec<u32>,
    /// The peer service said its end is closed (or the peer service restarted).
    pub(in crate::service) peer_closed: bool,
    pub(in crate::service) own_closed: bool,
    pub(in crate::service) end: usize,
    pub(in crate::service) addrs: ((Addr, u16), (Addr, u16)),
    /// This end's TCP socket (its inode, in namespace `netns`): while the kernel has it, a
    /// process holds the end, whether the service heard of that process or not.
    pub(in crate::service) inode: u64,
    pub(in crate::service) netns: u64,
    /// Every holder the service knew of is gone: the end closes once the kernel no longer has
    /// its socket (a forked child the service never heard of may hold it still).
    pub(in crate::service) orphan: bool,
}

/// This service's side of the bridge.
pub(in crate::service) struct Bridge {
    pub(in crate::service) dev: Arc<dyn NtbDevice>,
    /// Our mailbox (the peer writes it) and the peer's (we write it).
    pub(in crate::service) inbox: Region,
    pub(in crate::service) outbox: Region,
    pub(in crate::service) session: u64,
    pub(in crate::service) vector: VectorLease,
    pub(in crate::service) line: OwnedFd,
    pub(in crate::service) head: u64,
    pub(in crate::service) sent: u64,
    pub(in crate::service) peer_session: u64,
    pub(in crate::service) peer_beat: (u64, Instant),
    pub(in crate::service) beat: u64,
    pub(in crate::service) beat_at: Instant,
    /// Messages waiting for room in the peer's mailbox.
    pub(in crate::service) queue: VecDeque<[u64; MSG / 8]>,
    pub(in crate::service) remote_listeners: HashSet<(Addr, u16)>,
    pub(in crate::service) told: HashSet<(Addr, u16)>,
    pub(in crate::service) asks: HashMap<u64, Ask>,
    pub(in crate::service) outs: HashMap<u64, Out>,
    pub(in crate::service) conns: HashMap<u64, Bridged>,
    /// When orphaned ends were last looked up in the kernel's socket table.
    pub(in crate::service) orphans_seen: Instant,
    /// Blocks found still marked live by an end (a connection of a previous service on this
    /// host that still runs): kept leased, never handed out.
    pub(in crate::service) parked: Vec<WindowLease>,
    pub(in crate::service) dropped: u64,
}

/// Open the bridge on `dev`: reserve our mailbox, lease our vector, tell the peer where to
/// ring us.
pub(in crate::service) fn open(dev: Arc<dyn NtbDevice>) -> io::Result<Bridge> {
    let err = |what: &str, e: String| io::Error::other(format!("bridge: {what}: {e}"));
    let _ = dev.link_enable();
    // Leases of processes gone (the device rendezvous's, say) must not keep the mailbox's
    // range; a live one that holds it fails the start with a clear message.
    dev.reclaim();
    let mb = dev
        .reserve_window(0, MAILBOX_OFFSET, MAILBOX_BYTES, MAILBOX_TAG)
        .map_err(|e| err("mailbox", e.to_string()))?;
    let inbox = (dev.inbound(0))
        .and_then(|w| w.slice(mb.offset as usize, MAILBOX_BYTES as usize))
        .map_err(|e| err("inbound window", e.to_string()))?;
    let outbox = (dev.outbound(0))
        .and_then(|w| w.slice(MAILBOX_OFFSET as usize, MAILBOX_BYTES as usize))
        .map_err(|e| err("outbound window", e.to_string()))?;
    let vector = (dev.lease_vector(MAILBOX_TAG)).map_err(|e| err("vector", e.to_string()))?;
    let line = (dev.vector_fd(vector.vector)).map_err(|e| err("vector line", e.to_string()))?;
    let mut session = [0u8; 8];
    {
        use std::io::Read;
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut session))?;
    }
    let session = u64::from_le_bytes(session) | 1;
    // A peer service running already wrote to our predecessor: start after what it wrote
    // (it starts again from 0 for us once it sees our session).
    let peer_session = word(&inbox, MB_SESSION).load(Acquire);
    let head = word(&inbox, MB_TAIL).load(Acquire);
    word(&inbox, MB_ACK).store(0, Release);
    let b = Bridge {
        dev,
        inbox,
        outbox,
        session,
        vector,
        line,
        head,
        sent: 0,
        peer_session,
        peer_beat: (0, Instant::now()),
        beat: 0,
        beat_at: Instant::now() - BEAT_EVERY,
        queue: VecDeque::new(),
        remote_listeners: HashSet::new(),
        told: HashSet::new(),
        asks: HashMap::new(),
        outs: HashMap::new(),
        conns: HashMap::new(),
        orphans_seen: Instant::now(),
        parked: Vec::new(),
        dropped: 0,
    };
    // Our words in the peer's mailbox: messages from 0, then the session that says so.
    word(&b.outbox, MB_TAIL).store(0, Release);
    word(&b.outbox, MB_VECTOR).store(b.vector.vector as u64, Release);
    word(&b.outbox, MB_SESSION).store(session, Release);
    Ok(b)
}

pub(in crate::service) fn word(r: &Region, at: usize) -> &std::sync::atomic::AtomicU64 {
    r.atomic_u64(at)
        .expect("mailbox words are in range and aligned")
}

pub(in crate::service) fn addr_of(w: &[u64], at: usize) -> (Addr, u16) {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&w[at].to_le_bytes());
    a[8..].copy_from_slice(&w[at + 1].to_le_bytes());
    (a, w[at + 2] as u16)
}

pub(in crate::service) fn put_addr(w: &mut [u64], at: usize, (a, port): (Addr, u16)) {
    let mut x = [0u8; 8];
    x.copy_from_slice(&a[..8]);
    w[at] = u64::from_le_bytes(x);
    x.copy_from_slice(&a[8..]);
    w[at + 1] = u64::from_le_bytes(x);
    w[at + 2] = port as u64;
}

pub(in crate::service) fn put_slice(w: &mut [u64], at: usize, s: Slice) {
    w[at] = s.mw as u64 | (s.vector as u64) << 32;
    w[at + 1] = s.offset;
    w[at + 2] = s.len;
}

pub(in crate::service) fn slice_of(w: &[u64], at: usize) -> Slice {
    Slice {
        mw: w[at] as u32,
        vector: (w[at] >> 32) as u32,
        offset: w[at + 1],
        len: w[at + 2],
    }
}

/// Is the process `pid` (credentials `uid`, `gid`) trusted with every connection of the host:
/// root, or a member of group `pcisock` (its primary group or a supplementary one, as
/// /proc says)?
pub fn trusted(pid: u32, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(group) = std::fs::read_to_string("/etc/group").ok().and_then(|g| {
        g.lines()
            .find_map(|l| l.strip_prefix("pcisock:"))
            .and_then(|rest| rest.split(':').nth(1)?.parse::<u32>().ok())
    }) else {
        return false;
    };
    if gid == group {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(group)))
    })
}

impl Bridge {
    /// Connections with an end here.
    pub(in crate::service) fn conns(&self) -> usize {
        self.conns.len()
    }

    /// Is the peer service there (its heartbeat moved lately)?
    pub(in crate::service) fn peer_up(&self) -> bool {
        self.peer_session != 0 && self.peer_beat.1.elapsed() < PEER_SILENCE
    }

    /// Does a listener on the other host serve `dest`?
    pub(in crate::service) fn listens(&self, dest: (Addr, u16)) -> bool {
        self.peer_up()
            && self
                .remote_listeners
                .iter()
                .any(|&(a, p)| p == dest.1 && (a == dest.0 || unspecified(&a)))
    }

    pub(in crate::service) fn post(&mut self, m: [u64; MSG / 8]) {
        self.queue.push_back(m);
        self.flush();
    }

    /// Write what waits into the peer's mailbox as far as it has room, then ring it.
    pub(in crate::service) fn flush(&mut self) {
        let mut wrote = false;
        while let Some(m) = self.queue.front() {
            // SYNC POINT (service mailbox ack): a slot is reused only once the reader says it
            // copied it out.
            let ack = word(&self.inbox, MB_ACK).load(Acquire);
            if self.sent.wrapping_sub(ack) >= SLOTS {
                break;
            }
            let at = MB_SLOTS + (self.sent % SLOTS) as usize * MSG;
            let mut bytes = [0u8; MSG];
            for (i, w) in m.iter().enumerate() {
                bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
            }
            if self.outbox.write(at, &bytes).is_err() {
                break;
            }
            self.sent += 1;
            // SYNC POINT (service mailbox): the tail after the message's bytes.
            word(&self.outbox, MB_TAIL).store(self.sent, Release);
            self.queue.pop_front();
            wrote = true;
        }
        if wrote {
            let v = word(&self.inbox, MB_VECTOR).load(Acquire) as u32;
            let _ = self.dev.peer_vector_trigger(v);
        }
    }

    /// Lease an endpoint block for a ring of `ring` bytes and its reader's vector.
    pub(in crate::service) fn lease(&mut self, ring: u64) -> Option<Block> {
        let len = BLOCK_OVERHEAD + ring;
        for _ in 0..16 {
            let lease = (0..self.dev.mw_count())
                .find_map(|mw| self.dev.lease_window(mw, len, BLOCK_TAG).ok())?;
            let Ok(r) = (self.dev.inbound(lease.mw))
                .and_then(|w| w.slice(lease.offset as usize, lease.len as usize))
            else {
                let _ = self.dev.release(Lease::Window(lease));
                return None;
            };
            if r.atomic_u32(BLOCK_INFO).map(|w| w.load(Acquire)) == Ok(BLOCK_INFO_MAGIC) {
                // An end of a connection made by a service before us still runs in it.
                self.parked.push(lease);
                continue;
            }
            let _ = r.fill(0, RING_START as usize, 0);
            let Ok(vector) = self.dev.lease_vector(BLOCK_TAG) else {
                let _ = self.dev.release(Lease::Window(lease));
                return None;
            };
            return Some(Block { lease, vector });
        }
        None
    }

    pub(in crate::service) fn release(&self, b: Block) {
        if let Ok(r) = (self.dev.inbound(b.lease.mw))
            .and_then(|w| w.slice(b.lease.offset as usize, RING_START as usize))
        {
            let _ = r.fill(0, RING_START as usize, 0);
        }
        let _ = self.dev.release(Lease::Window(b.lease));
        let _ = self.dev.release(Lease::Vector(b.vector));
    }

    /// Does `s`, a block the peer named, lie inside the outbound window, and make a ring of
    /// `ring` bytes?
    pub(in crate::service) fn fits(&self, s: Slice, ring: u64) -> bool {
        let Ok(w) = self.dev.outbound(s.mw) else {
            return false;
        };
        s.len >= BLOCK_OVERHEAD + ring
            && s.offset
                .checked_add(s.len)
                .is_some_and(|e| e <= w.len() as u64)
            && s.vector < self.dev.vector_count()
    }
}

/// A ring size both ends asked for, within `limit`: a power of two of at least `MIN_RING`.
pub(in crate::service) fn ring_of(a: u64, b: u64, limit: u64) -> u64 {
    let asked = a.min(b).min(limit).max(MIN_RING);
    if asked.is_power_of_two() {
        asked
    } else {
        asked.next_power_of_two() / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_powers_of_two_within_both_asks_and_the_limit() {
        assert_eq!(ring_of(1 << 20, 1 << 20, 1 << 20), 1 << 20);
        assert_eq!(ring_of(1 << 20, 3 << 16, 1 << 20), 1 << 17);
        assert_eq!(ring_of(1, 1 << 20, 1 << 20), MIN_RING);
        assert_eq!(ring_of(1 << 22, 1 << 22, 1 << 18), 1 << 18);
    }

    #[test]
    fn root_is_trusted_and_nobody_is_not() {
        assert!(trusted(1, 0, 0));
        // uid and gid of nobody (65534) on a process that is not in any group pcisock has.
        assert!(!trusted(u32::MAX, 65534, 65534));
    }
}
