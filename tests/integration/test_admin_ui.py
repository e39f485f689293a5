"""The admin UI (/admin/, issue 9) in headless Chromium, driven over the DevTools
protocol: sign in with the admin key, watch a connection appear on the live overview
(fed by /stats/stream), create an app, open a channel, publish from its form and see the
message in the page's live tail and in an independent subscriber (http.client). The page
must log no error and load nothing from elsewhere (its Content-Security-Policy). Each
page's screenshot is saved in build/screenshots/ (docs/admin-ui.md shows them).
"""

import asyncio
import base64
import json
import os
import re
import time

import pytest
import websockets

from helpers import SSE, ApiStream, request, wait_until
from test_browser import DevTools, open_page, run_chromium

ADMIN = "ui-admin-key"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHOTS = os.path.join(ROOT, "build", "screenshots")


@pytest.fixture
def chromium():
    yield from run_chromium()


class Page(DevTools):
    """DevTools on one page that also keeps the console errors and exceptions it reports."""

    def __init__(self, ws):
        super().__init__(ws)
        self.errors = []

    def on_event(self, msg):
        if msg["method"] == "Runtime.exceptionThrown":
            self.errors.append(msg["params"]["exceptionDetails"].get("text"))
        elif msg["method"] == "Log.entryAdded" and msg["params"]["entry"]["level"] == "error":
            self.errors.append(msg["params"]["entry"].get("text"))
        elif msg["method"] == "Runtime.consoleAPICalled" and msg["params"]["type"] == "error":
            self.errors.append(json.dumps(msg["params"]["args"]))

    async def shot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        png = await self.call("Page.captureScreenshot", format="png")
        with open(os.path.join(SHOTS, f"admin-{name}.png"), "wb") as f:
            f.write(base64.b64decode(png["data"]))


class admin_page:
    """`async with admin_page(chromium, url) as page`: the admin UI loaded in a new page,
    its handlers in place, console errors collected in page.errors."""

    def __init__(self, chromium, url):
        self.chromium, self.url = chromium, url

    async def __aenter__(self):
        port = re.search(r":(\d+)/", self.chromium).group(1)
        target = await open_page(self.chromium, self.url)
        self.ws = await websockets.connect(f"ws://127.0.0.1:{port}/devtools/page/{target}",
                                           max_size=None)
        page = Page(self.ws)
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            await page.call(domain)
        await page.call("Emulation.setDeviceMetricsOverride", width=1200, height=1000,
                        deviceScaleFactor=1, mobile=False)
        await page.call("Page.navigate", url=self.url)
        await page.wait_for("document.body.dataset.ready === '1'")
        return page

    async def __aexit__(self, *exc):
        await self.ws.close()


