//! The library's per-process stats file (`PCISOCK_STATS_FILE`): parsed and checked. This is pcisock's own account
//! of which path each connection took; the tests pair it with the lo counters, which pcisock cannot influence.

use std::fmt;
use std::fs;
use std::path::Path;

use serde::Deserialize;

/// Totals of one process, as the library last wrote them (at a connection close or at exit).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// The process.
    pub pid: u32,
    /// Its program name (`iperf`, `iperf3`, `echo`, …).
    pub program: String,
    /// Connections carried over the NTB path.
    pub ntb_connections: u64,
    /// Connections that stayed on TCP.
    pub tcp_connections: u64,
    /// Payload bytes sent over the NTB path.
    pub ntb_tx_bytes: u64,
    /// Payload bytes received over the NTB path.
    pub ntb_rx_bytes: u64,
    /// Bytes sent over the kernel socket on flagged connections that fell back.
    pub tcp_tx_bytes: u64,
    /// Bytes received over the kernel socket on flagged connections that fell back.
    pub tcp_rx_bytes: u64,
    /// Copies done by the DMA engine.
    pub dma_copies: u64,
    /// Copies done by the CPU.
    pub cpu_copies: u64,
    /// Doorbells rung.
    pub doorbells: u64,
    /// Polls of rings or DMA status.
    pub polls: u64,
    /// Reads that returned NTB data; absent from older libraries.
    #[serde(default)]
    pub reads: u64,
    /// Frames those reads waited for and took instead of returning (read coalescing).
    #[serde(default)]
    pub coalesced: u64,
    /// Times NTB connections moved to their TCP socket after a fault, and back.
    #[serde(default)]
    pub failovers: u64,
    #[serde(default)]
    pub failbacks: u64,
    /// Stream bytes NTB connections sent and received over their TCP socket after a failover.
    #[serde(default)]
    pub failover_tx_bytes: u64,
    #[serde(default)]
    pub failover_rx_bytes: u64,
    /// Time (µs) NTB connections' sending sides spent on TCP.
    #[serde(default)]
    pub failover_tcp_us: u64,
    /// Sleeps of poll/select/epoll over NTB connections that ran out their time (a nap against a lost doorbell,
    /// or the caller's timeout) instead of being woken; absent from older libraries.
    #[serde(default)]
    pub wait_timeouts: u64,
    /// Ready connections (fds, epoll registrations) found right after such a sleep: each is a wake-up that
    /// never came, and an application that waited for a timer (see [`Stats::check_late_wakeups`]).
    #[serde(default)]
    pub late_wakeups: u64,
    /// Ring frames a peer got wrong (each resets its connection); absent from older libraries.
    #[serde(default)]
    pub protocol_errors: u64,
    /// The first of them: operation, connection and the rule broken.
    #[serde(default)]
    pub protocol_error: Option<String>,
    /// Connections made while the link was down that moved onto the ring once it was up;
    /// absent from older libraries.
    #[serde(default)]
    pub late_upgrades: u64,
    /// One record per connection.
    pub connections: Vec<ConnStats>,
}

/// One connection in [`Stats::connections`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ConnStats {
    /// `"server"` (accepted) or `"client"` (connected).
    pub role: String,
    /// `"ntb"` or `"tcp"`.
    pub path: String,
    /// Why a `"tcp"` connection is not accelerated (`"NotFlagged"`, `"NoListener"`, `"PeerDeclined"`, …).
    pub reason: Option<String>,
    /// Local address, `ip:port`.
    pub local: String,
    /// Peer address, `ip:port`.
    pub peer: String,
    /// Payload bytes sent.
    pub tx_bytes: u64,
    /// Payload bytes received.
    pub rx_bytes: u64,
    /// Failovers and fail-backs of this connection, the bytes it carried over TCP meanwhile, and
    /// whether it was on TCP when recorded.
    #[serde(default)]
    pub failovers: u64,
    #[serde(default)]
    pub failbacks: u64,
    #[serde(default)]
    pub failover_tx_bytes: u64,
    #[serde(default)]
    pub failover_rx_bytes: u64,
    #[serde(default)]
    pub on_tcp: bool,
    /// Plain bytes a late-upgraded connection moved over TCP before it moved onto the ring.
    #[serde(default)]
    pub plain_tx_bytes: u64,
    #[serde(default)]
    pub plain_rx_bytes: u64,
}

