//! `pcisock stats`: the live NTB connections of this host, read out of the device's host table
//! (every endpoint keeps its identity and counters in its own window lease). It only reads: it
//! never takes a lease nor writes into the device.

use std::fmt::Write as _;

use ntbdrv::emu::EmuDevice;
use transport::conn::COUNTER_NAMES;
use transport::stats::EndpointStats;

use crate::cli::{unexpected, Arg, Args, CliError};
use crate::device::{self, Found};
use serde::Serialize;

pub const HELP: &str = "\
List the live NTB connections of this host's (emulated) device, with their counters.

Usage: pcisock stats [--json]

Options:
      --json     Print one JSON object: {\"fabric\":…, \"device\":…, \"leases\":[…],
                 \"connections\":[…]} (\"fabric\": null when no service answers)
  -h, --help     Print this help

Shows the device (path, topology, windows, doorbells, DMA channels, link, faults), the leases
each process holds, and per connection: pid, role, local and peer address, path (ntb, or
tcp-failover while its sending side is on its TCP socket after a link fault) and the counters
tx/rx bytes and frames, DMA and CPU copies, doorbells rung, polls, sleeps, DMA fallbacks, reads
and coalesced frames (PCISOCK_RX_COALESCE_US), failovers and fail-backs, bytes sent and received
over TCP after a failover and microseconds on TCP. The device is the one PCISOCK_EMU_DIR, PCISOCK_EMU_DEVICE and PCISOCK_EMU_HOST name;
it is never created here.

Through the host fabric service (the default on one host) connections are not in a device
this command can read: it prints the service's counts and its live connections first, one row
per end (connection, pid, role, local and peer address, path, ring size and the same counters,
which the service reads from the connection's memory: 0 for an end not made yet); then the
recent connections of every process on the host that stayed on TCP (the last 64: age, pid,
uid, side, addresses as the kernel had them, reason). Over a device,
connections that fell back to TCP appear, with their reason codes, in the per-process stats
file (pcisock run --stats-file PATH, or PCISOCK_STATS_FILE).
Decode a reason with 'pcisock explain REASON'.

Exit status: 0 (also when there is no device yet), 1 if the device cannot be read, 2 on a usage error.";

/// The live endpoints of this side: (window, stats).
fn endpoints(dev: &EmuDevice) -> Vec<(u32, EndpointStats)> {
    dev.leases()
        .into_iter()
        .filter(|l| l.kind == "window" && l.tag == transport::ENDPOINT_TAG)
        .filter_map(|l| {
            transport::stats::read_endpoint(dev, l.index, l.offset, l.len).map(|s| (l.index, s))
        })
        .collect()
}

fn role_name(r: transport::Role) -> &'static str {
    match r {
        transport::Role::Client => "client",
        transport::Role::Server => "server",
    }
}

/// The PATH of a live NTB connection: `tcp-failover` while its sending side is on its TCP
/// socket after a fault (it returns to the ring when the link is back).
fn path_name(on_tcp: bool) -> &'static str {
    if on_tcp {
        "tcp-failover"
    } else {
        "ntb"
    }
}

fn text(dev: &EmuDevice, out: &mut String) {
    device::summary_text(dev, out);
    device::leases_text(dev, out);
    let eps = endpoints(dev);
    if eps.is_empty() {
        out.push_str("connections: none live on the NTB path\n");
        return;
    }
    let _ = writeln!(out, "connections ({}):", eps.len());
    let mut header: Vec<String> = ["PID", "ROLE", "LOCAL", "PEER", "PATH"]
        .map(String::from)
        .to_vec();
    header.extend(COUNTER_NAMES.iter().map(|n| n.to_ascii_uppercase()));
    let mut rows = vec![header];
    for (_, s) in &eps {
        let mut row = vec![
            s.info.pid.to_string(),
            role_name(s.info.role).to_owned(),
            s.info.local.to_std().to_string(),
            s.info.peer.to_std().to_string(),
            path_name(s.on_tcp).to_owned(),
        ];
        row.extend(s.counters.iter().map(u64::to_string));
        rows.push(row);
    }
    device::table(&rows, out);
}

