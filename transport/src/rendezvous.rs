//! The rendezvous area: how a flagged client finds a pcisock listener on the peer host and how
//! the two agree to carry one TCP connection over the bridge, without a byte on the TCP stream.
//!
//! Each host reserves the first [`CTRL_SIZE`] bytes of its inbound window 0. The tables there
//! that the *peer* writes (write remote, read local):
//! - listeners: the peer's pcisock listeners (port and address);
//! - offers: the peer's clients' offers to upgrade a connection to one of our listeners;
//! - answers: our servers' replies to offers our clients posted (written by the peer's servers).
//!
//! And the tables only this host writes: which listener and offer slots (in the peer's tables)
//! this host's processes own, with the owner's pid and start time so a dead owner's slot is
//! reclaimed. On a loopback link "the peer" is this host, and every table is in one area.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};

use ntbdrv::{NtbDevice, Region};

use crate::proto::{
    Answer, Endpoint, ListenerEntry, Offer, ProtoError, ANSWER_SIZE, LISTENER_SIZE, OFFER_SIZE,
    PROTOCOL_VERSION,
};

/// Bytes reserved at offset 0 of inbound window 0 on every host.
pub const CTRL_SIZE: u64 = 256 << 10;
/// Tag of the reservation in the host table.
pub const CTRL_TAG: u32 = 0x5043_5331; // "PCS1"
/// Magic at the start of an initialised area.
pub const CTRL_MAGIC: u64 = 0x4c52_5443_4b53_4350; // "PCSKCTRL"

pub const LISTENER_SLOTS: usize = 128;
/// Offers pending at once from one host's clients to the other host's servers: enough for a
/// thousand clients whose server accepts them late (benches/results/scaling.md).
pub const OFFER_SLOTS: usize = 1024;

const HDR_MAGIC: usize = 0x0000;
const HDR_VERSION: usize = 0x0008;
/// Accepts made by this host's flagged listeners (wrapping u32, local): the peer's clients read
/// it to tell a server that is slow to accept from one that will never answer.
const HDR_ACCEPTS: usize = 0x0010;
const LISTENER_OWNERS: usize = 0x0040; // 128 × 16 (local)
const LISTENERS: usize = 0x1000; // 128 × 64 (peer-written)
const OFFER_OWNERS: usize = 0x3000; // 1024 × 16 (local)
const OFFERS: usize = 0x8000; // 1024 × 128 (peer-written)
const ANSWERS: usize = 0x2_8000; // 1024 × 64 (peer-written)
const _: () = assert!(LISTENER_OWNERS + LISTENER_SLOTS * 16 <= LISTENERS);
const _: () = assert!(LISTENERS + LISTENER_SLOTS * LISTENER_SIZE <= OFFER_OWNERS);
const _: () = assert!(OFFER_OWNERS + OFFER_SLOTS * 16 <= OFFERS);
const _: () = assert!(OFFERS + OFFER_SLOTS * OFFER_SIZE <= ANSWERS);
const _: () = assert!(ANSWERS + OFFER_SLOTS * ANSWER_SIZE <= CTRL_SIZE as usize);

/// Offer states (the offer's first word, in the server host's memory).
pub const OFFER_FREE: u32 = 0;
pub const OFFER_POSTED: u32 = 1;
pub const OFFER_TAKEN: u32 = 2;
pub const OFFER_WITHDRAWN: u32 = 3;

const ACTIVE: u32 = 1;

/// Failure to set up the rendezvous area.
#[derive(Debug)]
pub enum CtrlError {
    Lease(ntbdrv::LeaseError),
    Window(ntbdrv::WindowError),
    /// The area holds another protocol version's tables.
    Version {
        ours: u32,
        theirs: u32,
    },
}

impl std::fmt::Display for CtrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtrlError::Lease(e) => write!(f, "cannot reserve the rendezvous area: {e}"),
            CtrlError::Window(e) => write!(f, "rendezvous area: {e}"),
            CtrlError::Version { ours, theirs } => {
                write!(
                    f,
                    "rendezvous area speaks protocol {theirs}, we speak {ours}"
                )
            }
        }
    }
}

/// This host's rendezvous area (`local`) and the peer's (`peer`, through the outbound window).
pub struct Control {
    local: Region,
    peer: Region,
}

/// A slot this process owns in one of the owner tables.
#[derive(Debug)]
pub struct SlotGuard {
    pub index: usize,
    pub generation: u32,
}

fn u32_at(r: &Region, off: usize) -> &AtomicU32 {
    r.atomic_u32(off)
        .expect("rendezvous layout offsets are in range and aligned")
}

fn u64_at(r: &Region, off: usize) -> &AtomicU64 {
    r.atomic_u64(off)
        .expect("rendezvous layout offsets are in range and aligned")
}

