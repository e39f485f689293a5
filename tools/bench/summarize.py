#!/usr/bin/env python3
"""Summarise one `make bench` results directory: key figures per target and
the issue-3 ratios (herald vs nchan, herald vs floor).

usage: summarize.py bench/results/<date>
"""
import json
import os
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
    ("throughput: deliveries/s (flat out)", "throughput", ("delivery", "deliveries_per_s")),
    ("connect storm: handshakes/s", "connect", ("connect", "handshakes_per_s")),
    ("connect storm: handshake p99 (ms)", "connect", ("latency", "handshake", "percentiles_ms", "99")),
    ("publish: publishes/s (keep-alive)", "publish", ("publish", "publishes_per_s")),
    ("game: broadcast p98 (ms)", "game", ("latency", "broadcast", "percentiles_ms", "98")),
    ("game: request p98 (ms)", "game", ("latency", "request", "percentiles_ms", "98")),
    ("game: loss (%)", "game", ("delivery", "loss_pct")),
]

print(f"\nherald-bench results: {D}\n")
print(f"{'figure':44s} " + " ".join(f"{t:>12s}" for t in TARGETS))
for label, name, path in ROWS:
    vals = []
    for t in TARGETS:
        v = fig(t, name, *path)
        if path[0] == "latency" and path[1] == "request" and load(f"{t}-{name}") and t != "herald":
            v = "n/a"
        vals.append(v)
    print(f"{label:44s} " + " ".join(f"{fmt(v):>12s}" for v in vals))


def ratio(a, b):
    if a is None or b is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return a / b


def burst_dps(t):
    us = fig(t, "burst", "server", "cpu_per_delivery_us")
    return 1e6 / us if us else None


checks = [
    ("idle ws RSS/conn <= 1 KiB", fig("herald", "idle-ws", "server", "rss_per_conn_bytes"), "<=", 1024, "B"),
    ("idle sse RSS/conn <= 1 KiB", fig("herald", "idle-sse", "server", "rss_per_conn_bytes"), "<=", 1024, "B"),
    ("idle ws RSS/conn: nchan / herald >= 10",
     ratio(fig("nchan", "idle-ws", "server", "rss_per_conn_bytes"), fig("herald", "idle-ws", "server", "rss_per_conn_bytes")), ">=", 10, "x"),
    ("idle sse RSS/conn: nchan / herald >= 10",
     ratio(fig("nchan", "idle-sse", "server", "rss_per_conn_bytes"), fig("herald", "idle-sse", "server", "rss_per_conn_bytes")), ">=", 10, "x"),
    ("fanout ws CPU/delivery: herald / floor <= 1.15",
     ratio(fig("herald", "fanout-ws", "server", "cpu_per_delivery_us"), fig("floor", "fanout-ws", "server", "cpu_per_delivery_us")), "<=", 1.15, "x"),
    ("fanout ws p99: herald / nchan <= 0.5",
     ratio(fig("herald", "fanout-ws", "latency", "broadcast", "percentiles_ms", "99"), fig("nchan", "fanout-ws", "latency", "broadcast", "percentiles_ms", "99")), "<=", 0.5, "x"),
    ("fanout sse p99: herald / nchan <= 0.5",
     ratio(fig("herald", "fanout-sse", "latency", "broadcast", "percentiles_ms", "99"), fig("nchan", "fanout-sse", "latency", "broadcast", "percentiles_ms", "99")), "<=", 0.5, "x"),
    ("burst deliveries per CPU-s: herald / nchan >= 5", ratio(burst_dps("herald"), burst_dps("nchan")), ">=", 5, "x"),
    ("storm handshakes/s: herald / nchan >= 2",
     ratio(fig("herald", "connect", "connect", "handshakes_per_s"), fig("nchan", "connect", "connect", "handshakes_per_s")), ">=", 2, "x"),
    ("storm handshake p99: herald / nchan (equal: ~1)",
     ratio(fig("herald", "connect", "latency", "handshake", "percentiles_ms", "99"), fig("nchan", "connect", "latency", "handshake", "percentiles_ms", "99")), "<=", 1.0, "x"),
    ("publishes/s: herald / nchan >= 1",
     ratio(fig("herald", "publish", "publish", "publishes_per_s"), fig("nchan", "publish", "publish", "publishes_per_s")), ">=", 1, "x"),
    ("throughput 2 workers / 1 worker >= 1.8",
     ratio(fig("herald", "throughput-2w", "delivery", "deliveries_per_s"), fig("herald", "throughput", "delivery", "deliveries_per_s")), ">=", 1.8, "x"),
]
print("\nissue 3 targets (ratios from this run):")
for name, v, op, lim, unit in checks:
    if v is None:
        status = "not measured"
        shown = "-"
    else:
        ok = v <= lim if op == "<=" else v >= lim
        status = "met" if ok else f"MISSED by {abs(v / lim - 1) * 100:.0f}%"
        shown = f"{v:.3g}{unit}"
    print(f"  {name:50s} {shown:>10s}  {status}")
print("\nreference ratios (nchan vs floor):")
for name, a, b in [
    ("fanout ws CPU/delivery nchan / floor", fig("nchan", "fanout-ws", "server", "cpu_per_delivery_us"), fig("floor", "fanout-ws", "server", "cpu_per_delivery_us")),
    ("burst CPU/delivery nchan / floor", fig("nchan", "burst", "server", "cpu_per_delivery_us"), fig("floor", "burst", "server", "cpu_per_delivery_us")),
    ("throughput deliveries/s nchan / floor", fig("nchan", "throughput", "delivery", "deliveries_per_s"), fig("floor", "throughput", "delivery", "deliveries_per_s")),
    ("idle ws RSS/conn nchan / floor", fig("nchan", "idle-ws", "server", "rss_per_conn_bytes"), fig("floor", "idle-ws", "server", "rss_per_conn_bytes")),
]:
    r = ratio(a, b)
    print(f"  {name:50s} {('-' if r is None else f'{r:.3g}x'):>10s}")
