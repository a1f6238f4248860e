//! Process-wide state of the shim: configuration, the transport (opened on first use), logging and
//! the per-process statistics file. Owns: `ShimState` (built once, at load or on first use) and the
//! statistics file. Must never write to the application's stdout or stderr unless `PCISOCK_LOG`
//! asks, nor open the transport before a flagged socket needs it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use transport::{Counter, Reason, Transport};

use crate::config::{Config, LogLevel, Role};
use crate::sock::{Sock, State};
use crate::{sys, table};

pub struct ShimState {
    pub config: Config,
    pub program: String,
    pub log: LogLevel,
    /// `PCISOCK_STATS_FILE` as given (see [`ShimState::stats_path`]).
    pub stats_file: Option<PathBuf>,
    /// The statistics go to one file per process (a directory, or `%p` in the name): a forked
    /// child starts its own counts.
    per_process: bool,
    /// Flagged connections that fell back to TCP, by reason code.
    fallbacks: [AtomicU64; FALLBACK_CODES],
    /// The transport, or why it could not be opened (the fallback reason and the error).
    transport: OnceLock<Result<Transport, (Reason, String)>>,
    closed: Mutex<Closed>,
    /// In a forked child: `closed` was held at the fork by a thread of the parent that does not
    /// exist here, so it is never taken again (the records of closed connections are lost).
    closed_abandoned: AtomicBool,
    pub ntb_connections: AtomicU64,
    pub tcp_connections: AtomicU64,
    /// Sleeps of poll/select/epoll over NTB connections that ran out their time (a nap against
    /// a lost doorbell, or the caller's own timeout) instead of being woken.
    wait_timeouts: AtomicU64,
    /// Readiness of our connections found right after such a sleep (each ready fd or epoll
    /// registration counts once): a doorbell that should have woken the sleeper did not ring,
    /// or rang nothing it watched, and the application waited for a timer (see
    /// [`ShimState::woke_by_timer`]).
    late_wakeups: AtomicU64,
    epoch: std::time::Instant,
    last_write_ms: AtomicU64,
    /// The connections the file listed when it was last written.
    last_listed: AtomicU64,
    /// Records of closed connections came in since the file was last written.
    unwritten: AtomicBool,
}

/// Reason codes counted in the statistics file's `fallbacks` (codes are small integers).
const FALLBACK_CODES: usize = 32;

/// Least time between two idle sweeps of one thread ([`ShimState::idle_sweep`]).
const IDLE_SWEEP_MS: u64 = 250;

/// Least time between two rewrites of the statistics file while connections close.
const STATS_INTERVAL_MS: u64 = 100;
/// ... and per connection the last rewrite listed, in µs: a rewrite costs about 0.7 µs a listed
/// connection (formatting; benches/results/connsetup-session15.md), so a process that churns
/// through thousands spends at most ~2 % of its time on the file, not the 10 % of a rewrite
/// every 100 ms of 16,384 records.
const STATS_US_PER_LISTED: u64 = 40;

/// Closed connections the statistics file lists one by one (the most recent); older ones count
/// only in the totals, so a server's memory does not grow with every connection it ever had.
const LISTED_MAX: usize = 16384;

/// What closed connections leave behind: running totals, and (with a statistics file) the most
/// recent ones' records.
#[derive(Default)]
struct Closed {
    totals: Totals,
    recent: std::collections::VecDeque<Record>,
    /// Closed connections no longer listed.
    dropped: u64,
}

/// The event counters of an NTB connection that the statistics file sums (zero for TCP).
#[derive(Default, Clone, Copy)]
struct Events {
    dma: u64,
    cpu: u64,
    doorbells: u64,
    polls: u64,
    reads: u64,
    coalesced: u64,
    /// Failover to the connection's TCP socket and back, the bytes it carried then, and the
    /// time spent there (µs).
    failovers: u64,
    failbacks: u64,
    fo_tx: u64,
    fo_rx: u64,
    tcp_us: u64,
}

