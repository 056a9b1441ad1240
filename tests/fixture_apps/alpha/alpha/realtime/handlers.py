"""Handlers of the test app ``alpha``, written the way an app author writes them."""

from __future__ import annotations

from typing import Any

from frappe.realtime import Socket, realtime


@realtime.on("connect")
def on_connect(socket: Socket) -> None:
    socket.set("greeted", True)
    socket.emit("welcome", {"app": "alpha", "rooms": sorted(socket.rooms)})


@realtime.on("disconnect", allow_guest=True)
def on_disconnect(socket: Socket) -> None:
    socket.emit("alpha_left", {"user": socket.user, "sid": socket.sid}, room="alpha_watchers")


@realtime.on("alpha_echo")
def alpha_echo(socket: Socket, text: str) -> dict[str, Any]:
    return {
        "app": "alpha",
        "text": text,
        "site": socket.site,
        "user": socket.user,
        "user_type": socket.user_type,
        "installed_apps": socket.installed_apps,
        "sid": socket.sid,
        "greeted": socket.get("greeted"),
    }


@realtime.on("alpha_count", check_types=True)
def alpha_count(socket: Socket, n: int, ratio: float = 1.0) -> float:
    return n * ratio


@realtime.on("alpha_guest", allow_guest=True)
def alpha_guest(socket: Socket) -> str:
    return f"hello {socket.user}"


@realtime.on("project_subscribe")
def project_subscribe(socket: Socket, project: str) -> list[str]:
    if socket.has_permission("Project", project):
        socket.join(f"project:{project}")
    return sorted(socket.rooms)


@realtime.on("watch")
def watch(socket: Socket) -> None:
    socket.join("alpha_watchers")


@realtime.on("project_leave")
def project_leave(socket: Socket, project: str) -> list[str]:
    socket.leave(f"project:{project}")
    return sorted(socket.rooms)


@realtime.on("project_say")
def project_say(socket: Socket, project: str, text: str) -> None:
    socket.emit("project_said", {"from": socket.user, "text": text}, room=f"project:{project}")


@realtime.on("who_is_here")
def who_is_here(socket: Socket, project: str) -> list[str]:
    return sorted(filter(None, map(socket.user_of, socket.participants(f"project:{project}"))))


@realtime.on("state_set")
def state_set(socket: Socket, key: str, value: Any) -> None:
    socket.set(key, value)


@realtime.on("state_get")
def state_get(socket: Socket, key: str) -> Any:
    return socket.get(key, "unset")


@realtime.on("boom")
def boom(socket: Socket) -> None:
    raise RuntimeError("alpha handler exploded on purpose")


@realtime.on("boom")
def after_boom(socket: Socket) -> str:
    socket.emit("after_boom")
    return "survived"


@realtime.on("twice")
def twice_first(socket: Socket) -> None:
    socket.emit("order", 1)


@realtime.on("twice")
def twice_second(socket: Socket) -> str:
    socket.emit("order", 2)
    return "second"


@realtime.on("shared")
def shared_alpha(socket: Socket) -> str:
    return "alpha"
