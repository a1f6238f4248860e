//! Late upgrade over the device rendezvous (PROTOCOL.md §6, *Late upgrade*): a connection made
//! while the link was down moves onto the ring once the link is up. The client posts a *late*
//! offer carrying its plain byte count and waits a moment for the answer, which carries the
//! server's; both ends then start as if each direction had failed over at byte 0
//! (`Connection::start_late`), and fail-back brings them to the ring. Called by the shim with
//! the candidate's kernel data calls held off (its gate), so the counts are exact; it never
//! writes a byte on the TCP socket (the records that follow are the connection's).

use super::*;

/// How long a client waits for the server to answer a late offer before withdrawing it: the
/// server looks at its candidate's data calls, and at least every 100 ms while one waits.
const LATE_PATIENCE: Duration = Duration::from_millis(400);
/// How long a client whose late offer the server took waits for the answer (written right
/// after the take).
const TAKEN_PATIENCE: Duration = Duration::from_secs(10);
/// The lease tag of a process's late bell ("PCLB").
const LATE_BELL_TAG: u32 = 0x5043_4c42;

/// A client's late offer posted without waiting for its answer (an event loop's non-blocking
/// call): settled by a later call ([`DeviceTransport::late_settle`]).
pub struct LateOffer {
    slot: SlotGuard,
    half: conn::HalfOpen,
    cookie: u64,
    sent: u64,
    local: Endpoint,
    remote: Endpoint,
    posted: Instant,
    /// The withdraw found the offer taken: its answer is coming.
    taken: bool,
}

impl LateOffer {
    /// The line the server's answer rings (this offer's own vector).
    pub fn line(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.half.vector)
    }
}

/// What a look at a late offer's answer found.
pub enum LateOutcome {
    Paired(Box<Connection>),
    /// No answer yet (and still within its patience, or taken).
    Pending(LateOffer),
    /// Withdrawn unanswered (`NoAnswer`), declined, or broken (`BadPeer`: reset the socket).
    Failed(Reason),
}

impl DeviceTransport {
    /// Client side: offer the late upgrade of the connection on `tcp_fd` (`local` → `remote`),
    /// whose application has sent `sent` and read `read` plain bytes, and wait for the answer.
    /// `NoListener`: the peer host has no pcisock listener there (not yet, or a plain server);
    /// `NoAnswer`: withdrawn unanswered (the socket is untouched, try again later); `BadPeer`:
    /// the server answered something unusable after taking the offer (the caller resets the
    /// connection: the server may be sending records).
    pub(crate) fn late_upgrade(
        &self,
        tcp_fd: RawFd,
        local: Endpoint,
        remote: Endpoint,
        sent: u64,
        read: u64,
    ) -> Result<Connection, Reason> {
        let mut o = self.late_offer(local, remote, sent)?;
        loop {
            match self.late_settle(o, tcp_fd, read) {
                LateOutcome::Paired(c) => return Ok(*c),
                LateOutcome::Failed(r) => return Err(r),
                LateOutcome::Pending(p) => o = p,
            }
            let line = std::os::fd::AsRawFd::as_raw_fd(&o.half.vector);
            let _ = sys::poll1(line, libc::POLLIN, Some(Duration::from_millis(5)));
            ntbdrv::drain_vector(&o.half.vector);
        }
    }

    /// Client side: post a late offer for the connection `local` → `remote` whose application
    /// has sent `sent` plain bytes, and ring the server's late bell; the answer is taken by
    /// [`DeviceTransport::late_settle`]. The caller sends nothing on the socket until then.
    pub(crate) fn late_offer(
        &self,
        local: Endpoint,
        remote: Endpoint,
        sent: u64,
    ) -> Result<LateOffer, Reason> {
        let (half, offer) = self.client_offer(local, remote, Some(sent))?;
        let cookie = offer.cookie;
        let Some(slot) = self.ctrl.post_offer(&offer) else {
            half.release(&*self.dev);
            return Err(Reason::TableFull);
        };
        // Wake the server's candidates (their process's late bell, if its listener has one).
        for v in self.ctrl.listener_bells(&remote, self.same_host) {
            if v < self.dev.vector_count() {
                let _ = self.dev.peer_vector_trigger(v);
            }
        }
        Ok(LateOffer {
            slot,
            half,
            cookie,
            sent,
            local,
            remote,
            posted: Instant::now(),
            taken: false,
        })
    }

