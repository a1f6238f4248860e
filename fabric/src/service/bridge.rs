//! Two hosts (docs/HOST-SERVICE.md, phase 3): this host's service meets the other host's through
//! the bridge. Each service opens its side of the device; each reserves a mailbox in its own
//! inbound window, which the peer service writes through its outbound window (write remote,
//! read local, as the rings do), and rings the peer service's interrupt vector after a write.
//! Its messages: the listeners each host has (so a client whose destination has none on either
//! host is told `NoListener` at once), a server host's question about an accepted connection
//! (`Ask`, by the 4-tuple the server's socket shows, mirrored), the client host's offer with the
//! client end's block (`Offer`), the server host's pairing with the server end's block
//! (`Paired`), and an end that closed (`Closed`).
//!
//! Each service allocates the window space of the ring its own process receives on, in its own
//! inbound window, and releases it when both ends are closed. The processes map the device
//! themselves (`PCISOCK_DEVICE`, `PCISOCK_EMU_*`): without a kernel helper a process can only
//! map the whole window, so the service pairs across the bridge only processes it trusts with
//! every connection of the host (root, or members of group `pcisock`); others are declined
//! (`Untrusted`) and stay on TCP.
//!
//! It never trusts a word the peer writes: a slice must lie inside the window and make the
//! ring, a message of an unknown kind is dropped (counted), one for an unknown connection is
//! answered as closed, and the mailbox's counters are bounded by its size.

use std::collections::HashSet;
use std::sync::atomic::Ordering::{Acquire, Release};

use super::dispatch::{counters_of, END_BYTES};
use super::*;
use crate::wire::Slice;

mod mailbox;
use mailbox::*;
pub(super) use mailbox::{open, trusted, Bridge, LOOK_MS, UNTRUSTED};
pub use mailbox::{BLOCK_INFO, BLOCK_INFO_MAGIC, MAILBOX_BYTES, MAILBOX_OFFSET};

