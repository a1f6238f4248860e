//! Listeners and accepts of flagged sockets: a listener registered with the transport (and
//! withdrawn), an accepted connection offered the bridge, and at load the listeners and
//! connections a new image inherits taken over. Called by `hooks` around the real `listen`,
//! `accept` and `close`, and once at load; the kernel's listener is never replaced.

use super::*;

/// Register a flagged listener on the fabric. Called before the real `listen` for a bound
/// socket (a client that finds the kernel listener must find ours too: otherwise it falls back
/// with `NoListener`, or is refused under PCISOCK_STRICT=1), and after it for a socket that
/// `listen` bound to an ephemeral port.
pub fn register_listener(fd: c_int) -> Result<Listen, c_int> {
    if table::contains(fd) {
        return Ok(Listen::Decided); // listen() again on a tracked listener (backlog change)
    }
    let g = global::get();
    let Some(local) = sys::local_addr(fd) else {
        return Ok(Listen::Decided);
    };
    if local.port() == 0 {
        return Ok(Listen::Unbound);
    }
    if !g.config.may_flag_port(local.port()) || !is_stream_inet(fd) {
        return Ok(Listen::Decided);
    }
    if !g
        .config
        .decide(Role::Server, local.port(), Some(local.ip()), &g.program)
        .is_ntb()
    {
        return Ok(Listen::Decided);
    }
    let ep = Endpoint::from_std(local);
    let state = match g.transport() {
        Ok(t) => match t.listen(fd, ep) {
            Ok(l) => State::Listening(Some(l)),
            Err(r) => State::Tcp(r),
        },
        Err(_) => State::Tcp(g.unavailable()),
    };
    if let State::Tcp(r) = &state {
        g.log(LogLevel::Warn, || {
            format!("listener {local}: not on the NTB path: {r}")
        });
        if g.config.strict() {
            return Err(libc::ENODEV);
        }
    } else {
        g.log(LogLevel::Info, || {
            format!("listener {local} registered on the NTB fabric")
        });
    }
    table::insert(
        fd,
        Arc::new(Sock::new(
            Role::Server,
            ep,
            Endpoint::default(),
            sys::nonblocking(fd),
            state,
        )),
    );
    Ok(Listen::Registered)
}

/// What `register_listener` did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Registered now: withdraw it if the real `listen` fails.
    Registered,
    /// Nothing to register (not flagged, not a TCP socket, or already tracked).
    Decided,
    /// No port yet: decide again once `listen` has bound one.
    Unbound,
}

/// The real `listen` failed after `register_listener` registered `fd`: withdraw it.
pub fn abandon_listener(fd: c_int) {
    if let Some(s) = table::remove(fd) {
        settle(retire(s, Some(fd)));
    }
}

/// The real `listen` succeeded on the registered listener `fd`: from now on the listener lives
/// as long as the kernel's listening socket, whoever holds it.
pub fn kernel_listens(fd: c_int) {
    let Some(s) = table::get(fd) else { return };
    let g = global::get();
    let Ok(t) = g.transport() else { return };
    if let Ok(st) = s.state.lock() {
        if let State::Listening(Some(l)) = &*st {
            t.kernel_listens(l, fd);
        }
    };
}

