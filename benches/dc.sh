#!/usr/bin/env bash
# Direct Connect copy bandwidth (shared/papers/000_*, 001_* Fig. 5/6) reproduced on this machine's
# disk: a 1 GiB file copied
#   - by `pcisock dc copy` through the NTB-window DC buffer at queue depth 1…8, with the emulated
#     device on a tmpfs mounted huge=always (the window contiguous in 2 MiB pages, as a real BAR
#     is: "window-huge") and in /dev/shm as by default ("window": a tmpfs without huge pages,
#     where dc copy collapses its DC buffer into 2 MiB pages itself, MADV_COLLAPSE),
#   - by the same engine through host memory (--buffer host, transparent huge pages) at queue
#     depth 1, 2, 4, 8 (qd 1 is the papers' conventional, host-staged copy with one command in
#     flight), and through the window in 4 KiB pages at qd 1 and 4,
#   - by `dd bs=1M iflag=direct oflag=direct` and by `cp` (followed by `sync`, so that the
#     bytes are on the disk as they are for the others),
# against the ceilings: the disk's own read and write bandwidth (fio, O_DIRECT, io_uring, the
# chunk size, iodepth 8), alone and both at once (one disk serves the copy's reads and writes).
# Every variant runs once per round, interleaved, with the page cache dropped before each run;
# the table gives medians over the rounds. Times are wall-clock around each command.
# With a second device (zram by default, see --second-device), also copies between the disk and
# that device in both directions, against min(SRC's read alone, DST's write alone): the papers'
# case of two devices that serve their own reads and writes.
#
# usage: benches/dc.sh [--runs N] [--size N] [--chunk N] [--dir DIR] [--out-dir DIR] [--name NAME]
#                      [--second-device zram|none|DEV] [--no-plot] [--from-raw CSV]
#                      [--quick] [--before BIN]
#   --runs N        rounds (default 7)
#   --size N        bytes to copy (default 1G; suffix K, M, G)
#   --chunk N       pcisock's --chunk and fio's block size (default: pcisock's default, 1M)
#   --dir DIR       where the files go (default /var/tmp/pcisock-dc-bench; removed at the end)
#   --out-dir DIR   where dc.md, dc-raw.csv, dc-summary.csv and dc.png go (default benches/results)
#   --name NAME     name those files NAME.md, NAME-raw.csv, … instead (default dc)
#   --second-device zram (default): /dev/zram0 if it exists and is not in use (initstate 0); it
#                   is sized for the copy and reset at the end. none: skip the two-device runs.
#                   DEV: a block device of at least --size bytes, WHOSE CONTENTS ARE OVERWRITTEN.
#   --no-plot       do not run benches/plot_dc.py
#   --from-raw CSV  measure nothing: rebuild the table and plot from an earlier dc-raw.csv
#   --quick         only the default machine's case: dd, and dc copy at qd 4 with the window in
#                   /dev/shm ("window"), on the huge tmpfs ("window-huge") and in host memory;
#                   no fio ceilings, no second device, no plot
#   --before BIN    also run BIN (an earlier pcisock build) as "window-before", device in
#                   /dev/shm, qd 4: the same copy before a change, interleaved with it
# Needs: root (to drop the page cache), fio, dd, cp, python3 (matplotlib for the plot), and a
# release build of pcisock (cargo build --release).
set -euo pipefail

RUNS=7 SIZE=1G CHUNK=1M DIR=/var/tmp/pcisock-dc-bench OUT_DIR="" NAME=dc PLOT=1 FROM_RAW="" SECOND=zram
QUICK=0 BEFORE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --chunk) CHUNK="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        --out-dir) OUT_DIR="$2"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --second-device) SECOND="$2"; shift 2 ;;
        --no-plot) PLOT=0; shift ;;
        --from-raw) FROM_RAW="$2"; shift 2 ;;
        --quick) QUICK=1 SECOND=none PLOT=0; shift ;;
        --before) BEFORE="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "dc.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "dc.sh: --runs must be a positive integer" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT_DIR:-$root/benches/results}"
