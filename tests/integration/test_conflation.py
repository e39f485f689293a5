"""Delivery windows (channel options batch_ms and conflate; docs/api.md "Batching and
conflation"), checked with independent clients over real sockets on every transport.

- batch_ms: what a window gathered reaches each subscriber together — WebSocket, SSE
  and streaming subscribers read the whole window in one read (the server wrote it in
  one writev), a held long-poll gets it in one answer — in order, none lost, and not
  before the window closed.
- conflate "latest": only the newest message of a window is delivered; history keeps
  every message.
- resume: a client resuming with a cursor from a conflated channel gets the newest
  message of what it missed, so it ends in the same state as a live subscriber.
- two nodes sharing Redis: the options set through one node apply on the other.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis_util import RedisCluster

from helpers import (
    TRANSPORTS,
    WAIT,
    Poller,
    RawConn,
    RawWS,
    data_of,
    ids_of,
    numbered,
    poll,
    subscribe,
    wait_until,
    ws_accept,
    ws_handshake,
    ws_key,
)

pytestmark = pytest.mark.threads  # windows live on the workers: make test runs this under TSan too

WINDOW_MS = 700
POOL = ThreadPoolExecutor(8)  # held long-polls


def put(node, chan, status=None, **opts):
    r = node.request("PUT", f"/api/channels/{chan}", json.dumps(opts), {"Content-Type": "application/json"})
    if status is not None:
        assert r.status == status, (r.status, r.body)
    return r


def publish_burst(node, chan, n, prefix="m"):
    """n messages over one keep-alive connection, as fast as the server answers:
    (ids, monotonic time of the first publish)."""
    t0 = time.monotonic()
    return node.publish_many(chan, numbered(n, prefix)), t0


def window_of(kind, sub, n, timeout=WAIT):
    """The next n messages, and whether they came together: for the streaming
    transports, the rest were already read with the first (one write from the server
    reaches a loopback reader in one read); for long-poll, one answer held them all."""
    if kind == "poll":
        status, body = sub.held.result(timeout)
        assert status == 200, body
        sub.cursor = body["cursor"]
        return body["messages"], len(body["messages"]) == n
    first = sub.next_message(timeout)
    pending = bytes(sub.conn.buf)  # read together with the first message
    rest = sub.messages(n - 1, timeout) if n > 1 else []
    together = all(json.dumps(m["id"]).encode() in pending for m in rest)
    return [first] + rest, together


def hold_poll(sub):
    """Sends the long-poller's next request, which the server holds, and waits until it
    is held (the answer: sub.held.result())."""
    sub.held = POOL.submit(poll, sub.srv, sub.channels, sub.cursor, 10, conn=sub.conn)
    sub.srv.wait_subscribers(sub.channels)


def start(kind, node, chan):
    """A subscriber of chan on node, in place before the test publishes (a long-poll:
    its request held; the next one is sent with hold_poll)."""
    if kind == "poll":
        sub = Poller(node, chan, since=node.channel(chan)["last_id"] or "0")
        hold_poll(sub)
        return sub
    sub = subscribe(kind, node, chan)
    node.wait_subscribers(chan)
    return sub


def rearm(kind, sub):
    if kind == "poll":
        hold_poll(sub)


def assert_quiet(kind, sub, seconds):
    """Nothing more arrives for `seconds`."""
    if kind == "poll":
        assert not sub.held.done() or sub.held.result()[1]["messages"] == []
        time.sleep(seconds)
        assert not sub.held.done(), sub.held.result()
        return
    with pytest.raises(TimeoutError):
        sub.next_message(seconds)


# ---- options ------------------------------------------------------------------------------


def test_options_are_set_shown_and_bounded(server, chan):
    info = put(server, chan, 201, batch_ms=250, conflate="latest").json()
    assert (info["batch_ms"], info["conflate"]) == (250, "latest")
    info = server.channel(chan)
    assert (info["batch_ms"], info["conflate"]) == (250, "latest")
    # batch_ms 0 ends the window, and conflating with it
    info = put(server, chan, 200, batch_ms=0).json()
    assert (info["batch_ms"], info["conflate"]) == (0, "none")
    for bad, words in [({"batch_ms": 10001}, "from 0 to 10000"), ({"batch_ms": "5"}, "whole number"),
                       ({"conflate": "oldest", "batch_ms": 5}, '"latest" or "none"'),
                       ({"conflate": "latest"}, "batch_ms"), ({"conflate": "latest", "batch_ms": 0}, "batch_ms")]:
        r = put(server, chan, 400, **bad)
        assert r.json()["error"] == "bad_option" and words in r.json()["detail"], (bad, r.body)
    assert server.channel(chan)["batch_ms"] == 0  # a refused PUT changed nothing


def test_a_channel_without_options_has_no_window(server, chan):
    server.publish(chan, "x")
    info = server.channel(chan)
    assert (info["batch_ms"], info["conflate"]) == (0, "none")


# ---- batch_ms -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_batch_arrives_together_in_order_after_the_window(server, chan, kind):
    put(server, chan, 201, batch_ms=WINDOW_MS)
    with start(kind, server, chan) as sub:
        ids, t0 = publish_burst(server, chan, 5)
        got, together = window_of(kind, sub, 5)
        waited = time.monotonic() - t0
        assert ids_of(got) == ids and data_of(got) == numbered(5)
        assert together, f"{kind}: the window's messages came in separate writes"
        assert waited >= WINDOW_MS / 1000 * 0.9, f"delivered {waited:.3f} s after the first publish"
        # the next window opens with the next message, and loses nothing either
        rearm(kind, sub)
        ids2, _ = publish_burst(server, chan, 3, "n")
        got2, together2 = window_of(kind, sub, 3)
        assert ids_of(got2) == ids2 and together2


def test_every_subscriber_gets_every_message_of_many_windows(server, chan):
    """A publisher spread over several windows, two subscribers on both workers: the
    union of the windows is every message, once, in order."""
    put(server, chan, 201, batch_ms=100)
    subs = [subscribe("ws", server, chan) for _ in range(4)]
    try:
        server.wait_subscribers(chan, 4)
        ids = []
        for i in range(6):
            ids += server.publish_many(chan, numbered(5, f"w{i}-"))
            time.sleep(0.06)
        for s in subs:
            assert ids_of(s.messages(len(ids))) == ids
    finally:
        for s in subs:
            s.close()


def test_resume_from_a_batched_channel_replays_at_once(server, chan):
    put(server, chan, 201, batch_ms=5000)
    ids = server.publish_many(chan, numbered(4))
    t0 = time.monotonic()
    with subscribe("sse", server, chan, since=ids[0]) as sub:
        assert ids_of(sub.messages(3)) == ids[1:]
    assert time.monotonic() - t0 < 4, "a replay waited for a window"


def test_deleting_a_channel_delivers_its_open_window_first(server, chan):
    put(server, chan, 201, batch_ms=5000)
    with subscribe("ws", server, chan) as sub:
        server.wait_subscribers(chan)
        ids = server.publish_many(chan, numbered(2))
        assert server.request("DELETE", f"/api/channels/{chan}").status == 200
        got = sub.messages(3, timeout=3)
    assert ids_of(got[:2]) == ids
    assert got[2]["event"] == "closed"


# ---- conflate -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_conflate_delivers_only_the_newest_of_a_window(server, chan, kind):
    put(server, chan, 201, batch_ms=WINDOW_MS, conflate="latest")
    with start(kind, server, chan) as sub:
        ids, _ = publish_burst(server, chan, 5)
        got, _ = window_of(kind, sub, 1)
        assert ids_of(got) == ids[-1:] and data_of(got) == ["m4"]
        rearm(kind, sub)
        assert_quiet(kind, sub, WINDOW_MS / 1000 + 0.5)  # the other four never come
        nxt = server.publish(chan, "next")["id"]
        got, _ = window_of(kind, sub, 1)
        assert ids_of(got) == [nxt]
    # history keeps every message (a replay of a conflated channel is conflated too)
    info = server.channel(chan)
    assert info["messages"] == info["messages_total"] == 6 and info["last_id"] == nxt


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_resume_with_conflate_ends_where_a_live_subscriber_does(server, chan, kind):
    """A live subscriber and one that resumes from the same cursor after the burst end
    with the same newest message; the resuming one gets only that one of the range."""
    put(server, chan, 201, batch_ms=WINDOW_MS, conflate="latest")
    cursor = server.publish(chan, "before")["id"]
    with start(kind, server, chan) as live:
        ids, _ = publish_burst(server, chan, 5)
        live_got, _ = window_of(kind, live, 1)
    with subscribe(kind, server, chan, since=cursor) as resumed:
        resumed_got = resumed.messages(1)
        if kind != "poll":
            assert_quiet(kind, resumed, 1.0)
    assert ids_of(live_got) == ids_of(resumed_got) == ids[-1:]
    assert data_of(resumed_got) == ["m4"]


def test_resume_with_conflate_reports_a_gap_then_the_newest(herald, chan):
    srv = herald(history_size=3)
    put(srv, chan, 201, batch_ms=200, conflate="latest")
    ids = srv.publish_many(chan, numbered(6))
    with subscribe("ws", srv, chan, since=ids[0]) as sub:
        gap, newest = sub.messages(2)
    assert gap["event"] == "gap" and gap["oldest"] == ids[3]
    assert newest["id"] == ids[5]


# ---- two nodes sharing Redis ----------------------------------------------------------------


@pytest.mark.parametrize("conflate", ["none", "latest"])
def test_two_nodes_apply_the_window_set_through_either(redis, herald, chan, conflate):
    window_set_through_either(*(herald(redis=redis.url, node_name=n, cluster_heartbeat="500ms")
                                for n in "AB"), chan, conflate)


@pytest.mark.xdist_group("redis-cluster")
def test_redis_cluster_nodes_apply_the_window_set_through_either(herald, chan):
    """The window option and the held messages travel on the channel's shard (SPUBLISH)."""
    with RedisCluster(masters=3, replicas=0) as rc:
        nodes = [herald(redis_cluster=rc.seeds, node_name=n, cluster_heartbeat="500ms") for n in "AB"]
        for conflate in ("none", "latest"):
            window_set_through_either(*nodes, f"{chan}-{conflate}", conflate)


