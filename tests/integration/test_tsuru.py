"""The Tsuru service API (/resources/...), called exactly as Tsuru's service client
calls it (tsuru/service/endpoint.go): form-urlencoded bodies, `Accept:
application/json`, HTTP Basic with the service's user name and the admin key as
password, `Connection: close`, GET parameters in the query (requestID). Every
endpoint and status Tsuru acts on, then end to end: provision, bind, subscribe and
publish with the environment bind-app returned, unbind, remove."""

import asyncio
import base64
import http.client
import itertools
import json
import os
import time
import urllib.parse

import pytest
import websockets

from helpers import WAIT, arun, athread, jwt_hs256, request, wait_until

pytestmark = pytest.mark.threads  # binds and deletes race the workers' subscribers

KEY = "tsuru-admin-key"
ENV_KEYS = {"HERALD_APP", "HERALD_URL", "HERALD_PUBLISH_URL", "HERALD_PUBLISH_KEY",
            "HERALD_TOKEN_SECRET"}


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def tsuru(srv, method, path, form=None, auth=None, port=None):
    """One request as Tsuru sends it: a fresh connection, form body (or, for GET, the
    query), Basic auth with the admin key as password."""
    form = dict(form or {})
    form.setdefault("requestID", "req-1")  # Tsuru adds it (empty or not) to every call
    encoded = urllib.parse.urlencode(sorted(form.items()), doseq=True)  # Go sorts the keys
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
        "Authorization": auth if auth is not None else basic("herald", KEY),
        "Connection": "close",
        "User-Agent": "Go-http-client/1.1",
    }
    if auth == "":
        del headers["Authorization"]
    body = None
    if method == "GET":
        path += "?" + encoded
    else:
        body = encoded.encode()
    return request(port or srv.api_port, method, path, body, headers)


@pytest.fixture(scope="module")
def srv(module_herald):
    return module_herald(admin_key=KEY)


_n = itertools.count()


@pytest.fixture
def name():
    """An instance name no other test uses (Tsuru's alphabet: letters, digits, '-')."""
    return f"inst-{os.getpid()}-{next(_n)}"


def create(srv, name, plan="free", status=201, **extra):
    r = tsuru(srv, "POST", "/resources",
              {"name": name, "plan": plan, "team": "myteam", "user": "dev@example.com", **extra})
    assert r.status == status, (r.status, r.body)
    return r


def bind(srv, name, app="myapp", status=201, port=None):
    r = tsuru(srv, "POST", f"/resources/{name}/bind-app",
              {"app-name": app, "app-host": f"{app}.example.com",
               "app-hosts": [f"{app}.example.com", f"{app}.internal"]}, port=port)
    assert r.status == status, (r.status, r.body)
    return r.json() if status == 201 else r


def info(srv, name):
    r = tsuru(srv, "GET", f"/resources/{name}")
    assert r.status == 200, (r.status, r.body)
    items = r.json()
    # Tsuru decodes []map[string]string: every value must be a string.
    assert all(set(i) == {"label", "value"} and isinstance(i["value"], str) for i in items), items
    return {i["label"]: i["value"] for i in items}


def admin_app(srv, name):
    r = srv.request("GET", f"/admin/apps/{name}", headers={"Authorization": f"Bearer {KEY}"},
                    api=True)
    return r


def subscriber_token(env, channels):
    return jwt_hs256(env["HERALD_TOKEN_SECRET"],
               {"sub": "u1", "exp": int(time.time()) + 600, "channels": channels})


# ---- plans, credentials ---------------------------------------------------------------------


def test_plans_lists_name_and_description(srv):
    r = tsuru(srv, "GET", "/resources/plans")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    plans = r.json()
    assert [p["name"] for p in plans] == ["free", "standard", "unlimited"]
    assert all(set(p) == {"name", "description"} and p["description"] for p in plans)


@pytest.mark.parametrize("auth", [basic("herald", "wrong"), basic("herald", ""), "Bearer wrong",
                                  basic("herald", KEY + "x"), ""])