mkdir -p "$OUT_DIR"
raw="$OUT_DIR/$NAME-raw.csv"
summary="$OUT_DIR/$NAME-summary.csv"
md="$OUT_DIR/$NAME.md"
bin="${PCISOCK_BIN:-$root/target/release/pcisock}"

to_bytes() {
    local s=${1^^}
    case "$s" in
        *K) echo $(( ${s%K} << 10 )) ;;
        *M) echo $(( ${s%M} << 20 )) ;;
        *G) echo $(( ${s%G} << 30 )) ;;
        *) echo "$s" ;;
    esac
}
bytes=$(to_bytes "$SIZE")

if [[ -z "$FROM_RAW" ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "dc.sh: needs root (drops the page cache between runs)" >&2; exit 2; }
    [[ -x "$bin" ]] || { echo "dc.sh: $bin not found: run cargo build --release" >&2; exit 2; }
    ((QUICK)) || command -v fio >/dev/null || { echo "dc.sh: fio not installed (apt-get install -y fio)" >&2; exit 2; }
    [[ -z "$BEFORE" || -x "$BEFORE" ]] || { echo "dc.sh: --before $BEFORE is not an executable" >&2; exit 2; }
    mkdir -p "$DIR"
    # Two emulated devices: one in /dev/shm as by default (4 KiB pages), and one on a private
    # tmpfs mounted with huge=always, so that the window is contiguous in 2 MiB pages as a real
    # BAR is (the variant "window-huge").
    emu="$(mktemp -d /dev/shm/pcisock-dc-bench-emu.XXXXXX)"
    # The --before build's own device (collapsed huge pages in one device's file would help any
    # build that maps it: the block layer merges physically contiguous pages).
    emu_before="$(mktemp -d /dev/shm/pcisock-dc-bench-before.XXXXXX)"
    emu_huge="$(mktemp -d /tmp/pcisock-dc-bench-huge.XXXXXX)"
    chmod 700 "$emu" "$emu_huge" "$emu_before"
    mount -t tmpfs -o huge=always,mode=0700,size=1g pcisock-dc-bench "$emu_huge" ||
        { echo "dc.sh: cannot mount a huge=always tmpfs on $emu_huge" >&2; exit 1; }
    # fio's buffers in huge pages too (hugetlb, reserved here and given back at the end), so that
    # the disk's ceiling is measured with buffers as contiguous as the DC buffer's.
    hp_old=$(cat /proc/sys/vm/nr_hugepages)
    echo $((hp_old + 64)) >/proc/sys/vm/nr_hugepages 2>/dev/null || true
    fio_mems="malloc"
    (($(cat /proc/sys/vm/nr_hugepages) >= hp_old + 16)) && fio_mems="malloc mmaphuge"
    # The second device. zram stores pages that do not compress (the source is urandom) as they
    # are, so it reads and writes at memory speed with the guest's CPU, beside the disk.
    dev2="" zram_ours=0
    case "$SECOND" in
        none) ;;
        zram)
            if [[ -e /sys/block/zram0/initstate && $(cat /sys/block/zram0/initstate) == 0 ]]; then
                grep -qw lz4 /sys/block/zram0/comp_algorithm && echo lz4 >/sys/block/zram0/comp_algorithm
                echo $((bytes + (16 << 20))) >/sys/block/zram0/disksize
                dev2=/dev/zram0 zram_ours=1
            else
                echo "dc.sh: /dev/zram0 is missing or in use: no two-device runs (--second-device DEV)" >&2
            fi ;;
        *)
            [[ -b "$SECOND" ]] || { echo "dc.sh: --second-device $SECOND is not a block device" >&2; exit 2; }
            (($(blockdev --getsize64 "$SECOND") >= bytes)) ||
                { echo "dc.sh: --second-device $SECOND is smaller than --size $SIZE" >&2; exit 2; }
            dev2="$SECOND" ;;
    esac
    cleanup() {
        ((zram_ours)) && echo 1 >/sys/block/zram0/reset 2>/dev/null || true
        umount "$emu_huge" 2>/dev/null || true
        rm -rf "$DIR" "$emu" "$emu_huge" "$emu_before"
        echo "$hp_old" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
    }
    trap cleanup EXIT
    export PCISOCK_EMU_DIR="$emu"
    src="$DIR/src" dst="$DIR/dst" wfile="$DIR/w"
    echo "dc.sh: writing a $SIZE source file in $DIR" >&2
    dd if=/dev/urandom of="$src" bs=1M count=$((bytes >> 20)) status=none
    sync

    drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
    now() { date +%s.%N; }
    # MB/s (10^6 bytes) of a command run on a cold cache, DST removed first.
    timed() {
        rm -f "$dst"; drop
        local t0 t1
        t0=$(now)
        "$@" >/dev/null
        t1=$(now)
        python3 -c "print(f'{$bytes / ($t1 - $t0) / 1e6:.1f}')"
    }
    fio_bw() { # fio_bw MEM RW FILE [extra] -> MB/s of that direction
        local mem=$1 rw=$2 file=$3; shift 3
        drop
        fio --name=dc --filename="$file" --rw="$rw" --bs="$CHUNK" --size="$bytes" --direct=1 \
            --ioengine=io_uring --iodepth=8 --iomem="$mem" "$@" --output-format=json 2>/dev/null |
            python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(f\"{j['$([[ $rw == read ]] && echo read || echo write)']['bw_bytes']/1e6:.1f}\")"
    }
    fio_both() { # fio_both MEM: read SRC and write W at once -> "read_MBps write_MBps"
        local mem=$1
        drop; rm -f "$wfile"
        fio --output-format=json --iomem="$mem" \
            --name=r --filename="$src" --rw=read --bs="$CHUNK" --size="$bytes" --direct=1 --ioengine=io_uring --iodepth=8 \
            --name=w --filename="$wfile" --rw=write --bs="$CHUNK" --size="$bytes" --direct=1 --ioengine=io_uring --iodepth=8 \
            2>/dev/null | python3 -c "
import json,sys
j=json.load(sys.stdin)['jobs']
print(f\"{j[0]['read']['bw_bytes']/1e6:.1f} {j[1]['write']['bw_bytes']/1e6:.1f}\")"
        rm -f "$wfile"
    }
    dc() { "$bin" dc copy --chunk "$CHUNK" "$@" "$src" "$dst"; }

    echo "round,variant,qd,MBps" >"$raw"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    for r in $(seq 1 "$RUNS"); do
        echo "dc.sh: round $r/$RUNS" >&2
        if ((QUICK)); then
            echo "$r,dd,1,$(timed dd if="$src" of="$dst" bs=1M iflag=direct oflag=direct status=none)" >>"$raw"
            echo "$r,window,4,$(timed dc --qd 4)" >>"$raw"
            [[ -n "$BEFORE" ]] &&
                echo "$r,window-before,4,$(PCISOCK_EMU_DIR="$emu_before" timed "$BEFORE" dc copy --chunk "$CHUNK" --qd 4 "$src" "$dst")" >>"$raw"
            echo "$r,window-huge,4,$(PCISOCK_EMU_DIR="$emu_huge" timed dc --qd 4)" >>"$raw"
            echo "$r,host,4,$(timed dc --qd 4 --buffer host)" >>"$raw"
            continue
        fi
        for mem in $fio_mems; do
            tag=$([[ $mem == malloc ]] && echo "" || echo "-huge")
            echo "$r,device-read$tag,8,$(fio_bw "$mem" read "$src" --readonly)" >>"$raw"
            rm -f "$wfile"
            echo "$r,device-write$tag,8,$(fio_bw "$mem" write "$wfile")" >>"$raw"
            rm -f "$wfile"
            read -r br bw <<<"$(fio_both "$mem")"
            echo "$r,device-read-while-writing$tag,8,$br" >>"$raw"
            echo "$r,device-write-while-reading$tag,8,$bw" >>"$raw"
        done
        echo "$r,dd,1,$(timed dd if="$src" of="$dst" bs=1M iflag=direct oflag=direct status=none)" >>"$raw"
        echo "$r,cp,1,$(timed sh -c "cp '$src' '$dst' && sync")" >>"$raw"
        for qd in 1 2 3 4 5 6 7 8; do
            echo "$r,window-huge,$qd,$(PCISOCK_EMU_DIR="$emu_huge" timed dc --qd "$qd")" >>"$raw"
            case $qd in 1|2|4|8) echo "$r,host,$qd,$(timed dc --qd "$qd" --buffer host)" >>"$raw" ;; esac
            case $qd in 1|4) echo "$r,window,$qd,$(timed dc --qd "$qd")" >>"$raw" ;; esac
            [[ $qd == 4 && -n "$BEFORE" ]] &&
                echo "$r,window-before,4,$(PCISOCK_EMU_DIR="$emu_before" timed "$BEFORE" dc copy --chunk "$CHUNK" --qd 4 "$src" "$dst")" >>"$raw"
        done
        if [[ -n "$dev2" ]]; then
            # The disk's file onto the second device, then back into a new file on the disk; the
            # device's own bandwidth in between (its write with fresh random data in every
            # buffer, as the copy's source is: zram takes fio's reused buffers at about a third
            # of that speed).
            echo "$r,disk-to-dev2,4,$(PCISOCK_EMU_DIR="$emu_huge" timed "$bin" dc copy --chunk "$CHUNK" --qd 4 "$src" "$dev2")" >>"$raw"
            echo "$r,dev2-to-disk,4,$(PCISOCK_EMU_DIR="$emu_huge" timed "$bin" dc copy --chunk "$CHUNK" --qd 4 --length "$bytes" "$dev2" "$dst")" >>"$raw"
            for mem in $fio_mems; do
                tag=$([[ $mem == malloc ]] && echo "" || echo "-huge")
                echo "$r,dev2-read$tag,8,$(fio_bw "$mem" read "$dev2" --readonly)" >>"$raw"
                echo "$r,dev2-write$tag,8,$(fio_bw "$mem" write "$dev2" --refill_buffers)" >>"$raw"
                # Is the second device independent of the disk? The disk's write alone again,
                # while every vCPU spins (as zram's copies keep them busy).
                spinners=()
                for _ in $(seq "$(nproc)"); do sh -c 'while :; do :; done' & spinners+=($!); done
                echo "$r,device-write-cpus-busy$tag,8,$(fio_bw "$mem" write "$wfile")" >>"$raw"
                kill "${spinners[@]}"; wait "${spinners[@]}" 2>/dev/null || true
                rm -f "$wfile"
            done
        fi
    done
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    # One verified copy, so the table is known to be of correct copies (with the device in
    # /dev/shm, as by default: the buffer line says which pages it had).
    rm -f "$dst"
    "$bin" dc copy --qd 4 --chunk "$CHUNK" --verify "$src" "$dst" >"$DIR/verify.txt"
    buffer_line=$(grep '^  buffer:' "$DIR/verify.txt" | sed 's/^ *//')
    verify_line=$(grep '^verify:' "$DIR/verify.txt")
    dev2_what="${dev2:-none}"
    ((zram_ours)) && dev2_what+=" (zram, compressor $(grep -o '\[[^]]*\]' /sys/block/zram0/comp_algorithm), $(cat /sys/block/zram0/disksize) bytes)"
    machine="$(nproc) vCPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), disk $(df --output=source "$DIR" | tail -1) ($(cat /sys/block/"$(basename "$(df --output=source "$DIR" | tail -1)")"/device/model 2>/dev/null || echo virtio), $(cat /sys/block/"$(basename "$(df --output=source "$DIR" | tail -1)")"/queue/scheduler 2>/dev/null | grep -o '\[[^]]*\]' || true) scheduler), filesystem $(df --output=fstype "$DIR" | tail -1)"
    {
        echo "# command: benches/dc.sh --runs $RUNS --size $SIZE --chunk $CHUNK --dir $DIR --name $NAME --second-device $SECOND$( ((QUICK)) && echo " --quick")$([[ -n "$BEFORE" ]] && echo " --before $BEFORE")"
        echo "# date: $(date -u +%FT%TZ); build: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        echo "# machine: $machine"
        echo "# load average before: $load_before; after: $load_after (other sessions build on this machine)"
        echo "# check: $verify_line"
        echo "# default machine's DC buffer: $buffer_line"
        [[ -n "$BEFORE" ]] && echo "# before: $BEFORE ($("$BEFORE" --version 2>&1))"
        echo "# second device: $dev2_what"
    } >"$raw.meta"
