//! fd control: fcntl, ioctl, setsockopt, dup. Owns the hooks' C signatures. fcntl, setsockopt and
//! dup always reach the kernel first, and for a tracked fd `ops` only follows what the kernel did
//! (O_NONBLOCK, timeouts, a tracked copy): it never answers one of them for the kernel. Only
//! FIONREAD on an NTB connection is answered without it, from the ring.

use super::*;

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