def test_wrong_or_missing_credentials_get_401(srv, name, auth):
    for method, path in (("GET", "/resources/plans"), ("POST", "/resources"),
                         ("GET", f"/resources/{name}/status"),
                         ("POST", f"/resources/{name}/bind-app"),
                         ("DELETE", f"/resources/{name}")):
        r = tsuru(srv, method, path, {"name": name}, auth=auth)
        assert r.status == 401, (method, path, r.status, r.body)
        assert r.error()["error"] == "unauthorized"
    # nothing was created on the way
    assert tsuru(srv, "GET", f"/resources/{name}/status").status == 404


@pytest.mark.parametrize("auth", [basic("herald", KEY), basic("any-user", KEY), basic("", KEY),
                                  f"Bearer {KEY}"])
def test_any_user_name_with_the_admin_key_and_bearer_are_accepted(srv, auth):
    assert tsuru(srv, "GET", "/resources/plans", auth=auth).status == 200


def test_without_admin_key_the_service_api_is_off(herald, name):
    plain = herald()
    r = tsuru(plain, "POST", "/resources", {"name": name})
    assert r.status == 404 and r.error()["error"] == "admin_off"
    assert "--admin-key" in r.error()["detail"]


# ---- create ---------------------------------------------------------------------------------


def test_create_answers_201_and_the_instance_is_ready(srv, name):
    r = create(srv, name, plan="standard")
    assert r.json() == {"name": name, "plan": "standard"}
    s = tsuru(srv, "GET", f"/resources/{name}/status")
    assert s.status == 204 and s.body == b"" and "content-length" not in s.headers
    app = admin_app(srv, name).json()
    assert (app["plan"], app["team"], app["user"]) == ("standard", "myteam", "dev@example.com")


def test_create_decodes_the_form_and_ignores_unknown_fields(srv, name):
    body = (f"description=a+b&name={name}&plan=free&requestID=&tag=x&tag=y&team=my+team"
            "&user=dev%40example.com%2Bq")
    r = request(srv.api_port, "POST", "/resources", body,
                {"Content-Type": "application/x-www-form-urlencoded",
                 "Authorization": basic("herald", KEY)})
    assert r.status == 201, r.body
    app = admin_app(srv, name).json()
    assert (app["team"], app["user"]) == ("my team", "dev@example.com+q")


def test_create_without_plan_gets_the_first_plan(srv, name):
    r = tsuru(srv, "POST", "/resources", {"name": name, "team": "t", "user": "u"})
    assert r.status == 201 and r.json()["plan"] == "free"


def test_duplicate_name_is_409(srv, name):
    create(srv, name)
    r = create(srv, name, plan="standard", status=409)
    assert r.error()["error"] == "instance_exists"
    assert admin_app(srv, name).json()["plan"] == "free"  # untouched


def test_unknown_plan_is_400_and_names_the_plans(srv, name):
    r = create(srv, name, plan="gold", status=400)
    err = r.error()
    assert err["error"] == "bad_plan" and "gold" in err["detail"]
    assert "free, standard, unlimited" in err["detail"]
    assert tsuru(srv, "GET", f"/resources/{name}/status").status == 404


def test_missing_name_is_400(srv):
    r = tsuru(srv, "POST", "/resources", {"plan": "free"})
    assert r.status == 400 and r.error()["error"] == "missing_field"
    assert '"name"' in r.error()["detail"]


def test_tsuru_names_are_lowercased_with_underscores_as_dashes(srv):
    tname = f"My_Inst_{os.getpid()}_{next(_n)}"
    herald_name = tname.lower().replace("_", "-")
    create(srv, tname)
    # every endpoint finds it under Tsuru's name; herald's app has the mapped one
    assert tsuru(srv, "GET", f"/resources/{tname}/status").status == 204
    env = bind(srv, tname)
    assert env["HERALD_APP"] == herald_name
    assert env["HERALD_URL"].endswith(f"/apps/{herald_name}")
    assert admin_app(srv, herald_name).status == 200
    # a Tsuru name that maps to an existing app is a conflict, not the same instance
    r = create(srv, herald_name, status=409)
    assert "lowercased" in r.error()["detail"]
    assert tsuru(srv, "DELETE", f"/resources/{tname}").status == 200
    assert admin_app(srv, herald_name).status == 404


