//! The few system calls the transport makes on file descriptors, issued as raw syscalls so that
//! a preloaded interposer (which exports `poll`, `recvfrom`, …) never sees its own transport's
//! calls.
//!
//! # Safety
//! Each call passes stack buffers of the stated length and plain integers; the kernel validates
//! the file descriptors.
#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::time::Duration;

/// Wait until `a` is readable or `b` is readable, hung up or in error, or `timeout` passes.
/// Returns the number of ready fds, or the errno.
pub(crate) fn poll2(a: RawFd, b: RawFd, timeout: Option<Duration>) -> Result<i32, i32> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        },
    ];
    match ppoll(&mut fds, timeout)? {
        0 => Err(libc::ETIMEDOUT),
        n => Ok(n),
    }
}

/// ppoll(2) on `fds` with no signal mask: the number of ready fds (0 on timeout) or the errno.
fn ppoll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> Result<i32, i32> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a live array of `fds.len()` pollfds; `tsp` is null or a live timespec;
    // no signal mask is passed (null).
    let r = unsafe {
        libc::syscall(
            libc::SYS_ppoll,
            fds.as_mut_ptr(),
            fds.len(),
            tsp,
            std::ptr::null::<u8>(),
            8usize,
        )
    };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as i32)
    }
}

/// What a non-blocking peek at a TCP socket shows.
pub(crate) enum Peek {
    Open,
    Eof,
    /// The connection failed (reset, timed out, aborted): for good.
    Reset,
    Data,
    /// The fd is not a usable socket (closed, or reused by another file meanwhile).
    Unusable,
}

/// Peek one byte from a TCP socket without blocking or consuming it.
pub(crate) fn peek_tcp(fd: RawFd) -> Peek {
    let mut b = 0u8;
    // SAFETY: a one-byte stack buffer; null address arguments are allowed by recvfrom.
    let r = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            &mut b as *mut u8,
            1usize,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
        )
    };
    match r {
        1.. => Peek::Data,
        0 => Peek::Eof,
        _ => match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Peek::Open,
            Some(libc::EBADF) | Some(libc::ENOTSOCK) | Some(libc::ENOTCONN) => Peek::Unusable,
            _ => Peek::Reset,
        },
    }
}

/// The CPU this thread runs on now (a hint: it may move at any time), if the kernel says.
pub(crate) fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and only reads the thread's state (vDSO).
    let c = unsafe { libc::sched_getcpu() };
    u32::try_from(c).ok()
}

/// 64 random bits from the kernel (for offer cookies).
pub(crate) fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: an 8-byte stack buffer of the stated length.
    let r = unsafe { libc::syscall(libc::SYS_getrandom, &mut v as *mut u64, 8usize, 0u32) };
    if r != 8 {
        // getrandom cannot fail for 8 bytes after boot; mix the clock and pid if it somehow did.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        v = t ^ (ntbdrv::process::pid() as u64).rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15;
    }
    v | 1
}

/// Read up to `len` bytes from `fd` (at `offset`, or at the file position if `None`) straight
/// into `region` at `at` — e.g. a file into the peer's ring with no staging copy. Returns the
/// bytes read or the errno.
pub(crate) fn read_into_region(
    fd: RawFd,
    region: &ntbdrv::Region,
    at: usize,
    len: usize,
    offset: Option<i64>,
) -> Result<usize, i32> {
    if at.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(libc::EFAULT);
    }
    // SAFETY: `at..at+len` lies inside the region (checked), which stays mapped while borrowed.
    let dst = unsafe { region.as_ptr().add(at) };
    // SAFETY: the kernel writes at most `len` bytes at `dst`, inside the region.
    let r = unsafe {
        match offset {
            Some(off) => libc::syscall(libc::SYS_pread64, fd, dst, len, off),
            None => libc::syscall(libc::SYS_read, fd, dst, len),
        }
    };
    if r < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(r as usize)
    }
}

/// The inode of the file `fd` refers to (a socket's identity across exec), if it has one.
pub(crate) fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: `stat` is plain old data; zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live stat buffer.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    (r == 0).then_some(st.st_ino)
}

/// Has the kernel connected socket `fd` (its handshake done: it has a peer address)?
pub(crate) fn connected(fd: RawFd) -> bool {
    // SAFETY: `sockaddr_storage` is plain old data; zero is a valid value.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a live address buffer of `len` bytes and its length, both written by the kernel.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getpeername,
            fd,
            &mut sa as *mut libc::sockaddr_storage,
            &mut len as *mut libc::socklen_t,
        )
    };
    r == 0
}

