"""WebSocket subscribers through the `websockets` client library: delivery, JSON ops
(subscribe, unsubscribe, ping, publish) with refs, errors that keep the
connection open, permessage-deflate, and the server's ping/pong heartbeat."""

import asyncio
import json
import time
import zlib

import pytest

from helpers import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    RawWS,
    arun,
    athread,
    data_of,
    expect_ws_closed,
    ids_of,
    numbered,
    recv_json,
    ws_connect,
    ws_messages,
    ws_op,
)


def test_delivery_on_url_channels(server, chan):
    async def main():
        async with ws_connect(server, f"?channels={chan}") as ws:
            ids = await athread(server.publish_many, chan, numbered(5))
            msgs = await ws_messages(ws, 5)
            assert ids_of(msgs) == ids
            assert data_of(msgs) == numbered(5)
            assert all(m["event"] == "message" and m["channel"] == chan for m in msgs)

    arun(main())


def test_ping_op_echoes_any_ref(server):
    async def main():
        async with ws_connect(server) as ws:
            assert await ws_op(ws, {"op": "ping"}) == {"event": "pong"}
            for ref in (7, "r-1", {"k": [1, None]}, [1, 2]):
                assert await ws_op(ws, {"op": "ping", "ref": ref}) == {"event": "pong", "ref": ref}

    arun(main())


def test_subscribe_and_unsubscribe_ops(server, chan):
    a, b = chan + "-a", chan + "-b"

    async def main():
        async with ws_connect(server) as ws:
            ans = await ws_op(ws, {"op": "subscribe", "channels": [a, b], "ref": 1})
            assert ans["event"] == "subscribed" and ans["channels"] == [a, b] and ans["ref"] == 1
            assert ans["cursor"].isdigit()
            first = await athread(server.publish, a, "to-a")
            assert (await recv_json(ws))["id"] == first["id"]

            ans = await ws_op(ws, {"op": "unsubscribe", "channel": a, "ref": "u"})
            assert ans == {"event": "unsubscribed", "channels": [a], "ref": "u"}
            await athread(server.publish, a, "not for us")
            sentinel = await athread(server.publish, b, "to-b")
            msg = await recv_json(ws)
            assert (msg["id"], msg["channel"]) == (sentinel["id"], b)

    arun(main())


def test_subscribe_op_with_since_replays_after_the_answer(server, chan):
    ids = server.publish_many(chan, numbered(4))

    async def main():
        async with ws_connect(server) as ws:
            ans = await ws_op(ws, {"op": "subscribe", "channel": chan, "since": ids[1], "ref": 9})
            assert ans["event"] == "subscribed" and ans["ref"] == 9
            assert int(ans["cursor"]) >= int(ids[-1])
            assert ids_of(await ws_messages(ws, 2)) == ids[2:]
            live = await athread(server.publish, chan, "live")
            assert (await recv_json(ws))["id"] == live["id"]

    arun(main())


def test_resubscribing_a_held_channel_does_not_duplicate(server, chan):
    async def main():
        async with ws_connect(server, f"?channels={chan}") as ws:
            ans = await ws_op(ws, {"op": "subscribe", "channel": chan})
            assert ans["event"] == "subscribed"
            ids = await athread(server.publish_many, chan, ["x", "y"])
            assert ids_of(await ws_messages(ws, 2)) == ids  # once each, in order

    arun(main())


@pytest.mark.parametrize(
    "op, error",
    [
        ({"op": "subscribe", "channels": ["bad name"], "ref": 3}, "bad_request"),
        ({"op": "subscribe", "ref": 3}, "bad_request"),
        # a cursor it cannot take is bad_cursor, as for HTTP subscribers (api.md)
        ({"op": "subscribe", "channel": "ok", "since": "soon", "ref": 3}, "bad_cursor"),
        ({"op": "subscribe", "channel": "ok", "since": "99999999999999999999999", "ref": 3}, "bad_cursor"),
        ({"op": "subscribe", "channels": ["a", "b"], "since": "5.1.1", "ref": 3}, "bad_cursor"),
        ({"op": "dance", "ref": 3}, "unknown_op"),
        ({"ref": 3}, "bad_request"),
        ({"op": 42, "ref": 3}, "bad_request"),
        ({"op": "publish", "channel": "x", "data": 1, "ref": 3}, "forbidden"),
    ],
)
def test_op_errors_keep_the_connection_open(server, op, error):
    async def main():
        async with ws_connect(server) as ws:
            ans = await ws_op(ws, op)
            assert ans["event"] == "error" and ans["error"] == error, ans
            assert ans["ref"] == 3 and ans["detail"]
            if "op" not in op or not isinstance(op["op"], str):  # it lists every op there is
                assert all(name in ans["detail"] for name in
                           ("subscribe", "unsubscribe", "ping", "publish", "rpc", "auth", "refresh"))
            assert await ws_op(ws, {"op": "ping", "ref": "still"}) == {"event": "pong", "ref": "still"}

    arun(main())


