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
