"""Cluster mode on a Redis Cluster (issue 4): herald nodes started with --redis-cluster on
a 3-master + 3-replica cluster created by the test (redis-cli --cluster create).

Each channel lives on the shard of its slot (keys herald:{ch}:*), its bus is sharded
pub/sub (SSUBSCRIBE/SPUBLISH on that shard's master) and its ids are per channel. Checked
here: delivery across channels on different shards, resume per channel on another node,
gaps and metadata, MOVED/ASK handling after a slot migration while subscribed, and a
failover (a master killed, its replica promoted) under a publish stream.

The failover test kills a master: it runs last, on the module's cluster.
"""

import json
import re
import time

import pytest

from helpers import (
    JSON_TYPE,
    SSE,
    TRANSPORTS,
    RawWS,
    data_of,
    ids_of,
    numbered,
    poll,
    sub_query,
    subscribe,
    wait_until,
)
from redis_util import RedisCluster, keyslot
from test_cluster import (
    Follower,
    Publisher,
    check_delivery,
    check_refusals,
    gap,
    local_subscribers,
    messages_only,
    node_rows,
    poll_now,
    resume,
    stop_all,
    wait_delivered,
    wait_local,
)

# Under TSan in make test too; one xdist worker runs the whole module, so its Redis
# servers (module fixtures) are started once.
pytestmark = [pytest.mark.threads, pytest.mark.xdist_group("redis-cluster")]


@pytest.fixture(scope="module")
def rcluster():
    """3 masters + 3 replicas on loopback ports, every process killed at the end."""
    with RedisCluster(masters=3, replicas=1) as c:
        yield c


@pytest.fixture(scope="module")
def nodes(rcluster, module_herald):
    """Two herald nodes, A and B, on the cluster."""
    return [module_herald(redis_cluster=rcluster.seeds, node_name=n) for n in "AB"]


def on_shards(cluster, base, count=3):
    """count channel names (base-0, base-1, ...) whose slots belong to different masters."""
    names, owners = [], set()
    for i in range(1000):
        name = f"{base}-{i}"
        owner = cluster.slot_owner(keyslot(name)).port
        if owner not in owners:
            owners.add(owner)
            names.append(name)
            if len(names) == count:
                return names
    raise AssertionError("no channel names on enough shards")


def shard_subscribers(cluster, channel):
    """{port: number of SSUBSCRIBE clients} of the channel's bus on every live node."""
    bus = f"herald:{{{channel}}}:m"
    return {n.port: n.cmd("PUBSUB", "SHARDNUMSUB", bus)[1] for n in cluster.live_nodes()}


# ---- sharded pub/sub delivery ---------------------------------------------------------------


def test_channels_on_different_shards_are_delivered_over_sharded_pubsub(rcluster, nodes, chan):
    a, b = nodes
    chans = on_shards(rcluster, chan)
    with subscribe("ws", b, ",".join(chans), since="0") as all_three:
        wait_local(b, chans[0])
        ids = [a.publish(ch, "to " + ch)["id"] for ch in chans]
        got = all_three.messages(3)
        # Each shard delivers its own: messages of different shards may cross on the way.
        assert sorted((m["channel"], m["id"]) for m in got) == sorted(zip(chans, ids))
        for ch in chans:
            owner = rcluster.slot_owner(keyslot(ch))
            # one SSUBSCRIBE, from B (A has no subscriber), on the owning master only
            assert shard_subscribers(rcluster, ch) == {n.port: int(n is owner) for n in rcluster.live_nodes()}
            assert owner.cmd("PUBSUB", "CHANNELS", "herald:*") == []  # no plain pub/sub
            assert owner.cmd("XLEN", f"herald:{{{ch}}}:h") == 1


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_publish_on_one_node_reaches_subscribers_on_the_other(rcluster, nodes, chan, kind):
    a, b = nodes
    chans = on_shards(rcluster, chan)
    with subscribe(kind, b, ",".join(chans), since="0") as sub:
        for ch in chans:
            wait_local(b, ch, kind=kind)
        sent = [a.publish(ch, f"{i}")["id"] for i, ch in enumerate(chans) for _ in range(2)]
        got = sub.messages(6)
        assert sorted(ids_of(got)) == sorted(sent)
        for ch in chans:  # in order within each channel
            assert ids_of([m for m in got if m["channel"] == ch]) == [
                i for i, c in zip(sent, [c for c in chans for _ in range(2)]) if c == ch]


