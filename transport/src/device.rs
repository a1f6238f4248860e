//! The device rendezvous: a process that maps the NTB device itself and meets its peers
//! through the rendezvous area in shared memory (listeners published in the peer host's table,
//! offers posted before the TCP connect, answered by the server's accept, completed, and
//! reattached in a forked child or a new image). Called by [`Transport`](crate::Transport) when
//! no host fabric service pairs the process's connections; it never touches the TCP socket's
//! bytes.

use super::*;

mod late;
pub use late::{LateOffer, LateOutcome};

/// How long a new connection waits for quarantined window space before it gives up.
const LEASE_PATIENCE: Duration = Duration::from_millis(200);

/// How long a server that accepted a connection waits for an offer a client of the peer host
/// is about to post (reserved before its kernel connect chose the port; posted right after).
const CONNECTING_PATIENCE: Duration = Duration::from_millis(200);

/// The device rendezvous: a process that maps the device and meets its peers through the
/// rendezvous area in shared memory.
pub(crate) struct DeviceTransport {
    pub(super) shared: Arc<ProcessState>,
    dev: Arc<dyn NtbDevice>,
    ctrl: Arc<RendezvousArea>,
    same_host: bool,
    mw_size: u64,
    db_bits: u32,
    /// This process's late bell (`late_bell`): (pid, its lease, its line).
    late_bell: Mutex<Option<(u32, ntbdrv::VectorLease, Arc<std::os::fd::OwnedFd>)>>,
}

/// A client's offer in the device rendezvous, posted before its TCP connect, waiting for the
/// server's answer.
pub struct DevicePending {
    slot: SlotGuard,
    half: conn::HalfOpen,
    cookie: u64,
    local: Endpoint,
    remote: Endpoint,
    /// Its wait for the server's answer.
    wait: handshake::AnswerWait,
}

impl DeviceTransport {
    /// Bring the transport up on `dev`: enable the link and find the rendezvous area.
    pub(super) fn open(
        dev: Arc<dyn NtbDevice>,
        settings: Settings,
    ) -> Result<DeviceTransport, OpenError> {
        let _ = dev.link_enable();
        let ctrl = Arc::new(RendezvousArea::open(&*dev).map_err(OpenError::RendezvousArea)?);
        let same_host = dev.side() == dev.peer_side();
        let mw_size = dev.mw_align(0).map(|a| a.size_max).unwrap_or(0);
        let db_bits = dev.vector_count();
        let shared = Arc::new(ProcessState {
            dev: Some(dev.clone()),
            service: None,
            settings,
            counters: ProcessCounters::default(),
            dma: OnceLock::new(),
            quarantined: Mutex::new(Vec::new()),
            pid: ntbdrv::process::pid(),
            link: Default::default(),
        });
        Ok(DeviceTransport {
            shared,
            dev,
            ctrl,
            same_host,
            mw_size,
            db_bits,
            late_bell: Mutex::new(None),
        })
    }

    pub(crate) fn link_up(&self) -> bool {
        self.dev.link_state().up
    }

    /// Register a listener so that flagged clients on the peer host offer upgrades. With the
    /// link down (two machines: the server often starts before the other host's bridge is up)
    /// the listener is published by a thread as soon as the link comes up; until then clients
    /// stay on TCP (`LinkDown`, `NoListener`).
    ///
    /// Until [`Transport::kernel_listens`] names the kernel's listening socket, the listener
    /// lives as long as this process; from then on, as long as that socket, whoever holds it.
    pub(crate) fn listen(&self, addr: Endpoint) -> Result<Listener, Reason> {
        let socket = Arc::new(Mutex::new(proto::SocketId::default()));
        if self.link_up() {
            let slot = self
                .ctrl
                .add_listener(addr, proto::SocketId::default())
                .ok_or(Reason::TableFull)?;
            return Ok(Listener {
                state: Arc::new(Mutex::new(ListenerState::Published(slot))),
                socket,
            });
        }
        let state = Arc::new(Mutex::new(ListenerState::Waiting));
        let (st, ctrl, dev) = (state.clone(), self.ctrl.clone(), self.dev.clone());
        let sock = socket.clone();
        std::thread::Builder::new()
            .name("pcisock-listen".into())
            .spawn(move || {
                let mut seen = dev.link_state().generation;
                while !dev.link_state().up {
                    if !matches!(*lock(&st), ListenerState::Waiting) {
                        return; // withdrawn before the link came up
                    }
                    seen = dev.link_wait(seen, Duration::from_secs(1)).generation;
                }
                let mut s = lock(&st);
                if matches!(*s, ListenerState::Waiting) {
                    *s = match ctrl.add_listener(addr, *lock(&sock)) {
                        Some(slot) => ListenerState::Published(slot),
                        None => ListenerState::Gone,
                    };
                }
            })
            .map_err(|_| Reason::LinkDown)?;
        Ok(Listener { state, socket })
    }

