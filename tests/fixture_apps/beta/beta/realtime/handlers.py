"""Handlers of the test app ``beta``, installed on another site than ``alpha``."""

from __future__ import annotations

from frappe.realtime import Socket, realtime


@realtime.on("beta_echo")
def beta_echo(socket: Socket) -> str:
    return f"beta on {socket.site}"


@realtime.on("shared")
def shared_beta(socket: Socket) -> str:
    return "beta"
