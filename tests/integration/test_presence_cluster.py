"""Presence across nodes (docs/cluster.md#presence; issue 10 part 2): two nodes sharing one
Redis, and two nodes on a Redis Cluster. A channel's presence is the sum of every live
node's counts, readable through any node; a user joins when its first connection anywhere
arrives and leaves when its last one anywhere goes; the users of a node killed with SIGKILL
leave within the bound the docs state (its lease expires and a surviving node sweeps its
entries), measured here.

Independent clients: raw sockets for WebSocket, SSE and NDJSON streams, http.client for
the API. The single-node behaviour is in test_presence.py, whose helpers this reuses.
"""

import time

import pytest

from helpers import wait_until
from test_presence import (
    SECRET,
    expect_only_message,
    next_event,
    open_sub,
    presence,
    put,
    token,
    users_of,
    wait_users,
)

HEARTBEAT = "300ms"
KILL_BOUND_S = 15  # the contract (docs/cluster.md#presence: 6 s expected)


def flags(**kw):
    return dict(token_secret=SECRET, cluster_heartbeat=HEARTBEAT, **kw)


def across_nodes(a, b, chan):
    """A watcher on A; bob on B then on A too; an anonymous connection on B."""
    put(a, chan, {"presence": True})
    w = open_sub("sse", a, chan, token("w"), presence=True)
    subs = []
    try:
        assert next_event(w) == {"event": "join", "channel": chan, "user": "w"}
        info = {"name": "Bob"}
        subs.append(open_sub("ws", b, chan, token("bob", info)))
        assert next_event(w) == {"event": "join", "channel": chan, "user": "bob", "info": info}
        subs.append(open_sub("stream", a, chan, token("bob", info)))
        subs.append(open_sub("sse", b, chan, token()))
        for node in (a, b):  # either node reads the whole channel
            doc = wait_users(node, chan, {"w": 1, "bob": 2}, anonymous=1)
            assert doc["connections"] == 4 and doc["users"][0]["info"] == info, doc
        subs.pop(0).close()  # bob's connection on B: he stays on A
        wait_users(a, chan, {"w": 1, "bob": 1})
        subs.pop().close()
        wait_users(b, chan, {"w": 1, "bob": 1}, anonymous=0)
        expect_only_message(w, b, chan, "no-leave-yet")
        subs.pop().close()
        assert next_event(w) == {"event": "leave", "channel": chan, "user": "bob", "info": info}
        wait_users(b, chan, {"w": 1})
    finally:
        for s in subs:
            s.close()
        w.close()


def option_reaches_a_following_node(a, b, chan):
    """B follows the channel before A turns presence on: B's later subscriptions count."""
    put(a, chan, {})
    early = open_sub("sse", b, chan, token("early"))
    try:
        assert presence(b, chan, status=409)["error"] == "presence_off"
        put(a, chan, {"presence": True})

        def late_counted():
            s = open_sub("sse", b, chan, token("late"))
            try:
                return wait_until(lambda: "late" in users_of(presence(a, chan)), timeout=1,
                                  what="late counted") or True
            except AssertionError:
                return False
            finally:
                s.close()

        wait_until(late_counted, what="B's cache taking presence on")
        # the subscription made while it was off is not counted
        assert "early" not in users_of(presence(b, chan))
    finally:
        early.close()


def killed_node_users_leave(a, start_b, chan):
    """SIGKILL B: its users leave (events on A) within the bound, and A stops listing them.
    B starts once A's watcher is in, and is killed as soon as its users are seen: a node
    that dies before its lease's first renewal is swept too."""
    put(a, chan, {"presence": True})
    w = open_sub("stream", a, chan, token("watcher"), presence=True)
    subs = []
    try:
        assert next_event(w)["user"] == "watcher"
        b = start_b()
        subs += [open_sub("ws", b, chan, token("carol")), open_sub("sse", b, chan, token("carol")),
                 open_sub("sse", b, chan, token())]
        assert next_event(w)["user"] == "carol"
        start = time.monotonic()
        b.kill()
        ev = next_event(w, timeout=KILL_BOUND_S + 5)
        took = time.monotonic() - start
        assert ev == {"event": "leave", "channel": chan, "user": "carol"}, ev
        assert took <= KILL_BOUND_S, f"carol left {took:.1f} s after B was killed"
        print(f"presence convergence after SIGKILL: {took:.2f} s")
        wait_users(a, chan, {"watcher": 1}, anonymous=0)
    finally:
        for s in subs:
            s.close()
        w.close()


