"""The handler registry behind ``@realtime.on``: which functions run for which client event.

App authors decorate functions in ``<app>/realtime/handlers.py``; the decorator only records
them and returns the function unchanged, so a handler stays an ordinary function that its
author can call from a test.  The owning app is read from the function's module, so an app
cannot claim to be another.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger("gsocket.registry")

F = TypeVar("F", bound=Callable[..., Any])

CHECKED_TYPES = (str, int, float, bool, dict, list)


@dataclass(frozen=True)
class Handler:
    """One registered handler.

    :param event: client event name (``connect`` and ``disconnect`` included).
    :param fn: the function, called as ``fn(socket, *payload)``.
    :param app: owning app; the handler runs only on sites that have it installed.
    :param frappe_context: open a Frappe context (DB + session) around the call.
    :param allow_guest: run for Guest sockets too.
    """

    event: str
    fn: Callable[..., Any]
    app: str
    frappe_context: bool = False
    allow_guest: bool = False
    signature: inspect.Signature = field(init=False, repr=False, compare=False)
    arg_types: tuple[tuple[str, type], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        signature = inspect.signature(self.fn)
        object.__setattr__(self, "signature", signature)
        object.__setattr__(self, "arg_types", _checked_types(self.fn, signature))

    @property
    def qualname(self) -> str:
        """``module.function``, for log lines."""
        return f"{self.fn.__module__}.{self.fn.__qualname__}"

    def check_arguments(self, socket: object, args: tuple[Any, ...]) -> str | None:
        """Return why ``args`` do not fit this handler, or ``None`` when they do.

        Only the count and the plain JSON types (``str``, ``int``, ``float``, ``bool``,
        ``dict``, ``list``) named in the annotations are checked: enough to turn a client's
        mistake into one clear log line instead of a TypeError deep inside the handler.
        """
        try:
            bound = self.signature.bind(socket, *args)
        except TypeError as e:
            return f"{e} (got {len(args)} argument{'s' if len(args) != 1 else ''})"
        for name, expected in self.arg_types:
            if name not in bound.arguments:
                continue
            value = bound.arguments[name]
            if not _is_instance(value, expected):
                return f"argument {name!r} must be {expected.__name__}, got {type(value).__name__}"
        return None


def _is_instance(value: Any, expected: type) -> bool:
    if isinstance(value, bool) and expected in (int, float):
        return False
    if expected is float and isinstance(value, int):
        return True
    return isinstance(value, expected)


def _checked_types(fn: Callable[..., Any], signature: inspect.Signature) -> tuple:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only disables the check
        return ()
    params = list(signature.parameters.values())[1:]
    return tuple(
        (p.name, hints[p.name])
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and hints.get(p.name) in CHECKED_TYPES
    )


class Registry:
    """Event name -> handlers, in registration order.

    Several handlers may bind one event; all that apply run, first to last.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}

    def on(
        self, event: str, *, frappe_context: bool = False, allow_guest: bool = False
    ) -> Callable[[F], F]:
        """Register the decorated function as a handler of ``event``.

        :param event: client event name, as the browser emits it with
            ``frappe.realtime.emit(event, ...)``; ``connect``/``disconnect`` run at those moments.
        :param frappe_context: open a Frappe context for the call (``frappe.init`` ->
            ``connect`` -> ``set_user`` -> handler -> commit/rollback -> ``destroy``).
        :param allow_guest: when false, Guest sockets never run this handler.
        :returns: a decorator that returns the function unchanged.
        """
        if not isinstance(event, str) or not event:
            raise ValueError("realtime.on() needs an event name")

        def decorator(fn: F) -> F:
            app = (getattr(fn, "__module__", None) or "").partition(".")[0]
            self.add(event, fn, app, frappe_context=frappe_context, allow_guest=allow_guest)
            return fn

        return decorator

    def add(
        self,
        event: str,
        fn: Callable[..., Any],
        app: str,
        *,
        frappe_context: bool = False,
        allow_guest: bool = False,
    ) -> Handler:
        """Register ``fn`` for ``event`` on behalf of ``app``; registering it twice is a no-op.

        :param event: client event name.
        :param fn: the handler, called as ``fn(socket, *payload)``.
        :param app: owning app.
        :param frappe_context: see :meth:`on`.
        :param allow_guest: see :meth:`on`.
        """
        handler = Handler(event, fn, app, frappe_context, allow_guest)
        handlers = self._handlers.setdefault(event, [])
        for existing in handlers:
            if existing.fn is fn:
                return existing
        handlers.append(handler)
        log.debug("registered %s for %r (app %s)", handler.qualname, event, app)
        return handler

    def handlers_for(self, event: str) -> list[Handler]:
        """Return the handlers of ``event`` in registration order (empty when none)."""
        return self._handlers.get(event, [])

    def events(self) -> list[str]:
        """Return every event name that has a handler."""
        return list(self._handlers)

    def apps(self) -> set[str]:
        """Return every app that registered a handler."""
        return {h.app for handlers in self._handlers.values() for h in handlers}


realtime = Registry()
"""The registry app authors import as ``from frappe.realtime import realtime``."""
