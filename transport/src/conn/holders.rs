//! Teardown and hand-over: shutdown and close, the holders of a connection across fork
//! (`add_holder`, `adopt`, `release_holder`), and rebuilding it after exec (`reattach`). Called
//! by the shim's close, shutdown, fork and exec handling; it never returns the leases while
//! another process holds the connection or the peer can still write into them.
//!
//! The holder words (count and pids) are in our endpoint block, which the peer can write too.
//! They are only a directory for our own processes: whether anyone else holds the connection is
//! decided by what this process knows in its own memory ([`Family`]: it forked with the
//! connection, was forked with it, or picked it up after exec) and, if so, by possession: an
//! heir named in the block must be a live process holding the connection's TCP socket. A forged
//! count or pid neither keeps a connection open nor makes a close wait.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ntbdrv::{Lease, VectorLease, WindowLease};

use super::block::{
    atomic_u32_at, atomic_u64_at, holder_pid, peer_finished, FLAG_FIN, FLAG_RST, INFO_BASE,
    INFO_MAGIC, L_HOLDERS, L_MY_BELL_SLOT, L_MY_BIT, L_PEER_BIT, L_PEER_LEN, L_PEER_MW, L_PEER_OFF,
    L_SOCK_INODE, L_STATE, MAX_HOLDERS, RX_TAIL, ST_CLOSED, ST_SHUT_RD, ST_SHUT_WR,
};
use super::cursors::Cursors;
use super::{Connection, Info, Role, Segments, ServicePair, Tenancy};
use crate::proto::{Endpoint, Ring, RingLoc, ENDPOINT_HDR};
use crate::{sys, ProcessState};

/// How long a process that forked with a connection waits, at its close, for the child's pid to
/// appear in the block (the child records it right after the fork).
const HEIR_WAIT: Duration = Duration::from_millis(50);

/// Within this long after this process announced a fork of the connection, a close with no
/// heir found waits [`HEIR_WAIT`] for one; later, the children have long recorded themselves.
const FORK_FRESH: Duration = Duration::from_secs(1);

/// A connection's holders as this process knows them, in its own memory (copied into a forked
/// child with the rest of it).
pub(super) struct Family {
    /// Other processes may hold the connection: this one forked with it (or is a child that
    /// was forked with it), or picked it up after exec. False for the connection's only
    /// process, whose close then never looks at the holder words.
    shared: AtomicBool,
    /// When this process last announced a fork of the connection ([`Family::since`]'s clock, in
    /// milliseconds, plus one; 0: never).
    forked_ms: AtomicU64,
    /// The TCP socket's inode, read from our own descriptor: what an heir must hold.
    sock_inode: u64,
}

impl Family {
    pub(super) fn new(sock_inode: u64) -> Family {
        Family {
            shared: AtomicBool::new(false),
            forked_ms: AtomicU64::new(0),
            sock_inode,
        }
    }

    /// Milliseconds on this process's clock for [`Family::forked_ms`].
    fn since() -> u64 {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// Did this process announce a fork of the connection less than [`FORK_FRESH`] ago?
    fn fork_is_fresh(&self) -> bool {
        let at = self.forked_ms.load(Relaxed);
        at != 0 && Family::since().saturating_sub(at) < FORK_FRESH.as_millis() as u64
    }
}

/// Does process `pid` hold a descriptor of the socket with inode `inode`? None if its
/// descriptors cannot be read (another user's process).
fn holds_socket(pid: u32, inode: u64) -> Option<bool> {
    let want = format!("socket:[{inode}]");
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str())),
    )
}

impl Connection {
    #[inline]
    pub(super) fn shared_state(&self) -> u32 {
        atomic_u32_at(&self.own_block, L_STATE).load(Acquire)
    }

    /// shutdown(2): SHUT_WR sends FIN through the ring; SHUT_RD stops reading.
    pub fn shutdown(&self, read: bool, write: bool) {
        if write {
            // Another holder may have sent last (a forked child): its view of the switch.
            self.claim_tx_view();
            let _g = self.tx_lock.lock();
            if self.fo.tx_off() {
                // On TCP: a SHUT record, then the kernel's FIN, end the stream after the last
                // record (the SHUT tells the peer the FIN is a half-close, not our death).
                atomic_u32_at(&self.own_block, L_STATE).fetch_or(ST_SHUT_WR, SeqCst);
                self.send_shut_record();
                sys::shutdown_write(self.tcp_fd());
            } else if atomic_u32_at(&self.own_block, L_STATE).fetch_or(ST_SHUT_WR, SeqCst)
                & ST_SHUT_WR
                == 0
            {
                super::ringsync::send_fin(&self.peer_block);
                self.ring_peer();
            }
        }
        if read {
            atomic_u32_at(&self.own_block, L_STATE).fetch_or(ST_SHUT_RD, SeqCst);
        }
    }

