"""Channels that anonymous subscribers create (issue 7, item 5).

Subscribing to a name nobody published to creates an *ephemeral* channel: it has
no messages, it goes as soon as its last subscriber leaves, and ephemeral channels
have a --max-channels budget of their own. A client making up names by the
thousand (the attack: one connection made a million channels in 2.5 s, then every
new channel got 503 for 15 minutes) is refused once that budget is full, and
nothing it does makes other clients' subscribes to existing channels, or any
publish, fail.
"""

from helpers import SSE, RawWS, wait_until


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
