//! Setups for real applications under the library (tests/apps/): finding a Debian binary (or failing with the
//! package to install), its version line, deterministic payload files and their SHA-256, waiting on a stats file,
//! and stopping every process of a multi-process server (nginx workers, socat children) by pid. It never signals a
//! process that is not a descendant of a child this test started.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::{Proc, Stats};

/// `name` found in `PATH` (or at an absolute path), or a panic saying which Debian package to install.
#[track_caller]
pub fn require_bin(name: &str, package: &str) -> PathBuf {
    match find_bin(name) {
        Some(p) => p,
        None => panic!("`{name}` not found: install {package} (scripts/setup.sh)"),
    }
}

/// Compiles the C program `src` into `out` with `cc` (or `$CC`) and `flags`; panics with the
/// compiler's message (or the package to install) on failure.
pub fn compile_c(src: &Path, out: &Path, flags: &[&str]) {
    assert!(src.is_file(), "missing program {}", src.display());
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let r = Command::new(&cc)
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the C compiler `{cc}` ({e}): install gcc (scripts/setup.sh)")
        });
    assert!(
        r.status.success(),
        "{cc} failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&r.stderr)
    );
}

/// `name` in `PATH`, if there.
pub fn find_bin(name: &str) -> Option<PathBuf> {
    let direct = Path::new(name);
    if direct.is_absolute() {
        return direct.is_file().then(|| direct.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The first non-empty line a command prints (stdout, else stderr) for its version flag, e.g. `nginx -v`.
pub fn version_line(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("?")
                .to_owned()
        }
        Err(e) => format!("? ({e})"),
    }
}

/// Writes `bytes` of a deterministic pseudo-random stream (splitmix64 of `seed`) to `path`.
pub fn write_payload(path: &Path, bytes: u64, seed: u64) -> Result<(), String> {
    let file = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut state = seed;
    let mut left = bytes;
    while left > 0 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let chunk = z.to_le_bytes();
        let n = left.min(8) as usize;
        w.write_all(&chunk[..n])
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        left -= n as u64;
    }
    w.flush()
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// The SHA-256 of a file, by `sha256sum` (coreutils).
pub fn sha256(path: &Path) -> Result<String, String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sha256sum {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "sha256sum printed nothing".to_owned())
}

