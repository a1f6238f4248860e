//! The fd bookkeeping of tracked sockets: close (an entry retired, its listener withdrawn after the
//! real close), a reused fd number forgotten, `shutdown`, the socket options the bridge honours and
//! `dup`. Called by `hooks`; the real call is always made by the caller, never here, and ending a
//! connection that other holders share (a forked child) is left to `transport`.

use super::*;

/// A listener whose last fd in this process is being closed: settled by [`after_close`] once
/// the real close is done.
#[must_use]
pub struct Closing(transport::Listener);

/// `close_range`: forget the fd (before the real close, so a reused fd number is never ours). A
/// listener comes back, to be handed to [`after_close`] after the real close.
pub fn before_close(fd: c_int) -> Option<Closing> {
    forget_epoll(fd);
    table::remove(fd).and_then(|s| retire(s, Some(fd)))
}

/// `close`: as [`before_close`], but the fd stays marked as closing until the caller's
/// `table::close_end` after the real close, so that another thread's call on it in between
/// waits instead of reaching the kernel socket.
pub fn begin_close(fd: c_int) -> Option<Closing> {
    forget_epoll(fd);
    table::close_begin(fd).and_then(|s| retire(s, Some(fd)))
}

pub(super) fn forget_epoll(fd: c_int) {
    if crate::epoll::IN_USE.load(Relaxed) {
        crate::epoll::forget_fd(fd);
        crate::epoll::forget_set(fd);
    }
}

/// After the real close of a listener's last fd here: withdraw it unless the kernel's
/// listening socket lives on in another process (a forked child's or parent's copy).
pub fn after_close(c: Closing) {
    if let Ok(t) = global::get().transport() {
        t.close_listener(c.0);
    }
}

/// A listener whose fd is already closed: settle it now.
pub(super) fn settle(c: Option<Closing>) {
    if let Some(c) = c {
        after_close(c);
    }
}

/// The kernel gave out the number of an fd that was closed behind our back (`fclose` of an
/// `fdopen` stream, a raw `close` system call): forget what it was, as `close` would have,
/// without touching the new fd.
pub fn forget_reused(fd: c_int) {
    if crate::epoll::involves(fd) {
        crate::epoll::forget_fd(fd);
        crate::epoll::forget_set(fd);
    }
    if let Some(s) = table::remove(fd) {
        settle(retire(s, None));
    }
}

/// The last reference to a tracked fd's entry is going: flush bytes kept before the answer
/// (while the kernel socket `fd` is still open), withdraw offers, keep the record. A listener
/// is returned, to be settled once its fd is closed ([`after_close`]).
pub(super) fn retire(s: Arc<Sock>, fd: Option<c_int>) -> Option<Closing> {
    let g = global::get();
    let mut closing = None;
    if Arc::strong_count(&s) == 1 {
        // (Its statistics record is kept when the entry is dropped: see `Sock::drop`.)
        // Bytes sent before the answer must still reach the peer, whichever path it is; and an
        // accepted connection closed before its first use is completed, so that it closes as
        // one (the peer reads EOF, the service hears of it) rather than vanish unanswered.
        let accepting = || {
            s.state.lock().is_ok_and(|st| {
                matches!(&*st, State::Offered(Some(p))
                    if g.transport().is_ok_and(|t| t.pending_is_accept(p)))
            })
        };
        // Any other offer of this process whose answer is already here is completed too,
        // without waiting: a client whose answer came after its connect returned and that was
        // never used is counted as the connection it became (and closes as one). One still
        // unanswered is withdrawn below and counted as nothing (it carried nothing, on no
        // path), as is a copy a forked child inherited (its parent's).
        if let Some(fd) = fd {
            let must = s.early.lock().is_ok_and(|e| !e.is_empty()) || accepting();
            let answered = s.fork_mark.load(std::sync::atomic::Ordering::SeqCst)
                != crate::fork::MARK_INHERITED_OFFER
                && s.state.lock().is_ok_and(|st| {
                    matches!(&*st, State::Offered(Some(p))
                        if g.transport().is_ok_and(|t| t.answer_arrived(p)))
                });
            if must || answered {
                let _ = settle_offer(&s, fd, must, false);
            }
        }
        // A late-upgrade candidate's pending offer (and the sends it holds) likewise.
        if fd.is_some() && s.conn.get().is_none() {
            crate::late::end_on(&s, fd);
        }
        if let Ok(mut st) = s.state.lock() {
            match std::mem::replace(&mut *st, State::Ntb) {
                State::Listening(Some(l)) => closing = Some(Closing(l)),
                State::Offered(Some(p)) => {
                    if let Ok(t) = g.transport() {
                        t.cancel(*p);
                    }
                }
                other => *st = other,
            }
        }
    }
    closing
}

