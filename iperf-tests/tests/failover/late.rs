//! A connection made while the link is down moves onto the ring once the link is up (a late upgrade,
//! PROTOCOL.md §6), byte-identical; and a plain peer of such a connection never sees a byte it was not sent.

use super::*;

fn echo_bin() -> String {
    Lib::locate()
        .unwrap()
        .parent()
        .unwrap()
        .join("echo")
        .to_string_lossy()
        .into_owned()
}

/// The echo tool (blocking `std::net`: the client writes from one thread and reads from another, the server reads
/// and writes in one) connects while the link is down, streams plain over TCP for a second, and the link comes up:
/// the stream moves onto the ring and every byte comes back in order. The kernel's own counter of the server's
/// socket (`ss -ti` `bytes_received`) says which path carried it: it grows while the link is down and stops once
/// the link is back, while the paced stream goes on.
#[test]
fn a_connection_made_while_the_link_is_down_moves_onto_the_ring_once_it_is_up() {
    let echo = echo_bin();
    moves_onto_the_ring("late_upgrade", &echo, &["serve"]);
}

/// The same with a server that waits in `poll` before each read (Python's `select.poll`): it answers the client's
/// late offer from its readiness wait, where the client's offer finds it (the client sends nothing meanwhile).
#[test]
fn a_server_waiting_in_poll_answers_a_late_offer() {
    let py = iperf_tests::apps::require_bin("python3", "python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shapes")
        .join("poll_echo.py");
    moves_onto_the_ring(
        "late_upgrade_poll",
        &py.display().to_string(),
        &[&script.display().to_string()],
    );
}

/// The same with a server that waits in `epoll_wait` before each read (Python's `select.epoll`, level-triggered):
/// its registration stays the kernel's while it is a candidate, it answers the late offer from its `epoll_wait`,
/// and the registration moves to the NTB form at the pairing (the rest of the stream is read from the ring).
#[test]
fn a_server_waiting_in_epoll_answers_a_late_offer() {
    let py = iperf_tests::apps::require_bin("python3", "python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shapes")
        .join("poll_echo.py");
    moves_onto_the_ring(
        "late_upgrade_epoll",
        &py.display().to_string(),
        &[&script.display().to_string(), "--port-then", "epoll"],
    );
}

/// An event-loop client that only makes non-blocking calls (`shapes/nb_client.py`: Python `selectors` over epoll,
/// non-blocking `send` and `recv` only when the selector says so) connects while the link is down and streams to
/// the echo tool's server: it offers from a non-blocking call, holds its sends until the answer, and takes the
/// answer at a later call; the stream moves onto the ring, every byte comes back in order.
#[test]
fn a_non_blocking_client_moves_onto_the_ring_once_the_link_is_up() {
    let py = iperf_tests::apps::require_bin("python3", "python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shapes")
        .join("nb_client.py");
    let echo = echo_bin();
    moves_onto_the_ring_with(
        "late_upgrade_nb",
        (&echo, &["serve"]),
        (&py.display().to_string(), &[&script.display().to_string()]),
    );
}

/// An echo server (`server` with `server_args` and the port) and the echo tool's client, both preloaded, the
/// client connecting while the link is down; see the tests above.
fn moves_onto_the_ring(name: &str, server_bin: &str, server_args: &[&str]) {
    let echo = echo_bin();
    moves_onto_the_ring_with(name, (server_bin, server_args), (&echo, &["send"]))
}

