//! The client's upgrade: an offer made around the real `connect`, and settling a pending
//! offer or accept (the peer's answer taken, the connection built, or TCP kept with a reason).
//! Called by `hooks::connect` and, for a settle, by the first data call, poll or close of the
//! fd; it never waits longer than the connect's own patience.

use super::*;

/// How long a blocking connect looks for the server's answer before it returns.
const CONNECT_SPIN: Duration = Duration::from_millis(2);

/// `connect`: for a flagged destination, offer the upgrade before the real connect.
pub fn connect(fd: c_int, addr: Option<SocketAddr>, real: impl Fn() -> c_int) -> Detour<c_int> {
    let Some(remote) = addr else {
        return Detour::Bypass;
    };
    let g = global::get();
    if !g.config.may_flag_port(remote.port()) {
        return Detour::Bypass;
    }
    if table::contains(fd) || !is_stream_inet(fd) {
        return Detour::Bypass;
    }
    if !g
        .config
        .decide(Role::Client, remote.port(), Some(remote.ip()), &g.program)
        .is_ntb()
    {
        return Detour::Bypass;
    }
    let nonblock = sys::nonblocking(fd);
    let remote_ep = Endpoint::from_std(remote);
    let t = match g.transport() {
        Ok(t) => t,
        Err(_) => {
            return Detour::Ours(connect_tcp(
                g,
                fd,
                remote_ep,
                nonblock,
                g.unavailable(),
                real,
            ))
        }
    };
    // The offer is keyed by our port. A socket the application bound has one now; otherwise
    // the kernel picks it in connect (reusing ports in TIME_WAIT as it does for any connect,
    // which a bind of port 0 cannot), so the offer is reserved first and posted right after.
    let bound = sys::local_addr(fd).filter(|a| a.port() != 0);
    g.log(LogLevel::Debug, || {
        format!(
            "fd {fd}: offering {} -> {remote}",
            bound.map_or("(port to come)".to_string(), |a| a.to_string())
        )
    });
    let offered = match bound {
        Some(local) => t.offer(Endpoint::from_std(local), remote_ep, fd),
        None => t.offer_unbound(remote_ep, fd),
    };
    let mut pending = match offered {
        Ok(p) => p,
        Err(reason) => return Detour::Ours(connect_tcp(g, fd, remote_ep, nonblock, reason, real)),
    };
    let r = real();
    let err = sys::errno();
    if r != 0 && err != libc::EINPROGRESS {
        t.cancel(pending);
        return Detour::Ours(Err(err));
    }
    let local_ep = match bound.or_else(|| sys::local_addr(fd).filter(|a| a.port() != 0)) {
        Some(local) => Endpoint::from_std(local),
        None => {
            // Connected without a port to name (cannot happen for TCP): stay on TCP.
            t.cancel(pending);
            let sock = Sock::new(
                Role::Client,
                Endpoint::default(),
                remote_ep,
                nonblock,
                State::Tcp(Reason::Unsupported),
            );
            let done = if r == 0 { Ok(0) } else { Err(err) };
            return Detour::Ours(fallback(g, sock, fd, Reason::Unsupported).and(done));
        }
    };
    if bound.is_none() {
        t.publish(&mut pending, local_ep);
    }
    // The kernel connect is done (or in progress): return at once, as TCP does. A blocking
    // connect first looks for the server's answer for a moment (the server usually answers
    // within microseconds, and a connection complete before the application forks or execs is
    // handed on whole); otherwise the upgrade completes on first use (a server may accept late,
    // after its other clients, and the client must not wait for that inside connect).
    let pending = if r == 0 {
        match t.complete_within(pending, fd, CONNECT_SPIN) {
            Outcome::Connected(c) => {
                let sock = Sock::new(Role::Client, local_ep, remote_ep, nonblock, State::Ntb);
                let _ = sock.conn.set(Arc::new(c));
                g.ntb_connections.fetch_add(1, Relaxed);
                g.log(LogLevel::Info, || {
                    format!("fd {fd}: connected to {remote} on the NTB path")
                });
                table::insert(fd, Arc::new(sock));
                return Detour::Ours(Ok(0));
            }
            Outcome::Tcp(reason) => {
                let sock = Sock::new(
                    Role::Client,
                    local_ep,
                    remote_ep,
                    nonblock,
                    State::Tcp(reason),
                );
                return Detour::Ours(
                    fallback(g, sock, fd, reason)
                        .map(|()| 0)
                        .inspect_err(|_| sys::shutdown_both(fd)),
                );
            }
            Outcome::Waiting(p) => p,
        }
    } else {
        pending
    };
    let sock = Sock::new(
        Role::Client,
        local_ep,
        remote_ep,
        nonblock,
        State::offered(pending),
    );
    g.log(LogLevel::Debug, || {
        format!("fd {fd}: connected to {remote}, upgrade offered")
    });
    table::insert(fd, Arc::new(sock));
    Detour::Ours(if r != 0 {
        Err(libc::EINPROGRESS)
    } else {
        Ok(0)
    })
}

