"""Delivery guarantees (docs/api.md#cursors-resume-and-gaps) on every transport:
resume inside history is exact, a cursor older than history gets an explicit gap
event first, and a message published to several held channels arrives once."""

import threading

import pytest

from helpers import SSE, TRANSPORTS, data_of, ids_of, numbered, poll, subscribe, wait_until

pytestmark = pytest.mark.threads  # make test runs this module under ThreadSanitizer too


@pytest.fixture(scope="module")
def small(module_herald):
    """History of 3 messages per channel."""
    return module_herald(history_size=3)


def gap(chan, since, oldest):
    return {"event": "gap", "channel": chan, "since": since, "oldest": oldest}


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_resume_inside_history_is_exact(server, chan, kind):
    ids = server.publish_many(chan, numbered(6))
    with subscribe(kind, server, chan, since=ids[2]) as sub:
        missed = sub.messages(3)
        assert ids_of(missed) == ids[3:]
        assert [m["data"] for m in missed] == ["m3", "m4", "m5"]
        live = server.publish(chan, "m6")["id"]
        assert sub.next_message()["id"] == live  # nothing repeated before it


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_resume_at_the_head_gets_only_new_messages(server, chan, kind):
    ids = server.publish_many(chan, numbered(3))
    with subscribe(kind, server, chan, since=ids[-1]) as sub:
        live = server.publish(chan, "new")["id"]
        assert sub.next_message()["id"] == live


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_cursor_older_than_history_gets_a_gap_first(small, chan, kind):
    ids = small.publish_many(chan, numbered(10))
    with subscribe(kind, small, chan, since=ids[0]) as sub:
        got = sub.messages(4)
        assert got[0] == gap(chan, ids[0], ids[7])
        assert ids_of(got[1:]) == ids[7:]
        live = small.publish(chan, "live")["id"]
        assert sub.next_message()["id"] == live


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_cursor_just_inside_the_window_gets_no_gap(small, chan, kind):
    ids = small.publish_many(chan, numbered(10))
    with subscribe(kind, small, chan, since=ids[6]) as sub:  # ids[7..9] are retained
        assert ids_of(sub.messages(3)) == ids[7:]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_cursor_from_before_the_server_started_gets_a_gap(server, chan, kind):
    ids = server.publish_many(chan, numbered(2))
    with subscribe(kind, server, chan, since="1") as sub:
        got = sub.messages(3)
    assert got[0] == gap(chan, "1", ids[0])
    assert ids_of(got[1:]) == ids


def test_gap_on_an_empty_channel_names_no_oldest(server, chan):
    status, body = poll(server, chan, since="1", timeout=0)
    assert status == 200
    assert body["messages"] == [gap(chan, "1", None)]


def test_since_zero_means_all_retained_without_gap(small, chan):
    ids = small.publish_many(chan, numbered(10))
    assert ids_of(small.history(chan, since="0")) == ids[7:]


def test_gap_only_for_the_channel_that_lost_messages(small, chan):
    a, b = chan + "-a", chan + "-b"
    start = small.publish(b, "b0")["id"]
    a_ids = small.publish_many(a, numbered(5, "a"))
    b_id = small.publish(b, "b1")["id"]
    got = small.history(f"{a},{b}", since=start)
    assert got[0] == gap(a, start, a_ids[2])
    assert ids_of(got[1:]) == a_ids[2:] + [b_id]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_message_to_several_held_channels_arrives_once(server, chan, kind):
    a, b, c = chan + "-a", chan + "-b", chan + "-c"
    start = server.publish(a, "start")["id"]
    with subscribe(kind, server, f"{a},{b},{c}", since=start) as sub:
        both = server.publish_json({"channels": [a, b, c], "data": "to all"})["id"]
        reverse = server.publish_json({"channels": [c, "elsewhere-" + chan, b], "data": "to c, b"})["id"]
        sentinel = server.publish(b, "sentinel")["id"]
        got = sub.messages(3)
    assert ids_of(got) == [both, reverse, sentinel]
    assert got[0]["channel"] in (a, b, c)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_replay_across_channels_is_ordered_and_deduplicated(server, chan, kind):
    a, b = chan + "-a", chan + "-b"
    start = server.publish(chan, "before")["id"]
    plan = [[a], [b], [a, b], [a], [b, a], [b]]
    ids = [server.publish_json({"channels": chs, "data": i})["id"] for i, chs in enumerate(plan)]
    with subscribe(kind, server, f"{a},{b}", since=start) as sub:
        got = sub.messages(len(ids))
        assert ids_of(got) == ids
        assert [m["data"] for m in got] == list(range(len(plan)))
        sentinel = server.publish(a, "after")["id"]
        assert sub.next_message()["id"] == sentinel


def test_ws_subscribe_op_after_replay_does_not_repeat_a_shared_message(server, chan):
    """A message on a and b, replayed through a, is not replayed again when the same
    connection later subscribes to b from an older cursor."""
    a, b = chan + "-a", chan + "-b"
    start = server.publish(chan, "before")["id"]
    shared = server.publish_json({"channels": [a, b], "data": "shared"})["id"]
    only_b = server.publish(b, "only b")["id"]
    with subscribe("ws", server, a, since=start) as ws:
        assert ids_of(ws.messages(1)) == [shared]
        ws.send_json({"op": "subscribe", "channel": b, "since": start})
        assert ws.next_message()["event"] == "subscribed"
        assert ids_of(ws.messages(1)) == [only_b]


