"""Handlers the operations tests drive: slow work to drain, errors to log, rooms to share."""

from __future__ import annotations

import time
from pathlib import Path

from frappe.realtime import Socket, realtime


@realtime.on("ops_slow")
def ops_slow(socket: Socket, seconds: float, marker: str) -> None:
    """Say it started, work for ``seconds``, then leave a marker file: a handler in flight."""
    socket.emit("ops_slow_started", {"seconds": seconds})
    time.sleep(seconds)
    Path(marker).write_text("done")


@realtime.on("ops_fail")
def ops_fail(socket: Socket) -> None:
    """A handler with a bug."""
    raise RuntimeError("ops_fail always fails")


@realtime.on("ops_join")
def ops_join(socket: Socket, room: str) -> str:
    """Join ``room`` of the socket's site; acknowledges with the sid."""
    socket.join(room)
    return socket.sid


@realtime.on("ops_shout")
def ops_shout(socket: Socket, room: str, message: dict) -> bool:
    """Emit ``shout`` to ``room``: on every process of a scaled-out bench."""
    socket.emit("shout", message, room=room)
    return True


@realtime.on("ops_who")
def ops_who(socket: Socket, room: str) -> list[list[str | None]]:
    """The ``[sid, user]`` of every socket in ``room``, as an app handler sees them."""
    return [[sid, socket.user_of(sid)] for sid in socket.participants(room)]
