"""The JS client in a real browser: headless Chromium opens a page of another origin that
loads the client from herald itself (`import {Herald} from 'http://herald/herald.js'`),
subscribes over each transport (WebSocket, SSE over fetch, long-poll), and receives what
an independent publisher sends, in order; the page's console stays free of errors. Tabs
of one origin with {shared: true} hold one connection between them: each gets exactly
its channels, also when the leader's tab closes under a steady stream.
"""

import asyncio
import json
import os
import re
import threading
import time

import pytest
import websockets

from helpers import poll, request, wait_until
from test_hooks import rpc_backend
from test_tokens import SECRET, claims, mint
from test_admin_ui import Page
from test_browser import DevTools, chromium, open_page, page_server  # noqa: F401 (fixtures)

PAGE = """<!doctype html>
<html><head><link rel="icon" href="data:,"></head><body>
<script type="module">
import {Herald} from "HERALD/herald.js";
window.got = {};
for (const t of ["websocket", "sse", "poll"]) {
  const got = window.got[t] = {data: [], open: null};
  const h = new Herald("HERALD", {transports: t === "websocket" ? undefined : [t]});
  h.on("open", (e) => { got.open = e.transport; });
  h.subscribe(["CHANNEL", "CHANNEL-2"], {onMessage: (m) => got.data.push([m.channel, m.data])});
}
window.ready = true;
</script></body></html>
"""


def test_client_from_herald_in_chromium(server, chan, page_server, chromium):  # noqa: F811
    root, page_port = page_server
    herald = f"http://127.0.0.1:{server.port}"
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write(PAGE.replace("HERALD", herald).replace("CHANNEL", chan))
    page_url = f"http://127.0.0.1:{page_port}/index.html"
    port = re.search(r":(\d+)/", chromium).group(1)
    all_open = " && ".join(f"window.got.{t}.open" for t in ("websocket", "sse", "poll"))

    async def run():
        target_id = await open_page(chromium, page_url)
        async with websockets.connect(f"ws://127.0.0.1:{port}/devtools/page/{target_id}",
                                      max_size=None) as pws:
            page = Page(pws)
            for domain in ("Runtime.enable", "Log.enable"):
                await page.call(domain)
            await page.call("Page.navigate", url=page_url)
            await page.wait_for(f"window.ready && window.got && {all_open}")
            # WebSocket, SSE and the held poll (2 or 3: the poll may be between requests)
            wait_until(lambda: (server.channel(chan) or {"subscribers": 0})["subscribers"] >= 2,
                       what="the page's subscribers")
            sent = []
            for i in range(6):
                c = chan if i % 2 else f"{chan}-2"
                server.publish(c, json.dumps({"n": i}).encode(), content_type="application/json")
                sent.append([c, {"n": i}])
            await page.wait_for("['websocket','sse','poll'].every((t) => window.got[t].data.length >= 6)")
            await asyncio.sleep(0.3)  # a duplicate would come now
            return sent, json.loads(await page.eval("JSON.stringify(window.got)")), page.errors

    sent, got, errors = asyncio.run(run())
    for t in ("websocket", "sse", "poll"):
        assert got[t]["open"] == t
        assert got[t]["data"] == sent, t
    assert errors == []


# One page of the shared-connection tests: a tab that subscribes its channels (?channels=)
# with {shared: true} and records what it receives.
TAB = """<!doctype html>
<html><head><link rel="icon" href="data:,"></head><body>
<script type="module">
import {Herald} from "HERALD/herald.js";
const q = new URLSearchParams(location.search);
const got = window.got = {data: [], gaps: [], errors: [], opens: []};
const h = window.h = new Herald("HERALD", {shared: true, minDelay: 50, maxDelay: 500,
                                           token: q.get("token") || undefined,
                                           transports: q.get("t") ? [q.get("t")] : undefined});
h.on("open", (e) => got.opens.push(e.transport));
h.on("error", (e) => got.errors.push(e));
h.subscribe(q.get("channels").split(","), {
  since: q.get("since") || undefined,
  onMessage: (m) => got.data.push([m.channel, m.data.n]),
  onGap: (g) => got.gaps.push(g),
});
window.ready = true;
// In an iframe (HOST), what it got goes to the page around it, which may not look in.
if (parent !== window)
  setInterval(() => parent.postMessage(JSON.stringify({...got, role: h.role}), "*"), 50);
</script></body></html>
"""

# A page around a sandboxed iframe (an opaque origin) of TAB at SRC: window.got is the
# frame's.
HOST = """<!doctype html>
<html><head><link rel="icon" href="data:,"></head><body>
<iframe sandbox="allow-scripts" src="SRC"></iframe>
<script>
window.got = null;
addEventListener("message", (e) => { window.got = JSON.parse(e.data); });
window.ready = true;
</script></body></html>
"""


