"""Handlers kept in a helper package of the app and registered when handlers.py imports it."""

from frappe.realtime import Socket, realtime


@realtime.on("chat_say")
async def chat_say(socket: Socket, room: str, text: str) -> None:
    await socket.emit("chat_said", {"user": socket.user, "text": text}, room=f"chat:{room}")


@realtime.on("chat_join")
def chat_join(socket: Socket, room: str) -> None:
    socket.join(f"chat:{room}")
    socket.emit("chat_joined", room)
