//! The request side of the service: each client's messages read (a bounded number per pass),
//! decoded and acted on, and the replies sent or kept in the client's outbox. Called by the
//! service's loop ([`Service::turn`]); a request never blocks the service, and garbage is
//! refused with a counted reason (a client with too many strikes is dropped).

use super::*;

impl Service {
    /// Read what every client sent (up to a budget each) and act on it: accepts last, so that
    /// a client's `Connect`, sent before its kernel connect began, is always known when the
    /// server's `Accept` for that connection is handled; and after them the questions whether
    /// an offer is stalled, so that an accept read in the same pass counts.
    pub(super) fn pass(&mut self, ready: &[u64]) {
        self.read(ready, PASS_BUDGET);
        while let Some((client, request, socket, ring, nowait)) = self.accepts.pop_front() {
            // (A pairing across the bridge answers later, and rings then.)
            self.accept(client, request, socket, ring, nowait);
            if nowait {
                self.ring_server(client);
            }
        }
        // After the accepts: one read in this pass is its server's progress (or its pairing).
        while let Some((client, id, request, quiet)) = self.doubts.pop_front() {
            self.cancel(client, id, request, true, quiet);
        }
    }

    /// Read up to `budget` messages from each client of `ids` and act on them, except
    /// accepts, which queue in arrival order (`Service::accepts`).
    pub(super) fn read(&mut self, ids: &[u64], budget: usize) {
        for &id in ids {
            for _ in 0..budget {
                let Some(c) = self.clients.get(&id) else {
                    break;
                };
                match sys::recv_msg(c.sock.as_raw_fd()) {
                    Ok(Some(m)) => {
                        if let Some(a) = self.handle(id, m) {
                            self.accepts.push_back(a);
                        }
                    }
                    Ok(None) => {
                        self.drop_client(id);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.drop_client(id);
                        break;
                    }
                }
            }
        }
    }

    /// Every client's waiting messages, read now: a request that found nothing it names (an
    /// accept without its offer, a hold without its connection) may have overtaken the message
    /// that makes it, sent earlier on another service connection (a `Connect` sent before the
    /// kernel connect, or before an exec).
    pub(super) fn catch_up(&mut self) {
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        self.read(&ids, 1 << 16);
    }

    pub(super) fn refuse(&mut self, client: u64, request: u64, why: Refusal) {
        *self.counters.refused.entry(why).or_default() += 1;
        // Garbage counts against the client; a claim the service turns down (not yours, not a
        // socket, over a limit) is an answer, not misbehaviour.
        let garbage = matches!(
            why,
            Refusal::Malformed | Refusal::OutOfOrder | Refusal::NotYou
        );
        let strikes = self.clients.get_mut(&client).map(|c| {
            c.strikes += garbage as u32;
            c.strikes
        });
        self.reply(client, request, Reply::Refused { why: why.code() }, &[]);
        if strikes.is_some_and(|s| s >= MAX_STRIKES) {
            self.drop_client(client);
        }
    }