    /// The kernel listens on `fd`, the socket of listener `l`: record its identity, so the
    /// listener is judged by that socket (a forked child or a daemon that outlives the process
    /// that listened keeps it published).
    pub(crate) fn kernel_listens(&self, l: &Listener, fd: RawFd) {
        let Ok(id) = sockdiag::socket_id(fd) else {
            return; // judged by this process, as before
        };
        // Under the state lock: the link-up thread publishes with whatever socket is known.
        let s = lock(&l.state);
        *lock(&l.socket) = id;
        if let ListenerState::Published(slot) = &*s {
            self.ctrl.set_listener_socket(slot, id);
        }
    }

    /// In a process that just exec'd a new image: the listener published (by this process
    /// before the exec, or by the process it inherited the socket from) for the kernel
    /// listening socket `fd`, if any. The new image takes it over: it answers the offers, and
    /// withdraws it when the socket is gone.
    pub(crate) fn adopt_listener(&self, fd: RawFd) -> Option<Listener> {
        let id = sockdiag::socket_id(fd).ok()?;
        let slot = self.ctrl.listener_of(id)?;
        Some(Listener {
            state: Arc::new(Mutex::new(ListenerState::Published(slot))),
            socket: Arc::new(Mutex::new(id)),
        })
    }

    /// This process closed its last fd of listener `l`'s socket (call it after the close):
    /// withdraw the listener, unless the kernel's listening socket lives on in another process
    /// (a pre-fork server's child closing its inherited copy must not withdraw its parent's).
    pub(crate) fn close_listener(&self, l: Listener) {
        let socket = *lock(&l.socket);
        let lives_on = socket.inode != 0
            && sockdiag::netns().is_ok_and(|ns| ns == socket.netns)
            && sockdiag::listening(None).is_ok_and(|v| v.contains(&socket.inode));
        if !lives_on {
            self.unlisten(l);
        }
    }

    /// Withdraw a listener now.
    pub(crate) fn unlisten(&self, l: Listener) {
        let mut s = lock(&l.state);
        if let ListenerState::Published(slot) = std::mem::replace(&mut *s, ListenerState::Gone) {
            self.ctrl.remove_listener(&slot);
        }
    }

