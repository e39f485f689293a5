"""Server-Sent Events: the stream preamble, id lines, resume from Last-Event-ID or
?lastEventId=, format=raw, event types, heartbeat comments, CORS and bad requests."""

import json
import time

import pytest

from helpers import SSE, data_of, ids_of, numbered, raw_request


def test_preamble_headers_and_delivery(server, chan):
    with SSE(server, chan) as sse:
        assert sse.status == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert "no-cache" in sse.headers["cache-control"]
        assert "content-length" not in sse.headers and "transfer-encoding" not in sse.headers
        first = sse.next_block()
        assert first.comments == ["ok"] and first.data is None
        assert sse.next_block().retry == "3000"
        ids = server.publish_many(chan, ["a", "b", "c"])
        blocks = [sse.next_event() for _ in range(3)]
    for block, id_, body in zip(blocks, ids, "abc"):
        assert block.event is None  # EventSource.onmessage gets ordinary messages
        assert block.id == id_
        env = block.json()
        assert env == {"event": "message", "channel": chan, "id": id_, "time": env["time"], "data": body}


def test_event_name_becomes_the_event_type(server, chan):
    with SSE(server, chan) as sse:
        server.publish(chan, "x", headers={"Herald-Event": "price.update"})
        block = sse.next_event()
    assert block.event == "price.update"
    assert block.json()["type"] == "price.update"


def test_json_data_is_in_the_envelope(server, chan):
    with SSE(server, chan) as sse:
        server.publish(chan, '{"n": 1,\n "s": "two\\nlines"}', content_type="application/json")
        block = sse.next_event()
    assert "\n" not in block.data  # one data: line
    assert block.json()["data"] == {"n": 1, "s": "two\nlines"}


def test_format_raw_sends_the_bare_body_over_data_lines(server, chan):
    body = "line one\nline two\r\nline three\rline four"
    with SSE(server, chan, format="raw") as sse:
        answer = server.publish(chan, body)
        server.publish(chan, '{"j": 1}', content_type="application/json")
        block = sse.next_event()
        second = sse.next_event()
    assert block.id == answer["id"]
    assert block.data == "line one\nline two\nline three\nline four"
    assert json.loads(second.data) == {"j": 1}  # the body as published (JSON may be compacted)


def test_bad_format_is_rejected(server, chan):
    with SSE(server, chan, format="xml") as sse:
        assert sse.status == 400


@pytest.mark.parametrize("how", ["header", "lastEventId", "since"])
def test_resume_inside_history(server, chan, how):
    ids = server.publish_many(chan, numbered(6))
    cursor = ids[2]
    if how == "header":
        sse = SSE(server, chan, headers={"Last-Event-ID": cursor})
    else:
        sse = SSE(server, chan, **{how: cursor})
    with sse:
        missed = sse.messages(3)
        assert ids_of(missed) == ids[3:]
        assert data_of(missed) == ["m3", "m4", "m5"]
        live = server.publish(chan, "m6")
        assert sse.next_message()["id"] == live["id"]  # no duplicate of m3..m5 before it


def test_last_event_id_header_wins_over_query(server, chan):
    ids = server.publish_many(chan, numbered(3))
    with SSE(server, chan, headers={"Last-Event-ID": ids[1]}, lastEventId=ids[0]) as sse:
        assert ids_of(sse.messages(1)) == [ids[2]]


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "99999999999999999999999"])
def test_bad_cursor_is_rejected(server, chan, cursor):
    with SSE(server, chan, headers={"Last-Event-ID": cursor}) as sse:
        assert sse.status == 400
        assert sse.body


def test_cursor_from_the_future_is_rejected(server, chan):
    last = server.publish(chan, "x")["id"]
    with SSE(server, chan, lastEventId=str(int(last) + 10**9)) as sse:
        assert sse.status == 400


