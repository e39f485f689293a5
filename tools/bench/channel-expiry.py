#!/usr/bin/env python3
"""How soon idle channels go at scale (issue 7, item 16).

Starts the herald binary given (default build/herald) with a short --channel-ttl,
creates --n channels with batch publishes (1,000 messages of 64 channels each),
then prints how many channels are left 2, 5, 10, 30 and 60 s after the last
publish, and when the last one went.

    tools/bench/channel-expiry.py [--n 403000] [--ttl 2s] [BINARY]
"""

import http.client
import json
import time

from benchutil import herald, parser


def main():
    ap = parser()
    ap.add_argument("--n", type=int, default=403000)
    ap.add_argument("--ttl", default="2s")
    ap.add_argument("--give-up", type=float, default=90)
    a = ap.parse_args()
    flags = ("--workers", "2", "--channel-ttl", a.ttl, "--max-body-bytes", "8MiB")
    with herald(a.binary, *flags) as (proc, port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def channels():
            c.request("GET", "/stats")
            return json.loads(c.getresponse().read())["channels"]

        made, batch = 0, 0
        start = time.monotonic()
        while made < a.n:
            msgs = []
            while made < a.n and len(msgs) < 1000:
                k = min(64, a.n - made)
                msgs.append({"channels": [f"x{batch}-{len(msgs)}-{i}" for i in range(k)], "data": 1})
                made += k
            c.request("POST", "/api/publish", json.dumps({"messages": msgs}),
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 201, r.status
            batch += 1
        last = time.monotonic()
        print(f"published to {a.n} channels in {last - start:.1f} s (TTL {a.ttl}); "
              f"{channels()} exist after the last publish")
        marks = [2, 5, 10, 30, 60]
        while True:
            left, t = channels(), time.monotonic() - last
            while marks and t >= marks[0]:
                print(f"  {marks.pop(0):>3} s after the last publish: {left} left")
            if left == 0:
                print(f"all gone {t:.2f} s after the last publish")
                break
            if t > a.give_up:
                print(f"{left} still there after {a.give_up:.0f} s")
                break
            time.sleep(0.05)


if __name__ == "__main__":
    main()
