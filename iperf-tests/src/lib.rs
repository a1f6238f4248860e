//! Harness for the integration tests that run real applications (iperf 2, iperf3, a small echo program) under
//! `LD_PRELOAD=libpcisock.so` and check which path carried their bytes. Only this crate's tests use it; it never
//! touches a process it did not start, and every directory it makes is private (0700) and removed afterwards.
//!
//! A test proves the fast path with three signals: the application's own report (bytes sent = bytes received =
//! bytes requested), the library's stats file (`PCISOCK_STATS_FILE`: connections on path `"ntb"`, NTB byte
//! counters), and the kernel's loopback byte counters, which pcisock cannot influence (far fewer bytes than the
//! payload crossed `lo`).
#![deny(unsafe_code)]

pub mod apps;
pub mod cpu;
pub mod fabric;
pub mod fs;
pub mod iperf2;
pub mod iperf3;
pub mod net;
pub mod proc;
pub mod stats;
mod sys;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::cpu::IdleCpu;
pub use crate::fs::{EmuDir, FileLock, LockMode, TempDir};
pub use crate::iperf2::{
    parse_iperf2_csv, Amount, Iperf2Client, Iperf2Output, Iperf2Record, Iperf2Server,
};
pub use crate::iperf3::{parse_iperf3_json, Iperf3Client, Iperf3Output, Iperf3Server, Iperf3Sum};
pub use crate::net::{
    free_port, free_ports, is_listening, listening_ports, parse_ss_tin, tcp_sockets,
    wait_listening, LoCounters, LoDelta, LoExpect, LoWindow, TcpSocket,
};
pub use crate::proc::{command, Proc};
pub use crate::stats::{ConnStats, Stats};

/// The variable that overrides where the library is looked for.
pub const LIB_VAR: &str = "PCISOCK_LIB";

/// The message of every integration test when the library is missing.
pub const NOT_BUILT: &str = "libpcisock.so not built: run cargo build --release";

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Candidate `release` directories, best first: the target directory this test binary was built in
/// (`<target>/debug/deps/<test>` → `<target>/release`), `<workspace>/target/release`, `$CARGO_TARGET_DIR/release`.
fn release_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // <target>/<profile>/deps/<exe> or <target>/<profile>/<exe>
        for up in [3, 2] {
            if let Some(target) = exe.ancestors().nth(up) {
                if target.join("release").is_dir() || target.join("debug").is_dir() {
                    dirs.push(target.join("release"));
                    break;
                }
            }
        }
    }
    dirs.push(workspace_root().join("target").join("release"));
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_relative() {
            workspace_root().join(t)
        } else {
            t
        };
        dirs.push(t.join("release"));
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

fn locate_file(name: &str) -> Result<PathBuf, String> {
    let tried = release_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .collect::<Vec<_>>();
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let list = tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        format!("{name} not found (looked in {list})")
    })
}

/// Where the built library and CLI are.
pub struct Lib;

impl Lib {
    /// The library: `$PCISOCK_LIB` if set (it must exist), else the first `libpcisock.so` found in the release
    /// directories (see [`workspace_root`]).
    pub fn locate() -> Result<PathBuf, String> {
        if let Some(path) = std::env::var_os(LIB_VAR) {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "{NOT_BUILT} ({LIB_VAR}={} does not exist)",
                    path.display()
                ))
            };
        }
        locate_file("libpcisock.so").map_err(|e| format!("{NOT_BUILT} ({e}; or set {LIB_VAR})"))
    }

    /// [`Lib::locate`], or a panic whose message starts with [`NOT_BUILT`].
    #[track_caller]
    pub fn require() -> PathBuf {
        match Self::locate() {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// The `pcisock` command-line tool, next to the library.
    pub fn cli() -> Result<PathBuf, String> {
        if let Ok(lib) = Self::locate() {
            if let Some(cli) = lib
                .parent()
                .map(|d| d.join("pcisock"))
                .filter(|p| p.is_file())
            {
                return Ok(cli);
            }
        }
        locate_file("pcisock")
            .map_err(|e| format!("pcisock CLI not built: run cargo build --release ({e})"))
    }
}

/// The environment of one preloaded process.
#[derive(Debug, Clone)]
pub struct PreloadEnv {
    /// `LD_PRELOAD`.
    pub lib: PathBuf,
    /// `PCISOCK_EMU_DIR`.
    pub emu_dir: PathBuf,
    /// `PCISOCK_STRICT=1` when true (a flagged connection that cannot take the NTB path fails).
    pub strict: bool,
    /// `PCISOCK_PORTS` (extra flagged ports), unset when `None`.
    pub ports: Option<String>,
    /// `PCISOCK_STATS_FILE`: one file per process.
    pub stats_file: PathBuf,
    /// More variables.
    pub extra: Vec<(String, String)>,
}

impl PreloadEnv {
    /// Sets the variables on `cmd`. With `PCISOCK_TEST_FABRIC=SOCKET` in the test runner's
    /// environment, the process meets its peers through the host fabric service at SOCKET
    /// (`PCISOCK_FABRIC`) instead of the fixture's device, so the whole matrix can run over
    /// the service.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("LD_PRELOAD", &self.lib);
        cmd.env("PCISOCK_EMU_DIR", &self.emu_dir);
        if let Some(s) = std::env::var_os("PCISOCK_TEST_FABRIC").filter(|s| !s.is_empty()) {
            cmd.env("PCISOCK_FABRIC", s);
        }
        cmd.env("PCISOCK_STATS_FILE", &self.stats_file);
        if self.strict {
            cmd.env("PCISOCK_STRICT", "1");
        }
        if let Some(ports) = &self.ports {
            cmd.env("PCISOCK_PORTS", ports);
        }
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
    }

    /// This env with `PCISOCK_PORTS=ports`.
    pub fn with_ports(mut self, ports: impl Into<String>) -> Self {
        self.ports = Some(ports.into());
        self
    }

    /// This env with strict mode on or off.
    pub fn with_strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Loads the stats file this process wrote.
    pub fn stats(&self) -> Result<Stats, String> {
        Stats::load(&self.stats_file)
    }
}

