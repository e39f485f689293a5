"""Cluster mode on one Redis (issue 4; guarantees in docs/cluster.md): herald nodes sharing a real
redis-server started by the test on a loopback port.

What is checked: a publish on any node reaches the subscribers of every node on every
transport, in order and once; a client resumes on another node from its cursor (one id
is a cursor across channels: ids come from one Redis counter); a node started late
serves the same history; gap events come from what Redis keeps; channel metadata and
cluster-wide subscriber counts are shared. Fault tests: Redis killed or shut down and
restarted under a steady publish stream, and a node killed with SIGKILL, while resuming
subscribers check that every acknowledged message arrives exactly once, in order.

The stream helpers (Follower, Publisher, check_delivery) are shared with
test_cluster_redis_cluster.py.
"""

import http.client
import json
import select
import signal
import threading
import time

import pytest

from helpers import (
    JSON_TYPE,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    SSE,
    TRANSPORTS,
    WAIT,
    RawWS,
    raw_request,
    ws_handshake,
    data_of,
    ids_of,
    numbered,
    poll,
    subscribe,
    sub_query,
    wait_until,
)

pytestmark = pytest.mark.threads  # make test runs this module under ThreadSanitizer too

# The nodes write their subscriber counts every CLUSTER_HEARTBEAT (--cluster-heartbeat,
# 5 s by default), and a count lives COUNT_TTL after it was written.
CLUSTER_HEARTBEAT = "500ms"
COUNT_TTL = 3 * 0.5
HEARTBEAT_WAIT = 8.0  # bound on waiting for a count to change


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(redis, module_herald):
    """Three herald nodes, A, B and C, on the module's Redis."""
    return [module_herald(redis=redis.url, node_name=name, cluster_heartbeat=CLUSTER_HEARTBEAT) for name in "ABC"]


AOF = ["--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture
def fresh_redis(redis_factory):
    """A Redis of the test's own with an append-only file fsynced on every write, so that a
    restart keeps everything that was acknowledged."""
    return redis_factory(AOF)


def killed(node):
    """SIGKILLs a herald node on purpose: its exit code is then not a failure."""
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(10)
    node.blamed = True  # conftest: skip the died-during-the-test and exit-code checks
    return node


def local_subscribers(node, channel):
    """This node's own subscribers of channel (GET /stats?channels=1): a subscriber is in
    place on that node (GET /api/channels counts the cluster and lags by a heartbeat)."""
    return node.stats("?channels=1").get("channel_subscribers", {}).get(channel, 0)


def wait_local(node, channel, n=1, kind=None):
    """Waits for n subscribers of channel on node (a long-poller with since=0 needs no wait:
    it polls later and gets the history)."""
    if kind == "poll":
        return
    wait_until(lambda: local_subscribers(node, channel) == n, what=f"{n} subscriber(s) of {channel} on {node.opts['node_name']}")


def gap(chan, since, oldest):
    return {"event": "gap", "channel": chan, "since": since, "oldest": oldest}


def closed(chan):
    return {"event": "closed", "channel": chan, "reason": "deleted"}


def messages_only(events):
    return [e for e in events if e.get("event") == "message"]


def poll_now(node, channels, since="0"):
    """An immediate long-poll (timeout=0), bounded at 5 s: (status, body)."""
    r = node.request("GET", f"/poll?channels={channels}&since={since}&timeout=0", timeout=5)
    return r.status, r.json()


def publish_retrying(node, channel, body, timeout=WAIT):
    """Publishes body, retrying while the node answers 503 (Redis unreachable); the id."""
    def attempt():
        r = node.request("POST", "/pub/" + channel, body, {"Content-Type": "text/plain"})
        assert r.status in (201, 503), (r.status, r.body)
        return r.status == 201 and r.json()["id"]
    return wait_until(attempt, timeout, what="a publish to be acknowledged", interval=0.05)


def resume(kind, node, channels, cursor):
    """A subscriber resuming from cursor: SSE with the Last-Event-ID header, WS and the
    NDJSON stream with since, long-poll with since."""
    if kind == "sse":
        return SSE(node, channels, headers={"Last-Event-ID": cursor})
    return subscribe(kind, node, channels, since=cursor)


# ---- a resuming subscriber and a retrying publisher (shared with the Redis Cluster tests) ----


class Follower(threading.Thread):
    """A subscriber that behaves like a client library: it records every message, and when
    its connection ends (or is refused) it reconnects with its cursor, moving on to the next
    node when one refuses connections. kind: "sse" (Last-Event-ID), "ws" (since) or "poll"."""

    def __init__(self, kind, nodes, channels, since="0"):
        super().__init__(daemon=True)
        self.kind, self.nodes, self.channels, self.cursor = kind, list(nodes), channels, since
        self.at = 0  # index of the node in use
        self.messages, self.controls, self.sessions, self.failures = [], [], [], []
        self.halt = threading.Event()
        self.error = None

    def __repr__(self):
        return f"Follower({self.kind} on {[n.opts.get('node_name') for n in self.nodes]})"

    def run(self):
        try:
            while not self.halt.is_set():
                node = self.nodes[self.at]
                self.sessions.append((node.opts.get("node_name"), self.cursor))
                try:
                    getattr(self, "_" + self.kind)(node)
                except ConnectionRefusedError as e:
                    self.failures.append(repr(e))
                    self.at = (self.at + 1) % len(self.nodes)
                except (OSError, EOFError, TimeoutError, AssertionError, ValueError, http.client.HTTPException) as e:
                    self.failures.append(repr(e))
                if not self.halt.is_set():
                    self.halt.wait(0.1)
        except BaseException as e:  # reported by stop()
            self.error = e

    def _take(self, doc):
        if doc.get("event") == "message":
            self.messages.append(doc)
            self.cursor = doc["id"]
        else:
            self.controls.append(doc)

    def _sse(self, node):
        headers = {"Last-Event-ID": self.cursor} if self.cursor is not None else {}
        with SSE(node, self.channels, headers=headers) as s:
            assert s.status == 200, (s.status, s.body)
            while not self.halt.is_set():
                try:
                    block = s.next_block(0.3)  # a timeout keeps the partial block buffered
                except TimeoutError:
                    continue
                if block is None:
                    return
                if block.data is not None:
                    self._take(block.json())
                if block.id is not None:
                    self.cursor = block.id  # Last-Event-ID, as a browser keeps it

    def _ws(self, node):
        with RawWS(node, sub_query(self.channels, since=self.cursor)) as ws:
            while not self.halt.is_set():
                if not ws.conn.buf and not select.select([ws.conn.sock], [], [], 0.3)[0]:
                    continue
                f = ws.recv_frame(WAIT)
                if f.opcode == OP_CLOSE:
                    return
                if f.opcode == OP_PING:
                    ws.send_frame(OP_PONG, f.payload)
                elif f.opcode == OP_TEXT:
                    self._take(f.json())

    def _poll(self, node):
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=WAIT)
        try:
            while not self.halt.is_set():
                status, body = poll(node, self.channels, since=self.cursor, timeout=1, conn=conn)
                assert status == 200, (status, body)
                for doc in body["messages"]:
                    self._take(doc)
                self.cursor = body["cursor"]
        finally:
            conn.close()

    def ids(self):
        return [m["id"] for m in self.messages]

    def has(self, ids):
        got = set(self.ids())
        return all(i in got for i in ids)

    def stop(self):
        self.halt.set()
        if self.ident is None:
            return  # never started
        self.join(WAIT)
        assert not self.is_alive(), f"{self} did not stop"
        if self.error:
            raise self.error


