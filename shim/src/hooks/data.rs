//! Data calls: read, write, send, recv and their relatives, sendfile and splice. Owns the data
//! hooks' C signatures and their hand-over to `ops`; an untracked fd goes to libc after one table
//! load. It never touches the ring nor decides a path itself.

use super::*;

/// Receive on a tracked fd; `None` means "use the kernel socket" (bytes counted by the caller).
fn recv_if_ours(fd: c_int, bufs: &mut [&mut [u8]], flags: c_int) -> Option<Result<usize, c_int>> {
    recv_pinned(fd, None, bufs, flags)
}

/// [`recv_if_ours`] with the entry already pinned (by a `try_recv` that declined), if it was.
fn recv_pinned(
    fd: c_int,
    pinned: Option<table::Pinned>,
    bufs: &mut [&mut [u8]],
    flags: c_int,
) -> Option<Result<usize, c_int>> {
    match ops::data_path_pinned(fd, pinned, flags & libc::MSG_DONTWAIT != 0)? {
        Err(e) => Some(Err(e)),
        Ok(DataPath::Ntb(s)) => Some(guard(|| {
            restarting(s.rcvtimeo(), || ops::recv(&s, s.ntb(), bufs, flags))
        })),
        Ok(DataPath::Late(s)) => {
            let r = guard(|| {
                restarting(s.rcvtimeo(), || {
                    crate::late::recv(&s, fd, bufs, flags).ok_or(i32::MIN)?
                })
            });
            (r != Err(i32::MIN)).then_some(r)
        }
        Ok(DataPath::Kernel) => None,
    }
}

/// A send on a late-upgrade candidate (`late::send`); `None`: the kernel's call.
fn send_late(
    s: &crate::sock::Sock,
    fd: c_int,
    bufs: &[&[u8]],
    flags: c_int,
) -> Option<Result<usize, c_int>> {
    let r = guard(|| {
        restarting(s.sndtimeo(), || {
            crate::late::send(s, fd, bufs, flags).ok_or(i32::MIN)?
        })
    });
    (r != Err(i32::MIN)).then_some(r)
}

