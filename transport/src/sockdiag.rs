//! A socket's identity (its inode and network namespace), and the kernel's word on which sockets
//! listen: `fabric::sockdiag` (NETLINK_SOCK_DIAG), which the host fabric service uses too. It never
//! reads a socket's bytes, only what the kernel says about it.

use std::io;
use std::os::fd::RawFd;

pub use crate::proto::SocketId;
pub use fabric::sockdiag::{is_listening, is_listening_at, listening, netns, reached_at};

/// The socket `fd` refers to, in this process's network namespace.
pub fn socket_id(fd: RawFd) -> io::Result<SocketId> {
    Ok(SocketId {
        inode: crate::sys::inode(fd).ok_or_else(io::Error::last_os_error)?,
        netns: netns()?,
    })
}
