//! Direct Connect (the DC command of the Direct Connect papers) as a library: bytes move from a
//! source device or file to a destination through a DC buffer that both reach by DMA — an
//! inbound memory window of the NTB device by default — with `qd` linked read → write pairs in
//! flight on an io_uring with O_DIRECT, so no copy goes through this process's own memory.
//!
//! Called by the `pcisock dc copy` command (which keeps only its arguments and the report) and
//! by anything else that wants a checked DC copy. The rooms: `manager` resolves and checks the
//! two sides, `buffer` gets the DC buffer, `operator`
//! runs the pipeline, and `sys` holds the only unsafe code. This crate never prints: progress
//! goes to a callback, the outcome to a [`Copied`], every failure to a [`DcError`].
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

mod buffer;
mod manager;
mod operator;
mod sys;

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

pub use buffer::BufferKind;
pub use manager::Kind;
use manager::{CheckError, CopyEnd, CopySide, Opened};
use operator::{CopyError, Span};
use sys::Ring;

/// What to copy and how.
#[derive(Clone, Debug)]
pub struct Request {
    /// SRC: a block device or regular file (a path, a /dev/disk/by-id/ link, or a bare name).
    pub src: String,
    /// DST: likewise; a file that does not exist is created.
    pub dst: String,
    /// Byte offset of the copy, the same in SRC and DST.
    pub offset: u64,
    /// Bytes to copy (None: SRC's size minus the offset).
    pub length: Option<u64>,
    /// Chunks in flight (1..=64).
    pub qd: usize,
    /// Bytes per chunk and per DC buffer slot (a multiple of 4096, 4 KiB..=64 MiB).
    pub chunk: usize,
    pub buffer: BufferKind,
    /// Fail instead of falling back to the page cache where a filesystem refuses O_DIRECT.
    pub direct_only: bool,
    /// Register the DC buffer with io_uring (fixed buffers).
    pub fixed: bool,
}

impl Request {
    /// A whole-file copy with the defaults: 4 chunks of 1 MiB in flight, the window buffer,
    /// fixed buffers.
    pub fn new(src: impl Into<String>, dst: impl Into<String>) -> Request {
        Request {
            src: src.into(),
            dst: dst.into(),
            offset: 0,
            length: None,
            qd: 4,
            chunk: 1 << 20,
            buffer: BufferKind::Window,
            direct_only: false,
            fixed: true,
        }
    }

    /// Check the request's own limits (not the devices: [`copy`] does that).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.qd) {
            return Err(format!("--qd {}: must be 1..64", self.qd));
        }
        if self.chunk < 4096 || self.chunk > 64 << 20 || !self.chunk.is_multiple_of(4096) {
            return Err(format!(
                "--chunk {}: must be a multiple of 4096 from 4 KiB to 64 MiB",
                self.chunk
            ));
        }
        Ok(())
    }
}

/// Why a copy did not happen or did not finish.
#[derive(Debug)]
pub enum DcError {
    /// Refused before a byte moved (a check of the request or the devices); DST is untouched,
    /// except that a DST file may have been created.
    Refused(String),
    /// No DC buffer of the kind asked for.
    Buffer(String),
    /// The copy started and failed: DST holds an incomplete copy.
    Failed(String),
}

impl fmt::Display for DcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DcError::Refused(m) | DcError::Buffer(m) | DcError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DcError {}

impl From<CheckError> for DcError {
    fn from(e: CheckError) -> DcError {
        DcError::Refused(e.0)
    }
}

/// One side of a finished copy, for the report.
#[derive(Clone, Debug)]
pub struct SideReport {
    /// The argument as given.
    pub arg: String,
    /// Where it resolved to.
    pub path: PathBuf,
    pub kind: Kind,
    /// Whether it existed before the copy (a DST file may be created).
    pub existed: bool,
    /// Size in bytes when opened.
    pub size: u64,
    /// Whether the ring used it with O_DIRECT.
    pub direct: bool,
    /// O_DIRECT offset alignment (1 when not direct).
    pub align: u64,
}

impl SideReport {
    fn of(ep: &CopyEnd, o: &Opened) -> SideReport {
        SideReport {
            arg: ep.arg.clone(),
            path: ep.path.clone(),
            kind: ep.kind,
            existed: ep.exists,
            size: o.size,
            direct: o.direct,
            align: o.align,
        }
    }
}

/// What a finished copy reports.
#[derive(Clone, Debug)]
pub struct Copied {
    pub src: SideReport,
    pub dst: SideReport,
    pub offset: u64,
    pub bytes: u64,
    /// From the first byte to DST synced.
    pub seconds: f64,
    /// Whether the DC buffer was registered with io_uring.
    pub fixed: bool,
    /// Whether the DC buffer's memory is in huge pages (None: unknown).
    pub huge: Option<bool>,
    /// Where the DC buffer was.
    pub place: String,
    /// Bytes of unaligned head and tail that went through the page cache.
    pub buffered_bytes: u64,
    pub notices: Vec<String>,
}

