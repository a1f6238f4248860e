//! A client candidate whose application only makes non-blocking calls (an event loop): its late
//! offer is posted from a non-blocking call and its answer taken at a later one, never waiting
//! for it (PROTOCOL.md §6, *Late upgrade*). Meanwhile the sends are held (`Late::held`, up to
//! `EARLY_MAX`, as `Sock::early` holds a pending connection's) and flushed, in order, into
//! whichever path the connection settles on; a read peeks the socket, then looks for the
//! answer, and takes the peeked bytes as plain only if none came (the server writes its answer
//! before any record, so bytes seen before a look that finds no answer are plain). A call that
//! would hold more than `EARLY_MAX`, and a readiness wait with bytes held, settle it waiting
//! (at most the offer's patience, 400 ms), as a pending connection with kept bytes does. Called
//! by `late` with the candidate's gate closed for everything it does on the socket.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::RwLockWriteGuard;
use std::time::{Duration, Instant};

use libc::c_int;
use transport::LateOutcome;

use super::{failed, paired, Late};
use crate::global;
use crate::sock::{Sock, EARLY_MAX};
use crate::sys;

/// Has `late` a late offer waiting for its answer?
pub(super) fn pending(late: &Late) -> bool {
    late.pending.lock().is_ok_and(|p| p.is_some())
}

/// A non-blocking call of a client candidate: settle its pending offer (`wait_if_held`: waiting
/// for the answer if sends are held), or post one once the link is up and the hold has passed.
/// True if the connection moved onto the ring.
pub(super) fn tick(sock: &Sock, fd: c_int, late: &Late, wait_if_held: bool) -> bool {
    if pending(late) {
        let held = late.held.lock().is_ok_and(|h| !h.is_empty());
        return settle(sock, fd, late, wait_if_held && held);
    }
    if late
        .tries
        .lock()
        .map_or(true, |tr| tr.next.is_some_and(|n| Instant::now() < n))
    {
        return false;
    }
    let Ok(t) = global::get().transport() else {
        return false;
    };
    if !t.link_is_up() {
        return false;
    }
    let _gate = late.gate.write().unwrap_or_else(|p| p.into_inner());
    if !late.live() || sock.conn.get().is_some() || pending(late) {
        return false;
    }
    match t.late_offer(sock.local, sock.peer, sock.tcp_tx.load(Relaxed)) {
        Ok(o) => {
            if let Ok(mut p) = late.pending.lock() {
                *p = Some(o);
            }
        }
        Err(reason) => failed(sock, fd, late, reason),
    }
    false
}

/// Settle the pending late offer, `wait`ing for its answer or not. True if the connection
/// moved onto the ring.
pub(super) fn settle(sock: &Sock, fd: c_int, late: &Late, wait: bool) -> bool {
    let gate = late.gate.write().unwrap_or_else(|p| p.into_inner());
    settle_locked(sock, fd, late, wait, gate).is_ok()
}

