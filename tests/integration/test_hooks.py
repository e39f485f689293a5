"""Backend hooks (docs/interactive.md): herald POSTs signed JSON events to an app's
webhook_url. Each test starts a real HTTP backend (Python's threaded http.server) that
records what it receives and answers as the test tells it: allow, deny, user info and
extra channels, a 500, an answer that never comes, or no backend at all (connection
refused). Subscribers are independent clients (websockets, raw HTTP)."""

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import websockets
from redis_util import RedisCluster

from helpers import (
    OP_PING,
    OP_PONG,
    OP_TEXT,
    SSE,
    RawConn,
    RawWS,
    Stream,
    arun,
    athread,
    expect_ws_closed,
    free_port,
    http_get,
    jwt_hs256,
    poll,
    recv_json,
    request,
    wait_until,
    ws_connect,
    ws_handshake,
    ws_op,
)

SECRET = "hook-secret-for-tests"
ADMIN = "admin-key-for-hook-tests"


class Backend:
    """An app's backend: records every POST (headers, parsed body, arrival time) and
    answers with `self.answer(doc, attempt)` -> (status, body dict, bytes or None, delay s)."""

    def __init__(self, answer=None):
        self.calls = []
        self.lock = threading.Lock()
        self.answer = answer or (lambda doc, attempt: (200, {"result": "allow"}, 0))
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: herald pools its connections
            disable_nagle_algorithm = True  # the head and the body are two writes

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                doc = json.loads(raw)
                call = {"headers": dict(self.headers), "raw": raw, "doc": doc, "at": time.monotonic(),
                        "peer": self.client_address}
                with backend.lock:
                    backend.calls.append(call)
                status, body, delay = backend.answer(doc, int(self.headers.get("X-Herald-Attempt", 1)))
                if delay:
                    time.sleep(delay)
                out = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # herald gave up on it (timeout)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/herald-hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def events(self, name=None):
        with self.lock:
            return [c["doc"] for c in self.calls if name is None or c["doc"]["event"] == name]

    def wait(self, name, n=1, timeout=10):
        wait_until(lambda: len(self.events(name)) >= n, timeout=timeout, what=f"{n} {name} hook(s)")
        return self.events(name)


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.close()


def hooked(herald, backend_url, **flags):
    return herald(webhook_url=backend_url, webhook_secret=SECRET, **flags)


def signature_ok(call, secret=SECRET):
    want = "sha256=" + hmac.new(secret.encode(), call["raw"], hashlib.sha256).hexdigest()
    return call["headers"].get("X-Herald-Signature") == want


# ---- connect: allow, signature, body ------------------------------------------------------


def test_connect_hook_is_signed_and_describes_the_connection(herald, backend, chan):
    srv = hooked(herald, backend.url)

    async def main():
        async with ws_connect(srv, f"?channels={chan}") as ws:
            (doc,) = backend.wait("connect")
            assert doc["channels"] == [chan] and doc["transport"] == "websocket"
            assert doc["app"] is None and doc["user"] is None and doc["event"] == "connect"
            assert doc["remote"].startswith("127.0.0.1:") and len(doc["conn"]) == 16
            assert abs(doc["time"] / 1000 - time.time()) < 30
            call = backend.calls[0]
            assert signature_ok(call), call["headers"]
            assert not signature_ok(call, "another secret")
            assert call["headers"]["X-Herald-Event"] == "connect"
            assert abs(int(call["headers"]["X-Herald-Timestamp"]) - time.time()) < 30
            ident = await athread(srv.publish, chan, "after-allow")
            msg = await recv_json(ws)
            assert msg["id"] == ident["id"] and msg["data"] == "after-allow"

    arun(main())


@pytest.mark.parametrize("kind", ["ws", "sse", "stream", "poll"])
def test_allow_with_user_info_and_extra_channels_on_every_transport(herald, chan, kind):
    extra = chan + "-extra"
    b = Backend(lambda doc, a: (200, {"result": "allow", "user": "alice", "info": {"name": "Alice"},
                                      "channels": [extra]}, 0))
    try:
        srv = hooked(herald, b.url)
        event = "subscribe" if kind == "poll" else "connect"
        if kind == "poll":
            # Messages published before the poll are older than its cursor (taken when it came).
            got = {}
            t = threading.Thread(target=lambda: got.update(r=poll(srv, f"{chan}", timeout=5)))
            t.start()
            b.wait(event)
            srv.wait_subscribers(extra)
            srv.publish(extra, "to-extra")
            t.join(10)
            status, body = got["r"]
            assert status == 200, body
            assert [m["data"] for m in body["messages"]] == ["to-extra"]
        elif kind == "ws":
            async def main():
                async with ws_connect(srv, f"?channels={chan}") as ws:
                    await athread(srv.wait_subscribers, extra)
                    await athread(srv.publish, extra, "to-extra")
                    assert (await recv_json(ws))["data"] == "to-extra"
            arun(main())
        else:
            with (SSE if kind == "sse" else Stream)(srv, chan) as sub:
                assert sub.status == 200, sub.body
                srv.wait_subscribers(extra)
                srv.publish(extra, "to-extra")
                assert sub.next_message()["data"] == "to-extra"
        (doc,) = b.events(event)
        assert doc["transport"] == {"ws": "websocket"}.get(kind, kind)
        if kind != "poll":
            # The backend's user and info stay with the connection: its disconnect has them.
            d = b.wait("disconnect")[0]
            assert d["user"] == "alice" and d["info"] == {"name": "Alice"}
            assert sorted(d["channels"]) == sorted([chan, extra])
    finally:
        b.close()


# ---- deny ---------------------------------------------------------------------------------


def deny_backend():
    return Backend(lambda doc, a: (200, {"result": "deny", "reason": "banned until tomorrow"}, 0))


@pytest.mark.parametrize("kind", ["sse", "stream", "poll"])
def test_deny_answers_403_with_the_reason(herald, chan, kind):
    b = deny_backend()
    try:
        srv = hooked(herald, b.url)
        r = request(srv.port, "GET", f"/{kind}?channels={chan}&timeout=1")
        assert r.status == 403, r.body
        assert r.json() == {"error": "hook_denied", "hook": "subscribe" if kind == "poll" else "connect",
                            "detail": "banned until tomorrow"}
        assert srv.channel(chan) is None or srv.channel(chan)["subscribers"] == 0
        # A refused client never "connected": no disconnect follows.
        time.sleep(0.3)
        assert b.events("disconnect") == []
    finally:
        b.close()


def test_deny_closes_a_websocket_with_4403(herald, chan):
    b = deny_backend()
    try:
        srv = hooked(herald, b.url)

        async def main():
            async with ws_connect(srv, f"?channels={chan}") as ws:
                err = await recv_json(ws)
                assert err == {"event": "error", "error": "hook_denied", "hook": "connect",
                               "detail": "banned until tomorrow"}
                await expect_ws_closed(ws, 4403)
                assert ws.close_reason == "hook_denied: banned until tomorrow"

        arun(main())
    finally:
        b.close()


