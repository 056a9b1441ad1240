"""A bounded per-site pool of MariaDB connections that Frappe contexts borrow and give back.

Why: opening a PyMySQL connection (TCP connect, MariaDB's handshake and login, ``SET NAMES``,
``SET AUTOCOMMIT``) costs a ``frappe_context=True`` event about 0.5-0.8 ms of the gevent hub's
CPU, most of the context's cost (benchmarks/FRAPPE_CTX.md).  With 1 000 events at once that
CPU, not the database, sets the pace.  A connection that stays open between events costs a
reset instead.

What makes a reused connection safe to hand to another event (user, site or transaction):

- **Reset on return**, in one write of three commands.  ``COM_RESET_CONNECTION`` (MariaDB
  >= 10.2, MySQL >= 5.7) rolls back the open transaction and releases its row locks, drops
  temporary tables, sets every session variable back to its global value, clears user
  variables, releases ``GET_LOCK`` and table locks and closes prepared statements, without a
  new login.  Then the session is put back as PyMySQL's ``connect()`` left it (``SET NAMES``,
  ``autocommit``, ``sql_mode``, ``init_command``); what Frappe's own ``connect()`` sets
  afterwards (``max_statement_time``) it sets again when it next borrows the connection.
  A borrower whose last word is a bare ``COMMIT`` may have it sent first in that same write
  (``checkin(commit=True)``): it is answered before the reset runs, and its failure is the
  borrower's.
- **Proof the connection is in step.**  A command whose answer was never read (a query that
  a time limit or a kill interrupted, and whose exception some code swallowed) would hand its
  late answer to the next command, and every answer after that to the wrong query.  So the
  last step of the reset is ``SELECT <random number>``; a connection that does not answer
  with that number is closed.
- **Anything unexpected closes it.**  Any error or timeout during the reset, a connection the
  caller marks as not reusable (its event ended by ``GreenletExit`` or a time limit, perhaps
  in mid-query), a full pool or a closed pool: the connection is closed, never kept.
- **Dead connections are not handed out.**  An idle connection whose server side went away
  (MariaDB restarted, ``KILL``, ``wait_timeout``) has a readable socket (end of stream or an
  error packet); :meth:`DBPool.checkout` looks before lending one and closes it instead.  A
  connection that dies between that look and the event's first query fails that event, as a
  fresh connection dying would; the reset then fails and the connection is closed.

Bounds: at most ``size`` idle connections per key (one key per site and its database
settings); a connection returned to a full pool is closed.  Idle connections older than
``idle_seconds`` are closed by a sweeper greenlet, so a burst's connections do not hold
MariaDB's ``max_connections`` for ever.  ``max_connections`` (0: none) bounds every
connection the pool has open at once, lent or idle, across sites: MariaDB's own
``max_connections`` is shared with the bench's web and background workers, and a burst of
events that took all of it would make *their* connects fail.  At the cap an event waits
(first come, first served) for a connection of its key to come back, or for a slot that a
closed one frees (an idle connection of another key is closed to make room); after
``wait_seconds`` it fails with :class:`PoolExhausted`, whose message names the setting.
:meth:`DBPool.close` closes the idle ones and makes every later return close its connection.

What an operator sizes ``db_pool_size`` and ``db_max_connections`` by is counted per site
(:meth:`DBPool.metric_families`, exported on ``/metrics``): connections idle and lent, opened,
reused, found dead, failing their reset, closed on return, and events that waited or gave up.

The PyMySQL internals used are in gsocket/protocol/internals/pymysql_hooks.py, with the
versions they were verified with; with any other PyMySQL the pool is not used.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import gevent
from gevent.event import AsyncResult

from gsocket.config import DEFAULT_POOL_IDLE_SECONDS, DEFAULT_POOL_SIZE
from gsocket.metrics import Counter, Gauge, Metric
from gsocket.protocol.internals.pymysql_hooks import (
    connection_socket,
    is_connection,
    read_commit,
    read_reset,
    write_reset,
)

log = logging.getLogger("gsocket.dbpool")

#: Seconds the reset of a returned connection may take before it is closed instead.
RESET_TIMEOUT = 5.0

#: Seconds opening a connection may take in all (TCP connect, MariaDB's handshake, login, the
#: first ``SET``\ s): PyMySQL's own ``connect_timeout`` default, which Frappe leaves as it is.
#: PyMySQL bounds only the TCP connect with it; a server that accepts and then never sends
#: its handshake would hold the event until the dispatcher's time limit.
CONNECT_TIMEOUT = 10.0

#: Seconds an event waits for a connection at ``max_connections`` before it fails.
WAIT_SECONDS = 10.0

#: Seconds between two log lines saying that events wait for a connection.
WAIT_LOG_INTERVAL = 60.0

#: What the pool counts per site; each is also a ``gsocket_db_pool_<name>_total`` counter.
COUNTS = ("opened", "reused", "dead", "reset_failed", "not_kept", "waited", "wait_timeouts")

_COUNT_HELP = {
    "opened": "Database connections the pool opened",
    "reused": "Frappe contexts that got a kept connection instead of a new one",
    "dead": "Kept connections found closed by the server when about to be lent",
    "reset_failed": "Returned connections that failed their reset (or the COMMIT sent with "
    "it) and were closed",
    "not_kept": "Returned connections closed instead of kept (pool full or closed, "
    "the event ended mid-query, db_pool_size 0)",
    "waited": "Frappe contexts that waited for a connection at db_max_connections",
    "wait_timeouts": "Frappe contexts that gave up waiting for a connection",
}


class PoolExhausted(RuntimeError):
    """Every connection the pool may open is lent, and none came back in time."""


class ConnectTimeout(TimeoutError):
    """Opening a database connection took longer than the pool's ``connect_timeout``."""