/// One test's surroundings: the library, a private scratch directory for logs and stats files, and a fresh
/// emulated device directory shared by the test's processes.
#[derive(Debug)]
pub struct Fixture {
    /// The test's name.
    pub name: String,
    lib: Option<PathBuf>,
    // Field order: processes are owned by the test, the emu dir goes before the log dir.
    emu: EmuDir,
    dir: TempDir,
}

impl Fixture {
    /// A fixture for a test that preloads the library; panics with [`NOT_BUILT`] if it is missing.
    #[track_caller]
    pub fn new(name: &str) -> Fixture {
        let lib = Lib::require();
        Self::make(name, Some(lib))
    }

    /// A fixture for plain runs only (no library needed).
    pub fn plain(name: &str) -> Fixture {
        Self::make(name, None)
    }

    fn make(name: &str, lib: Option<PathBuf>) -> Fixture {
        let emu = EmuDir::new().unwrap_or_else(|e| panic!("{e}"));
        let dir = TempDir::new(&format!("test-{name}")).unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            name: name.to_owned(),
            lib,
            emu,
            dir,
        }
    }

    /// The scratch directory (logs `<proc>.stdout|.stderr`, stats `<role>.stats.json`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The emulated device directory.
    pub fn emu_dir(&self) -> &Path {
        self.emu.path()
    }

    /// The stats file path of the process playing `role`.
    pub fn stats_path(&self, role: &str) -> PathBuf {
        self.dir.join(&format!("{role}.stats.json"))
    }

    /// The env of a preloaded process playing `role`: strict, no `PCISOCK_PORTS`, its own stats file.
    pub fn preload(&self, role: &str) -> PreloadEnv {
        let lib = self
            .lib
            .clone()
            .unwrap_or_else(|| panic!("fixture {} was made without the library", self.name));
        PreloadEnv {
            lib,
            emu_dir: self.emu_dir().to_path_buf(),
            strict: true,
            ports: None,
            stats_file: self.stats_path(role),
            extra: Vec::new(),
        }
    }
}

/// Unwraps `r`, or panics with the error followed by a description of each process (command, status, output).
pub fn check<T>(r: Result<T, String>, procs: &[&Proc]) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            let mut msg = e;
            for p in procs {
                msg.push('\n');
                msg.push_str(&p.describe());
            }
            panic!("{msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("iperf-tests").is_dir());
    }

    #[test]
    fn release_dirs_include_the_workspace_target() {
        assert!(release_dirs().contains(&workspace_root().join("target").join("release")));
    }

    #[test]
    fn preload_env_sets_the_contract_variables() {
        let f = Fixture::plain("unit");
        let env = PreloadEnv {
            lib: "/x/libpcisock.so".into(),
            emu_dir: f.emu_dir().to_path_buf(),
            strict: true,
            ports: Some("7000,7002-7004".into()),
            stats_file: f.stats_path("server"),
            extra: vec![("PCISOCK_LOG".into(), "debug".into())],
        };
        let cmd = command("true", &[] as &[&str], Some(&env));
        let vars: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        let get = |k: &str| {
            vars.iter()
                .rev()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(get("LD_PRELOAD").as_deref(), Some("/x/libpcisock.so"));
        assert_eq!(get("PCISOCK_STRICT").as_deref(), Some("1"));
        assert_eq!(get("PCISOCK_PORTS").as_deref(), Some("7000,7002-7004"));
        assert_eq!(
            get("PCISOCK_EMU_DIR"),
            Some(f.emu_dir().display().to_string())
        );
        assert!(get("PCISOCK_STATS_FILE")
            .unwrap()
            .ends_with("server.stats.json"));
        assert_eq!(get("PCISOCK_LOG").as_deref(), Some("debug"));
    }
}
