//! Connections that have not reached their server: the listener's queue overflowed, the kernel
//! dropped the handshake's last segment (or answered with a SYN cookie, as it does under a
//! burst of connects), and it makes the server's socket only when a segment of the client's
//! arrives. On TCP the client's request is that segment; a pcisock client holds its first bytes
//! until its offer is answered, so before, its offer waited for a server that could never
//! accept it and the connection stayed on TCP (`NoAnswer` on the client, `NoOffer` on the
//! server: 1,000–1,700 of 8,000 wrk connections against nginx's default backlog). Now the
//! service says so (`Unreached`), the client sends its first bytes on TCP to reach the server
//! (their count told to the server's end through the pairing) and the rest of the stream
//! crosses on the NTB path (docs/HOST-SERVICE.md, *Unreached connections*).
//!
//! Made deterministic in a namespace of the test's own: SYN cookies always on, and every pure
//! ACK from the client to the server's port dropped (nftables), so the server's side of the
//! connection exists only once the client's first data segment arrives.

use super::namespaces::Netns;
use super::*;

/// A namespace where a connection to `port` reaches its listener only with the client's first
/// data segment (see the module's comment).
fn overflowing(name: &str, port: u16) -> Netns {
    let ns = Netns::new(name);
    let run = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut c = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("ip netns exec {args:?}: {e}"));
        if let Some(text) = stdin {
            c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success(), "{args:?} failed");
    };
    run(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"], None);
    let rules = format!(
        "table inet pcisock_test {{\n  chain out {{\n    type filter hook output priority 0;\n    \
         tcp dport {port} tcp flags == ack meta length < 64 drop\n  }}\n}}\n"
    );
    run(&["nft", "-f", "-"], Some(&rules));
    ns
}

/// An event loop's client (Python `selectors`, epoll): a non-blocking connect, then sends of the
/// marker whenever the socket is writable, until `n` bytes; then it waits for the server's
/// "ok". A pending offer reports nothing to epoll until its answer, so before the fix the loop
/// never wrote and the offer's answer, which needs its bytes, never came.
const EPOLL_CLIENT: &str = r#"
import os, selectors, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
marker = os.environ["HM_MARKER"].encode()
chunk = marker * (65536 // len(marker) + 1)
s = socket.socket(); s.setblocking(False)
try:
    s.connect(("127.0.0.1", port))
except BlockingIOError:
    pass
sel = selectors.DefaultSelector(); sel.register(s, selectors.EVENT_WRITE)
sent = 0
while sent < n:
    assert sel.select(30), "never writable"
    off = sent % len(marker)
    try:
        sent += s.send(chunk[off : off + min(65536, n - sent)])
    except BlockingIOError:
        pass
s.shutdown(socket.SHUT_WR)
sel.modify(s, selectors.EVENT_READ)
got = b""
while not got.endswith(b"ok"):
    assert sel.select(30), "no answer"
    try:
        b = s.recv(16)
    except BlockingIOError:
        continue
    assert b, "closed before ok"
    got += b
print("sent", sent, flush=True)
"#;

/// A client (16 MiB, blocking sends, or `epoll`: an event loop's) and a server in such a
/// namespace, both strict, through a service: the connection pairs after the client's first
/// bytes reached the server, and the namespace's lo carries only those (and the handshake): the
/// rest crossed on the ring. `shape`: the server's (`plain`: blocking accept, answered inside
/// it; `announce`: a non-blocking accept, completed at the connection's first use).
/// `answer_timeout_ms`: the client's `PCISOCK_ANSWER_TIMEOUT_MS`, if set.
fn reach(name: &str, shape: &str, epoll: bool, answer_timeout_ms: Option<u64>) {
    let f = Fixture::new(name);
    let svc = Service::start(&f);
    let prog = py(&f).display().to_string();
    let port = free_port();
    let port_s = port.to_string();
    let ns = overflowing(name, port);
    let go = f.dir().join("go");
    fs::write(&go, b"").unwrap();
    let go_s = go.display().to_string();
    let senv = svc
        .env(&f, "server", port)
        .marked(&marker_of(&f))
        .with_strict(true);
    let mut args = vec![
        "netns",
        "exec",
        &ns.0,
        "/usr/bin/python3",
        &prog,
        "server",
        &port_s,
        shape,
        "1",
    ];
    if shape == "announce" {
        args.push(&go_s);
    }
    let mut s = check(
        Proc::spawn("server", command("ip", &args, Some(&senv)), f.dir()),
        &[],
    );
    check(
        s.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&s],
    );
    let before = ns.lo_tx();
    let mut cenv = svc
        .env(&f, "client", port)
        .marked(&marker_of(&f))
        .with_strict(true);
    if let Some(ms) = answer_timeout_ms {
        cenv.extra
            .push(("PCISOCK_ANSWER_TIMEOUT_MS".into(), ms.to_string()));
    }
    let n = (16 * MIB).to_string();
    let mut cargs = vec!["netns", "exec", &ns.0, "/usr/bin/python3"];
    if epoll {
        cargs.extend(["-c", EPOLL_CLIENT, &port_s, &n]);
    } else {
        cargs.extend([prog.as_str(), "client", &port_s, &n]);
    }
    let mut c = check(
        Proc::spawn("client", command("ip", &cargs, Some(&cenv)), f.dir()),
        &[],
    );
    check(c.wait_success(Duration::from_secs(60)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(20)), &[&s]);
    assert!(
        s.stdout().contains(&format!("got {}", 16 * MIB)),
        "server: {}",
        s.stdout()
    );
    let lo = ns.lo_tx() - before;
    assert!(
        lo < QUIET,
        "{lo} bytes crossed lo while 16 MiB moved: the stream went over TCP"
    );
    for (who, e) in [("client", &cenv), ("server", &senv)] {
        let st = e.stats().unwrap_or_else(|e| panic!("{who} stats: {e}"));
        assert_eq!(
            (st.ntb_connections, st.tcp_connections),
            (1, 0),
            "{who}: {st:?}"
        );
    }
    assert_eq!(svc.count("paired"), 1);
}

#[test]
fn a_connection_that_has_not_reached_its_server_sends_its_first_bytes_and_pairs() {
    reach("hm_unreached", "plain", false, None);
}

#[test]
fn an_unreached_connection_pairs_with_a_non_blocking_accept_too() {
    reach("hm_unreached_nb", "announce", false, None);
}

/// An event loop's client is told its unreached connection is writable, writes, and pairs.
#[test]
fn an_event_loops_unreached_connection_is_writable_and_pairs() {
    reach("hm_unreached_ep", "announce", true, None);
}

/// The client asks whether its connection stalled once early (TCP's least retransmission
/// timeout), not only after its answer timeout: with an answer timeout of two minutes the
/// unreached connection still pairs within the test's minute (before, the event loop's client
/// was told nothing, and so wrote nothing, for the two minutes).
#[test]
fn an_unreached_connection_is_told_early_whatever_the_answer_timeout() {
    reach("hm_unreached_early", "announce", true, Some(120_000));
    reach("hm_unreached_early_b", "plain", false, Some(120_000));
}