@pytest.mark.parametrize("bad", ["a" * 41, "plans", "has.dot", "-dash-first", "sp ace", "ü"])
def test_names_herald_cannot_take_are_400(srv, bad):
    r = create(srv, bad, status=400)
    err = r.error()
    assert err["error"] == "bad_instance_name" and "40" in err["detail"]


def test_subscribe_plan_parameter(srv, name):
    create(srv, name, **{"parameters.subscribe": "public"})
    assert admin_app(srv, name).json()["subscribe"] == "public"
    assert info(srv, name)["Subscribe"] == "public"
    other = name + "-t"
    create(srv, other)
    assert admin_app(srv, other).json()["subscribe"] == "token"  # new apps: tokens
    r = create(srv, name + "-x", status=400, **{"parameters.subscribe": "everyone"})
    assert r.error()["error"] == "bad_parameter"


# ---- info, update, status ------------------------------------------------------------------


def test_info_has_plan_usage_and_urls(srv, name):
    create(srv, name, **{"parameters.subscribe": "public"})
    env = bind(srv, name, app="web")
    with SSE_at(env, "a") as sse:
        wait_until(lambda: info(srv, name)["Connections"] == "1 of 100", what="a connection")
        publish(env, "a", "hi")
        assert json.loads(sse.next_data())["data"] == "hi"
    i = info(srv, name)
    assert i["App"] == name and i["Plan"] == "free" and i["Subscribe"] == "public"
    assert i["Channels"] == "1 of 100"
    assert i["Publishes"].startswith("1 (0 refused")
    assert i["Subscriber URL"] == env["HERALD_URL"] and i["Publish URL"] == env["HERALD_PUBLISH_URL"]
    assert i["Bound apps"] == "web"


def test_unknown_instance_is_404_everywhere(srv, name):
    for method, path in (("GET", ""), ("PUT", ""), ("DELETE", ""), ("GET", "/status"),
                         ("POST", "/bind-app"), ("DELETE", "/bind-app"), ("POST", "/bind"),
                         ("DELETE", "/bind")):
        r = tsuru(srv, method, f"/resources/{name}{path}", {"app-name": "x", "plan": "free"})
        assert r.status == 404, (method, path, r.status, r.body)
        assert r.error()["error"] == "instance_not_found"


def test_update_changes_the_plan(srv, name):
    create(srv, name)
    r = tsuru(srv, "PUT", f"/resources/{name}",
              {"plan": "standard", "team": "myteam", "description": "new", "tags": ["a", "b"]})
    assert r.status == 200, r.body
    assert info(srv, name)["Plan"] == "standard"
    assert info(srv, name)["Connections"] == "0 of 10000"
    # what Tsuru sends when the plan does not change: an empty plan
    assert tsuru(srv, "PUT", f"/resources/{name}", {"plan": "", "team": "myteam"}).status == 200
    assert info(srv, name)["Plan"] == "standard"
    r = tsuru(srv, "PUT", f"/resources/{name}", {"plan": "gold"})
    assert r.status == 400 and r.error()["error"] == "bad_plan"
    assert info(srv, name)["Plan"] == "standard"


def test_unknown_subpath_is_404_and_wrong_method_405(srv, name):
    create(srv, name)
    r = tsuru(srv, "GET", f"/resources/{name}/nothing")
    assert r.status == 404 and r.error()["error"] == "not_found"
    r = tsuru(srv, "POST", f"/resources/{name}/status")
    assert r.status == 405 and r.error()["error"] == "method_not_allowed"
    r = tsuru(srv, "PATCH", f"/resources/{name}")
    assert r.status == 405


