//! Who holds what, and when it goes: the processes holding each connection's ends (proved by
//! handing over a socket with `Hold`), their deaths (pidfds), clients that hang up, and the
//! connections and listeners whose sockets the kernel no longer has (asked with
//! [`sockdiag`](crate::sockdiag)), whose window space comes back. Called by the service's loop
//! and the request side; it never reclaims what a live socket still uses.

use super::*;

impl Service {
    /// `pid` holds end `end` of `conn` (watched until it dies).
    pub(super) fn add_holder(&mut self, conn: u64, pid: u32, end: usize) {
        if !self.watch(pid) {
            return; // already gone
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.holders.contains(&(pid, end)) {
                c.holders.push((pid, end));
            }
        }
    }

    /// A process proved it holds one of a connection's sockets: count it as a holder and give
    /// it that end's segments and lines.
    pub(super) fn hold(&mut self, client: u64, request: u64, pid: u32, socket: OwnedFd) {
        let Ok(Some(view)) = sys::tcp_view(socket.as_raw_fd()) else {
            return self.refuse(client, request, Refusal::BadSocket);
        };
        let look = |s: &Service| {
            s.conns.iter().find_map(|(&id, c)| {
                let side = c.ends.iter().position(|e| e.inode == view.inode)?;
                (c.netns == view.netns).then_some((id, side))
            })
        };
        let mut found = look(self);
        if found.is_none() {
            if let Some(offer) = self.offer_of(pid, &view) {
                return self.hold_offer(client, request, offer);
            }
            self.catch_up();
            found = look(self);
        }
        let Some((conn, side)) = found else {
            return match self.offer_of(pid, &view) {
                Some(offer) => self.hold_offer(client, request, offer),
                None => self.reply(client, request, Reply::Declined { reason: NO_OFFER }, &[]),
            };
        };
        self.add_holder(conn, pid, side);
        self.orphans.retain(|&o| o != conn);
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (me, peer) = (&c.ends[side], &c.ends[1 - side]);
        let fds = [
            c.segment.as_raw_fd(),
            me.line.fd.as_raw_fd(),
            peer.line.fd.as_raw_fd(),
        ];
        let r = Reply::Paired {
            conn,
            ring_bytes: c.bytes / 2 - SEGMENT_HEADER,
            server: side == 1,
            own_line: me.line.id,
            peer_line: peer.line.id,
        };
        self.reply(client, request, r, &fds);
    }

    /// The offer `pid` made on the socket `view` describes, if any.
    pub(super) fn offer_of(&self, pid: u32, view: &TcpView) -> Option<u64> {
        self.offers.iter().find_map(|(&conn, o)| {
            (o.pid == pid
                && o.netns == view.netns
                && sys::tcp_view(o.socket.as_raw_fd())
                    .ok()
                    .flatten()
                    .is_some_and(|v| v.inode == view.inode))
            .then_some(conn)
        })
    }

    /// A process takes back offer `conn` it made before (its service connection closed, as at
    /// an exec): the offer answers this request from now on; the reply carries its line.
    pub(super) fn hold_offer(&mut self, client: u64, request: u64, conn: u64) {
        let Some(o) = self.offers.get_mut(&conn) else {
            return;
        };
        o.owner = client;
        o.request = request;
        let (fd, line) = (o.line.fd.as_raw_fd(), o.line.id);
        self.reply(client, request, Reply::Reoffered { conn, line }, &[fd]);
    }

