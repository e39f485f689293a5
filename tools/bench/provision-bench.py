#!/usr/bin/env python3
"""Provisioning through the Tsuru service API (issue 8): how long from "create an
instance" to "a subscriber of the new app got its first message", and what one
idle app costs in memory.

For each of --instances instances, one after the other, timed end to end:
  POST /resources             (form body, Basic auth with the admin key, as Tsuru)
  POST /resources/{i}/bind-app -> HERALD_URL, HERALD_PUBLISH_URL, HERALD_PUBLISH_KEY
  GET  $HERALD_URL/sse?channels=c&token=JWT (an SSE subscriber; its head = subscribed;
                                            the token signed with HERALD_TOKEN_SECRET)
  POST $HERALD_PUBLISH_URL/pub/c  with HERALD_PUBLISH_KEY
  ... until the subscriber reads the message.
Every Tsuru call is a fresh connection with `Connection: close`, as Tsuru makes
it. Prints p50/p99/max of the whole and of each step (target: p99 <= 50 ms).

Then, on a fresh herald, creates --apps apps with no connections over one
keep-alive connection and prints the growth of herald's resident memory per app
(target: <= 4 KiB), the create rate, and the mean create time of the first and
the last tenth (a rewrite of the whole state per change would show as growth).

Both runs without --state-dir and with one (on the disk of --state-parent, default
the build directory: fsync'ed journal writes are part of the figure).

    tools/bench/provision-bench.py [--instances 1000] [--apps 10000] [BINARY]
"""

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.parse

from benchutil import herald, parser, rss_kib

ADMIN_KEY = "bench-admin-key"
AUTH = "Basic " + base64.b64encode(f"herald:{ADMIN_KEY}".encode()).decode()


def recv_until(sock, buf, marker):
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed before {marker!r}; got {bytes(buf[:300])!r}")
        buf += chunk
    i = buf.index(marker) + len(marker)
    head = bytes(buf[:i])
    del buf[:i]
    return head


