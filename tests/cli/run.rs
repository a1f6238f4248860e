//! `pcisock run`: a missing library, the real one, static and dynamic programs, and the report
//! of the fallbacks of a program and its children.

use super::*;

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
