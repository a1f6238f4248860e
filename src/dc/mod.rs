//! `pcisock dc copy`: the Direct Connect copy (the DC command of the Direct Connect papers).
//! Bytes move from a source device or file to a destination through a DC buffer that both reach
//! by DMA — an inbound memory window of the NTB device by default — with `qd` linked
//! read → write pairs in flight on an io_uring with O_DIRECT, so no copy goes through this
//! process's own memory.
//!
//! This module parses the command line, sets up the DC buffer and reports; `manager` resolves
//! and checks the two sides, `operator` runs the pipeline, and `sys` holds the unsafe code.

mod manager;
mod operator;
mod sys;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{IsTerminal as _, Write as _};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntbdrv::{Lease, NtbDevice, WindowLease};

use crate::cli::{parse_number, unknown_option, Arg, Args, CliError};
use crate::device::size;
use crate::json;
use manager::{CheckError, Endpoint, Kind, Opened, Role};
use operator::{CopyError, Span};
use sys::{DcMemory, Ring};

pub const HELP: &str = "\
Copy between block devices or files through a DC buffer (Direct Connect), without staging the
data in this process's memory.

Usage: pcisock dc copy [OPTIONS] SRC DST

SRC and DST are block devices or regular files: a path, a /dev/disk/by-id/ link, or a bare
device name (sdb, nvme0n1, or an entry of /dev/disk/by-id). A DST file that does not exist is
created.

Options:
      --offset N        Byte offset of the copy, the same in SRC and DST (default 0)
      --length N        Bytes to copy (default: SRC's size minus the offset)
      --qd N            Chunks in flight, each a linked read -> write (1..64; default 4)
      --chunk N         Bytes per chunk and per DC buffer slot, a multiple of 4096
                        (4 KiB..64 MiB; default 1 MiB). Sizes take K, M, G suffixes.
      --buffer KIND     The DC buffer: window (an inbound memory window of the NTB device;
                        default), p2pmem (PCI peer-to-peer memory, where the kernel offers
                        it), or host (host memory: the conventional, staged baseline)
      --direct-only     Fail instead of falling back to the page cache where a filesystem
                        refuses O_DIRECT
      --no-fixed        Do not register the DC buffer with io_uring (fixed buffers are used
                        by default)
      --verify          After the copy, read both ranges back and compare (checksums and bytes)
      --json            Print one JSON object instead of the text report ({\"error\": …} on a
                        failure)
  -h, --help            Print this help

How: the DC buffer holds qd slots of one chunk each. Each chunk is read from SRC into its
slot and written from the slot to DST by a linked pair on an io_uring (the write starts when
the read is complete); a slot starts its next chunk as soon as its write is done. Short reads
and writes are finished, EAGAIN is retried, any other error stops the copy with exit 1 and
says where: a partial copy is never reported as success.

Checks before a byte moves: SRC exists and is readable; the range is inside SRC; DST is not
SRC, nor overlapping storage (a partition and its disk, a loop device and its file); a DST
block device is large enough and not in use (mounted devices are refused); a DST file is
extended as needed, and a whole-file copy (no --offset, no --length) makes it exactly SRC's
size, like cp.

O_DIRECT: offsets and lengths must be multiples of each side's logical block size (BLKSSZGET;
statx STATX_DIOALIGN for files). An unaligned head or tail of the range is copied through the
page cache on a second descriptor, after the aligned part, and DST is then synced. A filesystem
that refuses O_DIRECT (EINVAL on open, e.g. ramfs) is used through the page cache with a
notice (or refused with --direct-only).

The window buffer is leased from the NTB device PCISOCK_DEVICE / PCISOCK_EMU_* name (created
if absent) and released at the end. A progress bar is drawn on stderr when it is a terminal.

Exit status: 0 copied (and verified, with --verify); 1 the copy was refused or failed, or the
verification found a difference; 2 usage error.";

/// The lease tag of DC buffers in the window ("PCDC").
const DC_TAG: u32 = 0x5043_4443;

/// A transparent huge page.
const HUGE: usize = 2 << 20;

/// Bytes of the mapping holding `addr` that the kernel maps with huge pages (`/proc/self/smaps`:
/// AnonHugePages, ShmemPmdMapped, FilePmdMapped of that mapping), if it can tell.
fn huge_bytes(addr: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    let mut kb = 0u64;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                if inside {
                    break;
                }
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            for field in ["AnonHugePages:", "ShmemPmdMapped:", "FilePmdMapped:"] {
                if let Some(v) = line.strip_prefix(field) {
                    kb += v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
            }
        }
    }
    inside.then_some(kb << 10)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufferKind {
    Window,
    P2pmem,
    Host,
}

impl BufferKind {
    fn name(self) -> &'static str {
        match self {
            BufferKind::Window => "window",
            BufferKind::P2pmem => "p2pmem",
            BufferKind::Host => "host",
        }
    }
}

