//! The emulated device as `stats`, `emu` and `doctor` see it: opened from the environment without
//! ever creating it, and described for people (text) and programs (JSON). It never creates a device
//! nor takes a lease (looking must change nothing).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use ntbdrv::emu::{EmuDevice, Options, Topology};
use ntbdrv::{format_size, NtbDevice};

use serde::Serialize;

/// The device named by the environment, if its file exists.
pub enum Found {
    Open(EmuDevice),
    /// No directory or no file yet: nothing has used pcisock on this host.
    Absent(PathBuf),
}

/// Open the device from `PCISOCK_EMU_DIR` / `PCISOCK_EMU_DEVICE` / `PCISOCK_EMU_HOST`, never
/// creating it.
pub fn open_existing() -> Result<Found, String> {
    let opts = Options::from_env().map_err(|e| e.to_string())?;
    let path = opts.path();
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent(path)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Found::Absent(path)),
        _ => {}
    }
    EmuDevice::open_existing(&path, opts.side)
        .map(Found::Open)
        .map_err(|e| e.to_string())
}

/// The message for a device that does not exist yet.
pub fn absent_message(path: &std::path::Path) -> String {
    format!("no pcisock device on this host yet ({})", path.display())
}

pub fn topology_name(t: Topology) -> &'static str {
    match t {
        Topology::Loopback => "loopback",
        Topology::TwoHost => "two-host",
    }
}

/// Lease counts of one process on this side's host table.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseCount {
    pub window: usize,
    pub doorbell: usize,
    pub dma: usize,
    pub other: usize,
}

/// Leases by pid (0 = the host's own reservations, which belong to no process).
pub fn leases_by_pid(dev: &EmuDevice) -> BTreeMap<u32, LeaseCount> {
    let mut by_pid: BTreeMap<u32, LeaseCount> = BTreeMap::new();
    for l in dev.leases() {
        let c = by_pid.entry(l.pid).or_default();
        match l.kind {
            "window" => c.window += 1,
            "doorbell" => c.doorbell += 1,
            "dma" => c.dma += 1,
            _ => c.other += 1,
        }
    }
    by_pid
}

/// Whether a lease owner is still running (pid 0 is the host itself).
pub fn owner_state(pid: u32) -> &'static str {
    if pid == 0 {
        "host"
    } else if ntbdrv::process::pid_exists(pid) {
        "alive"
    } else {
        "gone"
    }
}

/// The device summary: path, topology, resources, link, faults.
pub fn summary_text(dev: &EmuDevice, out: &mut String) {
    let c = dev.config();
    let link = dev.link_state();
    let faults = dev.faults();
    let _ = writeln!(out, "device:     {}", dev.path().display());
    let _ = writeln!(
        out,
        "topology:   {} (this host is side {}, peer side {})",
        topology_name(c.topology),
        dev.side(),
        dev.peer_side()
    );
    let _ = writeln!(
        out,
        "windows:    {} x {} (alignment {})",
        c.n_mw,
        format_size(c.mw_size),
        format_size(c.mw_align)
    );
    let _ = writeln!(out, "doorbells:  {} bits, {} scratchpads", c.n_db, c.n_spad);
    let _ = writeln!(out, "dma:        {} channel(s)", c.n_dma_ch);
    if link.up {
        let _ = writeln!(
            out,
            "link:       up (gen {} x{}, generation {})",
            link.speed_gen, link.width, link.generation
        );
    } else {
        let _ = writeln!(out, "link:       down (generation {})", link.generation);
    }
    let names = faults.names();
    let shown = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    let _ = writeln!(
        out,
        "faults:     {shown} ({} injected so far)",
        faults.hits()
    );
}

/// The lease table, one line per process.
pub fn leases_text(dev: &EmuDevice, out: &mut String) {
    let by_pid = leases_by_pid(dev);
    if by_pid.is_empty() {
        out.push_str("leases:     none\n");
        return;
    }
    let mut rows = vec![["PID", "OWNER", "WINDOW", "DOORBELL", "DMA"]
        .map(String::from)
        .to_vec()];
    for (pid, c) in &by_pid {
        rows.push(vec![
            pid.to_string(),
            owner_state(*pid).to_owned(),
            c.window.to_string(),
            c.doorbell.to_string(),
            c.dma.to_string(),
        ]);
    }
    out.push_str("leases (this side's host table):\n");
    table(&rows, out);
    if by_pid.keys().any(|p| owner_state(*p) == "gone") {
        out.push_str("(leases of processes that are gone are freed by 'pcisock emu reclaim')\n");
    }
}

/// The device summary, for `--json`.
#[derive(Serialize)]
pub struct SummaryJson {
    path: String,
    topology: &'static str,
    side: u32,
    peer_side: u32,
    windows: u32,
    window_size: u64,
    doorbells: u32,
    scratchpads: u32,
    dma_channels: u32,
    link: LinkJson,
    faults: Vec<String>,
    fault_hits: u64,
}

#[derive(Serialize)]
struct LinkJson {
    up: bool,
    speed_gen: u8,
    width: u8,
    generation: u32,
}

pub fn summary_json(dev: &EmuDevice) -> SummaryJson {
    let c = dev.config();
    let link = dev.link_state();
    let faults = dev.faults();
    SummaryJson {
        path: dev.path().display().to_string(),
        topology: topology_name(c.topology),
        side: dev.side(),
        peer_side: dev.peer_side(),
        windows: c.n_mw,
        window_size: c.mw_size,
        doorbells: c.n_db,
        scratchpads: c.n_spad,
        dma_channels: c.n_dma_ch,
        link: LinkJson {
            up: link.up,
            speed_gen: link.speed_gen,
            width: link.width,
            generation: link.generation,
        },
        faults: faults.names(),
        fault_hits: faults.hits(),
    }
}

/// One process's lease counts, for `--json`.
#[derive(Serialize)]
pub struct LeasesJson {
    pid: u32,
    owner: &'static str,
    window: usize,
    doorbell: usize,
    dma: usize,
}

pub fn leases_json(dev: &EmuDevice) -> Vec<LeasesJson> {
    leases_by_pid(dev)
        .iter()
        .map(|(pid, c)| LeasesJson {
            pid: *pid,
            owner: owner_state(*pid),
            window: c.window,
            doorbell: c.doorbell,
            dma: c.dma,
        })
        .collect()
}

/// Left-aligned columns, two spaces apart, indented by two.
pub fn table(rows: &[Vec<String>], out: &mut String) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            let gap = if i == 0 { "" } else { "  " };
            let _ = write!(line, "{gap}{cell:<w$}", w = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let mut out = String::new();
        table(
            &[
                vec!["A".into(), "BB".into()],
                vec!["ccc".into(), "d".into()],
            ],
            &mut out,
        );
        assert_eq!(out, "  A    BB\n  ccc  d\n");
    }
}
