//! `pcisock emu`: inspect and manage the emulated device this environment names (never creating
//! it): show it, inject and clear faults, free dead processes' leases, remove it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use ntbdrv::emu::{EmuDevice, Fault, Topology};
use ntbdrv::NtbDevice;

use crate::cli::{parse_number, unexpected, Arg, Args, CliError};
use crate::device::{self, Found};

pub const HELP: &str = "\
Inspect and manage this host's emulated NTB device.

Usage: pcisock emu info                              Show the device, its link, faults and leases
       pcisock emu fault link-down                   Hold the link down
       pcisock emu fault dma-error [--count N]       Fail the next N DMA descriptors (0 = all; default 0)
       pcisock emu fault dma-slow --delay-us N       Delay every DMA descriptor by N microseconds
       pcisock emu fault lost-doorbell [--count N]   Lose the next N doorbells (0 = all; default 0)
       pcisock emu clear                             Clear every fault
       pcisock emu reclaim                           Free the leases of processes that are gone,
                                                     and remove interrupt lines no lease holds
       pcisock emu remove                            Delete the device file and its doorbell FIFOs

Options:
  -h, --help     Print this help (also after a subcommand)

The device is the one PCISOCK_EMU_DIR, PCISOCK_EMU_DEVICE and PCISOCK_EMU_HOST name (default
$XDG_RUNTIME_DIR/pcisock or /dev/shm/pcisock-UID, device 'loopback', side 0). These commands
never create it. Faults live in the device, so they affect every process using it; counted
faults share one counter. 'remove' refuses while a live process holds leases on any side.

Exit status: 0 ok, 1 if the device does not exist or cannot be used, 2 on a usage error.";

fn open() -> Result<EmuDevice, CliError> {
    match device::open_existing().map_err(CliError::failed)? {
        Found::Open(dev) => Ok(dev),
        Found::Absent(path) => Err(CliError::failed(device::absent_message(&path))),
    }
}

/// Options of a subcommand: `--count`, `--delay-us`, `-h`. Returns None on `--help`.
struct FaultOpts {
    count: Option<u32>,
    delay_us: Option<u64>,
}

fn options(args: &mut Args, allowed: &[&str]) -> Result<Option<FaultOpts>, CliError> {
    let mut o = FaultOpts {
        count: None,
        delay_us: None,
    };
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => return Ok(None),
            Arg::Long("count") if allowed.contains(&"--count") => {
                o.count = Some(parse_number("emu", "--count", &args.value()?)?)
            }
            Arg::Long("delay-us") if allowed.contains(&"--delay-us") => {
                o.delay_us = Some(parse_number("emu", "--delay-us", &args.value()?)?)
            }
            arg => return Err(unexpected("emu", arg)),
        }
    }
    Ok(Some(o))
}

fn help(out: &mut String) -> Result<u8, CliError> {
    out.push_str(HELP);
    out.push('\n');
    Ok(0)
}

pub fn main(mut args: Args, out: &mut String) -> Result<u8, CliError> {
    let sub = match args.next()? {
        None => return Err(args.usage("missing subcommand: info, fault, clear, reclaim or remove")),
        Some(Arg::Short('h') | Arg::Long("help")) => return help(out),
        Some(Arg::Value(w)) => args.string(w)?,
        Some(arg) => return Err(unexpected("emu", arg)),
    };
    match sub.as_str() {
        "info" => {
            if options(&mut args, &[])?.is_none() {
                return help(out);
            }
            let dev = open()?;
            device::summary_text(&dev, out);
            device::leases_text(&dev, out);
            Ok(0)
        }
        "fault" => fault(args, out),
        "clear" => {
            if options(&mut args, &[])?.is_none() {
                return help(out);
            }
            let dev = open()?;
            let before = dev.faults().names();
            dev.faults().clear();
            if before.is_empty() {
                out.push_str("no faults were in force\n");
            } else {
                let _ = writeln!(out, "cleared: {}", before.join(", "));
            }
            Ok(0)
        }
        "reclaim" => {
            if options(&mut args, &[])?.is_none() {
                return help(out);
            }
            let dev = open()?;
            let freed = dev.reclaim();
            let lines = dev.remove_idle_lines();
            let _ = writeln!(
                out,
                "freed {freed} lease(s) of processes that are gone; removed {lines} interrupt \
                 line(s) no lease holds"
            );
            Ok(0)
        }
        "remove" => {
            if options(&mut args, &[])?.is_none() {
                return help(out);
            }
            remove(out)
        }
        other => Err(args.usage(format!(
            "unknown emu subcommand {other:?}: expected info, fault, clear, reclaim or remove"
        ))),
    }
}

