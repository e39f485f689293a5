"""User-targeted delivery (DESIGN.md §12, issue 10 part 1; docs/interactive.md): a
connection's user is its token's "sub", and POST /api/publish with "users" reaches every
connection of those users, on every transport and node, once per connection, with a
per-user history a reconnecting user resumes from (gap when it is gone).

Checked with independent clients (raw sockets for WebSocket, SSE and NDJSON streams,
http.client for long-polls and publishes) against a single node, two nodes sharing one
Redis and two nodes on a Redis Cluster. Tokens are minted by the tests (helpers.jwt_hs256),
and the user channel's key is computed here (SHA-256 of the sub), to look at Redis directly.
"""

import hashlib
import json
import time
import urllib.parse

import pytest

from helpers import (
    SSE,
    WAIT,
    Poller,
    RawConn,
    RawWS,
    Stream,
    http_get,
    jwt_hs256,
    poll,
    request,
    wait_until,
    ws_handshake,
    ws_key,
)

SECRET = "users-secret-0123456789"
KEY = "users-publish-key"
ADMIN = "users-admin-key"
PUB = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
TRANSPORTS = ["ws", "sse", "stream", "poll"]


# ---- tokens and the user channel's key, made independently of herald --------------------------


def token(sub, channels=("**",), secret=SECRET, ttl=3600):
    claims = {"exp": int(time.time()) + ttl, "channels": list(channels)}
    if sub is not None:
        claims["sub"] = sub
    return jwt_hs256(secret, claims)


def user_key(sub, app=None):
    """The key of a user's channel: [APP~]#user: and 32 hex digits of SHA-256(sub)."""
    k = "#user:" + hashlib.sha256(sub.encode()).hexdigest()[:32]
    return f"{app}~{k}" if app else k


# ---- subscribers for a user (any transport, optional channels, optional cursor) ---------------


def sub_path(kind, tok=None, channels=None, since=None, app=None, **extra):
    query = {k: v for k, v in {"channels": channels, "token": tok, **extra}.items() if v}
    if since is not None and kind not in ("sse", "poll"):
        query["since"] = since
    prefix = f"/apps/{app}" if app else ""
    path = {"ws": "/ws", "sse": "/sse", "stream": "/stream", "poll": "/poll"}[kind]
    return prefix + path + ("?" + urllib.parse.urlencode(query, safe=",*") if query else "")


class UserPoll(Poller):
    """A long-polling loop of a user (token and options in `extra`). Without a cursor the
    first poll is immediate: it places the subscription, later messages come after it."""

    def __init__(self, srv, channels, since=None, extra=""):
        super().__init__(srv, channels, since, extra)
        if since is None:
            self.status, self.body = poll(srv, channels, None, 0, conn=self.conn, extra=extra)
            if self.status == 200:
                assert self.body["messages"] == [], self.body
                self.cursor = self.body["cursor"]


def open_sub(kind, srv, tok=None, channels=None, since=None, app=None, status=200, **extra):
    """A live subscriber (head read). With status other than 200: the refused answer's body."""
    path = sub_path(kind, tok, channels, since, app, **extra)
    if kind == "poll":
        assert app is None
        options = "".join(f"&{k}={v}" for k, v in {"token": tok, **extra}.items() if v)
        if status != 200:
            got, body = poll(srv, channels, since, 0, extra=options)
            assert got == status, (got, body)
            return body
        p = UserPoll(srv, channels, since, options)
        assert since is not None or p.status == 200, p.body
        return p
    conn = RawConn(srv.port)
    if kind == "ws":
        key = ws_key()
        conn.send(ws_handshake(path, key))
        sub = RawWS.__new__(RawWS)
    else:
        headers = {"Last-Event-ID": since} if since is not None else None
        conn.send(http_get(path, headers))
        sub = (SSE if kind == "sse" else Stream).__new__(SSE if kind == "sse" else Stream)
        sub.lines = []
    sub.conn = conn
    sub.status, sub.headers = conn.read_head()
    if status != 200:
        assert sub.status == status, (sub.status, conn.buf)
        body = json.loads(conn.read_exact(int(sub.headers["content-length"])))
        conn.close()
        return body
    assert sub.status == (101 if kind == "ws" else 200), (sub.status, conn.buf)
    return sub


