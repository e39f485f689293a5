"""Publisher authentication: with --publish-key, Bearer or HTTP Basic; without one,
loopback clients only. Observation endpoints and subscribers need no credentials."""

import base64
import json
import socket

import pytest

from helpers import JSON_TYPE, SSE, free_port, request, wait_until

KEY = "s3cret-Key_42"
BEARER = {"Authorization": f"Bearer {KEY}"}


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def keyed(module_herald):
    return module_herald(publish_key=KEY)


def post(srv, chan, auth=None):
    headers = {"Content-Type": "text/plain"}
    if auth:
        headers["Authorization"] = auth
    return srv.request("POST", "/pub/" + chan, b"x", headers)


@pytest.mark.parametrize("auth", [f"Bearer {KEY}", f"bearer {KEY}", basic("anyone", KEY), basic("", KEY)])
def test_good_credentials_publish(keyed, chan, auth):
    r = post(keyed, chan, auth)
    assert r.status == 201, r.body
    assert keyed.history(chan)[0]["id"] == r.json()["id"]


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Bearer wrong",
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        basic(KEY, "wrong"),
        basic("user", KEY + "x"),
        "Basic !!!not-base64!!!",
        f"Token {KEY}",
        "Bearer ",
    ],
)
def test_missing_or_wrong_credentials_get_401(keyed, chan, auth):
    r = post(keyed, chan, auth)
    assert r.status == 401
    assert r.error()["error"] == "unauthorized"
    challenge = r.headers["www-authenticate"]
    assert "Bearer" in challenge and "Basic" in challenge
    # nothing was published: the channel was not even created
    assert keyed.request("GET", "/api/channels/" + chan, headers=BEARER).status == 404


def test_api_publish_and_channel_admin_need_the_key(keyed, chan):
    doc = json.dumps({"channel": chan, "data": 1})
    assert keyed.request("POST", "/api/publish", doc, JSON_TYPE).status == 401
    assert keyed.request("PUT", "/api/channels/" + chan).status == 401
    assert keyed.request("GET", "/api/channels").status == 401
    assert keyed.request("POST", "/api/publish", doc, {**JSON_TYPE, **BEARER}).status == 201
    assert keyed.request("DELETE", "/api/channels/" + chan, headers=BEARER).status == 200


@pytest.mark.parametrize("path", ["/stats", "/metrics", "/healthz"])
def test_observation_endpoints_are_open(keyed, path):
    assert keyed.request("GET", path).status == 200


def test_subscribers_need_no_credentials(keyed, chan):
    with SSE(keyed, chan) as sse:
        assert sse.status == 200
        r = post(keyed, chan, f"Bearer {KEY}")
        assert sse.next_message()["id"] == r.json()["id"]


def non_loopback_address():
    """An address of this host that is not 127.0.0.0/8, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_without_key_only_loopback_may_publish(herald, chan):
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    port = free_port()
    srv = herald(listen=f"{addr}:{port}")  # in addition to the loopback listener
    # said at start-up (written just after the listeners open, so wait for it)
    wait_until(lambda: "loopback clients only" in srv.log(), what="the start-up warning")
    r = request(port, "POST", "/pub/" + chan, b"x", host=addr)
    assert r.status == 403
    assert r.error()["error"] == "forbidden"
    assert request(port, "GET", "/healthz", host=addr).status == 200
    assert srv.channel(chan) is None
    assert post(srv, chan).status == 201  # from 127.0.0.1
