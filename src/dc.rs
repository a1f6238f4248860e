//! `pcisock dc copy`: the command line of a Direct Connect copy. The copy itself is the `dc`
//! crate's (resolving and checking both sides, the DC buffer, the io_uring pipeline); this module
//! only reads the arguments, draws the progress bar and writes the report (text or JSON). It never
//! copies a byte itself.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use dc::{BufferKind, Copied, DcError, Request, SideReport, Verify};
use ntbdrv::format_size;

use crate::cli::{parse_number, unexpected, Arg, Args, CliError};
use serde::Serialize;

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

/// `dc copy`'s arguments: the library's request and what the report needs.
struct CopyArgs {
    req: Request,
    verify: bool,
    json: bool,
}

impl From<DcError> for CliError {
    fn from(e: DcError) -> CliError {
        CliError::failed(e.to_string())
    }
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
        Some(Arg::Value(w)) if w == "copy" => {}
        Some(Arg::Short('h') | Arg::Long("help")) => return help(out),
        Some(Arg::Value(w)) => {
            return Err(args.usage(format!(
                "unknown dc subcommand {:?}: expected copy",
                w.to_string_lossy()
            )))
        }
        Some(arg) => return Err(unexpected("dc", arg)),
        None => return Err(args.usage("missing subcommand: copy")),
    }
    let mut words = Vec::new();
    let mut a = CopyArgs {
        req: Request::new("", ""),
        verify: false,
        json: false,
    };
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Value(w) => words.push(args.string(w)?),
            Arg::Short('h') | Arg::Long("help") => return help(out),
            Arg::Long("offset") => a.req.offset = parse_size_arg("--offset", &args.value()?)?,
            Arg::Long("length") => a.req.length = Some(parse_size_arg("--length", &args.value()?)?),
            Arg::Long("qd") => a.req.qd = parse_number("dc", "--qd", &args.value()?)?,
            Arg::Long("chunk") => a.req.chunk = parse_size_arg("--chunk", &args.value()?)? as usize,
            Arg::Long("buffer") => {
                a.req.buffer = match args.value()?.as_str() {
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
            Arg::Long("direct-only") => a.req.direct_only = true,
            Arg::Long("no-fixed") => a.req.fixed = false,
            Arg::Long("verify") => a.verify = true,
            Arg::Long("json") => a.json = true,
            arg => return Err(unexpected("dc", arg)),
        }
    }
    let [src, dst]: [String; 2] = words.try_into().map_err(|w: Vec<String>| {
        args.usage(format!(
            "dc copy takes SRC and DST ({} argument(s) given)",
            w.len()
        ))
    })?;
    a.req.src = src;
    a.req.dst = dst;
    a.req.check().map_err(|e| args.usage(e))?;
    let result = copy(&a, out);
    // Scripts asking for JSON get an object on a failure too (the message also goes to stderr).
    if let (true, Err(e @ CliError::Failed(_))) = (a.json, &result) {
        let _ = writeln!(out, "{}", serde_json::json!({ "error": e.to_string() }));
    }
    result
}

/// Run the copy with a progress bar, verify if asked, and write the report.
fn copy(a: &CopyArgs, out: &mut String) -> Result<u8, CliError> {
    let mut bar = ProgressBar::new(!a.json);
    let copied = dc::copy(&a.req, &mut |done, total| bar.update(done, total));
    bar.finish();
    let copied = copied?;
    let verify = if a.verify {
        Some(dc::verify(&copied)?)
    } else {
        None
    };
    let outcome = CopyReport {
        a,
        r: &copied,
        verify: verify.as_ref(),
    };
    if a.json {
        outcome.json(out);
    } else {
        outcome.text(out);
    }
    match verify {
        Some(v) if !v.identical() => Err(CliError::failed(format!(
            "verify FAILED: SRC and DST differ{}",
            v.first_difference.map_or(String::new(), |o| format!(
                " (first difference at byte {o})"
            ))
        ))),
        _ => Ok(0),
    }
}

/// The progress bar on stderr (only when stderr is a terminal and JSON was not asked for).
struct ProgressBar {
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
}