# ---- a backend that fails -------------------------------------------------------------------


def test_backend_answering_500_fails_closed(herald, chan):
    b = Backend(lambda doc, a: (500, {"oops": True}, 0))
    try:
        srv = hooked(herald, b.url)
        r = request(srv.port, "GET", f"/sse?channels={chan}")
        assert r.status == 503
        assert r.json() == {"error": "hook_failed", "hook": "connect",
                            "detail": "the backend answered HTTP 500"}

        async def main():
            async with ws_connect(srv, f"?channels={chan}") as ws:
                err = await recv_json(ws)
                assert err["error"] == "hook_failed" and err["detail"] == "the backend answered HTTP 500"
                await expect_ws_closed(ws, 4503)

        arun(main())
        stats = srv.stats()["hooks"]
        assert stats["http_errors"] >= 2 and stats["retries"] == 0  # a connect is not retried
    finally:
        b.close()


def test_backend_that_hangs_times_out(herald, chan):
    b = Backend(lambda doc, a: (200, {"result": "allow"}, 3))
    try:
        srv = hooked(herald, b.url, webhook_timeout="300ms")
        t0 = time.monotonic()
        r = request(srv.port, "GET", f"/stream?channels={chan}")
        took = time.monotonic() - t0
        assert r.status == 503, r.body
        assert r.json() == {"error": "hook_failed", "hook": "connect", "detail": "timeout after 300 ms"}
        assert 0.25 < took < 2.5, took
        assert srv.stats()["hooks"]["timeouts"] >= 1
        assert "herald_hook_results_total{result=\"timeout\"} 1" in srv.request("GET", "/metrics").body.decode()
    finally:
        b.close()


