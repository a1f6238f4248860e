//! The exported hooks: each has the C signature of the libc function it replaces, checks the fd
//! side table, and either calls the real function (an untracked fd pays one table load) or
//! hands plain Rust values to `ops`. errno is set here, in one place (`finish`), and preserved
//! on every path we do not handle ourselves. A panic inside our handling is caught and becomes
//! EIO; it never crosses into the application.
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

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use libc::{c_int, c_ulong, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use crate::ops::{self, DataPath, Detour};
use crate::signals::restarting;
use crate::{global, real, sys, table};

thread_local! {
    /// This thread is inside our handling of a call (see `guard`).
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run our handling of a call, catching panics (→ EIO). While it runs, the libc calls pcisock
/// makes itself on this thread come back into these hooks (closing its own doorbell lines when
/// an offer settles inside `epoll_wait`, …); `nested` tells the hooks that take locks to pass
/// those straight to the kernel.
fn guard<T>(f: impl FnOnce() -> Result<T, c_int>) -> Result<T, c_int> {
    let outer = INSIDE.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(libc::EIO));
    if !outer {
        INSIDE.with(|c| c.set(false));
    }
    r
}

/// Bookkeeping after a call that already succeeded (fd flags, timeouts, dups): inside the
/// guard like everything else, and a failure there changes nothing for the application.
fn quietly(f: impl FnOnce()) {
    let _ = guard(|| {
        f();
        Ok(())
    });
}

/// The call comes from pcisock's own handling of another call on this thread.
fn nested() -> bool {
    INSIDE.with(|c| c.get())
}

/// Turn our result into the C convention: the value, or -1 with errno.
fn finish<T: From<i8>>(r: Result<T, c_int>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            sys::set_errno(e);
            T::from(-1)
        }
    }
}

fn fin_ssize(r: Result<usize, c_int>) -> ssize_t {
    finish(r.map(|n| n as ssize_t))
}

macro_rules! call_real {
    ($name:ident ( $($a:expr),* )) => {
        match real::$name() {
            // SAFETY: forwarding the application's own arguments to the real function.
            Some(f) => unsafe { f($($a),*) },
            None => {
                sys::set_errno(libc::ENOSYS);
                -1
            }
        }
    };
}

/// Bytes at `buf` (`n` long) as a slice; empty if null or zero.
unsafe fn slice<'a>(buf: *const c_void, n: size_t) -> &'a [u8] {
    if buf.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: the caller passes the application's buffer and its length.
        unsafe { std::slice::from_raw_parts(buf as *const u8, n) }
    }
}

unsafe fn slice_mut<'a>(buf: *mut c_void, n: size_t) -> &'a mut [u8] {
    if buf.is_null() || n == 0 {
        &mut []
    } else {
        // SAFETY: the caller passes the application's buffer and its length.
        unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, n) }
    }
}

