//! Ports and the loopback interface: free ports, LISTEN sockets read from `/proc/net/tcp{,6}` (never by
//! connecting, which would disturb iperf), and the kernel's `lo` byte counters, the independent signal of which
//! path carried the bytes. Measurements of `lo` are serialized across test processes by [`LoWindow`].

use std::fs;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use crate::fs::{FileLock, LockMode};

/// A port that was free on 127.0.0.1 a moment ago, below the kernel's ephemeral range (a port
/// from inside it, as binding port 0 gives, can be taken meanwhile as the local port of any
/// client's connect on the machine — another test's thousand short connections — and the
/// test's server then fails to bind it). Never 5001 or 5201. Ports are handed out in a
/// process-wide sequence from a start drawn from the pid and the clock, so tests of one
/// process do not get the same port, and test processes start far apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = below_ephemeral();
    let span = u32::from(hi - lo) + 1;
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Relaxed);
        let port = lo + (seed.wrapping_add(n.wrapping_mul(7919)) % span) as u16;
        if port == 5001 || port == 5201 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {lo}..={hi}");
}

/// Ports below the ephemeral range of `/proc/sys/net/ipv4/ip_local_port_range` (Linux's default
/// 32768–60999 gives 20000–32767), at least 1024.
fn below_ephemeral() -> (u16, u16) {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let hi = low.saturating_sub(1).max(2048);
    let lo = hi.saturating_sub(12767).max(1024);
    (lo, hi)
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

/// The local ports of the sockets in state LISTEN (`0A`) in the text of `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn listening_ports(proc_net_tcp: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    for line in proc_net_tcp.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if state != "0A" {
            continue;
        }
        if let Some((_, port)) = local.rsplit_once(':') {
            if let Ok(port) = u16::from_str_radix(port, 16) {
                ports.push(port);
            }
        }
    }
    ports
}

/// Whether a TCP socket (v4 or v6) in this network namespace listens on `port`.
pub fn is_listening(port: u16) -> Result<bool, String> {
    let mut any_table = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(table) {
            Ok(text) => {
                any_table = true;
                if listening_ports(&text).contains(&port) {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("read {table}: {e}")),
        }
    }
    if any_table {
        Ok(false)
    } else {
        Err("neither /proc/net/tcp nor /proc/net/tcp6 is readable".to_owned())
    }
}

/// Polls until something listens on `port`, at most `timeout`.
pub fn wait_listening(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if is_listening(port)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("nothing listens on port {port} after {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The loopback interface's counters, from `/sys/class/net/lo/statistics/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoCounters {
    /// Bytes sent on lo (each loopback packet is counted once here and once in `rx_bytes`).
    pub tx_bytes: u64,
    /// Bytes received on lo.
    pub rx_bytes: u64,
    /// Packets sent on lo.
    pub tx_packets: u64,
    /// Packets received on lo.
    pub rx_packets: u64,
}

impl LoCounters {
    /// Reads the four counters now.
    pub fn read() -> Result<LoCounters, String> {
        fn one(name: &str) -> Result<u64, String> {
            let path = format!("/sys/class/net/lo/statistics/{name}");
            let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
            text.trim()
                .parse()
                .map_err(|e| format!("{path}: {text:?}: {e}"))
        }
        Ok(LoCounters {
            tx_bytes: one("tx_bytes")?,
            rx_bytes: one("rx_bytes")?,
            tx_packets: one("tx_packets")?,
            rx_packets: one("rx_packets")?,
        })
    }

    /// What moved between `self` (earlier) and `later`.
    pub fn delta(&self, later: &LoCounters) -> LoDelta {
        LoDelta {
            tx_bytes: later.tx_bytes.wrapping_sub(self.tx_bytes),
            rx_bytes: later.rx_bytes.wrapping_sub(self.rx_bytes),
            tx_packets: later.tx_packets.wrapping_sub(self.tx_packets),
            rx_packets: later.rx_packets.wrapping_sub(self.rx_packets),
        }
    }
}

/// Bytes and packets that crossed lo during a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoDelta {
    /// Bytes sent on lo.
    pub tx_bytes: u64,
    /// Bytes received on lo.
    pub rx_bytes: u64,
    /// Packets sent on lo.
    pub tx_packets: u64,
    /// Packets received on lo.
    pub rx_packets: u64,
}

