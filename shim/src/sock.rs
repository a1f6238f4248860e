//! What the shim knows about one tracked fd. Owned by the side table (`table`), shared by the fds
//! that dup it and freed only when no pin holds it; it does no I/O itself and never decides
//! anything: its fields are what the hooks and `ops` recorded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use transport::{Connection, Endpoint, Listener, Pending, Reason};

use crate::config::Role;

/// A tracked fd.
pub struct Sock {
    pub role: Role,
    /// O_NONBLOCK as the application set it (kept in step by fcntl/ioctl/accept4 hooks).
    pub nonblock: AtomicBool,
    /// SO_RCVTIMEO / SO_SNDTIMEO in nanoseconds (0 = none).
    pub rcvtimeo_ns: AtomicU64,
    pub sndtimeo_ns: AtomicU64,
    pub local: Endpoint,
    pub peer: Endpoint,
    /// Set once the connection is on the NTB path: the data hooks use it without a lock.
    pub conn: OnceLock<Arc<Connection>>,
    pub state: Mutex<State>,
    /// Bytes moved over the kernel socket on a flagged connection that stayed on TCP.
    pub tcp_tx: AtomicU64,
    pub tcp_rx: AtomicU64,
    /// Bytes a client sent without blocking before the server answered its offer (TCP would
    /// have buffered them); flushed, in order, into whichever path the connection settles on.
    pub early: Mutex<Vec<u8>>,
    /// SO_TIMESTAMP (1) or SO_TIMESTAMPNS (2) is on: recvmsg gives a receive-time cmsg.
    pub timestamp: std::sync::atomic::AtomicU8,
    /// The application's fds that refer to this entry (dup, dup2, F_DUPFD share it).
    pub fds: Mutex<FdList>,
    /// Which fork counted this entry's connection as shared with the child (`fork`).
    pub fork_mark: AtomicU64,
    /// Set for a flagged connection made while the NTB link was down, which may still move
    /// onto the ring (`late`). Boxed: few entries are candidates, and every entry would
    /// otherwise carry its ~340 bytes (benches/results/heap-session14.md).
    pub late: OnceLock<Box<crate::late::Late>>,
}

/// The fds of an entry, oldest first: nearly always one, held inline (a `Vec` would be an
/// allocation per entry); the dups beyond it in a `Vec`.
pub struct FdList {
    /// The oldest fd; -1 only when there is none (then `more` is empty too).
    first: i32,
    more: Vec<i32>,
}

impl Default for FdList {
    fn default() -> FdList {
        FdList {
            first: -1,
            more: Vec::new(),
        }
    }
}

impl FdList {
    pub fn first(&self) -> Option<i32> {
        (self.first >= 0).then_some(self.first)
    }

    pub fn contains(&self, fd: i32) -> bool {
        fd >= 0 && (self.first == fd || self.more.contains(&fd))
    }

    /// Add `fd` (a descriptor number, never negative) after the others, unless it is there.
    pub fn add(&mut self, fd: i32) {
        if self.contains(fd) {
            return;
        }
        if self.first < 0 {
            self.first = fd;
        } else {
            self.more.push(fd);
        }
    }

    /// Remove `fd`; the next oldest becomes the first.
    pub fn remove(&mut self, fd: i32) {
        if self.first == fd {
            self.first = if self.more.is_empty() {
                -1
            } else {
                self.more.remove(0)
            };
        } else {
            self.more.retain(|&f| f != fd);
        }
    }
}

/// Most bytes held in `Sock::early` (like a small socket send buffer).
pub const EARLY_MAX: usize = 256 << 10;

/// Where a tracked fd stands.
pub enum State {
    /// A flagged listening socket, registered with the transport.
    Listening(Option<Listener>),
    /// A client whose offer awaits the server's answer (boxed: an offer is ~200 bytes and
    /// lives only until the connection settles, while every entry carries a `State`).
    Offered(Option<Box<Pending>>),
    /// On the NTB path (`Sock::conn` is set).
    Ntb,
    /// A flagged connection that stays on TCP, and why.
    Tcp(Reason),
    /// In a forked child: inherited while another thread of the parent was completing or
    /// closing it, so this process cannot know which path it took; its data calls fail with
    /// EIO (see `fork`).
    Forsaken,
}

impl State {
    /// An entry whose offer (a client's, or a server's accept through the service) waits.
    pub fn offered(p: Pending) -> State {
        State::Offered(Some(Box::new(p)))
    }
}

impl Drop for Sock {
    /// Every tracked fd's entry leaves exactly one record in the statistics, however it ends
    /// (close, dup2 over it, close_range, exit). Only counted here: the file is written by the
    /// close hooks (`ShimState::stats_due`) and at exit.
    fn drop(&mut self) {
        crate::global::get().record_closed(self);
    }
}

impl Sock {
    /// The connection of an entry on the NTB path (`ops::DataPath::Ntb`, which is only made for
    /// an entry whose connection is set; it is set once and never taken away).
    pub fn ntb(&self) -> &Connection {
        self.conn
            .get()
            .expect("DataPath::Ntb is only made for an entry with a connection")
    }

    pub fn new(role: Role, local: Endpoint, peer: Endpoint, nonblock: bool, state: State) -> Sock {
        Sock {
            role,
            nonblock: AtomicBool::new(nonblock),
            rcvtimeo_ns: AtomicU64::new(0),
            sndtimeo_ns: AtomicU64::new(0),
            local,
            peer,
            conn: OnceLock::new(),
            state: Mutex::new(state),
            tcp_tx: AtomicU64::new(0),
            tcp_rx: AtomicU64::new(0),
            early: Mutex::new(Vec::new()),
            timestamp: std::sync::atomic::AtomicU8::new(0),
            fds: Mutex::new(FdList::default()),
            fork_mark: AtomicU64::new(0),
            late: OnceLock::new(),
        }
    }

    pub fn nonblocking(&self) -> bool {
        self.nonblock.load(Relaxed)
    }

    pub fn rcvtimeo(&self) -> Option<Duration> {
        match self.rcvtimeo_ns.load(Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    pub fn sndtimeo(&self) -> Option<Duration> {
        match self.sndtimeo_ns.load(Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The fallback reason, if this flagged connection stays on TCP.
    pub fn tcp_reason(&self) -> Option<Reason> {
        match &*self.state.lock().ok()? {
            State::Tcp(r) => Some(*r),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::FdList;

    #[test]
    fn fd_list_keeps_the_oldest_first() {
        let mut l = FdList::default();
        assert_eq!(l.first(), None);
        assert!(!l.contains(0) && !l.contains(-1));
        l.add(0);
        l.add(0);
        assert_eq!(l.first(), Some(0));
        l.add(7);
        l.add(3);
        assert!(l.contains(7) && l.contains(3) && !l.contains(4));
        l.remove(7);
        assert_eq!(l.first(), Some(0));
        l.remove(0);
        assert_eq!(l.first(), Some(3));
        l.remove(3);
        assert_eq!(l.first(), None);
        l.add(5);
        assert_eq!(l.first(), Some(5));
    }
}