fn fault(mut args: Args, out: &mut String) -> Result<u8, CliError> {
    let kind = match args.next()? {
        Some(Arg::Value(w)) => args.string(w)?,
        Some(Arg::Short('h') | Arg::Long("help")) => return help(out),
        _ => {
            return Err(args.usage("missing fault: link-down, dma-error, dma-slow or lost-doorbell"))
        }
    };
    let allowed: &[&str] = match kind.as_str() {
        "link-down" => &[],
        "dma-error" | "lost-doorbell" => &["--count"],
        "dma-slow" => &["--delay-us"],
        other => {
            return Err(args.usage(format!(
                "unknown fault {other:?}: expected link-down, dma-error, dma-slow or lost-doorbell"
            )))
        }
    };
    let Some(o) = options(&mut args, allowed)? else {
        return help(out);
    };
    let f = match kind.as_str() {
        "link-down" => Fault::LinkDown,
        "dma-error" => Fault::DmaError {
            count: o.count.unwrap_or(0),
        },
        "lost-doorbell" => Fault::LostDoorbell {
            count: o.count.unwrap_or(0),
        },
        _ => {
            let us = o
                .delay_us
                .ok_or_else(|| args.usage("dma-slow needs --delay-us N"))?;
            Fault::DmaSlow {
                delay: Duration::from_micros(us),
            }
        }
    };
    let dev = open()?;
    dev.faults().inject(f);
    let what = match f {
        Fault::LinkDown => "link-down: the link is held down until 'pcisock emu clear'".to_owned(),
        Fault::DmaError { count: 0 } => "dma-error: every DMA descriptor fails".to_owned(),
        Fault::DmaError { count } => format!("dma-error: the next {count} DMA descriptor(s) fail"),
        Fault::LostDoorbell { count: 0 } => "lost-doorbell: every peer doorbell is lost".to_owned(),
        Fault::LostDoorbell { count } => {
            format!("lost-doorbell: the next {count} peer doorbell(s) are lost")
        }
        Fault::DmaSlow { delay } => format!(
            "dma-slow: each DMA descriptor waits {} us",
            delay.as_micros()
        ),
    };
    let _ = writeln!(out, "injected {what} ({})", dev.path().display());
    Ok(0)
}

/// The live processes holding leases on any side of the device.
fn live_holders(dev: &EmuDevice) -> Result<Vec<(u32, u32)>, CliError> {
    let sides = match dev.config().topology {
        Topology::Loopback => 1,
        Topology::TwoHost => 2,
    };
    let mut holders = Vec::new();
    for side in 0..sides {
        let view = if side == dev.side() {
            None
        } else {
            Some(
                EmuDevice::open_existing(dev.path(), side)
                    .map_err(|e| CliError::failed(e.to_string()))?,
            )
        };
        let d = view.as_ref().unwrap_or(dev);
        for l in d.leases() {
            if l.pid != 0 && ntbdrv::process::pid_exists(l.pid) && !holders.contains(&(side, l.pid))
            {
                holders.push((side, l.pid));
            }
        }
    }
    Ok(holders)
}

/// The doorbell FIFOs of device `path`: `<stem>.s<side>.db<bit>` in the same directory.
fn fifos(path: &Path) -> Vec<std::path::PathBuf> {
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        return Vec::new();
    };
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{stem}.s");
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| is_fifo_name(n, &prefix))
        })
        .map(|e| e.path())
        .collect()
}

/// Processes that have the file at `path` mapped, found by device and inode in /proc/*/maps (a
/// device file is created under a temporary name and renamed, so its maps lines name the
/// temporary file); processes whose maps we may not read are skipped.
fn mapping_pids(path: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(procs)) = (std::fs::metadata(path), std::fs::read_dir("/proc")) else {
        return Vec::new();
    };
    // Device and inode as /proc/PID/maps prints them.
    let id = format!(
        "{:02x}:{:02x} {}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| {
                m.lines().any(|l| {
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                        == id
                })
            })
        })
        .collect()
}

fn is_fifo_name(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    // Doorbell-bit lines `.s<side>.db<bit>` and interrupt-vector lines `.s<side>.v<vector>`.
    let Some((side, bit)) = rest.split_once(".db").or_else(|| rest.split_once(".v")) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(side) && digits(bit)
}

fn remove(out: &mut String) -> Result<u8, CliError> {
    let path = match device::open_existing() {
        Ok(Found::Open(dev)) => {
            let holders = live_holders(&dev)?;
            if !holders.is_empty() {
                let list: Vec<String> = holders
                    .iter()
                    .map(|(side, pid)| format!("{pid} (side {side})"))
                    .collect();
                return Err(CliError::failed(format!(
                    "not removing {}: live processes hold leases on it: {}",
                    dev.path().display(),
                    list.join(", ")
                )));
            }
            dev.path().to_path_buf()
        }
        Ok(Found::Absent(path)) => return Err(CliError::failed(device::absent_message(&path))),
        Err(e) => {
            // A device another build made (another layout version) cannot be read for its
            // leases; the processes that map the file are the ones that could be using it.
            let path = ntbdrv::emu::Options::from_env()
                .map_err(|e| CliError::failed(e.to_string()))?
                .path();
            if !e.contains("layout version") {
                return Err(CliError::failed(e));
            }
            let users = mapping_pids(&path);
            if !users.is_empty() {
                return Err(CliError::failed(format!(
                    "not removing {}: processes {users:?} have it mapped ({e})",
                    path.display()
                )));
            }
            path
        }
    };
    let mut removed_fifos = 0;
    for f in fifos(&path) {
        match std::fs::remove_file(&f) {
            Ok(()) => removed_fifos += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CliError::failed(format!("remove {}: {e}", f.display()))),
        }
    }
    std::fs::remove_file(&path)
        .map_err(|e| CliError::failed(format!("remove {}: {e}", path.display())))?;
    let _ = writeln!(
        out,
        "removed {} and {removed_fifos} doorbell FIFO(s)",
        path.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_names() {
        assert!(is_fifo_name("loopback.s0.db12", "loopback.s"));
        assert!(is_fifo_name("loopback.s1.v2047", "loopback.s"));
        assert!(!is_fifo_name("loopback.s1.v", "loopback.s"));
        assert!(!is_fifo_name("loopback.s0.db", "loopback.s"));
        assert!(!is_fifo_name("loopback.sx.db1", "loopback.s"));
        assert!(!is_fifo_name("loopback.ntb", "loopback.s"));
        assert!(!is_fifo_name("other.s0.db1", "loopback.s"));
    }
}
