//! Which TCP sockets the kernel has, asked through NETLINK_SOCK_DIAG (`inet_diag`, what `ss`
//! uses): a pcisock listener stays published exactly as long as the kernel's listening socket
//! exists, whoever holds it (a forked child, a daemon whose parent exited), and a connection
//! whose known holders are gone lives as long as one of its sockets does; so liveness is a
//! socket's inode, not a pid.
//!
//! Called by the service when it judges orphaned listeners and connections, by the device
//! rendezvous when it judges a listener entry, and by the transport when a listener's fd
//! closes. Exact look-ups by address where it can (no walk of the kernel's tables); it only
//! reads, never changes a socket. The answer covers the caller's network namespace only
//! ([`netns`] tells which one that is).
//!
//! # Safety
//! The system calls take stack or heap buffers of the stated lengths and plain integers; the
//! kernel's replies are parsed with bounds checks (never by casting a pointer).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

use crate::wire::Addr;

/// The inode of this process's network namespace (`/proc/self/ns/net`).
pub fn netns() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino())
}

// linux/inet_diag.h, linux/sock_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
/// A request socket: a SYN answered, the handshake's last segment not in yet.
const TCP_SYN_RECV: u32 = 3;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the 48-byte sockid.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg` up to and including `idiag_inode` (at byte 68).
const MSG_LEN: usize = 72;
const MSG_INODE: usize = 68;
const MSG_SPORT: usize = 4;
const NLMSG_HDR: usize = 16;

/// Inodes of the TCP sockets in LISTEN state in this network namespace (IPv4 and IPv6), on
/// `port` if given.
pub fn listening(port: Option<u16>) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let sock = Netlink::open()?;
    for family in [libc::AF_INET, libc::AF_INET6] {
        sock.dump(family as u8, port, None, &mut out)?;
    }
    Ok(out)
}

/// Is the socket `inode` listening on `port` at `ip` (16 bytes, IPv4 as IPv4-mapped; all zeros
/// or 0.0.0.0: any address) in this network namespace? First an exact lookup of the listener a
/// connection to that address would reach (no walk of the kernel's listening table); if that
/// finds another socket (a more specific listener, a SO_REUSEPORT sibling) or none, the answer
/// of [`is_listening`].
pub fn is_listening_at(inode: u64, ip: &[u8; 16], port: u16) -> io::Result<bool> {
    Ok(reached_at(inode, ip, port)? || is_listening(inode, port)?)
}

/// Is `inode` the listening socket that a connection to `ip`:`port` would reach in this
/// network namespace (one exact lookup)? True proves the socket listens (socket inodes are
/// unique across namespaces); false proves nothing: ask [`is_listening_at`].
pub fn reached_at(inode: u64, ip: &[u8; 16], port: u16) -> io::Result<bool> {
    reached_at_with(&Netlink::open()?, inode, ip, port)
}

fn reached_at_with(nl: &Netlink, inode: u64, ip: &[u8; 16], port: u16) -> io::Result<bool> {
    let (family, addr) = family_of(ip);
    let addr = if family == libc::AF_INET as u8 && addr == [0; 4] {
        vec![127, 0, 0, 1]
    } else {
        addr
    };
    let any = [0u8; 16];
    let remote = (&any[..addr.len()], 0);
    let found = nl.lookup(family, (&addr, port), remote, 1 << TCP_LISTEN)?;
    Ok(found == Some(inode))
}

/// Does the connected socket `inode` still exist, from `local` to `peer` (as its own
/// `getsockname`/`getpeername` said), in this network namespace? One exact look-up of the
/// 4-tuple (in both families: a dual-stack socket's IPv4 connection is asked as IPv4 first).
/// A closed socket's TIME_WAIT remnant has no inode, so it does not count.
pub fn connected(inode: u64, local: (Addr, u16), peer: (Addr, u16)) -> io::Result<bool> {
    connected_with(&Netlink::open()?, inode, local, peer)
}

fn connected_with(
    nl: &Netlink,
    inode: u64,
    local: (Addr, u16),
    peer: (Addr, u16),
) -> io::Result<bool> {
    let found = lookup_either(nl, local, peer, !(1 << TCP_LISTEN), |i| i == inode)?;
    Ok(found == Some(inode))
}

/// The socket from `local` to `peer` in one of `states`: asked in its family, and an IPv4
/// connection again as IPv6 (a dual-stack socket's, IPv4-mapped) when the first answer is not
/// one that `fits`.
fn lookup_either(
    nl: &Netlink,
    local: (Addr, u16),
    peer: (Addr, u16),
    states: u32,
    fits: impl Fn(u64) -> bool,
) -> io::Result<Option<u64>> {
    let (family, l) = family_of(&local.0);
    let (_, p) = family_of(&peer.0);
    let found = nl.lookup(family, (&l, local.1), (&p, peer.1), states)?;
    if found.is_some_and(fits) || family != libc::AF_INET as u8 {
        return Ok(found);
    }
    nl.lookup(
        libc::AF_INET6 as u8,
        (&local.0, local.1),
        (&peer.0, peer.1),
        states,
    )
}

/// The server's side of the connection from `peer` to `local` (`local` the address it was made
/// to), if it exists: `Some(0)` while it waits in its listener's accept queue (established: a
/// socket with no inode, because no process holds it yet), `Some(inode)` once a process
/// accepted it. A request socket (SYN_RECV: the handshake's last segment never got in, dropped
/// while the accept queue was full) is not a server side yet: only the server's retransmitted
/// SYN-ACK, backing off up to a minute, or a segment of the client's makes one of it. One exact
/// look-up, in both families as [`connected`].
pub fn server_side(local: (Addr, u16), peer: (Addr, u16)) -> io::Result<Option<u64>> {
    server_side_with(&Netlink::open()?, local, peer)
}

fn server_side_with(
    nl: &Netlink,
    local: (Addr, u16),
    peer: (Addr, u16),
) -> io::Result<Option<u64>> {
    lookup_either(
        nl,
        local,
        peer,
        !(1 << TCP_LISTEN | 1 << TCP_SYN_RECV),
        |_| true,
    )
}

/// The family and address bytes (4 or 16) of an address in a message (IPv4 as IPv4-mapped;
/// all zeros: IPv4's any).
fn family_of(ip: &Addr) -> (u8, Vec<u8>) {
    const MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if ip[..12] == MAPPED || ip == &[0; 16] {
        (libc::AF_INET as u8, ip[12..].to_vec())
    } else {
        (libc::AF_INET6 as u8, ip.to_vec())
    }
}

/// Is the socket `inode` listening on `port` in this network namespace? Cheaper than
/// [`listening`] on a connect's path: it stops at the first family that lists the socket (the
/// socket is then closed with the rest of the reply unread).
pub fn is_listening(inode: u64, port: u16) -> io::Result<bool> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        if Netlink::open()?.dump(family as u8, Some(port), Some(inode), &mut out)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// [`is_listening`] on a socket kept for many requests (a handed one, which drains what an
/// early stop left unread before its next request).
fn is_listening_with(nl: &Netlink, inode: u64, port: u16) -> io::Result<bool> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        if nl.dump(family as u8, Some(port), Some(inode), &mut out)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A NETLINK_SOCK_DIAG socket. `handed`: another process made it and handed it over (it may
/// keep a copy): every request then drains what is queued first, carries a sequence number of
/// its own and skips replies that do not carry it, and waits at most [`HANDED_PATIENCE`] for
/// each reply (that process could read our replies away or queue answers to its own
/// requests).
struct Netlink {
    fd: RawFd,
    handed: bool,
}

/// How long a request on a handed socket waits for each reply datagram.
const HANDED_PATIENCE_MS: libc::c_int = 100;

impl Drop for Netlink {
    fn drop(&mut self) {
        // SAFETY: closing the socket this struct owns.
        unsafe { libc::syscall(libc::SYS_close, self.fd) };
    }
}

/// A sock_diag socket of one network namespace, kept to ask about that namespace's sockets
/// again and again: the service's own ([`Diag::here`]) or one a process of another namespace
/// handed over ([`Diag::handed`]), the only way a service without privileges can read another
/// namespace's socket table (a netlink socket answers for the namespace it was made in).
pub struct Diag(Netlink);

impl Diag {
    /// A sock_diag socket of this process's namespace.
    pub fn here() -> io::Result<Diag> {
        Netlink::open().map(Diag)
    }

    /// A descriptor another process handed over, if it is a NETLINK_SOCK_DIAG socket: the
    /// socket and its namespace's cookie (SO_NETNS_COOKIE). Its answers are the kernel's for
    /// that namespace; what the other process can still do with its copy is only to disturb
    /// them, which [`Netlink`] bounds (a wrong or missing answer is an error).
    pub fn handed(fd: std::os::fd::OwnedFd) -> Option<(Diag, u64)> {
        use crate::sys::{netns_cookie, sockopt_int};
        use std::os::fd::{AsRawFd, IntoRawFd};
        let raw = fd.as_raw_fd();
        if sockopt_int(raw, libc::SO_DOMAIN).ok()? != libc::AF_NETLINK
            || sockopt_int(raw, libc::SO_PROTOCOL).ok()? != libc::NETLINK_SOCK_DIAG
        {
            return None;
        }
        let cookie = netns_cookie(raw).ok().filter(|&c| c != 0)?;
        let nl = Netlink {
            fd: fd.into_raw_fd(),
            handed: true,
        };
        Some((Diag(nl), cookie))
    }

    /// [`is_listening_at`], in this socket's namespace.
    pub fn is_listening_at(&self, inode: u64, ip: &[u8; 16], port: u16) -> io::Result<bool> {
        Ok(reached_at_with(&self.0, inode, ip, port)? || is_listening_with(&self.0, inode, port)?)
    }

    /// [`server_side`], in this socket's namespace.
    pub fn server_side(&self, local: (Addr, u16), peer: (Addr, u16)) -> io::Result<Option<u64>> {
        server_side_with(&self.0, local, peer)
    }

    /// [`connected`], in this socket's namespace.
    pub fn connected(&self, inode: u64, local: (Addr, u16), peer: (Addr, u16)) -> io::Result<bool> {
        connected_with(&self.0, inode, local, peer)
    }
}

/// A sock_diag socket of this process's network namespace, to hand to the host fabric service
/// (which reads another namespace's socket table through it: [`Diag::handed`]).
pub fn socket_here() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let nl = Netlink::open()?;
    let fd = nl.fd;
    std::mem::forget(nl);
    // SAFETY: the socket `Netlink::open` made, whose ownership we take from it (forgotten).
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: integer arguments only.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_socket,
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            fd: fd as RawFd,
            handed: false,
        })
    }

    /// The inode of the socket in one of `states` (a bit set) that the kernel finds with this
    /// `local` and `remote` side (addresses of 4 or 16 bytes, network order; a listener: its
    /// own address and port, remote all zeros), if any: an exact lookup (no NLM_F_DUMP).
    fn lookup(
        &self,
        family: u8,
        local: (&[u8], u16),
        remote: (&[u8], u16),
        states: u32,
    ) -> io::Result<Option<u64>> {
        let mut req = [0u8; NLMSG_HDR + REQ_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        let r = &mut req[NLMSG_HDR..];
        r[0] = family;
        r[1] = libc::IPPROTO_TCP as u8;
        r[4..8].copy_from_slice(&states.to_ne_bytes());
        // struct inet_diag_sockid at 8: sport, dport (network order), src[16], dst[16], if,
        // cookie[2] (INET_DIAG_NOCOOKIE: any socket); the source is the socket's own side.
        let bad = || io::Error::from(io::ErrorKind::InvalidInput);
        r[8..10].copy_from_slice(&local.1.to_be_bytes());
        r[10..12].copy_from_slice(&remote.1.to_be_bytes());
        r.get_mut(12..12 + local.0.len())
            .ok_or_else(bad)?
            .copy_from_slice(local.0);
        r.get_mut(28..28 + remote.0.len())
            .ok_or_else(bad)?
            .copy_from_slice(remote.0);
        r[48..56].fill(0xff);
        let seq = self.send(&mut req)?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self.recv(&mut buf)?;
            let mut out = Vec::new();
            match parse_states(&buf[..n], None, &mut out, states, seq) {
                // Only a handed socket's reply can lack ours (see `Netlink`): read on.
                Ok(Parsed { ours: false, .. }) => continue,
                Ok(_) => return Ok(out.first().copied()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Send `req` with a sequence number of ours (written into it); returns it, or `None` for
    /// our own socket, whose replies are all ours (replies then are not checked for it).
    fn send(&self, req: &mut [u8]) -> io::Result<Option<u32>> {
        let seq = if self.handed {
            self.drain();
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            Some((t ^ n.wrapping_mul(0x9E37_79B9)) | 1)
        } else {
            None
        };
        req[8..12].copy_from_slice(&seq.unwrap_or(1).to_ne_bytes());
        self.send_raw(req)?;
        Ok(seq)
    }

    /// Throw away what is queued on a handed socket (replies to its other holder's requests,
    /// or the rest of one of ours that we stopped reading).
    fn drain(&self) {
        let mut buf = [0u8; 4096];
        for _ in 0..1024 {
            // SAFETY: `buf` is a live buffer of the length passed; null address arguments.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_recvfrom,
                    self.fd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::null::<u8>(),
                    std::ptr::null::<u8>(),
                )
            };
            if n <= 0 {
                return;
            }
        }
    }

    fn send_raw(&self, req: &[u8]) -> io::Result<()> {
        // SAFETY: `sockaddr_nl` is plain old data; zero is valid (pid 0: the kernel).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `req` and `to` are live buffers of the lengths passed.
        let n = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                self.fd,
                req.as_ptr(),
                req.len(),
                0,
                &to as *const libc::sockaddr_nl,
                std::mem::size_of::<libc::sockaddr_nl>(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.handed {
            // Its other holder may read our reply away: wait a bounded time for one.
            let mut p = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_poll,
                    &mut p as *mut libc::pollfd,
                    1,
                    HANDED_PATIENCE_MS,
                )
            };
            if r <= 0 {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
        }
        loop {
            // SAFETY: `buf` is a live buffer of the length passed; null address arguments.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_recvfrom,
                    self.fd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    if self.handed { libc::MSG_DONTWAIT } else { 0 },
                    std::ptr::null::<u8>(),
                    std::ptr::null::<u8>(),
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// One dump request for `family`'s listening TCP sockets; appends their inodes. With
    /// `want`, returns true as soon as that inode is listed (the rest of the reply unread: the
    /// socket must not be used again).
    fn dump(
        &self,
        family: u8,
        port: Option<u16>,
        want: Option<u64>,
        out: &mut Vec<u64>,
    ) -> io::Result<bool> {
        let mut req = [0u8; NLMSG_HDR + REQ_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        let r = &mut req[NLMSG_HDR..];
        r[0] = family;
        r[1] = libc::IPPROTO_TCP as u8;
        r[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        let seq = self.send(&mut req)?;
        let mut buf = vec![0u8; 32 << 10];
        // A handed socket's dump is bounded by the reads it may take (its other holder could
        // keep queueing replies of its own).
        for _ in 0..if self.handed { 4096 } else { usize::MAX } {
            let n = self.recv(&mut buf)?;
            let done = parse_states(&buf[..n], port, out, !0, seq)?.done;
            if want.is_some_and(|w| out.contains(&w)) {
                return Ok(true);
            }
            if done {
                return Ok(false);
            }
        }
        Err(io::Error::from(io::ErrorKind::TimedOut))
    }
}

/// Parse one datagram of a dump reply; true once the dump is done.
#[cfg(test)]
fn parse(b: &[u8], port: Option<u16>, out: &mut Vec<u64>) -> io::Result<bool> {
    parse_states(b, port, out, !0, None).map(|p| p.done)
}

/// What one reply datagram held.
struct Parsed {
    /// The end of the reply (NLMSG_DONE).
    done: bool,
    /// A message of our request was in it (always, when no sequence number is checked).
    ours: bool,
}

/// Parse one reply datagram, keeping only sockets whose state is in the bit set `states`, and
/// with `seq`, only messages carrying that sequence number (the others are skipped).
fn parse_states(
    mut b: &[u8],
    port: Option<u16>,
    out: &mut Vec<u64>,
    states: u32,
    seq: Option<u32>,
) -> io::Result<Parsed> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply");
    let mut ours = seq.is_none();
    while b.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(b[0..4].try_into().map_err(|_| bad())?) as usize;
        let ty = u16::from_ne_bytes(b[4..6].try_into().map_err(|_| bad())?);
        let got = u32::from_ne_bytes(b[8..12].try_into().map_err(|_| bad())?);
        if len < NLMSG_HDR || len > b.len() {
            return Err(bad());
        }
        let body = &b[NLMSG_HDR..len];
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        if seq.is_some_and(|s| s != got) {
            b = b.get(next..).unwrap_or(&[]);
            continue;
        }
        ours = true;
        match ty as i32 {
            libc::NLMSG_DONE => return Ok(Parsed { done: true, ours }),
            libc::NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .map(|e| i32::from_ne_bytes(e.try_into().unwrap_or([0; 4])))
                    .ok_or_else(bad)?;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            t if t == SOCK_DIAG_BY_FAMILY as i32 => {
                if body.len() < MSG_LEN {
                    return Err(bad());
                }
                let sport = u16::from_be_bytes([body[MSG_SPORT], body[MSG_SPORT + 1]]);
                let inode = u32::from_ne_bytes(
                    body[MSG_INODE..MSG_INODE + 4]
                        .try_into()
                        .map_err(|_| bad())?,
                );
                let state = 1u32.checked_shl(body[1] as u32).unwrap_or(0);
                if port.is_none_or(|p| p == sport) && states & state != 0 {
                    out.push(inode as u64);
                }
            }
            _ => {}
        }
        b = b.get(next..).unwrap_or(&[]);
    }
    Ok(Parsed { done: false, ours })
}

#[cfg(test)]
mod tests;