/// `stats --json`: the device, its lease table and the live connections.
#[derive(Serialize)]
struct StatsJson {
    /// The host fabric service, if one answers (`null` otherwise).
    fabric: Option<FabricJson>,
    device: device::SummaryJson,
    leases: Vec<device::LeasesJson>,
    connections: Vec<ConnectionJson>,
}

#[derive(Serialize)]
struct ConnectionJson {
    pid: u32,
    role: &'static str,
    local: String,
    peer: String,
    path: &'static str,
    window: u32,
    counters: Counters,
}

/// A connection's counters as an object, keyed by name in [`COUNTER_NAMES`]' order.
struct Counters(Vec<u64>);

impl Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(COUNTER_NAMES.iter().zip(&self.0))
    }
}

fn json_object(dev: &EmuDevice, fabric: Option<FabricJson>) -> String {
    let connections = endpoints(dev)
        .iter()
        .map(|(mw, s)| ConnectionJson {
            pid: s.info.pid,
            role: role_name(s.info.role),
            local: s.info.local.to_std().to_string(),
            peer: s.info.peer.to_std().to_string(),
            path: path_name(s.on_tcp),
            window: *mw,
            counters: Counters(s.counters.to_vec()),
        })
        .collect();
    let all = StatsJson {
        fabric,
        device: device::summary_json(dev),
        leases: device::leases_json(dev),
        connections,
    };
    serde_json::to_string(&all).unwrap_or_default() + "\n"
}

/// The host fabric service this environment's processes use, if one answers: its counts, its
/// live connections with each end's counters (read by the service from the connection's
/// segment) and the host's recent fallbacks.
struct Fabric {
    socket: std::path::PathBuf,
    status: fabric::wire::Status,
    list: Vec<fabric::wire::Entry>,
    history: Vec<fabric::wire::Fallen>,
}

fn fabric_service() -> Option<Fabric> {
    let transport::Rendezvous::Service { socket, .. } =
        transport::rendezvous(|k| std::env::var(k).ok())
    else {
        return None;
    };
    let mut c = fabric::Client::connect(&socket).ok()?;
    let (status, list) = (c.status().ok()?, c.list().ok()?);
    let history = c.history().unwrap_or_default();
    Some(Fabric {
        socket,
        status,
        list,
        history,
    })
}

fn addr(a: (fabric::wire::Addr, u16)) -> String {
    transport::Endpoint::from(a).to_std().to_string()
}

/// One end of a service connection, as a row: (pid, role, local, peer, its counters).
fn service_ends(
    e: &fabric::wire::Entry,
) -> [(
    u32,
    &'static str,
    String,
    String,
    &fabric::wire::EndCounters,
); 2] {
    [
        (
            e.client_pid,
            "client",
            addr(e.client),
            addr(e.server),
            &e.ends[0],
        ),
        (
            e.server_pid,
            "server",
            addr(e.server),
            addr(e.client),
            &e.ends[1],
        ),
    ]
}

fn fabric_text(f: &Fabric, out: &mut String) {
    let s = &f.status;
    let _ = writeln!(
        out,
        "fabric:     service pid {} at {}: {} connections, {} listeners, window space {} of {} bytes",
        s.service_pid,
        f.socket.display(),
        s.connections,
        s.listeners,
        s.window_used,
        s.window_bytes
    );
    if !f.list.is_empty() {
        let mut header: Vec<String> = ["CONN", "PID", "ROLE", "LOCAL", "PEER", "PATH", "RING"]
            .map(String::from)
            .to_vec();
        header.extend(COUNTER_NAMES.iter().map(|n| n.to_ascii_uppercase()));
        let mut rows = vec![header];
        for e in &f.list {
            for (pid, role, local, peer, end) in service_ends(e) {
                let mut row = vec![
                    e.conn.to_string(),
                    // 0: the end is on the other host (a bridged connection), or not made yet.
                    if pid == 0 {
                        "-".into()
                    } else {
                        pid.to_string()
                    },
                    role.to_owned(),
                    local,
                    peer,
                    path_name(end.on_tcp).to_owned(),
                    format!("{}K", e.ring_bytes >> 10),
                ];
                row.extend(end.counters.iter().map(u64::to_string));
                rows.push(row);
            }
        }
        device::table(&rows, out);
    }
    if f.history.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  recent fallbacks to TCP, host-wide, oldest first:\n  AGE  PID  UID  SIDE  LOCAL  ->  PEER  REASON"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for h in &f.history {
        let _ = writeln!(
            out,
            "  {}s  {}  {}  {}  {}  ->  {}  {}",
            now.saturating_sub(h.when),
            h.pid,
            h.uid,
            side_name(h.server),
            addr(h.local),
            addr(h.peer),
            reason_name(h.reason),
        );
    }
}

