"""Handlers that import ``MySQLdb`` at module level, as some apps do: ``gsocket doctor`` flags it.

The real mysqlclient is not installed in the test environment; a module registered under its
name is what the check sees, exactly as it would see the C driver.
"""

from __future__ import annotations

import sys
import types

from frappe.realtime import Socket, realtime

sys.modules.setdefault("MySQLdb", types.ModuleType("MySQLdb"))


@realtime.on("opsmysql_ping")
def opsmysql_ping(socket: Socket) -> str:
    return "pong"
