"""Output that a client does not read is bounded on every kind of connection (issue 7):
pipelined requests from a late reader, long-poll answers built from history, pings
sent to a connection that is being closed. Input is not parsed while a connection's
output is backed up; the answers all come, complete and in order, once it reads."""

import json
import re
import socket
import threading
import time

import pytest

from helpers import (
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WAIT,
    RawConn,
    RawWS,
    encode_frame,
    http_get,
    wait_until,
)

MIB = 1024 * 1024


def pub_request(chan, body=b"x"):
    return (f"POST /pub/{chan} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class LateReader:
    """A connection that writes everything first (from a thread: the server may stop
    taking input) and reads only when asked to."""

    def __init__(self, port, data):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.error = None
        self.thread = threading.Thread(target=self._write, args=(data,), daemon=True)
        self.thread.start()

    def _write(self, data):
        try:
            self.sock.settimeout(120)
            self.sock.sendall(data)
        except OSError as e:  # noqa: PERF203
            self.error = e

    def read_responses(self, n, timeout=60):
        """Reads n complete Content-Length responses; returns their (status, body) in order."""
        self.sock.settimeout(timeout)
        buf = bytearray()
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            assert time.monotonic() < deadline, f"only {len(out)} of {n} answers"
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = bytes(buf[:end]).decode("latin-1")
                length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))
                if len(buf) < end + 4 + length:
                    break
                status = int(head.split(" ", 2)[1])
                out.append((status, bytes(buf[end + 4:end + 4 + length])))
                del buf[:end + 4 + length]
            if len(out) >= n:
                break
            chunk = self.sock.recv(1 << 20)
            assert chunk, f"connection closed after {len(out)} of {n} answers"
            buf += chunk
        return out

    def close(self):
        self.sock.close()


@pytest.mark.serial  # measures memory or waiting time
@pytest.mark.timeout(120)
def test_pipelined_publishes_from_a_late_reader(herald, chan):
    """70,000 pipelined publishes, read late: every ack arrives, in order, and the queue
    of unread acks stays small (it used to wrap at 65,536 items and leak)."""
    srv = herald(workers=1)
    n = 70000
    base = srv.rss_kib()
    late = LateReader(srv.port, pub_request(chan) * n)
    time.sleep(1.5)  # the client does not read: the server must stop parsing
    held = srv.rss_kib() - base
    published = srv.stats()["messages"]["published"]
    assert published < n, "every request was parsed although no answer was read"
    answers = late.read_responses(n)
    late.thread.join(WAIT)
    assert late.error is None, late.error
    assert all(status == 201 for status, _ in answers)
    ids = [int(json.loads(body)["id"]) for _, body in answers]
    assert ids == sorted(ids) and len(set(ids)) == n
    assert srv.channel(chan)["messages_total"] == n
    late.close()
    if not srv.sanitized():
        assert held < 6 * 1024, f"{held} KiB held for a client that does not read"


@pytest.mark.serial  # measures memory or waiting time
@pytest.mark.timeout(90)
def test_pipelined_long_polls_do_not_copy_history(herald):
    """Pipelined long-polls of a large history from a client that does not read: the
    server holds at most about one answer per connection, not one copy per request."""
    srv = herald(workers=1, history_bytes="4MiB")
    chans = [f"amp{i}" for i in range(4)]
    body = b"x" * 10000
    for ch in chans:
        srv.publish_many(ch, [body] * 100)
    base = srv.rss_kib()
    poll = http_get("/poll?channels=" + ",".join(chans) + "&since=0&timeout=0")
    lates = [LateReader(srv.port, poll * 100) for _ in range(4)]
    time.sleep(2)
    grown = srv.rss_kib() - base
    # Each answer is at most --max-outbound (1 MiB) of messages; everything still arrives.
    for late in lates:
        answers = late.read_responses(100)
        assert all(status == 200 and len(b) <= MIB + 4096 for status, b in answers)
        late.close()
    if not srv.sanitized():
        assert grown < 24 * 1024, f"{grown} KiB for 400 unread polls (4 MiB of history)"


def test_long_poll_answer_is_capped_and_its_cursor_continues(herald, chan):
    """An answer stops at --max-outbound; its cursor is the last message it holds, so the
    next poll goes on from there: nothing lost, nothing twice."""
    srv = herald(max_outbound="64KiB", history_size=200, history_bytes="4MiB")  # 200 x ~8.6 kB held
    sent = srv.publish_many(chan, [b"%05d" % i + b"y" * 2000 for i in range(200)])
    got, cursor, answers = [], "0", 0
    while len(got) < 200:
        status, doc = srv_poll(srv, chan, cursor)
        assert status == 200
        assert doc["messages"], "an empty answer before the end of the history"
        got += [m["id"] for m in doc["messages"]]
        assert doc["cursor"] == got[-1]
        cursor = doc["cursor"]
        answers += 1
    assert got == sent
    assert answers >= 5, f"{answers} answers carried 400 KB with a 64 KiB cap"


