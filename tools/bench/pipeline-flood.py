#!/usr/bin/env python3
"""Memory a client that does not read can make herald hold (issue 7, item 2).

Starts the herald binary given (default build/herald) with one worker, sends
N pipelined publishes on one connection without reading the answers, waits,
then reads them all. Prints herald's resident memory before, while the client
was not reading, and after everything was read, and how many answers came.

    tools/bench/pipeline-flood.py [--n 70000] [BINARY]
"""

import socket
import sys
import threading
import time

from benchutil import herald, parser, rss_kib


def main():
    ap = parser()
    ap.add_argument("--n", type=int, default=70000)
    ap.add_argument("--wait", type=float, default=3.0, help="seconds the client does not read")
    args = ap.parse_args()
    with herald(args.binary, "--workers", "1") as (proc, port):
        base = rss_kib(proc.pid)
        req = b"POST /pub/flood HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx"
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        writer = threading.Thread(target=lambda: sock.sendall(req * args.n), daemon=True)
        writer.start()
        time.sleep(args.wait)
        held = rss_kib(proc.pid)
        sock.settimeout(10)
        got, buf = 0, b""
        try:
            while got < args.n:
                data = sock.recv(1 << 20)
                if not data:
                    break
                # Count in what was kept plus the new bytes, so a status line split
                # across two reads counts once; keep the tail that may start one.
                buf += data
                got += buf.count(b"HTTP/1.1 201")
                cut = buf.rfind(b"HTTP/1.1 201")
                buf = buf[cut + 12:] if cut >= 0 else buf
                buf = buf[-11:]
        except socket.timeout:
            pass
        sock.close()
        time.sleep(1)
        after = rss_kib(proc.pid)
        print(f"binary {args.binary}: {args.n} pipelined publishes, {got} answers read")
        print(f"  RSS before {base} KiB, while not reading {held} KiB (+{held - base}), "
              f"after reading and closing {after} KiB (+{after - base})")


if __name__ == "__main__":
    sys.exit(main())
