//! Two hosts, each with its own host fabric service (docs/HOST-SERVICE.md, phase 3): two
//! network namespaces joined by a veth, one side each of the emulated two-host device, and in
//! each a service started with `--bridge`. The processes ask only their own service
//! (`PCISOCK_FABRIC=SOCKET`); the two services meet through the bridge.

use super::namespaces::{Netns, Veth};
use super::*;

const SERVER: &str = r#"
import hashlib, os, socket, sys, time
port, addr, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr, port)); l.listen(4); print("listening", flush=True)
c, _ = l.accept(); h = hashlib.sha256(); n = 0
if mode == "fork" and os.fork() != 0:
    os._exit(0)  # the parent goes at once; its child serves (and holds the end after)
end = "eof"
while True:
    try:
        b = c.recv(1 << 20)
    except ConnectionResetError:
        end = "reset"
        break
    if not b:
        break
    if n == 0:
        print("first", flush=True)
    h.update(b); n += len(b)
print("end", end, n, flush=True)
if mode in ("sha", "fork"):
    c.sendall(("%d %s" % (n, h.hexdigest())).encode())
if mode == "fork":
    c.shutdown(socket.SHUT_WR)  # the client reads its answer to the end and goes
    time.sleep(4)
    print("closing", flush=True)
c.close()
"#;

const CLIENT: &str = r#"
import hashlib, socket, sys, time
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
block = bytes((i * 7 + 3) % 251 for i in range(1 << 20)); h = hashlib.sha256()
s = socket.create_connection(("10.198.0.2", port))
for _ in range(n >> 20):
    s.sendall(block); h.update(block)
    if mode == "paced":
        time.sleep(0.005)
if mode == "hold":
    print("sent", flush=True)
    time.sleep(600)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(256)
    if not b:
        break
    got += b
want = "%d %s" % (n, h.hexdigest())
print("server says", got.decode(), flush=True)
sys.exit(0 if got.decode() == want else 1)
"#;

/// Two hosts: namespaces, the veth between them, a service each.
struct TwoServices {
    a: Netns,
    b: Netns,
    veth: Veth,
    svc_a: Service,
    svc_b: Service,
}

impl TwoServices {
    fn new(f: &Fixture, name: &str) -> TwoServices {
        let (a, b) = (
            Netns::new(&format!("{name}-a")),
            Netns::new(&format!("{name}-b")),
        );
        let veth = Veth::new(&a, &b, "10.198.0", name);
        let svc_a = Service::start_bridged(f, "fabric_a", &a.0, 0);
        let svc_b = Service::start_bridged(f, "fabric_b", &b.0, 1);
        TwoServices {
            a,
            b,
            veth,
            svc_a,
            svc_b,
        }
    }

    /// A process of host `host` (0: a, 1: b) as `user`, running `code` with `args`, asking
    /// only its own host's service.
    #[allow(clippy::too_many_arguments)] // one process's whole description
    fn spawn(
        &self,
        f: &Fixture,
        name: &str,
        host: u32,
        user: &str,
        code: &str,
        args: &[&str],
        env: &PreloadEnv,
    ) -> Proc {
        let ns = if host == 0 { &self.a.0 } else { &self.b.0 };
        let mut v = vec!["netns", "exec", ns.as_str()];
        let reuid = format!("--reuid={user}");
        if user != "root" {
            v.extend([
                "setpriv",
                reuid.as_str(),
                "--regid=nogroup",
                "--clear-groups",
            ]);
        }
        v.extend(["/usr/bin/python3", "-c", code]);
        v.extend_from_slice(args);
        check(
            Proc::spawn(name, command("ip", &v, Some(env)), f.dir()),
            &[],
        )
    }

    /// The env of a process of host `host` on flagged port `port`.
    /// A server (`SERVER` with `args`) on the second host as `user`, listening, and its
    /// listener known on the client's host (the services' next look at the bridge).
    fn serve(&self, f: &Fixture, name: &str, user: &str, args: &[&str], env: &PreloadEnv) -> Proc {
        let mut s = self.spawn(f, name, 1, user, SERVER, args, env);
        check(
            s.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
            &[&s],
        );
        std::thread::sleep(Duration::from_millis(400));
        s
    }

