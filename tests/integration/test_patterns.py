"""Pattern subscriptions (docs/api.md#pattern-subscriptions): channels=X.* (one segment)
and X.** (any depth) on every transport, live and on resume (the matching channels'
histories merged in id order, a gap where one of them lost history), once per
connection with overlapping subscriptions, token grants that must cover the whole
pattern, the limits, and cluster mode on one Redis (a Redis Cluster refuses patterns:
test_cluster_redis_cluster.py).

Each test's channels are `{chan}.something`, so that its patterns see only its own."""

import signal
import time

import pytest

from helpers import (
    SSE,
    RawConn,
    http_get,
    TRANSPORTS,
    arun,
    data_of,
    ids_of,
    poll,
    recv_json,
    subscribe,
    sub_query,
    ws_connect,
    wait_until,
    ws_op,
)
from test_cluster import publish_retrying
from test_tokens import SECRET, token

pytestmark = pytest.mark.threads  # make test runs this module under ThreadSanitizer too


def envelopes(sub, n):
    return [(m["channel"], m["data"]) for m in sub.messages(n)]


def head(srv, chan):
    """A cursor at the server's newest id: a long-poller (which polls when asked for
    messages) then misses nothing published after it, like the streaming subscribers."""
    return srv.publish(f"{chan}-cursor", "c")["id"]


@pytest.fixture(scope="module")
def small(module_herald):
    """History of 3 messages per channel, and a pattern replay of at most 4 messages."""
    return module_herald(history_size=3, max_pattern_replay=4)


# ---- live -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_one_segment_pattern_gets_the_matching_channels_live(server, chan, kind):
    with subscribe(kind, server, f"{chan}.*", since=head(server, chan)) as sub:
        server.publish(f"{chan}.a", "1")
        server.publish(f"{chan}.a.deeper", "not one segment")
        server.publish(f"{chan}x.a", "another head")
        server.publish(chan, "the head itself")
        server.publish(f"{chan}.b", "2")
        # The envelope names the concrete channel; nothing else came in between.
        assert envelopes(sub, 2) == [(f"{chan}.a", "1"), (f"{chan}.b", "2")]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_any_depth_pattern_gets_every_channel_below(server, chan, kind):
    with subscribe(kind, server, f"{chan}.**", since=head(server, chan)) as sub:
        server.publish(f"{chan}.a", "1")
        server.publish(chan, "the head itself")
        server.publish(f"{chan}.a.b.c", "2")
        server.publish(f"{chan}.b", "3")
        assert envelopes(sub, 3) == [(f"{chan}.a", "1"), (f"{chan}.a.b.c", "2"), (f"{chan}.b", "3")]


def test_publish_counts_pattern_subscribers(server, chan):
    with subscribe("sse", server, f"{chan}.*") as sub:
        assert server.publish(f"{chan}.a", "1")["subscribers"] == 1
        assert server.publish(f"{chan}.a.b", "2")["subscribers"] == 0
        assert sub.next_message()["data"] == "1"


def test_websocket_subscribe_and_unsubscribe_ops_take_patterns(server, chan):
    async def run():
        async with ws_connect(server) as ws:
            ans = await ws_op(ws, {"op": "subscribe", "channels": [f"{chan}.*"], "ref": 1})
            assert ans["event"] == "subscribed" and ans["channels"] == [f"{chan}.*"], ans
            server.publish(f"{chan}.a", "1")
            m = await recv_json(ws)
            assert (m["channel"], m["data"]) == (f"{chan}.a", "1")
            ans = await ws_op(ws, {"op": "unsubscribe", "channels": [f"{chan}.*"]})
            assert ans["event"] == "unsubscribed", ans
            await ws_op(ws, {"op": "subscribe", "channels": [f"{chan}.z"]})
            server.publish(f"{chan}.a", "gone")
            server.publish(f"{chan}.z", "by name")
            m = await recv_json(ws)
            assert (m["channel"], m["data"]) == (f"{chan}.z", "by name")

    arun(run())


