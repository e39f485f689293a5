#!/usr/bin/env python3
"""Apps in cluster mode, measured (docs/cluster.md "Apps in cluster mode"): two herald nodes
on one redis-server started here.

Prints: how long an app created on node A takes to answer on node B (N apps: median, max);
how long a connection opened on A takes to count on B; the publish-rate overshoot (publishes
accepted in one second over both nodes against the plan's rate).

    HERALD_BIN=build/herald python3 tools/bench/cluster_apps.py [N]
"""
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "integration"))

from helpers import SSE, Herald, request  # noqa: E402
from redis_util import RedisServer  # noqa: E402

ADMIN = "bench-admin-key"


def admin(srv, method, path, body=None):
    h = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    return request(srv.port, method, path, json.dumps(body) if body is not None else None, h)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    binary = os.environ.get("HERALD_BIN", os.path.join(HERE, "..", "..", "build", "herald"))
    tmp = tempfile.mkdtemp()
    plans = os.path.join(tmp, "plans.json")
    with open(plans, "w") as f:
        json.dump({"plans": [{"name": "p", "connections": 1000, "publishes_per_second": 50}]}, f)
    with RedisServer() as redis:
        a, b = (Herald(binary, tmp, redis=redis.url, node_name=x, admin_key=ADMIN, plans=plans).start()
                for x in "AB")
        try:
            took = []
            for i in range(n):
                r = admin(a, "POST", "/admin/apps", {"name": f"b{i}", "plan": "p", "subscribe": "public"})
                key = r.json()["publish_key"]
                t0 = time.monotonic()
                while request(b.port, "GET", f"/apps/b{i}/stats",
                              headers={"Authorization": f"Bearer {key}"}).status != 200:
                    time.sleep(0.002)
                took.append(time.monotonic() - t0)
            print(f"app created on A usable on B: median {statistics.median(took) * 1000:.0f} ms, "
                  f"max {max(took) * 1000:.0f} ms over {n} apps")
            conn_took = []
            for i in range(10):
                with _sub(a, "b0") as s:
                    assert s.status == 200
                    t0 = time.monotonic()
                    while admin(b, "GET", "/admin/apps/b0").json()["usage"]["connections"] < 1:
                        time.sleep(0.002)
                    conn_took.append(time.monotonic() - t0)
                while admin(b, "GET", "/admin/apps/b0").json()["usage"]["connections"] > 0:
                    time.sleep(0.01)
            print(f"connection on A counted on B: median {statistics.median(conn_took) * 1000:.0f} ms, "
                  f"max {max(conn_took) * 1000:.0f} ms over 10")
            key = admin(a, "POST", "/admin/apps/b1/keys").json()["publish_key"]
            time.sleep(0.6)
            worst = 0
            for rnd in range(5):
                while time.time() % 1 > 0.05:
                    time.sleep(0.002)
                second, ok = int(time.time()), 0
                while int(time.time()) == second:
                    srv = (a, b)[ok % 2]
                    r = request(srv.port, "POST", "/apps/b1/pub/r", "x", {"Authorization": f"Bearer {key}"})
                    ok += r.status == 201
                worst = max(worst, ok)
            print(f"publishes accepted in one second over both nodes (plan: 50/s): max {worst} "
                  f"over 5 seconds (overshoot {max(0, worst - 50)})")
        finally:
            a.stop()
            b.stop()


def _sub(srv, app):
    cls = type("AppSub", (SSE,), {"path": f"/apps/{app}/sse"})
    return cls(srv, "c")


if __name__ == "__main__":
    main()