struct CopyArgs {
    src: String,
    dst: String,
    offset: u64,
    length: Option<u64>,
    qd: usize,
    chunk: usize,
    buffer: BufferKind,
    direct_only: bool,
    fixed: bool,
    verify: bool,
    json: bool,
}

fn parse_size_arg(name: &str, v: &str) -> Result<u64, CliError> {
    ntbdrv::parse_size(v).map_err(|e| CliError::usage("dc", format!("{name} {v:?}: {e}")))
}

fn help(out: &mut String) -> Result<u8, CliError> {
    out.push_str(HELP);
    out.push('\n');
    Ok(0)
}

pub fn main(mut args: Args, out: &mut String) -> Result<u8, CliError> {
    match args.next()? {
        Some(Arg::Word(w)) if w == "copy" => {}
        Some(Arg::Option { name, .. }) if name == "-h" || name == "--help" => return help(out),
        Some(Arg::Option { name, .. }) => return Err(unknown_option("dc", &name)),
        Some(Arg::Word(w)) => {
            return Err(args.usage(format!("unknown dc subcommand {w:?}: expected copy")))
        }
        None | Some(Arg::EndOfOptions) => return Err(args.usage("missing subcommand: copy")),
    }
    let mut words = Vec::new();
    let mut a = CopyArgs {
        src: String::new(),
        dst: String::new(),
        offset: 0,
        length: None,
        qd: 4,
        chunk: 1 << 20,
        buffer: BufferKind::Window,
        direct_only: false,
        fixed: true,
        verify: false,
        json: false,
    };
    let mut only_words = false;
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Word(w) => words.push(w),
            Arg::EndOfOptions if !only_words => only_words = true,
            Arg::EndOfOptions => words.push("--".into()),
            Arg::Option { name, inline } if only_words => {
                let _ = inline;
                words.push(name);
            }
            Arg::Option { name, .. } if name == "-h" || name == "--help" => return help(out),
            Arg::Option { name, inline } => match name.as_str() {
                "--offset" => a.offset = parse_size_arg(&name, &args.value(&name, inline)?)?,
                "--length" => a.length = Some(parse_size_arg(&name, &args.value(&name, inline)?)?),
                "--qd" => a.qd = parse_number("dc", &name, &args.value(&name, inline)?)?,
                "--chunk" => a.chunk = parse_size_arg(&name, &args.value(&name, inline)?)? as usize,
                "--buffer" => {
                    a.buffer = match args.value(&name, inline)?.as_str() {
                        "window" => BufferKind::Window,
                        "p2pmem" => BufferKind::P2pmem,
                        "host" => BufferKind::Host,
                        other => {
                            return Err(args.usage(format!(
                                "--buffer {other:?}: expected window, p2pmem or host"
                            )))
                        }
                    }
                }
                "--direct-only" | "--no-fixed" | "--verify" | "--json" => {
                    args.no_value(&name, inline)?;
                    match name.as_str() {
                        "--direct-only" => a.direct_only = true,
                        "--no-fixed" => a.fixed = false,
                        "--verify" => a.verify = true,
                        _ => a.json = true,
                    }
                }
                _ => return Err(unknown_option("dc", &name)),
            },
        }
    }
    let [src, dst]: [String; 2] = words.try_into().map_err(|w: Vec<String>| {
        args.usage(format!(
            "dc copy takes SRC and DST ({} argument(s) given)",
            w.len()
        ))
    })?;
    a.src = src;
    a.dst = dst;
    if !(1..=64).contains(&a.qd) {
        return Err(args.usage(format!("--qd {}: must be 1..64", a.qd)));
    }
    if a.chunk < 4096 || a.chunk > 64 << 20 || !a.chunk.is_multiple_of(4096) {
        return Err(args.usage(format!(
            "--chunk {}: must be a multiple of 4096 from 4 KiB to 64 MiB",
            a.chunk
        )));
    }
    let result = copy(&a, out);
    // Scripts asking for JSON get an object on a failure too (the message also goes to stderr).
    if let (true, Err(e @ CliError::Failed(_))) = (a.json, &result) {
        let _ = writeln!(out, "{{\"error\":{}}}", json::string(&e.to_string()));
    }
    result
}