def test_numbered_sequence_arrives_in_order_on_both_nodes(nodes, chan):
    a, b = nodes
    subs = [subscribe("sse", a, chan, since="0"), subscribe("ws", b, chan, since="0")]
    try:
        wait_local(a, chan)
        wait_local(b, chan)
        bodies = numbered(100)
        sent = [nodes[i % 2].publish(chan, body)["id"] for i, body in enumerate(bodies)]
        assert [int(i) for i in sent] == sorted(int(i) for i in sent)
        for sub in subs:
            got = sub.messages(100)
            assert ids_of(got) == sent and data_of(got) == bodies
    finally:
        for s in subs:
            s.close()


def test_multi_channel_publish_across_shards_reaches_a_subscriber_of_all_once(rcluster, nodes, chan):
    a, b = nodes
    chans = on_shards(rcluster, chan)
    with SSE(b, ",".join(chans)) as sse:
        for ch in chans:
            wait_local(b, ch)
        a.publish_json({"channels": chans, "data": "everywhere"})
        after = a.publish(chans[2], "after")["id"]
        first = sse.next_message()
        assert first["data"] == "everywhere"
        assert sse.next_message()["id"] == after  # no second copy before it


@pytest.fixture
def skewed(rcluster, herald):
    """Two nodes of the test's own (the skew tests leave ids from the future in their caches)."""
    return [herald(redis_cluster=rcluster.seeds, node_name=n) for n in ("skew-A", "skew-B")]


def push_ahead(cluster, channel, seconds=2.0):
    """Makes channel's last id `seconds` ahead of the clock, as after a publish by a node
    whose clock is that far ahead (ids are max(publisher's clock in µs, last id + 1))."""
    ahead = str(int(time.time() * 1e6 + seconds * 1e6))
    cluster.slot_owner(keyslot(channel)).cmd("SET", f"herald:{{{channel}}}:i", ahead)


def test_multi_channel_publish_is_delivered_once_even_when_a_shard_is_ahead(rcluster, skewed, chan):
    a, b = skewed
    chans = on_shards(rcluster, chan, 2)
    push_ahead(rcluster, chans[1])
    with SSE(b, ",".join(chans)) as sse:
        for ch in chans:
            wait_local(b, ch)
        a.publish_json({"channels": chans, "data": "skewed"})
        after = a.publish(chans[0], "after")["id"]
        assert sse.next_message()["data"] == "skewed"
        nxt = sse.next_message()
        assert nxt["id"] == after, f"a second copy: {nxt}"


@pytest.mark.parametrize("kind", ["sse", "ws", "stream"])
def test_a_channel_with_ids_ahead_does_not_hide_live_messages_of_another(rcluster, skewed, chan, kind):
    a, b = skewed
    ahead, other = on_shards(rcluster, chan, 2)
    push_ahead(rcluster, ahead, 30)
    with SSE(b, ahead) as follow:  # B follows a channel whose ids are 30 s ahead
        wait_local(b, ahead)
        a.publish(ahead, "from the future")
        follow.next_message()
        with subscribe(kind, b, other) as sub:  # a new subscriber of another channel on B
            wait_local(b, other)
            sent = a.publish(other, "now")["id"]
            assert sub.next_message(timeout=5)["id"] == sent
        before = a.publish(other, "missed")["id"]
        with resume(kind, b, other, before) as sub:  # and one resuming from a cursor
            wait_local(b, other)
            sent = a.publish(other, "live")["id"]
            assert sub.next_message(timeout=5)["id"] == sent


def vector(positions):
    """A per-channel cursor: the first position, then each next one as a signed difference."""
    first = int(positions[0])
    return ".".join([str(first)] + [str(int(p) - first) for p in positions[1:]])


