//! Whether a listener entry of this host still lives: by its kernel listening socket
//! (NETLINK_SOCK_DIAG) when the kernel can tell, else by the process that published it. Used by
//! the rendezvous area's look for a listener, its claim of a slot and its sweep. It only asks,
//! never changes a table; and it never calls dead a socket missing from a list older than its
//! read of that socket.

use crate::proto::{Endpoint, SocketId};
use crate::sockdiag;

/// Judges listener entries of this host: by their listening socket when the kernel can tell
/// us (the socket is known and in our network namespace), else by the publishing process. The
/// kernel's list of listening sockets is asked on first need, and again for a socket not in it.
pub(super) struct Liveness {
    /// The address a client connects to (16 bytes, IPv4-mapped) and its port, if any.
    at: Option<([u8; 16], u16)>,
    port: Option<u16>,
    netns: std::cell::OnceCell<Option<u64>>,
    listening: std::cell::RefCell<Option<Vec<u64>>>,
}

impl Liveness {
    pub(super) fn new(at: Option<&Endpoint>) -> Liveness {
        Liveness {
            at: at.map(|e| (e.ip, e.port)),
            port: at.map(|e| e.port),
            netns: std::cell::OnceCell::new(),
            listening: Default::default(),
        }
    }

    /// Does the listener published by `pid` (started at `start`) on `socket` still live?
    pub(super) fn listener(&self, pid: u32, start: u64, socket: SocketId) -> bool {
        if socket.inode == 0 {
            return ntbdrv::process::alive(pid, start);
        }
        // A client's connect: the listener its connection would reach is this socket (the
        // common case, one lookup). A socket inode is unique across namespaces, so a hit needs
        // no namespace check.
        if let Some((ip, port)) = self.at {
            if sockdiag::reached_at(socket.inode, &ip, port).unwrap_or(false) {
                return true;
            }
        }
        // Otherwise the kernel's LISTEN table can only judge a socket of our namespace.
        let ours = *self.netns.get_or_init(|| sockdiag::netns().ok()) == Some(socket.netns);
        if ours {
            let mut list = self.listening.borrow_mut();
            if list.as_ref().is_some_and(|l| l.contains(&socket.inode)) {
                return true;
            }
            // Not in a list asked for before `socket` was read: that list may predate the
            // listen (a socket is recorded once the kernel listens on it; a sweep in another
            // process withdrew such live listeners). Ask again now.
            // SYNC POINT (listener socket): the Acquire load that read `socket` pairs with its
            // Release store in `set_listener_socket`, made after the kernel listened.
            if let Ok(now) = sockdiag::listening(self.port) {
                let live = now.contains(&socket.inode);
                *list = Some(now);
                return live;
            }
        }
        ntbdrv::process::alive(pid, start)
    }
}
