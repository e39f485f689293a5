"""Regression tests for what an attack run on the landed server found (issue 7):
each test here failed on the server before its fix. Crashes reachable by any client,
bytes after a WebSocket close frame, admin data in /stats, numbers that overflow,
invalid UTF-8 echoed into JSON, malformed credentials, and connections left waiting
after the descriptor table was full."""

import base64
import json
import socket
import time

import pytest

from helpers import (
    OP_CLOSE,
    OP_TEXT,
    WAIT,
    RawConn,
    RawWS,
    encode_frame,
    http_bytes,
    http_get,
    ws_handshake,
    ws_key,
    wait_until,
)

KEY = "k3y-for-attacks"
APP = "https://app.example.com"
EVIL = "https://evil.example"
PING_OP = b'{"op":"ping"}'


def close_payload(code, reason=b""):
    return code.to_bytes(2, "big") + reason


# ---- CORS settings x transports x Origin: nothing crashes, headers follow the policy ------

CORS_SETTINGS = {"star": "*", "allow-list": APP, "none": ""}


def expected_acao(policy, origin):
    """What Access-Control-Allow-Origin a subscriber endpoint answers (None: absent)."""
    if policy == "*":
        return "*" if origin in (None, APP, EVIL) else None
    if origin == APP and policy == APP:
        return APP
    return None


def subscriber_answer(srv, path, origin):
    """Sends one subscriber request and reads its response head (and body when it ends)."""
    headers = {"Origin": origin} if origin else {}
    with RawConn(srv.port) as c:
        c.send(http_get(path, headers))
        status, hdrs = c.read_head()
        body = b""
        if "content-length" in hdrs:
            body = c.read_exact(int(hdrs["content-length"]))
        return status, hdrs, body


@pytest.mark.parametrize("setting", sorted(CORS_SETTINGS))
def test_every_cors_setting_on_every_transport(herald, chan, setting):
    """With an origin allow-list, a long-poll without a matching Origin used to crash
    the server when it was answered (the origin pointer shared a union with the HTTP
    state). Every transport, every setting, every kind of Origin."""
    policy = CORS_SETTINGS[setting]
    srv = herald(cors_origins=policy, poll_timeout="100ms")  # the idle polls' timeout=1 is cut to it
    srv.publish(chan, "kept")
    for origin in (None, APP, EVIL):
        for path in (
            f"/poll?channels={chan}&since=0",  # answered at once from history
            f"/poll?channels={chan}-idle&timeout=1",  # answered by its timeout (100 ms)
            f"/sse?channels={chan}",
            f"/stream?channels={chan}",
        ):
            status, hdrs, body = subscriber_answer(srv, path, origin)
            assert status == 200, (setting, origin, path, status, body)
            assert hdrs.get("access-control-allow-origin") == expected_acao(policy, origin), (
                setting, origin, path, hdrs)
            if path.startswith("/poll"):
                json.loads(body)
        with RawConn(srv.port) as c:
            c.send(ws_handshake(f"/ws?channels={chan}",
                                extra={"Origin": origin} if origin else None))
            status, hdrs = c.read_head()
            allowed = origin is None or policy == "*" or origin == policy
            assert status == (101 if allowed else 403), (setting, origin, status)
        assert srv.request("GET", "/healthz").status == 200, (setting, origin)


# ---- WebSocket: nothing follows the server's close frame -----------------------------------


def test_ops_after_the_client_close_get_no_reply(server, chan):
    """A client Close followed by ops in the same packet: the echo is the last frame."""
    with RawWS(server) as ws:
        ws.conn.send(
            encode_frame(OP_CLOSE, close_payload(1000))
            + encode_frame(OP_TEXT, PING_OP)
            + encode_frame(OP_TEXT, json.dumps({"op": "subscribe", "channels": [chan]}))
        )
        assert ws.expect_close(1000) == []
    assert server.channel(chan) is None or server.channel(chan)["subscribers"] == 0


def test_two_close_frames_in_one_packet_still_get_the_echo(server):
    with RawWS(server) as ws:
        ws.conn.send(encode_frame(OP_CLOSE, close_payload(1000, b"a"))
                     + encode_frame(OP_CLOSE, close_payload(1000, b"b")))
        assert ws.expect_close(1000) == []


