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

#[test]
fn stats_and_emu_on_a_private_device() {
    let dir = TempDir::new("dev");
    let o = pcisock_in(&dir.0, &["stats"], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("no pcisock device on this host yet"),
        "{}",
        stdout(&o)
    );
    assert!(
        !dir.0.join("loopback.ntb").exists(),
        "stats created a device"
    );
    let o = pcisock_in(
        &dir.0,
        &["stats"],
        &[("PCISOCK_EMU_DIR", "/nonexistent/pcisock-dir")],
    );
    assert!(
        stdout(&o).contains("no pcisock device on this host yet (/nonexistent/pcisock-dir/"),
        "{}",
        stdout(&o)
    );
    let o = pcisock_in(&dir.0, &["emu", "info"], &[]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("no pcisock device"), "{}", stderr(&o));

    let dev = make_device(&dir.0);
    let lease = dev.lease_window(0, 4096, 0x7465_7374).expect("lease");
    let o = pcisock_in(&dir.0, &["stats", "--json"], &[]);
    assert_code(&o, 0);
    let json = stdout(&o);
    assert!(
        json.trim_start().starts_with('{') && json.trim_end().ends_with('}'),
        "{json}"
    );
    assert!(json.contains("\"connections\":["), "{json}");
    assert!(
        json.contains(&format!(
            "{{\"pid\":{},\"owner\":\"alive\",\"window\":1",
            std::process::id()
        )),
        "{json}"
    );
    let o = pcisock_in(&dir.0, &["stats"], &[]);
    assert!(
        stdout(&o).contains("topology:   loopback") && stdout(&o).contains("2 x 1 MiB"),
        "{}",
        stdout(&o)
    );

    let o = pcisock_in(&dir.0, &["emu", "fault", "link-down"], &[]);
    assert_code(&o, 0);
    assert!(!dev.link_state().up, "link-down did not reach the device");
    let o = pcisock_in(&dir.0, &["emu", "info"], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("faults:     link-down"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("link:       down"), "{}", stdout(&o));
    let o = pcisock_in(&dir.0, &["emu", "fault", "dma-error", "--count", "3"], &[]);
    assert_code(&o, 0);
    let o = pcisock_in(&dir.0, &["emu", "clear"], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("link-down, dma-error"),
        "{}",
        stdout(&o)
    );
    assert_eq!(dev.faults().flags(), 0);
    let o = pcisock_in(&dir.0, &["emu", "info"], &[]);
    assert!(stdout(&o).contains("faults:     none"), "{}", stdout(&o));

    let o = pcisock_in(&dir.0, &["emu", "reclaim"], &[]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("freed 0 lease"), "{}", stdout(&o));

    // We hold a lease: remove refuses and names us.
    let o = pcisock_in(&dir.0, &["emu", "remove"], &[]);
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains(&std::process::id().to_string()),
        "{}",
        stderr(&o)
    );
    assert!(dir.0.join("loopback.ntb").exists());
    dev.release(ntbdrv::Lease::Window(lease)).expect("release");
    drop(dev);
    std::fs::write(dir.0.join("loopback.s0.db3"), b"").unwrap();
    std::fs::write(dir.0.join("keep.s0.db3"), b"").unwrap();
    let o = pcisock_in(&dir.0, &["emu", "remove"], &[]);
    assert_code(&o, 0);
    assert!(!dir.0.join("loopback.ntb").exists() && !dir.0.join("loopback.s0.db3").exists());
    assert!(
        dir.0.join("keep.s0.db3").exists(),
        "removed another device's FIFO"
    );
}