def events(sub, n, timeout=WAIT):
    """The next n events of any kind (messages, gap) as envelopes."""
    return sub.messages(n, timeout)


def publish(srv, doc, status=201, app=None, key=KEY):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    prefix = f"/apps/{app}" if app else ""
    r = request(srv.port, "POST", prefix + "/api/publish", json.dumps(doc), headers)
    assert r.status == status, (r.status, r.body)
    return r.json()


def to_user(srv, users, data, channels=None, **kw):
    doc = {"users": users, "data": data}
    if channels:
        doc["channels"] = channels
    return publish(srv, doc, **kw)


def only_data(msgs):
    return [m["data"] for m in msgs]


@pytest.fixture(scope="module")
def srv(module_herald):
    return module_herald(token_secret=SECRET, publish_key=KEY, admin_key=ADMIN)


def close_all(subs):
    for s in subs:
        s.close()


# ---- one node ---------------------------------------------------------------------------------


def test_every_connection_of_a_user_gets_it_once_on_every_transport(srv):
    subs = [open_sub(kind, srv, token("u-all")) for kind in TRANSPORTS]
    other = open_sub("sse", srv, token("u-other"))
    try:
        res = to_user(srv, ["u-all"], {"n": 1})
        # one per connection of the user (a long-poller between two polls holds nothing,
        # as on a channel: it gets the message from history with its cursor)
        assert res["subscribers"] == 3
        to_user(srv, ["u-all"], {"n": 2})
        for kind, s in zip(TRANSPORTS, subs):
            got = s.messages(2)
            assert only_data(got) == [{"n": 1}, {"n": 2}], (kind, got)  # once each, in order
            assert {m["channel"] for m in got} == {"#user"}, (kind, got)
            assert got[0]["id"] == res["id"]
        # the other user got none of it: its first message is its own
        to_user(srv, ["u-other"], "mine")
        assert other.next_message()["data"] == "mine"
    finally:
        close_all(subs + [other])


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_message_to_a_channel_and_its_user_arrives_once(srv, kind):
    # Names of the case's own: the previous case's connection, which the client closed,
    # may not be gone from the server yet.
    user, room = f"u-both-{kind}", f"room.both-{kind}"
    s = open_sub(kind, srv, token(user), channels=room)
    try:
        res = publish(srv, {"channels": [room], "users": [user], "data": "one"})
        # counted per target, like a connection holding two channels of a publish
        assert res["subscribers"] == (0 if kind == "poll" else 2)
        to_user(srv, [user], "two")
        got = s.messages(2)
        assert only_data(got) == ["one", "two"], got
        assert got[0]["id"] == res["id"]
    finally:
        s.close()


def test_users_and_channels_in_one_publish_reach_each_once(srv):
    room = open_sub("sse", srv, token(None), channels="room.mix")  # a token without a user
    user = open_sub("ws", srv, token("u-mix"))
    try:
        res = publish(srv, {"channels": ["room.mix"], "users": ["u-mix", "u-nobody"],
                            "data": "hi"})
        assert res["subscribers"] == 2
        assert room.next_message()["channel"] == "room.mix"
        assert user.next_message()["channel"] == "#user"
    finally:
        close_all([room, user])


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_user_resumes_what_it_missed_in_order_without_duplicates(srv, kind):
    tok = token(f"u-resume-{kind}")
    user = f"u-resume-{kind}"
    s = open_sub(kind, srv, tok, channels="room.resume")
    first = to_user(srv, [user], "m0")
    got = s.next_message()
    assert got["data"] == "m0"
    cursor = got["id"]
    s.close()
    # missed: two to the user, one to its channel, one to both, one to another user
    to_user(srv, [user], "m1")
    publish(srv, {"channel": "room.resume", "data": "m2"})
    to_user(srv, [user], "m3", channels=["room.resume"])
    to_user(srv, ["u-someone-else"], "not-mine")
    to_user(srv, [user], "m4")
    s = open_sub(kind, srv, tok, channels="room.resume", since=cursor)
    try:
        to_user(srv, [user], "m5")  # live after the replay
        got = s.messages(5)
        assert only_data(got) == ["m1", "m2", "m3", "m4", "m5"], got
        ids = [int(m["id"]) for m in got]
        assert ids == sorted(ids) and int(first["id"]) < ids[0]
        to_user(srv, [user], "m6")
        assert s.next_message()["data"] == "m6"  # nothing twice in between
    finally:
        s.close()