/// Receive up to `buf.len()` bytes from socket `fd` without blocking (0: end of stream).
pub(crate) fn recv_nowait(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: `buf` is a live, writable buffer of the stated length; null address arguments
    // are allowed by recvfrom.
    let r = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            libc::MSG_DONTWAIT,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
        )
    };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as usize)
    }
}

/// Send the gathered `bufs` on socket `fd` without blocking and without SIGPIPE; returns the
/// bytes the kernel took.
pub(crate) fn send_nowait(fd: RawFd, bufs: &[&[u8]]) -> Result<usize, i32> {
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    if iov.is_empty() {
        return Ok(0);
    }
    // SAFETY: `msghdr` is plain old data; zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: `msg` points at `iov`, which lives across the call and describes live buffers
    // the kernel only reads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            fd,
            &msg as *const libc::msghdr,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as usize)
    }
}

/// Wait until `fd` has one of `events`, or `timeout` passes; returns the events seen (0 on
/// timeout) or the errno.
pub(crate) fn poll1(fd: RawFd, events: i16, timeout: Option<Duration>) -> Result<i16, i32> {
    let mut p = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    ppoll(&mut p, timeout)?;
    Ok(p[0].revents)
}

/// shutdown(2) of the sending side of socket `fd`.
pub(crate) fn shutdown_write(fd: RawFd) {
    // SAFETY: plain integers.
    let _ = unsafe { libc::syscall(libc::SYS_shutdown, fd, libc::SHUT_WR) };
}

/// Read up to `buf.len()` bytes of file `fd` (at `offset`, or at its position).
pub(crate) fn read_file(fd: RawFd, buf: &mut [u8], offset: Option<i64>) -> Result<usize, i32> {
    // SAFETY: `buf` is a live, writable buffer of the stated length.
    let r = unsafe {
        match offset {
            Some(off) => libc::syscall(libc::SYS_pread64, fd, buf.as_mut_ptr(), buf.len(), off),
            None => libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()),
        }
    };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as usize)
    }
}

/// Move file `fd`'s position back by `n` bytes (a read took more than was sent).
pub(crate) fn seek_back(fd: RawFd, n: i64) -> Result<(), i32> {
    // SAFETY: plain integers.
    let r = unsafe { libc::syscall(libc::SYS_lseek, fd, -n, libc::SEEK_CUR) };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A new epoll instance (close-on-exec, kept out of the application's low descriptor numbers).
fn ep_new() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain integers.
    let fd = unsafe { libc::syscall(libc::SYS_epoll_create1, libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Some(fabric::sys::move_high(unsafe {
        OwnedFd::from_raw_fd(fd as RawFd)
    }))
}

/// Register `fd` in epoll instance `ep` for input, edge-triggered (already there: fine).
fn ep_add_edge(ep: RawFd, fd: RawFd) -> bool {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: fd as u64,
    };
    // SAFETY: a live epoll_event; the kernel validates both descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_epoll_ctl,
            ep,
            libc::EPOLL_CTL_ADD,
            fd,
            &mut ev as *mut libc::epoll_event,
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST)
}

fn ep_del(ep: RawFd, fd: RawFd) {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: a live epoll_event (ignored for DEL); plain integers.
    unsafe {
        libc::syscall(
            libc::SYS_epoll_ctl,
            ep,
            libc::EPOLL_CTL_DEL,
            fd,
            &mut ev as *mut libc::epoll_event,
        )
    };
}

/// Take every event waiting in epoll instance `ep`, without sleeping.
fn ep_consume(ep: RawFd) {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
    loop {
        // SAFETY: a live array of 16 epoll_events; timeout 0; no signal mask.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait,
                ep,
                evs.as_mut_ptr(),
                evs.len() as i32,
                0i32,
                std::ptr::null::<u8>(),
                8usize,
            )
        };
        if n < evs.len() as i64 {
            break;
        }
    }
}

/// A set of shared interrupt lines as one descriptor, readable from the first ring of any of
/// them after it was last emptied ([`LineSet::take`]) until it is emptied again: what an
/// application's epoll set watches (one registration per set, whatever number of connections
/// and lines; a set inside another set stays quiet while no line rings).
pub struct LineSet {
    ep: std::os::fd::OwnedFd,
}

impl LineSet {
    pub fn new() -> Option<LineSet> {
        ep_new().map(|ep| LineSet { ep })
    }

