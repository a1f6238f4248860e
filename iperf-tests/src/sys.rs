//! The few raw system calls the harness makes: `kill(2)` on a child we have not reaped, `flock(2)` on a lock
//! file we opened, and `geteuid(2)`. Called by [`crate::proc`], [`crate::net`] and [`crate::fs`]; it must never
//! signal a pid that is not one of our own unreaped children.
//!
//! # Safety
//! Every call here passes plain integers (a pid, a signal number, a file descriptor borrowed from a live `File`)
//! and hands no pointer to the kernel, so none can touch memory of ours.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Sends `sig` to `pid`. The caller must own `pid` as a child that has not been reaped yet (so the pid cannot
/// have been recycled for somebody else's process).
pub(crate) fn signal_child(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if pid <= 0 {
        // kill(0|-n) would signal process groups: never.
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) takes two integers and reads no memory; `pid` is positive, so it names one process, and
    // the caller guarantees it is our unreaped child.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `flock(fd, op)`, retried on EINTR.
pub(crate) fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: the fd is borrowed from `file`, which stays open for the whole call; flock reads no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid(2) has no arguments, cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The kernel's clock tick rate (`sysconf(_SC_CLK_TCK)`), the unit of the CPU times in `/proc/<pid>/stat`.
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf(3) takes an integer name and reads no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}
