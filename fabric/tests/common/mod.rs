//! What the service's tests share: a service of their own on a thread, and the offers they make.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use fabric::{Client, Options};
use socket2::{Domain, Socket, Type};

pub struct Running {
    pub socket: PathBuf,
    _dir: TempDir,
}

pub struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn start(opts: Options) -> Running {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pcisock-fabric-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let socket = dir.join("fabric.sock");
    let bound = fabric::bind(&socket).expect("bind");
    std::thread::spawn(move || bound.serve(opts));
    Running {
        socket,
        _dir: TempDir(dir),
    }
}

pub fn v4(a: &SocketAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[10] = 0xff;
    b[11] = 0xff;
    match a {
        SocketAddr::V4(a) => b[12..].copy_from_slice(&a.ip().octets()),
        SocketAddr::V6(_) => unreachable!("the tests use IPv4"),
    }
    b
}

/// A client socket, offered, then connected; the server's accepted stream.
pub fn offer_and_connect(
    c: &mut Client,
    to: SocketAddr,
    l: &TcpListener,
) -> (fabric::Offer, Socket, TcpStream) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let offer = c
        .offer(s.as_raw_fd(), v4(&to), to.port(), 1 << 20)
        .expect("offer")
        .expect("a listener is published");
    s.connect(&to.into()).unwrap();
    let (accepted, _) = l.accept().unwrap();
    (offer, s, accepted)
}

/// A paired end's segment: its arena's inode and its offset there.
pub fn segment_of(p: &fabric::Paired) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::File::from(p.segment.try_clone().unwrap())
        .metadata()
        .unwrap();
    (meta.ino(), p.offset)
}

/// A paired end's segment mapped, as a process maps it: its range of the arena.
pub fn map_segment(p: &fabric::Paired) -> memmap2::MmapMut {
    let len = fabric::service::segment_bytes(p.ring_bytes) as usize;
    // SAFETY: a test mapping of a segment the service made for this test's connection.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(p.offset)
            .len(len)
            .map_mut(p.segment.as_raw_fd())
            .expect("map segment")
    }
}

/// A service in a process of its own: this test binary again, running only the ignored test
/// `helper` (which serves on `PCISOCK_TEST_SOCKET`); killed when dropped.
pub struct Spawned {
    pub child: std::process::Child,
    pub socket: PathBuf,
    dir: PathBuf,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn spawn_service(helper: &str) -> Spawned {
    let dir = std::env::temp_dir().join(format!("pcisock-{helper}-{}", std::process::id()));
    let socket = dir.join("fabric.sock");
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", helper, "--nocapture"])
        .env("PCISOCK_TEST_SOCKET", &socket)
        .spawn()
        .unwrap();
    let svc = Spawned { child, socket, dir };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !svc.socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service never bound"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    svc
}

/// Wait until the service reclaimed `n` connections (closes are one-way).
pub fn reclaimed(c: &mut Client, n: u64) {
    let t0 = std::time::Instant::now();
    while c.status().unwrap().reclaimed < n {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "the closes were never read"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A connection paired between `client` and `server` with rings of `ring`, each end's
/// pairing resolved to its descriptors by `resolve` (given the end's client, the pairing and
/// whether it is the server end): (server end, client end, the client's socket, the server's).
pub fn pair_with(
    server: &mut Client,
    client: &mut Client,
    l: &TcpListener,
    ring: u64,
    resolve: impl Fn(&mut Client, fabric::Pairing, bool) -> fabric::Paired,
) -> (fabric::Paired, fabric::Paired, Socket, TcpStream) {
    let (mut offer, csock, accepted) = offer_and_connect(client, l.local_addr().unwrap(), l);
    let s = server.accept(accepted.as_raw_fd(), ring).unwrap();
    let s = resolve(server, s, true);
    let c = client
        .paired(&mut offer, std::time::Duration::from_secs(5))
        .unwrap();
    let c = resolve(client, c.expect("the client was not paired"), false);
    (s, c, csock, accepted)
}
