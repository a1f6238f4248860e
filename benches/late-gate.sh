#!/bin/bash
# The cost of the late-upgrade gate on a candidate's plain TCP path, A/B interleaved: the echo
# tool (iperf-tests/src/bin/echo.rs: blocking std::net, a writer thread and a reader) sends BYTES
# unpaced and reads them back, both ends preloaded with library A or B, on a private emulated
# device whose link is down for the whole run (so the connection is a candidate that never
# upgrades: every read and send goes through the gate with A, straight to the kernel with a
# library whose candidacy is off). Prints the wall time of each run.
#   usage: flock /tmp/pcisock-iperf-tests-lo.lock benches/late-gate.sh A_LIB B_LIB [ROUNDS] [BYTES]
# Make B by building the tree with `late::candidate` returning false and copying
# target/release/libpcisock.so aside.
set -euo pipefail
a=$1 b=$2 rounds=${3:-5} bytes=${4:-2147483648}
root=$(cd "$(dirname "$0")/.." && pwd)
echo_bin=$root/target/release/echo cli=$root/target/release/pcisock
one() { # lib label
    local dir port t0 t1
    dir=$(mktemp -d /tmp/pcisock-late-gate.XXXXXX)
    port=$((24000 + RANDOM % 4000))
    export PCISOCK_EMU_DIR=$dir/emu PCISOCK_PORTS=$port PCISOCK_FABRIC=device
    mkdir -p "$dir/emu" && chmod 700 "$dir/emu"
    # The device exists once a preloaded process opened it: a connect refused, then the link down.
    LD_PRELOAD=$1 "$echo_bin" send "$port" 1 1 >/dev/null 2>&1 || true
    LD_PRELOAD=$1 "$echo_bin" serve "$port" &
    local srv=$!
    sleep 0.3
    "$cli" emu fault link-down >/dev/null
    t0=$(date +%s.%N)
    LD_PRELOAD=$1 "$echo_bin" send "$port" "$bytes" 7 >/dev/null
    t1=$(date +%s.%N)
    wait "$srv"
    awk -v l="$2" -v a="$t0" -v b="$t1" -v n="$bytes" \
        'BEGIN {printf "%s: %.2f s, %.0f MiB/s each way\n", l, b - a, n / (b - a) / 1048576}'
    rm -rf "$dir"
}
for r in $(seq "$rounds"); do
    one "$a" "A($r)"
    one "$b" "B($r)"
done
