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
