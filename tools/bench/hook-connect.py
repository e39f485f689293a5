#!/usr/bin/env python3
"""What a connect hook costs a WebSocket connect (issue 10 part 4), in one run.

Starts two herald processes side by side, one plain and one whose default app has
--webhook-url pointing at a local backend (a threaded Python http.server in a process
of its own that answers {"result":"allow"} at once, keep-alive, as docs/interactive.md's
example does), and opens --conns WebSocket connections to each, interleaved in batches
of --batch so that both see the same machine. A connect is timed from the TCP connect
to the end of the 101 answer's head (the subscription to ?channels=bench is in place
then), over --concurrency client threads; each connection is closed right after (so the
hooked herald also sends its backend a disconnect per connection).

Prints p50/p90/p99/max of each and the ratio hooked/plain.

    tools/bench/hook-connect.py [--conns 2000] [--batch 100] [--concurrency 1] [BINARY]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from benchutil import free_port, herald, parser, wait_port

SECRET = "bench-hook-secret"
HANDSHAKE = ("GET /ws?channels=bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def backend(port):
    """The app's backend: allow every connect, acknowledge everything else."""
    class Hook(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # the head and the body are two writes

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            out = b'{"result":"allow"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", port), Hook)
    srv.daemon_threads = True
    srv.request_queue_size = 1024
    srv.serve_forever()


def connect_once(port):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(HANDSHAKE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed during the handshake: {head!r}")
        head += chunk
    took = time.perf_counter() - t0
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"not upgraded: {head[:200]!r}")
    s.close()
    return took


def batch(port, n, concurrency, out):
    def worker(k):
        for _ in range(k):
            out.append(connect_once(port))
    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(k,)) for k in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = parser()
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--backend", type=int, help=argparse.SUPPRESS)  # the backend's process
    a = ap.parse_args()
    if a.backend:
        return backend(a.backend)
    bport = free_port()
    be = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--backend", str(bport)])
    try:
        wait_port(bport)
        url = f"http://127.0.0.1:{bport}/herald"
        with herald(a.binary) as (plain, pport), \
                herald(a.binary, "--webhook-url", url, "--webhook-secret", SECRET) as (hooked, hport):
            for port in (pport, hport):  # warm both up (and the backend's pool)
                batch(port, 20, a.concurrency, [])
            res = {"plain": [], "hooked": []}
            done = 0
            while done < a.conns:
                n = min(a.batch, a.conns - done)
                batch(pport, n, a.concurrency, res["plain"])
                batch(hport, n, a.concurrency, res["hooked"])
                done += n
            stats = json.loads(subprocess.run(["curl", "-s", f"127.0.0.1:{hport}/stats"],
                                              capture_output=True, text=True).stdout)["hooks"]
    finally:
        be.terminate()
        be.wait()
    print(f"{a.conns} WebSocket connects each, batches of {a.batch}, {a.concurrency} client "
          f"thread(s); backend: local Python http.server")
    print(f"{'':8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for name, xs in res.items():
        ms = [x * 1000 for x in xs]
        print(f"{name:8} {pct(ms, 50):8.3f} {pct(ms, 90):8.3f} {pct(ms, 99):8.3f} {max(ms):8.3f} "
              f"{statistics.mean(ms):8.3f}")
    p99 = pct(res["hooked"], 99) / pct(res["plain"], 99)
    p50 = pct(res["hooked"], 50) / pct(res["plain"], 50)
    print(f"ratio hooked/plain: p50 {p50:.2f}x, p99 {p99:.2f}x")
    print(f"hooks: connect sent {stats['sent']['connect']}, ok {stats['ok']}, "
          f"failed {stats['timeouts'] + stats['http_errors'] + stats['unreachable']}, "
          f"dropped {stats['dropped']}, refused {stats['refused']}")


if __name__ == "__main__":
    main()