impl Control {
    /// Reserve (or find) this host's area and map the peer's.
    pub fn open(dev: &dyn NtbDevice) -> Result<Control, CtrlError> {
        dev.reserve_window(0, 0, CTRL_SIZE, CTRL_TAG)
            .map_err(CtrlError::Lease)?;
        let local = dev
            .inbound(0)
            .and_then(|w| w.slice(0, CTRL_SIZE as usize))
            .map_err(CtrlError::Window)?;
        let peer = dev
            .outbound(0)
            .and_then(|w| w.slice(0, CTRL_SIZE as usize))
            .map_err(CtrlError::Window)?;
        // A fresh area is all zeros, which are empty tables; stamp it once.
        let magic = u64_at(&local, HDR_MAGIC);
        if magic.load(Acquire) != CTRL_MAGIC {
            u32_at(&local, HDR_VERSION).store(PROTOCOL_VERSION, Relaxed);
            let _ = magic.compare_exchange(0, CTRL_MAGIC, SeqCst, SeqCst);
        }
        let v = u32_at(&local, HDR_VERSION).load(Acquire);
        if v != PROTOCOL_VERSION {
            return Err(CtrlError::Version {
                ours: PROTOCOL_VERSION,
                theirs: v,
            });
        }
        Ok(Control { local, peer })
    }

    /// Claim a free owner slot (pid 0, or a dead owner's) in an owner table of `n` entries.
    fn claim(&self, table: usize, n: usize) -> Option<SlotGuard> {
        let me = std::process::id();
        let start = ntbdrv::process::start_time(me).unwrap_or(0);
        for pass in 0..2 {
            for i in 0..n {
                let pid = u32_at(&self.local, table + i * 16);
                let st = u64_at(&self.local, table + i * 16 + 8);
                let cur = pid.load(Acquire);
                let free =
                    cur == 0 || (pass == 1 && !ntbdrv::process::alive(cur, st.load(Acquire)));
                if free && pid.compare_exchange(cur, me, SeqCst, SeqCst).is_ok() {
                    st.store(start, Release);
                    let generation = u32_at(&self.local, table + i * 16 + 4)
                        .fetch_add(1, SeqCst)
                        .wrapping_add(1);
                    return Some(SlotGuard {
                        index: i,
                        generation,
                    });
                }
            }
        }
        None
    }

    fn unclaim(&self, table: usize, i: usize) {
        u32_at(&self.local, table + i * 16).store(0, Release);
    }

    // ---- listeners ----------------------------------------------------------------------------

    /// Publish a listener in the peer's table.
    pub fn add_listener(&self, addr: Endpoint) -> Option<SlotGuard> {
        let slot = self.claim(LISTENER_OWNERS, LISTENER_SLOTS)?;
        let base = LISTENERS + slot.index * LISTENER_SIZE;
        let pid = std::process::id();
        let e = ListenerEntry {
            addr,
            pid,
            start_time: ntbdrv::process::start_time(pid).unwrap_or(0),
        };
        u32_at(&self.peer, base).store(0, SeqCst);
        self.peer
            .write(base + 8, &e.encode())
            .expect("listener record in range");
        u32_at(&self.peer, base + 4).store(slot.generation, Relaxed);
        // SYNC POINT (listener publish): Release pairs with the Acquire load in `find_listener`.
        u32_at(&self.peer, base).store(ACTIVE, Release);
        Some(slot)
    }

    /// Withdraw a listener.
    pub fn remove_listener(&self, slot: &SlotGuard) {
        let base = LISTENERS + slot.index * LISTENER_SIZE;
        u32_at(&self.peer, base).store(0, Release);
        self.unclaim(LISTENER_OWNERS, slot.index);
    }

    /// Is there a live pcisock listener on the peer host for `server`? `same_host` lets us check
    /// the listener's process on a loopback link.
    pub fn find_listener(&self, server: &Endpoint, same_host: bool) -> bool {
        for i in 0..LISTENER_SLOTS {
            let base = LISTENERS + i * LISTENER_SIZE;
            if u32_at(&self.local, base).load(Acquire) != ACTIVE {
                continue;
            }
            let mut rec = [0u8; LISTENER_SIZE - 8];
            if self.local.read(base + 8, &mut rec).is_err() {
                continue;
            }
            let Ok(e) = ListenerEntry::decode(&rec) else {
                continue;
            };
            if e.addr.port != server.port || !(e.addr.is_unspecified() || e.addr.ip == server.ip) {
                continue;
            }
            if same_host && !ntbdrv::process::alive(e.pid, e.start_time) {
                continue;
            }
            return true;
        }
        false
    }

    // ---- offers (client side) -----------------------------------------------------------------

