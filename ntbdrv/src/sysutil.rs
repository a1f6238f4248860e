//! Small operating-system helpers: process liveness and identity, FIFOs, draining fds. Called by
//! the emulated device (leases, interrupt lines, the device file). It never follows a symlink to an
//! interrupt line nor writes to anything but a FIFO it checked; what a pid means is the caller's to
//! decide (`alive` takes the start time too).
//!
//! # Safety
//! Thin wrappers over libc calls with plain integer or C-string arguments; each block says which
//! buffer it passes and why it is valid.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// This process's id, without a system call after the first: it is kept in a page mapped
/// `MADV_WIPEONFORK`, which a child made by any kind of fork (libc's `fork`, `_Fork`, a raw
/// `clone` without `CLONE_VM`) sees zeroed, so the child asks the kernel once for its own. The
/// library asks for its pid several times a connection (is this process the one that made a
/// mapping, a holder, a service link?), and `getpid` is a real system call in glibc ≥ 2.25. A
/// `vfork` child shares the page and sees its parent's pid: it may only exec or exit.
pub fn pid() -> u32 {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
    /// The page's address; 0 before the first call, 1 when it could not be made (then every
    /// call asks the kernel).
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let mut page = PAGE.load(Relaxed);
    if page == 0 {
        page = wipe_on_fork_page().unwrap_or(1);
        if let Err(first) = PAGE.compare_exchange(0, page, Relaxed, Relaxed) {
            if page != 1 {
                // SAFETY: the page this call mapped and nobody else saw; another thread's won.
                unsafe { libc::munmap(page as *mut libc::c_void, page_size()) };
            }
            page = first;
        }
    }
    if page == 1 {
        return std::process::id();
    }
    // SAFETY: `page` is a live, page-aligned mapping of this process that is never unmapped
    // (it leaves with the process, or with its image at exec); only AtomicU32s live in it.
    let cell = unsafe { &*(page as *const AtomicU32) };
    match cell.load(Relaxed) {
        0 => {
            let me = std::process::id();
            cell.store(me, Relaxed);
            me
        }
        me => me,
    }
}

/// A private anonymous page marked `MADV_WIPEONFORK` (Linux ≥ 4.14), for [`pid`].
fn wipe_on_fork_page() -> Option<usize> {
    let len = page_size();
    // SAFETY: a new private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the mapping just made, of `len` bytes.
    if unsafe { libc::madvise(p, len, libc::MADV_WIPEONFORK) } != 0 {
        // SAFETY: the same mapping, unused.
        unsafe { libc::munmap(p, len) };
        return None;
    }
    Some(p as usize)
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`), or None if the
/// process does not exist.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after ')' start at field 3; start time is field 22, i.e. the 20th here.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Is the process that was `pid` with start time `start` still alive (and not a zombie)?
pub fn alive(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_ascii_whitespace();
    let state = fields.next().unwrap_or("X");
    if state == "Z" || state == "X" {
        return false;
    }
    // `state` was field 3; start time is field 22, 19 further on.
    fields.nth(18).and_then(|s| s.parse::<u64>().ok()) == Some(start)
}

/// Is any process with this pid alive? (Used to break a dead holder's lock.) A value that is no
/// process id (0, or one kill(2) would read as a process group or "every process": above
/// `i32::MAX`) is not one: pids are read from memory others can write.
pub fn pid_exists(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Create a FIFO at `path` (mode 0600) unless one exists.
pub(crate) fn mkfifo(path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Open `path` with raw open(2) flags (O_CLOEXEC always added).
pub(crate) fn open(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated path; the returned fd, if any, is owned by us.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open the FIFO at `path` (an interrupt line) read-write and non-blocking. The path is not
/// followed if it is a symlink, and whatever it names must be a FIFO: a file or device planted
/// there is closed again, never written.
pub(crate) fn open_fifo(path: &Path) -> io::Result<OwnedFd> {
    let fd = open(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOFOLLOW)?;
    // SAFETY: fstat fills a plain struct we own from an fd we own.
    let mode = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st.st_mode
    };
    if mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(io::Error::other(format!(
            "{} is not a FIFO (mode {mode:o})",
            path.display()
        )));
    }
    Ok(fd)
}

/// Write one byte (an interrupt "kick") to a non-blocking fd; a full pipe already holds a kick.
pub(crate) fn kick(fd: &OwnedFd) {
    let b = 1u8;
    // SAFETY: writes one byte from a live stack variable to an fd we own.
    unsafe { libc::write(fd.as_raw_fd(), (&b as *const u8).cast(), 1) };
}

/// Read a non-blocking fd until it is empty.
pub(crate) fn drain_fd(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reads into a live stack buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 || (n as usize) < buf.len() {
            break;
        }
    }
}

/// Is the memfd behind `fd` sealed against shrinking (F_SEAL_SHRINK)?
pub(crate) fn sealed_against_shrinking(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    // SAFETY: fcntl F_GET_SEALS on a descriptor the caller holds; plain integers.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// The size in bytes of the file behind `fd` (fstat).
pub(crate) fn fd_size(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    fd_identity(fd).map(|(_, _, size)| size)
}

/// The file behind `fd`: its device, its inode and its size in bytes (one fstat).
pub(crate) fn fd_identity(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<(u64, u64, u64)> {
    // SAFETY: `stat` is plain data; all zeros is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into a live `stat` of the right type; the descriptor is borrowed.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let size = u64::try_from(st.st_size)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    Ok((st.st_dev, st.st_ino, size))
}

/// The real user id.
pub(crate) fn uid() -> u32 {
    // SAFETY: getuid has no arguments and cannot fail.
    unsafe { libc::getuid() }
}

/// A fresh reservation of `len` bytes of address space: private, no access, no memory behind
/// it; mappings made over it with `MAP_FIXED` replace only the caller's own addresses.
pub(crate) fn reserve(len: usize) -> std::io::Result<*mut libc::c_void> {
    // SAFETY: a new private anonymous mapping with no access; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p)
}

/// The size of a memory page (sysconf; 4 KiB if it will not say).
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory arguments.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::pid;

    /// A child made by `how` (after the parent filled the cache) exits 0 when `pid()` gives
    /// its own pid, 1 when it gives its parent's.
    fn child_sees_own_pid(how: fn() -> libc::pid_t) {
        let parent = pid();
        assert_eq!(parent, std::process::id());
        let child = how();
        assert!(child >= 0, "fork failed");
        if child == 0 {
            // SAFETY: the child only compares two integers and leaves without unwinding.
            unsafe {
                let own = libc::syscall(libc::SYS_getpid) as u32;
                libc::_exit(if pid() == own { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child this test made; `status` is a valid int.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "stale pid in child"
        );
        assert_eq!(pid(), parent);
    }

    #[test]
    fn a_forked_child_sees_its_own_pid() {
        // SAFETY: fork; the child runs only `child_sees_own_pid`'s exit path.
        child_sees_own_pid(|| unsafe { libc::fork() });
    }

    #[test]
    fn a_raw_clone_child_sees_its_own_pid() {
        // SAFETY: a fork-like clone (no CLONE_VM, SIGCHLD at exit), which runs no atfork
        // handlers; the child runs only `child_sees_own_pid`'s exit path.
        child_sees_own_pid(|| unsafe {
            libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) as libc::pid_t
        });
    }
}
