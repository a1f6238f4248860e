//! A reply that arrives truncated (its descriptors dropped by the kernel at the process's
//! open-file limit, or its bytes cut) fails the request it answers and only that one: a client
//! waiting for another reply meanwhile gets that reply. Played against a stand-in service that
//! sends the truncated message on purpose.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fabric::wire::{Reply, Request, WireError};
use fabric::{sys, Client, ClientError};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The next message on `sock`, waiting up to 5 s.
fn next(sock: &OwnedFd) -> sys::Received {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sys::recv_msg(sock.as_raw_fd()) {
            Ok(Some(m)) => return m,
            Ok(None) => panic!("the client hung up"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no request from the client");
                let _ = sys::poll_in(&[sock.as_raw_fd()], 100);
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// A message with a well-formed header for request `id` and more bytes than any message may
/// have: the client reads it cut.
fn oversized(id: u64) -> Vec<u8> {
    let mut b = Reply::Done.encode(id);
    b.resize(fabric::wire::MAX_MESSAGE + 100, 0);
    b
}

#[test]
fn a_truncated_reply_fails_only_its_own_request() {
    let dir = Dir(std::env::temp_dir().join(format!("pcisock-truncated-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("fabric.sock");
    let listener = sys::listen_unix(&path).unwrap();
    let service = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        let sock = loop {
            if let Some(s) = sys::accept_unix(listener.as_raw_fd()).unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the client never connected");
            let _ = sys::poll_in(&[listener.as_raw_fd()], 100);
        };
        let reply = |r: Reply, id: u64| sys::send_msg(sock.as_raw_fd(), &r.encode(id), &[]);
        let m = next(&sock);
        let (_, hello) = Request::decode(&m.bytes, m.fds.len()).unwrap();
        let welcome = Reply::Welcome {
            service_pid: 1,
            ring_bytes: 4096,
            window_bytes: 1 << 20,
            line: 1,
        };
        reply(welcome, hello).unwrap();
        // The first `Listen` is answered after a truncated message for a request the client
        // is not waiting for; the second `Listen`'s own answer arrives truncated. (The
        // `Namespace` the client sends before its first `Listen` is one-way.)
        for round in 0..2 {
            let id = loop {
                let m = next(&sock);
                match Request::decode(&m.bytes, m.fds.len()).unwrap() {
                    (Request::Listen, id) => break id,
                    (Request::Namespace, _) => continue,
                    (r, _) => panic!("unexpected {r:?}"),
                }
            };
            if round == 0 {
                sys::send_msg(sock.as_raw_fd(), &oversized(id + 1000), &[]).unwrap();
                reply(Reply::Listening { listener: 7 }, id).unwrap();
            } else {
                sys::send_msg(sock.as_raw_fd(), &oversized(id), &[]).unwrap();
            }
        }
        // Keep the connection until the client is done.
        let _ = sys::poll_in(&[sock.as_raw_fd()], 5000);
    });
    let mut c = Client::connect(&path).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Another request's reply came cut while this one waited: this one is answered.
    assert_eq!(c.listen(l.as_raw_fd()).unwrap(), 7);
    // Its own reply cut: it fails, at once, with what happened.
    let t0 = Instant::now();
    match c.listen(l.as_raw_fd()) {
        Err(ClientError::Wire(WireError::Truncated)) => {}
        other => panic!("a truncated reply gave {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "it waited for a reply"
    );
    drop(c);
    service.join().unwrap();
}
