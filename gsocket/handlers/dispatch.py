"""Running the handlers of one client event: scoping, gating, argument checks, errors, acks.

Every client event goes through :meth:`Dispatcher.dispatch`, core events and app events
alike, so the rules are the same for all: a handler runs only on sites that have its app
installed, Guests run only ``allow_guest`` handlers, a payload that does not fit the handler's
signature runs nothing, and a handler that raises or hangs is logged and ended without
touching the socket or the other handlers of the event.

Plain ``def`` handlers run in the event's greenlet with the blocking :class:`Socket`;
``async def`` handlers run on the process's asyncio loop (:mod:`gsocket.handlers.aio`) with an
:class:`AsyncSocket`, while the event's greenlet waits, so limits, acks and error handling are
the same for both.  The first non-``None`` return value is the ack; one that cannot be sent as
JSON is logged (once per handler) and acked empty instead of failing in the transport.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from typing import Any

import gevent

from gsocket.frappe_ctx import FrappeContext, FrappeUnavailable
from gsocket.handlers.aio import AsyncRunner
from gsocket.handlers.registry import Handler, Registry
from gsocket.handlers.socket import AsyncSocket, Socket
from gsocket.metrics import Metrics

log = logging.getLogger("gsocket.dispatch")


class HandlerTimeout(BaseException):
    """A handler ran past its time limit.

    A BaseException, like gevent.Timeout, so that a handler's own ``except Exception`` cannot
    swallow it and keep running.
    """


class Dispatcher:
    """Runs registered handlers for client events.

    :param registry: where handlers are looked up.
    :param frappe_ctx: opens Frappe contexts for ``frappe_context=True`` handlers.
    :param metrics: where events, durations and errors are counted.
    :param handler_timeout: seconds one handler may run (``0`` for no limit).
    """

    def __init__(
        self,
        registry: Registry,
        frappe_ctx: FrappeContext,
        metrics: Metrics,
        handler_timeout: float = 30.0,
    ) -> None:
        self.registry = registry
        self.frappe_ctx = frappe_ctx
        self.metrics = metrics
        self.handler_timeout = handler_timeout
        self.aio = AsyncRunner()
        self._warned: set[tuple[int, str]] = set()

    def dispatch(self, socket: Socket, event: str, args: tuple[Any, ...]) -> Any:
        """Run every applicable handler of ``event`` for ``socket``, first to last.

        :param socket: the socket the event came from.
        :param event: the event name.
        :param args: the payload, positionally.
        :returns: the first non-``None`` value a handler returned (the ack), else ``None``.
        """
        handlers = self.registry.handlers_for(event)
        known = bool(handlers)
        self.metrics.events.inc(event if known else "(unknown)")
        if not known:
            log.debug("no handler for event %r from %s on %s", event, socket.sid, socket.site)
            return None
        ack = None
        for handler in handlers:
            if not self._applies(handler, socket):
                continue
            problem = handler.check_arguments(socket, args)
            if problem:
                log.warning(
                    "event %r (app %s) from site %s user %s sid %s: wrong arguments, not run: %s",
                    event,
                    handler.app,
                    socket.site,
                    socket.user,
                    socket.sid,
                    problem,
                )
                continue
            result = self._run(handler, socket, args)
            if ack is None and result is not None and self._sendable(handler, socket, result):
                ack = result
        return ack

    def _applies(self, handler: Handler, socket: Socket) -> bool:
        if handler.app not in socket.identity.installed_apps:
            return False
        if socket.identity.is_guest and not handler.allow_guest:
            log.debug(
                "event %r ignored: Guest socket %s on %s", handler.event, socket.sid, socket.site
            )
            return False
        return True

    def _run(self, handler: Handler, socket: Socket, args: tuple[Any, ...]) -> Any:
        started = time.perf_counter()
        timeout = gevent.Timeout(self.handler_timeout or None, HandlerTimeout)
        timeout.start()
        try:
            if handler.is_async:
                return self.aio.run(handler.fn(AsyncSocket(socket, self.aio.offload), *args))
            if handler.frappe_context:
                result = self.frappe_ctx.run(socket.site, socket.user, handler.fn, socket, *args)
            else:
                result = handler.fn(socket, *args)
            if inspect.isawaitable(result):
                self._warn_once(
                    handler,
                    socket,
                    "is a plain function that returned an awaitable; it ran on the asyncio loop "
                    "with the blocking Socket (make the wrapper 'async def' or use "
                    "functools.wraps so that it gets the awaitable one)",
                )
                result = self.aio.run(result)
            return result
        except HandlerTimeout:
            limit = f"ended after its {self.handler_timeout:.1f} s time limit"
            self._failed(handler, socket, limit)
        except FrappeUnavailable as e:
            self._failed(handler, socket, f"needs a Frappe context, but {e}")
        except Exception:
            self._failed(handler, socket, "raised", exc_info=True)
        finally:
            timeout.close()
            self.metrics.handler_seconds.observe(handler.event, value=time.perf_counter() - started)
        return None

    def _sendable(self, handler: Handler, socket: Socket, result: Any) -> bool:
        """Whether ``result`` can be sent as an ack (JSON, with bytes as binary attachments)."""
        if isinstance(result, str | int | float):
            return True
        try:
            json.dumps(result, default=_bytes_only)
        except (TypeError, ValueError) as e:
            self._warn_once(handler, socket, f"returned a value that is not JSON, acked empty: {e}")
            return False
        return True

    def _warn_once(self, handler: Handler, socket: Socket, what: str) -> None:
        """Log a handler's mistake the first time only: it repeats on every event."""
        key = (id(handler), what.partition(":")[0])
        if key in self._warned:
            return
        self._warned.add(key)
        _log_handler(logging.WARNING, handler, socket, what)

    def _failed(self, handler: Handler, socket: Socket, what: str, exc_info: bool = False) -> None:
        """Count and log a handler that did not finish, with everything needed to find it."""
        self.metrics.handler_errors.inc(handler.event)
        _log_handler(logging.ERROR, handler, socket, what, exc_info)


def _log_handler(
    level: int, handler: Handler, socket: Socket, what: str, exc_info: bool = False
) -> None:
    """One line about a handler and the socket it ran for: enough to find both."""
    log.log(
        level,
        "handler %s for event %r (app %s) on site %s user %s sid %s %s",
        handler.qualname,
        handler.event,
        handler.app,
        socket.site,
        socket.user,
        socket.sid,
        what,
        exc_info=exc_info,
    )


def _bytes_only(value: Any) -> Any:
    """JSON fallback that accepts what Socket.IO sends as binary attachments, nothing else."""
    if isinstance(value, bytes | bytearray | memoryview):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