else
    raw="$FROM_RAW"
fi

python3 - "$raw" "$summary" "$md" "$bytes" "$CHUNK" "$NAME" "$PLOT" <<'PY'
import csv, statistics, sys, os
raw, summary, md, nbytes, chunk, name, plot = sys.argv[1:8]
rows = list(csv.DictReader(open(raw)))
by = {}
for r in rows:
    by.setdefault((r["variant"], int(r["qd"])), []).append(float(r["MBps"]))
med = {k: statistics.median(v) for k, v in by.items()}
spread = {k: (min(v), max(v)) for k, v in by.items()}
with open(summary, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["variant", "qd", "median_MBps", "min_MBps", "max_MBps", "runs"])
    for k in sorted(by):
        w.writerow([k[0], k[1], f"{med[k]:.1f}", f"{spread[k][0]:.1f}", f"{spread[k][1]:.1f}", len(by[k])])
meta = open(raw + ".meta").read() if os.path.exists(raw + ".meta") else ""
g = lambda v, q: med.get((v, q))
fmt = lambda x: "n/a" if x is None else f"{x:.0f}"
main = "window-huge" if any(k[0] == "window-huge" for k in med) else "window"
DEFAULT_QD = 4
# Per round: the value of each variant, for ratios taken within one round (paired).
per_round = {}
for r in rows:
    per_round.setdefault(r["round"], {})[(r["variant"], int(r["qd"]))] = float(r["MBps"])
