#!/usr/bin/env python3
"""What history really holds against what herald reports (issue 7, item 11).

Starts the herald binary given (default build/herald) with one worker, publishes
--per messages of a 1,000-byte body to each of --channels channels, and prints
herald's resident memory growth next to the sum of the channels' `bytes`
(what --history-bytes bounds), for an ASCII body and a body of control
characters (six bytes each in JSON).

    tools/bench/history-memory.py [--channels 50] [--per 200] [BINARY]
"""

import http.client
import json

from benchutil import herald, parser, rss_kib


def run(binary, kind, body, channels, per):
    with herald(binary, "--workers", "1", "--history-size", str(per)) as (proc, port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(3):  # the allocator's first arenas
            c.request("POST", "/pub/warm", body, {"Content-Type": "text/plain"})
            c.getresponse().read()
        before = rss_kib(proc.pid)
        for _ in range(per):
            for ch in range(channels):
                c.request("POST", f"/pub/h{ch}", body, {"Content-Type": "text/plain"})
                c.getresponse().read()
        grew = (rss_kib(proc.pid) - before) * 1024
        c.request("GET", f"/api/channels?limit=1000&prefix=h")
        infos = json.loads(c.getresponse().read())["channels"]
        reported = sum(i["bytes"] for i in infos)
        kept = sum(i["messages"] for i in infos)
        print(f"{kind:7} {kept:6} messages kept: reported {reported / 1e6:6.1f} MB, "
              f"RSS grew {grew / 1e6:6.1f} MB, RSS/reported {grew / reported:5.2f}")


def main():
    ap = parser()
    ap.add_argument("--channels", type=int, default=50)
    ap.add_argument("--per", type=int, default=200)
    a = ap.parse_args()
    run(a.binary, "ascii", b"a" * 1000, a.channels, a.per)
    run(a.binary, "control", b"\x01" * 1000, a.channels, a.per)


if __name__ == "__main__":
    main()
