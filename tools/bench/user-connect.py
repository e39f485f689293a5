#!/usr/bin/env python3
"""What a connection's user channel costs on connect (issue 10 part 1), in one run.

Starts a herald with --token-secret for each measurement and drives herald-bench at it
with a token per subscriber, each its own user ("sub":"uN": the worst case, one user channel per
connection), in turns, for --rounds rounds:

  user      the default: every connection also holds its user's channel
  no-user   the same tokens with user=0: no user channel (herald-bench --no-user)

For each, on a fresh process: the server's resident memory per idle connection (scenario
idle, --conns held for --hold s, then released), then handshakes/s and handshakes per
server CPU-second of a connection storm at full speed (scenario connect). Prints each run, the medians, and
the ratios user/no-user.

    tools/bench/user-connect.py [--conns 5000] [--rounds 3] [--transport ws] [BINARY]
"""

import json
import os
import statistics
import subprocess
import tempfile
import time

from benchutil import herald, parser

SECRET = "bench-user-secret"


def bench_run(bench, scenario, port, pid, a, extra):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([bench, scenario, "--target", "herald", "--transport", a.transport,
                        "--server", f"127.0.0.1:{port}", "--server-pid", str(pid),
                        "--conns", str(a.conns), "--no-reconnect", "--quiet",
                        "--token-secret", SECRET, "--json", out.name, *extra],
                       check=True, stdout=subprocess.DEVNULL)
        r = json.load(open(out.name))["runs"][0]
    assert r["counters"]["failed"] == 0, r["counters"]
    assert not r["server"]["exited_during_run"], "the server exited during the run"
    return r


def main():
    ap = parser()
    ap.add_argument("--bench", default=None, help="herald-bench (default: next to BINARY)")
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hold", default="3", help="idle: seconds to hold the connections")
    ap.add_argument("--transport", default="ws")
    ap.add_argument("--workers", default="2")
    a = ap.parse_args()
    bench = a.bench or os.path.join(os.path.dirname(a.binary), "herald-bench")
    kinds = {"user": [], "no-user": ["--no-user"]}
    fig = {k: {"hs": [], "cpu": [], "rss": []} for k in kinds}
    flags = ("--workers", a.workers, "--lifetime-min", "0", "--lifetime-max", "0",
             "--token-secret", SECRET)
    for rnd in range(a.rounds):
        for kind, extra in kinds.items():
            # A fresh process for each: resident memory never shrinks back after a storm.
            with herald(a.binary, *flags) as (proc, port):
                s = bench_run(bench, "idle", port, proc.pid, a, ["--hold", a.hold, *extra])
                time.sleep(1)  # the idle connections are gone
                c = bench_run(bench, "connect", port, proc.pid, a,
                              ["--connect-rate", "0", *extra])["connect"]
            rss = s["server"]["rss_per_conn_bytes"]
            fig[kind]["hs"].append(c["handshakes_per_s"])
            fig[kind]["cpu"].append(c["handshakes_per_cpu_s"])
            fig[kind]["rss"].append(rss)
            print(f"round {rnd + 1} {kind:8s} {c['handshakes_per_s']:9.0f} handshakes/s "
                  f"{c['handshakes_per_cpu_s']:9.0f} per server CPU-s "
                  f"{rss:7.0f} B RSS per idle connection", flush=True)
    med = {k: {m: statistics.median(v) for m, v in f.items()} for k, f in fig.items()}
    print(f"\n{a.conns} {a.transport} connections, one user each, median of {a.rounds} rounds:")
    for k, m in med.items():
        print(f"  {k:8s} {m['hs']:9.0f} handshakes/s {m['cpu']:9.0f} per server CPU-s "
              f"{m['rss']:7.0f} B RSS per idle connection")
    u, n = med["user"], med["no-user"]
    print(f"  ratio user/no-user: {u['hs'] / n['hs']:.3f} (handshakes/s), "
          f"{u['cpu'] / n['cpu']:.3f} (per server CPU-s), {u['rss'] / n['rss']:.3f} (RSS), "
          f"+{u['rss'] - n['rss']:.0f} B per connection")


if __name__ == "__main__":
    main()
