//! The system calls of the fabric, issued as raw syscalls: the client side runs inside
//! libpcisock.so, which exports `sendmsg`, `recvmsg`, `poll`, `getsockname`…, and must never see
//! its own service traffic. Unix sockets with descriptors and credentials (`SCM_RIGHTS`,
//! `SCM_CREDENTIALS`), the kernel's view of a TCP socket (addresses, namespace cookie, inode,
//! listening or not), sealed memfd segments, eventfd interrupt lines and pidfds.
//!
//! # Safety
//! Every call passes the kernel pointers to live stack or heap buffers of the lengths it states
//! and plain integers; descriptors the kernel returns are wrapped in `OwnedFd` at once, so each
//! is closed exactly once.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::wire::{Addr, MAX_FDS, MAX_MESSAGE};

mod segments;
pub use segments::*;

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(r: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(r)? as RawFd;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut sa: libc::sockaddr_un = unsafe { zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_os_str().as_bytes();
    if b.is_empty() || b.len() >= sa.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long or empty: {}", path.display()),
        ));
    }
    for (d, s) in sa.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + b.len() + 1) as libc::socklen_t;
    Ok((sa, len))
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    owned(unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
        )
    })
}

/// A connected `SOCK_SEQPACKET` socket to the service at `path` (a client's: kept out of the
/// application's descriptor numbers, see [`move_high`]).
pub fn connect_unix(path: &Path) -> io::Result<OwnedFd> {
    let fd = move_high(seqpacket()?);
    let (sa, len) = sockaddr_un(path)?;
    // SAFETY: `sa` is a live sockaddr_un of `len` bytes.
    check(unsafe {
        libc::syscall(
            libc::SYS_connect,
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_un,
            len,
        )
    })?;
    Ok(fd)
}

/// A listening `SOCK_SEQPACKET` socket at `path` (which must not exist), non-blocking, that
/// receives its clients' credentials with every message.
pub fn listen_unix(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    let (sa, len) = sockaddr_un(path)?;
    // SAFETY: `sa` is a live sockaddr_un of `len` bytes.
    check(unsafe {
        libc::syscall(
            libc::SYS_bind,
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_un,
            len,
        )
    })?;
    set_passcred(fd.as_raw_fd())?;
    // SAFETY: plain integers.
    check(unsafe { libc::syscall(libc::SYS_listen, fd.as_raw_fd(), 128) })?;
    set_nonblocking(fd.as_raw_fd())?;
    Ok(fd)
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain integers.
    let fl = check(unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) })?;
    // SAFETY: plain integers.
    check(unsafe {
        libc::syscall(
            libc::SYS_fcntl,
            fd,
            libc::F_SETFL,
            fl | libc::O_NONBLOCK as libc::c_long,
        )
    })?;
    Ok(())
}

/// Accept a client of a listening Unix socket (non-blocking; `None` when there is none), with
/// credentials passed on every message it sends.
pub fn accept_unix(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: null address pointers are allowed by accept4; plain integers otherwise.
    let r = unsafe {
        libc::syscall(
            libc::SYS_accept4,
            listener,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ECONNABORTED) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    let fd = owned(r)?;
    set_passcred(fd.as_raw_fd())?;
    Ok(Some(fd))
}

/// Have the kernel attach the sender's credentials to every message received on `fd`.
fn set_passcred(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int of the stated size.
    check(unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            &on as *const libc::c_int,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The kernel's credentials of a sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The peer credentials of a connected Unix socket (as of its connect).
pub fn peer_cred(fd: RawFd) -> io::Result<Cred> {
    // SAFETY: ucred is plain data.
    let mut c: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` and `len` are live and sized as stated.
    check(unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut c as *mut libc::ucred,
            &mut len as *mut libc::socklen_t,
        )
    })?;
    Ok(Cred {
        pid: c.pid as u32,
        uid: c.uid,
        gid: c.gid,
    })
}

/// Room for MAX_FDS descriptors plus one ucred, aligned for cmsghdr.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

/// Send one message with `fds` attached.
pub fn send_msg(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: msghdr is plain data; all zeros is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE is arithmetic.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` <= 128 bytes of cbuf, aligned for cmsghdr, so
        // the first header and its data (CMSG_DATA, `data_len` bytes) are inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(c),
                data_len as usize,
            );
        }
    }
    loop {
        // SAFETY: `msg` points at the live iovec and control buffer set up above.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sendmsg,
                sock,
                &msg as *const libc::msghdr,
                libc::MSG_NOSIGNAL,
            )
        };
        match check(r) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One received message: its bytes (truncated messages are reported as too long), the