    /// Server side: the kernel accepted `tcp_fd` (`local` ← `peer`); take the client's offer,
    /// if it made one, and answer it.
    pub(crate) fn accept(
        &self,
        tcp_fd: RawFd,
        local: Endpoint,
        peer: Endpoint,
    ) -> Result<Connection, Reason> {
        self.shared.reap();
        self.ctrl.note_accept();
        let mut taken = self.ctrl.take_offer(&peer, &local);
        // A client may be between its kernel connect and posting the offer (the kernel chose
        // its port): wait for it while such an offer is reserved for this listener. Look for
        // posted offers once more after each look for reserved ones: an offer posted between
        // the two looks is no longer reserved, and is found by the second.
        let t0 = Instant::now();
        while taken.is_none() {
            let reserved = self.ctrl.connecting_to(&local);
            taken = self.ctrl.take_offer(&peer, &local);
            if taken.is_some() || !reserved || t0.elapsed() >= CONNECTING_PATIENCE {
                break;
            }
            if t0.elapsed() < Duration::from_micros(200) {
                // The client may be runnable on this very CPU, behind us: let it post.
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let Some((index, generation, offer)) = taken else {
            // A client that closes before the server accepts withdraws its offer first; its
            // FIN (or RST) tells that apart from a client that never offered.
            return Err(match sys::peek_tcp(tcp_fd) {
                sys::Peek::Eof | sys::Peek::Reset | sys::Peek::Unusable => {
                    Reason::ClosedBeforeAccept
                }
                sys::Peek::Open | sys::Peek::Data => Reason::NoOffer,
            });
        };
        let offer = offer.map_err(|_| Reason::BadPeer)?;
        let decline = |reason: Reason| self.decline_offer(index, generation, &offer, reason);
        let tx_ring = match offer
            .ring
            .check(self.dev.mw_count(), self.mw_size, self.db_bits)
        {
            Ok(r) => r,
            Err(_) => return Err(decline(Reason::BadPeer)),
        };
        if !self.link_up() {
            return Err(decline(Reason::LinkDown));
        }
        let slot = (index, generation);
        self.accept_offer(slot, &offer, tx_ring, (tcp_fd, local, peer), 0, |_| {})
    }

    /// Decline the offer taken from table slot `index` (of `generation`) for `reason`, ringing
    /// its client if its line is one of ours to ring; returns `reason`.
    fn decline_offer(
        &self,
        index: usize,
        generation: u32,
        offer: &proto::Offer,
        reason: Reason,
    ) -> Reason {
        let a = proto::Answer {
            version: proto::PROTOCOL_VERSION,
            cookie: offer.cookie,
            decline: reason.code(),
            ring: Default::default(),
            sent: 0,
        };
        self.ctrl.write_answer(index, generation, &a);
        if offer.ring.db_bit < self.db_bits {
            let _ = self.dev.peer_vector_trigger(offer.ring.db_bit);
        }
        reason
    }

    /// Accept the offer taken from table slot `slot` (index, generation), whose ring checked
    /// out as `tx_ring`: make our end of the connection on the kernel socket `tcp` (fd, local,
    /// peer), let `start` prepare it, then answer the client with our ring and `sent` (the
    /// plain bytes we sent first: a late upgrade; 0 otherwise) and ring it. Declined (and the
    /// reason returned) if our end cannot be made.
    fn accept_offer(
        &self,
        (index, generation): (usize, u32),
        offer: &proto::Offer,
        tx_ring: proto::Ring,
        (tcp_fd, local, peer): (RawFd, Endpoint, Endpoint),
        sent: u64,
        start: impl FnOnce(&Connection),
    ) -> Result<Connection, Reason> {
        let decline = |reason: Reason| self.decline_offer(index, generation, offer, reason);
        let half = match self.half_open(Role::Server, local, peer) {
            Ok(h) => h,
            Err(r) => return Err(decline(r)),
        };
        let loc = half.loc;
        let c = Connection::new(
            self.shared.clone(),
            half,
            offer.ring,
            tx_ring,
            tcp_fd,
            Role::Server,
            local,
            peer,
        )
        .map_err(decline)?;
        start(&c);
        let a = proto::Answer {
            version: proto::PROTOCOL_VERSION,
            cookie: offer.cookie,
            decline: 0,
            ring: loc,
            sent,
        };
        self.ctrl.write_answer(index, generation, &a);
        let _ = self.dev.peer_vector_trigger(offer.ring.db_bit);
        Ok(c)
    }

    /// Client side, before the TCP connect from `local` (port known) to `remote`: if the peer
    /// host has a pcisock listener there, post an offer.
    /// Offer the upgrade of a connection whose kernel connect has not chosen our port yet: the
    /// offer is reserved now (servers that accept meanwhile wait for it) and posted by
    /// [`Transport::publish`] once the connect has started.
    pub(crate) fn offer_unbound(
        &self,
        remote: Endpoint,
        tcp_fd: RawFd,
    ) -> Result<DevicePending, Reason> {
        self.make_offer(Endpoint::default(), remote, tcp_fd, false)
    }

    /// Post an offer made by [`Transport::offer_unbound`] with the port the kernel chose.
    pub(crate) fn publish(&self, p: &mut DevicePending, local: Endpoint) {
        p.local = local;
        p.half.set_local(Role::Client, local, p.remote);
        let offer = proto::Offer {
            version: proto::PROTOCOL_VERSION,
            cookie: p.cookie,
            client: local,
            server: p.remote,
            ring: p.half.loc,
            late: None,
        };
        self.ctrl.publish_offer(&p.slot, &offer);
        p.wait = self.answer_wait();
    }

    pub(crate) fn offer(
        &self,
        local: Endpoint,
        remote: Endpoint,
        tcp_fd: RawFd,
    ) -> Result<DevicePending, Reason> {
        self.make_offer(local, remote, tcp_fd, true)
    }

    fn make_offer(
        &self,
        local: Endpoint,
        remote: Endpoint,
        tcp_fd: RawFd,
        post: bool,
    ) -> Result<DevicePending, Reason> {
        let (half, offer) = self.client_offer(local, remote, None)?;
        let cookie = offer.cookie;
        let slot = if post {
            self.ctrl.post_offer(&offer)
        } else {
            self.ctrl.reserve_offer(&offer)
        };
        match slot {
            Some(slot) => {
                // Enough for a new image to take the offer over if the process execs first.
                half.record_offer(slot.index as u32, slot.generation, cookie, tcp_fd);
                Ok(DevicePending {
                    slot,
                    half,
                    cookie,
                    local,
                    remote,
                    wait: self.answer_wait(),
                })
            }
            None => {
                half.release(&*self.dev);
                Err(Reason::TableFull)
            }
        }
    }

    /// A client's offer to `remote` (its half-open end made), unless the link is down or the
    /// peer host has no listener there; `late`: the plain bytes this end sent before (a late
    /// upgrade, PROTOCOL.md §6). Not posted yet.
    fn client_offer(
        &self,
        local: Endpoint,
        remote: Endpoint,
        late: Option<u64>,
    ) -> Result<(conn::HalfOpen, proto::Offer), Reason> {
        self.shared.reap();
        if !self.link_up() {
            return Err(Reason::LinkDown);
        }
        if !self.ctrl.find_listener(&remote, self.same_host) {
            return Err(Reason::NoListener);
        }
        let half = self.half_open(Role::Client, local, remote)?;
        let offer = proto::Offer {
            version: proto::PROTOCOL_VERSION,
            cookie: sys::random_u64(),
            client: local,
            server: remote,
            ring: half.loc,
            late,
        };
        Ok((half, offer))
    }

    /// Lease our half of a connection. Window space held by connections that just closed comes
    /// back as soon as their peers let go of it (see `ProcessState::retire`): when none is free, give
    /// those a moment (up to `LEASE_PATIENCE`) before giving up.
    fn half_open(
        &self,
        role: Role,
        local: Endpoint,
        peer: Endpoint,
    ) -> Result<conn::HalfOpen, Reason> {
        let t0 = Instant::now();
        let park = |lease: WindowLease, block: ntbdrv::Region, peer: Option<ntbdrv::Region>| {
            if let Ok(mut z) = self.shared.quarantined.lock() {
                z.push(QuarantinedBlock {
                    block,
                    lease,
                    bell: None,
                    until: Instant::now() + QUARANTINE,
                    peer,
                    peer_gone_since: None,
                });
            }
        };
        loop {
            match conn::HalfOpen::new(
                &*self.dev,
                self.shared.settings.ring_bytes,
                role,
                local,
                peer,
                &park,
            ) {
                Err(r @ (Reason::NoWindowSpace | Reason::NoDoorbell | Reason::TableFull)) => {
                    let waiting = self
                        .shared
                        .quarantined
                        .lock()
                        .map(|z| !z.is_empty())
                        .unwrap_or(false);
                    if !waiting || t0.elapsed() >= LEASE_PATIENCE {
                        return Err(r);
                    }
                    std::thread::sleep(Duration::from_micros(500));
                    self.shared.reap();
                }
                r => return r,
            }
        }
    }

    /// The connect failed: withdraw the offer and give its resources back.
    pub(crate) fn cancel(&self, p: DevicePending) {
        let took = !self.ctrl.withdraw(&p.slot);
        self.ctrl.finish_offer(p.slot);
        // If the server took the offer it may write into our ring: quarantine it.
        self.shared
            .retire(p.half.own_block.clone(), p.half.lease, p.half.bell, !took);
    }

    /// Look for the answer to a pending offer for up to `spin`, giving the CPU away before each
    /// look ([`crate::look::yielding`]: the server may need this very CPU to accept); the server
    /// usually accepts within microseconds of the connect, and a connection that is complete
    /// before the application forks or execs is simpler to hand on.
    pub(crate) fn complete_within(
        &self,
        p: DevicePending,
        tcp_fd: RawFd,
        spin: Duration,
    ) -> Outcome {
        let arrived = || self.ctrl.answer(&p.slot).is_some();
        if arrived() || crate::look::yielding(spin, arrived) {
            return self.complete(p, tcp_fd, false);
        }
        Outcome::Waiting(Pending::Device(p))
    }

    /// The doorbell line a pending client can poll for its answer.
    pub(crate) fn pending_fd(&self, p: &DevicePending) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&p.half.vector)
    }

