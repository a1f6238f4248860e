//! The rendezvous area: how a flagged client finds a pcisock listener on the peer host and how the
//! two agree to carry one TCP connection over the bridge, without a byte on the TCP stream. Owns:
//! the tables' layout and the claim, publication and reclaim of their slots. Must never act on a
//! record before it is validated, nor write a slot this host has not claimed.
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
//!
//! Built with `--cfg loom`, the same code runs over a model of the area (`model`) whose words
//! are loom's atomics, with two slots per table: `tests/loom_rendezvous.rs` checks its
//! orderings there (docs/MEMORY-ORDERING.md).

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU32, AtomicU64};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicU32, AtomicU64};

use ntbdrv::NtbDevice;
// The memory the tables are in: a mapped window, or under loom its model.
#[cfg(not(loom))]
use ntbdrv::Region as Area;

mod liveness;
#[cfg(loom)]
pub mod model;
#[cfg(loom)]
use model::Area;

use crate::proto::{
    Answer, Endpoint, ListenerEntry, Offer, ProtoError, SocketId, ANSWER_SIZE, LISTENER_BELL,
    LISTENER_INODE, LISTENER_NETNS, LISTENER_SIZE, OFFER_SIZE, PROTOCOL_VERSION,
};
use liveness::Liveness;

/// Bytes reserved at offset 0 of inbound window 0 on every host.
pub const CTRL_SIZE: u64 = 256 << 10;
// The host fabric services' mailbox across the bridge lies right after it (phase 3).
const _: () = assert!(CTRL_SIZE <= fabric::service::MAILBOX_OFFSET);
/// Tag of the reservation in the host table.
pub const CTRL_TAG: u32 = 0x5043_5331; // "PCS1"
/// Magic at the start of an initialised area.
pub const CTRL_MAGIC: u64 = 0x4c52_5443_4b53_4350; // "PCSKCTRL"

#[cfg(not(loom))]
pub const LISTENER_SLOTS: usize = 128;
/// Offers pending at once from one host's clients to the other host's servers: enough for a
/// thousand clients whose server accepts them late (benches/results/scaling.md).
#[cfg(not(loom))]
pub const OFFER_SLOTS: usize = 1024;
/// Under loom two slots per table (the same layout, fewer slots in use): enough for every race
/// of two parties, and a scan stays a few steps for the model to interleave.
#[cfg(loom)]
pub const LISTENER_SLOTS: usize = 2;
#[cfg(loom)]
pub const OFFER_SLOTS: usize = 2;

const HDR_MAGIC: usize = 0x0000;
const HDR_VERSION: usize = 0x0008;
/// Accepts made by this host's flagged listeners (wrapping u32, local): the peer's clients read
/// it to tell a server that is slow to accept from one that will never answer.
const HDR_ACCEPTS: usize = 0x0010;
const LISTENER_OWNERS: usize = 0x0040; // 128 × 16 (local)
const LISTENERS: usize = 0x1000; // 128 × 64 (peer-written)
const OFFER_OWNERS: usize = 0x3000; // 1024 × 16 (local)
/// The listening socket of each of our listener slots: inode u64, network namespace u64 (local;
/// zero until the kernel listens). A listener lives as long as that socket, whoever holds it.
const LISTENER_SOCKETS: usize = 0x7000; // 128 × 16 (local)
const OFFERS: usize = 0x8000; // 1024 × 128 (peer-written)
const ANSWERS: usize = 0x2_8000; // 1024 × 64 (peer-written)
const _: () = assert!(LISTENER_OWNERS + LISTENER_SLOTS * 16 <= LISTENERS);
const _: () = assert!(LISTENERS + LISTENER_SLOTS * LISTENER_SIZE <= OFFER_OWNERS);
const _: () = assert!(OFFER_OWNERS + OFFER_SLOTS * 16 <= LISTENER_SOCKETS);
const _: () = assert!(LISTENER_SOCKETS + LISTENER_SLOTS * 16 <= OFFERS);
const _: () = assert!(OFFERS + OFFER_SLOTS * OFFER_SIZE <= ANSWERS);
const _: () = assert!(ANSWERS + OFFER_SLOTS * ANSWER_SIZE <= CTRL_SIZE as usize);

