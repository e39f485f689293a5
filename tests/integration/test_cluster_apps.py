"""Apps in cluster mode (issue 8, docs/cluster.md "Apps in cluster mode"): herald nodes sharing a
real redis-server (and, for the basics, a Redis Cluster) keep their apps in Redis.

What is checked: an app made on node A is usable on node B within a second; isolation holds
across nodes (the same channel name in two apps and the default app, one app's key on another,
listings); the plan's connections, publishes per second and channels hold over the cluster; a
deletion on A closes B's subscribers and removes the app's channels from Redis; a restarted
node keeps the apps; a Redis that is down makes admin changes answer 503 while the nodes keep
serving what they know; --state-dir is refused in cluster mode.
"""

import json
import subprocess
import time

import pytest
import websockets

from helpers import (
    SSE,
    UnreadyHerald,
    arun,
    expect_ws_closed,
    recv_json,
    request,
    wait_until,
)
from test_apps import ADMIN, admin, pub
from test_apps import app_stream as app_sub

pytestmark = pytest.mark.threads  # make test runs this module under ThreadSanitizer too

AOF = ["--appendonly", "yes", "--appendfsync", "always"]  # a restart keeps what it acknowledged
# The bound on the cluster-wide connection count (docs/cluster.md): a node's count reaches the
# others within two ticks (500 ms) and round trips (slack for sanitizer builds on 2 cores).
CONN_BOUND = 1.0
PLANS = {"plans": [
    {"name": "tiny", "connections": 2, "channels": 3, "publishes_per_second": 5},
    {"name": "big"},
    {"name": "three-channels", "channels": 3},
]}


def create_app(srv, name, plan="big"):
    r = admin(srv, "POST", "/admin/apps", {"name": name, "plan": plan, "subscribe": "public"})
    assert r.status == 201, r.body
    return r.json()


def known_within(srv, app, key, bound):
    """Polls srv until it knows app; returns the time it took (fails past `bound` * 3)."""
    t0 = time.monotonic()
    wait_until(lambda: request(srv.port, "GET", f"/apps/{app}/stats",
                               headers={"Authorization": f"Bearer {key}"}).status == 200,
               timeout=bound * 3, what=f"{app} on the other node", interval=0.01)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    p = tmp_path_factory.mktemp("plans") / "plans.json"
    p.write_text(json.dumps(PLANS))
    return str(p)


@pytest.fixture(scope="module")
def nodes(redis, module_herald, plans):
    return [module_herald(redis=redis.url, node_name=n, admin_key=ADMIN, plans=plans) for n in "AB"]


# ---- propagation and isolation ------------------------------------------------------------------


def test_app_made_on_one_node_is_usable_on_another_within_a_second(nodes, redis):
    a, b = nodes
    worst = 0
    for i in range(5):
        app = create_app(a, f"prop-{i}")
        worst = max(worst, known_within(b, f"prop-{i}", app["publish_key"], 1.0))
    assert worst < 1.0, f"an app took {worst:.3f} s to reach the other node"
    app = admin(b, "GET", "/admin/apps/prop-0").json()
    assert app["plan"] == "big" and app["name"] == "prop-0"
    # Subscribed on B, published on A with the app's key: delivered.
    key = admin(a, "POST", "/admin/apps/prop-0/keys").json()["publish_key"]
    known_within(b, "prop-0", key, 1.0)
    with app_sub("sse", b, "prop-0", "room") as s:
        assert s.status == 200
        r = pub(a, "prop-0", "room", "hello", key)
        assert r.status == 201, r.body
        m = s.next_message()
        assert (m["channel"], m["data"]) == ("room", "hello")
    # The state is in Redis, in one hash.
    assert json.loads(redis.cmd("HGET", "herald:{apps}:a", "prop-0"))["name"] == "prop-0"
    # A name taken on A is taken on B.
    r = admin(b, "POST", "/admin/apps", {"name": "prop-0"})
    assert r.status == 409, r.body


