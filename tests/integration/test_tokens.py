"""Subscriber tokens (JWT): with --token-secret or --token-public-key, every transport
(WebSocket, SSE, long-poll, streaming) and the WebSocket subscribe op admit a subscriber
only with a valid token whose "channels" grant what it asks for; the token comes as
?token=, 'Authorization: Bearer', the cookie herald_token, or the WebSocket auth op;
expiry ends the connection (`expired`, close 4001) unless refreshed. The tokens are
minted here, independently of herald: HS256 with hmac, RS256/ES256 with cryptography."""

import base64
import hashlib
import hmac
import json
import subprocess
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from helpers import (
    SSE,
    WAIT,
    RawConn,
    RawWS,
    Stream,
    free_port,
    http_get,
    wait_until,
    request,
    ws_handshake,
)

SECRET = "tok-secret-0123456789"
KEY = "publish-key-42"
TRANSPORTS = ["ws", "sse", "stream", "poll"]
PATHS = {"ws": "/ws", "sse": "/sse", "stream": "/stream", "poll": "/poll"}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(claims, alg="HS256", secret=SECRET, key=None, header=None):
    """A compact JWS of claims, signed alg with secret (HS256) or key (RS256/ES256)."""
    head = header or {"alg": alg, "typ": "JWT"}
    signing = (b64(json.dumps(head).encode()) + "." + b64(json.dumps(claims).encode())).encode()
    if alg == "HS256":
        secret = secret.encode() if isinstance(secret, str) else secret
        sig = hmac.new(secret, signing, hashlib.sha256).digest()
    elif alg == "RS256":
        sig = key.sign(signing, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = b""
    return signing.decode() + "." + b64(sig)


def claims(channels, sub="alice", ttl=3600, **extra):
    return {"sub": sub, "exp": int(time.time()) + ttl, "channels": channels, **extra}


def token(channels, **kw):
    return mint(claims(channels, **kw))


@pytest.fixture(scope="module")
def tsrv(module_herald):
    """Tokens on (HS256, no skew so expiry tests are quick), a publish key, WS publishing."""
    return module_herald(token_secret=SECRET, token_skew="0", publish_key=KEY, ws_publish=True)


def pub(srv, channel, body="x"):
    return srv.publish(channel, body, headers={"Authorization": f"Bearer {KEY}"})


def wait_subs(srv, channel):
    """Waits until the channel has a subscriber (the API needs the publish key here)."""
    def held():
        r = srv.request("GET", "/api/channels/" + channel,
                        headers={"Authorization": f"Bearer {KEY}"})
        return r.status == 200 and r.json()["subscribers"] >= 1
    wait_until(held, what=f"a subscriber on {channel}")


def with_token(query, headers, tok, where):
    if tok is None:
        return
    if where == "query":
        query["token"] = tok
    elif where == "header":
        headers["Authorization"] = f"Bearer {tok}"
    elif where == "cookie":
        headers["Cookie"] = f"theme=dark; herald_token={tok}; x=y"


def attempt(srv, kind, channels, tok=None, where="query"):
    """The answer to a subscribe request of one transport: (status, headers, JSON body or
    None). The connection is closed right after the head of a successful subscribe."""
    query, headers = {"channels": channels}, {}
    with_token(query, headers, tok, where)
    if kind == "poll":
        query["timeout"] = "1"
    path = PATHS[kind] + "?" + urllib.parse.urlencode(query, safe=",.*")
    with RawConn(srv.port) as c:
        if kind == "ws":
            c.send(ws_handshake(path, extra=headers))
        else:
            c.send(http_get(path, headers))
        status, hdrs = c.read_head()
        body = None
        if "content-length" in hdrs and status != 101:
            body = json.loads(c.read_exact(int(hdrs["content-length"])))
        return status, hdrs, body


def open_sub(srv, kind, channels, tok, where="query"):
    """A live subscriber of one transport holding tok (not for long-poll)."""
    query, headers = {}, {}
    with_token(query, headers, tok, where)
    if kind == "ws":
        q = "?" + urllib.parse.urlencode({"channels": channels, **query}, safe=",.*")
        return RawWS(srv, q, extra=headers)
    cls = SSE if kind == "sse" else Stream
    sub = cls(srv, channels, headers=headers, **query)
    assert sub.status == 200, sub.body
    return sub


# ---- every transport x every case ----------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_no_token_is_401_token_missing(tsrv, kind):
    status, hdrs, body = attempt(tsrv, kind, "news")
    assert status == 401, body
    assert body["error"] == "token_missing"
    assert "?token=" in body["detail"]
    assert "Bearer" in hdrs["www-authenticate"]


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "a.b.c",
        mint(claims(["news"]), secret="another-secret"),
        mint(claims(["news"]), alg="none", header={"alg": "none"}),
        mint(claims(["news"]), header={"alg": "HS512"}),
        mint({"sub": "a", "channels": ["news"]}),  # no exp
        mint(claims(["news"], nbf=int(time.time()) + 3600)),
        mint({**claims(["news"]), "sub": ""}),  # a user id is 1 to 256 bytes
        mint({**claims(["news"]), "sub": "x" * 257}),
    ],
    ids=["garbage", "not-base64", "wrong-secret", "alg-none", "other-alg", "no-exp", "nbf", "empty-sub",
         "long-sub"],
)
def test_bad_token_is_401_token_invalid(tsrv, kind, bad):
    status, _, body = attempt(tsrv, kind, "news", bad)
    assert status == 401, body
    assert body["error"] == "token_invalid", body


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_expired_token_is_401_token_expired(tsrv, kind):
    status, _, body = attempt(tsrv, kind, "news", token(["news"], ttl=-5))
    assert status == 401, body
    assert body["error"] == "token_expired"


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_channel_not_granted_is_403_naming_it(tsrv, kind):
    tok = token(["news", "user.{sub}"])
    status, _, body = attempt(tsrv, kind, "news,user.bob", tok)
    assert status == 403, body
    assert body["error"] == "channel_forbidden"
    assert body["channel"] == "user.bob"
    assert "user.bob" in body["detail"]


