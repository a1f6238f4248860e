//! `pcisock doctor`: checks an installation end to end — the library is found and exports every
//! hook of the golden list this build was made with, the configuration parses, the device directory
//! is private, the device opens (or would be created), the link is up. It only looks: it never
//! creates the device, starts a service or changes a file, and says what to run instead.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ntbdrv::emu::Options;
use ntbdrv::NtbDevice;

use crate::cli::{unexpected, Arg, Args, CliError};
use crate::config::Config;
use crate::device::{self, Found};
use crate::ffi::{self, Library, Symbol};
use crate::hooks::HOOKS;
use crate::run;

pub const HELP: &str = "\
Check the pcisock installation on this host.

Usage: pcisock doctor

Options:
  -h, --help     Print this help

Checks, in order:
  library        libpcisock.so is found ($PCISOCK_LIB, else next to the pcisock executable)
  exports        it defines every hook of the list this pcisock was built with (shim/exports.txt);
                 the check loads the library (dlopen, RTLD_LOCAL), which runs its constructor
  configuration  the PCISOCK_* variables and rules file parse (else everything goes over TCP)
  fabric         how processes meet: through the host fabric service, which answers at the
                 socket they would use with this build's protocol version (a service of another
                 version fails the check); other versions' services beside it (a warning: their
                 processes meet only their own kind) and sockets no service answers on (stale, a
                 warning); or they map the device directly. With the service, of the checks
                 below only pages applies (the DC buffer is the device's either way). Mapping
                 the device directly trusts every process of the user (docs/HOST-SERVICE.md,
                 threat model): a single trusted user's mode.
  directory      the device directory is ours with mode 0700, or can be created
  pages          the DC buffer of 'pcisock dc copy' can be contiguous like a BAR: the device
                 directory's filesystem gives huge pages, or it is a tmpfs without them and the
                 kernel collapses the buffer into 2 MiB pages on request (MADV_COLLAPSE); a
                 warning only: in 4 KiB pages a dc copy runs at about dd's speed
  device         the emulated device opens, or would be created on first use
  link           the NTB link is up (a warning only: connections then fall back to TCP)
  stale          no leases of processes that are gone (they keep window space and interrupt
                 vectors taken: 'pcisock emu reclaim'), and no interrupt lines (FIFOs) in the
                 device directory that no lease holds (left by closed connections and dead
                 processes; 'pcisock emu reclaim' removes them) (warnings only)

Exit status: 0 if every check passes (warnings allowed), 1 if any fails, 2 on a usage error.";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

struct Report {
    out: String,
    failed: bool,
}

impl Report {
    fn line(&mut self, status: Status, check: &str, text: impl std::fmt::Display) {
        let tag = match status {
            Status::Ok => " ok ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        self.failed |= status == Status::Fail;
        let _ = writeln!(self.out, "[{tag}] {check:<13} {text}");
    }
}

fn check_library(r: &mut Report) {
    let lib = match run::locate_library() {
        Ok(p) => p,
        Err(e) => {
            r.line(Status::Fail, "library", e);
            r.line(Status::Fail, "exports", "not checked (no library)");
            return;
        }
    };
    r.line(Status::Ok, "library", lib.display());
    let loaded = match Library::open(&lib) {
        Ok(l) => l,
        Err(e) => {
            r.line(
                Status::Fail,
                "exports",
                format!("cannot load the library: {e}"),
            );
            return;
        }
    };
    let mut missing = Vec::new();
    let mut elsewhere = Vec::new();
    for name in HOOKS {
        match loaded.lookup(name) {
            Symbol::Defined => {}
            Symbol::Missing => missing.push(*name),
            Symbol::Elsewhere(obj) => elsewhere.push(format!("{name} (only in {obj})")),
        }
    }
    if missing.is_empty() && elsewhere.is_empty() {
        r.line(
            Status::Ok,
            "exports",
            format!("all {} hooks defined", HOOKS.len()),
        );
    } else {
        let mut all: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
        all.extend(elsewhere);
        r.line(
            Status::Fail,
            "exports",
            format!(
                "{} of {} hooks not defined by the library: {}",
                all.len(),
                HOOKS.len(),
                all.join(", ")
            ),
        );
    }
}

fn check_config(r: &mut Report) {
    let (config, errors) = Config::from_env();
    if errors.is_empty() {
        let strict = if config.strict() { ", strict" } else { "" };
        r.line(
            Status::Ok,
            "configuration",
            format!("valid{strict} (see 'pcisock explain --port N')"),
        );
    } else {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        r.line(
            Status::Fail,
            "configuration",
            format!("everything passes through to TCP: {}", list.join("; ")),
        );
    }
}

/// The nearest existing ancestor of `dir`.
fn existing_ancestor(dir: &Path) -> Option<&Path> {
    dir.ancestors().find(|a| a.exists())
}

fn check_directory(r: &mut Report, opts: &Options) {
    let dir = &opts.dir;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => r.line(
            Status::Fail,
            "directory",
            format!("{} is not a directory", dir.display()),
        ),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if m.uid() != ffi::uid() {
                r.line(
                    Status::Fail,
                    "directory",
                    format!(
                        "{} belongs to uid {}, not to us ({})",
                        dir.display(),
                        m.uid(),
                        ffi::uid()
                    ),
                );
            } else if mode != 0o700 {
                r.line(
                    Status::Fail,
                    "directory",
                    format!("{} has mode {mode:04o}; it must be 0700", dir.display()),
                );
            } else {
                r.line(
                    Status::Ok,
                    "directory",
                    format!("{} (ours, mode 0700)", dir.display()),
                );
            }
        }
        Err(_) => match existing_ancestor(dir) {
            Some(a) if a.is_dir() && ffi::can_create_in(a) => r.line(
                Status::Ok,
                "directory",
                format!(
                    "{} does not exist yet; it will be created (mode 0700)",
                    dir.display()
                ),
            ),
            Some(a) => r.line(
                Status::Fail,
                "directory",
                format!(
                    "{} cannot be created: no write access to {}",
                    dir.display(),
                    a.display()
                ),
            ),
            None => r.line(
                Status::Fail,
                "directory",
                format!("{} cannot be created", dir.display()),
            ),
        },
    }
}