class Tab:
    """`async with Tab(chromium, url) as tab`: a new tab (a page target of the browser's
    one context by default, so tabs of one origin see each other) on url, ready once
    the page's `ready` expression holds, console errors kept."""

    def __init__(self, chromium, url, ready="window.ready", context=None, timeout=15):
        self.chromium, self.url, self.ready, self.context = chromium, url, ready, context
        self.timeout = timeout
        self.port = re.search(r":(\d+)/", chromium).group(1)

    async def __aenter__(self):
        self.target = await open_page(self.chromium, "about:blank", self.context)
        self.ws = await websockets.connect(
            f"ws://127.0.0.1:{self.port}/devtools/page/{self.target}", max_size=None)
        self.page = Page(self.ws)
        for domain in ("Runtime.enable", "Log.enable"):
            await self.page.call(domain)
        await self.page.call("Page.navigate", url=self.url)
        await self.page.wait_for(self.ready, self.timeout)
        return self

    async def got(self):
        return json.loads(await self.page.eval("JSON.stringify(window.got)"))

    async def close(self):
        """Closes the tab as a user does (the page unloads; its locks are released)."""
        async with websockets.connect(self.chromium, max_size=None) as bws:
            await DevTools(bws).call("Target.closeTarget", targetId=self.target)
        await self.ws.close()

    async def __aexit__(self, *exc):
        await self.ws.close()