def paired(num, den):
    """Median over rounds of num/den (den a function of the round's values), or None."""
    ratios = []
    for vals in per_round.values():
        d = den(vals)
        if num in vals and d:
            ratios.append(vals[num] / d)
    return statistics.median(ratios) if ratios else None
def min_rw(tag):
    return lambda v: min(v.get((f"device-read{tag}", 8), 0), v.get((f"device-write{tag}", 8), 0))
def share(tag):
    return lambda v: (v.get((f"device-read-while-writing{tag}", 8), 0) + v.get((f"device-write-while-reading{tag}", 8), 0)) / 2
dut = (main, DEFAULT_QD)
huge = any(k[0] == "device-read-huge" for k in med)
out = []
out.append("# Direct Connect copy: bandwidth against queue depth (benches/dc.sh)\n")
out.append("```text\n" + meta.strip() + "\n```\n")
out.append(f"A {int(nbytes) >> 20} MiB file copied on this machine's disk, chunk {chunk}; medians of "
           f"{len(by.get(('dd', 1), []))} interleaved rounds, page cache dropped before each run, wall-clock "
           f"time around each command. MB/s = 10^6 bytes per second. Raw runs: `{name}-raw.csv`; "
           f"medians with min/max: `{name}-summary.csv`" + (f"; plot: `{name}.png`" if plot == "1" else "") + ".\n")