impl Service {
    /// One look at the bridge: the peer's messages, our queue, the heartbeat, our listeners
    /// as the peer should know them, accepts waiting too long.
    pub(super) fn bridge_turn(&mut self) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        ntbdrv::drain_vector(&b.line);
        if b.beat_at.elapsed() >= BEAT_EVERY {
            b.beat += 1;
            b.beat_at = Instant::now();
            word(&b.outbox, MB_BEAT).store(b.beat, Release);
            word(&b.outbox, MB_VECTOR).store(b.vector.vector as u64, Release);
            word(&b.outbox, MB_SESSION).store(b.session, Release);
        }
        let session = word(&b.inbox, MB_SESSION).load(Acquire);
        if session != b.peer_session {
            // A new peer service: it writes its messages from 0, knows none of our listeners,
            // and its connections' ends are not its to tell us about any more.
            b.peer_session = session;
            b.head = 0;
            b.remote_listeners.clear();
            b.told.clear();
            for c in b.conns.values_mut() {
                c.peer_closed = true;
            }
            word(&b.outbox, MB_ACK).store(0, Release);
        }
        let beat = word(&b.inbox, MB_BEAT).load(Acquire);
        if beat != b.peer_beat.0 {
            b.peer_beat = (beat, Instant::now());
        }
        let mut got = Vec::new();
        // SYNC POINT (service mailbox): the slots below the tail are complete.
        let tail = word(&b.inbox, MB_TAIL).load(Acquire);
        while b.head < tail && tail - b.head <= SLOTS && got.len() < 4096 {
            let at = MB_SLOTS + (b.head % SLOTS) as usize * MSG;
            let mut bytes = [0u8; MSG];
            if b.inbox.read(at, &mut bytes).is_err() {
                break;
            }
            let mut m = [0u64; MSG / 8];
            for (i, w) in m.iter_mut().enumerate() {
                let mut x = [0u8; 8];
                x.copy_from_slice(&bytes[8 * i..8 * i + 8]);
                *w = u64::from_le_bytes(x);
            }
            got.push(m);
            b.head += 1;
        }
        if tail.wrapping_sub(b.head) > SLOTS && tail > b.head {
            // Nonsense from the peer: skip to what it says it wrote.
            b.head = tail;
        }
        // SYNC POINT (service mailbox ack): the slots below `head` are copied out.
        word(&b.outbox, MB_ACK).store(b.head, Release);
        b.flush();
        for m in got {
            self.on_message(m);
        }
        self.tell_listeners();
        self.expire_asks();
        self.look_at_orphans();
        self.release_closed();
    }

    fn on_message(&mut self, m: [u64; MSG / 8]) {
        match m[0] {
            M_LISTEN => {
                let l = addr_of(&m, 1);
                if let Some(b) = self.bridge.as_mut() {
                    if m[4] == 1 {
                        b.remote_listeners.insert(l);
                    } else {
                        b.remote_listeners.remove(&l);
                    }
                }
            }
            M_ASK => self.on_ask(m[1], addr_of(&m, 2), addr_of(&m, 5), m[8], m[9] as u32),
            M_OFFER => self.on_offer(m[1], m[2], m[3], slice_of(&m, 4), m[7] as u32),
            M_PAIRED => self.on_paired(m[1], m[2], m[3], slice_of(&m, 4), m[7] as u32),
            M_CLOSED => {
                if let Some(c) = self.bridge.as_mut().and_then(|b| b.conns.get_mut(&m[1])) {
                    c.peer_closed = true;
                }
            }
            _ => {
                if let Some(b) = self.bridge.as_mut() {
                    b.dropped += 1;
                }
            }
        }
    }

    /// Tell the peer which addresses this host listens on (what changed since last told).
    fn tell_listeners(&mut self) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        if !b.peer_up() {
            return;
        }
        let now: HashSet<(Addr, u16)> = self.listeners.values().map(|l| (l.addr, l.port)).collect();
        let mut msgs = Vec::new();
        for &l in now.difference(&b.told) {
            msgs.push((l, 1));
        }
        for &l in b.told.difference(&now) {
            msgs.push((l, 0));
        }
        for (l, on) in msgs {
            let mut m = [0u64; MSG / 8];
            m[0] = M_LISTEN;
            put_addr(&mut m, 1, l);
            m[4] = on;
            b.post(m);
        }
        b.told = now;
    }

    /// Server side: a process of this host accepted `local` ← `client` and no local client
    /// offered it: ask the peer host's service for its offer. `true`: asked (the answer comes
    /// with the peer's `Offer`); `false`: no peer to ask.
    pub(super) fn ask_peer(
        &mut self,
        server: u64,
        request: u64,
        nowait: bool,
        view: &TcpView,
        ring: u64,
    ) -> bool {
        let (Some(client), Some(local)) = (view.peer, view.local) else {
            return false;
        };
        let Some(cred) = self.clients.get(&server).map(|c| c.cred) else {
            return false;
        };
        let id = self.id();
        let Some(b) = self.bridge.as_mut().filter(|b| b.peer_up()) else {
            return false;
        };
        let ok = trusted(cred.pid, cred.uid, cred.gid);
        let mut m = [0u64; MSG / 8];
        m[0] = M_ASK;
        m[1] = id;
        put_addr(&mut m, 2, client);
        put_addr(&mut m, 5, local);
        m[8] = ring;
        m[9] = if ok { 0 } else { UNTRUSTED as u64 };
        b.post(m);
        if !ok {
            // The client's offer is declined with the same reason (the peer service tells it).
            self.counters.declined += 1;
            self.reply(server, request, Reply::Declined { reason: UNTRUSTED }, &[]);
            return true;
        }
        b.asks.insert(
            id,
            Ask {
                server,
                request,
                nowait,
                pid: cred.pid,
                ring,
                client,
                local,
                posted: Instant::now(),
                socket: (view.inode, view.netns),
            },
        );
        true
    }

    /// Client side: the peer host's server accepted `client` → `server` (reason 0) or declined
    /// it: find the offer made on that connection, lease its client's block, send it.
    fn on_ask(&mut self, ask: u64, client: (Addr, u16), server: (Addr, u16), ring: u64, why: u32) {
        let find = |s: &Service| {
            // Only offers toward that port are looked at (each look is two system calls).
            let toward = s.offers.iter().filter(|(_, o)| o.dest.1 == server.1);
            toward.into_iter().find_map(|(&id, o)| {
                let names = sys::tcp_names(o.socket.as_raw_fd()).ok()?;
                (names == (Some(client), Some(server))).then_some(id)
            })
        };
        let mut found = find(self);
        if found.is_none() {
            self.catch_up();
            found = find(self);
        }
        let answer = |s: &mut Service, reason: u32, conn: u64, ring: u64, slice: Slice| {
            s.post_pairing(M_OFFER, ask, conn, ring, slice, reason)
        };
        let Some(conn) = found else {
            return answer(self, NO_OFFER, 0, 0, Slice::default());
        };
        let Some(offer) = self.offers.remove(&conn) else {
            return;
        };
        let decline = |s: &mut Service, reason: u32| {
            s.counters.declined += 1;
            s.reply(offer.owner, offer.request, Reply::Declined { reason }, &[]);
            sys::ring(offer.line.fd.as_raw_fd());
        };
        if why != 0 {
            return decline(self, why);
        }
        let ring = ring_of(ring, offer.ring, self.opts.ring_bytes);
        let Some(block) = self.lease_block(ring) else {
            answer(self, NO_WINDOW_SPACE, 0, 0, Slice::default());
            return decline(self, NO_WINDOW_SPACE);
        };
        answer(self, 0, conn, ring, block.slice());
        if let Some(b) = self.bridge.as_mut() {
            b.outs.insert(
                conn,
                Out {
                    client: offer.owner,
                    request: offer.request,
                    pid: offer.pid,
                    line: offer.line,
                    block,
                    addrs: (client, server),
                    socket: (offer.inode, offer.netns),
                },
            );
        }
    }

    /// Tell the peer service how a pairing went (`kind`: `M_OFFER`, the client side's answer
    /// to an `Ask`, or `M_PAIRED`, the server side's word back): `id` names the question or the
    /// peer's connection, then our connection, the ring size, our end's slice and the reason
    /// (0: paired).
    fn post_pairing(
        &mut self,
        kind: u64,
        id: u64,
        conn: u64,
        ring: u64,
        slice: Slice,
        reason: u32,
    ) {
        let mut m = [0u64; MSG / 8];
        m[0] = kind;
        m[1] = id;
        m[2] = conn;
        m[3] = ring;
        put_slice(&mut m, 4, slice);
        m[7] = u64::from(reason);
        if let Some(b) = self.bridge.as_mut() {
            b.post(m);
        }
    }

    /// A block for one end with rings of `ring` bytes in our inbound window, counted in the
    /// window space, if the space and the window have room.
    fn lease_block(&mut self, ring: u64) -> Option<Block> {
        let room = self.window_used + BLOCK_OVERHEAD + ring <= self.opts.window_bytes;
        let block = self
            .bridge
            .as_mut()
            .filter(|_| room)
            .and_then(|b| b.lease(ring))?;
        self.window_used += block.lease.len;
        Some(block)
    }

    /// Server side: the peer's answer to our `Ask`: its client's block, or why not.
    fn on_offer(&mut self, ask: u64, peer_conn: u64, ring: u64, client: Slice, why: u32) {
        let Some(a) = self.bridge.as_mut().and_then(|b| b.asks.remove(&ask)) else {
            // The accept gave up (its process died, or it waited too long): the client's
            // service gives its block back and declines its client.
            if why == 0 && peer_conn != 0 {
                self.post_pairing(M_PAIRED, peer_conn, 0, 0, Slice::default(), NO_ANSWER);
            }
            return;
        };
        let decline = |s: &mut Service, reason: u32| {
            s.counters.declined += 1;
            s.reply(a.server, a.request, Reply::Declined { reason }, &[]);
            if a.nowait {
                s.ring_server(a.server);
            }
        };
        if why != 0 {
            return decline(self, why);
        }
        let ring = ring_of(ring, a.ring, self.opts.ring_bytes);
        let paired = |s: &mut Service, reason: u32, conn: u64, slice: Slice| {
            s.post_pairing(M_PAIRED, peer_conn, conn, ring, slice, reason)
        };
        let fits = self.bridge.as_ref().is_some_and(|b| b.fits(client, ring));
        if !fits {
            paired(self, BAD_PEER, 0, Slice::default());
            return decline(self, BAD_PEER);
        }
        let Some(block) = self.lease_block(ring) else {
            paired(self, NO_WINDOW_SPACE, 0, Slice::default());
            return decline(self, NO_WINDOW_SPACE);
        };
        let conn = self.id();
        let r = Reply::Bridged {
            conn,
            ring_bytes: ring,
            server: true,
            own: block.slice(),
            peer: client,
        };
        self.reply(a.server, a.request, r, &[]);
        if a.nowait {
            self.ring_server(a.server);
        }
        paired(self, 0, conn, block.slice());
        self.counters.paired += 1;
        self.bridged(
            conn,
            peer_conn,
            block,
            a.pid,
            1,
            (a.client, a.local),
            a.socket,
        );
    }

    /// Client side: the peer's server end is made (or declined): answer the client.
    fn on_paired(&mut self, conn: u64, peer_conn: u64, ring: u64, server: Slice, why: u32) {
        let Some(o) = self.bridge.as_mut().and_then(|b| b.outs.remove(&conn)) else {
            return self.closed_unknown(peer_conn, why);
        };
        let fits = self.bridge.as_ref().is_some_and(|b| b.fits(server, ring))
            && o.block.lease.len >= BLOCK_OVERHEAD + ring;
        let why = match (why, fits) {
            (0, false) => BAD_PEER,
            (w, _) => w,
        };
        if why != 0 {
            if let Some(b) = self.bridge.as_ref() {
                b.release(o.block);
            }
            self.window_used = self.window_used.saturating_sub(o.block.lease.len);
            if peer_conn != 0 {
                self.closed_unknown(peer_conn, 0);
            }
            self.counters.declined += 1;
            self.reply(o.client, o.request, Reply::Declined { reason: why }, &[]);
            sys::ring(o.line.fd.as_raw_fd());
            return;
        }
        let r = Reply::Bridged {
            conn,
            ring_bytes: ring,
            server: false,
            own: o.block.slice(),
            peer: server,
        };
        self.reply(o.client, o.request, r, &[]);
        sys::ring(o.line.fd.as_raw_fd());
        self.counters.paired += 1;
        self.bridged(conn, peer_conn, o.block, o.pid, 0, o.addrs, o.socket);
    }

    /// The peer named a connection of its own that has no end here (any more): tell it ours is
    /// closed, so it gives its block back.
    fn closed_unknown(&mut self, peer_conn: u64, why: u32) {
        if peer_conn == 0 || why != 0 {
            return;
        }
        let mut m = [0u64; MSG / 8];
        m[0] = M_CLOSED;
        m[1] = peer_conn;
        if let Some(b) = self.bridge.as_mut() {
            b.post(m);
        }
    }

    #[allow(clippy::too_many_arguments)] // one end's whole description, passed once
    fn bridged(
        &mut self,
        conn: u64,
        peer_id: u64,
        block: Block,
        pid: u32,
        end: usize,
        addrs: ((Addr, u16), (Addr, u16)),
        (inode, netns): (u64, u64),
    ) {
        let alive = self.watch(pid);
        if let Some(b) = self.bridge.as_mut() {
            b.conns.insert(
                conn,
                Bridged {
                    peer_id,
                    block,
                    holders: if alive { vec![pid] } else { vec![] },
                    peer_closed: false,
                    own_closed: false,
                    end,
                    addrs,
                    inode,
                    netns,
                    orphan: !alive,
                },
            );
        }
    }

    /// `Close` of a connection paired across the bridge (`false`: no such connection here).
    pub(super) fn bridged_close(&mut self, conn: u64, pid: u32, end: usize) -> bool {
        let Some(c) = self.bridge.as_mut().and_then(|b| b.conns.get_mut(&conn)) else {
            return false;
        };
        if c.end != end || !c.holders.contains(&pid) {
            return false;
        }
        c.holders.retain(|&h| h != pid);
        if c.holders.is_empty() {
            self.end_closed(conn);
        }
        true
    }

    /// A process died: the bridged ends it held are closed if it was their last holder.
    pub(super) fn bridged_holder_died(&mut self, pid: u32) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        b.asks.retain(|_, a| a.pid != pid);
        let outs: Vec<u64> = (b.outs.iter())
            .filter(|(_, o)| o.pid == pid)
            .map(|(&k, _)| k)
            .collect();
        for k in outs {
            // Its offer went out with a block: the peer's `Paired` finds none and is told so.
            if let Some(o) = b.outs.remove(&k) {
                b.release(o.block);
                self.window_used = self.window_used.saturating_sub(o.block.lease.len);
            }
        }
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        for c in b.conns.values_mut() {
            if c.holders.contains(&pid) {
                c.holders.retain(|&h| h != pid);
                // Closed once the kernel no longer has its socket (`look_at_orphans`): a
                // child the service never heard of may hold it still.
                c.orphan |= c.holders.is_empty();
            }
        }
    }

    /// Ends whose known holders are all gone: closed once the kernel has their socket no more
    /// (looked up every `ORPHAN_LOOK_MS`, by inode and 4-tuple, in their namespace).
    fn look_at_orphans(&mut self) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let ms = Duration::from_millis(ORPHAN_LOOK_MS as u64);
        if b.orphans_seen.elapsed() < ms {
            return;
        }
        b.orphans_seen = Instant::now();
        // (connection, namespace, inode, the end's local and peer address).
        type Look = (u64, u64, u64, (Addr, u16), (Addr, u16));
        let looks: Vec<Look> = (b.conns.iter())
            .filter(|(_, c)| c.orphan && !c.own_closed)
            .map(|(&k, c)| {
                let (client, server) = c.addrs;
                let (local, peer) = if c.end == 0 {
                    (client, server)
                } else {
                    (server, client)
                };
                (k, c.netns, c.inode, local, peer)
            })
            .collect();
        for (k, netns, inode, local, peer) in looks {
            let alive = self.ask_namespace(netns, true, |d| match d {
                Some(d) => d.connected(inode, local, peer),
                None => sockdiag::connected(inode, local, peer),
            });
            if alive != Some(true) {
                self.end_closed(k);
            }
        }
    }

    /// The namespaces of the bridged ends here (their sock_diag sockets are kept).
    pub(super) fn bridged_namespaces(&self) -> Vec<u64> {
        (self.bridge.as_ref()).map_or(Vec::new(), |b| b.conns.values().map(|c| c.netns).collect())
    }

    /// `List` entries of the connections with an end here: this end's holder and counters
    /// (copied out of its block in our own inbound window, for display: its process writes
    /// them); the other end's holder is on the other host (pid 0), and its block is not read
    /// (a read across the bridge, for counters the other host's `List` shows).
    pub(super) fn bridged_entries(&self) -> Vec<Entry> {
        let Some(b) = self.bridge.as_ref() else {
            return Vec::new();
        };
        (b.conns.iter())
            .map(|(&conn, c)| {
                let pid = c.holders.first().copied().unwrap_or(0);
                let mut ends: [EndCounters; 2] = Default::default();
                let mut words = [0u8; END_BYTES];
                let read = (b.dev.inbound(c.block.lease.mw))
                    .and_then(|w| w.read(c.block.lease.offset as usize, &mut words));
                if read.is_ok() {
                    ends[c.end & 1] = counters_of(&words);
                }
                Entry {
                    conn,
                    ring_bytes: c.block.lease.len.saturating_sub(BLOCK_OVERHEAD),
                    client_pid: if c.end == 0 { pid } else { 0 },
                    server_pid: if c.end == 1 { pid } else { 0 },
                    client: c.addrs.0,
                    server: c.addrs.1,
                    ends,
                }
            })
            .collect()
    }

    /// Does `pid` hold a bridged end here?
    pub(super) fn holds_bridged(&self, pid: u32) -> bool {
        (self.bridge.as_ref()).is_some_and(|b| b.conns.values().any(|c| c.holders.contains(&pid)))
    }

    /// This host's end of `conn` is closed: the peer service is told (its block comes back once
    /// its own end is closed too), and ours comes back once the peer's end is.
    fn end_closed(&mut self, conn: u64) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let Some(c) = b.conns.get_mut(&conn) else {
            return;
        };
        if c.own_closed {
            return;
        }
        c.own_closed = true;
        let mut m = [0u64; MSG / 8];
        m[0] = M_CLOSED;
        m[1] = c.peer_id;
        b.post(m);
    }

    /// Give back the blocks of connections whose two ends are closed.
    fn release_closed(&mut self) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let done: Vec<u64> = (b.conns.iter())
            .filter(|(_, c)| c.own_closed && c.peer_closed)
            .map(|(&k, _)| k)
            .collect();
        for k in done {
            if let Some(c) = b.conns.remove(&k) {
                b.release(c.block);
                self.window_used = self.window_used.saturating_sub(c.block.lease.len);
                self.counters.reclaimed += 1;
            }
        }
    }

    /// Accepts whose offer never came from the peer (it went away): declined, `NoAnswer`.
    fn expire_asks(&mut self) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let old: Vec<u64> = (b.asks.iter())
            .filter(|(_, a)| a.posted.elapsed() >= ASK_PATIENCE)
            .map(|(&k, _)| k)
            .collect();
        for k in old {
            if let Some(a) = self.bridge.as_mut().and_then(|b| b.asks.remove(&k)) {
                self.counters.declined += 1;
                self.reply(
                    a.server,
                    a.request,
                    Reply::Declined { reason: NO_ANSWER },
                    &[],
                );
                if a.nowait {
                    self.ring_server(a.server);
                }
            }
        }
    }
}
