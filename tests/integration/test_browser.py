"""A real browser: headless Chromium loads a page from another origin (a plain
HTTP server on a second port) that subscribes to herald with EventSource and
WebSocket, exactly as the README tells web teams to. The test drives Chromium
over the DevTools protocol, publishes with curl-like HTTP from Python, and
reads what the page received.

Skipped only when Chromium is not installed (scripts/install-deps.sh installs it).
"""

import asyncio
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading

import pytest
import websockets

from helpers import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html>
<html><body><pre id="log"></pre>
<script>
const herald = "HERALD";
window.got = {sse: [], ws: [], sseOpen: false, wsOpen: false, errors: []};
const es = new EventSource(herald + "/sse?channels=CHANNEL");
es.onopen = () => { window.got.sseOpen = true; };
es.onmessage = (e) => { window.got.sse.push({id: e.lastEventId, env: JSON.parse(e.data)}); };
es.onerror = () => { window.got.errors.push("sse"); };
const ws = new WebSocket(herald.replace("http", "ws") + "/ws?channels=CHANNEL");
ws.onopen = () => { window.got.wsOpen = true; };
ws.onmessage = (e) => { window.got.ws.push(JSON.parse(e.data)); };
ws.onerror = () => { window.got.errors.push("ws"); };
</script></body></html>
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def page_server():
    root = tempfile.mkdtemp()
    port = free_port()
    handler = functools.partial(QuietHandler, directory=root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, port
    httpd.shutdown()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def chromium():
    yield from run_chromium()


def run_chromium(*extra_args):
    """Starts headless Chromium (with extra_args), yields its DevTools URL, stops it."""
    if not CHROMIUM:
        pytest.skip("chromium is not installed")
    profile = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         *extra_args, "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = None
    for line in proc.stderr:
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            url = m.group(1)
            break
    assert url, "chromium did not start its DevTools endpoint"
    # Keep draining stderr so Chromium never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(profile, ignore_errors=True)


class DevTools:
    """A minimal DevTools protocol client on one page target."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 20))
            if "method" in msg:
                self.on_event(msg)
            if msg.get("id") == my_id:
                assert "error" not in msg, msg
                return msg["result"]

    def on_event(self, msg):
        """An event the page sent while we waited for an answer (ignored here)."""

    async def eval(self, expr):
        res = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return res["result"].get("value")

    async def wait_for(self, expr, timeout=15):
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            value = await self.eval(expr)
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"page never satisfied {expr}: {await self.eval('JSON.stringify(window.got)')}")


async def open_page(browser_url, page_url, context=None):
    """A new page target (in the browser context given, else the default one)."""
    async with websockets.connect(browser_url, max_size=None) as bws:
        browser = DevTools(bws)
        extra = {"browserContextId": context} if context else {}
        target = await browser.call("Target.createTarget", url="about:blank", **extra)
        return target["targetId"]


async def new_context(browser_url):
    """A new browser context: pages in it share no storage, cookies or locks with others."""
    async with websockets.connect(browser_url, max_size=None) as bws:
        return (await DevTools(bws).call("Target.createBrowserContext"))["browserContextId"]


def test_eventsource_and_websocket_in_chromium(server, chan, page_server, chromium):
    root, page_port = page_server
    first, second, got = run_page(chromium, server, chan, root,
                                  f"http://127.0.0.1:{page_port}/index.html",
                                  f"http://127.0.0.1:{server.port}")
    assert_page_received(got, first, second, chan)


def assert_page_received(got, first, second, chan):
    """The page's EventSource and WebSocket each got both messages run_page published."""
    assert got["errors"] == []
    for received in (got["ws"], [e["env"] for e in got["sse"]]):
        assert [m["data"] for m in received] == ["hello browser", {"score": 3}]
        assert [m["channel"] for m in received] == [chan, chan]
    assert [e["id"] for e in got["sse"]] == [first["id"], second["id"]]


def run_page(chromium, server, chan, root, page_url, herald_url):
    """Writes PAGE (subscribing to herald_url) into root, opens page_url in Chromium,
    publishes two messages once both subscribers are in; returns both publish answers
    and what the page received."""
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write(PAGE.replace("HERALD", herald_url).replace("CHANNEL", chan))
    port = re.search(r":(\d+)/", chromium).group(1)

    async def run():
        target_id = await open_page(chromium, page_url)
        async with websockets.connect(f"ws://127.0.0.1:{port}/devtools/page/{target_id}",
                                      max_size=None) as pws:
            page = DevTools(pws)
            await page.call("Page.navigate", url=page_url)
            await page.wait_for("window.got && window.got.sseOpen && window.got.wsOpen")
            server.wait_subscribers(chan, 2)
            first = server.publish(chan, b"hello browser")
            second = server.publish(chan, json.dumps({"score": 3}).encode(),
                                    content_type="application/json")
            await page.wait_for("window.got.sse.length >= 2 && window.got.ws.length >= 2")
            return first, second, json.loads(await page.eval("JSON.stringify(window.got)"))

    return asyncio.run(run())
