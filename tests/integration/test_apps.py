"""Apps (tenants, DESIGN.md §8): the admin API, each app's namespace under
/apps/{app}/, its publish keys, its plan's limits, and persistence in --state-dir.

Isolation is checked, not assumed: the same channel name in two apps and in the
default app, one app's key on another, listings, stats, history and resume, on
every transport. Independent clients: http.client, raw sockets, websockets.
"""

import json
import os
import time

import pytest
import websockets

from helpers import (
    SSE,
    Stream,
    arun,
    expect_ws_closed,
    free_port,
    recv_json,
    request,
    wait_until,
)

ADMIN = "admin-secret-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def admin(srv, method, path, body=None, key=ADMIN):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(body)
    return request(srv.port, method, path, body, headers)


def create_app(srv, name, plan="unlimited", subscribe="public"):
    r = admin(srv, "POST", "/admin/apps", {"name": name, "plan": plan, "subscribe": subscribe})
    assert r.status == 201, r.body
    doc = r.json()
    assert doc["name"] == name and doc["plan"] == plan
    assert len(doc["publish_key"]) >= 40 and len(doc["token_secret"]) >= 40
    return doc


def pub(srv, app, channel, body, key, headers=None):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    prefix = f"/apps/{app}" if app else ""
    return request(srv.port, "POST", f"{prefix}/pub/{channel}", body, h)


def app_stream(kind, srv, app, channels, **params):
    """An SSE or NDJSON subscriber of an app."""
    base = SSE if kind == "sse" else Stream
    cls = type("AppSub", (base,), {"path": f"/apps/{app}/{kind}"})
    return cls(srv, channels, **params)


@pytest.fixture
def srv(herald, tmp_path):
    return herald(admin_key=ADMIN)


# ---- the admin API ---------------------------------------------------------------------------


def test_admin_api_needs_the_admin_key(srv):
    for key in (None, "wrong"):
        r = admin(srv, "GET", "/admin/apps", key=key)
        assert r.status == 401, r.body
        assert r.error()["error"] == "unauthorized"
        assert "www-authenticate" in r.headers
    # HTTP Basic with the key as password works as well as Bearer.
    import base64

    basic = base64.b64encode(f"tsuru:{ADMIN}".encode()).decode()
    r = request(srv.port, "GET", "/admin/plans", headers={"Authorization": f"Basic {basic}"})
    assert r.status == 200
    assert [p["name"] for p in r.json()["plans"]] == ["free", "standard", "unlimited"]


def test_admin_api_is_off_without_an_admin_key(herald):
    s = herald()
    r = admin(s, "GET", "/admin/apps")
    assert r.status == 404 and "--admin-key" in r.error()["detail"]


def test_create_list_get_patch_delete(srv):
    a = create_app(srv, "shop", plan="free", subscribe="token")
    assert a["subscribe"] == "token"
    create_app(srv, "blog")
    r = admin(srv, "GET", "/admin/apps")
    assert r.status == 200
    doc = r.json()
    assert [x["name"] for x in doc["apps"]] == ["blog", "shop"] and doc["total"] == 2
    assert all("publish_key" not in x and "token_secret" not in x for x in doc["apps"])

    r = admin(srv, "GET", "/admin/apps/shop")
    assert r.status == 200 and r.json()["limits"]["connections"] == 100
    r = admin(srv, "PATCH", "/admin/apps/shop", {"plan": "standard", "subscribe": "public"})
    assert r.status == 200, r.body
    assert r.json()["plan"] == "standard" and r.json()["subscribe"] == "public"
    assert r.json()["limits"]["connections"] == 10000

    assert admin(srv, "POST", "/admin/apps", {"name": "shop"}).status == 409
    assert admin(srv, "POST", "/admin/apps", {"name": "Bad_Name"}).status == 400
    assert admin(srv, "POST", "/admin/apps", {"name": "x", "plan": "gold"}).status == 400
    assert admin(srv, "PATCH", "/admin/apps/shop", {"plan": "gold"}).status == 400
    assert admin(srv, "GET", "/admin/apps/nope").status == 404

    r = admin(srv, "DELETE", "/admin/apps/shop")
    assert r.status == 200
    assert admin(srv, "GET", "/admin/apps/shop").status == 404
    r = pub(srv, "shop", "a", "x", a["publish_key"])
    assert r.status == 404 and r.error()["error"] == "app_not_found"


def test_key_rotation_keeps_the_old_key_until_revoked(srv):
    a = create_app(srv, "rot")
    old = a["publish_key"]
    r = admin(srv, "POST", "/admin/apps/rot/keys")
    assert r.status == 201
    new = r.json()["publish_key"]
    assert new != old and r.json()["previous_publish_key"] == old
    assert pub(srv, "rot", "c", "1", old).status == 201
    assert pub(srv, "rot", "c", "2", new).status == 201
    assert admin(srv, "DELETE", f"/admin/apps/rot/keys/{old}").status == 200
    assert pub(srv, "rot", "c", "3", old).status == 401
    assert pub(srv, "rot", "c", "4", new).status == 201
    assert admin(srv, "DELETE", "/admin/apps/rot/keys/not-a-key").status == 404


