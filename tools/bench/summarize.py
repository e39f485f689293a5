#!/usr/bin/env python3
"""Summarise one `make bench` results directory: key figures per target and
the issue-3 ratios (herald vs nchan, herald vs floor).

usage: summarize.py bench/results/<date>
"""
import glob
import json
import os
import re
import statistics
import sys

D = sys.argv[1]
TARGETS = ["herald", "nchan", "floor"]


def load(name):
    p = os.path.join(D, name + ".json")
    try:
        with open(p) as f:
            runs = json.load(f)["runs"]
        return runs[0] if len(runs) == 1 else runs
    except (OSError, ValueError, KeyError, IndexError):
        return None


def g(run, *path, default=None):
    v = run
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return default
        v = v[k]
    return v


def fig(t, name, *path):
    r = load(f"{t}-{name}")
    return g(r, *path) if r else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}{unit}"
        return f"{v:.3g}{unit}"
    return f"{v}{unit}"


ROWS = [
    ("idle ws: server RSS per connection (B)", "idle-ws", ("server", "rss_per_conn_bytes")),
    ("idle sse: server RSS per connection (B)", "idle-sse", ("server", "rss_per_conn_bytes")),
    ("idle ws: server idle CPU (% core)", "idle-ws", ("server", "idle_cpu_pct")),
    ("fanout ws: CPU per delivery (us)", "fanout-ws", ("server", "cpu_per_delivery_us")),
    ("fanout ws: broadcast p99 (ms)", "fanout-ws", ("latency", "broadcast", "percentiles_ms", "99")),
    ("fanout ws: loss (%)", "fanout-ws", ("delivery", "loss_pct")),
    ("fanout sse: CPU per delivery (us)", "fanout-sse", ("server", "cpu_per_delivery_us")),
    ("fanout sse: broadcast p99 (ms)", "fanout-sse", ("latency", "broadcast", "percentiles_ms", "99")),
    ("burst: CPU per delivery (us)", "burst", ("server", "cpu_per_delivery_us")),
    ("burst: loss (%)", "burst", ("delivery", "loss_pct")),
    ("throughput: deliveries/s (flat out, 1st run)", "throughput", ("delivery", "deliveries_per_s")),
    ("connect storm: handshakes/s", "connect", ("connect", "handshakes_per_s")),
    ("connect storm: handshake p99 (ms)", "connect", ("latency", "handshake", "percentiles_ms", "99")),
    ("connect storm: handshakes per server CPU-s", "connect", ("connect", "handshakes_per_cpu_s")),
    ("connect storm: server CPU (% core)", "connect", ("server", "cpu_pct")),
    ("connect storm: listen-queue overflows", "connect", ("kernel", "listen_overflows")),
    ("publish: publishes/s (keep-alive)", "publish", ("publish", "publishes_per_s")),
    ("game: broadcast p98 (ms)", "game", ("latency", "broadcast", "percentiles_ms", "98")),
    ("game: request p98 (ms)", "game", ("latency", "request", "percentiles_ms", "98")),
    ("game: loss (%)", "game", ("delivery", "loss_pct")),
]


STORM_P99_MS = float(os.environ.get("STORM_P99_MS", "50"))


def ratio(a, b):
    if a is None or b is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return a / b


def p99(t, name, h="broadcast"):
    return fig(t, name, "latency", h, "percentiles_ms", "99")


def reps(t, name):
    """The runs NAME, NAME-r2, NAME-r3 ... of one flat-out configuration."""
    out = []
    for p in sorted(glob.glob(os.path.join(D, f"{t}-{name}.json")) + glob.glob(os.path.join(D, f"{t}-{name}-r*.json"))):
        base = os.path.basename(p)[:-5]
        if base == f"{t}-{name}" or re.fullmatch(re.escape(f"{t}-{name}") + r"-r\d+", base):
            r = load(base)
            if isinstance(r, dict):
                out.append(r)
    return out


def med(t, name, *path):
    vals = [g(r, *path) for r in reps(t, name)]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def dpcs(r):
    us = g(r, "server", "cpu_per_delivery_us")
    return 1e6 / us if us else None


def med_dpcs(t, name):
    vals = [dpcs(r) for r in reps(t, name)]
    vals = [v for v in vals if v]
    return statistics.median(vals) if vals else None


