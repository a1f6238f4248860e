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
        let mut arena = None;
        if let Some(c) = self.conns.get_mut(&conn) {
            // Another image (after exec) or another process maps the segment now: it is never
            // given to another connection.
            c.reusable = false;
            arena = Some(c.arena);
        }
        // The holder gets the arena, which holds the pair's other connections of its
        // generation too: one it may have inherited (a fork) or made (the same process before
        // an exec), but no later one: the generation takes no new connection (`arena`).
        if let Some(a) = arena {
            self.close_arena(a);
        }
        self.send_end(client, request, conn, side);
    }

    /// `Paired` for end `side` of `conn`, with its descriptors (for a `Hold` or a `Refetch`).
    fn send_end(&mut self, client: u64, request: u64, conn: u64, side: usize) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (me, peer) = (&c.ends[side], &c.ends[1 - side]);
        let fds = [&c.segment, &me.line.fd, &peer.line.fd, &peer.line.tally].map(Rc::clone);
        let r = Reply::Paired {
            conn,
            ring_bytes: segment_ring(c.bytes),
            server: side == 1,
            own_line: me.line.id,
            peer_line: peer.line.id,
            plain: 0,
            offset: c.offset,
        };
        self.reply(client, request, r, &fds.each_ref());
    }

    /// `Refetch`: the descriptors of end `side` of `conn`, which the service answered with
    /// `Again`, for the process that made that end (its line is the end's) and nobody else.
    pub(super) fn refetch(&mut self, client: u64, request: u64, conn: u64, side: usize) {
        let line = self.clients.get(&client).and_then(|c| c.line.clone());
        let found = self.conns.get(&conn).filter(|c| {
            line.as_ref()
                .is_some_and(|l| Rc::ptr_eq(l, &c.ends[side].line))
        });
        if found.is_none() {
            return self.refuse(client, request, Refusal::NotYours);
        }
        self.send_end(client, request, conn, side);
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
        let (fd, line) = (Rc::clone(&o.line.fd), o.line.id);
        self.reply(client, request, Reply::Reoffered { conn, line }, &[&fd]);
    }

    /// A holder's process died: it holds nothing any more.
    pub(super) fn holder_died(&mut self, pid: u32) {
        self.holders.remove(&pid);
        self.bridged_holder_died(pid);
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
            && !self.holds_bridged(pid)
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

    /// `Namespace`: a sock_diag socket of the sender's network namespace. Kept if it is one,
    /// of a namespace other than ours that has none yet and whose last one never failed.
    pub(super) fn namespace(&mut self, client: u64, fd: OwnedFd) {
        let Some((diag, netns)) = crate::sockdiag::Diag::handed(fd) else {
            self.refuse_quietly(Refusal::BadSocket);
            return;
        };
        if let Some(c) = self.clients.get_mut(&client) {
            c.netns = netns;
        }
        if netns != self.netns
            && !self.diags_failed.contains(&netns)
            && self.diags.len() < MAX_NAMESPACES
        {
            self.diags.entry(netns).or_insert(diag);
        }
    }

    /// Ask namespace `netns`'s socket table `q` (through our own sock_diag or the one handed
    /// for it); `None` if we cannot (no socket for it, or it failed: then never again). A
    /// failed look-up in our own namespace answers `unknown` (the liveness looks' `true`: it
    /// keeps what it asks about, which is asked again).
    pub(super) fn ask_namespace<T>(
        &mut self,
        netns: u64,
        unknown: T,
        q: impl Fn(Option<&crate::sockdiag::Diag>) -> io::Result<T>,
    ) -> Option<T> {
        if self.netns != 0 && netns == self.netns {
            return Some(q(None).unwrap_or(unknown));
        }
        let d = self.diags.get(&netns)?;
        match q(Some(d)) {
            Ok(v) => Some(v),
            Err(_) => {
                self.diags.remove(&netns);
                self.diags_failed.insert(netns);
                None
            }
        }
    }

    /// Let go of the sock_diag sockets of namespaces with nothing left here (no process of
    /// theirs connected, no listener, no connection).
    fn forget_namespaces(&mut self) {
        if self.diags.is_empty() {
            return;
        }
        let live: std::collections::HashSet<u64> = (self.clients.values().map(|c| c.netns))
            .chain(self.listeners.values().map(|l| l.netns))
            .chain(self.conns.values().map(|c| c.netns))
            .chain(self.bridged_namespaces())
            .collect();
        self.diags.retain(|ns, _| live.contains(ns));
    }

    pub(super) fn reclaim(&mut self, conn: u64) {
        self.orphans.retain(|&o| o != conn);
        if let Some(c) = self.conns.remove(&conn) {
            self.window_used = self.window_used.saturating_sub(c.bytes);
            self.counters.reclaimed += 1;
            if c.reusable && c.clean == [true, true] && c.holders.is_empty() {
                self.keep(c.pids, c.arena, c.offset, c.bytes);
            } else {
                let clean = c.clean == [true, true] && c.holders.is_empty();
                self.free_range(c.arena, c.offset, c.bytes, clean);
            }
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
        let mut gone = Vec::new();
        for id in self.orphans.clone() {
            let Some(c) = self.conns.get(&id) else {
                gone.push(id);
                continue;
            };
            let ends = [(c.client, c.server), (c.server, c.client)];
            let looks: Vec<_> = c
                .ends
                .iter()
                .zip(ends)
                .map(|(e, (local, peer))| (e.inode, local, peer))
                .collect();
            let alive = self.ask_namespace(c.netns, true, |d| {
                for &(inode, local, peer) in &looks {
                    let found = match d {
                        Some(d) => d.connected(inode, local, peer)?,
                        None => sockdiag::connected(inode, local, peer)?,
                    };
                    if found {
                        return Ok(true);
                    }
                }
                Ok(false)
            });
            if alive != Some(true) {
                gone.push(id);
            }
        }
        for conn in gone {
            self.reclaim(conn);
        }
        self.forget_namespaces();
    }

    /// A client hung up or its process died: its listeners and offers go.
    pub(super) fn drop_client(&mut self, client: u64) {
        let Some(gone) = self.clients.remove(&client) else {
            return;
        };
        // Its mappings are gone (exit, exec) or going: its generations close (their kept
        // ranges go; a new image's connections go into new arenas).
        self.close_generations(gone.cred.pid);
        // Its connections outlive its service connection (an exec): watch the process itself.
        let pid = gone.cred.pid;
        if (self
            .conns
            .values()
            .any(|c| c.holders.iter().any(|h| h.0 == pid))
            || self.holds_bridged(pid))
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

    /// Withdraw orphaned listeners whose socket the kernel no longer has (in a namespace whose
    /// socket table the service cannot read, at once: see [`Service::ask_namespace`]).
    pub(super) fn reclaim_listeners(&mut self) {
        if self.listeners.values().any(|l| l.orphan) {
            self.withdraw_dead_listeners();
        }
    }

    /// Withdraw the orphaned listeners whose socket the kernel no longer has listening.
    pub(super) fn withdraw_dead_listeners(&mut self) {
        let orphans: Vec<(u64, u64, u64, Addr, u16)> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.orphan)
            .map(|(&id, l)| (id, l.netns, l.inode, l.addr, l.port))
            .collect();
        for (id, netns, inode, addr, port) in orphans {
            let alive = self.ask_namespace(netns, true, |d| match d {
                Some(d) => d.is_listening_at(inode, &addr, port),
                None => sockdiag::is_listening_at(inode, &addr, port),
            });
            if alive != Some(true) {
                self.listeners.remove(&id);
            }
        }
        self.forget_namespaces();
    }
}
