#!/usr/bin/env bash
# The whole test suite: build (libpcisock.so included), lints, unit and conformance tests,
# the ntb-sys bindings check, and real iperf2/iperf3 runs under LD_PRELOAD.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --workspace --all-targets
cargo clippy --release --workspace --all-targets -- -D warnings
# ntb-sys: the vendored bindings must be what bindgen produces from the header (needs libclang).
cargo test --release -p ntb-sys --features regenerate
# Everything else. The iperf tests find target/release/libpcisock.so built above.
cargo test --release --workspace
# The benches must run (a smoke run, nothing is timed or asserted).
cargo bench --bench device -- --test