/// descriptors that came with it, and the sender's credentials when the socket passes them.
pub struct Received {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    pub cred: Option<Cred>,
    /// The message or its control data did not fit (it is malformed by definition).
    pub truncated: bool,
}

/// Receive one message. `Ok(None)`: the peer closed. `WouldBlock` on a non-blocking socket
/// with nothing waiting.
pub fn recv_msg(sock: RawFd) -> io::Result<Option<Received>> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: msghdr is plain data; all zeros is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = cbuf.0.len();
    let n = loop {
        // SAFETY: `msg` points at the live buffers set up above.
        let r = unsafe {
            libc::syscall(
                libc::SYS_recvmsg,
                sock,
                &mut msg as *mut libc::msghdr,
                libc::MSG_CMSG_CLOEXEC,
            )
        };
        match check(r) {
            Ok(n) => break n as usize,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut fds = Vec::new();
    let mut cred = None;
    // SAFETY: the kernel filled msg_controllen bytes of cbuf with well-formed cmsghdrs;
    // CMSG_FIRSTHDR/NXTHDR stay within them, and each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / 4 descriptors, each new and owned by us from here on.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let payload = (*c).cmsg_len.saturating_sub(libc::CMSG_LEN(0) as usize);
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let p = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..payload / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            } else if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_CREDENTIALS
                && payload >= size_of::<libc::ucred>()
            {
                let u = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::ucred);
                cred = Some(Cred {
                    pid: u.pid as u32,
                    uid: u.uid,
                    gid: u.gid,
                });
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n == 0 && fds.is_empty() && msg.msg_flags & libc::MSG_TRUNC == 0 {
        // A zero-length datagram is not a message of ours; EOF on SEQPACKET reads as 0 too,
        // and a closed peer is what the caller handles.
        return Ok(None);
    }
    let truncated = n > MAX_MESSAGE || msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    buf.truncate(n.min(MAX_MESSAGE));
    Ok(Some(Received {
        bytes: buf,
        fds,
        cred,
        truncated,
    }))
}

/// Wait for readability of `fds` (POLLIN), up to `timeout_ms` (-1: forever). Returns the
/// revents per fd.
pub fn poll_in(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let fds: Vec<(RawFd, i16)> = fds.iter().map(|&fd| (fd, libc::POLLIN)).collect();
    poll(&fds, timeout_ms)
}

/// Read up to `buf.len()` bytes of the file `fd` at `offset` (the service reads a segment's
/// counter words this way, never mapping it): the bytes read.
pub fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes; the kernel writes at most
    // that many and validates `fd`.
    let n = check(unsafe {
        libc::syscall(
            libc::SYS_pread64,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            offset as libc::off_t,
        )
    })?;
    Ok(n as usize)
}

/// Wait for the events asked of each fd, up to `timeout_ms` (-1: forever). Returns the
/// revents per fd.
pub fn poll(fds: &[(RawFd, i16)], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    let ts = (timeout_ms >= 0).then(|| libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) as libc::c_long) * 1_000_000,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `p` is a live array of p.len() pollfds; `tsp` is null or a live timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ppoll,
            p.as_mut_ptr(),
            p.len(),
            tsp,
            std::ptr::null::<u8>(),
            8usize,
        )
    };
    match check(r) {
        Ok(_) => Ok(p.iter().map(|x| x.revents).collect()),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(vec![0; p.len()]),
        Err(e) => Err(e),
    }
}

/// What the kernel says of a TCP socket handed to the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpView {
    /// The socket's network namespace (SO_NETNS_COOKIE: unique for the namespace's lifetime).
    pub netns: u64,
    /// The socket's inode (its identity while it exists).
    pub inode: u64,
    pub listening: bool,
    pub local: Option<(Addr, u16)>,
    pub peer: Option<(Addr, u16)>,
}

const SO_NETNS_COOKIE: libc::c_int = 71;

pub(crate) fn sockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and sized as stated.
    check(unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut v as *mut libc::c_int,
            &mut len as *mut libc::socklen_t,
        )
    })?;
    Ok(v)
}

fn name(fd: RawFd, peer: bool) -> io::Result<Option<(Addr, u16)>> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let nr = if peer {
        libc::SYS_getpeername
    } else {
        libc::SYS_getsockname
    };
    // SAFETY: `ss` and `len` are live and sized as stated.
    let r = unsafe {
        libc::syscall(
            nr,
            fd,
            &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr,
            &mut len as *mut libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOTCONN) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(sockaddr_to(&ss))
}