    /// Post an offer in the peer's offer table; its answer will arrive in our answer slot of the
    /// same index.
    pub fn post_offer(&self, offer: &Offer) -> Option<SlotGuard> {
        let slot = self.claim(OFFER_OWNERS, OFFER_SLOTS)?;
        // Our answer slot starts empty (the server writes it; nobody else uses this index).
        u32_at(&self.local, ANSWERS + slot.index * ANSWER_SIZE).store(0, SeqCst);
        let base = OFFERS + slot.index * OFFER_SIZE;
        u32_at(&self.peer, base).store(OFFER_FREE, SeqCst);
        self.peer
            .write(base + 8, &offer.encode())
            .expect("offer record in range");
        u32_at(&self.peer, base + 4).store(slot.generation, Relaxed);
        // SYNC POINT (offer publish): Release pairs with the Acquire load in `take_offer`.
        u32_at(&self.peer, base).store(OFFER_POSTED, Release);
        Some(slot)
    }

    /// Read the answer to our offer in `slot`, if one has arrived.
    pub fn answer(&self, slot: &SlotGuard) -> Option<Result<Answer, ProtoError>> {
        let base = ANSWERS + slot.index * ANSWER_SIZE;
        // SYNC POINT (answer): Acquire pairs with the server's Release in `write_answer`.
        if u32_at(&self.local, base).load(Acquire) != ACTIVE {
            return None;
        }
        if u32_at(&self.local, base + 4).load(Relaxed) != slot.generation {
            return None; // a stale answer to an earlier use of the slot
        }
        let mut rec = [0u8; ANSWER_SIZE - 8];
        if self.local.read(base + 8, &mut rec).is_err() {
            return Some(Err(ProtoError::BadRecord("answer out of range")));
        }
        Some(Answer::decode(&rec))
    }

    /// Withdraw an unanswered offer. False if the server took it first (an answer is coming).
    pub fn withdraw(&self, slot: &SlotGuard) -> bool {
        let state = u32_at(&self.peer, OFFERS + slot.index * OFFER_SIZE);
        // SYNC POINT (offer race): this CAS and the server's CAS in `take_offer` decide who
        // owns the offer; exactly one succeeds.
        state
            .compare_exchange(OFFER_POSTED, OFFER_WITHDRAWN, SeqCst, SeqCst)
            .is_ok()
    }

    /// Give the offer slot back.
    pub fn finish_offer(&self, slot: SlotGuard) {
        self.unclaim(OFFER_OWNERS, slot.index);
    }

    // ---- offers (server side) -----------------------------------------------------------------

    /// A flagged listener of this host accepted a connection (offer or not).
    pub fn note_accept(&self) {
        u32_at(&self.local, HDR_ACCEPTS).fetch_add(1, Relaxed);
    }

    /// How many accepts the peer host's flagged listeners have made (a read through the
    /// window; compare two values for progress, the count itself means nothing).
    pub fn peer_accepts(&self) -> u32 {
        u32_at(&self.peer, HDR_ACCEPTS).load(Relaxed)
    }

    /// Find and take the posted offer for the connection just accepted. Invalid offers that
    /// match are taken and reported, so they are not tried again.
    pub fn take_offer(
        &self,
        peer: &Endpoint,
        local: &Endpoint,
    ) -> Option<(usize, u32, Result<Offer, ProtoError>)> {
        for i in 0..OFFER_SLOTS {
            let base = OFFERS + i * OFFER_SIZE;
            let state = u32_at(&self.local, base);
            if state.load(Acquire) != OFFER_POSTED {
                continue;
            }
            let generation = u32_at(&self.local, base + 4).load(Relaxed);
            let mut rec = [0u8; OFFER_SIZE - 8];
            if self.local.read(base + 8, &mut rec).is_err() {
                continue;
            }
            let offer = Offer::decode(&rec);
            let matches = match &offer {
                Ok(o) => o.matches(peer, local),
                Err(_) => false,
            };
            if !matches {
                continue;
            }
            if state
                .compare_exchange(OFFER_POSTED, OFFER_TAKEN, SeqCst, SeqCst)
                .is_ok()
            {
                // Re-read after the CAS: the record cannot change once taken.
                if self.local.read(base + 8, &mut rec).is_err() {
                    continue;
                }
                return Some((i, generation, Offer::decode(&rec)));
            }
        }
        None
    }

    /// Write the answer to offer `index` (generation `generation`) into the client's table.
    pub fn write_answer(&self, index: usize, generation: u32, answer: &Answer) {
        let base = ANSWERS + index * ANSWER_SIZE;
        u32_at(&self.peer, base).store(0, SeqCst);
        self.peer
            .write(base + 8, &answer.encode())
            .expect("answer record in range");
        u32_at(&self.peer, base + 4).store(generation, Relaxed);
        // SYNC POINT (answer): Release pairs with the client's Acquire in `answer`.
        u32_at(&self.peer, base).store(ACTIVE, Release);
    }
}
