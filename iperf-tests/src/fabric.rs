//! A host fabric service of a test's own (docs/HOST-SERVICE.md): started on a private socket
//! under /run (`PCISOCK_FABRIC=PATH` in the env of the processes that use it), asked for its
//! counts with `pcisock fabric status`, stopped when dropped.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{check, command, Fixture, PreloadEnv, Proc};

/// A fabric service of the test's own.
pub struct Service {
    pub proc: Proc,
    pub socket: PathBuf,
    dir: PathBuf,
    /// A service of one host of two: its network namespace and its side of the device.
    bridged: Option<(String, u32)>,
}

impl Service {
    pub fn start(f: &Fixture) -> Service {
        let dir = PathBuf::from(format!(
            "/run/pcisock-test-{}-{}",
            std::process::id(),
            f.name
        ));
        let _ = fs::remove_dir_all(&dir);
        let socket = dir.join("fabric.sock");
        let proc = Self::spawn(f, "fabric", &socket);
        let svc = Service {
            proc,
            socket,
            dir,
            bridged: None,
        };
        svc.wait_answer();
        svc
    }

    /// One host of two (docs/HOST-SERVICE.md, phase 3): a service in network namespace
    /// `netns` that also pairs across the bridge, on side `host` (0 or 1) of the fixture's
    /// emulated two-host device (`pcisock fabric start --bridge`).
    pub fn start_bridged(f: &Fixture, name: &str, netns: &str, host: u32) -> Service {
        let dir = PathBuf::from(format!(
            "/run/pcisock-test-{}-{}-{name}",
            std::process::id(),
            f.name
        ));
        let _ = fs::remove_dir_all(&dir);
        let socket = dir.join("fabric.sock");
        let proc = Self::spawn_bridged(f, name, &socket, netns, host);
        let svc = Service {
            proc,
            socket,
            dir,
            bridged: Some((netns.to_string(), host)),
        };
        svc.wait_answer();
        svc
    }

    /// `pcisock fabric start --foreground --bridge` on `socket`, in `netns`, on side `host`.
    fn spawn_bridged(
        f: &Fixture,
        name: &str,
        socket: &std::path::Path,
        netns: &str,
        host: u32,
    ) -> Proc {
        let cli = crate::Lib::cli().unwrap_or_else(|e| panic!("{e}"));
        let cli_s = cli.display().to_string();
        let sock_s = socket.display().to_string();
        let args = [
            "netns",
            "exec",
            netns,
            &cli_s,
            "fabric",
            "start",
            "--foreground",
            "--bridge",
            "--socket",
            &sock_s,
        ];
        let mut cmd = command("ip", &args, None);
        for (k, v) in Self::device_env(f, host) {
            cmd.env(k, v);
        }
        check(Proc::spawn(name, cmd, f.dir()), &[])
    }

    /// The variables that name side `host` of the fixture's emulated two-host device.
    pub fn device_env(f: &Fixture, host: u32) -> Vec<(String, String)> {
        vec![
            ("PCISOCK_EMU_DIR".into(), f.emu_dir().display().to_string()),
            ("PCISOCK_EMU_TOPOLOGY".into(), "two-host".into()),
            ("PCISOCK_EMU_HOST".into(), host.to_string()),
        ]
    }

    /// `pcisock fabric start --foreground` on `socket`.
    fn spawn(f: &Fixture, name: &str, socket: &std::path::Path) -> Proc {
        let cli = crate::Lib::cli().unwrap_or_else(|e| panic!("{e}"));
        let sock_s = socket.display().to_string();
        check(
            Proc::spawn(
                name,
                command(
                    &cli,
                    &["fabric", "start", "--foreground", "--socket", &sock_s],
                    None,
                ),
                f.dir(),
            ),
            &[],
        )
    }

    fn wait_answer(&self) {
        let t0 = Instant::now();
        while self.status().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the service did not answer: {}",
                self.proc.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `pcisock fabric status` as (name, value) pairs.
    pub fn status(&self) -> Result<Vec<(String, u64)>, String> {
        let cli = crate::Lib::cli()?;
        let out = Command::new(cli)
            .args(["fabric", "status", "--socket"])
            .arg(&self.socket)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut pairs = Vec::new();
        for w in words.windows(2) {
            if let Ok(n) = w[1].parse() {
                pairs.push((w[0].to_string(), n));
            }
        }
        Ok(pairs)
    }

    /// What `pcisock stats` prints through this service.
    pub fn stats_text(&self) -> String {
        let cli = crate::Lib::cli().unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(cli)
            .arg("stats")
            .env("PCISOCK_FABRIC", &self.socket)
            .output()
            .expect("pcisock stats");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The connections `pcisock stats` lists through this service, one row per end:
    /// (pid, role, path, tx_bytes, rx_bytes); pid 0 for an end it shows as `-` (on the other
    /// host).
    pub fn ends(&self) -> Vec<(u32, String, String, u64, u64)> {
        let text = self.stats_text();
        // CONN PID ROLE LOCAL PEER PATH RING TX_BYTES RX_BYTES ...
        let ends = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|w| w.len() > 8 && w[0].parse::<u64>().is_ok())
            .filter_map(|w| {
                let n = |i: usize| w[i].parse::<u64>().ok();
                let pid = if w[1] == "-" { Some(0) } else { n(1) };
                Some((pid? as u32, w[2].to_owned(), w[5].to_owned(), n(7)?, n(8)?))
            });
        ends.collect()
    }

    pub fn count(&self, name: &str) -> u64 {
        let st = self.status().unwrap_or_else(|e| panic!("status: {e}"));
        st.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {st:?}"))
    }

    /// The env of a preloaded process using this service, writing its stats file into the
    /// fixture's directory (opened to every user by [`py`]).
    pub fn env(&self, f: &Fixture, role: &str, port: u16) -> PreloadEnv {
        let mut e = f.preload(role).with_ports(port.to_string());
        e.stats_file = f.dir().join(format!("{role}.stats.json"));
        e.extra
            .push(("PCISOCK_FABRIC".into(), self.socket.display().to_string()));
        e
    }

    /// Start a new service on the same socket (after this one was killed).
    pub fn restart(&mut self, f: &Fixture) {
        self.proc = match &self.bridged {
            Some((netns, host)) => Self::spawn_bridged(f, "fabric2", &self.socket, netns, *host),
            None => Self::spawn(f, "fabric2", &self.socket),
        };
        self.wait_answer();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.proc.terminate();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
