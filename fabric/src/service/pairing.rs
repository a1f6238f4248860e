//! Pairing: a server's accept matched with the client's offer for the same connection (by
//! the kernel's addresses, read from the sockets), the connection's segment and window space
//! given out, and offers that wait too long or whose server stalls expired. Called by the
//! request side; it never trusts an address a client claims.

use super::*;

impl Service {
    /// The server accepted `socket`: pair it with the offer whose socket is its mirror in the
    /// same namespace.
    pub(super) fn accept(
        &mut self,
        server: u64,
        request: u64,
        socket: OwnedFd,
        ring: u64,
        nowait: bool,
    ) {
        let view = match sys::tcp_view(socket.as_raw_fd()) {
            Ok(Some(
                v @ TcpView {
                    listening: false,
                    local: Some(_),
                    peer: Some(_),
                    ..
                },
            )) => v,
            _ => return self.refuse(server, request, Refusal::BadSocket),
        };
        drop(socket);
        if let Some(local) = view.local {
            self.accepted_on(server, view.netns, local);
        }
        let mut found = self.find_offer(view.netns, view.peer, view.local);
        if found.is_none() {
            // The client's `Connect` was in the service's socket before its kernel connect
            // began, so before this accept: if a client's budget left it unread in this pass,
            // read everything now (accepts found meanwhile wait their turn).
            self.catch_up();
            found = self.find_offer(view.netns, view.peer, view.local);
        }
        if found.is_none() && self.ask_peer(server, request, nowait, &view, ring) {
            // The client may be on the other host: its service answers (`bridge`).
            return;
        }
        let Some(conn) = found else {
            self.counters.declined += 1;
            return self.reply(server, request, Reply::Declined { reason: NO_OFFER }, &[]);
        };
        let Some(offer) = self.offers.remove(&conn) else {
            return;
        };
        // The configured ring when there is room for it; as window space runs short, smaller
        // rings (down to MIN_RING) rather than no connection: more connections, each a little
        // slower (as the device rendezvous does).
        // What both ends asked for, within the service's limit, a power of two of at least
        // MIN_RING (the protocol's ring sizes).
        let asked = ring.min(offer.ring).min(self.opts.ring_bytes).max(MIN_RING);
        let mut ring = if asked.is_power_of_two() {
            asked
        } else {
            asked.next_power_of_two() / 2
        };
        // Rings above MIN_RING only within their share of the window; MIN_RING for the rest.
        let floor = MIN_RING.min(self.opts.ring_bytes);
        let large = self.opts.window_bytes / LARGE_SHARE;
        while ring / 2 >= floor && self.window_used + segment_bytes(ring) > large {
            ring /= 2;
        }
        let bytes = segment_bytes(ring);
        let declined = |s: &mut Service, reason: u32| {
            s.counters.declined += 1;
            s.reply(server, request, Reply::Declined { reason }, &[]);
            s.reply(offer.owner, offer.request, Reply::Declined { reason }, &[]);
            sys::ring(offer.line.fd.as_raw_fd());
        };
        if self.window_used + bytes > self.opts.window_bytes {
            return declined(self, NO_WINDOW_SPACE);
        }
        let Some(line_s) = self.clients.get(&server).and_then(|c| c.line.clone()) else {
            return declined(self, NO_OFFER);
        };
        let pid_of = |s: &Service, c: u64| s.clients.get(&c).map(|c| c.cred.pid);
        let (pid_c, pid_s) = (pid_of(self, offer.owner), pid_of(self, server));
        let pids = (pid_c.unwrap_or(0), pid_s.unwrap_or(0));
        let Ok((arena, offset, again)) = self.take_segment(bytes, pids) else {
            return declined(self, NO_WINDOW_SPACE);
        };
        let Some(segment) = self.arenas.get(&arena).map(|a| Rc::clone(&a.fd)) else {
            return declined(self, NO_WINDOW_SPACE);
        };
        let client_inode = offer.inode;
        let line_c = &offer.line;
        let (seg, lc, ls, bc, bs) = (
            &segment,
            &line_c.fd,
            &line_s.fd,
            &line_c.tally,
            &line_s.tally,
        );
        // A segment both processes kept the mapping of is named, not sent, and so are the
        // lines of their last pairing (`Reply::Again`: what they no longer have, they ask for).
        let reply = |server: bool, own: &Line, peer: &Line| match again {
            Some(id) => Reply::Again(Again {
                conn,
                ring_bytes: ring,
                server,
                own_line: own.id,
                peer_line: peer.id,
                plain: offer.plain,
                dev: id.dev,
                inode: id.inode,
                offset,
            }),
            None => Reply::Paired {
                conn,
                ring_bytes: ring,
                server,
                own_line: own.id,
                peer_line: peer.id,
                plain: offer.plain,
                offset,
            },
        };
        let (to_server, to_client) = (reply(true, &line_s, line_c), reply(false, line_c, &line_s));
        let n = if again.is_some() { 0 } else { 4 };
        self.reply(server, request, to_server, &[seg, ls, lc, bc][..n]);
        self.reply(
            offer.owner,
            offer.request,
            to_client,
            &[seg, lc, ls, bs][..n],
        );
        sys::ring(lc.as_raw_fd());
        self.window_used += bytes;
        self.counters.paired += 1;
        let holders: Vec<(u32, usize)> = [pid_c.map(|p| (p, 0)), pid_s.map(|p| (p, 1))]
            .into_iter()
            .flatten()
            .collect();
        let Offer { line, .. } = offer;
        self.conns.insert(
            conn,
            Box::new(Conn {
                client: view.peer.unwrap_or(([0; 16], 0)),
                server: view.local.unwrap_or(([0; 16], 0)),
                holders: holders::Holders::default(),
                netns: view.netns,
                ends: [
                    End {
                        inode: client_inode,
                        line,
                    },
                    End {
                        inode: view.inode,
                        line: line_s,
                    },
                ],
                segment,
                arena,
                offset,
                bytes,
                pids,
                clean: [false; 2],
                reusable: pid_c.is_some() && pid_s.is_some(),
            }),
        );
        for (pid, end) in holders {
            self.add_holder(conn, pid, end);
        }
        self.orphan_if_unheld(conn);
    }