/// The filesystem type and superblock options of the mount that holds `path`, from the text of
/// /proc/self/mountinfo: the entry with the longest mount point that contains the path (the
/// last one listed, if several are stacked there).
fn mount_of(mountinfo: &str, path: &Path) -> Option<(String, String)> {
    let unescape = |s: &str| {
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\134", "\\")
    };
    let mut best: Option<(usize, String, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split(' ').nth(4).map(unescape) else {
            continue;
        };
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let options = r.nth(1).unwrap_or("");
        if path.starts_with(&point) && best.as_ref().is_none_or(|b| point.len() >= b.0) {
            best = Some((point.len(), fstype.to_owned(), options.to_owned()));
        }
    }
    best.map(|(_, t, o)| (t, o))
}

fn check_pages(r: &mut Report, opts: &Options) {
    let Some(dir) = existing_ancestor(&opts.dir).and_then(|d| d.canonicalize().ok()) else {
        return;
    };
    let Some((fstype, options)) = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| mount_of(&m, &dir))
    else {
        return;
    };
    let huge = fstype == "hugetlbfs"
        || (fstype == "tmpfs"
            && options
                .split(',')
                .any(|o| o == "huge=always" || o == "huge=within_size"));
    if huge {
        r.line(
            Status::Ok,
            "pages",
            format!("{} is on {fstype} ({options}): the windows are in huge pages, contiguous like a BAR", dir.display()),
        );
        return;
    }
    // tmpfs without huge=: dc copy collapses its DC buffer into 2 MiB pages itself, where the
    // kernel collapses shared memory on request (the probe does exactly that, on a memfd).
    let probe = if fstype == "tmpfs" {
        ntbdrv::emu::collapse_probe().map_err(|e| e.to_string())
    } else {
        Err(format!("{fstype} is not tmpfs"))
    };
    match probe {
        Ok(()) => r.line(
            Status::Ok,
            "pages",
            format!(
                "{} is on {fstype} without huge pages: the windows are in 4 KiB pages, and 'pcisock dc copy' \
                 collapses its DC buffer in them into 2 MiB pages (MADV_COLLAPSE), contiguous like a BAR",
                dir.display()
            ),
        ),
        Err(why) => r.line(
            Status::Warn,
            "pages",
            format!(
                "{} is on {fstype} without huge pages, and they cannot be collapsed into 2 MiB pages ({why}): \
                 the windows are in 4 KiB pages, and 'pcisock dc copy' through them runs at about dd's speed. \
                 For a window as contiguous as a BAR: mount -t tmpfs -o huge=always,mode=0700 pcisock DIR, \
                 and set PCISOCK_EMU_DIR=DIR (docs/CLI.md, pcisock dc)",
                dir.display()
            ),
        ),
    }
}