/// An IPv4 or IPv6 socket address as (IPv4-mapped IPv6 bytes, port).
fn sockaddr_to(ss: &libc::sockaddr_storage) -> Option<(Addr, u16)> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let v4 = sin.sin_addr.s_addr.to_ne_bytes();
            let mut a = [0u8; 16];
            a[10] = 0xff;
            a[11] = 0xff;
            a[12..].copy_from_slice(&v4);
            Some((a, u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some((sin6.sin6_addr.s6_addr, u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

/// The network namespace of socket `fd` (SO_NETNS_COOKIE: unique for the namespace's lifetime).
pub(crate) fn netns_cookie(fd: RawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are live and sized as stated.
    check(unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64,
            &mut len as *mut libc::socklen_t,
        )
    })?;
    Ok(cookie)
}

/// Read the kernel's view of a socket handed over: `None` if it is not a TCP socket.
/// Six system calls for a connected socket (seven for one without a peer: whether it listens
/// is asked only then, a socket with a peer never does); the family comes with its own name.
pub fn tcp_view(fd: RawFd) -> io::Result<Option<TcpView>> {
    // SAFETY: stat is plain data.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: `st` is a live stat buffer.
    check(unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Ok(None);
    }
    let ty = sockopt_int(fd, libc::SO_TYPE)?;
    let proto = sockopt_int(fd, libc::SO_PROTOCOL)?;
    if ty != libc::SOCK_STREAM || proto != libc::IPPROTO_TCP {
        return Ok(None);
    }
    // Not AF_INET or AF_INET6 (the only families with TCP): no address of ours.
    let Some(local) = name(fd, false)? else {
        return Ok(None);
    };
    let netns = netns_cookie(fd)?;
    let peer = name(fd, true)?;
    let listening = peer.is_none() && sockopt_int(fd, libc::SO_ACCEPTCONN)? != 0;
    Ok(Some(TcpView {
        netns,
        inode: st.st_ino,
        listening,
        local: Some(local),
        peer,
    }))
}

/// A socket's address and port (IPv4 as IPv4-mapped IPv6).
pub type SockName = (Addr, u16);

/// The local and peer addresses of a TCP socket this process holds and has checked with
/// [`tcp_view`] already (what changes once it connects; its kind, namespace and inode do not).
pub fn tcp_names(fd: RawFd) -> io::Result<(Option<SockName>, Option<SockName>)> {
    Ok((name(fd, false)?, name(fd, true)?))
}

/// Slots of a process's tally page (docs/HOST-SERVICE.md, *Tallies*): one u32 word per
/// connection end the process may have; slot 0 counts rings for ends the ringer could not name.
pub const TALLY_SLOTS: usize = 32768;
/// Slots per group: after the slots' words, the page has one u32 word per group of this many
/// slots, moved with each of their rings, so a waiter reads a group's slots only when it moved.
pub const TALLY_GROUP: usize = 64;
/// Bytes of a tally page: the slots' words, then the groups' words, rounded to a page.
pub const TALLY_BYTES: u64 =
    (TALLY_SLOTS as u64 * 4 + (TALLY_SLOTS / TALLY_GROUP) as u64 * 4).next_multiple_of(PAGE as u64);

/// A new tally page: a sealed memfd of [`TALLY_BYTES`] (see [`segment`]).
pub fn tally() -> io::Result<OwnedFd> {
    segment(TALLY_BYTES)
}

/// Is `fd` a tally page the peers of its process can map and write safely: a memfd of exactly
/// [`TALLY_BYTES`], sealed against shrinking and growing (no truncation can SIGBUS them) and
/// against new seals (no write seal can come later), with no write seal now?
pub fn is_tally(fd: RawFd) -> bool {
    let Ok(seals) = seals(fd) else {
        return false;
    };
    let need = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    let deny = libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE;
    if seals & need != need || seals & deny != 0 {
        return false;
    }
    // SAFETY: stat is plain data.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: `st` is a live stat buffer.
    let ok = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) } == 0;
    ok && st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size as u64 == TALLY_BYTES
}

/// An interrupt line: a non-blocking eventfd.
pub fn line() -> io::Result<OwnedFd> {
    // SAFETY: plain integers.
    owned(unsafe {
        libc::syscall(
            libc::SYS_eventfd2,
            0,
            libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
        )
    })
}

