#!/usr/bin/env bash
# Table 3 / Fig. 17 of the paper (shared/papers/002_*.txt), reproduced on the emulated device:
# bandwidth against write size, 1 B … 4 MiB, for
#   - iperf2 over pcisock (both sides LD_PRELOAD, PCISOCK_STRICT=1, a private 0700 device dir),
#   - iperf2 over plain TCP loopback,
#   - the bare shared-memory ring ceiling (shared/tools/shmbench.c `ring`, two processes,
#     producer memcpy in, consumer memcpy out, busy polling) with the write size as chunk size.
# The three are interleaved (size by size inside each run); the table gives medians over runs.
#
# usage: benches/table3.sh [--sizes LIST] [--runs N] [--pin P,C] [--out-dir DIR] [--no-plot]
#                          [--from-raw CSV]
#   --sizes LIST    comma-separated write sizes (suffix K/M = KiB/MiB; default all 23: 1,2,4,…,4M)
#   --runs N        runs per size and path (default 3)
#   --pin P,C       run the iperf client and the ring's producer on CPU P, the iperf server and the
#                   ring's consumer on CPU C (taskset): unpinned, the host's placement of the two
#                   processes (one vCPU or two) makes every large-write cell bimodal
#   --out-dir DIR   where table3.md, table3-raw.csv, table3-summary.csv and table3.png go
#                   (default benches/results)
#   --no-plot       do not run benches/plot_table3.py
#   --from-raw CSV  measure nothing: rebuild the table and plot from an earlier table3-raw.csv
# Needs: iperf (2.x), a release build of libpcisock.so (PCISOCK_LIB overrides its path), gcc for
# the ring column (the column is "n/a" when shared/tools/shmbench.c is absent), python3 with
# matplotlib for the plot (pip install matplotlib).
# Every run is bounded by `timeout`; every process started is ended by PID.
set -euo pipefail

SIZES="" RUNS=3 OUT_DIR="" PLOT=1 FROM_RAW="" PIN=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --sizes) SIZES="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --pin) PIN="$2"; shift 2 ;;
        --out-dir) OUT_DIR="$2"; shift 2 ;;
        --no-plot) PLOT=0; shift ;;
        --from-raw) FROM_RAW="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "table3.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "table3.sh: --runs must be a positive integer" >&2; exit 2; }
pin_p=() pin_c=() ring_cpus="-1 -1"
if [[ -n "$PIN" ]]; then
    [[ "$PIN" =~ ^([0-9]+),([0-9]+)$ ]] || { echo "table3.sh: --pin wants P,C (two CPU numbers)" >&2; exit 2; }
    command -v taskset >/dev/null || { echo "table3.sh: taskset (util-linux) not found (needed for --pin)" >&2; exit 2; }
    pin_p=(taskset -c "${BASH_REMATCH[1]}") pin_c=(taskset -c "${BASH_REMATCH[2]}")
    ring_cpus="${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "$root/benches/common.sh"
OUT_DIR="${OUT_DIR:-$root/benches/results}"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
shmsrc="${SHMBENCH_SRC:-$root/../shared/tools/shmbench.c}"
[[ -f "$lib" ]] || { echo "table3.sh: $lib not found: run cargo build --release" >&2; exit 2; }
command -v iperf >/dev/null || { echo "table3.sh: iperf (2.x) not installed (apt-get install -y iperf)" >&2; exit 2; }
command -v timeout >/dev/null || { echo "table3.sh: timeout (coreutils) not found" >&2; exit 2; }
mkdir -p "$OUT_DIR"

# Sizes in bytes.
to_bytes() {
    local s=${1^^}
    case "$s" in
        *K) echo $(( ${s%K} * 1024 )) ;;
        *M) echo $(( ${s%M} * 1024 * 1024 )) ;;
        *) echo "$s" ;;
    esac
}
sizes=()
if [[ -z "$SIZES" ]]; then
    for i in $(seq 0 22); do sizes+=($((1 << i))); done
else
    IFS=, read -ra parts <<<"$SIZES"
    for p in "${parts[@]}"; do
        b="$(to_bytes "$p")"
        [[ "$b" =~ ^[1-9][0-9]*$ ]] || { echo "table3.sh: bad size '$p'" >&2; exit 2; }
        sizes+=("$b")
    done
