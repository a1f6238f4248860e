#!/usr/bin/env python3
"""Plot the Direct Connect copy bandwidth against queue depth, like the papers' Fig. 6.

usage: python3 benches/plot_dc.py [SUMMARY_CSV] [OUT_PNG]
  defaults: benches/results/dc-summary.csv and benches/results/dc.png
SUMMARY_CSV is written by benches/dc.sh (columns variant, qd, median_MBps, min_MBps, max_MBps, runs).
Needs matplotlib: `pip install matplotlib` (or `apt-get install -y python3-matplotlib`).
"""
import csv
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot_dc.py: matplotlib is not installed: pip install matplotlib")

here = os.path.dirname(os.path.abspath(__file__))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results", "dc-summary.csv")
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "results", "dc.png")

rows = list(csv.DictReader(open(src)))
val = {(r["variant"], int(r["qd"])): r for r in rows}


def series(variant):
    qs = sorted(q for (v, q) in val if v == variant)
    return (
        qs,
        [float(val[(variant, q)]["median_MBps"]) for q in qs],
        [float(val[(variant, q)]["min_MBps"]) for q in qs],
        [float(val[(variant, q)]["max_MBps"]) for q in qs],
    )


fig, ax = plt.subplots(figsize=(8, 5))
for variant, label, style in [
    ("window-huge", "pcisock dc copy, NTB-window DC buffer (2 MiB pages)", "o-"),
    ("host", "same engine, host-memory buffer (THP)", "s--"),
    ("window", "pcisock dc copy, NTB-window DC buffer (4 KiB pages, /dev/shm)", "^:"),
]:
    qs, med, lo, hi = series(variant)
    if qs:
        ax.plot(qs, med, style, label=label)
        ax.fill_between(qs, lo, hi, alpha=0.15)
tag = "-huge" if ("device-read-huge", 8) in val else ""
page = " (2 MiB-page buffers)" if tag else ""
for variant, label, color in [
    (f"device-read{tag}", f"device read alone (fio qd 8){page}", "tab:green"),
    (f"device-write{tag}", f"device write alone (fio qd 8){page}", "tab:olive"),
    ("dd", "dd bs=1M iflag=direct oflag=direct", "tab:red"),
    ("cp", "cp + sync", "tab:purple"),
]:
    if (variant, 8) in val or (variant, 1) in val:
        r = val.get((variant, 8)) or val.get((variant, 1))
        y = float(r["median_MBps"])
        ax.axhline(y, color=color, linestyle=":", label=f"{label}: {y:.0f}")
both = [val.get((f"device-read-while-writing{tag}", 8)), val.get((f"device-write-while-reading{tag}", 8))]
if all(both):
    y = sum(float(r["median_MBps"]) for r in both) / 2
    ax.axhline(y, color="tab:cyan", linestyle="-.",
               label=f"copy ceiling on one disk (fio read + write at once, / 2): {y:.0f}")
ax.set_xlabel("queue depth (chunks in flight, each a linked read -> write)")
ax.set_ylabel("copy bandwidth, MB/s (median)")
ax.set_title("1 GiB file copy on this machine's disk (benches/dc.sh)")
ax.set_xticks(range(1, 9))
ax.set_ylim(bottom=0)
ax.grid(True, alpha=0.3)
ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
fig.tight_layout()
fig.savefig(out, dpi=120)
print(f"plot_dc.py: wrote {out}")
