#!/usr/bin/env python3
"""redis-script-cost: what herald's publish script costs Redis, alone.

Starts a redis-server of its own (tests/integration/redis_util.py), subscribes one
connection to the channel's bus (as one herald node would be), fills the channel's
history, then calls the publish script N times, one at a time and pipelined, and
prints Redis's CPU per call (schedstat of the redis-server process) and the time
INFO commandstats counts inside the script. The script is read from a C source
file (default src/cluster/redis_scripts.c; an older checkout's
src/cluster/redis_backend.c works too), so two versions compare with one command:

    tools/bench/redis-script-cost.py [--src FILE] [--eval] [-n 10000] [--repeat 3]

--eval sends the script's text every time (EVAL), as herald did before it used
EVALSHA. Each figure is the best of --repeat runs, each on a fresh redis-server
(other processes on the machine only ever add to them). The publisher's clock (the id hint and "now") steps 1 ms per publish: a
channel published to about a thousand times a second. The figures are Redis's
CPU only; what a herald node adds (its own reads and writes) is not in them.
"""

import argparse
import ast
import hashlib
import os
import re
import socket
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from redis_util import RedisServer, _encode, _read_reply  # noqa: E402


def publish_script(path):
    """The text of `static const char publish_lua[] = "..." "...";` in a C file."""
    src = open(path).read()
    m = re.search(r"static const char publish_lua\[\] =(.*?);\n", src, re.S)
    if not m:
        sys.exit(f"no publish_lua in {path}")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return "".join(ast.literal_eval(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', body))


def cpu_seconds(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def run(script, n, depth, use_eval):
    payload = "T 1700000000000 1 0 100\nbench\n" + "x" * 100
    keys = ["herald:{seq}:i", "herald:{seq}:e", "herald:{bench}:h", "herald:{bench}:o", "herald:{bench}:s"]
    sha = hashlib.sha1(script.encode()).hexdigest()

    def command(i):
        argv = [str(1700000000000000 + i * 1000), payload, "1", "100", "3600000", "900000",
                str(1700000000000 + i), "PUBLISH", "herald:{bench}:m"]
        head = ["EVAL", script] if use_eval else ["EVALSHA", sha]
        return _encode(head + [len(keys)] + keys + argv)

    with RedisServer() as r:
        sub = socket.create_connection(("127.0.0.1", r.port))
        sub.sendall(_encode(["SUBSCRIBE", "herald:{bench}:m"]))
        _read_reply(sub.makefile("rb"))
        done = threading.Event()

        def drain():
            sub.settimeout(0.2)
            while not done.is_set():
                try:
                    if not sub.recv(1 << 16):
                        return
                except socket.timeout:
                    pass

        threading.Thread(target=drain, daemon=True).start()
        conn = socket.create_connection(("127.0.0.1", r.port))
        f = conn.makefile("rb")
        conn.sendall(_encode(["SCRIPT", "LOAD", script]))
        _read_reply(f)

        def send(first, count):
            conn.sendall(b"".join(command(first + j) for j in range(count)))
            for _ in range(count):
                reply = _read_reply(f)
                if isinstance(reply, Exception):
                    sys.exit(f"the script failed: {reply}")

        send(0, 300)  # the history is full from here on: every publish trims
        r.cmd("CONFIG", "RESETSTAT")
        time.sleep(0.2)
        cpu0 = cpu_seconds(r.proc.pid)
        i = 300
        while i < 300 + n:
            k = min(depth, 300 + n - i)
            send(i, k)
            i += k
        cpu = cpu_seconds(r.proc.pid) - cpu0
        stats = r.cmd("INFO", "commandstats")
        done.set()
        verb = "eval" if use_eval else "evalsha"
        inside = re.search(rf"cmdstat_{verb}:calls=\d+,usec=\d+,usec_per_call=([\d.]+)", stats)
        return cpu * 1e6 / n, float(inside.group(1)) if inside else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=os.path.join(ROOT, "src", "cluster", "redis_scripts.c"))
    ap.add_argument("--eval", action="store_true", help="send the script text every time (EVAL)")
    ap.add_argument("-n", type=int, default=10000, help="publishes per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (the best is shown)")
    args = ap.parse_args()
    script = publish_script(args.src)
    print(f"publish script of {args.src} ({len(script)} bytes), {'EVAL' if args.eval else 'EVALSHA'}, "
          f"{args.n} publishes, one subscriber, 100-byte body, history full; best of {args.repeat}")
    for depth in (1, 32):
        runs = [run(script, args.n, depth, args.eval) for _ in range(max(1, args.repeat))]
        per_call, inside = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"  pipelined {depth:2d} deep: Redis CPU {per_call:6.1f} us per publish, "
              f"{inside:5.1f} us of it inside the script")


if __name__ == "__main__":
    main()
