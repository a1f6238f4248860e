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
    let (family, addr) = family_of(ip);
    let addr = if family == libc::AF_INET as u8 && addr == [0; 4] {
        vec![127, 0, 0, 1]
    } else {
        addr
    };
    let any = [0u8; 16];
    let remote = (&any[..addr.len()], 0);
    let found = Netlink::open()?.lookup(family, (&addr, port), remote, 1 << TCP_LISTEN)?;
    Ok(found == Some(inode))
}

/// Does the connected socket `inode` still exist, from `local` to `peer` (as its own
/// `getsockname`/`getpeername` said), in this network namespace? One exact look-up of the
/// 4-tuple (in both families: a dual-stack socket's IPv4 connection is asked as IPv4 first).
/// A closed socket's TIME_WAIT remnant has no inode, so it does not count.
pub fn connected(inode: u64, local: (Addr, u16), peer: (Addr, u16)) -> io::Result<bool> {
    let (family, l) = family_of(&local.0);
    let (_, p) = family_of(&peer.0);
    let nl = Netlink::open()?;
    if nl.lookup(family, (&l, local.1), (&p, peer.1), !(1 << TCP_LISTEN))? == Some(inode) {
        return Ok(true);
    }
    if family == libc::AF_INET as u8 {
        // An IPv6 socket connected to an IPv4 peer, asked in its own family.
        return Ok(nl.lookup(
            libc::AF_INET6 as u8,
            (&local.0, local.1),
            (&peer.0, peer.1),
            !(1 << TCP_LISTEN),
        )? == Some(inode));
    }
    Ok(false)
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

struct Netlink(RawFd);

impl Drop for Netlink {
    fn drop(&mut self) {
        // SAFETY: closing the socket this struct opened and owns.
        unsafe { libc::syscall(libc::SYS_close, self.0) };
    }
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
        Ok(Netlink(fd as RawFd))
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
        req[8..12].copy_from_slice(&2u32.to_ne_bytes()); // sequence
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
        self.send(&req)?;
        let mut buf = vec![0u8; 4096];
        let n = self.recv(&mut buf)?;
        let mut out = Vec::new();
        match parse_states(&buf[..n], None, &mut out, states) {
            Ok(_) => Ok(out.first().copied()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn send(&self, req: &[u8]) -> io::Result<()> {
        // SAFETY: `sockaddr_nl` is plain old data; zero is valid (pid 0: the kernel).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `req` and `to` are live buffers of the lengths passed.
        let n = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                self.0,
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
        loop {
            // SAFETY: `buf` is a live buffer of the length passed; null address arguments.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_recvfrom,
                    self.0,
                    buf.as_mut_ptr(),
                    buf.len(),
                    0,
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
        req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
        let r = &mut req[NLMSG_HDR..];
        r[0] = family;
        r[1] = libc::IPPROTO_TCP as u8;
        r[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        self.send(&req)?;
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = self.recv(&mut buf)?;
            let done = parse(&buf[..n], port, out)?;
            if want.is_some_and(|w| out.contains(&w)) {
                return Ok(true);
            }
            if done {
                return Ok(false);
            }
        }
    }
}

/// Parse one datagram of a dump reply; true once the dump is done.
fn parse(b: &[u8], port: Option<u16>, out: &mut Vec<u64>) -> io::Result<bool> {
    parse_states(b, port, out, !0)
}

/// [`parse`], keeping only sockets whose state is in the bit set `states`.
fn parse_states(
    mut b: &[u8],
    port: Option<u16>,
    out: &mut Vec<u64>,
    states: u32,
) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply");
    while b.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(b[0..4].try_into().map_err(|_| bad())?) as usize;
        let ty = u16::from_ne_bytes(b[4..6].try_into().map_err(|_| bad())?);
        if len < NLMSG_HDR || len > b.len() {
            return Err(bad());
        }
        let body = &b[NLMSG_HDR..len];
        match ty as i32 {
            libc::NLMSG_DONE => return Ok(true),
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
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or(&[]);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The fork test's child holds copies of every fd open at the fork: the tests that watch a
    /// socket close run one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket's identity: its inode, and this process's network namespace.
    struct Id {
        inode: u64,
        netns: u64,
    }

    fn id(fd: &impl AsRawFd) -> Id {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        Id {
            inode: m.ino(),
            netns: netns().unwrap(),
        }
    }

    #[test]
    fn a_listening_socket_is_listed_until_it_closes() {
        let _serial = serial();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = id(&l);
        assert_eq!(me.netns, netns().unwrap());
        assert!(is_listening(me.inode, port).unwrap());
        assert!(listening(None).unwrap().contains(&me.inode));
        // Another port's filter does not list it.
        assert!(!is_listening(me.inode, port.wrapping_add(1).max(1)).unwrap());
        drop(l);
        assert!(!is_listening(me.inode, port).unwrap());
    }

    /// The exact lookup finds the listener a connection would reach, by its address or (for a
    /// wildcard listener) by loopback; a specific listener that shadows a wildcard one on the
    /// same port still leaves the wildcard one judged alive (by the table walk).
    /// The listener a connection to the IPv4 `addr`:`port` would reach.
    fn listener_at(nl: &Netlink, addr: [u8; 4], port: u16) -> Option<u64> {
        nl.lookup(
            libc::AF_INET as u8,
            (&addr, port),
            (&[0; 4], 0),
            1 << TCP_LISTEN,
        )
        .unwrap()
    }

    #[test]
    fn the_exact_lookup_finds_the_listener() {
        let _serial = serial();
        let mapped = |a: [u8; 4]| {
            let mut ip = [0u8; 16];
            ip[10] = 0xff;
            ip[11] = 0xff;
            ip[12..].copy_from_slice(&a);
            ip
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = id(&l).inode;
        let nl = Netlink::open().unwrap();
        assert_eq!(listener_at(&nl, [127, 0, 0, 1], port), Some(me));
        assert!(is_listening_at(me, &mapped([127, 0, 0, 1]), port).unwrap());
        assert!(is_listening_at(me, &[0; 16], port).unwrap());
        // A wildcard listener on another port, shadowed on 127.0.0.2 by a specific one.
        let any = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        any.set_reuse_address(true).unwrap();
        any.bind(&"0.0.0.0:0".parse::<std::net::SocketAddr>().unwrap().into())
            .unwrap();
        any.listen(1).unwrap();
        let aport = any.local_addr().unwrap().as_socket().unwrap().port();
        let spec =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        spec.set_reuse_address(true).unwrap();
        let addr2: std::net::SocketAddr = format!("127.0.0.2:{aport}").parse().unwrap();
        if spec.bind(&addr2.into()).is_ok() && spec.listen(1).is_ok() {
            let (a, s2) = (id(&any).inode, id(&spec).inode);
            let nl = Netlink::open().unwrap();
            assert_eq!(listener_at(&nl, [127, 0, 0, 2], aport), Some(s2));
            assert!(is_listening_at(a, &mapped([127, 0, 0, 2]), aport).unwrap());
            assert!(is_listening_at(s2, &mapped([127, 0, 0, 2]), aport).unwrap());
        }
        drop(l);
        let nl = Netlink::open().unwrap();
        assert_eq!(listener_at(&nl, [127, 0, 0, 1], port), None);
        assert!(!is_listening_at(me, &mapped([127, 0, 0, 1]), port).unwrap());
    }

    /// A connected socket is found by its 4-tuple while it exists; its TIME_WAIT remnant (no
    /// inode) is not it; the other end, closed by its peer, lives on.
    #[test]
    fn a_connected_socket_is_found_until_it_closes() {
        let _serial = serial();
        let mapped = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(v) => {
                let mut ip = [0u8; 16];
                ip[10] = 0xff;
                ip[11] = 0xff;
                ip[12..].copy_from_slice(&v.ip().octets());
                (ip, v.port())
            }
            std::net::SocketAddr::V6(v) => (v.ip().octets(), v.port()),
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let (ci, si) = (id(&c).inode, id(&s).inode);
        let (cl, cp) = (
            mapped(c.local_addr().unwrap()),
            mapped(c.peer_addr().unwrap()),
        );
        assert!(connected(ci, cl, cp).unwrap());
        assert!(connected(si, cp, cl).unwrap());
        // Another socket's inode at the same 4-tuple is not it.
        assert!(!connected(si, cl, cp).unwrap());
        assert!(!connected(ci, cl, (cp.0, cp.1.wrapping_add(1))).unwrap());
        drop(c);
        assert!(!connected(ci, cl, cp).unwrap());
        assert!(
            connected(si, cp, cl).unwrap(),
            "the server's end is in CLOSE_WAIT"
        );
        drop(s);
        assert!(!connected(si, cp, cl).unwrap());
        // IPv6, where the host has it.
        if let Ok(l6) = std::net::TcpListener::bind("[::1]:0") {
            let c6 = std::net::TcpStream::connect(l6.local_addr().unwrap()).unwrap();
            let i6 = id(&c6).inode;
            let (l, p) = (
                mapped(c6.local_addr().unwrap()),
                mapped(c6.peer_addr().unwrap()),
            );
            assert!(connected(i6, l, p).unwrap());
        }
    }

    #[test]
    fn ipv6_listeners_are_listed() {
        let _serial = serial();
        let Ok(l) = std::net::TcpListener::bind("[::1]:0") else {
            return; // no IPv6 on this host: nothing to ask
        };
        let port = l.local_addr().unwrap().port();
        assert!(is_listening(id(&l).inode, port).unwrap());
    }

    #[test]
    fn connected_and_bound_sockets_are_not_listening() {
        let _serial = serial();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let all = listening(None).unwrap();
        assert!(all.contains(&id(&l).inode));
        assert!(!all.contains(&id(&c).inode));
        assert!(!all.contains(&id(&s).inode));
        // Bound, never listened.
        let b = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        b.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        assert!(!listening(None).unwrap().contains(&id(&b).inode));
        b.listen(1).unwrap();
        assert!(listening(None).unwrap().contains(&id(&b).inode));
    }

    #[test]
    fn a_listener_shared_with_a_child_lives_until_both_close() {
        let _serial = serial();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = id(&l);
        let me_fd = l.as_raw_fd();
        let (r, w) = pipe();
        // SAFETY: the child only makes async-signal-safe calls (read, _exit) before exiting.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // The child keeps its copy of `l` until the parent writes a byte (and drops the
            // other tests' sockets it inherited, which must not outlive their tests).
            let lfd = me_fd as libc::c_uint;
            let rfd = r as libc::c_uint;
            let (lo, hi) = (lfd.min(rfd), lfd.max(rfd));
            let mut b = 0u8;
            // SAFETY: integer arguments, then a one-byte buffer.
            unsafe {
                libc::syscall(libc::SYS_close_range, 3u32, lo - 1, 0u32);
                libc::syscall(libc::SYS_close_range, lo + 1, hi - 1, 0u32);
                libc::syscall(libc::SYS_close_range, hi + 1, u32::MAX, 0u32);
                libc::read(r, &mut b as *mut u8 as *mut libc::c_void, 1);
            }
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        drop(l);
        // The parent closed its copy: the child's keeps the socket listening.
        assert!(is_listening(me.inode, port).unwrap());
        // SAFETY: a one-byte buffer; then reap the child.
        unsafe {
            libc::write(w, b"x".as_ptr() as *const libc::c_void, 1);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert!(!is_listening(me.inode, port).unwrap());
        // SAFETY: closing our own pipe ends.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }

    fn pipe() -> (RawFd, RawFd) {
        let mut p = [0; 2];
        // SAFETY: a two-int array.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        (p[0], p[1])
    }

    #[test]
    fn malformed_replies_are_refused() {
        let mut out = Vec::new();
        // A header claiming more bytes than the datagram holds.
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(parse(&b, None, &mut out).is_err());
        // A diag message too short to hold an inode.
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&24u32.to_ne_bytes());
        b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(parse(&b, None, &mut out).is_err());
        // An error message carries the errno.
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&20u32.to_ne_bytes());
        b[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        b[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        let e = parse(&b, None, &mut out).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(out.is_empty());
    }
}
