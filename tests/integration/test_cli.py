"""The command-line client (`herald pub|sub|channels|stats|apps|token`, docs/cli.md): the
built binary run as a subprocess against a real herald, checked by independent clients
(http.client, a raw SSE reader) and by herald itself (tokens it mints open an app). Also:
its help and exit codes, https against a TLS herald (a CA file, --insecure, a certificate
that does not verify), `sub` across node restarts on a shared Redis, and that docs/cli.md
lists every option and environment variable the commands take."""

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import helpers
from helpers import SSE, WAIT, free_port, request, wait_until
from test_tls import certs, start_tls  # noqa: F401  (certs is a fixture)

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "cli.md")
COMMANDS = ("pub", "sub", "channels", "stats", "apps", "token")

ADMIN = "cli-admin-key"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT, EXIT_LATER = 0, 1, 2, 3, 4, 5


def cli(herald_bin, *args, srv=None, env=None, stdin=None, timeout=WAIT):
    """Runs `herald ARGS` (with --url of srv) and returns the CompletedProcess."""
    url = ["--url", f"http://127.0.0.1:{srv.port}"] if srv else []
    e = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    e.update(env or {})
    return subprocess.run([herald_bin, *args, *url], input=stdin, capture_output=True,
                          env=e, timeout=timeout)


