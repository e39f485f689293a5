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

Alternates them for --rounds rounds, each run on a server of its own, driving herald-bench's publish
scenario (keep-alive publishers, flat out) for --duration s each, and prints each
run's publishes/s and publishes per server CPU-second, then the medians and ratios.

With --redis, the same in cluster mode on one Redis (a redis-server of its own): node
A takes the publishes, node B holds the patterns (its bus subscriptions: one
PSUBSCRIBE per first segment, so 1,000 for `unrelatedN.*`, one for `bench.*.xN`, which
then brings B every message of `bench.*`). Server CPU is both nodes' and Redis's;
Redis's share is printed too.

    tools/bench/pattern-publish.py [--rounds 3] [--duration 5] [--patterns 1000] [--redis] [BINARY]
"""

import contextlib
import json
import os
import socket
import statistics
import subprocess
import tempfile

from benchutil import free_port, herald, parser, wait_port

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


def publish_run(bench, port, pids, a):
    """Publishes flat out to port; (publishes/s, per CPU-s of pids, per CPU-s of pids[2:])."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        before = [cpu_s(p) for p in pids]
        subprocess.run([bench, "publish", "--server", f"127.0.0.1:{port}",
                        "--publishers", str(a.publishers), "--duration", str(a.duration),
                        "--payload", "100", "--channel-prefix", "bench.a", "--quiet",
                        "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL)
        used = [cpu_s(p) - b for p, b in zip(pids, before)]
        r = json.load(open(out.name))["runs"][0]["publish"]
    assert r["failed"] == 0, r
    cpu, redis_cpu = sum(used), sum(used[2:])
    return r["publishes_per_s"], r["ok"] / cpu if cpu else 0.0, redis_cpu / cpu if cpu else 0.0


@contextlib.contextmanager
def servers(a, flags):
    """(pids to count, publish port, pattern port): one herald, or with --redis a
    redis-server of its own and two nodes on it."""
    if not a.redis:
        with herald(a.binary, *flags) as (proc, port):
            yield [proc.pid], port, port
        return
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL)
    try:
        wait_port(rport)
        url = f"redis://127.0.0.1:{rport}"
        with herald(a.binary, *flags, "--redis", url, "--node-name", "A") as (pa, porta), \
                herald(a.binary, *flags, "--redis", url, "--node-name", "B") as (pb, portb):
            yield [pa.pid, pb.pid, redis.pid], porta, portb
    finally:
        redis.terminate()
        redis.wait()


def main():
    ap = parser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--patterns", type=int, default=1000)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--redis", action="store_true", help="cluster mode: two nodes on a Redis of its own")
    a = ap.parse_args()
    bench = os.path.join(os.path.dirname(a.binary), "herald-bench")
    results = {"none": [], "unrelated": [], "same-head": []}
    flags = ["--max-patterns-per-conn", str(PER_CONN), "--max-patterns", str(max(a.patterns, 1))]
    for rnd in range(a.rounds):
        for cond in results:
            # Fresh servers per run: a node keeps a pattern's bus subscription for 30 s.
            with servers(a, flags) as (pids, pub_port, pat_port):
                socks = hold_patterns(pat_port, a.patterns, PATTERNS[cond]) if cond != "none" else []
                rate, per_cpu, redis_share = publish_run(bench, pub_port, pids, a)
                for s in socks:
                    s.close()
                results[cond].append((rate, per_cpu))
                label = "0 patterns" if cond == "none" else f"{a.patterns} {cond} patterns"
                share = f"  (Redis {redis_share:.0%} of it)" if a.redis else ""
                print(f"round {rnd + 1}  {label:24s}  {rate:9.0f} publishes/s  "
                      f"{per_cpu:9.0f} publishes/server-CPU-s{share}")
    med = {c: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v))
           for c, v in results.items()}
    base = med["none"]
    for c, (rate, per_cpu) in med.items():
        print(f"median  {c:10s} {rate:9.0f} publishes/s ({rate / base[0]:.3f}x)  "
              f"{per_cpu:9.0f} per server CPU-s ({per_cpu / base[1]:.3f}x)")


if __name__ == "__main__":
    main()
