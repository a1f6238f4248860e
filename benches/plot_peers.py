#!/usr/bin/env python3
"""Plot benches/peers.sh's medians: throughput against write size, one line per transport
(sockpair stream solid, iperf2 dashed), and the 64-byte ping-pong round trip's p50 and p99 beside it,
unpinned, both ends on one CPU, and on two CPUs.

usage: python3 benches/plot_peers.py [SUMMARY_CSV] [OUT_PNG]
  defaults: benches/results/peers-summary.csv and benches/results/peers.png
SUMMARY_CSV has columns test (stream|iperf|pingpong|pingpong-same|pingpong-split), size, transport, median, min, max, p99_median.
Needs matplotlib: `pip install matplotlib`.
"""
import csv
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot_peers.py: matplotlib is not installed: pip install matplotlib")

here = os.path.dirname(os.path.abspath(__file__))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results", "peers-summary.csv")
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "results", "peers.png")

TRANSPORTS = [("tcp", "TCP loopback", "tab:blue"), ("uds", "Unix socket", "tab:green"),
              ("sockmap", "sockmap redirect", "tab:orange"), ("pcisock", "pcisock", "tab:red")]

rows = list(csv.DictReader(open(src)))


def series(test, transport):
    pts = sorted((int(r["size"]), float(r["median"]), float(r["min"]), float(r["max"]))
                 for r in rows if r["test"] == test and r["transport"] == transport)
    return pts


def size_label(b):
    return f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB" if b >= 1 << 10 else f"{b} B"


fig, (ax, lat) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
sizes = set()
for key, label, color in TRANSPORTS:
    for test, style, suffix in (("stream", "-", " (sockpair)"), ("iperf", "--", " (iperf2)")):
        pts = series(test, key)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        sizes.update(xs)
        ax.plot(xs, [p[1] for p in pts], style, marker="o" if test == "stream" else "x", color=color,
                label=label + suffix, alpha=1.0 if test == "stream" else 0.6)
        if test == "stream":
            ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=color, alpha=0.12, linewidth=0)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xticks(sorted(sizes))
ax.set_xticklabels([size_label(s) for s in sorted(sizes)])
ax.set_xlabel("write size")
ax.set_ylabel("MB/s (10^6 B/s), median; band: min–max of sockpair runs")
ax.set_title("Throughput against write size")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)

PLACEMENTS = [("pingpong", "unpinned"), ("pingpong-same", "same CPU"), ("pingpong-split", "two CPUs")]
groups = [(test, name) for test, name in PLACEMENTS if any(r["test"] == test for r in rows)]
w = 0.8 / len(TRANSPORTS)
for i, (key, label, color) in enumerate(TRANSPORTS):
    xs, p50, p99 = [], [], []
    for g, (test, _) in enumerate(groups):
        r = [r for r in rows if r["test"] == test and r["transport"] == key]
        if r:
            xs.append(g - 0.4 + w * (i + 0.5))
            p50.append(float(r[0]["median"]))
            p99.append(float(r[0]["p99_median"]))
    bars = lat.bar(xs, p50, w, color=color, label=label)
    lat.scatter(xs, p99, marker="_", s=120, color="black", zorder=3, label="p99" if i == 0 else None)
    for b in bars:
        lat.annotate(f"{b.get_height():.2g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                     ha="center", va="bottom", fontsize=7)
lat.set_xticks(range(len(groups)))
lat.set_xticklabels([name for _, name in groups])
lat.set_yscale("log")
lat.set_ylabel("round trip, µs (median of runs)")
size = next((r["size"] for r in rows if r["test"].startswith("pingpong")), "64")
lat.set_title(f"{size}-byte ping-pong round trip: p50 (bars), p99 (dashes)")
lat.grid(True, axis="y", which="both", alpha=0.3)
lat.legend(fontsize=8)

fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"plot_peers.py: wrote {out}")
