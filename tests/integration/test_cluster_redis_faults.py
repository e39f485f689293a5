"""Cluster mode when Redis misbehaves without going away (issue 7): a Redis that stops
answering (SIGSTOP: the sockets stay open, nothing comes back) and a Redis that is out
of memory. What is checked: publishes get a 503 within --redis-timeout that says what
happened, /healthz and /stats show it while it lasts, the node comes back by itself,
and repeated failures do not flood the log.

Each test starts a redis-server of its own (it is stopped, or filled up)."""

import http.client
import re
import signal
import time

import pytest

from helpers import wait_until

pytestmark = pytest.mark.threads  # make test runs this module under ThreadSanitizer too


def publish(node, chan, body, timeout=10):
    """POST /pub/chan, timed: (response, seconds)."""
    t0 = time.monotonic()
    r = node.request("POST", "/pub/" + chan, body, {"Content-Type": "text/plain"}, timeout=timeout)
    return r, time.monotonic() - t0


def redis_state(node):
    return node.stats()["cluster"]["redis"]


def frozen(redis):
    """SIGSTOP: Redis keeps its sockets and the kernel keeps accepting connections for it,
    but nothing is read or answered, as with a stalled host."""
    redis.proc.send_signal(signal.SIGSTOP)


def thawed(redis):
    redis.proc.send_signal(signal.SIGCONT)


def test_a_frozen_redis_gets_publishes_a_503_within_the_timeout(redis_factory, herald, chan):
    redis = redis_factory()
    node = herald(redis=redis.url, node_name="A", redis_timeout="1s")
    node.publish(chan, "before")
    frozen(redis)
    try:
        r, took = publish(node, chan, "during")
        assert r.status == 503, (r.status, r.body, took)
        doc = r.error()
        assert doc["error"] == "backend_unavailable", doc
        assert "did not answer within 1000 ms" in doc["detail"], doc
        assert took < 2.5, f"the 503 took {took:.1f} s with --redis-timeout 1s"
        # The node knows Redis is down now: health checks and /stats say so, and publishes
        # keep getting their 503 within the timeout.
        assert node.request("GET", "/healthz").status == 503
        assert redis_state(node) == "down"
        r, took = publish(node, chan, "during again")
        assert r.status == 503 and took < 2.5, (r.status, r.body, took)
        assert node.request("GET", "/healthz").status == 503
    finally:
        thawed(redis)
    wait_until(lambda: node.request("GET", "/healthz").status == 200, 15, what="/healthz 200 after SIGCONT")
    assert redis_state(node) == "up"
    node.publish(chan, "after")
    assert "redis: down" in node.log() and "redis: up" in node.log()


def test_a_frozen_redis_is_noticed_without_any_publish(redis_factory, herald, chan):
    """An idle node pings Redis, so health reflects a stall before a publish meets it."""
    redis = redis_factory()
    node = herald(redis=redis.url, node_name="A", redis_timeout="500ms")
    frozen(redis)
    try:
        t0 = time.monotonic()
        wait_until(lambda: node.request("GET", "/healthz").status == 503, 5, what="/healthz 503 while Redis is stopped")
        assert time.monotonic() - t0 < 3
        assert redis_state(node) == "down"
    finally:
        thawed(redis)
    wait_until(lambda: node.request("GET", "/healthz").status == 200, 15, what="/healthz 200 after SIGCONT")


def test_redis_out_of_memory_is_reported_in_its_words_and_logged_once_per_window(redis_factory, herald, chan):
    redis = redis_factory(["--maxmemory-policy", "noeviction"])
    node = herald(redis=redis.url, node_name="A")
    node.publish(chan, "before")
    redis.cmd("CONFIG", "SET", "maxmemory", "1")  # anything is more than that: writes are refused
    try:
        for i in range(30):
            r, _ = publish(node, chan, f"refused {i}")
            assert r.status == 503, (r.status, r.body)
            doc = r.error()
            assert doc["error"] == "backend_unavailable", doc
            assert "OOM command not allowed when used memory > 'maxmemory'" in doc["detail"], doc
            assert "unreachable" not in doc["detail"], doc
        # Health is about reaching Redis, which works.
        assert node.request("GET", "/healthz").status == 200

        def summary():
            lines = [l for l in node.log().splitlines() if "redis: publish failed: OOM" in l]
            return len(lines) == 2 and re.search(r"\(repeated (\d+) times in 10 s\)$", lines[1])

        m = wait_until(summary, 15, what="one warning, then one line with the count")
        assert int(m.group(1)) == 29, node.log_tail(20)
    finally:
        redis.cmd("CONFIG", "SET", "maxmemory", "0")
    node.publish(chan, "after")


def test_sigterm_while_a_publish_waits_on_a_stopped_redis_exits_cleanly(redis_factory, herald, chan):
    """The workers go before the Redis thread: what it still has to answer must not reach
    them (ASan build: no use after free, no leak)."""
    redis = redis_factory()
    node = herald(redis=redis.url, node_name="A", redis_timeout="20s", shutdown_timeout="1s")
    node.publish(chan, "before")
    frozen(redis)
    try:
        conns = []
        for i in range(3):  # publishes waiting on Redis, on both workers
            conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
            conn.request("POST", "/pub/" + chan, f"waiting {i}", {"Content-Type": "text/plain"})
            conns.append(conn)
        time.sleep(0.3)  # the node has handed them to Redis
        t0 = time.monotonic()
        assert node.terminate() == 0, node.log_tail()
        assert time.monotonic() - t0 < node.shutdown_bound()
        for conn in conns:  # each got an answer or its connection closed: none hangs
            try:
                r = conn.getresponse()
                assert r.status == 503, (r.status, r.read())
            except (http.client.RemoteDisconnected, ConnectionResetError):
                pass
            conn.close()
        assert node.sanitizer_report() is None, node.sanitizer_report()
        assert "herald stopped" in node.log()
    finally:
        thawed(redis)


def test_a_redis_that_forgot_the_scripts_gets_them_again(redis_factory, herald, chan):
    """Scripts are called by their SHA1 (EVALSHA); a Redis without them (SCRIPT FLUSH, a
    restart) answers NOSCRIPT, and the node sends the script again: nothing fails."""
    redis = redis_factory()
    node = herald(redis=redis.url, node_name="A", cluster_heartbeat="200ms")
    node.publish(chan, "one")
    redis.cmd("SCRIPT", "FLUSH")
    node.publish(chan, "two")
    node.publish(chan, "three")
    assert [m["data"] for m in node.history(chan)] == ["one", "two", "three"]
    time.sleep(1.0)  # the periodic scripts (heartbeat, apps tick) ran since the flush too
    stats = redis.cmd("INFO", "commandstats")
    assert re.search(r"cmdstat_evalsha:calls=[1-9]", stats), stats
    # EVAL once per script the node ran since the flush, and never again: each was loaded
    # with its EVAL.
    evals = int(re.search(r"cmdstat_eval:calls=(\d+)", stats).group(1))
    assert evals <= 6, stats  # publish, load, beat, apps beat, ...
    for i in range(3):
        node.publish(chan, f"more {i}")
    time.sleep(1.0)  # four apps ticks
    stats = redis.cmd("INFO", "commandstats")
    assert int(re.search(r"cmdstat_eval:calls=(\d+)", stats).group(1)) == evals, stats