/// A device left by a build with another layout version cannot be read for its leases: `emu
/// remove` deletes it (and its interrupt lines) when no process has it mapped, and refuses while
/// one does.
#[test]
fn emu_remove_takes_a_device_of_another_version() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("oldversion");
    let dev = make_device(&dir.0);
    let _line = dev
        .vector_fd(3)
        .expect("an interrupt line (a FIFO beside the device)");
    let path = dir.0.join("loopback.ntb");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&(ntb_sys::NTBEMU_VERSION + 7).to_le_bytes(), 8)
        .unwrap();
    let o = pcisock_in(&dir.0, &["emu", "remove"], &[]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("have it mapped"), "{}", stderr(&o));
    drop(dev);
    let o = pcisock_in(&dir.0, &["emu", "remove"], &[]);
    assert_code(&o, 0);
    assert!(!path.exists());
    let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn run_with_a_missing_library() {
    let o = pcisock(
        &["run", "--", "/bin/true"],
        &[("PCISOCK_LIB", "/nonexistent/libpcisock.so")],
    );
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("libpcisock.so not found") && stderr(&o).contains("/nonexistent"),
        "{}",
        stderr(&o)
    );
}

/// The library built with this binary, if this profile built it.
fn built_library() -> Option<PathBuf> {
    let dir = Path::new(BIN).parent()?;
    [dir.join("libpcisock.so"), dir.join("deps/libpcisock.so")]
        .into_iter()
        .find(|p| p.is_file())
}

#[test]
fn run_with_the_real_library() {
    let Some(lib) = built_library() else {
        println!("note: libpcisock.so is not built next to {BIN}; skipping the real-library run");
        return;
    };
    let o = pcisock(&["run", "--", "/bin/true"], &[]);
    assert_code(&o, 0);
    let o = pcisock(&["run", "--", "/bin/false"], &[]);
    assert_code(&o, 1);
    let o = pcisock(
        &[
            "run",
            "--ports",
            "6379",
            "--strict",
            "--log",
            "warn",
            "--stats-file",
            "/tmp/x",
            "--",
            "/bin/sh",
            "-c",
            "echo \"$LD_PRELOAD|$PCISOCK_PORTS|$PCISOCK_STRICT|$PCISOCK_LOG|$PCISOCK_STATS_FILE\"",
        ],
        &[("LD_PRELOAD", "/other.so")],
    );
    assert_code(&o, 0);
    let canon = std::fs::canonicalize(&lib).unwrap();
    let want = format!("{}:/other.so|6379|1|warn|/tmp/x\n", canon.display());
    assert_eq!(stdout(&o), want, "stderr: {}", stderr(&o));
}

/// A statically linked program never loads the library: `run` says so, and refuses it under
/// strict; a dynamic one runs without a word.
#[test]
fn run_tells_a_static_program_from_a_dynamic_one() {
    let Some(_) = built_library() else {
        println!("note: libpcisock.so is not built next to {BIN}; skipping");
        return;
    };
    let dir = TempDir::new("static");
    let (src, exe) = (dir.0.join("t.c"), dir.0.join("t"));
    std::fs::write(&src, "int main(void) { return 7; }\n").unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-static", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("cc (gcc, libc6-dev: scripts/setup.sh)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let exe = exe.to_str().unwrap();

    let o = pcisock(&["run", "--", exe], &[]);
    assert_code(&o, 7);
    assert!(
        stderr(&o).contains("is statically linked"),
        "{}",
        stderr(&o)
    );
    for strict in [&["run", "--strict", "--", exe][..], &["run", "--", exe]] {
        let env: &[(&str, &str)] = if strict.len() == 4 {
            &[]
        } else {
            &[("PCISOCK_STRICT", "1")]
        };
        let o = pcisock(strict, env);
        assert_code(&o, 2);
        assert!(
            stderr(&o).contains("refused under strict"),
            "{}",
            stderr(&o)
        );
    }
    let o = pcisock(&["run", "--strict", "--", "true"], &[]);
    assert_code(&o, 0);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn doctor_checks_the_library_exports() {
    // A library that defines none of the hooks: every one must be reported (they resolve only to
    // libc, which the check must not count).
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    if let Some(libm) = libm {
        let o = pcisock(&["doctor"], &[("PCISOCK_LIB", libm)]);
        assert_code(&o, 1);
        assert!(
            stdout(&o).contains("[FAIL] exports") && stdout(&o).contains("connect"),
            "{}",
            stdout(&o)
        );
    }
    if built_library().is_some() {
        let o = pcisock(&["doctor"], &[]);
        assert_code(&o, 0);
        assert!(
            stdout(&o).contains("[ ok ] exports       all"),
            "{}",
            stdout(&o)
        );
    } else {
        println!(
            "note: libpcisock.so is not built next to {BIN}; skipping the real-library doctor run"
        );
    }
}

/// A plain (not preloaded) TCP listener that accepts `n` connections and closes them.
fn plain_listener(n: usize) -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        for _ in 0..n {
            drop(l.accept());
        }
    });
    (port, t)
}