class Sub:
    """`herald sub …` running in the background, its stdout lines collected as they come."""

    def __init__(self, herald_bin, srv, *args, url=None, env=None):
        e = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        e.update(env or {})
        url = url or f"http://127.0.0.1:{srv.port}"
        self.proc = subprocess.Popen([herald_bin, "sub", "--url", url, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
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
    yield lambda *a, **kw: started.append(Sub(*a, **kw)) or started[-1]
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
        # DESIGN §11 names the server option --server: the same as --url
        r = cli(herald_bin, "pub", chan, "via --server", "--server", f"http://127.0.0.1:{server.port}")
        assert r.returncode == EXIT_OK, r.stderr
        assert sse.next_message()["data"] == "via --server"
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


def test_sub_several_channels(herald_bin, server, chan, subs):
    """CHANNEL arguments and comma lists add up; a message published to two of them at
    once is printed once."""
    a, b, c = chan + "a", chan + "b", chan + "c"
    sub = subs(herald_bin, server, a, f"{b},{c}", "--count", "4")
    for ch in (a, b, c):
        server.wait_subscribers(ch)
    ids = [server.publish(ch, ch)["id"] for ch in (a, b, c)]
    ids.append(server.publish_json({"channels": [a, c], "data": "both"})["id"])
    rc, err = sub.finish()
    assert rc == EXIT_OK, err
    assert [(m["channel"], m["data"]) for m in sub.messages()][:3] == [(a, a), (b, b), (c, c)]
    assert sub.messages()[3]["data"] == "both" and [m["id"] for m in sub.messages()] == ids


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
    # pages: --limit and --after (the previous page's "next")
    names = [f"{chan}.{i}" for i in range(3)]
    for n in names:
        server.publish(n, "x")
    seen, after = [], None
    for _ in range(3):
        r = cli(herald_bin, "channels", "--prefix", chan + ".", "--limit", "2",
                *(["--after", after] if after else []), srv=server)
        assert r.returncode == EXIT_OK, r.stderr
        page = json.loads(r.stdout)
        seen += [c["name"] for c in page["channels"]]
        after = page["next"]
        if not after:
            break
    assert seen == names
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
    cli(herald_bin, "apps", "create", "art", srv=srv, env=env)
    r = cli(herald_bin, "apps", "list", "--limit", "1", srv=srv, env=env)
    page = json.loads(r.stdout)
    assert [a["name"] for a in page["apps"]] == ["art"] and page["next"] == "art", page
    r = cli(herald_bin, "apps", "list", "--limit", "1", "--after", "art", srv=srv, env=env)
    assert [a["name"] for a in json.loads(r.stdout)["apps"]] == ["shop"], r
    assert cli(herald_bin, "apps", "delete", "art", srv=srv, env=env).returncode == EXIT_OK
    r = cli(herald_bin, "apps", "show", "shop", srv=srv, env=env)
    assert json.loads(r.stdout)["plan"] == "free"
    # the app's key publishes through --app; the CLI's publish lands in the app only
    r = cli(herald_bin, "pub", "--app", "shop", "--key", app["publish_key"], "c", "x", srv=srv)
    assert r.returncode == EXIT_OK, r.stderr
    r = cli(herald_bin, "apps", "rotate", "shop", srv=srv, env=env)
    rotated = json.loads(r.stdout)
    assert rotated["previous_publish_key"] == app["publish_key"]
    assert rotated["publish_key"] != app["publish_key"]
    # the old key publishes until it is revoked, then gets 401 (checked over plain HTTP)
    old = {"Authorization": f"Bearer {app['publish_key']}"}
    assert request(srv.port, "POST", "/apps/shop/pub/c", "x", old).status == 201
    r = cli(herald_bin, "apps", "revoke", "shop", app["publish_key"], srv=srv, env=env)
    assert r.returncode == EXIT_OK, r.stderr
    assert request(srv.port, "POST", "/apps/shop/pub/c", "x", old).status == 401
    new = {"Authorization": f"Bearer {rotated['publish_key']}"}
    assert request(srv.port, "POST", "/apps/shop/pub/c", "x", new).status == 201
    r = cli(herald_bin, "apps", "revoke", "shop", "no-such-key", srv=srv, env=env)
    assert r.returncode == EXIT_REFUSED and b"not_found" in r.stderr, r
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


def test_apps_plans_update_and_settings(herald_bin, herald):
    """plans lists what GET /admin/plans has; update changes the plan, the subscribe
    policy and settings (PATCH), and herald applies them: seen by independent clients."""
    srv = herald(admin_key=ADMIN)
    env = {"HERALD_ADMIN_KEY": ADMIN}
    r = cli(herald_bin, "apps", "plans", srv=srv, env=env)
    assert r.returncode == EXIT_OK, r.stderr
    names = [p["name"] for p in json.loads(r.stdout)["plans"]]
    assert names == [p["name"] for p in request(srv.port, "GET", "/admin/plans", headers={
        "Authorization": f"Bearer {ADMIN}"}).json()["plans"]] and len(names) >= 2
    r = cli(herald_bin, "apps", "create", "shop", "--plan", names[0], "--settings",
            '{"auto_create":false}', srv=srv, env=env)
    assert r.returncode == EXIT_OK, r.stderr
    key = {"Authorization": f"Bearer {json.loads(r.stdout)['publish_key']}"}
    # a token app with auto_create off: an anonymous subscriber is refused, a publish to a
    # channel nobody made is refused
    assert request(srv.port, "GET", "/apps/shop/poll?channels=c&timeout=0").status == 401
    assert request(srv.port, "POST", "/apps/shop/pub/c", "x", key).status == 404
    r = cli(herald_bin, "apps", "update", "shop", "--plan", names[1], "--subscribe", "public",
            "--settings", '{"auto_create":true}', srv=srv, env=env)
    assert r.returncode == EXIT_OK, r.stderr
    shown = json.loads(r.stdout)
    assert shown["plan"] == names[1] and shown["subscribe"] == "public", shown
    assert request(srv.port, "POST", "/apps/shop/pub/c", "x", key).status == 201
    assert request(srv.port, "GET", "/apps/shop/poll?channels=c&timeout=0").status == 200
    r = cli(herald_bin, "apps", "update", "shop", "--subscribe", "token", srv=srv, env=env)
    assert r.returncode == EXIT_OK and json.loads(r.stdout)["subscribe"] == "token", r.stderr
    assert request(srv.port, "GET", "/apps/shop/poll?channels=c&timeout=0").status == 401
    # what the server refuses: exit 1 with its error; what the CLI can tell is wrong: 2
    r = cli(herald_bin, "apps", "update", "shop", "--plan", "no-such-plan", srv=srv, env=env)
    assert r.returncode == EXIT_REFUSED and b"bad_plan" in r.stderr, r
    r = cli(herald_bin, "apps", "update", "shop", "--settings", '{"no_such":1}', srv=srv, env=env)
    assert r.returncode == EXIT_REFUSED and b"bad_setting" in r.stderr, r
    for args in (["update", "shop"], ["update", "shop", "--settings", "[1]"],
                 ["update", "shop", "--settings", "{"], ["update", "shop", "--subscribe", "x"],
                 ["show", "shop", "--plan", "free"], ["revoke", "shop"], ["plans", "x"],
                 ["create", "s2", "--public", "--subscribe", "token"]):
        r = cli(herald_bin, "apps", *args, srv=srv, env=env)
        assert r.returncode == EXIT_USAGE and b"Usage: herald apps" in r.stderr, (args, r)
    assert request(srv.port, "GET", "/admin/apps/s2",
                   headers={"Authorization": f"Bearer {ADMIN}"}).status == 404


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
                 ["token", "--secret", "s", "--channels", "a.**.b"], ["pub", "--url", "ftp://x", "c", "d"],
                 ["stats", "--url", "http://h:99999"], ["stats", "--url", "localhost:8080"],
                 ["stats", "--url", "http://u:p@localhost"], ["pub", "--insecure=1", "c", "d"],
                 ["stats", "--cacert", "/no/such/ca.pem"], ["sub", "c", "--count", "0"],
                 ["apps", "show", "x", "--limit", "1"]):
        r = cli(herald_bin, *args)
        assert r.returncode == EXIT_USAGE, (args, r)
        assert r.stderr and b"Usage: herald" in r.stderr, (args, r.stderr)


def test_unknown_option_is_named_without_its_value(herald_bin):
    """An option a command does not take is named as given, its =VALUE left out; --server
    (another name for --url) is no exception where the command takes no --url."""
    for opt in ("--bogus", "--url", "--server"):
        r = cli(herald_bin, "token", "--secret", "s", f"{opt}=http://h:1")
        assert r.returncode == EXIT_USAGE, (opt, r)
        assert r.stderr.startswith(f"herald token: unknown option {opt}\n".encode()), (opt, r.stderr)
    # where it is taken, --server=URL is --url=URL, and --help shows both names
    r = cli(herald_bin, "stats", "--server=http://h:99999")
    assert r.returncode == EXIT_USAGE and b"port" in r.stderr, r
    assert re.search(rb"^  --url, --server URL ", cli(herald_bin, "pub", "--help").stdout, re.M)


def test_help_lists_the_commands_and_each_one(herald_bin):
    """herald --help, herald help and an unknown command list the commands; each command's
    --help (and herald help COMMAND) describes it and exits 0."""
    def listed(text):
        return all(re.search(rf"^  {c} ", text, re.M) for c in (*COMMANDS, "bench"))
    r = subprocess.run([herald_bin, "--help"], capture_output=True, timeout=WAIT, text=True)
    assert r.returncode == 0 and r.stdout.startswith("Usage: herald [OPTION]"), r
    assert "--listen ADDR:PORT" in r.stdout and listed(r.stdout), r.stdout
    r2 = subprocess.run([herald_bin, "help"], capture_output=True, timeout=WAIT, text=True)
    assert r2.returncode == 0 and r2.stdout == r.stdout, r2
    for word in ("frob", "publish"):
        r = subprocess.run([herald_bin, word, "x"], capture_output=True, timeout=WAIT, text=True)
        assert r.returncode == EXIT_USAGE and r.stdout == "", r
        assert f'unknown command "{word}"' in r.stderr and listed(r.stderr), r.stderr
    r = subprocess.run([herald_bin, "help", "frob"], capture_output=True, timeout=WAIT, text=True)
    assert r.returncode == EXIT_USAGE and listed(r.stderr), r
    for cmd in COMMANDS:
        r = cli(herald_bin, cmd, "--help")
        assert r.returncode == EXIT_OK and r.stdout.startswith(b"Usage: herald " + cmd.encode()), r
        assert b"Options:" in r.stdout and b"Exit codes:" in r.stdout, r.stdout
        assert cli(herald_bin, "help", cmd).stdout == r.stdout
        assert cli(herald_bin, cmd, "-h").stdout == r.stdout
    # bench is herald-bench's own help
    for args in (["bench", "--help"], ["help", "bench"]):
        r = cli(herald_bin, *args)
        assert r.returncode == EXIT_OK and b"herald-bench" in r.stdout, (args, r)


def test_docs_list_every_option_and_variable(herald_bin):
    """docs/cli.md names every option each command's --help lists, and exactly the
    environment variables the CLI reads (each of which is exercised in this module)."""
    with open(DOCS) as f:
        docs = f.read()
    for cmd in COMMANDS:
        out = cli(herald_bin, cmd, "--help").stdout.decode()
        for flag in re.findall(r"^  (--[a-z-]+)", out, re.M):
            assert f"`{flag}" in docs, f"docs/cli.md does not mention {cmd} {flag}"
    src = ""
    for name in ("cli.c", "cli_http.c"):
        with open(os.path.join(os.path.dirname(DOCS), "..", "src", "cli", name)) as f:
            src += f.read()
    read = set(re.findall(r'"(HERALD_[A-Z_]+)"', src))  # whole literals: env_or, url_env
    table = docs[docs.index("## Environment variables"):]
    table = table[:table.index("\n## ", 5)]
    documented = set(re.findall(r"^\| `([A-Z_]+)`", table, re.M))
    assert read and documented == read | {"SSL_CERT_FILE", "SSL_CERT_DIR"}, (documented, read)


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


def test_server_still_runs_without_a_command(herald_bin, herald):
    srv = herald()  # herald --listen … : flags, no command
    assert request(srv.port, "GET", "/healthz").status == 200
    r = subprocess.run([herald_bin, "--listen", "127.0.0.1:1", "stray"], capture_output=True,
                       timeout=WAIT)
    assert r.returncode == 2 and b'unexpected argument "stray"' in r.stderr, r


# ---- exit codes a script relies on ------------------------------------------------------------


def test_refusals_exit_1_and_limits_exit_5(herald_bin, herald, tmp_path):
    """403 and 404 exit 1 with the server's JSON error and a hint; 429 (over a plan's
    publishes per second) exits 5 with the limit named: a script retries that one later."""
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"plans": [{"name": "slow", "publishes_per_second": 1}]}))
    srv = herald(admin_key=ADMIN, plans=str(plans))
    env = {"HERALD_ADMIN_KEY": ADMIN}
    app = json.loads(cli(herald_bin, "apps", "create", "shop", srv=srv, env=env).stdout)
    key = {"HERALD_PUBLISH_KEY": app["publish_key"]}
    # 403: a token that does not grant the channel
    token = cli(herald_bin, "token", "--channels", "room.*",
                env={"HERALD_TOKEN_SECRET": app["token_secret"]}).stdout.decode().strip()
    r = cli(herald_bin, "sub", "--app", "shop", "--token", token, "lobby", "--count", "1",
            srv=srv)
    assert r.returncode == EXIT_REFUSED and b"channel_forbidden" in r.stderr, r
    assert b"answered 403" in r.stderr and b"--token" in r.stderr, r.stderr
    # 404: an app that does not exist, for pub and for apps show
    r = cli(herald_bin, "pub", "--app", "nope", "c", "x", srv=srv, env=key)
    assert r.returncode == EXIT_REFUSED and b"app_not_found" in r.stderr, r
    assert b"answered 404" in r.stderr and b"--app" in r.stderr, r.stderr
    r = cli(herald_bin, "apps", "show", "nope", srv=srv, env=env)
    assert r.returncode == EXIT_REFUSED and b"herald apps list" in r.stderr, r
    # 429: use up this second's publish with an independent client, then the CLI's; a
    # second boundary between the two can let the CLI's through, so a few rounds
    auth = {"Authorization": f"Bearer {app['publish_key']}"}
    for _ in range(5):
        wait_until(lambda: request(srv.port, "POST", "/apps/shop/pub/c", "x", auth).status == 429,
                   what="the app's publish budget to run out")
        r = cli(herald_bin, "pub", "--app", "shop", "c", "x", srv=srv, env=key)
        if r.returncode != EXIT_OK:
            break
    assert r.returncode == EXIT_LATER, r
    err = r.stderr.decode()
    assert json.loads(err.splitlines()[0])["limit"] == "publishes_per_second", err
    assert "answered 429" in err and "try again later" in err, err