    fn env(&self, f: &Fixture, role: &str, host: u32, port: u16, strict: bool) -> PreloadEnv {
        let svc = if host == 0 { &self.svc_a } else { &self.svc_b };
        let mut e = svc.env(f, role, port).with_strict(strict);
        e.extra.extend(Service::device_env(f, host));
        e
    }
}

/// A client on one host sends 16 MiB to a server on the other, both strict and both asking
/// only their own host's service: the two services pair them through the bridge, both ends'
/// stats say NTB, the veth between the hosts carries only the TCP handshake, and each service
/// counts one pairing. Before phase 3 a service paired within its own host only (and had no
/// `--bridge`): the strict client failed.
#[test]
fn two_services_pair_a_connection_across_the_bridge() {
    let f = Fixture::new("hm_bridged");
    py(&f);
    let h = TwoServices::new(&f, "hm-br");
    let port = free_port();
    let port_s = port.to_string();
    let senv = h.env(&f, "server", 1, port, true);
    let mut s = h.serve(&f, "server", "root", &[&port_s, "10.198.0.2", "sha"], &senv);
    let before = h.veth.bytes();
    let cenv = h.env(&f, "client", 0, port, true);
    let n = (16 * MIB).to_string();
    let mut c = h.spawn(
        &f,
        "client",
        0,
        "root",
        CLIENT,
        &[&port_s, &n, "sha"],
        &cenv,
    );
    check(c.wait_success(Duration::from_secs(60)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(20)), &[&s]);
    let carried = h.veth.bytes() - before;
    assert!(
        carried < QUIET,
        "the veth carried {carried} bytes while 16 MiB crossed: the payload went over TCP"
    );
    let stats = |e: &PreloadEnv| e.stats().unwrap_or_else(|e| panic!("stats: {e}"));
    for st in [stats(&cenv), stats(&senv)] {
        assert_eq!(
            st.on_port(port).filter(|c| c.path == "ntb").count(),
            1,
            "{st:?}"
        );
    }
    assert_eq!(h.svc_a.count("paired"), 1);
    assert_eq!(h.svc_b.count("paired"), 1);
    // Both ends closed: each service gave its end's window space back.
    let t0 = Instant::now();
    while h.svc_a.count("connections") + h.svc_b.count("connections") > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the services still hold the connection: a {:?}, b {:?}",
            h.svc_a.status(),
            h.svc_b.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client killed mid-connection (SIGKILL: nothing of it closes anything) gives the server on
/// the other host end-of-file or ECONNRESET within about a second, and both services give the
/// connection's window space back.
#[test]
fn a_killed_client_on_one_host_ends_its_servers_connection_on_the_other() {
    let f = Fixture::new("hm_bridged_kill");
    py(&f);
    let h = TwoServices::new(&f, "hm-brk");
    let port = free_port();
    let port_s = port.to_string();
    let senv = h.env(&f, "server", 1, port, true);
    let mut s = h.serve(&f, "server", "root", &[&port_s, "10.198.0.2", "eof"], &senv);
    let cenv = h.env(&f, "client", 0, port, true);
    let n = (4 * MIB).to_string();
    let mut c = h.spawn(
        &f,
        "client",
        0,
        "root",
        CLIENT,
        &[&port_s, &n, "hold"],
        &cenv,
    );
    check(
        c.wait_stdout(Duration::from_secs(30), |o| o.contains("sent")),
        &[&c, &s],
    );
    check(
        s.wait_stdout(Duration::from_secs(10), |o| o.contains("first")),
        &[&c, &s],
    );
    assert_eq!(h.svc_a.count("paired"), 1, "not paired across the bridge");
    // Each service lists its own end with its counters (read from the end's block in its
    // inbound window), the other end as on the other host.
    let (ca, sb) = (h.svc_a.ends(), h.svc_b.ends());
    // (the client sent its 4 MiB; the server read at least its first bytes)
    let mine = |ends: &[(u32, String, String, u64, u64)], role: &str, pid: u32, least: u64| {
        ends.iter()
            .any(|e| e.0 == pid && e.1 == role && e.2 == "ntb" && e.3 + e.4 >= least)
            && ends.iter().any(|e| e.0 == 0 && e.1 != role)
    };
    assert!(
        mine(&ca, "client", c.pid(), 4 * MIB) && mine(&sb, "server", s.pid(), 1),
        "pcisock stats through the services does not show each end's bytes: a {ca:?}, b {sb:?}"
    );
    let t0 = Instant::now();
    let ok = Command::new("kill")
        .args(["-KILL", &c.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    check(
        s.wait_stdout(Duration::from_secs(5), |o| o.contains("end ")),
        &[&s],
    );
    let took = t0.elapsed();
    eprintln!(
        "the server saw the client's death after {took:?}: {}",
        s.stdout().trim()
    );
    assert!(
        took < Duration::from_millis(1500),
        "the server saw its client's death after {took:?}\n{}",
        s.describe()
    );
    check(s.wait_success(Duration::from_secs(10)), &[&s]);
    let t0 = Instant::now();
    while h.svc_a.count("connections") + h.svc_b.count("connections") > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the services still hold the dead client's connection: a {:?}, b {:?}",
            h.svc_a.status(),
            h.svc_b.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.terminate();
}

/// A client that is neither root nor in group pcisock (nobody) is not paired across the
/// bridge: the bridge can only be mapped whole, with every connection of the host in it. Its
/// service declines it with `Untrusted`, its stats say so, and its bytes cross the veth over
/// TCP (the server, not strict, reads them all).
#[test]
fn an_untrusted_client_stays_on_tcp_with_its_reason() {
    let f = Fixture::new("hm_bridged_untrusted");
    py(&f);
    let h = TwoServices::new(&f, "hm-bru");
    let port = free_port();
    let port_s = port.to_string();
    let senv = h.env(&f, "server", 1, port, false);
    let mut s = h.serve(&f, "server", "root", &[&port_s, "10.198.0.2", "sha"], &senv);
    let before = h.veth.bytes();
    let cenv = h.env(&f, "client", 0, port, false);
    let n = (4 * MIB).to_string();
    let mut c = h.spawn(
        &f,
        "client",
        0,
        "nobody",
        CLIENT,
        &[&port_s, &n, "sha"],
        &cenv,
    );
    check(c.wait_success(Duration::from_secs(60)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(20)), &[&s]);
    let carried = h.veth.bytes() - before;
    assert!(
        carried > 4 * MIB,
        "the veth carried {carried} bytes of 4 MiB: where did they go?"
    );
    let st = cenv.stats().unwrap_or_else(|e| panic!("stats: {e}"));
    st.check_tcp(port, 1, |r| r == "Untrusted")
        .unwrap_or_else(|e| panic!("{e}\n{st:?}"));
    assert_eq!(h.svc_a.count("paired") + h.svc_b.count("paired"), 0);
}

/// Both services killed (SIGKILL) while a connection they paired across the bridge streams:
/// its memory is the device's, mapped by its two processes, and nothing on the data path asks
/// a service, so the stream finishes intact on the NTB path (SHA-256 checked, the veth quiet).
#[test]
fn services_killed_mid_stream_leave_the_connection_running() {
    let f = Fixture::new("hm_bridged_svcdeath");
    py(&f);
    let mut h = TwoServices::new(&f, "hm-brd");
    let port = free_port();
    let port_s = port.to_string();
    let senv = h.env(&f, "server", 1, port, true);
    let mut s = h.serve(&f, "server", "root", &[&port_s, "10.198.0.2", "sha"], &senv);
    let before = h.veth.bytes();
    let cenv = h.env(&f, "client", 0, port, true);
    let n = (1024 * MIB).to_string();
    let mut c = h.spawn(
        &f,
        "client",
        0,
        "root",
        CLIENT,
        &[&port_s, &n, "sha"],
        &cenv,
    );
    check(
        s.wait_stdout(Duration::from_secs(20), |o| o.contains("first")),
        &[&c, &s],
    );
    assert_eq!(h.svc_b.count("paired"), 1, "not paired across the bridge");
    for svc in [&mut h.svc_a, &mut h.svc_b] {
        let ok = Command::new("kill")
            .args(["-KILL", &svc.proc.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let _ = svc.proc.wait_timeout(Duration::from_secs(5));
    }
    assert!(
        s.is_running(),
        "the server finished before the services were gone: stream too short"
    );
    check(c.wait_success(Duration::from_secs(120)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(20)), &[&s]);
    let carried = h.veth.bytes() - before;
    assert!(
        carried < QUIET,
        "the veth carried {carried} bytes of 1 GiB: the stream left the bridge"
    );
    let st = cenv.stats().unwrap_or_else(|e| panic!("stats: {e}"));
    assert_eq!(
        st.on_port(port).filter(|c| c.path == "ntb").count(),
        1,
        "{st:?}"
    );
}

/// The server host's service restarts (SIGKILL, then a new one) while a connection it paired
/// streams 1 GiB across the bridge (paced: about 5 s): that stream finishes intact on the bridge, and a second
/// connection made after the restart is paired by the new service with the old one on the
/// other host (the mailbox's session starts again; the block the first connection's server end
/// still uses is not handed out again: a live end's identity word keeps it out of use).
#[test]
fn a_restarted_service_pairs_again_beside_the_running_connection() {
    let f = Fixture::new("hm_bridged_restart");
    py(&f);
    let mut h = TwoServices::new(&f, "hm-brr");
    let (p1, p2) = (free_port(), free_port());
    let (p1_s, p2_s) = (p1.to_string(), p2.to_string());
    let server = |h: &TwoServices, name: &str, port: u16, port_s: &str| {
        let env = h.env(&f, name, 1, port, true);
        let s = h.serve(&f, name, "root", &[port_s, "10.198.0.2", "sha"], &env);
        (s, env)
    };
    let (mut s1, _) = server(&h, "server1", p1, &p1_s);
    let before = h.veth.bytes();
    let c1env = h.env(&f, "client1", 0, p1, true);
    let n1 = (1024 * MIB).to_string();
    let mut c1 = h.spawn(
        &f,
        "client1",
        0,
        "root",
        CLIENT,
        &[&p1_s, &n1, "paced"],
        &c1env,
    );
    check(
        s1.wait_stdout(Duration::from_secs(20), |o| o.contains("first")),
        &[&c1, &s1],
    );
    let ok = Command::new("kill")
        .args(["-KILL", &h.svc_b.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let _ = h.svc_b.proc.wait_timeout(Duration::from_secs(5));
    h.svc_b.restart(&f);
    let (mut s2, s2env) = server(&h, "server2", p2, &p2_s);
    // The new service's listener reaches the client's host once the old service there has seen
    // its new session and heartbeat: 800 ms in all with `serve`'s wait.
    std::thread::sleep(Duration::from_millis(400));
    let c2env = h.env(&f, "client2", 0, p2, true);
    let n2 = (16 * MIB).to_string();
    let mut c2 = h.spawn(
        &f,
        "client2",
        0,
        "root",
        CLIENT,
        &[&p2_s, &n2, "sha"],
        &c2env,
    );
    check(c2.wait_success(Duration::from_secs(60)), &[&c2, &s2]);
    check(s2.wait_success(Duration::from_secs(20)), &[&s2]);
    assert!(
        c1.is_running(),
        "the first stream ended before the second connection did: nothing ran beside it"
    );
    check(c1.wait_success(Duration::from_secs(120)), &[&c1, &s1]);
    check(s1.wait_success(Duration::from_secs(20)), &[&s1]);
    let carried = h.veth.bytes() - before;
    assert!(
        carried < QUIET,
        "the veth carried {carried} bytes: a stream left the bridge"
    );
    assert_eq!(h.svc_b.count("paired"), 1, "the new service paired nothing");
    assert_eq!(h.svc_a.count("paired"), 2);
    for e in [&c1env, &c2env, &s2env] {
        let st = e.stats().unwrap_or_else(|e| panic!("stats: {e}"));
        assert_eq!(st.ntb_connections, 1, "{st:?}");
    }
}

/// A plain client (no pcisock) on one host and a pcisock server on the other: the server's
/// service asks the client's, which has no offer for that connection, and the server goes on
/// over TCP at once (`NoOffer`), with every byte.
#[test]
fn a_plain_client_from_the_other_host_is_served_over_tcp() {
    let f = Fixture::new("hm_bridged_plain");
    py(&f);
    let h = TwoServices::new(&f, "hm-brp");
    let port = free_port();
    let port_s = port.to_string();
    let senv = h.env(&f, "server", 1, port, false);
    let mut s = h.serve(&f, "server", "root", &[&port_s, "10.198.0.2", "sha"], &senv);
    let n = (4 * MIB).to_string();
    let args = [
        "netns",
        "exec",
        h.a.0.as_str(),
        "/usr/bin/python3",
        "-c",
        CLIENT,
        &port_s,
        &n,
        "sha",
    ];
    let mut c = check(
        Proc::spawn("client", command("ip", &args, None), f.dir()),
        &[],
    );
    check(c.wait_success(Duration::from_secs(60)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(20)), &[&s]);
    let st = senv.stats().unwrap_or_else(|e| panic!("stats: {e}"));
    st.check_tcp(port, 1, |r| r == "NoOffer")
        .unwrap_or_else(|e| panic!("{e}\n{st:?}"));
}

/// A server whose process forks after the accept and exits at once (its child serves, the
/// service never hears of the child): its end stays with the server host's service while the
/// child holds the socket, after the client on the other host has closed, and goes once the
/// child closes. Before, the end counted as closed with its parent's death, and with the
/// client's close the service gave the block back under the child.
#[test]
fn a_forked_child_keeps_the_end_its_parent_left() {
    let f = Fixture::new("hm_bridged_fork");
    py(&f);
    let h = TwoServices::new(&f, "hm-brf");
    let port = free_port();
    let port_s = port.to_string();
    let senv = h.env(&f, "server", 1, port, true);
    let mut s = h.serve(
        &f,
        "server",
        "root",
        &[&port_s, "10.198.0.2", "fork"],
        &senv,
    );
    let cenv = h.env(&f, "client", 0, port, true);
    let n = (4 * MIB).to_string();
    let mut c = h.spawn(
        &f,
        "client",
        0,
        "root",
        CLIENT,
        &[&port_s, &n, "sha"],
        &cenv,
    );
    check(c.wait_success(Duration::from_secs(60)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(10)), &[&s]);
    assert_eq!(h.svc_b.count("paired"), 1, "not paired across the bridge");
    // The parent is gone, the client too; the child holds the end for 4 s from its answer.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        h.svc_b.count("connections"),
        1,
        "the server end was given back while the child still holds it\n{}",
        s.describe()
    );
    let t0 = Instant::now();
    while h.svc_b.count("connections") > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the end stayed after the child closed: {:?}",
            h.svc_b.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.stdout().contains("closing"),
        "the end went before its child closed it\n{}",
        s.describe()
    );
}

/// An untrusted server (nobody) and a trusted client on the other host: the server's service
/// declines its accept with `Untrusted` and tells the client's service, which declines the
/// client with the same reason; both stay on TCP, every byte arrives.
#[test]
fn an_untrusted_server_leaves_both_ends_on_tcp_with_its_reason() {
    let f = Fixture::new("hm_bridged_untrusted_server");
    py(&f);
    let h = TwoServices::new(&f, "hm-brs");
    let port = free_port();
    let port_s = port.to_string();
    let senv = h.env(&f, "server", 1, port, false);
    let mut s = h.serve(
        &f,
        "server",
        "nobody",
        &[&port_s, "10.198.0.2", "sha"],
        &senv,
    );
    let cenv = h.env(&f, "client", 0, port, false);
    let n = (4 * MIB).to_string();
    let mut c = h.spawn(
        &f,
        "client",
        0,
        "root",
        CLIENT,
        &[&port_s, &n, "sha"],
        &cenv,
    );
    check(c.wait_success(Duration::from_secs(60)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(20)), &[&s]);
    for e in [&cenv, &senv] {
        let st = e.stats().unwrap_or_else(|e| panic!("stats: {e}"));
        st.check_tcp(port, 1, |r| r == "Untrusted")
            .unwrap_or_else(|e| panic!("{e}\n{st:?}"));
    }
    assert_eq!(h.svc_a.count("paired") + h.svc_b.count("paired"), 0);
}