unsafe fn iovecs<'a>(iov: *const iovec, n: c_int) -> Result<Vec<&'a [u8]>, c_int> {
    if !(0..=libc::UIO_MAXIOV).contains(&n) {
        return Err(libc::EINVAL);
    }
    if n == 0 || iov.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: `iov` holds `n` iovecs (the application's contract).
    let v = unsafe { std::slice::from_raw_parts(iov, n as usize) };
    // SAFETY: each iovec describes a readable buffer.
    Ok(v.iter()
        .map(|e| unsafe { slice(e.iov_base, e.iov_len) })
        .collect())
}

unsafe fn iovecs_mut<'a>(iov: *const iovec, n: c_int) -> Result<Vec<&'a mut [u8]>, c_int> {
    if !(0..=libc::UIO_MAXIOV).contains(&n) {
        return Err(libc::EINVAL);
    }
    if n == 0 || iov.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: `iov` holds `n` iovecs (the application's contract).
    let v = unsafe { std::slice::from_raw_parts(iov, n as usize) };
    // SAFETY: each iovec describes a writable buffer, and they do not overlap.
    Ok(v.iter()
        .map(|e| unsafe { slice_mut(e.iov_base, e.iov_len) })
        .collect())
}

// ---- data ------------------------------------------------------------------------------------

/// Receive on a tracked fd; `None` means "use the kernel socket" (bytes counted by the caller).
fn do_recv(fd: c_int, bufs: &mut [&mut [u8]], flags: c_int) -> Option<Result<usize, c_int>> {
    match ops::data_path(fd, flags & libc::MSG_DONTWAIT != 0)? {
        Err(e) => Some(Err(e)),
        Ok(DataPath::Ntb(s)) => Some(guard(|| {
            restarting(s.rcvtimeo(), || ops::recv(&s, s.ntb(), bufs, flags))
        })),
        Ok(DataPath::Kernel) => None,
    }
}

fn do_send(fd: c_int, bufs: &[&[u8]], flags: c_int) -> Option<Result<usize, c_int>> {
    match ops::data_path(fd, flags & libc::MSG_DONTWAIT != 0)? {
        Err(libc::EAGAIN) => match guard(|| Ok(ops::stash_early(fd, bufs))) {
            Err(e) => Some(Err(e)),
            Ok(Some(n)) => Some(Ok(n)),
            // Settled meanwhile (or no room): look again once.
            Ok(None) => match ops::data_path(fd, flags & libc::MSG_DONTWAIT != 0)? {
                Err(e) => Some(Err(e)),
                Ok(DataPath::Ntb(s)) => Some(send_restarting(&s, s.ntb(), bufs, flags)),
                Ok(DataPath::Kernel) => None,
            },
        },
        Err(e) => Some(Err(e)),
        Ok(DataPath::Ntb(s)) => Some(send_restarting(&s, s.ntb(), bufs, flags)),
        Ok(DataPath::Kernel) => None,
    }
}

fn send_restarting(
    s: &crate::sock::Sock,
    c: &transport::Connection,
    bufs: &[&[u8]],
    flags: c_int,
) -> Result<usize, c_int> {
    guard(|| restarting(s.sndtimeo(), || ops::send(s, c, bufs, flags)))
}

/// The common send on an NTB connection, before any other work: the whole buffer in one frame
/// with the credits already seen, never waiting (`Connection::try_send`). `None`: nothing was
/// sent, and the general path (`do_send`) takes the call. Only for flags it cannot change
/// (`MSG_DONTWAIT`: it never waits anyway; `MSG_NOSIGNAL`: it never fails).
#[inline]
fn try_send(fd: c_int, buf: &[u8], flags: c_int) -> Option<usize> {
    if flags & !(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) != 0 {
        return None;
    }
    std::panic::catch_unwind(|| table::pin(fd)?.conn.get()?.try_send(buf))
        .ok()
        .flatten()
}

/// Count bytes a flagged-but-TCP connection moved over the kernel socket.
fn count_kernel(fd: c_int, r: ssize_t, tx: bool) -> ssize_t {
    if r > 0 {
        if let Some(s) = table::get(fd) {
            let c = if tx { &s.tcp_tx } else { &s.tcp_rx };
            c.fetch_add(r as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    if !table::contains(fd) {
        return call_real!(read(fd, buf, n));
    }
    // SAFETY: the application's buffer of `n` bytes.
    let b = unsafe { slice_mut(buf, n) };
    match do_recv(fd, &mut [b], 0) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(read(fd, buf, n)), false),
    }
}

#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        // The fortified caller's buffer is smaller than the read: glibc aborts here too.
        std::process::abort();
    }
    // SAFETY: same contract as read.
    unsafe { read(fd, buf, n) }
}

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    if !table::contains(fd) {
        return call_real!(write(fd, buf, n));
    }
    // SAFETY: the application's buffer of `n` bytes.
    let b = unsafe { slice(buf, n) };
    if let Some(k) = try_send(fd, b, 0) {
        return k as ssize_t;
    }
    match do_send(fd, &[b], 0) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(write(fd, buf, n)), true),
    }
}

#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if !table::contains(fd) {
        return call_real!(readv(fd, iov, cnt));
    }
    // SAFETY: the application's iovec array.
    let mut bufs = match unsafe { iovecs_mut(iov, cnt) } {
        Ok(b) => b,
        Err(e) => return fin_ssize(Err(e)),
    };
    match do_recv(fd, &mut bufs, 0) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(readv(fd, iov, cnt)), false),
    }
}

#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if !table::contains(fd) {
        return call_real!(writev(fd, iov, cnt));
    }
    // SAFETY: the application's iovec array.
    let bufs = match unsafe { iovecs(iov, cnt) } {
        Ok(b) => b,
        Err(e) => return fin_ssize(Err(e)),
    };
    match do_send(fd, &bufs, 0) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(writev(fd, iov, cnt)), true),
    }
}

/// RWF_NOSIGNAL (Linux 6.18's uapi; not in the libc crate yet): no SIGPIPE on EPIPE.
const RWF_NOSIGNAL: c_int = 0x100;

/// preadv2/pwritev2 flags on an NTB fd: the kernel's verdict for this socket, as `MSG_*` flags.
/// Which flags a socket accepts depends on the kernel (6.18 takes HIPRI, DSYNC, SYNC, NOWAIT,
/// APPEND, NOAPPEND and NOSIGNAL, and says EOPNOTSUPP to ATOMIC, DONTCACHE and unknown bits),
/// so the idle kernel socket of an NTB connection is asked: a non-blocking one-byte `preadv2`
/// with the same flags fails with EOPNOTSUPP exactly when they are not supported (a socket
/// accepts the same flags for reads and writes, and the idle socket has no byte to take). A
/// connection on TCP is not asked (its socket holds real bytes; the real call checks the flags),
/// nor one still waiting for its upgrade answer (checked against 6.18's list instead).
fn rwf_flags(fd: c_int, flags: c_int) -> Result<c_int, c_int> {
    if flags == 0 {
        return Ok(0);
    }
    let e = sys::errno();
    // Settle a pending upgrade first, as the data call would.
    match ops::data_path(fd, flags & libc::RWF_NOWAIT != 0) {
        Some(Ok(DataPath::Ntb(..))) => {
            let mut b = [0u8; 1];
            let iov = iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 1,
            };
            if call_real!(preadv2(fd, &iov, 1, -1, flags | libc::RWF_NOWAIT)) < 0 {
                let err = sys::errno();
                if err == libc::EOPNOTSUPP || err == libc::EINVAL {
                    return Err(err);
                }
            }
        }
        Some(Err(_)) => {
            let known = libc::RWF_HIPRI
                | libc::RWF_DSYNC
                | libc::RWF_SYNC
                | libc::RWF_NOWAIT
                | libc::RWF_APPEND
                | libc::RWF_NOAPPEND
                | RWF_NOSIGNAL;
            if flags & !known != 0 {
                return Err(libc::EOPNOTSUPP);
            }
        }
        _ => {}
    }
    sys::set_errno(e);
    let mut msg = 0;
    if flags & libc::RWF_NOWAIT != 0 {
        msg |= libc::MSG_DONTWAIT;
    }
    if flags & RWF_NOSIGNAL != 0 {
        msg |= libc::MSG_NOSIGNAL;
    }
    Ok(msg)
}

