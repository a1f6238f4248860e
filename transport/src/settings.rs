//! The transport's settings (`PCISOCK_*` variables that shape rings, waits and timeouts): their
//! defaults, limits and parsing. Read once when the transport opens (`Settings::from_vars`); a bad
//! value is a `SettingError`, never a panic nor a silent default.

use super::*;

/// How a side learns that the other side moved (data, credits, DMA completion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionMode {
    /// Spin: lowest latency, one busy core per waiting thread.
    Poll,
    /// Sleep at once and be woken by a doorbell interrupt.
    Doorbell,
    /// Spin for a bounded time, then sleep on the doorbell.
    Adaptive,
}

/// Transport settings (from `PCISOCK_*` variables; see docs/CONFIG.md).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Receive ring capacity per connection and direction (a power of two).
    pub ring_bytes: u64,
    pub completion: CompletionMode,
    /// Copies of at least this many bytes go to the DMA engine; smaller ones are CPU copies.
    pub dma_threshold: usize,
    /// How long `Adaptive` spins before it sleeps.
    pub spin: Duration,
    /// Read coalescing: a blocking read that found data waiting, on a connection that has not
    /// sent since its last read, keeps taking frames that arrive within this long of each
    /// other (zero: return at once, as before). See [`Connection::recv`].
    pub rx_coalesce: Duration,
    /// How long a client waits for the server's answer while the server's host accepts
    /// nothing, before it stays on TCP (a host that keeps accepting other connections extends
    /// the wait, up to [`ANSWER_PATIENCE_MAX`]).
    pub answer_timeout: Duration,
    /// `PCISOCK_STRICT=1`: a connection whose NTB path fails is reset (ECONNRESET) instead of
    /// going on over its TCP socket.
    pub strict: bool,
    /// A send that waits this long for credits while the peer's TCP socket is open moves the
    /// connection to TCP (`PCISOCK_FAILOVER_MS`; zero: never for that reason).
    pub failover_after: Duration,
    /// A sending direction whose bytes were all consumed this long ago gives the peer's ring
    /// pages back at the next idle sweep (`PCISOCK_RING_IDLE_MS`; zero: never). See
    /// [`Connection::release_idle_tx`]. Milliseconds in a `u32` (49 days): a connection holds
    /// its settings, and a `Duration` would make it bigger.
    pub ring_idle_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ring_bytes: 1 << 20,
            completion: CompletionMode::Adaptive,
            dma_threshold: DEFAULT_DMA_THRESHOLD,
            spin: Duration::from_micros(50),
            rx_coalesce: Duration::from_micros(2),
            answer_timeout: Duration::from_secs(2),
            strict: false,
            failover_after: Duration::from_secs(1),
            ring_idle_ms: 1000,
        }
    }
}

/// The longest a client waits for its answer while the server's host keeps accepting other
/// connections: a server with a thousand clients in its backlog reaches the last one late, and
/// TCP would have let those clients send meanwhile.
pub const ANSWER_PATIENCE_MAX: Duration = Duration::from_secs(60);

/// Largest `PCISOCK_RX_COALESCE_US`: coalescing is for gaps between back-to-back writes, and
/// a read may be held for up to 50 such gaps.
pub const MAX_RX_COALESCE_US: u64 = 1000;

/// Default CPU-copy/DMA threshold; see benches/results/device.md for the measurement.
pub const DEFAULT_DMA_THRESHOLD: usize = usize::MAX;

/// A bad transport setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub name: &'static str,
    pub value: String,
    pub why: String,
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={:?}: {}", self.name, self.value, self.why)
    }
}