impl ProgressBar {
    fn new(enabled: bool) -> ProgressBar {
        ProgressBar {
            start: Instant::now(),
            last: None,
            enabled: enabled && std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
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
            format_size(done),
            format_size(total),
            done as f64 / secs / 1e6
        );
    }

    fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(78));
        }
    }
}

/// One side's line of the text report.
fn side_text(out: &mut String, label: &str, side: &SideReport, extra: &str) {
    let how = if side.direct {
        format!("O_DIRECT, alignment {}", side.align)
    } else {
        "page cache".into()
    };
    let _ = writeln!(
        out,
        "  {label}:     {} -> {} ({}{extra}, {how})",
        side.arg,
        side.path.display(),
        side.kind.name()
    );
}

/// A finished copy and what it was asked to do, for the report.
struct CopyReport<'a> {
    a: &'a CopyArgs,
    r: &'a Copied,
    verify: Option<&'a Verify>,
}

impl CopyReport<'_> {
    fn text(&self, out: &mut String) {
        let (a, r) = (&self.a.req, self.r);
        let _ = writeln!(
            out,
            "copied {} ({} bytes) in {:.3} s: {:.0} MB/s",
            format_size(r.bytes),
            r.bytes,
            r.seconds,
            r.bytes as f64 / r.seconds.max(1e-9) / 1e6
        );
        side_text(out, "src", &r.src, &format!(", {} bytes", r.src.size));
        side_text(
            out,
            "dst",
            &r.dst,
            if r.dst.existed { "" } else { ", created" },
        );
        let _ = writeln!(out, "  range:   bytes {}..{}", r.offset, r.offset + r.bytes);
        let _ = writeln!(
            out,
            "  buffer:  {} ({}), {} x {} slots{}{}",
            a.buffer.name(),
            r.place,
            a.qd,
            format_size(a.chunk as u64),
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
        if let Some(v) = self.verify {
            let _ = writeln!(
                out,
                "verify:  {} (checksum SRC {:016x}, DST {:016x})",
                if v.identical() {
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
        let (a, r) = (&self.a.req, self.r);
        let side = |side: &SideReport| SideJson {
            arg: side.arg.clone(),
            path: side.path.display().to_string(),
            kind: side.kind.name(),
            size: side.size,
            direct: side.direct,
            align: side.align,
        };
        let report = ReportJson {
            src: side(&r.src),
            dst: side(&r.dst),
            offset: r.offset,
            bytes: r.bytes,
            seconds: (r.seconds * 1e6).round() / 1e6,
            mb_per_s: (r.bytes as f64 / r.seconds.max(1e-9) / 1e5).round() / 10.0,
            qd: a.qd,
            chunk: a.chunk,
            buffer: a.buffer.name(),
            huge_pages: r.huge,
            fixed_buffers: r.fixed,
            buffered_bytes: r.buffered_bytes,
            notices: r.notices.clone(),
            verify: self.verify.map(|v| VerifyJson {
                src_checksum: format!("{:016x}", v.src_sum),
                dst_checksum: format!("{:016x}", v.dst_sum),
                identical: v.identical(),
                first_difference: v.first_difference,
            }),
        };
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(&report).unwrap_or_default()
        );
    }
}

/// `dc copy --json`: one object per copy.
#[derive(Serialize)]
struct ReportJson {
    src: SideJson,
    dst: SideJson,
    offset: u64,
    bytes: u64,
    seconds: f64,
    mb_per_s: f64,
    qd: usize,
    chunk: usize,
    buffer: &'static str,
    huge_pages: Option<bool>,
    fixed_buffers: bool,
    buffered_bytes: u64,
    notices: Vec<String>,
    verify: Option<VerifyJson>,
}

#[derive(Serialize)]
struct SideJson {
    arg: String,
    path: String,
    kind: &'static str,
    size: u64,
    direct: bool,
    align: u64,
}

#[derive(Serialize)]
struct VerifyJson {
    src_checksum: String,
    dst_checksum: String,
    identical: bool,
    first_difference: Option<u64>,
}
