"""The handler registry behind ``@realtime.on``: which callables run for which client event.

App authors decorate handlers in ``<app>/realtime/handlers.py``; the decorator only records
them and returns the callable unchanged, so a handler stays an ordinary function that its
author can call from a test.  Registration follows Frappe's own Python realtime server, so that
one handlers module works on both servers:

- the owning app is the app whose handlers module is being imported
  (:meth:`Registry.importing_app`, which the loader wraps every import in), so handlers defined
  in a helper package of the app, or wrapped by a decorator living elsewhere, belong to it;
- any callable registers: functions, methods, callable objects, ``functools.partial``;
- an ``async def`` handler (or an object whose ``__call__`` is one, or a wrapper whose
  ``__wrapped__`` is one) runs as a coroutine; ``frappe_context=True`` on it is refused at
  registration, as Frappe refuses it: a Frappe context belongs to one greenlet and a blocking
  ORM, not to a coroutine that shares the asyncio loop with every other async handler.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger("gsocket.registry")

F = TypeVar("F", bound=Callable[..., Any])

CHECKED_TYPES = (str, int, float, bool, dict, list)


def describe(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of any callable, for log lines and errors.

    Partials name the function they wrap, callable objects their class.
    """
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not hasattr(target, "__qualname__"):
        target = type(target)
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or repr(target)
    return f"{module}.{name}"


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine to await.

    True for ``async def`` functions and methods, for partials of them, for objects whose
    ``__call__`` is one, and for wrappers that name an ``async def`` in ``__wrapped__``
    (``functools.wraps``): such a wrapper returns the coroutine it wraps.
    """
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.iscoroutinefunction(getattr(type(fn), "__call__", None)):  # noqa: B004
        return True
    try:
        unwrapped = inspect.unwrap(fn, stop=inspect.iscoroutinefunction)
    except ValueError:  # a __wrapped__ cycle: nothing to learn from it
        return False
    return inspect.iscoroutinefunction(unwrapped)


def owner_from_module(fn: Callable[..., Any]) -> str:
    """The top-level package of the module that defines ``fn`` (``""`` when it has none)."""
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    return (getattr(target, "__module__", None) or "").partition(".")[0]


@dataclass(frozen=True)
class Handler:
    """One registered handler.

    :param event: client event name (``connect`` and ``disconnect`` included).
    :param fn: the callable, called as ``fn(socket, *payload)``.
    :param app: owning app; the handler runs only on sites that have it installed.
    :param frappe_context: open a Frappe context (DB + session) around the call.
    :param allow_guest: run for Guest sockets too.
    :param check_types: also refuse payloads that do not match the plain JSON types named in
        the annotations (a gsocket extension; Frappe passes arguments as they come).
    """

    event: str
    fn: Callable[..., Any]
    app: str
    frappe_context: bool = False
    allow_guest: bool = False
    check_types: bool = False
    is_async: bool = field(init=False, compare=False)
    signature: inspect.Signature | None = field(init=False, repr=False, compare=False)
    arg_types: tuple[tuple[str, type], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            signature: inspect.Signature | None = inspect.signature(self.fn)
        except (TypeError, ValueError):
            signature = None  # some builtins have none: their arguments go unchecked
        object.__setattr__(self, "signature", signature)
        object.__setattr__(self, "is_async", is_async_callable(self.fn))
        types = _checked_types(self.fn, signature) if self.check_types and signature else ()
        object.__setattr__(self, "arg_types", types)

    @property
    def qualname(self) -> str:
        """``module.function``, for log lines."""
        return describe(self.fn)

    def check_arguments(self, socket: object, args: tuple[Any, ...]) -> str | None:
        """Return why ``args`` do not fit this handler, or ``None`` when they do.

        The count is always checked: a payload that cannot bind would only raise a TypeError
        deep inside the call.  Types are checked only for ``check_types=True`` handlers, and
        only the plain JSON types (``str``, ``int``, ``float``, ``bool``, ``dict``, ``list``).
        """
        if self.signature is None:
            return None
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
        self._importing: list[str] = []

    @contextmanager
    def importing_app(self, app: str) -> Iterator[None]:
        """Make ``app`` the owner of every handler registered inside this block.

        :param app: the app whose handlers module is being imported.
        """
        self._importing.append(app)
        try:
            yield
        finally:
            self._importing.pop()

    def on(
        self,
        event: str,
        *,
        frappe_context: bool = False,
        allow_guest: bool = False,
        check_types: bool = False,
    ) -> Callable[[F], F]:
        """Register the decorated callable as a handler of ``event``.

        :param event: client event name, as the browser emits it with
            ``frappe.realtime.emit(event, ...)``; ``connect``/``disconnect`` run at those moments.
        :param frappe_context: open a Frappe context for the call (``frappe.init`` ->
            ``connect`` -> ``set_user`` -> handler -> commit/rollback -> ``destroy``); only for
            plain (not ``async def``) handlers.
        :param allow_guest: when false, Guest sockets never run this handler.
        :param check_types: refuse payloads whose values do not match the handler's ``str``,
            ``int``, ``float``, ``bool``, ``dict``, ``list`` annotations (gsocket only: a
            handlers module that uses it does not load on Frappe's own server).
        :returns: a decorator that returns the callable unchanged.
        :raises TypeError: for ``frappe_context=True`` on an ``async def`` handler, or a
            decorated object that is not callable.
        """
        if not isinstance(event, str) or not event:
            raise ValueError("realtime.on() needs an event name")

        def decorator(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"realtime.on({event!r}) decorates {fn!r}, which is not callable")
            app = self._importing[-1] if self._importing else owner_from_module(fn)
            if not app:
                raise ValueError(
                    f"cannot tell which app owns the handler {describe(fn)} of {event!r}: "
                    "register it from <app>/realtime/handlers.py (or a module that one imports)"
                )
            self.add(
                event,
                fn,
                app,
                frappe_context=frappe_context,
                allow_guest=allow_guest,
                check_types=check_types,
            )
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
        check_types: bool = False,
    ) -> Handler:
        """Register ``fn`` for ``event`` on behalf of ``app``; registering it twice is a no-op.

        :param event: client event name.
        :param fn: the handler, called as ``fn(socket, *payload)``.
        :param app: owning app.
        :param frappe_context: see :meth:`on`.
        :param allow_guest: see :meth:`on`.
        :param check_types: see :meth:`on`.
        :raises TypeError: for ``frappe_context=True`` on an ``async def`` handler.
        """
        handler = Handler(event, fn, app, frappe_context, allow_guest, check_types)
        if frappe_context and handler.is_async:
            raise TypeError(
                f"realtime handler {handler.qualname} of {event!r} (app {app}) is 'async def' "
                "but asks for frappe_context=True: a Frappe context needs a plain 'def' handler "
                "(Frappe refuses the same)"
            )
        handlers = self._handlers.setdefault(event, [])
        for existing in handlers:
            if existing.fn is fn:
                return existing
        handlers.append(handler)
        log.debug(
            "registered %s%s for %r (app %s)",
            "async " if handler.is_async else "",
            handler.qualname,
            event,
            app,
        )
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

    def has_async(self) -> bool:
        """Whether any handler is a coroutine function (the asyncio loop is needed)."""
        return any(h.is_async for handlers in self._handlers.values() for h in handlers)


realtime = Registry()
"""The registry app authors import as ``from frappe.realtime import realtime``."""