def test_ping_flood_after_the_close_queues_nothing(server):
    """Pings after the close handshake began are not answered: no pong follows the close."""
    with RawWS(server) as ws:
        ws.conn.send(encode_frame(OP_CLOSE, close_payload(1001))
                     + b"".join(encode_frame(9, b"p") for _ in range(200)))
        assert ws.expect_close(1001) == []


# ---- /stats: channel names are admin data ----------------------------------------------------


def test_stats_channel_list_needs_the_key(herald, chan):
    srv = herald(publish_key=KEY)
    auth = {"Authorization": "Bearer " + KEY}
    assert srv.request("POST", f"/pub/{chan}", b"x", auth).status == 201
    plain = srv.request("GET", "/stats")
    assert plain.status == 200 and chan.encode() not in plain.body
    anon = srv.request("GET", "/stats?channels=1")
    assert anon.status == 401, (anon.status, anon.body)
    assert chan.encode() not in anon.body
    assert anon.error()["error"] == "unauthorized"
    keyed = srv.request("GET", "/stats?channels=1", headers=auth)
    assert keyed.status == 200
    assert chan in keyed.json()["channel_subscribers"]


# ---- numbers, bytes and credentials a client controls ----------------------------------------


def test_poll_timeout_that_overflows_is_capped_not_wrapped(herald, chan):
    """timeout * 1000 used to wrap: 18446744073709552 s became 384 ms."""
    srv = herald(poll_timeout="1s")
    started = time.monotonic()
    r = srv.request("GET", f"/poll?channels={chan}&timeout=18446744073709552", timeout=WAIT)
    held = time.monotonic() - started
    assert r.status == 200, r.body
    assert r.json()["messages"] == []
    assert held >= 0.9, f"the poll was answered after {held:.3f} s, not held to --poll-timeout"


@pytest.mark.parametrize("raw", [
    b"GET /\xff\xfe\xc0 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"DELETE /ws\xed\xa0\x80 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /sse HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
])
def test_error_bodies_are_valid_utf8_json(server, raw):
    with RawConn(server.port) as c:
        c.send(raw)
        r = c.read_response()
    assert r.status >= 400
    text = r.body.decode("utf-8")  # raises on invalid UTF-8
    doc = json.loads(text)
    assert doc["error"] and doc["detail"]


def test_ws_origin_error_is_valid_utf8(herald):
    srv = herald(cors_origins=APP)
    with RawConn(srv.port) as c:
        c.send(ws_handshake("/ws", extra={"Origin": "https://BAD.example"})
               .replace(b"BAD", b"\xff\xfe\xc0"))
        r = c.read_response()
    assert r.status == 403
    json.loads(r.body.decode("utf-8"))


def test_basic_credentials_need_a_colon(herald, chan):
    """RFC 7617: user-id ":" password. A bare key is not Basic credentials."""
    srv = herald(publish_key=KEY)
    bare = base64.b64encode(KEY.encode()).decode()
    r = srv.request("POST", f"/pub/{chan}", b"x", {"Authorization": "Basic " + bare})
    assert r.status == 401, (r.status, r.body)
    good = base64.b64encode(b"anyone:" + KEY.encode()).decode()
    assert srv.request("POST", f"/pub/{chan}", b"x", {"Authorization": "Basic " + good}).status == 201


# ---- descriptors run out: queued connections are served once some free up --------------------


@pytest.mark.timeout(60)
def test_connections_queued_at_fd_exhaustion_are_served_when_fds_free(herald):
    srv = herald(nofile=64, workers=1)
    request = http_get("/healthz")
    first = []
    # Fill the table: keep-alive connections that got their answer.
    for _ in range(80):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT)
        s.sendall(request)
        s.settimeout(0.5)
        try:
            got = s.recv(4096)
        except socket.timeout:
            got = None
        if not got:
            queued = [s]
            break
        first.append(s)
    else:
        pytest.fail("80 connections were served with a limit of 64 descriptors")
    assert len(first) > 30, f"only {len(first)} connections before the limit"
    # More clients wait in the listen queue.
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT)
        s.sendall(request)
        queued.append(s)
    # Free descriptors; no new client arrives to wake the listener.
    for s in first:
        s.close()
    for s in queued:
        s.settimeout(WAIT)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, f"a queued connection was closed unanswered: {data!r}"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:80]
        s.close()
    assert srv.request("GET", "/healthz").status == 200