/// The `MSG_*` flags of a preadv2/pwritev2 on a tracked fd, or its result already: 0 for an
/// empty call (the kernel returns before it looks at the flags), or -1 with errno if the flags
/// are refused.
fn rwf_call(fd: c_int, empty: bool, flags: c_int) -> Result<c_int, ssize_t> {
    if empty {
        return Err(0);
    }
    rwf_flags(fd, flags).map_err(|e| fin_ssize(Err(e)))
}

/// preadv2: with offset −1 on a tracked fd, `readv` with the call's flags (RWF_NOWAIT: this call
/// does not wait). Any other offset goes to the kernel, which refuses it for a socket (ESPIPE,
/// or EINVAL below −1).
#[no_mangle]
pub unsafe extern "C" fn preadv2(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    off: libc::off_t,
    flags: c_int,
) -> ssize_t {
    if !table::contains(fd) || off != -1 {
        return call_real!(preadv2(fd, iov, cnt, off, flags));
    }
    // SAFETY: the application's iovec array.
    let mut bufs = match unsafe { iovecs_mut(iov, cnt) } {
        Ok(b) => b,
        Err(e) => return fin_ssize(Err(e)),
    };
    let msg = match rwf_call(fd, bufs.iter().all(|b| b.is_empty()), flags) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match do_recv(fd, &mut bufs, msg) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(preadv2(fd, iov, cnt, off, flags)), false),
    }
}

/// pwritev2: with offset −1 on a tracked fd, `writev` with the call's flags (RWF_NOWAIT: this
/// call does not wait; RWF_NOSIGNAL: no SIGPIPE). Other offsets go to the kernel (ESPIPE).
#[no_mangle]
pub unsafe extern "C" fn pwritev2(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    off: libc::off_t,
    flags: c_int,
) -> ssize_t {
    if !table::contains(fd) || off != -1 {
        return call_real!(pwritev2(fd, iov, cnt, off, flags));
    }
    // SAFETY: the application's iovec array.
    let bufs = match unsafe { iovecs(iov, cnt) } {
        Ok(b) => b,
        Err(e) => return fin_ssize(Err(e)),
    };
    let msg = match rwf_call(fd, bufs.iter().all(|b| b.is_empty()), flags) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match do_send(fd, &bufs, msg) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(pwritev2(fd, iov, cnt, off, flags)), true),
    }
}

#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    if !table::contains(fd) {
        return call_real!(recv(fd, buf, n, flags));
    }
    // SAFETY: the application's buffer of `n` bytes.
    let b = unsafe { slice_mut(buf, n) };
    match do_recv(fd, &mut [b], flags) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(recv(fd, buf, n, flags)), false),
    }
}

#[no_mangle]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if n > buflen {
        std::process::abort();
    }
    // SAFETY: same contract as recv.
    unsafe { recv(fd, buf, n, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    if !table::contains(fd) {
        return call_real!(recvfrom(fd, buf, n, flags, addr, alen));
    }
    // SAFETY: the application's buffer of `n` bytes.
    let b = unsafe { slice_mut(buf, n) };
    match do_recv(fd, &mut [b], flags) {
        Some(r) => {
            if r.is_ok() && !alen.is_null() {
                // A connected stream socket reports no source address.
                // SAFETY: the application passed a valid length pointer.
                unsafe { *alen = 0 };
            }
            fin_ssize(r)
        }
        None => count_kernel(
            fd,
            call_real!(recvfrom(fd, buf, n, flags, addr, alen)),
            false,
        ),
    }
}

#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    if n > buflen {
        std::process::abort();
    }
    // SAFETY: same contract as recvfrom.
    unsafe { recvfrom(fd, buf, n, flags, addr, alen) }
}

#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    if !table::contains(fd) {
        return call_real!(send(fd, buf, n, flags));
    }
    // SAFETY: the application's buffer of `n` bytes.
    let b = unsafe { slice(buf, n) };
    if let Some(k) = try_send(fd, b, flags) {
        return k as ssize_t;
    }
    match do_send(fd, &[b], flags) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(send(fd, buf, n, flags)), true),
    }
}

