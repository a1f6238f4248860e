//! Connections over an NTB device: the rendezvous that upgrades a TCP connection out of band,
//! the per-direction rings with credits, CPU or DMA copies, and doorbell wake-ups.
//!
//! The caller (the shim, or a test) keeps the real kernel TCP socket and hands this crate its
//! fd and addresses; the transport never puts a byte on that socket and never mentions how it
//! was called (it knows nothing of LD_PRELOAD). Protocol logic lives in [`proto`] (pure); the
//! shared-memory tables in [`mod@rendezvous`]; a connection's rings in [`conn`].
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod conn;
mod device;
mod handshake;
mod look;
pub mod proto;
pub mod rendezvous;
mod segcache;
mod service;
mod settings;
mod shared;
pub mod sockdiag;
pub mod stats;
pub mod switchover;
mod sys;

use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ntbdrv::{DmaChannel, Lease, NtbDevice, VectorLease, WindowLease};

pub use conn::{
    Connection, Counter, IdleRelease, Interest, IoError, Readiness, RecvFlags, Role, Tally,
    TallySlot, ARM_GRACE,
};
pub use device::DevicePending;
use device::DeviceTransport;
pub use device::{LateOffer, LateOutcome};
/// This process's id without a system call (a fork-wiped cache: `ntbdrv::process::pid`).
pub use ntbdrv::process::pid;
pub use proto::{Endpoint, Reason};
use rendezvous::{RendezvousArea, SlotGuard};
pub use service::Offered;
pub use settings::{
    CompletionMode, SettingError, Settings, ANSWER_PATIENCE_MAX, DEFAULT_DMA_THRESHOLD,
    MAX_RX_COALESCE_US,
};
pub use shared::ProcessCounters;
pub(crate) use shared::{ProcessState, QuarantinedBlock, QUARANTINE};
pub use sys::LineSet;

/// After a sleep on a wake set (`Connection::sleep_fd`, `Transport::pending_sleep_fd`): take
/// its edges, then re-check what was waited for.
pub fn wake_consume() {
    sys::wake_consume();
}

/// Host-table tag of endpoint leases (so `pcisock stats` can find them).
pub const ENDPOINT_TAG: u32 = 0x5043_4550; // "PCEP"

/// Failure to bring the transport up in this process.
#[derive(Debug)]
pub enum OpenError {
    Device(ntbdrv::DeviceError),
    /// The host fabric service could not be reached.
    Service(fabric::ClientError),
    RendezvousArea(rendezvous::CtrlError),
    Setting(SettingError),
}

impl OpenError {
    /// The reason a flagged connection of a process whose transport failed to open stays on
    /// TCP: `NoPermission` when the device's directory or file is another user's or not open to
    /// this process, `BadConfig` for a bad setting, `NoDevice` otherwise.
    pub fn reason(&self) -> Reason {
        use ntbdrv::DeviceError as D;
        match self {
            OpenError::Device(D::ForeignDirectory { .. } | D::ForeignFile { .. }) => {
                Reason::NoPermission
            }
            OpenError::Device(D::Io { err, .. })
                if matches!(err.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) =>
            {
                Reason::NoPermission
            }
            OpenError::Setting(_) => Reason::BadConfig,
            _ => Reason::NoDevice,
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Device(e) => write!(f, "NTB device: {e}"),
            OpenError::Service(e) => e.fmt(f),
            OpenError::RendezvousArea(e) => e.fmt(f),
            OpenError::Setting(e) => e.fmt(f),
        }
    }
}

/// A pcisock listener registered on the peer host (or waiting for the link to come up).
#[derive(Debug)]
pub struct Listener {
    state: Arc<Mutex<ListenerState>>,
    /// The kernel's listening socket, once it listens (see [`Transport::kernel_listens`]).
    socket: Arc<Mutex<proto::SocketId>>,
}