class Publisher(threading.Thread):
    """Publishes "n00000", "n00001", ... (prefix "n") to one channel, each after the previous
    one got its answer, round-robin over the nodes (skipping one that refuses connections).
    A body that is not acknowledged (503, connection lost) is retried until it is: `acked`
    lists the (id, body) of every 2xx, `uncertain` the bodies that also had an attempt
    without one. Runs as a thread until stop(), or inline with run() up to `limit` messages
    (`give_up` bounds run() in seconds)."""

    def __init__(self, nodes, channel, interval=0.02, limit=None, prefix="n", give_up=None):
        super().__init__(daemon=True)
        self.nodes, self.channel, self.interval, self.limit = list(nodes), channel, interval, limit
        self.prefix, self.give_up = prefix, give_up
        self.acked, self.uncertain, self.refusals, self.errors = [], set(), [], []
        self.halt = threading.Event()
        self.error = None

    def run(self):
        end = time.monotonic() + self.give_up if self.give_up else None
        try:
            i = turn = 0
            while not self.halt.is_set() and (self.limit is None or i < self.limit):
                if end and time.monotonic() > end:
                    raise TimeoutError(f"{i} of {self.limit} publishes acknowledged in {self.give_up} s: "
                                       f"{self.refusals[-3:]} {self.errors[-3:]}")
                body = f"{self.prefix}{i:05d}"
                node = self.nodes[turn % len(self.nodes)]
                turn += 1
                try:
                    r = node.request("POST", "/pub/" + self.channel, body, {"Content-Type": "text/plain"}, timeout=10)
                except (OSError, http.client.HTTPException) as e:
                    self.errors.append((time.monotonic(), node.opts.get("node_name"), repr(e)))
                    self.uncertain.add(body)
                    self.halt.wait(self.interval)
                    continue
                if r.status == 201:
                    self.acked.append((r.json()["id"], body))
                    i += 1
                else:
                    self.refusals.append((time.monotonic(), r.status, r.headers.get("content-type", ""), r.body))
                    self.uncertain.add(body)
                self.halt.wait(self.interval)
        except BaseException as e:  # reported by stop()
            self.error = e

    def acked_ids(self):
        return [i for i, _ in self.acked]

    def stop(self):
        self.halt.set()
        if self.ident is None:
            return  # never started
        self.join(WAIT)
        assert not self.is_alive(), "the publisher did not stop"
        if self.error:
            raise self.error


def told_lost(follower, msg_id):
    """Whether the follower got a gap event that covers msg_id (a message Redis lost)."""
    i = int(msg_id)
    return any(c.get("event") == "gap" and int(c["since"]) < i
               and (c["oldest"] is None or int(c["oldest"]) > i) for c in follower.controls)


def check_delivery(follower, pub, allow_gap=False, lossy=False):
    """Every acknowledged message reached the follower exactly once, in publish order;
    anything else it got is a retried body whose earlier attempt had no 2xx. `lossy`
    (Redis lost its data): an acknowledged message may be missing only if the follower
    was told with a gap event."""
    got = follower.messages
    ids = [int(m["id"]) for m in got]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    assert not dups, f"{follower}: duplicated ids {dups[:10]} (sessions {follower.sessions})"
    assert ids == sorted(ids), f"{follower}: ids out of order (sessions {follower.sessions})"
    by_id = {m["id"]: m["data"] for m in got}
    missing = [(i, b) for i, b in pub.acked if by_id.get(i) != b]
    if lossy:
        missing = [(i, b) for i, b in missing if not told_lost(follower, i)]
    assert not missing, f"{follower}: {len(missing)} acknowledged messages missing, first {missing[:5]} (sessions {follower.sessions})"
    acked = set(pub.acked_ids())
    extra = [m for m in got if m["id"] not in acked]
    assert all(m["data"] in pub.uncertain for m in extra), f"{follower}: unexpected messages {extra[:5]}"
    bodies = [m["data"] for m in got if m["id"] in acked]
    assert bodies == [b for i, b in pub.acked if i in by_id], f"{follower}: bodies out of publish order"
    if not allow_gap:
        assert not [c for c in follower.controls if c.get("event") == "gap"], follower.controls


def wait_delivered(followers, pub, timeout=15, lossy=False):
    ids = pub.acked_ids()

    def done(f):
        return all(i in f.ids() or (lossy and told_lost(f, i)) for i in ids)

    wait_until(lambda: all(done(f) for f in followers), timeout,
               what=f"{len(ids)} acknowledged messages at every follower "
                    + str({repr(f): len(f.messages) for f in followers}))