pub fn shutdown(fd: c_int, how: c_int) -> Detour<c_int> {
    let Some(s) = table::get(fd) else {
        return Detour::Bypass;
    };
    // Not carried by the late upgrade yet: the candidacy ends.
    crate::late::end(&s);
    let Some(c) = s.conn.get() else {
        // A shutdown of the kernel socket would reach a peer whose stream is not on it.
        if s.state
            .lock()
            .is_ok_and(|st| matches!(*st, State::Forsaken))
        {
            return Detour::Ours(Err(libc::EIO));
        }
        return Detour::Bypass;
    };
    let (rd, wr) = match how {
        libc::SHUT_RD => (true, false),
        libc::SHUT_WR => (false, true),
        libc::SHUT_RDWR => (true, true),
        _ => return Detour::Ours(Err(libc::EINVAL)),
    };
    c.shutdown(rd, wr);
    // Our own readiness changed (hang-up, EOF for reads): wake this process's sleepers on the
    // connection, as the kernel does on shutdown.
    c.kick_local();
    Detour::Ours(Ok(0))
}

/// Keep O_NONBLOCK in step (after a successful real F_SETFL / FIONBIO).
pub fn set_nonblock(fd: c_int, on: bool) {
    if let Some(s) = table::get(fd) {
        s.nonblock.store(on, Relaxed);
    }
}

/// Keep SO_RCVTIMEO / SO_SNDTIMEO in step (after a successful real setsockopt).
pub fn set_timeout(fd: c_int, recv: bool, tv: libc::timeval) {
    if let Some(s) = table::get(fd) {
        let ns = (tv.tv_sec.max(0) as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(tv.tv_usec.max(0) as u64 * 1000);
        if recv {
            s.rcvtimeo_ns.store(ns, Relaxed);
        } else {
            s.sndtimeo_ns.store(ns, Relaxed);
        }
    }
}

/// Keep SO_TIMESTAMP / SO_TIMESTAMPNS in step (after a successful real setsockopt).
pub fn set_timestamping(fd: c_int, kind: u8, on: bool) {
    if let Some(s) = table::get(fd) {
        s.timestamp.store(if on { kind } else { 0 }, Relaxed);
    }
}

/// Which receive timestamp recvmsg must report on an NTB connection (0 none, 1 timeval,
/// 2 timespec).
pub fn timestamping(fd: c_int) -> u8 {
    table::get(fd).map_or(0, |s| {
        if s.conn.get().is_some() {
            s.timestamp.load(Relaxed)
        } else {
            0
        }
    })
}

/// FIONREAD / SIOCINQ on an NTB connection.
pub fn readable_bytes(fd: c_int) -> Option<usize> {
    let s = table::get(fd)?;
    s.conn.get().map(|c| c.readable_bytes())
}

/// dup/dup2/dup3/F_DUPFD: the new fd shares the old one's entry.
pub fn after_dup(old: c_int, new: c_int) {
    if old == new {
        return;
    }
    // The dup closed what `new` was: as `close` does for it (its epoll registrations, or the
    // epoll set it was).
    if crate::epoll::involves(new) {
        crate::epoll::forget_fd(new);
        crate::epoll::forget_set(new);
    }
    // Replace `new`'s entry in one step: a write on `new` racing a dup2 onto it finds one
    // entry or the other, never none (it would go to the kernel socket, outside the stream).
    let prev = match table::get(old) {
        Some(s) => table::replace(new, s).ok().flatten(),
        None => table::remove(new),
    };
    if let Some(s) = prev {
        settle(retire(s, None));
        crate::global::get().stats_due();
    }
}