@pytest.mark.parametrize("kind", ["ws", "sse", "stream"])
def test_good_token_subscribes_and_receives(tsrv, kind):
    tok = token(["room.*", "user.{sub}"])
    with open_sub(tsrv, kind, "room.a,user.alice", tok) as sub:
        wait_subs(tsrv, "room.a")
        pub(tsrv, "room.a", "hello")
        assert sub.next_message()["data"] == "hello"


def test_good_token_long_poll(tsrv):
    tok = token(["feed.**"])
    pub(tsrv, "feed.x.y", "first")
    r = tsrv.request("GET", f"/poll?channels=feed.x.y&since=0&timeout=1&token={tok}")
    assert r.status == 200, r.body
    assert [m["data"] for m in r.json()["messages"]] == ["first"]


@pytest.mark.parametrize("where", ["query", "header", "cookie"])
@pytest.mark.parametrize("kind", ["ws", "sse"])
def test_token_sources(tsrv, kind, where):
    tok = token(["src.a"])
    with open_sub(tsrv, kind, "src.a", tok, where) as sub:
        wait_subs(tsrv, "src.a")
        pub(tsrv, "src.a", where)
        assert sub.next_message()["data"] == where
    # the same place with a bad token is refused
    status, _, body = attempt(tsrv, kind, "src.a", tok[:-3] + "AAA", where)
    assert (status, body["error"]) == (401, "token_invalid")


def test_publish_key_as_bearer_is_not_a_token(tsrv):
    """A publisher's 'Authorization: Bearer KEY' on the upgrade is a credential, not a
    malformed token: the WebSocket opens, and publishing works without a token."""
    with RawWS(tsrv, "", extra={"Authorization": f"Bearer {KEY}"}) as ws:
        ws.send_json({"op": "publish", "channel": "keyed.x", "data": 1, "ref": 1})
        assert ws.recv_json()["event"] == "published"
        ws.send_json({"op": "subscribe", "channel": "keyed.x", "ref": 2})
        ev = ws.recv_json()
        assert (ev["event"], ev["error"], ev["ref"]) == ("error", "token_missing", 2)


# ---- WebSocket ops -------------------------------------------------------------------------


