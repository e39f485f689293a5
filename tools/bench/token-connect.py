#!/usr/bin/env python3
"""Handshakes/s with subscriber tokens against without, in the same run (issue 8).

Starts two herald processes from the binary given (default build/herald), one
public and one with --token-secret, and drives herald-bench's connection storm
(scenario connect, WebSocket by default) at each in turn, for --rounds rounds:

  public    no token
  distinct  a token of its own per subscriber (herald verifies each: HMAC + JSON)
  shared    one token for every subscriber (verified once, then herald's cache)

Prints each run's handshakes/s and handshakes per server CPU-second, the median
of each over the rounds, and the ratios token/public (target >= 0.9).

    tools/bench/token-connect.py [--conns 5000] [--rounds 3] [--transport ws] [BINARY]
"""

import json
import os
import statistics
import subprocess
import tempfile

from benchutil import herald, parser

SECRET = "bench-token-secret"


def storm(bench, port, pid, a, extra):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([bench, "connect", "--target", "herald",
                        "--transport", a.transport, "--server", f"127.0.0.1:{port}",
                        "--server-pid", str(pid), "--conns", str(a.conns),
                        "--connect-rate", str(a.rate), "--no-reconnect", "--quiet",
                        "--json", out.name, *extra],
                       check=True, stdout=subprocess.DEVNULL)
        r = json.load(open(out.name))["runs"][0]
    failed = r["counters"]["failed"]
    return r["connect"]["handshakes_per_s"], r["connect"]["handshakes_per_cpu_s"], failed


def main():
    ap = parser()
    ap.add_argument("--bench", default=None, help="herald-bench (default: next to BINARY)")
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0, help="connect rate (0: as fast as possible)")
    ap.add_argument("--transport", default="ws")
    ap.add_argument("--workers", default="2")
    a = ap.parse_args()
    bench = a.bench or os.path.join(os.path.dirname(a.binary), "herald-bench")
    common = ("--workers", a.workers, "--lifetime-min", "0", "--lifetime-max", "0")
    kinds = {"public": [], "distinct": ["--token-secret", SECRET],
             "shared": ["--token-secret", SECRET, "--token-shared"]}
    figures = {k: [] for k in kinds}
    with herald(a.binary, *common) as (pub, pub_port), \
         herald(a.binary, *common, "--token-secret", SECRET) as (tok, tok_port):
        for rnd in range(a.rounds):
            for kind, extra in kinds.items():
                proc, port = (pub, pub_port) if kind == "public" else (tok, tok_port)
                hs, per_cpu, failed = storm(bench, port, proc.pid, a, extra)
                figures[kind].append((hs, per_cpu))
                print(f"round {rnd + 1} {kind:8s} {hs:9.0f} handshakes/s  {per_cpu:9.0f} per "
                      f"server CPU-s  failed {failed}", flush=True)
    med = {k: (statistics.median(h for h, _ in v), statistics.median(c for _, c in v))
           for k, v in figures.items()}
    print(f"\n{a.conns} {a.transport} connections per storm, median of {a.rounds} rounds:")
    for k, (hs, cpu) in med.items():
        print(f"  {k:8s} {hs:9.0f} handshakes/s  {cpu:9.0f} handshakes per server CPU-s")
    for k in ("distinct", "shared"):
        print(f"  ratio {k}/public: {med[k][0] / med['public'][0]:.3f} (handshakes/s), "
              f"{med[k][1] / med['public'][1]:.3f} (per server CPU-s)")


if __name__ == "__main__":
    main()
