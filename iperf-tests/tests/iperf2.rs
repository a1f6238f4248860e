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

#[test]
fn parallel_4_streams() {
    run(Spec {
        parallel: 4,
        ..Spec::new("iperf2_p4", Tool::Iperf2, 64 * MIB)
    });
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