out.append("| queue depth | dc copy, window buffer (2 MiB pages) | dc copy, host buffer (THP) | dc copy, window buffer (/dev/shm, as by default) |")
out.append("|---:|---:|---:|---:|")
for q in range(1, 9):
    if any(g(v, q) is not None for v in ("window-huge", "host", "window")):
        out.append(f"| {q} | {fmt(g('window-huge', q))} | {fmt(g('host', q))} | {fmt(g('window', q))} |")
out.append("")
out.append("| baseline / ceiling | MB/s |")
out.append("|---|---:|")
out.append(f"| dd bs=1M iflag=direct oflag=direct | {fmt(g('dd', 1))} |")
if g("window-before", 4) is not None:
    out.append(f"| dc copy, window buffer (/dev/shm), qd 4, the `before:` build | {fmt(g('window-before', 4))} |")
if g("cp", 1) is not None:
    out.append(f"| cp, then sync | {fmt(g('cp', 1))} |")
if g("host", 1) is not None:
    out.append(f"| host-staged, one command in flight (dc copy --buffer host --qd 1) | {fmt(g('host', 1))} |")
for tag, what in [("", "fio's buffers in 4 KiB pages (malloc)"), ("-huge", "fio's buffers in 2 MiB pages (hugetlb)")]:
    if g(f"device-read{tag}", 8) is None:
        continue
    out.append(f"| device read alone, O_DIRECT, bs {chunk}, iodepth 8, {what} | {fmt(g(f'device-read{tag}', 8))} |")
    out.append(f"| device write alone, same | {fmt(g(f'device-write{tag}', 8))} |")
    out.append(f"| device reading and writing at once (two fio jobs), read + write, same | "
               f"{fmt(g(f'device-read-while-writing{tag}', 8))} + {fmt(g(f'device-write-while-reading{tag}', 8))} |")