    /// The last reference is going away: tell the peer (FIN, or RST if we drop unread data, as
    /// TCP does) and return our resources once the peer can no longer write into them.
    pub(crate) fn close(&self) {
        // The last holder: the sending direction is where whoever sent last left it.
        self.claim_tx_view();
        self.drain_tcp_at_close();
        let unread = atomic_u64_at(&self.own_block, RX_TAIL).load(Acquire) > self.rx_pos().head;
        let flag = if self.fo.tx_off() {
            // Our stream is on the TCP socket (`failover`): the kernel's FIN or RST ends it
            // after our last record; a FIN in the ring would end it before them.
            0
        } else if unread {
            FLAG_RST
        } else {
            FLAG_FIN
        };
        atomic_u32_at(&self.own_block, L_STATE)
            .fetch_or(ST_SHUT_WR | ST_SHUT_RD | ST_CLOSED, SeqCst);
        super::ringsync::release(&self.peer_block, flag);
        self.ring_peer();
        atomic_u32_at(&self.own_block, INFO_BASE).store(0, Release);
        match &self.tenancy {
            Tenancy::Device { lease, bell, .. } => {
                let peer_done = peer_finished(&self.own_block);
                self.shared.retire_connected(
                    self.own_block.clone(),
                    *lease,
                    *bell,
                    peer_done,
                    self.peer_block.clone(),
                );
            }
            // Fresh segments per connection: nobody else can be given this memory, so there
            // is nothing to quarantine (the service counts the window space back once no
            // process holds the connection: see `release_holder`).
            Tenancy::Service { .. } => {}
        }
    }

    /// A fork is about to happen: the child will hold this connection too. Called before the
    /// fork (so a parent that closes its copy at once does not close the connection under the
    /// child), then [`Connection::adopt`] in the child records the child's pid.
    pub fn add_holder(&self) {
        self.family.shared.store(true, SeqCst);
        self.family.forked_ms.store(Family::since(), SeqCst);
        atomic_u32_at(&self.own_block, L_HOLDERS).fetch_add(1, SeqCst);
    }

    /// The fork announced by [`Connection::add_holder`] failed: there is no child.
    pub fn cancel_holder(&self) {
        atomic_u32_at(&self.own_block, L_HOLDERS).fetch_sub(1, SeqCst);
    }

    /// In a child after fork: record this process as a holder.
    pub fn adopt(&self, pid: u32) {
        self.tx_lock.forked();
        self.fo.forked(pid);
        // The fork was announced by the parent: `shared` is set in this copy already. The
        // parent's fork is not this child's: it waits for no heir of its own.
        self.family.shared.store(true, SeqCst);
        self.family.forked_ms.store(0, SeqCst);
        for i in 0..MAX_HOLDERS {
            if atomic_u32_at(&self.own_block, holder_pid(i))
                .compare_exchange(0, pid, SeqCst, SeqCst)
                .is_ok()
            {
                break;
            }
        }
    }

    /// This process lets go of the connection. Returns true if it was the last holder (the
    /// caller then closes it); otherwise the leases move to a remaining live holder, so the
    /// connection outlives this process.
    pub(crate) fn release_holder(&self) -> bool {
        if let (Tenancy::Service { conn, .. }, Some(link)) = (&self.tenancy, &self.shared.service) {
            link.close(*conn, self.role == Role::Server);
        }
        let me = std::process::id();
        for i in 0..MAX_HOLDERS {
            let _ = atomic_u32_at(&self.own_block, holder_pid(i))
                .compare_exchange(me, 0, SeqCst, SeqCst);
        }
        // The count is kept for `pcisock stats` and older builds; it decides nothing (the
        // peer can write it).
        let _ = atomic_u32_at(&self.own_block, L_HOLDERS)
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
        if !self.family.shared.load(SeqCst) {
            return true;
        }
        // Another process of ours may hold it: hand it our leases. A child forked a moment ago
        // records its pid right after the fork; give it a moment to appear.
        let t0 = Instant::now();
        let wait = self.family.fork_is_fresh();
        loop {
            if let Some(pid) = self.heir(me) {
                if let Tenancy::Device { dev, lease, bell } = &self.tenancy {
                    let _ = dev.transfer(Lease::Window(*lease), pid);
                    let _ = dev.transfer(Lease::Vector(*bell), pid);
                }
                return false;
            }
            if !wait || t0.elapsed() > HEIR_WAIT {
                // No process of ours holds the connection's socket: we were the last.
                return true;
            }
            std::thread::yield_now();
        }
    }

    /// A process named in the block's holder table, other than `me`, that lives and holds the
    /// connection's TCP socket. A process whose descriptors we may not read (another user's)
    /// counts only if it is our parent: a forked child that dropped privileges closing before
    /// the server that forked it.
    fn heir(&self, me: u32) -> Option<u32> {
        (0..MAX_HOLDERS)
            .map(|i| atomic_u32_at(&self.own_block, holder_pid(i)).load(SeqCst))
            .filter(|&p| p != 0 && p != me && ntbdrv::process::start_time(p).is_some())
            .find(|&p| {
                self.family.sock_inode != 0
                    && holds_socket(p, self.family.sock_inode)
                        .unwrap_or_else(|| p == std::os::unix::process::parent_id())
            })
    }

