//! The real libc functions behind our hooks, found with `dlsym(RTLD_NEXT, …)`. It must never call
//! through an unresolved slot (the caller falls back to the raw system call) nor resolve to one of
//! our own hooks.
//!
//! Every slot is resolved eagerly by the library constructor and lazily on first use if a hook
//! runs before it (another library's constructor may call `write` first). A missing symbol
//! leaves the slot empty and the caller falls back to the raw system call.
//!
//! # Safety
//! A slot holds either 0 or the address `dlsym` returned for the named symbol, which has the C
//! signature written next to it in `real_fns!`; the typed accessors transmute the address to
//! exactly that signature.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use libc::{c_int, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

fn resolve(name: &'static [u8]) -> usize {
    // SAFETY: `name` is a NUL-terminated byte string literal; dlsym does not retain it.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) as usize }
}

macro_rules! real_fns {
    ($($name:ident : fn($($arg:ident : $ty:ty),*) -> $ret:ty;)*) => {
        #[allow(non_upper_case_globals)]
        mod slots {
            use super::AtomicUsize;
            $(pub static $name: AtomicUsize = AtomicUsize::new(0);)*
        }

        /// Resolve every slot now (the constructor calls this).
        pub fn resolve_all() {
            $(slots::$name.store(resolve(concat!(stringify!($name), "\0").as_bytes()), Relaxed);)*
        }

        $(
            /// The real function, if the C library has it.
            #[allow(dead_code, non_snake_case)]
            pub fn $name() -> Option<unsafe extern "C" fn($($ty),*) -> $ret> {
                let mut p = slots::$name.load(Relaxed);
                if p == 0 {
                    p = resolve(concat!(stringify!($name), "\0").as_bytes());
                    slots::$name.store(p, Relaxed);
                }
                if p == 0 {
                    None
                } else {
                    // SAFETY: `p` is dlsym's address for this symbol, whose C signature is the one
                    // declared here (see the module's safety note).
                    Some(unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($ty),*) -> $ret>(p) })
                }
            }
        )*
    };
}

real_fns! {
    socket: fn(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    listen: fn(fd: c_int, backlog: c_int) -> c_int;
    accept: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    connect: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    bind: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    read: fn(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    write: fn(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    readv: fn(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t;
    writev: fn(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t;
    recv: fn(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    send: fn(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    recvfrom: fn(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    sendto: fn(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    recvmsg: fn(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    sendmsg: fn(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    recvmmsg: fn(fd: c_int, v: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int, t: *mut libc::timespec) -> c_int;
    sendmmsg: fn(fd: c_int, v: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int) -> c_int;
    sendfile: fn(out_fd: c_int, in_fd: c_int, off: *mut libc::off_t, n: size_t) -> ssize_t;
    sendfile64: fn(out_fd: c_int, in_fd: c_int, off: *mut libc::off64_t, n: size_t) -> ssize_t;
    close: fn(fd: c_int) -> c_int;
    shutdown: fn(fd: c_int, how: c_int) -> c_int;
    poll: fn(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int;
    ppoll: fn(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    select: fn(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int;
    pselect: fn(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fcntl: fn(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int;
    fcntl64: fn(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int;
    ioctl: fn(fd: c_int, req: libc::c_ulong, arg: libc::c_ulong) -> c_int;
    setsockopt: fn(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    getsockopt: fn(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    epoll_ctl: fn(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
    epoll_wait: fn(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int;
    epoll_pwait: fn(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
    epoll_pwait2: fn(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    close_range: fn(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int;
    closefrom: fn(first: c_int) -> ();
    dup: fn(fd: c_int) -> c_int;
    dup2: fn(old: c_int, new: c_int) -> c_int;
    dup3: fn(old: c_int, new: c_int, flags: c_int) -> c_int;
    _Fork: fn() -> libc::pid_t;
    fork: fn() -> libc::pid_t;
    posix_spawn: fn(pid: *mut libc::pid_t, path: *const libc::c_char, actions: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut libc::c_char, envp: *const *mut libc::c_char) -> c_int;
    posix_spawnp: fn(pid: *mut libc::pid_t, file: *const libc::c_char, actions: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut libc::c_char, envp: *const *mut libc::c_char) -> c_int;
    system: fn(command: *const libc::c_char) -> c_int;
    popen: fn(command: *const libc::c_char, mode: *const libc::c_char) -> *mut libc::FILE;
    open: fn(path: *const libc::c_char, flags: c_int, mode: libc::c_uint) -> c_int;
    open64: fn(path: *const libc::c_char, flags: c_int, mode: libc::c_uint) -> c_int;
    openat: fn(dirfd: c_int, path: *const libc::c_char, flags: c_int, mode: libc::c_uint) -> c_int;
    openat64: fn(dirfd: c_int, path: *const libc::c_char, flags: c_int, mode: libc::c_uint) -> c_int;
    creat: fn(path: *const libc::c_char, mode: libc::mode_t) -> c_int;
    creat64: fn(path: *const libc::c_char, mode: libc::mode_t) -> c_int;
    __open_2: fn(path: *const libc::c_char, flags: c_int) -> c_int;
    __open64_2: fn(path: *const libc::c_char, flags: c_int) -> c_int;
    __openat_2: fn(dirfd: c_int, path: *const libc::c_char, flags: c_int) -> c_int;
    __openat64_2: fn(dirfd: c_int, path: *const libc::c_char, flags: c_int) -> c_int;
    pipe: fn(fds: *mut c_int) -> c_int;
    pipe2: fn(fds: *mut c_int, flags: c_int) -> c_int;
    socketpair: fn(domain: c_int, ty: c_int, proto: c_int, sv: *mut c_int) -> c_int;
    epoll_create: fn(size: c_int) -> c_int;
    epoll_create1: fn(flags: c_int) -> c_int;
    eventfd: fn(initval: libc::c_uint, flags: c_int) -> c_int;
    signalfd: fn(fd: c_int, mask: *const libc::sigset_t, flags: c_int) -> c_int;
    timerfd_create: fn(clock: c_int, flags: c_int) -> c_int;
    memfd_create: fn(name: *const libc::c_char, flags: libc::c_uint) -> c_int;
    inotify_init: fn() -> c_int;
    inotify_init1: fn(flags: c_int) -> c_int;
    preadv2: fn(fd: c_int, iov: *const iovec, n: c_int, off: libc::off_t, flags: c_int) -> ssize_t;
    pwritev2: fn(fd: c_int, iov: *const iovec, n: c_int, off: libc::off_t, flags: c_int) -> ssize_t;
    splice: fn(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, len: size_t, flags: libc::c_uint) -> ssize_t;
}