/// Is `fd` an eventfd? (A line a client hands over must be one: the service and the peer
/// write 8-byte counts into it.)
pub fn is_eventfd(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

/// Add one to an eventfd (ring an interrupt line).
pub fn ring(fd: RawFd) -> bool {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live stack buffer.
    unsafe { libc::syscall(libc::SYS_write, fd, one.as_ptr(), one.len()) == 8 }
}

/// The cookie of this process's network namespace (from a socket of its own).
pub fn own_netns() -> Option<u64> {
    // SAFETY: plain integers.
    let fd = owned(unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        )
    })
    .ok()?;
    tcp_view(fd.as_raw_fd()).ok().flatten().map(|v| v.netns)
}

/// A pidfd for `pid` (readable once the process has exited).
pub fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain integers.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })
}

/// Take an exclusive advisory lock on `fd` without waiting.
pub fn try_flock(fd: RawFd) -> bool {
    // SAFETY: plain integers.
    unsafe { libc::syscall(libc::SYS_flock, fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// This process's id (cached until a fork: `ntbdrv::process::pid`).
pub fn getpid() -> u32 {
    ntbdrv::process::pid()
}

pub fn getuid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_getuid) as u32 }
}

/// Move one of our own descriptors out of the application's way: to the lowest free number
/// at or above half the soft descriptor limit (an application sizes its tables by the numbers
/// it expects, e.g. wrk's event loop holds 10 + 3 per connection). Keeps `fd` where it is if
/// nothing up there is free.
pub fn move_high(fd: OwnedFd) -> OwnedFd {
    // The limit is read once: a process that raises it later keeps the first floor, which is
    // only a choice of numbers.
    static FLOOR: std::sync::OnceLock<libc::c_int> = std::sync::OnceLock::new();
    let floor = *FLOOR.get_or_init(|| {
        // SAFETY: rlimit is plain data; all zeros is a valid value.
        let mut rl: libc::rlimit = unsafe { zeroed() };
        // SAFETY: getrlimit writes into a live rlimit.
        if unsafe { libc::syscall(libc::SYS_getrlimit, libc::RLIMIT_NOFILE, &mut rl) } != 0 {
            return libc::c_int::MAX;
        }
        (rl.rlim_cur / 2).clamp(64, i32::MAX as u64) as libc::c_int
    });
    if fd.as_raw_fd() >= floor {
        return fd;
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; plain integers.
    let high = unsafe {
        libc::syscall(
            libc::SYS_fcntl,
            fd.as_raw_fd(),
            libc::F_DUPFD_CLOEXEC,
            floor,
        )
    };
    if high < 0 {
        return fd;
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns; `fd` is dropped
    // (closed) in its place.
    unsafe { OwnedFd::from_raw_fd(high as RawFd) }
}

/// Raise this process's soft descriptor limit to its hard limit (the service holds four
/// descriptors per connection: two segments and two lines). Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: rlimit is plain data; all zeros is a valid value.
    let mut rl: libc::rlimit = unsafe { zeroed() };
    // SAFETY: getrlimit writes into a live rlimit.
    if unsafe { libc::syscall(libc::SYS_getrlimit, libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 0;
    }
    if rl.rlim_cur < rl.rlim_max {
        let want = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: setrlimit reads a live rlimit.
        if unsafe { libc::syscall(libc::SYS_setrlimit, libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    rl.rlim_cur
}

/// This process's file size limit (`RLIMIT_FSIZE`, soft; `u64::MAX` when unlimited or unknown):
/// a memfd made larger would raise SIGXFSZ.
pub fn file_size_limit() -> u64 {
    // SAFETY: rlimit is plain data; all zeros is a valid value.
    let mut rl: libc::rlimit = unsafe { zeroed() };
    // SAFETY: getrlimit writes into a live rlimit.
    if unsafe { libc::syscall(libc::SYS_getrlimit, libc::RLIMIT_FSIZE, &mut rl) } != 0 {
        return u64::MAX;
    }
    rl.rlim_cur
}

/// Make this thread `SCHED_BATCH`: the same share of the CPU as any other thread, but a
/// wake-up of it never preempts the thread that woke it. The service is woken by every
/// request; preempting the sender (a client about to connect, a server about to read its
/// request) for each one cost two context switches per message on the sender's CPU.
pub fn batch_scheduling() -> bool {
    // SAFETY: sched_param is plain data; all zeros (priority 0) is what SCHED_BATCH takes.
    let p: libc::sched_param = unsafe { zeroed() };
    // SAFETY: sched_setscheduler reads a live sched_param; pid 0 is this thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &p) == 0 }
}