/// The port of an `ip:port` or `[v6]:port` address.
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

impl ConnStats {
    /// Whether either end of the connection is `port` (the server's local port, the client's peer port).
    pub fn involves_port(&self, port: u16) -> bool {
        port_of(&self.local) == Some(port) || port_of(&self.peer) == Some(port)
    }
}

impl Stats {
    /// Parses the JSON text of a stats file.
    pub fn parse(text: &str) -> Result<Stats, String> {
        serde_json::from_str(text).map_err(|e| format!("bad stats JSON ({e}): {text}"))
    }

    /// Reads and parses the stats file at `path`.
    pub fn load(path: &Path) -> Result<Stats, String> {
        let text = fs::read_to_string(path).map_err(|e| {
            format!(
                "no stats file {} ({e}): the library must (re)write PCISOCK_STATS_FILE at every connection close and \
                 at exit",
                path.display()
            )
        })?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads every stats file in `dir` (`PCISOCK_STATS_FILE=DIR/`: one `pcisock-PID.json` per
    /// process), sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Stats>, String> {
        let mut paths: Vec<_> = fs::read_dir(dir)
            .map_err(|e| format!("stats directory {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Self::load(p)).collect()
    }

    /// Bytes both ways over the NTB path.
    pub fn ntb_bytes(&self) -> u64 {
        self.ntb_tx_bytes + self.ntb_rx_bytes
    }

    /// Bytes both ways over TCP on flagged connections that fell back.
    pub fn tcp_bytes(&self) -> u64 {
        self.tcp_tx_bytes + self.tcp_rx_bytes
    }

    /// The connection records that involve `port`.
    pub fn on_port(&self, port: u16) -> impl Iterator<Item = &ConnStats> {
        self.connections
            .iter()
            .filter(move |c| c.involves_port(port))
    }

    /// Checks a fast-path run: at least `min_conns` connections on `port`, all of them `"ntb"`, no TCP
    /// connection at all, and at least `min_tx` / `min_rx` bytes over NTB. The one exception is a
    /// connection its client closed before the server accepted it (`ClosedBeforeAccept`, as wrk
    /// does when its run ends): it must have carried no byte either way.
    pub fn check_ntb(
        &self,
        port: u16,
        min_conns: u64,
        min_tx: u64,
        min_rx: u64,
    ) -> Result<(), String> {
        let mut errors = Vec::new();
        if self.ntb_connections < min_conns {
            errors.push(format!(
                "ntb_connections {} < {min_conns}",
                self.ntb_connections
            ));
        }
        if self.tcp_connections != 0 {
            errors.push(format!("tcp_connections {} != 0", self.tcp_connections));
        }
        if self.protocol_errors != 0 {
            errors.push(format!(
                "protocol_errors {}: a peer broke the ring's frame rules and the connection was reset (first: {})",
                self.protocol_errors,
                self.protocol_error.as_deref().unwrap_or("not recorded")
            ));
        }
        let on_port: Vec<_> = self.on_port(port).collect();
        if (on_port.len() as u64) < min_conns {
            errors.push(format!(
                "{} connection records on port {port} < {min_conns}",
                on_port.len()
            ));
        }
        for c in &on_port {
            let closed_early = c.path == "tcp"
                && c.reason.as_deref() == Some("ClosedBeforeAccept")
                && c.tx_bytes == 0
                && c.rx_bytes == 0;
            if c.path != "ntb" && !closed_early {
                errors.push(format!(
                    "connection {} -> {} took path {:?} (reason {:?})",
                    c.local, c.peer, c.path, c.reason
                ));
            }
        }
        if self.ntb_tx_bytes < min_tx {
            errors.push(format!("ntb_tx_bytes {} < {min_tx}", self.ntb_tx_bytes));
        }
        if self.ntb_rx_bytes < min_rx {
            errors.push(format!("ntb_rx_bytes {} < {min_rx}", self.ntb_rx_bytes));
        }
        self.verdict(errors)
    }

    /// Checks a run that must have stayed on TCP: no NTB connection or byte, and at least `min_conns` records on
    /// `port` with path `"tcp"` and a reason accepted by `reason_ok`. With `min_conns == 0` the records are
    /// optional (a library may not record unflagged connections), but any that exist must satisfy the same rule.
    pub fn check_tcp(
        &self,
        port: u16,
        min_conns: u64,
        reason_ok: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let mut errors = Vec::new();
        if self.ntb_connections != 0 || self.ntb_bytes() != 0 {
            errors.push(format!(
                "ntb_connections {} / ntb bytes {} should be 0",
                self.ntb_connections,
                self.ntb_bytes()
            ));
        }
        let on_port: Vec<_> = self.on_port(port).collect();
        if (on_port.len() as u64) < min_conns {
            errors.push(format!(
                "{} connection records on port {port} < {min_conns}",
                on_port.len()
            ));
        }
        if self.tcp_connections < min_conns {
            errors.push(format!(
                "tcp_connections {} < {min_conns}",
                self.tcp_connections
            ));
        }
        for c in &on_port {
            match (&*c.path, c.reason.as_deref()) {
                ("tcp", Some(r)) if reason_ok(r) => {}
                (path, reason) => errors.push(format!(
                    "connection {} -> {}: path {path:?} reason {reason:?}, expected \"tcp\" with an accepted reason",
                    c.local, c.peer
                )),
            }
        }
        self.verdict(errors)
    }

    fn verdict(&self, errors: Vec<String>) -> Result<(), String> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "stats of {} (pid {}): {}\n  {self}",
                self.program,
                self.pid,
                errors.join("; ")
            ))
        }
    }
}