fi
human() { awk -v b="$1" 'BEGIN { if (b >= 1048576) printf "%dM", b/1048576; else if (b >= 1024) printf "%dK", b/1024; else printf "%d", b }'; }

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs) model $(grep -m1 '^model' /proc/cpuinfo | cut -d: -f2 | xargs)"
raw="$OUT_DIR/table3-raw.csv"
if [[ -n "$FROM_RAW" ]]; then
    [[ -f "$FROM_RAW" ]] || { echo "table3.sh: $FROM_RAW not found" >&2; exit 2; }
    [[ "$(realpath "$FROM_RAW")" == "$(realpath -m "$raw")" ]] || cp "$FROM_RAW" "$raw"
    mapfile -t sizes < <(awk -F, '!/^#/ && NR > 1 && $1 ~ /^[0-9]+$/ {print $2}' "$raw" | awk '!seen[$0]++')
    RUNS="$(awk -F, '!/^#/ && $1 ~ /^[0-9]+$/ {if ($1 > m) m = $1} END {print m}' "$raw")"
else
    bench_init table3.sh
    mkdir -m 700 "$work/emu"

    shmbench=""
    if [[ -f "$shmsrc" ]]; then
        command -v gcc >/dev/null || { echo "table3.sh: gcc not found (needed to build $shmsrc)" >&2; exit 2; }
        gcc -O2 -march=native -o "$work/shmbench" "$shmsrc" || { echo "table3.sh: building $shmsrc failed" >&2; exit 2; }
        shmbench="$work/shmbench"
    else
        echo "table3.sh: $shmsrc absent: the ring-ceiling column will be n/a" >&2
    fi

    next_port

    # Bytes per iperf run: 2^20 writes, at least 1 MiB, at most 8 GiB (≈0.2–1 s per run here).
    amount() { local a=$(( $1 * 1048576 )); (( a > 8589934592 )) && a=8589934592; (( a < 1048576 )) && a=1048576; echo "$a"; }
    # Bytes per ring run: 2^23 chunks, 16 MiB … 4 GiB; the ring is max(1 MiB, 2 × chunk).
    ring_total() { local a=$(( $1 * 8388608 )); (( a > 4294967296 )) && a=4294967296; (( a < 16777216 )) && a=16777216; echo "$a"; }
    ring_size() { local r=1048576; (( $1 * 2 > r )) && r=$(( $1 * 2 )); echo "$r"; }

    # One iperf2 run. $1 = ntb|tcp, $2 = size. Prints "MB/s server_bytes cpu_s" (MB = 10^6 bytes;
    # the rate is the client's, the server's byte count is a cross-check; cpu_s = user + system
    # seconds of the iperf client and server together; see table3.md).
    iperf_run() {
        local mode=$1 size=$2 env=() n
        n="$(amount "$size")"
        if [[ $mode == ntb ]]; then
            env=(LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$work/emu" PCISOCK_PORTS="$port" PCISOCK_STRICT=1)
        fi
        : >"$work/s.log"
        "${pin_c[@]}" env "${env[@]}" iperf -s -p "$port" -y C >"$work/s.log" 2>"$work/s.err" &
        local spid=$!; pids+=("$spid")
        wait_listen "$port" || { kill "$spid"; return 1; }
        local out TIMEFORMAT='%U %S'
        if ! { time "${pin_p[@]}" env "${env[@]}" timeout 60 iperf -c 127.0.0.1 -p "$port" -l "$size" -n "$n" -y C \
            >"$work/c.out" 2>"$work/c.err"; } 2>"$work/c.time"; then
            echo "table3.sh: iperf client ($mode, -l $size -n $n) failed or timed out: $(cat "$work/c.err")" >&2
            kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true; return 1
        fi
        out="$(cat "$work/c.out")"
        for _ in $(seq 100); do grep -q , "$work/s.log" && break; sleep 0.02; done
        # The server's CPU time (all its threads), read before it is ended.
        local scpu
        scpu="$(awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$spid/stat" 2>/dev/null || echo n/a)"
        kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
        local bps sbytes
        bps="$(echo "$out" | grep , | tail -1 | awk -F, '{print $9}')"
        sbytes="$(grep , "$work/s.log" | tail -1 | awk -F, '{print $8}')"
        [[ -n "$bps" ]] || { echo "table3.sh: no iperf result ($mode, -l $size): $out $(cat "$work/c.err")" >&2; return 1; }
        awk -v b="$bps" -v s="${sbytes:-none}" -v sc="$scpu" -v ct="$(tail -1 "$work/c.time")" \
            'BEGIN {split(ct, c, " "); cpu = (sc == "n/a" || c[2] == "") ? "n/a" : sprintf("%.3f", sc + c[1] + c[2]);
                    printf "%.4f %s %s\n", b/8/1e6, s, cpu}'
    }

    # One ring run: prints "MB/s - cpu_s" (or n/a; cpu_s = user + system seconds of the producer
    # and the consumer together).
    ring_run() {
        local size=$1
        [[ -n "$shmbench" ]] || { echo "n/a - n/a"; return 0; }
        local TIMEFORMAT='%U %S'
        # shellcheck disable=SC2086 # ring_cpus is two words
        if ! { time timeout 30 "$shmbench" ring "$(ring_size "$size")" "$size" "$(ring_total "$size")" copy $ring_cpus \
            >"$work/r.out" 2>&1; } 2>"$work/r.time"; then
            echo "table3.sh: shmbench ring (chunk $size) failed: $(cat "$work/r.out")" >&2; echo "n/a - n/a"; return 0
        fi
        awk -v ct="$(tail -1 "$work/r.time")" '{for (i = 1; i <= NF; i++) if ($i ~ /^GBps=/) {sub("GBps=", "", $i);
            split(ct, c, " "); printf "%.4f - %.3f\n", $i * 1000, c[1] + c[2]}}' "$work/r.out"
    }

    started="$(date -u +%Y-%m-%dT%H:%MZ)"
    {
        echo "# command: benches/table3.sh --runs $RUNS${SIZES:+ --sizes $SIZES}${PIN:+ --pin $PIN}"
        echo "# started: $started"
        echo "# machine: $(nproc) vCPUs, $cpu, kernel $(uname -r), $(iperf -v 2>&1 | head -1)"
        echo "# library: $(basename "$lib") sha256 $(sha256sum "$lib" | cut -c1-12), built $(date -u -r "$lib" +%Y-%m-%dT%H:%MZ)"
        echo "run,size,path,MBps,server_bytes,client_bytes,cpu_s"
    } >"$raw.tmp"
    echo "table3: ${#sizes[@]} sizes × $RUNS runs × {pcisock, tcp, ring}, port $port" >&2
    for r in $(seq "$RUNS"); do
        for size in "${sizes[@]}"; do
            for mode in ntb tcp ring; do
                if [[ $mode == ring ]]; then res="$(ring_run "$size")"; else res="$(iperf_run "$mode" "$size")"; fi
                read -r mbps sbytes cpu_s <<<"$res"
                # Bytes moved: the client's (iperf), the ring's total (ring).
                if [[ $mode == ring ]]; then cbytes="$(ring_total "$size")"; else cbytes="$(amount "$size")"; fi
                echo "$r,$size,$mode,$mbps,$sbytes,$cbytes,${cpu_s:-n/a}" >>"$raw.tmp"
                printf '  run %d %6s %-4s %12s MB/s%s\n' "$r" "$(human "$size")" "$mode" "$mbps" \
                    "$([[ $sbytes != - && $sbytes != "$cbytes" ]] && echo "  (iperf server counted $sbytes of $cbytes bytes)")" >&2
            done
        done
    done
    echo "# ended: $(date -u +%Y-%m-%dT%H:%MZ)" >>"$raw.tmp"
    lib_now="$(basename "$lib") sha256 $(sha256sum "$lib" | cut -c1-12), built $(date -u -r "$lib" +%Y-%m-%dT%H:%MZ)"
    grep -qF "# library: $lib_now" "$raw.tmp" || echo "# library: **rebuilt during the run**: now $lib_now" >>"$raw.tmp"
    mv "$raw.tmp" "$raw"