    /// The answer to a `nowait` `Accept` of `server` is in its socket: ring its line. The
    /// server did not wait inside `accept` for it (it completes the connection at first use, as
    /// a client does its connect), so a thread or an epoll set waiting on that connection
    /// sleeps on the line, not on the service's socket.
    pub(super) fn ring_server(&self, server: u64) {
        if let Some(l) = self.clients.get(&server).and_then(|c| c.line.as_ref()) {
            sys::ring(l.fd.as_raw_fd());
        }
    }

    /// A burst of connects grows the offer tables to thousands of places, all empty once the
    /// burst is paired: they are given back when three quarters of them are empty (kept, they
    /// were ~120 bytes a connection after a burst of 2,000: benches/results/heap-session17.md).
    pub(super) fn shrink_offers(&mut self) {
        shrink_table(&mut self.offers);
        shrink_table(&mut self.offer_index);
    }

    /// The offer whose client socket is connected from `local` to `peer` in namespace
    /// `netns`. Each offer's addresses are read from its socket once, after its connect, and
    /// indexed: with a thousand offers waiting, an accept costs a look-up, not a thousand
    /// system calls.
    pub(super) fn find_offer(
        &mut self,
        netns: u64,
        peer: Option<(Addr, u16)>,
        local: Option<(Addr, u16)>,
    ) -> Option<u64> {
        let key = (netns, peer?, local?);
        if let Some(&conn) = self.offer_index.get(&key) {
            let sure = self.offers.get(&conn).is_some_and(|o| {
                !o.provisional
                    || sys::tcp_names(o.socket.as_raw_fd())
                        .is_ok_and(|(l, p)| l == Some(key.1) && p == Some(key.2))
            });
            if sure {
                return Some(conn);
            }
            self.offer_index.remove(&key);
        }
        let unseen: Vec<u64> = self
            .offers
            .iter()
            .filter(|(_, o)| !o.indexed && o.netns == netns)
            .map(|(&c, _)| c)
            .collect();
        let mut found = None;
        for conn in unseen {
            let Some(o) = self.offers.get_mut(&conn) else {
                continue;
            };
            let Ok((local, peer)) = sys::tcp_names(o.socket.as_raw_fd()) else {
                continue;
            };
            if let (Some(l), Some(p)) = (local, peer) {
                o.indexed = true;
                self.offer_index.insert((o.netns, l, p), conn);
                if (o.netns, l, p) == key {
                    found = Some(conn);
                    break;
                }
            } else if let Some(l) = local.filter(|l| l.1 != 0) {
                // Still connecting (a full backlog keeps thousands so for seconds): indexed by
                // the destination it claimed, so that it is not looked at again on every
                // accept that misses (each look is several system calls).
                o.indexed = true;
                o.provisional = true;
                self.offer_index.insert((o.netns, l, o.dest), conn);
            }
        }
        if found.is_none() {
            // An offer indexed by a claimed destination that was not where it connected (a
            // rare case: a redirect): one more look at those.
            let provisional: Vec<u64> = self
                .offers
                .iter()
                .filter(|(_, o)| o.provisional && o.netns == netns && o.dest != key.2)
                .map(|(&c, _)| c)
                .collect();
            for conn in provisional {
                let Some(o) = self.offers.get(&conn) else {
                    continue;
                };
                let names = sys::tcp_names(o.socket.as_raw_fd());
                if names.is_ok_and(|(l, p)| l == Some(key.1) && p == Some(key.2)) {
                    found = Some(conn);
                    break;
                }
            }
        }
        found
    }

