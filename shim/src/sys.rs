//! errno, raw-syscall logging and socket-address helpers for the hooks. Owns the errno accessors
//! (only `hooks` sets errno, never `ops` or `transport`) and the one raw write of a log line, which
//! callers make only when `PCISOCK_LOG` asks.
//!
//! # Safety
//! Each block passes pointers to live stack values of the stated sizes, or addresses the caller
//! vouched for (the application's sockaddr buffers, with their lengths).
#![allow(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libc::{c_int, sockaddr, socklen_t};

pub fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: c_int) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}

/// Write to stderr with a raw system call (never through our own `write` hook).
pub fn log_raw(msg: &str) {
    // SAFETY: writes `msg.len()` bytes from a live string to fd 2.
    unsafe { libc::syscall(libc::SYS_write, 2, msg.as_ptr(), msg.len()) };
}

/// Send SIGPIPE to the calling thread, as the kernel does on a write to a closed socket.
pub fn raise_sigpipe() {
    // SAFETY: raise has no memory arguments.
    unsafe { libc::raise(libc::SIGPIPE) };
}

/// Decode a sockaddr the application passed (`len` bytes at `addr`).
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes.
pub unsafe fn decode_addr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: the caller vouches for `len` bytes; we read sa_family only if 2 bytes are there.
    let family = unsafe { (*addr).sa_family } as c_int;
    match family {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length say this is a sockaddr_in.
            let a = unsafe { &*(addr as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family and length say this is a sockaddr_in6.
            let a = unsafe { &*(addr as *const libc::sockaddr_in6) };
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                u16::from_be(a.sin6_port),
            ))
        }
        _ => None,
    }
}

fn storage_addr(st: &libc::sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    // SAFETY: `st` is a live sockaddr_storage, large enough for any family.
    unsafe { decode_addr(st as *const libc::sockaddr_storage as *const sockaddr, len) }
}

/// getsockname through the raw system call.
pub fn local_addr(fd: c_int) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data; zero is a valid value.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: passes a live storage buffer and its length.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getsockname,
            fd,
            &mut st as *mut _,
            &mut len as *mut socklen_t,
        )
    };
    if r != 0 {
        return None;
    }
    storage_addr(&st, len)
}

/// getpeername through the raw system call.
pub fn peer_addr(fd: c_int) -> Option<SocketAddr> {
    // SAFETY: as in `local_addr`.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: passes a live storage buffer and its length.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getpeername,
            fd,
            &mut st as *mut _,
            &mut len as *mut socklen_t,
        )
    };
    if r != 0 {
        return None;
    }
    storage_addr(&st, len)
}

/// An int socket option through the raw system call.
pub fn sockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: passes a live int and its length.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            level,
            name,
            &mut v as *mut c_int,
            &mut len as *mut socklen_t,
        )
    };
    (r == 0).then_some(v)
}

/// F_GETFL through the raw system call.
pub fn nonblocking(fd: c_int) -> bool {
    // SAFETY: fcntl F_GETFL has no memory arguments.
    let fl = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) };
    fl >= 0 && (fl as c_int) & libc::O_NONBLOCK != 0
}

/// Shut down both directions of a kernel socket (used when strict mode refuses a connection).
pub fn shutdown_both(fd: c_int) {
    // SAFETY: no memory arguments.
    unsafe { libc::syscall(libc::SYS_shutdown, fd, libc::SHUT_RDWR) };
}

/// Close through the raw system call.
pub fn close_raw(fd: c_int) {
    // SAFETY: no memory arguments.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// Send all of `buf` on a blocking path through the raw system call (used to flush bytes kept
/// for a connection that settled on TCP).
pub fn send_all(fd: c_int, mut buf: &[u8]) -> Result<(), c_int> {
    while !buf.is_empty() {
        // SAFETY: sends from a live slice of the stated length.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                buf.as_ptr(),
                buf.len(),
                libc::MSG_NOSIGNAL,
                std::ptr::null::<u8>(),
                0usize,
            )
        };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            if e == libc::EAGAIN {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one live pollfd.
                unsafe {
                    libc::syscall(
                        libc::SYS_ppoll,
                        &mut p as *mut libc::pollfd,
                        1usize,
                        std::ptr::null::<u8>(),
                        std::ptr::null::<u8>(),
                        8usize,
                    )
                };
                continue;
            }
            return Err(e);
        }
        buf = &buf[r as usize..];
    }
    Ok(())
}

