//! Failover: a live NTB connection over the emulated device survives the link going down by going on over its own
//! TCP socket, and returns to the ring when the link is back.
//!
//! The processes map the fixture's device themselves (`PCISOCK_FABRIC=device`: a link fault is a device fault) and
//! are not strict (strict mode resets instead: `strict_mode_resets_instead_of_failing_over`). Faults are injected
//! with the CLI (`pcisock emu fault link-down` / `pcisock emu clear`), as an operator would. Which path carried
//! the bytes, and when, is read from the kernel's own counters of the stream's socket (`ss -ti`: `bytes_received`
//! of the server's socket, by its exact 4-tuple), which other traffic on lo cannot disturb (the lo lock is held
//! anyway: these tests push bulk TCP over lo); the library's stats file says how often each connection moved.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use iperf_tests::apps::redis_server_args;
use iperf_tests::*;

const MIB: u64 = 1 << 20;

/// A preloaded, non-strict process on the device, with `port` flagged.
fn env(f: &Fixture, role: &str, port: u16) -> PreloadEnv {
    let mut e = f
        .preload(role)
        .with_strict(false)
        .with_ports(port.to_string());
    e.extra.push(("PCISOCK_FABRIC".into(), "device".into()));
    e
}

/// `pcisock emu fault link-down` (down) or `pcisock emu clear` on the fixture's device.
fn link(emu_dir: &Path, down: bool) {
    let args: &[&str] = if down {
        &["emu", "fault", "link-down"]
    } else {
        &["emu", "clear"]
    };
    // A server's listen makes the device just after the kernel's listen, which is what the
    // tests wait for (`wait_listening`): a fault set in between finds no device yet.
    let t0 = Instant::now();
    loop {
        match try_emu_with(emu_dir, &[], args) {
            Ok(_) => return,
            Err(e)
                if e.contains("no pcisock device on this host yet")
                    && t0.elapsed() < Duration::from_secs(5) =>
            {
                thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("pcisock {args:?}: {e}"),
        }
    }
}

/// `pcisock ARGS` on the fixture's device; its output.
fn emu(emu_dir: &Path, args: &[&str]) -> String {
    emu_with(emu_dir, &[], args)
}

/// `pcisock ARGS` on the fixture's device, with `env` set (a two-host device's topology).
fn emu_with(emu_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    try_emu_with(emu_dir, env, args).unwrap_or_else(|e| panic!("pcisock {args:?}: {e}"))
}

/// As [`emu_with`]: its output, or its error output if it failed.
fn try_emu_with(emu_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<String, String> {
    let cli = Lib::cli().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(cli)
        .envs(env.iter().copied())
        .args(args)
        .env("PCISOCK_EMU_DIR", emu_dir)
        .output()
        .expect("run pcisock emu");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The server's established TCP sockets on `port` (the test's connections) at one moment, as the kernel counts
/// them (`ss -tin`).
struct Sample {
    at: Instant,
    socks: Vec<TcpSocket>,
}

fn sample(port: u16) -> Sample {
    Sample {
        at: Instant::now(),
        socks: tcp_sockets(port),
    }
}

impl Sample {
    /// The bytes the server's socket from `peer` had received, if it was there.
    fn received(&self, peer: &str) -> Option<u64> {
        self.socks
            .iter()
            .find(|s| s.peer == peer)
            .map(|s| s.bytes_received)
    }
}

fn sleep_until(t0: Instant, at: Duration) {
    if let Some(d) = at.checked_sub(t0.elapsed()) {
        thread::sleep(d);
    }
}

/// The stats of the one connection on `port` that carried the stream (the most bytes, either way).
fn data_conn(s: &Stats, port: u16) -> ConnStats {
    s.on_port(port)
        .max_by_key(|c| c.tx_bytes + c.rx_bytes + c.failover_tx_bytes + c.failover_rx_bytes)
        .cloned()
        .unwrap_or_else(|| panic!("no connection on port {port} in {s}"))
}

/// An iperf3 stream of `secs` seconds between two preloaded processes on a fresh device: the fixture, the
/// server, the client process, and both envs (the lo lock is taken first and held by the caller).
struct Stream {
    f: Fixture,
    port: u16,
    se: PreloadEnv,
    ce: PreloadEnv,
    server: Iperf3Server,
    client: Proc,
}

impl Stream {
    fn start(name: &str, secs: u32) -> Stream {
        Stream::start_with(name, secs, &[])
    }

    /// `start`, with `extra` in both processes' environments.
    fn start_with(name: &str, secs: u32, extra: &[(&str, &str)]) -> Stream {
        let f = Fixture::new(name);
        let port = free_port();
        let (mut se, mut ce) = (env(&f, "server", port), env(&f, "client", port));
        for (k, v) in extra {
            se.extra.push(((*k).into(), (*v).into()));
            ce.extra.push(((*k).into(), (*v).into()));
        }
        let server = Iperf3Server::start(port, Some(&se), f.dir()).unwrap();
        let args = Iperf3Client {
            amount: Amount::Secs(secs),
            ..Iperf3Client::new(port, 0)
        }
        .args();
        let client = Proc::spawn(
            "iperf3-client",
            command("iperf3", &args, Some(&ce)),
            f.dir(),
        )
        .unwrap();
        Stream {
            f,
            port,
            se,
            ce,
            server,
            client,
        }
    }

    /// Both ends finished cleanly and agree; the client's report.
    fn finish(&mut self) -> Iperf3Output {
        let status = self.client.wait_success(Duration::from_secs(30));
        let out = check(
            status.and_then(|()| parse_iperf3_json(&self.client.stdout())),
            &[&self.client, &self.server.proc],
        );
        let sout = check(
            self.server.finish(Duration::from_secs(10)),
            &[&self.server.proc],
        );
        check(
            sout.check_server_agrees(&out),
            &[&self.client, &self.server.proc],
        );
        out
    }
}

/// `total_commands_processed` of the redis-server on `port`, asked with a plain redis-cli (not preloaded: a
/// short TCP connection, closed before the next sample of the server's established sockets).
fn redis_commands(cli: &Path, port: u16) -> u64 {
    let out = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "INFO", "stats"])
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("redis-cli INFO: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Bytes the server's sockets received between two samples of `tcp_sockets`, over the sockets in both (a short
/// connection that came or went between them, redis-cli's, is left out).
fn received_between(a: &[TcpSocket], b: &[TcpSocket]) -> u64 {
    b.iter()
        .filter_map(|s| {
            a.iter()
                .find(|t| t.peer == s.peer)
                .map(|t| s.bytes_received.saturating_sub(t.bytes_received))
        })
        .sum()
}

mod apps;
mod faults;
mod late;
mod link;
mod peers;