def window_set_through_either(a, b, chan, conflate):
    opts = {"batch_ms": WINDOW_MS} if conflate == "none" else {"batch_ms": WINDOW_MS, "conflate": "latest"}
    info = put(a, chan, 201, **opts).json()
    assert info["batch_ms"] == WINDOW_MS and info["conflate"] == conflate
    assert (b.channel(chan)["batch_ms"], b.channel(chan)["conflate"]) == (WINDOW_MS, conflate)
    with subscribe("ws", a, chan) as on_a, subscribe("ws", b, chan) as on_b:
        for node in (a, b):
            wait_until(lambda: node.stats("?channels=1").get("channel_subscribers", {}).get(chan, 0) == 1,
                       what="a subscriber on each node")
        ids, t0 = publish_burst(a, chan, 5)
        want = ids if conflate == "none" else ids[-1:]
        for sub in (on_a, on_b):
            got, together = window_of("ws", sub, len(want))
            assert ids_of(got) == want and together
        assert time.monotonic() - t0 >= WINDOW_MS / 1000 * 0.9
        # options changed through B reach A's cache, which already follows the channel
        put(b, chan, 200, batch_ms=0)
        wait_until(lambda: a.channel(chan)["batch_ms"] == 0, what="the option in Redis")
        late = b.publish(chan, "unbatched")["id"]
        assert on_a.next_message(WINDOW_MS / 1000 * 0.6)["id"] == late
    assert a.channel(chan)["messages"] == 6