/// bash connecting to `port` once itself and once in each of two forked subshells, then
/// exiting with 7.
fn three_connections(port: u16) -> String {
    let c = format!("/dev/tcp/127.0.0.1/{port}");
    format!("exec 3<>{c}; exec 3>&-; (exec 4<>{c}); (exec 4<>{c}); exit 7")
}

/// `pcisock run` reports, in exactly one stderr line, the flagged connections of the program
/// and of its forked children that fell back to TCP, with their reason codes; the program's
/// exit status is kept. Each process wrote its own statistics file (a shared one would show
/// only the last writer's connections).
#[test]
fn run_reports_the_fallbacks_of_the_program_and_its_children() {
    if built_library().is_none() {
        println!("note: libpcisock.so is not built next to {BIN}; skipping");
        return;
    }
    let (port, t) = plain_listener(3);
    let stats = TempDir::new("run-stats");
    let dir = format!("{}/", stats.0.display());
    let script = three_connections(port);
    let o = pcisock(
        &[
            "run",
            "--ports",
            &port.to_string(),
            "--stats-file",
            &dir,
            "--",
            "bash",
            "-c",
            &script,
        ],
        &[],
    );
    t.join().unwrap();
    assert_code(&o, 7);
    assert_eq!(
        stderr(&o),
        "pcisock run: 3 of 3 flagged connections fell back to TCP: 3 NoListener (4); \
         'pcisock explain REASON' says why\n"
    );
    // bash and its two subshells: three files, one connection each.
    let files: Vec<_> = std::fs::read_dir(&stats.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.contains("\"tcp_connections\":1,")
                && text.contains("\"fallbacks\":{\"NoListener\":1}"),
            "{}: {text}",
            f.display()
        );
    }

    // --quiet: the same program, no report, the same exit status.
    let (port, t) = plain_listener(3);
    let script = three_connections(port);
    let o = pcisock(
        &[
            "run",
            "--quiet",
            "--ports",
            &port.to_string(),
            "--",
            "bash",
            "-c",
            &script,
        ],
        &[],
    );
    t.join().unwrap();
    assert_code(&o, 7);
    assert_eq!(stderr(&o), "");
}

