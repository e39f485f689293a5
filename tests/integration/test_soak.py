"""Soak (make soak; not part of make integration): subscribers on every transport
hold two channels while a publisher publishes to one, the other and both for
HERALD_SOAK_SECONDS; each subscriber must end with every message exactly once,
in publish order, and the server must exit cleanly."""

import os
import threading
import time

import pytest

from helpers import TRANSPORTS, subscribe

SECONDS = float(os.environ.get("HERALD_SOAK_SECONDS", "60"))
PER_TRANSPORT = 3


class Reader(threading.Thread):
    def __init__(self, sub):
        super().__init__(daemon=True)
        self.sub, self.data, self.error = sub, [], None
        self.start()

    def run(self):
        try:
            while (msg := self.sub.next_message(timeout=30))["data"] != "end":
                assert msg["event"] == "message", msg
                self.data.append(msg["data"])
        except Exception as e:  # reported by the test
            self.error = e


@pytest.mark.soak
@pytest.mark.timeout(SECONDS + 180)
def test_soak_every_transport_gets_everything_once_in_order(herald, chan):
    srv = herald(lifetime_min="0", lifetime_max="0", history_size=100000)
    a, b = chan + "-a", chan + "-b"
    subs = [subscribe(kind, srv, f"{a},{b}", since=None if kind != "poll" else "0")
            for kind in TRANSPORTS for _ in range(PER_TRANSPORT)]
    srv.wait_subscribers(a, len(subs) - PER_TRANSPORT)  # pollers join with their first poll
    readers = [Reader(sub) for sub in subs]
    targets = [[a], [b], [a, b], [b, a]]
    sent = []
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        n = len(sent)
        srv.publish_json({"channels": targets[n % 4], "data": n})
        sent.append(n)
    srv.publish_json({"channels": [a, b], "data": "end"})
    for reader in readers:
        reader.join(60)
        assert reader.error is None, reader.error
        assert reader.data == sent, f"{len(reader.data)} of {len(sent)} messages"
    for sub in subs:
        sub.close()