fn side_name(server: bool) -> &'static str {
    if server {
        "server"
    } else {
        "client"
    }
}

fn reason_name(code: u32) -> String {
    transport::Reason::from_code(code).map_or_else(|| format!("code {code}"), |r| r.to_string())
}

/// `stats --json`'s `fabric`: the service, one entry per connection end (as `connections` of
/// a device), the recent fallbacks.
#[derive(Serialize)]
struct FabricJson {
    socket: String,
    service_pid: u32,
    listeners: u64,
    window_used: u64,
    window_bytes: u64,
    connections: Vec<ServiceEndJson>,
    fallbacks: Vec<FallbackJson>,
}

#[derive(Serialize)]
struct ServiceEndJson {
    conn: u64,
    pid: u32,
    role: &'static str,
    local: String,
    peer: String,
    path: &'static str,
    ring_bytes: u64,
    counters: Counters,
}

#[derive(Serialize)]
struct FallbackJson {
    when: u64,
    pid: u32,
    uid: u32,
    side: &'static str,
    local: String,
    peer: String,
    reason: u32,
    reason_name: String,
}

fn fabric_json(f: &Fabric) -> FabricJson {
    let connections = f
        .list
        .iter()
        .flat_map(|e| {
            service_ends(e)
                .map(|(pid, role, local, peer, end)| ServiceEndJson {
                    conn: e.conn,
                    pid,
                    role,
                    local,
                    peer,
                    path: path_name(end.on_tcp),
                    ring_bytes: e.ring_bytes,
                    counters: Counters(end.counters.to_vec()),
                })
                .into_iter()
        })
        .collect();
    FabricJson {
        socket: f.socket.display().to_string(),
        service_pid: f.status.service_pid,
        listeners: f.status.listeners,
        window_used: f.status.window_used,
        window_bytes: f.status.window_bytes,
        connections,
        fallbacks: f
            .history
            .iter()
            .map(|h| FallbackJson {
                when: h.when,
                pid: h.pid,
                uid: h.uid,
                side: side_name(h.server),
                local: addr(h.local),
                peer: addr(h.peer),
                reason: h.reason,
                reason_name: reason_name(h.reason),
            })
            .collect(),
    }
}

pub fn main(mut args: Args, out: &mut String) -> Result<u8, CliError> {
    let mut as_json = false;
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => {
                out.push_str(HELP);
                out.push('\n');
                return Ok(0);
            }
            Arg::Long("json") => as_json = true,
            arg => return Err(unexpected("stats", arg)),
        }
    }
    let service = fabric_service();
    if let (false, Some(f)) = (as_json, &service) {
        fabric_text(f, out);
    }
    let service = service.as_ref().map(fabric_json);
    match device::open_existing().map_err(CliError::failed)? {
        Found::Absent(path) => {
            if as_json {
                let absent = serde_json::json!({
                    "fabric": service,
                    "device": null,
                    "path": path.display().to_string(),
                    "message": device::absent_message(&path),
                    "leases": [],
                    "connections": [],
                });
                let _ = writeln!(out, "{absent}");
            } else {
                out.push_str(&device::absent_message(&path));
                out.push('\n');
            }
        }
        Found::Open(dev) if as_json => out.push_str(&json_object(&dev, service)),
        Found::Open(dev) => text(&dev, out),
    }
    Ok(0)
}