@pytest.mark.parametrize("payload, error", [("{not json", "bad_json"), ("[1,2]", "bad_json"), (b"\x01\x02", "binary_not_supported")])
def test_bad_messages_are_answered_with_errors(server, payload, error):
    async def main():
        async with ws_connect(server) as ws:
            await ws.send(payload)
            ans = await recv_json(ws)
            assert ans["event"] == "error" and ans["error"] == error, ans
            assert await ws_op(ws, {"op": "ping"}) == {"event": "pong"}

    arun(main())


def test_publish_op_is_refused_by_default(server, chan):
    async def main():
        async with ws_connect(server, f"?channels={chan}") as ws:
            ans = await ws_op(ws, {"op": "publish", "channel": chan, "data": "x", "ref": "p"})
            assert (ans["event"], ans["error"], ans["ref"]) == ("error", "forbidden", "p")

    arun(main())
    assert server.history(chan) == []


def test_publish_op_with_ws_publish(module_herald, chan):
    srv = module_herald(ws_publish=True)

    async def main():
        async with ws_connect(srv, f"?channels={chan}") as listener, ws_connect(srv) as pub:
            ans = await ws_op(pub, {"op": "publish", "channel": chan, "data": {"v": 1}, "event": "e", "ref": 5})
            assert ans["event"] == "published" and ans["ref"] == 5 and ans["subscribers"] == 1
            msg = await recv_json(listener)
            assert (msg["id"], msg["data"], msg["type"]) == (ans["id"], {"v": 1}, "e")
            bad = await ws_op(pub, {"op": "publish", "channel": "bad name", "data": 1, "ref": 6})
            assert bad["event"] == "error" and bad["ref"] == 6

    arun(main())
    assert ids_of(srv.history(chan)) and data_of(srv.history(chan)) == [{"v": 1}]


def test_deflate_is_negotiated_and_decoded(server, chan):
    big = "compressible " * 2000

    async def main():
        async with ws_connect(server, f"?channels={chan}", compression="deflate") as ws:
            assert "permessage-deflate" in ws.response_headers["Sec-WebSocket-Extensions"]
            ids = await athread(server.publish_many, chan, [big, "small", big])
            msgs = await ws_messages(ws, 3)
            assert ids_of(msgs) == ids and data_of(msgs) == [big, "small", big]
            # the client compresses its ops too: the server inflates them
            ref = "r" * 5000
            assert await ws_op(ws, {"op": "ping", "ref": ref}) == {"event": "pong", "ref": ref}

    arun(main())


def test_deflate_frames_are_compressed_without_context_takeover(server, chan):
    big = "abcdefgh" * 1000
    ext = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    with RawWS(server, f"?channels={chan}", extra=ext) as ws:
        assert "permessage-deflate" in ws.headers["sec-websocket-extensions"]
        assert "server_no_context_takeover" in ws.headers["sec-websocket-extensions"]
        ids = server.publish_many(chan, [big, big])
        for id_ in ids:
            f = ws.recv_frame()
            assert f.opcode == OP_TEXT and f.rsv == 4, f  # RSV1: compressed
            assert len(f.payload) < len(big) // 4
            # each message inflates on its own (fresh decompressor)
            doc = json.loads(zlib.decompressobj(-15).decompress(f.payload + b"\x00\x00\xff\xff"))
            assert (doc["id"], doc["data"]) == (id_, big)


def test_no_deflate_when_disabled(module_herald, chan):
    srv = module_herald(no_ws_deflate=True)

    async def main():
        async with ws_connect(srv, f"?channels={chan}", compression="deflate") as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response_headers
            sent = await athread(srv.publish, chan, "plain " * 100)
            assert (await recv_json(ws))["id"] == sent["id"]

    arun(main())


@pytest.fixture(scope="module")
def heartbeat_server(module_herald):
    return module_herald(heartbeat="300ms", close_grace="300ms")