# ---- the publish API from a browser: no cross-origin use, no DNS rebinding ------------------


def api_call(srv, method, path, headers=None, body=b"x"):
    hdrs = {"Host": f"127.0.0.1:{srv.api_port}", "Content-Type": "text/plain"}
    hdrs.update(headers or {})
    with RawConn(srv.api_port) as c:
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in hdrs.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        c.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        return c.read_response()


@pytest.mark.parametrize("cors", ["*", APP])
def test_cross_origin_pages_cannot_publish(herald, chan, cors):
    """A page on another origin, in a browser on herald's host (loopback is trusted
    without a key), sends a simple POST: refused, whatever --cors-origins says."""
    srv = herald(cors_origins=cors)
    for origin in (EVIL, APP):
        r = api_call(srv, "POST", f"/pub/{chan}", {"Origin": origin})
        assert r.status == 403, (origin, r.status, r.body)
        assert r.error()["error"] == "cross_origin"
        assert "access-control-allow-origin" not in r.headers
    assert srv.history(chan) == []
    # The preflight of the API does not invite browsers either.
    pre = api_call(srv, "OPTIONS", f"/pub/{chan}", {
        "Origin": EVIL, "Access-Control-Request-Method": "POST"}, body=None)
    assert "access-control-allow-origin" not in pre.headers, pre.headers
    assert "POST" not in pre.headers.get("access-control-allow-methods", "")
    # Subscriber preflights allow GET only.
    sub = api_call(srv, "OPTIONS", f"/sse?channels={chan}", {
        "Origin": APP, "Access-Control-Request-Method": "GET"}, body=None)
    assert sub.status == 204
    assert sub.headers["access-control-allow-methods"] == "GET, OPTIONS"
    # Same-origin requests (a page served by herald's own host) and plain clients work.
    assert api_call(srv, "POST", f"/pub/{chan}",
                    {"Origin": f"http://127.0.0.1:{srv.api_port}"}).status == 201
    assert api_call(srv, "POST", f"/pub/{chan}").status == 201


def test_api_cors_origins_allow_a_configured_origin(herald, chan):
    srv = herald(api_cors_origins=APP, publish_key=KEY)
    auth = {"Authorization": "Bearer " + KEY}
    pre = api_call(srv, "OPTIONS", f"/pub/{chan}", {
        "Origin": APP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"}, body=None)
    assert pre.status == 204, pre
    assert pre.headers["access-control-allow-origin"] == APP
    assert "POST" in pre.headers["access-control-allow-methods"]
    r = api_call(srv, "POST", f"/pub/{chan}", {"Origin": APP, **auth})
    assert r.status == 201 and r.headers["access-control-allow-origin"] == APP
    assert api_call(srv, "POST", f"/pub/{chan}", {"Origin": EVIL, **auth}).status == 403


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "10.1.2.3:{port}"])
def test_dns_rebinding_host_is_refused_without_a_key(herald, chan, host):
    """evil.example resolving to 127.0.0.1: the browser sends Host: evil.example and the
    page is same-origin to itself. Loopback trust needs a loopback Host."""
    srv = herald()
    h = host.format(port=srv.api_port)
    r = api_call(srv, "POST", f"/pub/{chan}", {"Host": h, "Origin": f"http://{h}"})
    assert r.status == 403, (r.status, r.body)
    assert r.error()["error"] == "host_not_allowed"
    r = api_call(srv, "POST", f"/pub/{chan}", {"Host": h})
    assert r.status == 403
    for ok in (f"localhost:{srv.api_port}", f"127.0.0.1:{srv.api_port}", "[::1]", "localhost"):
        assert api_call(srv, "POST", f"/pub/{chan}", {"Host": ok}).status == 201, ok


# ---- request bodies: refused on their head, and a cap on what all of them hold ---------------


