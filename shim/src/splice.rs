//! splice(2) between an NTB connection and a pipe, called by the `splice` hook when one side is
//! a tracked fd. The kernel cannot move ring bytes, so they pass through our memory, with the
//! kernel's rules for a TCP socket (checked on Linux 6.18):
//! - socket → pipe: the ring is peeked, the pipe gets what it takes, and exactly that much is
//!   consumed from the ring, so a pipe that takes fewer bytes loses none and duplicates none;
//! - pipe → socket: the pipe is read straight into the peer's ring (`sendfile`'s path), never
//!   more than the pipe holds, so the read never waits after bytes have moved.
//!
//! Waiting follows the kernel: the socket side waits unless the socket is O_NONBLOCK (SO_RCVTIMEO
//! and SO_SNDTIMEO apply; SPLICE_F_NONBLOCK does not make a socket non-blocking), the pipe side
//! unless SPLICE_F_NONBLOCK or the pipe is O_NONBLOCK. Like the kernel, a call returns as soon as
//! it has moved bytes and would have to wait for more. It never touches a connection that is not
//! on the NTB path (those go to the real `splice`).
//!
//! # Safety
//! The system calls here pass pointers to live stack values or to a live buffer with its length.
#![allow(unsafe_code)]

use libc::{c_int, c_uint};

use crate::ops::{self, DataPath, Detour};
use crate::signals::restarting;
use crate::{sys, table};

const SPLICE_F_ALL: c_uint =
    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MORE | libc::SPLICE_F_GIFT;

/// Most bytes moved in one round through our buffer.
const ROUND_MAX: usize = 1 << 20;

/// A pipe buffer (one slot) holds one page: a pipe with a free slot takes a page-sized write
/// whole, without waiting.
const PAGE: usize = 4096;

/// `splice(fd_in, off_in, fd_out, off_out, len, flags)` where `fd_in` or `fd_out` is tracked;
/// `off_in`/`off_out` say whether the offsets were given.
pub fn splice(
    fd_in: c_int,
    off_in: bool,
    fd_out: c_int,
    off_out: bool,
    len: usize,
    flags: c_uint,
) -> Detour<usize> {
    // The kernel's checks, in its order (fs/splice.c).
    if len == 0 {
        return Detour::Ours(Ok(0));
    }
    if flags & !SPLICE_F_ALL != 0 {
        return Detour::Ours(Err(libc::EINVAL));
    }
    let (Some(in_fifo), Some(out_fifo)) = (is_fifo(fd_in), is_fifo(fd_out)) else {
        return Detour::Ours(Err(libc::EBADF));
    };
    if (in_fifo && off_in) || (out_fifo && off_out) {
        return Detour::Ours(Err(libc::ESPIPE));
    }
    let acc = |fd| status_flags(fd).map(|f| f & libc::O_ACCMODE);
    if acc(fd_in) == Some(libc::O_WRONLY) || acc(fd_out) == Some(libc::O_RDONLY) {
        return Detour::Ours(Err(libc::EBADF));
    }
    // Which side is the connection (the other must be a pipe)?
    let (sock_fd, sock_off, pipe, into_pipe) = if out_fifo && table::contains(fd_in) {
        (fd_in, off_in, fd_out, true)
    } else if in_fifo && table::contains(fd_out) {
        (fd_out, off_out, fd_in, false)
    } else {
        // Neither side is a pipe (a socket to a file, or to another socket).
        return Detour::Ours(Err(libc::EINVAL));
    };
    if sock_off {
        // An offset on a socket: the kernel says EINVAL (it cannot seek).
        return Detour::Ours(Err(libc::EINVAL));
    }
    let Some(pipe_fl) = status_flags(pipe) else {
        return Detour::Ours(Err(libc::EBADF));
    };
    let pipe = Pipe {
        fd: pipe,
        own_nonblock: pipe_fl & libc::O_NONBLOCK != 0,
        nonblock: flags & libc::SPLICE_F_NONBLOCK != 0 || pipe_fl & libc::O_NONBLOCK != 0,
    };
    let mut path = ops::data_path(sock_fd, false);
    if let Some(Ok(DataPath::Late(s))) = &path {
        // Not carried by the late upgrade yet: the candidacy ends (the connection may move
        // onto the ring as it does, if a late offer it posted was taken: then it is ours).
        crate::late::end(s);
        if s.conn.get().is_some() {
            path = ops::data_path(sock_fd, false);
        }
    }
    match path {
        None | Some(Ok(DataPath::Kernel)) => Detour::Bypass,
        Some(Ok(DataPath::Late(_))) => Detour::Bypass,
        Some(Err(e)) => Detour::Ours(Err(e)),
        // An interrupted wait moved nothing: restarted as the kernel would (`signals`).
        Some(Ok(DataPath::Ntb(s))) => Detour::Ours(if into_pipe {
            restarting(s.rcvtimeo(), || to_pipe(&s, s.ntb(), &pipe, len))
        } else {
            restarting(s.sndtimeo(), || from_pipe(&s, s.ntb(), &pipe, len))
        }),
    }
}

/// The pipe side of a splice.
struct Pipe {
    fd: c_int,
    /// The pipe's own fd is O_NONBLOCK.
    own_nonblock: bool,
    /// The call must not wait for the pipe (SPLICE_F_NONBLOCK, or the fd's O_NONBLOCK).
    nonblock: bool,
}