def test_a_pattern_subscriber_ends_with_the_newest_of_a_conflated_channel(server, chan):
    """A pattern subscription takes a windowed channel's messages as they come (no
    window); its replay of a conflated channel is conflated, so a live and a resumed
    pattern subscriber end with the same newest message (docs/api.md)."""
    name = chan.replace("-", "_") + ".game"
    put(server, name, 201, batch_ms=WINDOW_MS, conflate="latest")
    cursor = server.publish(name, "before")["id"]
    pattern = name.rsplit(".", 1)[0] + ".*"
    with subscribe("ws", server, pattern) as live:
        ids, _ = publish_burst(server, name, 5)
        assert ids_of(live.messages(5)) == ids
    with subscribe("ws", server, pattern, since=cursor) as resumed:
        assert ids_of(resumed.messages(1)) == ids[-1:]
        assert_quiet("ws", resumed, 1.0)


# ---- app settings: the default window of an app's new channels --------------------------------

ADMIN = "conflation-admin-key"


def admin(node, method, path, body=None):
    return node.request(method, path, json.dumps(body) if body is not None else None,
                        {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})


class AppWS(RawWS):
    """A WebSocket subscriber of a (public) app's channel: /apps/{app}/ws."""

    def __init__(self, node, app, chan):
        self.conn = RawConn(node.port)
        key = ws_key()
        self.conn.send(ws_handshake(f"/apps/{app}/ws?channels={chan}", key))
        self.status, self.headers = self.conn.read_head()
        assert self.status == 101 and self.headers["sec-websocket-accept"] == ws_accept(key), self.status


