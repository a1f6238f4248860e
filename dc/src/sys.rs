//! The DC path's only unsafe code: the DC buffer's memory as the kernel sees it, the io_uring
//! that moves bytes between the devices and that memory, and three queries std does not offer
//! (a block device's size and logical block size, a file's O_DIRECT alignment, dropping a file's
//! cached pages).
//!
//! Called by the DC operator (`operator.rs`) and the DC manager (`manager.rs`); it never decides
//! what to copy, only does the one system call it is asked for.
//!
//! # Safety
//! - [`DcMemory`] is a pointer and a length into a mapping it owns (an anonymous host mapping)
//!   or keeps alive (an `ntbdrv::Region` of a leased window holds an `Arc` to the device's
//!   mapping). No Rust reference to its bytes is ever created while a [`Ring`] borrows it: the
//!   kernel writes them (reads from the source device land there), so they are only touched by
//!   the kernel, and by [`DcMemory::copy_out`] when no ring exists.
//! - A [`Ring`] borrows the memory and both files for its whole life, so neither the buffer nor
//!   the file descriptors can go away while an operation on them is queued; every operation's
//!   buffer range is checked against the memory's length before it is queued; and dropping the
//!   ring waits for every operation still in flight (the kernel pins the pages it is using in
//!   any case, so even an abandoned wait cannot make it write into freed memory).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};

/// A transparent huge page.
const HUGE: usize = 2 << 20;

/// What keeps the DC buffer's memory mapped.
enum Keep {
    /// Part of an inbound NTB memory window (the region holds the device mapping alive).
    Window(#[allow(dead_code)] ntbdrv::Region),
    /// Anonymous host memory, page-aligned.
    Host(#[allow(dead_code)] memmap2::MmapMut),
}

/// The DC buffer's memory: where source reads land and destination writes come from.
pub struct DcMemory {
    base: *mut u8,
    len: usize,
    _keep: Keep,
}

impl DcMemory {
    /// Memory of a leased window slice. Fails unless it starts on a page boundary (O_DIRECT
    /// needs an aligned buffer; windows are leased in 4 KiB units of a page-aligned arena).
    pub fn window(region: ntbdrv::Region) -> io::Result<DcMemory> {
        let base = region.as_ptr();
        if !(base as usize).is_multiple_of(4096) {
            return Err(io::Error::other(format!(
                "the window slice at {base:p} is not page-aligned"
            )));
        }
        Ok(DcMemory {
            base,
            len: region.len(),
            _keep: Keep::Window(region),
        })
    }

    /// `len` bytes of anonymous host memory starting on a 2 MiB boundary, advised to use
    /// transparent huge pages where the kernel allows them: a chunk in one 2 MiB page is one DMA
    /// segment instead of one per 4 KiB page. (A buffer smaller than 2 MiB is given a whole
    /// aligned 2 MiB, or the kernel could not back it with a huge page.)
    pub fn host(len: usize) -> io::Result<DcMemory> {
        let mut map = memmap2::MmapMut::map_anon(len.div_ceil(HUGE) * HUGE + HUGE)?;
        let _ = map.advise(memmap2::Advice::HugePage);
        let pad = (HUGE - map.as_ptr() as usize % HUGE) % HUGE;
        Ok(DcMemory {
            // `pad + len` stays inside the mapping (it has `HUGE` bytes to spare).
            base: map[pad..].as_mut_ptr(),
            len,
            _keep: Keep::Host(map),
        })
    }

    /// The buffer's address.
    pub fn addr(&self) -> usize {
        self.base as usize
    }

    /// Copy `dst.len()` bytes at `offset` out of the buffer (for tests and checks; never while
    /// a ring is using the buffer, which the borrow checker enforces: a [`Ring`] borrows it).
    #[allow(dead_code)]
    pub fn copy_out(&mut self, offset: usize, dst: &mut [u8]) {
        assert!(offset
            .checked_add(dst.len())
            .is_some_and(|end| end <= self.len));
        // SAFETY: the range is inside the mapping (checked); `&mut self` means no ring holds the
        // buffer, so nothing writes it concurrently in this process.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(offset), dst.as_mut_ptr(), dst.len()) }
    }
}

/// Which file an operation is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// One read or write: `len` bytes between `mem_off` of the DC buffer and `file_off` of a file.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub side: Side,
    pub mem_off: usize,
    pub len: u32,
    pub file_off: u64,
    pub user_data: u64,
}

/// An io_uring over one DC buffer and the two files of a copy.
pub struct Ring<'a> {
    uring: IoUring,
    mem: &'a DcMemory,
    src: &'a File,
    dst: &'a File,
    fixed: bool,
    inflight: usize,
}