/// Offer states (the offer's first word, in the server host's memory). The state and the
/// generation after it are read and written as one 64-bit word (`offer_word`), so the server's
/// take compares the generation too: it takes the very offer whose record it read.
pub const OFFER_FREE: u32 = 0;
pub const OFFER_POSTED: u32 = 1;
pub const OFFER_TAKEN: u32 = 2;
pub const OFFER_WITHDRAWN: u32 = 3;
/// Reserved by a client whose kernel connect is under way (its port is not known yet): a server
/// that accepts a connection on the offer's server port and finds no posted offer waits a moment
/// for this one to be posted.
pub const OFFER_CONNECTING: u32 = 4;

const ACTIVE: u32 = 1;

/// Set in an owner slot's pid while its claimer writes the rest (`claim`); pids stay below it.
const CLAIMING: u32 = 1 << 31;
/// Set in an owner slot's pid while a sweep withdraws the slot's listener
/// (`sweep_dead_listeners`): the owner giving the slot back waits for it.
const SWEEPING: u32 = 1 << 30;

/// How long an owner giving its slot back waits for a sweep holding it (a few instructions).
const SWEEP_HOLD: std::time::Duration = std::time::Duration::from_millis(10);

#[cfg(loom)]
use loom::thread::yield_now;
#[cfg(not(loom))]
use std::thread::yield_now;

/// Failure to set up the rendezvous area.
#[derive(Debug)]
pub enum CtrlError {
    Lease(ntbdrv::LeaseError),
    Window(ntbdrv::WindowError),
    /// The area holds another protocol version's tables.
    Version {
        ours: u32,
        peer_block: u32,
    },
    /// A loom build models the area; it opens no device's.
    #[cfg(loom)]
    Modelled,
}

impl std::fmt::Display for CtrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtrlError::Lease(e) => write!(f, "cannot reserve the rendezvous area: {e}"),
            CtrlError::Window(e) => write!(f, "rendezvous area: {e}"),
            CtrlError::Version { ours, peer_block } => {
                write!(
                    f,
                    "rendezvous area speaks protocol {peer_block}, we speak {ours}"
                )
            }
            #[cfg(loom)]
            CtrlError::Modelled => write!(f, "a loom build opens no device's rendezvous area"),
        }
    }
}

/// This host's rendezvous area (`local`) and the peer's (`peer`, through the outbound window).
pub struct RendezvousArea {
    local: Area,
    peer: Area,
    /// This process's late bell and the listeners it published (see [`RendezvousArea::set_bell`]).
    bell: std::sync::Mutex<Bell>,
}

/// A process's *late bell* (PROTOCOL.md §6, *Late upgrade*): an interrupt vector it leased so
/// that a client posting a late offer to one of its listeners wakes its server candidates. The
/// area is inherited across fork: a child's copy names its parent, so everything is pid-checked.
#[derive(Default)]
struct Bell {
    pid: u32,
    /// The vector + 1 (0: none).
    word: u32,
    /// Our listener slots (index, address) published by `pid`.
    mine: Vec<(usize, Endpoint)>,
}

/// A slot this process owns in one of the owner tables.
#[derive(Debug)]
pub struct SlotGuard {
    pub index: usize,
    pub generation: u32,
}

fn u32_at(r: &Area, off: usize) -> &AtomicU32 {
    r.atomic_u32(off)
        .expect("rendezvous layout offsets are in range and aligned")
}

fn u64_at(r: &Area, off: usize) -> &AtomicU64 {
    r.atomic_u64(off)
        .expect("rendezvous layout offsets are in range and aligned")
}

/// An offer's state and generation as the one 64-bit word they form (little-endian: the state
/// at the record's offset 0, the generation at 4).
fn offer_word(state: u32, generation: u32) -> u64 {
    u64::from(state) | (u64::from(generation) << 32)
}

/// The state half of an offer's word.
fn offer_state(word: u64) -> u32 {
    word as u32
}

