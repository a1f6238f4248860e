#!/usr/bin/env bash
# The whole test suite: formatting, build (libpcisock.so included), lints, unit and conformance tests,
# the ntb-sys bindings check, the loom models of the rendezvous area, the rings and the device, real iperf2/iperf3 runs under LD_PRELOAD (through a device, then
# again through the host fabric service), a smoke run of the benches, and the two-guest ivshmem
# test bed. Ends with one line totalling every cargo test result.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log="$(mktemp /tmp/pcisock-test.XXXXXX)"
trap 'rm -f "$log"' EXIT

cargo fmt --all -- --check
cargo build --release --workspace --all-targets
cargo clippy --release --workspace --all-targets -- -D warnings
# The benches must run (criterion's --test mode: each once, nothing timed or asserted).
cargo bench --bench device -- --test
# ntb-sys: the vendored bindings must be what bindgen produces from the header (needs libclang).
cargo test --release -p ntb-sys --features regenerate 2>&1 | tee -a "$log"
# Everything else. The iperf tests find target/release/libpcisock.so built above. Every test target
# runs even after one fails, so one run shows every failure.
cargo test --release --workspace --no-fail-fast 2>&1 | tee -a "$log"
# The rendezvous area's, the rings', the send lock's, the fd table's and the emulated device's sync
# points model-checked under loom (docs/MEMORY-ORDERING.md, "Model-checked under loom"): the real
# rendezvous.rs, conn/ringsync.rs, conn/sendlock.rs, the shim's hazard.rs and ntbdrv's emu/sync.rs
# over loom's model of the area, of the endpoint blocks, of membarrier and of the device's
# registers and futex, built with --cfg loom in a target directory of its own so the main build is
# not rebuilt. One summary line for all five.
loomlog="$(mktemp /tmp/pcisock-loom.XXXXXX)"
loom_t0=$SECONDS
loom_rc=0
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" cargo test --release \
    --no-fail-fast -p pcisock-transport --test loom_rendezvous --test loom_ring --test loom_sendlock \
    --target-dir target/loom -- --nocapture \
    >"$loomlog" 2>&1 || loom_rc=$?
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" cargo test --release \
    --no-fail-fast -p ntbdrv --test loom_device --target-dir target/loom -- --nocapture \
    >>"$loomlog" 2>&1 || loom_rc=$?
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" cargo test --release \
    --no-fail-fast -p pcisock-shim --test loom_table --target-dir target/loom -- --nocapture \
    >>"$loomlog" 2>&1 || loom_rc=$?
cat "$loomlog" >>"$log"
awk -v secs=$((SECONDS - loom_t0)) -v bound="${LOOM_MAX_PREEMPTIONS:-3}" '
    /loom model .*: [0-9]+ executions/ { runs += $(NF - 1) }
    /^test result:/ { ok += $4; bad += $6 }
    END { printf "loom: %d models, %d passed, %d failed, %d executions, %d s with the build (LOOM_MAX_PREEMPTIONS=%s)\n",
          ok + bad, ok, bad, runs, secs, bound }' "$loomlog"
[ "$loom_rc" -eq 0 ] || { tail -n 40 "$loomlog"; rm -f "$loomlog"; exit "$loom_rc"; }
rm -f "$loomlog"
# The application matrix again, its processes meeting through a host fabric service of this run
# (how processes meet on one host by default: docs/HOST-SERVICE.md) instead of a device they map.
svc="/run/pcisock-ci-$$/fabric.sock"
target/release/pcisock fabric start --socket "$svc"
trap 'target/release/pcisock fabric stop --socket "$svc" >/dev/null 2>&1 || true; rm -rf "$(dirname "$svc")" "$log"' EXIT
PCISOCK_TEST_FABRIC="$svc" cargo test --release --no-fail-fast -p iperf-tests --test behaviours --test apps \
    --test iperf2 --test iperf3 --test echo 2>&1 | tee -a "$log"
# Two real kernels joined by a PCI BAR: QEMU guests over ivshmem (docs/TWOHOST.md; about 2 min).
iperf-tests/twohost.sh all

awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f; exit (f > 0) }' "$log"