/// Nothing is printed when every flagged connection used the NTB path (the statistics show
/// that they did), and a program killed by a signal makes `pcisock run` end the same way.
#[test]
fn run_is_silent_when_all_connections_used_ntb() {
    use std::os::unix::process::ExitStatusExt;
    if built_library().is_none() {
        println!("note: libpcisock.so is not built next to {BIN}; skipping");
        return;
    }
    let Ok(python) = which("python3") else {
        println!("note: no python3; skipping");
        return;
    };
    let stats = TempDir::new("run-ntb");
    let dir = format!("{}/", stats.0.display());
    let program = "import socket\n\
        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n\
        c = socket.create_connection(s.getsockname()); a, _ = s.accept()\n\
        c.sendall(b'x' * 100000); c.close()\n\
        n = 0\n\
        while True:\n    b = a.recv(65536)\n    if not b: break\n    n += len(b)\n\
        assert n == 100000, n\n";
    let o = pcisock(
        &[
            "run",
            "--ports",
            "*",
            "--strict",
            "--stats-file",
            &dir,
            "--",
            python.to_str().unwrap(),
            "-c",
            program,
        ],
        &[],
    );
    assert_code(&o, 0);
    assert_eq!(stderr(&o), "");
    let files: Vec<_> = std::fs::read_dir(&stats.0).unwrap().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(
        text.contains("\"ntb_connections\":2,") && text.contains("\"tcp_connections\":0,"),
        "{text}"
    );

    let o = pcisock(&["run", "--", "sh", "-c", "kill -TERM $$"], &[]);
    assert_eq!(o.status.signal(), Some(libc::SIGTERM), "{o:?}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// `doctor` flags what dead processes and closed connections leave behind (a lease whose owner
/// is gone, an interrupt line no lease holds) and names the fix; `emu reclaim` then frees the
/// lease and removes that line, and only that line (a leased vector's line stays).
#[test]
fn doctor_flags_stale_state_and_reclaim_clears_it() {
    let dir = TempDir::new("stale");
    let dev = make_device(&dir.0);
    // A lease handed to a process that then dies.
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let lease = dev.lease_window(0, 4096, 0x7465_7374).expect("lease");
    dev.transfer(ntbdrv::Lease::Window(lease), child.id())
        .expect("transfer");
    child.kill().unwrap();
    child.wait().unwrap();
    // An interrupt line with no lease (a closed connection's), and a leased one.
    drop(dev.vector_fd(5).expect("line"));
    let held = dev.lease_vector(0x7465_7374).expect("vector");
    let _held_line = dev.vector_fd(held.vector).expect("line");
    let idle = dir.0.join("loopback.s0.v5");
    let busy = dir.0.join(format!("loopback.s0.v{}", held.vector));
    assert!(idle.exists() && busy.exists());

    let stale_line = |o: &Output| {
        stdout(o)
            .lines()
            .find(|l| l.contains(" stale "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no stale check: {}", stdout(o)))
    };
    let o = pcisock_in(&dir.0, &["doctor"], &[]);
    let line = stale_line(&o);
    assert!(line.starts_with("[warn] stale"), "{line}");
    assert!(
        line.contains(&format!(
            "1 lease(s) of 1 process(es) that are gone (pids {})",
            child.id()
        )),
        "{line}"
    );
    assert!(line.contains("1 interrupt line(s) (FIFOs)"), "{line}");
    assert!(line.contains("'pcisock emu reclaim' frees them"), "{line}");

    let o = pcisock_in(&dir.0, &["emu", "reclaim"], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("freed 1 lease(s) of processes that are gone; removed 1 interrupt"),
        "{}",
        stdout(&o)
    );
    assert!(!idle.exists(), "the idle line is still there");
    assert!(busy.exists(), "reclaim removed a leased vector's line");
    let o = pcisock_in(&dir.0, &["doctor"], &[]);
    assert!(stale_line(&o).starts_with("[ ok ] stale"), "{}", stdout(&o));
}

/// `pcisock fabric`: a service started on a socket of the test's own answers `status`, refuses a
/// second start on the same socket (exit 1, one line why), stops on `stop`, and after that
/// `status` fails with the socket named; bad sizes are usage errors.
#[test]
fn fabric_start_status_stop() {
    let dir = std::env::temp_dir().join(format!("pcisock-cli-fabric-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sock = dir.join("fabric.sock");
    let sock_s = sock.to_str().unwrap();
    let o = pcisock(&["fabric", "start", "--socket", sock_s], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).starts_with("started the fabric service (pid "),
        "{}",
        stdout(&o)
    );
    let o = pcisock(&["fabric", "status", "--socket", sock_s], &[]);
    assert_code(&o, 0);
    let text = stdout(&o);
    assert!(text.contains("connections 0"), "{text}");
    assert!(text.contains("window space 0 of 536870912 bytes"), "{text}");
    let again = pcisock(&["fabric", "start", "--socket", sock_s], &[]);
    assert_code(&again, 1);
    assert!(
        stderr(&again).contains("already runs"),
        "{}",
        stderr(&again)
    );
    let o = pcisock(&["fabric", "stop", "--socket", sock_s], &[]);
    assert_code(&o, 0);
    let o = pcisock(&["fabric", "status", "--socket", sock_s], &[]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains(sock_s), "{}", stderr(&o));
    for bad in [
        &["fabric", "start", "--ring-size", "3000"][..],
        &["fabric", "start", "--window-size", "lots"],
        &["fabric", "stop", "--ring-size", "1M"],
        &["fabric", "pause"],
    ] {
        assert_code(&pcisock(bad, &[]), 2);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pcisock doctor` over a service: the service it would use answers (ok); beside it, a service
/// of another protocol version (a warning naming it) and a socket file nobody answers on
/// (stale, a warning); pointed at the other version's service, the check fails and says why.
#[test]
fn doctor_names_other_versions_and_stale_service_sockets() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let dir =
        std::env::temp_dir().join(format!("pcisock-cli-doctor-fabric-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ours = dir.join(format!("fabric-v{}.sock", fabric_wire_version()));
    let ours_s = ours.to_str().unwrap().to_string();
    assert_code(&pcisock(&["fabric", "start", "--socket", &ours_s], &[]), 0);
    // Another version's service: answers every message with a header of protocol 1.
    let old = dir.join("fabric-v1.sock");
    let l = Socket::new(Domain::UNIX, Type::from(libc::SOCK_SEQPACKET), None).unwrap();
    l.bind(&SockAddr::unix(&old).unwrap()).unwrap();
    l.listen(8).unwrap();
    std::thread::spawn(move || {
        while let Ok((c, _)) = l.accept() {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
            let _ = c.recv(&mut buf);
            let mut m = Vec::new();
            m.extend_from_slice(b"PCFB");
            m.extend_from_slice(&1u16.to_le_bytes());
            m.extend_from_slice(&0x88u16.to_le_bytes());
            m.extend_from_slice(&0u64.to_le_bytes());
            m.extend_from_slice(&1u64.to_le_bytes());
            let _ = c.send(&m);
        }
    });
    // A socket file with nobody behind it.
    let stale = dir.join("fabric.sock");
    drop({
        let s = Socket::new(Domain::UNIX, Type::from(libc::SOCK_SEQPACKET), None).unwrap();
        s.bind(&SockAddr::unix(&stale).unwrap()).unwrap();
        s
    });
    let o = pcisock(&["doctor"], &[("PCISOCK_FABRIC", &ours_s)]);
    let text = stdout(&o);
    assert_code(&o, 0);
    let line_of = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or("")
            .to_string()
    };
    assert!(line_of(&ours_s).starts_with("[ ok ] fabric"), "{text}");
    let o1 = line_of(old.to_str().unwrap());
    assert!(
        o1.starts_with("[warn] fabric") && o1.contains("protocol 1"),
        "{text}"
    );
    let st = line_of(stale.to_str().unwrap());
    assert!(st.starts_with("[warn] stale"), "{text}");
    let old_s = old.to_str().unwrap().to_string();
    let o = pcisock(&["doctor"], &[("PCISOCK_FABRIC", &old_s)]);
    assert_code(&o, 1);
    let text = stdout(&o);
    assert!(
        text.lines()
            .any(|l| l.starts_with("[FAIL] fabric") && l.contains("speaks protocol 1")),
        "{text}"
    );
    let _ = pcisock(&["fabric", "stop", "--socket", &ours_s], &[]);
    let _ = std::fs::remove_dir_all(&dir);
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
