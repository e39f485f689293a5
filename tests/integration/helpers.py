"""Clients and a process wrapper for herald's integration tests.

Everything here talks to a real herald process over real loopback sockets:
`Herald` starts and stops the binary; `RawConn` is a byte-level HTTP client
(for malformed input and for streams we must watch byte by byte); `SSE`,
`Stream` and `RawWS` parse server-sent events, NDJSON and WebSocket frames
incrementally on top of it; the asyncio helpers wrap the `websockets` client
library. Every wait is bounded: WAIT is the default bound, generous enough for
the AddressSanitizer build, and a wait returns as soon as its event happens.
"""

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field

import websockets

WAIT = 10.0  # bound on any single wait for an event
# The first line of a report by AddressSanitizer, UBSan, LeakSanitizer or ThreadSanitizer
# (a data race, a lock-order inversion, or a fatal TSan error).
SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "LeakSanitizer",
    "WARNING: ThreadSanitizer",
    "ThreadSanitizer:",
)
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ---- waiting --------------------------------------------------------------------------------


class Deadline:
    """A point in time; left() is the time remaining, raising TimeoutError once it has passed."""

    def __init__(self, seconds, what="event"):
        self.end = time.monotonic() + seconds
        self.what = what

    def left(self):
        rest = self.end - time.monotonic()
        if rest <= 0:
            raise TimeoutError(f"timed out waiting for {self.what}")
        return rest


def wait_until(predicate, timeout=WAIT, what="condition", interval=0.02):
    """Polls predicate() until it returns a truthy value (returned); fails after timeout."""
    deadline = Deadline(timeout, what)
    while True:
        value = predicate()
        if value:
            return value
        time.sleep(min(interval, deadline.left()))


