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
//!
//! A forked child is named in the block by its parent as soon as `fork` returns there
//! ([`Connection::add_child`]), before the parent's program can close its copy: the parent never
//! takes a child that has not run yet for gone, however late the scheduler runs it. Each holder
//! clears its own pid before it looks for another, so of two holders closing at once at least
//! one sees the other gone; if both do, the first to mark the block closed closes it.

use std::os::fd::RawFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntbdrv::{Lease, VectorLease, WindowLease};

use super::block::{
    atomic_u32_at, atomic_u64_at, endpoint_block, holder_pid, peer_finished, FLAG_FIN, FLAG_RST,
    INFO_BASE, INFO_MAGIC, L_HOLDERS, L_MY_BELL_SLOT, L_MY_BIT, L_PEER_BIT, L_PEER_LEN, L_PEER_MW,
    L_PEER_OFF, L_SOCK_INODE, L_STATE, MAX_HOLDERS, RX_TAIL, ST_CLOSED, ST_SHUT_RD, ST_SHUT_WR,
};
use super::cursors::Cursors;
use super::{Connection, Info, Role, Segments, ServicePair, Tenancy};
use crate::proto::{Endpoint, Ring, RingLoc, BLOCK_OVERHEAD};
use crate::{sys, ProcessState};

/// How long a child that gives its holder back at the fork (`forsake`) waits for its parent to
/// have named it in the block, so that it can take its name out again.
const NAMED_WAIT: Duration = Duration::from_secs(2);

/// A connection's holders as this process knows them, in its own memory (copied into a forked
/// child with the rest of it).
pub(super) struct Family {
    /// Other processes may hold the connection: this one forked with it (or is a child that
    /// was forked with it), or picked it up after exec. False for the connection's only
    /// process, whose close then never looks at the holder words.
    shared: AtomicBool,
    /// The TCP socket's inode, read from our own descriptor: what an heir must hold.
    sock_inode: u64,
}

impl Family {
    pub(super) fn new(sock_inode: u64) -> Family {
        Family {
            shared: AtomicBool::new(false),
            sock_inode,
        }
    }

    /// The TCP socket's inode (0 if it could not be read).
    pub(super) fn sock_inode(&self) -> u64 {
        self.sock_inode
    }