def read_response(sock, buf):
    """(status, body) of one Content-Length response (kept-alive or not)."""
    head = recv_until(sock, buf, b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed inside a body")
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return status, body


def request_bytes(method, path, host, body=b"", headers=(), close=True):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers,
             f"Content-Length: {len(body)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def tsuru_call(port, method, path, form):
    """One call as Tsuru makes it: a fresh connection, form body, Basic auth."""
    body = urllib.parse.urlencode(form).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(request_bytes(method, path, f"127.0.0.1:{port}", body, (
            "Content-Type: application/x-www-form-urlencoded", "Accept: application/json",
            f"Authorization: {AUTH}", "User-Agent: Go-http-client/1.1")))
        return read_response(s, bytearray())


def subscriber_token(secret, channel):
    """A JWT (HS256) granting `channel`, signed with the app's HERALD_TOKEN_SECRET, as the
    app's server would mint it: new instances want subscriber tokens."""
    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    claims = b64(json.dumps({"sub": "u", "exp": int(time.time()) + 600,
                             "channels": [channel]}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
    return f"{head}.{claims}.{b64(sig)}"


def one_instance(port, name):
    """Times create -> bind -> subscribe -> publish -> delivered; returns the steps (s)."""
    t0 = time.perf_counter()
    status, body = tsuru_call(port, "POST", "/resources",
                              {"name": name, "plan": "free", "team": "bench", "user": "bench"})
    assert status == 201, (status, body)
    t1 = time.perf_counter()
    status, body = tsuru_call(port, "POST", f"/resources/{name}/bind-app",
                              {"app-name": f"app-{name}", "app-host": f"{name}.example.com"})
    assert status == 201, (status, body)
    env = json.loads(body)
    t2 = time.perf_counter()
    sub_url = urllib.parse.urlsplit(env["HERALD_URL"])
    pub_url = urllib.parse.urlsplit(env["HERALD_PUBLISH_URL"])
    sub = socket.create_connection((sub_url.hostname, sub_url.port))
    try:
        sub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        token = subscriber_token(env["HERALD_TOKEN_SECRET"], "c")
        sub.sendall(request_bytes("GET", f"{sub_url.path}/sse?channels=c&token={token}",
                                  sub_url.netloc,
                                  headers=("Accept: text/event-stream",), close=False))
        buf = bytearray()
        head = recv_until(sub, buf, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        t3 = time.perf_counter()
        with socket.create_connection((pub_url.hostname, pub_url.port)) as p:
            p.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            p.sendall(request_bytes("POST", f"{pub_url.path}/pub/c", pub_url.netloc, b"first", (
                f"Authorization: Bearer {env['HERALD_PUBLISH_KEY']}", "Content-Type: text/plain")))
            recv_until(sub, buf, b'"data":"first"')
            t4 = time.perf_counter()
            status, body = read_response(p, bytearray())
            assert status == 201, (status, body)
    finally:
        sub.close()
    return {"create": t1 - t0, "bind": t2 - t1, "subscribe": t3 - t2, "deliver": t4 - t3,
            "total": t4 - t0}


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * (len(sorted_values) - 1) + 0.5))]


def end_to_end(binary, n, state_dir):
    args = ["--admin-key", ADMIN_KEY] + (["--state-dir", state_dir] if state_dir else [])
    with herald(binary, *args) as (proc, port):
        for i in range(20):  # warm-up: the first connections and allocations of the process
            one_instance(port, f"warm-{i}")
        runs = []
        start = time.perf_counter()
        for i in range(n):
            runs.append(one_instance(port, f"inst-{i}"))
        wall = time.perf_counter() - start
    out = {"wall_s": wall}
    for step in ("total", "create", "bind", "subscribe", "deliver"):
        v = sorted(r[step] * 1000 for r in runs)
        out[step] = (pct(v, 0.5), pct(v, 0.99), v[-1])
    return out


def idle_memory(binary, n, state_dir):
    args = ["--admin-key", ADMIN_KEY] + (["--state-dir", state_dir] if state_dir else [])
    with herald(binary, *args) as (proc, port):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()

        def create(name):
            body = urllib.parse.urlencode({"name": name, "plan": "free", "team": "bench",
                                           "user": "bench"}).encode()
            s.sendall(request_bytes("POST", "/resources", f"127.0.0.1:{port}", body, (
                "Content-Type: application/x-www-form-urlencoded", f"Authorization: {AUTH}"),
                close=False))
            status, answer = read_response(s, buf)
            assert status == 201, (status, answer)

        create("warm-0")
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        times = []
        start = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            create(f"idle-{i}")
            times.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        time.sleep(0.5)
        after = rss_kib(proc.pid)
        s.close()
    tenth = max(1, n // 10)
    return {"bytes_per_app": (after - before) * 1024 / n, "rss_before_kib": before,
            "rss_after_kib": after, "creates_per_s": n / wall,
            "first_tenth_ms": sum(times[:tenth]) / tenth * 1000,
            "last_tenth_ms": sum(times[-tenth:]) / tenth * 1000,
            "p99_ms": pct(sorted(times), 0.99) * 1000}


def main():
    ap = parser()
    ap.add_argument("--instances", type=int, default=1000,
                    help="instances provisioned end to end, one after the other")
    ap.add_argument("--apps", type=int, default=10000, help="idle apps for the memory figure")
    ap.add_argument("--state-parent", default="build",
                    help="where the --state-dir runs keep their directory (a real disk)")
    ap.add_argument("--only", choices=("memory", "state"), default=None,
                    help="memory: without --state-dir only; state: with it only")
    a = ap.parse_args()
    modes = [m for m in (None, "state") if a.only is None or (m is None) == (a.only == "memory")]
    os.makedirs(a.state_parent, exist_ok=True)
    print(f"herald {a.binary}: {a.instances} instances end to end, {a.apps} idle apps")
    for mode in modes:
        label = "with --state-dir" if mode else "in memory (no --state-dir)"
        dirs = []

        def fresh():
            if not mode:
                return None
            d = tempfile.mkdtemp(prefix="provision-bench-", dir=a.state_parent)
            dirs.append(d)
            return d

        try:
            e = end_to_end(a.binary, a.instances, fresh())
            m = idle_memory(a.binary, a.apps, fresh())
            state_bytes = None
            if mode:
                state_bytes = sum(os.path.getsize(os.path.join(dirs[-1], f))
                                  for f in os.listdir(dirs[-1]))
        finally:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        print(f"\n== {label}")
        print(f"end to end, {a.instances} instances in {e['wall_s']:.2f} s "
              f"({a.instances / e['wall_s']:.0f}/s), ms:      p50     p99     max")
        for step in ("total", "create", "bind", "subscribe", "deliver"):
            p50, p99, mx = e[step]
            print(f"  {step:<44} {p50:7.2f} {p99:7.2f} {mx:7.2f}")
        print(f"idle apps: {m['bytes_per_app']:.0f} bytes per app "
              f"(RSS {m['rss_before_kib']} -> {m['rss_after_kib']} KiB for {a.apps} apps)")
        print(f"  creates (keep-alive): {m['creates_per_s']:.0f}/s, p99 {m['p99_ms']:.2f} ms; "
              f"mean of the first tenth {m['first_tenth_ms']:.3f} ms, "
              f"of the last {m['last_tenth_ms']:.3f} ms")
        if state_bytes is not None:
            print(f"  state directory after {a.apps + 1} apps: {state_bytes / 1024:.0f} KiB")
        p99 = e["total"][1]
        print(f"target p99 <= 50 ms: {'met' if p99 <= 50 else 'MISSED'} ({p99:.2f} ms); "
              f"<= 4 KiB per idle app: "
              f"{'met' if m['bytes_per_app'] <= 4096 else 'MISSED'}; "
              f"PushaaS's median (237 s) is {237000 / e['total'][0]:,.0f}x the p50")


if __name__ == "__main__":
    main()