def listens(pid, port):
    """Whether process pid holds the socket listening on TCP port (IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{inode}]")
        except OSError:
            continue
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            pass
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the server process ---------------------------------------------------------------------


def flag_args(opts):
    """{"heartbeat": "300ms", "ws_publish": True} -> ["--heartbeat", "300ms", "--ws-publish"]."""
    args = []
    for name, value in opts.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


class Herald:
    """One herald process on free loopback ports, its stderr captured to a file."""

    DEFAULTS = {"workers": 2, "shutdown_timeout": "3s"}

    def __init__(self, binary, logdir, env=None, api=False, nofile=None, **opts):
        self.binary = binary
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) for the process, when given
        self.opts = {**self.DEFAULTS, **opts}
        self.env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", **(env or {})}
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.env.setdefault("TSAN_OPTIONS", "second_deadlock_stack=1")
        self.api = api
        self.logdir = logdir
        self.proc = None
        self.returncode = None
        self.blamed = False  # a sanitizer report was already pinned on a test

    # lifecycle

    def start(self):
        for _ in range(5):
            self.port = free_port()
            self.api_port = free_port() if self.api else self.port
            self.log_path = os.path.join(self.logdir, f"herald-{self.port}.log")
            self._spawn("wb")
            if self._wait_ready():
                return self
            if "cannot listen" not in self.log():  # lost a race for the port: try another
                break
        raise AssertionError(f"herald did not become ready:\n{self.log()}")

    def _spawn(self, log_mode):
        args = ["--listen", f"127.0.0.1:{self.port}"] + flag_args(self.opts)
        if self.api:
            args += ["--api-listen", f"127.0.0.1:{self.api_port}"]
        with open(self.log_path, log_mode) as log:
            self.proc = subprocess.Popen(
                [self.binary] + args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                preexec_fn=self._limits if self.nofile else None,
            )

    def restart(self):
        """Stops it as stop() does (SIGTERM, exit 0, no sanitizer report) and starts it
        again with the same flags on the same port(s): what it held in memory is gone,
        its clients reconnect to the same address. The log goes on in the same file."""
        self.stop()
        self.returncode = None
        self._spawn("ab")
        if not self._wait_ready():
            raise AssertionError(f"herald did not restart on port {self.port}:\n{self.log_tail()}")

    def _limits(self):
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def _wait_ready(self):
        deadline = Deadline(WAIT, "herald /healthz")
        while self.proc.poll() is None:
            try:
                # Ours, not another process that took the port between free_port() and
                # our bind (a parallel test): that one would answer, and ours would die.
                if (request(self.port, "GET", "/healthz", timeout=1).status == 200
                        and listens(self.proc.pid, self.port)):
                    return True
            except OSError:
                pass
            time.sleep(min(0.02, deadline.left()))
        return False

    def shutdown_bound(self):
        """Seconds a SIGTERM may take: the drain bound plus slack for a slow (ASan) binary."""
        return parse_duration(self.opts.get("shutdown_timeout", "10s")) + 8

    def terminate(self, timeout=None):
        """Sends SIGTERM; returns the exit code, failing if it takes longer than the bound."""
        if self.returncode is not None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout or self.shutdown_bound())
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.returncode = self.proc.wait()
            raise AssertionError(f"herald did not exit after SIGTERM:\n{self.log_tail()}")
        return self.returncode

    def kill(self):
        """SIGKILL, as in a crash: the teardown then expects no clean exit of it."""
        self.proc.kill()
        self.returncode = self.proc.wait()
        self.killed = True

    def stop(self):
        """Teardown: SIGTERM, exit code 0 within the bound, and no sanitizer report."""
        rc = self.terminate()
        if self.blamed or getattr(self, "killed", False):
            return  # its report already failed the test that caused it; or a test killed it
        report = self.sanitizer_report()
        assert report is None, f"sanitizer report in herald's log:\n{report}"
        assert rc == 0, f"herald exited with {rc}:\n{self.log_tail()}"

    def log(self):
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def log_tail(self, lines=80):
        return "\n".join(self.log().splitlines()[-lines:])

    def sanitizer_report(self):
        text = self.log()
        hits = [text.find(m) for m in SANITIZER_MARKERS if m in text]
        return text[max(0, min(hits) - 200):][:20000] if hits else None

    # HTTP conveniences

    def request(self, method, path, body=None, headers=None, api=None, **kw):
        port = self.api_port if api or (api is None and is_api_path(path)) else self.port
        return request(port, method, path, body, headers, **kw)

    def get_json(self, path, status=200):
        r = self.request("GET", path)
        assert r.status == status, (path, r.status, r.body)
        return r.json()

    def publish(self, channel, body=b"", content_type="text/plain", headers=None, status=201):
        """POST /pub/{channel}; returns the decoded answer after checking its status."""
        hdrs = {"Content-Type": content_type} if content_type else {}
        hdrs.update(headers or {})
        r = self.request("POST", "/pub/" + channel, as_bytes(body), hdrs)
        assert r.status == status, (r.status, r.body)
        return r.json()

    def publish_json(self, doc, status=201):
        """POST /api/publish with a JSON document."""
        r = self.request("POST", "/api/publish", json.dumps(doc), JSON_TYPE)
        assert r.status == status, (r.status, r.body)
        return r.json()

    def publish_many(self, channel, bodies, ids=None):
        """Publishes each body over one keep-alive connection; returns the ids in order
        (appended to `ids` as they come, when given: a thread can watch them grow)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=WAIT)
        try:
            ids = [] if ids is None else ids
            for body in bodies:
                conn.request("POST", "/pub/" + channel, as_bytes(body), {"Content-Type": "text/plain"})
                resp = conn.getresponse()
                data = resp.read()
                assert resp.status == 201, (resp.status, data)
                ids.append(json.loads(data)["id"])
            return ids
        finally:
            conn.close()

    def history(self, channels, since="0"):
        """Everything retained after `since` (one immediate long-poll)."""
        status, body = poll(self, channels, since=since, timeout=0)
        assert status == 200, body
        return body["messages"]

    def stats(self, query=""):
        return self.get_json("/stats" + query)

    def channel(self, name):
        """GET /api/channels/{name}: the info, or None when the channel does not exist."""
        r = self.request("GET", "/api/channels/" + name)
        assert r.status in (200, 404), (r.status, r.body)
        return r.json() if r.status == 200 else None

    def wait_subscribers(self, channel, n=1):
        """Waits until the channel has exactly n subscribers (a subscriber is in place). A
        channel that does not exist has none: one that only had subscribers goes with them."""
        wait_until(
            lambda: (self.channel(channel) or {"subscribers": 0})["subscribers"] == n,
            what=f"{n} subscriber(s) on {channel}",
        )

    def rss_kib(self):
        """Resident memory of the process, in KiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def sanitized(self):
        """Whether this is a sanitizer build (resident memory then says little)."""
        with open(f"/proc/{self.proc.pid}/maps") as f:
            maps = f.read()
        return "libasan" in maps or "libtsan" in maps

    def ws_url(self, query=""):
        return f"ws://127.0.0.1:{self.port}/ws{query}"


class UnreadyHerald(Herald):
    """A node expected never to reach Redis: started once /healthz answers at all (it
    answers 503 while Redis is unreachable)."""

    def _wait_ready(self):
        deadline = Deadline(WAIT, "herald /healthz")
        while self.proc.poll() is None:
            try:
                request(self.port, "GET", "/healthz", timeout=1)
                return True
            except OSError:
                time.sleep(min(0.02, deadline.left()))
        return False


def is_api_path(path):
    return path.startswith(("/pub/", "/api", "/stats", "/metrics"))


def parse_duration(text):
    text = str(text)
    for suffix, scale in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


# ---- plain HTTP -----------------------------------------------------------------------------

JSON_TYPE = {"Content-Type": "application/json"}


def as_bytes(body):
    return body.encode() if isinstance(body, str) else body


@dataclass
class Response:
    status: int
    headers: dict  # lower-case names
    body: bytes
    reason: str = ""

    def json(self):
        return json.loads(self.body)

    def error(self):
        """The JSON error document {"error","detail"}, checked for shape."""
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        doc = self.json()
        assert set(doc) == {"error", "detail"}, doc
        assert isinstance(doc["error"], str) and doc["error"], doc
        assert isinstance(doc["detail"], str) and doc["detail"], doc
        return doc


def request(port, method, path, body=None, headers=None, timeout=WAIT, host="127.0.0.1"):
    """One request on a fresh http.client connection."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        return Response(resp.status, hdrs, data, resp.reason)
    finally:
        conn.close()