def check_refusals(pub):
    """Publishes refused during an outage got 503 with the JSON error, nothing else."""
    for _, status, ctype, body in pub.refusals:
        assert status == 503, (status, body)
        assert ctype.startswith("application/json"), ctype
        doc = json.loads(body)
        assert doc["error"] == "backend_unavailable" and doc["detail"], doc


# ---- cross-node delivery --------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_publish_on_one_node_reaches_subscribers_on_the_others(nodes, chan, kind):
    a, b, c = nodes
    with subscribe(kind, b, chan, since="0") as on_b, subscribe(kind, c, chan, since="0") as on_c:
        wait_local(b, chan, kind=kind)
        wait_local(c, chan, kind=kind)
        sent = a.publish(chan, "from A")["id"]
        sent_json = a.publish(chan, b'{"k": [1, 2]}', content_type="application/json")["id"]
        for sub in (on_b, on_c):
            got = sub.messages(2)
            assert ids_of(got) == [sent, sent_json]
            assert got[0]["channel"] == chan and got[0]["data"] == "from A"
            assert got[1]["data"] == {"k": [1, 2]}


def test_every_node_publishes_to_every_node(nodes, chan):
    subs = [subscribe("ws", n, chan, since="0") for n in nodes]
    try:
        for n in nodes:
            wait_local(n, chan)
        sent = [n.publish(chan, f"from {n.opts['node_name']}")["id"] for n in nodes]
        for sub in subs:
            got = sub.messages(3)
            assert ids_of(got) == sent
            assert data_of(got) == ["from A", "from B", "from C"]
    finally:
        for s in subs:
            s.close()


def test_envelopes_are_the_same_on_every_node(nodes, chan):
    """The id, time, event name and data of a message do not depend on the node."""
    a, b, c = nodes
    with SSE(b, chan) as on_b, SSE(c, chan) as on_c:
        wait_local(b, chan)
        wait_local(c, chan)
        a.publish(chan, "\u00e9t\u00e9 \U0001f600", headers={"Herald-Event": "greeting"})
        a.publish(chan, bytes([0xFF, 0x00, 0x80]), content_type="application/octet-stream")
        blocks = [[s.next_event(), s.next_event()] for s in (on_b, on_c)]
        assert [(x.id, x.event, x.data) for x in blocks[0]] == [(x.id, x.event, x.data) for x in blocks[1]]
        first, binary = (x.json() for x in blocks[0])
        assert (first["type"], first["data"]) == ("greeting", "\u00e9t\u00e9 \U0001f600")
        assert binary["encoding"] == "base64" and binary["data"] == "/wCA"
    assert a.history(chan) == b.history(chan) == c.history(chan)


def test_numbered_sequence_arrives_in_order_on_every_node(nodes, chan):
    """Publishes that alternate between the nodes, each after the previous answer, arrive
    in publish order with increasing ids everywhere."""
    subs = [subscribe(kind, n, chan, since="0") for n, kind in zip(nodes, ("sse", "ws", "stream"))]
    try:
        for n in nodes:
            wait_local(n, chan)
        bodies = numbered(150)
        sent = [nodes[i % 3].publish(chan, body)["id"] for i, body in enumerate(bodies)]
        assert [int(i) for i in sent] == sorted(int(i) for i in sent)
        for sub in subs:
            got = sub.messages(150)
            assert ids_of(got) == sent and data_of(got) == bodies
    finally:
        for s in subs:
            s.close()


def test_concurrent_publishers_on_two_nodes_give_one_order_everywhere(nodes, chan):
    """Two publishers at once on A and B: every node delivers the same total order."""
    a, b, c = nodes
    subs = [subscribe("sse", n, chan, since="0") for n in nodes]
    try:
        for n in nodes:
            wait_local(n, chan)
        results = {}
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(n.opts["node_name"],
                                    n.publish_many(chan, numbered(60, n.opts["node_name"]))))
                   for n in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)
        assert set(results) == {"A", "B"}
        orders = [sub.messages(120) for sub in subs]
        assert ids_of(orders[0]) == ids_of(orders[1]) == ids_of(orders[2])
        ids = [int(i) for i in ids_of(orders[0])]
        assert ids == sorted(set(ids))
        for name in "AB":  # each publisher's own messages keep their order
            assert [m["data"] for m in orders[0] if m["data"].startswith(name)] == numbered(60, name)
    finally:
        for s in subs:
            s.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_multi_channel_publish_reaches_a_subscriber_of_both_once(nodes, chan, kind):
    a, b, _ = nodes
    other = chan + "-2"
    with subscribe(kind, b, f"{chan},{other}", since="0") as both, subscribe(kind, b, other, since="0") as one:
        wait_local(b, chan, kind=kind)
        wait_local(b, other, 2, kind=kind)
        multi = a.publish_json({"channels": [chan, other], "data": {"n": 1}})["id"]
        after = a.publish(other, "after")["id"]  # a duplicate would come before it
        got = both.messages(2)
        assert ids_of(got) == [multi, after]
        assert got[0]["data"] == {"n": 1} and got[0]["channel"] in (chan, other)
        assert ids_of(one.messages(2)) == [multi, after]


def test_multi_channel_message_replays_once_on_another_node(nodes, chan):
    a, _, c = nodes
    other = chan + "-2"
    start = a.publish(chan, "start")["id"]
    multi = a.publish_json({"channels": [chan, other], "data": "both"})["id"]
    single = a.publish(other, "single")["id"]
    for kind in TRANSPORTS:
        with resume(kind, c, f"{chan},{other}", start) as sub:
            assert ids_of(sub.messages(2)) == [multi, single], kind


