"""Small helpers the Python benchmark scripts of tools/bench share."""

import socket


def rss_kib(pid):
    """Resident memory of process pid, KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def free_port():
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
