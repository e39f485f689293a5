"""Observation: /stats counts connections by transport and per channel, message and
byte counters move as they should, /metrics is valid Prometheus text, /healthz."""

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import SSE, ApiStream, poll, subscribe, wait_until

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
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in types and types.get(family) == "histogram":
                assert name != family + "_bucket" or labels.startswith('le="'), line
            else:
                assert name in types, f"{name} has no # TYPE line"
            if types.get(name) == "counter":
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
    with ApiStream(s, {"Authorization": "Bearer pk"}) as stream:
        r = stream.resp
        assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
        t0 = _time.monotonic()
        events = [stream.next_event() for _ in range(3)]
        took = _time.monotonic() - t0
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


# ---- delivery latency ----------------------------------------------------------------------


def latency(srv, window="since_start"):
    return srv.stats()["delivery_latency_ms"][window]


def test_delivery_latency_counts_each_live_delivery_once(srv, chan):
    """Every transport's live deliveries count, one per subscriber and message; a replay
    from history does not (the message arrived long before the subscriber asked)."""
    zero = {"count": 0, "p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0}
    assert latency(srv) == zero
    assert latency(srv, "last_second") == zero
    subs = [subscribe(kind, srv, chan) for kind in ("ws", "sse", "stream")]
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(poll, srv, chan, None, 30)
        srv.wait_subscribers(chan, 4)
        srv.publish(chan, "one")
        status, body = held.result(10)
    assert status == 200 and len(body["messages"]) == 1
    for s in subs:
        assert s.next_message()["data"] == "one"
    # a worker counts a delivery when its write returned: the subscriber may read first
    wait_until(lambda: latency(srv)["count"] == 4, what="4 deliveries counted")
    lat = latency(srv)
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"] < 1000, lat
    # resuming from history: delivered, not counted
    with SSE(srv, chan, lastEventId="0") as late:
        assert late.next_message()["data"] == "one"
        srv.publish(chan, "two")
        assert late.next_message()["data"] == "two"
    wait_until(lambda: latency(srv)["count"] == 4 + 4, what="the second message's 4 deliveries")
    for s in subs:
        s.close()
    # the last second's figures come from the once-a-second sample: the second publish
    # shows in one of them
    wait_until(lambda: latency(srv, "last_second")["count"] >= 1, what="a last-second count")
    # a second later, still 8: the replay of "one" never counted (the wait above could meet
    # 8 on the way to 9)
    assert latency(srv)["count"] == 4 + 4


def test_delivery_latency_counts_the_wait_behind_a_full_socket(herald, chan):
    """A frame queued behind unsent bytes counts until the write that hands it to the
    kernel: a subscriber that reads nothing for 1.5 s makes the max at least that."""
    srv = herald(max_outbound="64m")
    big = "x" * 200_000
    sse = SSE(srv, chan, rcvbuf=4096)
    try:
        srv.wait_subscribers(chan, 1)
        srv.publish_many(chan, [big] * 40)  # 8 MB: more than the socket buffers hold
        time.sleep(1.5)
        for _ in range(40):
            assert len(sse.next_message()["data"]) == len(big)
    finally:
        sse.close()
    wait_until(lambda: latency(srv)["count"] == 40, what="40 deliveries counted")
    lat = latency(srv)
    assert lat["max"] >= 1400, lat  # waited in herald's queue while the client slept
    assert lat["p50"] < lat["max"], lat  # the first ones went out at once


def test_delivery_latency_counts_a_delivery_windows_wait(srv, chan):
    """A channel with a delivery window (batch_ms) delivers its messages when the window
    closes: the latency counts from their arrival, the wait in the window included."""
    r = srv.request("PUT", f"/api/channels/{chan}", json.dumps({"batch_ms": 400}),
                    {"Content-Type": "application/json"})
    assert r.status == 201, r.body
    with SSE(srv, chan) as sse:
        srv.wait_subscribers(chan, 1)
        srv.publish(chan, "windowed")
        assert sse.next_message()["data"] == "windowed"
    wait_until(lambda: latency(srv)["count"] == 1, what="the windowed delivery counted")
    lat = latency(srv)
    assert 350 <= lat["p50"] == lat["max"], lat  # the window's 400 ms, to the loop's ms


def test_metrics_has_the_delivery_latency_histogram(srv, chan):
    with SSE(srv, chan) as sse:
        for i in range(3):
            srv.publish(chan, f"m{i}")
            sse.next_message()
    wait_until(lambda: latency(srv)["count"] == 3, what="3 deliveries counted")
    r = srv.request("GET", "/metrics")
    text = r.body.decode()
    assert "# TYPE herald_delivery_latency_seconds histogram" in text
    metrics = parse_metrics(text)
    buckets = [(float(labels[4:-1]), v) for (name, labels), v in metrics.items()
               if name == "herald_delivery_latency_seconds_bucket"]
    assert len(buckets) >= 10
    buckets.sort()
    assert buckets[-1] == (float("inf"), 3)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), buckets  # cumulative
    assert {0.005, 0.01, 0.1, 1.0, 10.0} <= {le for le, _ in buckets}  # the standard bounds
    assert metrics[("herald_delivery_latency_seconds_count", "")] == 3
    assert 0 < metrics[("herald_delivery_latency_seconds_sum", "")] < 3


def test_stats_stream_and_nodes_carry_the_last_seconds_latency(herald, chan):
    s = herald()
    stream = ApiStream(s)
    assert stream.status == 200
    sse = SSE(s, chan)
    s.wait_subscribers(chan, 1)
    s.publish(chan, "x")
    sse.next_message()
    events = []

    def rates():
        nodes = [e["nodes"][0] for e in events]
        return [(n["messages_in_per_second"], n["messages_out_per_second"]) for n in nodes]

    def seen():
        return [e for e in events if e["delivery_latency_ms"]["last_second"]["count"]]

    deadline = time.monotonic() + 6
    while not (seen() and any(i for i, _ in rates()) and any(o for _, o in rates())):
        assert time.monotonic() < deadline, (rates(), events[-1:])
        events.append(stream.next_event())
    stream.close()
    sse.close()
    # one publish, one delivery: 1/s in the tick that took each (over about a second)
    assert 0.5 < max(i for i, _ in rates()) <= 1.5 and 0.5 < max(o for _, o in rates()) <= 1.5
    [tick] = seen()  # one tick's last second holds the delivery, the others do not
    assert tick["delivery_latency_ms"]["last_second"]["p99"] > 0
    # one node, itself, with the same sample
    [node] = tick["nodes"]
    assert node["node"] == tick["node"]
    assert node["delivery_latency_ms"] == tick["delivery_latency_ms"]["last_second"]
    assert node["connections"]["sse"] == 1 and node["connections"]["stream"] >= 1
    # /stats gives the nodes only when asked
    assert "nodes" not in s.stats() and "nodes" not in s.stats("?nodes=0")
    assert "channel_subscribers" not in s.stats("?channels=0")
    assert [n["node"] for n in s.stats("?nodes=1")["nodes"]] == [tick["node"]]
