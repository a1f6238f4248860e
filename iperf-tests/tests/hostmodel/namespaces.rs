//! Network namespaces: keyed apart on one host, and two joined by a veth as two hosts.

use super::*;

/// A network namespace of the test's own with lo up; removed on drop.
pub(super) struct Netns(pub(super) String);

impl Netns {
    pub(super) fn new(name: &str) -> Netns {
        let n = format!("pcisock-{name}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &n]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &n])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {n}");
        let ok = Command::new("ip")
            .args(["netns", "exec", &n, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(ok.success());
        Netns(n)
    }

    pub(super) fn lo_tx(&self) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "cat",
                "/sys/class/net/lo/statistics/tx_bytes",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A veth pair joining namespaces `a` (address `NET.1/24`) and `b` (`NET.2/24`): two hosts'
/// network. It goes with its namespaces.
pub(super) struct Veth {
    ns: String,
    dev: String,
}

impl Veth {
    pub(super) fn new(a: &Netns, b: &Netns, net: &str, name: &str) -> Veth {
        let tag = std::process::id() % 10_000 * 10 + name.len() as u32 % 10;
        let (va, vb) = (format!("pca{tag}"), format!("pcb{tag}"));
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap();
            assert!(ok.success(), "ip {args:?}");
        };
        ip(&[
            "link", "add", &va, "netns", &a.0, "type", "veth", "peer", "name", &vb, "netns", &b.0,
        ]);
        for (ns, dev, host) in [(a, &va, 1), (b, &vb, 2)] {
            ip(&[
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("{net}.{host}/24"),
                "dev",
                dev,
            ]);
            ip(&["-n", &ns.0, "link", "set", dev, "up"]);
        }
        Veth {
            ns: a.0.clone(),
            dev: va,
        }
    }

    /// Bytes the veth carried so far, both ways (the kernel's counters).
    pub(super) fn bytes(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "cat"])
            .arg(format!("/sys/class/net/{}/statistics/tx_bytes", self.dev))
            .arg(format!("/sys/class/net/{}/statistics/rx_bytes", self.dev))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|w| w.parse::<u64>().unwrap())
            .sum()
    }
}

/// Two namespaces on one host, the same addresses and ports in both, at the same moment
/// (identical 4-tuples): each connection pairs within its own namespace (the service keys
/// every rendezvous by the namespace's cookie), each server reads only its own client's bytes,
/// and neither namespace's lo carries them.
#[test]
fn two_namespaces_with_identical_four_tuples_never_meet() {
    let f = Fixture::new("hm_netns");
    let svc = Service::start(&f);
    let prog_s = py(&f).display().to_string();
    let (port, src) = (7301u16, 7302u16);
    let (port_s, src_s) = (port.to_string(), src.to_string());
    let spaces = [Netns::new("hm-a"), Netns::new("hm-b")];
    let before: Vec<u64> = spaces.iter().map(Netns::lo_tx).collect();
    let mut servers = Vec::new();
    for (i, ns) in spaces.iter().enumerate() {
        let env = svc
            .env(&f, &format!("server{i}"), port)
            .marked(&format!("{}{i}", marker_of(&f)));
        let mut p = check(
            Proc::spawn(
                &format!("server{i}"),
                command(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns.0,
                        "/usr/bin/python3",
                        &prog_s,
                        "server",
                        &port_s,
                        "late",
                        "1",
                    ],
                    Some(&env),
                ),
                f.dir(),
            ),
            &[],
        );
        check(
            p.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
            &[&p],
        );
        servers.push(p);
    }
    let mut clients = Vec::new();
    for (i, ns) in spaces.iter().enumerate() {
        let env = svc
            .env(&f, &format!("client{i}"), port)
            .marked(&format!("{}{i}", marker_of(&f)));
        clients.push(check(
            Proc::spawn(
                &format!("client{i}"),
                command(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns.0,
                        "/usr/bin/python3",
                        &prog_s,
                        "client",
                        &port_s,
                        &(16 * MIB).to_string(),
                        &src_s,
                        "0.001",
                    ],
                    Some(&env),
                ),
                f.dir(),
            ),
            &[],
        ));
    }
    for (c, s) in clients.iter_mut().zip(servers.iter_mut()) {
        check(c.wait_success(Duration::from_secs(60)), &[c, s]);
        check(s.wait_success(Duration::from_secs(20)), &[s]);
    }
    for (ns, b) in spaces.iter().zip(before) {
        let d = ns.lo_tx() - b;
        assert!(
            d < QUIET,
            "{}: {d} bytes crossed its lo: not the NTB path",
            ns.0
        );
    }
    assert_eq!(svc.count("paired"), 2);
}