def test_a_user_without_channels_resumes_from_its_own_history(srv):
    """No channels at all: the connection holds the user's channel only."""
    tok = token("u-alone")
    s = open_sub("sse", srv, tok)
    to_user(srv, ["u-alone"], "a")
    block = s.next_event()
    assert json.loads(block.data)["data"] == "a"
    s.close()
    to_user(srv, ["u-alone"], "b")
    s = open_sub("sse", srv, tok, since=block.id)
    try:
        assert s.next_message()["data"] == "b"
    finally:
        s.close()


def check_gap(first, later, sub, kinds):
    """sub gets a message on node `first`, misses 4 published on node `later` (which keeps
    2 per channel), and resumes there on each of `kinds`: gap, the 2 kept, then live."""
    tok = token(sub)
    s = open_sub("ws", first, tok)
    cursor = to_user(first, [sub], "old")["id"]
    assert s.next_message()["data"] == "old"
    s.close()
    sent = [(to_user(later, [sub], f"n{i}")["id"], f"n{i}") for i in range(4)]
    for kind in kinds:
        kept = sent[-2:]
        s = open_sub(kind, later, tok, since=cursor)
        try:
            got = s.messages(3)
            assert got[0] == {"event": "gap", "channel": "#user", "since": cursor,
                              "oldest": kept[0][0]}, (kind, got)
            assert [(m["id"], m["data"]) for m in got[1:]] == kept, (kind, got)
            sent.append((to_user(first, [sub], f"live-{kind}")["id"], f"live-{kind}"))
            assert s.next_message()["data"] == f"live-{kind}"
        finally:
            s.close()


def test_gap_when_the_users_history_is_gone(herald):
    small = herald(token_secret=SECRET, publish_key=KEY, history_size=2)
    check_gap(small, small, "u-gap", TRANSPORTS)


def test_opting_out_with_user_0(srv):
    s = open_sub("sse", srv, token("u-opt"), channels="room.opt", user="0")
    try:
        assert to_user(srv, ["u-opt"], "dm")["subscribers"] == 0
        publish(srv, {"channel": "room.opt", "data": "room"})
        assert s.next_message()["data"] == "room"
    finally:
        s.close()
    # user=0 and no channels: nothing to subscribe to
    body = open_sub("sse", srv, token("u-opt"), user="0", status=400)
    assert body["error"] == "no_channels"


def test_websocket_auth_op_brings_the_user(herald):
    """A WebSocket opened without a token gets its user's messages from its auth op on,
    and a refresh keeps the user (one subscription, not two)."""
    srv = herald(token_secret=SECRET, publish_key=KEY)
    ws = open_sub("ws", srv)
    try:
        ws.send_json({"op": "auth", "token": token("u-op"), "ref": 1})
        assert ws.recv_json() == {"event": "authenticated", "exp": pytest.approx(
            time.time() + 3600, abs=60), "sub": "u-op", "ref": 1}
        ws.send_json({"op": "refresh", "token": token("u-op", ttl=7200), "ref": 2})
        assert ws.recv_json()["event"] == "refreshed"
        assert to_user(srv, ["u-op"], "after-auth")["subscribers"] == 1
        assert ws.recv_json()["data"] == "after-auth"
    finally:
        ws.close()


def test_a_token_without_sub_has_no_user(srv):
    s = open_sub("sse", srv, token(None), channels="room.nosub")
    try:
        publish(srv, {"channel": "room.nosub", "data": "x"})
        assert s.next_message()["channel"] == "room.nosub"
    finally:
        s.close()
    assert open_sub("sse", srv, token(None), status=400)["error"] == "no_channels"