#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    if !table::contains(fd) {
        return call_real!(sendto(fd, buf, n, flags, addr, alen));
    }
    // SAFETY: the application's buffer of `n` bytes.
    let b = unsafe { slice(buf, n) };
    match do_send(fd, &[b], flags) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(sendto(fd, buf, n, flags, addr, alen)), true),
    }
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if !table::contains(fd) || msg.is_null() {
        return call_real!(recvmsg(fd, msg, flags));
    }
    // SAFETY: the application's msghdr.
    let m = unsafe { &mut *msg };
    // SAFETY: its iovec array.
    let mut bufs = match unsafe { iovecs_mut(m.msg_iov, m.msg_iovlen as c_int) } {
        Ok(b) => b,
        Err(e) => return fin_ssize(Err(e)),
    };
    match do_recv(fd, &mut bufs, flags) {
        Some(r) => {
            if r.is_ok() {
                m.msg_namelen = 0;
                m.msg_flags = 0;
                // SAFETY: `m` is the application's msghdr with its control buffer.
                unsafe { receive_timestamp(fd, m) };
            }
            fin_ssize(r)
        }
        None => count_kernel(fd, call_real!(recvmsg(fd, msg, flags)), false),
    }
}

/// recvmmsg(2) on a tracked fd: one `recvmsg` per entry, as the kernel does for a stream socket
/// (MSG_WAITFORONE: entries after the first do not wait; a timeout is checked after each entry).
/// An error after at least one entry ends the call with the entries received so far.
#[no_mangle]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    v: *mut libc::mmsghdr,
    n: libc::c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    if !table::contains(fd) || v.is_null() {
        return call_real!(recvmmsg(fd, v, n, flags, timeout));
    }
    // SAFETY: `timeout` is null or the application's timespec.
    let deadline = unsafe { timeout.as_ref() }.map(|t| {
        std::time::Instant::now()
            + Duration::new(
                t.tv_sec.max(0) as u64,
                t.tv_nsec.clamp(0, 999_999_999) as u32,
            )
    });
    // SAFETY: the application's array of `n` entries.
    let entries = unsafe { mmsg_entries(v, n) };
    each_entry(
        entries,
        |done, m| {
            let f = if done > 0 && flags & libc::MSG_WAITFORONE != 0 {
                (flags & !libc::MSG_WAITFORONE) | libc::MSG_DONTWAIT
            } else {
                flags & !libc::MSG_WAITFORONE
            };
            // SAFETY: the entry's msghdr, as the application passed it.
            unsafe { recvmsg(fd, m, f) }
        },
        || deadline.is_some_and(|d| std::time::Instant::now() >= d),
    )
}

/// The application's `mmsghdr` array (at most UIO_MAXIOV entries, as the kernel takes).
///
/// # Safety
/// `v` must point to `n` entries the application owns.
unsafe fn mmsg_entries<'a>(v: *mut libc::mmsghdr, n: libc::c_uint) -> &'a mut [libc::mmsghdr] {
    let n = n.min(libc::UIO_MAXIOV as libc::c_uint) as usize;
    // SAFETY: per the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(v, n) }
}

/// recvmmsg/sendmmsg: `one` on each entry's msghdr (given how many are done), storing its
/// byte count in `msg_len`, until one fails or `stop` says so. Returns the entries done, or -1
/// (errno from `one`) if the first failed.
fn each_entry(
    entries: &mut [libc::mmsghdr],
    mut one: impl FnMut(usize, &mut msghdr) -> ssize_t,
    stop: impl Fn() -> bool,
) -> c_int {
    let mut done = 0;
    for e in entries {
        let r = one(done, &mut e.msg_hdr);
        if r < 0 {
            return if done == 0 { -1 } else { done as c_int };
        }
        e.msg_len = r as libc::c_uint;
        done += 1;
        if stop() {
            break;
        }
    }
    done as c_int
}

/// sendmmsg(2) on a tracked fd: one `sendmsg` per entry; an error after at least one entry ends
/// the call with the entries sent so far.
#[no_mangle]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    v: *mut libc::mmsghdr,
    n: libc::c_uint,
    flags: c_int,
) -> c_int {
    if !table::contains(fd) || v.is_null() {
        return call_real!(sendmmsg(fd, v, n, flags));
    }
    // SAFETY: the application's array of `n` entries.
    let entries = unsafe { mmsg_entries(v, n) };
    each_entry(
        entries,
        // SAFETY: the entry's msghdr, as the application passed it.
        |_, m| unsafe { sendmsg(fd, m, flags) },
        || false,
    )
}

