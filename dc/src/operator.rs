//! The DC operator: keeps `qd` chunks in flight between the source and the destination through
//! the DC buffer, each chunk in its own slot as a linked read → write (the write starts when
//! the read has filled the slot), and a new chunk starts in a slot as soon as its write is done.
//!
//! Called by [`crate::copy`] with a ring it has set up; it never opens files or chooses
//! the buffer. Short reads and writes are finished by resubmitting the rest, EAGAIN and EINTR
//! are retried, and any other failure stops new work, lets what is in flight complete, and is
//! returned: a copy is only `Ok` when every byte of every chunk was written.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::sys::{Op, Ring, Side};

/// The part of a copy the ring does: `len` bytes from `src_off` to `dst_off`.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub src_off: u64,
    pub dst_off: u64,
    pub len: u64,
}

/// Why a copy stopped.
#[derive(Debug)]
pub enum CopyError {
    /// Reading the source at `offset` failed.
    Read { offset: u64, err: io::Error },
    /// Writing the destination at `offset` failed.
    Write { offset: u64, err: io::Error },
    /// The source returned end-of-file at `offset`, before the planned end (it shrank).
    SourceEnded { offset: u64 },
    /// The destination accepted no bytes at `offset`.
    WroteNothing { offset: u64 },
    /// The ring itself failed.
    Ring(io::Error),
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyError::Read { offset, err } => write!(f, "reading SRC at byte {offset}: {err}"),
            CopyError::Write { offset, err } => write!(f, "writing DST at byte {offset}: {err}"),
            CopyError::SourceEnded { offset } => {
                write!(
                    f,
                    "SRC ended at byte {offset}, before the end of the copy (did it shrink?)"
                )
            }
            CopyError::WroteNothing { offset } => {
                write!(f, "DST accepted no bytes at byte {offset} (device full?)")
            }
            CopyError::Ring(e) => write!(f, "io_uring: {e}"),
        }
    }
}

/// One slot of the DC buffer and the chunk it is moving.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// Offset of the chunk from the start of the span.
    rel: u64,
    len: usize,
    /// Bytes of the chunk in the slot so far.
    read: usize,
    /// Bytes of the chunk written so far.
    written: usize,
    /// Operations of this slot not yet completed.
    outstanding: u8,
    /// A read came back short: whatever the linked write did, write the chunk again.
    rewrite: bool,
    busy: bool,
}

fn transient(res: i32) -> bool {
    res == -libc::EAGAIN || res == -libc::EINTR
}