/// epoll_ctl through the raw system call; returns 0 or the errno.
pub fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, events: u32, data: u64) -> c_int {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a live epoll_event on the stack.
    let r = unsafe {
        libc::syscall(
            libc::SYS_epoll_ctl,
            epfd,
            op,
            fd,
            &mut ev as *mut libc::epoll_event,
        )
    };
    if r < 0 {
        errno()
    } else {
        0
    }
}

/// The directory libpcisock.so was loaded from (where `pcisock`, which starts the host fabric
/// service on demand, is installed beside it).
pub fn library_dir() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: Dl_info is plain data; all zeros is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let here = library_dir as *const () as *const libc::c_void;
    // SAFETY: `here` is an address inside this library; `info` is a live Dl_info.
    if unsafe { libc::dladdr(here, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr succeeded, so dli_fname is a NUL-terminated path owned by the loader.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
    let path = std::fs::canonicalize(path).ok()?;
    path.parent().map(|p| p.to_path_buf())
}

/// `membarrier(2)` commands (linux/membarrier.h).
const MEMBARRIER_CMD_QUERY: c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: c_int = 1 << 4;

fn membarrier(cmd: c_int) -> libc::c_long {
    // SAFETY: membarrier takes no memory arguments (flags 0, cpu_id 0).
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

/// Register this process image for private expedited membarriers (the fd table's asymmetric
/// fence); false if the kernel does not offer them.
pub fn membarrier_register() -> bool {
    let q = membarrier(MEMBARRIER_CMD_QUERY);
    q >= 0
        && q & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0
        && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
}

/// A full memory barrier on every CPU running a thread of this process, now. A process image
/// the registration does not cover (a child made by a raw `clone`, which skips the fork
/// handlers) registers and tries again; false if it still fails.
pub fn membarrier_private_expedited() -> bool {
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0
        || (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
            && membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0)
}

/// recvmsg into `bufs` through the raw system call (a late-upgrade candidate's read, always with
/// MSG_DONTWAIT among `flags`): the bytes read, or the errno.
pub fn recv_iov(fd: c_int, bufs: &mut [&mut [u8]], flags: c_int) -> Result<usize, c_int> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: msghdr is plain old data; zero is a valid (empty) value.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov.as_mut_ptr();
    m.msg_iovlen = iov.len() as _;
    // SAFETY: a live msghdr whose iovecs point into the caller's live buffers of those lengths.
    let r = unsafe { libc::syscall(libc::SYS_recvmsg, fd, &mut m as *mut libc::msghdr, flags) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

/// sendmsg of `bufs` through the raw system call (a late-upgrade candidate's send, always with
/// MSG_DONTWAIT among `flags`; the kernel raises SIGPIPE as for the application's own call
/// unless MSG_NOSIGNAL is among them): the bytes sent, or the errno.
pub fn send_iov(fd: c_int, bufs: &[&[u8]], flags: c_int) -> Result<usize, c_int> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: msghdr is plain old data; zero is a valid (empty) value.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov.as_mut_ptr();
    m.msg_iovlen = iov.len() as _;
    // SAFETY: a live msghdr whose iovecs point into the caller's live buffers (only read).
    let r = unsafe { libc::syscall(libc::SYS_sendmsg, fd, &m as *const libc::msghdr, flags) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

/// Wait up to `timeout` (`None`: no limit) for the events asked in `fds` through the raw
/// system call: how many have events (0 on timeout), or the errno (EINTR: a signal).
pub fn poll_fds(
    fds: &mut [libc::pollfd],
    timeout: Option<std::time::Duration>,
) -> Result<c_int, c_int> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as _,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a live slice of pollfds the kernel may write; `tsp` is null or a live
    // timespec; no signal mask.
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
        Err(errno())
    } else {
        Ok(r as c_int)
    }
}

/// Wait up to `timeout` for `events` on `fd` through the raw system call: the events seen
/// (0 on timeout), or the errno (EINTR: a signal).
pub fn poll1(fd: c_int, events: i16, timeout: std::time::Duration) -> Result<i16, c_int> {
    let mut p = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    poll_fds(&mut p, Some(timeout))?;
    Ok(p[0].revents)
}
