"""Start and stop real redis-server processes for herald's cluster-mode tests.

    with RedisServer() as r:                 # one server on a free loopback port
        r.cmd("SET", "k", "v"); r.url        # "redis://127.0.0.1:PORT"
        r.restart()                          # SIGKILL + start again on the same port

    with RedisCluster(masters=3, replicas=1) as c:   # 3+3 cluster via redis-cli --cluster create
        c.seeds                              # "127.0.0.1:P1,127.0.0.1:P2,..."
        c.kill_master_of("key")              # SIGKILL the master owning key's slot
        c.migrate_slot(slot, node)           # reshard one slot (keys and ownership) to node
        c.wait_ok()                          # until every live node says cluster_state:ok

Every process gets its own temporary directory and is killed on exit (context
manager, atexit, and PR_SET_PDEATHSIG on Linux), even when a test fails.
Only the standard library is used: a small RESP client talks to the servers.
"""

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["RedisServer", "RedisCluster", "RedisError", "free_port", "resp_command", "keyslot"]

_live = []


class RedisError(Exception):
    """An error reply (-ERR ...) from Redis."""


class _PortTaken(Exception):
    """redis-server could not bind its port: another process took it first."""


def free_port(cluster=False):
    """A loopback port free right now (and, for cluster nodes, its +10000 bus port)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not cluster:
            return port
        if port < 55000:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                pass
    raise RuntimeError("no free port")


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError("bad RESP line %r" % line)


def resp_command(port, *args, host="127.0.0.1", timeout=5.0):
    """Runs one command on a fresh connection; raises RedisError on an error reply."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(_encode(args))
        reply = _read_reply(s.makefile("rb"))
    if isinstance(reply, RedisError):
        raise reply
    return reply