# ---- isolation --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sse", "stream"])
def test_same_channel_name_in_two_apps_and_the_default_app(srv, kind):
    a, b = create_app(srv, "iso-a"), create_app(srv, "iso-b")
    with app_stream(kind, srv, "iso-a", "room") as sa, app_stream(kind, srv, "iso-b", "room") as sb:
        with (SSE if kind == "sse" else Stream)(srv, "room") as sd:
            assert sa.status == sb.status == sd.status == 200
            assert pub(srv, "iso-a", "room", "for a", a["publish_key"]).status == 201
            assert pub(srv, "iso-b", "room", "for b", b["publish_key"]).status == 201
            assert pub(srv, None, "room", "for default", None).status == 201
            ma, mb, md = sa.next_message(), sb.next_message(), sd.next_message()
            assert (ma["data"], ma["channel"]) == ("for a", "room")
            assert (mb["data"], mb["channel"]) == ("for b", "room")
            assert (md["data"], md["channel"]) == ("for default", "room")
            # Nothing else arrives on any of them.
            # Nothing of the others arrives in between: each next message is its own.
            assert pub(srv, "iso-a", "room", "second a", a["publish_key"]).status == 201
            assert pub(srv, None, "room", "second default", None).status == 201
            assert pub(srv, "iso-b", "room", "second b", b["publish_key"]).status == 201
            assert sa.next_message()["data"] == "second a"
            assert sd.next_message()["data"] == "second default"
            assert sb.next_message()["data"] == "second b"


def test_one_apps_key_does_not_open_another(srv):
    a, b = create_app(srv, "key-a"), create_app(srv, "key-b")
    r = pub(srv, "key-b", "c", "x", a["publish_key"])
    assert r.status == 401 and "app's publish keys" in r.error()["detail"]
    assert pub(srv, "key-b", "c", "x", None).status == 401
    # The default app's API is loopback-trusted here, but an app never is.
    r = request(srv.port, "GET", "/apps/key-b/api/channels")
    assert r.status == 401
    # The admin key opens every app.
    assert pub(srv, "key-b", "c", "x", ADMIN).status == 201
    assert pub(srv, "key-b", "c", "y", b["publish_key"]).status == 201


def test_listing_history_and_stats_are_per_app(srv):
    a, b = create_app(srv, "list-a"), create_app(srv, "list-b")
    for i in range(3):
        assert pub(srv, "list-a", f"a{i}", f"m{i}", a["publish_key"]).status == 201
    assert pub(srv, "list-b", "a0", "other", b["publish_key"]).status == 201
    assert pub(srv, None, "default-only", "d", None).status == 201

    def names(app, key):
        prefix = f"/apps/{app}" if app else ""
        h = {"Authorization": f"Bearer {key}"} if key else {}
        r = request(srv.port, "GET", f"{prefix}/api/channels", headers=h)
        assert r.status == 200, r.body
        return [c["name"] for c in r.json()["channels"]], r.json()["total"]

    assert names("list-a", a["publish_key"]) == (["a0", "a1", "a2"], 3)
    assert names("list-b", b["publish_key"]) == (["a0"], 1)
    default, _ = names(None, None)
    assert "default-only" in default and not any("~" in n or n == "a1" for n in default)

    # Paging within an app: next is a name of that app, and after= continues from it.
    r = request(srv.port, "GET", "/apps/list-a/api/channels?limit=2",
                headers={"Authorization": f"Bearer {a['publish_key']}"})
    assert [c["name"] for c in r.json()["channels"]] == ["a0", "a1"] and r.json()["next"] == "a1"
    r = request(srv.port, "GET", "/apps/list-a/api/channels?limit=2&after=a1",
                headers={"Authorization": f"Bearer {a['publish_key']}"})
    assert [c["name"] for c in r.json()["channels"]] == ["a2"]

    # Channel info and history: each app sees its own "a0".
    r = request(srv.port, "GET", "/apps/list-b/api/channels/a0",
                headers={"Authorization": f"Bearer {b['publish_key']}"})
    assert r.status == 200 and r.json()["name"] == "a0" and r.json()["messages"] == 1
    with app_stream("sse", srv, "list-b", "a0", since="0") as s:
        m = s.next_message()
        assert m["data"] == "other"
    r = request(srv.port, "GET", "/apps/list-a/stats",
                headers={"Authorization": f"Bearer {a['publish_key']}"})
    assert r.status == 200
    st = r.json()
    assert st["name"] == "list-a" and st["usage"]["channels"] == 3
    assert st["usage"]["publishes"] == 3 and st["usage"]["messages"] == 3
    assert "token_secret" not in st and "publish_key" not in st
    assert request(srv.port, "GET", "/apps/list-a/stats").status == 401


def test_resume_within_an_app_on_every_transport(srv):
    a = create_app(srv, "resume")
    key = a["publish_key"]
    ids = [pub(srv, "resume", "feed", f"m{i}", key).json()["id"] for i in range(4)]
    with app_stream("sse", srv, "resume", "feed", since=ids[1]) as s:
        assert [m["data"] for m in s.messages(2)] == ["m2", "m3"]
    with app_stream("stream", srv, "resume", "feed", since=ids[2]) as s:
        assert s.next_message()["data"] == "m3"
    r = request(srv.port, "GET", f"/apps/resume/poll?channels=feed&since={ids[0]}&timeout=1")
    assert r.status == 200
    assert [m["data"] for m in r.json()["messages"]] == ["m1", "m2", "m3"]
    assert all(m["channel"] == "feed" for m in r.json()["messages"])

    async def ws():
        url = f"ws://127.0.0.1:{srv.port}/apps/resume/ws?channels=feed&since={ids[2]}"
        async with websockets.connect(url, ping_interval=None) as w:
            m = await recv_json(w)
            assert (m["channel"], m["data"]) == ("feed", "m3")
            await w.send(json.dumps({"op": "subscribe", "channels": ["other"], "ref": 1}))
            ack = await recv_json(w)
            assert ack.get("channels") == ["other"], ack

    arun(ws())