out.append("")
out.append(f"Targets (issue 6): `pcisock dc copy` with the window buffer at its default qd {DEFAULT_QD}, chunk "
           f"{chunk}, on the huge-page device, each ratio taken within a round (paired) and the median "
           "over rounds:\n")
r_dd = paired(dut, lambda v: v.get(("dd", 1)))
out.append(f"- against dd: **{r_dd:.3f}x** (target >= 1.5x): **{'met' if r_dd >= 1.5 else 'not met'}**")
r_def = paired(("window", DEFAULT_QD), lambda v: v.get(("dd", 1)))
if r_def is not None:
    out.append(f"- the default machine (device in /dev/shm, nothing mounted), window buffer at qd {DEFAULT_QD}, "
               f"against dd: **{r_def:.3f}x** (target >= 1.5x, issue 15 item 7): "
               f"**{'met' if r_def >= 1.5 else 'not met'}**")
r_b = paired(("window-before", DEFAULT_QD), lambda v: v.get(("dd", 1)))
r_ab = paired(("window", DEFAULT_QD), lambda v: v.get(("window-before", DEFAULT_QD)))
if r_b is not None and r_ab is not None:
    out.append(f"- the same copy with the build named in the header's `before:` line: **{r_b:.3f}x** dd; "
               f"this build against it, paired: **{r_ab:.3f}x**")
for tag, what in [("", "4 KiB-page buffers, as fio and dd use by default"), ("-huge", "2 MiB-page buffers, as the DC buffer")]:
    r = paired(dut, min_rw(tag))
    if r is not None:
        out.append(f"- against min(device read, device write) measured with {what}: **{r:.3f}** "
                   f"(target >= 0.9): **{'met' if r >= 0.9 else 'not met'}**")
tag = "-huge" if huge else ""
r = paired(dut, share(tag))
if r is not None:
    out.append(f"- against what the disk moves per direction when it reads and writes at once "
               f"((read + write) / 2 of the two fio jobs{', 2 MiB pages' if huge else ''}), the ceiling of a "
               f"copy whose source and destination share one disk: **{r:.3f}**")
best_qd = max(range(1, 9), key=lambda q: g(main, q) or 0)
out.append(f"- best median over queue depths: qd {best_qd}, {fmt(g(main, best_qd))} MB/s; "
           f"host-staged qd 1: {fmt(g('host', 1))} MB/s; the window buffer at qd "
           f"{DEFAULT_QD}, device in /dev/shm: {fmt(g('window', DEFAULT_QD))} MB/s")
