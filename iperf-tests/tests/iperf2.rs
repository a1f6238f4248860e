//! iperf 2.1.8 under libpcisock.so: write sizes from 1 B to 4 MiB, parallel streams, an unflagged port, a plain
//! peer on either side, and iperf's default port with no setting at all. Each test checks iperf's report, both
//! stats files and the loopback counters (see ../README.md).

mod common;

use common::{run, Mode, Spec, Tool, KIB, MIB};

fn sweep(name: &'static str, len: u64, bytes: u64) {
    run(Spec {
        len: Some(len),
        ..Spec::new(name, Tool::Iperf2, bytes)
    });
}

#[test]
fn write_size_1_byte() {
    sweep("iperf2_l1", 1, MIB);
}

#[test]
fn write_size_64_bytes() {
    sweep("iperf2_l64", 64, 4 * MIB);
}

#[test]
fn write_size_1k() {
    sweep("iperf2_l1k", KIB, 64 * MIB);
}

#[test]
fn write_size_64k() {
    sweep("iperf2_l64k", 64 * KIB, 256 * MIB);
}

#[test]
fn write_size_1m() {
    sweep("iperf2_l1m", MIB, 256 * MIB);
}

#[test]
fn write_size_4m() {
    sweep("iperf2_l4m", 4 * MIB, 256 * MIB);
}

/// Four streams at once. iperf 2.1.8's server writes into its own freed per-stream objects when streams end while
/// others run (valgrind memcheck of `iperf -s` against `iperf -c -P 100 -n 1M` over plain TCP, no library: 3,684
/// errors, invalid writes into freed 2,152-byte blocks). Under the library one stream can finish its 64 MiB in 15 ms
/// while the server's other three threads have read only iperf's header, and the server then aborts in glibc's heap
/// checks ("malloc(): unsorted double linked list corrupted", "corrupted double-linked list": 2 of 5 clean-clone CI
/// runs in session 9, never in 30 runs of this test alone; memcheck of the same -P 4 runs under the library is clean).
/// The same race also leaves the server's fourth stream thread blocked for ever on one of iperf's own mutexes
/// (`pthread_mutex_lock` called from iperf, no thread holding it, no library frame in that thread; the client then
/// waits with a full ring: clean-clone CI in sessions 10 and 11, 1 run in 4 and 0 in 300 loops of the test alone;
/// the report's stacks showed it). So that abort of the iperf *server*, or that hang of it, and only those, is run
/// again, up to [`IPERF_HEAP_TRIES`] times in all, each one reported; any other failure fails the test at once.
#[test]
fn parallel_4_streams() {
    let spec = || Spec {
        parallel: 4,
        ..Spec::new("iperf2_p4", Tool::Iperf2, 64 * MIB)
    };
    for attempt in 1..=IPERF_HEAP_TRIES {
        let Err(e) = std::panic::catch_unwind(|| run(spec())) else {
            return;
        };
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let own = if iperf_server_heap_abort(&msg) {
            "aborted on its own heap"
        } else if iperf_server_stuck_on_its_mutex(&msg) {
            "hung on one of its own mutexes"
        } else {
            std::panic::resume_unwind(e);
        };
        if attempt == IPERF_HEAP_TRIES {
            std::panic::resume_unwind(e);
        }
        eprintln!("parallel_4_streams: attempt {attempt}: iperf 2.1.8's server {own} (see the doc above); again:\n{msg}");
    }
}

/// How many times `parallel_4_streams` runs when iperf's server aborts on its heap.
const IPERF_HEAP_TRIES: u32 = 3;