def test_connect_waiting_for_a_backend_connection_says_it_was_not_sent(herald, chan):
    # --hook-connections 1 and a backend that holds each connect 3 s: of two connects at
    # once one is at the backend, the other waits for the connection; both time out, and
    # only the first is the backend's doing (before, both said "timeout after 500 ms").
    b = Backend(lambda doc, a: (200, {"result": "allow"}, 3))
    try:
        srv = hooked(herald, b.url, webhook_timeout="500ms", hook_connections=1)
        sent = "timeout after 500 ms"
        not_sent = ("timeout after 500 ms, not sent: no connection to the backend became free or "
                    "opened in time (--hook-connections)")
        # The waiting call's deadline comes a few ms after the first one's, which frees the
        # connection: now and then it goes out in those ms (and says so, truthfully). Every
        # round must be one of the two true answers; some round must show the waiting one.
        rounds = []
        for _ in range(6):
            got = []
            threads = [threading.Thread(target=lambda: got.append(
                request(srv.port, "GET", f"/sse?channels={chan}"))) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert [r.status for r in got] == [503, 503]
            details = sorted(r.json()["detail"] for r in got)
            assert details in ([sent, not_sent], [sent, sent]), details
            rounds.append(details)
            if details == [sent, not_sent]:
                break
        assert rounds[-1] == [sent, not_sent], rounds
    finally:
        b.close()


def test_backend_down_fails_closed_or_open(herald, chan):
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    closed = herald(webhook_url=url, webhook_secret=SECRET)
    r = request(closed.port, "GET", f"/sse?channels={chan}")
    assert r.status == 503 and r.json()["error"] == "hook_failed"
    assert r.json()["detail"].startswith("cannot reach the backend: "), r.json()
    assert closed.stats()["hooks"]["unreachable"] == 1

    opened = herald(webhook_url=url, webhook_secret=SECRET, webhook_fail_open=True)
    with SSE(opened, chan) as sub:
        assert sub.status == 200
        opened.wait_subscribers(chan)
        opened.publish(chan, "fail-open")
        assert sub.next_message()["data"] == "fail-open"


def test_answer_without_a_result_is_a_failure(herald, chan):
    b = Backend(lambda doc, a: (200, {"ok": 1}, 0))
    try:
        srv = hooked(herald, b.url)
        r = request(srv.port, "GET", f"/sse?channels={chan}")
        assert r.status == 503
        assert "no \"result\"" in r.json()["detail"]
    finally:
        b.close()


@pytest.mark.parametrize("body, detail", [
    (b"allow", "the backend's answer is not a JSON object"),
    (b'["allow"]', "the backend's answer is not a JSON object"),
    (b'{"result":"allow","pad":"' + b"x" * 70000 + b'"}', "the answer is over 65536 bytes"),
])
def test_an_answer_that_is_not_a_json_object_is_a_failure(herald, chan, body, detail):
    b = Backend(lambda doc, a: (200, body, 0))
    try:
        srv = hooked(herald, b.url)
        r = request(srv.port, "GET", f"/sse?channels={chan}")
        assert r.status == 503, r.body
        assert r.json() == {"error": "hook_failed", "hook": "connect", "detail": detail}
        assert srv.stats()["hooks"]["bad_answers"] == 1
    finally:
        b.close()


# ---- no message lost while the backend thinks -----------------------------------------------


@pytest.mark.parametrize("kind", ["ws", "sse"])
def test_messages_published_while_waiting_reach_the_client(herald, chan, kind):
    b = Backend(lambda doc, a: (200, {"result": "allow"}, 0.8 if doc["event"] == "connect" else 0))
    try:
        srv = hooked(herald, b.url)
        out = {}

        def publish_while_parked():
            b.wait("connect")
            out["ids"] = srv.publish_many(chan, [b"w1", b"w2", b"w3"])

        t = threading.Thread(target=publish_while_parked)
        t.start()
        if kind == "sse":
            with SSE(srv, chan) as sub:
                t.join(10)
                msgs = sub.messages(3)
        else:
            async def main():
                async with ws_connect(srv, f"?channels={chan}") as ws:
                    await athread(t.join, 10)
                    return [await recv_json(ws) for _ in range(3)]
            msgs = arun(main())
        assert [m["data"] for m in msgs] == ["w1", "w2", "w3"]
        assert [m["id"] for m in msgs] == out["ids"]
    finally:
        b.close()


# ---- subscribe op over WebSocket ------------------------------------------------------------


def test_ws_subscribe_op_asks_the_backend(herald, chan):
    allowed, denied = chan + "-ok", chan + "-no"

    def answer(doc, a):
        if doc["event"] == "subscribe" and denied in doc["channels"]:
            return 200, {"result": "deny", "reason": "not yours"}, 0
        return 200, {"result": "allow"}, 0

    b = Backend(answer)
    try:
        srv = hooked(herald, b.url)

        async def main():
            async with ws_connect(srv) as ws:
                await ws.send(json.dumps({"op": "subscribe", "channels": [denied], "ref": 1}))
                assert await recv_json(ws) == {"event": "error", "error": "hook_denied", "hook": "subscribe",
                                               "detail": "not yours", "ref": 1}
                await ws.send(json.dumps({"op": "subscribe", "channels": [allowed], "ref": 2}))
                ans = await recv_json(ws)
                assert ans["event"] == "subscribed" and ans["ref"] == 2
                await athread(srv.publish, allowed, "hello")
                assert (await recv_json(ws))["data"] == "hello"

        arun(main())
        subs = b.events("subscribe")
        assert [s["channels"] for s in subs] == [[denied], [allowed]]
        assert len({s["conn"] for s in subs} | {c["conn"] for c in b.events("connect")}) == 1
    finally:
        b.close()


# ---- disconnect ----------------------------------------------------------------------------


def test_disconnect_is_retried_after_a_failure(herald, chan):
    b = Backend(lambda doc, a: (503 if doc["event"] == "disconnect" and a == 1 else 200,
                                {"result": "allow"}, 0))
    try:
        srv = hooked(herald, b.url)

        async def main():
            async with ws_connect(srv, f"?channels={chan}"):
                await asyncio.sleep(0.2)

        arun(main())
        wait_until(lambda: len(b.events("disconnect")) == 2, what="the disconnect and its retry")
        first, second = [c for c in b.calls if c["doc"]["event"] == "disconnect"]
        assert first["raw"] == second["raw"] and signature_ok(second)
        assert second["headers"]["X-Herald-Attempt"] == "2"
        assert second["at"] - first["at"] >= 0.15  # backoff
        d = second["doc"]
        assert d["channels"] == [chan] and d["reason"] == "client closed"
        assert 150 <= d["duration_ms"] < 10000
        assert d["conn"] == b.events("connect")[0]["conn"]
        assert srv.stats()["hooks"]["retries"] == 1
    finally:
        b.close()


def test_disconnect_says_why_the_server_ended_it(herald, backend, chan):
    srv = hooked(herald, backend.url, lifetime_min="1s", lifetime_max="1s")
    with SSE(srv, chan) as sub:
        assert sub.status == 200
        assert sub.next_event().event == "reconnect"
    d = backend.wait("disconnect")[0]
    assert d["reason"] == "connection lifetime reached: reconnect"


def test_webhook_events_choose_what_is_sent(herald, backend, chan):
    srv = hooked(herald, backend.url, webhook_events="disconnect")
    with SSE(srv, chan) as sub:
        assert sub.status == 200
        srv.wait_subscribers(chan)
    backend.wait("disconnect")
    assert [d["event"] for d in backend.events()] == ["disconnect"]


# ---- bounds ---------------------------------------------------------------------------------


def held_backend():
    """A backend that allows each call once the returned event is set (500 after 20 s)."""
    release = threading.Event()
    return release, Backend(lambda doc, a: (200, {"result": "allow"}, 0) if release.wait(20) else (500, None, 0))


def release_and_admit(release, conns):
    """Lets the held calls through: each raw connection's request is answered 200."""
    release.set()
    for c in conns:
        status, _ = c.read_head()
        assert status == 200
        c.close()


def test_a_full_queue_refuses_connects_and_drops_notifications(herald, chan):
    release, b = held_backend()
    try:
        srv = hooked(herald, b.url, hook_queue=2, webhook_timeout="20s")
        holders = []
        for _ in range(2):  # two connects wait for the backend: the queue is full
            t = threading.Thread(target=lambda: holders.append(SSE(srv, chan)))
            t.start()
        b.wait("connect", 2)
        r = request(srv.port, "GET", f"/sse?channels={chan}")
        assert r.status == 503
        assert r.json()["detail"].startswith("too many hook calls wait for the backend")
        assert srv.stats()["hooks"]["refused"] == 1
        release.set()
        wait_until(lambda: len(holders) == 2, what="the parked subscribers admitted")
        assert all(h.status == 200 for h in holders)
        for h in holders:
            h.close()
        backend_calls = b.wait("disconnect", 2)
        assert len(backend_calls) == 2
    finally:
        release.set()
        b.close()


def test_one_apps_full_queue_leaves_other_apps_alone(herald, chan):
    release, b = held_backend()
    try:
        srv = herald(admin_key=ADMIN, hook_queue_app=1, webhook_timeout="20s")
        for app in ("busy", "calm"):
            assert admin(srv, "POST", "/admin/apps", {"name": app, "subscribe": "public"}).status == 201
            r = admin(srv, "PATCH", f"/admin/apps/{app}", {"settings": {"webhook_url": b.url}})
            assert r.status == 200, r.body
        first = RawConn(srv.port)
        first.send(http_get(f"/apps/busy/sse?channels={chan}"))
        b.wait("connect")
        r = request(srv.port, "GET", f"/apps/busy/sse?channels={chan}")  # the app's one call waits
        assert r.status == 503, r.body
        assert r.json()["detail"].startswith("too many hook calls wait for the backend"), r.json()
        other = RawConn(srv.port)
        other.send(http_get(f"/apps/calm/sse?channels={chan}"))  # another app still calls
        assert [d["app"] for d in b.wait("connect", 2)] == ["busy", "calm"]
        release_and_admit(release, (first, other))
        assert srv.stats()["hooks"]["refused"] == 1
    finally:
        release.set()
        b.close()


def test_many_clients_with_a_slow_backend(herald, chan):
    b = Backend(lambda doc, a: (200, {"result": "allow"}, 0.2 if doc["event"] == "connect" else 0))
    try:
        srv = hooked(herald, b.url, hook_connections=8)
        n = 40

        async def main():
            socks = []
            t0 = time.monotonic()
            for ws in await asyncio.gather(*[websockets.connect(srv.ws_url(f"?channels={chan}"),
                                                                ping_interval=None, open_timeout=20)
                                             for _ in range(n)]):
                socks.append(ws)
            took = time.monotonic() - t0
            await athread(srv.wait_subscribers, chan, n)
            await athread(srv.publish, chan, "to-all")
            got = [await recv_json(ws) for ws in socks]
            for ws in socks:
                await ws.close()
            return took, got

        took, got = arun(main())
        assert all(m["data"] == "to-all" for m in got)
        # 40 calls of 200 ms over at most 8 connections: about 1 s, never one after another.
        assert took < 6, took
        peers = {c["peer"] for c in b.calls if c["doc"]["event"] == "connect"}
        assert len(peers) <= 8, peers  # the pool's bound
    finally:
        b.close()


def test_client_gone_while_its_connect_hook_waits(herald, chan):
    b = Backend(lambda doc, a: (200, {"result": "allow", "channels": [chan + "-x"]},
                                0.7 if doc["event"] == "connect" else 0))
    try:
        srv = hooked(herald, b.url)
        for n, path in enumerate((f"/ws?channels={chan}", f"/sse?channels={chan}")):
            conn = RawConn(srv.port)
            conn.send(ws_handshake(path) if path.startswith("/ws") else http_get(path))
            b.wait("connect", n + 1)
            conn.close()  # gone before the answer
        time.sleep(1.2)
        assert srv.request("GET", "/healthz").status == 200
        # Nothing subscribed for a client that went; no disconnect for one never connected.
        assert (srv.channel(chan) or {"subscribers": 0})["subscribers"] == 0
        assert b.events("disconnect") == []
    finally:
        b.close()


# ---- apps: settings through the admin API -----------------------------------------------------


def admin(srv, method, path, body=None):
    headers = {"Authorization": f"Bearer {ADMIN}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(body)
    return request(srv.port, method, path, body, headers)


def test_app_webhook_settings(herald, backend, chan):
    srv = herald(admin_key=ADMIN)
    r = admin(srv, "POST", "/admin/apps", {"name": "chat", "plan": "unlimited", "subscribe": "public"})
    assert r.status == 201, r.body
    token_secret = r.json()["token_secret"]
    bad = admin(srv, "PATCH", "/admin/apps/chat", {"settings": {"webhook_url": "ftp://x"}})
    assert bad.status == 400 and "webhook_url" in bad.json()["detail"], bad.body
    bad = admin(srv, "PATCH", "/admin/apps/chat", {"settings": {"webhook_events": ["connect", "bogus"]}})
    assert bad.status == 400 and "webhook_events" in bad.json()["detail"]
    ok = admin(srv, "PATCH", "/admin/apps/chat",
               {"settings": {"webhook_url": backend.url, "webhook_timeout_ms": 1500,
                             "webhook_events": ["connect", "disconnect"]}})
    assert ok.status == 200, ok.body
    settings = admin(srv, "GET", "/admin/apps/chat").json()["settings"]
    assert settings["webhook_url"] == backend.url and settings["webhook_timeout_ms"] == 1500
    assert settings["webhook_events"] == ["connect", "disconnect"] and settings["webhook_fail_open"] is False

    r = request(srv.port, "GET", f"/apps/chat/poll?channels={chan}&timeout=0")
    assert r.status == 200  # subscribe is not among its events
    with _app_sse(srv, "chat", chan) as sub:
        assert sub.status == 200
    (doc,) = backend.wait("connect")
    assert doc["app"] == "chat" and doc["channels"] == [chan]
    # Without a webhook_secret the app's token secret signs.
    assert signature_ok(backend.calls[0], token_secret)
    # The default app has no hooks.
    with SSE(srv, chan) as sub:
        assert sub.status == 200
    time.sleep(0.2)
    assert all(c["doc"]["app"] == "chat" for c in backend.calls)
    # A separate secret, then hooks off again.
    admin(srv, "PATCH", "/admin/apps/chat", {"settings": {"webhook_secret": "own-secret"}})
    with _app_sse(srv, "chat", chan) as sub:
        assert sub.status == 200
    backend.wait("connect", 2)
    assert signature_ok([c for c in backend.calls if c["doc"]["event"] == "connect"][1], "own-secret")
    admin(srv, "PATCH", "/admin/apps/chat", {"settings": {"webhook_url": None}})
    n = len(backend.calls)
    with _app_sse(srv, "chat", chan) as sub:
        assert sub.status == 200
    time.sleep(0.3)
    assert [c["doc"]["event"] for c in backend.calls[n:]] in ([], ["disconnect"])


def _app_sse(srv, app, channels):
    cls = type("AppSSE", (SSE,), {"path": f"/apps/{app}/sse"})
    return cls(srv, channels)


def test_webhook_flags_are_checked_at_start(herald_bin, tmp_path):
    import subprocess

    def run(*args):
        return subprocess.run([herald_bin, "--listen", f"127.0.0.1:{free_port()}", *args],
                              capture_output=True, text=True, timeout=10)

    r = run("--webhook-url", "http://127.0.0.1:1/x")
    assert r.returncode == 2 and "--webhook-secret" in r.stderr, r.stderr
    r = run("--webhook-url", "gopher://x", "--webhook-secret", "s")
    assert r.returncode == 2 and "http://" in r.stderr, r.stderr
    r = run("--webhook-url", "http://127.0.0.1:1/x", "--webhook-secret", "s", "--webhook-events", "connect,nope")
    assert r.returncode == 2 and "--webhook-events" in r.stderr, r.stderr


# ---- client messages over WebSocket: rpc ------------------------------------------------------


def rpc_backend(delay_of=lambda doc: 0):
    def answer(doc, attempt):
        if doc["event"] != "rpc":
            return 200, {"result": "allow"}, 0
        if doc["method"] == "fail":
            return 200, {"error": "no such room"}, delay_of(doc)
        return 200, {"data": {"method": doc["method"], "echo": doc["data"]}}, delay_of(doc)
    return Backend(answer)


def test_rpc_answers_by_ref_out_of_order(herald, chan):
    b = rpc_backend(lambda doc: 0.6 if doc["data"] == 1 else 0)
    try:
        srv = hooked(herald, b.url)

        async def main():
            async with ws_connect(srv, f"?channels={chan}") as ws:
                await ws.send(json.dumps({"op": "rpc", "method": "slow", "data": 1, "ref": "a"}))
                await ws.send(json.dumps({"op": "rpc", "method": "fast", "data": {"x": [2]}, "ref": "b"}))
                await ws.send(json.dumps({"op": "rpc", "method": "fail", "data": None, "ref": 3}))
                got = [await recv_json(ws) for _ in range(3)]
                by_ref = {m["ref"]: m for m in got}
                assert by_ref["b"] == {"event": "reply", "data": {"method": "fast", "echo": {"x": [2]}}, "ref": "b"}
                assert by_ref["a"] == {"event": "reply", "data": {"method": "slow", "echo": 1}, "ref": "a"}
                assert by_ref[3] == {"event": "error", "error": "rpc_error", "detail": "no such room", "ref": 3}
                assert got[-1]["ref"] == "a"  # the slow one came last

        arun(main())
        rpcs = b.events("rpc")
        assert sorted(r["method"] for r in rpcs) == ["fail", "fast", "slow"]
        conn = b.events("connect")[0]["conn"]
        assert all(r["conn"] == conn and r["transport"] == "websocket" and r["app"] is None for r in rpcs)
        assert all(signature_ok(c) for c in b.calls)
    finally:
        b.close()


def test_rpc_timeout_is_an_error_with_the_ref(herald):
    b = rpc_backend(lambda doc: 3)
    try:
        srv = hooked(herald, b.url, webhook_timeout="300ms")

        async def main():
            async with ws_connect(srv) as ws:
                ans = await ws_op_json(ws, {"op": "rpc", "method": "m", "ref": 9})
                assert ans == {"event": "error", "error": "hook_failed", "hook": "rpc",
                               "detail": "timeout after 300 ms", "ref": 9}
                assert await ws_op_json(ws, {"op": "ping", "ref": 1}) == {"event": "pong", "ref": 1}

        arun(main())
    finally:
        b.close()


async def ws_op_json(ws, op):
    await ws.send(json.dumps(op))
    return await recv_json(ws)


def test_rpc_in_flight_is_bounded_per_connection(herald):
    b = rpc_backend(lambda doc: 0.8)
    try:
        srv = hooked(herald, b.url, rpc_inflight=2)

        async def main():
            async with ws_connect(srv) as ws:
                for i in range(3):
                    await ws.send(json.dumps({"op": "rpc", "method": "m", "data": i, "ref": i}))
                first = await recv_json(ws)
                assert first["ref"] == 2 and first["error"] == "too_many_rpc", first
                assert "--rpc-inflight" in first["detail"]
                rest = sorted([await recv_json(ws) for _ in range(2)], key=lambda m: m["ref"])
                assert [m["event"] for m in rest] == ["reply", "reply"]
                # Answered: room again.
                ans = await ws_op_json(ws, {"op": "rpc", "method": "m", "data": 7, "ref": 7})
                assert ans["event"] == "reply" and ans["data"]["echo"] == 7

        arun(main())
    finally:
        b.close()


@contextlib.contextmanager
def hanging_rpc_herald(herald, timeout, **flags):
    """herald (webhook_timeout) with a backend that answers connect and subscribe at once
    and an rpc only once the event is set (at the end at the latest): (srv, backend, event)."""
    release = threading.Event()

    def answer(doc, attempt):
        if doc["event"] == "rpc":
            release.wait(60)
            return 200, {"data": "late"}, 0
        return 200, {"result": "allow", "data": "ok"}, 0
    b = Backend(answer)
    try:
        yield hooked(herald, b.url, webhook_timeout=timeout, **flags), b, release
    finally:
        release.set()
        b.close()


async def send_rpcs(ws, n):
    for i in range(n):
        await ws.send(json.dumps({"op": "rpc", "method": "search", "ref": i}))


def test_rpc_in_flight_leaves_backend_connections_for_connects(herald, chan):
    # One WebSocket keeps --rpc-inflight (16) rpc calls at a backend that does not answer
    # them; the backend has --hook-connections (16) connections. Other clients' connects
    # must still reach the backend and be let in, not queue behind the rpc calls until
    # their timeout (here 20 s, so a connect that waits is plainly seen waiting).
    with hanging_rpc_herald(herald, "20s") as (srv, b, release):

        async def main():
            async with ws_connect(srv) as attacker:
                await send_rpcs(attacker, 16)
                await athread(b.wait, "rpc", 12)  # 12 of 16 connections: rpc's share
                for n in range(3):
                    async with ws_connect(srv, f"?channels={chan}") as victim:
                        assert await ws_op(victim, {"op": "ping", "ref": n}, timeout=5) == \
                            {"event": "pong", "ref": n}
                assert len(b.events("connect")) == 4  # the attacker's and the victims'
                assert not release.is_set()
                release.set()
                replies = [await recv_json(attacker, timeout=20) for _ in range(16)]
                assert sorted(m["ref"] for m in replies) == list(range(16))
                assert all(m["event"] == "reply" for m in replies), replies

        arun(main())
        assert len(b.events("rpc")) == 16
        wait_until(lambda: srv.stats()["hooks"]["pending"] == 0, what="every hook call ended")


def test_rpc_flood_leaves_queue_room_for_connects_and_disconnects(herald, chan):
    # rpc calls may fill three quarters of --hook-queue-app (6 of 8): past that an rpc is
    # refused, and another client's connect and its disconnect notification still get in
    # (before, the rpc calls filled the queue: the connect got 4503, the disconnect was dropped).
    with hanging_rpc_herald(herald, "20s", hook_queue_app=8) as (srv, b, release):

        async def main():
            async with ws_connect(srv) as attacker:
                await send_rpcs(attacker, 16)
                refused = [await recv_json(attacker) for _ in range(10)]
                assert {m["ref"] for m in refused} == set(range(6, 16)), refused
                assert all(m["error"] == "hook_failed" and
                           m["detail"].startswith("too many rpc calls wait for the backend")
                           for m in refused), refused
                async with ws_connect(srv, f"?channels={chan}") as victim:
                    assert await ws_op(victim, {"op": "ping", "ref": 1}) == {"event": "pong", "ref": 1}
                await athread(b.wait, "disconnect", 1)

        arun(main())
        hooks = srv.stats()["hooks"]
        assert hooks["dropped"] == 0 and hooks["refused"] == 10, hooks
        assert len(b.events("connect")) == 2


def test_rpc_flood_leaves_room_in_a_small_queue(herald, chan):
    # A --hook-queue-app of 3 keeps one place for connect, subscribe and notifications too,
    # as --hook-connections does (before, rpc calls filled all 3: the connect got 4503).
    with hanging_rpc_herald(herald, "20s", hook_queue_app=3) as (srv, b, release):

        async def main():
            async with ws_connect(srv) as attacker:
                await send_rpcs(attacker, 5)
                refused = [await recv_json(attacker) for _ in range(3)]
                assert {m["ref"] for m in refused} == {2, 3, 4}, refused
                assert all(m["error"] == "hook_failed" and
                           m["detail"].startswith("too many rpc calls wait for the backend")
                           for m in refused), refused
                async with ws_connect(srv, f"?channels={chan}") as victim:
                    assert await ws_op(victim, {"op": "ping", "ref": 1}) == {"event": "pong", "ref": 1}

        arun(main())
        assert srv.stats()["hooks"]["refused"] == 3
        assert len(b.events("connect")) == 2


def test_rpc_waiting_for_a_backend_connection_times_out_as_not_sent(herald):
    # 12 of the 16 rpc calls hold the backend's connections and time out there; the other
    # 4 never leave herald, and their error says so rather than blaming the backend.
    with hanging_rpc_herald(herald, "500ms") as (srv, b, release):

        async def main():
            async with ws_connect(srv) as ws:
                await send_rpcs(ws, 16)
                return [await recv_json(ws, timeout=10) for _ in range(16)]

        got = arun(main())
        assert all(m.get("error") == "hook_failed" and m.get("hook") == "rpc" for m in got), got
        sent = [m["detail"] for m in got if m["detail"] == "timeout after 500 ms"]
        waited = [m["detail"] for m in got if m["detail"] != "timeout after 500 ms"]
        # At most 12 were at the backend (fewer when its Python listener was slow to accept
        # new connections); the others waited in herald for a connection, or were sent with
        # what was left of their 500 ms, or were not sent for want of a connection.
        assert 1 <= len(sent) <= 12 and len(waited) >= 4, got
        assert all(d.startswith(("not sent: waited ", "timeout after 500 ms, ")) and
                   "--hook-connections" in d for d in waited), waited
        assert 12 <= srv.stats()["hooks"]["sent"]["rpc"] <= 16  # 12 at once, then late ones


def test_connection_closed_while_rpc_in_flight(herald):
    b = rpc_backend(lambda doc: 0.5)
    try:
        srv = hooked(herald, b.url)

        async def main():
            for _ in range(5):
                ws = await websockets.connect(srv.ws_url(), ping_interval=None)
                for i in range(4):
                    await ws.send(json.dumps({"op": "rpc", "method": "m", "data": i, "ref": i}))
                await athread(b.wait, "rpc", 1)
                await ws.close()
            await asyncio.sleep(1.2)  # every answer comes back to a connection that went

        arun(main())
        wait_until(lambda: srv.stats()["hooks"]["pending"] == 0, what="every rpc answered")
        assert srv.request("GET", "/healthz").status == 200
        assert len(b.events("disconnect")) == 5
    finally:
        b.close()


def test_rpc_without_a_backend_or_a_token(herald, backend):
    plain = herald()

    async def no_backend():
        async with ws_connect(plain) as ws:
            ans = await ws_op_json(ws, {"op": "rpc", "method": "m", "ref": 1})
            assert ans["error"] == "rpc_unavailable" and ans["ref"] == 1
            ans = await ws_op_json(ws, {"op": "rpc", "ref": 2})
            assert ans["error"] == "bad_request" and "method" in ans["detail"]

    arun(no_backend())
    tokens = herald(webhook_url=backend.url, token_secret="tok-secret", header_timeout="5s")

    async def no_token():
        async with ws_connect(tokens) as ws:
            ans = await ws_op_json(ws, {"op": "rpc", "method": "m", "ref": 1})
            assert ans["error"] == "token_missing" and ans["ref"] == 1

    arun(no_token())
    assert backend.events("rpc") == []


# ---- client publish: rate limit and the publish notification -----------------------------------


def test_client_publish_is_rate_limited_and_notified(herald, backend, chan):
    secret = "tok-secret"
    # A publish key: a loopback client without it publishes by its token alone.
    srv = herald(webhook_url=backend.url, token_secret=secret, ws_publish=True, client_publish_rate=3,
                 publish_key="pk")
    tok = jwt_hs256(secret, {"sub": "bob", "exp": int(time.time()) + 600, "channels": [chan], "publish": [chan]})

    async def main():
        async with ws_connect(srv, f"?token={tok}") as ws:  # publishes, holds no channel
            for i in range(5):
                await ws.send(json.dumps({"op": "publish", "channel": chan, "data": {"n": i}, "ref": i}))
            answers = {}
            while len(answers) < 5:
                m = await recv_json(ws)
                answers[m["ref"]] = m
            published = [r for r in range(5) if answers[r]["event"] == "published"]
            limited = [r for r in range(5) if answers[r].get("error") == "rate_limited"]
            assert published == [0, 1, 2] and limited == [3, 4], answers
            assert "--client-publish-rate" in answers[3]["detail"]
            # The bucket refills at 3 a second: one more after a third of a second, not two.
            await asyncio.sleep(0.4)
            ans = await ws_op_json(ws, {"op": "publish", "channel": chan, "data": {"n": 5}, "ref": 5})
            assert ans["event"] == "published", ans
            ans = await ws_op_json(ws, {"op": "publish", "channel": chan, "data": {"n": 6}, "ref": 6})
            assert ans.get("error") == "rate_limited", ans
            return [answers[r]["id"] for r in published]

    ids = arun(main())
    # Notifications run side by side on the pooled connections: in id order once sorted.
    notes = sorted(backend.wait("publish", 4), key=lambda n: int(n["id"]))
    assert [n["data"] for n in notes] == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 5}]
    assert [n["id"] for n in notes[:3]] == ids
    assert all(n["user"] == "bob" and n["channels"] == [chan] for n in notes)

    async def another():
        async with ws_connect(srv, f"?token={tok}") as ws:  # a bucket of its own
            for i in range(3):
                ans = await ws_op_json(ws, {"op": "publish", "channel": chan, "data": "x", "ref": i})
                assert ans["event"] == "published", ans

    arun(another())


