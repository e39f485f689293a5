"""Publishing: POST /pub/{channel} with raw, JSON and binary bodies, event names,
POST /api/publish (single, multi-channel, batch, validation), chunked bodies,
Expect: 100-continue, keep-alive and pipelining."""

import base64
import http.client
import json
import resource
import time

import pytest

from helpers import SSE, JSON_TYPE, RawConn, data_of, http_get, http_post, ids_of, raw_request

pytestmark = pytest.mark.threads  # make test runs this module under ThreadSanitizer too

CHUNKED = {"Transfer-Encoding": "chunked"}
EXPECT = {"Expect": "100-continue"}


def only_message(server, chan):
    (msg,) = server.history(chan)
    return msg


def test_raw_text_body_is_a_json_string(server, chan):
    before = time.time() * 1000
    answer = server.publish(chan, "hello, world", content_type="text/plain; charset=utf-8")
    assert set(answer) == {"id", "subscribers"}
    assert answer["id"].isdigit() and answer["subscribers"] == 0
    msg = only_message(server, chan)
    assert msg["event"] == "message"
    assert msg["channel"] == chan
    assert msg["id"] == answer["id"]
    assert msg["data"] == "hello, world"
    assert "type" not in msg and "encoding" not in msg
    assert before - 5000 <= msg["time"] <= time.time() * 1000 + 5000


def test_json_body_is_kept_as_json(server, chan):
    body = '{"a": [1, 2.5, null],\n  "s": "x y\\n", "t": true}'
    server.publish(chan, body, content_type="application/json")
    assert only_message(server, chan)["data"] == {"a": [1, 2.5, None], "s": "x y\n", "t": True}


@pytest.mark.parametrize("ctype", ["application/vnd.example+json", "Application/JSON; charset=utf-8"])
def test_json_content_type_variants(server, chan, ctype):
    server.publish(chan, "[1, 2]", content_type=ctype)
    assert only_message(server, chan)["data"] == [1, 2]


def test_invalid_json_is_rejected_and_not_published(server, chan):
    server.publish(chan, "first")
    r = server.request("POST", "/pub/" + chan, b'{"a": ', JSON_TYPE)
    assert r.status == 400
    assert r.error()["error"] == "bad_json"
    assert data_of(server.history(chan)) == ["first"]


def test_non_utf8_body_travels_as_base64(server, chan):
    blob = bytes(range(256))
    server.publish(chan, blob, content_type="application/octet-stream")
    msg = only_message(server, chan)
    assert msg["encoding"] == "base64"
    assert base64.b64decode(msg["data"]) == blob


def test_utf8_text_is_not_base64(server, chan):
    server.publish(chan, "naïve ☃ \U0001F600")
    msg = only_message(server, chan)
    assert msg["data"] == "naïve ☃ \U0001F600" and "encoding" not in msg


def test_empty_body(server, chan):
    server.publish(chan, b"")
    assert only_message(server, chan)["data"] == ""


@pytest.mark.parametrize("how", ["header", "query"])
def test_event_name(server, chan, how):
    if how == "header":
        server.publish(chan, "x", headers={"Herald-Event": "user.joined"})
    else:
        r = server.request("POST", f"/pub/{chan}?event=user.joined", b"x", {"Content-Type": "text/plain"})
        assert r.status == 201, r.body
    assert only_message(server, chan)["type"] == "user.joined"


@pytest.mark.parametrize("name", ["has space", "x" * 65, "semi;colon", ""])
def test_bad_event_name_is_rejected(server, chan, name):
    r = server.request("POST", "/pub/" + chan, b"x", {"Herald-Event": name})
    assert r.status == 400
    assert r.error()["error"] == "bad_event"
    assert server.channel(chan) is None


@pytest.mark.parametrize("name", ["bad%20name", "a" * 129, "x%00y", "%ZZ"])
def test_bad_channel_name_is_rejected(server, name):
    r = server.request("POST", "/pub/" + name, b"x")
    assert r.status == 400
    assert r.error()["error"] == "bad_channel"


def test_channel_name_may_be_percent_encoded(server, chan):
    server.publish(chan + "%3Aa%2Fb", "x")
    assert data_of(server.history(chan + ":a/b")) == ["x"]


def test_api_publish_single(server, chan):
    answer = server.publish_json({"channel": chan, "data": {"k": [1, "two"]}, "event": "update"})
    msg = only_message(server, chan)
    assert msg["id"] == answer["id"]
    assert msg["data"] == {"k": [1, "two"]}
    assert msg["type"] == "update"


