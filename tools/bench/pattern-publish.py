#!/usr/bin/env python3
"""Publish throughput with no pattern subscription against 1,000 patterns that match
none of the published channels, in the same run, on the same herald (issue 10 part 6).

A publish checks the patterns only when some exist (one test otherwise), and then
only those under the head of the channel's name (its first segment). Three
conditions, held by 16 SSE connections while herald-bench publishes to `bench.a-0`:

  none        no pattern
  unrelated   1,000 patterns under other heads (`unrelatedN.*`): what an app's
              patterns are to its other channels; one lookup per publish
  same-head   1,000 patterns under the published channel's head that do not match
              it (`bench.*.xN`): each is matched, and fails, at every publish

Alternates them for --rounds rounds on one server, driving herald-bench's publish
scenario (keep-alive publishers, flat out) for --duration s each, and prints each
run's publishes/s and publishes per server CPU-second, then the medians and ratios.

    tools/bench/pattern-publish.py [--rounds 3] [--duration 5] [--patterns 1000] [BINARY]
"""

import json
import os
import socket
import statistics
import subprocess
import tempfile

from benchutil import herald, parser

PER_CONN = 64  # --max-patterns-per-conn and channels per request


def cpu_s(pid):
    """User + system CPU seconds of process pid so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PATTERNS = {"unrelated": "unrelated{}.*", "same-head": "bench.*.x{}"}


def hold_patterns(port, count, form):
    """SSE connections holding `count` patterns of `form` (no published channel matches)."""
    socks = []
    for start in range(0, count, PER_CONN):
        names = ",".join(form.format(i) for i in range(start, min(start + PER_CONN, count)))
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /sse?channels={names} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        socks.append(s)
    return socks


def publish_run(bench, port, pid, a):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        before = cpu_s(pid)
        subprocess.run([bench, "publish", "--server", f"127.0.0.1:{port}",
                        "--publishers", str(a.publishers), "--duration", str(a.duration),
                        "--payload", "100", "--channel-prefix", "bench.a", "--quiet",
                        "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL)
        cpu = cpu_s(pid) - before
        r = json.load(open(out.name))["runs"][0]["publish"]
    assert r["failed"] == 0, r
    return r["publishes_per_s"], r["ok"] / cpu if cpu else 0.0


def main():
    ap = parser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--patterns", type=int, default=1000)
    ap.add_argument("--publishers", type=int, default=4)
    a = ap.parse_args()
    bench = os.path.join(os.path.dirname(a.binary), "herald-bench")
    results = {"none": [], "unrelated": [], "same-head": []}
    with herald(a.binary, "--max-patterns-per-conn", str(PER_CONN),
                "--max-patterns", str(max(a.patterns, 1))) as (proc, port):
        for rnd in range(a.rounds):
            for cond in results:
                socks = hold_patterns(port, a.patterns, PATTERNS[cond]) if cond != "none" else []
                rate, per_cpu = publish_run(bench, port, proc.pid, a)
                for s in socks:
                    s.close()
                results[cond].append((rate, per_cpu))
                label = "0 patterns" if cond == "none" else f"{a.patterns} {cond} patterns"
                print(f"round {rnd + 1}  {label:24s}  {rate:9.0f} publishes/s  "
                      f"{per_cpu:9.0f} publishes/server-CPU-s")
    med = {c: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v))
           for c, v in results.items()}
    base = med["none"]
    for c, (rate, per_cpu) in med.items():
        print(f"median  {c:10s} {rate:9.0f} publishes/s ({rate / base[0]:.3f}x)  "
              f"{per_cpu:9.0f} per server CPU-s ({per_cpu / base[1]:.3f}x)")

if __name__ == "__main__":
    main()