def test_backend_down_exits_5(herald_bin, herald, redis_factory, chan):
    """A node whose Redis is down answers publishes 503: exit 5, as for a limit."""
    r = redis_factory()
    node = herald(redis=r.url)
    assert cli(herald_bin, "pub", chan, "up", srv=node).returncode == EXIT_OK
    r.stop(signal.SIGTERM)
    wait_until(lambda: node.stats()["cluster"]["redis"] == "down", what="the node to see Redis down")
    res = cli(herald_bin, "pub", chan, "down", srv=node)
    assert res.returncode == EXIT_LATER, res
    assert b"backend_unavailable" in res.stderr and b"answered 503" in res.stderr, res.stderr


# ---- https ------------------------------------------------------------------------------------


def test_https_pub_sub_stats_with_a_ca_file(herald_bin, herald, certs, chan, subs):
    """Against a TLS herald (a throwaway CA): the CA given by --cacert, HERALD_CACERT or
    OpenSSL's SSL_CERT_FILE; what goes over https is seen by plain-HTTP clients."""
    srv = start_tls(herald, certs)
    url = f"https://localhost:{srv.tport}"
    ca = certs("ca.crt")
    sub = subs(herald_bin, srv, chan, "--count", "3", url=url, env={"HERALD_CACERT": ca})
    srv.wait_subscribers(chan)
    sse = SSE(srv, chan)
    try:
        r = cli(herald_bin, "pub", "--url", f"https://127.0.0.1:{srv.tport}", "--cacert", ca,
                chan, "over https")
        assert r.returncode == EXIT_OK, r.stderr
        assert sse.next_message()["id"] == json.loads(r.stdout)["id"]
        r = cli(herald_bin, "pub", "--url", url, chan, "-", stdin=b"x" * 100000,
                env={"SSL_CERT_FILE": ca})  # larger than a TLS record
        assert r.returncode == EXIT_OK, r.stderr
        assert len(sse.next_message()["data"]) == 100000
    finally:
        sse.close()
    srv.publish(chan, "over http")
    rc, err = sub.finish()
    assert rc == EXIT_OK, err
    assert [m["data"][:10] for m in sub.messages()] == ["over https", "x" * 10, "over http"]
    r = cli(herald_bin, "stats", "--url", url, "--cacert", ca)
    assert r.returncode == EXIT_OK and json.loads(r.stdout)["connections"]["total"] >= 1, r


