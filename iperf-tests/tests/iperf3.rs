//! iperf3 3.12 under libpcisock.so: forward, reverse (`-R`), parallel (`-P 4`), sendfile (`-Z`), a plain peer,
//! and the default port 5201 with no setting. Each test checks iperf3's JSON, both stats files and the loopback
//! counters (see ../README.md).

mod common;

use common::{run, Mode, Spec, Tool, MIB};

const FORWARD: Tool = Tool::Iperf3 {
    reverse: false,
    zerocopy: false,
};
const REVERSE: Tool = Tool::Iperf3 {
    reverse: true,
    zerocopy: false,
};

#[test]
fn forward() {
    run(Spec::new("iperf3_forward", FORWARD, 256 * MIB));
}

#[test]
fn reverse() {
    run(Spec::new("iperf3_reverse", REVERSE, 256 * MIB));
}

#[test]
fn parallel_4_streams() {
    run(Spec {
        parallel: 4,
        ..Spec::new("iperf3_p4", FORWARD, 256 * MIB)
    });
}

#[test]
fn zerocopy_sendfile() {
    run(Spec::new(
        "iperf3_zerocopy",
        Tool::Iperf3 {
            reverse: false,
            zerocopy: true,
        },
        256 * MIB,
    ));
}

#[test]
fn zerocopy_reverse_parallel() {
    run(Spec {
        parallel: 4,
        ..Spec::new(
            "iperf3_zerocopy_reverse_p4",
            Tool::Iperf3 {
                reverse: true,
                zerocopy: true,
            },
            64 * MIB,
        )
    });
}

#[test]
fn default_ports_need_no_setting() {
    // Port 5201 and no PCISOCK_PORTS: the built-in rule flags it.
    run(Spec {
        default_port: true,
        ..Spec::new("iperf3_default_port", FORWARD, 64 * MIB)
    });
}

#[test]
fn unflagged_port_stays_tcp() {
    run(Spec {
        server: Mode::Unflagged,
        client: Mode::Unflagged,
        ..Spec::new("iperf3_unflagged", FORWARD, 64 * MIB)
    });
}

#[test]
fn plain_server_preloaded_client_falls_back() {
    run(Spec {
        server: Mode::Plain,
        client: Mode::Fallback,
        ..Spec::new("iperf3_plain_server", FORWARD, 64 * MIB)
    });
}

#[test]
fn preloaded_server_plain_client_falls_back() {
    run(Spec {
        server: Mode::Fallback,
        client: Mode::Plain,
        ..Spec::new("iperf3_plain_client", FORWARD, 64 * MIB)
    });
}

/// No library involved: checks the harness itself against real iperf3 over TCP, both directions.
#[test]
fn harness_plain_tcp_baseline() {
    run(Spec {
        server: Mode::Plain,
        client: Mode::Plain,
        parallel: 2,
        ..Spec::new("iperf3_harness_plain", FORWARD, 64 * MIB)
    });
    run(Spec {
        server: Mode::Plain,
        client: Mode::Plain,
        ..Spec::new("iperf3_harness_plain_r", REVERSE, 64 * MIB)
    });
}