/// With SO_TIMESTAMP(NS) on, the kernel attaches the receive time to every recvmsg; do the same
/// for an NTB connection (the time the bytes are handed over), or report MSG_CTRUNC.
///
/// # Safety
/// `m.msg_control` must be null or point to `m.msg_controllen` writable bytes.
unsafe fn receive_timestamp(fd: c_int, m: &mut msghdr) {
    let kind = guard(|| Ok(ops::timestamping(fd))).unwrap_or(0);
    let (ty, payload): (c_int, [u8; 16]) = match kind {
        1 => {
            let mut tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            };
            // SAFETY: a live timeval; the timezone pointer may be null.
            unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) };
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&tv.tv_sec.to_ne_bytes());
            b[8..].copy_from_slice(&tv.tv_usec.to_ne_bytes());
            (libc::SCM_TIMESTAMP, b)
        }
        2 => {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a live timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&ts.tv_sec.to_ne_bytes());
            b[8..].copy_from_slice(&ts.tv_nsec.to_ne_bytes());
            (libc::SCM_TIMESTAMPNS, b)
        }
        _ => {
            m.msg_controllen = 0;
            return;
        }
    };
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
    let (space, len) = unsafe { (libc::CMSG_SPACE(16) as usize, libc::CMSG_LEN(16) as usize) };
    if m.msg_control.is_null() || m.msg_controllen < space {
        m.msg_controllen = 0;
        m.msg_flags |= libc::MSG_CTRUNC;
        return;
    }
    // SAFETY: the control buffer holds at least `space` bytes (checked), so the first header
    // and its 16-byte payload fit.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(m);
        (*c).cmsg_len = len as _;
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = ty;
        std::ptr::copy_nonoverlapping(payload.as_ptr(), libc::CMSG_DATA(c), 16);
    }
    m.msg_controllen = space as _;
}

#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if !table::contains(fd) || msg.is_null() {
        return call_real!(sendmsg(fd, msg, flags));
    }
    // SAFETY: the application's msghdr.
    let m = unsafe { &*msg };
    // SAFETY: its iovec array.
    let bufs = match unsafe { iovecs(m.msg_iov, m.msg_iovlen as c_int) } {
        Ok(b) => b,
        Err(e) => return fin_ssize(Err(e)),
    };
    match do_send(fd, &bufs, flags) {
        Some(r) => fin_ssize(r),
        None => count_kernel(fd, call_real!(sendmsg(fd, msg, flags)), true),
    }
}

fn do_sendfile(
    out_fd: c_int,
    in_fd: c_int,
    off: Option<&mut i64>,
    n: size_t,
) -> Option<Result<usize, c_int>> {
    match ops::data_path(out_fd, false)? {
        Err(e) => Some(Err(e)),
        Ok(DataPath::Ntb(s)) => {
            let c = s.ntb();
            let mut off = off;
            Some(guard(|| {
                restarting(s.sndtimeo(), || {
                    ops::sendfile(&s, c, in_fd, off.as_deref_mut(), n)
                })
            }))
        }
        Ok(DataPath::Kernel) => None,
    }
}

#[no_mangle]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut libc::off_t,
    n: size_t,
) -> ssize_t {
    if !table::contains(out_fd) {
        if let Some(r) = sendfile_from_ntb(out_fd, in_fd, !off.is_null(), n) {
            return r;
        }
        return call_real!(sendfile(out_fd, in_fd, off, n));
    }
    // SAFETY: `off` is null or the application's offset.
    let o = unsafe { off.as_mut() };
    match do_sendfile(out_fd, in_fd, o, n) {
        Some(r) => fin_ssize(r),
        None => count_kernel(out_fd, call_real!(sendfile(out_fd, in_fd, off, n)), true),
    }
}

#[no_mangle]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut libc::off64_t,
    n: size_t,
) -> ssize_t {
    if !table::contains(out_fd) {
        if let Some(r) = sendfile_from_ntb(out_fd, in_fd, !off.is_null(), n) {
            return r;
        }
        return call_real!(sendfile64(out_fd, in_fd, off, n));
    }
    // SAFETY: `off` is null or the application's offset.
    let o = unsafe { off.as_mut() };
    match do_sendfile(out_fd, in_fd, o, n) {
        Some(r) => fin_ssize(r),
        None => count_kernel(out_fd, call_real!(sendfile64(out_fd, in_fd, off, n)), true),
    }
}

/// `splice::splice` behind the panic guard; `None`: the real function's business.
fn splice_ours(
    fd_in: c_int,
    off_in: bool,
    fd_out: c_int,
    off_out: bool,
    len: size_t,
    flags: libc::c_uint,
) -> Option<Result<usize, c_int>> {
    let r = guard(
        || match crate::splice::splice(fd_in, off_in, fd_out, off_out, len, flags) {
            Detour::Bypass => Err(i32::MIN),
            Detour::Ours(r) => r,
        },
    );
    (r != Err(i32::MIN)).then_some(r)
}

/// sendfile(2) out of an NTB connection: the kernel allows a socket as `in_fd` only into a pipe
/// and without an offset, as a splice, so it is `splice`'s path. With an offset the real call
/// says ESPIPE, as for any socket. `None`: not ours.
fn sendfile_from_ntb(out_fd: c_int, in_fd: c_int, offset: bool, n: size_t) -> Option<ssize_t> {
    if offset || !table::contains(in_fd) {
        return None;
    }
    splice_ours(in_fd, false, out_fd, false, n, 0).map(fin_ssize)
}