def test_token_user_in_hook_bodies(herald, backend, chan):
    secret = "tok-secret"
    srv = herald(webhook_url=backend.url, token_secret=secret)
    tok = jwt_hs256(secret, {"sub": "carol", "exp": int(time.time()) + 600, "channels": [chan]})
    with SSE(srv, chan, token=tok) as sub:
        assert sub.status == 200, sub.body
        srv.wait_subscribers(chan)
    (c,) = backend.wait("connect")
    (d,) = backend.wait("disconnect")
    # The token's user names the connection; its own channel (users) is not listed.
    assert c["user"] == "carol" and c["channels"] == [chan]
    assert d["user"] == "carol" and d["channels"] == [chan]
    assert signature_ok(backend.calls[0], secret)  # no --webhook-secret: the token secret signs


# ---- cluster mode: the node that holds the connection calls ------------------------------------


@pytest.mark.threads
def test_two_nodes_on_redis_hook_from_the_clients_node(herald, redis_factory, chan):
    b = Backend(lambda doc, a: (200, {"result": "allow", "channels": [chan + "-x"]},
                                0.6 if doc["event"] == "connect" else 0))
    try:
        redis = redis_factory()
        a_node, b_node = (hooked(herald, b.url, redis=redis.url, node_name=n) for n in "AB")
        # The data set's epoch comes with its first publish: older than any cursor below.
        a_node.publish(chan + "-warm", "w")
        time.sleep(0.4)
        out = {}

        def publish_while_parked():
            b.wait("connect")
            out["ids"] = a_node.publish_many(chan, [b"c1", b"c2"])  # on the other node

        t = threading.Thread(target=publish_while_parked)
        t.start()

        async def main():
            async with ws_connect(b_node, f"?channels={chan}") as ws:
                await athread(t.join, 10)
                got = [await recv_json(ws) for _ in range(2)]
                assert [m["data"] for m in got] == ["c1", "c2"], got
                assert [m["id"] for m in got] == out["ids"]
                await athread(b_node.wait_subscribers, chan + "-x")
                await athread(a_node.publish, chan + "-x", "extra")
                assert (await recv_json(ws))["data"] == "extra"
                ans = await ws_op_json(ws, {"op": "ping", "ref": 1})
                assert ans == {"event": "pong", "ref": 1}

        arun(main())
        with SSE(a_node, chan) as sub:
            assert sub.status == 200
        (conn_b, conn_a) = b.wait("connect", 2)
        assert conn_b["node"] == "B" and conn_a["node"] == "A" and conn_a["transport"] == "sse"
        discs = b.wait("disconnect", 2)
        assert {d["node"] for d in discs} == {"A", "B"}
        assert all(signature_ok(c) for c in b.calls)
    finally:
        b.close()