# ---- once per connection -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_overlapping_subscriptions_deliver_each_message_once(server, chan, kind):
    with subscribe(kind, server, f"{chan}.a,{chan}.*,{chan}.**", since=head(server, chan)) as sub:
        server.publish(f"{chan}.a", "by name and both patterns")
        server.publish(f"{chan}.b", "both patterns")
        server.publish(f"{chan}.b.c", "one pattern")
        server.publish_json({"channels": [f"{chan}.b", f"{chan}.c", f"{chan}.a"], "data": "three at once"})
        server.publish_json({"channels": [f"{chan}.b", f"{chan}.c"], "data": "two at once"})
        server.publish(f"{chan}.a", "end")
        got = envelopes(sub, 6)
        assert [d for _, d in got] == [
            "by name and both patterns",
            "both patterns",
            "one pattern",
            "three at once",
            "two at once",
            "end",
        ]
        assert got[3][0] == f"{chan}.a"  # the copy of the channel held by name


def test_pattern_added_to_a_connection_holding_a_channel_does_not_repeat_it(server, chan):
    async def run():
        async with ws_connect(server, sub_query(f"{chan}.a")) as ws:
            await ws_op(ws, {"op": "subscribe", "channels": [f"{chan}.*"]})
            server.publish(f"{chan}.a", "1")
            server.publish(f"{chan}.b", "2")
            assert [(await recv_json(ws))["data"] for _ in range(2)] == ["1", "2"]
            await ws_op(ws, {"op": "unsubscribe", "channels": [f"{chan}.a"]})
            server.publish(f"{chan}.a", "3")  # now through the pattern
            assert (await recv_json(ws))["data"] == "3"

    arun(run())


# ---- resume ---------------------------------------------------------------------------------------


def check_resume_merges(pub, srv, chan, kind):
    """Messages published on pub, resumed on srv (the same node, or another one on the same Redis)."""
    order = ["a", "b", "a", "x.y", "c", "b", "a"]
    ids = [pub.publish(f"{chan}.{c}", f"m{i}")["id"] for i, c in enumerate(order)]
    pub.publish(f"{chan}x.a", "another head")
    with subscribe(kind, srv, f"{chan}.*", since=ids[1]) as sub:
        missed = sub.messages(4)
        assert ids_of(missed) == [ids[2], ids[4], ids[5], ids[6]]
        assert [m["channel"] for m in missed] == [f"{chan}.a", f"{chan}.c", f"{chan}.b", f"{chan}.a"]
        live = pub.publish(f"{chan}.d", "live")["id"]
        assert sub.next_message()["id"] == live  # nothing repeated, nothing skipped


def check_gap_per_channel(pub, srv, chan, kind):
    """pub and srv keep 3 messages per channel."""
    first = pub.publish(f"{chan}.b", "b0")["id"]
    a = pub.publish_many(f"{chan}.a", ["a0", "a1", "a2", "a3", "a4"])  # keeps a2..a4
    b = pub.publish(f"{chan}.b", "b1")["id"]
    with subscribe(kind, srv, f"{chan}.*", since=first) as sub:
        got = sub.messages(5)
        assert got[0] == {"event": "gap", "channel": f"{chan}.a", "since": first, "oldest": a[2]}
        assert ids_of(got[1:]) == a[2:] + [b]  # b0 is the cursor: no gap on .b


def check_replay_cap(pub, srv, chan):
    """pub and srv replay at most 4 messages per pattern."""
    cursor = pub.publish(f"{chan}.a", "cursor")["id"]
    ids = []
    for i in range(3):
        ids += [pub.publish(f"{chan}.{c}", f"{c}{i}")["id"] for c in "ab"]
    with SSE(srv, f"{chan}.*", since=cursor) as sub:
        got = sub.messages(5)
        assert got[0] == {
            "event": "gap",
            "channel": f"{chan}.*",
            "since": cursor,
            "oldest": ids[2],
            "reason": "replay_limit",
        }
        assert ids_of(got[1:]) == ids[2:]  # the newest 4 of 6


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_resume_merges_the_matching_histories_in_id_order(server, chan, kind):
    check_resume_merges(server, server, chan, kind)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_gap_for_each_matching_channel_that_lost_history(small, chan, kind):
    check_gap_per_channel(small, small, chan, kind)


