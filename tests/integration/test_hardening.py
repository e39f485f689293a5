"""Behaviour found by reviews of the server: authorisation of WebSocket
publishing, gaps after a channel vanishes, messages larger than the outbound
cap, a port already taken, SIGHUP."""

import asyncio
import json
import signal
import subprocess
import time

import websockets

from helpers import SSE, wait_until

KEY = "s3cr3t"


def ws_publish(srv, chan, headers=None, key=None):
    """Sends one publish op over a fresh WebSocket; returns the server's answer."""
    op = {"op": "publish", "channel": chan, "data": "x", "ref": 1}
    if key is not None:
        op["key"] = key

    async def main():
        async with websockets.connect(srv.ws_url(), extra_headers=headers or {}) as ws:
            await ws.send(json.dumps(op))
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    return asyncio.run(main())


def test_ws_publish_needs_the_publish_key(herald, chan):
    srv = herald(publish_key=KEY, ws_publish=True)
    answer = ws_publish(srv, chan)
    assert answer["event"] == "error" and answer["error"] == "unauthorized", answer
    assert srv.history(chan) == [], "nothing may be published without the key"
    assert ws_publish(srv, chan, headers={"Authorization": "Bearer " + KEY})["event"] == "published"
    assert ws_publish(srv, chan, key=KEY)["event"] == "published"
    assert ws_publish(srv, chan, key="wrong")["error"] == "unauthorized"
    assert len(srv.history(chan)) == 2


def test_ws_publish_from_loopback_without_a_key(herald, chan):
    srv = herald(ws_publish=True)
    assert ws_publish(srv, chan)["event"] == "published"


def test_recreated_channel_reports_the_gap(server, chan):
    """Messages of a deleted channel are gone: a cursor from before says so."""
    first = server.publish(chan, "m1")["id"]
    server.publish(chan, "m2")
    assert server.request("DELETE", "/api/channels/" + chan).status == 200
    third = server.publish(chan, "m3")["id"]
    msgs = server.history(chan, since=first)
    assert msgs[0]["event"] == "gap" and msgs[0]["channel"] == chan, msgs
    assert [m["id"] for m in msgs[1:]] == [third]


def test_a_message_larger_than_the_cap_still_reaches_a_reading_client(herald, chan):
    srv = herald(max_outbound="64KiB")
    big = "y" * (200 * 1024)
    with SSE(srv, chan) as sse:
        srv.wait_subscribers(chan)
        srv.publish(chan, big)
        ev = sse.next_event()
        assert ev.json()["data"] == big
    assert srv.stats()["slow_consumers_closed"] == 0


def test_second_server_on_the_same_port_refuses_to_start(server, herald_bin):
    proc = subprocess.run(
        [herald_bin, "--listen", f"127.0.0.1:{server.port}"],
        capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1
    assert "Address already in use" in proc.stderr, proc.stderr
    assert server.request("GET", "/healthz").status == 200


def test_sighup_is_logged_and_ignored(herald, chan):
    srv = herald()
    srv.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP ignored" in srv.log(), what="the SIGHUP log line")
    time.sleep(0.2)
    assert srv.proc.poll() is None
    srv.publish(chan, "still here")


def test_preflight_allows_the_event_header(herald):
    """Publishing from a browser page takes --api-cors-origins; its preflight then allows
    the Herald-Event header."""
    srv = herald(api_cors_origins="http://a.example")
    r = srv.request("OPTIONS", "/pub/x", headers={"Origin": "http://a.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert r.status == 204
    assert "Herald-Event" in r.headers["access-control-allow-headers"]


def test_no_cors_header_without_origin_when_origins_are_restricted(herald, chan):
    srv = herald(cors_origins="https://app.example")
    path = f"/poll?channels={chan}&timeout=0"
    r = srv.request("GET", path)
    assert "access-control-allow-origin" not in r.headers
    r = srv.request("GET", path, headers={"Origin": "https://app.example"})
    assert r.headers["access-control-allow-origin"] == "https://app.example"


def test_channel_list_total_counts_the_prefix(server, chan):
    for suffix in ("a", "b", "c"):
        server.publish(f"{chan}-{suffix}", "x")
    page = server.get_json(f"/api/channels?prefix={chan}-&limit=2")
    assert page["total"] == 3 and len(page["channels"]) == 2, page
    rest = server.get_json(f"/api/channels?prefix={chan}-&limit=2&after={page['next']}")
    assert [c["name"] for c in rest["channels"]] == [f"{chan}-c"] and rest["total"] == 3