def site_of(key: Hashable) -> str:
    """The site a pool key belongs to: its first item (keys are ``(site, ...)`` tuples)."""
    return str(key[0]) if isinstance(key, tuple) and key else str(key)


def _peer_gone(conn: Any) -> bool:
    """Whether an idle connection's server side is gone (or it has bytes nobody asked for).

    An idle MariaDB connection never has anything to read; a readable socket means end of
    stream (restart, ``KILL``, ``wait_timeout``) or an error packet sent before closing.  The
    look does not wait and leaves the bytes where they were.  A TLS connection cannot be
    peeked at, so it is pinged instead (one round trip).
    """
    sock = connection_socket(conn)
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket):
        try:
            conn.ping(reconnect=False)
        except Exception:
            return True
        return False
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)
    return True


def _restore_statement(conn: Any) -> str:
    """The one statement that puts the session back as PyMySQL's ``connect()`` set it."""
    names = f"NAMES {conn.charset}" + (f" COLLATE {conn.collation}" if conn.collation else "")
    parts = [names]
    if conn.autocommit_mode is not None:
        parts.append(f"autocommit={int(bool(conn.autocommit_mode))}")
    if conn.sql_mode is not None:
        parts.append("sql_mode=" + conn.escape(conn.sql_mode))
    return "SET " + ", ".join(parts)


