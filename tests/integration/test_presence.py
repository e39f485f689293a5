"""Presence (DESIGN.md §12, issue 10 part 2; docs/interactive.md#presence): a channel with
the option (or its app's setting) `presence` keeps who is on it — per user (a token's
"sub", or the connect hook's user) with a connection count and the user's info, the
connections without a user as one anonymous count — listed by
GET /api/channels/{name}/presence; subscribers that ask (presence=1) get `join` when a
user's first connection arrives and `leave` when its last goes, live only.

Checked with independent clients (raw sockets for WebSocket, SSE and NDJSON streams,
http.client for long-polls and the API) on a single node; the cluster tests are in
test_presence_cluster.py.
"""

import json
import time
import urllib.parse

import pytest

from helpers import (
    SSE,
    WAIT,
    RawConn,
    RawWS,
    Stream,
    http_get,
    jwt_hs256,
    poll,
    request,
    sub_query,
    wait_until,
)

SECRET = "presence-secret-0123456789"
ADMIN = "presence-admin-key"
PERSISTENT = ["ws", "sse", "stream"]


def token(sub=None, info=None, channels=("**",), secret=SECRET):
    claims = {"exp": int(time.time()) + 3600, "channels": list(channels)}
    if sub is not None:
        claims["sub"] = sub
    if info is not None:
        claims["info"] = info
    return jwt_hs256(secret, claims)


def open_sub(kind, srv, channel, tok, presence=False, **params):
    """A live subscriber of `channel` on a persistent transport, head read."""
    query = sub_query(channel, token=tok, presence="1" if presence else None, **params)
    if kind == "ws":
        return RawWS(srv, query)
    cls = SSE if kind == "sse" else Stream
    s = cls(srv, channel, token=tok, presence="1" if presence else None, **params)
    assert s.status == 200, (s.status, s.body)
    return s


def put(srv, channel, opts, status=200, app=None):
    prefix = f"/apps/{app}" if app else ""
    r = request(srv.port, "PUT", f"{prefix}/api/channels/{channel}", json.dumps(opts))
    assert r.status in ((200, 201) if status == 200 else (status,)), (r.status, r.body)
    return r.json()


def presence(srv, channel, status=200, query="", app=None):
    prefix = f"/apps/{app}" if app else ""
    r = request(srv.port, "GET", f"{prefix}/api/channels/{channel}/presence{query}")
    assert r.status == status, (r.status, r.body)
    return r.json()


def users_of(doc):
    return {u["user"]: u["connections"] for u in doc["users"]}


def wait_users(srv, channel, want, anonymous=None):
    """Waits until the channel lists exactly `want` ({user: connections})."""

    def ok():
        doc = presence(srv, channel)
        return users_of(doc) == want and (anonymous is None or doc["anonymous"] == anonymous)

    wait_until(ok, what=f"presence of {channel} == {want}")
    return presence(srv, channel)


def publish(srv, channel, data):
    r = request(srv.port, "POST", f"/pub/{channel}", data)
    assert r.status == 201, (r.status, r.body)


def next_event(sub, timeout=WAIT):
    return sub.messages(1, timeout)[0]


def expect_only_message(sub, srv, channel, data):
    """Publishes a marker and asserts it is the next event: nothing came before it."""
    publish(srv, channel, data)
    ev = next_event(sub)
    assert ev.get("event") == "message" and ev["data"] == data, ev


@pytest.fixture(scope="module")
def srv(module_herald):
    return module_herald(token_secret=SECRET, admin_key=ADMIN)


def close_all(subs):
    for s in subs:
        s.close()


# ---- the option ---------------------------------------------------------------------------


def test_presence_is_off_by_default_and_a_channel_option(srv, chan):
    info = put(srv, chan, {})
    assert info["presence"] is False
    body = presence(srv, chan, status=409)
    assert body["error"] == "presence_off" and "PUT /api/channels" in body["detail"], body
    assert put(srv, chan, {"presence": True})["presence"] is True
    assert presence(srv, chan) == {"channel": chan, "users": [], "total_users": 0,
                                   "connections": 0, "anonymous": 0, "unlisted": 0,
                                   "next": None}
    bad = put(srv, chan, {"presence": "yes"}, status=400)
    assert bad["error"] == "bad_option" and "presence" in bad["detail"], bad
    assert presence(srv, "no-such-channel-p", status=404)["error"] == "channel_not_found"


# ---- who is here ------------------------------------------------------------------------------


def test_users_with_connection_counts_info_and_anonymous_on_every_transport(srv, chan):
    put(srv, chan, {"presence": True})
    info = {"name": "Alice", "avatar": "/a.png"}
    subs = [open_sub(kind, srv, chan, token("alice", info)) for kind in PERSISTENT]
    subs.append(open_sub("sse", srv, chan, token("bob")))
    subs += [open_sub("ws", srv, chan, token()), open_sub("stream", srv, chan, token())]
    try:
        # a long-poll is no presence: it is not counted while it waits
        p = poll(srv, chan, None, 0, extra=f"&token={token('carol')}")
        assert p[0] == 200, p
        doc = wait_users(srv, chan, {"alice": 3, "bob": 1}, anonymous=2)
        assert doc["users"] == [{"user": "alice", "connections": 3, "info": info},
                                {"user": "bob", "connections": 1}], doc
        assert doc["connections"] == 6 and doc["total_users"] == 2, doc
        subs.pop(0).close()
        wait_users(srv, chan, {"alice": 2, "bob": 1}, anonymous=2)
    finally:
        close_all(subs)
    wait_users(srv, chan, {}, anonymous=0)