/// [`settle`] with the gate already closed by the caller: `Ok` once the connection moved onto
/// the ring (the gate let go of), else the gate back, still closed.
fn settle_locked<'a>(
    sock: &Sock,
    fd: c_int,
    late: &Late,
    wait: bool,
    gate: RwLockWriteGuard<'a, ()>,
) -> Result<(), RwLockWriteGuard<'a, ()>> {
    let Some(mut o) = late.pending.lock().ok().and_then(|mut p| p.take()) else {
        return Err(gate);
    };
    // (The offer came from the transport, which stays open; were it not, the offer is dropped
    // and the candidacy goes on without it.)
    let Ok(t) = global::get().transport() else {
        return Err(gate);
    };
    let tcp_fd = super::first_fd(sock, fd);
    loop {
        let line = o.line();
        match t.late_settle(o, tcp_fd, sock.tcp_rx.load(Relaxed)) {
            LateOutcome::Pending(p) if wait => {
                o = p;
                let _ = sys::poll1(line, libc::POLLIN, Duration::from_millis(5));
            }
            LateOutcome::Pending(p) => {
                if let Ok(mut slot) = late.pending.lock() {
                    *slot = Some(p);
                }
                return Err(gate);
            }
            LateOutcome::Paired(c) => {
                // The held bytes go first: the connection is published (and so reachable by a
                // send of another thread) only after them.
                let held = late
                    .held
                    .lock()
                    .map(|mut h| std::mem::take(&mut *h))
                    .unwrap_or_default();
                let flushed = held.is_empty() || c.send(&[&held], false, None).is_ok();
                paired(sock, fd, late, *c, gate);
                if !flushed {
                    sys::shutdown_both(fd);
                }
                return Ok(());
            }
            LateOutcome::Failed(reason) => {
                // Unanswered (or declined): the held bytes go on TCP, before any later send.
                let held = late
                    .held
                    .lock()
                    .map(|mut h| std::mem::take(&mut *h))
                    .unwrap_or_default();
                if reason != transport::Reason::BadPeer && !held.is_empty() {
                    if sys::send_all(fd, &held).is_ok() {
                        sock.tcp_tx.fetch_add(held.len() as u64, Relaxed);
                    } else {
                        sys::shutdown_both(fd);
                    }
                }
                failed(sock, fd, late, reason);
                return Err(gate);
            }
        }
    }
}

/// A send while the late offer is pending: hold what fits (`None`: not pending any more, the
/// caller goes on as usual). A send that finds the hold full settles the offer waiting first.
pub(super) fn send(sock: &Sock, fd: c_int, late: &Late, bufs: &[&[u8]]) -> Option<usize> {
    let _gate = late.gate.write().unwrap_or_else(|p| p.into_inner());
    if !pending(late) {
        return None;
    }
    let mut held = late.held.lock().ok()?;
    let room = EARLY_MAX.saturating_sub(held.len());
    if room == 0 {
        drop(held);
        let _ = settle_locked(sock, fd, late, true, _gate);
        return None;
    }
    let mut n = 0;
    for b in bufs {
        let take = b.len().min(room - n);
        held.extend_from_slice(&b[..take]);
        n += take;
        if n == room {
            break;
        }
    }
    Some(n)
}

/// A read while the late offer is pending: peek, look for the answer, and take the peeked
/// bytes as plain only if none came. `None`: the connection moved onto the ring (or the offer
/// settled) meanwhile, and nothing was read: the caller reads again.
pub(super) fn recv(
    sock: &Sock,
    fd: c_int,
    late: &Late,
    bufs: &mut [&mut [u8]],
    flags: c_int,
) -> Option<Result<usize, c_int>> {
    let gate = late.gate.write().unwrap_or_else(|p| p.into_inner());
    if !pending(late) {
        return None;
    }
    let peeked = sys::recv_iov(
        fd,
        bufs,
        (flags | libc::MSG_DONTWAIT | libc::MSG_PEEK) & !libc::MSG_WAITALL,
    );
    // Bytes seen before a look that finds no answer were written before it: plain. The gate
    // stays closed until they are taken (another reader must not take them meanwhile).
    let Err(_gate) = settle_locked(sock, fd, late, false, gate) else {
        return None;
    };
    if !late.live() {
        // The candidacy ended (a broken answer): the kernel's call.
        return None;
    }
    match peeked {
        Ok(n) if n > 0 && flags & libc::MSG_PEEK == 0 => {
            // The same bytes again, now taken.
            let mut left = n;
            let mut part: Vec<&mut [u8]> = Vec::new();
            for b in bufs.iter_mut() {
                if left == 0 {
                    break;
                }
                let take = b.len().min(left);
                part.push(&mut b[..take]);
                left -= take;
            }
            let r = sys::recv_iov(fd, &mut part, libc::MSG_DONTWAIT);
            if let Ok(m) = r {
                sock.tcp_rx.fetch_add(m as u64, Relaxed);
            }
            Some(r)
        }
        r => Some(r),
    }
}