# ---- resume on another node -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sse", "ws", "poll", "stream"])
def test_resume_on_another_node_from_a_cursor(nodes, chan, kind):
    """A client that read some messages on A resumes on B with its cursor: no gap, no
    duplicate, in order (SSE Last-Event-ID, WS since, long-poll since)."""
    a, b, _ = nodes
    with subscribe(kind, a, chan, since="0") as first:
        wait_local(a, chan, kind=kind)
        ids = a.publish_many(chan, numbered(5))
        got = first.messages(3)
        assert ids_of(got) == ids[:3]
    cursor = got[-1]["id"]
    ids += b.publish_many(chan, numbered(3, "b"))  # published while the client is away
    with resume(kind, b, chan, cursor) as second:
        missed = second.messages(5)
        assert ids_of(missed) == ids[3:]
        assert data_of(missed) == ["m3", "m4", "b0", "b1", "b2"]
        assert all(m["event"] == "message" for m in missed)  # no gap event
        live = a.publish(chan, "live")["id"]
        assert second.next_message()["id"] == live  # nothing repeated before it


def test_ws_subscribe_op_resumes_on_another_node(nodes, chan):
    a, b, _ = nodes
    ids = a.publish_many(chan, numbered(4))
    with RawWS(b) as ws:
        ws.send_json({"op": "subscribe", "channel": chan, "since": ids[1], "ref": "r"})
        ack = ws.recv_json()
        assert (ack["event"], ack["channels"], ack["ref"]) == ("subscribed", [chan], "r")
        assert ids_of(ws.messages(2)) == ids[2:]
        live = a.publish(chan, "live")["id"]
        assert ws.recv_json()["id"] == live


@pytest.mark.parametrize("kind", ["sse", "ws", "poll"])
def test_one_cursor_resumes_several_channels_on_another_node(nodes, chan, kind):
    """One Redis: ids come from one counter, so one id is a cursor across channels."""
    a, _, c = nodes
    other = chan + "-2"
    ids = [a.publish(ch, f"{ch[-2:]}:{i}")["id"] for i in range(4) for ch in (chan, other)]
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    with resume(kind, c, f"{chan},{other}", ids[2]) as sub:
        got = sub.messages(5)
        assert ids_of(got) == ids[3:]


def test_a_node_started_later_serves_the_same_history(redis, nodes, herald, chan):
    a, b, _ = nodes
    ids = a.publish_many(chan, numbered(4)) + b.publish_many(chan, numbered(4, "b"))
    late = herald(redis=redis.url, node_name="late")
    assert late.history(chan) == a.history(chan)
    assert ids_of(late.history(chan)) == ids


@pytest.mark.parametrize("kind", ["sse", "ws", "poll"])
def test_a_node_started_later_resumes_old_cursors_without_a_gap(redis, nodes, herald, chan, kind):
    a, _, _ = nodes
    ids = a.publish_many(chan, numbered(6))
    late = herald(redis=redis.url, node_name="late")
    with resume(kind, late, chan, ids[1]) as sub:
        got = sub.messages(4)
        assert got[0]["event"] == "message", got[0]
        assert ids_of(got) == ids[2:]


# ---- gaps -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sse", "ws", "poll"])
def test_gap_when_the_cursor_is_older_than_the_channel_history(nodes, chan, kind):
    """The history size set on one node (PUT history_size) bounds what every node keeps."""
    a, b, c = nodes
    r = a.request("PUT", "/api/channels/" + chan, json.dumps({"history_size": 5}), JSON_TYPE)
    assert r.status == 201, r.body
    ids = b.publish_many(chan, numbered(12))
    with resume(kind, c, chan, ids[2]) as sub:
        got = sub.messages(6)
        assert got[0] == gap(chan, ids[2], ids[7])
        assert ids_of(got[1:]) == ids[7:]
    assert ids_of(a.history(chan)) == ids[7:]


@pytest.fixture
def short_history(redis, herald):
    """Two nodes with --history-size 3."""
    return [herald(redis=redis.url, node_name=n, history_size=3) for n in ("s1", "s2")]


@pytest.mark.parametrize("kind", ["sse", "ws", "poll"])
def test_gap_with_the_history_size_option(short_history, chan, kind):
    one, two = short_history
    ids = one.publish_many(chan, numbered(7))
    with resume(kind, two, chan, ids[1]) as sub:
        got = sub.messages(4)
        assert got[0] == gap(chan, ids[1], ids[4])
        assert ids_of(got[1:]) == ids[4:]
    with resume(kind, two, chan, ids[3]) as sub:  # just inside the window: no gap
        assert ids_of(sub.messages(3)) == ids[4:]


def test_gap_on_a_node_whose_cache_is_already_loaded(nodes, chan):
    """The node following the channel trims its cache as Redis trims the Stream."""
    a, b, _ = nodes
    r = a.request("PUT", "/api/channels/" + chan, json.dumps({"history_size": 4}), JSON_TYPE)
    assert r.status == 201, r.body
    with SSE(b, chan) as live:
        wait_local(b, chan)
        ids = a.publish_many(chan, numbered(9))
        assert ids_of(live.messages(9)) == ids
        status, body = poll_now(b, chan, since=ids[0])
        assert status == 200
        assert body["messages"][0] == gap(chan, ids[0], ids[5])
        assert ids_of(body["messages"][1:]) == ids[5:]


# ---- channel metadata -----------------------------------------------------------------------


def test_channel_created_on_one_node_is_the_same_on_every_node(nodes, chan):
    a, b, c = nodes
    opts = {"persistent": True, "ttl": 120, "history_size": 7, "history_ttl": 600}
    r = a.request("PUT", "/api/channels/" + chan, json.dumps(opts), JSON_TYPE)
    assert r.status == 201, r.body
    for n in (b, c):
        info = n.channel(chan)
        assert info is not None, n.opts["node_name"]
        assert {k: info[k] for k in opts} == opts
        assert info["expires"] is None  # persistent
    r = b.request("PUT", "/api/channels/" + chan, json.dumps({"history_size": 9}), JSON_TYPE)
    assert r.status == 200, r.body  # updated, not created
    assert a.channel(chan)["history_size"] == 9
    listed = c.get_json("/api/channels?prefix=" + chan)
    assert [x["name"] for x in listed["channels"]] == [chan]