fn send_if_ours(fd: c_int, bufs: &[&[u8]], flags: c_int) -> Option<Result<usize, c_int>> {
    match ops::data_path_to_send(fd, flags & libc::MSG_DONTWAIT != 0)? {
        Err(libc::EAGAIN) => match guard(|| Ok(ops::stash_early(fd, bufs))) {
            Err(e) => Some(Err(e)),
            Ok(Some(n)) => Some(Ok(n)),
            // Settled meanwhile (or no room): look again once.
            Ok(None) => match ops::data_path(fd, flags & libc::MSG_DONTWAIT != 0)? {
                Err(e) => Some(Err(e)),
                Ok(DataPath::Ntb(s)) => Some(send_restarting(&s, s.ntb(), bufs, flags)),
                Ok(DataPath::Late(s)) => send_late(&s, fd, bufs, flags),
                Ok(DataPath::Kernel) => None,
            },
        },
        Err(e) => Some(Err(e)),
        Ok(DataPath::Ntb(s)) => Some(send_restarting(&s, s.ntb(), bufs, flags)),
        Ok(DataPath::Late(s)) => send_late(&s, fd, bufs, flags),
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
/// sent, and the general path (`send_if_ours`) takes the call. Only for flags it cannot change
/// (`MSG_DONTWAIT`: it never waits anyway; `MSG_NOSIGNAL`: it never fails).
#[inline]
fn try_send(fd: c_int, buf: &[u8], flags: c_int) -> Option<usize> {
    if flags & !(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) != 0 {
        return None;
    }
    std::panic::catch_unwind(|| {
        // Used where it was made, not moved out of the `Option`: the move copied it through
        // the stack with loads wider than the stores that wrote it, and such a load waits
        // until every older store has left the store buffer, the last send's ring writes
        // included (cross-core misses: 74 % of this function's samples at 16 KiB writes).
        let pinned = table::pin_inlined(fd);
        pinned.as_ref()?.conn.get()?.try_send(buf)
    })
    .ok()
    .flatten()
}

/// The common receive on an NTB connection, before any other work: the frames already published
/// (or published within a short spin of a blocking read) into `buf`, by the thread that reads
/// the connection (`Connection::try_recv`). `None`: nothing was consumed, and the general path
/// (`recv_if_ours`) takes the call. Only for flags it cannot change (`MSG_DONTWAIT`, which it
/// honours by not spinning; `MSG_PEEK`, `MSG_WAITALL` and the rest take the general path).
/// `Err` carries the entry's pin, if it took one, for the general path.
#[inline]
fn try_recv(fd: c_int, buf: &mut [u8], flags: c_int) -> Result<usize, Option<table::Pinned>> {
    if flags & !libc::MSG_DONTWAIT != 0 {
        return Err(None);
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Used in place, as in `try_send`; moved out only for the general path.
        let pinned = table::pin_inlined(fd);
        let s = pinned.as_ref().ok_or(None)?;
        let blocking = !(s.nonblocking() || flags & libc::MSG_DONTWAIT != 0);
        match s.conn.get().and_then(|c| c.try_recv(buf, blocking)) {
            Some(n) => Ok(n),
            None => Err(pinned),
        }
    }))
    .unwrap_or(Err(None))
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
    let pinned = match try_recv(fd, b, 0) {
        Ok(k) => return k as ssize_t,
        Err(p) => p,
    };
    match recv_pinned(fd, pinned, &mut [b], 0) {
        Some(r) => finish_ssize(r),
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
    match send_if_ours(fd, &[b], 0) {
        Some(r) => finish_ssize(r),
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
        Err(e) => return finish_ssize(Err(e)),
    };
    match recv_if_ours(fd, &mut bufs, 0) {
        Some(r) => finish_ssize(r),
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
        Err(e) => return finish_ssize(Err(e)),
    };
    match send_if_ours(fd, &bufs, 0) {
        Some(r) => finish_ssize(r),
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
    rwf_flags(fd, flags).map_err(|e| finish_ssize(Err(e)))
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
        Err(e) => return finish_ssize(Err(e)),
    };
    let msg = match rwf_call(fd, bufs.iter().all(|b| b.is_empty()), flags) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match recv_if_ours(fd, &mut bufs, msg) {
        Some(r) => finish_ssize(r),
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
        Err(e) => return finish_ssize(Err(e)),
    };
    let msg = match rwf_call(fd, bufs.iter().all(|b| b.is_empty()), flags) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match send_if_ours(fd, &bufs, msg) {
        Some(r) => finish_ssize(r),
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
    let pinned = match try_recv(fd, b, flags) {
        Ok(k) => return k as ssize_t,
        Err(p) => p,
    };
    match recv_pinned(fd, pinned, &mut [b], flags) {
        Some(r) => finish_ssize(r),
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
    match recv_if_ours(fd, &mut [b], flags) {
        Some(r) => {
            if r.is_ok() && !alen.is_null() {
                // A connected stream socket reports no source address.
                // SAFETY: the application passed a valid length pointer.
                unsafe { *alen = 0 };
            }
            finish_ssize(r)
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
    match send_if_ours(fd, &[b], flags) {
        Some(r) => finish_ssize(r),
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
    match send_if_ours(fd, &[b], flags) {
        Some(r) => finish_ssize(r),
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
        Err(e) => return finish_ssize(Err(e)),
    };
    match recv_if_ours(fd, &mut bufs, flags) {
        Some(r) => {
            if r.is_ok() {
                m.msg_namelen = 0;
                m.msg_flags = 0;
                // SAFETY: `m` is the application's msghdr with its control buffer.
                unsafe { receive_timestamp(fd, m) };
            }
            finish_ssize(r)
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
        Err(e) => return finish_ssize(Err(e)),
    };
    match send_if_ours(fd, &bufs, flags) {
        Some(r) => finish_ssize(r),
        None => count_kernel(fd, call_real!(sendmsg(fd, msg, flags)), true),
    }
}

fn sendfile_if_ours(
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
        // Not carried by the late upgrade yet: the candidacy ends (the connection may move
        // onto the ring as it does, if a late offer it posted was taken: then it is ours).
        Ok(DataPath::Late(s)) => {
            crate::late::end(&s);
            if s.conn.get().is_some() {
                return sendfile_if_ours(out_fd, in_fd, off, n);
            }
            None
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
    match sendfile_if_ours(out_fd, in_fd, o, n) {
        Some(r) => finish_ssize(r),
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
    match sendfile_if_ours(out_fd, in_fd, o, n) {
        Some(r) => finish_ssize(r),
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
    splice_ours(in_fd, false, out_fd, false, n, 0).map(finish_ssize)
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
        return finish_ssize(r);
    }
    let r = call_real!(splice(fd_in, off_in, fd_out, off_out, len, flags));
    if table::contains(fd_in) {
        count_kernel(fd_in, r, false)
    } else {
        count_kernel(fd_out, r, true)
    }
}
