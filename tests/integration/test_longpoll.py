"""Long-polling: immediate answers from history, held requests answered by a publish,
timeouts that return a usable cursor, and a polling loop that never misses a
message published between two polls (the PushUp gap)."""

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import RawConn, data_of, http_get, ids_of, numbered, poll

pytestmark = pytest.mark.threads  # make test runs this module under ThreadSanitizer too


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as ex:
        yield ex


def test_immediate_answer_from_history(server, chan):
    ids = server.publish_many(chan, numbered(4))
    start = time.monotonic()
    status, body = poll(server, chan, since=ids[1], timeout=20)
    assert time.monotonic() - start < 5
    assert status == 200
    assert ids_of(body["messages"]) == ids[2:]
    assert data_of(body["messages"]) == ["m2", "m3"]
    assert body["cursor"] == ids[-1]


def test_since_zero_returns_all_retained_history(server, chan):
    ids = server.publish_many(chan, numbered(3))
    status, body = poll(server, chan, since="0")
    assert status == 200 and ids_of(body["messages"]) == ids
    assert all(m["event"] == "message" for m in body["messages"])  # no gap for since=0


def test_held_request_is_answered_by_a_publish(server, chan, pool):
    future = pool.submit(poll, server, chan, None, 20)  # no since: new messages only
    server.wait_subscribers(chan)
    assert not future.done()
    start = time.monotonic()
    sent = server.publish(chan, "wake up")
    status, body = future.result(timeout=10)
    assert time.monotonic() - start < 5
    assert status == 200
    assert ids_of(body["messages"]) == [sent["id"]]
    assert body["cursor"] == sent["id"]
    server.wait_subscribers(chan, 0)  # the answered poll left the channel


def test_timeout_answers_empty_with_a_cursor_that_loses_nothing(server, chan):
    first = server.publish(chan, "before")["id"]
    start = time.monotonic()
    status, body = poll(server, chan, since=first, timeout=1)
    elapsed = time.monotonic() - start
    assert status == 200 and body["messages"] == []
    assert 0.9 <= elapsed < 6, elapsed
    assert int(body["cursor"]) >= int(first)
    later = server.publish(chan, "after")["id"]
    status, body2 = poll(server, chan, since=body["cursor"], timeout=10)
    assert ids_of(body2["messages"]) == [later]


def test_timeout_is_capped_by_poll_timeout(module_herald, chan):
    srv = module_herald(poll_timeout="500ms")
    start = time.monotonic()
    status, body = poll(srv, chan, timeout=60)
    assert status == 200 and body["messages"] == []
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("timeout", ["abc", "-1", "", "1.5"])
def test_bad_timeout_is_rejected(server, chan, timeout):
    r = server.request("GET", f"/poll?channels={chan}&timeout={timeout}")
    assert r.status == 400
    assert r.error()["error"] == "bad_timeout"


def test_bad_cursor_is_rejected(server, chan):
    r = server.request("GET", f"/poll?channels={chan}&since=12ab")
    assert r.status == 400
    assert r.error()["error"] == "bad_cursor"


def test_polling_loop_misses_nothing_while_a_publisher_publishes_fast(server, chan):
    total = 400
    assert server.request("PUT", "/api/channels/" + chan, '{"history_size": 1000}').status == 201
    cursor = server.publish(chan, "start")["id"]
    publisher = threading.Thread(target=server.publish_many, args=(chan, numbered(total, "n")))
    received = []
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    polls = 0
    try:
        publisher.start()
        deadline = time.monotonic() + 30
        while len(received) < total and time.monotonic() < deadline:
            status, body = poll(server, chan, since=cursor, timeout=5, conn=conn)
            assert status == 200, body
            assert all(m["event"] == "message" for m in body["messages"]), body
            received += data_of(body["messages"])
            cursor = body["cursor"]
            polls += 1
    finally:
        publisher.join(30)
        conn.close()
    assert received == numbered(total, "n")  # every message, once, in order
    assert polls > 1  # the loop really raced the publisher


def test_pipelined_request_waits_for_the_held_poll(server, chan):
    with RawConn(server.port) as c:
        c.send(http_get(f"/poll?channels={chan}&timeout=20") + http_get("/healthz"))
        server.wait_subscribers(chan)
        sent = server.publish(chan, "first answer")
        first = c.read_response()
        second = c.read_response()
    assert first.status == 200 and ids_of(first.json()["messages"]) == [sent["id"]]
    assert second.status == 200 and second.json() == {"status": "ok"}