# ---- bind -----------------------------------------------------------------------------------


def test_bind_app_returns_the_environment(srv, name):
    create(srv, name)
    env = bind(srv, name)
    assert set(env) == ENV_KEYS and all(isinstance(v, str) and v for v in env.values())
    base = f"http://127.0.0.1:{srv.port}/apps/{name}"  # from the Host Tsuru addressed
    assert env["HERALD_URL"] == base and env["HERALD_PUBLISH_URL"] == base
    assert env["HERALD_APP"] == name
    app = srv.request("GET", f"/admin/apps/{name}", api=True,
                      headers={"Authorization": f"Bearer {KEY}"}).json()
    assert app["bound_apps"] == "myapp"
    # binding a second app gives the same credentials
    assert bind(srv, name, app="other") == env
    assert info(srv, name)["Bound apps"] == "myapp,other"


def test_bind_app_needs_the_app_name(srv, name):
    create(srv, name)
    r = tsuru(srv, "POST", f"/resources/{name}/bind-app", {"app-host": "x.example.com"})
    assert r.status == 400 and "app-name" in r.error()["detail"]


def test_bind_app_urls_from_public_and_api_url(module_herald, name):
    s = module_herald(admin_key=KEY, public_url="https://push.example.com/",
                      api_url="https://api.push.example.com")
    create(s, name)
    env = bind(s, name)
    assert env["HERALD_URL"] == f"https://push.example.com/apps/{name}"
    assert env["HERALD_PUBLISH_URL"] == f"https://api.push.example.com/apps/{name}"
    s2 = module_herald(admin_key=KEY, public_url="https://push.example.com")
    create(s2, name)
    assert bind(s2, name)["HERALD_PUBLISH_URL"] == f"https://push.example.com/apps/{name}"


def test_bind_app_on_a_separate_api_listener_points_subscribers_at_theirs(module_herald, name):
    s = module_herald(admin_key=KEY, api=True)
    assert s.api_port != s.port
    create(s, name)
    env = bind(s, name)
    # The API listener's port is not where subscribers go: the subscriber listener's is.
    assert env["HERALD_URL"] == f"http://127.0.0.1:{s.port}/apps/{name}"
    assert env["HERALD_PUBLISH_URL"] == f"http://127.0.0.1:{s.api_port}/apps/{name}"
    # And it works as given: subscribe there, publish on the API listener.
    r = request(s.port, "GET", urllib.parse.urlparse(env["HERALD_URL"]).path
                + "/poll?channels=a&timeout=0&token=" + subscriber_token(env, ["a"]))
    assert r.status == 200, r.body


def test_bind_app_refuses_what_it_cannot_record(srv, name):
    """Bound app names go into the instance's list (a bounded one): a name that is not a
    Tsuru app's (a CR/LF for the log) is 400, and a bind past the list's room is 409, not
    a 201 that records nothing."""
    create(srv, name)
    bind(srv, name, app="a%0d%0ab", status=400)
    status = 201
    for i in range(20):
        r = tsuru(srv, "POST", f"/resources/{name}/bind-app", {"app-name": f"{i}" + "x" * 90})
        if r.status != 201:
            status = r.status
            break
    assert status == 409 and 3 <= i < 20, (status, i)
    assert r.json()["error"] == "too_many_bindings"
    # Unbinding one makes room again.
    assert tsuru(srv, "DELETE", f"/resources/{name}/bind-app", {"app-name": "0" + "x" * 90}).status == 200
    assert tsuru(srv, "POST", f"/resources/{name}/bind-app", {"app-name": "z" + "x" * 90}).status == 201


