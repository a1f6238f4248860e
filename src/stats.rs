//! `pcisock stats`: the live NTB connections of this host, read out of the device's host table
//! (every endpoint keeps its identity and counters in its own window lease).

use std::fmt::Write as _;

use ntbdrv::emu::EmuDevice;
use transport::conn::COUNTER_NAMES;
use transport::stats::EndpointStats;

use crate::cli::{unknown_option, Arg, Args, CliError};
use crate::device::{self, Found};
use crate::json;

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
counters. Connections that fell back to TCP are
not in the device: they appear, with their reason codes,
in the per-process stats file (pcisock run --stats-file PATH, or PCISOCK_STATS_FILE).
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

fn json_object(dev: &EmuDevice) -> String {
    let conns: Vec<String> = endpoints(dev)
        .iter()
        .map(|(mw, s)| {
            let counters: Vec<String> =
                COUNTER_NAMES.iter().zip(s.counters.iter()).map(|(n, v)| format!("{}:{v}", json::string(n))).collect();
            format!(
                "{{\"pid\":{},\"role\":{},\"local\":{},\"peer\":{},\"path\":\"{}\",\"window\":{mw},\"counters\":{{{}}}}}",
                s.info.pid,
                json::string(role_name(s.info.role)),
                json::string(&s.info.local.to_std().to_string()),
                json::string(&s.info.peer.to_std().to_string()),
                path_name(s.on_tcp),
                counters.join(",")
            )
        })
        .collect();
    format!(
        "{{\"device\":{},\"leases\":{},\"connections\":[{}]}}\n",
        device::summary_json(dev),
        device::leases_json(dev),
        conns.join(",")
    )
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
}

pub fn main(mut args: Args, out: &mut String) -> Result<u8, CliError> {
    let mut as_json = false;
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Option { name, inline } => match name.as_str() {
                "-h" | "--help" => {
                    out.push_str(HELP);
                    out.push('\n');
                    return Ok(0);
                }
                "--json" => {
                    args.no_value(&name, inline)?;
                    as_json = true;
                }
                _ => return Err(unknown_option("stats", &name)),
            },
            Arg::Word(w) => return Err(args.usage(format!("unexpected argument {w:?}"))),
            Arg::EndOfOptions => args.finish()?,
        }
    }
    if !as_json {
        fabric_summary(out);
    }
    match device::open_existing().map_err(CliError::failed)? {
        Found::Absent(path) => {
            if as_json {
                let _ = writeln!(
                    out,
                    "{{\"device\":null,\"path\":{},\"message\":{},\"leases\":[],\"connections\":[]}}",
                    json::string(&path.display().to_string()),
                    json::string(&device::absent_message(&path))
                );
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
