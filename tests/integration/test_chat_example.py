"""The chat example of docs/interactive.md (examples/chat/: backend.py and index.html),
end to end: herald with the flags the page gives, the backend started as the page says,
and headless Chromium with two browser contexts (two users, separate storage) on the
page, which loads the JS client from herald. A message one user sends (an rpc the
backend turns into a publish) appears on the other's page; a private message reaches
only its two users (an independent SSE subscriber of a third user does not get it);
each page lists who is in the room (presence), also after a restart and a user leaving;
after herald restarts while the pages are cut off, each page gets what was published
meanwhile, once, and nothing it had twice. The doc's listings are the files.
"""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from conftest import ROOT
from helpers import SSE, free_port, request, wait_until
from test_browser import chromium, new_context  # noqa: F401 (fixture)
from test_js_browser import Tab

CHAT = os.path.join(ROOT, "examples", "chat")
DOC = os.path.join(ROOT, "docs", "interactive.md")
WAIT = 45  # seconds a page may take to show something (a loaded machine, ASan)


def test_the_docs_listings_are_the_example_files():
    doc = open(DOC).read()
    for name, lang in (("backend.py", "python"), ("index.html", "html")):
        text = open(os.path.join(CHAT, name)).read()
        assert f"```{lang}\n{text}```" in doc, f"docs/interactive.md does not list examples/chat/{name} as it is"


