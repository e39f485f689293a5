"""TLS listeners (--listen-tls, --api-listen-tls, --tls-cert, --tls-key): https:// and
wss:// on the same endpoints as the plain listeners, with a throwaway CA and server
certificates made by the openssl command line for this module.

What is checked, each with independent clients: curl over https (publish, SSE,
streaming, long-poll); Python ssl + http.client with keep-alive; websockets over
wss://; plain and TLS listeners serving the same channel at once; a message larger
than a TLS record to a subscriber that reads slowly (the write path's back-pressure
under TLS); ALPN http/1.1 (and a client offering only h2 refused); TLS 1.1 refused;
session resumption (TLS 1.2 session ids, TLS 1.3 tickets); the API's same-origin
rule with https origins; SIGHUP reloading the certificate while a wss subscriber
goes on receiving, and a broken file on SIGHUP keeping the old one; a bad path or a
key that does not match stopping start-up; half-open handshakes closed by the
header timeout without delaying others; garbage on the TLS port closed cleanly.
"""

import asyncio
import functools
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import warnings

import pytest
import websockets

from helpers import (
    SSE,
    WAIT,
    Deadline,
    RawConn,
    Stream,
    free_port,
    http_get,
    request,
    sub_query,
    wait_until,
)
from test_browser import QuietHandler, assert_page_received, page_server, run_chromium, run_page  # noqa: F401

OPENSSL_STEPS = [
    "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=herald-test-ca",
    "echo 'subjectAltName=DNS:localhost,IP:127.0.0.1' > server.ext",
    "openssl req $K -keyout server.key -out server.csr -subj /CN=herald-first",
    "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 1001 -days 2 "
    "-extfile server.ext -out server.crt",
    "openssl req $K -keyout second.key -out second.csr -subj /CN=herald-second",
    "openssl x509 -req -in second.csr -CA ca.crt -CAkey ca.key -set_serial 2002 -days 2 "
    "-extfile server.ext -out second.crt",
    "cat server.crt ca.crt > chain.crt",
    "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 3003 -days 0 "
    "-extfile server.ext -out expired.crt",
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """ca.crt; server.crt/key (CN herald-first, serial 1001) and second.crt/key (CN
    herald-second, serial 2002), both for 127.0.0.1 and localhost, valid 2 days;
    chain.crt (server.crt then the CA); expired.crt (server.key's, expired at once).
    Returns path(name)."""
    d = str(tmp_path_factory.mktemp("tls"))
    script = "K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes' && " + " && ".join(OPENSSL_STEPS)
    subprocess.run(["sh", "-c", script], cwd=d, check=True, capture_output=True)
    return lambda name: os.path.join(d, name)


def client_ctx(certs, **kw):
    ctx = ssl.create_default_context(cafile=certs("ca.crt"))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def start_tls(factory, certs, cert="server.crt", key="server.key", api_tls=False, **flags):
    """A herald with a plain listener (srv.port) and a TLS one (srv.tport)."""
    tport = free_port()
    if api_tls:
        flags["api_listen_tls"] = f"127.0.0.1:{free_port()}"
    srv = factory(listen_tls=f"127.0.0.1:{tport}", tls_cert=certs(cert), tls_key=certs(key), **flags)
    srv.tport = tport
    if api_tls:
        srv.api_tport = int(flags["api_listen_tls"].rsplit(":", 1)[1])
    return srv


@pytest.fixture(scope="module")
def tserver(module_herald, certs):
    return start_tls(module_herald, certs)


def https(certs, port, method, path, body=None, headers=None, ctx=None):
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT,
                                       context=ctx or client_ctx(certs))
    try:
        conn.request(method, path, body, headers or {})
        alpn = conn.sock.selected_alpn_protocol()
        resp = conn.getresponse()
        return resp.status, resp.read(), alpn
    finally:
        conn.close()


class TLSConn(RawConn):
    """RawConn over TLS (the test CA, name 127.0.0.1)."""

    def __init__(self, port, ctx, rcvbuf=None):
        super().__init__(port, rcvbuf=rcvbuf)
        self.sock = ctx.wrap_socket(self.sock, server_hostname="127.0.0.1")