#[derive(Debug)]
enum ListenerState {
    /// In the peer host's listener table.
    Published(SlotGuard),
    /// Made while the link was down: published by a thread when the link comes up.
    Waiting,
    /// Withdrawn (the listening socket closed), or the table was full at link-up.
    Gone,
    /// Published by the host fabric service (its listener id).
    Service(u64),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a pending offer stands.
// A connection is moved out of it at once, once per connect or accept: boxing it would cost an
// allocation per connection to save a few bytes of a value that lives on the stack briefly (the
// third kind of tenancy, across the bridge, took the enum past the lint's 200-byte mark).
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Connected(Connection),
    /// Stay on TCP, for this reason.
    Tcp(Reason),
    /// No answer yet (non-blocking completion).
    Waiting(Pending),
}

/// A client's offer, waiting for the server's side (or, through the host fabric service, a
/// server's accept waiting for the service's answer: [`Pending::is_accept`]).
pub enum Pending {
    Device(DevicePending),
    Service(service::Offered),
}

impl Pending {
    /// A server's accept started by [`Transport::accept_started`], not a client's offer. Pure
    /// (no lock, no allocation): a forked child asks it.
    pub fn is_accept(&self) -> bool {
        service::is_accept(self)
    }
}

/// The transport of one process: how it meets its peers (the host fabric service, or the device
/// rendezvous in memory it maps) and its settings.
pub struct Transport {
    shared: Arc<ProcessState>,
    how: How,
}

enum How {
    Device(DeviceTransport),
    Service,
}

/// How a process meets its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendezvous {
    /// It maps the device and meets its peers in the rendezvous area there.
    Device,
    /// It asks the host fabric service at `socket`; `start`: start one there if none answers.
    Service {
        socket: std::path::PathBuf,
        start: bool,
    },
}

/// Which rendezvous the environment asks for. `PCISOCK_FABRIC=device` maps the device;
/// `PCISOCK_FABRIC=service` asks the host fabric service (the system service when one answers,
/// else this user's, started on demand); a path names a service socket. Unset: the service,
/// unless the environment names a particular device to map (`PCISOCK_EMU_DIR`,
/// `PCISOCK_EMU_DEVICE`, `PCISOCK_EMU_HOST`, `PCISOCK_EMU_TOPOLOGY`, or a `PCISOCK_DEVICE` other
/// than `emu`): two hosts still meet through the device.
pub fn rendezvous(get: impl Fn(&str) -> Option<String>) -> Rendezvous {
    let set = |k: &str| get(k).is_some_and(|v| !v.is_empty());
    let service = || Rendezvous::Service {
        socket: fabric::client::default_socket(),
        start: true,
    };
    match get("PCISOCK_FABRIC").as_deref() {
        Some("device") => Rendezvous::Device,
        Some("service") => service(),
        Some(path) if !path.is_empty() => Rendezvous::Service {
            socket: path.into(),
            start: false,
        },
        _ => {
            let device_named = [
                "PCISOCK_EMU_DIR",
                "PCISOCK_EMU_DEVICE",
                "PCISOCK_EMU_HOST",
                "PCISOCK_EMU_TOPOLOGY",
            ]
            .iter()
            .any(|k| set(k))
                || get("PCISOCK_DEVICE").is_some_and(|v| !v.is_empty() && v != "emu");
            if device_named {
                Rendezvous::Device
            } else {
                service()
            }
        }
    }
}

impl Transport {
    /// Open what the environment names (see [`rendezvous()`]) with settings from the
    /// environment. `starter`: the `pcisock` program that starts a service on demand
    /// (`PCISOCK_FABRIC_BIN` overrides it).
    pub fn open_from_env(starter: Option<std::path::PathBuf>) -> Result<Transport, OpenError> {
        let get = |k: &str| std::env::var(k).ok();
        let settings = Settings::from_vars(get).map_err(OpenError::Setting)?;
        match rendezvous(get) {
            Rendezvous::Service { socket, start } => {
                let starter = get("PCISOCK_FABRIC_BIN")
                    .filter(|v| !v.is_empty())
                    .map(std::path::PathBuf::from)
                    .or(starter)
                    .filter(|_| start);
                Transport::open_service(&socket, starter.as_deref(), settings)
            }
            Rendezvous::Device => {
                let dev = ntbdrv::recommended::open_default().map_err(OpenError::Device)?;
                Transport::open(dev, settings)
            }
        }
    }