def test_isolation_across_nodes(nodes):
    a, b = nodes
    x, y = create_app(a, "iso-x"), create_app(b, "iso-y")
    known_within(b, "iso-x", x["publish_key"], 1.0)
    known_within(a, "iso-y", y["publish_key"], 1.0)
    with app_sub("sse", b, "iso-x", "room") as sx, app_sub("stream", b, "iso-y", "room") as sy, \
            SSE(b, "room") as sd:
        assert sx.status == sy.status == sd.status == 200
        assert pub(a, "iso-x", "room", "for x", x["publish_key"]).status == 201
        assert pub(a, "iso-y", "room", "for y", y["publish_key"]).status == 201
        assert pub(a, None, "room", "for default", None).status == 201
        assert sx.next_message()["data"] == "for x"
        assert sy.next_message()["data"] == "for y"
        assert sd.next_message()["data"] == "for default"
        assert pub(a, "iso-y", "room", "second y", y["publish_key"]).status == 201
        assert pub(a, "iso-x", "room", "second x", x["publish_key"]).status == 201
        assert sx.next_message()["data"] == "second x"
        assert sy.next_message()["data"] == "second y"
    # One app's key does not open another, on either node.
    for srv in nodes:
        r = pub(srv, "iso-y", "room", "x", x["publish_key"])
        assert r.status == 401, r.body
    # Listings per app, the same on both nodes.
    assert pub(b, "iso-x", "only-x", "1", x["publish_key"]).status == 201
    for srv in nodes:
        def names(app, key):
            r = request(srv.port, "GET", f"/apps/{app}/api/channels",
                        headers={"Authorization": f"Bearer {key}"})
            assert r.status == 200, r.body
            return [c["name"] for c in r.json()["channels"]]

        assert names("iso-x", x["publish_key"]) == ["only-x", "room"]
        assert names("iso-y", y["publish_key"]) == ["room"]
        r = request(srv.port, "GET", "/api/channels")
        assert "only-x" not in [c["name"] for c in r.json()["channels"]]


# ---- limits over the cluster ----------------------------------------------------------------------


def conns(srv, app):
    return admin(srv, "GET", f"/admin/apps/{app}").json()["usage"]["connections"]


def test_connection_limit_holds_over_the_cluster(nodes):
    a, b = nodes
    app = create_app(a, "conns", plan="tiny")
    known_within(b, "conns", app["publish_key"], 1.0)
    with app_sub("sse", a, "conns", "c") as s1, app_sub("sse", b, "conns", "c") as s2:
        assert s1.status == s2.status == 200
        t0 = time.monotonic()
        wait_until(lambda: conns(a, "conns") == 2 and conns(b, "conns") == 2,
                   timeout=CONN_BOUND * 3, what="both nodes count both connections", interval=0.01)
        took = time.monotonic() - t0
        assert took < CONN_BOUND, f"counts took {took:.3f} s to cross the nodes"
        for srv in nodes:
            with app_sub("sse", srv, "conns", "c") as s3:
                assert s3.status == 503, s3.status
                assert json.loads(s3.body)["limit"] == "connections"

            async def ws(port=srv.port):
                async with websockets.connect(f"ws://127.0.0.1:{port}/apps/conns/ws?channels=c",
                                              ping_interval=None) as w:
                    err = await recv_json(w)
                    assert err["error"] == "limit_exceeded", err
                    await expect_ws_closed(w, 4429)

            arun(ws())
        st = admin(b, "GET", "/admin/apps/conns").json()["usage"]
        assert st["node_connections"] == 1 and st["connections_refused"] >= 2
    # Places come back on every node once the connections are gone.
    wait_until(lambda: conns(a, "conns") == 0 and conns(b, "conns") == 0, timeout=5,
               what="connections released")
    with app_sub("sse", b, "conns", "c") as s:
        assert s.status == 200


def test_publish_rate_holds_over_the_cluster(nodes):
    a, b = nodes
    app = create_app(a, "rate", plan="tiny")
    key = app["publish_key"]
    known_within(b, "rate", key, 1.0)
    # Ten publishes alternating between the nodes within one second (each node alone would
    # take five): five go through.
    for attempt in range(3):
        while time.time() % 1 > 0.3:  # start early in a second (Redis counts by its clock)
            time.sleep(0.01)
        second = int(time.time())
        codes = [pub(nodes[i % 2], "rate", "r", str(i), key) for i in range(10)]
        if int(time.time()) == second:
            break
    statuses = [r.status for r in codes]
    assert statuses.count(201) == 5 and statuses.count(429) == 5, statuses
    refused = [r for r in codes if r.status == 429]
    assert all(r.json()["limit"] == "publishes_per_second" for r in refused)
    assert all("retry-after" in r.headers for r in refused)
    time.sleep(1.0)
    assert pub(b, "rate", "r", "next second", key).status == 201


