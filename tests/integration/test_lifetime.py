"""Connection lifetime with reconnect dither (docs/api.md, connection lifetime), with shortened
intervals: at the end of its lifetime a subscriber gets a reconnect event and
is closed (WebSocket code 1001); lifetimes are spread over [min, max]."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import subscribe

pytestmark = pytest.mark.serial  # measures lifetimes: runs alone under xdist

LIFE_MIN, LIFE_MAX = 1.0, 1.5
SLACK = 1.0  # scheduling and the sanitizer build
RECONNECT = {"event": "reconnect", "reason": "lifetime"}


@pytest.fixture(scope="module")
def srv(module_herald):
    return module_herald(lifetime_min="1s", lifetime_max="1500ms")


def lifetime_of(srv, kind, channel):
    """Seconds from the subscription to the reconnect event (checked, with the close after it)."""
    with subscribe(kind, srv, channel) as sub:
        start = time.monotonic()
        assert sub.next_message(timeout=LIFE_MAX + SLACK + 5) == RECONNECT
        elapsed = time.monotonic() - start
        sub.expect_end(code=1001)
    return elapsed


@pytest.mark.parametrize("kind", ["ws", "sse", "stream"])
def test_reconnect_event_then_close(srv, chan, kind):
    elapsed = lifetime_of(srv, kind, chan)
    assert LIFE_MIN - 0.05 <= elapsed <= LIFE_MAX + SLACK, elapsed


@pytest.mark.parametrize("kind", ["ws", "sse"])
def test_messages_flow_until_the_end_of_life(srv, chan, kind):
    with subscribe(kind, srv, chan) as sub:
        ids = srv.publish_many(chan, ["a", "b"])
        assert [m["id"] for m in sub.messages(2)] == ids
        assert sub.next_message(timeout=LIFE_MAX + SLACK + 5) == RECONNECT


def test_lifetimes_are_spread_within_bounds(srv, chan):
    n = 10
    with ThreadPoolExecutor(n) as pool:
        lifetimes = list(pool.map(lambda i: lifetime_of(srv, "sse", f"{chan}-{i}"), range(n)))
    assert min(lifetimes) >= LIFE_MIN - 0.05, lifetimes
    assert max(lifetimes) <= LIFE_MAX + SLACK, lifetimes
    assert max(lifetimes) - min(lifetimes) >= 0.05, lifetimes  # dithered, not all at once
