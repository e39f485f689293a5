#!/usr/bin/env python3
"""What a resume with a pattern costs next to one by name, with many channels in memory
(issue 10 part 6).

Starts one herald, fills it with --channels channels (`cN.x`: names with a dot, under
heads of their own) by batch publishes, publishes one message to `zz.a`, then times
long-polls that answer at once (timeout=0) from the cursor just before it: by name
(`zz.a`), by pattern (`zz.*`, a resume: it reads the channels under `zz` only), and by
pattern without a cursor. Prints the median of --repeat requests each, in ms. With
--delete, then deletes the filler channels (a node remembers the last id of up to 65,536
deleted channels, which a pattern's resume reads for its gaps: those under `zz` only) and
times the three again.

    tools/bench/pattern-resume.py [--channels 100000] [--repeat 20] [--delete] [BINARY]
"""

import http.client
import json
import statistics
import time

from benchutil import herald, parser


def median_ms(conn, path, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    ap = parser()
    ap.add_argument("--channels", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--delete", action="store_true", help="then delete the filler channels and time again")
    a = ap.parse_args()
    with herald(a.binary, "--max-channels", str(2 * a.channels + 10)) as (_, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        started = time.time()
        for b in range(0, a.channels, 64):
            msgs = [{"channel": f"c{i}.x", "data": 1} for i in range(b, min(b + 64, a.channels))]
            conn.request("POST", "/api/publish", json.dumps({"messages": msgs}),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status in (200, 201), r.read()
            r.read()
        print(f"{a.channels} channels published to in {time.time() - started:.1f} s")
        conn.request("POST", "/pub/zz.a", "x")
        r = conn.getresponse()
        cursor = int(json.loads(r.read())["id"]) - 1
        paths = (("resume by name    zz.a", f"/poll?channels=zz.a&since={cursor}&timeout=0"),
                 ("resume by pattern zz.*", f"/poll?channels=zz.*&since={cursor}&timeout=0"),
                 ("pattern, no cursor zz.*", "/poll?channels=zz.*&timeout=0"))
        for label, path in paths:
            print(f"{label}: {median_ms(conn, path, a.repeat):.2f} ms (median of {a.repeat})")
        if not a.delete:
            return
        started = time.time()
        for i in range(a.channels):
            conn.request("DELETE", f"/api/channels/c{i}.x")
            r = conn.getresponse()
            assert r.status in (200, 204), r.read()
            r.read()
        print(f"{a.channels} channels deleted in {time.time() - started:.1f} s")
        for label, path in paths:
            print(f"{label}: {median_ms(conn, path, a.repeat):.2f} ms (median of {a.repeat})")


if __name__ == "__main__":
    main()