def test_api_publish_string_data_is_a_string(server, chan):
    server.publish_json({"channel": chan, "data": "plain"})
    assert only_message(server, chan)["data"] == "plain"


def test_api_publish_to_several_channels_shares_one_id(server, chan):
    a, b = chan + "-a", chan + "-b"
    answer = server.publish_json({"channels": [a, b], "data": 42})
    for c in (a, b):
        msg = only_message(server, c)
        assert (msg["id"], msg["channel"], msg["data"]) == (answer["id"], c, 42)


def test_api_publish_batch(server, chan):
    a, b = chan + "-a", chan + "-b"
    answer = server.publish_json(
        {"messages": [{"channel": a, "data": 1}, {"channel": b, "data": 2}, {"channel": a, "data": 3}]}
    )
    results = answer["results"]
    assert len(results) == 3
    ids = [int(r["id"]) for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert data_of(server.history(a)) == [1, 3]
    assert ids_of(server.history(a)) == [results[0]["id"], results[2]["id"]]
    assert data_of(server.history(b)) == [2]


@pytest.mark.parametrize(
    "bad",
    [
        {"data": 1},  # no channel
        {"channel": "ok", "channels": "not-a-list", "data": 1},
        {"channel": "bad name", "data": 1},
        {"channel": "ok"},  # no data
        {"channel": "ok", "data": 1, "event": "no spaces allowed"},
        "not an object",
    ],
)
def test_api_publish_batch_is_validated_before_anything_is_published(server, chan, bad):
    if isinstance(bad, dict) and bad.get("channel") == "ok":
        bad = {**bad, "channel": chan + "-bad"}
    doc = {"messages": [{"channel": chan, "data": "first"}, bad, {"channel": chan, "data": "third"}]}
    r = server.request("POST", "/api/publish", json.dumps(doc), JSON_TYPE)
    assert r.status == 400
    err = r.error()
    assert err["error"] == "bad_message"
    assert "messages[1]" in err["detail"]
    assert server.channel(chan) is None
    assert server.channel(chan + "-bad") is None


def test_api_publish_with_both_channel_and_channels_is_rejected(server, chan):
    """Issue 7: {"channel": a, "channels": [b]} published to both, silently."""
    doc = {"channel": chan + "-a", "channels": [chan + "-b"], "data": 1}
    r = server.request("POST", "/api/publish", json.dumps(doc), JSON_TYPE)
    assert r.status == 400
    err = r.error()
    assert err["error"] == "bad_message" and "not both" in err["detail"], err
    assert server.channel(chan + "-a") is None and server.channel(chan + "-b") is None
    r = server.request("POST", "/api/publish", json.dumps({"messages": [doc]}), JSON_TYPE)
    assert r.status == 400 and "messages[0]" in r.error()["detail"]


def test_api_publish_channel_must_be_a_name(server, chan):
    r = server.request("POST", "/api/publish", json.dumps({"channel": 7, "data": 1}), JSON_TYPE)
    assert r.status == 400 and r.error()["error"] == "bad_message"


@pytest.mark.small_stack
def test_a_batch_takes_no_stack_per_message(herald, chan):
    """Issue 7: each message of a batch published the next one from its completion, so a
    batch recursed once per message. With 64 KiB of stack (inherited by herald's threads)
    a 1,000-message batch crashed the server; it takes constant stack now."""
    old = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (64 * 1024, old[1]))
    try:
        srv = herald(workers=1)
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, old)
    msgs = [{"channel": f"{chan}-{i % 3}", "data": i} for i in range(1000)]
    answer = srv.publish_json({"messages": msgs})
    assert len(answer["results"]) == 1000
    assert data_of(srv.history(chan + "-1"))[-1] == 997
    r = srv.request("POST", "/api/publish", json.dumps({"messages": msgs + msgs[:1]}), JSON_TYPE)
    assert (r.status, r.error()["error"]) == (400, "bad_batch")  # the batch itself is bounded


@pytest.mark.parametrize(
    "body", ['{"channel": "x", "data": ', '{"messages": []}', "[1, 2]", '{"messages": "no"}']
)
def test_api_publish_rejects_malformed_documents(server, body):
    r = server.request("POST", "/api/publish", body, JSON_TYPE)
    assert r.status == 400
    r.error()


def test_publish_reports_subscriber_count(server, chan):
    with SSE(server, chan), SSE(server, chan + "," + chan + "-other"):
        assert server.publish(chan, "x")["subscribers"] == 2