def test_listing_skips_expired_channels_and_pages_to_the_end(nodes, chan):
    """Channels that expired leave the listing and its total; a page that had expired
    names in it is filled from the next names, so `next` stays null only at the end."""
    a, b, _ = nodes
    short = json.dumps({"ttl": 1, "history_ttl": 1})
    for name in ("a", "c"):  # expire after a second
        r = a.request("PUT", f"/api/channels/{chan}-{name}", short, JSON_TYPE)
        assert r.status == 201, r.body
    for name in ("b", "d", "e"):
        r = a.request("PUT", f"/api/channels/{chan}-{name}", json.dumps({"persistent": True}), JSON_TYPE)
        assert r.status == 201, r.body
    # Both: "c" was created a moment after "a" and may outlive it by as much.
    wait_until(lambda: all(b.request("GET", f"/api/channels/{chan}-{n}").status == 404
                           for n in "ac"), 5, what="the short channels to expire")
    pages, after = [], None
    while True:
        page = b.get_json(f"/api/channels?prefix={chan}-&limit=2" + (f"&after={after}" if after else ""))
        pages.append(([c["name"] for c in page["channels"]], page["total"]))
        after = page["next"]
        if after is None:
            break
        assert len(pages) < 5, pages
    names = [n for p, _ in pages for n in p]
    assert names == [f"{chan}-{x}" for x in "bde"], pages
    assert pages[-1][1] == 3, pages  # the total counts the channels that exist
    assert a.get_json(f"/api/channels?prefix={chan}-")["total"] == 3


def test_messages_published_on_one_node_show_in_info_on_another(nodes, chan):
    a, b, _ = nodes
    ids = a.publish_many(chan, numbered(3))
    info = b.channel(chan)
    assert (info["messages"], info["messages_total"]) == (3, 3)
    assert (info["oldest_id"], info["last_id"]) == (ids[0], ids[-1])
    assert chan in [x["name"] for x in b.get_json("/api/channels?prefix=" + chan)["channels"]]


def test_delete_on_one_node_closes_subscribers_on_every_node(nodes, chan):
    a, b, c = nodes
    keep = chan + "-keep"
    r = a.request("PUT", "/api/channels/" + chan, json.dumps({"persistent": True}), JSON_TYPE)
    assert r.status == 201, r.body
    a.publish(chan, "old")
    with SSE(a, chan) as sse_a, RawWS(b, f"?channels={chan},{keep}") as ws_b, SSE(c, f"{chan},{keep}") as sse_c:
        wait_local(a, chan)
        wait_local(b, chan)
        wait_local(c, chan)
        r = b.request("DELETE", "/api/channels/" + chan)
        assert (r.status, r.json()) == (200, {"deleted": chan})
        block = sse_a.next_event()
        assert (block.event, block.json()) == ("closed", closed(chan))
        sse_a.expect_end()  # no channel left
        assert ws_b.recv_json() == closed(chan)
        block = sse_c.next_event()
        assert (block.event, block.json()) == ("closed", closed(chan))
        sent = a.publish(keep, "still here")["id"]  # the other channel keeps flowing
        assert ws_b.recv_json()["id"] == sent
        assert sse_c.next_message()["id"] == sent
    for n in nodes:
        assert chan not in [x["name"] for x in n.get_json("/api/channels?prefix=" + chan)["channels"]]


def test_unknown_or_deleted_channel_info_is_404_on_every_node(nodes, chan):
    a, b, c = nodes
    for n in nodes:
        r = n.request("GET", "/api/channels/" + chan)
        assert r.status == 404 and r.error()["error"], (n.opts["node_name"], r.status, r.body)
        r = n.request("DELETE", "/api/channels/" + chan)
        assert r.status == 404, (n.opts["node_name"], r.status, r.body)
    a.publish(chan, "x")
    assert b.request("DELETE", "/api/channels/" + chan).status == 200
    for n in nodes:
        assert n.request("GET", "/api/channels/" + chan).status == 404, n.opts["node_name"]


def test_a_deleted_channel_comes_back_empty_on_every_node(redis, herald, chan):
    nodes = a, b, c = [herald(redis=redis.url, node_name=n) for n in ("A", "B", "C")]  # own nodes:
    # a request left waiting by a regression must not be blamed on another test at shutdown
    with SSE(b, chan):
        wait_local(b, chan)
        a.publish_many(chan, numbered(3))
        r = c.request("DELETE", "/api/channels/" + chan)
        assert r.status == 200, r.body
    wait_until(lambda: local_subscribers(b, chan) == 0, what="the closed stream to be gone")
    sent = c.publish(chan, "new life")["id"]
    for n in nodes:
        status, body = poll_now(n, chan)  # answers at once
        assert status == 200 and ids_of(body["messages"]) == [sent], (n.opts["node_name"], body)
    with SSE(b, chan) as again:  # and B follows the channel live again
        wait_local(b, chan)
        live = a.publish(chan, "live")["id"]
        assert again.next_message()["id"] == live


# ---- cluster-wide subscriber counts -----------------------------------------------------------


def wait_count(node, chan, n, timeout=HEARTBEAT_WAIT):
    wait_until(lambda: node.channel(chan)["subscribers"] == n, timeout,
               what=f"{n} subscribers in the info of {chan} on {node.opts['node_name']}")


@pytest.mark.timeout(45)
def test_channel_info_counts_subscribers_of_every_node(nodes, chan):
    a, b, c = nodes
    a.publish(chan, "exists")
    subs = [subscribe("sse", a, chan), subscribe("ws", a, chan), subscribe("sse", b, chan)]
    try:
        wait_local(a, chan, 2)
        wait_local(b, chan, 1)
        for n in nodes:  # after a heartbeat of each node
            wait_count(n, chan, 3)
        assert c.get_json("/api/channels?prefix=" + chan)["channels"][0]["subscribers"] == 3
        subs.pop(1).close()  # A: 2 -> 1
        subs += [subscribe("stream", c, chan), subscribe("ws", c, chan)]  # C: 0 -> 2
        wait_local(a, chan, 1)
        wait_local(c, chan, 2)
        wait_count(b, chan, 4)  # 1 + 1 + 2: only once both A and C have beaten again
    finally:
        for s in subs:
            s.close()