def test_unauthorised_publish_is_refused_on_its_head(herald, chan):
    srv = herald(publish_key=KEY)
    with RawConn(srv.api_port) as c:
        c.send(f"POST /pub/{chan} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        started = time.monotonic()
        r = c.read_response(timeout=3)
        assert r.status == 401, r
        assert time.monotonic() - started < 2
        c.expect_eof()  # the body is not read: the connection ends


def test_bodies_in_flight_have_a_global_cap(herald, chan):
    srv = herald(publish_key=KEY, max_body_bytes="1MiB", max_input_memory="2MiB", workers=1)
    head = (f"POST /pub/{chan} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Length: {1024 * 1024}\r\n\r\n").encode()
    part = b"y" * (900 * 1024)
    conns = [RawConn(srv.api_port) for _ in range(3)]
    try:
        conns[0].send(head + part)
        conns[1].send(head + part)
        time.sleep(0.5)
        conns[2].send(head + part)
        r = conns[2].read_response()
        assert r.status == 503, r
        assert r.error()["error"] == "server_busy"
        assert "--max-input-memory" in r.error()["detail"]
        for c in conns[:2]:
            c.send(b"y" * (124 * 1024))
            assert c.read_response().status == 201
    finally:
        for c in conns:
            c.close()
    # Memory is released: a new large body fits again.
    with RawConn(srv.api_port) as c:
        c.send(head + b"y" * (1024 * 1024))
        assert c.read_response().status == 201


def test_ws_publish_from_another_origins_page_needs_the_key(herald, chan):
    """Without a key, a loopback WebSocket may publish, but not one a page of another
    origin opened through a browser on this host."""
    srv = herald(ws_publish=True)
    op = json.dumps({"op": "publish", "channel": chan, "data": "x", "ref": 1})
    with RawWS(srv, extra={"Origin": EVIL}) as ws:
        ws.send_frame(OP_TEXT, op)
        answer = ws.recv_json()
        assert answer["event"] == "error" and answer["error"] == "unauthorized", answer
    with RawWS(srv) as ws:  # no Origin: not a browser page
        ws.send_frame(OP_TEXT, op)
        assert ws.recv_json()["event"] == "published"
    assert len(srv.history(chan)) == 1


def test_anonymous_websocket_input_cannot_lock_out_publishers(herald, chan):
    """Subscribers holding unfinished 60 KB frames fill the anonymous input budget; a
    publisher with the key still publishes a 200 KB body (its input has a budget of its
    own), and a further anonymous big frame is what gets refused."""
    srv = herald(publish_key=KEY, max_input_memory="2MiB", workers=1)
    auth = {"Authorization": "Bearer " + KEY}
    big = b'{"op":"ping","ref":"' + b"a" * 59980 + b'"}'
    held = []
    try:
        for _ in range(80):
            ws = RawWS(srv, f"?channels={chan}")
            ws.conn.send(encode_frame(OP_TEXT, big)[:-1000])
            held.append(ws)
        time.sleep(0.5)
        r = srv.request("POST", f"/pub/{chan}", b"x" * 200_000, auth)
        assert r.status == 201, (r.status, r.body)
        late = RawWS(srv, f"?channels={chan}")
        late.conn.send(encode_frame(OP_TEXT, big)[:-1000])
        assert late.expect_close(1013) == []
        late.close()
    finally:
        for ws in held:
            ws.close()


@pytest.mark.parametrize("path", ["/sse", "/stream"])
def test_head_on_a_streaming_endpoint_is_refused(server, chan, path):
    """An answer to HEAD has no body: a stream cannot be one. 405, and the keep-alive
    connection goes on."""
    with RawConn(server.port) as c:
        c.send(http_bytes("HEAD", f"{path}?channels={chan}") + http_get("/healthz"))
        status, headers = c.read_head()
        assert status == 405, (status, headers)
        assert "GET" in headers["allow"] and "HEAD" not in headers["allow"]
        # (no body: an answer to HEAD)
        assert c.read_response().status == 200
    assert server.channel(chan) is None


@pytest.mark.parametrize("case", ["401", "403-host", "403-origin", "404", "405"])
def test_answers_that_end_the_connection_say_connection_close(herald, chan, case):
    """Refused on its head, a request's body is never read, so the connection ends: the
    answer says so (a pooling proxy would otherwise send its next request to a closed
    socket)."""
    srv = herald(publish_key=KEY) if case == "401" else herald()
    path, headers = f"/pub/{chan}", {}
    if case == "403-host":
        headers = {"Host": "evil.example"}
    elif case == "403-origin":
        headers = {"Origin": EVIL}
    elif case == "404":
        path = "/nowhere"
    elif case == "405":
        path = f"/sse?channels={chan}"
    with RawConn(srv.port) as c:
        head = {"Host": "localhost", **headers}
        c.send(f"POST {path} HTTP/1.1\r\n".encode()
               + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items())
               + b"Content-Length: 5\r\n\r\nhello" + http_get("/healthz"))
        r = c.read_response()
        assert r.status == int(case[:3]), r
        assert r.headers.get("connection", "").lower() == "close", r.headers
        c.expect_eof()