def test_ws_auth_op_then_subscribe(tsrv):
    with RawWS(tsrv) as ws:
        ws.send_json({"op": "subscribe", "channels": ["op.a"], "ref": "s0"})
        ev = ws.recv_json()
        assert (ev["event"], ev["error"], ev["ref"]) == ("error", "token_missing", "s0")
        ws.send_json({"op": "auth", "token": "not.a.token", "ref": "a0"})
        ev = ws.recv_json()
        assert (ev["event"], ev["error"], ev["ref"]) == ("error", "token_invalid", "a0")
        ws.send_json({"op": "auth", "token": token(["op.*"]), "ref": "a1"})
        ev = ws.recv_json()
        assert (ev["event"], ev["sub"], ev["ref"]) == ("authenticated", "alice", "a1")
        ws.send_json({"op": "subscribe", "channels": ["op.a", "other"], "ref": "s1"})
        ev = ws.recv_json()
        assert (ev["event"], ev["error"], ev["channel"], ev["ref"]) == (
            "error", "channel_forbidden", "other", "s1")
        ws.send_json({"op": "subscribe", "channels": ["op.a"], "ref": "s2"})
        ev = ws.recv_json()
        assert (ev["event"], ev["ref"]) == ("subscribed", "s2")
        pub(tsrv, "op.a", "via-op")
        assert ws.next_message()["data"] == "via-op"


def test_ws_unauthenticated_connection_is_bounded(herald):
    srv = herald(token_secret=SECRET, header_timeout="1s")
    with RawWS(srv) as ws:
        start = time.monotonic()
        seen = ws.expect_close(4001, timeout=WAIT)
        assert time.monotonic() - start < 5
        assert [f.json()["error"] for f in seen if f.opcode == 1] == ["token_missing"]


def test_ws_publish_needs_a_publish_grant(tsrv):
    tok = token(["chat.*"], publish=["chat.{sub}"])
    with RawWS(tsrv, f"?token={tok}") as ws:
        ws.send_json({"op": "publish", "channel": "chat.alice", "data": "mine", "ref": 1})
        ev = ws.recv_json()
        assert (ev["event"], ev["ref"]) == ("published", 1), ev
        ws.send_json({"op": "publish", "channel": "chat.bob", "data": "theirs", "ref": 2})
        ev = ws.recv_json()
        assert (ev["event"], ev["error"], ev["channel"], ev["ref"]) == (
            "error", "channel_forbidden", "chat.bob", 2)
    # a token without publish grants publishes nothing; nor does no token at all
    for query in (f"?token={token(['chat.*'])}", ""):
        with RawWS(tsrv, query) as ws:
            ws.send_json({"op": "publish", "channel": "chat.alice", "data": "x", "ref": 3})
            ev = ws.recv_json()
            assert ev["event"] == "error" and ev["error"] in ("channel_forbidden", "unauthorized")
    assert tsrv.request("GET", "/api/channels/chat.bob",
                        headers={"Authorization": f"Bearer {KEY}"}).status == 404


def test_refresh_extends_a_live_connection(tsrv):
    with RawWS(tsrv, f"?channels=ref.a&token={token(['ref.a'], ttl=2)}") as ws:
        ws.send_json({"op": "refresh", "token": token(["ref.a"], sub="mallory"), "ref": 1})
        ev = ws.recv_json()
        assert (ev["event"], ev["error"], ev["ref"]) == ("error", "token_invalid", 1)
        ws.send_json({"op": "refresh", "token": token(["ref.a"], ttl=60), "ref": 2})
        ev = ws.recv_json()
        assert (ev["event"], ev["ref"]) == ("refreshed", 2)
        time.sleep(3.5)  # past the first token's expiry
        pub(tsrv, "ref.a", "still here")
        assert ws.next_message()["data"] == "still here"


# ---- expiry ------------------------------------------------------------------------------


def test_ws_expiry_sends_expired_and_closes_4001(tsrv):
    with RawWS(tsrv, f"?channels=exp.ws&token={token(['exp.ws'], ttl=1)}") as ws:
        seen = ws.expect_close(4001, timeout=WAIT)
        events = [f.json() for f in seen if f.opcode == 1]
        assert events[-1]["event"] == "expired" and events[-1]["error"] == "token_expired"


def test_sse_expiry_sends_expired_and_ends(tsrv):
    with open_sub(tsrv, "sse", "exp.sse", token(["exp.sse"], ttl=1)) as sse:
        block = sse.next_event()
        assert block.event == "expired", block
        assert block.json()["error"] == "token_expired"
        sse.expect_end()


