"""The JS client (clients/js) under node's own test runner, against real heralds that
its tests start from HERALD_BIN (this build: plain or ASan+UBSan). One pytest test per
tests/js/*.test.mjs file, so they run side by side; a failing node test fails it, and
so does a sanitizer report from any herald the node tests started.

    node --test tests/js/                    # the same, directly
    HERALD_JS_DISCONNECTS=1000 node --test tests/js/client.test.mjs   # a longer soak
"""

import glob
import os
import shutil
import subprocess

import pytest

from conftest import ROOT

NODE = shutil.which("node") or shutil.which("nodejs")
FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "js", "*.test.mjs")))
SANITIZER = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
             "WARNING: ThreadSanitizer")


@pytest.mark.timeout(400)
@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_node(herald_bin, path):
    assert NODE, "node is not installed: scripts/install-deps.sh installs the Debian package nodejs"
    env = dict(os.environ, HERALD_BIN=herald_bin)
    run = subprocess.run([NODE, "--test", "--test-reporter=tap", path], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=380)
    out = run.stdout + run.stderr
    print(out)  # the measured figures (lost, duplicated, sizes) are in the TAP comments
    assert run.returncode == 0, out[-8000:]
    assert not any(s in out for s in SANITIZER), out[-8000:]
    assert "# fail 0" in run.stdout


@pytest.mark.xdist_group("redis-cluster")
@pytest.mark.threads
@pytest.mark.timeout(400)
def test_user_messages_on_a_redis_cluster(rcluster, herald):
    """tests/js/cluster-user.mjs: the client's #user and a channel on two nodes sharing a
    3-master Redis Cluster (ids per channel), reconnecting to the other node each time."""
    assert NODE, "node is not installed: scripts/install-deps.sh installs the Debian package nodejs"
    nodes = [herald(redis_cluster=rcluster.seeds, node_name=f"js{i}", token_secret="sekrit",
                    lifetime_min="150ms", lifetime_max="300ms", poll_timeout="1s",
                    history_size=1000) for i in range(2)]
    env = dict(os.environ, HERALD_CLUSTER=",".join(f"http://127.0.0.1:{n.port}" for n in nodes))
    run = subprocess.run([NODE, "--test", "--test-reporter=tap",
                          os.path.join(ROOT, "tests", "js", "cluster-user.mjs")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=380)
    out = run.stdout + run.stderr
    print(out)
    assert run.returncode == 0, out[-8000:]
    assert "# fail 0" in run.stdout and "# pass 3" in run.stdout, out[-8000:]
