#!/usr/bin/env python3
"""TLS: herald (--listen-tls) against Nchan behind nginx `listen ssl`, in one run.

    tools/bench/tls-bench.py [build/herald] [--subscribers 5000] [--seconds 5]
                             [--clients 2] [--workers 1]

Both servers get the same certificate (ECDSA P-256, made here with the openssl
command line), the same number of worker threads / processes (--workers), and
the same clients. Measured:

  (a) idle memory per connection: --subscribers SSE subscribers (on 100
      channels, over plain TCP for reference, then over TLS 1.3) held open by
      several client processes; the server's RSS (nginx: master and workers)
      after they subscribed, minus its RSS with 200 subscribers, divided by
      their number;
  (b) handshakes per second: --clients `openssl s_time` processes for
      --seconds each, full TLS 1.3 handshakes (-new) and resumed ones (-reuse,
      TLS 1.3 tickets and TLS 1.2), each fetching a small page. The clients
      share the machine with the server, so the rate depends on them too; the
      server's CPU time over the run (utime + stime) gives the figure that does
      not: handshakes per CPU-second of the server.

Needs nginx-light and libnginx-mod-nchan (scripts/install-deps.sh --bench);
`make bench-tls` runs it. Prints a table and the herald/Nchan ratios.
"""

import argparse
import asyncio
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import free_port, rss_kib  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NCHAN_CONF = os.path.join(ROOT, "tools", "bench", "nchan.conf")
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
WARM = 200  # subscribers before the baseline RSS is read
TICK = os.sysconf("SC_CLK_TCK")


def sh(script, cwd):
    subprocess.run(["sh", "-c", script], cwd=cwd, check=True, capture_output=True)


def make_cert(d):
    sh("K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes' && "
       "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=bench-ca && "
       "openssl req $K -keyout server.key -out server.csr -subj /CN=bench && "
       "echo 'subjectAltName=IP:127.0.0.1' > server.ext && "
       "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
       "-extfile server.ext -out server.crt", d)


# ---- servers --------------------------------------------------------------------------------


class Server:
    """A running server: its processes, plain and TLS ports, and how to subscribe."""

    def __init__(self, name, proc, port, tport, sub_request, page):
        self.name, self.proc, self.port, self.tport = name, proc, port, tport
        self.sub_request, self.page = sub_request, page

    def pids(self):
        """The process and its children (nginx workers)."""
        kids = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                            kids.append(int(p))
                except (OSError, IndexError, ValueError):
                    pass
        return [self.proc.pid] + kids

    def rss_kib(self):
        return sum(rss_kib(p) for p in self.pids())

    def cpu_seconds(self):
        total = 0
        for p in self.pids():
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / TICK

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_port(port, proc, what):
    import socket
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"tls-bench: {what} exited at start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"tls-bench: {what} does not listen on {port}")