def test_https_certificate_that_does_not_verify_exits_3(herald_bin, herald, certs, chan):
    srv = start_tls(herald, certs)
    url = f"https://127.0.0.1:{srv.tport}"
    for args in (["pub", chan, "x"], ["sub", chan, "--count", "1"], ["stats"]):
        r = cli(herald_bin, *args, "--url", url)  # the throwaway CA is not in the system's
        assert r.returncode == EXIT_UNREACHABLE, (args, r)
        err = r.stderr.decode()
        assert "does not verify" in err and "--cacert" in err and "--insecure" in err, err
    assert srv.history(chan) == []  # nothing was sent
    # --insecure skips the check (and says nothing else changed)
    r = cli(herald_bin, "pub", "--url", url, "--insecure", chan, "anyway")
    assert r.returncode == EXIT_OK, r.stderr
    assert [m["data"] for m in srv.history(chan)] == ["anyway"]
    # a CA file that is not one; an expired certificate; a name it was not issued for
    r = cli(herald_bin, "stats", "--url", url, "--cacert", certs("server.key"))
    assert r.returncode == EXIT_UNREACHABLE and b"CA file" in r.stderr, r
    expired = start_tls(herald, certs, cert="expired.crt")
    r = cli(herald_bin, "stats", "--url", f"https://localhost:{expired.tport}", "--cacert",
            certs("ca.crt"))
    assert r.returncode == EXIT_UNREACHABLE and b"expired" in r.stderr, r
    tport = free_port()
    other = herald(listen_tls=f"127.0.0.2:{tport}", tls_cert=certs("server.crt"),
                   tls_key=certs("server.key"))
    r = cli(herald_bin, "stats", "--url", f"https://127.0.0.2:{tport}", "--cacert",
            certs("ca.crt"))
    assert r.returncode == EXIT_UNREACHABLE and b'is not for "127.0.0.2"' in r.stderr, r
    # https to a plain port, and http to a TLS port
    r = cli(herald_bin, "stats", "--url", f"https://127.0.0.1:{other.port}", "--insecure")
    assert r.returncode == EXIT_UNREACHABLE and b"http://" in r.stderr, r
    r = cli(herald_bin, "stats", "--url", f"http://127.0.0.1:{srv.tport}")
    assert r.returncode == EXIT_UNREACHABLE, r


