"""The listening socket: the bench's ``socketio_uds`` path, else its host and port.

Kept apart from :mod:`gsocket.app` so that ``gsocket serve --handover``'s parent process binds
it without importing the server, and connections that arrive meanwhile wait in the backlog.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from gsocket.config import Config
from gsocket.errors import StartupError

BACKLOG = 2048


def open_listener(config: Config) -> socket.socket:
    """Bind and listen; a stale Unix socket file left by a previous process is replaced.

    :param config: ``uds``, ``host``, ``port`` and ``reuse_port`` are used.
    :raises StartupError: when the address cannot be bound (most often: the Node realtime
        process, or another gsocket, still listens there).
    """
    if config.uds:
        where = config.uds
        path = Path(config.uds)
        if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = str(path)
    else:
        where = f"{config.host}:{config.port}"
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.reuse_port:
            # A hand-over without a parent process: the new server listens next to the old
            # one, which then drains (docs/operations.md).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        address = (config.host, config.port)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise StartupError(
            f"cannot listen on {where}: {e.strerror or e}; is the Node realtime process (or "
            "another gsocket) still running there?"
        ) from None
    if config.uds:
        os.chmod(config.uds, 0o770)
    sock.listen(BACKLOG)
    return sock