/// splice(2) with an NTB connection on one side: through `splice::splice` (a pipe on the other
/// side; the bytes pass through our memory). Other fds, and TCP fallbacks, go to the kernel.
#[no_mangle]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut libc::loff_t,
    fd_out: c_int,
    off_out: *mut libc::loff_t,
    len: size_t,
    flags: libc::c_uint,
) -> ssize_t {
    if !table::contains(fd_in) && !table::contains(fd_out) {
        return call_real!(splice(fd_in, off_in, fd_out, off_out, len, flags));
    }
    if let Some(r) = splice_ours(
        fd_in,
        !off_in.is_null(),
        fd_out,
        !off_out.is_null(),
        len,
        flags,
    ) {
        return fin_ssize(r);
    }
    let r = call_real!(splice(fd_in, off_in, fd_out, off_out, len, flags));
    if table::contains(fd_in) {
        count_kernel(fd_in, r, false)
    } else {
        count_kernel(fd_out, r, true)
    }
}

// ---- connection life cycle ---------------------------------------------------------------------

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

fn accepted(lfd: c_int, fd: c_int, nonblock: bool) -> c_int {
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
    match guard(|| ops::after_accept(lfd, fd, nonblock)) {
        Ok(()) => {
            sys::set_errno(e);
            fd
        }
        Err(err) => finish(Err(err)),
    }
}

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let nfd = call_real!(accept(fd, addr, len));
    accepted(fd, nfd, false)
}

#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let nfd = call_real!(accept4(fd, addr, len, flags));
    accepted(fd, nfd, flags & libc::SOCK_NONBLOCK != 0)
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