def start_herald(binary, d, workers):
    port, tport = free_port(), free_port()
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--listen-tls", f"127.0.0.1:{tport}",
                             "--tls-cert", f"{d}/server.crt", "--tls-key", f"{d}/server.key",
                             "--workers", str(workers), "--log-level", "error"],
                            stderr=subprocess.DEVNULL)
    wait_port(tport, proc, "herald")
    return Server("herald", proc, port, tport,
                  "GET /sse?channels=bench{ch} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "/healthz")


def start_nchan(d, workers):
    port, tport = free_port(), free_port()
    conf = open(NCHAN_CONF).read()
    listen = "        listen 127.0.0.1:9200 backlog=4096 reuseport;\n"
    assert listen in conf, "tools/bench/nchan.conf changed: update tls-bench.py"
    conf = conf.replace(listen, (
        f"        listen 127.0.0.1:{port} backlog=4096 reuseport;\n"
        f"        listen 127.0.0.1:{tport} ssl backlog=4096 reuseport;\n"
        f"        ssl_certificate {d}/server.crt;\n"
        f"        ssl_certificate_key {d}/server.key;\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        "        ssl_session_cache shared:SSL:10m;\n"))
    conf = re.sub(r"worker_processes \d+;", f"worker_processes {workers};", conf)
    prefix = os.path.join(d, "nchan")
    os.makedirs(prefix, exist_ok=True)
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(conf)
    proc = subprocess.Popen(["nginx", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf"),
                             "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    wait_port(tport, proc, "nginx")
    return Server("nchan", proc, port, tport,
                  "GET /sub/bench{ch} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
                  "/")


# ---- idle subscribers -------------------------------------------------------------------------


async def hold(port, n, request, use_tls, cafile):
    """Opens n subscribers, says "ready" on stdout, holds them until stdin closes."""
    ctx = ssl.create_default_context(cafile=cafile) if use_tls else None
    gate = asyncio.Semaphore(64)
    conns = []

    async def one(i):
        async with gate:
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                 server_hostname="127.0.0.1" if ctx else None)
            w.write(request.format(ch=i % 100).encode())
            await r.readuntil(b"\r\n\r\n")
            conns.append(w)

    await asyncio.gather(*(one(i) for i in range(n)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in conns:
        w.close()


def spawn_holders(srv, n, procs, use_tls, cafile):
    """n subscribers in `procs` client processes; returns them once all are in."""
    out = []
    for k in range(procs):
        share = n // procs + (1 if k < n % procs else 0)
        out.append(subprocess.Popen([sys.executable, __file__, "--hold",
                                     str(srv.tport if use_tls else srv.port), str(share),
                                     srv.sub_request, "tls" if use_tls else "plain", cafile],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for p in out:
        line = p.stdout.readline()
        if line.strip() != "ready":
            sys.exit(f"tls-bench: a client process failed against {srv.name}")
    return out


def release(holders):
    for p in holders:
        p.stdin.close()
    for p in holders:
        p.wait()


def idle_memory(srv, n, use_tls, cafile):
    """KiB of server RSS per idle subscriber."""
    warm = spawn_holders(srv, WARM, 1, use_tls, cafile)
    time.sleep(1)
    base = srv.rss_kib()
    rest = spawn_holders(srv, n, max(1, n // 2500), use_tls, cafile)
    time.sleep(2)
    grown = srv.rss_kib()
    release(rest + warm)
    time.sleep(1)
    return (grown - base) / n


# ---- handshakes -------------------------------------------------------------------------------


def handshakes(srv, mode, version, seconds, clients, cafile):
    """(handshakes/s, handshakes per server CPU-second, reused fraction) with `clients`
    openssl s_time processes."""
    cpu0 = srv.cpu_seconds()
    procs = [subprocess.Popen(["openssl", "s_time", "-connect", f"127.0.0.1:{srv.tport}", mode,
                               version, "-time", str(seconds), "-www", srv.page, "-CAfile", cafile],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(clients)]
    rate, reused, total = 0.0, 0, 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds * 4 + 30)
        m = re.search(r"(\d+) connections in (\d+) real seconds", out)
        if not m:
            sys.exit(f"tls-bench: openssl s_time against {srv.name} said:\n{out[-500:]}")
        rate += int(m.group(1)) / int(m.group(2))
        total += int(m.group(1))
        reused += sum(line.count("r") for line in out.splitlines() if re.fullmatch(r"[*r]+", line))
    cpu = srv.cpu_seconds() - cpu0
    return rate, (total / cpu if cpu else float("nan")), reused / total if total else 0


# ---- main -------------------------------------------------------------------------------------


def client_main(argv):
    port, n, request, mode, cafile = argv
    asyncio.run(hold(int(port), int(n), request, mode == "tls", cafile))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary", nargs="?", default=os.path.join(ROOT, "build", "herald"))
    ap.add_argument("--subscribers", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    if not (shutil.which("nginx") and os.path.exists(NCHAN_MODULE)):
        sys.exit("tls-bench: needs nginx and the nchan module: scripts/install-deps.sh --bench")
    d = tempfile.mkdtemp(prefix="tls-bench-")
    make_cert(d)
    cafile = f"{d}/ca.crt"
    rows = {}
    print(f"tls-bench: {args.subscribers} idle SSE subscribers, {args.clients} s_time clients x "
          f"{args.seconds} s, {args.workers} worker(s) each; {os.cpu_count()} CPUs; "
          f"{subprocess.run(['openssl', 'version'], capture_output=True, text=True).stdout.strip()}; "
          f"{subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}")
    for start in (lambda: start_herald(args.binary, d, args.workers), lambda: start_nchan(d, args.workers)):
        srv = start()
        try:
            r = rows[srv.name] = {}
            # plain first: memory a finished phase freed stays resident and would hide
            # what the next one needs, and plain connections leave little behind
            r["idle KiB/conn, plain"] = idle_memory(srv, args.subscribers, False, cafile)
            r["idle KiB/conn, TLS"] = idle_memory(srv, args.subscribers, True, cafile)
            for label, mode, version in (("full TLS 1.3", "-new", "-tls1_3"),
                                         ("resumed TLS 1.3", "-reuse", "-tls1_3"),
                                         ("resumed TLS 1.2", "-reuse", "-tls1_2")):
                rate, per_cpu, reused = handshakes(srv, mode, version, args.seconds, args.clients, cafile)
                r[f"{label} handshakes/s"] = rate
                r[f"{label} per server CPU-s"] = per_cpu
                if mode == "-reuse" and reused < 0.9:
                    print(f"tls-bench: warning: {srv.name} resumed only {reused:.0%} of {label} sessions")
        finally:
            srv.stop()
    shutil.rmtree(d, ignore_errors=True)
    print(f"\n{'':34} {'herald':>10} {'nchan':>10} {'herald/nchan':>13}")
    for key in rows["herald"]:
        h, n = rows["herald"][key], rows["nchan"][key]
        print(f"{key:34} {h:10.2f} {n:10.2f} {h / n if n else float('nan'):13.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--hold":
        client_main(sys.argv[2:])
    else:
        main()
