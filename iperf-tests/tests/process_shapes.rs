//! Servers started the way they are deployed (`shapes/server.py`): a forking server whose children
//! close their inherited copy of the listening socket, a daemonizing server (the process that
//! listened exits, its child serves), a server that hands its listening socket to a program it
//! starts (fork + exec), and a server that drops privileges after `listen`. A
//! listener must stay published exactly as long as the kernel's listening socket exists, whoever
//! holds it. Each test runs a preloaded client (`shapes/client.py`) making several connections
//! one after the other and checks the client's stats file, the server's own count of the bytes
//! and the loopback counters.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iperf_tests::apps::require_bin;
use iperf_tests::*;

const MIB: u64 = 1024 * 1024;
/// Connections per test, one after the other: the second and later ones find the listener only
/// if the first one's server-side process shapes left it published.
const CONNS: u64 = 3;
const PER_CONN: u64 = 8 * MIB;
const TIMEOUT: Duration = Duration::from_secs(30);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shapes")
        .join(name)
}

fn python() -> PathBuf {
    require_bin("python3", "python3")
}

/// Starts `server.py MODE PORT CONNS` under the library; returns it once the kernel listens.
fn start_server(f: &Fixture, mode: &str, port: u16, env: &PreloadEnv) -> Proc {
    let args = [
        script("server.py").display().to_string(),
        mode.to_owned(),
        port.to_string(),
        CONNS.to_string(),
    ];
    let mut p = check(
        Proc::spawn("server", command(python(), &args, Some(env)), f.dir()),
        &[],
    );
    check(p.wait_stdout(TIMEOUT, |o| o.contains("ready")), &[]);
    check(wait_listening(port, TIMEOUT), &[&p]);
    p
}

/// Runs `client.py PORT CONNS PER_CONN` under the library to a successful exit.
fn run_client(f: &Fixture, port: u16, env: &PreloadEnv) -> (Proc, Result<(), String>) {
    let args = [
        script("client.py").display().to_string(),
        port.to_string(),
        CONNS.to_string(),
        PER_CONN.to_string(),
    ];
    let mut c = check(
        Proc::spawn("client", command(python(), &args, Some(env)), f.dir()),
        &[],
    );
    let r = c.wait_success(TIMEOUT);
    (c, r)
}