def test_unknown_app_is_404_on_every_endpoint(srv):
    for path in ("/apps/ghost/sse?channels=a", "/apps/ghost/poll?channels=a",
                 "/apps/ghost/stream?channels=a", "/apps/ghost/ws?channels=a",
                 "/apps/ghost/api/channels", "/apps/ghost", "/apps/"):
        r = request(srv.port, "GET", path)
        assert r.status == 404, (path, r.body)
    r = request(srv.port, "GET", "/apps/ghost/sse?channels=a")
    assert r.error()["error"] == "app_not_found"
    # Routes that are not per app (admin, metrics, health) do not exist under /apps/.
    create_app(srv, "real")
    assert request(srv.port, "GET", "/apps/real/admin/apps", headers=AUTH).status == 404
    assert request(srv.port, "GET", "/apps/real/metrics").status == 404


def test_deleting_an_app_closes_its_channels(srv):
    a = create_app(srv, "gone")
    with app_stream("sse", srv, "gone", "c1") as s:
        assert s.status == 200
        assert pub(srv, "gone", "c1", "before", a["publish_key"]).status == 201
        assert s.next_message()["data"] == "before"
        assert admin(srv, "DELETE", "/admin/apps/gone").status == 200
        ev = s.next_event()
        assert ev.event == "closed" and ev.json()["channel"] == "c1"
        s.expect_end()
    # A new app of the same name starts empty, with new keys.
    b = create_app(srv, "gone")
    assert b["publish_key"] != a["publish_key"]
    assert pub(srv, "gone", "c1", "x", a["publish_key"]).status == 401
    r = request(srv.port, "GET", "/apps/gone/api/channels",
                headers={"Authorization": f"Bearer {b['publish_key']}"})
    assert r.json()["channels"] == []


# ---- plans ------------------------------------------------------------------------------------


@pytest.fixture
def limited(herald, tmp_path):
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"plans": [
        {"name": "tiny", "description": "for tests", "connections": 2, "channels": 3,
         "publishes_per_second": 5, "message_bytes": 100, "history": 2},
        {"name": "big", "connections": 0, "channels": 0},
        {"name": "small", "connections": 2, "channels": 3, "history": 2},
    ]}))
    return herald(admin_key=ADMIN, plans=str(plans))


def test_plans_from_a_file(limited):
    r = admin(limited, "GET", "/admin/plans")
    assert [p["name"] for p in r.json()["plans"]] == ["tiny", "big", "small"]
    assert r.json()["plans"][0]["publishes_per_second"] == 5


