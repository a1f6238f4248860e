#!/usr/bin/env bash
# Direct Connect copy bandwidth (shared/papers/000_*, 001_* Fig. 5/6) reproduced on this machine's
# disk: a 1 GiB file copied
#   - by `pcisock dc copy` through the NTB-window DC buffer at queue depth 1…8, with the emulated
#     device on a tmpfs mounted huge=always (the window contiguous in 2 MiB pages, as a real BAR
#     is: "window-huge") and in /dev/shm as by default (4 KiB pages: "window"),
#   - by the same engine through host memory (--buffer host, transparent huge pages) at queue
#     depth 1…8 (qd 1 is the papers' conventional, host-staged copy with one command in flight),
#   - by `dd bs=1M iflag=direct oflag=direct` and by `cp` (followed by `sync`, so that the
#     bytes are on the disk as they are for the others),
# against the ceilings: the disk's own read and write bandwidth (fio, O_DIRECT, io_uring, the
# chunk size, iodepth 8), alone and both at once (one disk serves the copy's reads and writes).
# Every variant runs once per round, interleaved, with the page cache dropped before each run;
# the table gives medians over the rounds. Times are wall-clock around each command.
#
# usage: benches/dc.sh [--runs N] [--size N] [--chunk N] [--dir DIR] [--out-dir DIR] [--name NAME]
#                      [--no-plot] [--from-raw CSV]
#   --runs N        rounds (default 5)
#   --size N        bytes to copy (default 1G; suffix K, M, G)
#   --chunk N       pcisock's --chunk and fio's block size (default: pcisock's default, 1M)
#   --dir DIR       where the files go (default /var/tmp/pcisock-dc-bench; removed at the end)
#   --out-dir DIR   where dc.md, dc-raw.csv, dc-summary.csv and dc.png go (default benches/results)
#   --name NAME     name those files NAME.md, NAME-raw.csv, … instead (default dc)
#   --no-plot       do not run benches/plot_dc.py
#   --from-raw CSV  measure nothing: rebuild the table and plot from an earlier dc-raw.csv
# Needs: root (to drop the page cache), fio, dd, cp, python3 (matplotlib for the plot), and a
# release build of pcisock (cargo build --release).
set -euo pipefail

