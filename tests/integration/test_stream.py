"""HTTP streaming: chunked NDJSON read by curl -N, by http.client and by a raw
chunked parser; heartbeats are empty lines; resume with since=."""

import http.client
import json
import os
import selectors
import subprocess

from helpers import WAIT, Deadline, Stream, data_of, ids_of, numbered


class PipeLines:
    """Lines from a child's stdout, each read bounded by a deadline."""

    def __init__(self, pipe):
        self.fd = pipe.fileno()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.fd, selectors.EVENT_READ)
        self.buf = b""

    def next_line(self, timeout=WAIT):
        deadline = Deadline(timeout, "a line from curl")
        while b"\n" not in self.buf:
            if not self.sel.select(deadline.left()):
                continue
            data = os.read(self.fd, 65536)
            assert data, f"curl ended its output: {self.buf!r}"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def test_curl_n_receives_ndjson(server, chan):
    url = f"http://127.0.0.1:{server.port}/stream?channels={chan}"
    curl = subprocess.Popen(["curl", "-sSN", "--max-time", "30", url], stdout=subprocess.PIPE)
    try:
        server.wait_subscribers(chan)
        ids = server.publish_many(chan, ["one", "two", '{"three"'])
        lines = PipeLines(curl.stdout)
        msgs = [json.loads(lines.next_line()) for _ in ids]
    finally:
        curl.terminate()
        curl.wait(WAIT)
    assert ids_of(msgs) == ids
    assert data_of(msgs) == ["one", "two", '{"three"']


def test_http_client_reads_chunked_ndjson(server, chan):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        conn.request("GET", f"/stream?channels={chan}")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "application/x-ndjson"
        assert resp.getheader("Transfer-Encoding") == "chunked"
        ids = server.publish_many(chan, numbered(3))
        msgs = [json.loads(resp.readline()) for _ in ids]
    finally:
        conn.close()
    assert ids_of(msgs) == ids and data_of(msgs) == numbered(3)


def test_each_envelope_is_one_line(server, chan):
    with Stream(server, chan) as s:
        server.publish(chan, '{"multi":\n"line"}', content_type="application/json")
        server.publish(chan, "text with\nnewline")
        first, second = s.messages(2)
    assert first["data"] == {"multi": "line"}
    assert second["data"] == "text with\nnewline"


def test_resume_with_since(server, chan):
    ids = server.publish_many(chan, numbered(5))
    with Stream(server, chan, since=ids[2]) as s:
        assert ids_of(s.messages(2)) == ids[3:]
        live = server.publish(chan, "live")["id"]
        assert s.next_message()["id"] == live


def test_heartbeat_is_an_empty_line(module_herald, chan):
    srv = module_herald(heartbeat="300ms")
    with Stream(srv, chan) as s:
        assert [s.next_line(timeout=5) for _ in range(2)] == ["", ""]
        sent = srv.publish(chan, "between")["id"]
        assert s.next_message(timeout=5)["id"] == sent
        assert s.next_line(timeout=5) == ""


def test_http10_gets_505(server, chan):
    with Stream(server, chan, version="1.0") as s:
        assert s.status == 505
        assert json.loads(s.body)["error"] == "http_version"
