"""Channels that anonymous subscribers create (issue 7, item 5).

Subscribing to a name nobody published to creates an *ephemeral* channel: it has
no messages, it goes as soon as its last subscriber leaves, and ephemeral channels
have a --max-channels budget of their own. A client making up names by the
thousand (the attack: one connection made a million channels in 2.5 s, then every
new channel got 503 for 15 minutes) is refused once that budget is full, and
nothing it does makes other clients' subscribes to existing channels, or any
publish, fail.
"""

import json

from helpers import SSE, RawConn, RawWS, http_get, wait_until


def churn(conns, prefix, rounds, per_op=50):
    """Each connection subscribes to per_op new names and drops all but the last,
    `rounds` times (WebSocket ops, as a script would). Returns the answers' events
    and errors, and the names the connections still hold."""
    answers, kept = [], []
    for rnd in range(rounds):
        for k, ws in enumerate(conns):
            names = [f"{prefix}-{rnd}-{k}-{i}" for i in range(per_op)]
            ws.send_json({"op": "subscribe", "channels": names})
            ans = ws.recv_json()
            answers.append((ans["event"], ans.get("error")))
            if ans["event"] == "subscribed":
                ws.send_json({"op": "unsubscribe", "channels": names[:-1]})
                assert ws.recv_json()["event"] == "unsubscribed"
                kept.append(names[-1])
    return answers, kept