def test_paging_by_user(srv, chan):
    put(srv, chan, {"presence": True})
    names = [f"u{i}" for i in range(5)]
    subs = [open_sub("sse", srv, chan, token(n)) for n in names]
    try:
        wait_users(srv, chan, {n: 1 for n in names})
        first = presence(srv, chan, query="?limit=2")
        assert [u["user"] for u in first["users"]] == ["u0", "u1"] and first["next"] == "u1"
        assert first["total_users"] == 5
        second = presence(srv, chan, query="?limit=2&after=u1")
        assert [u["user"] for u in second["users"]] == ["u2", "u3"] and second["next"] == "u3"
        last = presence(srv, chan, query="?limit=2&after=u3")
        assert [u["user"] for u in last["users"]] == ["u4"] and last["next"] is None
        assert presence(srv, chan, status=400, query="?limit=0")["error"] == "bad_limit"
    finally:
        close_all(subs)


# ---- join and leave events ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", PERSISTENT)
def test_join_on_first_connection_and_leave_on_last(srv, chan, kind):
    put(srv, chan, {"presence": True})
    watcher = open_sub(kind, srv, chan, token("watcher"), presence=True)
    try:
        ev = next_event(watcher)  # its own arrival
        assert ev == {"event": "join", "channel": chan, "user": "watcher"}, ev
        info = {"name": "Dana"}
        d1 = open_sub("sse", srv, chan, token("dana", info))
        ev = next_event(watcher)
        assert ev == {"event": "join", "channel": chan, "user": "dana", "info": info}, ev
        d2 = open_sub("ws", srv, chan, token("dana", info))
        anon = open_sub("stream", srv, chan, token())
        wait_users(srv, chan, {"watcher": 1, "dana": 2}, anonymous=1)
        d1.close()
        wait_users(srv, chan, {"watcher": 1, "dana": 1})
        anon.close()
        # no join for a second connection, none for anonymous ones, no leave while one stays
        expect_only_message(watcher, srv, chan, "marker-1")
        d2.close()
        ev = next_event(watcher)
        assert ev == {"event": "leave", "channel": chan, "user": "dana", "info": info}, ev
    finally:
        watcher.close()


def test_events_only_for_who_asked(srv, chan):
    put(srv, chan, {"presence": True})
    plain = open_sub("sse", srv, chan, token("plain"))
    try:
        other = open_sub("ws", srv, chan, token("eve"))
        wait_users(srv, chan, {"plain": 1, "eve": 1})
        other.close()
        wait_users(srv, chan, {"plain": 1})
        expect_only_message(plain, srv, chan, "no-events")
    finally:
        plain.close()


def test_websocket_subscribe_op_asks_for_events(srv, chan):
    put(srv, chan, {"presence": True})
    ws = RawWS(srv, "?" + urllib.parse.urlencode({"token": token("op-user")}))
    try:
        ws.send_json({"op": "subscribe", "channel": chan, "presence": True, "ref": 1})
        assert ws.recv_json()["event"] == "subscribed"
        assert ws.recv_json() == {"event": "join", "channel": chan, "user": "op-user"}
        s = open_sub("sse", srv, chan, token("frank"))
        assert ws.recv_json() == {"event": "join", "channel": chan, "user": "frank"}
        s.close()
        assert ws.recv_json() == {"event": "leave", "channel": chan, "user": "frank"}
        ws.send_json({"op": "subscribe", "channel": chan + "x", "presence": "yes", "ref": 2})
        err = ws.recv_json()
        assert err["event"] == "error" and "presence" in err["detail"], err
    finally:
        ws.close()


def test_events_are_live_only_never_in_history(srv, chan):
    put(srv, chan, {"presence": True})
    publish(srv, chan, "before")
    w = open_sub("sse", srv, chan, token("hist-w"), presence=True)
    try:
        assert next_event(w)["event"] == "join"
        g = open_sub("sse", srv, chan, token("george"))
        assert next_event(w)["user"] == "george"
        g.close()
        assert next_event(w)["event"] == "leave"
        publish(srv, chan, "after")
        assert next_event(w)["data"] == "after"
    finally:
        w.close()
    # The watcher's own leave, once the server has seen it go, is no later subscriber's.
    wait_users(srv, chan, {})
    # a resume from the start replays the messages only, and a long-poll gets no events
    r = open_sub("stream", srv, chan, token("resumer"), presence=True, since="0")
    try:
        evs = r.messages(3)
        assert [e.get("data") for e in evs[:2]] == ["before", "after"], evs
        assert evs[2] == {"event": "join", "channel": chan, "user": "resumer"}, evs
    finally:
        r.close()
    status, body = poll(srv, chan, "0", 0, extra=f"&token={token('poller')}&presence=1")
    assert status == 200 and [m["data"] for m in body["messages"]] == ["before", "after"], body


