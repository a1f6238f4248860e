//! The `pcisock` binary end to end: help texts, usage errors (exit 2), `explain` against the
//! library's configuration rules, `stats` and `emu` against a private emulated device, `run`
//! with a missing and with the real library. Every run gets a private PCISOCK_EMU_DIR and a
//! clean set of PCISOCK_* variables, so no test touches this user's real device.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use ntbdrv::emu::{Config, EmuDevice, Options};
use ntbdrv::NtbDevice;

const BIN: &str = env!("CARGO_BIN_EXE_pcisock");

/// A private (0700) directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pcisock-cli-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `pcisock args` with a clean pcisock environment plus `env`, devices under `emu_dir`.
fn pcisock_in(emu_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PCISOCK_")) {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("LD_PRELOAD").env("PCISOCK_EMU_DIR", emu_dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pcisock")
}

fn pcisock(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = TempDir::new("env");
    pcisock_in(&dir.0, args, env)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}
/// A small loopback device in `dir`.
fn make_device(dir: &Path) -> EmuDevice {
    let opts = Options {
        dir: dir.to_path_buf(),
        name: "loopback".into(),
        side: 0,
        config: Config {
            mw_size: 1 << 20,
            ..Config::default()
        },
    };
    EmuDevice::open(&opts).expect("create device")
}
/// The library built with this binary, if this profile built it.
fn built_library() -> Option<PathBuf> {
    let dir = Path::new(BIN).parent()?;
    [dir.join("libpcisock.so"), dir.join("deps/libpcisock.so")]
        .into_iter()
        .find(|p| p.is_file())
}
fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
/// The service protocol's version this pcisock speaks (the number in its default sockets'
/// names, which `fabric --help` shows).
fn fabric_wire_version() -> String {
    let o = pcisock(&["fabric", "--help"], &[]);
    let text = stdout(&o);
    let at = text
        .find("fabric-v")
        .expect("the help names the default socket")
        + "fabric-v".len();
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect()
}
const COMMANDS: [&str; 7] = ["run", "stats", "explain", "emu", "doctor", "fabric", "dc"];

#[test]
fn help_lists_the_commands_and_each_has_its_own() {
    let o = pcisock(&["--help"], &[]);
    assert_code(&o, 0);
    let top = stdout(&o);
    assert!(top.contains("Usage: pcisock <COMMAND>"), "{top}");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CLI.md")).unwrap();
    for c in COMMANDS {
        assert!(
            top.contains(&format!("\n  {c} ")),
            "{c} missing from:\n{top}"
        );
        let o = pcisock(&[c, "--help"], &[]);
        assert_code(&o, 0);
        assert!(
            stdout(&o).contains(&format!("Usage: pcisock {c}")),
            "{c} --help:\n{}",
            stdout(&o)
        );
        assert!(
            stderr(&o).is_empty(),
            "{c} --help wrote to stderr: {}",
            stderr(&o)
        );
        assert!(
            doc.contains(&format!("```text\n{}```", stdout(&o))),
            "docs/CLI.md does not show `pcisock {c} --help` as it is"
        );
    }
    assert!(stdout(&pcisock(&["stats", "--help"], &[])).contains("PCISOCK_STATS_FILE"));
    let o = pcisock(&["--version"], &[]);
    assert_code(&o, 0);
    assert!(stdout(&o).starts_with("pcisock "));
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    for args in [
        &["frobnicate"][..],
        &[],
        &["--frobnicate"],
        &["stats", "--frobnicate"],
        &["explain", "NoSuchReason"],
        &["explain", "--port", "70000"],
        &["emu", "frob"],
        &["emu", "fault", "dma-slow"],
        &["run"],
        &["run", "--bogus", "--", "/bin/true"],
        &["run", "--ports", "0", "--", "/bin/true"],
        &["doctor", "extra"],
    ] {
        let o = pcisock(args, &[]);
        assert_code(&o, 2);
        assert!(
            stderr(&o).starts_with("pcisock: "),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = pcisock(&["frobnicate"], &[]);
    assert!(
        stderr(&o).contains("unknown command \"frobnicate\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn explain_a_reason() {
    let o = pcisock(&["explain", "NoListener"], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains(transport::Reason::NoListener.explain()),
        "{}",
        stdout(&o)
    );
    let o = pcisock(&["explain", "4"], &[]);
    assert!(
        stdout(&o).starts_with("NoListener (code 4)"),
        "{}",
        stdout(&o)
    );
    let o = pcisock(&["explain"], &[]);
    assert_code(&o, 0);
    for r in transport::Reason::ALL {
        assert!(
            stdout(&o).contains(r.name()) && stdout(&o).contains(r.explain()),
            "{r} missing"
        );
    }
}

/// A permission problem has its own reason, and its advice names the cause and the fixes (not
/// "too many connections", which is what `NoDoorbell` says).
#[test]
fn explain_no_permission() {
    let o = pcisock(&["explain", "16"], &[]);
    assert_code(&o, 0);
    let text = stdout(&o);
    assert!(text.starts_with("NoPermission (code 16)"), "{text}");
    for needle in [
        "drop privileges",
        "0700",
        "another user's device",
        "host fabric service",
    ] {
        assert!(text.contains(needle), "{needle:?} missing: {text}");
    }
    assert!(!text.contains("reclaim"), "{text}");
}

#[test]
fn explain_a_connection() {
    let o = pcisock(&["explain", "--port", "5001", "--role", "client"], &[]);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("port 5001")
            && out.contains("flagged: tried on the NTB path (rule: built-in defaults)"),
        "{out}"
    );
    assert!(!out.contains("server"), "{out}");

    let o = pcisock(&["explain", "--port", "80"], &[]);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("not flagged") && !out.contains("flagged: tried"),
        "{out}"
    );
    assert!(
        out.contains("client (") && out.contains("server ("),
        "{out}"
    );

    let o = pcisock(&["explain", "--port", "80"], &[("PCISOCK_PORTS", "80")]);
    assert!(
        stdout(&o).contains("flagged: tried on the NTB path (rule: PCISOCK_PORTS)"),
        "{}",
        stdout(&o)
    );

    let o = pcisock(&["explain", "--port", "80"], &[("PCISOCK_PORTS", "70000")]);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("configuration errors")
            && out.contains("70000")
            && out.contains("out of range"),
        "{out}"
    );
    // The CLI does not interpose on itself: no message from the library's constructor.
    assert!(!stderr(&o).contains("bad configuration"), "{}", stderr(&o));
}

mod device;
mod doctor;
mod fabric;
mod run;