/// A DC buffer and what keeps it: a window lease (released on drop) or nothing more.
struct DcBuffer {
    mem: DcMemory,
    /// Where it is, for the report.
    place: String,
    lease: Option<(Arc<dyn NtbDevice>, WindowLease)>,
}

impl Drop for DcBuffer {
    fn drop(&mut self) {
        if let Some((dev, lease)) = self.lease.take() {
            let _ = dev.release(Lease::Window(lease));
        }
    }
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::failed(e.to_string())
}

impl From<CheckError> for CliError {
    fn from(e: CheckError) -> CliError {
        CliError::failed(e.0)
    }
}

fn dc_buffer(kind: BufferKind, len: usize) -> Result<DcBuffer, CliError> {
    match kind {
        BufferKind::Host => Ok(DcBuffer {
            mem: DcMemory::host(len).map_err(|e| failed(format!("host DC buffer: {e}")))?,
            place: "host memory (anonymous mapping)".into(),
            lease: None,
        }),
        BufferKind::Window => {
            let dev = ntbdrv::recommended::open_default()
                .map_err(|e| failed(format!("window DC buffer: NTB device: {e}")))?;
            let mut last = None;
            // First with room to start the buffer on a 2 MiB boundary: where the window's memory
            // comes in huge pages (as a real BAR is contiguous), each chunk then sits in one of
            // them. Then, in a window too small or too full for that, exactly the buffer.
            let tries = (0..dev.mw_count()).flat_map(|mw| [(mw, len + HUGE - 4096), (mw, len)]);
            for (mw, want) in tries {
                let lease = match dev.lease_window(mw, want as u64, DC_TAG) {
                    Ok(l) => l,
                    Err(e) => {
                        last = Some(e.to_string());
                        continue;
                    }
                };
                let region = dev.inbound(mw).and_then(|r| {
                    let at = r.as_ptr() as usize + lease.offset as usize;
                    let pad = if want > len {
                        (HUGE - at % HUGE) % HUGE
                    } else {
                        0
                    };
                    r.slice(lease.offset as usize + pad, len)
                });
                let mem = match region
                    .map_err(|e| e.to_string())
                    .and_then(|r| DcMemory::window(r).map_err(|e| e.to_string()))
                {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = dev.release(Lease::Window(lease));
                        return Err(failed(format!("window DC buffer: {e}")));
                    }
                };
                let place = format!(
                    "NTB window {mw} of {}, offset {:#x}",
                    dev.describe(),
                    lease.offset
                );
                return Ok(DcBuffer {
                    mem,
                    place,
                    lease: Some((dev, lease)),
                });
            }
            Err(failed(format!(
                "window DC buffer: no room for {} in the NTB device's windows ({}); use a \
                 smaller --qd or --chunk, or --buffer host",
                size(len as u64),
                last.unwrap_or_else(|| "no windows".into())
            )))
        }
        BufferKind::P2pmem => {
            let devices = manager::p2pmem_devices();
            let Some((bdf, _)) = devices.iter().find(|(_, avail)| *avail >= len as u64) else {
                let why = if devices.is_empty() {
                    "no PCI device on this machine publishes p2pmem (no \
                     /sys/bus/pci/devices/*/p2pmem/: the kernel needs CONFIG_PCI_P2PDMA and a \
                     device that offers peer-to-peer memory, such as an NVMe controller memory \
                     buffer)"
                        .to_owned()
                } else {
                    let list: Vec<String> = devices
                        .iter()
                        .map(|(b, a)| format!("{b}: {} available", size(*a)))
                        .collect();
                    format!(
                        "no p2pmem device has {} free ({})",
                        size(len as u64),
                        list.join(", ")
                    )
                };
                return Err(failed(format!(
                    "p2pmem DC buffer: {why}; use --buffer window (the default) or host"
                )));
            };
            let dir = std::path::Path::new("/sys/bus/pci/devices").join(bdf);
            let mem = sys::p2pmem(&dir, len)
                .map_err(|e| failed(format!("p2pmem DC buffer on {bdf}: {e}")))?;
            Ok(DcBuffer {
                mem,
                place: format!("p2pmem of PCI device {bdf}"),
                lease: None,
            })
        }
    }
}