/// Fixed slack for the fast-path bound: TCP handshakes, iperf's control traffic, a little foreign traffic.
pub const FAST_PATH_SLACK: u64 = 64 * 1024;

impl LoDelta {
    /// The bytes that crossed lo: a loopback packet is counted in both tx and rx, so this is the larger of the two
    /// (not their sum).
    pub fn bytes(&self) -> u64 {
        self.tx_bytes.max(self.rx_bytes)
    }

    /// The largest lo delta a fast-path run of `transferred` payload bytes may show: 5% of it plus
    /// [`FAST_PATH_SLACK`].
    pub fn fast_path_bound(transferred: u64) -> u64 {
        transferred / 20 + FAST_PATH_SLACK
    }

    /// Ok if lo carried far less than the payload (the NTB path carried it).
    pub fn check_fast_path(&self, transferred: u64) -> Result<(), String> {
        let bound = Self::fast_path_bound(transferred);
        if self.bytes() < bound {
            Ok(())
        } else {
            Err(format!(
                "loopback carried {} bytes ({} packets) for {transferred} payload bytes; the fast path allows < {bound} \
                 (5% + {FAST_PATH_SLACK}). Either the bytes went over TCP, or something else on this machine used \
                 loopback heavily during the test",
                self.bytes(),
                self.tx_packets.max(self.rx_packets)
            ))
        }
    }

    /// Ok if lo carried at least the payload (plain TCP carried it).
    pub fn check_tcp(&self, transferred: u64) -> Result<(), String> {
        if self.bytes() >= transferred {
            Ok(())
        } else {
            Err(format!(
                "loopback carried only {} bytes for {transferred} payload bytes that should have gone over TCP",
                self.bytes()
            ))
        }
    }
}

/// What a measurement window expects lo to carry, which decides how it is serialized with other tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoExpect {
    /// Only control traffic: any number of such windows may overlap (shared lock).
    Quiet,
    /// Bulk payload over TCP: no quiet window may overlap (exclusive lock).
    Bulk,
}

/// A measurement of lo over the life of a test run, holding a machine-wide lock so that a test pushing bulk TCP
/// over lo never overlaps a test that needs lo quiet (`$TMPDIR/pcisock-iperf-tests-lo.lock`).
#[derive(Debug)]
pub struct LoWindow {
    start: LoCounters,
    _lock: FileLock,
}

impl LoWindow {
    /// Takes the lock (waiting for it) and reads the counters.
    pub fn open(expect: LoExpect) -> Result<LoWindow, String> {
        let mode = match expect {
            LoExpect::Quiet => LockMode::Shared,
            LoExpect::Bulk => LockMode::Exclusive,
        };
        let lock = FileLock::acquire("pcisock-iperf-tests-lo", mode)?;
        Ok(LoWindow {
            start: LoCounters::read()?,
            _lock: lock,
        })
    }

    /// What crossed lo since [`LoWindow::open`], so far (the lock stays held).
    pub fn delta(&self) -> Result<LoDelta, String> {
        Ok(self.start.delta(&LoCounters::read()?))
    }
}

/// One established TCP socket as the kernel counts it (`ss -tin`): its two ends, and the payload bytes it received
/// and had acknowledged by its peer. A socket's own counters, unlike lo's, do not move with other traffic on lo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    /// `ip:port` of this end.
    pub local: String,
    /// `ip:port` of the other end.
    pub peer: String,
    /// Payload bytes received (`bytes_received`; 0 when `ss` omits it).
    pub bytes_received: u64,
    /// Payload bytes sent and acknowledged (`bytes_acked`, which counts the SYN too; 0 when omitted).
    pub bytes_acked: u64,
}

/// The established TCP sockets whose local port is `port` (`ss -tinH state established ( sport = :PORT )`).
pub fn tcp_sockets(port: u16) -> Vec<TcpSocket> {
    let filter = format!("( sport = :{port} )");
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", &filter])
        .output()
        .expect("run ss");
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ss_tin(&String::from_utf8_lossy(&out.stdout))
}