@pytest.mark.timeout(45)
def test_a_killed_node_stops_counting_within_three_heartbeats(redis, herald, chan):
    a, b = (herald(redis=redis.url, node_name=n, cluster_heartbeat=CLUSTER_HEARTBEAT) for n in ("A", "B"))
    a.publish(chan, "exists")
    with SSE(a, chan), SSE(b, chan), SSE(b, chan):
        wait_local(a, chan, 1)
        wait_local(b, chan, 2)
        wait_count(a, chan, 3)
        killed(b)
        started = time.monotonic()
        wait_count(a, chan, 1, COUNT_TTL + HEARTBEAT_WAIT)
        # counts live three heartbeats after a node's last one
        assert time.monotonic() - started <= COUNT_TTL + 1


@pytest.mark.timeout(45)
def test_channel_info_counts_subscribers_of_a_channel_never_published_to(nodes, chan):
    """A channel that only has subscribers (never published to, never PUT) exists while
    they are there: its info on every node counts the subscribers of every node, it is not
    listed and does not expire, and it is gone once they have left."""
    a, b, c = nodes
    with SSE(a, chan), SSE(b, chan):
        wait_local(a, chan)
        wait_local(b, chan)
        wait_until(lambda: a.request("GET", "/api/channels/" + chan).status == 200
                   and a.channel(chan)["subscribers"] == 2, HEARTBEAT_WAIT,
                   what="the channel's info with 2 subscribers")
        info = c.channel(chan)
        assert (info["messages"], info["last_id"], info["persistent"]) == (0, None, False), info
        assert info["expires"] is None, info
        assert c.get_json("/api/channels?prefix=" + chan)["channels"] == []
    for n in nodes:
        wait_until(lambda: n.request("GET", "/api/channels/" + chan).status == 404, COUNT_TTL + HEARTBEAT_WAIT,
                   what="the channel to be gone once its subscribers left")


def redis_traces(redis, prefix):
    """Keys and listing entries Redis holds about channels whose names start with prefix."""
    keys = [k for k in redis.cmd("KEYS", "herald:{" + prefix + "*")]
    listed = redis.cmd("ZRANGEBYLEX", "herald:channels", "[" + prefix, "[" + prefix + "\xff")
    return keys + listed


@pytest.mark.timeout(60)
def test_subscribing_to_made_up_channels_leaves_nothing_in_redis(redis, nodes, chan):
    """Issue 7: subscribing used to write each name into Redis with a 1 h expiry (and into
    the listing for good), so a client making up names filled a `noeviction` Redis. Now a
    channel that only has subscribers leaves nothing behind once they are gone."""
    a = nodes[0]
    conns = [RawWS(a) for _ in range(4)]
    try:
        for rnd in range(5):
            for k, ws in enumerate(conns):
                names = [f"{chan}-{rnd}-{k}-{i}" for i in range(50)]
                ws.send_json({"op": "subscribe", "channels": names})
                assert ws.recv_json()["event"] == "subscribed"
                ws.send_json({"op": "unsubscribe", "channels": names[:-1]})
                assert ws.recv_json()["event"] == "unsubscribed"
        assert local_subscribers(a, f"{chan}-4-3-49") == 1
    finally:
        for ws in conns:
            ws.close()
    wait_until(lambda: not redis_traces(redis, chan), COUNT_TTL + HEARTBEAT_WAIT,
               what="Redis to hold nothing about the channels", interval=0.1)
    assert a.request("GET", f"/api/channels/{chan}-0-0-0").status == 404
    assert a.get_json("/api/channels?prefix=" + chan)["channels"] == []


# ---- auto-create off ------------------------------------------------------------------------


@pytest.fixture
def strict(redis, herald):
    return [herald(redis=redis.url, node_name=n, no_auto_create=True) for n in ("strict1", "strict2")]


def test_no_auto_create_publish_to_an_unknown_channel_is_404_on_every_node(strict, chan):
    for n in strict:
        r = n.request("POST", "/pub/" + chan, "x", {"Content-Type": "text/plain"})
        assert (r.status, r.error()["error"]) == (404, "channel_not_found"), (n.opts["node_name"], r.body)
        r = n.request("POST", "/api/publish", json.dumps({"channel": chan, "data": 1}), JSON_TYPE)
        assert r.status == 404, r.body
    r = strict[0].request("PUT", "/api/channels/" + chan, "", {})
    assert r.status == 201, r.body
    with SSE(strict[1], chan) as sse:  # created on one node: known on the other
        assert sse.status == 200
        wait_local(strict[1], chan)
        sent = strict[1].publish(chan, "now it exists")["id"]
        assert sse.next_message()["id"] == sent
    assert strict[0].publish(chan, "and here")["id"]


def test_no_auto_create_multi_channel_publish_is_all_or_nothing(strict, chan):
    one, two = strict
    r = one.request("PUT", "/api/channels/" + chan, "", {})
    assert r.status == 201, r.body
    doc = {"channels": [chan, chan + "-missing"], "data": 1}
    r = two.request("POST", "/api/publish", json.dumps(doc), JSON_TYPE)
    assert (r.status, r.error()["error"]) == (404, "channel_not_found"), r.body
    assert one.history(chan) == [] and two.history(chan) == []


@pytest.mark.parametrize("kind", ["sse", "ws", "poll"])
def test_no_auto_create_subscribe_to_an_unknown_channel_is_404_on_every_node(strict, chan, kind):
    for n in strict:
        if kind == "poll":
            status, body = poll_now(n, chan)
        elif kind == "sse":
            with SSE(n, chan) as sse:
                status, body = sse.status, json.loads(sse.body)
        else:
            r = raw_request(n.port, ws_handshake(f"/ws?channels={chan}"), timeout=5)
            status, body = r.status, r.json()
        assert (status, body["error"]) == (404, "channel_not_found"), (n.opts["node_name"], status, body)