def poll(srv, channels, since=None, timeout=None, conn=None, extra=""):
    """GET /poll; returns (status, decoded body). Reuses `conn` (keep-alive) when given.
    channels None: none named (a token's user only)."""
    query = {"channels": channels} if channels is not None else {}
    if since is not None:
        query["since"] = since
    if timeout is not None:
        query["timeout"] = timeout
    path = "/poll?" + urllib.parse.urlencode(query, safe=",") + extra
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT + 30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        if own:
            conn.close()


class Closing:
    """`with x:` closes x."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- raw sockets ----------------------------------------------------------------------------


class RawConn(Closing):
    """A TCP connection read through a buffer, every read bounded by a deadline."""

    def __init__(self, port, rcvbuf=None, host="127.0.0.1", source=None):
        self.sock = socket.socket()
        if source:  # another client address, e.g. 127.0.0.2
            self.sock.bind((source, 0))
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.eof = False

    def send(self, data):
        self.sock.sendall(as_bytes(data))

    def close(self):
        self.sock.close()

    def _fill(self, deadline):
        """Reads what is available into the buffer; False at EOF (or reset)."""
        if self.eof:
            return False
        self.sock.settimeout(deadline.left())
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"timed out waiting for {deadline.what}") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, sep, timeout=WAIT, what=None):
        deadline = Deadline(timeout, what or repr(sep))
        while (i := self.buf.find(sep)) < 0:
            if not self._fill(deadline):
                raise EOFError(f"connection closed before {deadline.what}: {bytes(self.buf)!r}")
        return self._take(i + len(sep))

    def read_exact(self, n, timeout=WAIT):
        deadline = Deadline(timeout, f"{n} bytes")
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        return self._take(n)

    def read_to_eof(self, timeout=WAIT):
        """Everything until the peer closes."""
        deadline = Deadline(timeout, "the server to close the connection")
        while self._fill(deadline):
            pass
        return self._take(len(self.buf))

    def read_head(self, timeout=WAIT):
        """Status line and headers: (status, {lower-case name: value})."""
        head = self.read_until(b"\r\n\r\n", timeout, "a response head").decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    def read_chunk(self, timeout=WAIT):
        """One chunk of a chunked body; b"" for the last one."""
        size = int(self.read_until(b"\r\n", timeout, "a chunk size").split(b";")[0], 16)
        data = self.read_exact(size + 2, timeout)
        assert data.endswith(b"\r\n"), data
        return data[:-2]

    def read_response(self, timeout=WAIT, head_only_body=False):
        """A whole response (Content-Length, chunked or close-delimited body)."""
        status, headers = self.read_head(timeout)
        if status in (100, 101, 204, 304) or head_only_body:
            body = b""
        elif "content-length" in headers:
            body = self.read_exact(int(headers["content-length"]), timeout)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b"".join(iter(lambda: self.read_chunk(timeout), b""))
            self.read_until(b"\r\n", timeout)
        else:
            body = self.read_to_eof(timeout)
        return Response(status, headers, body)

    def expect_eof(self, timeout=WAIT):
        """Asserts the server closes the connection (whatever it still sends is returned)."""
        return self.read_to_eof(timeout)


def raw_request(port, data, timeout=WAIT):
    """Sends raw bytes on a fresh connection and reads one response."""
    with RawConn(port) as c:
        c.send(data)
        return c.read_response(timeout)


def http_bytes(method, path, headers=None, body=None, version="1.1"):
    """Bytes of a request (Host first; Content-Length added for a body unless given)."""
    headers = dict(headers or {})
    if body is not None:
        body = as_bytes(body)
        headers.setdefault("Content-Length", len(body))
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def http_get(path, headers=None, version="1.1"):
    return http_bytes("GET", path, headers, version=version)


def http_post(path, body=None, headers=None, version="1.1"):
    """A POST; with body None only the head (the test sends the body itself)."""
    return http_bytes("POST", path, headers, body, version)


# ---- Server-Sent Events and NDJSON streams ---------------------------------------------------


@dataclass
class SSEBlock:
    """One blank-line-terminated block of an event stream."""

    comments: list = field(default_factory=list)
    id: str = None
    event: str = None
    data: str = None
    retry: str = None

    def json(self):
        return json.loads(self.data)


def sub_query(channels, **params):
    query = {"channels": channels, **{k: v for k, v in params.items() if v is not None}}
    return "?" + urllib.parse.urlencode(query, safe=",:/@")


class SubscriberStream(Closing):
    """The response of a streaming subscriber endpoint: head read, body still open."""

    path = None

    def __init__(self, srv, channels, headers=None, rcvbuf=None, version="1.1", **params):
        self.conn = RawConn(srv.port, rcvbuf=rcvbuf)
        self.conn.send(http_get(self.path + sub_query(channels, **params), headers, version))
        self.status, self.headers = self.conn.read_head()
        self.body = None
        if self.status != 200:
            self.body = self.conn.read_exact(int(self.headers.get("content-length", 0)))

    def close(self):
        self.conn.close()


class SSE(SubscriberStream):
    """GET /sse, parsed block by block as the bytes arrive."""

    path = "/sse"

    def next_block(self, timeout=WAIT):
        """The next block, or None when the server closed the stream."""
        try:
            data = self.conn.read_until(b"\n\n", timeout, "an SSE block")
        except EOFError:
            assert not self.conn.buf, f"stream ended inside a block: {bytes(self.conn.buf)!r}"
            return None
        try:
            raw = data.decode()
        except UnicodeDecodeError:
            raise AssertionError(f"an SSE block that is not UTF-8: {data[:200]!r}") from None
        block = SSEBlock()
        self.last_id = getattr(self, "last_id", None)
        for line in raw[:-2].split("\n"):
            if line.startswith(":"):
                block.comments.append(line[1:])
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                block.data = value if block.data is None else block.data + "\n" + value
            elif name in ("id", "event", "retry"):
                setattr(block, name, value)
        if block.id is not None:
            self.last_id = block.id  # what a browser sends back as Last-Event-ID
        return block

    def next_event(self, timeout=WAIT):
        """The next dispatched event (a block with data), skipping comments and retry."""
        deadline = Deadline(timeout, "an SSE event")
        while True:
            block = self.next_block(deadline.left())
            assert block is not None, "the server closed the event stream"
            if block.data is not None:
                return block

    def messages(self, n, timeout=WAIT):
        """The next n events, as decoded envelopes (checking each id line matches)."""
        deadline = Deadline(timeout, f"{n} SSE events")
        out = []
        for _ in range(n):
            block = self.next_event(deadline.left())
            doc = block.json()
            if doc.get("event") == "message" and "." not in (block.id or ""):
                assert block.id == doc["id"], (block.id, doc)  # else a per-channel cursor
            out.append(doc)
        return out

    def next_message(self, timeout=WAIT):
        return self.messages(1, timeout)[0]

    def expect_end(self, code=None, timeout=WAIT):
        """Asserts the server ends the stream (close-delimited) with no further event."""
        block = self.next_block(timeout)
        assert block is None, f"expected the end of the stream, got {block}"


class Stream(SubscriberStream):
    """GET /stream: chunked NDJSON, one envelope per line, empty lines are heartbeats."""

    path = "/stream"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lines = []

    def next_line(self, timeout=WAIT):
        """The next line ("" for a heartbeat), or None at the end of the body."""
        deadline = Deadline(timeout, "an NDJSON line")
        while not self.lines:
            chunk = self.conn.read_chunk(deadline.left())
            if chunk == b"":
                return None
            assert chunk.endswith(b"\n"), chunk  # each chunk carries whole lines
            self.lines += chunk.decode()[:-1].split("\n")
        return self.lines.pop(0)

    def next_message(self, timeout=WAIT):
        deadline = Deadline(timeout, "an NDJSON message")
        while True:
            line = self.next_line(deadline.left())
            assert line is not None, "the server ended the stream"
            if line:
                return json.loads(line)

    def messages(self, n, timeout=WAIT):
        deadline = Deadline(timeout, f"{n} NDJSON messages")
        return [self.next_message(deadline.left()) for _ in range(n)]

    def expect_end(self, code=None, timeout=WAIT):
        """Asserts the terminating chunk comes next, then the connection closes."""
        line = self.next_line(timeout)
        assert line is None, f"expected the end of the stream, got {line!r}"
        self.conn.expect_eof(timeout)


# ---- WebSocket over a raw socket -------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


@dataclass
class Frame:
    fin: bool
    rsv: int  # the three RSV bits, RSV1 = 4
    opcode: int
    payload: bytes

    def close_code(self):
        assert self.opcode == OP_CLOSE, self
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005

    def json(self):
        assert self.opcode == OP_TEXT, self
        return json.loads(self.payload)


def ws_key():
    return base64.b64encode(os.urandom(16)).decode()


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_handshake(path="/ws", key=None, version="13", extra=None):
    """Bytes of a client handshake; pass a header value None to leave it out."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key or ws_key(),
        "Sec-WebSocket-Version": version,
    }
    headers.update(extra or {})
    return http_get(path, {k: v for k, v in headers.items() if v is not None})