    /// Offers past their patience go (looked for every `EXPIRE_LOOK`, not on every turn: with
    /// thousands of offers waiting, a look at each per message was most of the service's
    /// time).
    pub(super) fn expire_offers(&mut self) {
        if self.offers_seen.elapsed() < EXPIRE_LOOK {
            return;
        }
        self.offers_seen = Instant::now();
        let offers = &self.offers;
        self.offer_index.retain(|_, c| offers.contains_key(c));
        let now = Instant::now();
        let patience = self.opts.offer_patience;
        let old: Vec<u64> = self
            .offers
            .iter()
            .filter(|(_, o)| now.duration_since(o.posted) >= patience)
            .map(|(&k, _)| k)
            .collect();
        for conn in old {
            if let Some(o) = self.offers.remove(&conn) {
                self.counters.declined += 1;
                self.reply(
                    o.owner,
                    o.request,
                    Reply::Declined { reason: NO_ANSWER },
                    &[],
                );
            }
        }
    }

    /// A process accepted a connection on the listener at `local` in `netns`: count it (its
    /// servers' progress, see `Offer::seen`); and if that listener is an orphan (its publisher
    /// went away: a daemonizing parent, say), this process holds it now as far as anyone can
    /// tell, and its life says how long the listener lives; the kernel is asked again only once
    /// that process is gone. Without this a daemonized server's listener was looked up four
    /// times a second for as long as it ran.
    pub(super) fn accepted_on(&mut self, client: u64, netns: u64, local: (Addr, u16)) {
        for l in self
            .listeners
            .values_mut()
            .filter(|l| l.serves(netns, local))
        {
            l.accepted += 1;
            if l.orphan {
                l.orphan = false;
                l.owner = client;
            }
        }
    }