/// What reading both ranges back found.
#[derive(Clone, Debug)]
pub struct Verify {
    pub src_sum: u64,
    pub dst_sum: u64,
    pub first_difference: Option<u64>,
}

impl Verify {
    /// SRC and DST are the same bytes.
    pub fn identical(&self) -> bool {
        self.first_difference.is_none() && self.src_sum == self.dst_sum
    }
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

fn failed(e: impl fmt::Display) -> DcError {
    DcError::Failed(e.to_string())
}

fn refused(e: impl fmt::Display) -> DcError {
    DcError::Refused(e.to_string())
}

/// Check and run a copy. `progress` is called with the bytes copied so far and the bytes to copy
/// (often; the caller throttles what it draws).
pub fn copy(a: &Request, progress: &mut dyn FnMut(u64, u64)) -> Result<Copied, DcError> {
    a.check().map_err(DcError::Refused)?;
    let src = manager::resolve(&a.src, CopySide::Src)?;
    let dst = manager::resolve(&a.dst, CopySide::Dst)?;
    let s = manager::open(&src, CopySide::Src, a.direct_only)?;
    let src_size = s.size;
    if a.offset > src_size {
        return Err(refused(format!(
            "--offset {} is beyond the end of SRC {} ({} bytes)",
            a.offset, src.arg, src_size
        )));
    }
    let len = a.length.unwrap_or(src_size - a.offset);
    let end = a.offset.saturating_add(len);
    if end > src_size {
        return Err(refused(format!(
            "SRC {} has {} bytes; the copy needs bytes {}..{end} (--offset + --length)",
            src.arg, src_size, a.offset
        )));
    }
    manager::check_overlap(&src, &dst, a.offset, a.offset, len)?;
    if dst.kind == Kind::Block {
        // Checked before opening for writing, so a refused copy leaves DST untouched.
        let probe = manager::open(&dst, CopySide::Src, false)?;
        if probe.size < end {
            return Err(refused(format!(
                "DST {} is smaller than the copy: it has {} bytes and the copy ends at byte \
                 {end}; a block device is never extended",
                dst.arg, probe.size
            )));
        }
    }
    // The DC buffer before DST is opened for writing, so that no buffer means no DST touched.
    let slots = a.qd.min(len.div_ceil(a.chunk as u64).max(1) as usize);
    let buffer = buffer::dc_buffer(a.buffer, slots * a.chunk)?;
    let d = manager::open(&dst, CopySide::Dst, a.direct_only)?;
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
    let align = s.align.max(d.align);
    let (head, middle, tail) = split(a.offset, len, align);
    let mut notices: Vec<String> = [&s.notice, &d.notice]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
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
            progress(head.len + done, len)
        })
        .map_err(|e| copy_failed(&e, &src, &dst))?;
    }
    let huge = buffer::huge_bytes(buffer.mem.addr()).map(|b| b >= (slots * a.chunk) as u64);
    if a.buffer == BufferKind::Window && huge == Some(false) && middle.len > 0 {
        let why = buffer.collapse.as_deref().map_or(String::new(), |e| {
            format!(" (collapsing it into 2 MiB pages failed: {e})")
        });
        notices.push(format!(
            "the DC buffer is in 4 KiB pages{why}, so each chunk is one DMA segment per page; a \
             real window is contiguous: put PCISOCK_EMU_DIR on a tmpfs mounted with huge=always \
             (docs/CLI.md#pcisock-dc)"
        ));
    }
    let buffered_bytes = head.len + tail.len;
    if buffered_bytes > 0 {
        let sf = manager::open_buffered(&src, CopySide::Src)?;
        let df = manager::open_buffered(&dst, CopySide::Dst)?;
        let mut staging = vec![0u8; align.max(4096) as usize];
        for span in [head, tail] {
            operator::copy_buffered(&sf, &df, span, &mut staging)
                .map_err(|e| copy_failed(&e, &src, &dst))?;
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
    progress(len, len);
    Ok(Copied {
        src: SideReport::of(&src, &s),
        dst: SideReport::of(&dst, &d),
        offset: a.offset,
        bytes: len,
        seconds,
        fixed,
        huge,
        place: buffer.place.clone(),
        buffered_bytes,
        notices,
    })
}

fn copy_failed(e: &CopyError, src: &CopyEnd, dst: &CopyEnd) -> DcError {
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

/// Read both ranges of a finished copy back from the devices (cached pages dropped first) and
/// compare them.
pub fn verify(c: &Copied) -> Result<Verify, DcError> {
    let (src, dst, offset, len) = (&c.src, &c.dst, c.offset, c.bytes);
    let open = |side: &SideReport| {
        File::open(&side.path).map_err(|e| failed(format!("verify: {}: {e}", side.arg)))
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

    #[test]
    fn requests_outside_the_limits_are_refused() {
        let ok = Request::new("a", "b");
        assert!(ok.check().is_ok());
        for (qd, chunk) in [(0, 4096), (65, 4096), (1, 1000), (1, 2048), (1, 128 << 20)] {
            let r = Request {
                qd,
                chunk,
                ..ok.clone()
            };
            assert!(r.check().is_err(), "qd {qd} chunk {chunk}");
        }
    }
}
