"""Cluster mode over TLS: herald nodes talk to a TLS-only redis-server (--port 0
--tls-port P) whose certificates come from a throwaway CA made with the openssl
command line for this module.

What is checked: two nodes over TLS deliver each other's publishes (one through a
rediss:// URL, one through redis:// plus --redis-tls, so both spellings turn TLS on);
mutual TLS with a client certificate and key, and a name to verify other than the
host; a node that trusts the wrong CA never reaches Redis: its publishes get 503 and
its log names the verification failure, once per connection rather than once per
retry; --redis-tls-insecure connects anyway and warns at start-up.
"""

import os
import socket
import ssl
import subprocess
import time

import pytest

from helpers import SSE, WAIT, Deadline, UnreadyHerald, wait_until
from redis_util import _encode, _pdeathsig, _read_reply, free_port

# Under TSan in make test too; one xdist worker runs the whole module, so its Redis
# servers (module fixtures) are started once.
pytestmark = [pytest.mark.threads, pytest.mark.xdist_group("redis-tls")]

# ---- certificates and a TLS-only Redis ----------------------------------------------------

OPENSSL_STEPS = [
    "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=herald-test-ca",
    "openssl req -x509 $K -keyout other-ca.key -out other-ca.crt -days 2 -subj /CN=other-ca",
    "openssl req $K -keyout server.key -out server.csr -subj /CN=redis.test",
    "echo 'subjectAltName=DNS:redis.test,IP:127.0.0.1' > server.ext",
    "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
    "-extfile server.ext -out server.crt",
    "openssl req $K -keyout client.key -out client.csr -subj /CN=herald-node",
    "echo 'extendedKeyUsage=clientAuth' > client.ext",
    "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
    "-extfile client.ext -out client.crt",
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A directory with ca.crt, other-ca.crt (trusted by nobody), server.crt/key for
    redis.test and 127.0.0.1, and client.crt/key; returns path(name)."""
    d = str(tmp_path_factory.mktemp("tls"))
    script = "K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes' && " + " && ".join(OPENSSL_STEPS)
    subprocess.run(["sh", "-c", script], cwd=d, check=True, capture_output=True)
    return lambda name: os.path.join(d, name)


class TLSRedis:
    """redis-server listening on TLS only (cluster=True: a cluster node whose bus and
    CLUSTER SLOTS use TLS too); cmd() talks to it with the test CA and the client
    certificate (accepted whether or not the server asks for one)."""

    def __init__(self, certs, auth_clients="no", cluster=False):
        self.certs, self.auth_clients, self.cluster = certs, auth_clients, cluster
        self.port = free_port(cluster)
        self.proc = None

    @property
    def url(self):
        return f"rediss://127.0.0.1:{self.port}"

    def start(self):
        c = self.certs
        args = ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", c("server.crt"), "--tls-key-file", c("server.key"),
                "--tls-ca-cert-file", c("ca.crt"), "--tls-auth-clients", self.auth_clients,
                "--save", "", "--appendonly", "no", "--dir", os.path.dirname(c("ca.crt"))]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--tls-cluster", "yes", "--tls-replication", "yes",
                     "--cluster-config-file", c(f"nodes-{self.port}.conf")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_pdeathsig)
        deadline = Deadline(WAIT, f"TLS redis-server on port {self.port}")
        while True:
            assert self.proc.poll() is None, "redis-server exited"
            try:
                if self.cmd("PING") == "PONG":
                    return self
            except OSError:
                pass
            time.sleep(min(0.05, deadline.left()))

    def cmd(self, *args):
        ctx = ssl.create_default_context(cafile=self.certs("ca.crt"))
        ctx.load_cert_chain(self.certs("client.crt"), self.certs("client.key"))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="redis.test") as s:
                s.sendall(_encode(args))
                return _read_reply(s.makefile("rb"))

    def close(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def redis(certs):
    r = TLSRedis(certs, auth_clients="no").start()
    yield r
    r.close()


@pytest.fixture(scope="module")
def redis_cluster(certs):
    """Three TLS masters joined with redis-cli --tls --cluster create."""
    nodes = [TLSRedis(certs, cluster=True) for _ in range(3)]
    try:
        for n in nodes:
            n.start()
        subprocess.run(["redis-cli", "--tls", "--cacert", certs("ca.crt"), "--cert", certs("client.crt"),
                        "--key", certs("client.key"), "--cluster", "create"]
                       + [f"127.0.0.1:{n.port}" for n in nodes] + ["--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        wait_until(lambda: all("cluster_state:ok" in n.cmd("CLUSTER", "INFO") for n in nodes),
                   timeout=20, what="the TLS cluster to be ok")
        yield nodes
    finally:
        for n in nodes:
            n.close()


@pytest.fixture(scope="module")
def redis_mtls(certs):
    """A Redis that accepts only clients with a certificate from the test CA."""
    r = TLSRedis(certs, auth_clients="yes").start()
    yield r
    r.close()


# ---- nodes that cannot reach Redis ------------------------------------------------------------


@pytest.fixture
def unready_herald(herald_bin, tmp_path):
    started = []

    def start(**flags):
        srv = UnreadyHerald(herald_bin, str(tmp_path), **flags)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()


# ---- helpers ----------------------------------------------------------------------------------


def wait_local(node, channel):
    """Waits until node itself has a subscriber of channel (GET /stats?channels=1)."""
    wait_until(lambda: node.stats("?channels=1").get("channel_subscribers", {}).get(channel),
               what=f"a subscriber of {channel} on {node.opts['node_name']}")


def tls_clients(redis, node_name):
    """Names of the clients Redis sees from a node ("<node>-cmd", "<node>-sub")."""
    listing = redis.cmd("CLIENT", "LIST")
    names = [f.split("=", 1)[1] for line in listing.splitlines() for f in line.split()
             if f.startswith("name=")]
    return sorted(n for n in names if n.startswith(node_name + "-"))


def refused(node, chan):
    r = node.request("POST", "/pub/" + chan, "x", {"Content-Type": "text/plain"}, timeout=5)
    assert (r.status, r.error()["error"]) == (503, "backend_unavailable"), (r.status, r.body)


# ---- tests ------------------------------------------------------------------------------------


def test_two_nodes_deliver_each_others_publishes_over_tls(herald, redis, certs, chan):
    a = herald(redis=redis.url, redis_tls_ca=certs("ca.crt"), node_name="a")
    b = herald(redis=f"redis://127.0.0.1:{redis.port}", redis_tls=True,
               redis_tls_ca=certs("ca.crt"), node_name="b")
    assert tls_clients(redis, "a") == ["a-cmd", "a-sub"]
    assert tls_clients(redis, "b") == ["b-cmd", "b-sub"]
    with SSE(a, chan) as on_a, SSE(b, chan) as on_b:
        wait_local(a, chan)
        wait_local(b, chan)
        first = a.publish(chan, "from a")["id"]
        second = b.publish(chan, b'{"over": "tls"}', content_type="application/json")["id"]
        for sub in (on_a, on_b):
            got = sub.messages(2)
            assert [m["id"] for m in got] == [first, second]
            assert [m["data"] for m in got] == ["from a", {"over": "tls"}]
    assert a.history(chan) == b.history(chan)


def test_redis_cluster_over_tls(herald, redis_cluster, certs, chan):
    """--redis-tls with --redis-cluster: TLS to the seeds and to every node CLUSTER SLOTS names."""
    seeds = f"127.0.0.1:{redis_cluster[0].port}"
    a, b = (herald(redis_cluster=seeds, redis_tls=True, redis_tls_ca=certs("ca.crt"), node_name=name)
            for name in ("ca", "cb"))
    with SSE(b, chan) as on_b:
        wait_local(b, chan)
        sent = [a.publish(chan, f"m{i}")["id"] for i in range(3)]
        assert [m["id"] for m in on_b.messages(3)] == sent
    # Every master got a command connection from each node (heartbeats reach every shard).
    wait_until(lambda: all(tls_clients(n, "ca") for n in redis_cluster), what="ca on every master")


def test_mutual_tls_with_a_server_name(herald, unready_herald, redis_mtls, certs, chan):
    node = herald(redis=redis_mtls.url, redis_tls_ca=certs("ca.crt"),
                  redis_tls_cert=certs("client.crt"), redis_tls_key=certs("client.key"),
                  redis_tls_server_name="redis.test", node_name="m")
    with SSE(node, chan) as sub:
        wait_local(node, chan)
        sent = node.publish(chan, "mutual")["id"]
        assert sub.next_message()["id"] == sent
    # Without a certificate the server refuses the node after the handshake.
    bare = unready_herald(redis=redis_mtls.url, redis_tls_ca=certs("ca.crt"), node_name="bare")
    refused(bare, chan)
    wait_until(lambda: "certificate required" in bare.log(), what="the refusal in the log")


def test_wrong_ca_gives_503_and_logs_the_verification_failure(unready_herald, redis, certs, chan):
    node = unready_herald(redis=redis.url, redis_tls_ca=certs("other-ca.crt"), node_name="w")
    refused(node, chan)
    assert node.request("GET", "/healthz").status == 503
    what = "redis TLS certificate verification failed: self-signed certificate in certificate chain"
    wait_until(lambda: what in node.log(), what="the verification failure in the log")
    time.sleep(1.5)  # several retries (backoff from 100 ms), each failing the same way
    refused(node, chan)
    lines = [line for line in node.log().splitlines() if what in line]
    assert len(lines) == 2, lines  # one per connection (command, subscriber), not per retry
    assert tls_clients(redis, "w") == []


def test_insecure_connects_to_an_untrusted_certificate_and_warns(herald, redis, certs, chan):
    node = herald(redis=redis.url, redis_tls_ca=certs("other-ca.crt"), redis_tls_insecure=True,
                  redis_tls_server_name="not-redis.test", node_name="i")
    assert "--redis-tls-insecure: the Redis certificate and name are NOT verified" in node.log()
    node.publish(chan, "unverified")