/// Waits until nothing listens on `port` any more (the last server process exited).
fn wait_closed(port: u16) -> Result<(), String> {
    let t = Instant::now();
    while is_listening(port)? {
        if t.elapsed() > TIMEOUT {
            return Err(format!("port {port} still listens after {TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The env of a server whose processes each write their own stats file into `dir`.
fn per_process_env(f: &Fixture, port: u16) -> (PreloadEnv, PathBuf) {
    let dir = f.dir().join("server-stats");
    std::fs::create_dir(&dir).unwrap();
    let mut env = f.preload("server").with_ports(port.to_string());
    env.stats_file = PathBuf::from(format!("{}/", dir.display()));
    (env, dir)
}

/// The server's processes, summed over their stats files: every connection accepted on the
/// NTB path, none fell back, and the NTB bytes received cover the payload.
fn check_server_stats(dir: &Path, port: u16) -> Result<(), String> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|x| x == "json") {
            files.push(Stats::load(&p)?);
        }
    }
    let ntb: u64 = files.iter().map(|s| s.ntb_connections).sum();
    let tcp: u64 = files.iter().map(|s| s.tcp_connections).sum();
    let rx: u64 = files.iter().map(|s| s.ntb_rx_bytes).sum();
    let on_tcp: Vec<_> = files
        .iter()
        .flat_map(|s| s.on_port(port))
        .filter(|c| c.path != "ntb")
        .collect();
    if ntb < CONNS || tcp != 0 || rx < CONNS * PER_CONN || !on_tcp.is_empty() {
        return Err(format!(
            "server stats over {} files: ntb_connections {ntb} (want >= {CONNS}), \
             tcp_connections {tcp} (want 0), ntb_rx_bytes {rx} (want >= {}), not on NTB: {on_tcp:?}",
            files.len(),
            CONNS * PER_CONN
        ));
    }
    Ok(())
}

/// A server shape that must keep every connection on the NTB path.
fn run_ntb_shape(name: &str, mode: &str) -> Proc {
    run_ntb_shape_then(name, mode, |_| {})
}

/// [`run_ntb_shape`], with `after_client` run on the server once the client is done (e.g. to
/// stop a server that serves until SIGTERM).
fn run_ntb_shape_then(name: &str, mode: &str, after_client: impl FnOnce(&mut Proc)) -> Proc {
    let f = Fixture::new(name);
    // The port is chosen once the lo lock is held: a port picked before a long wait for it
    // may be taken meanwhile.
    let lo = LoWindow::open(LoExpect::Quiet).unwrap();
    let port = free_port();
    let (server_env, server_stats) = per_process_env(&f, port);
    let client_env = f.preload("client").with_ports(port.to_string());
    let mut server = start_server(&f, mode, port, &server_env);
    let (client, r) = run_client(&f, port, &client_env);
    let delta = lo.delta().unwrap();
    drop(lo);
    after_client(&mut server);
    let mut errors = Vec::new();
    errors.extend(r.err().map(|e| format!("client: {e}")));
    match client_env.stats() {
        Ok(s) => errors.extend(
            s.check_ntb(port, CONNS, CONNS * PER_CONN, 0)
                .err()
                .map(|e| format!("client stats: {e}")),
        ),
        Err(e) => errors.push(e),
    }
    errors.extend(
        delta
            .check_fast_path(CONNS * PER_CONN)
            .err()
            .map(|e| format!("lo: {e}")),
    );
    errors.extend(wait_closed(port).err());
    // A server process writes its final counts at exit, which may come a moment after its
    // listener closed (and a rewrite skipped while connections closed fast comes within the
    // library's 100 ms interval): the files must show them within a few seconds.
    let t = Instant::now();
    let mut stats = check_server_stats(&server_stats, port);
    while stats.is_err() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        stats = check_server_stats(&server_stats, port);
    }
    errors.extend(stats.err());
    if !errors.is_empty() {
        let _ = server.terminate();
        check::<()>(
            Err(format!(
                "{name} (logs in {}):\n- {}",
                f.dir().display(),
                errors.join("\n- ")
            )),
            &[&server, &client],
        );
    }
    server
}

/// Parent listens and forks a child per connection; each child closes its copy of the listener
/// and serves. Before the fix the first child's close withdrew the parent's listener and every
/// later client got `NoListener` (refused under strict).
#[test]
fn forked_children_that_close_the_listener_keep_it_published() {
    let mut server = run_ntb_shape("prefork_close", "prefork");
    check(server.wait_success(TIMEOUT), &[&server]);
}

/// The process that listened exits at once; its child serves. Before the fix the listener was
/// judged by the exited parent's pid: clients skipped it (`NoListener`) and the next process to
/// open the rendezvous area withdrew it.
#[test]
fn a_daemonizing_server_keeps_its_listener() {
    let mut server = run_ntb_shape("daemonize", "daemon");
    // The parent exited right after the child took over.
    check(server.wait_success(TIMEOUT), &[&server]);
}

/// The process that listened starts a new program (fork + exec) that serves on the inherited
/// socket, and closes its own copy. The new image takes over the listener published before the
/// exec (found by the socket's inode) and answers the offers. Before: the parent's close
/// withdrew the listener (`NoListener`); with only the socket-liveness fix, the listener stayed
/// published but nobody answered (`NoAnswer` after 2 s).
#[test]
fn a_listener_handed_to_an_execed_program_stays_on_ntb() {
    let mut server = run_ntb_shape("exec_handover", "exec");
    check(server.wait_success(TIMEOUT), &[&server]);
}

/// Stops a server that serves until SIGTERM, and waits for it (the caller then expects a clean
/// exit): its workers write their stats files as they exit, after their listening sockets
/// close, so the files are read once the master, which waits for its workers, is gone.
fn sigterm(server: &mut Proc) {
    // SAFETY: a signal to our own child, which we have not reaped.
    unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    let _ = server.wait_timeout(TIMEOUT);
}

/// A master that keeps its listening socket and three forked workers accepting on it (as
/// nginx and Apache's prefork do).
#[test]
fn forked_workers_accepting_on_one_socket_stay_on_ntb() {
    let mut server = run_ntb_shape_then("workers", "workers", sigterm);
    check(server.wait_success(TIMEOUT), &[&server]);
}

/// Three workers, each with its own SO_REUSEPORT listening socket on the port: three listener
/// entries; the kernel spreads the connections, and the offer follows each one to the worker
/// that accepts it.
#[test]
fn a_so_reuseport_group_stays_on_ntb() {
    let mut server = run_ntb_shape_then("reuseport", "reuseport", sigterm);
    check(server.wait_success(TIMEOUT), &[&server]);
}

/// Listens as root, then setuid(nobody) and serves. In the current model each user has its own
/// device directory (0700), so the server can no longer make its connections' interrupt lines
/// there: every connection falls back to TCP, and must say why exactly (`NoPermission` on both
/// sides; before, `NoDoorbell`, "no interrupt vector left", which sent users after leaks).
#[test]
fn a_server_that_drops_privileges_after_listen_falls_back_with_no_permission() {
    // SAFETY: getuid has no arguments and cannot fail.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let f = Fixture::new("dropuid");
    let lo = LoWindow::open(LoExpect::Bulk).unwrap();
    let port = free_port();
    let server_env = f
        .preload("server")
        .with_ports(port.to_string())
        .with_strict(false);
    let client_env = f
        .preload("client")
        .with_ports(port.to_string())
        .with_strict(false);
    let mut server = start_server(&f, "dropuid", port, &server_env);
    let (client, r) = run_client(&f, port, &client_env);
    let delta = lo.delta().unwrap();
    drop(lo);
    let mut errors = Vec::new();
    errors.extend(r.err().map(|e| format!("client: {e}")));
    match client_env.stats() {
        Ok(s) => errors.extend(
            s.check_tcp(port, CONNS, |r| r == "NoPermission")
                .err()
                .map(|e| format!("client stats: {e}")),
        ),
        Err(e) => errors.push(e),
    }
    errors.extend(
        delta
            .check_tcp(CONNS * PER_CONN)
            .err()
            .map(|e| format!("lo: {e}")),
    );
    errors.extend(server.wait_success(TIMEOUT).err());
    if !errors.is_empty() {
        check::<()>(
            Err(format!(
                "dropuid (logs in {}):\n- {}",
                f.dir().display(),
                errors.join("\n- ")
            )),
            &[&server, &client],
        );
    }
}