/// This process's id (under loom, the process its thread plays: [`model::pid`]).
#[cfg(not(loom))]
fn my_pid() -> u32 {
    ntbdrv::process::pid()
}
#[cfg(loom)]
use model::pid as my_pid;

impl RendezvousArea {
    /// Reserve (or find) this host's area and map the peer's.
    #[cfg(not(loom))]
    pub fn open(dev: &dyn NtbDevice) -> Result<RendezvousArea, CtrlError> {
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
        RendezvousArea::over(local, peer)
    }

    /// Under loom the area is a model (loom's atomics cannot live in a mapping): see
    /// [`RendezvousArea::model`].
    #[cfg(loom)]
    pub fn open(_dev: &dyn NtbDevice) -> Result<RendezvousArea, CtrlError> {
        Err(CtrlError::Modelled)
    }

    /// A fresh modelled area on a loopback link (ours and the peer's are one), laid out in
    /// cells as the code reaches it: every word with its width, each record's bytes in a few
    /// cells. Call it inside `loom::model`, before spawning the threads that share it.
    #[cfg(loom)]
    pub fn model() -> RendezvousArea {
        let mut cells = vec![(HDR_MAGIC, 8), (HDR_VERSION, 4), (HDR_ACCEPTS, 4)];
        let owners = |table: usize, n: usize| {
            (0..n).flat_map(move |i| {
                let b = table + i * 16;
                [(b, 4), (b + 4, 4), (b + 8, 8)] // pid, generation, start time
            })
        };
        cells.extend(owners(LISTENER_OWNERS, LISTENER_SLOTS));
        cells.extend((0..LISTENER_SLOTS).flat_map(|i| {
            let b = LISTENERS + i * LISTENER_SIZE;
            // state, generation; address; port, pid, start time; socket; the rest
            [(b, 4), (b + 4, 4), (b + 8, 16), (b + 24, 16)]
                .into_iter()
                .chain([
                    (b + LISTENER_INODE, 8),
                    (b + LISTENER_NETNS, 8),
                    (b + LISTENER_BELL, 4),
                    (b + LISTENER_BELL + 4, 4),
                ])
        }));
        cells.extend(owners(OFFER_OWNERS, OFFER_SLOTS));
        cells.extend((0..LISTENER_SLOTS).flat_map(|i| {
            let b = LISTENER_SOCKETS + i * 16;
            [(b, 8), (b + 8, 8)] // inode, namespace
        }));
        cells.extend((0..OFFER_SLOTS).flat_map(|i| {
            let b = OFFERS + i * OFFER_SIZE;
            // state and generation; version and cookie; the endpoints; the ring and the rest
            [(b, 8), (b + 8, 16), (b + 24, 40), (b + 64, 64)]
        }));
        cells.extend((0..OFFER_SLOTS).flat_map(|i| {
            let b = ANSWERS + i * ANSWER_SIZE;
            // state, generation; version, decline and cookie; the ring and the rest
            [(b, 4), (b + 4, 4), (b + 8, 16), (b + 24, 40)]
        }));
        cells.sort_unstable();
        let area = model::Area::new(CTRL_SIZE as usize, cells);
        RendezvousArea::over(area.clone(), area).expect("a fresh model is stamped")
    }

