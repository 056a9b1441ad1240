"""A handlers module with a bug: importing it raises."""

from frappe.realtime import realtime

SETTINGS = {"retries": 3}


@realtime.on("never")
def never(socket) -> None:
    return None


RETRIES = SETTINGS["retry"]
