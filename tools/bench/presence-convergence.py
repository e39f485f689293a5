#!/usr/bin/env python3
"""Presence after a node is killed (docs/cluster.md#presence): how long after a SIGKILL of a
node its users leave, as a subscriber on another node sees it.

Two herald nodes on one redis-server started here (or on a 3-master Redis Cluster with
--cluster). Each run: node B starts, a user connects to B (two connections) with a watcher
on A (presence=1); once A saw the join, B is killed with SIGKILL and the time until the
watcher gets the user's `leave` is measured. Prints each run and min / median / max.

    python3 tools/bench/presence-convergence.py [--runs N] [--cluster] [build/herald]
"""
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "integration"))
sys.path.insert(0, HERE)

from benchutil import parser  # noqa: E402
from helpers import SSE, Herald, Stream, jwt_hs256, request  # noqa: E402
from redis_util import RedisCluster, RedisServer  # noqa: E402

SECRET = "convergence-secret"


def token(sub):
    return jwt_hs256(SECRET, {"exp": int(time.time()) + 3600, "channels": ["**"], "sub": sub})


def event(sub, timeout):
    return sub.messages(1, timeout)[0]


def run_once(binary, tmp, backend, chan, a):
    b = Herald(binary, tmp, node_name="B", token_secret=SECRET, **backend).start()
    watcher = Stream(a, chan, token=token("watcher"), presence="1")
    users = [SSE(b, chan, token=token("user")), Stream(b, chan, token=token("user"))]
    try:
        assert event(watcher, 10)["event"] == "join"  # its own
        ev = event(watcher, 10)
        assert ev["event"] == "join" and ev["user"] == "user", ev
        start = time.monotonic()
        b.kill()
        ev = event(watcher, 60)
        took = time.monotonic() - start
        assert ev["event"] == "leave" and ev["user"] == "user", ev
        return took
    finally:
        for s in users + [watcher]:
            s.close()


def main():
    ap = parser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    with (RedisCluster(masters=3, replicas=0) if args.cluster else RedisServer()) as redis:
        backend = ({"redis_cluster": redis.seeds} if args.cluster else {"redis": redis.url})
        a = Herald(args.binary, tmp, node_name="A", token_secret=SECRET, **backend).start()
        try:
            times = []
            for i in range(args.runs):
                chan = f"room{i}"
                r = request(a.port, "PUT", f"/api/channels/{chan}", '{"presence":true}')
                assert r.status in (200, 201), r.body
                times.append(run_once(args.binary, tmp, backend, chan, a))
                print(f"run {i + 1}: the killed node's user left after {times[-1]:.2f} s",
                      flush=True)
        finally:
            a.stop()
    kind = "a Redis Cluster (3 masters)" if args.cluster else "one Redis"
    print(f"{args.runs} SIGKILLs, two nodes on {kind}: leave after "
          f"min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s (lease 5 s, checked every 1 s)")


if __name__ == "__main__":
    main()