/// A daemonizing server in a namespace other than the service's (a container's): the parent
/// that published the listener exits, its child keeps the listening socket and serves. The
/// service reads that namespace's socket table through the sock_diag socket the parent handed
/// over (`Namespace`), so the listener stays published and the client's bytes cross on the NTB
/// path. Before, a listener of another namespace was withdrawn as soon as its owner went: the
/// client was refused (strict) or fell back to TCP.
#[test]
fn a_daemonizing_server_in_another_namespace_keeps_its_listener() {
    let f = Fixture::new("hm_netns_daemon");
    let svc = Service::start(&f);
    let prog_s = py(&f).display().to_string();
    let port = 7321u16;
    let port_s = port.to_string();
    let ns = Netns::new("hm-daemon");
    let marker = marker_of(&f);
    let in_ns = |args: &[&str]| {
        let mut v = vec!["netns", "exec", ns.0.as_str(), "/usr/bin/python3", &prog_s];
        v.extend_from_slice(args);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let senv = svc.env(&f, "server", port).marked(&marker);
    let args = in_ns(&["server", &port_s, "daemon", "1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut parent = check(
        Proc::spawn("server", command("ip", &args, Some(&senv)), f.dir()),
        &[],
    );
    // The parent says "listening" and exits; the service sees it go (its connection hangs up).
    check(parent.wait_success(Duration::from_secs(20)), &[&parent]);
    std::thread::sleep(Duration::from_millis(300));
    let before = ns.lo_tx();
    let bytes = 8 * MIB;
    let cenv = svc.env(&f, "client0", port).marked(&marker);
    let args = in_ns(&["client", &port_s, &bytes.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = check(
        Proc::spawn("client0", command("ip", &args, Some(&cenv)), f.dir()),
        &[],
    );
    check(client.wait_success(Duration::from_secs(60)), &[&client]);
    let d = ns.lo_tx() - before;
    assert!(
        d < QUIET,
        "{}: {d} bytes crossed its lo for {bytes} bytes: not the NTB path",
        ns.0
    );
    let st = Stats::load(&f.dir().join("client0.stats.json")).unwrap();
    assert!(
        st.ntb_tx_bytes >= bytes,
        "the client sent {} bytes over the bridge, expected {bytes}",
        st.ntb_tx_bytes
    );
}

/// The namespace is part of every key: a pcisock client in namespace B (whose own server is a
/// plain one) and a plain client in namespace A connect with the same 4-tuple, at the same
/// moment, to ports where only A's server runs under pcisock. A's server must not be paired
/// with B's client: it reads exactly its own plain client's bytes, over TCP, and B's client
/// carries its bytes to its own server.
#[test]
fn a_namespace_cannot_reach_another_namespaces_listener() {
    let f = Fixture::new("hm_netns_apart");
    let svc = Service::start(&f);
    let prog_s = py(&f).display().to_string();
    let (port, src) = (7311u16, 7312u16);
    let (port_s, src_s) = (port.to_string(), src.to_string());
    let (a, b) = (Netns::new("hm-apart-a"), Netns::new("hm-apart-b"));
    let ma = format!("{}A", marker_of(&f));
    let mb = format!("{}B", marker_of(&f));
    let in_ns = |ns: &Netns, args: &[&str]| {
        let mut v = vec![
            "netns",
            "exec",
            ns.0.as_str(),
            "/usr/bin/python3",
            prog_s.as_str(),
        ];
        v.extend_from_slice(args);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let spawn = |name: &str, args: Vec<String>, env: Option<&PreloadEnv>, marker: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = command("ip", &args, env);
        cmd.env("HM_MARKER", marker);
        check(Proc::spawn(name, cmd, f.dir()), &[])
    };
    // A: a pcisock server that accepts late; B: a plain server.
    let aenv = svc.env(&f, "server_a", port).with_strict(false).marked(&ma);
    let mut sa = spawn(
        "server_a",
        in_ns(&a, &["server", &port_s, "late", "1"]),
        Some(&aenv),
        &ma,
    );
    let mut sb = spawn(
        "server_b",
        in_ns(&b, &["server", &port_s, "plain", "1"]),
        None,
        &mb,
    );
    for s in [&mut sa, &mut sb] {
        check(
            s.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
            &[],
        );
    }
    // B: a pcisock client (not strict); A: a plain client. Same 4-tuple.
    let benv = svc.env(&f, "client_b", port).with_strict(false).marked(&mb);
    let n = (4 * MIB).to_string();
    let mut cb = spawn(
        "client_b",
        in_ns(&b, &["client", &port_s, &n, &src_s, "0.001"]),
        Some(&benv),
        &mb,
    );
    let mut ca = spawn(
        "client_a",
        in_ns(&a, &["client", &port_s, &n, &src_s, "0.001"]),
        None,
        &ma,
    );
    for (c, s) in [(&mut ca, &mut sa), (&mut cb, &mut sb)] {
        check(c.wait_success(Duration::from_secs(60)), &[c, s]);
        check(s.wait_success(Duration::from_secs(20)), &[s]);
    }
    assert_eq!(
        svc.count("paired"),
        0,
        "a connection was paired across namespaces"
    );
    // Both fallbacks are in the service's host-wide history, with the kernel's addresses
    // (each process in its own namespace) and the exact reasons: B's client found no
    // listener in its namespace, A's server found no offer for its plain client.
    let text = svc.stats_text();
    let line = |side: &str, reason: &str| {
        text.lines().any(|l| {
            l.contains(&format!(" {side} "))
                && l.contains(&format!(":{src} "))
                && l.contains(&format!(":{port} "))
                && l.ends_with(reason)
        })
    };
    assert!(
        text.contains("recent fallbacks to TCP") && line("client", "NoListener"),
        "client B's fallback is not in the history:\n{text}"
    );
    assert!(
        line("server", "NoOffer"),
        "server A's fallback is not in the history:\n{text}"
    );
}

/// Two network namespaces joined by a veth pair act as two hosts over the emulated two-host
/// link (each namespace one side of the device): a client in one sends 16 MiB to a server in
/// the other, both strict, the server checks the bytes' SHA-256, and the veth between them
/// carries only the TCP handshakes while the payload crosses the emulated NTB link.
#[test]
fn two_namespaces_joined_by_a_veth_are_two_hosts() {
    let r = two_hosts("hm_two_hosts", 16 * MIB, None, None);
    assert!(
        r.carried < QUIET,
        "the veth carried {} bytes while 16 MiB crossed: the payload went over TCP",
        r.carried
    );
    for st in [&r.client, &r.server] {
        assert_eq!(
            st.on_port(r.port).filter(|c| c.path == "ntb").count(),
            1,
            "{st:?}"
        );
    }
}

/// Failover between two emulated hosts: a link-down of 1 s in the middle of a sha-256-checked
/// transfer moves it onto the veth (the network between the namespaces: its counters are the
/// kernel's evidence) and back, with every byte intact.
#[test]
fn a_link_down_between_two_hosts_moves_the_stream_to_the_network_and_back() {
    let r = two_hosts(
        "hm_two_hosts_failover",
        3 << 30,
        Some((Duration::from_millis(300), Duration::from_secs(1))),
        None,
    );
    assert!(
        r.during > 8 * MIB,
        "the veth carried only {} bytes during the outage: the stream stalled",
        r.during
    );
    let c = r
        .client
        .on_port(r.port)
        .max_by_key(|c| c.tx_bytes)
        .unwrap_or_else(|| panic!("{:?}", r.client));
    assert!(
        c.failovers >= 1 && c.failbacks >= 1 && c.failover_tx_bytes > 0 && c.tx_bytes > 0,
        "{c:?}"
    );
}

/// A connection made while the link between the two hosts is down (a late upgrade, PROTOCOL.md
/// §6): it starts on the veth and moves onto the NTB link once that is up. The veth's own
/// counters carry the stream while the link is down, and from half a second after it is up only
/// a few bytes (the records of the switch), while gigabytes go on.
#[test]
fn a_connection_made_while_the_link_between_two_hosts_is_down_moves_onto_it_later() {
    let r = two_hosts(
        "hm_two_hosts_late",
        6 << 30,
        None,
        Some(Duration::from_millis(300)),
    );
    let c = r
        .client
        .on_port(r.port)
        .max_by_key(|c| c.tx_bytes)
        .unwrap_or_else(|| panic!("{:?}", r.client));
    assert!(
        r.client.late_upgrades == 1 && r.server.late_upgrades == 1 && c.path == "ntb",
        "client {:?}\nserver {:?}",
        r.client,
        r.server
    );
    eprintln!(
        "veth: {} bytes before the link came up (and 0.5 s after), {} after; ring: {} bytes sent",
        r.carried - r.after_up,
        r.after_up,
        c.tx_bytes
    );
    // On the veth while the link was down (TCP on a veth moves hundreds of MB a second), and
    // next to nothing once it is back (the stream's gigabytes then take over a second).
    assert!(
        r.carried - r.after_up > 8 * MIB,
        "{} before the link came up",
        r.carried - r.after_up
    );
    assert!(
        r.after_up < MIB && c.tx_bytes > 1 << 30,
        "{} bytes on the veth from 0.5 s after the link came up; {} on the ring",
        r.after_up,
        c.tx_bytes
    );
}

/// What [`two_hosts`] saw.
struct TwoHosts {
    port: u16,
    /// Bytes on the veth from the client's start to its end, and during the injected outage.
    carried: u64,
    during: u64,
    /// With the link down at the connect: bytes on the veth from half a second after it came
    /// up to the client's end.
    after_up: u64,
    client: iperf_tests::Stats,
    server: iperf_tests::Stats,
}

/// Two namespaces joined by a veth, one side each of a two-host device: a client in the first
/// sends `n` bytes to a server in the second, which answers with their count and sha-256 (the
/// client exits 0 only if they match). With `fault` = (after, for), the link is held down
/// from `after` the client's start for `for` (the processes are then not strict: they fail
/// over). With `late` = `Some(up_after)`, the link is down before the client connects and comes
/// up `up_after` after its start.
fn two_hosts(
    name: &str,
    n: u64,
    fault: Option<(Duration, Duration)>,
    late: Option<Duration>,
) -> TwoHosts {
    const SERVER: &str = r#"
import hashlib, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[2], int(sys.argv[1]))); l.listen(4); print("listening", flush=True)
c, _ = l.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
c.sendall(("%d %s" % (n, h.hexdigest())).encode()); c.close()
"#;
    const CLIENT: &str = r#"
import hashlib, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
block = bytes((i * 7 + 3) % 251 for i in range(1 << 20)); h = hashlib.sha256()
s = socket.create_connection(("10.199.0.2", port))
for _ in range(n >> 20):
    s.sendall(block); h.update(block)
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

    let f = Fixture::new(name);
    // Names of their own: the two tests that use this run at once in one process.
    let (a, b) = (
        Netns::new(&format!("{name}-a")),
        Netns::new(&format!("{name}-b")),
    );
    let veth = Veth::new(&a, &b, "10.199.0", name);
    let veth_bytes = || veth.bytes();
    let port = free_port();
    let port_s = port.to_string();
    let n = n.to_string();
    let side = |role: &str, host: &str| {
        let mut e = f
            .preload(role)
            .with_ports(port_s.clone())
            .with_strict(fault.is_none() && late.is_none());
        e.extra
            .push(("PCISOCK_EMU_TOPOLOGY".into(), "two-host".into()));
        e.extra.push(("PCISOCK_EMU_HOST".into(), host.into()));
        e
    };
    let in_ns = |name: &str, ns: &Netns, code: &str, args: &[&str], env: &PreloadEnv| {
        let mut v = vec![
            "netns",
            "exec",
            ns.0.as_str(),
            "/usr/bin/python3",
            "-c",
            code,
        ];
        v.extend_from_slice(args);
        check(
            Proc::spawn(name, command("ip", &v, Some(env)), f.dir()),
            &[],
        )
    };
    // Host A has a pcisock process before the server starts (its link side is up), as on two
    // machines in service: a listener published while the link is down reaches the peer only
    // once the link comes up, by a thread, so a client racing the link's first coming up
    // could miss it.
    let other = free_port().to_string();
    let mut penv = side("presence", "0");
    penv = penv.with_ports(format!("{port_s},{other}"));
    let mut presence = in_ns("presence", &a, SERVER, &[&other, "10.199.0.1"], &penv);
    check(
        presence.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&presence],
    );
    let senv = side("server", "1");
    let mut s = in_ns("server", &b, SERVER, &[&port_s, "10.199.0.2"], &senv);
    check(
        s.wait_stdout(Duration::from_secs(20), |o| o.contains("listening")),
        &[&s],
    );
    let emu = |args: &[&str]| {
        let out = Command::new(iperf_tests::Lib::cli().unwrap())
            .args(args)
            .env("PCISOCK_EMU_DIR", f.emu_dir())
            .env("PCISOCK_EMU_TOPOLOGY", "two-host")
            .output()
            .unwrap();
        assert!(out.status.success(), "pcisock {args:?}");
    };
    if late.is_some() {
        emu(&["emu", "fault", "link-down"]);
    }
    let before = veth_bytes();
    let cenv = side("client", "0");
    let mut c = in_ns("client", &a, CLIENT, &[&port_s, &n], &cenv);
    let mut during = 0;
    let mut up_at = None;
    if let Some(up_after) = late {
        std::thread::sleep(up_after);
        emu(&["emu", "clear"]);
        std::thread::sleep(Duration::from_millis(500));
        up_at = Some(veth_bytes());
    }
    if let Some((after, hold)) = fault {
        std::thread::sleep(after);
        let t = veth_bytes();
        emu(&["emu", "fault", "link-down"]);
        std::thread::sleep(hold);
        during = veth_bytes() - t;
        emu(&["emu", "clear"]);
    }
    check(c.wait_success(Duration::from_secs(60)), &[&c, &s]);
    check(s.wait_success(Duration::from_secs(20)), &[&s]);
    let _ = presence.terminate();
    let stats = |e: &PreloadEnv| e.stats().unwrap_or_else(|e| panic!("stats: {e}"));
    let end = veth_bytes();
    TwoHosts {
        port,
        carried: end - before,
        during,
        after_up: up_at.map_or(0, |u| end - u),
        client: stats(&cenv),
        server: stats(&senv),
    }
}