fn check_device(r: &mut Report, opts: &Options) {
    match device::open_existing() {
        Ok(Found::Open(dev)) => {
            let c = dev.config();
            r.line(
                Status::Ok,
                "device",
                format!(
                    "{} opens ({}, side {}, {} x {} windows, {} doorbells, {} DMA channel(s))",
                    dev.path().display(),
                    device::topology_name(c.topology),
                    dev.side(),
                    c.n_mw,
                    ntbdrv::format_size(c.mw_size),
                    c.n_db,
                    c.n_dma_ch
                ),
            );
            check_stale(r, &dev);
            let link = dev.link_state();
            let faults = dev.faults().names();
            if link.up {
                r.line(
                    Status::Ok,
                    "link",
                    format!("up (gen {} x{})", link.speed_gen, link.width),
                );
            } else if faults.is_empty() {
                r.line(
                    Status::Warn,
                    "link",
                    "down: flagged connections fall back to TCP (LinkDown)",
                );
            } else {
                r.line(
                    Status::Warn,
                    "link",
                    format!(
                        "down; injected faults: {} ('pcisock emu clear')",
                        faults.join(", ")
                    ),
                );
            }
        }
        Ok(Found::Absent(path)) => {
            let c = opts.config;
            r.line(
                Status::Ok,
                "device",
                format!(
                    "{} does not exist yet; the first process to use it creates it ({}, {} x {} windows)",
                    path.display(),
                    device::topology_name(c.topology),
                    c.n_mw,
                    ntbdrv::format_size(c.mw_size)
                ),
            );
            r.line(Status::Ok, "link", "not known until the device exists");
        }
        Err(e) => {
            r.line(Status::Fail, "device", e);
            r.line(Status::Fail, "link", "not checked (no device)");
        }
    }
}

/// Leases of dead processes and idle interrupt lines, on every side of the device.
fn check_stale(r: &mut Report, dev: &ntbdrv::emu::EmuDevice) {
    let sides = match dev.config().topology {
        ntbdrv::emu::Topology::Loopback => 1,
        ntbdrv::emu::Topology::TwoHost => 2,
    };
    let mut dead_leases = 0;
    let mut dead_pids: Vec<u32> = Vec::new();
    let mut idle = 0;
    for side in 0..sides {
        let other;
        let d = if side == dev.side() {
            dev
        } else {
            match ntbdrv::emu::EmuDevice::open_existing(dev.path(), side) {
                Ok(o) => {
                    other = o;
                    &other
                }
                Err(_) => continue,
            }
        };
        for l in d.leases() {
            // Owner pid 0: a host-owned reservation (the rendezvous area), never stale.
            if l.pid != 0 && !ntbdrv::process::alive(l.pid, l.start) {
                dead_leases += 1;
                if !dead_pids.contains(&l.pid) {
                    dead_pids.push(l.pid);
                }
            }
        }
        idle += d.idle_lines().len();
    }
    let mut problems = Vec::new();
    if dead_leases > 0 {
        dead_pids.sort_unstable();
        let shown: Vec<String> = dead_pids.iter().take(8).map(|p| p.to_string()).collect();
        let more = if dead_pids.len() > 8 { ", …" } else { "" };
        problems.push(format!(
            "{dead_leases} lease(s) of {} process(es) that are gone (pids {}{more}) keep window              space and interrupt vectors taken, and connection set-up slows down as they pile up",
            dead_pids.len(),
            shown.join(", ")
        ));
    }
    if idle > 0 {
        problems.push(format!(
            "{idle} interrupt line(s) (FIFOs) in {} that no lease holds, left by closed              connections and dead processes",
            dev.path()
                .parent()
                .unwrap_or(Path::new("."))
                .display()
        ));
    }
    if problems.is_empty() {
        r.line(
            Status::Ok,
            "stale",
            "no leases of dead processes, no idle interrupt lines",
        );
    } else {
        r.line(
            Status::Warn,
            "stale",
            format!("{}: 'pcisock emu reclaim' frees them", problems.join("; ")),
        );
    }
}

/// How this environment's processes meet (docs/HOST-SERVICE.md), and whether the service they
/// would use answers. True when they use the service (the device checks do not apply then).
fn check_fabric(r: &mut Report) -> bool {
    let (socket, start) = match transport::rendezvous(|k| std::env::var(k).ok()) {
        transport::Rendezvous::Device => {
            r.line(
                Status::Ok,
                "fabric",
                "processes map the device named below and meet in its rendezvous area (PCISOCK_FABRIC=device, or a device named in the environment); this mode trusts every process of the user: any of them can write the device (other connections' rings, the rendezvous tables) or truncate its file, which kills every process mapping it (SIGBUS). For processes that must not trust each other, use the host fabric service (PCISOCK_FABRIC unset, no device named)",
            );
            return false;
        }
        transport::Rendezvous::Service { socket, start } => (socket, start),
    };
    match fabric::Client::connect(&socket).and_then(|mut c| c.status()) {
        Ok(s) => r.line(
            Status::Ok,
            "fabric",
            format!(
                "host fabric service pid {} at {}: {} connections, {} listeners, window space {} of {} bytes",
                s.service_pid,
                socket.display(),
                s.connections,
                s.listeners,
                s.window_used,
                s.window_bytes
            ),
        ),
        Err(_) if start => r.line(
            Status::Warn,
            "fabric",
            format!(
                "no host fabric service answers at {} yet: the first preloaded process starts one (or: pcisock fabric start)",
                socket.display()
            ),
        ),
        Err(fabric::ClientError::Wire(fabric::wire::WireError::Version(v))) => r.line(
            Status::Fail,
            "fabric",
            format!(
                "the service at {} speaks protocol {v}, this build {}: every connection stays on TCP. Stop it ('pcisock fabric stop --socket {}' with that version's pcisock, or kill it) and start this version's",
                socket.display(),
                fabric::wire::VERSION,
                socket.display()
            ),
        ),
        Err(e) => r.line(
            Status::Fail,
            "fabric",
            format!(
                "no host fabric service at {} ({e}); PCISOCK_FABRIC names it: start it with 'pcisock fabric start --socket {}'",
                socket.display(),
                socket.display()
            ),
        ),
    }
    check_other_services(r, &socket);
    true
}