# ---- where the CLI connects -----------------------------------------------------------------


def test_environment_picks_server_app_and_keys(herald_bin, herald, chan, subs):
    """Without --url: HERALD_PUBLISH_URL (pub, channels, stats), HERALD_URL (sub),
    HERALD_ADMIN_URL (apps), each falling back on HERALD_URL; HERALD_APP prefixes."""
    srv = herald(admin_key=ADMIN, api=True)  # the API on a port of its own
    dead = f"http://127.0.0.1:{free_port()}"
    api = f"http://127.0.0.1:{srv.api_port}"
    env = {"HERALD_URL": dead, "HERALD_ADMIN_URL": api, "HERALD_ADMIN_KEY": ADMIN}
    r = cli(herald_bin, "apps", "create", "shop", "--public", env=env)
    assert r.returncode == EXIT_OK, r.stderr
    shop = json.loads(r.stdout)
    r = cli(herald_bin, "apps", "list", env={**env, "HERALD_ADMIN_URL": ""})
    assert r.returncode == EXIT_UNREACHABLE and dead.encode()[7:] in r.stderr, r
    sub = subs(herald_bin, srv, chan, "--count", "1",
               url=f"http://127.0.0.1:{srv.port}/apps/shop")  # Tsuru's HERALD_URL form
    wait_until(lambda: request(srv.api_port, "GET", "/admin/apps/shop", headers={
        "Authorization": f"Bearer {ADMIN}"}).json()["usage"]["connections"] == 1,
        what="the CLI subscriber in app shop")
    penv = {"HERALD_URL": dead, "HERALD_PUBLISH_URL": api, "HERALD_APP": "shop",
            "HERALD_PUBLISH_KEY": shop["publish_key"]}
    r = cli(herald_bin, "pub", chan, "via env", env=penv)
    assert r.returncode == EXIT_OK, r.stderr
    rc, err = sub.finish()
    assert rc == EXIT_OK and sub.messages()[0]["data"] == "via env", err
    r = cli(herald_bin, "channels", env=penv)
    assert [c["name"] for c in json.loads(r.stdout)["channels"]] == [chan], r
    r = cli(herald_bin, "pub", chan, "x", env={**penv, "HERALD_PUBLISH_URL": ""})
    assert r.returncode == EXIT_UNREACHABLE, r  # fell back on HERALD_URL
    r = cli(herald_bin, "sub", chan, "--count", "1", env={"HERALD_URL": dead})
    assert r.returncode == EXIT_UNREACHABLE, r