/// Ring → pipe.
fn to_pipe(
    sock: &crate::sock::Sock,
    c: &transport::Connection,
    pipe: &Pipe,
    len: usize,
) -> Result<usize, c_int> {
    // SPLICE_F_NONBLOCK on a pipe whose own fd blocks: write a page at a time, which a pipe with
    // a free slot takes whole, so the write cannot wait.
    let page_rounds = pipe.nonblock && !pipe.own_nonblock;
    let mut buf = Vec::new();
    let mut moved = 0;
    while moved < len {
        // The pipe must have room first (the kernel's `wait_for_space`).
        let rev = match poll_one(pipe.fd, libc::POLLOUT, !pipe.nonblock && moved == 0) {
            Ok(r) => r,
            Err(_) if moved > 0 => break,
            Err(e) => return Err(e),
        };
        if rev & libc::POLLERR != 0 {
            if moved > 0 {
                break;
            }
            // No reader: the kernel raises SIGPIPE too.
            sys::raise_sigpipe();
            return Err(libc::EPIPE);
        }
        if rev & libc::POLLOUT == 0 {
            if moved > 0 {
                break;
            }
            return Err(libc::EAGAIN);
        }
        let mut n = (len - moved)
            .min(pipe_room(pipe.fd).max(PAGE))
            .min(ROUND_MAX);
        if page_rounds {
            n = n.min(PAGE);
        }
        buf.resize(n, 0);
        // Look at the ring's bytes without taking them; wait (if the socket blocks) only for
        // the first.
        let dontwait = if moved > 0 { libc::MSG_DONTWAIT } else { 0 };
        let k = match ops::recv(sock, c, &mut [&mut buf[..n]], libc::MSG_PEEK | dontwait) {
            Ok(0) => break, // end of stream
            Ok(k) => k,
            Err(_) if moved > 0 => break,
            Err(e) => return Err(e),
        };
        let w = match write_raw(pipe.fd, &buf[..k]) {
            Ok(w) => w,
            Err(_) if moved > 0 => break,
            Err(e) => return Err(e),
        };
        // Take from the ring exactly what the pipe took.
        let taken = ops::recv(sock, c, &mut [&mut buf[..w]], libc::MSG_DONTWAIT)?;
        debug_assert_eq!(taken, w, "another thread read the connection during splice");
        moved += w;
        if w < k {
            break;
        }
    }
    Ok(moved)
}

/// Pipe → ring.
fn from_pipe(
    sock: &crate::sock::Sock,
    c: &transport::Connection,
    pipe: &Pipe,
    len: usize,
) -> Result<usize, c_int> {
    // Bytes in the pipe: read no more than that, so the read never waits once bytes moved.
    let held = loop {
        let held = pipe_held(pipe.fd);
        if held > 0 {
            break held;
        }
        let rev = poll_one(pipe.fd, libc::POLLIN, !pipe.nonblock)?;
        if rev & libc::POLLIN != 0 {
            continue;
        }
        if rev & libc::POLLHUP != 0 {
            return Ok(0); // empty, and no writer left
        }
        return Err(libc::EAGAIN);
    };
    ops::sendfile(sock, c, pipe.fd, None, len.min(held))
}

/// Is `fd` a pipe or FIFO? None if it is not an open fd.
fn is_fifo(fd: c_int) -> Option<bool> {
    // SAFETY: `stat` is plain old data; zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live stat buffer.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    (r == 0).then_some(st.st_mode & libc::S_IFMT == libc::S_IFIFO)
}

/// F_GETFL through the raw system call.
fn status_flags(fd: c_int) -> Option<c_int> {
    // SAFETY: F_GETFL has no memory arguments.
    let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) };
    (r >= 0).then_some(r as c_int)
}

/// Bytes waiting in a pipe (FIONREAD).
fn pipe_held(fd: c_int) -> usize {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::syscall(libc::SYS_ioctl, fd, libc::FIONREAD, &mut n as *mut c_int) };
    if r < 0 {
        0
    } else {
        n.max(0) as usize
    }
}

/// Free bytes in a pipe: its capacity less what it holds. An estimate: a slot holding a few
/// bytes that cannot be merged into (spliced pages) counts as a whole page to the kernel.
fn pipe_room(fd: c_int) -> usize {
    // SAFETY: F_GETPIPE_SZ has no memory arguments.
    let cap = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETPIPE_SZ) };
    (cap.max(0) as usize).saturating_sub(pipe_held(fd))
}

/// Wait for `events` on `fd` (at most forever if `wait`, else just look); the revents.
fn poll_one(fd: c_int, events: i16, wait: bool) -> Result<i16, c_int> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ts = if wait {
        std::ptr::null()
    } else {
        &zero as *const libc::timespec
    };
    // SAFETY: one live pollfd; `ts` is null or a live timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ppoll,
            &mut p as *mut libc::pollfd,
            1usize,
            ts,
            std::ptr::null::<libc::sigset_t>(),
            8usize,
        )
    };
    if r < 0 {
        Err(sys::errno())
    } else {
        Ok(p.revents)
    }
}

/// write(2) through the raw system call.
fn write_raw(fd: c_int, buf: &[u8]) -> Result<usize, c_int> {
    // SAFETY: writes from a live slice of the stated length.
    let r = unsafe { libc::syscall(libc::SYS_write, fd, buf.as_ptr(), buf.len()) };
    if r < 0 {
        Err(sys::errno())
    } else {
        Ok(r as usize)
    }
}