def test_subscribers_making_up_names_cannot_lock_others_out(herald, chan):
    srv = herald(max_channels=100)
    existing = chan + "-existing"
    srv.publish(existing, "before")
    base = srv.stats()["channels"]

    conns = [RawWS(srv) for _ in range(4)]
    try:
        answers, kept = churn(conns, chan + "-junk", rounds=10)  # 2,000 names
        assert all(a == ("subscribed", None) for a in answers), answers
        assert srv.stats()["channels"] == base + len(kept)
        assert srv.stats()["ephemeral_channels"] == len(kept)
        info = srv.channel(kept[0])
        assert (info["subscribers"], info["messages"], info["expires"]) == (1, 0, None), info

        # Fill the budget of subscribed-only channels: the attacker is refused...
        more = [f"{chan}-fill-{i}" for i in range(100 - len(kept))]
        for i in range(0, len(more), 50):
            conns[i // 50 % 4].send_json({"op": "subscribe", "channels": more[i:i + 50]})
        for i in range(0, len(more), 50):
            assert conns[i // 50 % 4].recv_json()["event"] == "subscribed"
        conns[0].send_json({"op": "subscribe", "channel": chan + "-one-too-many"})
        ans = conns[0].recv_json()
        assert (ans["event"], ans["error"]) == ("error", "too_many_channels"), ans
        assert chan + "-one-too-many" in ans["detail"], ans
        r = srv.request("GET", f"/sse?channels={chan}-also-too-many")
        assert (r.status, r.error()["error"]) == (503, "too_many_channels")

        # ... and nobody else is: subscribing to an existing channel, publishing to it,
        # publishing to a new channel, publishing to one of the attacker's channels.
        with SSE(srv, existing, since="0") as sse:
            assert sse.next_message()["data"] == "before"
            sent = srv.publish(existing, "during")["id"]
            assert sse.next_message()["id"] == sent
        srv.publish(chan + "-new", "a publish makes a channel of its own budget")
        taken = kept[0]
        assert srv.publish(taken, "hello")["subscribers"] == 1
    finally:
        for ws in conns:
            ws.close()

    # Gone with their subscribers: only the published channels remain.
    wait_until(lambda: srv.stats()["channels"] == base + 2, what="the channels of the closed connections to go")
    assert srv.stats()["ephemeral_channels"] == 0
    assert srv.channel(kept[1]) is None
    assert srv.channel(more[0]) is None
    assert srv.channel(taken)["messages"] == 1  # published to: an ordinary channel now
    listed = srv.get_json(f"/api/channels?prefix={chan}-junk")["channels"]
    assert [c["name"] for c in listed] == [taken]


def ws_subscribe(ws, names):
    """One subscribe op; returns (event, error, detail) of the answer."""
    ws.send_json({"op": "subscribe", "channels": names})
    ans = ws.recv_json()
    return ans["event"], ans.get("error"), ans.get("detail", "")


def sse_status(srv, channels, source=None):
    """The status and error name of an SSE subscribe from `source`."""
    with RawConn(srv.port, source=source) as c:
        c.send(http_get(f"/sse?channels={channels}"))
        status, headers = c.read_head()
        if status == 200:
            return status, None
        return status, json.loads(c.read_exact(int(headers["content-length"])))["error"]


def test_one_address_cannot_take_every_channel_that_only_has_subscribers(herald, chan):
    """--max-channels-per-ip bounds the channels one client address has created by
    subscribing (while they only have subscribers); other addresses, subscribes to
    existing channels and publishes are not affected."""
    srv = herald(max_channels_per_ip=100, limit_loopback=True)
    existing = chan + "-existing"
    srv.publish(existing, "x")
    a1, a2 = RawWS(srv), RawWS(srv)  # 127.0.0.1
    b = RawWS(srv, source="127.0.0.2")
    try:
        mine = [f"{chan}-a-{i}" for i in range(100)]
        assert ws_subscribe(a1, mine[:50])[0] == "subscribed"
        assert ws_subscribe(a2, mine[50:])[0] == "subscribed"
        event, error, detail = ws_subscribe(a1, [chan + "-a-more"])
        assert (event, error) == ("error", "too_many_channels_per_ip")
        assert "--max-channels-per-ip" in detail and chan + "-a-more" in detail, detail
        assert sse_status(srv, chan + "-a-more") == (429, "too_many_channels_per_ip")

        # Existing channels, the other address's and publishing are unaffected.
        assert ws_subscribe(a1, [existing])[0] == "subscribed"
        assert ws_subscribe(b, [f"{chan}-b-{i}" for i in range(50)])[0] == "subscribed"
        assert ws_subscribe(b, mine[:10])[0] == "subscribed"  # they exist: nothing created
        assert sse_status(srv, chan + "-b-sse", source="127.0.0.2") == (200, None)
        srv.publish(chan + "-brand-new", "publishing is not subscribing")

        # A publish makes one of the address's channels an ordinary one: room for one more.
        srv.publish(mine[0], "now it is a channel")
        assert a1.next_message()["data"] == "now it is a channel"
        assert ws_subscribe(a1, [chan + "-a-more"])[0] == "subscribed"
        assert ws_subscribe(a1, [chan + "-a-more-2"])[1] == "too_many_channels_per_ip"
    finally:
        a2.close()
    # The channels a2 alone held went with it: room again.
    wait_until(lambda: ws_subscribe(a1, [chan + "-a-more-2"])[0] == "subscribed",
               what="room for new channels once a2 closed")
    for ws in (a1, b):
        ws.close()


def test_loopback_clients_are_not_limited_by_default(herald, chan):
    srv = herald(max_channels_per_ip=10)
    with RawWS(srv) as ws:
        assert ws_subscribe(ws, [f"{chan}-{i}" for i in range(50)])[0] == "subscribed"


def check_full(answer, name=None):
    """A full table's answer: 503 too_many_channels, naming the limit (and the channel)."""
    status, err = answer
    assert (status, err["error"]) == (503, "too_many_channels"), answer
    assert "--max-channels" in err["detail"], err
    if name:
        assert err["detail"].endswith(name), err


def http_answer(srv, method, path, body=None, headers=None):
    r = srv.request(method, path, body, headers)
    return r.status, r.error()


def test_a_full_table_is_503_too_many_channels_on_every_path(herald, chan):
    """Issue 7: every way of creating a channel answers a full table with 503
    too_many_channels, saying which limit and which channel (a subscribe named none,
    and a WebSocket op named the first channel of the op, existing or not)."""
    srv = herald(max_channels=2, ws_publish=True)
    stored = [chan + "-s1", chan + "-s2"]
    for name in stored:
        srv.publish(name, "x")
    new = chan + "-new"
    check_full(http_answer(srv, "POST", "/pub/" + new, b"x"), new)
    doc = json.dumps({"channel": new, "data": 1})
    check_full(http_answer(srv, "POST", "/api/publish", doc, {"Content-Type": "application/json"}))
    check_full(http_answer(srv, "PUT", "/api/channels/" + new))
    batch = srv.publish_json({"messages": [{"channel": new, "data": 1}, {"channel": stored[0], "data": 2}]})
    assert batch["results"][0]["error"] == "too_many_channels" and "id" in batch["results"][1]
    with RawWS(srv) as ws:
        ws.send_json({"op": "publish", "channel": new, "data": 1})
        ans = ws.recv_json()
        assert (ans["event"], ans["error"]) == ("error", "too_many_channels"), ans

    # Channels that only have subscribers: their own budget of 2, then full too.
    with RawWS(srv) as holder:
        assert ws_subscribe(holder, [chan + "-e1", chan + "-e2"])[0] == "subscribed"
        for kind in ("sse", "poll", "stream", "ws"):
            path = {"ws": "/ws", "poll": "/poll", "sse": "/sse", "stream": "/stream"}[kind]
            headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="} if kind == "ws" else None
            check_full(http_answer(srv, "GET", f"{path}?channels={stored[0]},{new}", headers=headers), new)
        event, error, detail = ws_subscribe(holder, [stored[0], new])
        assert (event, error) == ("error", "too_many_channels")
        assert detail.endswith(": " + new) and "--max-channels" in detail, detail
        assert ws_subscribe(holder, [stored[0], stored[1]])[0] == "subscribed"