def test_replay_is_capped_with_a_gap_saying_so(small, chan):
    check_replay_cap(small, small, chan)


def lose_first_messages(srv, names):
    """Two rounds on each channel of a server that keeps 1 message a channel: the first is
    lost. Returns the cursor before them and the ids of the kept ones."""
    cursor = srv.publish("cursor", "c")["id"]
    for rnd in ("lost", "kept"):
        doc = srv.publish_json({"messages": [{"channels": [n], "data": f"{rnd}-{n}"} for n in names]})
        ids = [r["id"] for r in doc["results"]]
    return cursor, ids


def check_gaps_collapse(pub, srv, prefix, kind, nchannels):
    """nchannels channels under prefix each lost their first message (pub and srv keep 1 a
    channel); a resume on srv from before them."""
    names = [f"{prefix}.c{i:03d}" for i in range(nchannels)]
    cursor, ids = lose_first_messages(pub, names)
    with subscribe(kind, srv, f"{prefix}.*", since=cursor) as sub:
        gaps = 1 if nchannels > 64 else nchannels
        got = sub.messages(gaps + nchannels)
        if nchannels > 64:
            assert got[0] == {"event": "gap", "channel": f"{prefix}.*", "since": cursor, "oldest": None, "reason": "gap_limit"}
        else:
            assert sorted(g["channel"] for g in got[:gaps]) == names
            assert all(g["event"] == "gap" and "reason" not in g for g in got[:gaps]), got[:gaps]
        assert ids_of(got[gaps:]) == ids  # each once, in id order
        live = pub.publish(f"{prefix}.new", "live")["id"]
        assert sub.next_message()["id"] == live


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize("nchannels", [64, 65])
def test_gaps_of_a_resume_collapse_into_one_past_64_channels(herald, kind, nchannels):
    """A channel's gap each, up to 64 (as many as a connection can name); past that, one
    gap naming the pattern, reason gap_limit, instead of a gap per channel (64,000 of
    them made one resume's answer 4.9 MB). The messages that are left come as ever."""
    srv = herald(history_size=1)
    check_gaps_collapse(srv, srv, "g", kind, nchannels)


def test_resume_reads_at_most_1000_channels_and_says_so(herald):
    """One resume examines at most 1,000 channels under the pattern's first segment (it
    held the hub for 0.3 s with 64,000), and says with a gap naming the pattern that it
    did not read the rest; the same bound as on one Redis."""
    srv = herald()
    names = [f"w.c{i:04d}" for i in range(1001)]
    cursor = srv.publish("cursor", "c")["id"]
    ids = []
    for part in range(0, len(names), 250):
        doc = srv.publish_json({"messages": [{"channels": [n], "data": n} for n in names[part:part + 250]]})
        ids += [r["id"] for r in doc["results"]]
    status, body = poll(srv, "w.*", since=cursor, timeout=0)
    assert status == 200
    got = body["messages"]
    assert got[0] == {"event": "gap", "channel": "w.*", "since": cursor, "oldest": None, "reason": "replay_limit"}
    replayed = ids_of(got[1:])
    assert len(replayed) == 1000 and replayed == sorted(set(replayed)) and set(replayed) < set(ids)


def test_resume_reports_a_deleted_matching_channel(server, chan):
    cursor = server.publish(f"{chan}.a", "1")["id"]
    server.publish(f"{chan}.gone", "lost")
    assert server.request("DELETE", f"/api/channels/{chan}.gone").status in (200, 204)
    status, body = poll(server, f"{chan}.*", since=cursor, timeout=1)
    assert status == 200, body
    assert body["messages"][0]["event"] == "gap" and body["messages"][0]["channel"] == f"{chan}.gone"