fi

vals() { awk -F, -v s="$1" -v m="$2" '!/^#/ && $2 == s && $3 == m && $4 != "n/a" {print $4}' "$raw"; }
col() { vals "$1" "$2" | median n/a; }
span() { vals "$1" "$2" | sort -g | awk 'NR == 1 {lo=$1} {hi=$1} END {if (NR) printf "%.0f–%.0f", lo, hi; else print "n/a"}'; }
short() { awk -F, -v s="$1" -v m="$2" '!/^#/ && $2 == s && $3 == m && $5 != "-" && $5 != $6 {n++} END {print n + 0}' "$raw"; }
# CPU seconds (both processes, user + system) per GB moved, median over runs (n/a in raw files
# from before the column existed).
cpu_gb() { awk -F, -v s="$1" -v m="$2" '!/^#/ && $2 == s && $3 == m && NF >= 7 && $7 != "n/a" && $6 + 0 > 0 {print $7 / ($6 / 1e9)}' "$raw" | median n/a; }
meta() { awk -v k="# $1: " 'index($0, k) == 1 {print substr($0, length(k) + 1)}' "$raw"; }
fmt() { awk -v v="$1" 'BEGIN { if (v == "n/a") print "n/a"; else if (v >= 100) printf "%.0f", v; else if (v >= 10) printf "%.1f", v; else printf "%.3g", v }'; }
declare -A paper=([1]=0.06 [2]=0.13 [4]=0.26 [8]=0.51 [16]=1.02 [32]=2.09 [64]=4.12 [128]=8.21 [256]=16.4
    [512]=32.9 [1024]=64.7 [2048]=132 [4096]=230 [8192]=376 [16384]=547 [32768]=734 [65536]=876
    [131072]=971 [262144]=1025 [524288]=1054 [1048576]=1071 [2097152]=1080 [4194304]=1084)

