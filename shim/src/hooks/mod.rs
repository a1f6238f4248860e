//! The exported hooks: each has the C signature of the libc function it replaces, checks the fd
//! side table, and either calls the real function (an untracked fd pays one table load) or
//! hands plain Rust values to `ops`. errno is set in one place (`boundary::finish`), and
//! preserved on every path we do not handle ourselves. A panic inside our handling is caught
//! (`boundary::guard`) and becomes EIO; it never crosses into the application. Arguments are
//! decoded from the C ABI in `abi`; the exports are grouped by family (`data`, `life`, `fdctl`,
//! `readiness`); this file keeps the glibc aliases, fork and exit handlers and the initializer.
//!
//! Compiled out of the crate's own unit tests (`cfg(not(test))`), so the test binary does not
//! interpose on itself. The exported list is `shim/exports.txt` (checked by the build script).
//!
//! # Safety
//! The hooks receive raw pointers from the application with the contracts of their libc
//! counterparts (a buffer of `n` bytes, an iovec array of `iovcnt` entries, …). Each block
//! builds slices only from non-null pointers and the lengths the same call carries.
#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

use std::time::Duration;

use libc::{c_int, c_ulong, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use crate::ops::{self, DataPath, Detour};
use crate::signals::restarting;
use crate::{global, real, sys, table};

#[macro_use]
mod boundary;
mod abi;

use abi::*;
use boundary::*;

mod data;
mod fdctl;
mod life;
mod readiness;

use data::*;
use fdctl::*;
use life::*;
use readiness::*;

// ---- glibc's exported aliases -----------------------------------------------------------------

/// Second names glibc exports for the same functions (`nm -D libc.so.6`; `__recv`, `__socket`
/// and `__sendmmsg` as GLIBC_PRIVATE, which a program can still link): a program that imports
/// one would otherwise reach the kernel socket past the side table. Each is exactly the hook of
/// its first name. (glibc's own internal calls use hidden aliases no hook can see.)
macro_rules! aliases {
    ($($alias:ident => $hook:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[no_mangle]
            pub unsafe extern "C" fn $alias($($arg: $ty),*) -> $ret {
                // SAFETY: the same contract as the hook it forwards to.
                unsafe { $hook($($arg),*) }
            }
        )*
    };
}

aliases! {
    __read => read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    __write => write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    __recv => recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    __send => send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    __sendmmsg => sendmmsg(
        fd: c_int, v: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int
    ) -> c_int;
    __socket => socket(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    __open => open(path: *const libc::c_char, flags: c_int, mode: libc::c_uint) -> c_int;
    __open64 => open64(path: *const libc::c_char, flags: c_int, mode: libc::c_uint) -> c_int;
    __pipe => pipe(fds: *mut c_int) -> c_int;
    __connect => connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    __close => close(fd: c_int) -> c_int;
    __fcntl => fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
    __dup2 => dup2(old: c_int, new: c_int) -> c_int;
    __poll => poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int;
    __select => select(
        nfds: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set,
        tv: *mut libc::timeval
    ) -> c_int;
    // The 64-bit-offset names (off_t is 64 bits on this ABI: one address in glibc).
    preadv64v2 => preadv2(
        fd: c_int, iov: *const iovec, cnt: c_int, off: libc::off64_t, flags: c_int
    ) -> ssize_t;
    pwritev64v2 => pwritev2(
        fd: c_int, iov: *const iovec, cnt: c_int, off: libc::off64_t, flags: c_int
    ) -> ssize_t;
}

// ---- load and exit ---------------------------------------------------------------------------

extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| global::get().write_stats());
}

/// Before fork: the child will share every NTB connection (postgres, nginx, socat hand a
/// connection to a child and close their own copy at once).
extern "C" fn atfork_prepare() {
    crate::fork::prepare();
}

/// In the child after fork: record it as a holder of what it inherited. Async-signal-safe (no
/// allocation, no lock), as `_Fork`'s child requires.
extern "C" fn atfork_child() {
    crate::fork::child();
}