# ---- the app setting, tokens and bounds -------------------------------------------------------


def test_app_setting_gives_new_channels_presence(srv):
    hdr = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    r = request(srv.port, "POST", "/admin/apps", json.dumps(
        {"name": "roomsp", "plan": "unlimited", "subscribe": "public",
         "settings": {"presence": True}}), hdr)
    assert r.status == 201, r.body
    assert r.json()["settings"]["presence"] is True, r.body
    auth = {"Authorization": f"Bearer {r.json()['publish_key']}"}
    conn = RawConn(srv.port)
    try:
        conn.send(http_get("/apps/roomsp/sse?channels=lobby&presence=1"))
        assert conn.read_head()[0] == 200
        doc = request(srv.port, "GET", "/apps/roomsp/api/channels/lobby/presence",
                      headers=auth).json()
        assert doc["anonymous"] == 1 and doc["users"] == [], doc
    finally:
        conn.close()
    bad = request(srv.port, "PATCH", "/admin/apps/roomsp",
                  json.dumps({"settings": {"presence": 1}}), hdr)
    assert bad.status == 400 and "presence" in bad.json()["detail"], bad.body


def test_token_info_over_1024_bytes_is_refused(srv, chan):
    s = SSE(srv, chan, token=token("big", {"blob": "x" * 1100}))
    try:
        assert s.status == 401, (s.status, s.body)
        assert b"info" in s.body and b"1024" in s.body, s.body
    finally:
        s.close()


def test_the_connect_hooks_user_and_info_win_over_the_token(herald, chan):
    from test_hooks import Backend

    def answer(doc, attempt):
        if doc["event"] != "connect":
            return 200, {}, 0
        return 200, {"result": "allow", "user": "hooked-" + (doc["user"] or "anon"),
                     "info": {"from": "hook"}}, 0

    backend = Backend(answer)
    try:
        srv = herald(token_secret=SECRET, webhook_url=backend.url, webhook_secret="hs")
        put(srv, chan, {"presence": True})
        w = open_sub("ws", srv, chan, token("tok-user", {"from": "token"}), presence=True)
        try:
            ev = next_event(w)
            assert ev == {"event": "join", "channel": chan, "user": "hooked-tok-user",
                          "info": {"from": "hook"}}, ev
            doc = wait_users(srv, chan, {"hooked-tok-user": 1})
            assert doc["users"][0]["info"] == {"from": "hook"}, doc
        finally:
            w.close()
    finally:
        backend.close()


def test_cli_token_info_is_what_presence_shows(herald_bin, srv, chan):
    import subprocess

    put(srv, chan, {"presence": True})
    out = subprocess.run([herald_bin, "token", "--secret", SECRET, "--sub", "cli-user", "--info",
                          '{"name":"Cli"}', "--channels", chan], capture_output=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    s = open_sub("sse", srv, chan, out.stdout.decode().strip())
    try:
        doc = wait_users(srv, chan, {"cli-user": 1})
        assert doc["users"][0]["info"] == {"name": "Cli"}, doc
    finally:
        s.close()
    bad = subprocess.run([herald_bin, "token", "--secret", SECRET, "--info", "{nope"],
                         capture_output=True, timeout=WAIT)
    assert bad.returncode != 0 and b"--info is JSON" in bad.stderr, bad.stderr


def test_users_past_the_cap_are_counted_unlisted_without_events(herald, chan):
    srv = herald(token_secret=SECRET, max_presence_users=2)
    put(srv, chan, {"presence": True})
    w = open_sub("sse", srv, chan, token("cap-w"), presence=True)
    subs = []
    try:
        assert next_event(w)["user"] == "cap-w"
        subs.append(open_sub("ws", srv, chan, token("cap-1")))
        assert next_event(w)["user"] == "cap-1"
        subs += [open_sub("stream", srv, chan, token("cap-2")),
                 open_sub("sse", srv, chan, token("cap-2"))]
        doc = wait_users(srv, chan, {"cap-w": 1, "cap-1": 1})
        wait_until(lambda: presence(srv, chan)["unlisted"] == 2, what="cap-2 unlisted")
        doc = presence(srv, chan)
        assert doc["connections"] == 4 and doc["total_users"] == 2, doc
        expect_only_message(w, srv, chan, "no-join-past-the-cap")
        subs.pop(0).close()  # cap-1 goes: room for one more user
        assert next_event(w)["event"] == "leave"
        subs.pop().close()
        wait_until(lambda: presence(srv, chan)["unlisted"] == 1, what="one unlisted left")
        subs.append(open_sub("ws", srv, chan, token("cap-2")))  # listed now, as it comes
        assert next_event(w) == {"event": "join", "channel": chan, "user": "cap-2"}
        doc = wait_users(srv, chan, {"cap-w": 1, "cap-2": 1})
        assert doc["unlisted"] == 1, doc
    finally:
        for s in subs:
            s.close()
        w.close()