# ---- sub across restarts ----------------------------------------------------------------------


@pytest.mark.serial
def test_sub_resumes_across_a_node_restart_on_shared_redis(herald_bin, herald, redis_factory,
                                                            chan, subs, monkeypatch):
    """The node `herald sub` follows is killed (SIGKILL) and restarted on its port while
    another node of the same Redis goes on publishing: the history is Redis's, so the
    resumed stream has every message exactly once, in order, and no gap."""
    r = redis_factory()
    a = herald(redis=r.url, node_name="A")
    b = herald(redis=r.url, node_name="B")
    sub = subs(herald_bin, a, chan, "--count", "9")
    wait_until(lambda: a.stats("?channels=1").get("channel_subscribers", {}).get(chan) == 1,
               what="the CLI subscriber on node A")
    sent = b.publish_many(chan, ["a0", "a1", "a2"])
    sub.wait_messages(3)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    a.blamed = True  # killed on purpose: its exit code is not a failure
    sent += b.publish_many(chan, ["b0", "b1", "b2"])  # while A is down
    port = a.port
    monkeypatch.setattr(helpers, "free_port", lambda: port)
    a2 = herald(redis=r.url, node_name="A")
    wait_until(lambda: a2.stats("?channels=1").get("channel_subscribers", {}).get(chan) == 1,
               what="the CLI subscriber back on node A")
    sent += b.publish_many(chan, ["c0", "c1", "c2"])
    rc, err = sub.finish()
    assert rc == EXIT_OK, err
    assert [m["data"] for m in sub.messages()] == ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
    assert [m["id"] for m in sub.messages()] == sent
    assert not [d for d in sub.lines if d["event"] == "gap"], sub.lines
    assert "reconnecting" in err, err