def test_long_poll_cursor_of_a_pattern_continues_without_repeats(server, chan):
    ids = [server.publish(f"{chan}.{c}", c)["id"] for c in "abc"]
    status, body = poll(server, f"{chan}.*", since=ids[0], timeout=1)
    assert ids_of(body["messages"]) == ids[1:]
    nxt = server.publish(f"{chan}.d", "d")["id"]
    status, body = poll(server, f"{chan}.*", since=body["cursor"], timeout=5)
    assert ids_of(body["messages"]) == [nxt]


def test_sse_reconnect_with_last_event_id_resumes_the_pattern(server, chan):
    with SSE(server, f"{chan}.*") as sub:
        server.publish(f"{chan}.a", "1")
        sub.next_message()
        last = sub.last_id
    missed = [server.publish(f"{chan}.{c}", c)["id"] for c in "ba"]
    with SSE(server, f"{chan}.*", headers={"Last-Event-ID": last}) as sub:
        assert ids_of(sub.messages(2)) == missed


# ---- names and tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["{c}.**.x", "{c}.a*", "{c}.***", "{c}.{{sub}}.*"])
def test_malformed_patterns_are_refused(server, chan, bad):
    r = server.request("GET", "/sse" + sub_query(bad.format(c=chan)))
    assert r.status == 400 and r.json()["error"] == "bad_channel", r.body
    assert "pattern" in r.json()["detail"]


@pytest.mark.parametrize("pattern", ["**", "*", "*.a"])
def test_public_app_refuses_patterns_that_start_with_a_wildcard(server, pattern):
    r = server.request("GET", "/sse" + sub_query(pattern))
    assert r.status == 403, r.body
    doc = r.json()
    assert doc["error"] == "pattern_forbidden" and doc["channel"] == pattern, doc

    async def run():
        async with ws_connect(server) as ws:
            ans = await ws_op(ws, {"op": "subscribe", "channels": [pattern]})
            assert ans["event"] == "error" and ans["error"] == "pattern_forbidden", ans

    arun(run())


@pytest.fixture(scope="module")
def tsrv(module_herald):
    return module_herald(token_secret=SECRET, token_skew="0")


@pytest.mark.parametrize(
    "grant,pattern,allowed",
    [
        ("{c}.**", "{c}.*", True),
        ("{c}.**", "{c}.a.**", True),
        ("{c}.*", "{c}.*", True),
        ("{c}.*", "{c}.**", False),  # {c}.a.b is not granted
        ("{c}.a", "{c}.*", False),
        ("{c}.*.x", "{c}.*", False),
        ("**", "**", True),
        ("{c}.**", "*.a", False),
    ],
)
def test_token_grants_must_cover_the_whole_pattern(tsrv, chan, grant, pattern, allowed):
    tok = token([grant.format(c=chan)])
    pat = pattern.format(c=chan)
    r = tsrv.request("GET", "/poll" + sub_query(pat, timeout=0, token=tok))
    if allowed:
        assert r.status == 200, r.body
    else:
        assert r.status == 403 and r.json()["error"] == "channel_forbidden", r.body
        assert r.json()["channel"] == pat

    async def run():
        async with ws_connect(tsrv, "?token=" + tok) as ws:
            ans = await ws_op(ws, {"op": "subscribe", "channels": [pat]})
            assert ans["event"] == ("subscribed" if allowed else "error"), ans

    arun(run())


def test_token_pattern_subscriber_gets_messages(tsrv, chan):
    with SSE(tsrv, f"{chan}.*", token=token([f"{chan}.**"])) as sub:
        tsrv.publish(f"{chan}.a", "1")
        assert sub.next_message()["channel"] == f"{chan}.a"


def test_a_pattern_never_matches_a_users_channel(tsrv, chan):
    """A grant of everything and a pattern of everything still get no other user's
    messages: a user's channel is matched by no name (api.md, Users)."""
    with SSE(tsrv, "**", token=token(["**"], sub="alice")) as sub:
        tsrv.publish_json({"users": ["bob"], "data": "for bob"})
        tsrv.publish_json({"users": ["alice"], "channels": [f"{chan}.a"], "data": "for alice, once"})
        tsrv.publish(f"{chan}.b", "end")
        assert data_of(sub.messages(2)) == ["for alice, once", "end"]