    /// The tables in `local` (ours) and `peer` (the peer's, reached through the bridge).
    fn over(local: Area, peer: Area) -> Result<RendezvousArea, CtrlError> {
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
                peer_block: v,
            });
        }
        let ctrl = RendezvousArea {
            local,
            peer,
            bell: Default::default(),
        };
        ctrl.sweep_dead_listeners();
        Ok(ctrl)
    }

    /// Withdraw the listeners of this host whose listening socket is gone without a withdrawal
    /// (its last holder crashed or was SIGKILLed). Their records in the peer host's table would
    /// stay ACTIVE, and a client there would offer to them, connect, and wait out the answer
    /// timeout; the peer host cannot tell, as it cannot see our sockets. So every process that
    /// opens the area sweeps. Returns how many it withdrew.
    pub fn sweep_dead_listeners(&self) -> usize {
        let me = my_pid();
        let live = Liveness::new(None);
        let mut n = 0;
        for i in 0..LISTENER_SLOTS {
            let generation = u32_at(&self.local, LISTENER_OWNERS + i * 16 + 4);
            let claim = generation.load(SeqCst);
            let pid = u32_at(&self.local, LISTENER_OWNERS + i * 16);
            let cur = pid.load(Acquire);
            let start = u64_at(&self.local, LISTENER_OWNERS + i * 16 + 8).load(Acquire);
            let socket = self.listener_socket(i);
            // A claim in progress (its start time and socket not written yet) is judged by the
            // claimer's pid; a slot another sweep holds is left to it.
            let dead = match cur & (CLAIMING | SWEEPING) {
                0 => !live.listener(cur, start, socket),
                CLAIMING => !ntbdrv::process::pid_exists(cur & !CLAIMING),
                _ => false,
            };
            if cur == 0 || cur == me || !dead {
                continue;
            }
            // Hold the slot first, so nobody publishes a new record in it while we clear the
            // old one; then let it go. Unless it was let go and claimed again (by the same pid)
            // while we judged it: that claim is not the one judged, give it back.
            // SYNC POINT (owner claim): the CAS reads the claimer's Release store of its pid,
            // made after the generation's bump: a claim since our look shows in the generation.
            let held = (cur & !CLAIMING) | SWEEPING;
            if pid.compare_exchange(cur, held, SeqCst, SeqCst).is_ok() {
                if generation.load(SeqCst) != claim {
                    let _ = pid.compare_exchange(held, cur, SeqCst, SeqCst);
                    continue;
                }
                // SYNC POINT (listener publish): Release pairs with the Acquire load in
                // `find_listener`, as a withdrawal does.
                u32_at(&self.peer, LISTENERS + i * LISTENER_SIZE).store(0, Release);
                pid.store(0, Release);
                n += 1;
            }
        }
        n
    }

    /// The listening socket recorded for our listener slot `i` (zeros: none yet).
    fn listener_socket(&self, i: usize) -> SocketId {
        SocketId {
            // SYNC POINT (listener socket): Acquire pairs with the Release store of the inode
            // in `set_listener_socket`, which is written after the namespace.
            inode: u64_at(&self.local, LISTENER_SOCKETS + i * 16).load(Acquire),
            netns: u64_at(&self.local, LISTENER_SOCKETS + i * 16 + 8).load(Relaxed),
        }
    }

    /// Claim a free owner slot (pid 0, or a dead owner's) in an owner table of `n` entries. A
    /// listener slot's owner is dead when its listening socket is (see [`Liveness`]). The pid is
    /// marked [`CLAIMING`] until the owner's start time and socket and the generation are
    /// written: until then a sweep or a claim would judge the claim by the last owner's.
    fn claim(&self, table: usize, n: usize) -> Option<SlotGuard> {
        let me = my_pid();
        let start = ntbdrv::process::start_time(me).unwrap_or(0);
        let live = Liveness::new(None);
        let alive = |i: usize, pid: u32, start: u64| {
            if table == LISTENER_OWNERS {
                live.listener(pid, start, self.listener_socket(i))
            } else {
                ntbdrv::process::alive(pid, start)
            }
        };
        for pass in 0..2 {
            for i in 0..n {
                let pid = u32_at(&self.local, table + i * 16);
                let st = u64_at(&self.local, table + i * 16 + 8);
                let cur = pid.load(Acquire);
                let dead = || match cur & (CLAIMING | SWEEPING) {
                    0 => !alive(i, cur, st.load(Acquire)),
                    CLAIMING => !ntbdrv::process::pid_exists(cur & !CLAIMING), // died claiming
                    _ => false, // a sweep withdraws it
                };
                let free = cur == 0 || (pass == 1 && dead());
                if free
                    && pid
                        .compare_exchange(cur, me | CLAIMING, SeqCst, SeqCst)
                        .is_ok()
                {
                    st.store(start, Release);
                    if table == LISTENER_OWNERS {
                        self.store_listener_socket(i, SocketId::default());
                    }
                    let generation = u32_at(&self.local, table + i * 16 + 4)
                        .fetch_add(1, SeqCst)
                        .wrapping_add(1);
                    // SYNC POINT (owner claim): Release pairs with a sweep's CAS of the pid.
                    pid.store(me, Release);
                    return Some(SlotGuard {
                        index: i,
                        generation,
                    });
                }
            }
        }
        None
    }

    /// Give the owner slot `i` claimed as `generation` back (by this process, or one that took
    /// the listener or offer over). A sweep may hold it a moment ([`SWEEPING`]: to withdraw a
    /// listener it judged dead, or to give the slot back): wait for it, at most [`SWEEP_HOLD`]
    /// (a sweep that died holding it).
    fn unclaim(&self, table: usize, i: usize, generation: u32) {
        let t0 = std::time::Instant::now();
        let pid = u32_at(&self.local, table + i * 16);
        loop {
            let cur = pid.load(Acquire);
            // Withdrawn by a sweep (and perhaps claimed again since): not ours to give back.
            if cur == 0 || u32_at(&self.local, table + i * 16 + 4).load(SeqCst) != generation {
                return;
            }
            let held = cur & SWEEPING != 0 && t0.elapsed() < SWEEP_HOLD;
            if !held && pid.compare_exchange(cur, 0, SeqCst, SeqCst).is_ok() {
                return;
            }
            yield_now();
        }
    }

    // ---- listeners ----------------------------------------------------------------------------

    /// Publish a listener in the peer's table; `socket` is the kernel's listening socket, if it
    /// listens already (else see [`RendezvousArea::set_listener_socket`]).
    pub fn add_listener(&self, addr: Endpoint, socket: SocketId) -> Option<SlotGuard> {
        let slot = self.claim(LISTENER_OWNERS, LISTENER_SLOTS)?;
        self.store_listener_socket(slot.index, socket);
        let base = LISTENERS + slot.index * LISTENER_SIZE;
        let pid = my_pid();
        let e = ListenerEntry {
            addr,
            pid,
            start_time: ntbdrv::process::start_time(pid).unwrap_or(0),
            socket,
        };
        u32_at(&self.peer, base).store(0, SeqCst);
        self.peer
            .write(base + 8, &e.encode())
            .expect("listener record in range");
        u32_at(&self.peer, base + 4).store(slot.generation, Relaxed);
        {
            let mut b = self.my_bell();
            b.mine.push((slot.index, addr));
            u32_at(&self.peer, base + LISTENER_BELL).store(b.word, Relaxed);
        }
        // SYNC POINT (listener publish): Release pairs with the Acquire load in `find_listener`.
        u32_at(&self.peer, base).store(ACTIVE, Release);
        Some(slot)
    }

    /// This process's bell state (a forked child's inherited copy is its parent's: reset).
    fn my_bell(&self) -> std::sync::MutexGuard<'_, Bell> {
        let mut b = self.bell.lock().unwrap_or_else(|p| p.into_inner());
        if b.pid != my_pid() {
            *b = Bell {
                pid: my_pid(),
                ..Bell::default()
            };
        }
        b
    }

    /// Publish `vector` as this process's late bell in every listener record it published
    /// (and in those it publishes later), so that a client posting a late offer to one of them
    /// rings it (`listener_bells`). The caller then looks for late offers posted before.
    pub fn set_bell(&self, vector: u32) {
        let mut b = self.my_bell();
        b.word = vector + 1;
        for &(i, _) in &b.mine {
            let base = LISTENERS + i * LISTENER_SIZE;
            u32_at(&self.peer, base + LISTENER_BELL).store(b.word, Relaxed);
        }
        // SYNC POINT (late bell): with the client's fence in `listener_bells`, either the
        // client sees the bell (and rings it) or our look after this sees its offer.
        fence(SeqCst);
    }

    /// Did this process publish a listener that takes connections to `local`?
    pub fn serves(&self, local: &Endpoint) -> bool {
        self.my_bell()
            .mine
            .iter()
            .any(|(_, a)| a.port == local.port && (a.is_unspecified() || a.ip == local.ip))
    }

    /// The late bells (vectors) of the live listeners on the peer host for `server`: called
    /// by a client after posting a late offer, to ring them.
    pub fn listener_bells(&self, server: &Endpoint, same_host: bool) -> Vec<u32> {
        // SYNC POINT (late bell): pairs with the fence in `set_bell`.
        fence(SeqCst);
        let mut out = Vec::new();
        self.each_listener(server, same_host, |i| {
            let base = LISTENERS + i * LISTENER_SIZE;
            let w = u32_at(&self.local, base + LISTENER_BELL).load(Relaxed);
            if w != 0 {
                out.push(w - 1);
            }
            false
        });
        out
    }

    fn store_listener_socket(&self, i: usize, socket: SocketId) {
        u64_at(&self.local, LISTENER_SOCKETS + i * 16 + 8).store(socket.netns, Relaxed);
        // SYNC POINT (listener socket): Release pairs with the Acquire in `listener_socket`.
        u64_at(&self.local, LISTENER_SOCKETS + i * 16).store(socket.inode, Release);
    }

    /// The kernel now listens on a published listener's socket: from here on the listener lives
    /// exactly as long as that socket (until then, as long as the process that published it).
    pub fn set_listener_socket(&self, slot: &SlotGuard, socket: SocketId) {
        self.store_listener_socket(slot.index, socket);
        let base = LISTENERS + slot.index * LISTENER_SIZE;
        u64_at(&self.peer, base + LISTENER_NETNS).store(socket.netns, Relaxed);
        // SYNC POINT (listener socket): Release pairs with the Acquire load of the inode in
        // `find_listener` (the namespace is written first).
        u64_at(&self.peer, base + LISTENER_INODE).store(socket.inode, Release);
    }

    /// Our host's published listener on the kernel listening socket `socket`, if any (a new
    /// image after exec takes over the listener its process published before).
    pub fn listener_of(&self, socket: SocketId) -> Option<SlotGuard> {
        (0..LISTENER_SLOTS).find_map(|i| {
            let owned = u32_at(&self.local, LISTENER_OWNERS + i * 16).load(Acquire) != 0;
            (owned && socket.inode != 0 && self.listener_socket(i) == socket).then(|| SlotGuard {
                index: i,
                generation: u32_at(&self.local, LISTENER_OWNERS + i * 16 + 4).load(Acquire),
            })
        })
    }

    /// Withdraw a listener.
    pub fn remove_listener(&self, slot: &SlotGuard) {
        self.my_bell().mine.retain(|(i, _)| *i != slot.index);
        let base = LISTENERS + slot.index * LISTENER_SIZE;
        u32_at(&self.peer, base).store(0, Release);
        self.unclaim(LISTENER_OWNERS, slot.index, slot.generation);
    }

    /// Is there a live pcisock listener on the peer host for `server`? `same_host` lets us check
    /// the listener's socket (or, before it listens, its process) on a loopback link.
    pub fn find_listener(&self, server: &Endpoint, same_host: bool) -> bool {
        let mut found = false;
        self.each_listener(server, same_host, |_| {
            found = true;
            true
        });
        found
    }

    /// Call `f` with the slot of each live listener on the peer host for `server`, until it
    /// says stop (true).
    fn each_listener(&self, server: &Endpoint, same_host: bool, mut f: impl FnMut(usize) -> bool) {
        let live = Liveness::new(Some(server));
        for i in 0..LISTENER_SLOTS {
            let Some(e) = self.listener_entry(i) else {
                continue;
            };
            if e.addr.port != server.port || !(e.addr.is_unspecified() || e.addr.ip == server.ip) {
                continue;
            }
            if same_host && !live.listener(e.pid, e.start_time, e.socket) {
                continue;
            }
            if f(i) {
                return;
            }
        }
    }

    /// The peer's listener published in slot `i` of our table, if any (one whose record does
    /// not decode is none).
    fn listener_entry(&self, i: usize) -> Option<ListenerEntry> {
        let base = LISTENERS + i * LISTENER_SIZE;
        // SYNC POINT (listener publish): Acquire pairs with the Release store in `add_listener`.
        if u32_at(&self.local, base).load(Acquire) != ACTIVE {
            return None;
        }
        let mut rec = [0u8; LISTENER_SIZE - 8];
        self.local.read(base + 8, &mut rec).ok()?;
        let mut e = ListenerEntry::decode(&rec).ok()?;
        // The socket may be filled in while we read: take it whole.
        // SYNC POINT (listener socket): Acquire pairs with the Release in
        // `set_listener_socket`.
        e.socket.inode = u64_at(&self.local, base + LISTENER_INODE).load(Acquire);
        e.socket.netns = u64_at(&self.local, base + LISTENER_NETNS).load(Relaxed);
        Some(e)
    }

    /// [`RendezvousArea::find_listener`]'s view of slot `i`, for the model checks.
    #[cfg(loom)]
    pub fn model_listener(&self, i: usize) -> Option<ListenerEntry> {
        self.listener_entry(i)
    }

    // ---- offers (client side) -----------------------------------------------------------------

    /// Post an offer in the peer's offer table; its answer will arrive in our answer slot of the
    /// same index.
    pub fn post_offer(&self, offer: &Offer) -> Option<SlotGuard> {
        self.write_offer(offer, OFFER_POSTED)
    }

    /// Reserve an offer slot before the kernel connect picks our port (`offer.client.port` is
    /// 0); [`RendezvousArea::publish_offer`] posts it once the port is known.
    pub fn reserve_offer(&self, offer: &Offer) -> Option<SlotGuard> {
        self.write_offer(offer, OFFER_CONNECTING)
    }

    /// Post a reserved offer with its client endpoint filled in.
    pub fn publish_offer(&self, slot: &SlotGuard, offer: &Offer) {
        let base = OFFERS + slot.index * OFFER_SIZE;
        // A CONNECTING offer is never taken, so its body is ours to rewrite.
        self.peer
            .write(base + 8, &offer.encode())
            .expect("offer record in range");
        // SYNC POINT (offer publish): Release pairs with the Acquire load in `take_offer`.
        u64_at(&self.peer, base).store(offer_word(OFFER_POSTED, slot.generation), Release);
    }

    fn write_offer(&self, offer: &Offer, state: u32) -> Option<SlotGuard> {
        let slot = self.claim(OFFER_OWNERS, OFFER_SLOTS)?;
        // Our answer slot starts empty (the server writes it; nobody else uses this index).
        u32_at(&self.local, ANSWERS + slot.index * ANSWER_SIZE).store(0, SeqCst);
        let base = OFFERS + slot.index * OFFER_SIZE;
        let word = u64_at(&self.peer, base);
        word.store(offer_word(OFFER_FREE, slot.generation), SeqCst);
        self.peer
            .write(base + 8, &offer.encode())
            .expect("offer record in range");
        // SYNC POINT (offer publish): Release pairs with the Acquire load in `take_offer`.
        word.store(offer_word(state, slot.generation), Release);
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
        // SYNC POINT (answer rewrite): read again, as a seqlock does: a server answering an
        // earlier use of this slot very late (its client gave the slot up) may be rewriting it
        // while we read. Our answer still there, whole: the record is it; else, not yet.
        // (Acquire on the state again: if it is a late rewrite's ACTIVE, that rewrite's
        // generation comes with it and tells.)
        fence(Acquire);
        if u32_at(&self.local, base).load(Acquire) != ACTIVE
            || u32_at(&self.local, base + 4).load(Relaxed) != slot.generation
        {
            return None;
        }
        Some(Answer::decode(&rec))
    }

    /// Withdraw an unanswered offer. False if the server took it first (an answer is coming).
    pub fn withdraw(&self, slot: &SlotGuard) -> bool {
        let word = u64_at(&self.peer, OFFERS + slot.index * OFFER_SIZE);
        let g = slot.generation;
        let withdrawn = offer_word(OFFER_WITHDRAWN, g);
        // SYNC POINT (offer race): this CAS and the server's CAS in `take_offer` decide who
        // owns the offer; exactly one succeeds.
        word.compare_exchange(offer_word(OFFER_CONNECTING, g), withdrawn, SeqCst, SeqCst)
            .is_ok()
            || word
                .compare_exchange(offer_word(OFFER_POSTED, g), withdrawn, SeqCst, SeqCst)
                .is_ok()
    }

    /// Give the offer slot back.
    pub fn finish_offer(&self, slot: SlotGuard) {
        self.unclaim(OFFER_OWNERS, slot.index, slot.generation);
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

    /// Is a client of the peer host in the middle of a connect to `local` (an offer reserved,
    /// not yet posted)?
    pub fn connecting_to(&self, local: &Endpoint) -> bool {
        (0..OFFER_SLOTS).any(|i| {
            let base = OFFERS + i * OFFER_SIZE;
            // SYNC POINT (offer publish): Acquire pairs with the Release store in `write_offer`.
            if offer_state(u64_at(&self.local, base).load(Acquire)) != OFFER_CONNECTING {
                return false;
            }
            let mut rec = [0u8; OFFER_SIZE - 8];
            self.local.read(base + 8, &mut rec).is_ok()
                && Offer::decode_server(&rec).is_some_and(|s| {
                    s.port == local.port
                        && (s.is_unspecified() || local.is_unspecified() || s.ip == local.ip)
                })
        })
    }

    /// Find and take the posted offer for the connection just accepted. An offer whose record
    /// does not decode matches no connection and is left as it is (its client withdraws it when
    /// its wait for an answer ends); the record is read again after the take, and that copy is
    /// the one returned (should it fail to decode, the caller gives the connection up as a bad
    /// peer, unanswered: the client's wait for an answer ends it). The take compares the
    /// generation with the state: an offer withdrawn and a new one posted in its slot after we
    /// read the record (a new claim, a new generation) is not taken on the old one's strength,
    /// and the generation returned, which the answer carries, is the taken offer's.
    pub fn take_offer(
        &self,
        peer: &Endpoint,
        local: &Endpoint,
    ) -> Option<(usize, u32, Result<Offer, ProtoError>)> {
        self.take_offer_of(peer, local, false)
    }

    /// [`RendezvousArea::take_offer`] for a *late* offer: one a client posted for a connection
    /// that exists already (made while the link was down; PROTOCOL.md §6).
    pub fn take_late_offer(
        &self,
        peer: &Endpoint,
        local: &Endpoint,
    ) -> Option<(usize, u32, Result<Offer, ProtoError>)> {
        self.take_offer_of(peer, local, true)
    }

    fn take_offer_of(
        &self,
        peer: &Endpoint,
        local: &Endpoint,
        late: bool,
    ) -> Option<(usize, u32, Result<Offer, ProtoError>)> {
        for i in 0..OFFER_SLOTS {
            let base = OFFERS + i * OFFER_SIZE;
            let word = u64_at(&self.local, base);
            // SYNC POINT (offer publish): Acquire pairs with the Release store in
            // `write_offer` or `publish_offer`.
            let seen = word.load(Acquire);
            if offer_state(seen) != OFFER_POSTED {
                continue;
            }
            let generation = (seen >> 32) as u32;
            let mut rec = [0u8; OFFER_SIZE - 8];
            if self.local.read(base + 8, &mut rec).is_err() {
                continue;
            }
            let offer = Offer::decode(&rec);
            let matches = match &offer {
                Ok(o) => o.matches(peer, local) && o.late.is_some() == late,
                Err(_) => false,
            };
            if !matches {
                continue;
            }
            // SYNC POINT (offer race): this CAS and the client's in `withdraw` decide who owns
            // the offer; exactly one succeeds.
            if word
                .compare_exchange(seen, offer_word(OFFER_TAKEN, generation), SeqCst, SeqCst)
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
        // SYNC POINT (answer rewrite): the slot reads as unanswered before any byte of the
        // record changes (a client reading it meanwhile then drops what it read).
        fence(Release);
        self.peer
            .write(base + 8, &answer.encode())
            .expect("answer record in range");
        u32_at(&self.peer, base + 4).store(generation, Relaxed);
        // SYNC POINT (answer): Release pairs with the client's Acquire in `answer`.
        u32_at(&self.peer, base).store(ACTIVE, Release);
    }
}
