"""A realtime *module* (not a package): Frappe does not load handlers from it."""

REALTIME_SETTINGS = {"enabled": True}
