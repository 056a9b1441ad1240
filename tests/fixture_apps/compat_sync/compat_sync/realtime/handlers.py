"""An app written to Frappe's synchronous handler API, from its documentation only.

Frappe's handlers acknowledge nothing (their return value is dropped), so results go back to
the client with ``socket.emit``, as the documentation's examples do.
"""

import frappe  # noqa: F401 - as in the documentation's example
from frappe.realtime import Socket, realtime


@realtime.on("connect")
def remember_user(socket: Socket) -> None:
    socket.set("connected_as", socket.user)


@realtime.on("project_subscribe")
def project_subscribe(socket: Socket, project: str) -> None:
    if socket.has_permission("Project", project):
        socket.join(f"project:{project}")
        socket.emit("project_subscribed", {"project": project})


@realtime.on("project_comment")
def project_comment(socket: Socket, project: str, text: str) -> None:
    socket.emit("project_comment", {"user": socket.user, "text": text}, room=f"project:{project}")


@realtime.on("whoami", allow_guest=True)
def whoami(socket: Socket) -> None:
    socket.emit(
        "whoami",
        {
            "site": socket.site,
            "user": socket.user,
            "user_type": socket.user_type,
            "installed_apps": socket.installed_apps,
            "connected_as": socket.get("connected_as"),
        },
    )


@realtime.on("open_forms")
def open_forms(socket: Socket) -> None:
    socket.emit("open_forms", socket.get("subscribed_documents", []))