# ---- limits ---------------------------------------------------------------------------------------


def test_patterns_per_connection_are_capped(herald, chan):
    srv = herald(max_patterns_per_conn=2)
    r = srv.request("GET", "/poll" + sub_query(f"{chan}.a.*,{chan}.b.*,{chan}.c.*", timeout=0))
    assert r.status == 400 and r.json()["error"] == "too_many_patterns", r.body
    assert "--max-patterns-per-conn" in r.json()["detail"]

    async def run():
        async with ws_connect(srv, sub_query(f"{chan}.a.*,{chan}.b.*")) as ws:
            ans = await ws_op(ws, {"op": "subscribe", "channels": [f"{chan}.a.*"]})  # held: no more
            assert ans["event"] == "subscribed", ans
            ans = await ws_op(ws, {"op": "subscribe", "channels": [f"{chan}.c.*"]})
            assert ans["event"] == "error" and ans["error"] == "too_many_patterns", ans
            srv.publish(f"{chan}.b.x", "still subscribed")
            assert (await recv_json(ws))["data"] == "still subscribed"

    arun(run())


def test_distinct_patterns_are_capped_but_existing_ones_stay_open(herald, chan):
    srv = herald(max_patterns=2)
    with SSE(srv, f"{chan}.a.*"), SSE(srv, f"{chan}.b.*"):
        r = srv.request("GET", "/sse" + sub_query(f"{chan}.c.*"))
        assert r.status == 503 and r.json()["error"] == "too_many_patterns", r.body
        with SSE(srv, f"{chan}.a.*") as again:  # a pattern that exists: no new one
            assert again.status == 200
            srv.publish(f"{chan}.a.x", "1")
            assert again.next_message()["data"] == "1"
    # A pattern goes with its last subscriber (once the server saw the streams end): room again.
    wait_until(
        lambda: srv.request("GET", "/poll" + sub_query(f"{chan}.c.*", timeout=0)).status == 200,
        what="a pattern slot freed",
    )


def test_stats_and_metrics_count_the_patterns_held(herald, chan):
    srv = herald()
    assert srv.stats()["patterns"] == 0
    with SSE(srv, f"{chan}.a.*"), SSE(srv, f"{chan}.a.*"), SSE(srv, f"{chan}.**"):
        assert srv.stats()["patterns"] == 2  # distinct ones
        assert "\nherald_patterns 2\n" in srv.request("GET", "/metrics").body.decode()
    wait_until(lambda: srv.stats()["patterns"] == 0, what="patterns gone with their subscribers")


def test_new_patterns_count_against_the_address(herald, chan):
    srv = herald(max_channels_per_ip=2, limit_loopback=True)
    with SSE(srv, f"{chan}.a.*"), SSE(srv, f"{chan}.b.*"):
        r = srv.request("GET", "/sse" + sub_query(f"{chan}.c.*"))
        assert r.status == 429 and r.json()["error"] == "too_many_channels_per_ip", r.body


# ---- cluster mode: one Redis ----------------------------------------------------------------------
# Two nodes on the module's Redis: A publishes, B subscribes (docs/cluster.md#pattern-subscriptions).
# The Redis Cluster, which refuses patterns, is tested in test_cluster_redis_cluster.py.


@pytest.fixture(scope="module")
def pair(redis, module_herald):
    return [module_herald(redis=redis.url, node_name=n) for n in "AB"]


