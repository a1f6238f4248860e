//! Servers and clients under other users and other process shapes: children that close the
//! listener, a daemonizing server, a privilege drop, a third user who looks for the payload.

use super::*;

#[test]
fn clients_of_other_users_meet_a_root_server() {
    let f = Fixture::new("hm_cross_user");
    let svc = Service::start(&f);
    transfer(&f, &svc, "plain", "root", &["nobody", "daemon"], 16 * MIB);
    assert_eq!(svc.count("paired"), 2);
}

#[test]
fn a_server_whose_children_close_the_listener_keeps_it() {
    let f = Fixture::new("hm_children_close");
    let svc = Service::start(&f);
    transfer(
        &f,
        &svc,
        "children-close",
        "root",
        &["root", "root"],
        8 * MIB,
    );
}

#[test]
fn a_daemonizing_server_keeps_its_listener() {
    let f = Fixture::new("hm_daemon");
    let svc = Service::start(&f);
    transfer(&f, &svc, "daemon", "root", &["root"], 8 * MIB);
}

#[test]
fn a_server_that_drops_privileges_after_listen() {
    let f = Fixture::new("hm_privdrop");
    let svc = Service::start(&f);
    transfer(&f, &svc, "privdrop", "root", &["daemon"], 8 * MIB);
}

/// While a root server and a `nobody` client stream, a third user looks everywhere it can
/// (shared memory, temporary and runtime directories, every process's descriptors it may
/// open) for the payload: it finds none. Only the two processes map their connection.
#[test]
fn a_third_user_finds_none_of_the_payload() {
    let f = Fixture::new("hm_third_user");
    let svc = Service::start(&f);
    let (mut server, mut client, marker, _) = paced_pair(&f, &svc, "nobody", 48 * MIB, "0.004");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        client.is_running(),
        "the stream ended before the search: {}",
        client.describe()
    );
    let search = r#"
import os, sys
marker = sys.argv[1].encode()
found = []
def look(path):
    try:
        # Non-blocking: a FIFO another process left open to everyone is read as far as it
        # has bytes, not waited on for a writer (the search hung on one).
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            while True:
                b = fh.read(1 << 20)
                if not b:
                    return
                if marker in b:
                    found.append(path)
                    return
    except Exception:
        pass
for top in ["/dev/shm", "/tmp", "/run", "/var/tmp"]:
    for root, dirs, files in os.walk(top):
        for n in files:
            look(os.path.join(root, n))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                look(f"/proc/{pid}/fd/{fd}")
        except Exception:
            pass
print("found", len(found), found[:5], flush=True)
"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid=backup",
            "--regid=backup",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            search,
        ])
        .arg(&marker)
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the search failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("found 0 "),
        "a third user read the payload: {text}"
    );
    check(
        client.wait_success(Duration::from_secs(60)),
        &[&client, &server],
    );
    check(server.wait_success(Duration::from_secs(20)), &[&server]);
}