class Gate:
    """A TCP forwarder between the browsers and herald: cut() closes every connection
    through it and refuses new ones (the browsers' network is down), mend() lets them
    through again."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.up = True
        self.lock = threading.Lock()
        self.socks = set()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                if not self.up:
                    raise OSError("cut")
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            with self.lock:
                self.socks |= {c, u}
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def pump(self, a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.up = False
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.socks.clear()

    def mend(self):
        self.up = True

    def close(self):
        self.cut()
        self.lsock.close()


@pytest.fixture
def chat(herald):
    """herald as docs/interactive.md starts it, the example's backend, and a gate."""
    bport = free_port()
    srv = herald(token_secret="s3cret", webhook_url=f"http://127.0.0.1:{bport}/hook")
    env = dict(os.environ, PORT=str(bport), HERALD_URL=f"http://127.0.0.1:{srv.port}")
    backend = subprocess.Popen([sys.executable, os.path.join(CHAT, "backend.py")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: backend.poll() is None and ok(f"http://127.0.0.1:{bport}/index.html"),
                   what="the backend")
        gate = Gate(srv.port)
        yield srv, bport, gate
        gate.close()
    finally:
        backend.terminate()
        err = backend.communicate(timeout=10)[1]
    # The backend failed at nothing but writing an answer to a herald that had gone (its
    # restart) — Python's server prints a traceback for those too.
    gone = len(re.findall(r"^(BrokenPipeError|ConnectionResetError)", err, re.M))
    assert err.count("Traceback") == gone, err


def ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


CONNECTED = "document.getElementById('status').textContent.includes('connected over websocket')"


class ChatPage:
    """The chat page for one user, in a browser context of its own (a browser of its own,
    as far as storage, cookies and locks go)."""

    def __init__(self, chromium, url):
        self.chromium, self.url = chromium, url

    async def open(self):
        self.tab = Tab(self.chromium, self.url, ready=CONNECTED, timeout=WAIT,
                       context=await new_context(self.chromium))
        self.page = (await self.tab.__aenter__()).page
        return self

    async def connected(self):
        await self.page.wait_for(CONNECTED, WAIT)

    async def send(self, text, to=""):
        """Types the message (and recipient) into the form and submits it, as a user does."""
        await self.page.eval(f"""
            document.getElementById('to').value = {json.dumps(to)};
            document.getElementById('text').value = {json.dumps(text)};
            document.getElementById('send').requestSubmit();""")
        await self.page.wait_for("document.getElementById('text').value === ''", WAIT)

    async def wait_shown(self, text):
        await self.page.wait_for(f"[...document.querySelectorAll('#log li')]"
                                 f".some((li) => li.textContent === {json.dumps(text)})", WAIT)

    async def wait_here(self, *names):
        """Waits until the page's list of who is in the room is `names`."""
        await self.page.wait_for("[...document.querySelectorAll('#who li')].map((li) => li.textContent)"
                                 f".join() === {json.dumps(','.join(names))}", WAIT)

    async def log(self):
        """[[kind, text], …] as the page shows them, notes left out."""
        items = json.loads(await self.page.eval(
            "JSON.stringify([...document.querySelectorAll('#log li')]"
            ".map((li) => [li.className, li.textContent]))"))
        return [i for i in items if i[0] != "note"], [i for i in items if i[0] == "note"]

    def errors(self):
        """The page's script errors (the browser's own reports of connections refused
        while the gate was cut are the test's doing)."""
        return [e for e in self.page.errors
                if not re.search(r"WebSocket connection to|net::ERR_|Failed to load resource", e or "")]


@pytest.mark.timeout(240)
def test_chat_two_users_room_private_and_a_restart(chat, chromium):  # noqa: F811
    srv, bport, gate = chat
    page = f"http://127.0.0.1:{bport}/index.html?herald=http://127.0.0.1:{gate.port}&user="
    with urllib.request.urlopen(f"http://127.0.0.1:{bport}/token?user=carol") as r:
        carol_token = r.read().decode()
    carol = SSE(srv, "room.lobby", token=carol_token)  # a third user, not a browser
    assert carol.status == 200, carol.body

    def carol_reads(until_text):
        texts = []
        while True:
            block = carol.next_block(WAIT)
            if block and block.data:
                env = block.json()
                texts.append((env["channel"], env["data"]["text"]))
                if env["data"]["text"] == until_text:
                    return texts

    async def run():
        alice = await ChatPage(chromium, page + "alice").open()
        bob = await ChatPage(chromium, page + "bob").open()
        try:
            return await chat_between(alice, bob)
        finally:
            for p in (alice, bob):
                await p.tab.__aexit__()  # (a tab closed already: its DevTools socket only)

    async def chat_between(alice, bob):
        for p in (alice, bob):  # presence: the list at the connection, then join events
            await p.wait_here("Alice", "Bob", "Carol")
        await alice.send("hello from alice")
        await bob.wait_shown("Alice: hello from alice")
        await bob.send("psst alice", to="alice")
        await alice.wait_shown("Bob to alice: psst alice")
        await bob.wait_shown("Bob to alice: psst alice")  # the sender's copy
        await bob.send("hi all")
        await alice.wait_shown("Bob: hi all")
        # carol got the room, and not the private message between them
        assert carol_reads("hi all") == [("room.lobby", "hello from alice"),
                                          ("room.lobby", "hi all")]

        # herald restarts while the pages are cut off; meanwhile the room gets a
        # message and bob a private one (published by a backend job over the API).
        gate.cut()
        for p in (alice, bob):
            await p.page.wait_for("document.getElementById('status').textContent"
                                  ".includes('reconnecting')", WAIT)
        srv.restart()
        for doc in ({"channels": ["room.lobby"], "data": {"from": "Server", "text": "while you were away"}},
                    {"users": ["bob"], "data": {"from": "Server", "to": "bob", "text": "for bob only"}}):
            r = request(srv.port, "POST", "/api/publish", json.dumps(doc))
            assert r.status == 201, r.body
        assert srv.stats()["connections"]["websocket"] == 0  # the pages will resume
        gate.mend()
        for p in (alice, bob):
            await p.connected()
        await alice.wait_shown("Server: while you were away")
        await bob.wait_shown("Server to bob: for bob only")
        await alice.send("after the restart")
        for p in (alice, bob):
            await p.wait_shown("Alice: after the restart")
        for p in (alice, bob):  # the list again after the restart (carol's stream ended)
            await p.wait_here("Alice", "Bob")
        await asyncio.sleep(0.5)  # a duplicate would come now
        logs = [await p.log() for p in (alice, bob)]
        errors = alice.errors() + bob.errors()
        await bob.tab.close()  # bob closes his tab: he leaves alice's list
        await alice.wait_here("Alice")
        return logs, errors

    try:
        ((alice_log, alice_notes), (bob_log, bob_notes)), errors = asyncio.run(run())
    finally:
        carol.close()
    room = [["room", t] for t in ("Alice: hello from alice", "Bob: hi all",
                                   "Server: while you were away", "Alice: after the restart")]
    private = lambda log: [i for i in log if i[0] == "private"]  # noqa: E731
    assert [i for i in alice_log if i[0] == "room"] == room, alice_log
    assert [i for i in bob_log if i[0] == "room"] == room, bob_log
    assert private(alice_log) == [["private", "Bob to alice: psst alice"]], alice_log
    assert private(bob_log) == [["private", "Bob to alice: psst alice"],
                                ["private", "Server to bob: for bob only"]], bob_log
    # Notes: at most herald's word that its restart lost older history; never "not sent".
    for note in alice_notes + bob_notes:
        assert note == ["note", "(older messages are no longer kept)"], note
    assert errors == []


def test_chat_backend_answers_a_send_whatever_data_the_page_sends(chat):
    """Any page may send any JSON as the rpc's data: the backend answers (a message with
    an empty text, or its own error), never a 'hook_failed' from a backend that crashed."""
    import websockets

    from helpers import arun

    srv, bport, _ = chat
    with urllib.request.urlopen(f"http://127.0.0.1:{bport}/token?user=mallory", timeout=10) as r:
        tok = r.read().decode()

    async def main():
        async with websockets.connect(f"ws://127.0.0.1:{srv.port}/ws?token={tok}&channels=room.lobby") as ws:
            for ref, data in enumerate([None, {}, "text", 42, [1], {"text": None, "to": None}]):
                await ws.send(json.dumps({"op": "rpc", "method": "send", "data": data, "ref": ref}))
                while True:
                    ans = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                    if ans.get("ref") == ref:
                        break
                assert ans["event"] == "reply" and "id" in ans["data"], (data, ans)

    arun(main())
