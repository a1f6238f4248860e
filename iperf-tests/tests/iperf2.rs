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
/// errors, invalid writes into freed 2,152-byte blocks), and it has aborted with glibc's "malloc(): … corrupted" twice
/// in this suite's runs (sessions 7 and 9, once each in about a hundred runs, one stream having finished in 15 ms
/// while the others started); memcheck of the same -P 4 runs under the library finds nothing. So that abort, and only
/// it, is run once more and reported; any other failure, or the abort twice, fails the test.
#[test]
fn parallel_4_streams() {
    let spec = || Spec {
        parallel: 4,
        ..Spec::new("iperf2_p4", Tool::Iperf2, 64 * MIB)
    };
    let first = std::panic::catch_unwind(|| run(spec()));
    if let Err(e) = first {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let iperf_heap =
            msg.contains("iperf2-server") && msg.contains("SIGABRT") && msg.contains("malloc(): ");
        if !iperf_heap {
            std::panic::resume_unwind(e);
        }
        eprintln!("parallel_4_streams: iperf 2.1.8's server aborted on its own heap (see the doc above); once more:\n{msg}");
        run(spec());
    }
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
