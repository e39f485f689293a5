#!/usr/bin/env python3
"""Memory one channel that only has subscribers costs (issue 7, item 5).

Starts the herald binary given (default build/herald) with one worker, opens
--conns WebSocket connections and subscribes each to 64 channels: first all
distinct (every subscribe creates a channel), then the same 64 for everyone.
Prints herald's resident memory growth in both runs and their difference per
channel.

    tools/bench/channel-cost.py [--conns 200] [BINARY]
"""

import asyncio
import json

import websockets

from benchutil import herald, parser, rss_kib

PER = 64


async def run(binary, conns, distinct):
    with herald(binary, "--workers", "1") as (proc, port):
        clients = [await websockets.connect(f"ws://127.0.0.1:{port}/ws", compression=None)
                   for _ in range(conns)]
        await asyncio.sleep(0.3)
        before = rss_kib(proc.pid)
        for i, ws in enumerate(clients):
            names = [f"c{i}-{k}" if distinct else f"s-{k}" for k in range(PER)]
            await ws.send(json.dumps({"op": "subscribe", "channels": names}))
            assert json.loads(await ws.recv())["event"] == "subscribed"
        await asyncio.sleep(0.3)
        grew = (rss_kib(proc.pid) - before) * 1024
        for ws in clients:
            await ws.close()
        return grew


def main():
    ap = parser()
    ap.add_argument("--conns", type=int, default=200)
    a = ap.parse_args()
    distinct = asyncio.run(run(a.binary, a.conns, True))
    shared = asyncio.run(run(a.binary, a.conns, False))
    n = a.conns * PER
    print(f"{n} subscriptions: RSS grew {distinct / 1e6:.2f} MB with {n} distinct channels, "
          f"{shared / 1e6:.2f} MB with {PER} shared: about {(distinct - shared) / (n - PER):.0f} "
          f"bytes per channel that only has subscribers")


if __name__ == "__main__":
    main()