def test_chunked_body_in_pieces(server, chan):
    head = http_post("/pub/" + chan, headers={"Content-Type": "text/plain", **CHUNKED})
    pieces = [head, "5\r\nhel", "lo\r\n", "7;ext=1\r\n, world\r\n", "0\r\n", "\r\n"]
    with RawConn(server.port) as c:
        for piece in pieces:
            c.send(piece)
            time.sleep(0.01)  # let each piece arrive on its own
        r = c.read_response()
    assert r.status == 201, r.body
    assert only_message(server, chan)["data"] == "hello, world"


def test_chunked_body_with_http_client(server, chan):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        body = iter([b'{"parts": ', b'["a", ', b'"b"]}'])
        conn.request("POST", "/pub/" + chan, body, JSON_TYPE, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 201, resp.read()
        resp.read()
    finally:
        conn.close()
    assert only_message(server, chan)["data"] == {"parts": ["a", "b"]}


def test_chunked_body_with_trailer(server, chan):
    req = http_post("/pub/" + chan, headers=CHUNKED) + b"3\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n"
    assert raw_request(server.port, req).status == 201
    assert only_message(server, chan)["data"] == "abc"


def test_expect_100_continue(server, chan):
    body = b"continued body"
    with RawConn(server.port) as c:
        c.send(http_post("/pub/" + chan, headers={"Content-Length": len(body), **EXPECT}))
        interim = c.read_response()
        assert interim.status == 100
        c.send(body)
        final = c.read_response()
    assert final.status == 201, final.body
    assert only_message(server, chan)["data"] == "continued body"


def test_expect_100_continue_with_body_already_sent_gets_no_interim(server, chan):
    body = b"eager"
    with RawConn(server.port) as c:
        c.send(http_post("/pub/" + chan, body, EXPECT))
        assert c.read_response().status == 201
    assert only_message(server, chan)["data"] == "eager"


def test_keep_alive_and_pipelining_in_one_write(server, chan):
    batch = (
        http_post("/pub/" + chan, "one")
        + http_post("/pub/" + chan, "two")
        + http_get("/healthz")
        + http_post("/api/publish", json.dumps({"channel": chan, "data": "three"}), JSON_TYPE)
        + http_get("/api/channels/" + chan)
    )
    with RawConn(server.port) as c:
        c.send(batch)
        answers = [c.read_response() for _ in range(5)]
        assert [a.status for a in answers] == [201, 201, 200, 201, 200]
        ids = [int(answers[i].json()["id"]) for i in (0, 1, 3)]
        assert ids == sorted(ids)
        assert answers[2].json() == {"status": "ok"}
        assert answers[4].json()["messages_total"] == 3
        assert all("close" not in a.headers.get("connection", "") for a in answers)
        # the connection is still usable afterwards
        c.send(http_post("/pub/" + chan, "four"))
        assert c.read_response().status == 201
    assert data_of(server.history(chan)) == ["one", "two", "three", "four"]


def test_connection_close_is_honoured(server, chan):
    with RawConn(server.port) as c:
        c.send(http_post("/pub/" + chan, "x", {"Connection": "close"}))
        r = c.read_response()
        assert r.status == 201 and r.headers["connection"] == "close"
        c.expect_eof()


def test_http10_request_closes_after_answer(server, chan):
    with RawConn(server.port) as c:
        c.send(http_post("/pub/" + chan, "x", version="1.0"))
        assert c.read_response().status == 201
        c.expect_eof()


def test_publish_to_64_channels_but_not_65(server, chan):
    names = [f"{chan}-{i}" for i in range(65)]
    server.publish_json({"channels": names[:64], "data": 1})
    r = server.request("POST", "/api/publish", json.dumps({"channels": names, "data": 2}), JSON_TYPE)
    assert r.status == 400
    r.error()
    assert data_of(server.history(names[0])) == [1]


def test_slashes_and_colons_are_channel_characters(server, chan):
    server.publish(chan + "/room:1@site", "x")
    assert data_of(server.history(chan + "/room:1@site")) == ["x"]


def test_empty_channel_name_is_rejected(server):
    r = server.request("POST", "/pub/", b"x")
    assert r.status == 400
    r.error()


def test_absolute_form_target(server, chan):
    r = raw_request(server.port, http_post(f"http://127.0.0.1:{server.port}/pub/{chan}", "abs"))
    assert r.status == 201
    assert data_of(server.history(chan)) == ["abs"]
