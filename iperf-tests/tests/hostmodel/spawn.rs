//! Programs started without the fork handlers (`posix_spawn`, `system`: glibc clones the child
//! itself) still close their parent's arenas to new connections (docs/HOST-SERVICE.md,
//! *Arenas*): the child may run another image that takes over an inherited connection with
//! `HOLD` and gets its arena, which must not hold what the parent paired after the spawn.

use super::*;

/// One process, client and server of two connections on `port`, with a program started
/// between them as `how` says (`none`, `spawn`: `os.posix_spawn`, `system`: `os.system`);
/// prints how many arenas (distinct memfds of the segments it maps) the two use.
const SPAWNER: &str = r#"
import os, socket, sys
port, how = int(sys.argv[1]), sys.argv[2]
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port))
l.listen(8)
def arenas():
    found = set()
    for line in open("/proc/self/maps"):
        f = line.split()
        if len(f) >= 6 and f[5].startswith("/memfd:pcisock-segment"):
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if hi - lo >= 1 << 20:  # a segment of 1 MiB rings, not a tally page
                found.add(f[4])
    return found
def pair():
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = l.accept()
    c.sendall(b"x"); assert s.recv(1) == b"x"
    s.sendall(b"y"); assert c.recv(1) == b"y"
    return c, s
a = pair()
first = arenas()
if how == "spawn":
    os.waitpid(os.posix_spawn("/bin/true", ["true"], os.environ), 0)
elif how == "system":
    os.system("true")
b = pair()
print("arenas", len(first), len(arenas()), flush=True)
"#;

#[test]
fn a_spawned_program_closes_its_parents_arenas() {
    let f = Fixture::new("hm_spawn_arena");
    let svc = Service::start(&f);
    let prog = f.dir().join("spawner.py");
    fs::write(&prog, SPAWNER).unwrap();
    let prog_s = prog.display().to_string();
    for (how, want) in [
        ("none", "arenas 1 1"),
        ("spawn", "arenas 1 2"),
        ("system", "arenas 1 2"),
    ] {
        let port = free_port();
        let port_s = port.to_string();
        let env = svc.env(&f, how, port);
        let mut p = check(
            Proc::spawn(
                how,
                command("/usr/bin/python3", &[&prog_s, &port_s, how], Some(&env)),
                f.dir(),
            ),
            &[],
        );
        check(
            p.wait_stdout(Duration::from_secs(20), |o| o.contains("arenas")),
            &[&p],
        );
        let out = p.stdout();
        assert!(out.contains(want), "{how}: {out}");
        let _ = p.terminate();
    }
}