def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length_bytes=None):
    """One client frame; length_bytes forces a 16- or 64-bit length encoding."""
    payload = as_bytes(payload)
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if length_bytes == 8 or (length_bytes is None and n > 0xFFFF):
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    elif length_bytes == 2 or (length_bytes is None and n > 125):
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | n])
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWS(Closing):
    """A WebSocket client that sends exactly the frames a test asks for."""

    def __init__(self, srv, query="", extra=None, rcvbuf=None, trailing=b"", source=None):
        self.conn = RawConn(srv.port, rcvbuf=rcvbuf, source=source)
        key = ws_key()
        self.conn.send(ws_handshake("/ws" + query, key, extra=extra) + trailing)
        self.status, self.headers = self.conn.read_head()
        assert self.status == 101, (self.status, self.headers, self.conn.buf)
        assert self.headers["sec-websocket-accept"] == ws_accept(key)

    def close(self):
        self.conn.close()

    def send_frame(self, opcode, payload=b"", **kw):
        self.conn.send(encode_frame(opcode, payload, **kw))

    def send_json(self, doc):
        self.send_frame(OP_TEXT, json.dumps(doc))

    def recv_frame(self, timeout=WAIT):
        deadline = Deadline(timeout, "a WebSocket frame")
        b0, b1 = self.conn.read_exact(2, deadline.left())
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.conn.read_exact(2, deadline.left()))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.conn.read_exact(8, deadline.left()))[0]
        payload = self.conn.read_exact(n, deadline.left())
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload)

    def recv_json(self, timeout=WAIT):
        """The next text message (server pings are skipped, not answered)."""
        deadline = Deadline(timeout, "a WebSocket text message")
        while True:
            f = self.recv_frame(deadline.left())
            if f.opcode != OP_PING:
                return f.json()

    def messages(self, n, timeout=WAIT):
        deadline = Deadline(timeout, f"{n} WebSocket messages")
        return [self.recv_json(deadline.left()) for _ in range(n)]

    def next_message(self, timeout=WAIT):
        return self.recv_json(timeout)

    def expect_end(self, code=1000, timeout=WAIT):
        assert self.expect_close(code, timeout) == []

    def expect_close(self, code, timeout=WAIT):
        """Reads up to the server's close frame, asserts its code and that the TCP
        connection then ends. Returns the frames seen before the close."""
        deadline = Deadline(timeout, f"a close frame with code {code}")
        seen = []
        while (f := self.recv_frame(deadline.left())).opcode != OP_CLOSE:
            seen.append(f)
        assert f.close_code() == code, (f.close_code(), f.payload, seen)
        self.reason = f.payload[2:].decode()
        after = self.conn.expect_eof(deadline.left())
        assert after == b"", f"bytes after the close frame (RFC 6455 5.5.1): {after!r}"
        return seen


