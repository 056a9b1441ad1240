"""Exceptions that cross module boundaries, kept apart so that any module may raise them."""


class StartupError(Exception):
    """The server must not start; the message tells the operator what to do."""
