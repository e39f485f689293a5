"""Configuration: invalid values stop start-up with exit code 2 and a message naming
the option; --help lists every option with its default; flags beat HERALD_*
environment variables, which beat the config file; --api-listen splits the
publish/admin API from the subscriber endpoints."""

import os
import re
import subprocess

import pytest

from helpers import SSE, free_port, request

BAD = {
    "duration": (["--heartbeat", "xyz"], "--heartbeat"),
    "zero workers": (["--workers", "0"], "--workers"),
    "size below minimum": (["--max-outbound", "1"], "--max-outbound"),
    "address": (["--listen", "nonsense"], "--listen"),
    "log level": (["--log-level", "loud"], "--log-level"),
    "lifetime max below min": (["--lifetime-min", "2s", "--lifetime-max", "1s"], "--lifetime-max"),
    "unknown option": (["--no-such-option"], "--no-such-option"),
    "negative count": (["--history-size", "-3"], "--history-size"),
}


def run(binary, args, env=None, timeout=10):
    return subprocess.run(
        [binary] + args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize("args, option", BAD.values(), ids=BAD.keys())
def test_invalid_flag_exits_2_naming_the_option(herald_bin, args, option):
    p = run(herald_bin, args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert option in p.stderr, p.stderr


def test_invalid_env_value_names_the_variable(herald_bin):
    p = run(herald_bin, [], env={"HERALD_HEARTBEAT": "bogus"})
    assert p.returncode == 2
    assert "HERALD_HEARTBEAT" in p.stderr and "--heartbeat" in p.stderr, p.stderr


def test_invalid_config_file_value_names_the_file_and_line(herald_bin, tmp_path):
    conf = tmp_path / "herald.conf"
    conf.write_text("# comment\nworkers = 1\nheartbeat = nope\n")
    p = run(herald_bin, ["--config", str(conf)])
    assert p.returncode == 2
    assert "heartbeat" in p.stderr and f"{conf}:3" in p.stderr, p.stderr


def test_missing_config_file_exits_2(herald_bin, tmp_path):
    p = run(herald_bin, ["--config", str(tmp_path / "absent.conf")])
    assert p.returncode == 2 and "absent.conf" in p.stderr


def test_help_lists_every_option_with_its_default(herald_bin):
    p = run(herald_bin, ["--help"])
    assert p.returncode == 0
    text = p.stdout
    options = [
        "listen", "api-listen", "workers", "publish-key", "cors-origins", "ws-publish", "heartbeat",
        "close-grace", "lifetime-min", "lifetime-max", "shutdown-timeout", "header-timeout",
        "poll-timeout", "max-header-bytes", "max-uri-bytes", "max-body-bytes", "max-ws-message",
        "max-outbound", "max-channels-per-conn", "max-channels-per-ip", "limit-loopback", "auto-create", "channel-ttl", "history-size",
        "history-ttl", "history-bytes", "max-channels", "ws-deflate", "redis", "redis-cluster", "cluster-heartbeat",
        "config", "log-level",
    ]
    flat = text.replace("--[no-]", "--")
    for name in options:
        line = re.search(rf"^ +--{name}(?= ).*$", flat, re.M)
        assert line, f"--{name} is not in --help"
        assert "default" in line.group(0), line.group(0)
    for default in ("default 30s", "default 4s", "default 120s", "default 180s", "default 0.0.0.0:8080", "default 1MiB"):
        assert default in text, default


def test_version(herald_bin):
    p = run(herald_bin, ["--version"])
    assert p.returncode == 0 and p.stdout.startswith("herald ")


def heartbeat_within(srv, chan, seconds):
    """True when an SSE heartbeat comment arrives within `seconds` (skipping the preamble)."""
    with SSE(srv, chan) as sse:
        sse.next_block()  # :ok
        sse.next_block()  # retry
        try:
            return sse.next_block(timeout=seconds).comments == [""]
        except TimeoutError:
            return False


def test_env_var_sets_the_heartbeat(herald, chan):
    srv = herald(env={"HERALD_HEARTBEAT": "300ms"})
    assert heartbeat_within(srv, chan, 3)


def test_config_file_sets_the_heartbeat(herald, chan, tmp_path):
    conf = tmp_path / "herald.conf"
    conf.write_text("heartbeat = 300ms\n")
    srv = herald(config=str(conf))
    assert heartbeat_within(srv, chan, 3)


def test_flag_beats_env(herald, chan):
    srv = herald(env={"HERALD_HEARTBEAT": "30s"}, heartbeat="300ms")
    assert heartbeat_within(srv, chan, 3)


def test_env_beats_config_file(herald, chan, tmp_path):
    conf = tmp_path / "herald.conf"
    conf.write_text("heartbeat = 30s\n")
    srv = herald(env={"HERALD_HEARTBEAT": "300ms"}, config=str(conf))
    assert heartbeat_within(srv, chan, 3)


def test_env_publish_key(herald, chan):
    srv = herald(env={"HERALD_PUBLISH_KEY": "from-env"})
    assert srv.request("POST", "/pub/" + chan, b"x").status == 401
    ok = srv.request("POST", "/pub/" + chan, b"x", {"Authorization": "Bearer from-env"})
    assert ok.status == 201


def test_several_listen_addresses(herald, chan):
    second = free_port()
    srv = herald(listen=f"127.0.0.1:{second}")
    assert request(second, "GET", "/healthz").status == 200
    with SSE(srv, chan) as sse:
        assert request(second, "POST", "/pub/" + chan, b"via second").status == 201
        assert sse.next_message()["data"] == "via second"


def test_api_listen_splits_the_endpoints(herald, chan):
    srv = herald(api=True)
    main, api = srv.port, srv.api_port
    assert main != api
    for port in (main, api):
        assert request(port, "GET", "/healthz").status == 200
    # publishing and administration only on the API listener
    for method, path in (("POST", "/pub/" + chan), ("POST", "/api/publish"), ("GET", "/api/channels"), ("GET", "/stats"), ("GET", "/metrics")):
        r = request(main, method, path, b"{}" if method == "POST" else None)
        assert r.status == 404, (method, path, r.status)
        assert r.error()["error"] == "not_found"
    # subscribing only on the main listener
    for path in (f"/sse?channels={chan}", f"/poll?channels={chan}", f"/stream?channels={chan}", f"/ws?channels={chan}"):
        r = request(api, "GET", path)
        assert r.status == 404, (path, r.status)
    with SSE(srv, chan) as sse:
        r = request(api, "POST", "/pub/" + chan, b"split")
        assert r.status == 201
        assert sse.next_message()["data"] == "split"
    assert request(api, "GET", "/stats").status == 200


def test_the_descriptor_table_is_grown_to_the_fd_limit_at_start_up(herald):
    """herald sizes its descriptor table before it starts threads (docs/operations.md, File
    descriptors): growing a table shared by threads waits for an RCU grace period each time,
    which stalled connection storms at 256, 512, ... connections."""
    srv = herald()
    with open(f"/proc/{srv.proc.pid}/limits") as f:
        soft = next(int(line.split()[3]) for line in f if line.startswith("Max open files"))
    with open(f"/proc/{srv.proc.pid}/status") as f:
        fdsize = next(int(line.split()[1]) for line in f if line.startswith("FDSize:"))
    assert fdsize >= soft, f"descriptor table of {fdsize} slots, fd limit {soft}"