    /// Send reply `r` to `request` of `client` with the descriptors `fds`, or keep it in the
    /// client's outbox, in order, while its socket has no room (or the kernel holds too many of
    /// its user's descriptors in flight). Only a client that does not read its replies at all
    /// (`MAX_OUTBOX` waiting) or whose socket is broken is cut off.
    pub(super) fn reply(&mut self, client: u64, request: u64, r: Reply, fds: &[&Rc<OwnedFd>]) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        let bytes = r.encode(request);
        let shared = || fds.iter().map(|&f| Rc::clone(f)).collect();
        if c.outbox.is_empty() {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            match send(c.sock.as_raw_fd(), &bytes, &raw) {
                Sent::Yes => return,
                Sent::NoRoom => {}
                Sent::TooManyInFlight => c.stalled = true,
                Sent::Broken => return self.drop_client(client),
            }
        }
        if c.outbox.len() < MAX_OUTBOX {
            c.outbox.push_back((bytes, shared()));
        } else {
            self.drop_client(client)
        }
    }

    /// Send what a client's socket had no room for, as far as it has now.
    pub(super) fn flush(&mut self, client: u64) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        c.stalled = false;
        while let Some((bytes, fds)) = c.outbox.front() {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            match send(c.sock.as_raw_fd(), bytes, &raw) {
                Sent::Yes => {
                    c.outbox.pop_front();
                }
                Sent::NoRoom => return,
                Sent::TooManyInFlight => {
                    c.stalled = true;
                    return;
                }
                Sent::Broken => return self.drop_client(client),
            }
        }
    }

    /// A refusal of a request that is never answered (`Close`, `Unlisten`, a quiet `Cancel`):
    /// only counted. Such a request is no garbage (a stale connection id after a restart, say),
    /// so it is no strike either.
    pub(super) fn refuse_quietly(&mut self, why: Refusal) {
        *self.counters.refused.entry(why).or_default() += 1;
    }

    /// Handle one message; an `Accept` is returned to be handled after the others. Decoding
    /// and the check of who sends happen here; each family of requests has its own handler
    /// below.
    pub(super) fn handle(&mut self, client: u64, m: sys::Received) -> Option<Accepted> {
        let decoded = if m.truncated {
            None
        } else {
            crate::wire::Request::decode(&m.bytes, m.fds.len()).ok()
        };
        let Some((req, id)) = decoded else {
            self.refuse(client, 0, Refusal::Malformed);
            return None;
        };
        let c = self.clients.get(&client)?;
        // The kernel's word on who sent this message, not the connection's first owner: a
        // forked child writing on its parent's connection is not its parent.
        let sender = m.cred.map_or(c.cred.pid, |cr| cr.pid);
        let who = m.cred.unwrap_or(c.cred);
        let hello_done = c.pidfd.is_some();
        let mut fds = m.fds;
        match req {
            Request::Hello { pid } => {
                let mut it = fds.into_iter();
                self.hello(client, id, pid, sender, it.next().zip(it.next()));
                return None;
            }
            Request::Status | Request::List | Request::History => {
                self.report(client, id, req);
                return None;
            }
            _ if !hello_done => {
                self.refuse(client, id, Refusal::OutOfOrder);
                return None;
            }
            _ if sender != c.cred.pid => {
                self.refuse(client, id, Refusal::NotYou);
                return None;
            }
            _ => {}
        }
        match req {
            Request::Hello { .. } | Request::Status | Request::List | Request::History => {}
            Request::Fallback { reason, server } => self.fallback(who, reason, server, fds.pop()?),
            Request::Stop => {
                if who.uid == 0 || who.uid == self.opts.owner_uid {
                    self.reply(client, id, Reply::Done, &[]);
                    self.stop = true;
                } else {
                    self.refuse(client, id, Refusal::Forbidden);
                }
            }
            Request::Listen => self.listen(client, id, fds.pop()?),
            Request::Namespace => self.namespace(client, fds.pop()?),
            Request::Unlisten { listener } => self.unlisten(client, listener),
            Request::Connect {
                addr,
                port,
                ring,
                quiet,
            } => self.connect(client, id, sender, (addr, port), ring, quiet, fds.pop()?),
            Request::Cancel {
                request,
                stalled_only: true,
                quiet,
            } => self.doubts.push_back((client, id, request, quiet)),
            Request::Cancel { request, quiet, .. } => {
                self.cancel(client, id, request, false, quiet)
            }
            Request::Accept { ring, nowait } => {
                return Some((client, id, fds.pop()?, ring, nowait));
            }
            Request::Hold => self.hold(client, id, sender, fds.pop()?),
            Request::Close {
                conn,
                server,
                clean,
            } => self.close(conn, sender, server as usize, clean),
            Request::Plain { request, bytes } => self.plain(client, id, request, bytes),
            Request::Refetch { conn, server } => self.refetch(client, id, conn, server as usize),
            Request::Forked => self.close_generations(sender),
        }
        None
    }

    /// `Hello`: the process's pidfd, interrupt line and tally page, once.
    fn hello(
        &mut self,
        client: u64,
        id: u64,
        pid: u32,
        sender: u32,
        line: Option<(OwnedFd, OwnedFd)>,
    ) {
        let Some(c) = self.clients.get(&client) else {
            return;
        };
        if c.pidfd.is_some() {
            return self.refuse(client, id, Refusal::OutOfOrder);
        }
        if pid != sender || pid != c.cred.pid {
            return self.refuse(client, id, Refusal::NotYou);
        }
        // A line the peers write counts into, a tally page they map and write: anything else
        // (a file of the process's choice, a page it could truncate under them) is refused.
        if !line
            .as_ref()
            .is_some_and(|(l, b)| sys::is_eventfd(l.as_raw_fd()) && sys::is_tally(b.as_raw_fd()))
        {
            return self.refuse(client, id, Refusal::BadSocket);
        }
        match sys::pidfd(pid) {
            Ok(p) => {
                let line_id = self.id();
                if let (Some(c), Some((fd, tally))) = (self.clients.get_mut(&client), line) {
                    c.pidfd = Some(p);
                    c.line = Some(Rc::new(Line {
                        id: line_id,
                        fd: Rc::new(fd),
                        tally: Rc::new(tally),
                    }));
                }
                let w = Reply::Welcome {
                    service_pid: sys::getpid(),
                    ring_bytes: self.opts.ring_bytes,
                    window_bytes: self.opts.window_bytes,
                    line: line_id,
                };
                self.reply(client, id, w, &[]);
            }
            Err(_) => self.drop_client(client),
        }
    }

    /// `Status`, `List`, `History`: what any local user may see.
    fn report(&mut self, client: u64, id: u64, req: Request) {
        match req {
            Request::Status => {
                let s = self.status();
                self.reply(client, id, Reply::Status(s), &[]);
            }
            Request::List => {
                // What `ss -tnpi` shows any local user: the connections' addresses, their
                // holders' pids, ring sizes and counters (bytes, frames, events; no byte of
                // the payload).
                let entries: Vec<Entry> = self
                    .conns
                    .iter()
                    .map(|(&conn, c)| {
                        let holder =
                            |end: usize| c.holders.iter().find(|h| h.1 == end).map_or(0, |h| h.0);
                        Entry {
                            conn,
                            ring_bytes: segment_ring(c.bytes),
                            client_pid: holder(0),
                            server_pid: holder(1),
                            client: c.client,
                            server: c.server,
                            ends: [0, SECOND_BLOCK]
                                .map(|at| end_counters(&c.segment, c.offset + at)),
                        }
                    })
                    .chain(self.bridged_entries())
                    .collect();
                for e in entries {
                    self.reply(client, id, Reply::Entry(Box::new(e)), &[]);
                }
                self.reply(client, id, Reply::Done, &[]);
            }
            Request::History => {
                // Addresses, pids and uids of connections that stayed on TCP: what `ss -tnp`
                // and /proc show any local user.
                let all: Vec<Fallen> = self.history.iter().copied().collect();
                for f in all {
                    self.reply(client, id, Reply::Fallen(f), &[]);
                }
                self.reply(client, id, Reply::Done, &[]);
            }
            _ => {}
        }
    }

    /// `Fallback`: kept in the host-wide history. Never answered (the sender does not wait): a
    /// socket that is not a connected TCP socket is only counted.
    fn fallback(&mut self, who: Cred, reason: u32, server: bool, sock: OwnedFd) {
        match sys::tcp_view(sock.as_raw_fd()) {
            Ok(Some(TcpView {
                local: Some(local),
                peer: Some(peer),
                ..
            })) => {
                if self.history.len() >= HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(Fallen {
                    when: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    pid: who.pid,
                    uid: who.uid,
                    reason,
                    server,
                    local,
                    peer,
                });
            }
            _ => self.refuse_quietly(Refusal::BadSocket),
        }
    }

    /// `Listen`: publish the listener bound on `sock`.
    fn listen(&mut self, client: u64, id: u64, sock: OwnedFd) {
        match sys::tcp_view(sock.as_raw_fd()) {
            // Bound and not connected: listening, or about to (a listener is registered
            // before the kernel listens, so that no client finds it missing). Holding a
            // socket bound to the address is the proof.
            Ok(Some(TcpView {
                netns,
                inode,
                local: Some((addr, port)),
                peer: None,
                ..
            })) if port != 0 => {
                let mine = self.listeners.values().filter(|l| l.owner == client);
                if mine.count() >= MAX_LISTENERS {
                    self.refuse(client, id, Refusal::Limit);
                } else {
                    let l = self.id();
                    self.listeners.insert(
                        l,
                        Listener {
                            owner: client,
                            netns,
                            addr,
                            port,
                            inode,
                            orphan: false,
                            accepted: 0,
                        },
                    );
                    self.reply(client, id, Reply::Listening { listener: l }, &[]);
                }
            }
            _ => self.refuse(client, id, Refusal::BadSocket),
        }
    }

    /// `Unlisten`: never answered.
    fn unlisten(&mut self, client: u64, listener: u64) {
        if self
            .listeners
            .get(&listener)
            .is_some_and(|l| l.owner == client)
        {
            self.listeners.remove(&listener);
        } else {
            self.refuse_quietly(Refusal::NotYours);
        }
    }

    /// `Connect`: an offer for the listener at `dest`, on the client's socket `sock`.
    #[allow(clippy::too_many_arguments)] // one request's fields, passed once
    fn connect(
        &mut self,
        client: u64,
        id: u64,
        sender: u32,
        dest: (Addr, u16),
        ring: u64,
        quiet: bool,
        sock: OwnedFd,
    ) {
        let Some(line) = self.clients.get(&client).and_then(|c| c.line.clone()) else {
            return;
        };
        let view = match sys::tcp_view(sock.as_raw_fd()) {
            Ok(Some(v)) if !v.listening => v,
            _ => return self.refuse(client, id, Refusal::BadSocket),
        };
        if self.offers.values().filter(|o| o.owner == client).count() >= MAX_OFFERS {
            return self.refuse(client, id, Refusal::Limit);
        }
        let listening = self.listeners.values().any(|l| l.serves(view.netns, dest));
        // No listener here, one on the other host: the offer waits for that host's service to
        // ask for it (its server's accept), if this process may map the bridge.
        let remote = !listening && self.bridge.as_ref().is_some_and(|b| b.listens(dest));
        let cred = self.clients.get(&client).map(|c| c.cred);
        let untrusted = remote && !cred.is_some_and(|c| bridge::trusted(sender, c.uid, c.gid));
        if (!listening && !remote) || untrusted {
            self.counters.declined += 1;
            let reason = if untrusted {
                bridge::UNTRUSTED
            } else {
                NO_LISTENER
            };
            self.reply(client, id, Reply::Declined { reason }, &[]);
            // The client may be waiting on its line (it need not wait for this reply).
            sys::ring(line.fd.as_raw_fd());
            return;
        }
        let conn = self.id();
        self.offers.insert(
            conn,
            Offer {
                owner: client,
                pid: sender,
                ring,
                request: id,
                socket: sock,
                inode: view.inode,
                line,
                netns: view.netns,
                posted: Instant::now(),
                dest,
                seen: self.accepted_at(view.netns, dest),
                indexed: false,
                graced: false,
                provisional: false,
                plain: 0,
                unreached: false,
                bridged: remote,
            },
        );
        if !quiet {
            self.reply(client, id, Reply::Offered { conn }, &[]);
        }
    }

    /// `Cancel`: withdraw the offer that request `request` made (`quiet`: no answer at all).
    fn cancel(&mut self, client: u64, id: u64, request: u64, stalled_only: bool, quiet: bool) {
        let found = self
            .offers
            .iter()
            .find(|(_, o)| o.owner == client && o.request == request)
            .map(|(&c, _)| c);
        let verdict = match found {
            Some(c) if stalled_only => self.verdict(c),
            _ => Stalled::GivenUp,
        };
        let refuse = |s: &mut Service, why| {
            if quiet {
                s.refuse_quietly(why)
            } else {
                s.refuse(client, id, why)
            }
        };
        if verdict == Stalled::Stands {
            // As the device rendezvous does with its accept counter: a server working
            // through a long backlog reaches its last clients late. And a connection still in
            // its listener's queue has not reached any server yet: on TCP its client would
            // wait for that server just the same (see `verdict`).
            refuse(self, Refusal::Progressing);
        } else if verdict == Stalled::Unreached {
            refuse(self, Refusal::Unreached);
        } else if let Some(conn) = found {
            self.offers.remove(&conn);
            if !quiet {
                self.reply(client, id, Reply::Done, &[]);
            }
        } else {
            refuse(self, Refusal::NotYours);
        }
    }

    /// `Plain`: the client of the offer that request `request` made, told its connection
    /// reached no server (`Unreached`), sends its first `bytes` on TCP to reach one: kept with
    /// the offer, for both ends' `Paired`. Once per offer, and only after `Unreached`: any
    /// other (the offer paired or withdrawn meanwhile, or another's) is refused, and the client
    /// then sends nothing. What the count claims concerns the client's own connection only: a
    /// wrong one makes its server's end find a malformed record and reset it.
    fn plain(&mut self, client: u64, id: u64, request: u64, bytes: u64) {
        let found = self
            .offers
            .values_mut()
            .find(|o| o.owner == client && o.request == request);
        match found {
            Some(o) if o.unreached && o.plain == 0 && bytes > 0 => {
                o.plain = bytes;
                self.reply(client, id, Reply::Done, &[]);
            }
            _ => self.refuse(client, id, Refusal::NotYours),
        }
    }

    /// `Close`: the sender let go of its end `end` of `conn` (`clean`ly: see `Conn::clean`).
    /// Never answered.
    fn close(&mut self, conn: u64, sender: u32, end: usize, clean: bool) {
        let held = self
            .conns
            .get_mut(&conn)
            .filter(|c| c.holders.contains(&(sender, end)));
        if let Some(c) = held {
            let own = [c.pids.0, c.pids.1].get(end) == Some(&sender);
            if let Some(e) = c.clean.get_mut(end) {
                *e = clean && own;
            }
            self.let_go(conn, sender, end);
        } else if !self.bridged_close(conn, sender, end) {
            self.refuse_quietly(Refusal::NotYours);
        }
    }
}

