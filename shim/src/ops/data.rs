//! The data calls: which path a call on a tracked fd takes (settling its upgrade first), and
//! `recv`/`send`/`sendfile` over its connection. Called by `hooks` on every data call of a
//! tracked fd; a panic in here never unwinds into the application.

use super::*;

/// The data path of a tracked fd: its entry, whose connection is set ([`Sock::ntb`]), or
/// `Kernel` to use the kernel socket. The entry is pinned in the fd table (a hazard pointer,
/// no locked instruction) and the connection borrowed from it, not cloned: an `Arc` clone and
/// its drop are two locked instructions on every data call.
pub enum DataPath {
    Ntb(table::Pinned),
    /// A flagged connection made while the link was down, which may still upgrade: its reads
    /// and sends go through `late`.
    Late(table::Pinned),
    Kernel,
}

/// A non-blocking send before the server answered: keep up to `EARLY_MAX` bytes, as a TCP send
/// buffer would. `Some(n)` bytes were kept; `None`: no room (EAGAIN), or the connection settled
/// meanwhile (the caller tries again).
pub fn stash_early(fd: c_int, bufs: &[&[u8]]) -> Option<usize> {
    let sock = table::get(fd)?;
    let st = sock.state.lock().ok()?;
    if !matches!(&*st, State::Offered(Some(_))) {
        return None;
    }
    let mut early = sock.early.lock().ok()?;
    let room = crate::sock::EARLY_MAX.saturating_sub(early.len());
    let mut n = 0;
    for b in bufs {
        let take = b.len().min(room - n);
        early.extend_from_slice(&b[..take]);
        n += take;
        if n == room {
            break;
        }
    }
    (n > 0).then_some(n)
}

/// Which path a data call on `fd` takes (settling a pending upgrade first); `None`: not ours.
///
/// Called by hooks before their own guard: a panic in here (settling an offer builds the
/// connection from what the peer answered) is caught and becomes EIO, never unwinds into the
/// application.
pub fn data_path(fd: c_int, dontwait: bool) -> Option<Result<DataPath, c_int>> {
    data_path_pinned(fd, None, dontwait)
}

/// [`data_path`] for a send: a pending offer whose connection has not reached its server
/// answers `EAGAIN` even to a blocking send, whose bytes are then held (`stash_early`) and
/// sent on TCP to reach it at the next call (`settle_offer`).
pub fn data_path_to_send(fd: c_int, dontwait: bool) -> Option<Result<DataPath, c_int>> {
    std::panic::catch_unwind(|| data_path_unguarded(fd, None, dontwait, true))
        .unwrap_or(Some(Err(libc::EIO)))
}

/// [`data_path`] with the entry of `fd` already pinned, if the caller has it (a fast path that
/// declined hands its pin on rather than pin again).
pub fn data_path_pinned(
    fd: c_int,
    pinned: Option<table::Pinned>,
    dontwait: bool,
) -> Option<Result<DataPath, c_int>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        data_path_unguarded(fd, pinned, dontwait, false)
    }))
    .unwrap_or(Some(Err(libc::EIO)))
}

pub(super) fn data_path_unguarded(
    fd: c_int,
    pinned: Option<table::Pinned>,
    dontwait: bool,
    sending: bool,
) -> Option<Result<DataPath, c_int>> {
    let sock = match pinned {
        Some(p) => p,
        None => table::pin(fd)?,
    };
    if sock.conn.get().is_some() {
        return Some(Ok(DataPath::Ntb(sock)));
    }
    let block = !(sock.nonblocking() || dontwait);
    Some(match settle_offer(&sock, fd, block, sending) {
        // Settled onto the bridge: `settle_offer` set the entry's connection.
        Ok(Some(_)) => Ok(DataPath::Ntb(sock)),
        Ok(None) if crate::late::candidate(&sock) => Ok(DataPath::Late(sock)),
        Ok(None) => Ok(DataPath::Kernel),
        Err(e) => Err(e),
    })
}

pub fn recv(
    sock: &Sock,
    c: &Connection,
    bufs: &mut [&mut [u8]],
    flags: c_int,
) -> Result<usize, c_int> {
    let f = RecvFlags {
        nonblock: sock.nonblocking() || flags & libc::MSG_DONTWAIT != 0,
        peek: flags & libc::MSG_PEEK != 0,
        waitall: flags & libc::MSG_WAITALL != 0,
    };
    let r = c.recv(bufs, f, sock.rcvtimeo());
    match r {
        Ok(0) => global::get().log(LogLevel::Debug, || {
            format!(
                "{} -> {}: recv: end of stream",
                sock.local.to_std(),
                sock.peer.to_std()
            )
        }),
        Err(e) if e != IoError::WouldBlock => global::get().log(LogLevel::Debug, || {
            format!(
                "{} -> {}: recv: {e:?}",
                sock.local.to_std(),
                sock.peer.to_std()
            )
        }),
        _ => {}
    }
    r.map_err(|e| conn_errno(sock, "recv", e))
}

pub fn send(sock: &Sock, c: &Connection, bufs: &[&[u8]], flags: c_int) -> Result<usize, c_int> {
    let nonblock = sock.nonblocking() || flags & libc::MSG_DONTWAIT != 0;
    match c.send(bufs, nonblock, sock.sndtimeo()) {
        Ok(n) => Ok(n),
        Err(e) => {
            let errno = conn_errno(sock, "send", e);
            if errno == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
                sys::raise_sigpipe();
            }
            Err(errno)
        }
    }
}

pub fn sendfile(
    sock: &Sock,
    c: &Connection,
    in_fd: c_int,
    offset: Option<&mut i64>,
    count: usize,
) -> Result<usize, c_int> {
    match c.send_file(in_fd, offset, count, sock.nonblocking(), sock.sndtimeo()) {
        Ok(n) => Ok(n),
        Err(Ok(errno)) => Err(errno),
        Err(Err(e)) => {
            let errno = conn_errno(sock, "sendfile", e);
            if errno == libc::EPIPE {
                sys::raise_sigpipe();
            }
            Err(errno)
        }
    }
}