# ---- memory ---------------------------------------------------------------------------------


def rss_kib(node):
    with open(f"/proc/{node.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.timeout(60)
@pytest.mark.serial  # resident memory grows with what other tests' load leaves queued
def test_memory_stays_bounded_under_a_long_stream(redis, herald, chan):
    """20 MB of messages through two nodes whose caches keep 50 of them: the nodes' resident
    memory grows by far less than what went through."""
    a, b = (herald(redis=redis.url, node_name=n, history_size=50) for n in ("A", "B"))
    with open(f"/proc/{a.proc.pid}/maps") as f:
        if "libasan" in f.read():
            pytest.skip("resident memory says nothing under AddressSanitizer (quarantine)")
    followers = [Follower("sse", [b], chan), Follower("ws", [a], chan)]
    try:
        for f in followers:
            f.start()
        wait_until(lambda: local_subscribers(a, chan) == 1 and local_subscribers(b, chan) == 1, what="followers")
        body = "x" * 10_000
        warm = a.publish_many(chan, [body] * 200)
        wait_until(lambda: all(f.has(warm[-1:]) for f in followers), what="the warm-up")
        before = [rss_kib(n) for n in (a, b)]
        last = (a.publish_many(chan, [body] * 1000) + b.publish_many(chan, [body] * 1000))[-1]
        wait_until(lambda: all(f.has([last]) for f in followers), 20, what="the stream at every follower")
        after = [rss_kib(n) for n in (a, b)]
    finally:
        stop_all(followers)
    for name, x, y in zip("AB", before, after):
        assert y - x < 10_000, f"node {name}: resident memory grew from {x} KiB to {y} KiB for 20 MB of messages"


# ---- faults ---------------------------------------------------------------------------------


def followers_on(nodes, chan):
    """SSE and WS followers on each node (falling back to the others), a long-poller on the first."""
    out = []
    for i, _ in enumerate(nodes):
        order = nodes[i:] + nodes[:i]
        out += [Follower("sse", order, chan), Follower("ws", order, chan)]
    out.append(Follower("poll", nodes, chan))
    return out


def stop_all(threads):
    errors = []
    for t in threads:
        try:
            t.stop()
        except BaseException as e:  # stop them all before failing
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("kind", ["sse", "poll", "stream", "ws"])
def test_new_subscription_while_redis_is_down_is_503_on_every_transport(redis_factory, herald, chan, kind):
    r = redis_factory()
    node = herald(redis=r.url, node_name="A")
    r.stop(signal.SIGTERM)
    wait_until(lambda: node.stats()["cluster"]["redis"] == "down", what="the node to see Redis down")
    path = {"sse": "/sse", "poll": "/poll", "stream": "/stream", "ws": "/ws"}[kind] + "?channels=" + chan
    if kind == "ws":
        resp = raw_request(node.port, ws_handshake(path), timeout=5)
    else:
        resp = node.request("GET", path, timeout=5)
    assert (resp.status, resp.error()["error"]) == (503, "backend_unavailable"), (resp.status, resp.body)


@pytest.mark.timeout(30)
def test_a_live_subscriber_is_told_what_a_redis_that_lost_its_data_lost(redis_factory, herald, chan):
    """Redis loses its data while a node follows a channel (no persistence): a message it
    acknowledged just before may have reached no node. The node's refill after the
    outage says so to its live subscribers with a gap event, then goes on; nothing is
    skipped silently."""
    r = redis_factory(())
    a = herald(redis=r.url, node_name="A")
    with SSE(a, chan) as sse:
        wait_local(a, chan)
        first = a.publish(chan, "before")["id"]
        assert sse.next_message()["id"] == first
        r.cmd("FLUSHALL")  # the data set is gone, as after a restart without persistence
        r.cmd("CLIENT", "KILL", "TYPE", "pubsub")  # the bus reconnects: the node refills
        gap = sse.next_event()
        assert gap.event == "gap", gap
        doc = gap.json()
        assert doc["channel"] == chan and doc["since"] == first, doc
        after = publish_retrying(a, chan, "after")
        assert sse.next_message()["id"] == after


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigkill", "shutdown", "sigkill-no-persistence"])
def test_redis_restart_during_a_publish_stream(redis_factory, herald, chan, how):
    """Redis goes away for about 1.5 s and comes back while a publisher retries on 503:
    every acknowledged message reaches every subscriber once, in order; publishes during
    the outage get 503 backend_unavailable; both nodes keep running and exit 0."""
    lossy = how == "sigkill-no-persistence"
    r = redis_factory(() if lossy else AOF)
    nodes = [herald(redis=r.url, node_name=n, history_size=1000) for n in ("A", "B")]
    followers = followers_on(nodes, chan)
    pub = Publisher(nodes, chan)
    try:
        for f in followers:
            f.start()
        wait_until(lambda: all(local_subscribers(n, chan) >= 2 for n in nodes), what="followers in place")
        pub.start()
        wait_until(lambda: len(pub.acked) >= 30, what="30 acknowledged publishes")
        r.stop(signal.SIGTERM if how == "shutdown" else signal.SIGKILL)  # SIGTERM: a clean shutdown
        time.sleep(0.3)  # answers already on their way
        down_at = len(pub.acked)
        time.sleep(1.2)
        assert len(pub.acked) == down_at, "a publish was acknowledged while Redis was down"
        assert pub.refusals, "no publish was refused while Redis was down"
        r.start()
        wait_until(lambda: len(pub.acked) >= down_at + 40, 15, what="publishing to resume")
        pub.stop()
        # Without persistence, a message acknowledged as Redis died may reach nobody:
        # then every follower must have been told (a gap), never skipped silently.
        wait_delivered(followers, pub, lossy=lossy)
    finally:
        pub.stop()
        stop_all(followers)
    check_refusals(pub)
    for f in followers:
        check_delivery(f, pub, allow_gap=lossy, lossy=lossy)
    lost = {i for i in pub.acked_ids() if lossy and all(told_lost(f, i) for f in followers)}
    for n in nodes:  # the cache each node serves is complete too
        assert n.stats()["cluster"]["redis"] == "up"
        hist = [m for m in n.history(chan) if m["event"] == "message"]
        assert set(pub.acked_ids()) - lost <= set(ids_of(hist)), n.opts["node_name"]
    for n in nodes:
        assert n.terminate() == 0, n.log_tail()


@pytest.mark.timeout(60)
def test_new_subscribers_during_a_redis_outage_are_refused_then_served(fresh_redis, herald, chan):
    a, b = (herald(redis=fresh_redis.url, node_name=n) for n in ("A", "B"))
    ids = a.publish_many(chan, numbered(3))
    fresh_redis.stop(signal.SIGTERM)
    try:
        r = b.request("POST", "/pub/" + chan, "x", {"Content-Type": "text/plain"})
        assert r.status == 503 and r.error()["error"] == "backend_unavailable", r.body
        status, body = poll_now(b, chan)  # B cannot load the channel
        assert status == 503 and body["error"] == "backend_unavailable", (status, body)
        with SSE(b, chan) as sse:
            assert sse.status == 503 and json.loads(sse.body)["error"] == "backend_unavailable"
        assert b.get_json("/healthz", status=503)["status"] == "degraded"  # the LB may route around it
        assert b.stats()["cluster"]["redis"] == "down"
    finally:
        fresh_redis.start()
    wait_until(lambda: b.stats()["cluster"]["redis"] == "up", what="B to reconnect")
    wait_until(lambda: poll_now(b, chan)[0] == 200, what="B to serve the channel")
    assert ids_of(b.history(chan)) == ids


def test_redis_restart_without_persistence_gives_old_cursors_a_gap(redis_factory, herald, chan):
    r = redis_factory()
    a, b = (herald(redis=r.url, node_name=n) for n in ("A", "B"))
    ids = a.publish_many(chan, numbered(5))
    r.restart()  # SIGKILL; comes back empty
    new = publish_retrying(a, chan, "after the restart")
    # B reconnects on its own backoff (it may still answer 503 when A is back)
    wait_until(lambda: b.stats()["cluster"]["redis"] == "up", what="B to reconnect")
    status, body = poll_now(b, chan, since=ids[1])
    assert status == 200, body
    assert body["messages"][0]["event"] == "gap", body  # m2..m4 are gone
    assert ids_of(messages_only(body["messages"])) == [new]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sse", "ws"])
def test_node_killed_during_a_publish_stream(fresh_redis, herald, chan, kind):
    """A node dies (SIGKILL): its clients reconnect to the other node with their cursor and
    miss nothing that was acknowledged, with no duplicate."""
    a, b = (herald(redis=fresh_redis.url, node_name=n, history_size=1000) for n in ("A", "B"))
    followers = [Follower(kind, [a, b], chan) for _ in range(3)] + [Follower("poll", [a, b], chan)]
    witness = Follower(kind, [b], chan)  # on the surviving node throughout
    pub = Publisher([a, b], chan, interval=0.01)
    try:
        for f in followers + [witness]:
            f.start()
        wait_until(lambda: local_subscribers(a, chan) >= 3 and local_subscribers(b, chan) >= 1, what="followers")
        pub.start()
        wait_until(lambda: len(pub.acked) >= 40, what="40 acknowledged publishes")
        killed(a)
        at_kill = len(pub.acked)
        wait_until(lambda: len(pub.acked) >= at_kill + 60, 15, what="publishing to go on through B")
        pub.stop()
        wait_delivered(followers + [witness], pub)
    finally:
        pub.stop()
        stop_all(followers + [witness])
    for f in followers + [witness]:
        check_delivery(f, pub)
    for f in followers:
        assert [s[0] for s in f.sessions][:1] == ["A"] and "B" in [s[0] for s in f.sessions], f.sessions
    assert b.terminate() == 0, b.log_tail()


# ---- every node's figures (/stats?nodes=1, /stats/stream) ------------------------------------


def node_rows(node):
    """{name: figures} of every node, as node sees them."""
    return {n["node"]: n for n in node.stats("?nodes=1")["nodes"]}


def sse_of(rows, name):
    return rows[name]["connections"]["sse"] if name in rows else None


def test_every_node_sees_every_nodes_figures_and_a_dead_node_goes(redis_factory, herald, chan):
    r = redis_factory()
    one = herald(redis=r.url, node_name="one", cluster_heartbeat=CLUSTER_HEARTBEAT)
    two = herald(redis=r.url, node_name="two", cluster_heartbeat=CLUSTER_HEARTBEAT)
    wait_until(lambda: set(node_rows(one)) == {"one", "two"}, what="both nodes on node one")
    # a subscriber on node two shows in two's row, on both nodes
    with SSE(two, chan) as sse:
        wait_local(two, chan)
        for viewer in (one, two):
            # (a node asked for the first time answers with itself until it read the list)
            wait_until(lambda: (sse_of(node_rows(viewer), "one"), sse_of(node_rows(viewer), "two"))
                       == (0, 1), what="two's SSE subscriber in two's row, none in one's")
        one.publish(chan, "hello")
        assert sse.next_message()["data"] == "hello"
        # two delivered it: its latency and its rate, as one reads them from Redis
        wait_until(lambda: node_rows(one).get("two", {}).get("messages_out_per_second"),
                   what="two's deliveries per second on node one")
    rows = node_rows(one)
    assert {"connections", "messages_in_per_second", "uptime", "time"} <= set(rows["one"])
    # what each node wrote: one key, with a TTL of a few seconds
    assert 0 < r.cmd("TTL", "herald:{nodestats}:two") <= 3
    # a node that dies is gone from the list within its TTL (and the next read)
    killed(two)
    t0 = time.monotonic()
    wait_until(lambda: set(node_rows(one)) == {"one"}, timeout=8, what="two gone from the list")
    assert time.monotonic() - t0 < 5.5