def test_ws_subscribe_op_does_not_repeat_what_arrived_live(server, chan):
    a, b = chan + "-a", chan + "-b"
    start = server.publish(chan, "before")["id"]
    with subscribe("ws", server, a) as ws:
        shared = server.publish_json({"channels": [a, b], "data": "shared"})["id"]
        assert ids_of(ws.messages(1)) == [shared]
        only_b = server.publish(b, "only b")["id"]
        ws.send_json({"op": "subscribe", "channel": b, "since": start})
        assert ws.next_message()["event"] == "subscribed"
        assert ids_of(ws.messages(1)) == [only_b]


def test_history_bounded_by_bytes_also_reports_the_gap(module_herald, chan):
    srv = module_herald(history_bytes="1KiB")
    ids = srv.publish_many(chan, ["a" * 600, "b" * 600, "c" * 600])
    got = srv.history(chan, since=ids[0])
    assert got[0] == gap(chan, ids[0], ids[2])
    assert ids_of(got[1:]) == ids[2:]


def test_history_aged_out_reports_the_gap(server, chan):
    assert server.request("PUT", "/api/channels/" + chan, '{"history_ttl": 1}').status == 201
    ids = server.publish_many(chan, ["old", "older"])
    wait_until(lambda: server.history(chan) == [], timeout=10, what="history to age out")
    assert server.history(chan, since=ids[0]) == [gap(chan, ids[0], None)]
    assert server.history(chan, since=ids[1]) == []  # the client has everything there was


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_resume_while_a_publisher_is_publishing(server, chan, kind):
    """Subscribing from a cursor while messages keep arriving: the replay and the live
    messages join without a gap or a duplicate (two workers: the publish and the
    subscriber may be on different threads)."""
    total = 300
    assert server.request("PUT", "/api/channels/" + chan, '{"history_size": 1000}').status == 201
    ids = []
    publisher = threading.Thread(target=server.publish_many, args=(chan, numbered(total), ids))
    publisher.start()
    try:
        wait_until(lambda: len(ids) >= 50, what="the first 50 messages")
        start = ids[20]
        with subscribe(kind, server, chan, since=start) as sub:
            got = sub.messages(total - 21, timeout=30)
    finally:
        publisher.join(30)
    assert [m["data"] for m in got] == numbered(total)[21:]


def test_per_channel_cursor(server, chan):
    """A cursor may give each channel its own position ("ID.DELTA", in the order the
    channels are named): what a Redis Cluster's per-channel ids need, accepted in every
    mode."""
    a, b = f"{chan}-a", f"{chan}-b"
    a1 = server.publish(a, "a1")["id"]
    server.publish(b, "b1")
    server.publish(a, "a2")
    # Up to a1 on a, nothing yet on b (position 0: all it retains).
    status, body = poll(server, f"{a},{b}", since=f"{a1}.-{a1}", timeout=0)
    assert status == 200 and data_of(body["messages"]) == ["b1", "a2"], body
    for bad in (f"{a1}.0.0", f"{a1}.", f"{a1}.x", f".{a1}", f"{a1}.-{int(a1) + 1}", f"{a1}.+1"):
        status, body = poll(server, f"{a},{b}", since=bad, timeout=0)
        assert status == 400 and body["error"] == "bad_cursor", (bad, body)


def test_per_channel_cursor_across_capped_long_poll_answers(herald, chan):
    """A per-channel cursor on a single node, answers cut at --max-outbound: each answer's
    cursor keeps every channel's position, so nothing the client had comes again."""
    srv = herald(max_outbound="64KiB", history_size=200)
    a, b = f"{chan}-a", f"{chan}-b"
    ids = {a: [], b: []}
    for i in range(100):
        for ch in (a, b):
            ids[ch].append(srv.publish(ch, f"{ch[-1]}{i:03d}" + "z" * 2000)["id"])
    had_b = ids[b][60]
    cursor, got = f"0.{had_b}", []
    while True:
        status, body = poll(srv, f"{a},{b}", since=cursor, timeout=0)
        assert status == 200, body
        if not body["messages"]:
            break
        got += body["messages"]
        cursor = body["cursor"]
    got_ids = ids_of(got)
    assert len(got_ids) == len(set(got_ids)), "a message twice"
    assert sorted(got_ids) == sorted(ids[a] + ids[b][61:]), "missing or already-had messages"


def test_per_channel_cursor_sse_ids_keep_every_position(server, chan):
    """SSE resumed with a per-channel cursor: each event's id is the connection's cursor
    over both channels, so reconnecting in the middle of the replay repeats nothing."""
    a, b = f"{chan}-a", f"{chan}-b"
    ids = {a: [], b: []}
    for i in range(5):
        for ch in (a, b):
            ids[ch].append(server.publish(ch, f"{ch[-1]}{i}")["id"])
    cursor = f"0.{ids[b][3]}"  # nothing of a, b up to its 4th message
    with SSE(server, f"{a},{b}", headers={"Last-Event-ID": cursor}) as sse:
        first = sse.messages(2)
        mid = sse.last_id
    assert "." in mid, mid
    with SSE(server, f"{a},{b}", headers={"Last-Event-ID": mid}) as sse:
        rest = sse.messages(4)
    assert sorted(ids_of(first + rest)) == sorted(ids[a] + ids[b][4:])


def test_multi_channel_message_keeps_its_channel_on_replay(server, chan):
    """Delivered once through the first of the connection's channels in the message's
    list, live and on replay alike."""
    names = [f"{chan}-c", f"{chan}-b", f"{chan}-a"]  # the subscriber's order
    with subscribe("ws", server, ",".join(names)) as live:
        for n in names:
            server.wait_subscribers(n)
        msg_id = server.publish_json({"channels": names[::-1], "data": "multi"})["id"]
        got = live.next_message()
    assert got["id"] == msg_id and got["channel"] == names[2]
    status, body = poll(server, ",".join(names), since="0", timeout=0)
    replayed = [m for m in body["messages"] if m["id"] == msg_id]
    assert [m["channel"] for m in replayed] == [names[2]]