def srv_poll(srv, chan, since):
    with RawConn(srv.port) as c:
        c.send(http_get(f"/poll?channels={chan}&since={since}&timeout=0"))
        r = c.read_response()
    assert len(r.body) <= 64 * 1024 + 2100, len(r.body)
    return r.status, r.json()


def test_two_pipelined_long_polls_are_both_answered(server, chan):
    """The second poll's messages used to go out raw, without HTTP framing, and it never
    completed."""
    server.publish_many(chan, ["a", "b", "c"])
    with RawConn(server.port) as c:
        c.send(http_get(f"/poll?channels={chan}&since=0&timeout=0")
               + http_get(f"/poll?channels={chan}&since=0&timeout=2"))
        first = c.read_response()
        second = c.read_response()
        assert first.status == second.status == 200
        assert [m["data"] for m in first.json()["messages"]] == ["a", "b", "c"]
        assert [m["data"] for m in second.json()["messages"]] == ["a", "b", "c"]
        # The connection is still a working keep-alive connection.
        c.send(http_get(f"/poll?channels={chan}&since={second.json()['cursor']}&timeout=1"))
        third = c.read_response()
        assert third.status == 200 and third.json()["messages"] == []


@pytest.mark.serial  # measures memory or waiting time
@pytest.mark.timeout(60)
def test_ping_flood_after_a_slow_consumer_cut(herald, chan):
    """A subscriber cut as a slow consumer keeps getting its error event and close frame,
    and pings it sends meanwhile queue nothing."""
    srv = herald(max_outbound="64KiB", workers=1)
    ws = RawWS(srv, f"?channels={chan}", rcvbuf=4096)
    srv.wait_subscribers(chan)
    # More than the kernel's socket buffers take (they grow to megabytes on loopback).
    srv.publish_many(chan, [b"z" * 8000] * 800)
    wait_until(lambda: srv.stats()["slow_consumers_closed"] >= 1, what="the slow-consumer cut")
    base = srv.rss_kib()
    flood = encode_frame(OP_PING, b"p") * 50000
    t = threading.Thread(target=lambda: _send_quietly(ws, flood), daemon=True)
    t.start()
    seen = ws.expect_close(1008, timeout=30)
    kinds = [f.opcode for f in seen]
    assert OP_PONG not in kinds, "pongs to pings sent after the cut"
    texts = [f.json() for f in seen if f.opcode == OP_TEXT]
    assert texts and texts[-1]["event"] == "error" and texts[-1]["error"] == "slow_consumer"
    t.join(WAIT)
    ws.close()
    if not srv.sanitized():
        assert srv.rss_kib() - base < 4 * 1024


def _send_quietly(ws, data):
    try:
        ws.conn.sock.sendall(data)
    except OSError:
        pass  # the server may close first


def _op_flood(port, chan, seconds):
    """A WebSocket client that sends subscribe/unsubscribe ops as fast as it can and reads
    every answer (so its output never backs up)."""
    import socket as s_

    from helpers import ws_handshake as hs

    sock = s_.create_connection(("127.0.0.1", port))
    sock.sendall(hs("/ws"))
    sock.recv(4096)
    ops = (encode_frame(OP_TEXT, json.dumps({"op": "subscribe", "channel": chan}))
           + encode_frame(OP_TEXT, json.dumps({"op": "unsubscribe", "channel": chan}))) * 500
    sock.setblocking(False)
    end = time.monotonic() + seconds
    view, sent = memoryview(ops), 0
    while time.monotonic() < end:
        try:
            sent += sock.send(view[sent % len(ops):])
        except BlockingIOError:
            pass
        try:
            while sock.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
    sock.close()


@pytest.mark.serial  # measures memory or waiting time
@pytest.mark.timeout(60)
def test_a_client_that_reads_its_answers_does_not_keep_its_worker(herald, chan):
    """Two WebSocket clients flood ops and read every answer, so back-pressure never
    stops them: the workers still take turns, and health checks are answered at once
    (they used to wait until the flood ended)."""
    import multiprocessing

    srv = herald(workers=2)
    floods = [multiprocessing.Process(target=_op_flood, args=(srv.port, f"{chan}-{k}", 5))
              for k in range(2)]
    for p in floods:
        p.start()
    try:
        time.sleep(0.5)
        slow = []
        for _ in range(15):
            started = time.monotonic()
            r = srv.request("GET", "/healthz", timeout=10)
            took = time.monotonic() - started
            assert r.status == 200
            if took > 2.5:  # before: every check waited for the flood's end
                slow.append(round(took, 2))
            time.sleep(0.1)
    finally:
        for p in floods:
            p.join(10)
            if p.is_alive():
                p.terminate()
    assert not slow, f"health checks that waited for the flood: {slow}"
