//! What each intercepted call does for a tracked fd. Every op returns a [`Detour`]: either the
//! result of our own handling, or [`Detour::Bypass`] — call the real libc function unchanged. Ops
//! take plain Rust values (slices, addresses); `hooks` turns C arguments into them and back. It
//! never sets errno and never touches C pointers: that is `hooks`'.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libc::c_int;
use transport::{Connection, Endpoint, IoError, Outcome, Reason, RecvFlags};

use crate::config::{LogLevel, Role};
use crate::global::{self, ShimState};
use crate::sock::{Sock, State};
use crate::{sys, table};

mod connect;
mod control;
mod data;
mod listen;
mod ready;

// The ops `hooks` calls (`hooks` is compiled out of the crate's unit tests).
#[cfg_attr(any(test, loom), allow(unused_imports))]
pub use connect::{connect, settle_accepts};
#[cfg_attr(any(test, loom), allow(unused_imports))]
pub use control::{
    after_close, after_dup, before_close, begin_close, forget_reused, readable_bytes, set_nonblock,
    set_timeout, set_timestamping, shutdown, timestamping, Closing,
};
#[cfg_attr(any(test, loom), allow(unused_imports))]
pub use data::{
    data_path, data_path_pinned, data_path_to_send, recv, send, sendfile, stash_early, DataPath,
};
#[cfg_attr(any(test, loom), allow(unused_imports))]
pub use listen::{
    abandon_listener, after_accept, kernel_listens, reattach_inherited, register_listener, Listen,
};
#[cfg_attr(any(test, loom), allow(unused_imports))]
pub use ready::poll;
pub(crate) use ready::{Naps, ARMINGS};

// Shared by the submodules (`use super::*`).
use connect::settle_offer;
use control::{retire, settle};

/// Our result (a value, or an errno), or "call the real function".
pub enum Detour<T> {
    Ours(Result<T, c_int>),
    Bypass,
}

fn is_stream_inet(fd: c_int) -> bool {
    let ty = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE);
    let dom = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
    ty == Some(libc::SOCK_STREAM) && matches!(dom, Some(libc::AF_INET) | Some(libc::AF_INET6))
}

fn io_errno(e: IoError) -> c_int {
    match e {
        IoError::WouldBlock | IoError::TimedOut => libc::EAGAIN,
        IoError::BrokenPipe | IoError::ShutDown => libc::EPIPE,
        IoError::Reset | IoError::Protocol => libc::ECONNRESET,
        IoError::Interrupted => libc::EINTR,
    }
}

/// errno for a failed call on an NTB connection; a protocol error (the peer broke the ring's
/// rules, and the connection was reset and counted) is logged at `warn`.
fn conn_errno(sock: &Sock, op: &str, e: IoError) -> c_int {
    if e == IoError::Protocol {
        global::get().log(LogLevel::Warn, || {
            format!(
                "{} -> {}: {op}: the peer broke the protocol; connection reset",
                sock.local.to_std(),
                sock.peer.to_std()
            )
        });
    }
    io_errno(e)
}

fn fallback(g: &ShimState, sock: Sock, fd: c_int, reason: Reason) -> Result<(), c_int> {
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
        return Err(libc::ECONNREFUSED);
    }
    g.count_fallback(fd, reason, sock.role);
    table::insert(fd, Arc::new(sock));
    Ok(())
}
