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
settings); a connection returned to a full pool is closed.  Connections in use are not
bounded here: an event never waits for a connection.  Idle connections older than
``idle_seconds`` are closed by a sweeper greenlet, so a burst's connections do not hold
MariaDB's ``max_connections`` for ever.  :meth:`DBPool.close` closes the idle ones and makes
every later return close its connection.

The PyMySQL internals used are in gsocket/protocol/internals/pymysql_hooks.py, with the
versions they were verified with; with any other PyMySQL the pool is not used.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Hashable
from typing import Any

import gevent

from gsocket.config import DEFAULT_POOL_IDLE_SECONDS, DEFAULT_POOL_SIZE
from gsocket.protocol.internals.pymysql_hooks import (
    connection_socket,
    is_connection,
    reset_then_query,
)

log = logging.getLogger("gsocket.dbpool")

#: Seconds the reset of a returned connection may take before it is closed instead.
RESET_TIMEOUT = 5.0


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


def reset(conn: Any) -> None:
    """Make a used connection as good as new for another user, or raise.

    See the module docstring: reset, restore PyMySQL's session settings, prove the
    connection answers the last command it was sent.  All in one write.
    """
    statements = [_restore_statement(conn)]
    if conn.init_command is not None:
        statements.append(conn.init_command)
    nonce = random.getrandbits(62)
    statements.append(f"SELECT {nonce}")
    answer = reset_then_query(conn, statements)
    if answer != ((nonce,),):
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
    """

    def __init__(
        self,
        size: int = DEFAULT_POOL_SIZE,
        idle_seconds: float = DEFAULT_POOL_IDLE_SECONDS,
        reset_timeout: float = RESET_TIMEOUT,
    ) -> None:
        self.size = size
        self.idle_seconds = idle_seconds
        self.reset_timeout = reset_timeout
        self._idle: dict[Hashable, list[tuple[float, Any]]] = {}
        self._closed = False
        self._sweeper: gevent.Greenlet | None = None
        self.counts = {"opened": 0, "reused": 0, "dead": 0, "reset_failed": 0, "not_kept": 0}

    def idle(self, key: Hashable | None = None) -> int:
        """How many connections wait idle (for ``key``, or for all keys)."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(stack) for stack in self._idle.values())

    def checkout(self, key: Hashable, connect: Callable[[], Any]) -> Any:
        """The most recently returned live connection for ``key``, or ``connect()``'s new one."""
        stack = self._idle.get(key)
        while stack:
            _, conn = stack.pop()
            if not _peer_gone(conn):
                self.counts["reused"] += 1
                return conn
            self.counts["dead"] += 1
            log.info("a pooled database connection was closed by the server; opening another")
            close_quietly(conn)
        conn = connect()
        self.counts["opened"] += 1
        return conn

    def checkin(self, key: Hashable, conn: Any, reusable: bool = True) -> None:
        """Take ``conn`` back: reset and keep it, or close it (see the module docstring).

        Must be called by the greenlet that borrowed it.  A ``GreenletExit`` or other
        ``BaseException`` arriving during the reset closes the connection and goes on.
        """
        if not reusable or self._closed or self.size <= 0 or not is_connection(conn):
            self.counts["not_kept"] += 1
            close_quietly(conn)
            return
        limit = gevent.Timeout(self.reset_timeout)
        limit.start()
        try:
            reset(conn)
        except BaseException as exc:
            self.counts["reset_failed"] += 1
            close_quietly(conn)
            if isinstance(exc, gevent.Timeout) and exc is limit:
                log.warning("resetting a database connection took over %.1f s", self.reset_timeout)
                return
            if not isinstance(exc, Exception):
                raise
            log.info("a database connection failed its reset and was closed: %r", exc)
            return
        finally:
            limit.close()
        stack = self._idle.setdefault(key, [])
        if self._closed or len(stack) >= self.size:
            self.counts["not_kept"] += 1
            close_quietly(conn)
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
            for _, conn in expired:
                close_quietly(conn)
            closed += len(expired)
            if not stack:
                del self._idle[key]
        return closed

    def close(self) -> None:
        """Close every idle connection; connections still lent out are closed on return."""
        self._closed = True
        stacks, self._idle = self._idle, {}
        for stack in stacks.values():
            for _, conn in stack:
                close_quietly(conn)
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None
