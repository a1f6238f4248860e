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
        let line = std::os::fd::AsRawFd::as_raw_fd(&half.vector);
        let t0 = Instant::now();
        let mut taken = false;
        let a = loop {
            if let Some(Ok(a)) = self.ctrl.answer(&slot) {
                if a.cookie == cookie {
                    break a;
                }
            }
            if !taken && t0.elapsed() >= LATE_PATIENCE {
                if self.ctrl.withdraw(&slot) {
                    self.ctrl.finish_offer(slot);
                    half.release(&*self.dev);
                    return Err(Reason::NoAnswer);
                }
                // The server took it: the answer is coming.
                taken = true;
            }
            if taken && t0.elapsed() >= TAKEN_PATIENCE {
                self.ctrl.finish_offer(slot);
                self.shared
                    .retire(half.own_block.clone(), half.lease, half.bell, false);
                return Err(Reason::BadPeer);
            }
            let _ = sys::poll1(line, libc::POLLIN, Some(Duration::from_millis(5)));
            ntbdrv::drain_vector(&half.vector);
        };
        self.ctrl.finish_offer(slot);
        if a.decline != 0 {
            half.release(&*self.dev);
            return Err(Reason::from_code(a.decline).unwrap_or(Reason::PeerDeclined));
        }
        // The server's plain count must cover what we read of it.
        let ring = a
            .ring
            .check(self.dev.mw_count(), self.mw_size, self.db_bits);
        let Some(tx_ring) = ring.ok().filter(|_| a.sent >= read) else {
            self.shared
                .retire(half.own_block.clone(), half.lease, half.bell, false);
            return Err(Reason::BadPeer);
        };
        let c = Connection::new(
            self.shared.clone(),
            half,
            a.ring,
            tx_ring,
            tcp_fd,
            Role::Client,
            local,
            remote,
        )?;
        c.start_late(sent, a.sent, read);
        self.shared.counters.late_upgrades.fetch_add(1, Relaxed);
        Ok(c)
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
        let me = std::process::id();
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
            .filter(|(pid, _, _)| *pid == std::process::id())
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