/// The other service sockets beside the default ones: another version's service (its
/// processes meet only each other) or a socket file no service answers on (left by a service
/// that was killed).
fn check_other_services(r: &mut Report, ours: &Path) {
    let mut dirs = vec![
        fabric::client::system_socket(),
        fabric::client::user_socket(),
    ];
    dirs.push(ours.to_path_buf());
    let mut dirs: Vec<std::path::PathBuf> = dirs
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut found: Vec<std::path::PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("fabric") && name.ends_with(".sock") && p != ours
            })
            .collect();
        found.sort();
        for p in found {
            match fabric::Client::connect(&p) {
                Ok(_) => {} // this version's service at another path: fine
                Err(fabric::ClientError::Wire(fabric::wire::WireError::Version(v))) => r.line(
                    Status::Warn,
                    "fabric",
                    format!(
                        "a service of protocol {v} (another pcisock version) answers at {}: its processes and this version's meet only their own kind (connections between them stay on TCP)",
                        p.display()
                    ),
                ),
                Err(_) => r.line(
                    Status::Warn,
                    "stale",
                    format!(
                        "{}: a service socket no service answers on (left by a service that was killed); remove it",
                        p.display()
                    ),
                ),
            }
        }
    }
}

pub fn main(mut args: Args, out: &mut String) -> Result<u8, CliError> {
    // doctor takes no arguments but -h/--help.
    match args.next()? {
        None => {}
        Some(Arg::Short('h') | Arg::Long("help")) => {
            out.push_str(HELP);
            out.push('\n');
            return Ok(0);
        }
        Some(arg) => return Err(unexpected("doctor", arg)),
    }
    let mut r = Report {
        out: String::new(),
        failed: false,
    };
    check_library(&mut r);
    check_config(&mut r);
    if check_fabric(&mut r) {
        // dc copy leases its buffer from the device whoever carries the connections.
        if let Ok(opts) = Options::from_env() {
            check_pages(&mut r, &opts);
        }
        out.push_str(&r.out);
        out.push_str(if r.failed {
            "some checks failed\n"
        } else {
            "all checks passed\n"
        });
        return Ok(if r.failed {
            crate::cli::EXIT_FAILURE
        } else {
            0
        });
    }
    match Options::from_env() {
        Ok(opts) => {
            check_directory(&mut r, &opts);
            check_pages(&mut r, &opts);
            check_device(&mut r, &opts);
        }
        Err(e) => r.line(Status::Fail, "device", format!("bad device setting: {e}")),
    }
    out.push_str(&r.out);
    out.push_str(if r.failed {
        "some checks failed\n"
    } else {
        "all checks passed\n"
    });
    Ok(if r.failed {
        crate::cli::EXIT_FAILURE
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:21 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,size=24683656k
30 22 0:40 / /tmp/huge\\040dir rw,relatime shared:9 - tmpfs pcisock rw,size=1048576k,huge=always
31 30 0:41 / /tmp/huge\\040dir/inner rw,relatime shared:10 - hugetlbfs none rw,pagesize=2M
";

    #[test]
    fn the_longest_mount_point_holding_the_path_wins() {
        let m = |p: &str| mount_of(MOUNTINFO, Path::new(p)).map(|(t, o)| format!("{t} {o}"));
        assert_eq!(
            m("/dev/shm/pcisock-0").as_deref(),
            Some("tmpfs rw,size=24683656k")
        );
        assert_eq!(
            m("/tmp/huge dir/x").as_deref(),
            Some("tmpfs rw,size=1048576k,huge=always")
        );
        assert_eq!(
            m("/tmp/huge dir/inner").as_deref(),
            Some("hugetlbfs rw,pagesize=2M")
        );
        // A path component is not a prefix of another: /tmp/huge dirt is on /.
        assert_eq!(m("/tmp/huge dirt").as_deref(), Some("ext4 rw"));
        assert_eq!(m("/var/tmp").as_deref(), Some("ext4 rw"));
    }
}
