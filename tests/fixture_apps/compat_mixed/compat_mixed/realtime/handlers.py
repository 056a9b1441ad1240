"""An app mixing plain and async handlers, helpers in a sub-package and decorated handlers."""

import functools

from compat_lib import async_audited, audited, traced
from frappe.realtime import Socket, realtime

import compat_mixed.chat.events  # noqa: F401 - registers the chat handlers


@realtime.on("mixed_both")
def both_plain(socket: Socket) -> None:
    socket.emit("mixed_order", "plain")


@realtime.on("mixed_both")
async def both_async(socket: Socket) -> None:
    await socket.emit("mixed_order", "async")


@realtime.on("mixed_audited")
@audited
def audited_plain(socket: Socket, text: str) -> None:
    socket.emit("mixed_audited", text)


@realtime.on("mixed_async_audited")
@async_audited
async def audited_async(socket: Socket, text: str) -> None:
    await socket.emit("mixed_async_audited", text)


@realtime.on("mixed_traced")
@traced
async def traced_async(socket: Socket, text: str) -> None:
    await socket.join("traced")
    await socket.emit(
        "mixed_traced", {"text": text, "in": socket.sid in socket.participants("traced")}
    )


def greet(greeting: str, socket: Socket, name: str) -> None:
    socket.emit("mixed_greeting", f"{greeting}, {name}")


realtime.on("mixed_partial")(functools.partial(greet, "hello"))


class Lobby:
    def __init__(self, room: str) -> None:
        self.room = room

    def enter(self, socket: Socket) -> None:
        socket.join(self.room)
        socket.emit("mixed_lobby", self.room)


realtime.on("mixed_method")(Lobby("lobby").enter)


class Echo:
    """A plain callable object."""

    def __call__(self, socket: Socket, value: object) -> None:
        socket.emit("mixed_echo", value)


realtime.on("mixed_callable")(Echo())


@realtime.on("mixed_not_json")
def not_json(socket: Socket) -> set:
    socket.emit("mixed_not_json_ran")
    return {1, 2}