def test_bad_plans_file_stops_start_up(herald_bin, tmp_path):
    import subprocess

    bad = tmp_path / "plans.json"
    bad.write_text('{"plans": [{"name": "x", "connections": -1}]}')
    p = subprocess.run([herald_bin, "--listen", f"127.0.0.1:{free_port()}", "--plans", str(bad)],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0
    assert "plans.json" in p.stderr and "connections" in p.stderr


def test_message_bytes_and_publish_rate(limited):
    a = create_app(limited, "lim", plan="tiny")
    key = a["publish_key"]
    r = pub(limited, "lim", "c", "x" * 101, key)
    assert r.status == 413
    doc = r.json()
    assert doc["error"] == "limit_exceeded" and doc["limit"] == "message_bytes"
    # 5 per second: a burst of 12 gets at most 5 per second through, the rest 429.
    codes = [pub(limited, "lim", "c", f"m{i}", key).status for i in range(12)]
    assert set(codes) <= {201, 429} and 429 in codes
    assert codes.count(201) <= 10  # the burst may straddle one second boundary
    r = pub(limited, "lim", "c", "late", key)
    if r.status == 429:
        assert r.json()["limit"] == "publishes_per_second" and r.headers["retry-after"] == "1"
    time.sleep(1.1)
    assert pub(limited, "lim", "c", "after a second", key).status == 201
    # A batch reports the refused messages one by one.
    time.sleep(1.1)
    body = json.dumps({"messages": [{"channel": "c", "data": i} for i in range(7)]})
    r = request(limited.port, "POST", "/apps/lim/api/publish", body,
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert r.status == 201, r.body
    results = r.json()["results"]
    assert len(results) == 7 and any(x.get("limit") == "publishes_per_second" for x in results)
    st = request(limited.port, "GET", "/apps/lim/stats",
                 headers={"Authorization": f"Bearer {key}"}).json()
    assert st["usage"]["publishes_refused"] >= 1
    # The default app has no plan.
    assert all(pub(limited, None, "c", "x" * 200, None).status == 201 for _ in range(12))


def test_channel_limit_and_history_cap(limited):
    a = create_app(limited, "chl", plan="small")
    key = a["publish_key"]
    first = []
    for i in range(3):
        r = pub(limited, "chl", f"c{i}", "x", key)
        assert r.status == 201
        first.append(r.json()["id"])
    r = pub(limited, "chl", "c3", "x", key)
    assert r.status == 429
    assert r.json()["error"] == "limit_exceeded" and r.json()["limit"] == "channels"
    assert pub(limited, "chl", "c0", "existing channel", key).status == 201
    # Subscribing cannot create a 4th channel either.
    with app_stream("sse", limited, "chl", "c9") as s:
        assert s.status == 429
    # History keeps at most the plan's 2, even when the channel asks for more.
    r = request(limited.port, "PUT", "/apps/chl/api/channels/c1", '{"history_size": 50}',
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert r.status == 200 and r.json()["history_size"] == 2
    for i in range(3):
        assert pub(limited, "chl", "c1", f"h{i}", key).status == 201
    with app_stream("sse", limited, "chl", "c1", since=first[1]) as s:
        ev = s.next_event()
        assert ev.event == "gap" and ev.json()["channel"] == "c1", ev
        assert [m["data"] for m in s.messages(2)] == ["h1", "h2"]


def test_connection_limit_on_every_transport(limited):
    create_app(limited, "conns", plan="tiny")
    with app_stream("sse", limited, "conns", "a") as s1, app_stream("stream", limited, "conns", "a") as s2:
        assert s1.status == s2.status == 200
        with app_stream("sse", limited, "conns", "a") as s3:
            assert s3.status == 503
            doc = json.loads(s3.body)
            assert doc["error"] == "limit_exceeded" and doc["limit"] == "connections"
        r = request(limited.port, "GET", "/apps/conns/poll?channels=a&timeout=0")
        assert r.status == 503 and r.json()["limit"] == "connections"

        async def ws():
            url = f"ws://127.0.0.1:{limited.port}/apps/conns/ws?channels=a"
            async with websockets.connect(url, ping_interval=None) as w:
                err = await recv_json(w)
                assert err["event"] == "error" and err["error"] == "limit_exceeded", err
                await expect_ws_closed(w, 4429)

        arun(ws())
        st = admin(limited, "GET", "/admin/apps/conns").json()
        assert st["usage"]["connections"] == 2 and st["usage"]["connections_refused"] == 3
    # Closed connections give their places back.
    wait_until(lambda: admin(limited, "GET", "/admin/apps/conns").json()["usage"]["connections"] == 0,
               what="connections released")
    with app_stream("sse", limited, "conns", "a") as s:
        assert s.status == 200


# ---- persistence ------------------------------------------------------------------------------


def test_apps_survive_a_restart_with_state_dir(herald, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    s1 = herald(admin_key=ADMIN, state_dir=str(state))
    a = create_app(s1, "keep", plan="free")
    r = admin(s1, "POST", "/admin/apps/keep/keys")
    assert r.status == 201
    keys_new = r.json()["publish_key"]
    keys = admin(s1, "GET", "/admin/apps/keep").json()
    create_app(s1, "drop")
    assert admin(s1, "DELETE", "/admin/apps/drop").status == 200
    # Each change is a line of the journal, readable by the owner only (keys are in it).
    lines = [json.loads(x) for x in (state / "apps.log").read_text().splitlines()]
    # One line per change: a create with settings is one write (one fsync), not two.
    names = [x.get("delete") or x["put"]["name"] for x in lines]
    assert names == ["keep", "keep", "drop", "drop"] and "delete" in lines[-1]
    assert oct(os.stat(state / "apps.log").st_mode & 0o777) == "0o600"
    s1.stop()

    s2 = herald(admin_key=ADMIN, state_dir=str(state))
    r = admin(s2, "GET", "/admin/apps")
    assert [x["name"] for x in r.json()["apps"]] == ["keep"]
    assert r.json()["apps"][0]["plan"] == "free" and keys["plan"] == "free"
    # Both keys of the rotation still publish.
    assert pub(s2, "keep", "c", "old key", a["publish_key"]).status == 201
    assert pub(s2, "keep", "c", "new key", keys_new).status == 201
    # Start-up folded the journal into the snapshot (written atomically).
    doc = json.loads((state / "apps.json").read_text())
    assert [x["name"] for x in doc["apps"]] == ["keep"]
    assert (state / "apps.log").read_text() == ""
    assert not any(f.startswith(".apps") for f in os.listdir(state))


@pytest.mark.threads
def test_journal_compaction_and_a_torn_last_line(herald, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    s1 = herald(admin_key=ADMIN, state_dir=str(state))
    made = {create_app(s1, f"app{i}")["name"] for i in range(150)}
    for i in range(0, 150, 3):
        assert admin(s1, "DELETE", f"/admin/apps/app{i}").status == 200
        made.discard(f"app{i}")
    s1.stop()
    # The journal was compacted on the way (it never holds more lines than 64 or the
    # snapshot's apps), and a crash mid-append leaves a torn line: ignored.
    assert len((state / "apps.log").read_text().splitlines()) < 150
    with open(state / "apps.log", "a") as f:
        f.write('{"put": {"name": "torn", "pl')
    s2 = herald(admin_key=ADMIN, state_dir=str(state))
    names = {x["name"] for x in admin(s2, "GET", "/admin/apps").json()["apps"]}
    assert names == made


def test_bad_state_dir_stops_start_up(herald_bin, tmp_path):
    import subprocess

    p = subprocess.run([herald_bin, "--listen", f"127.0.0.1:{free_port()}", "--state-dir",
                        str(tmp_path / "missing")], capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and "not a directory" in p.stderr
    (tmp_path / "apps.json").write_text("garbage")
    p = subprocess.run([herald_bin, "--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and "apps.json" in p.stderr


def test_metrics_per_app(srv):
    a = create_app(srv, "met-a")
    create_app(srv, "met-b")
    assert pub(srv, "met-a", "c", "x", a["publish_key"]).status == 201
    with app_stream("sse", srv, "met-a", "c") as s:
        assert s.status == 200
        text = request(srv.port, "GET", "/metrics").body.decode()
    assert "herald_apps 2" in text
    assert request(srv.port, "GET", "/stats").json()["apps"] == 2
    assert 'herald_app_connections{app="met-a"} 1' in text
    assert 'herald_app_connections{app="met-b"} 0' in text
    assert 'herald_app_publishes_total{app="met-a"} 1' in text
    assert 'herald_app_channels{app="met-a"} 1' in text


# ---- settings ---------------------------------------------------------------------------------


def test_app_settings_cors_history_auto_create(srv):
    r = admin(srv, "POST", "/admin/apps", {"name": "set", "plan": "unlimited", "subscribe": "public",
                                            "settings": {"cors_origins": "https://shop.example",
                                                         "history_size": 3, "auto_create": False}})
    assert r.status == 201, r.body
    a = r.json()
    assert a["settings"] == {"cors_origins": "https://shop.example", "history_size": 3,
                             "history_ttl": None, "auto_create": False, "batch_ms": None,
                             "conflate": "none", "presence": False}
    key = a["publish_key"]
    # auto_create off: a subscribe or publish to an unknown channel is 404; PUT creates it.
    r = request(srv.port, "GET", "/apps/set/poll?channels=news&timeout=0")
    assert r.status == 404 and r.error()["error"] == "channel_not_found"
    assert pub(srv, "set", "news", "x", key).status == 404
    h = {"Authorization": f"Bearer {key}"}
    r = request(srv.port, "PUT", "/apps/set/api/channels/news", "", h)
    assert r.status == 201 and r.json()["history_size"] == 3
    for i in range(5):
        assert pub(srv, "set", "news", f"m{i}", key).status == 201
    r = request(srv.port, "GET", "/apps/set/api/channels/news", headers=h)
    assert r.json()["messages"] == 3
    # The default app keeps the server's settings: auto-create on, CORS *.
    assert request(srv.port, "GET", "/poll?channels=fresh&timeout=0").status == 200
    # CORS: the app's own list.
    r = request(srv.port, "GET", "/apps/set/poll?channels=news&timeout=0",
                headers={"Origin": "https://shop.example"})
    assert r.headers.get("access-control-allow-origin") == "https://shop.example"
    assert "origin" in r.headers.get("vary", "").lower()
    r = request(srv.port, "GET", "/apps/set/poll?channels=news&timeout=0",
                headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    r = request(srv.port, "GET", "/poll?channels=fresh&timeout=0",
                headers={"Origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") == "*"

    async def ws(origin):
        url = f"ws://127.0.0.1:{srv.port}/apps/set/ws?channels=news"
        try:
            async with websockets.connect(url, origin=origin, ping_interval=None):
                return 101
        except websockets.InvalidStatusCode as e:
            return e.status_code

    assert arun(ws("https://evil.example")) == 403
    assert arun(ws("https://shop.example")) == 101
    # PATCH changes settings; null gives the server's back.
    r = admin(srv, "PATCH", "/admin/apps/set", {"settings": {"auto_create": None,
                                                             "cors_origins": None}})
    assert r.status == 200 and r.json()["settings"]["auto_create"] is None
    assert pub(srv, "set", "other", "x", key).status == 201
    r = request(srv.port, "GET", "/apps/set/poll?channels=news&timeout=0",
                headers={"Origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") == "*"


@pytest.mark.parametrize("settings", [
    {"cors_origins": "not an origin"}, {"history_size": 0}, {"history_ttl": "1h"},
    {"auto_create": "yes"}, {"colour": "blue"},
])
def test_bad_settings_make_no_app(srv, settings):
    r = admin(srv, "POST", "/admin/apps", {"name": "badset", "settings": settings})
    assert r.status == 400 and r.error()["error"] == "bad_setting", r.body
    assert admin(srv, "GET", "/admin/apps/badset").status == 404
    create_app(srv, "goodset")
    r = admin(srv, "PATCH", "/admin/apps/goodset", {"settings": settings, "plan": "free"})
    assert r.status == 400
    assert admin(srv, "GET", "/admin/apps/goodset").json()["plan"] == "unlimited"


def test_settings_survive_a_restart(herald, tmp_path):
    state = tmp_path / "st"
    state.mkdir()
    s1 = herald(admin_key=ADMIN, state_dir=str(state))
    r = admin(s1, "POST", "/admin/apps", {"name": "keepset", "settings": {"history_ttl": 60}})
    assert r.status == 201
    s1.stop()
    s2 = herald(admin_key=ADMIN, state_dir=str(state))
    assert admin(s2, "GET", "/admin/apps/keepset").json()["settings"]["history_ttl"] == 60


# ---- subscriber tokens per app ----------------------------------------------------------------


def mint_hs256(secret, channels, sub="u1", ttl=600, **extra):
    import base64
    import hashlib
    import hmac

    def b64(d):
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    claims = {"sub": sub, "exp": int(time.time()) + ttl, "channels": channels, **extra}
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + \
        b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


def test_a_token_app_needs_a_token_signed_with_its_own_secret(srv):
    a = create_app(srv, "tok-a", subscribe="token")
    b = create_app(srv, "tok-b", subscribe="token")
    path = "/apps/tok-a/poll?channels=room&timeout=0"
    r = request(srv.port, "GET", path)
    assert r.status == 401 and r.error()["error"] == "token_missing"
    # Signed with the other app's secret, or a made-up one: invalid.
    for secret in (b["token_secret"], "not-the-secret"):
        tok = mint_hs256(secret, ["room"])
        r = request(srv.port, "GET", f"{path}&token={tok}")
        assert r.status == 401 and r.error()["error"] == "token_invalid", r.body
    good = mint_hs256(a["token_secret"], ["room", "user.{sub}"])
    r = request(srv.port, "GET", f"{path}&token={good}")
    assert r.status == 200, r.body
    # Grants are the app's channel names.
    r = request(srv.port, "GET", f"/apps/tok-a/poll?channels=other&timeout=0&token={good}")
    assert r.status == 403 and r.json()["error"] == "channel_forbidden"
    assert r.json()["channel"] == "other" and "~" not in r.body.decode()
    r = request(srv.port, "GET", f"/apps/tok-a/poll?channels=user.u1&timeout=0&token={good}")
    assert r.status == 200
    # The same token opens nothing in app b, and app b's public twin is not affected.
    r = request(srv.port, "GET", f"/apps/tok-b/poll?channels=room&timeout=0&token={good}")
    assert r.status == 401
    # Delivery with the token, on SSE and WebSocket (auth op).
    with app_stream("sse", srv, "tok-a", "room", token=good) as s:
        assert s.status == 200
        assert pub(srv, "tok-a", "room", "hi", a["publish_key"]).status == 201
        assert s.next_message()["data"] == "hi"

    async def ws():
        url = f"ws://127.0.0.1:{srv.port}/apps/tok-a/ws"
        async with websockets.connect(url, ping_interval=None) as w:
            await w.send(json.dumps({"op": "auth", "token": good, "ref": 1}))
            ack = await recv_json(w)
            assert ack.get("ref") == 1 and ack.get("event") != "error", ack
            await w.send(json.dumps({"op": "subscribe", "channels": ["room"], "ref": 2}))
            ack = await recv_json(w)
            assert ack.get("ref") == 2 and ack.get("event") != "error", ack
            await w.send(json.dumps({"op": "subscribe", "channels": ["secret"], "ref": 3}))
            err = await recv_json(w)
            assert err.get("error") == "channel_forbidden", err

    arun(ws())


def test_switching_an_app_to_public_and_back(srv):
    a = create_app(srv, "sw", subscribe="token")
    path = "/apps/sw/poll?channels=c&timeout=0"
    assert request(srv.port, "GET", path).status == 401
    assert admin(srv, "PATCH", "/admin/apps/sw", {"subscribe": "public"}).status == 200
    assert request(srv.port, "GET", path).status == 200
    assert admin(srv, "PATCH", "/admin/apps/sw", {"subscribe": "token"}).status == 200
    assert request(srv.port, "GET", path).status == 401
    tok = mint_hs256(a["token_secret"], ["c"])
    assert request(srv.port, "GET", f"{path}&token={tok}").status == 200


def test_default_app_tokens_do_not_open_an_app(herald):
    s = herald(admin_key=ADMIN, token_secret="default-secret-0123456789")
    create_app(s, "own", subscribe="token")
    tok = mint_hs256("default-secret-0123456789", ["c"])
    assert request(s.port, "GET", f"/poll?channels=c&timeout=0&token={tok}").status == 200
    r = request(s.port, "GET", f"/apps/own/poll?channels=c&timeout=0&token={tok}")
    assert r.status == 401 and r.error()["error"] == "token_invalid"


def test_listing_apps_is_paged(srv):
    for i in range(5):
        create_app(srv, f"page{i}")
    r = admin(srv, "GET", "/admin/apps?limit=2")
    doc = r.json()
    assert [a["name"] for a in doc["apps"]] == ["page0", "page1"]
    assert doc["total"] == 5 and doc["next"] == "page1"
    doc = admin(srv, "GET", "/admin/apps?limit=2&after=page3").json()
    assert [a["name"] for a in doc["apps"]] == ["page4"] and doc["next"] is None
    doc = admin(srv, "GET", "/admin/apps?limit=5").json()
    assert len(doc["apps"]) == 5 and doc["next"] is None
    assert admin(srv, "GET", "/admin/apps?limit=0").status == 400
    assert admin(srv, "GET", "/admin/apps?after=BAD!").status == 400


# ---- found by an outside attack (each failed before its fix) ---------------------------------


def test_connections_and_requests_of_a_deleted_app_never_reach_a_new_one(herald):
    s = herald(admin_key=ADMIN, ws_publish=True)
    old = create_app(s, "victim")

    async def scenario():
        url = f"ws://127.0.0.1:{s.port}/apps/victim/ws"
        hdr = {"Authorization": f"Bearer {old['publish_key']}"}
        async with websockets.connect(url, extra_headers=hdr, ping_interval=None) as pubws, \
                websockets.connect(url, ping_interval=None) as subws:
            await pubws.send(json.dumps({"op": "publish", "channel": "c", "data": 1, "ref": 1}))
            assert (await recv_json(pubws))["event"] == "published"
            assert admin(s, "DELETE", "/admin/apps/victim").status == 200
            r = admin(s, "POST", "/admin/apps", {"name": "victim", "subscribe": "token"})
            assert r.status == 201
            for ws, op in ((pubws, {"op": "publish", "channel": "c", "data": 2, "ref": 2}),
                           (subws, {"op": "subscribe", "channels": ["secret"], "ref": 3})):
                await ws.send(json.dumps(op))
                err = await recv_json(ws)
                assert err["event"] == "error" and err["error"] == "app_not_found", err
                await expect_ws_closed(ws, 4404)

    arun(scenario())
    new = admin(s, "GET", "/admin/apps/victim").json()
    assert new["usage"]["channels"] == 0 and new["usage"]["publishes"] == 0

    # An HTTP publish whose head passed with the old key, and whose body comes after the
    # app was deleted and made again, is checked again: 401, nothing stored.
    from helpers import RawConn, http_post
    k = create_app(s, "race")["publish_key"]
    with RawConn(s.port) as c:
        c.send(http_post("/apps/race/pub/c", None, {"Authorization": f"Bearer {k}",
                                                    "Content-Length": "5"}))
        time.sleep(0.2)  # the head is checked
        assert admin(s, "DELETE", "/admin/apps/race").status == 200
        create_app(s, "race")
        c.send(b"hello")
        status, _ = c.read_head()
        assert status == 401
    assert admin(s, "GET", "/admin/apps/race").json()["usage"]["channels"] == 0


def test_a_prefix_or_after_never_reaches_into_another_app(srv):
    b = create_app(srv, "beta")
    assert pub(srv, "beta", "orders.vip", "x", b["publish_key"]).status == 201
    for q in ("prefix=beta~", "prefix=beta%7E", "after=beta~a", "prefix=~"):
        r = request(srv.port, "GET", f"/api/channels?{q}")
        assert r.status == 400, (q, r.body)
    r = request(srv.port, "GET", "/api/channels")
    assert all("~" not in c["name"] for c in r.json()["channels"])


def test_switching_to_tokens_applies_to_open_websockets(srv):
    create_app(srv, "gamma", subscribe="public")

    async def scenario():
        url = f"ws://127.0.0.1:{srv.port}/apps/gamma/ws"
        async with websockets.connect(url, ping_interval=None) as w:
            await w.send(json.dumps({"op": "subscribe", "channels": ["a"], "ref": 1}))
            assert (await recv_json(w))["event"] == "subscribed"
            assert admin(srv, "PATCH", "/admin/apps/gamma", {"subscribe": "token"}).status == 200
            await w.send(json.dumps({"op": "subscribe", "channels": ["b"], "ref": 2}))
            err = await recv_json(w)
            assert err["event"] == "error" and err["error"] == "token_missing", err

    arun(scenario())


def test_a_revoked_key_stops_websockets_that_upgraded_with_it(herald):
    s = herald(admin_key=ADMIN, ws_publish=True)
    k0 = create_app(s, "rot2")["publish_key"]

    async def scenario():
        url = f"ws://127.0.0.1:{s.port}/apps/rot2/ws"
        async with websockets.connect(url, extra_headers={"Authorization": f"Bearer {k0}"},
                                      ping_interval=None) as w:
            await w.send(json.dumps({"op": "publish", "channel": "c", "data": 1, "ref": 1}))
            assert (await recv_json(w))["event"] == "published"
            assert admin(s, "POST", "/admin/apps/rot2/keys").status == 201
            await w.send(json.dumps({"op": "publish", "channel": "c", "data": 2, "ref": 2}))
            assert (await recv_json(w))["event"] == "published"  # rotation keeps K0 valid
            assert admin(s, "DELETE", f"/admin/apps/rot2/keys/{k0}").status == 200
            await w.send(json.dumps({"op": "publish", "channel": "c", "data": 3, "ref": 3}))
            err = await recv_json(w)
            assert err["event"] == "error" and err["error"] == "unauthorized", err
            assert "app" in err["detail"]

    arun(scenario())
    # A second rotation drops the oldest key: WebSockets whose upgrade made them publishers
    # (whatever key they showed) must show a key again, in the op.
    r = admin(s, "POST", "/admin/apps/rot2/keys")
    k1 = r.json()["publish_key"]

    async def dropped():
        url = f"ws://127.0.0.1:{s.port}/apps/rot2/ws"
        async with websockets.connect(url, extra_headers={"Authorization": f"Bearer {k1}"},
                                      ping_interval=None) as w:
            assert admin(s, "POST", "/admin/apps/rot2/keys").status == 201  # drops the oldest
            await w.send(json.dumps({"op": "publish", "channel": "c", "data": 5, "ref": 5}))
            assert (await recv_json(w))["error"] == "unauthorized"
            op = {"op": "publish", "channel": "c", "data": 6, "ref": 6, "key": k1}
            await w.send(json.dumps(op))
            assert (await recv_json(w))["event"] == "published"  # k1 is still valid

    arun(dropped())


def test_an_app_stored_without_a_token_secret_is_not_public(herald, tmp_path):
    state = tmp_path / "nosecret"
    state.mkdir()
    (state / "apps.log").write_text(json.dumps({"put": {
        "name": "nosecret", "plan": "free", "subscribe": "token", "publish_keys": ["k" * 43]}})
        + "\n")
    s = herald(admin_key=ADMIN, state_dir=str(state))
    r = request(s.port, "GET", "/apps/nosecret/poll?channels=a&timeout=0")
    assert r.status == 401 and r.error()["error"] == "token_missing"
    assert "no token secret" in s.log()


def test_a_keep_alive_connection_that_polled_holds_no_place(limited):
    create_app(limited, "idle", plan="small")  # 2 connections
    import http.client
    conns = [http.client.HTTPConnection("127.0.0.1", limited.port, timeout=10) for _ in range(3)]
    try:
        for c in conns[:2]:
            c.request("GET", "/apps/idle/poll?channels=a&timeout=0")
            r = c.getresponse()
            r.read()
            assert r.status == 200
        st = admin(limited, "GET", "/admin/apps/idle").json()
        assert st["usage"]["connections"] == 0
        conns[2].request("GET", "/apps/idle/poll?channels=a&timeout=0")
        assert conns[2].getresponse().status == 200
    finally:
        for c in conns:
            c.close()
    # A refused subscribe (no such channel) releases its place too.
    r = request(limited.port, "GET", "/apps/idle/sse?channels=bad%20name")
    assert r.status == 400
    assert admin(limited, "GET", "/admin/apps/idle").json()["usage"]["connections"] == 0


def test_one_herald_per_state_dir(herald, herald_bin, tmp_path):
    import subprocess

    state = tmp_path / "shared"
    state.mkdir()
    herald(admin_key=ADMIN, state_dir=str(state))
    p = subprocess.run([herald_bin, "--listen", f"127.0.0.1:{free_port()}", "--state-dir",
                        str(state)], capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and "in use by another herald" in p.stderr


def test_a_damaged_journal_line_before_good_ones_stops_start_up(herald_bin, tmp_path):
    import subprocess

    good = json.dumps({"put": {"name": "a1", "plan": "free", "token_secret": "s" * 43}})
    (tmp_path / "apps.log").write_text(good + "\n" + "{garbage\n" + json.dumps({"delete": "a1"})
                                       + "\n")
    p = subprocess.run([herald_bin, "--listen", f"127.0.0.1:{free_port()}", "--state-dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and "line 2 is damaged" in p.stderr


def test_no_internal_channel_keys_in_answers(limited):
    a = create_app(limited, "leak", plan="small")
    h = {"Authorization": f"Bearer {a['publish_key']}"}
    assert pub(limited, "leak", "secretchan", "x", a["publish_key"]).status == 201
    r = request(limited.port, "DELETE", "/apps/leak/api/channels/secretchan", headers=h)
    assert r.status == 200 and r.json() == {"deleted": "secretchan"}
    r = request(limited.port, "GET", "/apps/leak/api/channels/secretchan", headers=h)
    assert r.status == 404 and "~" not in r.body.decode()
    for i in range(3):
        assert pub(limited, "leak", f"c{i}", "x", a["publish_key"]).status == 201

    async def ws():
        url = f"ws://127.0.0.1:{limited.port}/apps/leak/ws"
        async with websockets.connect(url, ping_interval=None) as w:
            await w.send(json.dumps({"op": "subscribe", "channels": ["c9"], "ref": 1}))
            err = await recv_json(w)
            assert err["error"] == "limit_exceeded" and err["limit"] == "channels", err
            assert "~" not in json.dumps(err)

    arun(ws())


def test_admin_and_tsuru_input_is_strict(srv):
    r = admin(srv, "POST", "/admin/apps", {"name": "strict", "colour": "red"})
    assert r.status == 400 and "colour" in r.error()["detail"]
    assert admin(srv, "POST", "/admin/apps", {"name": "strict", "plan": ""}).status == 400
    create_app(srv, "strict")
    assert admin(srv, "PATCH", "/admin/apps/strict", {"name": "other"}).status == 400
    r = request(srv.port, "GET", "/apps/strict")
    assert r.status == 404 and "endpoint" in r.error()["detail"]
    import base64
    basic = base64.b64encode(f"tsuru:{ADMIN}".encode()).decode()
    r = request(srv.port, "POST", "/resources/strict/bind-app",
                "app-name=a%0d%0aInjected%3a+1&app-host=x",
                {"Authorization": f"Basic {basic}",
                 "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 400, r.body
    assert "Injected" not in srv.log()


def test_app_metrics_need_the_api_credentials(herald):
    s = herald(admin_key=ADMIN, publish_key="pk")
    create_app(s, "hidden")
    text = request(s.port, "GET", "/metrics").body.decode()
    assert "hidden" not in text and "herald_connections" in text
    text = request(s.port, "GET", "/metrics", headers={"Authorization": "Bearer pk"}).body.decode()
    assert 'herald_app_connections{app="hidden"}' in text


def test_an_interrupted_compaction_loses_nothing(herald, tmp_path):
    """A crash while the compactor wrote a snapshot leaves apps.log and apps.log.new: both
    are replayed, in order, on the snapshot."""
    st = lambda n: {"name": n, "plan": "free", "token_secret": "s" * 43, "subscribe": "public",
                    "publish_keys": [n * 43]}
    (tmp_path / "apps.json").write_text(json.dumps({"version": 1, "apps": [st("a")]}))
    (tmp_path / "apps.log").write_text(json.dumps({"put": st("b")}) + "\n")
    (tmp_path / "apps.log.new").write_text(json.dumps({"delete": "a"}) + "\n"
                                           + json.dumps({"put": st("c")}) + "\n")
    s = herald(admin_key=ADMIN, state_dir=str(tmp_path))
    names = [x["name"] for x in admin(s, "GET", "/admin/apps").json()["apps"]]
    assert names == ["b", "c"]
    assert not (tmp_path / "apps.log.new").exists()
    assert pub(s, "c", "x", "y", "c" * 43).status == 201