def sweep_runs(t):
    """Every sweep run: (target rate, achieved/s, p99 ms, handshakes, cpu s, failed, other-CPU %)."""
    rows = []
    for p in glob.glob(os.path.join(D, f"{t}-storm-*.json")):
        m = re.search(r"-storm-(\d+)(-r\d+)?\.json$", p)
        r = load(os.path.basename(p)[:-5]) if m else None
        if not isinstance(r, dict):
            continue
        rows.append((int(m.group(1)), g(r, "connect", "handshakes_per_s", default=0),
                     g(r, "latency", "handshake", "percentiles_ms", "99", default=1e9),
                     g(r, "counters", "connected", default=0), g(r, "server", "cpu_window_s", default=0),
                     g(r, "counters", "failed", default=0), g(r, "machine", "other_pct", default=0)))
    return rows


def sweep(t):
    """Per asked rate, medians over the repetitions: [(rate, achieved/s, p99 ms, n runs, failed, max other %)]."""
    by = {}
    for row in sweep_runs(t):
        by.setdefault(row[0], []).append(row)
    return sorted((rate, statistics.median(x[1] for x in rs), statistics.median(x[2] for x in rs), len(rs),
                   sum(x[5] for x in rs), max(x[6] for x in rs)) for rate, rs in by.items())


def storm_at_p99(t):
    """Highest achieved handshakes/s (median) among the rates whose median p99 <= the bound, with no failure."""
    ok = [a for (_, a, p, _, f, _) in sweep(t) if p <= STORM_P99_MS and not f]
    return max(ok) if ok else None


def storm_hs_per_cpu(t):
    rows = sweep_runs(t)
    hs, cpu = sum(r[3] for r in rows), sum(r[4] for r in rows)
    return hs / cpu if cpu > 0 else None


def best_layout_p99(t):
    vals = [(p99(t, n), n) for n in ("fanout-ws", "fanout-ws-p2", "fanout-ws-p4", "fanout-ws-pin")]
    vals = [v for v in vals if v[0] is not None]
    return min(vals) if vals else (None, None)


print(f"\nherald-bench results: {D}\n")
print(f"{'figure':48s} " + " ".join(f"{t:>12s}" for t in TARGETS))


def row(label, vals):
    print(f"{label:48s} " + " ".join(f"{fmt(v):>12s}" for v in vals))


for label, name, path in ROWS:
    vals = []
    for t in TARGETS:
        v = fig(t, name, *path)
        if path[0] == "latency" and path[1] == "request" and load(f"{t}-{name}") and t != "herald":
            v = "n/a"
        vals.append(v)
    row(label, vals)

print(f"\nfan-out ws p99 by bench layout (ms; {fmt(fig('herald', 'fanout-ws', 'params', 'conns'))} subscribers,"
      " one message at a time):")
for label, name in [("  1 bench process (the target's run)", "fanout-ws"), ("  2 bench processes", "fanout-ws-p2"),
                    ("  4 bench processes", "fanout-ws-p4"), ("  pinned: bench CPU 0, server CPU 1", "fanout-ws-pin"),
                    ("  2 server workers (threads / nginx procs)", "fanout-ws-2w")]:
    row(label, [p99(t, name) for t in TARGETS])
row("  CPU per delivery, 2 server workers (us)", [fig(t, "fanout-ws-2w", "server", "cpu_per_delivery_us") for t in TARGETS])

print(f"\nflat-out fan-out, median of {max([len(reps('herald', 'throughput'))] + [1])} runs each (1w/2w: 1 or 2 server"
      f" workers;\n  pinned: bench on CPU 0, every server thread on CPU 1):")
for label, name in [("1w", "throughput"), ("2w", "throughput-2w"),
                    ("1w pinned", "throughput-pin"), ("2w pinned", "throughput-2w-pin")]:
    row(f"  {label}: deliveries/s", [med(t, name, "delivery", "deliveries_per_s") for t in TARGETS])
    row(f"  {label}: deliveries per server CPU-s", [med_dpcs(t, name) for t in TARGETS])
    row(f"  {label}: server CPU (% of a core)", [med(t, name, "server", "cpu_pct") for t in TARGETS])

def sweep_conns():
    for p in sorted(glob.glob(os.path.join(D, "*-storm-*.json"))):
        r = load(os.path.basename(p)[:-5])
        if isinstance(r, dict):
            return g(r, "params", "conns")
    return None


nrep = max([r[3] for t in TARGETS for r in sweep(t)] + [0])
print(f"\nconnect-rate sweep (WS connects per step: {fmt(sweep_conns())}, {nrep} round(s);"
      f" medians of handshake p99 ms / achieved handshakes/s; bound {STORM_P99_MS:g} ms):")