impl Events {
    fn of(c: &transport::Connection) -> Events {
        Events {
            dma: c.counter(Counter::DmaCopies),
            cpu: c.counter(Counter::CpuCopies),
            doorbells: c.counter(Counter::DoorbellsRung),
            polls: c.counter(Counter::Polls),
            reads: c.counter(Counter::Reads),
            coalesced: c.counter(Counter::Coalesced),
            failovers: c.counter(Counter::Failovers),
            failbacks: c.counter(Counter::Failbacks),
            fo_tx: c.counter(Counter::TcpTxBytes),
            fo_rx: c.counter(Counter::TcpRxBytes),
            tcp_us: c.tcp_micros(),
        }
    }

    fn add(&mut self, o: &Events) {
        self.dma += o.dma;
        self.cpu += o.cpu;
        self.doorbells += o.doorbells;
        self.polls += o.polls;
        self.reads += o.reads;
        self.coalesced += o.coalesced;
        self.failovers += o.failovers;
        self.failbacks += o.failbacks;
        self.fo_tx += o.fo_tx;
        self.fo_rx += o.fo_rx;
        self.tcp_us += o.tcp_us;
    }
}

/// Byte and event counts summed over connections.
#[derive(Default, Clone, Copy)]
struct Totals {
    ntb_tx: u64,
    ntb_rx: u64,
    tcp_tx: u64,
    tcp_rx: u64,
    events: Events,
}

impl Totals {
    fn add(&mut self, r: &Record) {
        if r.ntb {
            self.ntb_tx += r.tx;
            self.ntb_rx += r.rx;
        } else {
            self.tcp_tx += r.tx;
            self.tcp_rx += r.rx;
        }
        self.events.add(&r.events);
    }
}

static GLOBAL: OnceLock<ShimState> = OnceLock::new();

/// The process's shim state, built on first use from the environment.
/// The state, if something made it already (a close of an fd we never saw does not).
pub fn made() -> Option<&'static ShimState> {
    GLOBAL.get()
}

