"""The event-loop stall watch: gevent cannot preempt a handler that burns CPU, so the hub is
watched from a native thread and every stall is logged with the stack that caused it.

Started by ``App.start`` (:mod:`gsocket.app`), once per process.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import gevent

from gsocket.protocol.internals.gevent_hooks import switch_counter, thread_frame

log = logging.getLogger("gsocket.limits")

BLOCKING_REPORT_SECONDS = 1.0
"""A greenlet that holds the event loop this long (a handler burning CPU) is logged."""

_watching = threading.Lock()
_watch_started = False


def watch_event_loop(
    max_blocking: float = BLOCKING_REPORT_SECONDS, report: Callable[[str], None] | None = None
) -> bool:
    """Log every time one greenlet holds the gevent hub longer than ``max_blocking`` seconds.

    gevent switches greenlets only when one waits; a handler stuck in a CPU loop (or a C call
    that does not yield) stops every socket of the process and no time limit can end it.  A
    timer in the hub counts loop turns; a native thread looks at the count four times per
    ``max_blocking`` and, when it has not moved for that long, takes the hub thread's current
    frame at once, while the culprit is still running (gevent's own monitor formats every
    greenlet first, and by then the culprit has often returned).  The report is handed back to
    the hub to be logged once it runs again, because logging takes gevent locks that a native
    thread must not touch.

    A loop turn can also be long without any greenlet misbehaving: 10 000 sockets ready at
    once (a disconnect storm) are all served in one turn.  The watch tells the two apart by
    gevent's count of greenlet switches (its C tracer, about 0.1 µs a switch): no switch in
    the last ``max_blocking`` seconds is a stall (an error, once per stall); switches mean a
    saturated loop (a warning, once per turn: too much work at once, nothing stuck).

    :param max_blocking: seconds without a loop turn that count as a stall.
    :param report: called in the hub with each log line (defaults to ``log.error``).
    :returns: ``True`` when the watch was started by this call.
    """
    global _watch_started
    from gevent import monkey

    with _watching:
        if _watch_started:
            return False
        _watch_started = True
    hub = gevent.get_hub()
    emit = report or (lambda line: log.error("%s", line))
    saturated = report or (lambda line: log.warning("%s", line))
    turns = [0]
    period = max_blocking / 4

    def turn() -> None:
        turns[0] += 1

    switches = switch_counter()
    timer = hub.loop.timer(0, period)
    timer.ref = False
    timer.start(turn)
    native_sleep = monkey.get_original("time", "sleep")

    def watch() -> None:
        seen, since = turns[0], time.monotonic()
        stuck_reported = saturation_reported = False
        looks: collections.deque[int] = collections.deque(maxlen=4)
        while True:
            native_sleep(period)
            now = time.monotonic()
            if turns[0] != seen:
                seen, since = turns[0], now
                stuck_reported = saturation_reported = False
                looks.clear()
                continue
            frame = thread_frame(hub.thread_ident)
            looks.append(switches())
            if now - since < max_blocking:
                continue
            stuck = len(looks) == looks.maxlen and len(set(looks)) == 1
            if stuck_reported or (not stuck and saturation_reported):
                continue
            stack = traceback.extract_stack(frame, limit=12)[-3:] if frame is not None else []
            where = " <- ".join(
                f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(stack)
            )
            if stuck:
                stuck_reported = True
                line = (
                    f"the event loop was blocked for more than {max_blocking:.2f} s "
                    f"(every socket stalled meanwhile): {where or 'unknown code'}"
                )
                hub.loop.run_callback_threadsafe(emit, line)
            else:
                saturation_reported = True
                line = (
                    f"the event loop fell behind by more than {max_blocking:.2f} s: many "
                    f"greenlets ran in one turn (too much work at once, nothing stuck), "
                    f"last at {where or 'unknown code'}"
                )
                hub.loop.run_callback_threadsafe(saturated, line)

    monkey.get_original("_thread", "start_new_thread")(watch, ())
    return True