def test_the_user_channel_cannot_be_named_or_listed(srv):
    s = open_sub("sse", srv, token("u-hidden"))
    try:
        for name in ("#user", user_key("u-hidden"), "%23user"):
            body = open_sub("sse", srv, token("u-hidden"), channels=name, status=400)
            assert body["error"] == "bad_channel", body
        r = request(srv.port, "GET", "/api/channels?limit=1000", headers=PUB)
        names = [c["name"] for c in r.json()["channels"]]
        assert not [n for n in names if "#" in n], names
        stats = request(srv.port, "GET", "/stats?channels=1").json()
        assert "#user" not in stats.get("channel_subscribers", {})
        # a publisher cannot name it as a channel either
        r = request(srv.port, "POST", "/api/publish",
                    json.dumps({"channel": "#user", "data": 1}), PUB)
        assert r.status == 400
    finally:
        s.close()


def test_limits_on_users_per_publish(srv):
    def refused(doc):
        r = request(srv.port, "POST", "/api/publish", json.dumps(doc), PUB)
        assert r.status == 400, (r.status, r.body)
        return r.json()["detail"]

    assert publish(srv, {"users": [f"u{i}" for i in range(64)], "data": 1})["id"]
    assert "at most 64 channels and users" in refused(
        {"users": [f"u{i}" for i in range(65)], "data": 1})
    assert "messages" in refused({"users": [f"u{i}" for i in range(60)],
                                  "channels": [f"c{i}" for i in range(5)], "data": 1})
    # a user named twice is one target
    assert publish(srv, {"users": ["dup"] * 100, "data": 1})["id"]
    assert "256 bytes" in refused({"users": ["x" * 257], "data": 1})
    assert publish(srv, {"users": ["é" * 128], "data": 1})["id"]  # 256 bytes of UTF-8
    for bad in ([""], [42], [None], "u1", {"u": 1}):
        assert "user" in refused({"users": bad, "data": 1}), bad
    assert "users" in refused({"users": [], "data": 1})  # no target at all
    # in a batch, the message at fault is named and nothing is published
    r = request(srv.port, "POST", "/api/publish", json.dumps(
        {"messages": [{"users": ["a"], "data": 1}, {"users": ["x" * 300], "data": 2}]}), PUB)
    assert r.status == 400 and "messages[1]" in r.json()["detail"], r.body


def test_websocket_clients_cannot_publish_to_users(herald):
    srv = herald(token_secret=SECRET, publish_key=KEY, ws_publish=True)
    ws = RawWS(srv, "", extra={"Authorization": f"Bearer {KEY}"})
    try:
        ws.send_json({"op": "publish", "users": ["u1"], "data": 1, "ref": 7})
        ev = ws.recv_json()
        assert (ev["event"], ev["ref"]) == ("error", 7), ev
        assert "POST /api/publish" in ev["detail"], ev
    finally:
        ws.close()