# ---- one interface over the four transports ----------------------------------------------


class ApiStream(Closing):
    """An SSE stream on the API listener (GET /stats/stream, /api/tail), read one decoded
    event at a time."""

    def __init__(self, srv, headers=None, path="/stats/stream", timeout=WAIT):
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.api_port, timeout=timeout)
        self.conn.request("GET", path, headers=headers or {})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.buf = b""
        self.pending = []

    def next_pair(self):
        """The next event that has data: (its event name, its JSON)."""
        while not self.pending:
            data = self.resp.read1(65536)
            assert data, "the stream ended"
            self.buf += data
            while b"\n\n" in self.buf:
                block, self.buf = self.buf.split(b"\n\n", 1)
                kind, payload = "message", None
                for line in block.split(b"\n"):
                    if line.startswith(b"event: "):
                        kind = line[7:].decode()
                    elif line.startswith(b"data: "):
                        payload = json.loads(line[6:])
                if payload is not None:
                    self.pending.append((kind, payload))
        return self.pending.pop(0)

    def next_event(self):
        """The next event's JSON (/stats/stream: one a second)."""
        return self.next_pair()[1]

    def close(self):
        self.conn.close()


class Poller(Closing):
    """A long-polling loop that keeps its cursor: messages(n) polls until n events came."""

    def __init__(self, srv, channels, since=None, extra=""):
        self.srv, self.channels, self.cursor, self.extra = srv, channels, since, extra
        self.pending = []
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT + 5)

    def messages(self, n, timeout=WAIT):
        deadline = Deadline(timeout, f"{n} long-poll messages")
        while len(self.pending) < n:
            wait = max(1, min(int(deadline.left()), 30))
            status, body = poll(self.srv, self.channels, self.cursor, wait, conn=self.conn,
                                extra=self.extra)
            assert status == 200, body
            self.pending += body["messages"]
            self.cursor = body["cursor"]
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def next_message(self, timeout=WAIT):
        return self.messages(1, timeout)[0]

    def close(self):
        self.conn.close()


