"""Custom realtime handlers, written exactly as an app author writes them for a bench.

gsocket imports ``<app>/realtime/handlers.py`` of every app in ``apps.txt``; the demo page
calls these with ``socket.emit(event, ..., callback)`` and shows what the callback receives:
a handler's return value is the acknowledgement.
"""

from frappe.realtime import Socket, realtime


@realtime.on("demo_rooms", allow_guest=True)
def demo_rooms(socket: Socket) -> list[str]:
    """Answer with the rooms this socket is in, so the page can show them (Guests too)."""
    return sorted(socket.rooms)


@realtime.on("demo_hello")
def demo_hello(socket: Socket, text: str) -> dict[str, object]:
    """Greet a logged-in user and count the greetings of this connection.

    Guests never run it (``allow_guest`` is off): their acknowledgement comes back empty.
    The count lives in per-socket state, so it starts again after a reconnect.
    """
    count = socket.get("hello_count", 0) + 1
    socket.set("hello_count", count)
    return {
        "greeting": f"Hello {socket.user}, you said {text!r}",
        "user_type": socket.user_type,
        "site": socket.site,
        "count": count,
    }