/// Checks that the processes of a request/response run (`all`: client and server processes) waited for a timer on
/// at most `max_share` of their `requests` (plus `slack`, a few races at the ends of the run): each of the
/// library's `late_wakeups` is a connection found ready only when a sleep ran out its time, a doorbell lost. Such a
/// run still carries every byte over NTB, only slower (nginx over the device once served 780 requests a second
/// instead of 200,000, its wake-ups lost), so the byte and path checks alone never see it; and a count, unlike a
/// request rate, does not depend on how loaded the machine is.
pub fn check_late_wakeups(
    all: &[&Stats],
    requests: u64,
    max_share: f64,
    slack: u64,
) -> Result<(), String> {
    let late: u64 = all.iter().map(|s| s.late_wakeups).sum();
    let timeouts: u64 = all.iter().map(|s| s.wait_timeouts).sum();
    let allowed = (requests as f64 * max_share) as u64 + slack;
    if late > allowed {
        let per: Vec<String> = all
            .iter()
            .map(|s| {
                format!(
                    "{}[{}] {} late of {} timed-out sleeps",
                    s.program, s.pid, s.late_wakeups, s.wait_timeouts
                )
            })
            .collect();
        return Err(format!(
            "{late} late wake-ups for {requests} requests (allowed {allowed}; {timeouts} sleeps ran out their time): \
             connections were found ready only when a nap or timeout ended a sleep, their doorbells lost ({})",
            per.join(", ")
        ));
    }
    Ok(())
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}]: ntb {} conns tx {} rx {}; tcp {} conns tx {} rx {}; dma {} cpu {} doorbells {} polls {}; late wake-ups {} of {} timed-out sleeps",
            self.program,
            self.pid,
            self.ntb_connections,
            self.ntb_tx_bytes,
            self.ntb_rx_bytes,
            self.tcp_connections,
            self.tcp_tx_bytes,
            self.tcp_rx_bytes,
            self.dma_copies,
            self.cpu_copies,
            self.doorbells,
            self.polls,
            self.late_wakeups,
            self.wait_timeouts
        )?;
        for c in &self.connections {
            write!(f, "\n    {} {} -> {} {}", c.role, c.local, c.peer, c.path)?;
            if let Some(r) = &c.reason {
                write!(f, " ({r})")?;
            }
            write!(f, " tx {} rx {}", c.tx_bytes, c.rx_bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"pid":123,"program":"iperf","ntb_connections":1,"tcp_connections":0,
 "ntb_tx_bytes":0,"ntb_rx_bytes":1048576,"tcp_tx_bytes":0,"tcp_rx_bytes":0,
 "dma_copies":0,"cpu_copies":17,"doorbells":3,"polls":100,
 "connections":[{"role":"server","path":"ntb","reason":null,"local":"127.0.0.1:5001","peer":"127.0.0.1:40000","tx_bytes":0,"rx_bytes":1048576}]}"#;

    const FALLBACK: &str = r#"{"pid":7,"program":"iperf3","ntb_connections":0,"tcp_connections":2,
 "ntb_tx_bytes":0,"ntb_rx_bytes":0,"tcp_tx_bytes":5000,"tcp_rx_bytes":10,
 "dma_copies":0,"cpu_copies":0,"doorbells":0,"polls":0,"extra_field":true,
 "connections":[{"role":"client","path":"tcp","reason":"NoListener","local":"127.0.0.1:40000","peer":"127.0.0.1:5201","tx_bytes":5000,"rx_bytes":10},
                {"role":"client","path":"tcp","reason":"NoListener","local":"[::1]:40002","peer":"[::1]:5201","tx_bytes":0,"rx_bytes":0}]}"#;

    #[test]
    fn parses_the_contract_example() {
        let s = Stats::parse(EXAMPLE).unwrap();
        assert_eq!(s.pid, 123);
        assert_eq!(s.program, "iperf");
        assert_eq!(s.ntb_bytes(), 1048576);
        assert_eq!(s.connections.len(), 1);
        assert_eq!(s.connections[0].reason, None);
        assert!(s.connections[0].involves_port(5001));
        assert!(s.connections[0].involves_port(40000));
        assert!(!s.connections[0].involves_port(5201));
        s.check_ntb(5001, 1, 0, 1 << 20).unwrap();
        assert!(s.check_ntb(5001, 2, 0, 0).is_err());
        assert!(s.check_ntb(5001, 1, 1, 0).is_err());
        assert!(s.check_tcp(5001, 0, |_| true).is_err());
    }

    #[test]
    fn a_protocol_error_fails_the_fast_path_check() {
        let s = Stats::parse(
            &EXAMPLE.replace(r#""polls":100,"#, r#""polls":100,"protocol_errors":1,"#),
        )
        .unwrap();
        assert_eq!(s.protocol_errors, 1);
        let err = s.check_ntb(5001, 1, 0, 1 << 20).unwrap_err();
        assert!(err.contains("protocol_errors 1"), "{err}");
        assert_eq!(Stats::parse(EXAMPLE).unwrap().protocol_errors, 0);
    }

    #[test]
    fn a_connection_closed_before_accept_is_no_fallback_only_if_empty() {
        let closed = |tx: u64| {
            EXAMPLE.replace(
                r#"}]}"#,
                &format!(
                    r#"}},{{"role":"server","path":"tcp","reason":"ClosedBeforeAccept","local":"127.0.0.1:5001","peer":"127.0.0.1:40001","tx_bytes":{tx},"rx_bytes":0}}]}}"#
                ),
            )
        };
        Stats::parse(&closed(0))
            .unwrap()
            .check_ntb(5001, 1, 0, 1 << 20)
            .unwrap();
        assert!(Stats::parse(&closed(5))
            .unwrap()
            .check_ntb(5001, 1, 0, 1 << 20)
            .is_err());
    }

    #[test]
    fn late_wake_ups_beyond_the_share_fail() {
        let mut s = Stats::parse(EXAMPLE).unwrap();
        assert_eq!((s.late_wakeups, s.wait_timeouts), (0, 0), "absent: zero");
        s.late_wakeups = 12;
        let t = Stats {
            pid: 124,
            late_wakeups: 9,
            ..s.clone()
        };
        assert!(check_late_wakeups(&[&s, &t], 20_000, 0.001, 1).is_ok());
        let e = check_late_wakeups(&[&s, &t], 19_000, 0.001, 1).unwrap_err();
        assert!(
            e.contains("21 late wake-ups for 19000 requests (allowed 20"),
            "{e}"
        );
    }

    #[test]
    fn parses_fallbacks_and_ignores_unknown_fields() {
        let s = Stats::parse(FALLBACK).unwrap();
        assert_eq!(s.tcp_bytes(), 5010);
        assert_eq!(s.on_port(5201).count(), 2);
        s.check_tcp(5201, 2, |r| !r.is_empty()).unwrap();
        assert!(s.check_tcp(5201, 2, |r| r == "NotFlagged").is_err());
        let err = s.check_ntb(5201, 1, 0, 0).unwrap_err();
        assert!(err.contains("NoListener"), "{err}");
    }

    #[test]
    fn rejects_missing_fields_and_missing_files() {
        assert!(Stats::parse(r#"{"pid":1}"#).is_err());
        let err = Stats::load(Path::new("/nonexistent/stats.json")).unwrap_err();
        assert!(err.contains("no stats file"));
    }
}