pub(super) fn connect_tcp(
    g: &ShimState,
    fd: c_int,
    remote: Endpoint,
    nonblock: bool,
    reason: Reason,
    real: impl Fn() -> c_int,
) -> Result<c_int, c_int> {
    if g.config.strict() {
        g.log(LogLevel::Error, || {
            format!("fd {fd}: PCISOCK_STRICT=1 refuses the TCP fallback ({reason})")
        });
        // Recorded, as a server's refusals are: the stats file says why the connect failed.
        let local = sys::local_addr(fd)
            .map(Endpoint::from_std)
            .unwrap_or_default();
        drop(Sock::new(
            Role::Client,
            local,
            remote,
            nonblock,
            State::Tcp(reason),
        ));
        return Err(libc::ECONNREFUSED);
    }
    let r = real();
    let err = sys::errno();
    if r == 0 || err == libc::EINPROGRESS {
        let local = sys::local_addr(fd)
            .map(Endpoint::from_std)
            .unwrap_or_default();
        let sock = Sock::new(Role::Client, local, remote, nonblock, State::Tcp(reason));
        if reason == Reason::LinkDown && g.transport().is_ok_and(|t| t.late_upgrades()) {
            // It may still move onto the ring once the link is up (`late`).
            let _ = sock.late.set(Box::new(crate::late::Late::new()));
        }
        let _ = fallback(g, sock, fd, reason);
    }
    if r == 0 {
        Ok(0)
    } else {
        Err(err)
    }
}

