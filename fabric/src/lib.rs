//! The host fabric service: the one owner of a host's NTB fabric, shared by every user and
//! every process on the host (docs/HOST-SERVICE.md).
//!
//! Processes ask it, over a Unix socket, to publish listeners and to pair connections; they
//! prove every claim by handing over the TCP socket itself, and the service reads the
//! connection's addresses and network namespace from the kernel. A pair gets its own memory
//! (one sealed segment holding both ends' blocks), passed as a descriptor to its two processes
//! only, with the interrupt line of each (one per process, shared by its connections). The service is never on the data path. [`wire`] is the request codec (pure);
//! [`service`] the service; [`client`] the process side. This crate knows sockets but nothing
//! of LD_PRELOAD.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod client;
pub mod service;
pub mod sockdiag;
pub mod sys;
pub mod wire;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use client::{
    Again, Bridged, Client, ClientError, Held, Line, Offer, Paired, Pairing, Stalled,
};
pub use service::{Options, Service};

/// A bound service socket, with the lock that makes its holder the only service on that path.
pub struct Bound {
    pub socket: PathBuf,
    pub listener: OwnedFd,
    _lock: std::fs::File,
}

/// Why a service could not start.
#[derive(Debug)]
pub enum StartError {
    /// Another service holds the path (it answers there).
    Running(PathBuf),
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Running(p) => write!(f, "a fabric service already runs at {}", p.display()),
            StartError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

/// Bind the service socket at `socket`: its directory is created (0755 for the system
/// service under /run, 0700 otherwise: a user's service serves that user only), a lock file
/// beside it makes sure one service owns the path, a stale socket left by a dead service is
/// replaced, and the socket is made connectable by every user the directory lets in.
pub fn bind(socket: &Path) -> Result<Bound, StartError> {
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |e| StartError::Io(p, e)
    };
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let system = dir.starts_with("/run") && sys::getuid() == 0;
    let mode = if system { 0o755 } else { 0o700 };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(err(dir))?;
    }
    let lock_path = socket.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(err(&lock_path))?;
    if !try_lock(&lock) {
        return Err(StartError::Running(socket.to_path_buf()));
    }
    // We hold the lock: whatever socket file is there belongs to a service that is gone.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StartError::Io(socket.to_path_buf(), e)),
    }
    let listener = sys::listen_unix(socket).map_err(err(socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(err(socket))?;
    Ok(Bound {
        socket: socket.to_path_buf(),
        listener,
        _lock: lock,
    })
}

fn try_lock(f: &std::fs::File) -> bool {
    sys::try_flock(f.as_raw_fd())
}

impl Bound {
    /// Serve until stopped, then remove the socket.
    pub fn serve(self, opts: Options) -> io::Result<()> {
        self.serve_bridged(opts, None)
    }

    /// Serve until stopped, pairing across the bridge of `bridge` too (this host's side of a
    /// two-host device: the other host's service meets this one there).
    pub fn serve_bridged(
        self,
        opts: Options,
        bridge: Option<std::sync::Arc<dyn ntbdrv::NtbDevice>>,
    ) -> io::Result<()> {
        let Bound {
            socket,
            listener,
            _lock,
        } = self;
        let mut s = Service::new(listener, opts);
        if let Some(dev) = bridge {
            s.attach_bridge(dev)?;
        }
        let r = s.run();
        let _ = std::fs::remove_file(&socket);
        r
    }
}