@pytest.fixture(scope="module")
def small_pair(redis, module_herald):
    """History of 3 messages per channel and a pattern replay of at most 4, on both nodes."""
    return [module_herald(redis=redis.url, node_name=n, history_size=3, max_pattern_replay=4) for n in "AB"]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_one_redis_pattern_gets_live_messages_published_on_another_node(pair, chan, kind):
    a, b = pair
    a.publish(f"{chan}.old", "made before the subscribe")
    with subscribe(kind, b, f"{chan}.*", since=head(a, chan)) as sub:
        a.publish(f"{chan}.old", "1")
        a.publish(f"{chan}.new", "2")  # a channel made after the subscribe
        a.publish(f"{chan}.new.deeper", "not one segment")
        a.publish(f"{chan}x.a", "another head")
        b.publish(f"{chan}.b", "3")  # the subscriber's own node publishes too
        a.publish(f"{chan}.new", "4")
        assert envelopes(sub, 4) == [(f"{chan}.old", "1"), (f"{chan}.new", "2"), (f"{chan}.b", "3"), (f"{chan}.new", "4")]


def test_one_redis_live_pattern_without_a_cursor(pair, chan):
    a, b = pair
    with SSE(b, f"{chan}.**") as sub:  # its head answered: the subscription is in place
        assert sub.status == 200
        a.publish(f"{chan}.x.y.z", "deep")
        a.publish(chan, "the head itself")
        a.publish(f"{chan}.z", "end")
        assert envelopes(sub, 2) == [(f"{chan}.x.y.z", "deep"), (f"{chan}.z", "end")]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_one_redis_resume_on_another_node_merges_histories_in_id_order(pair, chan, kind):
    check_resume_merges(pair[0], pair[1], chan, kind)


def test_one_redis_resume_after_the_subscribers_node_restarts(redis, herald, chan):
    a = herald(redis=redis.url, node_name="A")
    b = herald(redis=redis.url, node_name="B")
    with SSE(b, f"{chan}.*") as sub:
        a.publish(f"{chan}.a", "seen")
        assert sub.next_message()["data"] == "seen"
        last = sub.last_id
    b.stop()
    # Meanwhile, on A: an existing channel, a new one, and others that do not match.
    missed = [a.publish(f"{chan}.a", "1")["id"], a.publish(f"{chan}.fresh", "2")["id"]]
    a.publish(f"{chan}.fresh.x", "no")
    missed.append(a.publish_json({"channels": [f"{chan}.b", f"{chan}.c"], "data": "3"})["id"])
    b.restart()  # same address; the node knows nothing of the pattern any more
    with SSE(b, f"{chan}.*", headers={"Last-Event-ID": last}) as sub:
        got = sub.messages(3)
        assert ids_of(got) == missed  # the two-channel message once
        assert [m["channel"] for m in got] == [f"{chan}.a", f"{chan}.fresh", f"{chan}.b"]
        live = a.publish(f"{chan}.d", "live")["id"]
        assert sub.next_message()["id"] == live


@pytest.mark.parametrize("kind", ["sse", "poll"])
def test_one_redis_gap_for_each_matching_channel_that_lost_history(small_pair, chan, kind):
    check_gap_per_channel(small_pair[0], small_pair[1], chan, kind)


def test_one_redis_replay_is_capped_with_a_gap_saying_so(small_pair, chan):
    check_replay_cap(small_pair[0], small_pair[1], chan)


def test_one_redis_name_subscription_wins_and_messages_come_once(pair, chan):
    a, b = pair
    with SSE(b, f"{chan}.a,{chan}.*,{chan}.**", since=head(a, chan)) as sub:
        a.publish(f"{chan}.a", "by name and both patterns")
        a.publish_json({"channels": [f"{chan}.b", f"{chan}.a"], "data": "two at once"})
        a.publish(f"{chan}.b.c", "one pattern")
        got = envelopes(sub, 3)
        assert got == [(f"{chan}.a", "by name and both patterns"), (f"{chan}.a", "two at once"), (f"{chan}.b.c", "one pattern")]


def test_one_redis_token_grant_must_cover_the_pattern(redis, herald, chan):
    b = herald(redis=redis.url, node_name="B", token_secret=SECRET, token_skew="0")
    r = b.request("GET", "/poll" + sub_query(f"{chan}.**", timeout=0, token=token([f"{chan}.*"])))
    assert r.status == 403 and r.json()["error"] == "channel_forbidden", r.body
    r = b.request("GET", "/poll" + sub_query(f"{chan}.*", timeout=0, token=token([f"{chan}.**"])))
    assert r.status == 200, r.body