/// [`moves_onto_the_ring`] with the client `client` (program, arguments before PORT BYTES …): the echo tool's
/// `send` (its SEED 5 added) or `shapes/nb_client.py`.
fn moves_onto_the_ring_with(name: &str, server: (&str, &[&str]), client: (&str, &[&str])) {
    let (server_bin, server_args) = server;
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let f = Fixture::new(name);
    let port = free_port();
    let (se, ce) = (env(&f, "server", port), env(&f, "client", port));
    let port_s = port.to_string();
    // The port goes last, or in place of "--port-then" (before the arguments after it).
    let mut args: Vec<&str> = server_args.to_vec();
    match args.iter().position(|a| *a == "--port-then") {
        Some(i) => args[i] = &port_s,
        None => args.push(&port_s),
    }
    let mut server = Proc::spawn(
        "echo-server",
        command(server_bin, &args, Some(&se)),
        f.dir(),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    link(f.emu_dir(), true);
    // 32 MiB paced at 8 MiB/s: about 4 s.
    let bytes = 32 * MIB + 777;
    let bytes_s = bytes.to_string();
    let mut cargs: Vec<&str> = client.1.to_vec();
    cargs.extend([port_s.as_str(), &bytes_s]);
    if client.1 == ["send"] {
        cargs.push("5");
    }
    cargs.push("8");
    let mut client =
        Proc::spawn("echo-client", command(client.0, &cargs, Some(&ce)), f.dir()).unwrap();
    let t0 = Instant::now();
    let at = |ms: u64| Duration::from_millis(ms);
    sleep_until(t0, at(300));
    // The client's connection, once it exists (a Python client on a busy machine can take
    // longer than 300 ms to start; the window below still spans at least 200 ms).
    let mut start = sample(port);
    while start.socks.is_empty() && t0.elapsed() < at(900) {
        thread::sleep(at(20));
        start = sample(port);
    }
    sleep_until(t0, at(1100));
    let down = sample(port);
    link(f.emu_dir(), false);
    sleep_until(t0, at(2000));
    let a = sample(port);
    sleep_until(t0, at(3300));
    let b = sample(port);
    let status = client.wait_success(Duration::from_secs(30));
    let _ = server.wait_timeout(Duration::from_secs(10));

    let mut errors = Vec::new();
    if let Err(e) = &status {
        errors.push(format!("echo client: {e}"));
    }
    if !client.stdout().contains(&format!("ok bytes={bytes}")) {
        errors.push(format!("echo client: {}", client.stdout().trim()));
    }
    let peer = down
        .socks
        .iter()
        .max_by_key(|s| s.bytes_received)
        .map(|s| s.peer.clone())
        .unwrap_or_default();
    let moved = |x: &Sample, y: &Sample| match (x.received(&peer), y.received(&peer)) {
        (Some(p), Some(q)) => Some((q.saturating_sub(p), y.at.duration_since(x.at))),
        _ => None,
    };
    // While the link is down the stream is plain TCP: at least 2 MiB/s (it is paced at 8).
    match moved(&start, &down) {
        Some((n, d)) => {
            eprintln!("link down: {n} bytes over TCP in {:.2} s", d.as_secs_f64());
            if (n as f64) < 2.0 * MIB as f64 * d.as_secs_f64() {
                errors.push(format!("link down: only {n} bytes over TCP in {d:?}"));
            }
        }
        None => errors.push(format!(
            "no stream socket from {peer:?} on port {port} while the link was down"
        )),
    }
    // From 0.9 s after the link came back, for over a second, the socket is quiet while the stream goes on (on
    // TCP that would be about 10 MiB; the records of a switch are a few headers).
    match moved(&a, &b) {
        Some((n, d)) => {
            eprintln!("link back: {n} bytes over TCP in {:.2} s", d.as_secs_f64());
            if n > 64 << 10 {
                errors.push(format!(
                    "{n} bytes over TCP in the {d:?} from 0.9 s after the link came back: not on the ring"
                ));
            }
        }
        None => errors.push(format!(
            "no stream socket from {peer:?} on port {port} after the link came back"
        )),
    }
    for (who, e) in [("client", &ce), ("server", &se)] {
        match e.stats() {
            Ok(s) => {
                // On the ring at the end, its record holding the plain bytes it moved before (the client sent
                // megabytes with the link down; the echo server sent them back).
                let on_ring = s.on_port(port).any(|c| {
                    c.path == "ntb" && !c.on_tcp && c.plain_tx_bytes > MIB && c.plain_rx_bytes > MIB
                });
                // It counts as an NTB connection, no longer as a fallback.
                let counted = s.ntb_connections == 1 && s.tcp_connections == 0;
                if s.late_upgrades != 1 || !on_ring || !counted || s.protocol_errors != 0 {
                    errors.push(format!(
                        "{who}: late_upgrades {}, on the ring at the end with its plain bytes: {on_ring}: {s}",
                        s.late_upgrades
                    ));
                }
            }
            Err(e) => errors.push(format!("{who}: {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "{}\n{}\n{}",
        errors.join("\n"),
        client.describe(),
        server.describe()
    );
}

/// A candidate's peer that is not preloaded (a plain server with a pcisock client, then a pcisock server with a
/// plain client) sees exactly the bytes the application sent: the echo comes back byte-identical across the link
/// coming up, and the preloaded end stays on TCP without a late upgrade.
#[test]
fn a_plain_peer_of_a_connection_made_while_the_link_is_down_sees_only_its_bytes() {
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let echo = echo_bin();
    let mut errors = Vec::new();
    let py = iperf_tests::apps::require_bin("python3", "python3");
    let nb_client = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shapes")
        .join("nb_client.py")
        .display()
        .to_string();
    let poll_echo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shapes")
        .join("poll_echo.py")
        .display()
        .to_string();
    // Then an event-loop client (non-blocking calls only) with a plain server; and with a pcisock server that
    // accepts 2 s late (after the link is up: no candidate, it never answers a late offer), where the client's
    // sends held while each offer waits unanswered go on TCP, in order, when it is withdrawn.
    for (preloaded_server, nb) in [(false, false), (true, false), (false, true), (true, true)] {
        let f = Fixture::new(match (preloaded_server, nb) {
            (true, false) => "late_plain_client",
            (false, false) => "late_plain_server",
            (false, true) => "late_plain_server_nb",
            (true, true) => "late_unanswered_nb",
        });
        let port = free_port();
        let (se, ce) = (env(&f, "server", port), env(&f, "client", port));
        let port_s = port.to_string();
        // The device is made by the first preloaded process that opens it: a connect to the port before anything
        // listens there (refused).
        let mut first = Proc::spawn(
            "echo-refused",
            command(&echo, &["send", &port_s, "1", "1"], Some(&ce)),
            f.dir(),
        )
        .unwrap();
        let _ = first.wait_timeout(Duration::from_secs(10));
        let server_cmd = if nb && preloaded_server {
            let args = [poll_echo.as_str(), &port_s, "poll", "2"];
            command(py.display().to_string(), &args, Some(&se))
        } else {
            command(&echo, &["serve", &port_s], preloaded_server.then_some(&se))
        };
        let mut server = Proc::spawn("echo-server", server_cmd, f.dir()).unwrap();
        server
            .wait_listening(port, Duration::from_secs(10))
            .unwrap();
        link(f.emu_dir(), true);
        let bytes = 12 * MIB + 5;
        let bytes_s = bytes.to_string();
        let cmd = if nb {
            command(
                py.display().to_string(),
                &[nb_client.as_str(), &port_s, &bytes_s, "8"],
                Some(&ce),
            )
        } else {
            command(
                &echo,
                &["send", &port_s, &bytes_s, "6", "8"],
                (!preloaded_server).then_some(&ce),
            )
        };
        let t0 = Instant::now();
        let mut client = Proc::spawn("echo-client", cmd, f.dir()).unwrap();
        thread::sleep(Duration::from_millis(400));
        link(f.emu_dir(), false);
        let status = client.wait_success(Duration::from_secs(30));
        let _ = server.wait_timeout(Duration::from_secs(10));
        let which = match (preloaded_server, nb) {
            (true, false) => "plain client, pcisock server",
            (false, false) => "pcisock client, plain server",
            (false, true) => "pcisock event-loop client, plain server",
            (true, true) => "pcisock event-loop client, pcisock server that never answers",
        };
        eprintln!("{which}: {:.1} s", t0.elapsed().as_secs_f64());
        if status.is_err() || !client.stdout().contains(&format!("ok bytes={bytes}")) {
            errors.push(format!(
                "{which}: {status:?} {}\n{}\n{}",
                client.stdout().trim(),
                client.describe(),
                server.describe()
            ));
        }
        let ends: &[&PreloadEnv] = match (preloaded_server, nb) {
            (true, true) => &[&se, &ce],
            (true, false) => &[&se],
            (false, _) => &[&ce],
        };
        for e in ends {
            match e.stats() {
                Ok(s) => {
                    let on_tcp = s.on_port(port).any(|c| c.path == "tcp");
                    if s.late_upgrades != 0 || !on_tcp || s.protocol_errors != 0 {
                        errors.push(format!("{which}: a pcisock end: {s}"));
                    }
                }
                Err(e) => errors.push(format!("{which}: {e}")),
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// A link that flaps while a connection made during an outage waits to move: every byte comes back in order, the
/// connection moves onto the ring at most once, its failovers after that back off (a handful, not one per flap),
/// and the stream is not held up by the tries (each try of the client waits at most 400 ms for an answer, and
/// tries back off: 100 ms doubling to 3 s).
#[test]
fn a_flapping_link_does_not_make_a_late_upgrade_thrash() {
    let _lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let f = Fixture::new("late_flapping");
    let port = free_port();
    let (se, ce) = (env(&f, "server", port), env(&f, "client", port));
    let echo = echo_bin();
    let port_s = port.to_string();
    let mut server = Proc::spawn(
        "echo-server",
        command(&echo, &["serve", &port_s], Some(&se)),
        f.dir(),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    link(f.emu_dir(), true);
    // 40 MiB paced at 8 MiB/s: about 5 s.
    let bytes = 40 * MIB + 3;
    let mut client = Proc::spawn(
        "echo-client",
        command(
            &echo,
            &["send", &port_s, &bytes.to_string(), "8", "8"],
            Some(&ce),
        ),
        f.dir(),
    )
    .unwrap();
    let t0 = Instant::now();
    // 25 flaps (up, then down) in 4 s, from 0.3 s; the link stays up after.
    for i in 0..25u64 {
        sleep_until(t0, Duration::from_millis(300 + i * 160));
        link(f.emu_dir(), false);
        sleep_until(t0, Duration::from_millis(300 + i * 160 + 80));
        link(f.emu_dir(), true);
    }
    link(f.emu_dir(), false);
    let status = client.wait_success(Duration::from_secs(30));
    let took = t0.elapsed();
    let _ = server.wait_timeout(Duration::from_secs(10));
    let mut errors = Vec::new();
    if status.is_err() || !client.stdout().contains(&format!("ok bytes={bytes}")) {
        errors.push(format!(
            "echo client: {status:?} {}",
            client.stdout().trim()
        ));
    }
    // Paced for 5 s; held up by thrashing it would take far longer.
    if took > Duration::from_secs(12) {
        errors.push(format!("the stream took {took:?} (paced for 5 s)"));
    }
    for (who, e) in [("client", &ce), ("server", &se)] {
        match e.stats() {
            Ok(s) => {
                let c = data_conn(&s, port);
                eprintln!(
                    "{who}: late_upgrades {}, path {}, failovers {}, failbacks {}",
                    s.late_upgrades, c.path, c.failovers, c.failbacks
                );
                if s.late_upgrades > 1 || c.failovers > 12 || s.protocol_errors != 0 {
                    errors.push(format!("{who}: {s}"));
                }
            }
            Err(e) => errors.push(format!("{who}: {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "{}\n{}\n{}",
        errors.join("\n"),
        client.describe(),
        server.describe()
    );
}

/// A server holding server candidates of plain clients (which never offer: the candidacy lasts as long as the
/// connection) sleeps until something happens, in a blocking `recv` per connection, in `poll` and in `epoll_wait`:
/// its process's late bell (rung by a client's late offer, kicked by a link event) and the sockets wake it, not a
/// nap. Read from the kernel: the server's threads' context switches (`/proc/PID/task/*/status`) and CPU ticks
/// (`/proc/PID/stat`) over 3 idle seconds with the link up. Before the bell each candidate's wait woke every
/// 100 ms (10 a second per waiting thread).
#[test]
fn an_idle_server_candidate_sleeps_until_its_bell_rings() {
    let py = iperf_tests::apps::require_bin("python3", "python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shapes")
        .join("idle_server.py");
    const CONNS: usize = 6;
    let mut errors = Vec::new();
    for how in ["recv", "poll", "epoll"] {
        let f = Fixture::new(&format!("late_idle_{how}"));
        let port = free_port();
        let se = env(&f, "server", port);
        let port_s = port.to_string();
        let n = CONNS.to_string();
        let args = [script.to_str().unwrap(), &port_s, &n, how];
        let mut server = Proc::spawn(
            "idle-server",
            command(py.display().to_string(), &args, Some(&se)),
            f.dir(),
        )
        .unwrap();
        server
            .wait_listening(port, Duration::from_secs(10))
            .unwrap();
        link(f.emu_dir(), true);
        // Plain clients (this process is not preloaded): accepted while the link is down, they are candidates.
        let clients: Vec<std::net::TcpStream> = (0..CONNS)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        server
            .wait_stdout(Duration::from_secs(10), |s| s.contains("accepted"))
            .unwrap();
        link(f.emu_dir(), false);
        // The link event's kick and the looks it starts are over by then.
        thread::sleep(Duration::from_millis(500));
        let (s0, t0) = (switches(server.pid()), cpu_ticks(server.pid()));
        thread::sleep(Duration::from_secs(3));
        let (s1, t1) = (switches(server.pid()), cpu_ticks(server.pid()));
        let (ds, dt) = (s1 - s0, t1 - t0);
        eprintln!(
            "{how}: {CONNS} idle server candidates for 3 s: {ds} context switches, {dt} CPU ticks"
        );
        // Still an echo server on TCP: one round trip on each.
        for mut c in &clients {
            use std::io::{Read, Write};
            c.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            if &b != b"ping" {
                errors.push(format!("{how}: echoed {b:?}"));
            }
        }
        drop(clients);
        if let Err(e) = server.wait_success(Duration::from_secs(10)) {
            errors.push(format!("{how}: server: {e}\n{}", server.describe()));
        }
        // Asleep: a handful of wake-ups in 3 s (the interpreter's own), not 10 a second per wait.
        if ds > 10 || dt > 3 {
            errors.push(format!(
                "{how}: the idle server woke {ds} times and used {dt} CPU ticks in 3 s"
            ));
        }
        match se.stats() {
            Ok(s) => {
                if s.late_upgrades != 0
                    || s.protocol_errors != 0
                    || s.on_port(port).count() != CONNS
                {
                    errors.push(format!("{how}: {s}"));
                }
            }
            Err(e) => errors.push(format!("{how}: {e}")),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Context switches (voluntary and not) of all of `pid`'s threads so far.
fn switches(pid: u32) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap_or_default();
        n += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    n
}

/// User and system CPU ticks `pid` used so far (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// An event-loop client that connects while the link is down, sends 100 kB with non-blocking calls once it is up
/// (held while its late offer waits for the answer) and closes at once: the close settles the offer first, so
/// every byte reaches the server (on the ring, the server's candidate answering), then its EOF.
#[test]
fn a_non_blocking_client_that_closes_at_once_delivers_its_held_bytes() {
    let py = iperf_tests::apps::require_bin("python3", "python3");
    let f = Fixture::new("late_nb_close");
    let port = free_port();
    let (se, ce) = (env(&f, "server", port), env(&f, "client", port));
    let go = f.dir().join("link-up");
    let server_py = format!(
        "import socket\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         l.bind(('127.0.0.1',{port}))\nl.listen(1)\nc,_=l.accept()\nd=b''\n\
         while True:\n    b=c.recv(65536)\n    if not b: break\n    d+=b\n\
         ok=d==bytes(i%251 for i in range(100000))\nprint('got',len(d),'ok' if ok else 'wrong',flush=True)\n"
    );
    let client_py = format!(
        "import os,socket,time\ns=socket.create_connection(('127.0.0.1',{port}))\ns.setblocking(False)\n\
         while not os.path.exists({go:?}): time.sleep(0.01)\n\
         d=bytes(i%251 for i in range(100000))\nn=0\n\
         while n<len(d):\n    try: n+=s.send(d[n:])\n    except BlockingIOError: time.sleep(0.001)\n\
         s.close()\nprint('sent',n,flush=True)\n"
    );
    let mut server = Proc::spawn(
        "py-server",
        command(py.display().to_string(), &["-c", &server_py], Some(&se)),
        f.dir(),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    link(f.emu_dir(), true);
    let mut client = Proc::spawn(
        "py-client",
        command(py.display().to_string(), &["-c", &client_py], Some(&ce)),
        f.dir(),
    )
    .unwrap();
    thread::sleep(Duration::from_millis(300));
    link(f.emu_dir(), false);
    std::fs::write(&go, b"").unwrap();
    let cs = client.wait_success(Duration::from_secs(20));
    let ss = server.wait_success(Duration::from_secs(20));
    let got = server.stdout();
    let stats: Vec<String> = [&ce, &se]
        .iter()
        .map(|e| e.stats().map_or_else(|e| e, |s| s.to_string()))
        .collect();
    assert!(
        cs.is_ok() && ss.is_ok() && got.trim() == "got 100000 ok",
        "client {cs:?} {}, server {ss:?} {got}\n{stats:?}\n{}\n{}",
        client.stdout(),
        client.describe(),
        server.describe()
    );
    let (c, s) = (ce.stats().unwrap(), se.stats().unwrap());
    assert!(
        c.late_upgrades == 1 && s.late_upgrades == 1,
        "the held bytes did not go on the ring: {c}\n{s}"
    );
}
