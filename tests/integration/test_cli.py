"""The command-line client (`herald pub|sub|channels|stats|apps|token`, docs/cli.md): the
built binary run as a subprocess against a real herald, checked by independent clients
(http.client, a raw SSE reader) and by herald itself (tokens it mints open an app)."""

import json
import os
import subprocess
import threading
import time

import pytest

import helpers
from helpers import SSE, WAIT, free_port, request, wait_until

ADMIN = "cli-admin-key"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4


def cli(herald_bin, *args, srv=None, env=None, stdin=None, timeout=WAIT):
    """Runs `herald ARGS` (with --url of srv) and returns the CompletedProcess."""
    url = ["--url", f"http://127.0.0.1:{srv.port}"] if srv else []
    e = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    e.update(env or {})
    return subprocess.run([herald_bin, *args, *url], input=stdin, capture_output=True,
                          env=e, timeout=timeout)


class Sub:
    """`herald sub …` running in the background, its stdout lines collected as they come."""

    def __init__(self, herald_bin, srv, *args):
        e = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        self.proc = subprocess.Popen([herald_bin, "sub", "--url", f"http://127.0.0.1:{srv.port}",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=e)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def messages(self):
        return [d for d in self.lines if d["event"] == "message"]

    def wait_messages(self, n, timeout=WAIT):
        wait_until(lambda: len(self.messages()) >= n, timeout, f"{n} messages from herald sub")

    def finish(self, timeout=WAIT):
        rc = self.proc.wait(timeout)
        self.reader.join(timeout)
        return rc, self.proc.stderr.read().decode()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def subs():
    started = []
    yield lambda *a: started.append(Sub(*a)) or started[-1]
    for s in started:
        s.kill()


def test_pub_reaches_an_independent_subscriber(herald_bin, server, chan):
    sse = SSE(server, chan)
    try:
        r = cli(herald_bin, "pub", chan, "hello", srv=server)
        assert r.returncode == EXIT_OK, r.stderr
        answer = json.loads(r.stdout)
        got = sse.next_message()
        assert got["id"] == answer["id"] and got["data"] == "hello", got
        # JSON data goes as JSON, with an event name; stdin with "-"
        r = cli(herald_bin, "pub", "--event", "score", chan, '{"home":2}', srv=server)
        assert r.returncode == EXIT_OK, r.stderr
        got = sse.next_message()
        assert got["data"] == {"home": 2} and got["type"] == "score", got
        r = cli(herald_bin, "pub", chan, "-", srv=server, stdin=b"from stdin")
        assert r.returncode == EXIT_OK, r.stderr
        assert sse.next_message()["data"] == "from stdin"
    finally:
        sse.close()


def test_sub_count_receives_in_order(herald_bin, server, chan, subs):
    sub = subs(herald_bin, server, chan, "--count", "5")
    server.wait_subscribers(chan)
    bodies = [f"m{i}" for i in range(5)]
    ids = server.publish_many(chan, bodies)
    rc, err = sub.finish()
    assert rc == EXIT_OK, err
    assert [m["data"] for m in sub.messages()] == bodies
    assert [m["id"] for m in sub.messages()] == ids


def test_sub_since_replays_history_and_timeout_exit(herald_bin, server, chan):
    ids = server.publish_many(chan, ["a", "b", "c"])
    r = cli(herald_bin, "sub", chan, "--since", ids[0], "--count", "2", srv=server)
    assert r.returncode == EXIT_OK, r.stderr
    assert [json.loads(x)["data"] for x in r.stdout.splitlines()] == ["b", "c"]
    # --timeout before --count messages: exit 4, what came is printed
    r = cli(herald_bin, "sub", chan, "--since", ids[1], "--count", "5", "--timeout", "1s",
            srv=server)
    assert r.returncode == EXIT_TIMEOUT, r.stderr
    assert [json.loads(x)["data"] for x in r.stdout.splitlines()] == ["c"]


@pytest.mark.serial
def test_sub_resumes_across_lifetime_ends(herald_bin, herald, chan, subs):
    """A steady stream across several forced disconnects: nothing lost, nothing twice."""
    srv = herald(lifetime_min="700ms", lifetime_max="900ms")
    n = 40
    sub = subs(herald_bin, srv, chan, "--count", str(n))
    srv.wait_subscribers(chan)
    bodies = [f"m{i}" for i in range(n)]
    for b in bodies:
        srv.publish(chan, b)
        time.sleep(0.07)  # about 3 s: three or four lifetimes
    rc, err = sub.finish()
    assert rc == EXIT_OK, err
    assert [m["data"] for m in sub.messages()] == bodies
    assert err.count("lifetime") >= 2, err  # it did reconnect


@pytest.mark.serial
def test_sub_survives_a_server_restart(herald_bin, herald, chan, subs, monkeypatch):
    srv = herald()
    sub = subs(herald_bin, srv, chan, "--count", "6")
    srv.wait_subscribers(chan)
    srv.publish_many(chan, ["a0", "a1", "a2"])
    sub.wait_messages(3)
    port = srv.port
    assert srv.terminate() == 0
    monkeypatch.setattr(helpers, "free_port", lambda: port)
    srv2 = herald()
    srv2.wait_subscribers(chan)  # it came back by itself
    srv2.publish_many(chan, ["b0", "b1", "b2"])
    rc, err = sub.finish()
    assert rc == EXIT_OK, err
    assert [m["data"] for m in sub.messages()] == ["a0", "a1", "a2", "b0", "b1", "b2"]
    # the new node cannot know what came before it: said with a gap, not silently
    assert any(d["event"] == "gap" for d in sub.lines), sub.lines


def test_channels_and_stats(herald_bin, server, chan):
    server.publish(chan, "x")
    r = cli(herald_bin, "channels", "--prefix", chan, srv=server)
    assert r.returncode == EXIT_OK, r.stderr
    assert [c["name"] for c in json.loads(r.stdout)["channels"]] == [chan]
    r = cli(herald_bin, "stats", "--pretty", srv=server)
    assert r.returncode == EXIT_OK, r.stderr
    assert r.stdout.startswith(b"{\n  ") and "connections" in json.loads(r.stdout)


def test_apps_lifecycle(herald_bin, herald):
    srv = herald(admin_key=ADMIN)
    env = {"HERALD_ADMIN_KEY": ADMIN}
    r = cli(herald_bin, "apps", "create", "shop", "--plan", "free", "--public", srv=srv, env=env)
    assert r.returncode == EXIT_OK, r.stderr
    app = json.loads(r.stdout)
    assert app["name"] == "shop" and app["subscribe"] == "public" and app["publish_key"]
    r = cli(herald_bin, "apps", "list", srv=srv, env=env)
    assert [a["name"] for a in json.loads(r.stdout)["apps"]] == ["shop"]
    r = cli(herald_bin, "apps", "show", "shop", srv=srv, env=env)
    assert json.loads(r.stdout)["plan"] == "free"
    # the app's key publishes through --app; the CLI's publish lands in the app only
    r = cli(herald_bin, "pub", "--app", "shop", "--key", app["publish_key"], "c", "x", srv=srv)
    assert r.returncode == EXIT_OK, r.stderr
    r = cli(herald_bin, "apps", "rotate", "shop", srv=srv, env=env)
    rotated = json.loads(r.stdout)
    assert rotated["previous_publish_key"] == app["publish_key"]
    assert rotated["publish_key"] != app["publish_key"]
    r = cli(herald_bin, "apps", "create", "shop", srv=srv, env=env)
    assert r.returncode == EXIT_REFUSED and b"app_exists" in r.stderr
    r = cli(herald_bin, "apps", "delete", "shop", srv=srv, env=env)
    assert r.returncode == EXIT_OK, r.stderr
    r = cli(herald_bin, "apps", "show", "shop", srv=srv, env=env)
    assert r.returncode == EXIT_REFUSED and b"app_not_found" in r.stderr
    # a wrong admin key: 1, the server's error on stderr, a hint
    r = cli(herald_bin, "apps", "list", "--admin-key", "wrong", srv=srv)
    assert r.returncode == EXIT_REFUSED
    err = r.stderr.decode()
    assert json.loads(err.splitlines()[0])["error"] == "unauthorized", err
    assert "--admin-key" in err


def test_minted_token_opens_its_app_only(herald_bin, herald, subs):
    srv = herald(admin_key=ADMIN)
    env = {"HERALD_ADMIN_KEY": ADMIN}
    shop = json.loads(cli(herald_bin, "apps", "create", "shop", srv=srv, env=env).stdout)
    cli(herald_bin, "apps", "create", "other", srv=srv, env=env)
    r = cli(herald_bin, "token", "--sub", "alice", "--channels", "room.*", "--ttl", "10m",
            env={"HERALD_TOKEN_SECRET": shop["token_secret"]})
    assert r.returncode == EXIT_OK, r.stderr
    token = r.stdout.decode().strip()
    # herald's own verifier admits it (an independent long-poll presents it)
    status = request(srv.port, "GET", f"/apps/shop/poll?channels=room.1&timeout=0&token={token}")
    assert status.status == 200, status.body
    status = request(srv.port, "GET", f"/apps/shop/poll?channels=lobby&timeout=0&token={token}")
    assert status.status == 403, status.body  # not granted
    # and `herald sub` with it receives what the app publishes
    sub = subs(herald_bin, srv, "--app", "shop", "--token", token, "room.1", "--count", "1")
    wait_until(lambda: request(srv.port, "GET", "/admin/apps/shop",
                               headers={"Authorization": f"Bearer {ADMIN}"}).json()
               ["usage"]["connections"] == 1, what="the CLI subscriber in app shop")
    r = cli(herald_bin, "pub", "--app", "shop", "room.1", "hi", srv=srv,
            env={"HERALD_PUBLISH_KEY": shop["publish_key"]})
    assert r.returncode == EXIT_OK, r.stderr
    rc, err = sub.finish()
    assert rc == EXIT_OK and sub.messages()[0]["data"] == "hi", err
    # another app refuses it: exit 1 with the server's error
    r = cli(herald_bin, "sub", "--app", "other", "--token", token, "room.1", "--count", "1",
            srv=srv)
    assert r.returncode == EXIT_REFUSED, r
    assert b"token_invalid" in r.stderr


def test_usage_errors_exit_2(herald_bin):
    for args in (["pub"], ["pub", "--bogus", "c", "d"], ["sub"], ["apps", "frob"],
                 ["apps", "show"], ["token"], ["token", "--secret", "s", "--ttl", "soon"],
                 ["token", "--secret", "s", "--channels", "a.**.b"], ["pub", "--url", "ftp://x", "c", "d"]):
        r = cli(herald_bin, *args)
        assert r.returncode == EXIT_USAGE, (args, r)
        assert r.stderr and b"Usage: herald" in r.stderr, (args, r.stderr)
    for cmd in ("pub", "sub", "channels", "stats", "apps", "token"):
        r = cli(herald_bin, cmd, "--help")
        assert r.returncode == EXIT_OK and r.stdout.startswith(b"Usage: herald " + cmd.encode())


def test_unreachable_server_exits_3(herald_bin):
    port = free_port()  # nothing listens there
    for args in (["pub", "c", "d"], ["sub", "c", "--count", "1"], ["stats"]):
        r = cli(herald_bin, *args, "--url", f"http://127.0.0.1:{port}")
        assert r.returncode == EXIT_UNREACHABLE, (args, r)
        assert b"cannot connect" in r.stderr and b"is herald running" in r.stderr


def test_wrong_key_exits_1_with_the_server_error(herald_bin, herald, chan):
    srv = herald(publish_key="right-key", api=True)
    r = cli(herald_bin, "pub", chan, "x", "--url", f"http://127.0.0.1:{srv.api_port}",
            env={"HERALD_PUBLISH_KEY": "wrong-key"})
    assert r.returncode == EXIT_REFUSED, r
    err = r.stderr.decode()
    assert json.loads(err.splitlines()[0])["error"] == "unauthorized", err
    assert "401" in err and "--key" in err
    r = cli(herald_bin, "pub", chan, "x", "--url", f"http://127.0.0.1:{srv.api_port}",
            env={"HERALD_PUBLISH_KEY": "right-key"})
    assert r.returncode == EXIT_OK, r.stderr


def test_server_still_runs_without_a_command(herald_bin):
    r = subprocess.run([herald_bin, "--help"], capture_output=True, timeout=WAIT)
    assert r.returncode == 0 and b"Usage: herald [OPTION]" in r.stdout
    r = subprocess.run([herald_bin, "help"], capture_output=True, timeout=WAIT)
    assert r.returncode == 0 and b"Commands:" in r.stdout
