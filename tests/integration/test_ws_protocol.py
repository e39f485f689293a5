"""RFC 6455 conformance over a raw socket: every malformed frame gets the right close
code, fragmentation and interleaved control frames work, the close handshake is
echoed, and bad handshakes are refused with the right HTTP status."""

import zlib

import pytest

from helpers import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawConn,
    RawWS,
    encode_frame,
    raw_request,
    ws_handshake,
)

PING_OP = b'{"op":"ping","ref":"ok"}'
PONG = {"event": "pong", "ref": "ok"}


def close_payload(code, reason=b""):
    return code.to_bytes(2, "big") + reason


# Each case: the frames a client sends, and the close code the server must answer with.
FAILURES = {
    "unmasked": ([encode_frame(OP_TEXT, PING_OP, mask=False)], 1002),
    "rsv1 without deflate": ([encode_frame(OP_TEXT, PING_OP, rsv=4)], 1002),
    "rsv2": ([encode_frame(OP_TEXT, PING_OP, rsv=2)], 1002),
    "rsv3": ([encode_frame(OP_TEXT, PING_OP, rsv=1)], 1002),
    "reserved data opcode 3": ([encode_frame(3, b"x")], 1002),
    "reserved control opcode 0xB": ([encode_frame(0xB, b"x")], 1002),
    "control frame over 125 bytes": ([encode_frame(OP_PING, b"p" * 126)], 1002),
    "fragmented ping": ([encode_frame(OP_PING, b"p", fin=False)], 1002),
    "continuation without start": ([encode_frame(OP_CONT, b"x")], 1002),
    "new message inside a fragmented one": (
        [encode_frame(OP_TEXT, b'{"op":', fin=False), encode_frame(OP_TEXT, b'"ping"}')],
        1002,
    ),
    "non-minimal 16-bit length": ([encode_frame(OP_TEXT, b"{}", length_bytes=2)], 1002),
    "non-minimal 64-bit length": ([encode_frame(OP_TEXT, b"{}" * 150, length_bytes=8)], 1002),
    "64-bit length with the top bit set": (
        [b"\x81\xff" + b"\x80" + b"\x00" * 7 + b"\x00\x00\x00\x00"],
        1002,
    ),
    "invalid utf-8": ([encode_frame(OP_TEXT, b'{"op":"ping","ref":"\xff"}')], 1007),
    "overlong utf-8": ([encode_frame(OP_TEXT, b'"\xc0\xaf"')], 1007),
    "utf-16 surrogate": ([encode_frame(OP_TEXT, b'"\xed\xa0\x80"')], 1007),
    "truncated utf-8 at the end": ([encode_frame(OP_TEXT, b'"\xe2\x82')], 1007),
    "invalid utf-8 in the first fragment": (
        [encode_frame(OP_TEXT, b"\xff", fin=False), encode_frame(OP_CONT, b"x")],
        1007,
    ),
    "fragments ending inside a character": (
        [encode_frame(OP_TEXT, b'"\xc3', fin=False), encode_frame(OP_CONT, b"")],
        1007,
    ),
    "message over --max-ws-message": ([encode_frame(OP_TEXT, b" " * (64 * 1024 + 1))], 1009),
    "fragmented message over --max-ws-message": (
        [encode_frame(OP_TEXT, b" " * 40000, fin=False), encode_frame(OP_CONT, b" " * 40000)],
        1009,
    ),
    "close code 1005": ([encode_frame(OP_CLOSE, close_payload(1005))], 1002),
    "close code 1006": ([encode_frame(OP_CLOSE, close_payload(1006))], 1002),
    "close code 999": ([encode_frame(OP_CLOSE, close_payload(999))], 1002),
    "close code 1004": ([encode_frame(OP_CLOSE, close_payload(1004))], 1002),
    "close code 1015": ([encode_frame(OP_CLOSE, close_payload(1015))], 1002),
    "close code 5000": ([encode_frame(OP_CLOSE, close_payload(5000))], 1002),
    "one-byte close payload": ([encode_frame(OP_CLOSE, b"\x03")], 1002),
    "close reason not utf-8": ([encode_frame(OP_CLOSE, close_payload(1000, b"\xff"))], 1007),
}


@pytest.mark.parametrize("frames, code", FAILURES.values(), ids=FAILURES.keys())
def test_bad_frames_get_their_close_code(server, frames, code):
    with RawWS(server) as ws:
        ws.conn.send(b"".join(frames))
        seen = ws.expect_close(code)
        assert all(f.opcode != OP_TEXT for f in seen), seen  # nothing was acted upon