class Session:
    """One subscriber session of `kind` on channels, and the cursor a client keeps: SSE
    the Last-Event-ID, long-poll the answer's cursor, WebSocket one built from the
    subscribed reply and the ids of what came on each channel."""

    def __init__(self, kind, node, chans, cursor=None):
        self.kind, self.node, self.chans, self.cursor = kind, node, chans, cursor
        names = ",".join(chans)
        if kind == "sse":
            self.sub = SSE(node, names, headers={"Last-Event-ID": cursor} if cursor else None)
        elif kind == "ws":
            self.sub = RawWS(node, sub_query(names, since=cursor) if cursor else "")
            if not cursor:
                self.sub.send_json({"op": "subscribe", "channels": chans})
                reply = self.sub.recv_json()
                assert reply["event"] == "subscribed", reply
                first = int(reply["cursor"].split(".")[0])
                self.pos = [first] + [first + int(d) for d in reply["cursor"].split(".")[1:]]
            else:
                first = int(cursor.split(".")[0])
                self.pos = [first] + [first + int(d) for d in cursor.split(".")[1:]]
        else:
            status, body = poll(node, names, since=cursor, timeout=0)
            assert status == 200, body
            self.pending, self.cursor = body["messages"], body["cursor"]

    def messages(self, n):
        if self.kind == "poll":
            while len(self.pending) < n:
                status, body = poll(self.node, ",".join(self.chans), since=self.cursor, timeout=5)
                assert status == 200, body
                self.pending += body["messages"]
                self.cursor = body["cursor"]
            got, self.pending = self.pending[:n], self.pending[n:]
            return got
        got = self.sub.messages(n)
        if self.kind == "sse":
            self.cursor = self.sub.last_id
        else:
            for m in got:
                i = self.chans.index(m["channel"])
                self.pos[i] = max(self.pos[i], int(m["id"]))
            self.cursor = vector(self.pos)
        return got

    def close(self):
        if self.kind != "poll":
            self.sub.close()


@pytest.mark.parametrize("kind", ["sse", "poll", "ws"])
def test_resume_across_shards_with_a_lagging_channel(rcluster, skewed, chan, kind):
    """Ids are per channel on a Redis Cluster. With one channel's ids 30 s ahead of the
    other's, a subscriber of both resumes with its cursor and gets exactly what it missed
    on each, whichever channel's message came last (one id as cursor would skip the
    lagging channel's messages, or repeat the other's)."""
    a, b = skewed
    chans = on_shards(rcluster, chan, 2)
    push_ahead(rcluster, chans[0], 30)
    first = Session(kind, b, chans)
    for ch in chans:
        wait_local(b, ch, kind=kind)
    a.publish(chans[0], "ahead-1")
    a.publish(chans[1], "lagging-1")
    assert sorted(data_of(first.messages(2))) == ["ahead-1", "lagging-1"]
    cursor = first.cursor
    first.close()
    for round_, order in enumerate(([1, 0], [0, 1])):
        sent = [f"r{round_}-{i}" for i in order]
        for i, text in zip(order, sent):
            a.publish(chans[i], text)
        again = Session(kind, b, chans, cursor)
        got = again.messages(2)
        assert sorted(data_of(got)) == sorted(sent), (cursor, got)
        marker = a.publish(chans[1], f"marker-{round_}")["id"]
        nxt = again.messages(1)[0]
        assert nxt["id"] == marker, f"a message twice, or one out of place: {nxt}"
        cursor = again.cursor
        again.close()


# ---- resume, gaps, metadata -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sse", "ws", "poll"])
def test_resume_per_channel_on_another_node(rcluster, nodes, chan, kind):
    """Ids are per channel on a Redis Cluster: a client resumes each channel from its own
    cursor, on any node."""
    a, b = nodes
    for ch in on_shards(rcluster, chan, 2):
        with subscribe(kind, a, ch, since="0") as first:
            wait_local(a, ch, kind=kind)
            ids = a.publish_many(ch, numbered(4))
            got = first.messages(2)
        ids += b.publish_many(ch, numbered(2, "b"))
        with resume(kind, b, ch, got[-1]["id"]) as second:
            missed = second.messages(4)
            assert ids_of(missed) == ids[2:] and data_of(missed) == ["m2", "m3", "b0", "b1"]
            live = a.publish(ch, "live")["id"]
            assert second.next_message()["id"] == live