/// Polls the stats file at `path` until `pred` holds (a server rewrites it at each connection close), at most
/// `timeout`; returns the last stats read, or the last error.
pub fn wait_stats(
    path: &Path,
    timeout: Duration,
    pred: impl Fn(&Stats) -> bool,
) -> Result<Stats, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = Stats::load(path);
        match &r {
            Ok(s) if pred(s) => return r,
            _ => {}
        }
        if Instant::now() >= deadline {
            return r;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `(parent pid, start time)` of a live (not zombie) process, from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3 of stat); ppid is field 4, starttime field 22.
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// The live descendants of `root` as `(pid, start time)`, children before grandchildren.
pub fn descendants(root: u32) -> Vec<(u32, u64)> {
    let mut table = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((ppid, start)) = stat_of(pid) {
                    table.push((pid, ppid, start));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    let mut seen = HashSet::new();
    while let Some(p) = frontier.pop() {
        for &(pid, ppid, start) in &table {
            if ppid == p && seen.insert(pid) {
                out.push((pid, start));
                frontier.push(pid);
            }
        }
    }
    out
}

/// A server process and the processes it forked: [`ProcTree::stop`] (or drop) terminates the server, then kills
/// by pid every descendant seen while it ran that still lives with the same start time (so a recycled pid is never
/// touched).
#[derive(Debug)]
pub struct ProcTree {
    /// The server process this test spawned.
    pub proc: Proc,
    seen: Vec<(u32, u64)>,
}

impl ProcTree {
    /// Wraps a spawned server.
    pub fn new(proc: Proc) -> ProcTree {
        ProcTree {
            proc,
            seen: Vec::new(),
        }
    }

    /// Records the server's current descendants (call after it has forked its workers, and before stopping it).
    pub fn note_descendants(&mut self) {
        if self.proc.is_running() {
            for d in descendants(self.proc.pid()) {
                if !self.seen.contains(&d) {
                    self.seen.push(d);
                }
            }
        }
    }

    /// The descendants recorded so far.
    pub fn seen(&self) -> &[(u32, u64)] {
        &self.seen
    }

    /// Terminates the server (SIGTERM, then SIGKILL, see [`Proc::terminate`]), waits up to 2 s for the recorded
    /// descendants to go, then SIGKILLs those left. Returns the pids that had to be killed.
    pub fn stop(&mut self) -> Vec<u32> {
        self.note_descendants();
        let _ = self.proc.terminate();
        let alive = |&(pid, start): &(u32, u64)| stat_of(pid).map(|(_, s)| s) == Some(start);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.seen.iter().any(alive) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let mut killed = Vec::new();
        for d in self.seen.clone() {
            if alive(&d) {
                // A descendant of our child (not our own child, so not reaped by us): `kill` by its pid, checked
                // above against its start time.
                let _ = Command::new("kill")
                    .args(["-KILL", &d.0.to_string()])
                    .status();
                killed.push(d.0);
            }
        }
        // SIGKILL is delivered asynchronously: wait (briefly) until they are gone.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.seen.iter().any(alive) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        killed
    }
}

impl Drop for ProcTree {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Sends SIGINT to a child this test spawned and has not reaped (a clean exit for Python, which runs its atexit
/// handlers, and so the library's, on KeyboardInterrupt but not on SIGTERM).
pub fn interrupt(proc: &mut Proc) -> Result<(), String> {
    if proc.try_status()?.is_some() {
        return Ok(());
    }
    crate::sys::signal_child(proc.pid(), libc::SIGINT)
        .map_err(|e| format!("SIGINT {}: {e}", proc.name()))
}

/// The number after `marker` in a program's report (`SentMessages=155127`, `processed: 435`):
/// the digits after it, past any blanks.
pub fn number_after(text: &str, marker: &str) -> Option<u64> {
    let i = text.find(marker)? + marker.len();
    let digits: String = text[i..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `redis-server`'s arguments as the tests run it: on 127.0.0.1:`port`, nothing saved, in the
/// foreground, its files in `dir`.
pub fn redis_server_args<'a>(port: &'a str, dir: &'a str) -> [&'a str; 14] {
    [
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--dir",
        dir,
    ]
}

/// `program args` run as `user` (its primary group, no supplementary groups) with `env`; root
/// runs it as is.
pub fn as_user(
    user: &str,
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    env: Option<&crate::PreloadEnv>,
) -> Command {
    if user == "root" {
        return crate::command(program, args, env);
    }
    let group = Command::new("id")
        .args(["-gn", user])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut full: Vec<std::ffi::OsString> = vec![
        format!("--reuid={user}").into(),
        format!("--regid={group}").into(),
        "--clear-groups".into(),
        program.as_ref().to_owned(),
    ];
    full.extend(args.iter().map(|&a| a.into()));
    crate::command("setpriv", &full, env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn payload_is_deterministic_and_exact() {
        let dir = TempDir::new("unit-apps").unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        write_payload(&a, 1_000_003, 9).unwrap();
        write_payload(&b, 1_000_003, 9).unwrap();
        assert_eq!(fs::metadata(&a).unwrap().len(), 1_000_003);
        assert_eq!(sha256(&a).unwrap(), sha256(&b).unwrap());
        write_payload(&b, 1_000_003, 10).unwrap();
        assert_ne!(sha256(&a).unwrap(), sha256(&b).unwrap());
    }

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find_bin("sh").is_some());
        assert!(find_bin("no-such-binary-pcisock").is_none());
    }

    #[test]
    fn sees_a_grandchild() {
        let dir = TempDir::new("unit-apps").unwrap();
        let p = Proc::spawn(
            "sh",
            crate::command("sh", &["-c", "sleep 30 & sleep 30 & wait"], None),
            dir.path(),
        )
        .unwrap();
        let mut tree = ProcTree::new(p);
        let deadline = Instant::now() + Duration::from_secs(5);
        while tree.seen().len() < 2 && Instant::now() < deadline {
            tree.note_descendants();
            thread::sleep(Duration::from_millis(20));
        }
        assert!(tree.seen().len() >= 2, "{:?}", tree.seen());
        tree.stop();
        for &(pid, start) in tree.seen() {
            assert_ne!(stat_of(pid).map(|(_, s)| s), Some(start), "{pid} survived");
        }
    }
}
