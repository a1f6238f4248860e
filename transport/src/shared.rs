//! What every connection of a process shares: the device, its DMA channel, the process-wide
//! counters, and the endpoint blocks closed connections leave in quarantine until their peers are
//! done with them. Owns: `ProcessState`, the quarantine and the process counters. Must never hand a
//! quarantined block to a new connection while its old peer may still write into it.

use super::*;

/// Process-wide transport counters.
#[derive(Default)]
pub struct ProcessCounters {
    pub protocol_errors: AtomicU64,
    pub quarantined_reaped: AtomicU64,
    /// Connections made while the link was down that moved onto the ring once it was up
    /// (PROTOCOL.md §6, *Late upgrade*), counted by both ends.
    pub late_upgrades: AtomicU64,
    /// Idle sending directions whose peer ring pages were given back (`Connection::release_idle_tx`),
    /// the bytes they released, and those whose memory could not be (a BAR: not asked again).
    pub ring_releases: AtomicU64,
    pub ring_bytes_released: AtomicU64,
    pub ring_releases_refused: AtomicU64,
    /// What the first protocol error of this process was: the operation, the connection and
    /// the broken rule (the statistics file shows it).
    pub first_protocol_error: std::sync::OnceLock<String>,
}

pub(crate) struct QuarantinedBlock {
    /// The endpoint block: once the peer has set its FIN or RST flag it writes no more.
    pub(crate) block: ntbdrv::Region,
    pub(crate) lease: WindowLease,
    /// None for a block parked before it had a vector (see `HalfOpen::new`).
    pub(crate) bell: Option<VectorLease>,
    pub(crate) until: Instant,
    /// The peer's endpoint block, when its processes run on this host: the block waits for
    /// them (not for `until`) as long as one of them lives.
    pub(crate) peer: Option<ntbdrv::Region>,
    /// Since when no process of the peer's was seen alive (see [`HOLDER_GRACE`]).
    pub(crate) peer_gone_since: Option<Instant>,
}

/// How long the peer's processes must stay gone before its block is taken for dead: a child
/// the peer's last process forked records its pid in the peer's block right after the fork, and
/// a parent that exits at once (a daemonizing server) leaves a moment in which no listed holder
/// lives while the child will still write into our block.
pub(crate) const HOLDER_GRACE: Duration = Duration::from_millis(100);

/// State shared by all connections of the process.
pub(crate) struct ProcessState {
    /// The device, when this process maps it (the device rendezvous); `None` with the host
    /// fabric service, which gives each connection its own segments instead.
    pub dev: Option<Arc<dyn NtbDevice>>,
    /// The host fabric service, when connections are paired through it.
    pub(crate) service: Option<service::Link>,
    pub settings: Settings,
    pub counters: ProcessCounters,
    pub(crate) dma: OnceLock<Option<Mutex<Box<dyn DmaChannel>>>>,
    pub(crate) quarantined: Mutex<Vec<QuarantinedBlock>>,
    /// The process that opened the transport (a forked child shares this state).
    pub(crate) pid: u32,
    /// The device's link as last asked, shared by the connections' readiness checks.
    pub(crate) link: conn::LinkLook,
}

/// How long a closed endpoint's ring stays out of use when the peer has not confirmed it
/// stopped writing (it may be in the middle of a write when we close).
pub(crate) const QUARANTINE: Duration = Duration::from_secs(1);

impl ProcessState {
    pub(crate) fn dma(&self) -> Option<&Mutex<Box<dyn DmaChannel>>> {
        // A forked child inherits the channel object but not its engine thread: it copies by CPU.
        if self.pid != ntbdrv::process::pid() {
            return None;
        }
        self.dma
            .get_or_init(|| {
                self.dev
                    .as_ref()
                    .and_then(|d| d.dma_channel().ok())
                    .map(Mutex::new)
            })
            .as_ref()
    }

    /// Return a closed endpoint's lease and interrupt vector, now or after the quarantine.
    pub(crate) fn retire(
        &self,
        block: ntbdrv::Region,
        lease: WindowLease,
        bell: VectorLease,
        peer_done: bool,
    ) {
        self.retire_after(block, lease, bell, peer_done, None);
    }

    /// `retire` for a connection whose peer block is `peer_block`. A peer that has not made its last
    /// write (it may keep its end open for any time, as a TCP peer may, then close it, writing
    /// FIN into our block) must not find our block given to another connection: on one host
    /// the block waits while a process holding the peer's end lives. A peer on another host
    /// cannot be asked: the quarantine applies.
    pub(crate) fn retire_connected(
        &self,
        block: ntbdrv::Region,
        lease: WindowLease,
        bell: VectorLease,
        peer_done: bool,
        peer_block: ntbdrv::Region,
    ) {
        let Some(dev) = &self.dev else {
            return;
        };
        let same_host = dev.side() == dev.peer_side();
        self.retire_after(
            block,
            lease,
            bell,
            peer_done,
            same_host.then_some(peer_block),
        );
    }

    fn retire_after(
        &self,
        block: ntbdrv::Region,
        lease: WindowLease,
        bell: VectorLease,
        peer_done: bool,
        peer: Option<ntbdrv::Region>,
    ) {
        let Some(dev) = &self.dev else {
            return;
        };
        if peer_done {
            let _ = dev.release(Lease::Window(lease));
            let _ = dev.release(Lease::Vector(bell));
        } else if let Ok(mut z) = self.quarantined.lock() {
            z.push(QuarantinedBlock {
                block,
                lease,
                bell: Some(bell),
                until: Instant::now() + QUARANTINE,
                peer,
                peer_gone_since: None,
            });
        }
        self.reap();
    }

    pub(crate) fn reap(&self) {
        let now = Instant::now();
        let Some(dev) = &self.dev else {
            return;
        };
        let Ok(mut z) = self.quarantined.lock() else {
            return;
        };
        z.retain_mut(|zb| {
            let expired = match &zb.peer {
                Some(peer_block) if conn::peer_alive(peer_block) => {
                    zb.peer_gone_since = None;
                    false
                }
                Some(_) => {
                    let since = *zb.peer_gone_since.get_or_insert(now);
                    now.saturating_duration_since(since) >= HOLDER_GRACE
                }
                None => zb.until <= now,
            };
            if expired || conn::peer_finished(&zb.block) {
                let _ = dev.release(Lease::Window(zb.lease));
                if let Some(bell) = zb.bell {
                    let _ = dev.release(Lease::Vector(bell));
                }
                self.counters.quarantined_reaped.fetch_add(1, Relaxed);
                false
            } else {
                true
            }
        });
    }
}