/// Listeners whose fds were just closed: settle them (errno kept).
fn after_close(closing: impl Iterator<Item = ops::Closing>) {
    let e = sys::errno();
    for c in closing {
        let _ = guard(|| {
            ops::after_close(c);
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

// ---- fd control ------------------------------------------------------------------------------

fn after_fcntl(fd: c_int, cmd: c_int, arg: c_ulong, r: c_int) -> c_int {
    if r < 0 || !table::contains(fd) {
        return r;
    }
    match cmd {
        libc::F_SETFL => quietly(|| ops::set_nonblock(fd, arg as c_int & libc::O_NONBLOCK != 0)),
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => quietly(|| ops::after_dup(fd, r)),
        _ => {}
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = call_real!(fcntl(fd, cmd, arg));
    after_fcntl(fd, cmd, arg, r)
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = call_real!(fcntl64(fd, cmd, arg));
    after_fcntl(fd, cmd, arg, r)
}

#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: c_ulong) -> c_int {
    if !table::contains(fd) {
        return call_real!(ioctl(fd, req, arg));
    }
    if req == libc::FIONREAD as c_ulong && arg != 0 {
        match guard(|| Ok(ops::readable_bytes(fd))) {
            Ok(Some(n)) => {
                // SAFETY: FIONREAD's argument is an int the application owns.
                unsafe { *(arg as *mut c_int) = n.min(c_int::MAX as usize) as c_int };
                return 0;
            }
            Ok(None) => {}
            Err(e) => return finish::<c_int>(Err(e)),
        }
    }
    let r = call_real!(ioctl(fd, req, arg));
    if r == 0 && req == libc::FIONBIO as c_ulong && arg != 0 {
        // SAFETY: FIONBIO's argument is an int the application owns.
        let on = unsafe { *(arg as *const c_int) } != 0;
        quietly(|| ops::set_nonblock(fd, on));
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let r = call_real!(setsockopt(fd, level, name, val, len));
    if r == 0
        && table::contains(fd)
        && level == libc::SOL_SOCKET
        && (name == libc::SO_TIMESTAMP || name == libc::SO_TIMESTAMPNS)
        && !val.is_null()
        && len as usize >= 4
    {
        // SAFETY: the option value is an int.
        let on = unsafe { *(val as *const c_int) } != 0;
        quietly(|| ops::set_timestamping(fd, if name == libc::SO_TIMESTAMP { 1 } else { 2 }, on));
    }
    if r == 0
        && table::contains(fd)
        && level == libc::SOL_SOCKET
        && (name == libc::SO_RCVTIMEO || name == libc::SO_SNDTIMEO)
        && !val.is_null()
        && len as usize >= std::mem::size_of::<libc::timeval>()
    {
        // SAFETY: the option value is a timeval of the given length.
        let tv = unsafe { *(val as *const libc::timeval) };
        quietly(|| ops::set_timeout(fd, name == libc::SO_RCVTIMEO, tv));
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let r = call_real!(dup(fd));
    if r >= 0 && (table::contains(fd) || table::contains(r)) {
        quietly(|| ops::after_dup(fd, r));
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let r = call_real!(dup2(old, new));
    if r >= 0 && (table::contains(old) || table::contains(new) || crate::epoll::involves(new)) {
        quietly(|| ops::after_dup(old, new));
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let r = call_real!(dup3(old, new, flags));
    if r >= 0 && (table::contains(old) || table::contains(new) || crate::epoll::involves(new)) {
        quietly(|| ops::after_dup(old, new));
    }
    r
}

// ---- readiness -------------------------------------------------------------------------------

fn real_ppoll(
    set: &mut [libc::pollfd],
    timeout: Option<Duration>,
    mask: *const libc::sigset_t,
) -> c_int {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    call_real!(ppoll(
        set.as_mut_ptr(),
        set.len() as libc::nfds_t,
        tsp,
        mask
    ))
}

fn poll_with(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: Option<Duration>,
    mask: *const libc::sigset_t,
) -> Option<c_int> {
    if fds.is_null() || n == 0 || !table::any() {
        return None;
    }
    // SAFETY: the application's array of `n` pollfds.
    let set = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    let real = |s: &mut [libc::pollfd], t: Option<Duration>| real_ppoll(s, t, mask);
    match guard(|| match ops::poll(set, timeout, &real) {
        Detour::Bypass => Err(i32::MIN),
        Detour::Ours(r) => r,
    }) {
        Err(i32::MIN) => None,
        r => Some(finish(r)),
    }
}

fn ms(timeout: c_int) -> Option<Duration> {
    (timeout >= 0).then(|| Duration::from_millis(timeout as u64))
}

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    match poll_with(fds, n, ms(timeout), std::ptr::null()) {
        Some(r) => r,
        None => call_real!(poll(fds, n, timeout)),
    }
}

#[no_mangle]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    if (fdslen / std::mem::size_of::<libc::pollfd>()) < n as usize {
        std::process::abort();
    }
    // SAFETY: same contract as poll.
    unsafe { poll(fds, n, timeout) }
}

/// `ppoll` of `_FORTIFY_SOURCE` builds: glibc's own would call its internal ppoll, past our hook.
#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
    fdslen: size_t,
) -> c_int {
    if (fdslen / std::mem::size_of::<libc::pollfd>()) < n as usize {
        std::process::abort();
    }
    // SAFETY: same contract as ppoll.
    unsafe { ppoll(fds, n, ts, mask) }
}

#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: `ts` is null or the application's timespec.
    let t = unsafe { ts.as_ref() }.map(|t| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    });
    match poll_with(fds, n, t, mask) {
        Some(r) => r,
        None => call_real!(ppoll(fds, n, ts, mask)),
    }
}

/// select/pselect over tracked fds, through `ops::poll`.
fn select_with(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: Option<Duration>,
    mask: *const libc::sigset_t,
) -> Option<c_int> {
    if !table::any() || !(0..=libc::FD_SETSIZE as c_int).contains(&nfds) {
        return None;
    }
    // SAFETY: each set is null or the application's fd_set; FD_ISSET reads within it.
    let isset = |s: *mut libc::fd_set, fd: c_int| !s.is_null() && unsafe { libc::FD_ISSET(fd, s) };
    if !(0..nfds).any(|fd| (isset(r, fd) || isset(w, fd) || isset(e, fd)) && table::contains(fd)) {
        return None;
    }
    let mut set: Vec<libc::pollfd> = (0..nfds)
        .filter_map(|fd| {
            let mut ev = 0;
            if isset(r, fd) {
                ev |= libc::POLLIN;
            }
            if isset(w, fd) {
                ev |= libc::POLLOUT;
            }
            if isset(e, fd) {
                ev |= libc::POLLPRI;
            }
            (ev != 0).then_some(libc::pollfd {
                fd,
                events: ev,
                revents: 0,
            })
        })
        .collect();
    let real = |s: &mut [libc::pollfd], t: Option<Duration>| real_ppoll(s, t, mask);
    let res = guard(|| match ops::poll(&mut set, timeout, &real) {
        Detour::Bypass => {
            let n = real(&mut set, timeout);
            if n < 0 {
                Err(sys::errno())
            } else {
                Ok(n)
            }
        }
        Detour::Ours(x) => x,
    });
    let n = match res {
        Ok(n) => n,
        Err(err) => return Some(finish(Err(err))),
    };
    let _ = n;
    for s in [r, w, e] {
        if !s.is_null() {
            // SAFETY: the application's fd_set.
            unsafe { libc::FD_ZERO(s) };
        }
    }
    let mut count = 0;
    for p in &set {
        let bad = p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0;
        // SAFETY: `p.fd < nfds <= FD_SETSIZE`, inside the application's fd_sets.
        unsafe {
            if !r.is_null()
                && p.events & libc::POLLIN != 0
                && (p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
            {
                libc::FD_SET(p.fd, r);
                count += 1;
            }
            if !w.is_null()
                && p.events & libc::POLLOUT != 0
                && (p.revents & (libc::POLLOUT | libc::POLLERR) != 0
                    || bad && p.revents & libc::POLLERR != 0)
            {
                libc::FD_SET(p.fd, w);
                count += 1;
            }
            if !e.is_null() && p.events & libc::POLLPRI != 0 && p.revents & libc::POLLPRI != 0 {
                libc::FD_SET(p.fd, e);
                count += 1;
            }
        }
    }
    Some(count)
}

#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    // SAFETY: `tv` is null or the application's timeval.
    let t = unsafe { tv.as_ref() }.map(|t| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            (t.tv_usec.clamp(0, 999_999) * 1000) as u32,
        )
    });
    match select_with(nfds, r, w, e, t, std::ptr::null()) {
        Some(n) => n,
        None => call_real!(select(nfds, r, w, e, tv)),
    }
}