def test_apps_keep_their_users_apart(srv):
    """User 42 of app A, of app B and of the default app are three users."""
    apps = {}
    for name in ("ua", "ub"):
        r = request(srv.port, "POST", "/admin/apps", json.dumps(
            {"name": name, "plan": "unlimited", "subscribe": "token"}),
            {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
        assert r.status == 201, r.body
        apps[name] = r.json()
    subs = {
        "ua": open_sub("ws", srv, token("42", secret=apps["ua"]["token_secret"]), app="ua"),
        "ub": open_sub("sse", srv, token("42", secret=apps["ub"]["token_secret"]), app="ub"),
        None: open_sub("stream", srv, token("42")),
    }
    try:
        # A's token is not B's: the apps' secrets differ
        body = open_sub("sse", srv, token("42", secret=apps["ua"]["token_secret"]), app="ub",
                        status=401)
        assert body["error"] == "token_invalid"
        res = to_user(srv, ["42"], "for-a", app="ua", key=apps["ua"]["publish_key"])
        assert res["subscribers"] == 1
        to_user(srv, ["42"], "for-b", app="ub", key=apps["ub"]["publish_key"])
        to_user(srv, ["42"], "for-default")
        assert subs["ua"].next_message()["data"] == "for-a"
        assert subs["ub"].next_message()["data"] == "for-b"
        assert subs[None].next_message()["data"] == "for-default"
        # and each got only its own: the next message is the next one for that app
        to_user(srv, ["42"], "again-a", app="ua", key=apps["ua"]["publish_key"])
        assert subs["ua"].next_message()["data"] == "again-a"
        # users' channels are not counted in the app's channels
        r = request(srv.port, "GET", "/admin/apps/ua", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.json()["usage"]["channels"] == 0, r.body
    finally:
        close_all(subs.values())


def test_app_plan_channel_limit_does_not_lock_users_out(herald, tmp_path):
    """An app whose plan allows two channels: both are taken, and users still connect and
    get their messages (their channels are not in the plan's count)."""
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"plans": [{
        "name": "two", "connections": 100, "channels": 2, "publishes_per_second": 1000,
        "message_bytes": 65536, "history": 100}]}))
    srv = herald(token_secret=SECRET, publish_key=KEY, admin_key=ADMIN, plans=str(plans))
    r = request(srv.port, "POST", "/admin/apps", json.dumps(
        {"name": "tiny", "plan": "two", "subscribe": "token"}),
        {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    assert r.status == 201, r.body
    app = r.json()
    for i in range(2):
        publish(srv, {"channel": f"c{i}", "data": 1}, app="tiny", key=app["publish_key"])
    r = request(srv.port, "POST", "/apps/tiny/api/publish", json.dumps(
        {"channel": "one-more", "data": 1}), {"Authorization": f"Bearer {app['publish_key']}",
                                              "Content-Type": "application/json"})
    assert (r.status, r.json()["limit"]) == (429, "channels"), r.body
    subs = [open_sub("sse", srv, token(f"t{i}", secret=app["token_secret"]), app="tiny")
            for i in range(3)]
    try:
        res = to_user(srv, ["t0", "t1", "t2", "t3"], "still", app="tiny",
                      key=app["publish_key"])
        assert res["subscribers"] == 3
        assert [s.next_message()["data"] for s in subs] == ["still"] * 3
    finally:
        close_all(subs)


# ---- several nodes: one Redis, and a Redis Cluster ---------------------------------------------


HEARTBEAT = "300ms"


def wait_counted(redis_cmd, sub, nodes):
    """Until the nodes' subscriber counts of sub's channel (written by their heartbeats,
    herald:{key}:c) name every one of `nodes`: what a publish sums into `subscribers`."""
    key = f"herald:{{{user_key(sub)}}}:c"

    def counted():
        reply = redis_cmd("HGETALL", key) or []
        fields = dict(zip(reply[::2], reply[1::2]))
        return all(n in fields for n in nodes)
    wait_until(counted, what=f"the nodes' counts of {sub}'s channel in Redis")


def two_nodes_one_user(a, b, redis_cmd, sub):
    """sub on node A (WebSocket) and node B (SSE): a publish on either reaches both once,
    and `subscribers` counts both."""
    ws = open_sub("ws", a, token(sub))
    sse = open_sub("sse", b, token(sub))
    try:
        wait_counted(redis_cmd, sub, ["A", "B"])
        res = to_user(a, [sub], "one")
        assert res["subscribers"] == 2, res
        to_user(b, [sub], "two")
        for s in (ws, sse):
            assert only_data(s.messages(2)) == ["one", "two"]
        to_user(a, [sub], "three")
        assert ws.next_message()["data"] == sse.next_message()["data"] == "three"
    finally:
        close_all([ws, sse])


def channel_and_user_across_nodes(a, b, sub, room):
    s = open_sub("stream", a, token(sub), channels=room)
    try:
        publish(b, {"channels": [room], "users": [sub], "data": "both"})
        to_user(b, [sub], "user-only")
        publish(b, {"channel": room, "data": "room-only"})
        assert only_data(s.messages(3)) == ["both", "user-only", "room-only"]
        to_user(a, [sub], "next")
        assert s.next_message()["data"] == "next"
    finally:
        s.close()


def resume_on_the_other_node(a, b, sub, room=None, per_channel=False):
    """SSE on A, then Last-Event-ID on B: what was missed, in order, once; then live."""
    tok = token(sub)
    s = open_sub("sse", a, tok, channels=room)
    to_user(a, [sub], "r0")
    block = s.next_event()
    assert json.loads(block.data)["data"] == "r0"
    # the room's position, then the user's: "ID.DELTA" when ids are per channel
    assert ("." in block.id) == per_channel, block.id
    s.close()
    to_user(b, [sub], "r1")
    if room:
        publish(b, {"channels": [room], "users": [sub], "data": "r2"})
    to_user(a, [sub], "r3")
    s = open_sub("sse", b, tok, channels=room, since=block.id)
    try:
        want = ["r1", "r2", "r3"] if room else ["r1", "r3"]
        assert only_data(s.messages(len(want))) == want
        to_user(a, [sub], "r4")
        assert s.next_message()["data"] == "r4"
    finally:
        s.close()
    # and with a long-poll from the same cursor, on A
    p = open_sub("poll", a, tok, channels=room, since=block.id)
    try:
        assert only_data(p.messages(len(want) + 1)) == want + ["r4"]
    finally:
        p.close()


@pytest.fixture(scope="module")
def pair(redis, module_herald):
    return [module_herald(redis=redis.url, node_name=n, cluster_heartbeat=HEARTBEAT,
                          token_secret=SECRET, publish_key=KEY) for n in "AB"]


@pytest.mark.threads
def test_one_redis_user_on_two_nodes(pair, redis):
    two_nodes_one_user(*pair, redis.cmd, "c1-two")


@pytest.mark.threads
def test_one_redis_channel_and_user_once(pair):
    channel_and_user_across_nodes(*pair, "c1-both", "room.c1")


@pytest.mark.threads
@pytest.mark.parametrize("room", [None, "room.c1r"])
def test_one_redis_resume_across_nodes(pair, room):
    resume_on_the_other_node(*pair, f"c1-resume-{room}", room)


def test_one_redis_user_channel_is_not_listed(pair, redis):
    s = open_sub("sse", pair[0], token("c1-list"))
    try:
        to_user(pair[1], ["c1-list"], "x")
        assert s.next_message()["data"] == "x"
        assert redis.cmd("EXISTS", f"herald:{{{user_key('c1-list')}}}:h") == 1
        r = request(pair[1].port, "GET", "/api/channels", headers=PUB)
        assert not [c for c in r.json()["channels"] if "#" in c["name"]], r.body
    finally:
        s.close()


RC = pytest.mark.xdist_group("redis-cluster")


@pytest.fixture(scope="module")
def cnodes(rcluster, module_herald):
    return [module_herald(redis_cluster=rcluster.seeds, node_name=n,
                          cluster_heartbeat=HEARTBEAT, token_secret=SECRET, publish_key=KEY)
            for n in "AB"]


def cluster_cmd(rcluster):
    return lambda *args: rcluster.master_of(args[1]).cmd(*args)


@RC
@pytest.mark.threads
def test_redis_cluster_user_on_two_nodes(cnodes, rcluster):
    two_nodes_one_user(*cnodes, cluster_cmd(rcluster), "rc-two")


@RC
@pytest.mark.threads
def test_redis_cluster_channel_and_user_once(cnodes):
    channel_and_user_across_nodes(*cnodes, "rc-both", "room.rc")


@RC
@pytest.mark.threads
@pytest.mark.parametrize("room", [None, "room.rcr"])
def test_redis_cluster_resume_across_nodes(cnodes, room):
    """With a channel, ids are per channel on a Redis Cluster: the SSE cursor is per
    channel (the user's position last) and resumes on the other node."""
    resume_on_the_other_node(*cnodes, f"rc-resume-{room}", room, per_channel=room is not None)


def test_per_channel_cursor_gives_the_user_position_last(srv):
    """A per-channel cursor (accepted in every mode) has the named channels' positions
    and then the user's; one more position than that is refused, as is the user's
    position on a connection without a user."""
    tok = token("u-pc")
    room_id = publish(srv, {"channel": "room.pc", "data": "room0"})["id"]
    user_id = to_user(srv, ["u-pc"], "user0")["id"]
    to_user(srv, ["u-pc"], "user1", channels=["room.pc"])
    # the room from its start (0), the user after user0
    p = open_sub("poll", srv, tok, channels="room.pc", since=f"0.{int(user_id)}")
    try:
        assert only_data(p.messages(2)) == ["room0", "user1"]
        assert "." in p.cursor  # it keeps the per-channel form: room's, then the user's
    finally:
        p.close()
    for kind in ("sse", "ws", "poll"):
        body = open_sub(kind, srv, tok, channels="room.pc", since=f"{room_id}.0.0",
                        status=400)
        assert body["error"] == "bad_cursor", (kind, body)
        body = open_sub(kind, srv, tok, channels="room.pc", since=f"{room_id}.0", user="0",
                        status=400)
        assert body["error"] == "bad_cursor", (kind, body)


def test_deleting_an_app_ends_its_users_connections(srv):
    r = request(srv.port, "POST", "/admin/apps", json.dumps(
        {"name": "gone", "plan": "unlimited", "subscribe": "token"}),
        {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    assert r.status == 201, r.body
    s = open_sub("sse", srv, token("42", secret=r.json()["token_secret"]), app="gone")
    try:
        r = request(srv.port, "DELETE", "/admin/apps/gone",
                    headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status == 200, r.body
        block = s.next_event()
        assert (block.event, block.json()) == (
            "closed", {"event": "closed", "channel": "#user", "reason": "deleted"})
        s.expect_end()
    finally:
        s.close()


def test_websocket_auth_op_with_since_resumes_the_user(herald):
    """A WebSocket that authenticates with an op may give "since": what the user missed
    comes first, then live messages."""
    srv = herald(token_secret=SECRET, publish_key=KEY)
    cursor = to_user(srv, ["u-opsince"], "before")["id"]
    to_user(srv, ["u-opsince"], "missed")
    ws = open_sub("ws", srv)
    try:
        ws.send_json({"op": "auth", "token": token("u-opsince"), "since": cursor, "ref": 1})
        assert ws.recv_json()["event"] == "authenticated"
        assert ws.recv_json()["data"] == "missed"
        to_user(srv, ["u-opsince"], "live")
        assert ws.recv_json()["data"] == "live"
        ws.send_json({"op": "auth", "token": token("u-other"), "ref": 2})  # another user: no
        ev = ws.recv_json()
        assert (ev["event"], ev["error"], ev["ref"]) == ("error", "token_invalid", 2), ev
    finally:
        ws.close()


def test_the_connect_hook_sees_the_named_channels_and_the_user(herald):
    """The backend hears the channels the client named (its user's is implied by
    "user"), and may add channels: one message to a channel it added and to the user
    still arrives once."""
    from test_hooks import Backend  # a real HTTP backend that records the hook calls

    b = Backend(lambda doc, a: (200, {"result": "allow", "channels": ["room.added"]}, 0))
    try:
        srv = herald(token_secret=SECRET, publish_key=KEY, webhook_url=b.url,
                     webhook_secret="hook-secret")
        s = open_sub("sse", srv, token("u-hook"), channels="room.named")
        try:
            (doc,) = b.wait("connect")
            assert doc["channels"] == ["room.named"] and doc["user"] == "u-hook", doc
            publish(srv, {"channels": ["room.added"], "users": ["u-hook"], "data": "once"})
            to_user(srv, ["u-hook"], "next")
            assert only_data(s.messages(2)) == ["once", "next"]
        finally:
            s.close()
    finally:
        b.close()


def test_api_tail_still_needs_channels(srv):
    """Subscribe requests may leave channels out for their user's messages; the API's
    tail has no user, so without channels it is refused, not held open on nothing."""
    r = request(srv.port, "GET", "/api/tail", headers=PUB, timeout=5)
    assert (r.status, r.json()["error"]) == (400, "no_channels"), (r.status, r.body)


@pytest.mark.threads
def test_one_redis_gap_when_the_users_history_is_gone(redis, module_herald):
    """Two nodes keeping 2 messages per channel: a user who resumes on the other node from
    before what Redis kept gets a gap, then what is kept, then live messages."""
    c, d = [module_herald(redis=redis.url, node_name=n, cluster_heartbeat=HEARTBEAT,
                          token_secret=SECRET, publish_key=KEY, history_size=2) for n in "CD"]
    check_gap(c, d, "c1-gap", ["ws", "sse"])