/// The progress bar on stderr (only when stderr is a terminal and JSON was not asked for).
struct ProgressBar {
    total: u64,
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
}

impl ProgressBar {
    fn new(total: u64, enabled: bool) -> ProgressBar {
        ProgressBar {
            total,
            start: Instant::now(),
            last: None,
            enabled: enabled && std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let _ = write!(
            std::io::stderr(),
            "\r[{}{}] {:5.1}%  {} / {}  {:.0} MB/s ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            frac * 100.0,
            human(done),
            human(self.total),
            done as f64 / secs / 1e6
        );
    }

    fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(78));
        }
    }
}

/// `1.0 GiB`, `3.5 MiB`, `100 B`.
fn human(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift {
            return format!("{:.1} {unit}", n as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{n} B")
}

/// What a finished copy reports.
struct Report {
    bytes: u64,
    seconds: f64,
    fixed: bool,
    /// Whether the DC buffer's memory is in huge pages (None: unknown).
    huge: Option<bool>,
    /// Where the DC buffer was.
    place: String,
    buffered_bytes: u64,
    notices: Vec<String>,
    verify: Option<Verify>,
}

struct Verify {
    src_sum: u64,
    dst_sum: u64,
    first_difference: Option<u64>,
}

/// Plan the copy: what the ring does with O_DIRECT (aligned), and the head and tail that go
/// through the page cache.
fn split(offset: u64, len: u64, align: u64) -> (Span, Span, Span) {
    let head = if offset.is_multiple_of(align) {
        0
    } else {
        (align - offset % align).min(len)
    };
    let middle = (len - head) / align * align;
    let tail = len - head - middle;
    let span = |at: u64, n: u64| Span {
        src_off: offset + at,
        dst_off: offset + at,
        len: n,
    };
    (span(0, head), span(head, middle), span(head + middle, tail))
}

fn copy(a: &CopyArgs, out: &mut String) -> Result<u8, CliError> {
    let src = manager::resolve(&a.src, Role::Src)?;
    let dst = manager::resolve(&a.dst, Role::Dst)?;
    let s = manager::open(&src, Role::Src, a.direct_only)?;
    let src_size = s.size;
    if a.offset > src_size {
        return Err(failed(format!(
            "--offset {} is beyond the end of SRC {} ({} bytes)",
            a.offset, src.arg, src_size
        )));
    }
    let len = a.length.unwrap_or(src_size - a.offset);
    let end = a.offset.saturating_add(len);
    if end > src_size {
        return Err(failed(format!(
            "SRC {} has {} bytes; the copy needs bytes {}..{end} (--offset + --length)",
            src.arg, src_size, a.offset
        )));
    }
    manager::check_overlap(&src, &dst, a.offset, a.offset, len)?;
    if dst.kind == Kind::Block {
        // Checked before opening for writing, so a refused copy leaves DST untouched.
        let probe = manager::open(&dst, Role::Src, false)?;
        if probe.size < end {
            return Err(failed(format!(
                "DST {} is smaller than the copy: it has {} bytes and the copy ends at byte \
                 {end}; a block device is never extended",
                dst.arg, probe.size
            )));
        }
    }
    // The DC buffer before DST is opened for writing, so that no buffer means no DST touched.
    let slots = a.qd.min(len.div_ceil(a.chunk as u64).max(1) as usize);
    let buffer = dc_buffer(a.buffer, slots * a.chunk)?;
    let d = manager::open(&dst, Role::Dst, a.direct_only)?;
    let whole = a.offset == 0 && a.length.is_none();
    if dst.kind == Kind::File {
        let target = if whole {
            Some(len)
        } else {
            (d.size < end).then_some(end)
        };
        if let Some(n) = target.filter(|&n| n != d.size) {
            d.file
                .set_len(n)
                .map_err(|e| failed(format!("DST {}: setting its size to {n}: {e}", dst.arg)))?;
        }
    }
    let r = run(a, (&src, &s), (&dst, &d), &buffer, slots, len)?;
    let outcome = Outcome {
        a,
        src: &src,
        dst: &dst,
        s: &s,
        d: &d,
        r,
    };
    if a.json {
        outcome.json(out);
    } else {
        outcome.text(out);
    }
    match (outcome.identical(), &outcome.r.verify) {
        (Some(false), Some(v)) => Err(CliError::failed(format!(
            "verify FAILED: SRC and DST differ{}",
            v.first_difference.map_or(String::new(), |o| format!(
                " (first difference at byte {o})"
            ))
        ))),
        _ => Ok(0),
    }
}

/// Move the bytes: the aligned middle through the ring and `buffer` (`slots` chunks in flight),
/// then the unaligned head and tail through the page cache.
fn run(
    a: &CopyArgs,
    (src, s): (&Endpoint, &Opened),
    (dst, d): (&Endpoint, &Opened),
    buffer: &DcBuffer,
    slots: usize,
    len: u64,
) -> Result<Report, CliError> {
    let align = s.align.max(d.align);
    let (head, middle, tail) = split(a.offset, len, align);
    let mut notices: Vec<String> = [&s.notice, &d.notice]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut bar = ProgressBar::new(len, !a.json);
    let start = Instant::now();
    let fixed;
    {
        let (mut ring, not_fixed) =
            Ring::new(2 * slots as u32, &buffer.mem, &s.file, &d.file, a.fixed)
                .map_err(|e| failed(format!("io_uring: {e}")))?;
        if let Some(e) = not_fixed {
            notices.push(format!(
                "the DC buffer could not be registered with io_uring ({e}); using unregistered buffers"
            ));
        }
        fixed = ring.fixed();
        operator::copy(&mut ring, middle, slots, a.chunk, |done| {
            bar.update(head.len + done)
        })
        .map_err(|e| copy_failed(&e, src, dst))?;
    }
    let huge = huge_bytes(buffer.mem.addr()).map(|b| b >= (slots * a.chunk) as u64);
    if a.buffer == BufferKind::Window && huge == Some(false) && middle.len > 0 {
        notices.push(
            "the DC buffer is in 4 KiB pages (the emulated device's filesystem gives no huge \
             pages), so each chunk is one DMA segment per page; a real window is contiguous: put \
             PCISOCK_EMU_DIR on a tmpfs mounted with huge=always (docs/CLI.md#pcisock-dc)"
                .to_owned(),
        );
    }
    let buffered_bytes = head.len + tail.len;
    if buffered_bytes > 0 {
        let sf = manager::open_buffered(src, Role::Src)?;
        let df = manager::open_buffered(dst, Role::Dst)?;
        let mut staging = vec![0u8; align.max(4096) as usize];
        for span in [head, tail] {
            operator::copy_buffered(&sf, &df, span, &mut staging)
                .map_err(|e| copy_failed(&e, src, dst))?;
        }
        df.sync_data()
            .map_err(|e| failed(format!("DST {}: syncing: {e}", dst.arg)))?;
        notices.push(format!(
            "{buffered_bytes} byte(s) of unaligned head/tail (O_DIRECT alignment {align}) went \
             through the page cache"
        ));
    } else if !d.direct {
        d.file
            .sync_data()
            .map_err(|e| failed(format!("DST {}: syncing: {e}", dst.arg)))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.update(len);
    bar.finish();
    let verify = if a.verify {
        Some(verify(src, dst, a.offset, len)?)
    } else {
        None
    };
    Ok(Report {
        bytes: len,
        seconds,
        fixed,
        huge,
        place: buffer.place.clone(),
        buffered_bytes,
        notices,
        verify,
    })
}

fn copy_failed(e: &CopyError, src: &Endpoint, dst: &Endpoint) -> CliError {
    failed(format!(
        "copy from {} to {} FAILED: {e}; DST holds an incomplete copy",
        src.arg, dst.arg
    ))
}

/// A fast 64-bit checksum (FxHash-style multiply-rotate over 8-byte words; not cryptographic).
fn checksum(mut h: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        h = (h.rotate_left(5) ^ v).wrapping_mul(K);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
    }
    h
}

/// Read both ranges back from the devices (cached pages dropped first) and compare them.
fn verify(src: &Endpoint, dst: &Endpoint, offset: u64, len: u64) -> Result<Verify, CliError> {
    let open = |ep: &Endpoint| {
        File::open(&ep.path).map_err(|e| failed(format!("verify: {}: {e}", ep.arg)))
    };
    let (sf, df) = (open(src)?, open(dst)?);
    sys::drop_cache(&sf);
    sys::drop_cache(&df);
    const PIECE: usize = 1 << 20;
    let (mut a, mut b) = (vec![0u8; PIECE], vec![0u8; PIECE]);
    let (mut hs, mut hd) = (len, len);
    let mut first_difference = None;
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(PIECE as u64) as usize;
        sf.read_exact_at(&mut a[..n], offset + at).map_err(|e| {
            failed(format!(
                "verify: reading SRC {} at {}: {e}",
                src.arg,
                offset + at
            ))
        })?;
        df.read_exact_at(&mut b[..n], offset + at).map_err(|e| {
            failed(format!(
                "verify: reading DST {} at {}: {e}",
                dst.arg,
                offset + at
            ))
        })?;
        hs = checksum(hs, &a[..n]);
        hd = checksum(hd, &b[..n]);
        if first_difference.is_none() && a[..n] != b[..n] {
            let i = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y);
            first_difference = i.map(|i| offset + at + i as u64);
        }
        at += n as u64;
    }
    Ok(Verify {
        src_sum: hs,
        dst_sum: hd,
        first_difference,
    })
}

