//! Connection segments' system calls: the sealed memfd a connection's blocks live in, and what
//! the service does to one (its first pages given memory, its headers zeroed, pages freed,
//! where its pages are). Called by the service (`service::pool`, spares) and, for `seals`, by
//! tests. It never maps a segment nor reads one's bytes.
//!
//! # Safety
//! Every call passes the kernel plain integers or pointers to live static or stack buffers of
//! the lengths it states; descriptors the kernel returns are wrapped in `OwnedFd` at once.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{check, owned};

/// A segment: a memfd of `len` bytes, sealed so that nobody can shrink or grow it (a
/// truncated segment would SIGBUS whoever maps it).
pub fn segment(len: u64) -> io::Result<OwnedFd> {
    let name = c"pcisock-segment";
    // SAFETY: `name` is a live NUL-terminated string.
    let fd = owned(unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            name.as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    })?;
    // SAFETY: plain integers.
    check(unsafe { libc::syscall(libc::SYS_ftruncate, fd.as_raw_fd(), len as libc::off_t) })?;
    // SAFETY: plain integers.
    check(unsafe {
        libc::syscall(
            libc::SYS_fcntl,
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    })?;
    Ok(fd)
}

/// Give the pages at `offsets` of segment `fd` their memory now (one page each, written with
/// zeros: what a fresh page holds anyway), so that the processes that map the segment later
/// only map pages that exist instead of allocating and clearing them in their page faults.
pub fn prepare_pages(fd: RawFd, offsets: &[u64]) -> io::Result<()> {
    static ZEROS: [u8; PAGE] = [0; PAGE];
    for &off in offsets {
        // SAFETY: `ZEROS` is a live buffer of `PAGE` bytes.
        let n = check(unsafe {
            libc::syscall(
                libc::SYS_pwrite64,
                fd,
                ZEROS.as_ptr(),
                PAGE,
                off as libc::off_t,
            )
        })?;
        if n as usize != PAGE {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
    }
    Ok(())
}

/// Free the pages of `offset..offset+len` of segment `fd` (a hole punched in the memfd: the
/// range reads as zeros afterwards, in every process that maps it, and a later access faults
/// in a fresh page). Never reads or maps the segment.
pub fn punch(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: plain integers; the kernel validates `fd` and the range.
    check(unsafe {
        libc::syscall(
            libc::SYS_fallocate,
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })?;
    Ok(())
}

/// The next range of segment `fd` at or after `offset` whose pages exist (`SEEK_DATA`, then
/// `SEEK_HOLE`): `None` past the last one. Never reads or maps the segment.
pub fn next_data(fd: RawFd, offset: u64) -> io::Result<Option<(u64, u64)>> {
    // SAFETY: plain integers; the kernel validates `fd`.
    let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    if hole < data {
        return Err(io::Error::last_os_error());
    }
    Ok(Some((data as u64, hole as u64)))
}

/// Write zeros over `offset..offset+len` of segment `fd` (pages that exist stay where they are,
/// so the processes that map them fault on none).
pub fn write_zeros(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    static ZEROS: [u8; 8 * PAGE] = [0; 8 * PAGE];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len() as u64) as usize;
        // SAFETY: `ZEROS` is a live buffer of at least `n` bytes.
        let w = check(unsafe {
            libc::syscall(
                libc::SYS_pwrite64,
                fd,
                ZEROS.as_ptr(),
                n,
                (offset + done) as libc::off_t,
            )
        })?;
        if w <= 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        done += w as u64;
    }
    Ok(())
}

/// The page size of the segments' layout (docs/PROTOCOL.md §2: the endpoint header is one).
pub const PAGE: usize = 4096;

/// The seals on a memfd (to check a segment received from the service).
pub fn seals(fd: RawFd) -> io::Result<i32> {
    // SAFETY: plain integers.
    Ok(check(unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GET_SEALS) })? as i32)
}