def ws_subscriber(srv, channels, since=None, **kw):
    return RawWS(srv, sub_query(channels, since=since), **kw)


SUBSCRIBERS = {
    "ws": ws_subscriber,
    "sse": lambda srv, channels, since=None, **kw: SSE(srv, channels, since=since, **kw),
    "stream": lambda srv, channels, since=None, **kw: Stream(srv, channels, since=since, **kw),
    "poll": Poller,
}
TRANSPORTS = list(SUBSCRIBERS)


def subscribe(kind, srv, channels, since=None, **kw):
    """A subscriber on one of the transports with messages(n) / next_message() / close()."""
    return SUBSCRIBERS[kind](srv, channels, since=since, **kw)


# ---- WebSocket with the websockets library --------------------------------------------------


def arun(coro, timeout=WAIT * 3):
    """Runs a coroutine to completion with an overall bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_connect(srv, query="", **kw):
    """websockets.connect to /ws; the client sends no pings of its own unless asked."""
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", WAIT)
    kw.setdefault("close_timeout", WAIT)
    return websockets.connect(srv.ws_url(query), **kw)


async def recv_json(ws, timeout=WAIT):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def ws_op(ws, op, timeout=WAIT):
    """Sends a JSON op and returns the next message (the answer)."""
    await ws.send(json.dumps(op))
    return await recv_json(ws, timeout)


async def ws_messages(ws, n, timeout=WAIT):
    return [await recv_json(ws, timeout) for _ in range(n)]


async def expect_ws_closed(ws, code, timeout=WAIT):
    """Waits for the server to close the connection with `code`."""
    try:
        extra = await asyncio.wait_for(ws.recv(), timeout)
        raise AssertionError(f"expected a close {code}, got a message: {extra}")
    except websockets.ConnectionClosed:
        pass
    assert ws.close_code == code, (ws.close_code, ws.close_reason)


async def athread(fn, *args, **kw):
    """Runs a blocking helper (publish, stats) without stalling the event loop."""
    return await asyncio.to_thread(fn, *args, **kw)


# ---- subscriber tokens ----------------------------------------------------------------------


def jwt_hs256(secret, claims):
    """A JWT (RFC 7519) with these claims, signed HS256 with secret."""

    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


# ---- messages -------------------------------------------------------------------------------


def ids_of(messages):
    return [m["id"] for m in messages]


def data_of(messages):
    return [m["data"] for m in messages]


def numbered(n, prefix="m"):
    return [f"{prefix}{i}" for i in range(n)]
