#!/bin/bash
# The bridge-mode poller's idle cost, A/B interleaved: for each build's `bridge_idle` example
# (ntbdrv/examples/bridge_idle.rs: a bridge-mode pair in one process, two pollers, link up, one
# leased vector line per side, otherwise idle), the CPU time (utime + stime from
# /proc/<pid>/task/<tid>/stat, in clock ticks) and voluntary context switches (its wake-ups) of
# each poller thread over SECS idle seconds, starting 2 s after the pair is up.
#   usage: benches/bridge-poller-idle.sh A_BIN B_BIN [ROUNDS] [SECS]
# Build a binary with `cargo build --release -p ntbdrv --example bridge_idle` and copy
# target/release/examples/bridge_idle aside for each tree.
set -euo pipefail
a=$1 b=$2 rounds=${3:-3} secs=${4:-10}
hz=$(getconf CLK_TCK)
snap() { # pid -> "tid ticks switches" per poller thread
    for t in /proc/"$1"/task/*; do
        [[ $(cat "$t/comm") == pcisock-bridge* ]] || continue
        local stat ticks sw
        stat=$(sed 's/.*) //' "$t/stat")
        ticks=$(awk '{print $12 + $13}' <<<"$stat")
        sw=$(awk '/^voluntary_ctxt_switches/{print $2}' "$t/status")
        echo "${t##*/} $ticks $sw"
    done
}
one() { # bin label
    local out pid s0 s1
    out=$(mktemp)
    "$1" $((secs + 4)) >"$out" &
    local child=$!
    sleep 2
    pid=$(cat "$out")
    s0=$(snap "$pid")
    sleep "$secs"
    s1=$(snap "$pid")
    join <(echo "$s0") <(echo "$s1") |
        awk -v l="$2" -v hz="$hz" -v s="$secs" \
            '{printf "%s poller %s: %.0f ms CPU, %.0f wake-ups/s\n", l, $1, ($4-$2)*1000/hz, ($5-$3)/s}'
    wait "$child"
    rm -f "$out"
}
for r in $(seq "$rounds"); do
    one "$a" "A($r)"
    one "$b" "B($r)"
done