def tls_sub(cls, srv, certs, channels, rcvbuf=None):
    """An SSE or Stream subscriber (helpers' parsers) over TLS. Python's ssl would take
    a bare TCP EOF for the end of the stream: not here, a truncated stream must show."""
    sub = cls.__new__(cls)
    ctx = client_ctx(certs)
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    sub.conn = TLSConn(srv.tport, ctx, rcvbuf=rcvbuf)
    sub.conn.send(http_get(cls.path + sub_query(channels)))
    sub.status, sub.headers = sub.conn.read_head()
    sub.lines = []
    assert sub.status == 200, sub.status
    return sub


def peer_cert(certs, port):
    """The subject CN and serial of the certificate a new connection sees."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        with client_ctx(certs).wrap_socket(s, server_hostname="127.0.0.1") as t:
            c = t.getpeercert()
    cn = dict(x[0] for x in c["subject"])["commonName"]
    return cn, int(c["serialNumber"], 16)


def curl(certs, *args, check=True):
    return subprocess.run(["curl", "-sS", "--cacert", certs("ca.crt"), *args],
                          capture_output=True, timeout=WAIT, check=check)


# ---- every transport over https / wss -------------------------------------------------------


def test_curl_publishes_and_subscribes_over_https(tserver, certs, chan):
    base = f"https://127.0.0.1:{tserver.tport}"
    sse = subprocess.Popen(["curl", "-sSN", "--cacert", certs("ca.crt"), f"{base}/sse?channels={chan}"],
                           stdout=subprocess.PIPE)
    stream = subprocess.Popen(["curl", "-sSN", "--cacert", certs("ca.crt"),
                               f"{base}/stream?channels={chan}"], stdout=subprocess.PIPE)
    poller = subprocess.Popen(["curl", "-sS", "--cacert", certs("ca.crt"),
                               f"{base}/poll?channels={chan}"], stdout=subprocess.PIPE)
    try:
        tserver.wait_subscribers(chan, 3)
        out = curl(certs, "-X", "POST", "--data-binary", "over tls", f"{base}/pub/{chan}")
        published = json.loads(out.stdout)
        assert published["subscribers"] == 3
        body, _ = poller.communicate(timeout=WAIT)
        assert poller.returncode == 0
        assert [m["data"] for m in json.loads(body)["messages"]] == ["over tls"]
        for proc in (sse, stream):
            line = b""
            deadline = Deadline(WAIT, "the message through curl")
            while b"over tls" not in line:
                deadline.left()
                line = proc.stdout.readline()
                assert line, "curl's stream ended"
            assert published["id"].encode() in line
    finally:
        for proc in (sse, stream, poller):
            proc.kill()
            proc.wait()


def test_python_ssl_keep_alive_and_alpn(tserver, certs):
    ctx = client_ctx(certs)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    conn = http.client.HTTPSConnection("127.0.0.1", tserver.tport, timeout=WAIT, context=ctx)
    try:
        for _ in range(3):  # one connection, three requests
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
        assert conn.sock.selected_alpn_protocol() == "http/1.1"
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        conn.close()


def test_client_offering_only_h2_is_refused(tserver, certs):
    ctx = client_ctx(certs)
    ctx.set_alpn_protocols(["h2"])
    with pytest.raises(ssl.SSLError, match="(?i)no.application.protocol"):
        https(certs, tserver.tport, "GET", "/healthz", ctx=ctx)


def test_wss_and_ws_side_by_side(tserver, certs, chan):
    async def run():
        tls = websockets.connect(f"wss://127.0.0.1:{tserver.tport}/ws{sub_query(chan)}",
                                 ssl=client_ctx(certs), open_timeout=WAIT)
        plain = websockets.connect(f"ws://127.0.0.1:{tserver.port}/ws{sub_query(chan)}",
                                   open_timeout=WAIT)
        async with tls as a, plain as b:
            await asyncio.to_thread(tserver.wait_subscribers, chan, 2)
            status, body, _ = await asyncio.to_thread(
                https, certs, tserver.tport, "POST", f"/pub/{chan}", b"to both")
            assert status == 201, body
            got = [json.loads(await asyncio.wait_for(ws.recv(), WAIT)) for ws in (a, b)]
            assert [m["data"] for m in got] == ["to both", "to both"]
            # and a publish on the plain listener reaches the wss subscriber
            tserver.publish(chan, b"from plain")
            assert json.loads(await asyncio.wait_for(a.recv(), WAIT))["data"] == "from plain"

    asyncio.run(asyncio.wait_for(run(), 3 * WAIT))


def test_large_messages_to_a_slow_tls_reader(herald, certs, chan):
    """Messages of many records each, to a subscriber that does not read while they are
    published: the socket fills (OpenSSL keeps a record to repeat), and once the client
    reads, every byte arrives in order."""
    srv = start_tls(herald, certs, max_outbound="32MiB", max_body_bytes="1MiB")
    sub = tls_sub(SSE, srv, certs, chan, rcvbuf=4096)
    try:
        srv.wait_subscribers(chan, 1)
        bodies = [(f"{i}:" + chr(ord("a") + i % 26) * 900_000).encode() for i in range(12)]
        for b in bodies:
            srv.publish(chan, b)
        time.sleep(0.5)  # let herald hit the full socket before we read
        got = [m["data"] for m in sub.messages(len(bodies), timeout=3 * WAIT)]
        assert got == [b.decode() for b in bodies]
    finally:
        sub.close()


def test_stream_over_tls(tserver, certs, chan):
    sub = tls_sub(Stream, tserver, certs, chan)
    try:
        tserver.wait_subscribers(chan, 1)
        tserver.publish(chan, b"chunked")
        assert sub.next_message()["data"] == "chunked"
    finally:
        sub.close()


class BIOClient:
    """TLS over a raw socket through memory BIOs: the test decides which records
    leave in which TCP segment."""

    def __init__(self, port, ctx):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="127.0.0.1")
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                self.inc.write(self.sock.recv(65536))
        self.sock.sendall(self.out.read())

    def records(self, *payloads):
        """One TLS record per payload, all sent in one sendall."""
        for p in payloads:
            self.obj.write(p)
        self.sock.sendall(self.out.read())

    def read_until(self, count, marker):
        data = b""
        deadline = Deadline(WAIT, f"{count} x {marker!r}")
        while data.count(marker) < count:
            try:
                data += self.obj.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            self.sock.settimeout(deadline.left())
            chunk = self.sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            self.inc.write(chunk)
        return data

    def close(self):
        self.sock.close()


def test_records_arriving_together_are_all_read(tserver, certs):
    """Several TLS records in one TCP segment: herald reads on past a short read (one
    record per SSL_read) until OpenSSL wants more, or the later ones would wait for a
    readiness edge that never comes."""
    c = BIOClient(tserver.tport, client_ctx(certs))
    try:
        c.records(*[b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"] * 3)
        assert c.read_until(3, b'{"status":"ok"}').count(b"HTTP/1.1 200") == 3
    finally:
        c.close()


@pytest.mark.threads  # the drain runs on every worker
def test_sigterm_drains_tls_subscribers_with_close_notify(herald, certs, chan):
    """SIGTERM: a TLS SSE subscriber gets its reconnect event, then a clean end of the
    TLS stream (close_notify: Python's ssl raises on a bare EOF), and herald exits 0."""
    srv = start_tls(herald, certs)
    sub = tls_sub(SSE, srv, certs, chan)
    try:
        srv.wait_subscribers(chan, 1)
        srv.proc.send_signal(signal.SIGTERM)
        assert sub.next_event().event == "reconnect"
        sub.expect_end()
    finally:
        sub.close()
    assert srv.terminate() == 0


# ---- protocol versions, resumption, origins -------------------------------------------------


def test_tls_1_1_is_refused(tserver, certs):
    ctx = client_ctx(certs)
    with warnings.catch_warnings():  # deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let our client offer it at all
    with pytest.raises(ssl.SSLError) as err:
        https(certs, tserver.tport, "GET", "/healthz", ctx=ctx)
    # the server's protocol_version alert, not a refusal by our own client
    assert "PROTOCOL_VERSION" in str(err.value) or "UNSUPPORTED_PROTOCOL" in str(err.value), err.value


def test_tls_1_2_is_served(tserver, certs):
    ctx = client_ctx(certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    status, _, alpn = https(certs, tserver.tport, "GET", "/healthz", ctx=ctx)
    assert status == 200


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_session_resumption(tserver, certs, version):
    ctx = client_ctx(certs, minimum_version=getattr(ssl.TLSVersion, version),
                     maximum_version=getattr(ssl.TLSVersion, version))

    def get(session=None):
        conn = http.client.HTTPSConnection("127.0.0.1", tserver.tport, timeout=WAIT, context=ctx)
        conn.connect()
        if session is not None:
            conn.sock.close()
            raw = socket.create_connection(("127.0.0.1", tserver.tport), timeout=WAIT)
            conn.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
        sock = conn.sock
        result = sock.session, sock.session_reused
        conn.close()
        return result

    session, reused = get()
    assert not reused
    _, reused = get(session)
    assert reused, f"the {version} session was not resumed"


def test_api_same_origin_is_https_on_tls(herald, certs, chan):
    srv = start_tls(herald, certs)
    host = f"127.0.0.1:{srv.tport}"
    ok, _, _ = https(certs, srv.tport, "POST", f"/pub/{chan}", b"x", {"Origin": f"https://{host}"})
    assert ok == 201
    refused, _, _ = https(certs, srv.tport, "POST", f"/pub/{chan}", b"x", {"Origin": f"http://{host}"})
    assert refused == 403
    # the plain listener's own origin stays http://
    assert srv.request("POST", f"/pub/{chan}", b"x",
                       {"Origin": f"http://127.0.0.1:{srv.port}"}).status == 201


def test_api_listen_tls(herald, certs, chan):
    srv = start_tls(herald, certs, api_tls=True)
    status, body, _ = https(certs, srv.api_tport, "POST", f"/pub/{chan}", b"api over tls")
    assert status == 201, body
    # the subscriber listeners no longer serve the API
    status, _, _ = https(certs, srv.tport, "POST", f"/pub/{chan}", b"x")
    assert status == 404
    assert "publish/admin API on 127.0.0.1:%d over TLS" % srv.api_tport in srv.log()


def test_tsuru_bind_over_https_gives_https_urls(herald, certs):
    """Without --public-url, bind-app builds the app's URLs from the Host it was
    addressed at, and from the scheme: https:// when Tsuru came over TLS."""
    from test_tsuru import KEY, basic, create
    srv = start_tls(herald, certs, admin_key=KEY)
    name = f"tls-{os.getpid()}"
    create(srv, name)
    form = urllib.parse.urlencode({"app-name": "myapp", "app-host": "myapp.example.com"})
    status, body, _ = https(certs, srv.tport, "POST", f"/resources/{name}/bind-app", form.encode(),
                            {"Content-Type": "application/x-www-form-urlencoded",
                             "Accept": "application/json", "Authorization": basic("herald", KEY)})
    assert status == 201, body
    env = json.loads(body)
    assert env["HERALD_URL"] == f"https://127.0.0.1:{srv.tport}/apps/{name}"
    assert env["HERALD_PUBLISH_URL"].startswith("https://")


# ---- reload -----------------------------------------------------------------------------------


@pytest.mark.threads  # the main thread swaps the context while workers accept
def test_sighup_reloads_the_certificate_without_dropping_connections(herald, certs, tmp_path, chan):
    cert, key = str(tmp_path / "live.crt"), str(tmp_path / "live.key")
    shutil.copy(certs("server.crt"), cert)
    shutil.copy(certs("server.key"), key)
    srv = start_tls(herald, lambda n: n, cert=cert, key=key)
    assert peer_cert(certs, srv.tport) == ("herald-first", 1001)

    async def run():
        async with websockets.connect(f"wss://127.0.0.1:{srv.tport}/ws{sub_query(chan)}",
                                      ssl=client_ctx(certs), open_timeout=WAIT) as ws:
            await asyncio.to_thread(srv.wait_subscribers, chan, 1)
            shutil.copy(certs("second.crt"), cert)
            shutil.copy(certs("second.key"), key)
            srv.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(wait_until, lambda: "now serving" in srv.log(), WAIT, "reload")
            assert await asyncio.to_thread(peer_cert, certs, srv.tport) == ("herald-second", 2002)
            srv.publish(chan, b"after reload")
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["data"] == "after reload"

            # A broken file: logged, and the second certificate stays.
            with open(cert, "w") as f:
                f.write("-----BEGIN CERTIFICATE-----\nnot base64\n")
            srv.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(wait_until, lambda: "still serving the previous" in srv.log(),
                                    WAIT, "the failed reload")
            assert await asyncio.to_thread(peer_cert, certs, srv.tport) == ("herald-second", 2002)
            srv.publish(chan, b"still here")
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["data"] == "still here"

    asyncio.run(asyncio.wait_for(run(), 3 * WAIT))
    assert f'"{cert}" (--tls-cert) holds no usable certificate' in srv.log()


# ---- start-up errors ------------------------------------------------------------------------


def start_fails(herald_bin, *args):
    p = subprocess.run([herald_bin, "--listen", f"127.0.0.1:{free_port()}",
                        "--listen-tls", f"127.0.0.1:{free_port()}", *args],
                       capture_output=True, text=True, timeout=WAIT)
    return p.returncode, p.stderr


def test_bad_certificate_files_stop_start_up(herald_bin, certs, tmp_path):
    rc, err = start_fails(herald_bin, "--tls-cert", "/nonexistent/cert.pem", "--tls-key", certs("server.key"))
    assert rc == 1
    assert 'cannot read the TLS certificate "/nonexistent/cert.pem" (--tls-cert): No such file' in err

    rc, err = start_fails(herald_bin, "--tls-cert", certs("server.crt"), "--tls-key", certs("second.key"))
    assert rc == 1
    assert f'the private key "{certs("second.key")}" does not match the certificate' in err

    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    rc, err = start_fails(herald_bin, "--tls-cert", str(junk), "--tls-key", certs("server.key"))
    assert rc == 1 and f'"{junk}" (--tls-cert) holds no usable certificate' in err

    rc, err = start_fails(herald_bin)
    assert rc == 2 and "--listen-tls and --api-listen-tls need --tls-cert FILE" in err


def test_certificates_clients_refuse_are_served_with_a_warning(herald, certs):
    expired = start_tls(herald, certs, cert="expired.crt")
    assert "expired on" in expired.log() and "renew it and send SIGHUP" in expired.log()
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        https(certs, expired.tport, "GET", "/healthz")
    soon = start_tls(herald, certs)  # valid for 2 days: 1 day and hours, or 2 days to the second
    assert re.search(r"expires in (1 day|2 days) \(", soon.log()), soon.log()
    assert https(certs, soon.tport, "GET", "/healthz")[0] == 200


def test_key_in_the_certificate_file_and_chain(herald, certs, tmp_path):
    both = tmp_path / "both.pem"
    both.write_bytes(open(certs("chain.crt"), "rb").read() + open(certs("server.key"), "rb").read())
    tport = free_port()
    srv = herald(listen_tls=f"127.0.0.1:{tport}", tls_cert=str(both))
    status, _, _ = https(certs, tport, "GET", "/healthz")
    assert status == 200
    assert srv.proc.poll() is None


def test_tls_only(herald_bin, certs, tmp_path):
    """--listen "" and a TLS listener: no plain port at all."""
    tport = free_port()
    proc = subprocess.Popen([herald_bin, "--listen", "", "--listen-tls", f"127.0.0.1:{tport}",
                             "--tls-cert", certs("server.crt"), "--tls-key", certs("server.key"),
                             "--workers", "1"], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _healthy(certs, tport), WAIT, "the TLS listener")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert "listening on 127.0.0.1:%d over TLS" % tport in err
    assert "listening on 127.0.0.1:" not in err.replace("over TLS", "").replace(f":{tport}", "")


def _healthy(certs, port):
    try:
        return https(certs, port, "GET", "/healthz")[0] == 200
    except OSError:
        return False


# ---- hostile clients --------------------------------------------------------------------------


def client_hello(certs):
    """The bytes of a real ClientHello (made with a memory BIO, never sent by Python)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(certs).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_half_open_handshakes_time_out_and_block_nobody(herald, certs):
    srv = start_tls(herald, certs, header_timeout="1s")
    hello = client_hello(certs)
    silent = RawConn(srv.tport)
    half = RawConn(srv.tport)
    half.send(hello[: len(hello) // 2])
    try:
        t0 = time.monotonic()
        for _ in range(5):  # others are served meanwhile, at once
            assert https(certs, srv.tport, "GET", "/healthz")[0] == 200
        assert time.monotonic() - t0 < 1.0
        for c in (silent, half):
            c.expect_eof(timeout=5)
        assert time.monotonic() - t0 < 4
    finally:
        silent.close()
        half.close()


@pytest.mark.parametrize("garbage", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP on the TLS port
    bytes(range(256)) * 4,
    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a handshake record with a broken ClientHello
])
def test_garbage_on_the_tls_port_is_closed(tserver, certs, garbage):
    with RawConn(tserver.tport) as c:
        c.send(garbage)
        reply = c.expect_eof(timeout=5)
        assert b"HTTP/1.1" not in reply  # at most a TLS alert
    assert https(certs, tserver.tport, "GET", "/healthz")[0] == 200


# ---- a browser --------------------------------------------------------------------------------


def spki_hash(cert):
    """base64 SHA-256 of the certificate's public key: what Chromium's
    --ignore-certificate-errors-spki-list takes to trust it."""
    script = (f"openssl x509 -in {cert} -pubkey -noout | openssl pkey -pubin -outform der | "
              "openssl dgst -sha256 -binary | base64")
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def tls_page_server(page_server, certs):
    """page_server's directory, served over https by another server (another origin)."""
    root, _ = page_server
    port = free_port()
    handler = functools.partial(QuietHandler, directory=root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(certs("server.crt"), certs("server.key"))
    httpd.socket = sctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, port
    httpd.shutdown()


@pytest.fixture
def chromium_trusting(certs):
    yield from run_chromium(f"--ignore-certificate-errors-spki-list={spki_hash(certs('server.crt'))}")


def test_chromium_subscribes_over_https_and_wss(tserver, certs, chan, tls_page_server, chromium_trusting):
    """An https page of another origin: EventSource over https and WebSocket over wss
    (an https page may use nothing else)."""
    root, page_port = tls_page_server
    first, second, got = run_page(chromium_trusting, tserver, chan, root,
                                  f"https://127.0.0.1:{page_port}/index.html",
                                  f"https://127.0.0.1:{tserver.tport}")
    assert_page_received(got, first, second, chan)


def test_listener_configuration_errors(herald_bin, certs):
    port = free_port()
    p = subprocess.run([herald_bin, "--listen", f"127.0.0.1:{port}", "--listen-tls", f"127.0.0.1:{port}",
                        "--tls-cert", certs("server.crt"), "--tls-key", certs("server.key")],
                       capture_output=True, text=True, timeout=WAIT)
    assert p.returncode == 2
    assert f"127.0.0.1:{port} is in both --listen and --listen-tls" in p.stderr
    p = subprocess.run([herald_bin, "--listen", ""], capture_output=True, text=True, timeout=WAIT)
    assert p.returncode == 2 and "no listener" in p.stderr


def test_tls_figures_in_stats_and_metrics(herald, certs):
    s = start_tls(herald, certs, header_timeout="1s")
    ctx = client_ctx(certs, maximum_version=ssl.TLSVersion.TLSv1_2)

    def get(session=None):
        raw = socket.create_connection(("127.0.0.1", s.tport), timeout=WAIT)
        sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while sock.recv(4096):
            pass
        out = sock.session
        sock.close()
        return out

    session = get()
    get(session)
    # Two that never finish a handshake: garbage, and a client that says nothing.
    with socket.create_connection(("127.0.0.1", s.tport), timeout=WAIT) as g:
        g.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            g.recv(100)  # herald closes it (a reset: unread bytes)
        except ConnectionResetError:
            pass
    held = socket.create_connection(("127.0.0.1", s.tport), timeout=WAIT)

    def tls():
        return request(s.port, "GET", "/stats").json()["tls"]

    wait_until(lambda: tls()["failed"] >= 1 and tls()["connections"] == 1, what="TLS figures")
    st = tls()
    assert st["handshakes"] == 2 and st["resumed"] == 1, st
    held.close()
    wait_until(lambda: tls()["connections"] == 0 and tls()["failed"] == 2, what="silent client")
    text = request(s.port, "GET", "/metrics").body.decode()
    assert "herald_tls_handshakes_total 2" in text
    assert "herald_tls_sessions_resumed_total 1" in text
    assert "herald_tls_handshakes_failed_total 2" in text
    assert "herald_tls_connections 0" in text
    # Without TLS listeners there is no "tls" member.
    plain = herald()
    assert "tls" not in request(plain.port, "GET", "/stats").json()
