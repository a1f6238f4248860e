//! `pcisock fabric`: start, status and stop of a host fabric service.

use super::*;

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

/// Stops the service at `socket` when dropped (also when the test fails).
struct StopService<'a>(&'a str);

impl Drop for StopService<'_> {
    fn drop(&mut self) {
        let _ = pcisock(&["fabric", "stop", "--socket", self.0], &[]);
    }
}

/// `pcisock stats` over a private fabric service lists a live connection of a program with
/// each end's counters, as over a device: after 100,000 bytes one way and 3,000 the other
/// (`--strict`: over the service or not at all), the client end shows tx_bytes 100000 and
/// rx_bytes 3000, the server end the reverse, both on the `ntb` path, in the text table and
/// in `--json`'s `fabric.connections`.
#[test]
fn stats_shows_a_service_connections_counters() {
    if built_library().is_none() {
        println!("note: libpcisock.so is not built next to {BIN}; skipping");
        return;
    }
    let Ok(python) = which("python3") else {
        println!("note: no python3; skipping");
        return;
    };
    let dir = TempDir::new("fabric-stats");
    let sock = dir.0.join("fabric.sock");
    let sock_s = sock.to_str().unwrap();
    assert_code(&pcisock(&["fabric", "start", "--socket", sock_s], &[]), 0);
    let _stop = StopService(sock_s);
    // The program runs `pcisock stats` (and `--json`) while its connection is open, without
    // the library, and prints its pid and their outputs, each on its own line (JSON) or after
    // a marker (text).
    let program = format!(
        "import os, socket, subprocess\n\
        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n\
        c = socket.create_connection(s.getsockname()); a, _ = s.accept()\n\
        c.sendall(b'x' * 100000)\n\
        n = 0\n\
        while n < 100000: n += len(a.recv(65536))\n\
        a.sendall(b'y' * 3000)\n\
        n = 0\n\
        while n < 3000: n += len(c.recv(65536))\n\
        env = dict(os.environ); env.pop('LD_PRELOAD', None)\n\
        j = subprocess.run(['{BIN}', 'stats', '--json'], env=env, capture_output=True, text=True)\n\
        t = subprocess.run(['{BIN}', 'stats'], env=env, capture_output=True, text=True)\n\
        print(os.getpid()); print(j.stdout.strip()); print('--- text'); print(t.stdout + t.stderr)\n\
        c.close(); a.close()\n"
    );
    let o = pcisock(
        &[
            "run",
            "--ports",
            "*",
            "--strict",
            "--",
            python.to_str().unwrap(),
            "-c",
            &program,
        ],
        &[("PCISOCK_FABRIC", sock_s)],
    );
    assert_code(&o, 0);
    let out = stdout(&o);
    let mut lines = out.lines();
    let pid: u32 = lines.next().unwrap().parse().unwrap();
    let json: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let ends = json["fabric"]["connections"].as_array().unwrap();
    assert_eq!(ends.len(), 2, "{json}");
    for (role, tx, rx) in [("client", 100000, 3000), ("server", 3000, 100000)] {
        let end = ends.iter().find(|e| e["role"] == role).unwrap();
        assert_eq!(end["pid"], pid, "{end}");
        assert_eq!(end["path"], "ntb", "{end}");
        assert_eq!(end["counters"]["tx_bytes"], tx, "{end}");
        assert_eq!(end["counters"]["rx_bytes"], rx, "{end}");
        assert_eq!(end["counters"]["failovers"], 0, "{end}");
    }
    let text = out.split("--- text\n").nth(1).unwrap();
    let header: Vec<&str> = text
        .lines()
        .find(|l| l.trim_start().starts_with("CONN"))
        .unwrap_or_else(|| panic!("{text}"))
        .split_whitespace()
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (role, tx, rx) in [("client", "100000", "3000"), ("server", "3000", "100000")] {
        let row: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r.get(col("ROLE")) == Some(&role))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(row[col("PID")], pid.to_string(), "{text}");
        assert_eq!(row[col("PATH")], "ntb", "{text}");
        assert_eq!(row[col("TX_BYTES")], tx, "{text}");
        assert_eq!(row[col("RX_BYTES")], rx, "{text}");
    }
}
