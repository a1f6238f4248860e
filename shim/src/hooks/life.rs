//! Connection life cycle: fd creators, listen, accept, connect, close, shutdown. Owns the hooks' C
//! signatures. connect, accept and close always reach the kernel; it never decides whether a
//! connection is flagged (`policy`, through `ops`).

use super::*;
use std::net::SocketAddr;

/// A call made the new fd `fd`: if its number is still tracked, the fd it was closed behind our
/// back, and the kernel reused the number (errno kept).
fn fresh(fd: c_int) {
    if fd >= 0 && (table::contains(fd) || crate::epoll::involves(fd)) {
        let e = sys::errno();
        let _ = guard(|| {
            ops::forget_reused(fd);
            Ok(())
        });
        sys::set_errno(e);
    }
}

/// Calls that make one new fd: each purges a stale entry for the number it returns (libvma
/// does the same). `open`'s variadic mode is taken as a plain third argument, as for `fcntl`.
macro_rules! fd_creators {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[no_mangle]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
                let fd = call_real!($name($($arg),*));
                fresh(fd);
                fd
            }
        )*
    };
}

fd_creators! {
    socket(domain: c_int, ty: c_int, proto: c_int);
    open(path: *const libc::c_char, flags: c_int, mode: libc::c_uint);
    open64(path: *const libc::c_char, flags: c_int, mode: libc::c_uint);
    openat(dirfd: c_int, path: *const libc::c_char, flags: c_int, mode: libc::c_uint);
    openat64(dirfd: c_int, path: *const libc::c_char, flags: c_int, mode: libc::c_uint);
    creat(path: *const libc::c_char, mode: libc::mode_t);
    creat64(path: *const libc::c_char, mode: libc::mode_t);
    __open_2(path: *const libc::c_char, flags: c_int);
    __open64_2(path: *const libc::c_char, flags: c_int);
    __openat_2(dirfd: c_int, path: *const libc::c_char, flags: c_int);
    __openat64_2(dirfd: c_int, path: *const libc::c_char, flags: c_int);
    epoll_create(size: c_int);
    epoll_create1(flags: c_int);
    eventfd(initval: libc::c_uint, flags: c_int);
    signalfd(fd: c_int, mask: *const libc::sigset_t, flags: c_int);
    timerfd_create(clock: c_int, flags: c_int);
    memfd_create(name: *const libc::c_char, flags: libc::c_uint);
    inotify_init();
    inotify_init1(flags: c_int);
}

/// pipe/pipe2/socketpair: two new fds.
fn fresh_pair(r: c_int, fds: *mut c_int) -> c_int {
    if r == 0 && !fds.is_null() {
        // SAFETY: the call succeeded, so the application's array holds two fds.
        let (a, b) = unsafe { (*fds, *fds.add(1)) };
        fresh(a);
        fresh(b);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    fresh_pair(call_real!(pipe(fds)), fds)
}

#[no_mangle]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    fresh_pair(call_real!(pipe2(fds, flags)), fds)
}

#[no_mangle]
pub unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    proto: c_int,
    sv: *mut c_int,
) -> c_int {
    fresh_pair(call_real!(socketpair(domain, ty, proto, sv)), sv)
}

#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let e = sys::errno();
    // A bound socket is registered before the kernel listens (see `register_listener`).
    let before = match guard(|| ops::register_listener(fd)) {
        Ok(l) => l,
        Err(err) => return finish(Err(err)),
    };
    let r = call_real!(listen(fd, backlog));
    if r != 0 {
        if before == ops::Listen::Registered {
            let e = sys::errno();
            let _ = guard(|| {
                ops::abandon_listener(fd);
                Ok(())
            });
            sys::set_errno(e);
        }
        return r;
    }
    if before != ops::Listen::Unbound {
        if before == ops::Listen::Registered {
            let _ = guard(|| {
                ops::kernel_listens(fd);
                Ok(())
            });
        }
        sys::set_errno(e);
        return 0;
    }
    // An unbound socket got its port from `listen`: register it now.
    match guard(|| ops::register_listener(fd)) {
        Ok(l) => {
            if l == ops::Listen::Registered {
                let _ = guard(|| {
                    ops::kernel_listens(fd);
                    Ok(())
                });
            }
            sys::set_errno(e);
            0
        }
        Err(err) => finish(Err(err)),
    }
}

fn accepted(lfd: c_int, fd: c_int, nonblock: bool, peer: Option<SocketAddr>) -> c_int {
    if fd < 0 {
        return fd;
    }
    if !table::contains(lfd) {
        if table::contains(fd) {
            drop(table::remove(fd));
        }
        return fd;
    }
    let e = sys::errno();
    match guard(|| ops::after_accept(lfd, fd, nonblock, peer)) {
        Ok(()) => {
            sys::set_errno(e);
            fd
        }
        Err(err) => finish(Err(err)),
    }
}