@pytest.mark.serial  # the client has 300 ms to answer each ping
def test_server_pings_are_answered_by_the_client_and_keep_it_open(heartbeat_server, chan):
    srv = heartbeat_server

    async def main():
        async with ws_connect(srv, f"?channels={chan}") as ws:
            answered = asyncio.Event()
            pings = 0
            real_pong = ws.pong

            async def counting_pong(data=b""):
                nonlocal pings
                pings += 1
                if pings == 5:
                    answered.set()
                await real_pong(data)

            ws.pong = counting_pong
            await asyncio.wait_for(answered.wait(), 10)  # five heartbeats went by
            assert ws.open
            sent = await athread(srv.publish, chan, "still here")
            assert (await recv_json(ws))["id"] == sent["id"]
            assert await ws_op(ws, {"op": "ping"}) == {"event": "pong"}

    arun(main())


@pytest.mark.serial  # times the close
def test_client_that_never_answers_pings_is_closed(heartbeat_server, chan):
    with RawWS(heartbeat_server, f"?channels={chan}") as ws:
        start = time.monotonic()
        first = ws.recv_frame(timeout=5)
        assert first.opcode == OP_PING
        seen = ws.expect_close(1001, timeout=5)
        elapsed = time.monotonic() - start
        assert all(f.opcode == OP_PING for f in seen)
        assert "ping" in ws.reason
    assert 0.5 <= elapsed < 5, elapsed  # heartbeat + close grace


def test_close_from_the_client_library(server, chan):
    async def main():
        ws = await ws_connect(server, f"?channels={chan}")
        await ws.close(code=1000, reason="bye")
        assert ws.close_code == 1000  # the server echoed our close

    arun(main())


def test_server_close_is_seen_by_the_library(module_herald, chan):
    srv = module_herald(lifetime_min="500ms", lifetime_max="500ms")

    async def main():
        async with ws_connect(srv, f"?channels={chan}") as ws:
            assert (await recv_json(ws)) == {"event": "reconnect", "reason": "lifetime"}
            await expect_ws_closed(ws, 1001)

    arun(main())


def test_raw_client_sees_plain_frames_without_deflate(server, chan):
    with RawWS(server, f"?channels={chan}") as ws:
        assert "sec-websocket-extensions" not in ws.headers
        sent = server.publish(chan, "x")
        f = ws.recv_frame()
        assert f.fin and f.rsv == 0 and f.opcode == OP_TEXT
        assert f.json()["id"] == sent["id"]
        ws.send_frame(OP_CLOSE, b"\x03\xe8")
        assert ws.recv_frame().close_code() == 1000


def test_websockets_library_rejects_nothing_from_the_server(server, chan):
    """Many messages of mixed sizes arrive intact through the library's strict parser."""
    bodies = [("x" * n) for n in (0, 1, 125, 126, 65535, 65536, 100000)]

    async def main():
        async with ws_connect(server, f"?channels={chan}", compression=None, max_size=2**20) as ws:
            ids = await athread(server.publish_many, chan, bodies)
            msgs = await ws_messages(ws, len(bodies))
            assert ids_of(msgs) == ids and data_of(msgs) == bodies

    arun(main())



def test_cursor_beyond_the_head_is_refused(server, chan):
    last = server.publish(chan, "x")["id"]
    future = str(int(last) + 10**9)

    async def main():
        async with ws_connect(server) as ws:
            ans = await ws_op(ws, {"op": "subscribe", "channel": chan, "since": future, "ref": 1})
            assert (ans["event"], ans["error"], ans["ref"]) == ("error", "bad_cursor", 1)

    arun(main())
    r = server.request("GET", f"/poll?channels={chan}&since={future}")
    assert r.status == 400 and r.error()["error"] == "bad_cursor"


def test_channels_per_connection_limit(module_herald, chan):
    srv = module_herald(max_channels_per_conn=2)

    async def main():
        async with ws_connect(srv, f"?channels={chan}-1,{chan}-2") as ws:
            ans = await ws_op(ws, {"op": "subscribe", "channel": chan + "-3", "ref": "x"})
            assert (ans["event"], ans["error"]) == ("error", "too_many_subscriptions")
            ans = await ws_op(ws, {"op": "unsubscribe", "channel": chan + "-1"})
            assert ans["event"] == "unsubscribed"
            ans = await ws_op(ws, {"op": "subscribe", "channel": chan + "-3"})
            assert ans["event"] == "subscribed"
            # Asking again for what it holds adds nothing, so it fits (issue 7).
            ans = await ws_op(ws, {"op": "subscribe", "channels": [chan + "-2", chan + "-3"]})
            assert ans["event"] == "subscribed", ans

    arun(main())
    r = srv.request("GET", f"/sse?channels={chan}-1,{chan}-2,{chan}-3")
    assert r.status == 400 and r.error()["error"] == "too_many_subscriptions"