impl<'a> Ring<'a> {
    /// A ring with room for `entries` submissions. With `fixed`, the DC buffer is registered with
    /// the kernel once (pinned) and every operation uses it as fixed buffer 0; if registration
    /// fails the ring works without it and the error is returned beside it.
    pub fn new(
        entries: u32,
        mem: &'a DcMemory,
        src: &'a File,
        dst: &'a File,
        fixed: bool,
    ) -> io::Result<(Ring<'a>, Option<io::Error>)> {
        let uring = IoUring::new(entries.next_power_of_two())?;
        let mut not_fixed = None;
        let mut registered = false;
        if fixed {
            let iov = [libc::iovec {
                iov_base: mem.base.cast(),
                iov_len: mem.len,
            }];
            // SAFETY: the iovec covers exactly the DC buffer, which stays mapped for as long as
            // the ring (it is borrowed for 'a); the kernel pins its pages until the ring closes.
            match unsafe { uring.submitter().register_buffers(&iov) } {
                Ok(()) => registered = true,
                Err(e) => not_fixed = Some(e),
            }
        }
        Ok((
            Ring {
                uring,
                mem,
                src,
                dst,
                fixed: registered,
                inflight: 0,
            },
            not_fixed,
        ))
    }

    /// Whether the DC buffer is registered as a fixed buffer.
    pub fn fixed(&self) -> bool {
        self.fixed
    }

    /// Operations queued or in the kernel whose completion has not been reaped.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    fn entry(&self, op: &Op, write: bool) -> squeue::Entry {
        let end = op.mem_off.checked_add(op.len as usize);
        assert!(
            end.is_some_and(|e| e <= self.mem.len),
            "operation {op:?} outside the DC buffer ({} bytes)",
            self.mem.len
        );
        let file = match op.side {
            Side::Src => self.src,
            Side::Dst => self.dst,
        };
        let fd = types::Fd(file.as_raw_fd());
        // SAFETY: mem_off + len <= mem.len (asserted above), so the pointer and the range stay
        // inside the DC buffer; building the pointer does not access memory.
        let ptr = unsafe { self.mem.base.add(op.mem_off) };
        let e = match (write, self.fixed) {
            (false, false) => opcode::Read::new(fd, ptr, op.len)
                .offset(op.file_off)
                .build(),
            (false, true) => opcode::ReadFixed::new(fd, ptr, op.len, 0)
                .offset(op.file_off)
                .build(),
            (true, false) => opcode::Write::new(fd, ptr, op.len)
                .offset(op.file_off)
                .build(),
            (true, true) => opcode::WriteFixed::new(fd, ptr, op.len, 0)
                .offset(op.file_off)
                .build(),
        };
        e.user_data(op.user_data)
    }

    fn push(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        let mut sq = self.uring.submission();
        if sq.capacity() - sq.len() < entries.len() {
            drop(sq);
            self.uring.submit()?;
            sq = self.uring.submission();
            if sq.capacity() - sq.len() < entries.len() {
                return Err(io::Error::other("io_uring submission queue full"));
            }
        }
        // SAFETY: each entry points into the DC buffer (checked in `entry`) and at a file
        // borrowed for the ring's life; the buffer and files outlive every queued operation
        // because `Drop` waits for them all.
        unsafe { sq.push_multiple(entries) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        drop(sq);
        self.inflight += entries.len();
        Ok(())
    }

    /// Queue a read of `read` linked to a write of `write` (IOSQE_IO_LINK: the write starts only
    /// when the read has completed in full; a failed or short read cancels it with ECANCELED).
    pub fn push_linked(&mut self, read: &Op, write: &Op) -> io::Result<()> {
        let r = self.entry(read, false).flags(squeue::Flags::IO_LINK);
        let w = self.entry(write, true);
        self.push(&[r, w])
    }

    /// Queue one read into the DC buffer.
    pub fn push_read(&mut self, op: &Op) -> io::Result<()> {
        let e = self.entry(op, false);
        self.push(&[e])
    }

    /// Queue one write from the DC buffer.
    pub fn push_write(&mut self, op: &Op) -> io::Result<()> {
        let e = self.entry(op, true);
        self.push(&[e])
    }

    /// Submit what is queued and wait until at least `want` completions are ready.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.uring.submit_and_wait(want.min(self.inflight)) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full: the caller reaps and comes back.
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Move every ready completion, `(user_data, result)`, into `out`.
    pub fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        let before = out.len();
        out.extend(self.uring.completion().map(|c| (c.user_data(), c.result())));
        self.inflight -= out.len() - before;
    }
}

