"""Small helpers the Python benchmark scripts of tools/bench share."""

import argparse
import contextlib
import socket
import subprocess
import time


def rss_kib(pid):
    """Resident memory of process pid, KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def free_port():
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parser():
    """An argument parser with the herald binary as optional first argument."""
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", nargs="?", default="build/herald")
    return ap


def wait_port(port, tries=100):
    """Waits until something listens on the loopback port (about 5 s at most)."""
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


@contextlib.contextmanager
def herald(binary, *args):
    """Runs herald on a free loopback port with the given flags: yields (process,
    port) once it listens, and stops it at the end."""
    port = free_port()
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", *args],
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait()