rates = sorted({r[0] for t in TARGETS for r in sweep(t)})
for rate in rates:
    cells = []
    for t in TARGETS:
        m = [r for r in sweep(t) if r[0] == rate]
        cells.append(f"{m[0][2]:.1f} / {m[0][1]:,.0f}" + (f" ({m[0][4]} failed)" if m[0][4] else "") if m else "-")
    print(f"  {rate:>6d}/s asked{'':31s} " + " ".join(f"{c:>14s}" for c in cells))
def sweep_overflows(t):
    v = [g(load(os.path.basename(p)[:-5]) or {}, "kernel", "listen_overflows")
         for p in glob.glob(os.path.join(D, f"{t}-storm-*.json"))]
    v = [x for x in v if isinstance(x, int) and x >= 0]
    return sum(v) if v else None


row("  listen-queue overflows, all sweep runs", [sweep_overflows(t) for t in TARGETS])
row("  max other-process CPU in a sweep run (% core)", [max([r[5] for r in sweep(t)] or [0]) if sweep(t) else None for t in TARGETS])
row(f"  highest rate with p99 <= {STORM_P99_MS:g} ms", [storm_at_p99(t) for t in TARGETS])
row("  handshakes per server CPU-s (all steps)", [storm_hs_per_cpu(t) for t in TARGETS])


def burst_dps(t):
    us = fig(t, "burst", "server", "cpu_per_delivery_us")
    return 1e6 / us if us else None


hb, hbn = best_layout_p99("herald")
nb, nbn = best_layout_p99("nchan")
checks = [
    ("idle ws RSS/conn <= 1 KiB", fig("herald", "idle-ws", "server", "rss_per_conn_bytes"), "<=", 1024, "B"),
    ("idle sse RSS/conn <= 1 KiB", fig("herald", "idle-sse", "server", "rss_per_conn_bytes"), "<=", 1024, "B"),
    ("idle ws RSS/conn: nchan / herald >= 10",
     ratio(fig("nchan", "idle-ws", "server", "rss_per_conn_bytes"), fig("herald", "idle-ws", "server", "rss_per_conn_bytes")), ">=", 10, "x"),
    ("idle sse RSS/conn: nchan / herald >= 10",
     ratio(fig("nchan", "idle-sse", "server", "rss_per_conn_bytes"), fig("herald", "idle-sse", "server", "rss_per_conn_bytes")), ">=", 10, "x"),
    ("fanout ws CPU/delivery: herald / floor <= 1.15",
     ratio(fig("herald", "fanout-ws", "server", "cpu_per_delivery_us"), fig("floor", "fanout-ws", "server", "cpu_per_delivery_us")), "<=", 1.15, "x"),
    ("fanout ws p99: herald / nchan <= 0.5", ratio(p99("herald", "fanout-ws"), p99("nchan", "fanout-ws")), "<=", 0.5, "x"),
    ("fanout sse p99: herald / nchan <= 0.5", ratio(p99("herald", "fanout-sse"), p99("nchan", "fanout-sse")), "<=", 0.5, "x"),
    ("  new: fanout ws p99, best bench layout each <= 0.5", ratio(hb, nb), "<=", 0.5, "x"),
    ("  new: fanout ws p99, 2 server workers each <= 0.5",
     ratio(p99("herald", "fanout-ws-2w"), p99("nchan", "fanout-ws-2w")), "<=", 0.5, "x"),
    ("  new: fanout ws p99, herald 2w / nchan 1w <= 0.5",
     ratio(p99("herald", "fanout-ws-2w"), p99("nchan", "fanout-ws")), "<=", 0.5, "x"),
    ("burst deliveries per CPU-s: herald / nchan >= 5", ratio(burst_dps("herald"), burst_dps("nchan")), ">=", 5, "x"),
    ("storm handshakes/s: herald / nchan >= 2",
     ratio(fig("herald", "connect", "connect", "handshakes_per_s"), fig("nchan", "connect", "connect", "handshakes_per_s")), ">=", 2, "x"),
    ("storm handshake p99: herald / nchan (equal: ~1)",
     ratio(p99("herald", "connect", "handshake"), p99("nchan", "connect", "handshake")), "<=", 1.0, "x"),
    (f"  new: storm handshakes/s at p99 <= {STORM_P99_MS:g} ms >= 2", ratio(storm_at_p99("herald"), storm_at_p99("nchan")), ">=", 2, "x"),
    ("  new: storm handshakes per server CPU-s >= 2", ratio(storm_hs_per_cpu("herald"), storm_hs_per_cpu("nchan")), ">=", 2, "x"),
    ("publishes/s: herald / nchan >= 1",
     ratio(fig("herald", "publish", "publish", "publishes_per_s"), fig("nchan", "publish", "publish", "publishes_per_s")), ">=", 1, "x"),
    ("throughput 2 workers / 1 worker >= 1.8",
     ratio(fig("herald", "throughput-2w", "delivery", "deliveries_per_s"), fig("herald", "throughput", "delivery", "deliveries_per_s")), ">=", 1.8, "x"),
    ("  new: same, medians of the repeated runs >= 1.8",
     ratio(med("herald", "throughput-2w", "delivery", "deliveries_per_s"), med("herald", "throughput", "delivery", "deliveries_per_s")), ">=", 1.8, "x"),
    ("  new: deliveries per server CPU-s 2w / 1w >= 0.9",
     ratio(med_dpcs("herald", "throughput-2w"), med_dpcs("herald", "throughput")), ">=", 0.9, "x"),
]
print("\nissue 3 targets (ratios from this run; 'new:' rows are the fairer metrics for a shared 2-core box):")
for name, v, op, lim, unit in checks:
    if v is None:
        status = "not measured"
        shown = "-"
    else:
        ok = v <= lim if op == "<=" else v >= lim
        status = "met" if ok else f"MISSED by {abs(v / lim - 1) * 100:.0f}%"
        shown = f"{v:.3g}{unit}"
    print(f"  {name:54s} {shown:>10s}  {status}")