/// One side's line of the text report.
fn side_text(out: &mut String, label: &str, ep: &Endpoint, o: &Opened, extra: &str) {
    let how = if o.direct {
        format!("O_DIRECT, alignment {}", o.align)
    } else {
        "page cache".into()
    };
    let _ = writeln!(
        out,
        "  {label}:     {} -> {} ({}{extra}, {how})",
        ep.arg,
        ep.path.display(),
        ep.kind.name()
    );
}

/// A finished copy and what it was asked to do, for the report.
struct Outcome<'a> {
    a: &'a CopyArgs,
    src: &'a Endpoint,
    dst: &'a Endpoint,
    s: &'a Opened,
    d: &'a Opened,
    r: Report,
}

impl Outcome<'_> {
    /// Whether --verify found SRC and DST identical (None without --verify).
    fn identical(&self) -> Option<bool> {
        self.r
            .verify
            .as_ref()
            .map(|v| v.first_difference.is_none() && v.src_sum == v.dst_sum)
    }

    fn text(&self, out: &mut String) {
        let (a, r, src, dst, s, d) = (self.a, &self.r, self.src, self.dst, self.s, self.d);
        let _ = writeln!(
            out,
            "copied {} ({} bytes) in {:.3} s: {:.0} MB/s",
            human(r.bytes),
            r.bytes,
            r.seconds,
            r.bytes as f64 / r.seconds.max(1e-9) / 1e6
        );
        side_text(out, "src", src, s, &format!(", {} bytes", s.size));
        side_text(
            out,
            "dst",
            dst,
            d,
            if dst.exists { "" } else { ", created" },
        );
        let _ = writeln!(out, "  range:   bytes {}..{}", a.offset, a.offset + r.bytes);
        let _ = writeln!(
            out,
            "  buffer:  {} ({}), {} x {} slots{}{}",
            a.buffer.name(),
            r.place,
            a.qd,
            size(a.chunk as u64),
            match r.huge {
                Some(true) => ", 2 MiB pages",
                Some(false) => ", 4 KiB pages",
                None => "",
            },
            if r.fixed {
                ", registered (fixed buffers)"
            } else {
                ""
            }
        );
        for n in &r.notices {
            let _ = writeln!(out, "  note:    {n}");
        }
        if let Some(v) = &r.verify {
            let _ = writeln!(
                out,
                "verify:  {} (checksum SRC {:016x}, DST {:016x})",
                if self.identical() == Some(true) {
                    "SRC and DST are identical"
                } else {
                    "SRC and DST DIFFER"
                },
                v.src_sum,
                v.dst_sum
            );
        }
    }

    fn json(&self, out: &mut String) {
        let (a, r, src, dst, s, d) = (self.a, &self.r, self.src, self.dst, self.s, self.d);
        let side = |ep: &Endpoint, o: &Opened| {
            format!(
                "{{\"arg\":{},\"path\":{},\"kind\":{},\"size\":{},\"direct\":{},\"align\":{}}}",
                json::string(&ep.arg),
                json::string(&ep.path.display().to_string()),
                json::string(ep.kind.name()),
                o.size,
                o.direct,
                o.align
            )
        };
        let verify = match &r.verify {
        None => "null".to_owned(),
        Some(v) => format!(
            "{{\"src_checksum\":\"{:016x}\",\"dst_checksum\":\"{:016x}\",\"identical\":{},\"first_difference\":{}}}",
            v.src_sum,
            v.dst_sum,
            self.identical() == Some(true),
            v.first_difference.map_or("null".to_owned(), |o| o.to_string())
        ),
    };
        let notes: Vec<String> = r.notices.iter().map(|n| json::string(n)).collect();
        let _ = writeln!(
        out,
        "{{\"src\":{},\"dst\":{},\"offset\":{},\"bytes\":{},\"seconds\":{:.6},\"mb_per_s\":{:.1},\
\"qd\":{},\"chunk\":{},\"buffer\":{},\"huge_pages\":{},\"fixed_buffers\":{},\"buffered_bytes\":{},\"notices\":[{}],\"verify\":{}}}",
        side(src, s),
        side(dst, d),
        a.offset,
        r.bytes,
        r.seconds,
        r.bytes as f64 / r.seconds.max(1e-9) / 1e6,
        a.qd,
        a.chunk,
        json::string(a.buffer.name()),
        r.huge.map_or("null".to_owned(), |h| h.to_string()),
        r.fixed,
        r.buffered_bytes,
        notes.join(","),
        verify
    );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_into_head_middle_tail() {
        let (h, m, t) = split(0, 10_000, 512);
        assert_eq!((h.len, m.len, t.len), (0, 9728, 272));
        let (h, m, t) = split(100, 10_000, 512);
        assert_eq!((h.len, m.len, t.len), (412, 9216, 372));
        assert_eq!(m.src_off, 512);
        assert_eq!(t.src_off, 512 + 9216);
        let (h, m, t) = split(100, 50, 512);
        assert_eq!((h.len, m.len, t.len), (50, 0, 0));
        let (h, m, t) = split(7, 100, 1);
        assert_eq!((h.len, m.len, t.len), (0, 100, 0));
    }

    #[test]
    fn checksum_sees_every_byte() {
        let a = vec![1u8; 1001];
        let mut b = a.clone();
        b[1000] = 2;
        assert_ne!(checksum(0, &a), checksum(0, &b));
        b[1000] = 1;
        b[3] = 0;
        assert_ne!(checksum(0, &a), checksum(0, &b));
    }
}
