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
      --json     Print one JSON object: {\"device\":…, \"leases\":[…], \"connections\":[…]}
  -h, --help     Print this help

Shows the device (path, topology, windows, doorbells, DMA channels, link, faults), the leases
each process holds, and per connection: pid, role, local and peer address, path (ntb, or
tcp-failover while its sending side is on its TCP socket after a link fault) and the counters
tx/rx bytes and frames, DMA and CPU copies, doorbells rung, polls, sleeps, DMA fallbacks, reads
and coalesced frames (PCISOCK_RX_COALESCE_US), failovers and fail-backs, bytes sent and received
over TCP after a failover and microseconds on TCP. The device is the one PCISOCK_EMU_DIR, PCISOCK_EMU_DEVICE and PCISOCK_EMU_HOST name;
it is never created here.

Through the host fabric service (the default on one host) connections are not in a device
this command can read: it prints the service's counts and its live connections first (client
and server address and pid, ring size); each process's PCISOCK_STATS_FILE has its connections'
counters; then the recent connections of every process on the host that stayed on TCP (the
last 64: age, pid, uid, side, addresses as the kernel had them, reason). Over a device,
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

fn json_object(dev: &EmuDevice) -> String {
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
        device: device::summary_json(dev),
        leases: device::leases_json(dev),
        connections,
    };
    serde_json::to_string(&all).unwrap_or_default() + "\n"
}

/// The host fabric service this environment's processes use, if one answers: connections
/// through it are held by their processes (each one's stats file lists its own).
fn fabric_summary(out: &mut String) {
    let transport::Rendezvous::Service { socket, .. } =
        transport::rendezvous(|k| std::env::var(k).ok())
    else {
        return;
    };
    let Ok(mut c) = fabric::Client::connect(&socket) else {
        return;
    };
    let (Ok(s), Ok(list)) = (c.status(), c.list()) else {
        return;
    };
    let _ = writeln!(
        out,
        "fabric:     service pid {} at {}: {} connections, {} listeners, window space {} of {} bytes",
        s.service_pid,
        socket.display(),
        s.connections,
        s.listeners,
        s.window_used,
        s.window_bytes
    );
    if !list.is_empty() {
        let _ = writeln!(out, "  CONN  CLIENT (PID)  ->  SERVER (PID)  RING");
    }
    let ep = |a: (fabric::wire::Addr, u16)| transport::Endpoint::from(a).to_std().to_string();
    for e in list {
        let _ = writeln!(
            out,
            "  {}  {} ({})  ->  {} ({})  {} KiB",
            e.conn,
            ep(e.client),
            e.client_pid,
            ep(e.server),
            e.server_pid,
            e.ring_bytes >> 10
        );
    }
    let _ = writeln!(
        out,
        "            (counters per connection: each process's PCISOCK_STATS_FILE)"
    );
    let history = c.history().unwrap_or_default();
    if history.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  recent fallbacks to TCP, host-wide, oldest first:\n  AGE  PID  UID  SIDE  LOCAL  ->  PEER  REASON"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for f in history {
        let reason = transport::Reason::from_code(f.reason)
            .map_or_else(|| format!("code {}", f.reason), |r| r.to_string());
        let _ = writeln!(
            out,
            "  {}s  {}  {}  {}  {}  ->  {}  {reason}",
            now.saturating_sub(f.when),
            f.pid,
            f.uid,
            if f.server { "server" } else { "client" },
            ep(f.local),
            ep(f.peer),
        );
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
    if !as_json {
        fabric_summary(out);
    }
    match device::open_existing().map_err(CliError::failed)? {
        Found::Absent(path) => {
            if as_json {
                let absent = serde_json::json!({
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
        Found::Open(dev) if as_json => out.push_str(&json_object(&dev)),
        Found::Open(dev) => text(&dev, out),
    }
    Ok(0)
}