/// `_Fork` (glibc 2.34+) forks without running the atfork handlers, so do their bookkeeping
/// here. glibc's own `fork` calls its internal `_Fork` directly, not through this hook, so a
/// `fork` is never counted twice.
/// `vfork` is a `fork` here. A vfork child shares its parent's memory until it execs or exits,
/// and what it calls first runs our hooks on the parent's state: Python's subprocess (vfork,
/// then `close_range` over the inherited fds, then exec) took every NTB connection out of its
/// parent's table, whose bytes then went over TCP. A fork gives the child its own copy, handled
/// as any fork (holders counted; its close of an inherited fd leaves the parent's connection
/// alone). The cost is fork's page-table copy; a program may not rely on anything vfork shares.
#[no_mangle]
pub unsafe extern "C" fn vfork() -> libc::pid_t {
    // SAFETY: our `fork`, which has no arguments.
    unsafe { fork() }
}

/// glibc's `fork` runs our atfork handlers; in the parent, once it returns, the child is named
/// as a holder of every connection it shares (`fork::parent`) before the program can close its
/// own copy.
#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    let pid = call_real!(fork());
    if pid != 0 {
        let e = sys::errno();
        if pid > 0 {
            crate::fork::parent(pid);
        } else {
            // No child (glibc ran no handler of ours for the failure): take the holders back.
            crate::fork::failed();
        }
        sys::set_errno(e);
    }
    pid
}

#[no_mangle]
pub unsafe extern "C" fn __vfork() -> libc::pid_t {
    // SAFETY: as `vfork`, which it is.
    unsafe { vfork() }
}

#[no_mangle]
pub unsafe extern "C" fn _Fork() -> libc::pid_t {
    atfork_prepare();
    let pid = call_real!(_Fork());
    if pid == 0 {
        atfork_child();
    } else if pid > 0 {
        crate::fork::parent(pid);
    } else {
        // No child: take back the holders announced for it.
        let e = sys::errno();
        crate::fork::failed();
        sys::set_errno(e);
    }
    pid
}

/// `posix_spawn` and its relatives make a child that runs another program without our fork
/// handlers (glibc clones it itself): `fork::spawning` first. Only the application's own calls
/// come here; glibc's internal ones (its `system` calls its internal spawn) do not, hence the
/// four hooks.
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const libc::c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut libc::c_char,
    envp: *const *mut libc::c_char,
) -> c_int {
    crate::fork::spawning();
    match real::posix_spawn() {
        // SAFETY: forwarding the application's own arguments to the real function.
        Some(f) => unsafe { f(pid, path, actions, attr, argv, envp) },
        None => libc::ENOSYS, // it returns the error number
    }
}

#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const libc::c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut libc::c_char,
    envp: *const *mut libc::c_char,
) -> c_int {
    crate::fork::spawning();
    match real::posix_spawnp() {
        // SAFETY: forwarding the application's own arguments to the real function.
        Some(f) => unsafe { f(pid, file, actions, attr, argv, envp) },
        None => libc::ENOSYS,
    }
}

#[no_mangle]
pub unsafe extern "C" fn system(command: *const libc::c_char) -> c_int {
    // `system(NULL)` asks whether a shell exists: no child.
    if !command.is_null() {
        crate::fork::spawning();
    }
    call_real!(system(command))
}

#[no_mangle]
pub unsafe extern "C" fn popen(
    command: *const libc::c_char,
    mode: *const libc::c_char,
) -> *mut libc::FILE {
    crate::fork::spawning();
    match real::popen() {
        // SAFETY: forwarding the application's own arguments to the real function.
        Some(f) => unsafe { f(command, mode) },
        None => {
            sys::set_errno(libc::ENOSYS);
            std::ptr::null_mut()
        }
    }
}

extern "C" fn init() {
    real::resolve_all();
    table::init_fences();
    std::panic::set_hook(Box::new(|info| {
        let g = global::get();
        g.log(crate::config::LogLevel::Error, || {
            format!("internal error (the call fails with EIO): {info}")
        });
    }));
    // SAFETY: registering plain extern "C" fns with no arguments as fork handlers.
    unsafe { libc::pthread_atfork(Some(atfork_prepare), None, Some(atfork_child)) };
    let _ = std::panic::catch_unwind(ops::reattach_inherited);
    let g = global::get();
    if g.stats_file.is_some() {
        // SAFETY: registering a plain extern "C" fn with no arguments.
        unsafe { libc::atexit(at_exit) };
    }
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;