def test_stream_expiry_sends_expired_and_ends(tsrv):
    with open_sub(tsrv, "stream", "exp.stream", token(["exp.stream"], ttl=1)) as st:
        assert st.next_message()["event"] == "expired"
        st.expect_end()


def test_long_poll_held_past_expiry_is_answered_expired(tsrv):
    tok = token(["exp.poll"], ttl=1)
    start = time.monotonic()
    r = tsrv.request("GET", f"/poll?channels=exp.poll&timeout=20&token={tok}")
    assert r.status == 200, r.body
    assert time.monotonic() - start < 5
    assert [m["event"] for m in r.json()["messages"]] == ["expired"]


# ---- other keys, defaults, configuration -----------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name, priv in (("rsa", rsa.generate_private_key(65537, 2048)),
                       ("ec", ec.generate_private_key(ec.SECP256R1()))):
        pem = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        (d / f"{name}.pem").write_bytes(pem)
        out[name] = (priv, str(d / f"{name}.pem"), pem)
    return out


@pytest.mark.parametrize("kind,alg", [("rsa", "RS256"), ("ec", "ES256")])
def test_public_key_tokens(module_herald, keys, kind, alg):
    priv, path, pem = keys[kind]
    srv = module_herald(token_public_key=path)
    assert f"signed {alg}" in srv.log()
    good = mint(claims(["pk.*"]), alg=alg, key=priv)
    with open_sub(srv, "sse", "pk.a", good) as sse:
        srv.wait_subscribers("pk.a")
        srv.publish("pk.a", "signed")
        assert sse.next_message()["data"] == "signed"
    # HS256 with the public key as the secret: the classic confusion, refused
    confused = mint(claims(["pk.*"]), alg="HS256", secret=pem)
    assert attempt(srv, "sse", "pk.a", confused)[2]["error"] == "token_invalid"
    other = "ES256" if alg == "RS256" else "RS256"
    other_key = keys["ec" if kind == "rsa" else "rsa"][0]
    assert attempt(srv, "sse", "pk.a", mint(claims(["pk.*"]), alg=other,
                                             key=other_key))[2]["error"] == "token_invalid"


def test_default_stays_public(server, chan):
    """No token options: subscribing is public and tokens are ignored, as before."""
    assert "subscribing is public" in server.log()
    for kind in TRANSPORTS:
        status, _, body = attempt(server, kind, chan, "garbage")
        assert status in (101, 200), (kind, status, body)


def test_preflight_allows_authorization(tsrv):
    r = tsrv.request("OPTIONS", "/sse?channels=a", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert r.status == 204
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


def test_startup_log_names_the_policy(tsrv):
    assert "subscribing needs a token signed HS256" in tsrv.log()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--token-public-key", "/nonexistent/key.pem"], "/nonexistent/key.pem"),
        (["--token-secret", "s", "--token-public-key", "/x.pem"], "not both"),
        (["--token-secret", "s", "--token-alg", "RS256"], "--token-alg"),
        (["--token-alg", "HS999"], "--token-alg"),
    ],
)
def test_bad_token_configuration_stops_startup(herald_bin, args, message):
    p = subprocess.run([herald_bin, "--listen", f"127.0.0.1:{free_port()}"] + args, capture_output=True,
                       timeout=WAIT, text=True)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr


@pytest.mark.threads
def test_subscribers_on_every_worker_share_the_token_cache(tsrv):
    """Many subscribers at once, spread over both workers, with one shared token and
    with tokens of their own: the cache of verified tokens is used from every worker."""
    from concurrent.futures import ThreadPoolExecutor
    shared = token(["cache.*"])
    toks = [shared] * 20 + [token(["cache.*"], sub=f"u{i}") for i in range(20)]
    with ThreadPoolExecutor(8) as pool:
        subs = list(pool.map(lambda t: open_sub(tsrv, "sse", "cache.a", t), toks))
    try:
        wait_until(lambda: tsrv.request("GET", "/api/channels/cache.a", headers={
            "Authorization": f"Bearer {KEY}"}).json()["subscribers"] == len(toks))
        pub(tsrv, "cache.a", "all")
        assert all(s.next_message()["data"] == "all" for s in subs)
    finally:
        for s in subs:
            s.close()
