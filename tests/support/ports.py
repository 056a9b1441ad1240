"""Loopback port helpers shared by the test-support servers."""

from __future__ import annotations

import random
import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    The kernel picks the port (bind to 0), which avoids collisions between test processes
    running in parallel far better than a fixed or random number would.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Poll until ``host:port`` accepts connections; raise ``TimeoutError`` after ``timeout``.

    Servers started as subprocesses give no other readiness signal, so a bounded poll is the
    honest way to wait for them.
    """
    deadline = time.monotonic() + timeout
    while not port_is_open(port, host):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.02)


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """Return a port ``p`` with ``p .. p + count - 1`` all free a moment ago.

    For servers that take consecutive ports (gsocket's process K on ``socketio_port + K``).
    Taken below Linux's ephemeral range (32768 and up), where no outgoing connection holds a
    local port that a later bind would collide with.
    """
    while True:
        base = random.randrange(20_000, 30_000)
        try:
            for k in range(count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((host, base + k))
        except OSError:
            continue
        return base