/// After a successful real `accept` on `lfd` returned `fd`: upgrade it if the client offered.
/// `peer`: the address accept gave, if it did.
pub fn after_accept(
    lfd: c_int,
    fd: c_int,
    nonblock: bool,
    peer: Option<std::net::SocketAddr>,
) -> Result<(), c_int> {
    let Some(l) = table::get(lfd) else {
        return Ok(());
    };
    // A new fd number from the kernel: any stale entry for it is gone.
    drop(table::remove(fd));
    let g = global::get();
    let listening = matches!(
        &*l.state.lock().map_err(|_| libc::EIO)?,
        State::Listening(_)
    );
    // A listener bound to one address accepts on that address (one bound to any asks).
    let bound = l.local.to_std();
    let local = if bound.ip().is_unspecified() || bound.port() == 0 {
        sys::local_addr(fd)
            .map(Endpoint::from_std)
            .unwrap_or(l.local)
    } else {
        l.local
    };
    let peer = peer
        .or_else(|| sys::peer_addr(fd))
        .map(Endpoint::from_std)
        .unwrap_or_default();
    let sock = Sock::new(Role::Server, local, peer, nonblock, State::Ntb);
    let reason = if !listening {
        l.tcp_reason().unwrap_or(Reason::NoDevice)
    } else {
        // A blocking fd's first use would wait for the service's answer anyway: it completes
        // here, as it always did. A non-blocking one (an event loop: nginx) returns at once and
        // completes at first use, so the server goes on with its other connections meanwhile.
        let started = |t: &transport::Transport| {
            if nonblock {
                t.accept_started(fd, local, peer)
            } else {
                match t.accept(fd, local, peer) {
                    Ok(c) => Outcome::Connected(c),
                    Err(r) => Outcome::Tcp(r),
                }
            }
        };
        match g.transport() {
            Ok(t) => match started(t) {
                Outcome::Connected(conn) => {
                    let _ = sock.conn.set(Arc::new(conn));
                    g.ntb_connections.fetch_add(1, Relaxed);
                    g.log(LogLevel::Info, || {
                        format!("fd {fd}: accepted {} on the NTB path", peer.to_std())
                    });
                    table::insert(fd, Arc::new(sock));
                    return Ok(());
                }
                // Through the service: its answer comes to the first use of the fd (as a
                // client's does: `settle_offer`), so accept returns without a round trip.
                Outcome::Waiting(p) => {
                    *sock.state.lock().map_err(|_| libc::EIO)? = State::offered(p);
                    g.log(LogLevel::Debug, || {
                        format!("fd {fd}: accepted {}, upgrade asked for", peer.to_std())
                    });
                    table::insert(fd, Arc::new(sock));
                    return Ok(());
                }
                Outcome::Tcp(r) => r,
            },
            Err(_) => g.unavailable(),
        }
    };
    g.log(LogLevel::Debug, || {
        format!(
            "fd {fd}: accepted {} -> {}: {reason}",
            peer.to_std(),
            local.to_std()
        )
    });
    *sock.state.lock().map_err(|_| libc::EIO)? = State::Tcp(reason);
    // A client that offered nothing while the link was down may offer once it is up (`late`).
    if reason == Reason::NoOffer
        && g.transport()
            .is_ok_and(|t| t.late_upgrades() && !t.link_is_up())
    {
        let _ = sock.late.set(Box::new(crate::late::Late::new()));
    }
    fallback(g, sock, fd, reason).map_err(|e| {
        sys::close_raw(fd);
        if e == libc::ECONNREFUSED {
            libc::ECONNABORTED
        } else {
            e
        }
    })
}

/// At load: a process that exec'd a new image keeps the fds of the old one. Pick up the NTB
/// connections it held on inherited sockets, so they go on over the bridge (socat's
/// `EXEC:…,nofork`, a shell that runs a filter on its socket).
/// At load: an inherited listening socket whose listener was published before the exec (by
/// this process or the one it inherited the socket from) is taken over, so this image answers
/// the offers that clients make to it. One not flagged for this program is left alone.
pub(super) fn adopt_listener(g: &ShimState, fd: c_int) {
    let Some(local) = sys::local_addr(fd) else {
        return;
    };
    if !g.config.may_flag_port(local.port())
        || !g
            .config
            .decide(Role::Server, local.port(), Some(local.ip()), &g.program)
            .is_ntb()
    {
        return;
    }
    let Ok(t) = g.transport() else { return };
    let Some(l) = t.adopt_listener(fd) else {
        return;
    };
    g.log(LogLevel::Info, || {
        format!("fd {fd}: listener {local} taken over from before exec")
    });
    table::insert(
        fd,
        Arc::new(Sock::new(
            Role::Server,
            Endpoint::from_std(local),
            Endpoint::default(),
            sys::nonblocking(fd),
            State::Listening(Some(l)),
        )),
    );
}

pub fn reattach_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let g = global::get();
    let mut candidates = Vec::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<c_int>().ok()) else {
            continue;
        };
        let is_socket =
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        if !is_socket || !is_stream_inet(fd) {
            continue;
        }
        if sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1) {
            adopt_listener(g, fd);
            continue;
        }
        let (Some(local), Some(peer)) = (sys::local_addr(fd), sys::peer_addr(fd)) else {
            continue;
        };
        if g.config.may_flag_port(local.port()) || g.config.may_flag_port(peer.port()) {
            candidates.push(fd);
        }
    }
    if candidates.is_empty() {
        return;
    }
    let Ok(t) = g.transport() else { return };
    for fd in candidates {
        let (local, peer) = match (sys::local_addr(fd), sys::peer_addr(fd)) {
            (Some(l), Some(p)) => (Endpoint::from_std(l), Endpoint::from_std(p)),
            _ => continue,
        };
        let nonblock = sys::nonblocking(fd);
        let sock = match t.reattach(fd) {
            None => continue,
            Some(Outcome::Connected(c)) => {
                let role = match c.role {
                    transport::Role::Client => Role::Client,
                    transport::Role::Server => Role::Server,
                };
                let sock = Sock::new(role, c.local, c.peer, nonblock, State::Ntb);
                let _ = sock.conn.set(Arc::new(c));
                sock
            }
            // An offer still waiting for its answer completes on first use, as before exec.
            Some(Outcome::Waiting(p)) => {
                Sock::new(Role::Client, local, peer, nonblock, State::offered(p))
            }
            Some(Outcome::Tcp(reason)) => {
                Sock::new(Role::Client, local, peer, nonblock, State::Tcp(reason))
            }
        };
        g.log(LogLevel::Info, || {
            format!("fd {fd}: NTB connection taken over from before exec")
        });
        table::insert(fd, Arc::new(sock));
    }
}