def test_one_redis_patterns_stay_within_the_patterns_limit(redis, herald, chan):
    b = herald(redis=redis.url, node_name="B", max_patterns=1)
    with SSE(b, f"{chan}.a.*") as sub:
        assert sub.status == 200
        r = b.request("GET", "/sse" + sub_query(f"{chan}.c.*"))
        assert r.status == 503 and r.json()["error"] == "too_many_patterns", r.body


def test_one_redis_wildcard_first_pattern_with_a_token(redis, herald, chan):
    """`*.X` listens to every channel of the app on the bus (herald:{*}:m): the node keeps
    the matching ones only, and never a user's channel."""
    a, b = (herald(redis=redis.url, node_name=n, token_secret=SECRET, token_skew="0") for n in "AB")
    with SSE(b, f"*.{chan}", token=token(["**"], sub="alice")) as sub:
        assert sub.status == 200, sub.body
        a.publish(f"x.{chan}", "1")
        a.publish(f"x.{chan}.deeper", "two segments after x")
        a.publish_json({"users": ["bob"], "data": "for bob"})
        a.publish(f"y.{chan}", "2")
        assert envelopes(sub, 2) == [(f"x.{chan}", "1"), (f"y.{chan}", "2")]


@pytest.mark.timeout(30)
def test_one_redis_pattern_subscribers_are_told_what_a_bus_outage_may_have_lost(redis_factory, herald, chan):
    """The node's bus connection breaks: what was published meanwhile did not come, so
    when its subscription is back the pattern's subscribers get a gap from the last id
    the bus brought (never skipped silently), then messages again; a resume from that
    id fills it."""
    r = redis_factory(())
    a, b = (herald(redis=r.url, node_name=n) for n in "AB")
    with SSE(b, f"{chan}.*") as sub:
        first = a.publish(f"{chan}.a", "before")["id"]
        assert sub.next_message()["id"] == first
        r.cmd("CLIENT", "KILL", "TYPE", "pubsub")  # every node's bus reconnects
        ev = sub.next_event()
        assert ev.event == "gap", ev
        assert ev.json() == {"event": "gap", "channel": f"{chan}.*", "since": first, "oldest": None}
        after = publish_retrying(a, f"{chan}.b", "after")
        assert sub.next_message()["id"] == after
    with SSE(b, f"{chan}.*", since=first) as sub:
        assert ids_of(sub.messages(1)) == [after]


@pytest.mark.timeout(30)
def test_one_redis_new_pattern_while_redis_is_down_is_503_then_served(redis_factory, herald, chan):
    r = redis_factory(())
    a, b = (herald(redis=r.url, node_name=n) for n in "AB")
    r.stop()
    try:
        for path in ("/sse", "/poll"):
            resp = b.request("GET", path + sub_query(f"{chan}.*", since="1", timeout=0), timeout=5)
            assert resp.status == 503 and resp.json()["error"] == "backend_unavailable", resp.body
    finally:
        r.start()
    wait_until(lambda: b.stats()["cluster"]["redis"] == "up", what="B to reconnect")
    msg = publish_retrying(a, f"{chan}.a", "after")
    wait_until(lambda: poll(b, f"{chan}.*", since="1", timeout=0)[0] == 200, what="B to serve the pattern")
    status, body = poll(b, f"{chan}.*", since="1", timeout=0)
    assert [m["id"] for m in body["messages"] if m["event"] == "message"] == [msg], body