pub fn get() -> &'static ShimState {
    GLOBAL.get_or_init(|| {
        let (config, errors) = Config::from_env();
        let log = config.log_level();
        let program = std::env::args_os()
            .next()
            .and_then(|a| std::path::Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        // Bad configuration: one clear line at start (unless logging is explicitly off), then
        // the app runs with everything passed through.
        let explicit_off = std::env::var("PCISOCK_LOG").is_ok_and(|v| v.trim().eq_ignore_ascii_case("off") || v.trim() == "0");
        if !errors.is_empty() && !explicit_off {
            let mut m = String::from("pcisock: bad configuration, passing every socket through to TCP");
            if config.strict() {
                m = String::from("pcisock: bad configuration and PCISOCK_STRICT=1: flagged connections will fail");
            }
            for e in &errors {
                let _ = write!(m, "\npcisock:   {e}");
            }
            m.push('\n');
            sys::log_raw(&m);
        }
        let stats_file = std::env::var_os("PCISOCK_STATS_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
        let per_process = stats_file.as_ref().is_some_and(|f| {
            use std::os::unix::ffi::OsStrExt;
            let b = f.as_os_str().as_bytes();
            b.windows(2).any(|w| w == b"%p") || b.ends_with(b"/") || f.is_dir()
        });
        ShimState {
            config,
            program,
            log,
            stats_file,
            per_process,
            fallbacks: std::array::from_fn(|_| AtomicU64::new(0)),
            transport: OnceLock::new(),
            closed: Mutex::new(Closed::default()),
            closed_abandoned: AtomicBool::new(false),
            ntb_connections: AtomicU64::new(0),
            tcp_connections: AtomicU64::new(0),
            wait_timeouts: AtomicU64::new(0),
            late_wakeups: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            last_write_ms: AtomicU64::new(0),
            last_listed: AtomicU64::new(0),
            unwritten: AtomicBool::new(false),
        }
    })
}

impl ShimState {
    /// Log a message at `level` if `PCISOCK_LOG` allows it (raw write to stderr).
    pub fn log(&self, level: LogLevel, msg: impl FnOnce() -> String) {
        if self.log != LogLevel::Off && self.log.enables(level) {
            let mut m = format!("pcisock[{}]: ", transport::pid());
            m.push_str(&msg());
            m.push('\n');
            sys::log_raw(&m);
        }
    }

    /// The transport, opened on first use; `Err` says why it cannot be.
    pub fn transport(&self) -> Result<&Transport, &str> {
        self.transport
            .get_or_init(|| {
                // The `pcisock` that starts a service on demand: beside the library (a build
                // tree), else on PATH (an installed /usr/lib + /usr/bin layout).
                let on_path = || {
                    std::env::var_os("PATH").and_then(|p| {
                        std::env::split_paths(&p)
                            .map(|d| d.join("pcisock"))
                            .find(|p| p.is_file())
                    })
                };
                let starter = sys::library_dir()
                    .map(|d| d.join("pcisock"))
                    .filter(|p| p.is_file())
                    .or_else(on_path);
                Transport::open_from_env(starter).map_err(|e| {
                    // A bad setting is the user's mistake to fix, and under strict every flagged
                    // connection will fail for it; otherwise a missing device is a fallback.
                    let level = match e {
                        transport::OpenError::Setting(_) => LogLevel::Error,
                        _ if self.config.strict() => LogLevel::Error,
                        _ => LogLevel::Warn,
                    };
                    let reason = e.reason();
                    let e = e.to_string();
                    self.log(level, || {
                        format!("NTB transport unavailable: {e} ({reason})")
                    });
                    (reason, e)
                })
            })
            .as_ref()
            .map_err(|(_, e)| e.as_str())
    }

    /// A sleep of poll/select/epoll over NTB connections ran out its time, and the first look
    /// after it found `ready` of our connections (fds or epoll registrations) ready. Those are
    /// late: the peer published, but no wake-up reached the sleeper, so it woke only by its
    /// timer. Lost wake-ups leave no other trace (the bytes still arrive, only later), and the
    /// statistics file's `late_wakeups` against the requests served is how the tests catch
    /// them. (A publish in the microseconds between the timeout and the look counts too: rare.)
    pub fn woke_by_timer(&self, ready: usize) {
        self.wait_timeouts.fetch_add(1, Relaxed);
        if ready > 0 {
            self.late_wakeups.fetch_add(ready as u64, Relaxed);
        }
    }

    /// A readiness wait of this thread slept out a nap with nothing to report (the process is
    /// quiet): at most every [`IDLE_SWEEP_MS`] per thread, return our connections' unreturned
    /// credits and release the peer's ring pages of every sending direction idle for
    /// `PCISOCK_RING_IDLE_MS` (`transport::Connection::release_idle_tx`; a connection another
    /// thread sends on is left to that thread's own sweep). Never opens the transport.
    pub fn idle_sweep(&self) {
        thread_local! {
            static LAST: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        let Some(Ok(t)) = self.transport.get() else {
            return;
        };
        let idle_ms = u64::from(t.settings().ring_idle_ms);
        if idle_ms == 0 {
            return;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = LAST
            .try_with(|l| {
                let due = now.saturating_sub(l.get()) >= IDLE_SWEEP_MS;
                if due {
                    l.set(now);
                }
                due
            })
            .unwrap_or(false);
        if !due {
            return;
        }
        for (_, sock) in table::snapshot() {
            if let Some(c) = sock.conn.get() {
                let _ = c.release_idle_tx(now, idle_ms);
            }
        }
    }

    /// A fork is being prepared: tell the transport, if it is open (never opens it).
    pub fn before_fork(&self) {
        if let Some(Ok(t)) = self.transport.get() {
            t.before_fork();
        }
    }

    /// A program is being spawned (`fork::spawning`): tell the transport, if it is open.
    pub fn before_spawn(&self) {
        if let Some(Ok(t)) = self.transport.get() {
            t.before_spawn();
        }
    }

    /// Why flagged connections stay on TCP when the transport cannot be opened.
    pub fn unavailable(&self) -> Reason {
        match self.transport.get() {
            Some(Err((r, _))) => *r,
            _ => Reason::NoDevice,
        }
    }

    /// A flagged connection of this process, on kernel socket `fd`, stays on TCP for
    /// `reason`: counted here, and told to the host fabric service (its host-wide history) if
    /// the transport is open already (a fallback never opens it).
    pub fn count_fallback(&self, fd: libc::c_int, reason: Reason, role: Role) {
        self.tcp_connections.fetch_add(1, Relaxed);
        if let Some(n) = self.fallbacks.get(reason.code() as usize) {
            n.fetch_add(1, Relaxed);
        }
        if let Some(Ok(t)) = self.transport.get() {
            t.report_fallback(fd, reason, role == Role::Server);
        }
    }

    /// A flagged connection counted as a fallback for `reason` moved onto the NTB path after
    /// all (a late upgrade, `late`): it counts as an NTB connection from now on.
    pub fn uncount_fallback(&self, reason: Reason) {
        let down = |n: &AtomicU64| {
            let _ = n.fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
        };
        down(&self.tcp_connections);
        if let Some(n) = self.fallbacks.get(reason.code() as usize) {
            down(n);
        }
    }

    /// Where this process writes its statistics: `PCISOCK_STATS_FILE` itself; with `%p` in it,
    /// that replaced by the pid; if it names a directory (or ends in `/`),
    /// `DIR/pcisock-PID.json` in it. Asked at each write: a forked child writes its own file.
    pub fn stats_path(&self) -> Option<PathBuf> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let t = self.stats_file.as_ref()?;
        let pid = transport::pid().to_string();
        let b = t.as_os_str().as_bytes();
        if b.windows(2).any(|w| w == b"%p") {
            let mut out = Vec::with_capacity(b.len() + 8);
            let mut i = 0;
            while i < b.len() {
                if b[i..].starts_with(b"%p") {
                    out.extend_from_slice(pid.as_bytes());
                    i += 2;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            return Some(PathBuf::from(std::ffi::OsString::from_vec(out)));
        }
        if self.per_process {
            return Some(t.join(format!("pcisock-{pid}.json")));
        }
        Some(t.clone())
    }

    /// In a forked child: with one statistics file per process, the child counts only what it
    /// does itself (its parent's connections and fallbacks are in the parent's file).
    pub fn forked(&self) {
        // try_lock: a lock another thread of the parent held at the fork stays held here.
        let closed = match self.closed.try_lock() {
            Ok(c) => Some(c),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.closed_abandoned.store(true, Relaxed);
                None
            }
        };
        if !self.per_process {
            return; // one shared file: the last writer's totals, as before
        }
        if let Some(mut c) = closed {
            *c = Closed::default();
        }
        self.ntb_connections.store(0, Relaxed);
        self.tcp_connections.store(0, Relaxed);
        self.wait_timeouts.store(0, Relaxed);
        self.late_wakeups.store(0, Relaxed);
        self.fallbacks.iter().for_each(|n| n.store(0, Relaxed));
        self.last_write_ms.store(0, Relaxed);
        // The parent's unwritten records are the parent's: this child writes its file when it
        // has records of its own (else its first close would write at once, and its own
        // record, coming within the interval, would wait for an exit that `_exit` skips).
        self.unwritten.store(false, Relaxed);
    }

    /// The records of closed connections, unless a forked child lost them (`forked`).
    fn closed(&self) -> Option<std::sync::MutexGuard<'_, Closed>> {
        if self.closed_abandoned.load(Relaxed) {
            return None;
        }
        self.closed.lock().ok()
    }

    /// A tracked fd's entry is gone: keep its record (the statistics file takes it at the next
    /// [`ShimState::stats_due`] or at exit). Called from `Sock`'s `Drop`, so it only counts:
    /// no file is written from a destructor.
    pub fn record_closed(&self, sock: &Sock) {
        if let Some(rec) = Record::of(sock) {
            if let Some(mut c) = self.closed() {
                c.totals.add(&rec);
                if self.stats_file.is_some() {
                    if c.recent.len() == LISTED_MAX {
                        c.recent.pop_front();
                        c.dropped += 1;
                    }
                    c.recent.push_back(rec);
                }
            }
            self.unwritten.store(true, Relaxed);
        }
    }

    /// After a close (`close`, `close_range`, `closefrom`, `dup2`/`dup3` over a tracked fd):
    /// rewrite the statistics file if records came in since it was written. Rewriting costs time
    /// in proportion to the connections it lists: at most every STATS_INTERVAL_MS while
    /// connections close, or every STATS_US_PER_LISTED a connection it listed last time if
    /// longer, and always at exit.
    pub fn stats_due(&self) {
        if self.stats_file.is_none() || !self.unwritten.load(Relaxed) {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_write_ms.load(Relaxed);
        let every =
            STATS_INTERVAL_MS.max(self.last_listed.load(Relaxed) * STATS_US_PER_LISTED / 1000);
        if last == 0 || now.saturating_sub(last) >= every {
            self.last_write_ms.store(now.max(1), Relaxed);
            self.unwritten.store(false, Relaxed);
            self.write_stats();
        }
    }

    /// Write the statistics file (`PCISOCK_STATS_FILE`), if asked for: totals over closed and
    /// live connections. Written to a temporary file and renamed, so readers never see half.
    pub fn write_stats(&self) {
        let Some(path) = self.stats_path() else {
            return;
        };
        let path = &path;
        let (mut t, mut recs, dropped) = self
            .closed()
            .map(|c| {
                (
                    c.totals,
                    c.recent.iter().cloned().collect::<Vec<_>>(),
                    c.dropped,
                )
            })
            .unwrap_or_default();
        let live: Vec<Record> = table::snapshot()
            .iter()
            .filter_map(|(_, s)| Record::of(s))
            .collect();
        live.iter().for_each(|r| t.add(r));
        recs.extend(live);
        self.last_listed.store(recs.len() as u64, Relaxed);
        if recs.is_empty()
            && dropped == 0
            && self.ntb_connections.load(Relaxed) == 0
            && self.tcp_connections.load(Relaxed) == 0
            && (self.per_process || path.exists())
        {
            // Nothing flagged happened here (e.g. a wrapper like `timeout` that inherited the
            // variable): do not overwrite what the process that did something wrote, and with
            // a file per process, leave none.
            return;
        }
        // Frames a peer got wrong (each reset a connection); never opens the transport to ask.
        let (protocol_errors, first, late_upgrades) = match self.transport.get() {
            Some(Ok(t)) => (
                t.counters().protocol_errors.load(Relaxed),
                t.counters().first_protocol_error.get().map(|e| json_str(e)),
                t.counters().late_upgrades.load(Relaxed),
            ),
            _ => (0, None, 0),
        };
        // Idle rings given back (`idle_sweep`).
        let (ring_releases, ring_bytes_released, ring_releases_refused) = match self.transport.get()
        {
            Some(Ok(t)) => (
                t.counters().ring_releases.load(Relaxed),
                t.counters().ring_bytes_released.load(Relaxed),
                t.counters().ring_releases_refused.load(Relaxed),
            ),
            _ => (0, 0, 0),
        };
        let first = first.unwrap_or_else(|| "null".into());
        let mut fallbacks = String::new();
        for (code, n) in self.fallbacks.iter().enumerate() {
            let n = n.load(Relaxed);
            if let (true, Some(r)) = (n > 0, Reason::from_code(code as u32)) {
                let sep = if fallbacks.is_empty() { "" } else { "," };
                let _ = write!(fallbacks, "{sep}\"{}\":{n}", r.name());
            }
        }
        // Written as it is formatted, never whole in memory: a process that closed thousands of
        // connections lists up to LISTED_MAX of them (megabytes of JSON, every 100 ms).
        let tmp = path.with_extension(format!("tmp{}", transport::pid()));
        let Ok(file) = std::fs::File::create(&tmp) else {
            return;
        };
        let mut j = std::io::BufWriter::with_capacity(64 << 10, file);
        let mut ok = write!(
            j,
            "{{\"pid\":{},\"program\":{},\"ntb_connections\":{},\"tcp_connections\":{},\"ntb_tx_bytes\":{},\"ntb_rx_bytes\":{},\"tcp_tx_bytes\":{},\"tcp_rx_bytes\":{},\"dma_copies\":{},\"cpu_copies\":{},\"doorbells\":{},\"polls\":{},\"reads\":{},\"coalesced\":{},\"failovers\":{},\"failbacks\":{},\"failover_tx_bytes\":{},\"failover_rx_bytes\":{},\"failover_tcp_us\":{},\"wait_timeouts\":{},\"late_wakeups\":{},\"protocol_errors\":{protocol_errors},\"late_upgrades\":{late_upgrades},\"ring_releases\":{ring_releases},\"ring_bytes_released\":{ring_bytes_released},\"ring_releases_refused\":{ring_releases_refused},\"protocol_error\":{first},\"fallbacks\":{{{fallbacks}}},\"unlisted_connections\":{dropped},\"connections\":[",
            transport::pid(),
            json_str(&self.program),
            self.ntb_connections.load(Relaxed),
            self.tcp_connections.load(Relaxed),
            t.ntb_tx,
            t.ntb_rx,
            t.tcp_tx,
            t.tcp_rx,
            t.events.dma,
            t.events.cpu,
            t.events.doorbells,
            t.events.polls,
            t.events.reads,
            t.events.coalesced,
            t.events.failovers,
            t.events.failbacks,
            t.events.fo_tx,
            t.events.fo_rx,
            t.events.tcp_us,
            self.wait_timeouts.load(Relaxed),
            self.late_wakeups.load(Relaxed),
        )
        .is_ok();
        for (i, r) in recs.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            ok &= write!(
                j,
                "{sep}{{\"role\":\"{}\",\"path\":\"{}\",\"reason\":{},\"local\":\"{}\",\"peer\":\"{}\",\"tx_bytes\":{},\"rx_bytes\":{},\"failovers\":{},\"failbacks\":{},\"failover_tx_bytes\":{},\"failover_rx_bytes\":{},\"failover_tcp_us\":{},\"on_tcp\":{},\"plain_tx_bytes\":{},\"plain_rx_bytes\":{}}}",
                r.role,
                if r.ntb { "ntb" } else { "tcp" },
                r.reason.map_or("null".to_string(), |x| format!("\"{x}\"")),
                r.local,
                r.peer,
                r.tx,
                r.rx,
                r.events.failovers,
                r.events.failbacks,
                r.events.fo_tx,
                r.events.fo_rx,
                r.events.tcp_us,
                r.on_tcp,
                r.plain_tx,
                r.plain_rx,
            )
            .is_ok();
        }
        ok &= j.write_all(b"]}\n").is_ok();
        if ok && j.flush().is_ok() {
            let _ = std::fs::rename(&tmp, path);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// One connection in the statistics file.
#[derive(Clone)]
struct Record {
    role: Role,
    ntb: bool,
    reason: Option<Reason>,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    tx: u64,
    rx: u64,
    events: Events,
    /// Carried over its TCP socket after a failover when recorded.
    on_tcp: bool,
    /// Plain bytes an NTB connection moved over its TCP socket before a late upgrade (0 for
    /// one made on the ring).
    plain_tx: u64,
    plain_rx: u64,
}

impl Record {
    fn of(s: &Sock) -> Option<Record> {
        let base = |ntb, reason| Record {
            role: s.role,
            ntb,
            reason,
            local: s.local.to_std(),
            peer: s.peer.to_std(),
            tx: 0,
            rx: 0,
            events: Events::default(),
            on_tcp: false,
            plain_tx: 0,
            plain_rx: 0,
        };
        if let Some(c) = s.conn.get() {
            return Some(Record {
                tx: c.counter(Counter::TxBytes),
                rx: c.counter(Counter::RxBytes),
                events: Events::of(c),
                on_tcp: c.on_tcp(),
                plain_tx: s.tcp_tx.load(Relaxed),
                plain_rx: s.tcp_rx.load(Relaxed),
                ..base(true, None)
            });
        }
        // try_lock: statistics never wait for a thread that holds the entry (a client waiting for its
        // answer holds it, and the server it waits for may be the one writing these statistics).
        match &*s.state.try_lock().ok()? {
            State::Tcp(r) => Some(Record {
                tx: s.tcp_tx.load(Relaxed),
                rx: s.tcp_rx.load(Relaxed),
                ..base(false, Some(*r))
            }),
            _ => None,
        }
    }
}