def test_the_page_is_served_with_its_security_headers(herald):
    s = herald(admin_key=ADMIN)
    r = request(s.port, "GET", "/admin/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and r.headers["x-frame-options"] == "DENY"
    # Nothing from elsewhere, no inline script.
    assert not re.search(rb"https?://", r.body) and b"<script>" not in r.body
    for path, ctype in (("/admin/ui.js", "text/javascript"), ("/admin/ui.css", "text/css")):
        r = request(s.port, "GET", path)
        assert r.status == 200 and r.headers["content-type"].startswith(ctype)
        assert not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", r.body), path
    r = request(s.port, "GET", "/admin")
    assert r.status == 308 and r.headers["location"] == "/admin/"
    # The page is not the API: the API it calls keeps its key.
    assert request(s.port, "GET", "/admin/apps").status == 401


def test_sign_in_overview_apps_channel_publish(herald, chromium, chan):
    s = herald(admin_key=ADMIN)
    url = f"http://127.0.0.1:{s.port}/admin/"
    assert request(s.port, "POST", f"/pub/{chan}", "before", {"Authorization": f"Bearer {ADMIN}"}).status == 201

    async def run():
        async with admin_page(chromium, url) as page:
            await page.shot("signin")
            # A wrong key is refused in the page.
            await page.eval("document.getElementById('key').value = 'wrong';"
                            "document.getElementById('signin').requestSubmit()")
            await page.wait_for("!document.getElementById('signin-error').hidden")
            await page.eval(f"document.getElementById('key').value = {json.dumps(ADMIN)};"
                            "document.getElementById('signin').requestSubmit()")
            # The overview: live figures from /stats/stream; a subscriber appears on them.
            await page.wait_for("window.heraldStats && window.heraldStats.node")
            assert await page.eval("sessionStorage.getItem('herald-admin-key')") == ADMIN
            assert ADMIN not in await page.eval("location.href")
            with SSE(s, chan) as sub:
                await page.wait_for("window.heraldStats.connections.sse >= 1", timeout=10)
                await asyncio.sleep(1.2)  # one more point on the charts
                await page.shot("overview")
                # Apps: create one; its credentials are shown once.
                await page.eval("location.hash = '#/apps'")
                await page.wait_for("!!document.querySelector('form.card input')")
                await page.eval("const f = document.querySelector('form.card');"
                                "f.querySelector('input').value = 'ui-app';"
                                "f.requestSubmit()")
                await page.wait_for("!!document.querySelector('tr[data-app=\"ui-app\"]') &&"
                                    "!!document.querySelector('.secret code')")
                await page.shot("apps")
                # Channels, then the channel: history and live tail, publish from the form.
                await page.eval("location.hash = '#/channels'")
                await page.wait_for(f"document.body.innerText.includes({json.dumps(chan)})")
                await page.shot("channels")
                await page.eval(f"location.hash = '#/channel/' + encodeURIComponent({json.dumps(chan)})")
                await page.wait_for("document.querySelectorAll('#tail li').length >= 1")
                # The channel's options, as the channel API gives them.
                await page.wait_for("document.querySelector('main dl') &&"
                                    "document.querySelector('main dl').innerText.includes('subscribers')")
                assert "[object" not in await page.eval("document.body.innerText")
                assert "before" in await page.eval("document.getElementById('tail').innerText")
                await page.eval("document.getElementById('publish-data').value = 'from the form';"
                                "document.getElementById('publish').requestSubmit()")
                await page.wait_for("document.getElementById('tail').innerText.includes('from the form')")
                await page.shot("channel")
                got = sub.next_message()
                assert got["data"] == "from the form" and got["channel"] == chan
            return page.errors

    errors = asyncio.run(asyncio.wait_for(run(), 90))
    # The one 401 of the wrong key is the only thing the console may say.
    assert all("401" in e for e in errors), errors
    r = request(s.port, "GET", "/admin/apps/ui-app", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status == 200
    for name in ("signin", "overview", "apps", "channels", "channel"):
        assert os.path.getsize(os.path.join(SHOTS, f"admin-{name}.png")) > 1000


def test_an_apps_key_scopes_the_ui_to_that_app(herald, chromium):
    s = herald(admin_key=ADMIN)
    r = request(s.port, "POST", "/admin/apps", json.dumps({"name": "shop", "subscribe": "public"}),
                {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    key = r.json()["publish_key"]
    h = {"Authorization": f"Bearer {key}"}
    assert request(s.port, "POST", "/apps/shop/pub/orders", "o1", h).status == 201
    assert request(s.port, "POST", "/pub/default-only", "d", {"Authorization": f"Bearer {ADMIN}"}).status == 201
    url = f"http://127.0.0.1:{s.port}/admin/"

    async def run():
        async with admin_page(chromium, url) as page:
            await page.eval(f"document.getElementById('app').value = 'shop';"
                            f"document.getElementById('key').value = {json.dumps(key)};"
                            "document.getElementById('signin').requestSubmit()")
            await page.wait_for("window.heraldStats && window.heraldStats.name === 'shop'")
            assert await page.eval("document.getElementById('nav-apps').hidden")
            await page.eval("location.hash = '#/channels'")
            await page.wait_for("document.body.innerText.includes('orders')")
            text = await page.eval("document.body.innerText")
            assert "default-only" not in text  # the default app's channels are not its
            await page.eval("location.hash = '#/channel/orders'")
            await page.wait_for("document.getElementById('tail').innerText.includes('o1')")
            await page.eval("document.getElementById('publish-data').value = '{\"n\":2}';"
                            "document.getElementById('publish').requestSubmit()")
            await page.wait_for("document.getElementById('tail').innerText.includes('\"n\":2')")
            return page.errors

    errors = asyncio.run(asyncio.wait_for(run(), 60))
    assert errors == [], errors
    r = request(s.port, "GET", "/apps/shop/api/channels/orders", headers=h)
    assert r.json()["messages_total"] == 2


async def sign_in(page, key=ADMIN):
    await page.eval(f"document.getElementById('key').value = {json.dumps(key)};"
                    "document.getElementById('signin').requestSubmit()")
    await page.wait_for("window.heraldStats && window.heraldStats.node")


async def publish_seen(port, chan, sub, n):
    """Publishes n messages 0.3 s apart (over several ticks of the stream), each received
    by the subscriber sub."""
    for i in range(n):
        r = request(port, "POST", f"/pub/{chan}", f"m{i}", {"Authorization": f"Bearer {ADMIN}"})
        assert r.status == 201
        assert sub.next_message()["data"] == f"m{i}"
        await asyncio.sleep(0.3)


def run_page(run, shot):
    """Runs the page's coroutine: no console error, and its screenshot saved."""
    errors = asyncio.run(asyncio.wait_for(run(), 60))
    assert errors == [], errors
    assert os.path.getsize(os.path.join(SHOTS, f"admin-{shot}.png")) > 1000


LATENCY_P99 = """(() => {
  const c = document.querySelector('[data-chart=latency]');
  const m = c && c.querySelector('.legend').innerText.match(/p99: ([0-9.]+) ms/);
  return m && +m[1] > 0 && c.querySelectorAll('svg polyline').length > 0 ? +m[1] : 0;
})()"""


def test_the_overview_charts_delivery_latency(herald, chromium, chan):
    """After publishes to a subscriber, the latency chart has p50 and p99 lines with the
    figures /stats/stream gave (no line while nothing was delivered)."""
    s = herald(admin_key=ADMIN)
    url = f"http://127.0.0.1:{s.port}/admin/"

    async def run():
        async with admin_page(chromium, url) as page:
            await sign_in(page)
            assert await page.eval(LATENCY_P99) == 0  # nothing delivered yet: no line
            assert await page.eval("!!document.querySelector('[data-chart=latency]')")
            with SSE(s, chan) as sub:
                s.wait_subscribers(chan, 1)
                await publish_seen(s.port, chan, sub, 6)
                await page.wait_for(LATENCY_P99, timeout=10)
                legend = await page.eval("document.querySelector('[data-chart=latency] .legend').innerText")
                assert "p50: " in legend, legend
                # what the chart shows is what the stream said: the legend is the latest
                # second's p99 as the page writes milliseconds (3 decimals below 10 ms)
                got = await page.eval("""(() => {
                  const c = document.querySelector('[data-chart=latency]');
                  return {legend: c.querySelector('.legend').innerText.match(/p99: ([0-9.]+) ms/)[1],
                          shown: c.series[1].values.filter(v => v !== null)};
                })()""")
                shown, last = got["shown"], got["shown"][-1]
                assert shown and all(v > 0 for v in shown), shown
                decimals = 3 if last < 10 else 1
                assert len(got["legend"].split(".")[1]) == decimals, got
                assert abs(float(got["legend"]) - last) <= 0.5 * 10**-decimals + 1e-9, got
                # single node: no table of nodes
                assert await page.eval("document.getElementById('nodes').hidden")
                await asyncio.sleep(1.1)
                await page.shot("overview-latency")
            return page.errors

    run_page(run, "overview-latency")


def test_the_overview_of_a_cluster_shows_every_node(redis_factory, herald, chromium, chan):
    """Two nodes on one Redis: the overview on node one lists both; a subscriber on node
    two appears in node two's row (read by node one from Redis), and node two's p99 once it
    delivered."""
    r = redis_factory()
    one = herald(redis=r.url, node_name="one", admin_key=ADMIN, cluster_heartbeat="500ms")
    two = herald(redis=r.url, node_name="two", admin_key=ADMIN, cluster_heartbeat="500ms")
    url = f"http://127.0.0.1:{one.port}/admin/"
    row = "document.querySelector('#nodes tr[data-node=\"%s\"] td.%s')"
    # Whatever else can write to Redis: entries that are not a node's figures are left out
    # by the server (not JSON) and by the page (a JSON object without the figures).
    far = str(int(time.time() * 1000) + 600_000)
    for name, value in (("bogus", '{"node":"bogus"}'), ("garbage", "<b>not json")):
        r.cmd("ZADD", "herald:nodes", far, name)
        r.cmd("SET", "herald:{nodestats}:" + name, value, "EX", "600")

    async def cell(node, what):
        return await page_ref[0].eval(f"({row % (node, what)} || {{}}).innerText")

    page_ref = []

    async def run():
        async with admin_page(chromium, url) as page:
            page_ref.append(page)
            await sign_in(page)
            await page.wait_for(f"!!{row % ('one', 'conns')} && !!{row % ('two', 'conns')}")
            assert await page.eval("document.querySelectorAll('#nodes tbody tr').length") == 2
            assert [n["node"] for n in one.stats("?nodes=1")["nodes"]].count("garbage") == 0
            assert not await page.eval("document.getElementById('nodes').hidden")
            assert "SSE 0" in await cell("two", "conns")
            with SSE(two, chan) as sub:
                await page.wait_for(f"({row % ('two', 'conns')}).innerText.includes('SSE 1')", timeout=10)
                assert "SSE 0" in await cell("one", "conns")  # the connection is node two's
                await publish_seen(one.port, chan, sub, 5)
                await page.wait_for(f"({row % ('two', 'p99')}).innerText.endsWith(' ms')", timeout=10)
                await asyncio.sleep(1.1)
                await page.shot("overview-cluster")
            return page.errors

    run_page(run, "overview-cluster")


def read_tail(srv, path, headers, until, timeout=10):
    """GET path (an SSE stream on the API listener): the status and the (event, JSON) pairs
    read until until(pairs) holds."""
    with ApiStream(srv, headers, path, timeout) as stream:
        if stream.status != 200:
            return stream.status, json.loads(stream.resp.read())
        events, deadline = [], time.monotonic() + timeout
        while not until(events):
            assert time.monotonic() < deadline, f"the tail gave {events}"
            events.append(stream.next_pair())
    return 200, events


def token_app(s):
    """An app with the default subscribe policy (tokens): its publish key."""
    r = request(s.api_port, "POST", "/admin/apps", json.dumps({"name": "tok"}),
                {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    assert r.status == 201 and r.json()["subscribe"] == "token", r.body
    return r.json()["publish_key"]


def test_the_api_tail_takes_the_api_credentials_instead_of_a_token(herald):
    # A token app on a herald whose API has a listener of its own: /sse needs a token
    # and is not on the API listener; /api/tail is, and takes the app's key or the admin key.
    s = herald(admin_key=ADMIN, publish_key="the-default-apps-key", api=True)
    key = token_app(s)
    h = {"Authorization": f"Bearer {key}"}
    assert request(s.api_port, "POST", "/apps/tok/pub/orders", "o1", h).status == 201
    assert request(s.port, "GET", "/apps/tok/sse?channels=orders").status == 401
    assert request(s.port, "GET", "/apps/tok/api/tail?channels=orders", headers=h).status == 404

    def publish_later():
        time.sleep(0.5)
        assert request(s.api_port, "POST", "/apps/tok/pub/orders", "o2", h).status == 201

    import threading
    t = threading.Thread(target=publish_later)
    t.start()
    status, events = read_tail(s, "/apps/tok/api/tail?channels=orders&lastEventId=0", h,
                               lambda ev: len(ev) >= 2)
    t.join()
    assert status == 200
    assert [(k, e["channel"], e["data"]) for k, e in events] == [
        ("message", "orders", "o1"), ("message", "orders", "o2")]
    # the admin key too; resume from an id
    status, events = read_tail(s, f"/apps/tok/api/tail?channels=orders&lastEventId={events[0][1]['id']}",
                               {"Authorization": f"Bearer {ADMIN}"}, lambda ev: len(ev) >= 1)
    assert status == 200 and events[0][1]["data"] == "o2"
    # no key, another app's key, the default app's route with the app's key: refused
    for path, hh in (("/apps/tok/api/tail?channels=orders", {}),
                     ("/apps/tok/api/tail?channels=orders", {"Authorization": "Bearer nope"}),
                     ("/api/tail?channels=orders", h)):
        status, doc = read_tail(s, path, hh, lambda ev: True)
        assert status == 401 and doc["error"] == "unauthorized", (path, doc)
    status, doc = read_tail(s, "/apps/tok/api/tail?channels=bad%20name", h, lambda ev: True)
    assert status == 400, doc
    # the cursors /sse takes, no others: a per-channel cursor has one position per channel
    # (a tail has no user, so no extra last one)
    for cursor in ("5.0", "5.0.0"):
        status, doc = read_tail(s, f"/apps/tok/api/tail?channels=orders&lastEventId={cursor}", h,
                                lambda ev: True)
        assert status == 400 and doc["error"] == "bad_cursor", (cursor, doc)


def test_a_token_apps_channel_page_has_a_live_tail_on_a_separate_api_listener(herald, chromium):
    s = herald(admin_key=ADMIN, api=True)
    key = token_app(s)
    h = {"Authorization": f"Bearer {key}"}
    assert request(s.api_port, "POST", "/apps/tok/pub/orders", "before", h).status == 201
    url = f"http://127.0.0.1:{s.api_port}/admin/"

    async def run():
        async with admin_page(chromium, url) as page:
            await page.eval("document.getElementById('app').value = 'tok';"
                            f"document.getElementById('key').value = {json.dumps(key)};"
                            "document.getElementById('signin').requestSubmit()")
            await page.wait_for("window.heraldStats && window.heraldStats.name === 'tok'")
            await page.eval("location.hash = '#/channel/orders'")
            await page.wait_for("document.getElementById('tail').innerText.includes('before')")
            assert request(s.api_port, "POST", "/apps/tok/pub/orders", "from curl", h).status == 201
            await page.wait_for("document.getElementById('tail').innerText.includes('from curl')")
            await page.eval("document.getElementById('publish-data').value = 'from the form';"
                            "document.getElementById('publish').requestSubmit()")
            await page.wait_for("document.getElementById('tail').innerText.includes('from the form')")
            assert "no live tail" not in await page.eval("document.body.innerText")
            return page.errors

    errors = asyncio.run(asyncio.wait_for(run(), 60))
    assert errors == [], errors