@pytest.mark.parametrize(
    "query, status",
    [("", 400), ("?channels=", 400), ("?channels=bad%20name", 400), ("?channels=" + "a" * 129, 400)],
)
def test_bad_channel_lists_are_rejected(server, query, status):
    r = raw_request(server.port, f"GET /sse{query} HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == status
    r.error()


def test_too_many_channels_is_rejected(server, chan):
    names = ",".join(f"{chan}-{i}" for i in range(65))
    with SSE(server, names) as sse:
        assert sse.status == 400


def test_cors_headers_and_preflight(server, chan):
    with SSE(server, chan, headers={"Origin": "https://app.example"}) as sse:
        assert sse.headers["access-control-allow-origin"] == "*"
    r = server.request(
        "OPTIONS",
        "/sse",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    assert r.status == 204
    assert "GET" in r.headers["access-control-allow-methods"]
    assert "Last-Event-ID" in r.headers["access-control-allow-headers"]


def test_heartbeat_comments(module_herald, chan):
    srv = module_herald(heartbeat="300ms")
    with SSE(srv, chan) as sse:
        sse.next_block()  # :ok
        sse.next_block()  # retry
        start = time.monotonic()
        beats = []
        while len(beats) < 3:
            block = sse.next_block(timeout=5)
            assert block.comments == [""] and block.data is None, block
            beats.append(time.monotonic() - start)
        # a message in between does not disturb them
        server_id = srv.publish(chan, "between")["id"]
        while (block := sse.next_block(timeout=5)).data is None:
            pass
        assert block.id == server_id
        assert sse.next_block(timeout=5).comments == [""]
    assert beats[0] >= 0.2 and beats[2] >= 0.6, beats  # paced by --heartbeat, not a flood


def test_several_subscribers_get_the_same_stream(server, chan):
    with SSE(server, chan) as a, SSE(server, chan) as b:
        ids = server.publish_many(chan, numbered(20))
        assert ids_of(a.messages(20)) == ids
        assert ids_of(b.messages(20)) == ids


@pytest.mark.parametrize("size", [100, 5000, 70000, 300000])
def test_large_messages_keep_their_id_and_event_lines(server, chan, size):
    body = "".join(chr(97 + i % 26) for i in range(size))
    with SSE(server, chan, format="raw") as raw, SSE(server, chan) as env:
        sent = server.publish(chan, body, headers={"Herald-Event": "big.one"})["id"]
        block = raw.next_event()
        assert (block.id, block.event, block.data) == (sent, "big.one", body)
        block = env.next_event()
        assert (block.id, block.event) == (sent, "big.one")
        assert block.json()["data"] == body


@pytest.mark.parametrize("event", [None, "ev"])
def test_raw_framing_at_every_size_around_a_buffer_boundary(server, chan, event):
    """The SSE framings are built in a growing buffer: sizes that land just below a
    power of two must not corrupt the raw variant's id/event lines."""
    headers = {"Herald-Event": event} if event else {}
    probe = server.publish(chan, "", headers=headers)["id"]
    (envelope,) = server.history(chan, since=str(int(probe) - 1))
    event_line = len(f"event: {event}\n") if event else 0
    overhead = len(f"id: {probe}\n") + event_line + len("data: \n\n") + len(json.dumps(envelope, separators=(",", ":")))
    sizes = [4096 - overhead - k for k in range(64)]
    with SSE(server, chan, format="raw") as raw:
        ids = [server.publish(chan, "b" * n, headers=headers)["id"] for n in sizes]
        for id_, n in zip(ids, sizes):
            block = raw.next_event()
            assert (block.id, block.event, block.data) == (id_, event, "b" * n)


def test_http10_client_gets_the_stream(server, chan):
    with SSE(server, chan, version="1.0") as sse:
        assert sse.status == 200
        sent = server.publish(chan, "old client")["id"]
        assert sse.next_message()["id"] == sent


@pytest.fixture(scope="module")
def cors_server(module_herald):
    return module_herald(cors_origins="https://good.example")


def test_allowed_origin_is_echoed(cors_server, chan):
    with SSE(cors_server, chan, headers={"Origin": "https://good.example"}) as sse:
        assert sse.status == 200
        assert sse.headers["access-control-allow-origin"] == "https://good.example"
        assert "Origin" in sse.headers["vary"]


def test_other_origin_gets_no_cors_grant(cors_server, chan):
    with SSE(cors_server, chan, headers={"Origin": "https://evil.example"}) as sse:
        assert "access-control-allow-origin" not in sse.headers


def test_repeated_channel_in_the_list_counts_once(server, chan):
    with SSE(server, f"{chan},{chan},,{chan}") as sse:
        assert server.publish(chan, "one")["subscribers"] == 1
        server.publish(chan, "two")
        assert [m["data"] for m in sse.messages(2)] == ["one", "two"]  # not "one" twice


def test_a_subscriber_without_a_cursor_gets_one_at_once(server, chan):
    """The block that sets the retry delay carries the subscription's cursor: a client
    (EventSource keeps it as lastEventId) that loses the connection before its first
    message resumes from where it subscribed, missing nothing published meanwhile."""
    with SSE(server, chan) as sse:
        assert sse.next_block().comments == ["ok"]
        block = sse.next_block()
        assert block.retry == "3000" and block.id is not None and block.data is None, block
        start = block.id
    # Disconnected: two messages come and go.
    ids = server.publish_many(chan, ["missed 1", "missed 2"])
    with SSE(server, chan, headers={"Last-Event-ID": start}) as again:
        got = again.messages(2)
        assert [m["id"] for m in got] == ids and [m["data"] for m in got] == ["missed 1", "missed 2"]