def test_channel_limit_holds_over_the_cluster(nodes, redis):
    a, b = nodes
    app = create_app(a, "chans", plan="three-channels")
    key = app["publish_key"]
    known_within(b, "chans", key, 1.0)
    assert pub(a, "chans", "c1", "1", key).status == 201
    assert pub(b, "chans", "c2", "2", key).status == 201
    assert pub(a, "chans", "c3", "3", key).status == 201
    for srv in nodes:
        r = pub(srv, "chans", "c4", "4", key)
        assert r.status == 429 and r.json()["limit"] == "channels", r.body
        r = request(srv.port, "PUT", "/apps/chans/api/channels/c5", "{}",
                    {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        assert r.status == 429 and r.json()["limit"] == "channels", r.body
        assert pub(srv, "chans", "c1", "again", key).status == 201  # an existing one
    assert admin(b, "GET", "/admin/apps/chans").json()["usage"]["channels"] == 3
    # Deleting one makes room, on every node.
    r = request(b.port, "DELETE", "/apps/chans/api/channels/c2",
                headers={"Authorization": f"Bearer {key}"})
    assert r.status in (200, 204), r.body
    assert pub(a, "chans", "c4", "4", key).status == 201
    assert redis.cmd("ZCARD", "herald:channels:{chans}") == 3


# ---- deletion ---------------------------------------------------------------------------------------


def test_delete_on_one_node_closes_subscribers_on_the_other(nodes, redis):
    a, b = nodes
    app = create_app(a, "gone")
    key = app["publish_key"]
    known_within(b, "gone", key, 1.0)
    assert pub(a, "gone", "kept", "stored", key).status == 201
    with app_sub("sse", b, "gone", "c1") as s, app_sub("stream", a, "gone", "c1") as s2:
        assert pub(a, "gone", "c1", "before", key).status == 201
        assert s.next_message()["data"] == "before"
        assert s2.next_message()["data"] == "before"
        assert admin(a, "DELETE", "/admin/apps/gone").status == 200
        ev = s.next_event(timeout=2)
        assert ev.event == "closed" and ev.json()["channel"] == "c1"
        s.expect_end(timeout=2)
    wait_until(lambda: request(b.port, "GET", "/apps/gone/stats",
                               headers={"Authorization": f"Bearer {key}"}).status == 404,
               timeout=1, what="the app gone on B")
    # Its channels are gone from Redis: history, options, the index.
    wait_until(lambda: not redis.cmd("KEYS", "herald:{gone~*") and
               not redis.cmd("EXISTS", "herald:channels:{gone}"), timeout=3,
               what="the app's keys gone from Redis")
    # A new app of the name starts empty.
    b2 = create_app(b, "gone")
    r = request(a.port, "GET", "/apps/gone/api/channels/kept",
                headers={"Authorization": f"Bearer {b2['publish_key']}"})
    known_within(a, "gone", b2["publish_key"], 1.0)
    r = request(a.port, "GET", "/apps/gone/api/channels",
                headers={"Authorization": f"Bearer {b2['publish_key']}"})
    assert r.status == 200 and r.json()["channels"] == [], r.body


# ---- restarts and outages ---------------------------------------------------------------------------


def test_apps_survive_a_node_restart(herald, redis_factory, plans):
    r = redis_factory(AOF)
    a = herald(redis=r.url, node_name="A", admin_key=ADMIN, plans=plans)
    app = create_app(a, "keep", plan="tiny")
    a.stop()
    b = herald(redis=r.url, node_name="B", admin_key=ADMIN, plans=plans)
    other = create_app(b, "made-meanwhile")
    a2 = herald(redis=r.url, node_name="A", admin_key=ADMIN, plans=plans)
    got = admin(a2, "GET", "/admin/apps/keep")
    assert got.status == 200 and got.json()["plan"] == "tiny"
    assert pub(a2, "keep", "c", "x", app["publish_key"]).status == 201
    assert pub(a2, "made-meanwhile", "c", "x", other["publish_key"]).status == 201


def test_redis_down_makes_changes_503_and_nodes_keep_what_they_know(herald, redis_factory, plans):
    r = redis_factory(AOF)
    a = herald(redis=r.url, node_name="A", admin_key=ADMIN, plans=plans, redis_timeout="500ms")
    create_app(a, "known")
    r.stop()
    try:
        got = admin(a, "POST", "/admin/apps", {"name": "new-one"})
        assert got.status == 503, got.body
        assert got.json()["error"] == "apps_store_unavailable"
        assert "Redis" in got.json()["detail"]
        assert admin(a, "PATCH", "/admin/apps/known", {"plan": "tiny"}).status == 503
        assert admin(a, "DELETE", "/admin/apps/known").status == 503
        # Still served from what the node knows.
        got = admin(a, "GET", "/admin/apps/known")
        assert got.status == 200 and got.json()["plan"] == "big"
        assert admin(a, "GET", "/admin/apps/new-one").status == 404
    finally:
        r.start()
    wait_until(lambda: admin(a, "POST", "/admin/apps", {"name": "new-one"}).status == 201,
               timeout=10, what="changes again once Redis is back", interval=0.2)
    assert admin(a, "GET", "/admin/apps/known").json()["plan"] == "big"


def test_redis_down_at_start_up_is_said_and_apps_come_when_it_is_up(herald, herald_bin, tmp_path,
                                                                    redis_factory, plans):
    r = redis_factory(AOF)
    a = herald(redis=r.url, node_name="A", admin_key=ADMIN, plans=plans)
    app = create_app(a, "later")
    r.stop()
    b = UnreadyHerald(herald_bin, str(tmp_path), redis=r.url, node_name="B", admin_key=ADMIN,
                plans=plans, redis_timeout="300ms").start()
    try:
        assert "knows no app yet" in b.log()
        assert admin(b, "POST", "/admin/apps", {"name": "other"}).status == 503
        r.start()
        known_within(b, "later", app["publish_key"], 5.0)
    finally:
        b.stop()


def test_state_dir_is_refused_in_cluster_mode(herald_bin, tmp_path):
    out = subprocess.run([herald_bin, "--redis", "redis://127.0.0.1:1", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 2
    assert "--state-dir is for a single node" in out.stderr + out.stdout


# ---- Redis Cluster -----------------------------------------------------------------------------------


@pytest.mark.xdist_group("redis-cluster")
def test_apps_on_a_redis_cluster(rcluster, herald, plans):
    a, b = (herald(redis_cluster=rcluster.seeds, node_name=n, admin_key=ADMIN, plans=plans)
            for n in "AB")
    x = create_app(a, "rc-x")
    took = known_within(b, "rc-x", x["publish_key"], 1.0)
    assert took < 1.0
    y = create_app(b, "rc-y", plan="tiny")
    known_within(a, "rc-y", y["publish_key"], 1.0)
    with app_sub("sse", b, "rc-x", "room") as sx, app_sub("sse", b, "rc-y", "room") as sy:
        assert pub(a, "rc-x", "room", "for x", x["publish_key"]).status == 201
        assert pub(a, "rc-y", "room", "for y", y["publish_key"]).status == 201
        assert sx.next_message()["data"] == "for x"
        assert sy.next_message()["data"] == "for y"
        assert pub(a, "rc-y", "room", "x", x["publish_key"]).status == 401
        # The channel limit over the cluster (channels on different shards).
        assert pub(a, "rc-y", "c2", "2", y["publish_key"]).status == 201
        assert pub(b, "rc-y", "c3", "3", y["publish_key"]).status == 201
        r = pub(a, "rc-y", "c4", "4", y["publish_key"])
        assert r.status == 429 and r.json()["limit"] == "channels", r.body
        assert admin(a, "DELETE", "/admin/apps/rc-y").status == 200
        ev = sy.next_event(timeout=2)
        assert ev.event == "closed"
    wait_until(lambda: admin(b, "GET", "/admin/apps/rc-y").status == 404, timeout=1,
               what="the deletion on B")
    assert admin(b, "GET", "/admin/apps/rc-x").status == 200


# ---- settings and long names in Redis -------------------------------------------------------------


def test_app_settings_hold_in_cluster_mode(nodes):
    a, b = nodes
    r = admin(a, "POST", "/admin/apps", {"name": "cset", "plan": "big", "subscribe": "public",
                                          "settings": {"auto_create": False, "history_size": 2}})
    assert r.status == 201, r.body
    key = r.json()["publish_key"]
    known_within(b, "cset", key, 1.0)
    # auto_create off for this app only: Redis refuses to make its channel on a publish.
    assert pub(b, "cset", "nochan", "x", key).status == 404
    assert pub(b, None, "cset-default-still-creates", "x", None).status == 201
    h = {"Authorization": f"Bearer {key}"}
    assert request(a.port, "PUT", "/apps/cset/api/channels/made", "", h).status in (200, 201)
    for i in range(4):
        assert pub(b, "cset", "made", f"m{i}", key).status == 201
    with app_sub("sse", a, "cset", "made", since="0") as s:
        got = []
        while len(got) < 2:
            ev = s.next_event()
            if ev.event is None:
                got.append(ev.json()["data"])
        assert got == ["m2", "m3"]


def test_long_names_keep_their_own_redis_keys(nodes):
    """A 40-byte app name and 128-byte channel names: two names that share their first 120
    bytes stay two channels (a key buffer cut them to one)."""
    a, b = nodes
    app = "x" * 40
    key = create_app(a, app)["publish_key"]
    known_within(b, app, key, 1.0)
    n1, n2 = "c" * 127 + "1", "c" * 127 + "2"
    assert pub(a, app, n1, "one", key).status == 201
    assert pub(b, app, n2, "two", key).status == 201
    h = {"Authorization": f"Bearer {key}"}
    for n, want in ((n1, "one"), (n2, "two")):
        r = request(a.port, "GET", f"/apps/{app}/poll?channels={n}&since=0&timeout=0")
        assert r.status == 200, r.body
        assert [m["data"] for m in r.json()["messages"]] == [want]
    r = request(b.port, "GET", f"/apps/{app}/api/channels", headers=h)
    assert sorted(c["name"] for c in r.json()["channels"]) == [n1, n2]