/// The counters of the endpoint block at `at` in `segment` (an arena), read (never mapped, never written)
/// for `List`. The words are the connection's processes' to write (either of them can write
/// anything there), so they are only copied out, for display; a short or failed read reports
/// zeros. The segment was all zeros when the service made it, so an end not made yet reports
/// zeros too (its identity's magic is not asked for: a forked child that closes what it
/// inherited clears it while the parent goes on). A fixed buffer: nothing a peer writes makes
/// this read more or allocate.
fn end_counters(segment: &OwnedFd, at: u64) -> EndCounters {
    let mut b = [0u8; END_BYTES];
    if sys::pread(segment.as_raw_fd(), &mut b, at).unwrap_or(0) < END_BYTES {
        return EndCounters::default();
    }
    counters_of(&b)
}

/// The bytes of an endpoint block up to the end of its counters.
pub(super) const END_BYTES: usize = BLOCK_COUNTERS + 8 * END_COUNTERS;

/// The state bit and counters in a copy of an endpoint block's first [`END_BYTES`].
pub(super) fn counters_of(b: &[u8; END_BYTES]) -> EndCounters {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..][..8]);
        u64::from_ne_bytes(w)
    };
    let counters = std::array::from_fn(|i| word(BLOCK_COUNTERS + 8 * i));
    let state = u32::from_ne_bytes([
        b[BLOCK_STATE],
        b[BLOCK_STATE + 1],
        b[BLOCK_STATE + 2],
        b[BLOCK_STATE + 3],
    ]);
    EndCounters {
        on_tcp: state & STATE_ON_TCP != 0,
        counters,
    }
}

/// What became of one reply sent.
enum Sent {
    Yes,
    /// The client's socket is full: again when it has room.
    NoRoom,
    /// `ETOOMANYREFS`: the sending user's descriptors in flight (sent, not yet received by
    /// anyone) reached its open-file limit (a service not run as root, with thousands of
    /// pairings' descriptors on their way). They drain as their receivers read: again later.
    TooManyInFlight,
    Broken,
}

fn send(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> Sent {
    match sys::send_msg(sock, bytes, fds) {
        Ok(()) => Sent::Yes,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent::NoRoom,
        Err(e) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => Sent::TooManyInFlight,
        Err(_) => Sent::Broken,
    }
}