/// Resolve a client still waiting for its answer. Returns the connection if it is on the NTB
/// path now; `Err(EAGAIN)` if the answer is not there and we must not block, or (`sending`: a
/// send's) the connection has not reached its server and holds no bytes yet to reach it with
/// (the send holds its own, and the next call sends them: see `Transport::reaching`).
pub(super) fn settle_offer(
    sock: &Sock,
    fd: c_int,
    block: bool,
    sending: bool,
) -> Result<Option<Arc<Connection>>, c_int> {
    if let Some(c) = sock.conn.get() {
        return Ok(Some(c.clone()));
    }
    let g = global::get();
    let mut st = sock.state.lock().map_err(|_| libc::EIO)?;
    if let State::Forsaken = &*st {
        g.log(LogLevel::Error, || {
            format!(
                "fd {fd}: inherited at a fork while another thread of the parent was connecting \
                 or closing it; which path it took is not known here, so this process cannot \
                 use it (EIO)"
            )
        });
        return Err(libc::EIO);
    }
    let State::Offered(p) = &mut *st else {
        return Ok(sock.conn.get().cloned());
    };
    let Some(pending) = p.take().map(|b| *b) else {
        return Ok(None);
    };
    let Ok(t) = g.transport() else {
        return Ok(None);
    };
    // The TCP connect must have finished before the answer can count (an accepted socket's
    // has).
    if !t.pending_is_accept(&pending) && sys::peer_addr(fd).is_none() {
        let so_error = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(0);
        if so_error != 0 || !block {
            if so_error != 0 {
                t.cancel(pending);
                *st = State::Tcp(Reason::Unsupported);
                return Ok(None);
            }
            *p = Some(Box::new(pending));
            return Err(libc::EAGAIN);
        }
    }
    let mut early = std::mem::take(&mut *sock.early.lock().map_err(|_| libc::EIO)?);
    let mut pending = pending;
    // Bytes this call can reach an unreached server with: those held, or a send's own.
    let mut can_reach = early.len().max(sending as usize);
    let outcome = loop {
        match t.complete(pending, fd, block || !early.is_empty(), can_reach) {
            // The connection has not reached a server (its listener's queue overflowed): as on
            // TCP, the client's first bytes reach it. Sent once the service keeps their count,
            // which it gives the server's end; what the application sends after them waits
            // for the answer as before.
            Outcome::Waiting(mut p2) if can_reach > 0 && t.reaching(&p2) => {
                if early.is_empty() {
                    // A send's own bytes: held by the caller on EAGAIN, sent by the next call.
                    *p = Some(Box::new(p2));
                    return Err(libc::EAGAIN);
                }
                if t.reach(&mut p2, early.len() as u64) {
                    if let Err(e) = sys::send_all(fd, &early) {
                        *p = Some(Box::new(p2));
                        return Err(e);
                    }
                    sock.tcp_tx.fetch_add(early.len() as u64, Relaxed);
                    early.clear();
                    g.log(LogLevel::Debug, || {
                        format!("fd {fd}: first bytes sent on TCP to reach the server")
                    });
                }
                pending = p2;
                can_reach = 0;
            }
            o => break o,
        }
    };
    match outcome {
        Outcome::Connected(c) => {
            let c = Arc::new(c);
            // The bytes kept before the answer go first: the connection is published (and so
            // reachable by another thread's send without the state lock we hold) only after
            // them, or that send could overtake them.
            let flushed = if early.is_empty() {
                Ok(0)
            } else {
                c.send(&[&early], false, None)
            };
            let _ = sock.conn.set(c.clone());
            *st = State::Ntb;
            g.ntb_connections.fetch_add(1, Relaxed);
            g.log(LogLevel::Info, || {
                let how = match sock.role {
                    Role::Client => "connected to",
                    Role::Server => "accepted",
                };
                format!("fd {fd}: {how} {} on the NTB path", sock.peer.to_std())
            });
            flushed.map_err(io_errno)?;
            Ok(Some(c))
        }
        Outcome::Tcp(reason) => {
            *st = State::Tcp(reason);
            g.log(LogLevel::Info, || {
                format!(
                    "fd {fd}: {} {} stays on TCP: {reason} ({})",
                    sock.role,
                    sock.peer.to_std(),
                    reason.explain()
                )
            });
            if g.config.strict() {
                g.log(LogLevel::Error, || {
                    format!("fd {fd}: PCISOCK_STRICT=1 refuses the TCP fallback ({reason})")
                });
                sys::shutdown_both(fd);
                return Err(libc::ECONNREFUSED);
            }
            g.count_fallback(fd, reason, sock.role);
            if !early.is_empty() {
                sys::send_all(fd, &early)?;
                sock.tcp_tx.fetch_add(early.len() as u64, Relaxed);
            }
            Ok(None)
        }
        Outcome::Waiting(p2) => {
            *p = Some(Box::new(p2));
            Err(libc::EAGAIN)
        }
    }
}

/// Before a fork: complete every accepted connection still waiting for the service's answer
/// (which comes at once). The answer goes to this process's service connection, which a child
/// does not share (it opens its own), so a child that inherited the fd could never complete it;
/// completed now, the connection is handed on whole, as a settled one always was.
pub fn settle_accepts() {
    let _ = std::panic::catch_unwind(|| {
        for (fd, sock) in table::snapshot() {
            // An entry another thread holds is being settled by it (or is a client's, waiting
            // for its server): left to the child's rules (`fork::child`). The transport is
            // only asked about a pending entry (which it made): a fork never opens it.
            let waiting = sock.conn.get().is_none()
                && sock.state.try_lock().is_ok_and(|st| match &*st {
                    State::Offered(Some(p)) => global::get()
                        .transport()
                        .is_ok_and(|t| t.pending_is_accept(p)),
                    _ => false,
                });
            if waiting {
                let _ = settle_offer(&sock, fd, true, false);
            }
        }
    });
}