def client_messages_across_nodes(a_node, b_node, backend, chan):
    """A token client on node B publishes and calls an rpc; a subscriber on node A gets
    the message with the id B acknowledged, B's backend call names B, the rpc's reply
    comes back to the caller only."""
    tok = jwt_hs256("tok-secret", {"sub": "dave", "exp": int(time.time()) + 600, "channels": [chan],
                                   "publish": [chan]})
    with SSE(a_node, chan, token=tok) as sub:
        assert sub.status == 200, sub.body
        key = {"Authorization": "Bearer pk"}
        wait_until(lambda: a_node.request("GET", "/api/channels/" + chan, headers=key).status == 200
                   and a_node.request("GET", "/api/channels/" + chan, headers=key).json()["subscribers"] == 1,
                   what="the subscriber on A")

        async def main():
            async with ws_connect(b_node, f"?token={tok}") as ws:
                ans = await ws_op_json(ws, {"op": "publish", "channel": chan, "data": {"t": "hi"}, "ref": 1})
                assert ans["event"] == "published" and ans["ref"] == 1, ans
                reply = await ws_op_json(ws, {"op": "rpc", "method": "who", "data": [1, 2], "ref": "r"})
                assert reply == {"event": "reply", "ref": "r", "data": {"method": "who", "echo": [1, 2]}}
                return ans["id"]

        ident = arun(main())
        got = sub.next_message()
        assert "id" in got, (got, ident)
        assert got["id"] == ident and got["data"] == {"t": "hi"} and got["channel"] == chan
    (note,) = backend.wait("publish")
    (rpc,) = backend.wait("rpc")
    assert note["node"] == "B" and note["id"] == ident and note["user"] == "dave"
    assert rpc["node"] == "B" and rpc["user"] == "dave"
    assert all(signature_ok(c, "tok-secret") for c in backend.calls)