    /// May other processes hold (and send on) the connection?
    pub(super) fn is_shared(&self) -> bool {
        self.shared.load(SeqCst)
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
                    self.own_block.region().clone(),
                    *lease,
                    *bell,
                    peer_done,
                    self.peer_block.region().clone(),
                );
            }
            // A segment goes to no other connection unless both ends let go of it cleanly
            // (`let_service_go`, after this), and then only to the same two processes': nothing
            // to quarantine (the service counts the window space back once no process holds
            // the connection). Across the bridge the two services give the blocks back once
            // both ends are closed.
            Tenancy::Service { .. } | Tenancy::Bridged { .. } => {}
        }
    }

    /// This process made its last write into the connection's memory (`release_holder`, and
    /// `close` if it was the last holder): tell the service it let go of its end. `clean` when
    /// it was the last holder and no other process could hold it (it never forked with it nor
    /// picked it up after exec): then the service may zero the segment and give it to the next
    /// connection with the same peer process, and this process keeps its mapping for that.
    pub(crate) fn let_service_go(&self, last: bool) {
        if let (Tenancy::Service { segment: s, .. }, Some(link)) =
            (&self.tenancy, &self.shared.service)
        {
            let clean = last && !self.family.is_shared();
            let server = self.role == Role::Server;
            link.let_go(s.conn, server, clean, (s.identity, &s.whole));
        }
    }

    /// A fork is about to happen: the child will hold this connection too. Called before the
    /// fork; then [`Connection::add_child`] in the parent names the child once `fork` returns,
    /// and [`Connection::adopt`] in the child does the same from its side.
    pub fn add_holder(&self) {
        self.family.shared.store(true, SeqCst);
        atomic_u32_at(&self.own_block, L_HOLDERS).fetch_add(1, SeqCst);
    }

    /// The fork announced by [`Connection::add_holder`] failed: there is no child.
    pub fn cancel_holder(&self) {
        atomic_u32_at(&self.own_block, L_HOLDERS).fetch_sub(1, SeqCst);
    }

    /// In the parent, as soon as the fork announced by [`Connection::add_holder`] returned:
    /// name child `pid` in the block, so that a close of the parent's copy right after the fork
    /// hands the connection to the child even if the child has not run yet.
    pub fn add_child(&self, pid: u32) {
        self.name_holder(pid);
    }

    /// Name `pid` in the block's holder table unless it is there already (the parent and the
    /// child both name the child, in either order).
    fn name_holder(&self, pid: u32) {
        let slot = |i| atomic_u32_at(&self.own_block, holder_pid(i));
        if (0..MAX_HOLDERS).any(|i| slot(i).load(SeqCst) == pid) {
            return;
        }
        for i in 0..MAX_HOLDERS {
            if slot(i).compare_exchange(0, pid, SeqCst, SeqCst).is_ok() {
                break;
            }
        }
    }

    /// In a child after fork: record this process as a holder.
    pub fn adopt(&self, pid: u32) {
        self.tx_lock.forked();
        self.rx_lock.forked();
        self.fo.forked(pid);
        // The fork was announced by the parent: `shared` is set in this copy already.
        self.family.shared.store(true, SeqCst);
        self.name_holder(pid);
    }

    /// In a child after fork that cannot use this connection (its entry was half-changed by a
    /// thread of the parent, see the shim's fork handling): give back the holder the parent
    /// announced for it. The parent names the child when its `fork` returns, which may be
    /// after this runs: wait (a bounded time, and only while the parent lives) for that name to
    /// take it out, so that the parent never hands the connection to a child that will not
    /// close it. Async-signal-safe: atomics, `getppid` and the monotonic clock only.
    pub fn forsake(&self, pid: u32, parent: u32) {
        atomic_u32_at(&self.own_block, L_HOLDERS).fetch_sub(1, SeqCst);
        let t0 = Instant::now();
        loop {
            let mut found = false;
            for i in 0..MAX_HOLDERS {
                found |= atomic_u32_at(&self.own_block, holder_pid(i))
                    .compare_exchange(pid, 0, SeqCst, SeqCst)
                    .is_ok();
            }
            if found || std::os::unix::process::parent_id() != parent || t0.elapsed() > NAMED_WAIT {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// This process lets go of the connection. Returns true if it was the last holder (the
    /// caller then closes it); otherwise the leases move to a remaining live holder, so the
    /// connection outlives this process.
    pub(crate) fn release_holder(&self) -> bool {
        // (Over one service, the `Close` goes after the close's last writes: `let_service_go`.)
        // Across the bridge the service knows only the process that made the end (no `Hold`
        // for it yet): it is told once no process of ours holds the end any more, so that it
        // does not give the memory back under a forked child that still uses it.
        let last = |c: &Connection| {
            if let (Tenancy::Bridged { conn, .. }, Some(link)) = (&c.tenancy, &c.shared.service) {
                link.close(*conn, c.role == Role::Server);
            }
            true
        };
        let me = ntbdrv::process::pid();
        for i in 0..MAX_HOLDERS {
            let _ = atomic_u32_at(&self.own_block, holder_pid(i))
                .compare_exchange(me, 0, SeqCst, SeqCst);
        }
        // The count is kept for `pcisock stats` and older builds; it decides nothing (the
        // peer can write it).
        let _ = atomic_u32_at(&self.own_block, L_HOLDERS)
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
        if !self.family.shared.load(SeqCst) {
            return last(self);
        }
        // Another process of ours may hold it: hand it our leases. Our pid is out of the table
        // (above), so another holder closing at the same time sees us gone, or we see it gone.
        if let Some(pid) = self.heir(me) {
            if let Tenancy::Device { dev, lease, bell } = &self.tenancy {
                let _ = dev.transfer(Lease::Window(*lease), pid);
                let _ = dev.transfer(Lease::Vector(*bell), pid);
            }
            return false;
        }
        // No process of ours holds the connection's socket: we were the last, unless another
        // holder that closed at the same moment found the same and marked the block first.
        atomic_u32_at(&self.own_block, L_STATE).fetch_or(ST_CLOSED, SeqCst) & ST_CLOSED == 0
            && last(self)
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
        let me = ntbdrv::process::pid();
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
        let rx_ring = Ring::new(lease.len.checked_sub(BLOCK_OVERHEAD)?)?;
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
        let own_block = endpoint_block(own_block)?;
        let peer_block = endpoint_block(peer_block)?;
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
