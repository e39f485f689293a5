"""Fixtures: herald processes on free loopback ports, unique channel names and a
per-test time limit (no plugins: SIGALRM plus faulthandler).

`herald(**flags)` starts a server for one test; `module_herald(**flags)` one
shared by a module; `server` is the module's default instance. Each is stopped
with SIGTERM at teardown, which asserts a clean exit (code 0 within the drain
bound) and, for sanitizer builds, no AddressSanitizer/UBSan/LeakSanitizer or
ThreadSanitizer report in the captured log.
"""

import fcntl
import faulthandler
import itertools
import os
import re
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import Herald  # noqa: E402
from redis_util import RedisCluster, RedisServer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_TEST_TIMEOUT = 60


@pytest.fixture(scope="session")
def herald_bin():
    path = os.environ.get("HERALD_BIN") or os.path.join(ROOT, "build", "herald")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no herald binary at {path}: run `make build/herald` or set HERALD_BIN")
    return path


RUNNING = []  # every herald started and not yet stopped, for the per-test sanitizer check


class Servers:
    """Starts herald instances and stops every one of them at teardown."""

    def __init__(self, binary, logdir):
        self.binary = binary
        self.logdir = logdir
        self.started = []

    def __call__(self, env=None, api=False, **flags):
        srv = Herald(self.binary, self.logdir, env=env, api=api, **flags)
        self.started.append(srv)
        RUNNING.append(srv)
        return srv.start()

    def stop_all(self):
        errors = []
        for srv in self.started:
            RUNNING.remove(srv)
            try:
                srv.stop()
            except AssertionError as e:
                errors.append(str(e))
        assert not errors, "\n\n".join(errors)


@pytest.fixture(autouse=True)
def _sanitizer_watch():
    """Fails the test during which a running server (possibly shared by the module)
    printed a sanitizer report or died, rather than whichever test comes last."""
    yield
    for srv in RUNNING:
        if srv.blamed:
            continue
        report = srv.sanitizer_report()
        died = srv.returncode is None and srv.proc.poll() is not None
        if report or died:
            srv.blamed = True
            pytest.fail(f"herald {'reported' if report else 'died'} during this test:\n{report or srv.log_tail()}")


@pytest.fixture
def herald(herald_bin, tmp_path):
    servers = Servers(herald_bin, str(tmp_path))
    yield servers
    servers.stop_all()


@pytest.fixture(scope="module")
def module_herald(herald_bin, tmp_path_factory):
    servers = Servers(herald_bin, str(tmp_path_factory.mktemp("herald")))
    yield servers
    servers.stop_all()


@pytest.fixture(scope="module")
def redis():
    """One redis-server for the module's tests (killed at the end, even on failure)."""
    with RedisServer() as r:
        yield r


@pytest.fixture(scope="module")
def rcluster():
    """A 3-master Redis Cluster for the module's tests; mark them
    @pytest.mark.xdist_group("redis-cluster") so that they share one xdist worker and it
    starts once."""
    with RedisCluster(masters=3, replicas=0) as c:
        yield c


@pytest.fixture
def redis_factory():
    """Starts redis-servers of the test's own (for tests that stop, freeze or restart them);
    every one is killed at teardown (a stopped one resumed first), even when the test fails."""
    started = []

    def start(extra_args=()):
        r = RedisServer(extra_args=extra_args)
        started.append(r)
        return r.start()

    yield start
    for r in started:
        if r.running:
            r.proc.send_signal(signal.SIGCONT)
        r.close()


@pytest.fixture(scope="module")
def _shared_server():
    return {}


@pytest.fixture
def server(module_herald, _shared_server):
    """A default herald (2 workers) shared by the tests of one module; replaced when a
    test crashed it, so one crash fails one test rather than the rest of the module."""
    srv = _shared_server.get("srv")
    if srv is None or srv.proc.poll() is not None:
        srv = _shared_server["srv"] = module_herald()
    return srv


_names = itertools.count()


@pytest.fixture
def chan(request):
    """A channel name no other test uses."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:80]
    return f"{base}-{os.getpid()}-{next(_names)}"


@pytest.fixture(autouse=True)
def _serial(request, tmp_path_factory):
    """Under pytest-xdist, a test marked `serial` runs while no other test runs: every test
    holds a shared lock on a file of the session, a serial test an exclusive one. A
    turnstile makes later tests wait behind a serial test that waits, so it is not starved."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    root = tmp_path_factory.getbasetemp().parent  # the session's, shared by its workers
    mode = fcntl.LOCK_EX if request.node.get_closest_marker("serial") else fcntl.LOCK_SH
    with open(root / "serial.turnstile", "a") as gate, open(root / "serial.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, mode)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # closing the file releases the lock


class TimeLimitExceeded(Exception):
    pass


@pytest.fixture(autouse=True)
def _time_limit(request):
    """Fails a test that runs past its limit (@pytest.mark.timeout(seconds), default 60 s),
    after dumping every thread's stack; a hard stop follows if even that does not help."""
    marker = request.node.get_closest_marker("timeout")
    seconds = marker.args[0] if marker else DEFAULT_TEST_TIMEOUT

    def expire(signum, frame):
        faulthandler.dump_traceback(all_threads=True)
        raise TimeLimitExceeded(f"test ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + 30, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()