def test_frames_split_across_writes_are_reassembled(server):
    frame = encode_frame(OP_TEXT, PING_OP)
    with RawWS(server) as ws:
        for i in range(len(frame)):
            ws.conn.send(frame[i : i + 1])
        assert ws.recv_json() == PONG


def test_16_bit_length(server):
    op = b'{"op":"ping","ref":"' + b"x" * 300 + b'"}'
    with RawWS(server) as ws:
        ws.send_frame(OP_TEXT, op)
        assert ws.recv_json()["ref"] == "x" * 300


def test_message_of_exactly_the_limit_is_accepted(server):
    body = b'{"op":"ping","ref":"' + b"y" * (64 * 1024 - 22) + b'"}'
    assert len(body) == 64 * 1024
    with RawWS(server) as ws:
        ws.send_frame(OP_TEXT, body)
        assert len(ws.recv_json()["ref"]) == 64 * 1024 - 22


def test_utf8_split_across_fragments_is_accepted(server):
    text = '{"op":"ping","ref":"é€😀"}'.encode()
    cut1 = text.index("é".encode()) + 1  # inside the 2-byte character
    cut2 = text.index("😀".encode()) + 2  # inside the 4-byte character
    with RawWS(server) as ws:
        ws.send_frame(OP_TEXT, text[:cut1], fin=False)
        ws.send_frame(OP_CONT, text[cut1:cut2], fin=False)
        ws.send_frame(OP_CONT, text[cut2:])
        assert ws.recv_json() == {"event": "pong", "ref": "é€😀"}


def test_ping_interleaved_in_a_fragmented_message(server):
    with RawWS(server) as ws:
        ws.send_frame(OP_TEXT, PING_OP[:5], fin=False)
        ws.send_frame(OP_PING, b"interleaved")
        ws.send_frame(OP_CONT, PING_OP[5:12], fin=False)
        ws.send_frame(OP_PONG, b"unsolicited")  # ignored
        ws.send_frame(OP_CONT, PING_OP[12:])
        pong = ws.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"interleaved")
        assert ws.recv_json() == PONG


def test_ping_is_answered_with_its_payload(server):
    with RawWS(server) as ws:
        for payload in (b"", b"abc", bytes(range(125))):
            ws.send_frame(OP_PING, payload)
            f = ws.recv_frame()
            assert (f.opcode, f.fin, f.payload) == (OP_PONG, True, payload)


def test_binary_message_gets_an_error_event(server):
    with RawWS(server) as ws:
        ws.send_frame(OP_BINARY, b"\x00\x01")
        assert ws.recv_json()["error"] == "binary_not_supported"
        ws.send_frame(OP_TEXT, PING_OP)
        assert ws.recv_json() == PONG


@pytest.mark.parametrize("payload", [b"", close_payload(1000, b"bye"), close_payload(4001, "fin ✓".encode())])
def test_close_handshake_is_echoed(server, payload):
    with RawWS(server) as ws:
        ws.send_frame(OP_CLOSE, payload)
        expected = int.from_bytes(payload[:2], "big") if payload else 1000
        ws.expect_close(expected)


def test_frames_after_a_close_are_ignored(server):
    with RawWS(server) as ws:
        ws.conn.send(encode_frame(OP_CLOSE, close_payload(1000)) + encode_frame(OP_TEXT, PING_OP))
        seen = ws.expect_close(1000)
        assert seen == []


def test_op_sent_with_the_handshake_is_answered(server):
    with RawWS(server, trailing=encode_frame(OP_TEXT, PING_OP)) as ws:
        assert ws.recv_json() == PONG


# ---- handshake ------------------------------------------------------------------------------


def handshake(server, **kw):
    return raw_request(server.port, ws_handshake(**kw))


def test_version_12_gets_426_naming_version_13(server):
    r = handshake(server, version="12")
    assert r.status == 426
    assert r.headers["sec-websocket-version"] == "13"
    r.error()


def test_missing_version_gets_426(server):
    r = handshake(server, version=None)
    assert r.status == 426 and r.headers["sec-websocket-version"] == "13"


@pytest.mark.parametrize("key", [None, "", "not base64!", "c2hvcnQ=", "AAAAAAAAAAAAAAAAAAAAAAAA"])
def test_missing_or_bad_key_gets_400(server, key):
    r = handshake(server, extra={"Sec-WebSocket-Key": key})
    assert r.status == 400
    assert r.error()["error"] == "bad_handshake"