    /// Did the listeners offer `conn` waits on accept anything since it was made or last
    /// asked about, within its patience? (Remembers what it saw.)
    pub(super) fn progressed(&mut self, conn: u64) -> bool {
        let Some((netns, dest)) = self.offers.get(&conn).map(|o| (o.netns, o.dest)) else {
            return false;
        };
        let now = self.accepted_at(netns, dest);
        let patience = self.opts.offer_patience;
        let Some(o) = self.offers.get_mut(&conn) else {
            return false;
        };
        let moved = o.seen != now && o.posted.elapsed() < patience;
        o.seen = now;
        moved
    }

    /// Should offer `conn` stand, asked by its client whose answer is late (`Cancel` with
    /// `stalled_only`)? While its connection has reached no server at all (`Unreached`): the
    /// listener's queue overflowed, the kernel dropped the handshake's last segment (or answered
    /// with a SYN cookie) and makes the server's socket only when a segment of the client's
    /// arrives. On TCP the client's request does that, so its client sends its first bytes
    /// (`Plain`) and the offer stands for them, up to the service's patience for an offer;
    /// asked first, so that such a client is told at once even while its listener accepts
    /// others. Else while its servers make progress (`progressed`); while its connection waits
    /// in its listener's accept queue (the kernel holds it for a server that has not accepted
    /// it yet: on TCP its client would wait for that server the same); and once, for one more
    /// answer timeout of its client, after a process accepted it (that process's `Accept` may
    /// be on its way: a busy server, descheduled between its accept and its request). The
    /// socket table is the namespace's; `GivenUp` when it cannot be asked.
    pub(super) fn verdict(&mut self, conn: u64) -> Stalled {
        let Some(o) = self.offers.get(&conn) else {
            return Stalled::GivenUp;
        };
        let netns = o.netns;
        // The connection's two ends, once the kernel connected it (a client whose SYN the full
        // queue dropped is still connecting: nothing to look up); none to look up here for an
        // offer toward the other host.
        let ends = sys::tcp_view(o.socket.as_raw_fd())
            .ok()
            .flatten()
            .and_then(|v| v.local.zip(v.peer))
            .filter(|_| !o.bridged);
        // `Err`: not connected yet, or the namespace's table could not be asked.
        let side = match ends {
            Some((client, server)) => self
                .ask_namespace(netns, Err(()), |d| {
                    match d {
                        Some(d) => d.server_side(server, client),
                        None => crate::sockdiag::server_side(server, client),
                    }
                    .map(Ok)
                })
                .unwrap_or(Err(())),
            None => Err(()),
        };
        let patience = self.opts.offer_patience;
        if side == Ok(None) {
            let Some(o) = self.offers.get_mut(&conn) else {
                return Stalled::GivenUp;
            };
            if o.posted.elapsed() >= patience {
                return Stalled::GivenUp;
            }
            o.unreached = true;
            // Told once: a client that sent its bytes waits for them to get through.
            return if o.plain > 0 {
                Stalled::Stands
            } else {
                Stalled::Unreached
            };
        }
        if self.progressed(conn) {
            return Stalled::Stands;
        }
        let Some(o) = self.offers.get_mut(&conn) else {
            return Stalled::GivenUp;
        };
        match side {
            Ok(Some(0)) => Stalled::Stands,
            Ok(Some(_)) if !o.graced => {
                o.graced = true;
                Stalled::Stands
            }
            _ => Stalled::GivenUp,
        }
    }

    /// The accepts of the listeners that serve `dest` in `netns`.
    pub(super) fn accepted_at(&self, netns: u64, dest: (Addr, u16)) -> u64 {
        self.listeners
            .values()
            .filter(|l| l.serves(netns, dest))
            .map(|l| l.accepted)
            .sum()
    }
}

/// Gives back most of `m`'s room when three quarters of it are empty (never below 64 places:
/// a steady trickle keeps its table).
fn shrink_table<K: Eq + std::hash::Hash, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 64 && m.len() < m.capacity() / 4 {
        m.shrink_to(m.len() * 2);
    }
}