class CommitFailed(Exception):
    """The ``COMMIT`` sent with a reset failed or went unanswered; ``error`` is PyMySQL's."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def reset(conn: Any, commit: bool = False, timeout: float = RESET_TIMEOUT) -> None:
    """Make a used connection as good as new for another user, or raise.

    See the module docstring: reset, restore PyMySQL's session settings, prove the
    connection answers the last command it was sent.  All in one write; with ``commit``, the
    borrower's ``COMMIT`` goes first in that write (one round trip instead of two).

    :raises CommitFailed: the ``COMMIT`` could not be sent, was refused or was not answered:
        its outcome is the borrower's to report, and the connection is not to be kept.  No
        time limit applies to it, as none applies to Frappe's own ``commit()``.
    :raises TimeoutError: the reset's answers took longer than ``timeout`` seconds.
    """
    statements = [_restore_statement(conn)]
    if conn.init_command is not None:
        statements.append(conn.init_command)
    nonce = random.getrandbits(62)
    statements.append(f"SELECT {nonce}")
    try:
        write_reset(conn, statements, commit)
        if commit:
            read_commit(conn)
    except Exception as exc:
        if commit:  # not sent (a closed connection) is as failed as refused: the event says so
            raise CommitFailed(exc) from exc
        raise
    limit = gevent.Timeout(timeout)
    limit.start()
    try:
        answer = read_reset(conn, statements)
    except gevent.Timeout as exc:
        if exc is not limit:
            raise
        raise TimeoutError(f"the reset took over {timeout:g} s") from None
    finally:
        limit.close()
    if answer != nonce:
        raise RuntimeError(f"the connection answered {answer!r} to SELECT {nonce}")


def close_quietly(conn: Any) -> None:
    """Close ``conn``; a connection that is already broken may fail to say goodbye."""
    try:
        conn.close()
    except Exception:
        log.debug("closing a database connection failed", exc_info=True)


class DBPool:
    """Idle MariaDB connections per key, lent to one user at a time and reset in between.

    :param size: idle connections kept per key; 0 keeps none (every return closes).
    :param idle_seconds: an idle connection older than this is closed.
    :param reset_timeout: seconds a return's reset may take before the connection is closed.
    :param max_connections: connections open at once (lent and idle, every key); 0: no cap.
    :param wait_seconds: how long an event waits at the cap before :class:`PoolExhausted`.
    :param connect_timeout: seconds opening a connection may take before the event fails
        with :class:`ConnectTimeout` (the half-open socket is closed).
    """

    def __init__(
        self,
        size: int = DEFAULT_POOL_SIZE,
        idle_seconds: float = DEFAULT_POOL_IDLE_SECONDS,
        reset_timeout: float = RESET_TIMEOUT,
        max_connections: int = 0,
        wait_seconds: float = WAIT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.size = size
        self.idle_seconds = idle_seconds
        self.reset_timeout = reset_timeout
        self.max_connections = max_connections
        self.wait_seconds = wait_seconds
        self.connect_timeout = connect_timeout
        self._idle: dict[Hashable, list[tuple[float, Any]]] = {}
        self._open: dict[Hashable, int] = {}
        self._total_open = 0
        self._waiters: deque[tuple[Hashable, AsyncResult]] = deque()
        self._closed = False
        self._sweeper: gevent.Greenlet | None = None
        self._site_counts: dict[str, dict[str, int]] = {}
        self._wait_logged = -WAIT_LOG_INTERVAL

    @property
    def counts(self) -> dict[str, int]:
        """Every count of :data:`COUNTS`, summed over sites."""
        return {name: sum(counts[name] for counts in self._site_counts.values()) for name in COUNTS}

    def site_counts(self, site: str) -> dict[str, int]:
        """The counts of one site (all zero for a site the pool has not served)."""
        return dict(self._site_counts.get(site) or dict.fromkeys(COUNTS, 0))

    def _count(self, key: Hashable, name: str) -> None:
        site = site_of(key)
        counts = self._site_counts.get(site)
        if counts is None:
            counts = self._site_counts[site] = dict.fromkeys(COUNTS, 0)
        counts[name] += 1

    def idle(self, key: Hashable | None = None) -> int:
        """How many connections wait idle (for ``key``, or for all keys)."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(stack) for stack in self._idle.values())

    def in_use(self, key: Hashable | None = None) -> int:
        """How many connections are lent out now (for ``key``, or for all keys)."""
        if key is not None:
            return self._open.get(key, 0) - self.idle(key)
        return self._total_open - self.idle()

    def checkout(self, key: Hashable, connect: Callable[[], Any]) -> Any:
        """The most recently returned live connection for ``key``, or ``connect()``'s new one.

        At ``max_connections`` this waits for a connection or a free slot (module docstring).

        :raises PoolExhausted: none came within ``wait_seconds``.
        """
        stack = self._idle.get(key)
        while stack:
            _, conn = stack.pop()
            if not _peer_gone(conn):
                self._count(key, "reused")
                return conn
            self._count(key, "dead")
            log.info("a pooled database connection was closed by the server; opening another")
            self._discard(key, conn)
        if self.max_connections and self._total_open >= self.max_connections:
            # First come, first served: behind those already waiting, if any.
            if self._waiters or not self._close_other_idle(key):
                conn = self._wait(key)
                if conn is not None:
                    self._count(key, "reused")
                    return conn
                # A slot was handed over: counted as open already.
                return self._open_new(key, connect, reserved=True)
        return self._open_new(key, connect, reserved=False)

    def _open_new(self, key: Hashable, connect: Callable[[], Any], reserved: bool) -> Any:
        if not reserved:
            self._open[key] = self._open.get(key, 0) + 1
            self._total_open += 1
        limit = gevent.Timeout(self.connect_timeout)
        limit.start()
        try:
            conn = connect()
        except gevent.Timeout as exc:
            self._forget(key)
            if exc is not limit:
                raise
            # PyMySQL closed its socket on the way out (its connect() does on any exception).
            raise ConnectTimeout(
                f"opening a database connection for site {site_of(key)} took over "
                f"{self.connect_timeout:g} s: MariaDB did not accept the connection and complete "
                "its handshake in time"
            ) from None
        except BaseException:
            self._forget(key)
            raise
        finally:
            limit.close()
        self._count(key, "opened")
        return conn

    def _close_other_idle(self, key: Hashable) -> bool:
        """Close the oldest idle connection of another key to make room for ``key``."""
        oldest: tuple[float, Hashable] | None = None
        for other, stack in self._idle.items():
            if other != key and stack and (oldest is None or stack[0][0] < oldest[0]):
                oldest = (stack[0][0], other)
        if oldest is None:
            return False
        _, conn = self._idle[oldest[1]].pop(0)
        close_quietly(conn)
        self._forget(oldest[1], hand_over=False)  # the slot is the caller's
        return True

    def _wait(self, key: Hashable) -> Any:
        """Wait for a connection of ``key`` (returned) or a free slot (None) at the cap."""
        self._count(key, "waited")
        now = time.monotonic()
        if now - self._wait_logged >= WAIT_LOG_INTERVAL:
            self._wait_logged = now
            log.warning(
                "all %d database connections gsocket may open (gsocket.db_max_connections) are "
                "in use; Frappe contexts of site %s and others wait for one",
                self.max_connections,
                site_of(key),
            )
        waiter: AsyncResult = AsyncResult()
        entry = (key, waiter)
        self._waiters.append(entry)
        limit = gevent.Timeout(self.wait_seconds)
        limit.start()
        try:
            return waiter.get()
        except BaseException as exc:
            if entry in self._waiters:
                self._waiters.remove(entry)
            if waiter.ready():
                if exc is limit:
                    return waiter.value  # handed over just as the wait ran out
                self._give_back(key, waiter.value)
            if exc is not limit:
                raise
            self._count(key, "wait_timeouts")
            raise PoolExhausted(
                f"site {site_of(key)}: no database connection came free within "
                f"{self.wait_seconds:g} s; all {self.max_connections} that "
                "gsocket.db_max_connections allows are in use (raise it, with MariaDB's "
                "max_connections, if the database can take more)"
            ) from None
        finally:
            limit.close()

    def _give_back(self, key: Hashable, handed: Any) -> None:
        """What a waiter that is no longer waiting was handed: a slot, or a connection."""
        if handed is None:
            self._forget(key)
        else:
            self._keep_or_hand_over(key, handed)

    def _forget(self, key: Hashable, hand_over: bool = True) -> None:
        """One connection of ``key`` closed: its slot goes to the first waiter, or is freed."""
        self._open[key] -= 1
        if not self._open[key]:
            del self._open[key]
        self._total_open -= 1
        if hand_over:
            self._hand_slot()

    def _hand_slot(self) -> None:
        while self._waiters and (
            not self.max_connections or self._total_open < self.max_connections
        ):
            key, waiter = self._waiters.popleft()
            self._open[key] = self._open.get(key, 0) + 1
            self._total_open += 1
            waiter.set(None)

    def _discard(self, key: Hashable, conn: Any) -> None:
        close_quietly(conn)
        self._forget(key)

    def checkin(
        self, key: Hashable, conn: Any, reusable: bool = True, commit: bool = False
    ) -> None:
        """Take ``conn`` back: reset and keep it, or close it (see the module docstring).

        Must be called by the greenlet that borrowed it, once for every connection
        :meth:`checkout` gave it, even one already closed.  A ``GreenletExit`` or other
        ``BaseException`` arriving during the reset closes the connection and is raised on.

        With ``commit`` the borrower's transaction is committed first, in the same write as
        the reset when the connection is kept; a ``COMMIT`` that fails (or whose answer never
        came) closes the connection and raises PyMySQL's error here, as ``commit()`` would.
        """
        if not reusable or self._closed or self.size <= 0 or not is_connection(conn):
            self._count(key, "not_kept")
            try:
                if commit:
                    conn.commit()
            finally:
                self._discard(key, conn)
            return
        try:
            reset(conn, commit, self.reset_timeout)
        except CommitFailed as failed:
            self._count(key, "reset_failed")
            self._discard(key, conn)
            raise failed.error from None
        except BaseException as exc:
            self._count(key, "reset_failed")
            self._discard(key, conn)
            if isinstance(exc, TimeoutError):
                log.warning("resetting a database connection: %s", exc)
                return
            if not isinstance(exc, Exception):
                raise
            log.info("a database connection failed its reset and was closed: %r", exc)
            return
        self._keep_or_hand_over(key, conn)

    def _keep_or_hand_over(self, key: Hashable, conn: Any) -> None:
        """A reset connection: to the first waiter of its key, else kept idle or closed."""
        for entry in self._waiters:
            if entry[0] == key:
                self._waiters.remove(entry)
                entry[1].set(conn)
                return
        stack = self._idle.setdefault(key, [])
        if self._closed or len(stack) >= self.size or self._waiters:
            # Full, closed, or others wait for a slot that closing this one frees.
            self._count(key, "not_kept")
            if not stack:
                del self._idle[key]
            self._discard(key, conn)
            return
        stack.append((time.monotonic(), conn))
        self._start_sweeper()

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.dead:
            self._sweeper = gevent.spawn(self._sweep_forever)

    def _sweep_forever(self) -> None:
        while not self._closed:
            gevent.sleep(max(self.idle_seconds / 4, 0.05))
            self.sweep()

    def sweep(self) -> int:
        """Close the connections idle for longer than ``idle_seconds``; return how many."""
        cutoff = time.monotonic() - self.idle_seconds
        closed = 0
        for key, stack in list(self._idle.items()):
            # Oldest at the bottom of each stack: checkout takes from the top.
            old = 0
            while old < len(stack) and stack[old][0] < cutoff:
                old += 1
            expired, stack[:old] = stack[:old], []
            if not stack:
                del self._idle[key]
            for _, conn in expired:
                self._discard(key, conn)
            closed += len(expired)
        return closed

    def close(self) -> None:
        """Close every idle connection; connections still lent out are closed on return."""
        self._closed = True
        stacks, self._idle = self._idle, {}
        for key, stack in stacks.items():
            for _, conn in stack:
                self._discard(key, conn)
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None

    def metric_families(self) -> Iterable[Metric]:
        """The pool's state per site, as ``/metrics`` families (read when scraped)."""
        idle = Gauge("gsocket_db_pool_idle_connections", "Pooled connections idle", ["site"])
        in_use = Gauge(
            "gsocket_db_pool_in_use_connections", "Pooled connections lent to contexts", ["site"]
        )
        sites = set(self._site_counts) | {site_of(k) for k in self._open}
        for site in sorted(sites):
            idle.set(site, value=0)
            in_use.set(site, value=0)
        for key, count in self._open.items():
            waiting = len(self._idle.get(key, ()))
            idle.inc(site_of(key), amount=waiting)
            in_use.inc(site_of(key), amount=count - waiting)
        limit = Gauge(
            "gsocket_db_pool_max_connections",
            "Connections gsocket may open at once (gsocket.db_max_connections; 0: no cap)",
        )
        limit.set(value=self.max_connections)
        waiting = Gauge(
            "gsocket_db_pool_waiting_contexts", "Frappe contexts waiting for a connection now"
        )
        waiting.set(value=len(self._waiters))
        families: list[Metric] = [idle, in_use, limit, waiting]
        for name in COUNTS:
            counter = Counter(f"gsocket_db_pool_{name}_total", _COUNT_HELP[name], ["site"])
            for site in sorted(sites):
                counter.inc(site, amount=self.site_counts(site)[name])
            families.append(counter)
        return families
