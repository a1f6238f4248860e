//! The application matrix: real Debian servers and clients under `LD_PRELOAD=libpcisock.so` on a flagged port
//! (`PCISOCK_PORTS`, strict), each bounded in time. Each test proves the fast path carried the bytes with the
//! application's own result (benchmark summary, SHA-256 of a download, echo compare), the clients' stats files
//! (connections on path `ntb`, NTB byte counts covering the payload), the servers' stats files, and the loopback
//! counters (lo carried less than 5% of the payload + 64 KiB).
//!
//! nginx (master + workers) writes one stats file per process (`PCISOCK_STATS_FILE=DIR/`), so the workers'
//! NTB bytes are checked too. socat's child per connection still shares one `PCISOCK_STATS_FILE`, which each
//! process rewrites at every close and at exit (the totals of whichever process wrote last): for it the server-side
//! check is only "no flagged connection fell back to TCP", and the byte proof is the client's file and lo.
//!
//! A missing binary fails the test with the Debian package to install (scripts/setup.sh).
//!
//! The helpers every application uses are here; the tests, one module per application or kind of load:
//! `redis`, `nginx`, `tools` (socat, sockperf, Python, a strict refusal), `connections` (many at once, many short).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use iperf_tests::apps::{
    interrupt, number_after, redis_server_args, require_bin, sha256, version_line, wait_stats,
    write_payload, ProcTree,
};
use iperf_tests::*;

const MIB: u64 = 1024 * 1024;
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Collects failed signals and panics with all of them and the processes' logs.
struct Verdict {
    name: &'static str,
    errors: Vec<String>,
}

impl Verdict {
    fn new(name: &'static str) -> Verdict {
        Verdict {
            name,
            errors: Vec::new(),
        }
    }

    fn push(&mut self, what: &str, r: Result<(), String>) {
        if let Err(e) = r {
            self.errors.push(format!("{what}: {e}"));
        }
    }

    fn finish(self, f: &Fixture, procs: &[&Proc]) {
        if self.errors.is_empty() {
            return;
        }
        let mut msg = format!("{} (logs in {}):", self.name, f.dir().display());
        for e in &self.errors {
            msg.push_str("\n- ");
            msg.push_str(&clip(e, 3000));
        }
        check::<()>(Err(msg), procs);
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} more bytes)", &s[..end], s.len() - end)
}

fn spawn(name: &str, program: &Path, args: &[&str], env: &PreloadEnv, dir: &Path) -> Proc {
    check(
        Proc::spawn(name, command(program, args, Some(env)), dir),
        &[],
    )
}

/// Runs a client to a successful exit within `timeout`.
fn run_client(
    name: &str,
    program: &Path,
    args: &[&str],
    env: &PreloadEnv,
    dir: &Path,
    timeout: Duration,
) -> (Proc, Result<(), String>) {
    let mut p = spawn(name, program, args, env, dir);
    let r = p.wait_success(timeout);
    if r.is_err() {
        let _ = p.terminate();
    }
    (p, r.map_err(|e| first_line(&e).to_owned()))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// The number before `marker` in `text` (e.g. "12345 requests in").
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let i = text.find(marker)?;
    text[..i].split_whitespace().last()?.parse().ok()
}
/// Of a request/response run's requests, the share that may have waited for a timer (a wake-up lost), and a few
/// more for races at the ends of the run (see `stats::check_late_wakeups`).
const LATE_MAX_SHARE: f64 = 0.001;
const LATE_SLACK: u64 = 20;

/// How long a server whose clients have gone is watched, and the share of it it may spend on the CPU.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
const IDLE_MAX_SHARE: f64 = 0.05;
/// The real Python interpreter (a pyenv shim is a shell script).
fn python3() -> std::path::PathBuf {
    let launcher = require_bin("python3", "python3");
    std::process::Command::new(&launcher)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or(launcher)
}

mod connections;
mod nginx;
mod redis;
mod tools;