def app_put(node, app, key, chan, **opts):
    return node.request("PUT", f"/apps/{app}/api/channels/{chan}", json.dumps(opts),
                        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def test_app_settings_give_new_channels_a_window(herald, chan):
    srv = herald(admin_key=ADMIN)
    r = admin(srv, "POST", "/admin/apps", {"name": "game", "plan": "unlimited", "subscribe": "public",
                                            "settings": {"conflate": "latest"}})
    assert r.status == 400 and "batch_ms" in r.json()["detail"], r.body
    r = admin(srv, "POST", "/admin/apps", {"name": "game", "plan": "unlimited", "subscribe": "public",
                                            "settings": {"batch_ms": WINDOW_MS, "conflate": "latest"}})
    assert r.status == 201, r.body
    app = r.json()
    assert (app["settings"]["batch_ms"], app["settings"]["conflate"]) == (WINDOW_MS, "latest")
    key = app["publish_key"]
    info = app_put(srv, "game", key, chan).json()
    assert (info["batch_ms"], info["conflate"]) == (WINDOW_MS, "latest")
    with AppWS(srv, "game", chan) as sub:
        ids = []
        for i in range(4):
            r = srv.request("POST", f"/apps/game/pub/{chan}", f"m{i}", {"Authorization": f"Bearer {key}"})
            ids.append(r.json()["id"])
        assert ids_of(sub.messages(1)) == ids[-1:]
    # a channel's own option wins; the default app is not affected
    assert app_put(srv, "game", key, chan, batch_ms=0).json()["batch_ms"] == 0
    server_info = put(srv, chan, 201).json()
    assert (server_info["batch_ms"], server_info["conflate"]) == (0, "none")
    # changing the setting changes what new channels get
    r = admin(srv, "PATCH", "/admin/apps/game", {"settings": {"batch_ms": None}})
    assert r.status == 200 and r.json()["settings"]["batch_ms"] is None, r.body
    assert r.json()["settings"]["conflate"] == "none"
    assert app_put(srv, "game", key, chan + "-2").json()["batch_ms"] == 0


def test_app_window_default_holds_on_two_nodes(redis, herald, chan):
    a = herald(redis=redis.url, node_name="A", cluster_heartbeat="500ms", admin_key=ADMIN)
    b = herald(redis=redis.url, node_name="B", cluster_heartbeat="500ms", admin_key=ADMIN)
    name = "w" + str(abs(hash(chan)) % 10**8)
    r = admin(a, "POST", "/admin/apps", {"name": name, "plan": "unlimited", "subscribe": "public",
                                          "settings": {"batch_ms": WINDOW_MS, "conflate": "latest"}})
    assert r.status == 201, r.body
    key = r.json()["publish_key"]
    wait_until(lambda: admin(b, "GET", f"/admin/apps/{name}").status == 200, what="the app on B")
    with AppWS(b, name, chan) as sub:
        ids = []
        for i in range(4):
            r = a.request("POST", f"/apps/{name}/pub/{chan}", f"m{i}", {"Authorization": f"Bearer {key}"})
            assert r.status == 201, r.body
            ids.append(r.json()["id"])
        assert ids_of(sub.messages(1)) == ids[-1:]
    info = b.request("GET", f"/apps/{name}/api/channels/{chan}", headers={"Authorization": f"Bearer {key}"}).json()
    assert (info["batch_ms"], info["conflate"], info["messages"]) == (WINDOW_MS, "latest", 4)
