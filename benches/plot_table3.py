#!/usr/bin/env python3
"""Plot Table 3 (bandwidth against write size, log-log) like the paper's Fig. 17.

usage: python3 benches/plot_table3.py [SUMMARY_CSV] [OUT_PNG]
  defaults: benches/results/table3-summary.csv and benches/results/table3.png
SUMMARY_CSV is written by benches/table3.sh (columns size, pcisock_MBps, tcp_MBps, ring_MBps,
paper_dma_MBps; "n/a" or empty where there is no value).
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
    sys.exit("plot_table3.py: matplotlib is not installed: pip install matplotlib")

here = os.path.dirname(os.path.abspath(__file__))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results", "table3-summary.csv")
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "results", "table3.png")


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


with open(src, newline="") as f:
    rows = list(csv.DictReader(f))
if not rows:
    sys.exit(f"plot_table3.py: {src} has no rows")

sizes = [int(r["size"]) for r in rows]
series = [
    ("pcisock (emulated NTB), iperf2", "pcisock_MBps", "o-", "C0"),
    ("TCP loopback, iperf2", "tcp_MBps", "s-", "C1"),
    ("shared-memory ring ceiling (shmbench)", "ring_MBps", "^--", "C2"),
    ("paper Table 3: PCIe DMA (for shape only)", "paper_dma_MBps", "x:", "0.5"),
]


def label(b):
    if b >= 1 << 20:
        return f"{b >> 20}M"
    if b >= 1 << 10:
        return f"{b >> 10}K"
    return str(b)


fig, ax = plt.subplots(figsize=(9, 5.5))
for name, key, style, color in series:
    pts = [(s, num(r.get(key))) for s, r in zip(sizes, rows)]
    pts = [(s, v) for s, v in pts if v is not None and v > 0]
    if pts:
        ax.plot(*zip(*pts), style, color=color, label=name, markersize=4)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xticks(sizes)
ax.set_xticklabels([label(s) for s in sizes], rotation=60, fontsize=8)
ax.set_xlabel("write size (bytes)")
ax.set_ylabel("bandwidth (MB/s, 10^6 bytes/s)")
ax.set_title("Bandwidth against write size (cf. Fig. 17 / Table 3), medians")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out, dpi=120)
print(f"plot_table3.py: wrote {out}")