def _crc16(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def keyslot(key):
    """Redis Cluster slot of key (hash tags honoured), as cluster_keyslot() in C."""
    k = key.encode() if isinstance(key, str) else key
    start = k.find(b"{")
    if start >= 0:
        end = k.find(b"}", start + 1)
        if end > start + 1:
            k = k[start + 1:end]
    return _crc16(k) & 16383


def _pdeathsig():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return
        except (OSError, RedisError):
            pass
        time.sleep(0.05)
    raise TimeoutError("timed out waiting for " + what)


class RedisServer:
    """One redis-server on 127.0.0.1 (cluster=True: a cluster node, not yet joined)."""

    def __init__(self, port=None, cluster=False, extra_args=(), workdir=None):
        self.cluster = cluster
        self._fixed_port = port is not None
        self.port = port or free_port(cluster)
        self.extra_args = list(extra_args)
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="herald-redis-")
        self.proc = None

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def start(self, timeout=10.0):
        """Starts the server. The first start on a port of our choosing moves to another free
        port when another process took it between free_port() and the bind (tests run in
        parallel); a restart keeps its port, which the herald nodes know."""
        for _ in range(5):
            try:
                self._start(timeout)
                self._fixed_port = True
                return self
            except _PortTaken:
                if self._fixed_port:
                    raise RuntimeError("redis-server: port %d is taken" % self.port) from None
                self.port = free_port(self.cluster)
        raise RuntimeError("redis-server: no free port after 5 attempts")

    def _start(self, timeout):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.dir]
        if self.cluster:
            # A replica shows in CLUSTER SLOTS once its replication offset is not 0: its
            # master's first ping (every 10 s by default) or write moves it, after the
            # initial sync (which a master delays 5 s by default for more replicas). With
            # the defaults a new 3+3 cluster took 10 s to settle, now 3 s.
            args += ["--cluster-enabled", "yes",
                     "--cluster-config-file", os.path.join(self.dir, "nodes-%d.conf" % self.port),
                     "--cluster-node-timeout", "2000",
                     "--repl-ping-replica-period", "1", "--repl-diskless-sync-delay", "0"]
        log = open(os.path.join(self.dir, "redis-%d.log" % self.port), "ab")
        self.proc = subprocess.Popen(args + self.extra_args, stdout=log, stderr=log,
                                     preexec_fn=_pdeathsig)
        log.close()
        if self not in _live:
            _live.append(self)
        _wait(lambda: self.proc.poll() is not None or self.cmd("PING") == "PONG", timeout,
              "redis-server on port %d" % self.port)
        if self.proc.poll() is not None:
            with open(os.path.join(self.dir, "redis-%d.log" % self.port), errors="replace") as f:
                if "Address already in use" in f.read():
                    raise _PortTaken()
            raise RuntimeError("redis-server on port %d exited: see %s" % (self.port, self.dir))
        return self

    def stop(self, sig=signal.SIGTERM):
        """Stops the server (SIGKILL: no shutdown at all, as in a crash)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self):
        self.stop(signal.SIGKILL)

    def restart(self, down_for=0.0):
        """SIGKILL, optionally stay down for a while, start again on the same port."""
        self.kill()
        time.sleep(down_for)
        return self.start()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def cmd(self, *args):
        return resp_command(self.port, *args)

    def close(self):
        self.kill()
        if self in _live:
            _live.remove(self)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start() if not self.running else self

    def __exit__(self, *exc):
        self.close()


class RedisCluster:
    """masters * (1 + replicas) cluster nodes joined with `redis-cli --cluster create`."""

    def __init__(self, masters=3, replicas=1):
        self.masters, self.replicas = masters, replicas
        self.dir = tempfile.mkdtemp(prefix="herald-cluster-")
        self.nodes = []

    @property
    def seeds(self):
        """Comma-separated host:port of every node (for --redis-cluster)."""
        return ",".join(n.addr for n in self.nodes)

    def live_nodes(self):
        return [n for n in self.nodes if n.running]

    def start(self, timeout=30.0):
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                self.nodes.append(RedisServer(cluster=True, workdir=self.dir).start())
            subprocess.run(["redis-cli", "--cluster", "create"] + [n.addr for n in self.nodes] +
                           ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=timeout)
            self.wait_ok(timeout, replicas=self.replicas)
        except BaseException:
            self.close()
            raise
        return self

    def _settled(self, replicas):
        for n in self.live_nodes():
            if "cluster_state:ok" not in n.cmd("CLUSTER", "INFO"):
                return False
            slots = n.cmd("CLUSTER", "SLOTS")
            if not slots or any(len(r) < 3 + replicas for r in slots):
                return False
        return True

    def wait_ok(self, timeout=20.0, replicas=0):
        """Until every live node reports a healthy cluster (with `replicas` per shard)."""
        _wait(lambda: self._settled(replicas), timeout, "cluster_state:ok")

    def slot_owner(self, slot):
        """The RedisServer that is master for slot, as the first live node sees it."""
        for start, end, master, *_ in self.live_nodes()[0].cmd("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == master[1])
        return None

    def master_of(self, key):
        return self.slot_owner(keyslot(key))

    def master_nodes(self):
        """The live nodes that own slots, in CLUSTER SLOTS order (no repeats)."""
        out = []
        for _, _, master, *_ in self.live_nodes()[0].cmd("CLUSTER", "SLOTS"):
            node = next(n for n in self.nodes if n.port == master[1])
            if node not in out:
                out.append(node)
        return out

    def migrate_slot(self, slot, target, during=None, timeout=20.0):
        """Moves slot, keys and ownership, to the master `target` as redis-cli --cluster
        reshard does: IMPORTING/MIGRATING, MIGRATE of every key, then SETSLOT NODE on every
        master (the target first). during(), if given, runs while the slot is half-moved
        (every key on the target, ownership not yet changed: clients get ASK redirections)."""
        source = self.slot_owner(slot)
        if source is target:
            return
        sid, tid = source.cmd("CLUSTER", "MYID"), target.cmd("CLUSTER", "MYID")
        target.cmd("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
        source.cmd("CLUSTER", "SETSLOT", slot, "MIGRATING", tid)
        while True:
            keys = source.cmd("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            source.cmd("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        if during:
            during()
        for n in [target, source] + [m for m in self.master_nodes() if m not in (target, source)]:
            n.cmd("CLUSTER", "SETSLOT", slot, "NODE", tid)
        _wait(lambda: all(self._owner_seen_by(n, slot) == target.port for n in self.live_nodes()),
              timeout, "every node to see slot %d on port %d" % (slot, target.port))

    @staticmethod
    def _owner_seen_by(node, slot):
        for start, end, master, *_ in node.cmd("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return master[1]
        return None

    def kill_master_of(self, key, wait_failover=True, timeout=20.0):
        """SIGKILLs the master owning key's slot; waits until a replica took over."""
        victim = self.master_of(key)
        victim.kill()
        if wait_failover:
            _wait(lambda: self.master_of(key) not in (None, victim) and self._settled(0),
                  timeout, "failover of port %d" % victim.port)
        return victim

    def close(self):
        for n in self.nodes:
            n.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


@atexit.register
def _kill_all():
    for server in list(_live):
        server.kill()


if __name__ == "__main__":
    # Self-check: python3 tests/integration/redis_util.py
    with RedisServer() as r:
        assert r.cmd("SET", "k", "v") == "OK" and r.cmd("GET", "k") == "v"
        r.restart()
        assert r.cmd("GET", "k") is None
    assert keyslot("foo") == 12182 and keyslot("{user1000}.a") == keyslot("user1000")
    t0 = time.monotonic()
    with RedisCluster() as c:
        assert len(c.seeds.split(",")) == 6
        assert c.master_of("foo").cmd("CLUSTER", "KEYSLOT", "foo") == 12182
        victim = c.kill_master_of("foo")
        assert c.master_of("foo") is not victim
        print("cluster up, failover done in %.1f s" % (time.monotonic() - t0))
    print("redis_util ok")