    /// Finish a client's upgrade once its TCP connect succeeded: wait (if `block`) for the
    /// server's answer, watching the TCP socket meanwhile. The wait ends after the answer
    /// timeout without an accept on the server's host, or after [`ANSWER_PATIENCE_MAX`]. This
    /// loop only looks and acts; [`handshake::AnswerWait`] decides.
    pub(crate) fn complete(&self, mut p: DevicePending, tcp_fd: RawFd, block: bool) -> Outcome {
        use handshake::{Action, Seen, TcpSays};
        loop {
            let answer = self.ctrl.answer(&p.slot);
            let seen = match &answer {
                Some(Ok(a)) if a.cookie == p.cookie => Seen::Ours,
                Some(_) => Seen::Foreign,
                None => Seen::Nothing,
            };
            let now = Instant::now();
            let peer_accepts = self.ctrl.peer_accepts();
            // A peer that talks over TCP, or hangs up, is not upgrading.
            let tcp = match seen {
                Seen::Nothing if !matches!(sys::peek_tcp(tcp_fd), sys::Peek::Open) => {
                    TcpSays::TalksOrHungUp
                }
                _ => TcpSays::Quiet,
            };
            let o = handshake::Observed {
                answer: seen,
                peer_accepts,
                tcp,
            };
            let mut action = p.wait.step(now, o, block);
            if action == Action::Withdraw {
                let ok = self.ctrl.withdraw(&p.slot);
                action = p.wait.withdrawn(now, ok, block);
            }
            match (action, answer) {
                (Action::Finish, Some(Ok(a))) => return self.finish(p, a, tcp_fd),
                (Action::Finish | Action::BadPeer, _) => {
                    self.ctrl.finish_offer(p.slot);
                    p.half.release(&*self.dev);
                    return Outcome::Tcp(Reason::BadPeer);
                }
                (Action::GiveUp { quarantine: false }, _) => {
                    self.ctrl.finish_offer(p.slot);
                    p.half.release(&*self.dev);
                    return Outcome::Tcp(Reason::NoAnswer);
                }
                // The server took the offer: it may still write into our ring.
                (Action::GiveUp { quarantine: true }, _) => {
                    self.ctrl.finish_offer(p.slot);
                    self.shared
                        .retire(p.half.own_block.clone(), p.half.lease, p.half.bell, false);
                    return Outcome::Tcp(Reason::NoAnswer);
                }
                (Action::Pending, _) => return Outcome::Waiting(Pending::Device(p)),
                (Action::Nap(nap), _) => {
                    let _ = sys::poll2(self.pending_fd(&p), tcp_fd, Some(nap));
                    ntbdrv::drain_vector(&p.half.vector);
                }
                // `withdrawn` never asks for another withdraw; were it to, look again.
                (Action::Withdraw, _) => {}
            }
        }
    }

