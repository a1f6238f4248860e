//! Readiness: poll, ppoll, select, pselect, and epoll. Owns the hooks' C signatures; a set without
//! NTB fds goes to libc unchanged, and it never reads ring state itself (`ops::poll`, `epoll` do).

use super::*;

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

/// Run `f`, the library's part of a readiness wait, with every signal held, and give it the
/// mask its kernel waits use: the caller's (`mask`, of ppoll and pselect), or the one the thread
/// had. So a signal reaches the application only inside a kernel wait, as with the kernel's own
/// poll and select, never while the library allocates or holds a lock: a program that unblocks
/// signals only around select (PostgreSQL's postmaster, whose handlers fork and allocate) met
/// a corrupted heap when a signal landed in the library's allocations instead (its `malloc`
/// re-entered). Signals that came meanwhile are delivered by the next kernel wait, or when the
/// thread's mask comes back at the end.
fn signals_held<R>(mask: *const libc::sigset_t, f: impl FnOnce(*const libc::sigset_t) -> R) -> R {
    // SAFETY: sigset_t is plain data, filled by sigfillset before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `old` is written by pthread_sigmask before it is read.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: live sigset_t buffers of this frame.
    let held = unsafe {
        libc::sigfillset(&mut all) == 0
            && libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) == 0
    };
    if !held {
        return f(mask);
    }
    let r = f(if mask.is_null() { &old } else { mask });
    // SAFETY: the mask this thread had, saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
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
    if crate::epoll::IN_USE.load(std::sync::atomic::Ordering::Relaxed) {
        set.iter().for_each(|p| crate::epoll::polled(p.fd));
    }
    if !set.iter().any(|p| table::contains(p.fd)) {
        return None;
    }
    signals_held(mask, |mask| {
        let real = |s: &mut [libc::pollfd], t: Option<Duration>| real_ppoll(s, t, mask);
        match guard(|| match ops::poll(set, timeout, &real) {
            Detour::Bypass => Err(i32::MIN),
            Detour::Ours(r) => r,
        }) {
            Err(i32::MIN) => None,
            r => Some(finish(r)),
        }
    })
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
    if crate::epoll::IN_USE.load(std::sync::atomic::Ordering::Relaxed) {
        (0..nfds)
            .filter(|&fd| isset(r, fd) || isset(w, fd) || isset(e, fd))
            .for_each(crate::epoll::polled);
    }
    if !(0..nfds).any(|fd| (isset(r, fd) || isset(w, fd) || isset(e, fd)) && table::contains(fd)) {
        return None;
    }
    signals_held(mask, |mask| {
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
    })
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
        if op == libc::EPOLL_CTL_ADD {
            crate::epoll::watched(fd);
        }
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
        // A server candidate of a late upgrade registered here: look for its client's late
        // offer, and sleep in naps to look again (`late`).
        let nap = match guard(|| Ok(crate::late::look_set(epfd))) {
            Ok(crate::late::SetLook::Paired) => continue,
            Ok(crate::late::SetLook::Bell(bell)) => {
                // Sleep until the set has events or the late bell rings (no nap).
                let mut two = [
                    libc::pollfd {
                        fd: epfd,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: bell,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                let r = real_ppoll(&mut two, left, mask);
                if r < 0 {
                    return r;
                }
                if two[1].revents != 0 {
                    let _ = guard(|| {
                        crate::late::ring();
                        Ok(0)
                    });
                }
                left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
                if two[0].revents == 0 {
                    if r == 0 {
                        return 0; // the deadline passed
                    }
                    continue;
                }
                Some(Duration::ZERO)
            }
            Ok(crate::late::SetLook::Nap) => {
                Some(left.map_or(crate::late::LOOK_NAP, |l| l.min(crate::late::LOOK_NAP)))
            }
            _ => None,
        };
        let n = match (nap, first_real.take()) {
            (Some(nap), _) => {
                let ms = nap.as_micros().div_ceil(1000).min(i32::MAX as u128) as c_int;
                let n = call_real!(epoll_pwait(epfd, events, max, ms, mask));
                if n == 0 && left.is_none_or(|l| l > nap) {
                    left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
                    continue;
                }
                n
            }
            (None, Some(f)) => f(),
            (None, None) => {
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
