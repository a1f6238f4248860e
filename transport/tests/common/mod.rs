//! What the end-to-end tests over the emulated device share (loopback.rs, upgrade.rs,
//! hostile_frames.rs, linkfault.rs): a private device, a transport over it, connected pairs.
#![allow(dead_code)]

pub mod service;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use ntbdrv::emu::{Config, EmuDevice, Options};
use ntbdrv::NtbDevice;
use socket2::{Domain, Socket, Type};
use transport::{Connection, Endpoint, Outcome, Pending, Reason, RecvFlags, Settings, Transport};

pub struct Dir(pub std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn device(tag: &str) -> (Dir, Arc<dyn NtbDevice>) {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!("transport-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    let opts = Options {
        dir: p.clone(),
        name: "lo".into(),
        side: 0,
        config: Config {
            mw_size: 16 << 20,
            ..Config::default()
        },
    };
    let dev = EmuDevice::open(&opts).unwrap();
    (Dir(p), Arc::new(dev))
}

/// Side `side` of a two-host device in `dir` (made by the first caller).
pub fn two_host(dir: &std::path::Path, side: u32) -> Arc<dyn NtbDevice> {
    let opts = Options {
        dir: dir.to_path_buf(),
        name: "th".into(),
        side,
        config: Config {
            topology: ntbdrv::emu::Topology::TwoHost,
            mw_size: 16 << 20,
            ..Config::default()
        },
    };
    Arc::new(EmuDevice::open(&opts).unwrap())
}

pub fn transport(dev: &Arc<dyn NtbDevice>, ring: u64) -> Transport {
    Transport::open(
        dev.clone(),
        Settings {
            ring_bytes: ring,
            ..Settings::default()
        },
    )
    .unwrap()
}

pub type Pair = (Connection, Connection, Socket, std::net::TcpStream);

/// A connected pair: (client connection, server connection, the kernel sockets).
pub fn pair(t: &Transport) -> Pair {
    connect_pair(t).unwrap_or_else(|e| panic!("{e}"))
}

/// A pair, or why the upgrade did not happen.
pub fn connect_pair(t: &Transport) -> Result<Pair, String> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let listener = t
        .listen(l.as_raw_fd(), Endpoint::from_std(server_addr))
        .unwrap();
    let r = upgrade(t, &l);
    t.unlisten(listener);
    r
}

/// Connect to `l` (a pcisock listener is registered for it) and upgrade both ends.
pub fn upgrade(t: &Transport, l: &TcpListener) -> Result<Pair, String> {
    let server_addr = l.local_addr().unwrap();
    let (s, _, pending) = offer_from(t, server_addr).map_err(|r| format!("offer: {r}"))?;
    let upgraded = (|| {
        s.connect(&server_addr.into()).unwrap();
        let (srv, peer) = l.accept().unwrap();
        let sc = t.accept(
            srv.as_raw_fd(),
            Endpoint::from_std(server_addr),
            Endpoint::from_std(peer),
        );
        let cc = match t.complete(pending, s.as_raw_fd(), true, 0) {
            Outcome::Connected(c) => c,
            Outcome::Tcp(r) => return Err(format!("client stayed on TCP: {r}")),
            Outcome::Waiting(_) => return Err("blocking completion returned Waiting".into()),
        };
        let sc = sc.map_err(|r| format!("server stayed on TCP: {r}"))?;
        Ok((cc, sc, srv))
    })();
    upgraded.map(|(cc, sc, srv)| (cc, sc, s, srv))
}

/// A client socket bound to an ephemeral port with its offer to `server` posted (not yet
/// connected): the socket, its address, and the pending offer.
pub fn offer_from(
    t: &Transport,
    server: SocketAddr,
) -> Result<(Socket, SocketAddr, Pending), Reason> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let local = s.local_addr().unwrap().as_socket().unwrap();
    let p = t.offer(
        Endpoint::from_std(local),
        Endpoint::from_std(server),
        s.as_raw_fd(),
    )?;
    Ok((s, local, p))
}
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}
/// The victim's endpoint block as its peer reaches it: through the peer's outbound window
/// (`peer` is the victim's peer connection, which knows where the victim's ring is).
pub fn victims_block(dev: &Arc<dyn NtbDevice>, peer: &Connection) -> ntbdrv::Region {
    let loc = peer.peer_ring();
    dev.outbound(loc.mw)
        .unwrap()
        .slice(loc.offset as usize, loc.len as usize)
        .unwrap()
}

/// Run `f` on another thread and fail the test if it does not return within a generous bound
/// (a watchdog for hangs, not a timing assertion: the calls under test never sleep this long).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not return: the victim hangs"))
}

pub const NONBLOCK: RecvFlags = RecvFlags {
    nonblock: true,
    peek: false,
    waitall: false,
};