#[no_mangle]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: `ts` is null or the application's timespec.
    let t = unsafe { ts.as_ref() }.map(|t| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    });
    match select_with(nfds, r, w, e, t, mask) {
        Some(n) => n,
        None => call_real!(pselect(nfds, r, w, e, ts, mask)),
    }
}

// ---- epoll ---------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut libc::epoll_event,
) -> c_int {
    if !table::contains(fd) {
        return call_real!(epoll_ctl(epfd, op, fd, event));
    }
    // SAFETY: `event` is null or the application's epoll_event.
    let ev = unsafe { event.as_ref() };
    match guard(|| match crate::epoll::ctl(epfd, op, fd, ev) {
        Detour::Bypass => Err(i32::MIN),
        Detour::Ours(r) => r,
    }) {
        Err(i32::MIN) => call_real!(epoll_ctl(epfd, op, fd, event)),
        r => finish(r),
    }
}

fn epoll_wait_with(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: Option<Duration>,
    mask: *const libc::sigset_t,
) -> Option<c_int> {
    if events.is_null()
        || max <= 0
        || !crate::epoll::IN_USE.load(std::sync::atomic::Ordering::Relaxed)
        || !crate::epoll::tracks(epfd)
    {
        return None;
    }
    // SAFETY: the application's array of `max` events.
    let out = unsafe { std::slice::from_raw_parts_mut(events, max as usize) };
    let real = |buf: &mut [libc::epoll_event], t: Option<Duration>| -> c_int {
        let ms = t.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as c_int);
        let ms = if t.is_some_and(|t| !t.is_zero() && t.as_millis() == 0) {
            1
        } else {
            ms
        };
        call_real!(epoll_pwait(
            epfd,
            buf.as_mut_ptr(),
            buf.len() as c_int,
            ms,
            mask
        ))
    };
    match guard(|| match crate::epoll::wait(epfd, out, timeout, &real) {
        Detour::Bypass => Err(i32::MIN),
        Detour::Ours(r) => r,
    }) {
        Err(i32::MIN) => None,
        r => Some(finish(r)),
    }
}

/// `epoll_wait` and its relatives: ours if the set holds one of our registrations, else the
/// kernel's (`first_real`). Another thread may register one of our fds while this thread sleeps
/// in the kernel's wait: the events of those registrations carry our tag and must never reach
/// the application, so they are dropped, and if nothing else came, the wait goes on as ours.
fn epoll_wait_any(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: Option<Duration>,
    mask: *const libc::sigset_t,
    first_real: impl FnOnce() -> c_int,
) -> c_int {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let mut left = timeout;
    let mut first_real = Some(first_real);
    loop {
        if let Some(r) = epoll_wait_with(epfd, events, max, left, mask) {
            return r;
        }
        let n = match first_real.take() {
            Some(f) => f(),
            None => {
                // Whole milliseconds, rounded up (a wait never ends early).
                let ms = left.map_or(-1, |l| {
                    l.as_micros().div_ceil(1000).min(i32::MAX as u128) as c_int
                });
                call_real!(epoll_pwait(epfd, events, max, ms, mask))
            }
        };
        if n <= 0
            || events.is_null()
            || !crate::epoll::IN_USE.load(std::sync::atomic::Ordering::Acquire)
        {
            return n;
        }
        let e = sys::errno();
        // SAFETY: the kernel filled the first `n` events of the application's array.
        let got = unsafe { std::slice::from_raw_parts_mut(events, n as usize) };
        let kept = crate::epoll::strip_ours(got);
        if kept > 0 {
            sys::set_errno(e);
            return kept as c_int;
        }
        left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
    }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    epoll_wait_any(epfd, events, max, ms(timeout), std::ptr::null(), || {
        call_real!(epoll_wait(epfd, events, max, timeout))
    })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    epoll_wait_any(epfd, events, max, ms(timeout), mask, || {
        call_real!(epoll_pwait(epfd, events, max, timeout, mask))
    })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: `ts` is null or the application's timespec.
    let t = unsafe { ts.as_ref() }.map(|t| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    });
    epoll_wait_any(epfd, events, max, t, mask, || {
        call_real!(epoll_pwait2(epfd, events, max, ts, mask))
    })
}

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
#[no_mangle]
pub unsafe extern "C" fn _Fork() -> libc::pid_t {
    atfork_prepare();
    let pid = call_real!(_Fork());
    if pid == 0 {
        atfork_child();
    } else if pid < 0 {
        // No child: take back the holders announced for it.
        let e = sys::errno();
        crate::fork::failed();
        sys::set_errno(e);
    }
    pid
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