@pytest.mark.timeout(40)
@pytest.mark.parametrize("what", ["pattern", "channel"])
def test_one_redis_shutdown_with_a_subscribe_waiting_for_redis(redis_factory, herald, chan, what):
    """Redis stops answering (SIGSTOP) while a subscribe waits for its bus subscription
    (a pattern's PSUBSCRIBE, a channel's SUBSCRIBE); SIGTERM then ends the node cleanly:
    exit 0, and the parked connection freed (no leak report under ASan)."""
    r = redis_factory(())
    b = herald(redis=r.url, node_name="B", redis_timeout="10s", shutdown_timeout="2s")
    r.proc.send_signal(signal.SIGSTOP)
    try:
        with RawConn(b.port) as conn:  # the request only: its answer never comes
            conn.send(http_get("/sse" + sub_query(f"{chan}.*" if what == "pattern" else chan)))
            time.sleep(0.5)  # parked: Redis does not confirm the subscription
            assert b.terminate() == 0, b.log_tail()
    finally:
        r.proc.send_signal(signal.SIGCONT)
    assert b.sanitizer_report() is None, b.sanitizer_report()


@pytest.mark.parametrize("nchannels", [64, 65])
def test_one_redis_gaps_of_a_resume_collapse_into_one_past_64_channels(redis, herald, chan, nchannels):
    """As on a single node: a gap per channel that lost history, up to 64; past that one
    gap naming the pattern, reason gap_limit; the messages that are left come as ever."""
    a, b = (herald(redis=redis.url, node_name=n, history_size=1) for n in "AB")
    check_gaps_collapse(a, b, chan, "sse", nchannels)


@pytest.mark.timeout(60)
def test_one_redis_resume_over_more_channels_than_it_loads_says_so(small_pair, chan):
    """A resume loads the caches of at most 1,000 channels under a first segment: with
    1,001 it replays from the first 1,000 the index names and says first, with a gap
    naming the pattern, that it could not read them all."""
    a, b = small_pair
    cursor = a.publish(f"{chan}-cursor", "c")["id"]
    ids = [a.publish(f"{chan}.c{i:04d}", str(i))["id"] for i in range(1001)]
    with SSE(b, f"{chan}.*", since=cursor) as sub:
        got = sub.messages(6)
        gaps = [e for e in got if e["event"] == "gap"]
        assert {"event": "gap", "channel": f"{chan}.*", "since": cursor, "oldest": None, "reason": "replay_limit"} in gaps, got
        assert {"event": "gap", "channel": f"{chan}.*", "since": cursor, "oldest": ids[996], "reason": "replay_limit"} in gaps, got
        assert ids_of(got[2:]) == ids[996:1000]  # c1000 is not among the names read


def test_one_redis_websocket_subscribe_op_resumes_a_pattern_on_another_node(pair, chan):
    a, b = pair
    ids = [a.publish(f"{chan}.{c}", c)["id"] for c in "abc"]

    async def run():
        async with ws_connect(b) as ws:  # the op waits for the node's bus subscription and caches
            ans = await ws_op(ws, {"op": "subscribe", "channels": [f"{chan}.*"], "since": ids[0], "ref": 5})
            assert ans["event"] == "subscribed" and ans["ref"] == 5, ans
            got = [await recv_json(ws) for _ in range(2)]
            assert [m["id"] for m in got] == ids[1:]
            live = a.publish(f"{chan}.d", "d")["id"]
            assert (await recv_json(ws))["id"] == live

    arun(run())


def test_one_redis_resume_reports_a_deleted_channel_the_node_knew(pair, chan):
    """A matching channel deleted after the cursor lost what it had: a node that followed
    the pattern's first segment while the channel existed reports it (its Redis
    tombstone), as a single node does (docs/cluster.md#pattern-subscriptions)."""
    a, b = pair
    with SSE(b, f"{chan}.*") as sub:  # b follows the segment from here on
        cursor = a.publish(f"{chan}.a", "1")["id"]
        assert sub.next_message()["id"] == cursor
    a.publish(f"{chan}.gone", "lost")
    assert a.request("DELETE", f"/api/channels/{chan}.gone").status in (200, 204)
    status, body = poll(b, f"{chan}.*", since=cursor, timeout=1)
    assert status == 200, body
    assert body["messages"] == [{"event": "gap", "channel": f"{chan}.gone", "since": cursor, "oldest": None}]