# ---- error answers say what went wrong (attack run, F6/F7) ------------------------------------


@pytest.mark.parametrize("raw, says", [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", "folded lines"),
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", "whitespace"),
    (b"GET / HTTP/1.1\r\nHostx\r\n\r\n", "no ':'"),
    (b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n", "request line"),
    (b"GET / HTTP/1.1\r\nHost: x\x01y\r\n\r\n", "control character"),
    (b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", "CR that is not followed by LF"),
])
def test_malformed_heads_are_explained(server, raw, says):
    with RawConn(server.port) as c:
        c.send(raw)
        r = c.read_response()
    assert r.status == 400
    assert says in r.error()["detail"], r.error()


def test_channel_option_errors_say_what_is_wrong(server, chan):
    r = server.request("PUT", f"/api/channels/{chan}", b'{"history_size":1e400}',
                       {"Content-Type": "application/json"})
    assert r.status == 400 and "line 1" in r.error()["detail"], r.body
    for bad in (b'{"history_size":0}', b'{"history_size":-1}'):
        r = server.request("PUT", f"/api/channels/{chan}", bad, {"Content-Type": "application/json"})
        assert r.status == 400 and "from 1 to 1000000" in r.error()["detail"], r.body


def test_websocket_op_errors_say_what_is_wrong(herald, chan):
    srv = herald(publish_key=KEY, ws_publish=True, cors_origins=APP)
    with RawWS(srv) as ws:
        ws.send_frame(OP_TEXT, b"[1]")
        assert "not arrays" in ws.recv_json()["detail"]
        ws.send_frame(OP_TEXT, b'{"op":1}')
        assert "is a string" in ws.recv_json()["detail"]
        ws.send_frame(OP_TEXT, json.dumps({"op": "subscribe", "channel": "a", "channels": ["b"]}))
        assert ws.recv_json()["error"] == "bad_request"
    with RawWS(srv, extra={"Origin": APP, "Authorization": "Bearer " + KEY}) as ws:
        ws.send_frame(OP_TEXT, json.dumps({"op": "publish", "channel": chan, "data": 1}))
        answer = ws.recv_json()
        assert answer["error"] == "unauthorized" and "another origin" in answer["detail"], answer


def test_http10_keep_alive_is_said_and_unknown_expectations_refused(server):
    with RawConn(server.port) as c:
        c.send(http_get("/healthz", {"Connection": "keep-alive"}, version="1.0"))
        r = c.read_response()
        assert r.status == 200 and r.headers.get("connection", "").lower() == "keep-alive"
        c.send(http_get("/healthz", {"Expect": "something-else"}))
        r = c.read_response()
        assert r.status == 417 and r.error()["error"] == "expectation_failed"


@pytest.mark.parametrize("host", ["[::1]evil", "localhost:abc", "localhost:8080:9", "127.0.0.1:999999"])
def test_loopback_host_check_takes_only_well_formed_hosts(herald, chan, host):
    srv = herald()
    r = api_call(srv, "POST", f"/pub/{chan}", {"Host": host})
    assert r.status == 403 and r.error()["error"] == "host_not_allowed", (host, r.status, r.body)


def test_vary_origin_on_every_answer_of_an_origin_list(herald, chan):
    srv = herald(cors_origins=APP)
    status, hdrs, _ = subscriber_answer(srv, f"/poll?channels={chan}&timeout=0", EVIL)
    assert status == 200 and hdrs.get("vary") == "Origin", hdrs
