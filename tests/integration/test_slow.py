"""Slow consumers (docs/api.md#limits-and-what-happens-at-each): a subscriber that stops reading is cut off with
an error event (and close 1008 on WebSocket) once its queue passes --max-outbound,
the cut is counted in /stats, and other subscribers of the channel miss nothing."""

import pytest

from helpers import SSE, ids_of, subscribe

pytestmark = pytest.mark.threads  # make test runs this module under ThreadSanitizer too

BIG = 48 * 1024  # one queued message stays under the 64 KiB cap
MAX_COUNT = 250  # 12 MiB: far past the cap and every socket buffer


@pytest.fixture(scope="module")
def srv(module_herald):
    return module_herald(max_outbound="64KiB", close_grace="20s")


def publish_until_cut(srv, chan, good, cut_before):
    """Publishes big messages one at a time, each after `good` received the previous
    (so the reading subscriber never has more than one queued, however slow this
    process is), until /stats counts a slow consumer cut, then a few more."""
    ids = []

    def one():
        ids.append(srv.publish(chan, f"{len(ids):04d}" + "x" * BIG)["id"])
        assert good.next_message()["id"] == ids[-1]

    while srv.stats()["slow_consumers_closed"] == cut_before:
        # the kernel's send buffer (autotuned up to net.ipv4.tcp_wmem max, 4 MiB
        # here) fills before herald's own queue starts to grow
        assert len(ids) < MAX_COUNT, "the slow consumer was never cut off"
        one()
    for _ in range(3):
        one()
    return ids


def read_until_cut(slow):
    """Everything the slow subscriber still gets: messages, then the error event."""
    seen = []
    while (msg := slow.next_message(timeout=30))["event"] == "message":
        seen.append(msg)
    return seen, msg


@pytest.mark.parametrize("kind", ["ws", "sse"])
def test_slow_consumer_is_cut_and_others_keep_receiving(srv, chan, kind):
    cut_before = srv.stats()["slow_consumers_closed"]
    slow = subscribe(kind, srv, chan, rcvbuf=4096)  # never reads until the end
    with slow, SSE(srv, chan) as good:
        srv.wait_subscribers(chan, 2)
        ids = publish_until_cut(srv, chan, good, cut_before)  # the good one misses nothing

        seen, last = read_until_cut(slow)
        assert last["event"] == "error" and last["error"] == "slow_consumer", last
        assert last["detail"]
        assert ids_of(seen) == ids[: len(seen)]  # a clean prefix: whole messages, in order
        assert len(seen) < len(ids)
        slow.expect_end(code=1008)
        slow.close()
        srv.wait_subscribers(chan, 1)  # the good one is still there
    assert srv.stats()["slow_consumers_closed"] == cut_before + 1
