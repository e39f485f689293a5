"""Bad HTTP input (docs/api.md#errors): every error gets its status and a JSON
{"error","detail"} body, including 408 for a slowloris client, while a good
subscriber on the same server keeps receiving every message."""

import select
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import SSE, RawConn

HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def srv(module_herald):
    return module_herald(header_timeout="1s", max_body_bytes="4KiB")


def req(head, body=b""):
    """A request from its request line and header lines."""
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


POST = "POST /pub/errors HTTP/1.1"
HOST = "Host: localhost"

# name: (bytes sent, status, error name, whether the server then closes the connection)
CASES = {
    "431 huge header": (req(["GET /healthz HTTP/1.1", HOST, "X-Big: " + "a" * 9000]), 431, "headers_too_large", True),
    "431 too many headers": (req(["GET /healthz HTTP/1.1", HOST] + [f"X-{i}: y" for i in range(80)]), 431, "headers_too_large", True),
    "414 long uri": (req(["GET /" + "a" * 5000 + " HTTP/1.1", HOST]), 414, "uri_too_long", True),
    "413 content-length": (req([POST, HOST, "Content-Length: 5000"]), 413, "body_too_large", True),
    "413 chunked": (req([POST, HOST, "Transfer-Encoding: chunked"], b"1000\r\n" + b"z" * 4096 + b"\r\n1\r\nz\r\n0\r\n\r\n"), 413, "body_too_large", True),
    "411 no length": (req([POST, HOST]), 411, "length_required", True),
    "400 garbage": (b"GARBAGE\r\n\r\n", 400, "bad_request", True),
    "400 header without colon": (req(["GET /healthz HTTP/1.1", HOST, "No colon here"]), 400, "bad_request", True),
    "400 double space": (req(["GET  /healthz HTTP/1.1", HOST]), 400, "bad_request", True),
    "400 bad content-length": (req([POST, HOST, "Content-Length: 12abc"]), 400, "bad_length", True),
    "400 conflicting content-length": (req([POST, HOST, "Content-Length: 1", "Content-Length: 2"], b"xx"), 400, "bad_length", True),
    "400 content-length with chunked": (req([POST, HOST, "Content-Length: 3", "Transfer-Encoding: chunked"], b"0\r\n\r\n"), 400, "bad_length", True),
    "400 bad chunk size": (req([POST, HOST, "Transfer-Encoding: chunked"], b"zz\r\nabc\r\n0\r\n\r\n"), 400, "bad_chunked_body", True),
    "501 gzip": (req([POST, HOST, "Transfer-Encoding: gzip"], b"x"), 501, "transfer_encoding", True),
    "501 gzip, chunked": (req([POST, HOST, "Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n"), 501, "transfer_encoding", True),
    "505 http/2.0": (req(["GET /healthz HTTP/2.0", HOST]), 505, "http_version", True),
    "505 http/1.2": (req(["GET /healthz HTTP/1.2", HOST]), 505, "http_version", True),
    "400 missing host": (req(["GET /healthz HTTP/1.1"]), 400, "missing_host", True),
    "400 two hosts": (req(["GET /healthz HTTP/1.1", HOST, "Host: y"]), 400, "bad_request", True),
    "405 get on publish": (req(["GET /pub/errors HTTP/1.1", HOST]), 405, "method_not_allowed", False),
    "404 unknown path": (req(["GET /nowhere HTTP/1.1", HOST]), 404, "not_found", False),
}


def check_case(srv, data, status, error, closes):
    with RawConn(srv.port) as c:
        c.send(data)
        r = c.read_response()
        assert r.status == status, (r.status, r.body)
        assert r.error()["error"] == error
        if closes:
            c.expect_eof()
        else:  # the connection stays usable
            c.send(req(["GET /healthz HTTP/1.1", HOST]))
            assert c.read_response().status == 200
    return r


@pytest.mark.parametrize("data, status, error, closes", CASES.values(), ids=CASES.keys())
def test_error_answers(srv, data, status, error, closes):
    r = check_case(srv, data, status, error, closes)
    # a server that is going to close says so (RFC 9112 §9.6)
    assert (r.headers.get("connection") == "close") == closes, r.headers


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("GET", "/pub/x", {"POST"}),
        ("DELETE", "/sse", {"GET", "OPTIONS"}),
        ("POST", "/ws", {"GET", "OPTIONS"}),
        ("POST", "/stats", {"GET"}),
        ("PUT", "/api/publish", {"POST"}),
        ("DELETE", "/api/channels", {"GET"}),
    ],
)
def test_405_names_the_allowed_methods(srv, method, path, allow):
    r = srv.request(method, path, b"{}" if method in ("POST", "PUT") else None)
    assert r.status == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == allow
    r.error()


def slowloris(srv, data=b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100, interval=0.1):
    """Trickles a request a byte per interval until the server answers (10 s at most);
    returns (seconds from the first byte to the answer, the answer)."""
    with RawConn(srv.port) as c:
        start = time.monotonic()
        for byte in data:
            if select.select([c.sock], [], [], interval)[0]:
                break  # the server has answered
            c.send(bytes([byte]))
        r = c.read_response(timeout=10)
        elapsed = time.monotonic() - start
        c.expect_eof()
    return elapsed, r


def check_slowloris(srv):
    elapsed, r = slowloris(srv)
    assert r.status == 408, (r.status, r.body)
    assert r.error()["error"] == "request_timeout"
    # one deadline per request: trickling bytes does not extend it
    assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + 3, elapsed


def test_slowloris_gets_408(srv):
    check_slowloris(srv)


def test_incomplete_body_gets_408(srv):
    with RawConn(srv.port) as c:
        start = time.monotonic()
        c.send(req([POST, HOST, "Content-Length: 10"], b"12345"))
        r = c.read_response(timeout=10)
        assert r.status == 408 and r.error()["error"] == "request_timeout"
        assert HEADER_TIMEOUT - 0.1 <= time.monotonic() - start < HEADER_TIMEOUT + 3
        c.expect_eof()


def test_idle_connection_is_closed_at_the_header_timeout(srv):
    with RawConn(srv.port) as c:
        start = time.monotonic()
        assert c.expect_eof(timeout=10) == b""  # nothing asked, nothing answered
        assert HEADER_TIMEOUT - 0.1 <= time.monotonic() - start < HEADER_TIMEOUT + 3


def test_oversize_body_with_expect_gets_413_without_100_continue(srv):
    with RawConn(srv.port) as c:
        c.send(req([POST, HOST, "Content-Length: 100000", "Expect: 100-continue"]))
        r = c.read_response()
        assert r.status == 413 and r.error()["error"] == "body_too_large"
        c.expect_eof()


def test_good_subscriber_keeps_receiving_while_bad_clients_are_answered(srv, chan):
    with SSE(srv, chan) as sse, ThreadPoolExecutor(8) as pool:
        bad = [pool.submit(check_case, srv, *case) for case in CASES.values()]
        bad += [pool.submit(check_slowloris, srv) for _ in range(3)]
        ids = []
        while not all(f.done() for f in bad):  # publish for as long as they are in progress
            ids.append(srv.publish(chan, f"n{len(ids)}")["id"])
            assert sse.next_message()["id"] == ids[-1]
        for f in bad:
            f.result()  # every bad client got its answer
        ids.append(srv.publish(chan, "after")["id"])
        assert sse.next_message()["id"] == ids[-1]
    assert len(ids) > 10