    /// Bring the transport up on `dev`: enable the link and find the rendezvous area.
    pub fn open(dev: Arc<dyn NtbDevice>, settings: Settings) -> Result<Transport, OpenError> {
        let d = DeviceTransport::open(dev, settings)?;
        Ok(Transport {
            shared: d.shared.clone(),
            how: How::Device(d),
        })
    }

    /// Meet peers through the host fabric service at `socket`; if none answers and `starter`
    /// names the `pcisock` program, start one there first.
    pub fn open_service(
        socket: &std::path::Path,
        starter: Option<&std::path::Path>,
        settings: Settings,
    ) -> Result<Transport, OpenError> {
        let link = service::Link::open(socket, starter).map_err(OpenError::Service)?;
        let shared = Arc::new(ProcessState {
            dev: None,
            service: Some(link),
            settings,
            counters: ProcessCounters::default(),
            dma: OnceLock::new(),
            quarantined: Mutex::new(Vec::new()),
            pid: ntbdrv::process::pid(),
            link: Default::default(),
        });
        Ok(Transport {
            shared,
            how: How::Service,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    pub fn counters(&self) -> &ProcessCounters {
        &self.shared.counters
    }

    /// Register the listener on `socket` (bound to `addr`; listening, or about to) so that
    /// flagged clients offer upgrades. The service takes the socket as proof; the device
    /// rendezvous publishes the address (with the link down, as soon as it comes up).
    pub fn listen(&self, socket: RawFd, addr: Endpoint) -> Result<Listener, Reason> {
        match &self.how {
            How::Device(d) => d.listen(addr),
            How::Service => service::listen(&self.shared, socket),
        }
    }

    /// Withdraw a listener now.
    pub fn unlisten(&self, l: Listener) {
        match &self.how {
            How::Device(d) => d.unlisten(l),
            How::Service => service::unlisten(&self.shared, l),
        }
    }

    /// The kernel listens on `fd`, the socket of listener `l`: from now on the listener lives
    /// exactly as long as that socket, whoever holds it. (The service reads the socket's
    /// identity itself when the listener is registered.)
    pub fn kernel_listens(&self, l: &Listener, fd: RawFd) {
        if let How::Device(d) = &self.how {
            d.kernel_listens(l, fd);
        }
    }

    /// In a new image after exec: the listener published for the inherited listening socket
    /// `fd`, taken over by this image (with the service: registered again from here).
    pub fn adopt_listener(&self, fd: RawFd) -> Option<Listener> {
        match &self.how {
            How::Device(d) => d.adopt_listener(fd),
            How::Service => service::listen(&self.shared, fd).ok(),
        }
    }

    /// This process closed its last fd of listener `l`'s socket: withdraw it unless the
    /// kernel's listening socket lives on in another process (the service keeps it exactly as
    /// long as the socket exists).
    pub fn close_listener(&self, l: Listener) {
        match &self.how {
            How::Device(d) => d.close_listener(l),
            How::Service => service::unlisten(&self.shared, l),
        }
    }

    /// Server side: the kernel accepted `tcp_fd` (`local` ← `peer`); take the client's offer,
    /// if it made one, and answer it.
    pub fn accept(
        &self,
        tcp_fd: RawFd,
        local: Endpoint,
        peer: Endpoint,
    ) -> Result<Connection, Reason> {
        match &self.how {
            How::Device(d) => d.accept(tcp_fd, local, peer),
            How::Service => service::accept(&self.shared, tcp_fd, local, peer),
        }
    }

    /// Server side, as [`Transport::accept`] but without waiting for the answer where it takes
    /// a round trip (the host fabric service): `Waiting` then, and the connection completes at
    /// its first use with [`Transport::complete`], as a client's does. Over a device the
    /// answer is written at once, and this is `accept`.
    pub fn accept_started(&self, tcp_fd: RawFd, local: Endpoint, peer: Endpoint) -> Outcome {
        let r = match &self.how {
            How::Device(d) => d.accept(tcp_fd, local, peer),
            How::Service => {
                return match service::accept_started(&self.shared, tcp_fd, local, peer) {
                    Ok(p) => Outcome::Waiting(p),
                    Err(r) => Outcome::Tcp(r),
                }
            }
        };
        match r {
            Ok(c) => Outcome::Connected(c),
            Err(r) => Outcome::Tcp(r),
        }
    }

    /// Is `p` a server's accept started by [`Transport::accept_started`] (not a client's
    /// offer)? Its answer comes at once, so a fork or a close waits for it
    /// ([`Transport::complete`]) rather than leave the child or the service guessing.
    pub fn pending_is_accept(&self, p: &Pending) -> bool {
        p.is_accept()
    }

    /// Has the answer to a client's offer arrived (through the host fabric service: taken in
    /// now; on the device: its slot looked at), without waiting? A connect whose wait for the
    /// answer ended before the server accepted (`complete_within`) leaves the offer pending, and
    /// a client that closes it unused is completed then, so that it closes as the connection it
    /// became and leaves its record.
    pub fn answer_arrived(&self, p: &Pending) -> bool {
        match (p, &self.how) {
            (Pending::Service(o), _) => service::answer_arrived(&self.shared, o),
            (Pending::Device(d), How::Device(t)) => t.answer_arrived(d),
            (Pending::Device(_), How::Service) => false,
        }
    }

    /// Offer the upgrade of a connection whose kernel connect has not chosen our port yet;
    /// [`Transport::publish`] completes it once the connect has started.
    pub fn offer_unbound(&self, remote: Endpoint, tcp_fd: RawFd) -> Result<Pending, Reason> {
        match &self.how {
            How::Device(d) => d.offer_unbound(remote, tcp_fd).map(Pending::Device),
            How::Service => service::offer(&self.shared, Endpoint::default(), remote, tcp_fd),
        }
    }

    /// Post an offer made by [`Transport::offer_unbound`] with the port the kernel chose.
    pub fn publish(&self, p: &mut Pending, local: Endpoint) {
        match (&self.how, p) {
            (How::Device(d), Pending::Device(p)) => d.publish(p, local),
            // The service reads the addresses from the socket itself.
            (_, Pending::Service(o)) => o.local = local,
            (How::Service, Pending::Device(_)) => {}
        }
    }

    /// Client side, before the TCP connect from `local` (port known) to `remote`: offer the
    /// upgrade if the peer host has a pcisock listener there.
    pub fn offer(
        &self,
        local: Endpoint,
        remote: Endpoint,
        tcp_fd: RawFd,
    ) -> Result<Pending, Reason> {
        match &self.how {
            How::Device(d) => d.offer(local, remote, tcp_fd).map(Pending::Device),
            How::Service => service::offer(&self.shared, local, remote, tcp_fd),
        }
    }

    /// The connect failed: withdraw the offer and give its resources back.
    pub fn cancel(&self, p: Pending) {
        match (&self.how, p) {
            (How::Device(d), Pending::Device(p)) => d.cancel(p),
            (_, Pending::Service(o)) => service::cancel(&self.shared, o),
            (How::Service, Pending::Device(_)) => {}
        }
    }

    /// Look for the answer to a pending offer for up to `spin`, giving the CPU away between looks.
    pub fn complete_within(&self, p: Pending, tcp_fd: RawFd, spin: Duration) -> Outcome {
        match (&self.how, p) {
            (How::Device(d), Pending::Device(p)) => d.complete_within(p, tcp_fd, spin),
            (_, Pending::Service(o)) => service::complete(&self.shared, o, tcp_fd, Some(spin), 0),
            (How::Service, Pending::Device(_)) => Outcome::Tcp(Reason::BadPeer),
        }
    }

    /// The descriptor the answer to a pending offer rings: an epoll set registers it
    /// edge-triggered (see [`Transport::pending_shared`]).
    pub fn pending_fd(&self, p: &Pending) -> RawFd {
        match (&self.how, p) {
            (How::Device(d), Pending::Device(p)) => d.pending_fd(p),
            _ => service::pending_fd(p),
        }
    }

    /// Which of these pending offers may have news (their answer arrived, or their time is
    /// up): the rest need no [`Transport::complete`] until then, or until their TCP socket
    /// shows something. A device offer always may.
    pub fn pending_news(&self, ps: &[&Pending]) -> Vec<bool> {
        let offers: Vec<&Offered> = ps
            .iter()
            .filter_map(|p| match p {
                Pending::Service(o) => Some(o),
                Pending::Device(_) => None,
            })
            .collect();
        let mut news = service::news(&self.shared, &offers).into_iter();
        ps.iter()
            .map(|p| match p {
                Pending::Service(_) => news.next().unwrap_or(true),
                Pending::Device(_) => true,
            })
            .collect()
    }

    /// Is a pending offer's line this process's shared line (never emptied: sleep on
    /// [`Transport::pending_sleep_fd`], not on the line)?
    pub fn pending_shared(&self, p: &Pending) -> bool {
        matches!(p, Pending::Service(_))
    }

    /// What a thread sleeps on (`poll`) to hear the answer to a pending offer: its line, or
    /// this thread's wake set with the shared line in it (then [`wake_consume`] after).
    pub fn pending_sleep_fd(&self, p: &Pending) -> RawFd {
        let fd = self.pending_fd(p);
        if self.pending_shared(p) {
            sys::wake_fd(fd).unwrap_or(-1)
        } else {
            fd
        }
    }

    /// Finish a client's upgrade once its TCP connect succeeded: wait (if `block`) for the
    /// server's answer, watching the TCP socket meanwhile. `early`: the bytes the caller holds
    /// for the connection (its application's sends before the answer); a caller holding some
    /// gets the offer back (`Waiting`) as soon as it is [`Transport::reaching`].
    pub fn complete(&self, p: Pending, tcp_fd: RawFd, block: bool, early: usize) -> Outcome {
        match (&self.how, p) {
            (How::Device(d), Pending::Device(p)) => d.complete(p, tcp_fd, block),
            (_, Pending::Service(o)) => {
                let patience = (!block).then_some(Duration::ZERO);
                service::complete(&self.shared, o, tcp_fd, patience, early)
            }
            (How::Service, Pending::Device(_)) => Outcome::Tcp(Reason::BadPeer),
        }
    }

    /// Has the connection of this pending offer not reached a server, so that its client's
    /// first bytes must go on TCP to reach one ([`Transport::reach`])? Through the host fabric
    /// service only: a listener's queue overflowed, and the kernel makes the server's socket
    /// only when a segment of the client's arrives (docs/HOST-SERVICE.md, *Unreached
    /// connections*).
    pub fn reaching(&self, p: &Pending) -> bool {
        matches!(p, Pending::Service(o) if service::reaching(o))
    }

    /// The caller is about to send its first `bytes` for a [`Transport::reaching`] offer on the
    /// TCP socket: true once the service keeps the count (send them now, and nothing more on
    /// TCP while the offer waits: the server's end reads exactly those as the stream's plain
    /// start); false: send nothing (the offer was answered meanwhile: complete it).
    pub fn reach(&self, p: &mut Pending, bytes: u64) -> bool {
        match p {
            Pending::Service(o) => service::reach(&self.shared, o, bytes),
            Pending::Device(_) => false,
        }
    }

    /// The connection on kernel socket `tcp_fd` stays on TCP for `reason` (`server`: the
    /// accepting end): told to the host fabric service, which keeps a host-wide history of
    /// recent fallbacks (`pcisock stats`). Does not wait; nothing to do over a device.
    pub fn report_fallback(&self, tcp_fd: RawFd, reason: Reason, server: bool) {
        if let How::Service = self.how {
            service::report_fallback(&self.shared, tcp_fd, reason, server);
        }
    }

    /// Can a flagged connection that stays on TCP because the link was down when it was made
    /// upgrade later (PROTOCOL.md §6, *Late upgrade*)? Over a device; not yet through the
    /// host fabric service.
    pub fn late_upgrades(&self) -> bool {
        matches!(self.how, How::Device(_))
    }

    /// Is the device's link up now (`false` with no device)?
    pub fn link_is_up(&self) -> bool {
        match &self.how {
            How::Device(d) => d.link_up(),
            How::Service => false,
        }
    }

    /// Client side of a late upgrade: offer it for the connection on `tcp_fd` (`local` →
    /// `remote`), whose application sent `sent` and read `read` plain bytes, and wait a moment
    /// for the answer. The caller holds every other kernel data call on the socket off meanwhile
    /// (the counts must stay exact, and a byte read now could be the server's first record).
    /// `NoListener` (none in the peer host's table yet), `NoAnswer` (withdrawn) and the lease reasons may be
    /// tried again later; `BadPeer`: the server took the offer and answered something unusable
    /// (reset the connection).
    pub fn late_upgrade(
        &self,
        tcp_fd: RawFd,
        local: Endpoint,
        remote: Endpoint,
        sent: u64,
        read: u64,
    ) -> Result<Connection, Reason> {
        match &self.how {
            How::Device(d) => d.late_upgrade(tcp_fd, local, remote, sent, read),
            How::Service => Err(Reason::Unsupported),
        }
    }

    /// Client side of a late upgrade without waiting (an event loop's non-blocking call): post
    /// the late offer for the connection `local` → `remote` whose application sent `sent`
    /// plain bytes. The caller sends nothing on the socket until [`Transport::late_settle`]
    /// says how it ended, and reads only what it peeked before a look that found no answer.
    pub fn late_offer(
        &self,
        local: Endpoint,
        remote: Endpoint,
        sent: u64,
    ) -> Result<LateOffer, Reason> {
        match &self.how {
            How::Device(d) => d.late_offer(local, remote, sent),
            How::Service => Err(Reason::Unsupported),
        }
    }

    /// Look at a late offer's answer (never waits): paired, still pending, or failed (as for
    /// [`Transport::late_upgrade`]). `read`: the plain bytes the application read so far.
    pub fn late_settle(&self, o: LateOffer, tcp_fd: RawFd, read: u64) -> LateOutcome {
        match &self.how {
            How::Device(d) => d.late_settle(o, tcp_fd, read),
            How::Service => LateOutcome::Failed(Reason::Unsupported),
        }
    }

    /// Server side of a late upgrade: the line that wakes this process's server candidates
    /// accepted on `local` when a client posts a late offer to them (or the link changes),
    /// if it has one (`DeviceTransport::late_bell`). Empty it with
    /// [`Transport::drain_late_bell`] before looking for the offers.
    pub fn late_bell(&self, local: Endpoint) -> Option<RawFd> {
        match &self.how {
            How::Device(d) => d.late_bell(&local),
            How::Service => None,
        }
    }

    /// Empty this process's late bell (clear, then look: a ring after this stays latched).
    pub fn drain_late_bell(&self) {
        if let How::Device(d) = &self.how {
            d.drain_late_bell();
        }
    }

    /// Server side of a late upgrade: answer the late offer the client of `tcp_fd` (`local` ←
    /// `peer`) posted, if any, with our plain counts (`sent`, and `read` of the client's), the
    /// caller holding the socket's other kernel data calls off. `None`: no late offer.
    pub fn late_accept(
        &self,
        tcp_fd: RawFd,
        local: Endpoint,
        peer: Endpoint,
        sent: u64,
        read: u64,
    ) -> Option<Result<Connection, Reason>> {
        match &self.how {
            How::Device(d) => d.late_accept(tcp_fd, local, peer, sent, read),
            How::Service => None,
        }
    }

    /// In a process that just exec'd a new image: pick up the NTB connection it held on
    /// kernel socket `tcp_fd` before the exec, if any.
    pub fn reattach(&self, tcp_fd: RawFd) -> Option<Outcome> {
        match &self.how {
            How::Device(d) => d.reattach(tcp_fd),
            How::Service => service::reattach(&self.shared, tcp_fd),
        }
    }

    /// This process is about to fork (from the library's fork handler, in the parent): the
    /// mappings of closed connections' segments kept for reuse are not to be inherited.
    pub fn before_fork(&self) {
        if let Some(l) = &self.shared.service {
            l.before_fork();
        }
    }

    /// This process is about to start a program in a child that shares its memory until the
    /// exec (`posix_spawn` and its relatives): the service is told as for a fork (its arenas of
    /// this process's pairs take no new connection), and nothing else is done, since the child
    /// copies no mapping.
    pub fn before_spawn(&self) {
        if let Some(l) = &self.shared.service {
            l.before_spawn();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let last = self.release_holder();
        if last {
            self.close();
        }
        // After every write into the connection's memory: the service may give it to another
        // connection of the same two processes once both ends said so.
        self.let_service_go(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingError> {
        Settings::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    /// A transport that cannot open the device says exactly why its connections stay on TCP.
    #[test]
    fn open_errors_map_to_exact_reasons() {
        use ntbdrv::DeviceError as D;
        let io = |errno| {
            OpenError::Device(D::Io {
                what: "open /x".into(),
                err: std::io::Error::from_raw_os_error(errno),
            })
        };
        assert_eq!(io(libc::EACCES).reason(), Reason::NoPermission);
        assert_eq!(io(libc::EPERM).reason(), Reason::NoPermission);
        assert_eq!(io(libc::ENOSPC).reason(), Reason::NoDevice);
        let foreign = OpenError::Device(D::ForeignDirectory {
            path: "/x".into(),
            owner: 0,
            mode: 0o700,
        });
        assert_eq!(foreign.reason(), Reason::NoPermission);
        assert_eq!(
            OpenError::Device(D::NotADevice("/x".into())).reason(),
            Reason::NoDevice
        );
        let bad = settings(&[("PCISOCK_RING_SIZE", "3")]).unwrap_err();
        assert_eq!(OpenError::Setting(bad).reason(), Reason::BadConfig);
    }

    #[test]
    fn read_coalescing_setting() {
        assert_eq!(settings(&[]).unwrap().rx_coalesce, Duration::from_micros(2));
        let s = settings(&[("PCISOCK_RX_COALESCE_US", "0")]).unwrap();
        assert_eq!(s.rx_coalesce, Duration::ZERO);
        let s = settings(&[("PCISOCK_RX_COALESCE_US", "1000")]).unwrap();
        assert_eq!(s.rx_coalesce, Duration::from_millis(1));
        for bad in ["1001", "-1", "2us", "x"] {
            let e = settings(&[("PCISOCK_RX_COALESCE_US", bad)]).unwrap_err();
            assert_eq!(e.name, "PCISOCK_RX_COALESCE_US", "{bad}");
            assert!(e.to_string().contains("0 (off) to 1000"), "{e}");
        }
    }
}