@pytest.mark.threads
def test_two_nodes_on_redis_client_publish_and_rpc(herald, redis_factory, chan):
    b = rpc_backend()
    try:
        redis = redis_factory()
        nodes = [herald(redis=redis.url, node_name=n, webhook_url=b.url, token_secret="tok-secret",
                        ws_publish=True, publish_key="pk") for n in "AB"]
        client_messages_across_nodes(*nodes, b, chan)
    finally:
        b.close()


@pytest.mark.threads
@pytest.mark.xdist_group("redis-cluster")
def test_redis_cluster_client_publish_and_rpc(herald, chan):
    b = rpc_backend()
    try:
        with RedisCluster(masters=3, replicas=0) as rc:
            nodes = [herald(redis_cluster=rc.seeds, node_name=n, webhook_url=b.url, token_secret="tok-secret",
                            ws_publish=True, publish_key="pk") for n in "AB"]
            client_messages_across_nodes(*nodes, b, chan)
    finally:
        b.close()


def resume_with_hook_channels(srv, chan, first_since=None):
    """An SSE client whose backend adds a channel comes back with the per-channel cursor
    its last event gave (a position for the hook's channel too) and resumes every channel."""
    extra = chan + "-x"
    b = Backend(lambda doc, a: (200, {"result": "allow", "channels": [extra]}, 0))
    try:
        node = srv(b.url)
        names = [chan + "-a", chan + "-b"]
        params = {"since": first_since(node, names)} if first_since else {}
        with SSE(node, ",".join(names), **params) as sub:
            assert sub.status == 200, sub.body
            wait_until(lambda: len(b.events("connect")) == 1, what="the connect hook")
            wait_until(lambda: node.stats("?channels=1").get("channel_subscribers", {}).get(extra) == 1,
                       what="the hook's channel held")
            node.publish(names[0], "a1")
            node.publish(extra, "x1")
            assert [m["data"] for m in sub.messages(2)] == ["a1", "x1"]
            cursor = sub.last_id
        assert cursor.count(".") == 2, cursor  # a position each: a, b, the hook's channel
        node.publish(extra, "x2")
        node.publish(names[1], "b2")
        with SSE(node, ",".join(names), headers={"Last-Event-ID": cursor}) as again:
            assert again.status == 200, again.body  # was 400 bad_cursor: EventSource gave up
            got = again.messages(2)
            assert [m.get("data") for m in got] == ["x2", "b2"], got
        # Without a hook to add channels, a position too many is still a mistake.
        plain = srv(None)
        with SSE(plain, ",".join(names), headers={"Last-Event-ID": cursor}) as refused:
            assert refused.status == 400 and b"bad_cursor" in refused.body
    finally:
        b.close()


