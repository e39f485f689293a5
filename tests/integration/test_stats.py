"""Observation: /stats counts connections by transport and per channel, message and
byte counters move as they should, /metrics is valid Prometheus text, /healthz."""

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import SSE, poll, subscribe, wait_until

pytestmark = pytest.mark.threads  # make test runs this module under ThreadSanitizer too

KINDS = ("websocket", "sse", "longpoll", "stream")
METRIC_NAMES = {
    "herald_connections",
    "herald_connections_accepted_total",
    "herald_http_requests_total",
    "herald_channels",
    "herald_publishes_total",
    "herald_messages_stored_total",
    "herald_messages_delivered_total",
    "herald_bytes_received_total",
    "herald_bytes_sent_total",
    "herald_slow_consumers_closed_total",
    "herald_uptime_seconds",
    "herald_workers",
}


def connection_counts(srv):
    c = srv.stats()["connections"]
    assert c["total"] == sum(c[k] for k in KINDS + ("http",)), c
    return {k: c[k] for k in KINDS}


def wait_counts(srv, expected):
    wait_until(lambda: connection_counts(srv) == expected, what=f"connection counts {expected}")


def parse_metrics(text):
    """{(name, labels): value} from Prometheus text, checking the format as it goes."""
    types, samples = {}, {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*)?\})? (\S+)$')
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4, line
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
        else:
            m = sample.match(line)
            assert m, f"not a Prometheus sample line: {line!r}"
            name, labels, value = m.group(1), m.group(3) or "", float(m.group(5))
            assert name in types, f"{name} has no # TYPE line"
            if types[name] == "counter":
                assert name.endswith("_total") and value >= 0, line
            samples[(name, labels)] = value
    return samples


@pytest.fixture
def srv(herald):
    return herald()


def test_connection_counts_by_transport_and_channel(srv, chan):
    a, b, c = chan + "-a", chan + "-b", chan + "-c"
    wait_counts(srv, dict.fromkeys(KINDS, 0))
    subs = [
        subscribe("ws", srv, f"{a},{b}"),
        subscribe("ws", srv, b),
        subscribe("sse", srv, a),
        subscribe("sse", srv, a),
        subscribe("sse", srv, c),
        subscribe("stream", srv, c),
    ]
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(poll, srv, a, None, 30)
        wait_counts(srv, {"websocket": 2, "sse": 3, "longpoll": 1, "stream": 1})
        per_channel = srv.stats("?channels=1")["channel_subscribers"]
        assert {k: per_channel[k] for k in (a, b, c)} == {a: 4, b: 2, c: 2}
        assert "channel_subscribers" not in srv.stats()

        metrics = parse_metrics(srv.request("GET", "/metrics").body.decode())
        assert metrics[("herald_connections", 'transport="websocket"')] == 2
        assert metrics[("herald_connections", 'transport="sse"')] == 3

        before = srv.stats()["messages"]
        srv.publish_json({"channels": [a, b], "data": "counted"})
        status, _ = held.result(timeout=10)
        assert status == 200
    for sub in subs[:4]:  # the subscribers of a or b
        assert sub.next_message()["data"] == "counted"
    for sub in subs:
        sub.close()
    after = srv.stats()["messages"]
    assert after["published"] == before["published"] + 1
    assert after["stored"] == before["stored"] + 2
    # a: ws1, two sse, the poll; b: ws2 (ws1 holds both and gets it once)
    assert after["delivered"] == before["delivered"] + 5
    wait_counts(srv, dict.fromkeys(KINDS, 0))
    per_channel = srv.stats("?channels=1")["channel_subscribers"]
    assert {k: per_channel[k] for k in (a, b)} == {a: 0, b: 0}
    assert c not in per_channel  # only ever subscribed to: gone with its subscribers


def test_counters_move(srv, chan):
    s0 = srv.stats()
    assert s0["workers"] == 2 and s0["uptime"] >= 0 and s0["node"]
    with SSE(srv, chan) as sse:
        srv.publish(chan, "x" * 1000)
        sse.next_message()
    # A worker counts bytes out once its write returned: the subscriber may read them first.
    wait_until(lambda: srv.stats()["bytes"]["out"] >= s0["bytes"]["out"] + 1000, what="bytes out")
    s1 = srv.stats()
    assert s1["accepted"] >= s0["accepted"] + 3
    assert s1["requests"] >= s0["requests"] + 3
    assert s1["bytes"]["in"] >= s0["bytes"]["in"] + 1000
    assert s1["channels"] == s0["channels"] + 1
    assert s1["messages"]["delivered"] == s0["messages"]["delivered"] + 1
    assert s1["slow_consumers_closed"] == 0


def test_metrics_is_prometheus_text(srv, chan):
    srv.publish(chan, "x")
    r = srv.request("GET", "/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain")
    metrics = parse_metrics(r.body.decode())
    assert {name for name, _ in metrics} >= METRIC_NAMES
    transports = {labels for name, labels in metrics if name == "herald_connections"}
    assert transports >= {f'transport="{k}"' for k in KINDS}
    assert metrics[("herald_publishes_total", "")] == 1
    assert metrics[("herald_workers", "")] == 2
    assert metrics[("herald_channels", "")] == 1


def test_healthz(srv):
    r = srv.request("GET", "/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}
    assert srv.request("HEAD", "/healthz").body == b""


def test_stats_stream_sends_the_figures_every_second(herald):
    import http.client
    import json as _json
    import time as _time

    s = herald(publish_key="pk")
    # The API's credentials, as /stats?channels=1: a page of another origin or a stranger
    # gets nothing.
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    conn.request("GET", "/stats/stream")
    r = conn.getresponse()
    assert r.status == 401
    r.read()
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    conn.request("GET", "/stats/stream", headers={"Authorization": "Bearer pk"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    events, t0 = [], _time.monotonic()
    buf = b""
    while len(events) < 3:
        buf += r.read1(4096)
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    events.append(_json.loads(line[6:]))
    took = _time.monotonic() - t0
    conn.close()
    assert 1.5 < took < 6, took  # the first at once, then one a second
    assert [e["time"] > 0 for e in events] == [True] * 3
    assert events[0]["time"] < events[1]["time"] < events[2]["time"]
    assert all(e["node"] == events[0]["node"] and "messages" in e for e in events)
    assert events[-1]["connections"]["stream"] >= 1  # this very stream
    # HEAD answers the head only (no never-ending body).
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    conn.request("HEAD", "/stats/stream", headers={"Authorization": "Bearer pk"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    assert r.read() == b""
    conn.close()
