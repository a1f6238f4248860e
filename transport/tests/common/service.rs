//! A host fabric service of a test's own, on a thread (its descriptors are the test process's),
//! a transport that meets its peers through it, and a whole message sent and received.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use transport::{Connection, Settings, Transport};

pub const NB: transport::RecvFlags = transport::RecvFlags {
    nonblock: true,
    peek: false,
    waitall: false,
};

pub struct Service {
    socket: PathBuf,
    dir: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fabric service of this test's own, on a thread (its descriptors are this process's).
pub fn service() -> Service {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pcisock-shared-page-{}-{}",
        std::process::id(),
        N.fetch_add(1, Relaxed)
    ));
    let socket = dir.join("fabric.sock");
    let bound = fabric::bind(&socket).expect("bind");
    std::thread::spawn(move || bound.serve(fabric::Options::default()));
    Service { socket, dir }
}

pub fn transport(s: &Service, ring: u64) -> Transport {
    let settings = Settings {
        ring_bytes: ring,
        ..Settings::default()
    };
    Transport::open_service(&s.socket, None, settings).expect("the service answers")
}

/// Send `msg` from `from` and receive it at `to`, in as many calls as the rings take.
pub fn exchange(from: &Connection, to: &Connection, msg: &[u8]) {
    let mut sent = 0;
    let mut b = vec![0u8; msg.len()];
    let mut got = 0;
    while got < msg.len() {
        if sent < msg.len() {
            match from.send(&[&msg[sent..]], true, None) {
                Ok(n) => sent += n,
                Err(transport::IoError::WouldBlock) => {}
                Err(e) => panic!("send: {e:?}"),
            }
        }
        match to.recv(&mut [&mut b[got..]], NB, None) {
            Ok(n) => got += n,
            Err(transport::IoError::WouldBlock) => {}
            Err(e) => panic!("recv: {e:?}"),
        }
    }
    assert_eq!(&b[..], msg);
}