/// The kernel's accept (`real`, given an address buffer and its length) on listening socket
/// `fd`, which also gives the peer's address: the caller's buffer when it passed one large
/// enough (left exactly as the kernel wrote it), else our own when it passed none and the
/// listener is ours (saving a `getpeername`).
///
/// # Safety
/// `addr` and `len` as the caller passed them to accept.
unsafe fn accept_with_peer(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    real: impl FnOnce(*mut sockaddr, *mut socklen_t) -> c_int,
) -> (c_int, Option<SocketAddr>) {
    if !table::contains(fd) {
        return (real(addr, len), None);
    }
    if addr.is_null() || len.is_null() {
        // SAFETY: sockaddr_storage is plain old data; zero is a valid value.
        let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut sl = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        let storage = (&mut st as *mut libc::sockaddr_storage).cast::<sockaddr>();
        let nfd = real(storage, &mut sl);
        // SAFETY: the kernel wrote `sl` bytes of address into `st`, which holds any.
        return (nfd, unsafe { sys::decode_addr(storage, sl) });
    }
    // SAFETY: the caller passed a live length with its address buffer.
    let room = unsafe { *len };
    let nfd = real(addr, len);
    // SAFETY: as above; the kernel set it to the address's full length.
    let got = unsafe { *len };
    // SAFETY: the kernel wrote `got` bytes into the caller's buffer when they fit.
    let peer = (nfd >= 0 && got <= room)
        .then(|| unsafe { sys::decode_addr(addr, got) })
        .flatten();
    (nfd, peer)
}

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real = |a, l| call_real!(accept(fd, a, l));
    // SAFETY: the caller's arguments.
    let (nfd, peer) = unsafe { accept_with_peer(fd, addr, len, real) };
    accepted(fd, nfd, false, peer)
}

#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let real = |a, l| call_real!(accept4(fd, a, l, flags));
    // SAFETY: the caller's arguments.
    let (nfd, peer) = unsafe { accept_with_peer(fd, addr, len, real) };
    accepted(fd, nfd, flags & libc::SOCK_NONBLOCK != 0, peer)
}

#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the application's address of `len` bytes.
    let a = unsafe { sys::decode_addr(addr, len) };
    let real = || call_real!(connect(fd, addr, len));
    match guard(|| match ops::connect(fd, a, real) {
        Detour::Bypass => Err(i32::MIN),
        Detour::Ours(r) => r,
    }) {
        Err(i32::MIN) => call_real!(connect(fd, addr, len)),
        r => finish(r),
    }
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let mut closing = None;
    let ours = (table::contains(fd) || crate::epoll::involves(fd)) && !nested();
    if ours {
        let _ = guard(|| {
            closing = ops::begin_close(fd);
            Ok(())
        });
    }
    let r = call_real!(close(fd));
    if ours {
        table::close_end(fd);
    }
    after_close(closing.into_iter());
    r
}

/// Listeners whose fds were just closed: settle them; then the statistics file, if closed
/// connections' records came in (errno kept).
fn after_close(closing: impl Iterator<Item = ops::Closing>) {
    let e = sys::errno();
    for c in closing {
        let _ = guard(|| {
            ops::after_close(c);
            Ok(())
        });
    }
    if let Some(g) = global::made().filter(|_| !nested()) {
        let _ = guard(|| {
            g.stats_due();
            Ok(())
        });
    }
    sys::set_errno(e);
}

/// Forget every tracked fd in `first..=last` before the kernel closes them; returns the
/// listeners to settle after the close.
fn forget_range(first: libc::c_uint, last: libc::c_uint) -> Vec<ops::Closing> {
    let mut closing = Vec::new();
    if !table::any() && !crate::epoll::IN_USE.load(std::sync::atomic::Ordering::Relaxed) || nested()
    {
        return closing;
    }
    let hi = (last as usize).min(table::MAX_FD - 1);
    for fd in first as usize..=hi {
        // An epoll set with our registrations is forgotten too, as `close` does.
        if table::contains(fd as c_int) || crate::epoll::involves(fd as c_int) {
            let _ = guard(|| {
                closing.extend(ops::before_close(fd as c_int));
                Ok(())
            });
        }
    }
    closing
}

#[no_mangle]
pub unsafe extern "C" fn close_range(
    first: libc::c_uint,
    last: libc::c_uint,
    flags: c_int,
) -> c_int {
    // CLOSE_RANGE_CLOEXEC only marks the fds; they stay open in this image.
    let mut closing = Vec::new();
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        closing = forget_range(first, last);
    }
    let r = match real::close_range() {
        // SAFETY: forwarding the application's own arguments.
        Some(f) => unsafe { f(first, last, flags) },
        None => {
            // SAFETY: no memory arguments.
            unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) as c_int }
        }
    };
    after_close(closing.into_iter());
    r
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(first: c_int) {
    let closing = forget_range(first.max(0) as libc::c_uint, libc::c_uint::MAX);
    if let Some(f) = real::closefrom() {
        // SAFETY: forwarding the application's own argument.
        unsafe { f(first) }
    } else {
        // SAFETY: no memory arguments.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first.max(0) as libc::c_uint,
                libc::c_uint::MAX,
                0,
            )
        };
    }
    after_close(closing.into_iter());
}

#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if !table::contains(fd) {
        return call_real!(shutdown(fd, how));
    }
    match guard(|| Ok(ops::shutdown(fd, how))) {
        Ok(Detour::Bypass) => call_real!(shutdown(fd, how)),
        Ok(Detour::Ours(r)) => finish(r),
        Err(e) => finish(Err(e)),
    }
}
