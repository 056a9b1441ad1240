"""Where gsocket's log lines go and what they look like: one place for every command.

Lines go to stderr (supervisord writes them to the bench's ``logs/``), as text by default or as
JSON lines (``gsocket.log_format: "json"``, ``--log-format json``) for log shippers that would
otherwise have to parse the text.  Each record is printed once: python-engineio and
python-socketio attach a handler of their own to their loggers unless a level is already set,
which printed each of their error records twice (bare, and again through gsocket's handler).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone

import gevent

from gsocket.metrics import Metrics

# The process id tells the parent and the children of ``serve --handover`` apart.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

SUMMARY_LOG = logging.getLogger("gsocket.server")
"""Where :class:`ConnectionSummary` writes: the logger of the refusals and of the connects
at DEBUG."""

LIBRARY_LOGGERS = ("engineio.server", "socketio.server", "engineio.client", "socketio.client")
"""Loggers that python-engineio and python-socketio give a handler of their own, with an
ERROR level, when they find them unset."""


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``pid``,
    ``message``, and ``exception`` with the traceback when there is one.

    A message holding a newline (a traceback, a value quoted from a client) stays on its line,
    escaped, so a shipper never splits one record into two.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _Below(logging.Filter):
    """Passes records under a level: the stdout half of a split."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def setup_logging(level: str, log_format: str = "text", split: bool = False) -> None:
    """Send every log record once to stderr, at ``level`` for gsocket's own loggers.

    With ``split`` (``gsocket serve``), records under WARNING go to stdout instead, as the
    Node process wrote its ordinary output to stdout and its errors to stderr: supervisord
    then keeps warnings and errors in ``logs/gsocket.error.log`` next to ``logs/gsocket.log``,
    where bench operators look for them.

    Records leave out the thread: under gevent every greenlet is a thread to ``threading``,
    and naming it made each log line build a dummy thread object for its greenlet (kept for
    the life of a connection's greenlet).  The format never showed it.

    :param level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
    :param log_format: ``text`` or ``json`` (one JSON object per line).
    """
    logging.logThreads = False
    logging.logMultiprocessing = False
    formatter = JsonLinesFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT)
    errors = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [errors]
    if split:
        errors.setLevel(logging.WARNING)
        ordinary = logging.StreamHandler(sys.stdout)
        ordinary.addFilter(_Below(logging.WARNING))
        handlers.append(ordinary)
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(handlers=handlers, force=True)
    logging.getLogger("gsocket").setLevel(level.upper())
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        for own in list(library.handlers):
            library.removeHandler(own)
        if library.level == logging.NOTSET:
            # What the libraries set for themselves (logger=False), minus their handler: their
            # records reach stderr through the one above.
            library.setLevel(logging.ERROR)


class ConnectionSummary:
    """One INFO line per interval about the connections, instead of one per connect.

    A reconnect storm after a restart connects every desk of the bench within seconds; a line
    per connect and per disconnect (formatted, then written with a system call each) was 4-7 %
    of a connect's CPU, and thousands of identical lines say less to an operator than one
    count.  Frappe's Node server logs nothing per connect.  Each connect and disconnect is
    still logged, at DEBUG; refusals stay WARNING lines of their own
    (:mod:`gsocket.handlers.sessions`).

    The line reads the counters ``/metrics`` shows (:class:`~gsocket.metrics.Metrics`), so the
    connect path pays nothing for it, and is left out for an interval in which nothing
    connected, disconnected or was refused::

        connections: 4981 open; in the last 60 s 5000 connected, 19 disconnected (12 ping
        timeout, 7 transport close), 3 refused

    :param metrics: the server's metrics.
    :param interval: seconds between two lines; 0 turns the line off.
    """

    def __init__(self, metrics: Metrics, interval: float) -> None:
        self.metrics = metrics
        self.interval = interval
        self._greenlet: gevent.Greenlet | None = None
        self._last = self._counts()
        self._since = time.monotonic()

    def _counts(self) -> tuple[int, dict[str, int], int]:
        """Connects, disconnects by reason and refusals so far: the counters an interval's
        line gives the differences of."""
        m = self.metrics
        return (
            int(sum(m.connects.series().values())),
            {values[0]: int(n) for values, n in m.disconnects.series().items()},
            int(sum(m.refusals.series().values())),
        )

    def line(self) -> str | None:
        """The line for the interval since the previous call, or ``None`` when nothing
        happened in it."""
        connects_before, reasons_before, refusals_before = self._last
        since, self._since = self._since, time.monotonic()
        self._last = connects, reasons, refusals = self._counts()
        connected, refused = connects - connects_before, refusals - refusals_before
        why = {
            reason: n - reasons_before.get(reason, 0)
            for reason, n in sorted(reasons.items())
            if n > reasons_before.get(reason, 0)
        }
        disconnected = sum(why.values())
        if not (connected or disconnected or refused):
            return None
        if why:  # a wave of ping timeouts (a proxy's idle limit, a stalled loop) shows here
            reasons_text = " (" + ", ".join(f"{n} {reason}" for reason, n in why.items()) + ")"
        else:
            reasons_text = ""
        is_open = int(sum(self.metrics.sockets.series().values()))
        return (
            f"connections: {is_open} open; in the last {round(self._since - since, 1):g} s "
            f"{connected} connected, {disconnected} disconnected{reasons_text}, {refused} refused"
        )

    def start(self) -> None:
        """Log a line every interval (unless the interval is 0)."""
        if self.interval > 0 and self._greenlet is None:
            self._last, self._since = self._counts(), time.monotonic()
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop logging, with a last line for the time since the previous one."""
        if self._greenlet is None:
            return
        self._greenlet.kill(block=False)
        self._greenlet = None
        self._log()

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self._log()

    def _log(self) -> None:
        text = self.line()
        if text is not None:
            SUMMARY_LOG.info("%s", text)