impl Settings {
    /// Read `PCISOCK_RING_SIZE`, `PCISOCK_COMPLETION`, `PCISOCK_DMA_THRESHOLD`,
    /// `PCISOCK_SPIN_US`, `PCISOCK_RX_COALESCE_US` and `PCISOCK_ANSWER_TIMEOUT_MS` through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingError> {
        let mut s = Settings::default();
        let err = |name: &'static str, value: &str, why: &str| SettingError {
            name,
            value: value.into(),
            why: why.into(),
        };
        if let Some(v) = get("PCISOCK_RING_SIZE").filter(|v| !v.is_empty()) {
            let n = ntbdrv::parse_size(&v).map_err(|e| err("PCISOCK_RING_SIZE", &v, &e))?;
            if proto::Ring::new(n).is_none() {
                return Err(err(
                    "PCISOCK_RING_SIZE",
                    &v,
                    "a power of two between 4K and 1G",
                ));
            }
            s.ring_bytes = n;
        }
        if let Some(v) = get("PCISOCK_COMPLETION").filter(|v| !v.is_empty()) {
            s.completion = match v.as_str() {
                "poll" => CompletionMode::Poll,
                "doorbell" => CompletionMode::Doorbell,
                "adaptive" => CompletionMode::Adaptive,
                _ => {
                    return Err(err(
                        "PCISOCK_COMPLETION",
                        &v,
                        "expected poll, doorbell or adaptive",
                    ))
                }
            };
        }
        if let Some(v) = get("PCISOCK_DMA_THRESHOLD").filter(|v| !v.is_empty()) {
            s.dma_threshold = if v == "off" {
                usize::MAX
            } else {
                ntbdrv::parse_size(&v).map_err(|e| err("PCISOCK_DMA_THRESHOLD", &v, &e))? as usize
            };
        }
        if let Some(v) = get("PCISOCK_SPIN_US").filter(|v| !v.is_empty()) {
            let us: u64 = v
                .parse()
                .map_err(|_| err("PCISOCK_SPIN_US", &v, "microseconds"))?;
            s.spin = Duration::from_micros(us);
        }
        if let Some(v) = get("PCISOCK_RX_COALESCE_US").filter(|v| !v.is_empty()) {
            let us: u64 = v
                .parse()
                .ok()
                .filter(|&us| us <= MAX_RX_COALESCE_US)
                .ok_or_else(|| {
                    err(
                        "PCISOCK_RX_COALESCE_US",
                        &v,
                        "microseconds from 0 (off) to 1000",
                    )
                })?;
            s.rx_coalesce = Duration::from_micros(us);
        }
        if let Some(v) = get("PCISOCK_ANSWER_TIMEOUT_MS").filter(|v| !v.is_empty()) {
            let ms: u64 = v
                .parse()
                .map_err(|_| err("PCISOCK_ANSWER_TIMEOUT_MS", &v, "milliseconds"))?;
            s.answer_timeout = Duration::from_millis(ms.max(1));
        }
        // The shim validates the value (docs/CONFIG.md); here only "on" matters.
        s.strict = get("PCISOCK_STRICT").is_some_and(|v| {
            matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
        });
        if let Some(v) = get("PCISOCK_FAILOVER_MS").filter(|v| !v.is_empty()) {
            let ms: u64 = v
                .parse()
                .map_err(|_| err("PCISOCK_FAILOVER_MS", &v, "milliseconds (0: off)"))?;
            s.failover_after = Duration::from_millis(ms);
        }
        if let Some(v) = get("PCISOCK_RING_IDLE_MS").filter(|v| !v.is_empty()) {
            s.ring_idle_ms = v.parse().map_err(|_| {
                err(
                    "PCISOCK_RING_IDLE_MS",
                    &v,
                    "milliseconds from 0 (never) to 4294967295",
                )
            })?;
        }
        Ok(s)
    }
}

/// The settings a connection reads itself, in a connection's own memory (the fast path reads
/// them without going through the process's state) and compact: a connection carried all of
/// [`Settings`], 88 bytes of its 424 (benches/results/heap-session14.md). Durations in whole
/// units, rounded up (a nonzero setting stays nonzero) and saturating.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnSettings {
    pub dma_threshold: usize,
    spin_us: u32,
    rx_coalesce_ns: u32,
    failover_after_ms: u32,
    pub completion: CompletionMode,
    pub strict: bool,
}

/// `d` in units of `unit` nanoseconds, rounded up, saturating at `u32::MAX`.
fn units(d: Duration, unit: u128) -> u32 {
    u32::try_from(d.as_nanos().div_ceil(unit)).unwrap_or(u32::MAX)
}

impl ConnSettings {
    pub fn of(s: &Settings) -> ConnSettings {
        ConnSettings {
            dma_threshold: s.dma_threshold,
            spin_us: units(s.spin, 1_000),
            rx_coalesce_ns: units(s.rx_coalesce, 1),
            failover_after_ms: units(s.failover_after, 1_000_000),
            completion: s.completion,
            strict: s.strict,
        }
    }

    /// [`Settings::spin`].
    #[inline]
    pub fn spin(&self) -> Duration {
        Duration::from_micros(u64::from(self.spin_us))
    }

    /// [`Settings::rx_coalesce`].
    #[inline]
    pub fn rx_coalesce(&self) -> Duration {
        Duration::from_nanos(u64::from(self.rx_coalesce_ns))
    }

    /// [`Settings::failover_after`].
    pub fn failover_after(&self) -> Duration {
        Duration::from_millis(u64::from(self.failover_after_ms))
    }
}

#[cfg(test)]
mod conn_settings_tests {
    use super::*;

    #[test]
    fn a_connections_settings_round_up_and_saturate() {
        let s = Settings {
            spin: Duration::from_nanos(1_500),
            rx_coalesce: Duration::from_micros(2),
            failover_after: Duration::from_micros(1),
            ..Settings::default()
        };
        let c = ConnSettings::of(&s);
        assert_eq!(c.spin(), Duration::from_micros(2));
        assert_eq!(c.rx_coalesce(), Duration::from_micros(2));
        assert_eq!(c.failover_after(), Duration::from_millis(1));
        let d = ConnSettings::of(&Settings::default());
        assert_eq!(d.spin(), Settings::default().spin);
        assert_eq!(d.failover_after(), Settings::default().failover_after);
        let big = ConnSettings::of(&Settings {
            spin: Duration::from_secs(u64::MAX / 4),
            ..Settings::default()
        });
        assert_eq!(big.spin(), Duration::from_micros(u64::from(u32::MAX)));
        let zero = ConnSettings::of(&Settings {
            failover_after: Duration::ZERO,
            ..Settings::default()
        });
        assert_eq!(zero.failover_after(), Duration::ZERO);
    }
}
