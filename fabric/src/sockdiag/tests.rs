//! sock_diag's tests: listeners and connections found until they close, exact look-ups,
//! IPv6, malformed replies refused, and a handed socket that its other holder disturbs.
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

/// A sock_diag socket handed over by another process, which keeps a copy: answers about
/// this namespace as our own would, though the other holder queued replies of its own
/// first (a dump of every listener: skipped by their sequence number, or drained); and
/// when it reads our replies away, a question ends in bounded time instead of hanging the
/// service. A socket of another kind is not taken.
#[test]
fn a_handed_socket_answers_right_whatever_its_other_holder_does() {
    use std::os::fd::IntoRawFd;
    let _serial = serial();
    let fd = socket_here().unwrap();
    let copy = Netlink {
        fd: fd.try_clone().unwrap().into_raw_fd(),
        handed: false,
    };
    let (diag, cookie) = Diag::handed(fd).unwrap();
    assert_eq!(Some(cookie), crate::sys::own_netns());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let inode = id(&l).inode;
    let mut ip = [0u8; 16];
    ip[10..].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
    // The other holder asks for a dump and leaves the replies queued.
    let queue_dump = || {
        let mut req = [0u8; NLMSG_HDR + REQ_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[NLMSG_HDR] = libc::AF_INET as u8;
        req[NLMSG_HDR + 1] = libc::IPPROTO_TCP as u8;
        // Listening sockets only: a dump of every socket on a machine with tens of thousands
        // (TIME_WAIT after a benchmark) does not fit one batch, and a dump still running makes
        // the kernel refuse the next request on the socket (EBUSY), which is not what this
        // test is about.
        req[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        copy.send_raw(&req).unwrap();
    };
    queue_dump();
    assert!(diag.is_listening_at(inode, &ip, port).unwrap());
    drop(l);
    queue_dump();
    assert!(!diag.is_listening_at(inode, &ip, port).unwrap());
    // The other holder reads everything that arrives: our questions end, answered or not.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thief = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: a live buffer of the length passed; null address arguments.
                unsafe {
                    libc::syscall(
                        libc::SYS_recvfrom,
                        copy.fd,
                        buf.as_mut_ptr(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        std::ptr::null::<u8>(),
                        std::ptr::null::<u8>(),
                    )
                };
            }
            drop(copy);
        })
    };
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        let _ = diag.is_listening_at(inode, &ip, port);
    }
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "questions on a socket whose replies are read away took {:?}",
        t0.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    thief.join().unwrap();
    // Not a sock_diag socket: a TCP socket, a netlink socket of another protocol.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(Diag::handed(std::os::fd::OwnedFd::from(tcp)).is_none());
    // SAFETY: integer arguments only.
    let route = unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    assert!(route >= 0);
    // SAFETY: the socket just made, owned by nothing else.
    let route =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(route as i32) };
    assert!(Diag::handed(route).is_none());
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
    let spec = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
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