# ---- two nodes on one Redis --------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(redis, module_herald):
    return [module_herald(redis=redis.url, node_name=n, **flags()) for n in "AB"]


@pytest.mark.threads
def test_one_redis_presence_across_nodes(pair, chan):
    across_nodes(*pair, chan)


def test_one_redis_option_reaches_a_following_node(pair, chan):
    option_reaches_a_following_node(*pair, chan)


@pytest.mark.threads
def test_one_redis_killed_node_users_leave(redis, herald, chan):
    a = herald(redis=redis.url, node_name="KA", **flags())
    killed_node_users_leave(a, lambda: herald(redis=redis.url, node_name="KB", token_secret=SECRET),
                            chan)


def test_one_redis_keys_are_gone_when_everyone_left(pair, redis, chan):
    put(pair[0], chan, {"presence": True})
    s = open_sub("sse", pair[1], chan, token("gone"))
    wait_users(pair[0], chan, {"gone": 1})
    assert redis.cmd("HLEN", f"herald:{{{chan}}}:p") == 1
    s.close()
    wait_users(pair[0], chan, {})
    wait_until(lambda: redis.cmd("EXISTS", f"herald:{{{chan}}}:p", f"herald:{{{chan}}}:t",
                                 f"herald:{{{chan}}}:u") == 0, what="presence keys gone")


def test_one_redis_read_shows_only_info_a_node_writes(pair, redis, chan):
    """An info some other client of the Redis wrote is listed only if it is the compact JSON
    a node writes: "1.0e2" is JSON as long as jansson's "100.0" but not it, and is left out."""
    put(pair[0], chan, {"presence": True})
    s = open_sub("sse", pair[1], chan, token("mallory", {"n": 1}))
    try:
        doc = wait_users(pair[0], chan, {"mallory": 1})
        assert doc["users"][0]["info"] == {"n": 1}, doc
        for junk in ("1.0e2", '{"a":1,"a":1}'):
            redis.cmd("HSET", f"herald:{{{chan}}}:u", "mallory", junk)
            doc = presence(pair[0], chan)
            assert doc["users"] == [{"user": "mallory", "connections": 1}], (junk, doc)
    finally:
        s.close()


# ---- two nodes on a Redis Cluster --------------------------------------------------------


RC = pytest.mark.xdist_group("redis-cluster")


@pytest.fixture(scope="module")
def cnodes(rcluster, module_herald):
    return [module_herald(redis_cluster=rcluster.seeds, node_name=n, **flags()) for n in "AB"]


@RC
@pytest.mark.threads
def test_redis_cluster_presence_across_nodes(cnodes, chan):
    across_nodes(*cnodes, chan)


@RC
def test_redis_cluster_option_reaches_a_following_node(cnodes, chan):
    option_reaches_a_following_node(*cnodes, chan)


@RC
@pytest.mark.threads
def test_redis_cluster_killed_node_users_leave(rcluster, herald, chan):
    a = herald(redis_cluster=rcluster.seeds, node_name="KA", **flags())
    killed_node_users_leave(a, lambda: herald(redis_cluster=rcluster.seeds, node_name="KB",
                                              **flags()), chan)


@pytest.mark.threads
def test_one_redis_lost_data_is_written_again(redis_factory, herald, chan):
    """A Redis that restarts empty loses every node's entries: each node writes what it
    counts again (under a new identity) once the Redis is back, so presence recovers without
    the users doing anything; the old identities are swept, and nothing is counted twice."""
    r = redis_factory()
    a = herald(redis=r.url, node_name="RA", **flags())
    b = herald(redis=r.url, node_name="RB", **flags())
    put(a, chan, {"presence": True})
    subs = [open_sub("sse", b, chan, token("dave")), open_sub("ws", a, chan, token("dave")),
            open_sub("stream", b, chan, token())]
    try:
        wait_users(a, chan, {"dave": 2}, anonymous=1)
        r.restart(down_for=0.5)
        # the option went with the data: PUT again once the node is back
        wait_until(lambda: a.request("PUT", f"/api/channels/{chan}",
                                     '{"presence":true}').status in (200, 201),
                   what="a PUT through A after the restart")
        for node in (a, b):
            doc = wait_users(node, chan, {"dave": 2}, anonymous=1)
            assert doc["connections"] == 3, doc
        keys = r.cmd("HKEYS", f"herald:{{{chan}}}:p")
        assert len(keys) == 3, keys  # one identity per node, one entry each
    finally:
        for s in subs:
            s.close()
    wait_users(a, chan, {}, anonymous=0)
