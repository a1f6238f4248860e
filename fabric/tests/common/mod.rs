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