out.append("")
rb, wb = g(f"device-read-while-writing{tag}", 8), g(f"device-write-while-reading{tag}", 8)
ra, wa = g(f"device-read{tag}", 8), g(f"device-write{tag}", 8)
if None not in (rb, wb, ra, wa):
    serial = 1 / (1 / ra + 1 / wa)
    out.append(f"Reading: source and destination share one virtio disk here. With a reader and a writer at "
               f"once, reads got {rb / ra:.2f} of what they get alone and writes {wb / wa:.2f}: the two "
               "directions draw on one pool, so a copy cannot reach min(read alone, write alone); "
               "its ceiling on one disk is the row of both fio jobs at once. What pcisock gains over dd "
               "is pipelining (reads and writes in flight together) and a contiguous DC buffer (one "
               "DMA segment per chunk instead of one per 4 KiB page).\n")
    out.append(f"The pool behaves as one worker that serves a read and a write one after the other: "
               f"a MB read takes 1/{ra:.0f} s and a MB written 1/{wa:.0f} s, so a copy, which reads and "
               f"writes every byte, can move at most 1 / (1/{ra:.0f} + 1/{wa:.0f}) = **{serial:.0f} MB/s**, "
               f"which is {serial / min(ra, wa):.3f} of min(read, write): on this disk no copy can reach "
               f"the 0.9 target. Both fio jobs at once moved {(rb + wb) / 2:.0f} MB/s per direction "
               f"({(rb + wb) / 2 / serial:.2f} of that bound); `pcisock dc copy` at qd {DEFAULT_QD} moved "
               f"{fmt(g(main, DEFAULT_QD))} MB/s (**{(g(main, DEFAULT_QD) or 0) / serial:.2f}** of it).")
out.append("")
if g("disk-to-dev2", 4) is not None:
    out.append("## Two devices\n")
    out.append("The papers copy between two SSDs, each serving its own commands. Here the second device "
               "is the one named in the header (zram by default: a RAM block device that stores the "
               "source's incompressible pages as they are, served by the guest's CPU while the disk is "
               f"served by the host). `pcisock dc copy` at qd 4, chunk {chunk}, window buffer in 2 MiB "
               "pages; the ceiling is min(SRC's read alone, DST's write alone), fio as above (writes "
               "with fresh random data in every buffer); ratios paired within a round, median over "
               "rounds:\n")
    out.append("| copy | MB/s | SRC read alone | DST write alone | copy / min(read, write) |")
    out.append("|---|---:|---:|---:|---:|")
    for tag in ([""] + (["-huge"] if huge else [])):
        pages = "2 MiB-page" if tag else "4 KiB-page"
        for var, rd, wr, what in [("disk-to-dev2", f"device-read{tag}", f"dev2-write{tag}", "disk file → second device"),
                                  ("dev2-to-disk", f"dev2-read{tag}", f"device-write{tag}", "second device → disk file")]:
            r = paired((var, 4), lambda v, rd=rd, wr=wr: min(v.get((rd, 8), 0), v.get((wr, 8), 0)))
            out.append(f"| {what} (fio with {pages} buffers) | {fmt(g(var, 4))} | {fmt(g(rd, 8))} | "
                       f"{fmt(g(wr, 8))} | **{'n/a' if r is None else f'{r:.3f}'}** |")
    out.append("")
    busy, alone = g(f"device-write-cpus-busy{tag}", 8), g(f"device-write{tag}", 8)
    if busy is not None and alone:
        pages = '2 MiB' if tag else '4 KiB'
        out.append(f"Is the second device independent of the disk? zram's reads and writes are copies "
                   f"by the guest's vCPUs, and the host that serves the disk runs on the same machine. "
                   f"The disk's write alone ({pages}-page buffers) went from {alone:.0f} to "
                   f"{busy:.0f} MB/s ({busy / alone:.2f}) while every vCPU spun in a shell loop"
                   + (": busy vCPUs slow the disk, so the two devices share the host."
                      if busy / alone < 0.9 else
                      ": spinning vCPUs alone do not slow the disk measurably in this run."))
        out.append("")
open(md, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY

if [[ "$PLOT" == 1 ]]; then
    python3 "$root/benches/plot_dc.py" "$summary" "$OUT_DIR/$NAME.png" || echo "dc.sh: plot failed (matplotlib?)" >&2
fi