    /// Client side: take the answer to a late offer if it came (`read`: the plain bytes the
    /// application has read so far, which the server's count must cover); withdraw it once
    /// its patience has passed (unless the server took it: then wait for the answer). Never
    /// waits. The caller holds the socket's other data calls off.
    pub(crate) fn late_settle(&self, mut o: LateOffer, tcp_fd: RawFd, read: u64) -> LateOutcome {
        let a = match self.ctrl.answer(&o.slot) {
            Some(Ok(a)) if a.cookie == o.cookie => a,
            _ => {
                let waited = o.posted.elapsed();
                if !o.taken && waited >= LATE_PATIENCE {
                    if self.ctrl.withdraw(&o.slot) {
                        self.ctrl.finish_offer(o.slot);
                        o.half.release(&*self.dev);
                        return LateOutcome::Failed(Reason::NoAnswer);
                    }
                    // The server took it: the answer is coming.
                    o.taken = true;
                }
                if o.taken && waited >= TAKEN_PATIENCE {
                    self.ctrl.finish_offer(o.slot);
                    self.shared
                        .retire(o.half.own_block.clone(), o.half.lease, o.half.bell, false);
                    return LateOutcome::Failed(Reason::BadPeer);
                }
                return LateOutcome::Pending(o);
            }
        };
        let LateOffer {
            slot,
            half,
            sent,
            local,
            remote,
            ..
        } = o;
        self.ctrl.finish_offer(slot);
        if a.decline != 0 {
            half.release(&*self.dev);
            return LateOutcome::Failed(
                Reason::from_code(a.decline).unwrap_or(Reason::PeerDeclined),
            );
        }
        // The server's plain count must cover what we read of it.
        let ring = a
            .ring
            .check(self.dev.mw_count(), self.mw_size, self.db_bits);
        let Some(tx_ring) = ring.ok().filter(|_| a.sent >= read) else {
            self.shared
                .retire(half.own_block.clone(), half.lease, half.bell, false);
            return LateOutcome::Failed(Reason::BadPeer);
        };
        let c = match Connection::new(
            self.shared.clone(),
            half,
            a.ring,
            tx_ring,
            tcp_fd,
            Role::Client,
            local,
            remote,
        ) {
            Ok(c) => c,
            Err(r) => return LateOutcome::Failed(r),
        };
        c.start_late(sent, a.sent, read);
        self.shared.counters.late_upgrades.fetch_add(1, Relaxed);
        LateOutcome::Paired(Box::new(c))
    }

    /// Server side: this process's late bell, if it published a listener that takes
    /// connections to `local`: a line that a client rings after posting a late offer to it
    /// (and that a link event kicks), so that a server candidate sleeps until then instead of
    /// napping. Leased at the first ask (one vector per process, for all its listeners).
    /// `None`: no listener of ours there (a candidate accepted on an inherited listener), or
    /// no vector to lease: the candidate looks in naps.
    pub(crate) fn late_bell(&self, local: &Endpoint) -> Option<RawFd> {
        if !self.ctrl.serves(local) {
            return None;
        }
        let me = ntbdrv::process::pid();
        let mut b = lock(&self.late_bell);
        if let Some((pid, _, line)) = &*b {
            if *pid == me {
                return Some(std::os::fd::AsRawFd::as_raw_fd(&**line));
            }
            // A forked child's copy: the lease and the line are its parent's.
            *b = None;
        }
        let lease = self.dev.lease_vector(LATE_BELL_TAG).ok()?;
        let Ok(line) = self.dev.vector_fd(lease.vector) else {
            let _ = self.dev.release(ntbdrv::Lease::Vector(lease));
            return None;
        };
        ntbdrv::drain_vector(&line);
        let line = Arc::new(line);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*line);
        self.ctrl.set_bell(lease.vector);
        *b = Some((me, lease, line));
        Some(fd)
    }

    /// Empty this process's late bell.
    pub(crate) fn drain_late_bell(&self) {
        let line = lock(&self.late_bell)
            .as_ref()
            .filter(|(pid, _, _)| *pid == ntbdrv::process::pid())
            .map(|(_, _, l)| l.clone());
        if let Some(l) = line {
            ntbdrv::drain_vector(&l);
        }
    }

    /// Server side: if the client of the connection on `tcp_fd` (`local` ← `peer`, accepted
    /// while the link was down) posted a late offer, take it and answer with our plain count
    /// (`sent`; `read`: what the application read of the client's). `None`: no such offer.
    pub(crate) fn late_accept(
        &self,
        tcp_fd: RawFd,
        local: Endpoint,
        peer: Endpoint,
        sent: u64,
        read: u64,
    ) -> Option<Result<Connection, Reason>> {
        if !self.link_up() {
            return None;
        }
        let (index, generation, offer) = self.ctrl.take_late_offer(&peer, &local)?;
        // Undecodable after the take: left unanswered (its client gives up on it).
        let Ok(offer) = offer else {
            return Some(Err(Reason::BadPeer));
        };
        let decline = |reason: Reason| self.decline_offer(index, generation, &offer, reason);
        // The client's plain count must cover what we read of it.
        let peer_sent = match offer.late {
            Some(n) if n >= read => n,
            _ => return Some(Err(decline(Reason::BadPeer))),
        };
        let tx_ring = match offer
            .ring
            .check(self.dev.mw_count(), self.mw_size, self.db_bits)
        {
            Ok(r) => r,
            Err(_) => return Some(Err(decline(Reason::BadPeer))),
        };
        let slot = (index, generation);
        let c = self.accept_offer(slot, &offer, tx_ring, (tcp_fd, local, peer), sent, |c| {
            c.start_late(sent, peer_sent, read)
        });
        if c.is_ok() {
            self.shared.counters.late_upgrades.fetch_add(1, Relaxed);
        }
        Some(c)
    }
}