summary="$OUT_DIR/table3-summary.csv"
echo "size,pcisock_MBps,tcp_MBps,ring_MBps,paper_dma_MBps" >"$summary"
table="$(
    echo "| write size | pcisock MB/s | TCP loopback MB/s | shm ring ceiling MB/s | pcisock / TCP | pcisock / ceiling | pcisock min–max | TCP min–max | ring min–max | CPU s per GB: pcisock, TCP, ring | iperf server short counts (pcisock, TCP) | paper: DMA MB/s |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for size in "${sizes[@]}"; do
        n="$(col "$size" ntb)"; t="$(col "$size" tcp)"; g="$(col "$size" ring)"
        echo "$size,$n,$t,$g,${paper[$size]:-}" >>"$summary"
        echo "| $(human "$size") | $(fmt "$n") | $(fmt "$t") | $(fmt "$g") | $(ratio "$n" "$t") | $(ratio "$n" "$g") | $(span "$size" ntb) | $(span "$size" tcp) | $(span "$size" ring) | $(fmt "$(cpu_gb "$size" ntb)"), $(fmt "$(cpu_gb "$size" tcp)"), $(fmt "$(cpu_gb "$size" ring)") | $(short "$size" ntb)/$RUNS, $(short "$size" tcp)/$RUNS | ${paper[$size]:-–} |"
    done
)"
{
    echo "# Table 3 / Fig. 17 reproduced: bandwidth against write size"
    echo
    echo "Command: \`$(meta command)\` (from /work/main; raw runs in [table3-raw.csv](table3-raw.csv), medians in [table3-summary.csv](table3-summary.csv), plot [table3.png](table3.png))."
    echo
    echo "Date: $(meta started) – $(meta ended). Machine: $(meta machine).$([[ -n "$(meta library)" ]] && echo " Library: $(meta library | paste -sd ';' | sed 's/;/; /g').") Medians of $RUNS interleaved runs (size by size: pcisock, TCP, ring); MB = 10^6 bytes."
    echo
    echo "$table"
    [[ ! -f "$OUT_DIR/table3-notes.md" ]] || { echo; cat "$OUT_DIR/table3-notes.md"; }
} >"$OUT_DIR/table3.md"
echo >&2
cat "$OUT_DIR/table3.md"

if [[ $PLOT == 1 ]]; then
    command -v python3 >/dev/null || { echo "table3.sh: python3 not found: cannot plot (use --no-plot)" >&2; exit 2; }
    python3 "$root/benches/plot_table3.py" "$summary" "$OUT_DIR/table3.png" || {
        echo "table3.sh: plotting failed (see above); the table is written" >&2; exit 3; }
fi