class Stream:
    """Publishes {"n": 0}, {"n": 1}, … round-robin to `channels` from a thread, each number
    retried until herald acknowledges it; `sent[channel]` lists what each one holds."""

    def __init__(self, server, channels, every=0.005):
        self.server, self.channels, self.every = server, channels, every
        self.sent = {c: [] for c in channels}
        self.ids = {c: [] for c in channels}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        n = 0
        while not self.stopped.is_set():
            c = self.channels[n % len(self.channels)]
            r = request(self.server.port, "POST", "/pub/" + c, json.dumps({"n": n}),
                        {"Content-Type": "application/json"})
            if r.status == 201:
                self.sent[c].append(n)
                self.ids[c].append(r.json()["id"])
                n += 1
            time.sleep(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()

    def count(self):
        return sum(len(v) for v in self.sent.values())


def received(got, channel):
    return [n for c, n in got["data"] if c == channel]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_tabs_share_one_connection(herald, chan, page_server, chromium, transport):  # noqa: F811
    """Two tabs of one origin (one channel each and one in common) are ONE connection on
    the server (a WebSocket, or an SSE stream when that is the transport), each tab
    getting exactly its channels; the leader tab closes under a steady publish stream
    and the other takes over with nothing lost or duplicated; a third tab that joins
    later gets its channel on the same connection, and the history it asks for on the
    common channel (the connection starts that channel over from there) without the
    other tab seeing it twice; when that tab closes, its channel leaves the connection.
    No console errors in any tab."""
    server = herald(history_size=1000)
    root, page_port = page_server
    with open(os.path.join(root, "tab.html"), "w") as f:
        f.write(TAB.replace("HERALD", f"http://127.0.0.1:{server.port}"))
    a, b, c, common = (f"{chan}-{x}" for x in ("a", "b", "c", "common"))

    def url(*channels, since=""):
        return (f"http://127.0.0.1:{page_port}/tab.html?channels={','.join(channels)}"
                f"&since={since}&t={transport}")

    def connections():
        return server.stats()["connections"][transport]

    async def run():
        async with Tab(chromium, url(a, common)) as tab1, Tab(chromium, url(b, common)) as tab2:
            await tab1.page.wait_for("window.h.role === 'leader' && window.got.opens.length")
            await tab2.page.wait_for("window.h.role === 'follower' && window.got.opens.length")
            wait_until(lambda: all((server.channel(x) or {}).get("subscribers") == 1
                                   for x in (a, b, common)), what="the union subscribed")
            assert connections() == 1
            assert set((await tab2.got())["opens"]) == {transport}

            # Each tab gets exactly its channels, in order, once.
            with Stream(server, [a, b, common]) as first:
                wait_until(lambda: first.count() >= 60, what="60 publishes")
            for tab, own in ((tab1, a), (tab2, b)):
                n = len(first.sent[own]) + len(first.sent[common])
                await tab.page.wait_for(f"window.got.data.length >= {n}")
            await asyncio.sleep(0.3)  # a duplicate, or another tab's message, would come now
            got1, got2 = await tab1.got(), await tab2.got()
            assert received(got1, a) == first.sent[a]
            assert received(got2, b) == first.sent[b]
            assert received(got1, common) == received(got2, common) == first.sent[common]
            assert received(got1, b) == [] and received(got2, a) == []
            assert connections() == 1

            # The leader's tab closes under a steady stream: tab2 leads, nothing lost or doubled.
            with Stream(server, [b, common]) as stream:
                wait_until(lambda: stream.count() >= 40, what="40 publishes")
                closed_at = time.monotonic()
                await tab1.close()
                await tab2.page.wait_for("window.h.role === 'leader'")
                took_over = time.monotonic() - closed_at
                wait_until(lambda: stream.count() >= 200, what="200 publishes", timeout=20)
            n = len(first.sent[b]) + len(first.sent[common]) + stream.count()
            await tab2.page.wait_for(f"window.got.data.length >= {n}")
            await asyncio.sleep(0.3)
            got2 = await tab2.got()
            assert received(got2, b) == first.sent[b] + stream.sent[b]
            assert received(got2, common) == first.sent[common] + stream.sent[common]
            assert got2["gaps"] == [] and got2["errors"] == []
            wait_until(lambda: connections() == 1, what="one connection again")
            print(f"leader closed: tab2 led after {took_over * 1000:.0f} ms; "
                  f"{stream.count()} published during the change, lost 0, duplicated 0")

            # A third tab joins later, with the common channel's history from 5 messages
            # back: it gets that and its own channel, on the same one connection, and tab2
            # sees nothing twice.
            old = (first.sent[common] + stream.sent[common])[-5:]
            since = (first.ids[common] + stream.ids[common])[-6]
            async with Tab(chromium, url(c, common, since=since)) as tab3:
                await tab3.page.wait_for("window.h.role === 'follower' && window.got.opens.length")
                server.wait_subscribers(c, 1)
                with Stream(server, [c, b, common]) as last:
                    wait_until(lambda: last.count() >= 30, what="30 publishes")
                want3 = {c: last.sent[c], common: old + last.sent[common]}
                await tab3.page.wait_for(f"window.got.data.length >= {sum(map(len, want3.values()))}")
                await asyncio.sleep(0.3)
                got3 = await tab3.got()
                assert received(got3, c) == want3[c] and received(got3, common) == want3[common]
                assert len(got3["data"]) == sum(map(len, want3.values()))
                assert connections() == 1
                got2 = await tab2.got()
                assert received(got2, b) == first.sent[b] + stream.sent[b] + last.sent[b]
                assert received(got2, common) == (first.sent[common] + stream.sent[common]
                                                  + last.sent[common])
                # A follower's tab closes without a word: the leader sees its lock go,
                # and its own channel leaves the connection; the common one stays.
                await tab3.close()
                server.wait_subscribers(c, 0)
                server.wait_subscribers(common, 1)  # (SSE reconnects with the smaller set)
                wait_until(lambda: connections() == 1, what="one connection")
            await tab2.page.eval("1")  # the console events tab2 sent meanwhile
            return tab1.page.errors + tab2.page.errors + tab3.page.errors

    assert asyncio.run(run()) == []


def test_shared_tabs_tokens_publish_and_gaps(herald, chan, page_server, chromium):  # noqa: F811
    """Tabs share only with tabs of the same token identity (two tokens of one user and
    grants share, another user's tab has its own connection); a follower's publish goes
    through the leader's WebSocket and reaches every tab once; a tab that joins with a
    cursor older than the history gets `gap`, and the tab that already had everything
    gets neither a gap nor a message twice."""
    server = herald(token_secret=SECRET, ws_publish=True, history_size=3)
    root, page_port = page_server
    with open(os.path.join(root, "tab.html"), "w") as f:
        f.write(TAB.replace("HERALD", f"http://127.0.0.1:{server.port}"))
    g, p = f"{chan}-g", f"{chan}-p"
    alice1 = mint(claims(["**"], sub="alice", publish=["**"]))
    alice2 = mint(claims(["**"], sub="alice", publish=["**"], ttl=3000))  # another token, same grants
    bob = mint(claims(["**"], sub="bob", publish=["**"]))
    assert alice1 != alice2

    def url(token, *channels, since=""):
        return (f"http://127.0.0.1:{page_port}/tab.html?channels={','.join(channels)}"
                f"&token={token}&since={since}")

    def ws_connections():
        return server.stats()["connections"]["websocket"]

    async def run():
        async with Tab(chromium, url(alice1, g, p)) as a, Tab(chromium, url(alice2, p)) as b, \
                Tab(chromium, url(bob, p)) as c:
            for tab, role in ((a, "leader"), (b, "follower"), (c, "leader")):
                await tab.page.wait_for(f"window.h.role === '{role}' && window.got.opens.length")
            server.wait_subscribers(p, 2)  # alice's tabs' connection and bob's
            assert ws_connections() == 2

            # A follower publishes: through the leader, to every tab once.
            await b.page.eval("window.h.publish('%s', {n: 7}).then((r) => { window.got.pub = r; },"
                              " (e) => { window.got.pubErr = String(e); })" % p)
            ack = await b.page.wait_for("window.got.pub || window.got.pubErr")
            assert isinstance(ack, dict) and ack["event"] == "published", ack
            status, body = poll(server, p, since="0", timeout=0, extra="&token=" + bob)
            assert status == 200 and [m["id"] for m in body["messages"]] == [ack["id"]], body
            for tab in (a, b, c):
                await tab.page.wait_for("window.got.data.length >= 1")

            # History keeps 3: a tab joining from before the first of 6 gets a gap and
            # the 3 kept; tab a, which had all 6, sees no gap and nothing twice.
            ids = [server.publish(g, json.dumps({"n": n}), content_type="application/json")["id"]
                   for n in range(100, 106)]
            await a.page.wait_for("window.got.data.length >= 7")
            async with Tab(chromium, url(alice1, g, since=ids[0])) as d:
                await d.page.wait_for("window.h.role === 'follower' && window.got.data.length >= 3")
                await asyncio.sleep(0.5)  # a duplicate, or a stray gap, would come now
                got_a, got_d = await a.got(), await d.got()
                errors = [t.page.errors for t in (a, b, c, d)]
            got_b, got_c = await b.got(), await c.got()
            assert ws_connections() == 2
        return got_a, got_b, got_c, got_d, ids, errors

    got_a, got_b, got_c, got_d, ids, errors = asyncio.run(run())
    for got in (got_a, got_b, got_c):
        assert received(got, p) == [7]
    assert received(got_a, g) == list(range(100, 106))
    assert got_a["gaps"] == []
    assert received(got_d, g) == [103, 104, 105]
    assert [(x["channel"], x["since"]) for x in got_d["gaps"]] == [(g, ids[0])]
    assert all(got["errors"] == [] for got in (got_a, got_b, got_c, got_d))
    assert errors == [[], [], [], []]


def test_shared_tabs_leader_changes_under_a_stream(herald, chan, page_server, chromium):  # noqa: F811
    """Ten leader changes in a row under a publish every 5 ms: each round a tab opens and
    the leader's tab closes. Every tab's messages are one unbroken run of what was
    published (nothing lost, nothing twice, in order) from when it joined until it
    closed or the end; one connection at the end. Prints the takeover times."""
    rounds = 10
    server = herald(history_size=1000)
    root, page_port = page_server
    with open(os.path.join(root, "tab.html"), "w") as f:
        f.write(TAB.replace("HERALD", f"http://127.0.0.1:{server.port}"))
    url = f"http://127.0.0.1:{page_port}/tab.html?channels={chan}"

    async def run():
        tabs, runs, took = [], [], []
        for _ in range(2):
            tabs.append(await Tab(chromium, url).__aenter__())
        await tabs[0].page.wait_for("window.h.role === 'leader' && window.got.opens.length")
        await tabs[1].page.wait_for("window.got.opens.length")
        with Stream(server, [chan]) as stream:
            for _ in range(rounds):
                tab = await Tab(chromium, url).__aenter__()
                await tab.page.wait_for("window.got.opens.length && window.got.data.length")
                tabs.append(tab)
                leader = tabs.pop(0)
                assert await leader.page.eval("window.h.role") == "leader"
                runs.append((await leader.got())["data"])
                closed_at = time.monotonic()
                await leader.close()
                await tabs[0].page.wait_for("window.h.role === 'leader'")
                took.append(time.monotonic() - closed_at)
                await asyncio.sleep(0.2)
        last = stream.sent[chan][-1]
        await tabs[-1].page.wait_for(f"window.got.data.at(-1)?.[1] === {last}")
        await asyncio.sleep(0.3)
        for tab in tabs:
            got = await tab.got()
            runs.append(got["data"])
            assert got["gaps"] == [] and got["errors"] == []
            assert got["data"][-1][1] == stream.sent[chan][-1]
        wait_until(lambda: server.stats()["connections"]["websocket"] == 1, what="one connection")
        errors = [e for tab in tabs for e in tab.page.errors]
        for tab in tabs:
            await tab.__aexit__()
        return stream.sent[chan], runs, took, errors

    sent, runs, took, errors = asyncio.run(run())
    for data in runs:
        got = [n for _, n in data]
        start = sent.index(got[0])
        assert got == sent[start:start + len(got)]  # one unbroken run: no loss, no duplicate
    print(f"{rounds} leader changes, {len(sent)} published, every tab lost 0 and duplicated 0; "
          f"takeover ms: {sorted(round(t * 1000) for t in took)}")
    assert errors == []


def test_shared_in_a_sandboxed_iframe_has_a_connection_of_its_own(herald, chan, page_server,
                                                                   chromium):  # noqa: F811
    """A sandboxed iframe is an opaque origin: it has BroadcastChannel and navigator.locks,
    but Web Locks refuse its every request (SecurityError). {shared: true} there reports
    error "shared" and the client connects by itself, receiving what is published."""
    server = herald()
    root, page_port = page_server
    with open(os.path.join(root, "tab.html"), "w") as f:
        f.write(TAB.replace("HERALD", f"http://127.0.0.1:{server.port}"))
    with open(os.path.join(root, "host.html"), "w") as f:
        f.write(HOST.replace("SRC", f"tab.html?channels={chan}"))

    async def run():
        async with Tab(chromium, f"http://127.0.0.1:{page_port}/host.html") as host:
            await host.page.wait_for("window.got && window.got.opens.length")
            server.wait_subscribers(chan, 1)
            for n in range(3):
                server.publish(chan, json.dumps({"n": n}), content_type="application/json")
            await host.page.wait_for("window.got.data.length >= 3")
            await asyncio.sleep(0.2)  # a duplicate would come now
            return await host.got(), host.page.errors

    got, errors = asyncio.run(run())
    assert received(got, chan) == [0, 1, 2]
    assert got["opens"] == ["websocket"] and got["role"] is None
    assert [e["error"] for e in got["errors"]] == ["shared"], got["errors"]
    assert "SecurityError" in got["errors"][0]["detail"], got["errors"]
    assert errors == []


def test_shared_tabs_get_their_users_messages_and_call_rpc_through_the_leader(herald, chan,
                                                                              page_server,
                                                                              chromium):  # noqa: F811
    """Two tabs of one user with {shared: true} hold one connection; each subscribes to
    '#user' (and a channel). A message to the user reaches each tab once, one to another
    user neither; a follower's rpc goes through the leader's WebSocket and resolves with
    the backend's answer, and a failing one rejects with herald's code."""
    b = rpc_backend()
    try:
        server = herald(token_secret=SECRET, webhook_url=b.url, webhook_secret="hook-secret")
        root, page_port = page_server
        with open(os.path.join(root, "tab.html"), "w") as f:
            f.write(TAB.replace("HERALD", f"http://127.0.0.1:{server.port}"))
        alice = mint(claims(["**"], sub="alice"))
        url = f"http://127.0.0.1:{page_port}/tab.html?channels=%23user,{chan}&token={alice}"

        def to(user, n):
            r = request(server.port, "POST", "/api/publish",
                        json.dumps({"users": [user], "data": {"n": n}}))
            assert r.status == 201, r.body

        async def run():
            async with Tab(chromium, url) as a, Tab(chromium, url) as f:
                await a.page.wait_for("window.h.role === 'leader' && window.got.opens.length")
                await f.page.wait_for("window.h.role === 'follower' && window.got.opens.length")
                server.wait_subscribers(chan, 1)
                assert server.stats()["connections"]["websocket"] == 1
                to("bob", 0)
                to("alice", 1)
                to("alice", 2)
                for tab in (a, f):
                    await tab.page.wait_for("window.got.data.length >= 2")
                await f.page.eval(
                    "window.h.rpc('echo', {n: 7}).then((r) => { window.got.rpc = r; });"
                    "window.h.rpc('fail').catch((e) => { window.got.rpcErr = [e.error, e.message]; })")
                await f.page.wait_for("window.got.rpc && window.got.rpcErr")
                await asyncio.sleep(0.3)  # a duplicate would come now
                return await a.got(), await f.got(), a.page.errors + f.page.errors

        got_a, got_f, errors = asyncio.run(run())
    finally:
        b.close()
    for got in (got_a, got_f):
        assert got["data"] == [["#user", 1], ["#user", 2]], got
        assert got["errors"] == []
    assert got_f["rpc"] == {"method": "echo", "echo": {"n": 7}}
    assert got_f["rpcErr"] == ["rpc_error", "no such room"]
    # once each: through the leader's one connection
    assert sorted(c["doc"]["method"] for c in b.calls if c["doc"]["event"] == "rpc") == ["echo", "fail"]
    assert errors == []
