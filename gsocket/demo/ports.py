"""Loopback ports for the children of a local stack: a free one, a free run, and waiting for one.

The demo, the test suite and the benchmarks all place servers on ``127.0.0.1`` ports nobody
configured; this is the one implementation of choosing them and of waiting until a child
listens on one.
"""

from __future__ import annotations

import random
import socket

from gsocket.demo.processes import wait_until

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago.

    The kernel picks it (bind to 0), which avoids collisions between processes choosing ports
    in parallel far better than a fixed or random number would.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind ``host:port`` now (with ``SO_REUSEADDR``, as gsocket's
    listener does, so that a port a stopped server left in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port_run(count: int, host: str = LOOPBACK) -> int:
    """A port ``p`` with ``p .. p + count - 1`` all free a moment ago.

    For servers that take consecutive ports (gsocket's process K on ``socketio_port + K``).
    Taken below Linux's ephemeral range (32768 and up), where no outgoing connection holds a
    local port that a later bind would collide with.
    """
    while True:
        base = random.randrange(20_000, 30_000)
        if all(port_is_free(base + k, host) for k in range(count)):
            return base


def port_is_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = LOOPBACK, timeout: float = 10.0) -> None:
    """Wait until ``host:port`` accepts connections; ``TimeoutError`` after ``timeout``."""
    message = f"nothing listens on {host}:{port} after {timeout}s"
    wait_until(lambda: port_is_open(port, host), timeout, message)