    /// After exec: rebuild the connection this process held on kernel socket `tcp_fd` before
    /// it replaced its image, from the endpoint block in `lease` (found by the socket's inode).
    pub(crate) fn reattach(
        shared: Arc<ProcessState>,
        lease: WindowLease,
        tcp_fd: RawFd,
    ) -> Option<Connection> {
        let dev = shared.dev.clone()?;
        let own_block = dev
            .inbound(lease.mw)
            .ok()?
            .slice(lease.offset as usize, lease.len as usize)
            .ok()?;
        if atomic_u32_at(&own_block, INFO_BASE).load(Acquire) != INFO_MAGIC {
            return None;
        }
        let inode = sys::inode(tcp_fd)?;
        if inode == 0 || atomic_u64_at(&own_block, L_SOCK_INODE).load(Acquire) != inode {
            return None;
        }
        if atomic_u32_at(&own_block, L_STATE).load(Acquire) & ST_CLOSED != 0 {
            return None;
        }
        let me = std::process::id();
        if !(0..MAX_HOLDERS).any(|i| atomic_u32_at(&own_block, holder_pid(i)).load(SeqCst) == me) {
            return None;
        }
        let their_loc = RingLoc {
            mw: atomic_u32_at(&own_block, L_PEER_MW).load(Relaxed),
            db_bit: atomic_u32_at(&own_block, L_PEER_BIT).load(Relaxed),
            offset: atomic_u64_at(&own_block, L_PEER_OFF).load(Relaxed),
            len: atomic_u64_at(&own_block, L_PEER_LEN).load(Relaxed),
        };
        let mw_size = dev.mw_align(0).ok()?.size_max;
        let tx_ring = their_loc
            .check(dev.mw_count(), mw_size, dev.vector_count())
            .ok()?;
        let rx_ring = Ring::new(lease.len.checked_sub(ENDPOINT_HDR)?)?;
        let peer_block = dev
            .outbound(their_loc.mw)
            .ok()?
            .slice(their_loc.offset as usize, their_loc.len as usize)
            .ok()?;
        let bell = VectorLease {
            vector: atomic_u32_at(&own_block, L_MY_BIT).load(Relaxed),
            slot: atomic_u32_at(&own_block, L_MY_BELL_SLOT).load(Relaxed),
        };
        let vector = dev.vector_fd(bell.vector).ok()?;
        let mut ib = [0u8; 48];
        own_block.read(INFO_BASE + 8, &mut ib).ok()?;
        let info = Info::decode(&ib);
        let tenancy = Tenancy::Device { dev, lease, bell };
        let cur = Box::new(Cursors::from_block(&own_block));
        Some(Connection::exec_heir(Connection::assemble(
            shared,
            tenancy,
            own_block,
            Arc::new(vector),
            peer_block,
            their_loc,
            rx_ring,
            tx_ring,
            tcp_fd,
            info.role,
            info.local,
            info.peer,
            cur,
        )))
    }

    /// A connection picked up after exec: the image before it may have shared it with forked
    /// children, which this one cannot know.
    fn exec_heir(self) -> Connection {
        self.family.shared.store(true, SeqCst);
        self
    }

    /// After exec (or in a process that proved it holds the socket): rebuild the connection
    /// the service paired, from the segments it handed over again, if it is still open.
    pub(crate) fn reattach_service(
        shared: Arc<ProcessState>,
        p: ServicePair,
        tcp_fd: RawFd,
    ) -> Option<Connection> {
        let seg = Segments::map(&p)?;
        if atomic_u32_at(&seg.own_block, L_STATE).load(Acquire) & ST_CLOSED != 0 {
            return None;
        }
        if atomic_u32_at(&seg.own_block, INFO_BASE).load(Acquire) != INFO_MAGIC {
            // Paired after the image before exec stopped waiting for it: this end was never
            // used, so it starts fresh, its identity read from the socket.
            let view = fabric::sys::tcp_view(tcp_fd).ok()??;
            let (local, peer) = (Endpoint::from(view.local?), Endpoint::from(view.peer?));
            let role = if p.server { Role::Server } else { Role::Client };
            return Some(Connection::service_fresh(
                shared, p, seg, tcp_fd, role, local, peer,
            ));
        }
        // This process used the connection before (its image before exec): go on from where
        // the block's hints say it was.
        let mut ib = [0u8; 48];
        seg.own_block.read(INFO_BASE + 8, &mut ib).ok()?;
        let info = Info::decode(&ib);
        let cur = Box::new(Cursors::from_block(&seg.own_block));
        Some(Connection::exec_heir(Connection::from_segments(
            shared, p, seg, tcp_fd, info, cur,
        )))
    }
}