/// The sockets in the text of `ss -tinH state established`: a line `Recv-Q Send-Q LOCAL PEER` per socket, then
/// an indented line of its `name:value` details.
pub fn parse_ss_tin(text: &str) -> Vec<TcpSocket> {
    let mut socks: Vec<TcpSocket> = Vec::new();
    for line in text.lines() {
        if line.starts_with(|c: char| c.is_whitespace()) {
            let Some(s) = socks.last_mut() else { continue };
            for w in line.split_whitespace() {
                let num = |k: &str| w.strip_prefix(k).and_then(|n| n.parse::<u64>().ok());
                if let Some(n) = num("bytes_received:") {
                    s.bytes_received = n;
                } else if let Some(n) = num("bytes_acked:") {
                    s.bytes_acked = n;
                }
            }
        } else {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 4 {
                socks.push(TcpSocket {
                    local: f[2].to_owned(),
                    peer: f[3].to_owned(),
                    bytes_received: 0,
                    bytes_acked: 0,
                });
            }
        }
    }
    socks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_tin() {
        let text = "0      0      127.0.0.1:5201    127.0.0.1:33385\n\t cubic wscale:10,10 bytes_sent:34560 \
                    bytes_acked:34561 segs_out:5 bytes_received:99 lastsnd:2024\n\
                    0      0      [::1]:5201 [::1]:40000\n\t cubic rto:204 bytes_acked:1\n";
        assert_eq!(
            parse_ss_tin(text),
            vec![
                TcpSocket {
                    local: "127.0.0.1:5201".into(),
                    peer: "127.0.0.1:33385".into(),
                    bytes_received: 99,
                    bytes_acked: 34561,
                },
                TcpSocket {
                    local: "[::1]:5201".into(),
                    peer: "[::1]:40000".into(),
                    bytes_received: 0,
                    bytes_acked: 1,
                },
            ]
        );
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1513 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 14422 1 0000 100 0 0 10 0
   1: 0100007F:1389 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000 20 4 30 10 -1
   2: 0100007F:0FA1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12801 1 0000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000000000000000000000000000:1452 00000000000000000000000000000000:0000 06 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
";

    #[test]
    fn parses_listen_sockets_v4() {
        // 0x1513 = 5395 and 0x0FA1 = 4001 listen; 0x1389 = 5001 is ESTABLISHED (01), not LISTEN.
        assert_eq!(listening_ports(TCP), vec![5395, 4001]);
    }

    #[test]
    fn parses_listen_sockets_v6() {
        // 0x1451 = 5201 listens; 0x1452 is TIME_WAIT (06).
        assert_eq!(listening_ports(TCP6), vec![5201]);
    }

    #[test]
    fn ignores_garbage() {
        assert!(listening_ports("header\n\nnot a line\n 0: zz:zz 0:0 0A\n").is_empty());
    }

    #[test]
    fn sees_a_real_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        wait_listening(port, Duration::from_secs(5)).unwrap();
        assert!(is_listening(port).unwrap());
        // (Not asserting the port is free after the drop: a test running in parallel may be
        // handed the same ephemeral port at once.)
        drop(listener);
    }

    #[test]
    fn free_ports_are_distinct_and_not_iperf_defaults() {
        let ports = free_ports(8);
        for (i, p) in ports.iter().enumerate() {
            assert!(*p != 5001 && *p != 5201);
            assert!(!ports[i + 1..].contains(p));
        }
    }

    #[test]
    fn lo_bounds() {
        let d = |b| LoDelta {
            tx_bytes: b,
            rx_bytes: b,
            tx_packets: 1,
            rx_packets: 1,
        };
        let gib = 1 << 30;
        assert!(d(1 << 20).check_fast_path(gib).is_ok());
        assert!(d(gib).check_fast_path(gib).is_err());
        assert!(d(gib + 100).check_tcp(gib).is_ok());
        assert!(d(1 << 20).check_tcp(gib).is_err());
        assert_eq!(LoDelta::fast_path_bound(0), FAST_PATH_SLACK);
    }

    #[test]
    fn lo_counters_are_readable_and_monotonic() {
        let a = LoCounters::read().unwrap();
        let b = LoCounters::read().unwrap();
        assert!(b.tx_bytes >= a.tx_bytes);
        let _ = a.delta(&b).bytes();
    }
}