print("\nreference ratios:")
for name, a, b in [
    ("fanout ws CPU/delivery nchan / floor", fig("nchan", "fanout-ws", "server", "cpu_per_delivery_us"), fig("floor", "fanout-ws", "server", "cpu_per_delivery_us")),
    ("fanout ws p99 herald / floor", p99("herald", "fanout-ws"), p99("floor", "fanout-ws")),
    ("fanout ws p99 nchan / floor", p99("nchan", "fanout-ws"), p99("floor", "fanout-ws")),
    ("fanout ws p99 herald 2w / herald 1w", p99("herald", "fanout-ws-2w"), p99("herald", "fanout-ws")),
    ("burst CPU/delivery nchan / floor", fig("nchan", "burst", "server", "cpu_per_delivery_us"), fig("floor", "burst", "server", "cpu_per_delivery_us")),
    ("throughput deliveries/s nchan / floor (medians)", med("nchan", "throughput", "delivery", "deliveries_per_s"), med("floor", "throughput", "delivery", "deliveries_per_s")),
    ("throughput deliveries/s herald / floor (medians)", med("herald", "throughput", "delivery", "deliveries_per_s"), med("floor", "throughput", "delivery", "deliveries_per_s")),
    ("pinned: 2 workers on 1 core / 1 worker (medians)", med("herald", "throughput-2w-pin", "delivery", "deliveries_per_s"), med("herald", "throughput-pin", "delivery", "deliveries_per_s")),
    ("storm handshakes per CPU-s herald / floor", storm_hs_per_cpu("herald"), storm_hs_per_cpu("floor")),
    ("storm handshakes per CPU-s nchan / floor", storm_hs_per_cpu("nchan"), storm_hs_per_cpu("floor")),
    (f"storm rate at p99 <= {STORM_P99_MS:g} ms herald / floor", storm_at_p99("herald"), storm_at_p99("floor")),
    ("idle ws RSS/conn nchan / floor", fig("nchan", "idle-ws", "server", "rss_per_conn_bytes"), fig("floor", "idle-ws", "server", "rss_per_conn_bytes")),
]:
    r = ratio(a, b)
    print(f"  {name:54s} {('-' if r is None else f'{r:.3g}x'):>10s}")
busy = []
for p in sorted(glob.glob(os.path.join(D, "*.json"))):
    name = os.path.basename(p)[:-5]
    r = load(name)
    if isinstance(r, dict) and (g(r, "machine", "other_pct") or 0) > 10:
        busy.append(f"{name} ({g(r, 'machine', 'other_pct'):.0f}%)")
if busy:
    print("\nruns during which other processes used more than 10% of a core (figures disturbed):")
    print("  " + ", ".join(busy))
if os.path.exists(os.path.join(D, "crashes.txt")):
    print("\nSERVER CRASHES during this run: see crashes.txt")
