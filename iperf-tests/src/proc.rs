//! Child processes of a test: spawned with a chosen environment (preloaded or plain), their stdout and stderr
//! written to files in the test's scratch directory, and stopped on drop. It only ever signals the pid of a child
//! it spawned and has not reaped yet.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys;
use crate::PreloadEnv;

/// How long [`Proc`]'s drop waits after each SIGTERM before the next step.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

const POLL: Duration = Duration::from_millis(10);

/// Variables we set ourselves; inherited values are removed from every child so the test decides alone.
/// `PCISOCK_LOG*` is passed through, to debug a failing test.
fn is_controlled_var(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name == "LD_PRELOAD" || (name.starts_with("PCISOCK_") && !name.starts_with("PCISOCK_LOG"))
}

/// Builds a command for `program args…`: with `preload`, under the library with its variables; with `None`, a
/// plain process with no `LD_PRELOAD` and no `PCISOCK_*` variable.
pub fn command<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    preload: Option<&PreloadEnv>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (name, _) in std::env::vars_os() {
        if is_controlled_var(&name) {
            cmd.env_remove(name);
        }
    }
    if let Some(env) = preload {
        env.apply(&mut cmd);
    }
    cmd
}

/// A running (or finished) child process with its output in `<dir>/<name>.stdout|.stderr`.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    command_line: String,
    /// Its threads' stacks, taken when it had to be killed (it ignored SIGTERM twice).
    stacks: Option<String>,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr to files named after `name` in `dir`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc, String> {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let out =
            File::create(&stdout_path).map_err(|e| format!("{}: {e}", stdout_path.display()))?;
        let err =
            File::create(&stderr_path).map_err(|e| format!("{}: {e}", stderr_path.display()))?;
        let mut command_line = cmd.get_program().to_string_lossy().into_owned();
        for arg in cmd.get_args() {
            command_line.push(' ');
            command_line.push_str(&arg.to_string_lossy());
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({command_line}): {e}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            status: None,
            stdout_path,
            stderr_path,
            command_line,
            stacks: None,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exit status if the child has exited (reaping it), without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>, String> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| format!("wait for {}: {e}", self.name))?;
        }
        Ok(self.status)
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits at most `timeout` for the child to exit. On timeout the child keeps running (drop stops it).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not exit within {timeout:?}\n{}\n{}",
                    self.name,
                    self.describe(),
                    stacks(self.pid()),
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for a successful exit within `timeout`; an error describes the process (status, output tails).
    pub fn wait_success(&mut self, timeout: Duration) -> Result<(), String> {
        let status = self.wait_timeout(timeout)?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {status}\n{}",
                self.name,
                self.describe()
            ))
        }
    }

    /// Waits at most `timeout` until `pred(stdout so far)` holds; fails early if the child exits without it.
    pub fn wait_stdout(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stdout()) {
                return Ok(());
            }
            if self.try_status()?.is_some() {
                // One more look: the last output may have landed just before the exit.
                if pred(&self.stdout()) {
                    return Ok(());
                }
                return Err(format!(
                    "{} exited before the expected output\n{}",
                    self.name,
                    self.describe()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: expected output not seen within {timeout:?}\n{}",
                    self.name,
                    self.describe()
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until a socket listens on `port` (see [`crate::wait_listening`]), failing early if the child exits.
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if crate::net::is_listening(port)? {
                return Ok(());
            }
            if self.try_status()?.is_some() {
                return Err(format!(
                    "{} exited before listening on port {port}\n{}",
                    self.name,
                    self.describe()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: nothing listens on port {port} after {timeout:?}\n{}",
                    self.name,
                    self.describe()
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Stops the child if it still runs: SIGTERM, [`TERM_GRACE`], SIGTERM again (iperf 2 may ignore the first
    /// while blocked in accept), [`TERM_GRACE`], then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self) -> Result<ExitStatus, String> {
        for _ in 0..2 {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            // Not reaped (try_status returned None), so the pid is still our child's.
            let _ = sys::signal_child(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + TERM_GRACE;
            while Instant::now() < deadline {
                if let Some(status) = self.try_status()? {
                    return Ok(status);
                }
                thread::sleep(POLL);
            }
        }
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        self.stacks = Some(stacks(self.pid()));
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_err(|e| format!("wait for {}: {e}", self.name))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A few lines for a failure message: command, status, and the tails of stdout and stderr.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "running".to_owned(),
        };
        let stacks = match &self.stacks {
            Some(s) => format!("\n  before it was killed: {s}"),
            None => String::new(),
        };
        format!(
            "  [{}] pid {} `{}` status: {status}\n  stdout: {}\n  stderr: {}{stacks}",
            self.name,
            self.child.id(),
            self.command_line,
            tail(&self.stdout(), 1500),
            tail(&self.stderr(), 1500)
        )
    }
}

/// The stacks of every thread of the running process `pid`, for the report of a process that
/// hangs (gdb in batch mode, at most 30 s; frames only), or why there are none.
fn stacks(pid: u32) -> String {
    let out = std::process::Command::new("timeout")
        .args(["30", "gdb", "-nx", "-batch", "-p", &pid.to_string()])
        .args(["-ex", "thread apply all bt 40"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let frames: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("Thread ") || l.starts_with('#'))
                .collect();
            if frames.is_empty() {
                format!("no stacks of pid {pid} (gdb: {})", o.status)
            } else {
                format!("stacks of pid {pid}:\n{}", frames.join("\n"))
            }
        }
        Err(e) => format!("no stacks of pid {pid} (gdb: {e})"),
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// The last `max` bytes of `text` (on a char boundary), or "(empty)".
fn tail(text: &str, max: usize) -> String {
    if text.trim().is_empty() {
        return "(empty)".to_owned();
    }
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let prefix = if start > 0 { "…" } else { "" };
    format!("{prefix}{}", text[start..].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn captures_output_and_exit_status() {
        let dir = TempDir::new("unit-proc").unwrap();
        let cmd = command("sh", &["-c", "echo out; echo err >&2; exit 3"], None);
        let mut p = Proc::spawn("sh", cmd, dir.path()).unwrap();
        let status = p.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.stdout(), "out\n");
        assert_eq!(p.stderr(), "err\n");
        assert!(p
            .wait_success(Duration::from_secs(1))
            .unwrap_err()
            .contains("failed"));
    }

    #[test]
    fn terminate_stops_a_sleeper() {
        let dir = TempDir::new("unit-proc").unwrap();
        let mut p = Proc::spawn("sleep", command("sleep", &["30"], None), dir.path()).unwrap();
        // The report of a process that did not exit shows where its threads are.
        let e = p.wait_timeout(Duration::from_millis(50)).unwrap_err();
        assert!(e.contains(&format!("stacks of pid {}:\n", p.pid())), "{e}");
        assert!(e.contains("#0 "), "{e}");
        let t = Instant::now();
        let status = p.terminate().unwrap();
        assert!(!status.success());
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn plain_children_lose_preload_variables() {
        assert!(is_controlled_var(OsStr::new("LD_PRELOAD")));
        assert!(is_controlled_var(OsStr::new("PCISOCK_PORTS")));
        assert!(!is_controlled_var(OsStr::new("PCISOCK_LOG")));
        assert!(!is_controlled_var(OsStr::new("PATH")));
    }

    #[test]
    fn tail_is_bounded() {
        assert_eq!(tail("", 10), "(empty)");
        assert_eq!(tail("abcdef\n", 3), "…ef");
    }
}