def test_gap_when_the_cursor_is_older_than_the_channel_history(nodes, chan):
    a, b = nodes
    r = a.request("PUT", "/api/channels/" + chan, json.dumps({"history_size": 3}), JSON_TYPE)
    assert r.status == 201, r.body
    ids = a.publish_many(chan, numbered(7))
    with resume("sse", b, chan, ids[1]) as sub:
        got = sub.messages(4)
        assert got[0] == gap(chan, ids[1], ids[4]) and ids_of(got[1:]) == ids[4:]


def test_a_slot_that_lost_its_data_gives_old_cursors_a_gap(rcluster, nodes, chan):
    """A shard that lost the keys of a channel's slot (restarted empty, no replica) lost
    the slot's epoch too: the next publish starts a new one, and a node that loads the
    channel afterwards tells older cursors about the gap instead of skipping silently."""
    a, b = nodes
    ids = a.publish_many(chan, numbered(4))
    slot = keyslot(chan)
    owner = rcluster.slot_owner(slot)
    keys = owner.cmd("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    assert any(k.endswith(":e") for k in keys), keys  # the slot's epoch key lives there
    owner.cmd("DEL", *keys)
    new = a.publish(chan, "after the loss")["id"]
    status, body = poll_now(b, chan, since=ids[1])  # b has never loaded the channel
    assert status == 200, body
    assert body["messages"][0] == gap(chan, ids[1], new), body
    assert ids_of(messages_only(body["messages"])) == [new]


def test_channel_metadata_is_shared_and_delete_closes_subscribers_on_both_nodes(rcluster, nodes, chan):
    a, b = nodes
    chans = on_shards(rcluster, chan, 2)
    for ch in chans:
        r = a.request("PUT", "/api/channels/" + ch, json.dumps({"persistent": True, "history_size": 5}), JSON_TYPE)
        assert r.status == 201, r.body
        info = b.channel(ch)
        assert (info["persistent"], info["history_size"]) == (True, 5)
    listed = b.get_json("/api/channels?prefix=" + chan)
    assert [c["name"] for c in listed["channels"]] == sorted(chans)
    with SSE(a, chans[0]) as on_a, SSE(b, chans[0]) as on_b:
        wait_local(a, chans[0])
        wait_local(b, chans[0])
        r = b.request("DELETE", "/api/channels/" + chans[0])
        assert r.status == 200, r.body
        for sse in (on_a, on_b):
            block = sse.next_event()
            assert block.event == "closed" and block.json()["channel"] == chans[0]
    listed = a.get_json("/api/channels?prefix=" + chan)
    assert [c["name"] for c in listed["channels"]] == [chans[1]]


def test_no_auto_create_multi_channel_publish_across_shards_is_all_or_nothing(rcluster, herald, chan):
    one, two = (herald(redis_cluster=rcluster.seeds, node_name=n, no_auto_create=True) for n in ("s1", "s2"))
    known, missing = on_shards(rcluster, chan, 2)
    r = one.request("PUT", "/api/channels/" + known, "", {})
    assert r.status == 201, r.body
    r = two.request("POST", "/api/publish", json.dumps({"channels": [known, missing], "data": 1}), JSON_TYPE)
    assert (r.status, r.error()["error"]) == (404, "channel_not_found"), r.body
    assert one.history(known) == [], "a message answered 404 was published"


# ---- resharding -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_patterns_are_refused_clearly_on_a_redis_cluster(nodes, chan, kind):
    """Sharded pub/sub has no patterns and ids are per channel: a pattern could be neither
    complete live nor resumed exactly, so it is refused before anything is subscribed
    (docs/cluster.md#pattern-subscriptions); channels by name go on working."""
    a, b = nodes
    path = {"ws": "/ws", "sse": "/sse", "stream": "/stream", "poll": "/poll"}[kind]
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for since in (None, "1"):
        query = sub_query(f"{chan}.*,{chan}.a", since=since, timeout=0 if kind == "poll" else None)
        r = b.request("GET", path + query, headers=upgrade if kind == "ws" else None)
        assert r.status == 400, r.body
        doc = r.json()
        assert doc["error"] == "pattern_unsupported" and doc["detail"].endswith(f": {chan}.*"), doc
        assert "Redis Cluster" in doc["detail"] and "by name" in doc["detail"], doc
    with subscribe(kind, b, f"{chan}.a", since="0") as sub:  # by name: fine
        a.publish(f"{chan}.a", "by name")
        assert data_of(messages_only(sub.messages(1))) == ["by name"]


def test_a_websocket_pattern_op_is_refused_on_a_redis_cluster(nodes, chan):
    a, b = nodes
    with RawWS(b, sub_query(f"{chan}.a")) as ws:
        ws.send_json({"op": "subscribe", "channels": [f"{chan}.**"], "ref": 3})
        ans = ws.recv_json()
        assert ans["event"] == "error" and ans["error"] == "pattern_unsupported" and ans["ref"] == 3, ans
        a.publish(f"{chan}.a", "still subscribed")
        assert ws.next_message()["data"] == "still subscribed"


@pytest.mark.timeout(60)
def test_messages_keep_flowing_after_the_channel_slot_migrates(rcluster, nodes, chan):
    """The channel's slot moves to another master while A and B have subscribers: publishes
    get MOVED (and ASK while the slot is half-moved) and are followed, the nodes resubscribe
    on the new owner, and nothing acknowledged is lost."""
    a, b = nodes
    slot = keyslot(chan)
    followers = [Follower("sse", [a], chan), Follower("ws", [b], chan), Follower("poll", [a], chan)]
    try:
        for f in followers:
            f.start()
        wait_until(lambda: local_subscribers(a, chan) >= 1 and local_subscribers(b, chan) >= 1, what="followers")
        pub = Publisher([a, b], chan, limit=10, prefix="before", give_up=15)
        pub.run()  # both nodes learn the current owner
        assert pub.error is None, pub.error
        source = rcluster.slot_owner(slot)
        target = next(m for m in rcluster.master_nodes() if m is not source)
        steps = [pub]

        def publish(limit, prefix):
            step = Publisher([a, b], chan, limit=limit, prefix=prefix, give_up=15)
            step.acked, step.uncertain = pub.acked, pub.uncertain  # one log for the whole test
            step.run()
            steps.append(step)

        rcluster.migrate_slot(slot, target, during=lambda: publish(4, "half-moved"))
        assert target.cmd("XLEN", f"herald:{{{chan}}}:h") >= 10
        publish(20, "after")
        for step in steps:
            assert step.error is None, step.error
        wait_until(lambda: shard_subscribers(rcluster, chan)[target.port] == 2, 15,
                   what="both nodes to SSUBSCRIBE on the new owner")
        wait_delivered(followers, pub)
    finally:
        stop_all(followers)
    assert len(pub.acked) == 34
    for f in followers:
        check_delivery(f, pub)
    for n in nodes:
        assert set(pub.acked_ids()) <= set(ids_of(n.history(chan))), n.opts["node_name"]


def test_a_two_channel_message_is_the_first_channels_live_and_on_resume(rcluster, nodes, chan):
    """The copies of a message published to channels on two shards come from two shards;
    a connection that holds both gets it once, and as the first channel's in the
    publisher's order, like with one Redis: live (the node stores the copies in that
    order), and when it resumes, whatever the order of its subscribe."""
    a, b = nodes
    first, second = on_shards(rcluster, chan, 2)
    with SSE(b, f"{second},{first}") as sse:
        wait_local(b, first)
        wait_local(b, second)
        ids = [a.publish_json({"channels": [first, second], "data": i})["id"] for i in range(20)]
        live = sse.messages(20)
    assert [m["data"] for m in live] == list(range(20))
    assert [m["channel"] for m in live] == [first] * 20, [m["channel"] for m in live]
    status, body = poll_now(b, f"{second},{first}")
    assert status == 200, body
    replay = body["messages"]
    assert [m["id"] for m in replay] == ids
    assert [m["channel"] for m in replay] == [first] * 20, [m["channel"] for m in replay]


# ---- topology -------------------------------------------------------------------------------


@pytest.mark.xdist_group("redis-cluster-ranges")  # a cluster of its own: may run beside the others
def test_every_slot_is_routed_when_cluster_slots_lists_more_than_64_ranges(herald, chan):
    """CLUSTER SLOTS lists one range per run of slots with one owner, node by node; a
    cluster whose slots were moved one by one lists many. The router kept the first 64
    and sent nothing to the slots of the others (publishes got 503)."""
    with RedisCluster(masters=3, replicas=0) as c:
        first = c.slot_owner(0)
        other = next(n for n in c.master_nodes() if n is not first)
        for slot in range(0, 140, 2):  # 70 single slots to another master
            c.migrate_slot(slot, other)
        assert len(c.live_nodes()[0].cmd("CLUSTER", "SLOTS")) > 64
        node = herald(redis_cluster=c.seeds, node_name="A")
        names = [f"{chan}-{i}" for i in range(5000)]
        picks = [next(n for n in names if keyslot(n) >= 140 and c.master_of(n) is m) for m in (first, other)]
        picks.append(next(n for n in names if keyslot(n) < 140 and c.master_of(n) is first))
        for name in picks:
            r = node.request("POST", "/pub/" + name, "hello", {"Content-Type": "text/plain"})
            assert r.status == 201, (name, keyslot(name), r.status, r.body)
        assert node.stats()["cluster"]["redis"] == "up"
        assert node.terminate() == 0


def redis_states(node):
    """The "redis: up|degraded|down" lines of node's log, in order."""
    return re.findall(r" redis: (up|degraded|down)\b", node.log())


def test_the_log_says_what_stats_says_about_redis(rcluster, herald, chan):
    """The log said "redis: degraded" at start-up (and whenever a channel was being
    subscribed) but not the "up" that followed, which /stats showed."""
    node = herald(redis_cluster=rcluster.seeds, node_name="C")
    wait_until(lambda: node.stats()["cluster"]["redis"] == "up", what="redis up in /stats")
    streams = []
    try:
        for name in on_shards(rcluster, chan):  # new subscriptions on every shard
            streams.append(SSE(node, name))
            wait_local(node, name)
        assert node.stats()["cluster"]["redis"] == "up"
        assert redis_states(node) == ["up"], node.log_tail(10)
    finally:
        for s in streams:
            s.close()


# ---- failover (kills a master: keep last) ---------------------------------------------------


@pytest.mark.timeout(90)
def test_failover_under_a_publish_stream(rcluster, nodes, chan):
    """The master of the channel's slot is killed; its replica is promoted. Publishing resumes
    within 15 s (503 meanwhile) and every acknowledged message reaches every subscriber once,
    in order; the nodes do not crash."""
    a, b = nodes
    followers = [Follower(kind, [n], chan) for n in nodes for kind in ("sse", "ws")]
    followers.append(Follower("poll", [a, b], chan))
    pub = Publisher([a, b], chan, interval=0.02)
    try:
        for f in followers:
            f.start()
        wait_until(lambda: local_subscribers(a, chan) >= 2 and local_subscribers(b, chan) >= 2, what="followers")
        pub.start()
        wait_until(lambda: len(pub.acked) >= 30, what="30 acknowledged publishes")
        victim = rcluster.kill_master_of(chan, wait_failover=False)
        killed_at, before = time.monotonic(), len(pub.acked)
        wait_until(lambda: len(pub.acked) > before + 5, 20, what="publishing to resume after the failover")
        resumed_after = time.monotonic() - killed_at
        assert rcluster.slot_owner(keyslot(chan)) is not victim
        wait_until(lambda: len(pub.acked) >= before + 40, 15, what="40 more publishes")
        pub.stop()
        wait_delivered(followers, pub, timeout=20)
    finally:
        pub.stop()
        stop_all(followers)
    assert resumed_after < 15, f"publishing resumed {resumed_after:.1f} s after the kill"
    check_refusals(pub)
    for f in followers:
        check_delivery(f, pub)
    for n in nodes:
        assert n.stats()["cluster"]["redis"] in ("up", "degraded")


def test_every_node_sees_every_nodes_figures_on_a_redis_cluster(rcluster, nodes, chan):
    """Every node's key carries one hash tag: one MGET on one shard reads them all."""
    a, b = nodes
    with SSE(b, chan) as sse:
        wait_local(b, chan)
        for viewer in nodes:
            wait_until(lambda: {n: r["connections"]["sse"] for n, r in node_rows(viewer).items()}
                       == {"A": 0, "B": 1}, what="both nodes, B's subscriber in B's row")
        a.publish(chan, "x")
        assert sse.next_message()["data"] == "x"