def test_per_channel_cursor_resumes_the_hooks_channels(herald, chan):
    def first_since(node, names):  # a per-channel cursor asks for per-channel ids
        ident = node.publish(names[0], "a0")["id"]
        return f"{ident}.0"

    resume_with_hook_channels(
        lambda url: herald(**({"webhook_url": url, "webhook_secret": SECRET} if url else {})), chan, first_since)


@pytest.mark.xdist_group("redis-cluster")
def test_redis_cluster_sse_resumes_the_hooks_channels(herald, chan):
    with RedisCluster(masters=3, replicas=0) as rc:
        resume_with_hook_channels(lambda url: herald(redis_cluster=rc.seeds, **(
            {"webhook_url": url, "webhook_secret": SECRET} if url else {})), chan)


def test_hook_channels_past_the_connection_cap_are_logged(herald, chan):
    extras = [f"{chan}-{i}" for i in range(70)]
    b = Backend(lambda doc, a: (200, {"result": "allow", "channels": extras}, 0))
    try:
        srv = hooked(herald, b.url)
        with SSE(srv, chan) as sub:  # one channel named: room for 63 of the backend's
            assert sub.status == 200, sub.body
            wait_until(lambda: srv.stats("?channels=1").get("channel_subscribers", {}).get(extras[62]) == 1,
                       what="the 63rd extra channel held")
            held = srv.stats("?channels=1")["channel_subscribers"]
            assert extras[63] not in held and len([c for c in held if c.startswith(chan + "-")]) == 63
        wait_until(lambda: "the last 7 are not subscribed" in srv.log(), what="the warning")
        b.answer = lambda doc, a: (200, {"result": "allow", "channels": "not-a-list"}, 0)
        with SSE(srv, chan) as sub:
            assert sub.status == 200, sub.body
        wait_until(lambda: "is not a list of channel names" in srv.log(), what="the warning")
    finally:
        b.close()


def test_messages_lost_while_the_hook_waits_are_a_gap(herald, chan):
    """What came while the backend thought and is no longer kept is told as a gap (the
    implied cursor drops only gaps about a history with nothing kept after it)."""
    b = Backend(lambda doc, a: (200, {"result": "allow"}, 0.8))
    try:
        srv = hooked(herald, b.url, history_size=1)
        srv.publish(chan, "before")
        out = {}

        def publish_while_parked():
            b.wait("connect")
            out["ids"] = srv.publish_many(chan, [b"m1", b"m2", b"m3"])  # history keeps m3 only

        t = threading.Thread(target=publish_while_parked)
        t.start()
        with SSE(srv, chan) as sub:  # its head waits for the backend's answer
            t.join(10)
            ids = out["ids"]
            gap, last = sub.messages(2)
            assert gap["event"] == "gap" and gap["oldest"] == ids[2], gap
            assert last["id"] == ids[2] and last["data"] == "m3"
    finally:
        b.close()