RUNS=5 SIZE=1G CHUNK=1M DIR=/var/tmp/pcisock-dc-bench OUT_DIR="" NAME=dc PLOT=1 FROM_RAW=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --chunk) CHUNK="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        --out-dir) OUT_DIR="$2"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --no-plot) PLOT=0; shift ;;
        --from-raw) FROM_RAW="$2"; shift 2 ;;
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
    command -v fio >/dev/null || { echo "dc.sh: fio not installed (apt-get install -y fio)" >&2; exit 2; }
    mkdir -p "$DIR"
    # Two emulated devices: one in /dev/shm as by default (4 KiB pages), and one on a private
    # tmpfs mounted with huge=always, so that the window is contiguous in 2 MiB pages as a real
    # BAR is (the variant "window-huge").
    emu="$(mktemp -d /dev/shm/pcisock-dc-bench-emu.XXXXXX)"
    emu_huge="$(mktemp -d /tmp/pcisock-dc-bench-huge.XXXXXX)"
    chmod 700 "$emu" "$emu_huge"
    mount -t tmpfs -o huge=always,mode=0700,size=1g pcisock-dc-bench "$emu_huge" ||
        { echo "dc.sh: cannot mount a huge=always tmpfs on $emu_huge" >&2; exit 1; }
    cleanup() { umount "$emu_huge" 2>/dev/null || true; rm -rf "$DIR" "$emu" "$emu_huge"; }
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
    fio_bw() { # fio_bw RW FILE [extra] -> MB/s of that direction
        local rw=$1 file=$2; shift 2
        drop
        fio --name=dc --filename="$file" --rw="$rw" --bs="$CHUNK" --size="$bytes" --direct=1 \
            --ioengine=io_uring --iodepth=8 "$@" --output-format=json 2>/dev/null |
            python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(f\"{j['$([[ $rw == read ]] && echo read || echo write)']['bw_bytes']/1e6:.1f}\")"
    }
    fio_both() { # read SRC and write W at once: "read_MBps write_MBps"
        drop; rm -f "$wfile"
        fio --output-format=json \
            --name=r --filename="$src" --rw=read --bs="$CHUNK" --size="$bytes" --direct=1 --ioengine=io_uring --iodepth=8 \
            --name=w --filename="$wfile" --rw=write --bs="$CHUNK" --size="$bytes" --direct=1 --ioengine=io_uring --iodepth=8 \
            2>/dev/null | python3 -c "
import json,sys
j=json.load(sys.stdin)['jobs']
print(f\"{j[0]['read']['bw_bytes']/1e6:.1f} {j[1]['write']['bw_bytes']/1e6:.1f}\")"
    }

    echo "round,variant,qd,MBps" >"$raw"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    for r in $(seq 1 "$RUNS"); do
        echo "dc.sh: round $r/$RUNS" >&2
        echo "$r,device-read,8,$(fio_bw read "$src" --readonly)" >>"$raw"
        rm -f "$wfile"
        echo "$r,device-write,8,$(fio_bw write "$wfile")" >>"$raw"
        read -r br bw <<<"$(fio_both)"
        echo "$r,device-read-while-writing,8,$br" >>"$raw"
        echo "$r,device-write-while-reading,8,$bw" >>"$raw"
        rm -f "$wfile"
        echo "$r,dd,1,$(timed dd if="$src" of="$dst" bs=1M iflag=direct oflag=direct status=none)" >>"$raw"
        echo "$r,cp,1,$(timed sh -c "cp '$src' '$dst' && sync")" >>"$raw"
        for qd in 1 2 3 4 5 6 7 8; do
            echo "$r,window-huge,$qd,$(PCISOCK_EMU_DIR="$emu_huge" timed "$bin" dc copy --qd "$qd" --chunk "$CHUNK" --buffer window "$src" "$dst")" >>"$raw"
            echo "$r,host,$qd,$(timed "$bin" dc copy --qd "$qd" --chunk "$CHUNK" --buffer host "$src" "$dst")" >>"$raw"
            echo "$r,window,$qd,$(timed "$bin" dc copy --qd "$qd" --chunk "$CHUNK" --buffer window "$src" "$dst")" >>"$raw"
        done
    done
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    # One verified copy, so the table is known to be of correct copies.
    rm -f "$dst"
    PCISOCK_EMU_DIR="$emu_huge" "$bin" dc copy --qd 4 --chunk "$CHUNK" --verify "$src" "$dst" >"$DIR/verify.txt"
    verify_line=$(grep '^verify:' "$DIR/verify.txt")
    machine="$(nproc) vCPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), disk $(df --output=source "$DIR" | tail -1) ($(cat /sys/block/"$(basename "$(df --output=source "$DIR" | tail -1)")"/device/model 2>/dev/null || echo virtio), $(cat /sys/block/"$(basename "$(df --output=source "$DIR" | tail -1)")"/queue/scheduler 2>/dev/null | grep -o '\[[^]]*\]' || true) scheduler), filesystem $(df --output=fstype "$DIR" | tail -1)"
    {
        echo "# command: benches/dc.sh --runs $RUNS --size $SIZE --chunk $CHUNK --dir $DIR --name $NAME"
        echo "# date: $(date -u +%FT%TZ); build: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        echo "# machine: $machine"
        echo "# load average before: $load_before; after: $load_after (other sessions build on this machine)"
        echo "# check: $verify_line"
    } >"$raw.meta"
else
    raw="$FROM_RAW"
fi

python3 - "$raw" "$summary" "$md" "$bytes" "$CHUNK" "$NAME" <<'PY'
import csv, statistics, sys, os
raw, summary, md, nbytes, chunk, name = sys.argv[1:7]
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
dd, cp = g("dd", 1), g("cp", 1)
rd, wr = g("device-read", 8), g("device-write", 8)
rboth = g("device-read-while-writing", 8)
main = "window-huge" if any(k[0] == "window-huge" for k in med) else "window"
best_qd = max(range(1, 9), key=lambda q: g(main, q) or 0)
best = g(main, best_qd)
out = []
out.append("# Direct Connect copy: bandwidth against queue depth (benches/dc.sh)\n")
out.append("```text\n" + meta.strip() + "\n```\n")
out.append(f"A {int(nbytes) >> 20} MiB file copied on this machine's disk, chunk {chunk}; medians of "
           f"{len(by.get(('dd', 1), []))} interleaved rounds, page cache dropped before each run, wall-clock "
           f"time around each command. MB/s = 10^6 bytes per second. Raw runs: `{name}-raw.csv`; "
           f"medians with min/max: `{name}-summary.csv`; plot: `{name}.png`.\n")
out.append("| queue depth | dc copy, window buffer (2 MiB pages) | dc copy, host buffer (THP) | dc copy, window buffer (4 KiB pages, /dev/shm) |")
out.append("|---:|---:|---:|---:|")
fmt = lambda x: "n/a" if x is None else f"{x:.0f}"
for q in range(1, 9):
    out.append(f"| {q} | {fmt(g('window-huge', q))} | {fmt(g('host', q))} | {fmt(g('window', q))} |")
out.append("")
out.append("| baseline / ceiling | MB/s |")
out.append("|---|---:|")
out.append(f"| dd bs=1M iflag=direct oflag=direct | {dd:.0f} |")
out.append(f"| cp, then sync | {cp:.0f} |")
out.append(f"| host-staged, one command in flight (dc copy --buffer host --qd 1) | {g('host', 1):.0f} |")
out.append(f"| device read alone (fio, O_DIRECT, bs {chunk}, iodepth 8) | {rd:.0f} |")
out.append(f"| device write alone (fio, same) | {wr:.0f} |")
out.append(f"| device read while writing (fio, both jobs at once) | {rboth:.0f} |")
out.append(f"| device write while reading (fio, both jobs at once) | {g('device-write-while-reading', 8):.0f} |")
out.append("")
ceiling = min(rd, wr)
out.append("Targets (issue 6), from the medians above:\n")
out.append(f"- best dc copy ({main}, qd {best_qd}) {best:.0f} MB/s = **{best / dd:.2f}x** dd "
           f"(target >= 1.5x): **{'met' if best >= 1.5 * dd else 'not met'}**")
out.append(f"- = **{best / ceiling:.2f}** of min(device read, device write) = {ceiling:.0f} MB/s "
           f"(target >= 0.9): **{'met' if best >= 0.9 * ceiling else 'not met'}**")
wboth = g("device-write-while-reading", 8)
share = (rboth + wboth) / 2
out.append(f"- = {best / share:.2f} of what the disk moves per direction when it reads and writes at "
           f"once ((read {rboth:.0f} + write {wboth:.0f}) / 2 = {share:.0f} MB/s): the ceiling of a copy "
           "whose source and destination share one disk")
serial = 1 / (1 / rd + 1 / wr)
out.append("")
out.append("What bounds a copy here: one command at a time (dd) takes 1/R + 1/W seconds per byte, "
           f"{serial:.0f} MB/s with the fio figures; perfect overlap of reads and writes would give "
           f"min(R, W) = {ceiling:.0f} MB/s ({ceiling / serial:.2f}x that), but only if the disk served reads "
           f"and writes independently. It does not: reading and writing at once, it moves "
           f"{rboth + wboth:.0f} MB/s in all, so a copy gets about {share:.0f} MB/s, and dd already "
           f"reaches {dd / share:.2f} of that.")
open(md, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY

if [[ "$PLOT" == 1 ]]; then
    python3 "$root/benches/plot_dc.py" "$summary" "$OUT_DIR/$NAME.png" || echo "dc.sh: plot failed (matplotlib?)" >&2
fi