    /// Has the server answered offer `p`? A look at the answer slot, nothing taken or waited
    /// for (the answer is still read and checked by the completion).
    pub(crate) fn answer_arrived(&self, p: &DevicePending) -> bool {
        self.ctrl.answer(&p.slot).is_some()
    }

    /// A new wait for the answer to an offer posted now.
    fn answer_wait(&self) -> handshake::AnswerWait {
        let timeout = self.shared.settings.answer_timeout;
        handshake::AnswerWait::new(Instant::now(), self.ctrl.peer_accepts(), timeout)
    }

    /// In a process that just exec'd a new image: pick up the NTB connection it held on
    /// kernel socket `tcp_fd` before the exec, if any.
    pub(crate) fn reattach(&self, tcp_fd: RawFd) -> Option<Outcome> {
        let leases = self.dev.window_leases(ENDPOINT_TAG);
        for l in leases {
            if let Some(c) = Connection::reattach(self.shared.clone(), l, tcp_fd) {
                return Some(Outcome::Connected(c));
            }
            if let Some((half, index, generation, cookie, local, remote)) =
                conn::HalfOpen::reattach(&*self.dev, l, tcp_fd)
            {
                let slot = SlotGuard {
                    index: index as usize,
                    generation,
                };
                let p = DevicePending {
                    slot,
                    half,
                    cookie,
                    local,
                    remote,
                    wait: self.answer_wait(),
                };
                return Some(self.complete(p, tcp_fd, false));
            }
        }
        None
    }

    fn finish(&self, p: DevicePending, a: proto::Answer, tcp_fd: RawFd) -> Outcome {
        let DevicePending {
            slot,
            half,
            local,
            remote,
            ..
        } = p;
        self.ctrl.finish_offer(slot);
        if a.decline != 0 {
            half.release(&*self.dev);
            return Outcome::Tcp(Reason::from_code(a.decline).unwrap_or(Reason::PeerDeclined));
        }
        let tx_ring = match a
            .ring
            .check(self.dev.mw_count(), self.mw_size, self.db_bits)
        {
            Ok(r) => r,
            Err(_) => {
                // The server thinks it is connected: it may write into our ring.
                self.shared
                    .retire(half.own_block.clone(), half.lease, half.bell, false);
                return Outcome::Tcp(Reason::BadPeer);
            }
        };
        match Connection::new(
            self.shared.clone(),
            half,
            a.ring,
            tx_ring,
            tcp_fd,
            Role::Client,
            local,
            remote,
        ) {
            Ok(c) => Outcome::Connected(c),
            Err(r) => Outcome::Tcp(r),
        }
    }
}