    /// A holder's process died: it holds nothing any more.
    pub(super) fn holder_died(&mut self, pid: u32) {
        self.holders.remove(&pid);
        self.offers.retain(|_, o| o.pid != pid);
        let held: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.holders.iter().any(|h| h.0 == pid))
            .map(|(&k, _)| k)
            .collect();
        for conn in held {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.holders.retain(|h| h.0 != pid);
            }
            self.orphan_if_unheld(conn);
        }
    }

    /// `pid` let go of end `end` of `conn` (it said so): the connection goes when no holder
    /// is left.
    pub(super) fn let_go(&mut self, conn: u64, pid: u32, end: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.holders.retain(|&h| h != (pid, end));
        }
        if !self
            .conns
            .values()
            .any(|c| c.holders.iter().any(|h| h.0 == pid))
            && !self.offers.values().any(|o| o.pid == pid)
        {
            self.holders.remove(&pid);
        }
        if self.conns.get(&conn).is_some_and(|c| c.holders.is_empty()) {
            self.reclaim(conn);
        }
    }

    /// A holder of `conn` died without letting go: if no holder is left, the connection goes
    /// once the kernel has neither of its sockets (looked up every `ORPHAN_LOOK_MS`: a process
    /// that inherited a socket without telling us still holds the connection).
    pub(super) fn orphan_if_unheld(&mut self, conn: u64) {
        if self.conns.get(&conn).is_some_and(|c| c.holders.is_empty())
            && !self.orphans.contains(&conn)
        {
            self.orphans.push(conn);
        }
    }

    /// Is the kernel's socket table of `c`'s namespace readable here (the service's own)?
    pub(super) fn sees_sockets_of(&self, c: &Conn) -> bool {
        self.netns != 0 && c.netns == self.netns
    }

    pub(super) fn reclaim(&mut self, conn: u64) {
        self.orphans.retain(|&o| o != conn);
        if let Some(c) = self.conns.remove(&conn) {
            self.window_used = self.window_used.saturating_sub(c.bytes);
            self.counters.reclaimed += 1;
        }
    }

    pub(super) fn reclaim_orphans(&mut self) {
        let listeners = self.listeners.values().any(|l| l.orphan);
        if (self.orphans.is_empty() && !listeners)
            || self.orphans_seen.elapsed() < Duration::from_millis(ORPHAN_LOOK_MS as u64)
        {
            return;
        }
        self.orphans_seen = Instant::now();
        self.withdraw_dead_listeners();
        // One exact look-up per end (by its 4-tuple), not a walk of the kernel's table: with
        // thousands of connections on the host that walk was the service's largest cost.
        let gone: Vec<u64> = self
            .orphans
            .iter()
            .copied()
            .filter(|id| {
                self.conns.get(id).is_none_or(|c| {
                    let ends = [(c.client, c.server), (c.server, c.client)];
                    !self.sees_sockets_of(c)
                        || !c.ends.iter().zip(ends).any(|(e, (local, peer))| {
                            // A failed look-up keeps the connection (it is asked again).
                            sockdiag::connected(e.inode, local, peer).unwrap_or(true)
                        })
                })
            })
            .collect();
        for conn in gone {
            self.reclaim(conn);
        }
    }

    /// A client hung up or its process died: its listeners and offers go.
    pub(super) fn drop_client(&mut self, client: u64) {
        let Some(gone) = self.clients.remove(&client) else {
            return;
        };
        // Its connections outlive its service connection (an exec): watch the process itself.
        let pid = gone.cred.pid;
        if self
            .conns
            .values()
            .any(|c| c.holders.iter().any(|h| h.0 == pid))
            && !self.watch(pid)
        {
            self.holder_died(pid);
        }
        // Its connections are held by its pid, not by this service connection: a process
        // that exec'd has closed the latter and still holds the former.
        for l in self.listeners.values_mut() {
            if l.owner == client {
                l.orphan = true;
            }
        }
        self.reclaim_listeners();
        // Its offers wait for the process itself (a new image after exec takes them back with
        // `Hold`), and go when it dies or their patience ends.
        let mut alive = Vec::new();
        for o in self.offers.values_mut().filter(|o| o.owner == client) {
            o.owner = 0;
            alive.push(o.pid);
        }
        for pid in alive {
            if !self.watch(pid) {
                self.offers.retain(|_, o| o.pid != pid);
            }
        }
    }

    /// Watch `pid` (its pidfd among the holders'); false if it is gone already.
    pub(super) fn watch(&mut self, pid: u32) -> bool {
        // A process with a service connection is watched through that connection's pidfd
        // (no pidfd to open and close per connection it makes).
        if self
            .clients
            .values()
            .any(|c| c.cred.pid == pid && c.pidfd.is_some())
        {
            return true;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.holders.entry(pid) {
            match sys::pidfd(pid) {
                Ok(p) => {
                    e.insert(p);
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Withdraw orphaned listeners whose socket the kernel no longer has (outside the
    /// service's own namespace, whose socket table it cannot read, at once).
    pub(super) fn reclaim_listeners(&mut self) {
        if self.listeners.values().any(|l| l.orphan) {
            self.withdraw_dead_listeners();
        }
    }

    /// Withdraw the orphaned listeners whose socket the kernel no longer has listening.
    pub(super) fn withdraw_dead_listeners(&mut self) {
        let netns = self.netns;
        self.listeners.retain(|_, l| {
            !l.orphan
                || (netns != 0
                    && l.netns == netns
                    // A failed look-up keeps the listener (it is asked again).
                    && sockdiag::is_listening_at(l.inode, &l.addr, l.port).unwrap_or(true))
        });
    }
}