def test_shutdown_while_connects_and_rpcs_wait(herald, chan):
    release = threading.Event()
    b = Backend(lambda doc, a: (200, {"result": "allow", "data": 1}, 0) if release.wait(15) else (500, None, 0))
    try:
        srv = hooked(herald, b.url, webhook_timeout="10s", shutdown_timeout="1s")
        clients = [RawConn(srv.port) for _ in range(3)]
        for c in clients:
            c.send(http_get(f"/sse?channels={chan}"))
        b.wait("connect", 3)
        t0 = time.monotonic()
        rc = srv.terminate()  # parked requests and calls in flight end with the server
        assert rc == 0, srv.log_tail()
        assert time.monotonic() - t0 < 8
        for c in clients:
            c.close()
        # An rpc in flight at shutdown.
        srv = hooked(herald, b.url, webhook_timeout="10s", shutdown_timeout="1s", webhook_events="rpc")

        async def main():
            ws = await websockets.connect(srv.ws_url(), ping_interval=None)
            await ws.send(json.dumps({"op": "rpc", "method": "m", "ref": 1}))
            await athread(b.wait, "rpc")
            assert await athread(srv.terminate) == 0, srv.log_tail()
            await ws.close()

        arun(main())
    finally:
        release.set()
        b.close()


def test_app_webhook_settings_survive_a_restart(herald, backend, tmp_path, chan):
    state = tmp_path / "state"
    state.mkdir()
    s1 = herald(admin_key=ADMIN, state_dir=str(state))
    assert admin(s1, "POST", "/admin/apps", {"name": "keep", "subscribe": "public"}).status == 201
    r = admin(s1, "PATCH", "/admin/apps/keep",
              {"settings": {"webhook_url": backend.url, "webhook_secret": "kept", "webhook_retries": 5}})
    assert r.status == 200, r.body
    assert s1.terminate() == 0
    s2 = herald(admin_key=ADMIN, state_dir=str(state))
    settings = admin(s2, "GET", "/admin/apps/keep").json()["settings"]
    assert settings["webhook_url"] == backend.url and settings["webhook_retries"] == 5
    with _app_sse(s2, "keep", chan) as sub:
        assert sub.status == 200
    backend.wait("connect")
    assert signature_ok(backend.calls[0], "kept")


def test_one_address_cannot_take_every_waiting_call(herald, chan):
    release, b = held_backend()
    try:
        srv = hooked(herald, b.url, hook_queue_ip=2, limit_loopback=True, webhook_timeout="20s")
        held = []
        for _ in range(2):
            c = RawConn(srv.port)  # from 127.0.0.1
            c.send(http_get(f"/sse?channels={chan}"))
            held.append(c)
        b.wait("connect", 2)
        r = request(srv.port, "GET", f"/sse?channels={chan}")  # a third from the same address
        assert r.status == 503
        assert r.json() == {"error": "hook_failed", "hook": "connect",
                            "detail": "too many hook calls of your address wait for the backend "
                                      "(--hook-queue-ip); retry once they are answered"}
        other = RawConn(srv.port, source="127.0.0.2")  # another client is not affected
        other.send(http_get(f"/sse?channels={chan}"))
        b.wait("connect", 3)
        release_and_admit(release, held + [other])
        assert srv.stats()["hooks"]["refused"] == 1
    finally:
        release.set()
        b.close()


def test_the_user_a_connect_hook_names_gets_the_users_messages(herald, chan):
    b = Backend(lambda doc, a: (200, {"result": "allow", "user": "hooked-user"}, 0))
    try:
        srv = hooked(herald, b.url)  # public subscribing: no token, no sub
        with SSE(srv, chan) as sse, SSE(srv, chan, user="0") as opted_out:
            assert sse.status == 200 and opted_out.status == 200
            srv.wait_subscribers(chan, 2)

            async def main():
                async with ws_connect(srv) as ws:  # no channels at all: the user's only
                    await athread(b.wait, "connect", 3)
                    r = await athread(srv.publish_json, {"users": ["hooked-user"], "data": "to-you"})
                    assert r["subscribers"] == 2, r  # the SSE and the WebSocket, not the opted out
                    assert (await recv_json(ws))["data"] == "to-you"

            arun(main())
            assert sse.next_message()["data"] == "to-you"
            srv.publish(chan, "on-the-channel")
            assert opted_out.next_message()["data"] == "on-the-channel"  # nothing before it
    finally:
        b.close()


def test_the_webhook_secret_is_not_shown_without_the_secrets(herald, backend, chan):
    srv = herald(admin_key=ADMIN)
    created = admin(srv, "POST", "/admin/apps", {"name": "quiet", "subscribe": "public"}).json()
    r = admin(srv, "PATCH", "/admin/apps/quiet", {"settings": {"webhook_url": backend.url,
                                                              "webhook_secret": "do-not-show"}})
    assert r.status == 200 and "do-not-show" not in r.body.decode(), r.body
    got = admin(srv, "GET", "/admin/apps/quiet")
    assert "do-not-show" not in got.body.decode()
    settings = got.json()["settings"]
    assert settings["webhook_secret"] is True  # set, not shown
    stats = request(srv.port, "GET", "/apps/quiet/stats",
                    headers={"Authorization": f"Bearer {created['publish_key']}"})
    assert stats.status == 200 and "do-not-show" not in stats.body.decode(), stats.body
    # What a reader got, sent back, keeps the secret.
    assert admin(srv, "PATCH", "/admin/apps/quiet", {"settings": settings}).status == 200
    with _app_sse(srv, "quiet", chan) as sub:
        assert sub.status == 200
    backend.wait("connect")
    assert signature_ok(backend.calls[0], "do-not-show")


def test_heartbeat_goes_on_after_a_subscribe_that_waited(herald, backend, chan):
    srv = hooked(herald, backend.url, heartbeat="300ms", close_grace="2s")
    ws = RawWS(srv, "")
    try:
        ws.send_json({"op": "subscribe", "channels": [chan], "ref": 1})
        # The op waited for the backend (parked); the server's pings must go on after it.
        pings = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and pings < 2:
            f = ws.recv_frame(timeout=max(0.1, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                pings += 1
                ws.send_frame(OP_PONG, f.payload)
            elif f.opcode == OP_TEXT:
                assert f.json()["event"] == "subscribed", f
        assert pings == 2, "no heartbeat after the subscribe op"
        assert backend.events("subscribe")[0]["channels"] == [chan]
    finally:
        ws.close()