/// Copy `span` through `ring`'s DC buffer, `qd` chunks of `chunk` bytes in flight (slot `i` is
/// bytes `i*chunk..` of the buffer). `progress` is told the bytes finished so far.
pub fn copy(
    ring: &mut Ring<'_>,
    span: Span,
    qd: usize,
    chunk: usize,
    mut progress: impl FnMut(u64),
) -> Result<(), CopyError> {
    let mut slots = vec![Slot::default(); qd];
    let mut next: u64 = 0;
    let mut done: u64 = 0;
    let mut failed: Option<CopyError> = None;
    let mut cqes = Vec::with_capacity(2 * qd);
    let op = |side, i: usize, s: &Slot, at: usize, len: usize| {
        let base = match side {
            Side::Src => span.src_off,
            Side::Dst => span.dst_off,
        };
        Op {
            side,
            mem_off: i * chunk + at,
            len: len as u32,
            file_off: base + s.rel + at as u64,
            user_data: (i as u64) << 1 | u64::from(side == Side::Dst),
        }
    };
    loop {
        if failed.is_none() {
            for (i, s) in slots.iter_mut().enumerate() {
                if s.busy || next >= span.len {
                    continue;
                }
                let len = (span.len - next).min(chunk as u64) as usize;
                *s = Slot {
                    rel: next,
                    len,
                    busy: true,
                    outstanding: 2,
                    ..Slot::default()
                };
                next += len as u64;
                let (r, w) = (op(Side::Src, i, s, 0, len), op(Side::Dst, i, s, 0, len));
                if let Err(e) = ring.push_linked(&r, &w) {
                    s.outstanding = 0;
                    failed = Some(CopyError::Ring(e));
                    break;
                }
            }
        }
        if ring.inflight() == 0 {
            break;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            return Err(failed.unwrap_or(CopyError::Ring(e)));
        }
        cqes.clear();
        ring.reap(&mut cqes);
        for &(ud, res) in &cqes {
            let i = (ud >> 1) as usize;
            let is_write = ud & 1 == 1;
            let s = &mut slots[i];
            s.outstanding -= 1;
            if !is_write {
                if res > 0 {
                    s.read += res as usize;
                    if s.read < s.len {
                        s.rewrite = true;
                    }
                } else if res == 0 {
                    failed.get_or_insert(CopyError::SourceEnded {
                        offset: span.src_off + s.rel + s.read as u64,
                    });
                } else if !transient(res) {
                    failed.get_or_insert(CopyError::Read {
                        offset: span.src_off + s.rel + s.read as u64,
                        err: io::Error::from_raw_os_error(-res),
                    });
                } else {
                    s.rewrite = true;
                }
            } else if res > 0 {
                s.written += res as usize;
            } else if res == 0 {
                failed.get_or_insert(CopyError::WroteNothing {
                    offset: span.dst_off + s.rel + s.written as u64,
                });
            } else if res != -libc::ECANCELED && !transient(res) {
                failed.get_or_insert(CopyError::Write {
                    offset: span.dst_off + s.rel + s.written as u64,
                    err: io::Error::from_raw_os_error(-res),
                });
            }
            if s.outstanding > 0 {
                continue;
            }
            if s.rewrite {
                s.written = 0;
                s.rewrite = false;
            }
            if failed.is_some() {
                s.busy = false;
                continue;
            }
            let s = *s;
            let pushed = if s.read < s.len {
                ring.push_read(&op(Side::Src, i, &s, s.read, s.len - s.read))
            } else if s.written < s.len {
                ring.push_write(&op(Side::Dst, i, &s, s.written, s.len - s.written))
            } else {
                done += s.len as u64;
                slots[i].busy = false;
                continue;
            };
            match pushed {
                Ok(()) => slots[i].outstanding = 1,
                Err(e) => {
                    slots[i].busy = false;
                    failed.get_or_insert(CopyError::Ring(e));
                }
            }
        }
        progress(done);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copy `span` with plain positioned reads and writes through `buf` (the head and tail of a
/// copy that O_DIRECT cannot take: they go through the page cache on fds opened without it).
pub fn copy_buffered(src: &File, dst: &File, span: Span, buf: &mut [u8]) -> Result<(), CopyError> {
    let mut at = 0u64;
    while at < span.len {
        let n = (span.len - at).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], span.src_off + at)
            .map_err(|err| match err.kind() {
                io::ErrorKind::UnexpectedEof => CopyError::SourceEnded {
                    offset: span.src_off + at,
                },
                _ => CopyError::Read {
                    offset: span.src_off + at,
                    err,
                },
            })?;
        dst.write_all_at(&buf[..n], span.dst_off + at)
            .map_err(|err| CopyError::Write {
                offset: span.dst_off + at,
                err,
            })?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::DcMemory;

    fn files(tag: &str, data: &[u8]) -> (std::path::PathBuf, File, File) {
        let dir = std::env::temp_dir().join(format!("pcisock-dc-op-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("src"), data).unwrap();
        let src = File::open(dir.join("src")).unwrap();
        let dst = File::create(dir.join("dst")).unwrap();
        (dir, src, dst)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn copies_every_chunk_and_reports_progress() {
        let data = pattern(300_001);
        let (dir, src, dst) = files("ok", &data);
        let mem = DcMemory::host(3 * 65536).unwrap();
        let (mut ring, _) = Ring::new(8, &mem, &src, &dst, true).unwrap();
        let span = Span {
            src_off: 0,
            dst_off: 0,
            len: data.len() as u64,
        };
        let mut last = 0;
        copy(&mut ring, span, 3, 65536, |d| {
            assert!(d >= last && d <= span.len);
            last = d;
        })
        .unwrap();
        assert_eq!(last, span.len);
        drop(ring);
        assert_eq!(std::fs::read(dir.join("dst")).unwrap(), data);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_source_that_ends_early_is_an_error_not_a_short_success() {
        // The span claims 200000 bytes of a 100000-byte file: the chunk across the end reads
        // short (its linked write is cancelled), the rest of it reads 0 bytes.
        let data = pattern(100_000);
        let (dir, src, dst) = files("short", &data);
        let mem = DcMemory::host(2 * 65536).unwrap();
        let (mut ring, _) = Ring::new(4, &mem, &src, &dst, false).unwrap();
        let span = Span {
            src_off: 0,
            dst_off: 0,
            len: 200_000,
        };
        let mut last = 0;
        let r = copy(&mut ring, span, 2, 65536, |d| last = d);
        // Which chunk notices first depends on completion order; both are past the end.
        assert!(
            matches!(r, Err(CopyError::SourceEnded { offset }) if offset >= 100_000),
            "{r:?}"
        );
        assert!(last < span.len);
        let _ = std::fs::remove_dir_all(dir);
    }
}