def test_keep_alive_between_polls(server, chan):
    ids = server.publish_many(chan, numbered(2))
    with RawConn(server.port) as c:
        c.send(http_get(f"/poll?channels={chan}&since={ids[0]}"))
        r1 = c.read_response()
        c.send(http_get(f"/poll?channels={chan}&since=0"))
        r2 = c.read_response()
    assert ids_of(r1.json()["messages"]) == ids[1:]
    assert ids_of(r2.json()["messages"]) == ids
    assert "close" not in r1.headers.get("connection", "")


def test_client_leaving_a_held_poll_is_unsubscribed(server, chan):
    c = RawConn(server.port)
    c.send(http_get(f"/poll?channels={chan}&timeout=20"))
    server.wait_subscribers(chan)
    c.close()
    server.wait_subscribers(chan, 0)
    assert server.publish(chan, "nobody")["subscribers"] == 0


def test_cors_on_poll_answers(server, chan):
    server.publish(chan, "x")
    with RawConn(server.port) as c:
        c.send(http_get(f"/poll?channels={chan}&since=0", {"Origin": "https://app.example"}))
        r = c.read_response()
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == "*"


def test_held_poll_with_cors_answers_with_cors(server, chan, pool):
    def held():
        with RawConn(server.port) as c:
            c.send(http_get(f"/poll?channels={chan}&timeout=20", {"Origin": "https://app.example"}))
            return c.read_response(timeout=20)

    future = pool.submit(held)
    server.wait_subscribers(chan)
    server.publish(chan, "x")
    r = future.result(timeout=10)
    assert r.status == 200 and r.headers["access-control-allow-origin"] == "*"


def test_timeout_zero_answers_at_once(server, chan):
    first = server.publish(chan, "x")["id"]
    start = time.monotonic()
    status, body = poll(server, chan, since=first, timeout=0)
    assert status == 200 and body["messages"] == []
    assert time.monotonic() - start < 2


def test_several_channels_are_merged_in_id_order(server, chan):
    a, b = chan + "-a", chan + "-b"
    start = server.publish(chan, "start")["id"]
    ids = [server.publish(c, c)["id"] for c in (b, a, b, a)]
    status, body = poll(server, f"{a},{b}", since=start)
    assert ids_of(body["messages"]) == ids
    assert body["cursor"] == ids[-1]


def test_poll_pipelined_behind_other_requests(server, chan):
    ids = server.publish_many(chan, numbered(2))
    with RawConn(server.port) as c:
        c.send(http_get("/healthz") + http_get(f"/poll?channels={chan}&since={ids[0]}") + http_get("/healthz"))
        answers = [c.read_response() for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]
    assert answers[0].json() == answers[2].json() == {"status": "ok"}
    assert ids_of(answers[1].json()["messages"]) == ids[1:]


def follow_cursor(srv, channels, since, answers=6):
    """Polls from `since`, following the cursor until an answer holds no message; returns
    the messages' data in order. Every cursor moves on from the one the poll sent."""
    got, cursor = [], since
    for _ in range(answers):
        status, body = poll(srv, channels, since=cursor, timeout=0)
        assert status == 200, body
        data = [m["data"] for m in body["messages"] if m["event"] == "message"]
        assert int(body["cursor"]) >= int(cursor), (cursor, body["cursor"], data)
        if not data:
            return got
        assert int(body["cursor"]) > int(cursor), (cursor, body["cursor"])
        got += data
        cursor = body["cursor"]
    raise AssertionError(f"still messages after {answers} answers: {got}")


@pytest.mark.parametrize("by", ["pattern", "names"])
def test_capped_answer_whose_gaps_fill_the_cap_moves_the_cursor_on(herald, by):
    # Each channel's history lost its first message: a resume from before it gets one gap
    # per channel, more gap bytes than --max-outbound. The answer still holds a message and
    # a cursor past `since` (it was "0", and the next poll repeated what the client had).
    srv = herald(history_size=1, max_outbound="4KiB")  # its own server: short names fit a URL
    keep = "lp.keep"
    assert srv.request("PUT", "/api/channels/" + keep, '{"history_size": 100}').status == 201
    srv.publish(keep, "seen-1")
    since = srv.publish(keep, "seen-2")["id"]
    names = [f"lp.c{i}" for i in range(60)]
    for rnd in ("lost", "kept"):
        srv.publish_json({"messages": [{"channels": [n], "data": f"{rnd}-{i}"} for i, n in enumerate(names)]})
    channels = "lp.*" if by == "pattern" else ",".join(names)
    got = follow_cursor(srv, channels, since)
    assert got == [f"kept-{i}" for i in range(60)]
