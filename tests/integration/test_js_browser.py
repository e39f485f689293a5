"""The JS client in a real browser: headless Chromium opens a page of another origin that
loads the client from herald itself (`import {Herald} from 'http://herald/herald.js'`),
subscribes over each transport (WebSocket, SSE over fetch, long-poll), and receives what
an independent publisher sends, in order; the page's console stays free of errors.
"""

import asyncio
import json
import os
import re

import websockets

from helpers import wait_until
from test_admin_ui import Page
from test_browser import chromium, open_page, page_server  # noqa: F401 (fixtures)

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