def test_plain_get_gets_426_with_upgrade(server):
    r = raw_request(server.port, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 426
    assert r.headers["upgrade"].lower() == "websocket"
    r.error()


def test_upgrade_over_http10_is_refused(server):
    r = raw_request(server.port, ws_handshake().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    assert r.status in (400, 426)
    r.error()


@pytest.fixture(scope="module")
def origin_server(module_herald):
    return module_herald(cors_origins="https://good.example, https://also.example")


@pytest.mark.parametrize("origin", ["https://evil.example", "https://good.example.evil", "null"])
def test_origin_not_allowed_gets_403(origin_server, origin):
    r = handshake(origin_server, extra={"Origin": origin})
    assert r.status == 403
    assert r.error()["error"] == "origin_not_allowed"


@pytest.mark.parametrize("origin", ["https://good.example", "https://also.example", None])
def test_allowed_origin_upgrades(origin_server, origin):
    extra = {"Origin": origin} if origin else None
    with RawWS(origin_server, extra=extra) as ws:
        ws.send_frame(OP_TEXT, PING_OP)
        assert ws.recv_json() == PONG


def test_bad_channel_on_the_url_is_refused_before_upgrade(server):
    r = raw_request(server.port, ws_handshake("/ws?channels=bad%20name"))
    assert r.status == 400
    assert r.error()["error"] == "bad_channel"


def test_bad_since_on_the_url_is_refused_before_upgrade(server, chan):
    r = raw_request(server.port, ws_handshake(f"/ws?channels={chan}&since=abc"))
    assert r.status == 400
    assert r.error()["error"] == "bad_cursor"


def test_connection_stays_usable_after_many_control_frames(server):
    with RawConn(server.port) as conn:
        conn.send(ws_handshake())
        assert conn.read_head()[0] == 101
        conn.send(b"".join(encode_frame(OP_PING, b"%d" % i) for i in range(200)))
        for i in range(200):
            b0, n = conn.read_exact(2)
            assert b0 == 0x80 | OP_PONG
            assert conn.read_exact(n) == b"%d" % i


# ---- permessage-deflate from the client ----------------------------------------------------

DEFLATE = {"Sec-WebSocket-Extensions": "permessage-deflate"}


def deflate(data):
    """RFC 7692 §7.2.1: raw deflate, flushed, without the trailing 00 00 ff ff."""
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_compressed_op_is_inflated(server):
    with RawWS(server, extra=DEFLATE) as ws:
        ws.send_frame(OP_TEXT, deflate(PING_OP), rsv=4)
        assert ws.recv_json() == PONG
        ws.send_frame(OP_TEXT, PING_OP)  # uncompressed messages stay legal
        assert ws.recv_json() == PONG


def test_compressed_message_in_fragments(server):
    body = deflate(PING_OP)
    with RawWS(server, extra=DEFLATE) as ws:
        ws.send_frame(OP_TEXT, body[:3], rsv=4, fin=False)  # RSV1 on the first frame only
        ws.send_frame(OP_PING, b"mid")
        ws.send_frame(OP_CONT, body[3:])
        pong = ws.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"mid")
        assert ws.recv_json() == PONG


DEFLATE_FAILURES = {
    "rsv1 on a continuation": ([encode_frame(OP_TEXT, b"{", fin=False), encode_frame(OP_CONT, b"}", rsv=4)], 1002),
    "rsv1 on a ping": ([encode_frame(OP_PING, b"p", rsv=4)], 1002),
    "not deflate data": ([encode_frame(OP_TEXT, b"\xff\xfe\xfd\xfc", rsv=4)], 1007),
    "inflates past --max-ws-message": ([encode_frame(OP_TEXT, deflate(b'"' + b" " * 200000 + b'"'), rsv=4)], 1009),
    "inflates to invalid utf-8": ([encode_frame(OP_TEXT, deflate(b'"\xff"'), rsv=4)], 1007),
}


@pytest.mark.parametrize("frames, code", DEFLATE_FAILURES.values(), ids=DEFLATE_FAILURES.keys())
def test_bad_compressed_frames_get_their_close_code(server, frames, code):
    with RawWS(server, extra=DEFLATE) as ws:
        ws.conn.send(b"".join(frames))
        ws.expect_close(code)