    pub fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.ep.as_raw_fd()
    }

    /// Watch `line`. A line that has been rung before shows as rung at once: that is taken
    /// here (the caller looks at what it waits for anyway).
    pub fn add(&self, line: RawFd) -> bool {
        let ok = ep_add_edge(self.fd(), line);
        ep_consume(self.fd());
        ok
    }

    pub fn remove(&self, line: RawFd) {
        ep_del(self.fd(), line);
    }

    /// Empty the set (after it woke a wait, before the wait looks at what it waits for).
    pub fn take(&self) {
        ep_consume(self.fd());
    }
}

/// This thread's wake set: a private epoll instance in which the interrupt lines this thread
/// sleeps on are registered edge-triggered. A line the host fabric service gave is one per
/// process, shared by its connections, and never emptied (emptying it would take the wake-up
/// from every other sleeper on it: other threads, the application's epoll sets); each wake set
/// gets its own edge per ring instead, and consumes only that.
struct WakeSet {
    pid: u32,
    ep: std::os::fd::OwnedFd,
}

thread_local! {
    static WAKE: std::cell::RefCell<Option<WakeSet>> = const { std::cell::RefCell::new(None) };
}

/// This thread's wake set's descriptor, with `line` registered in it (edge-triggered): readable
/// once the line was rung after this call. Register before arming the flag that asks the peer
/// to ring. `None` if no epoll instance could be made (the caller sleeps in naps).
pub(crate) fn wake_fd(line: RawFd) -> Option<RawFd> {
    use std::os::fd::AsRawFd;
    WAKE.try_with(|w| {
        let mut w = w.borrow_mut();
        let me = ntbdrv::process::pid();
        if w.as_ref().is_none_or(|s| s.pid != me) {
            // A forked child must not share its parent's instance (each would consume the
            // other's edges): a new one per process.
            *w = Some(WakeSet {
                pid: me,
                ep: ep_new()?,
            });
        }
        let ep = w.as_ref()?.ep.as_raw_fd();
        ep_add_edge(ep, line).then_some(ep)
    })
    .ok()
    .flatten()
}

/// Take the edges this thread's wake set has collected (after a sleep on it, before the
/// caller re-checks what it waits for).
pub(crate) fn wake_consume() {
    use std::os::fd::AsRawFd;
    let _ = WAKE.try_with(|w| {
        if let Some(s) = w
            .borrow()
            .as_ref()
            .filter(|s| s.pid == ntbdrv::process::pid())
        {
            ep_consume(s.ep.as_raw_fd());
        }
    });
}

/// This thread's identity among the process's live threads (`pthread_self`, an address: never 0
/// nor all ones, the send lock's UNBIASED and REVOKED): the send and receive locks' bias token,
/// taken on every send and read without a thread-local access.
#[cfg_attr(loom, allow(dead_code))] // the loom build's locks keep loom thread-locals
#[inline(always)]
pub(crate) fn thread_id() -> u64 {
    // SAFETY: pthread_self takes nothing, cannot fail and is async-signal-safe (it reads the
    // thread pointer).
    unsafe { libc::pthread_self() as u64 }
}

/// `membarrier(2)` commands (linux/membarrier.h).
#[cfg_attr(loom, allow(dead_code))] // the loom build's send lock models membarrier
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
#[cfg_attr(loom, allow(dead_code))] // the loom build's send lock models membarrier
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
#[cfg_attr(loom, allow(dead_code))] // the loom build's send lock models membarrier
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

#[cfg_attr(loom, allow(dead_code))] // the loom build's send lock models membarrier
fn membarrier_cmd(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes no memory arguments (flags 0, cpu_id 0).
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

/// Can this process make private expedited membarriers (registered now if it was not)? Asked
/// once per process image.
#[cfg_attr(loom, allow(dead_code))] // the loom build's send lock models membarrier
pub(crate) fn membarrier_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        let q = membarrier_cmd(MEMBARRIER_CMD_QUERY);
        q >= 0
            && q & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0
            && membarrier_cmd(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    })
}

/// A full memory barrier on every CPU that runs a thread of this process (the heavy half of an
/// asymmetric fence). A process image the registration does not cover (a forked child)
/// registers and tries again; false if the kernel still refuses.
#[cfg_attr(loom, allow(dead_code))] // the loom build's send lock models membarrier
pub(crate) fn membarrier() -> bool {
    membarrier_cmd(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0
        || (membarrier_cmd(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
            && membarrier_cmd(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0)
}

/// For tests: fork, run `check` in the child, and say whether it returned true there.
#[cfg(test)]
pub(crate) fn in_forked_child(check: impl FnOnce() -> bool) -> bool {
    // SAFETY: fork; the child runs `check` and leaves with `_exit`, never returning here.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = check();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(i32::from(!ok)) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just made; `status` is a valid int.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}