impl Drop for Ring<'_> {
    fn drop(&mut self) {
        let mut done = Vec::new();
        while self.inflight > 0 {
            if self.submit_and_wait(1).is_err() {
                // Nothing more can be learnt; the kernel still holds the pages it uses.
                break;
            }
            self.reap(&mut done);
            done.clear();
        }
    }
}

/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)` (linux/fs.h; the libc crate does not name it).
const BLKGETSIZE64: libc::Ioctl = (2 << 30 | 8 << 16 | 0x12 << 8 | 114) as libc::Ioctl;

/// A block device's size in bytes and logical block size (BLKGETSIZE64, BLKSSZGET).
pub fn block_geometry(file: &File) -> io::Result<(u64, u32)> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid and writable.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ssz: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which is valid and writable.
    if unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::BLKSSZGET,
            &mut ssz as *mut libc::c_int,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok((size, ssz.max(1) as u32))
}

/// A file's O_DIRECT alignment (statx STATX_DIOALIGN): `Some((memory, offset))`, or `None` when
/// the kernel or filesystem reports no O_DIRECT support for it.
pub fn dio_align(file: &File) -> io::Result<Option<(u32, u32)>> {
    // SAFETY: an all-zero statx is a valid value (plain integers).
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is an empty NUL-terminated string with AT_EMPTY_PATH, so the call
    // describes the open fd; `stx` is valid and writable.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return Ok(None);
    }
    Ok(Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align)))
}

/// Drop `file`'s cached pages (POSIX_FADV_DONTNEED), so what is read next comes from the device.
pub fn drop_cache(file: &File) {
    // SAFETY: posix_fadvise only takes an fd and numbers; a failure is harmless (advice only).
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// `len` bytes of a PCI device's peer-to-peer memory, allocated by mapping the device's sysfs
/// `p2pmem/allocate` file (`dir` is `/sys/bus/pci/devices/<bdf>`). Only kernels built with
/// CONFIG_PCI_P2PDMA publishing a p2pmem device offer it.
pub fn p2pmem(dir: &std::path::Path, len: usize) -> io::Result<DcMemory> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("p2pmem/allocate"))?;
    // SAFETY: the kernel backs this shared mapping with device memory it allocated for us and
    // keeps until the mapping goes; nothing else in this process maps or truncates that file.
    let mut map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(&file) }?;
    Ok(DcMemory {
        base: map.as_mut_ptr(),
        len,
        _keep: Keep::Host(map),
    })
}