/// Is a failure report that of iperf's server killed by SIGABRT in glibc's heap checks?
fn iperf_server_heap_abort(msg: &str) -> bool {
    let server = msg
        .lines()
        .skip_while(|l| !l.contains("[iperf2-server]") || !l.contains("SIGABRT"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    [
        "malloc(): ",
        "free(): ",
        "corrupted double-linked list",
        "double free or corruption",
    ]
    .iter()
    .any(|m| server.contains(m))
}

/// Does a failure report show iperf's server killed after it hung with a thread blocked on one of iperf's own mutexes:
/// `pthread_mutex_lock` called from iperf's code (its frames are `?? ()`: the binary has no symbols), and no frame of
/// the library anywhere in that thread?
fn iperf_server_stuck_on_its_mutex(msg: &str) -> bool {
    let Some(stacks) = msg
        .split("[iperf2-server]")
        .nth(1)
        .and_then(|s| s.split("before it was killed: stacks of pid").nth(1))
    else {
        return false;
    };
    let stacks = stacks.split("\n- ").next().unwrap_or("");
    stacks.split("\nThread ").any(|thread| {
        let frames: Vec<&str> = thread.lines().filter(|l| l.starts_with('#')).collect();
        let Some(lock) = frames
            .iter()
            .position(|f| f.contains("pthread_mutex_lock ("))
        else {
            return false;
        };
        let ours = |f: &&str| f.contains("pcisock") || f.contains("transport::");
        frames
            .get(lock + 1)
            .is_some_and(|f| f.contains(" in ?? ()"))
            && !frames.iter().any(ours)
    })
}

#[test]
fn iperf_heap_aborts_are_told_from_other_failures() {
    let abort = "- iperf2 server: exited\n  [iperf2-server] pid 1 `iperf -s` status: signal: 6 (SIGABRT)\n  stdout: x\n  stderr: corrupted double-linked list";
    assert!(iperf_server_heap_abort(abort));
    let client = "  [iperf2-client] pid 2 `iperf -c` status: signal: 6 (SIGABRT)\n  stderr: malloc(): corrupted top size";
    assert!(
        !iperf_server_heap_abort(client),
        "a client's abort is not the server's"
    );
    let other = "  [iperf2-server] pid 1 `iperf -s` status: signal: 6 (SIGABRT)\n  stdout: x\n  stderr: thread panicked";
    assert!(
        !iperf_server_heap_abort(other),
        "an abort that is not glibc's heap check fails at once"
    );
}

#[test]
fn default_ports_need_no_setting() {
    // Port 5001 and no PCISOCK_PORTS: the built-in rule flags it.
    run(Spec {
        default_port: true,
        ..Spec::new("iperf2_default_port", Tool::Iperf2, 64 * MIB)
    });
}

#[test]
fn unflagged_port_stays_tcp() {
    // Strict mode is on, but strict only concerns flagged connections.
    run(Spec {
        server: Mode::Unflagged,
        client: Mode::Unflagged,
        ..Spec::new("iperf2_unflagged", Tool::Iperf2, 64 * MIB)
    });
}

#[test]
fn plain_server_preloaded_client_falls_back() {
    run(Spec {
        server: Mode::Plain,
        client: Mode::Fallback,
        ..Spec::new("iperf2_plain_server", Tool::Iperf2, 64 * MIB)
    });
}

#[test]
fn preloaded_server_plain_client_falls_back() {
    run(Spec {
        server: Mode::Fallback,
        client: Mode::Plain,
        ..Spec::new("iperf2_plain_client", Tool::Iperf2, 64 * MIB)
    });
}

/// No library involved: checks the harness itself (runners, parsers, lo counters) against real iperf 2 over TCP.
#[test]
fn harness_plain_tcp_baseline() {
    run(Spec {
        server: Mode::Plain,
        client: Mode::Plain,
        parallel: 2,
        len: Some(64 * KIB),
        ..Spec::new("iperf2_harness_plain", Tool::Iperf2, 64 * MIB)
    });
}

#[test]
fn iperf_mutex_hangs_are_told_from_other_failures() {
    // Trimmed from the report of clean-clone CI at 3b58609.
    let hang = "- iperf2 client: iperf2-client did not exit within 45s\n  [iperf2-client] pid 2 status: running\n\
        - server: stats\n  [iperf2-server] pid 1 `iperf -s -p 24123 -y C` status: signal: 9 (SIGKILL)\n\
        \x20 stderr: Waiting for server threads to complete. Interrupt again to force quit.\n\
        \x20 before it was killed: stacks of pid 1:\n\
        Thread 4 (Thread 0x7fbca8bfd6c0 (LWP 30578) \"iperf\"):\n\
        #0  futex_wait (private=0, expected=2, futex_word=0x7fbca4002aa0) at ../sysdeps/nptl/futex-internal.h:146\n\
        #3  ___pthread_mutex_lock (mutex=0x7fbca4002aa0) at ./nptl/pthread_mutex_lock.c:93\n\
        #4  0x000055a0b5f8a41c in ?? ()\n\
        #5  0x000055a0b5f94aa5 in ?? ()\n\
        Thread 3 (Thread 0x7fbca93fe6c0 (LWP 30564) \"iperf\"):\n\
        #0  0x00007fbca9f2872f in __libc_accept (fd=3, addr=..., len=0x7fbca4006898) at accept.c:26\n\
        #1  0x00007fbcaa06c736 in pcisock::hooks::life::accept () at shim/src/hooks/boundary.rs:63\n";
    assert!(iperf_server_stuck_on_its_mutex(hang));
    // The same thread with a frame of the library in it: not iperf's own.
    let ours = hang.replace(
        "#5  0x000055a0b5f94aa5 in ?? ()",
        "#5  0x00007fc46fe5ab41 in pcisock::ops::data::recv () at shim/src/ops/data.rs:120",
    );
    assert!(!iperf_server_stuck_on_its_mutex(&ours));
    // The mutex taken from the library's own code: not iperf's.
    let from_lib = hang.replace(
        "#4  0x000055a0b5f8a41c in ?? ()",
        "#4  0x00007fc46fe5ab41 in std::sys::sync::mutex::lock ()",
    );
    assert!(!iperf_server_stuck_on_its_mutex(&from_lib));
    // A client stuck the same way is not the server.
    let client = hang.replace("[iperf2-server]", "[iperf2-other]");
    assert!(!iperf_server_stuck_on_its_mutex(&client));
}