def test_unbind_app_and_unit_binds(srv, name):
    create(srv, name)
    bind(srv, name, app="web")
    # unit-level binds of older Tsuru versions: nothing to do, but answered as Tsuru expects
    r = tsuru(srv, "POST", f"/resources/{name}/bind",
              {"app-name": "web", "app-host": "web.example.com", "unit-host": "10.0.0.7"})
    assert r.status == 201 and r.json() == {}
    r = tsuru(srv, "DELETE", f"/resources/{name}/bind", {"app-host": "web.example.com",
                                                         "unit-host": "10.0.0.7"})
    assert r.status == 200
    r = tsuru(srv, "DELETE", f"/resources/{name}/bind-app",
              {"app-name": "web", "app-host": "web.example.com"})
    assert r.status == 200
    assert info(srv, name)["Bound apps"] == "none"


# ---- end to end -----------------------------------------------------------------------------


class SSE_at:
    """An SSE subscriber on $HERALD_URL/sse with http.client, as an app would open it."""

    def __init__(self, env, channels, token=None):
        u = urllib.parse.urlsplit(env["HERALD_URL"])
        q = {"channels": channels, **({"token": token} if token else {})}
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=WAIT)
        self.conn.request("GET", f"{u.path}/sse?{urllib.parse.urlencode(q, safe=',')}",
                          headers={"Accept": "text/event-stream"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, (self.resp.status, self.resp.read())
        assert self.resp.getheader("Content-Type").startswith("text/event-stream")

    def next_block(self):
        lines = []
        while True:
            line = self.resp.fp.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if line == "":
                if lines:
                    return lines
                continue
            lines.append(line)

    def next_event(self):
        """(event name, data) of the next block with data."""
        while True:
            block = self.next_block()
            assert block is not None, "the stream ended"
            data = [l[6:] for l in block if l.startswith("data: ")]
            if data:
                ev = [l[7:] for l in block if l.startswith("event: ")]
                return (ev[0] if ev else "message"), "\n".join(data)

    def next_data(self):
        return self.next_event()[1]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.conn.close()


def publish(env, channel, body, status=201):
    """POST $HERALD_PUBLISH_URL/pub/{channel} with the key as Basic password."""
    u = urllib.parse.urlsplit(env["HERALD_PUBLISH_URL"])
    r = request(u.port, "POST", f"{u.path}/pub/{channel}", body,
                {"Authorization": basic("app", env["HERALD_PUBLISH_KEY"]),
                 "Content-Type": "text/plain"}, host=u.hostname)
    assert r.status == status, (r.status, r.body)
    return r


@pytest.mark.timeout(90)
def test_provision_bind_subscribe_publish_unbind_remove(srv, name):
    create(srv, name)  # subscribe: token (the default for new apps)
    env = bind(srv, name)
    token = subscriber_token(env, ["news"])
    ws_url = env["HERALD_URL"].replace("http://", "ws://", 1) + "/ws?" + urllib.parse.urlencode(
        {"channels": "news", "token": token})

    async def main():
        async with websockets.connect(ws_url, ping_interval=None, open_timeout=WAIT) as ws:
            with SSE_at(env, "news", token=token) as sse:
                wait_until(lambda: info(srv, name)["Connections"] == "2 of 100",
                           what="both subscribers")
                await athread(publish, env, "news", "first")
                assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["data"] == "first"
                assert json.loads(await athread(sse.next_data))["data"] == "first"
                # unbind: Tsuru removes the variables from the app; the instance lives on
                r = await athread(tsuru, srv, "DELETE", f"/resources/{name}/bind-app",
                                  {"app-name": "myapp", "app-host": "myapp.example.com"})
                assert r.status == 200
                # remove: subscribers get `closed`, then nothing answers for it
                r = await athread(tsuru, srv, "DELETE", f"/resources/{name}")
                assert r.status == 200
                closed = {"event": "closed", "channel": "news", "reason": "deleted"}
                assert json.loads(await asyncio.wait_for(ws.recv(), WAIT)) == closed
                event, data = await athread(sse.next_event)
                assert event == "closed" and json.loads(data) == closed
                # the user's channel (the token has a "sub") goes with the app, last
                event, data = await athread(sse.next_event)
                assert event == "closed" and json.loads(data) == dict(closed, channel="#user")
                assert await athread(sse.next_block) is None  # its last channel: the stream ends

    u = urllib.parse.urlsplit(env["HERALD_URL"])
    r = request(u.port, "GET", f"{u.path}/sse?channels=news")  # no token: refused
    assert r.status == 401, (r.status, r.body)
    arun(main())
    assert tsuru(srv, "GET", f"/resources/{name}/status").status == 404
    assert tsuru(srv, "GET", f"/resources/{name}").status == 404
    publish(env, "news", "late", status=404)
    assert request(u.port, "GET", f"{u.path}/sse?channels=news").status == 404
    assert admin_app(srv, name).status == 404


def test_public_instance_with_the_environment_verbatim(srv, name):
    create(srv, name, **{"parameters.subscribe": "public"})
    env = bind(srv, name)
    with SSE_at(env, "a,b") as sse:
        wait_until(lambda: info(srv, name)["Connections"] == "1 of 100", what="the subscriber")
        publish(env, "b", "to b")
        doc = json.loads(sse.next_data())
        assert (doc["channel"], doc["data"]) == ("b", "to b")


def test_same_channel_in_two_instances_is_isolated(srv, name):
    one, two = name + "-1", name + "-2"
    create(srv, one, **{"parameters.subscribe": "public"})
    create(srv, two, **{"parameters.subscribe": "public"})
    env1, env2 = bind(srv, one), bind(srv, two)
    assert env1["HERALD_PUBLISH_KEY"] != env2["HERALD_PUBLISH_KEY"]
    assert env1["HERALD_TOKEN_SECRET"] != env2["HERALD_TOKEN_SECRET"]
    with SSE_at(env1, "room") as sse1:
        wait_until(lambda: info(srv, one)["Connections"] == "1 of 100", what="the subscriber")
        # the key of one does not publish in the other
        bad = dict(env2, HERALD_PUBLISH_KEY=env1["HERALD_PUBLISH_KEY"])
        publish(bad, "room", "wrong key", status=401)
        publish(env2, "room", "for two")
        publish(env1, "room", "for one")
        assert json.loads(sse1.next_data())["data"] == "for one"


def test_instances_survive_a_restart_with_state_dir(herald, tmp_path, name):
    state = tmp_path / "state"
    state.mkdir()
    s = herald(admin_key=KEY, state_dir=str(state))
    create(s, name, plan="standard")
    env = bind(s, name, app="web")
    assert s.terminate() == 0
    s2 = herald(admin_key=KEY, state_dir=str(state))
    assert tsuru(s2, "GET", f"/resources/{name}/status").status == 204
    i = info(s2, name)
    assert (i["Plan"], i["Bound apps"]) == ("standard", "web")
    env2 = bind(s2, name, app="web")
    assert env2["HERALD_PUBLISH_KEY"] == env["HERALD_PUBLISH_KEY"]
    assert env2["HERALD_TOKEN_SECRET"] == env["HERALD_TOKEN_SECRET"]
    assert tsuru(s2, "DELETE", f"/resources/{name}").status == 200
    assert s2.terminate() == 0
    s3 = herald(admin_key=KEY, state_dir=str(state))
    assert tsuru(s3, "GET", f"/resources/{name}/status").status == 404


def test_separate_api_listener_serves_the_service_api_only_there(herald, name):
    s = herald(api=True, admin_key=KEY, public_url="http://push.example.com")
    assert tsuru(s, "GET", "/resources/plans", port=s.port).status == 404
    create(s, name)
    assert bind(s, name, port=s.api_port)["HERALD_URL"] == f"http://push.example.com/apps/{name}"
    assert "--public-url" not in s.log()  # no warning when it is set
    s2 = herald(api=True, admin_key=KEY)
    wait_until(lambda: "set --public-url" in s2.log(), what="the start-up warning")
