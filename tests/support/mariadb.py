"""A throw-away real MariaDB server for tests.

Handlers with ``frappe_context=True`` open and close a real database connection per event;
whether they interleave under gevent, roll back only their own writes and leave no connection
behind can only be shown against the real server.  This one lives in a temporary data folder,
listens on a free loopback port, and has one password-protected user for the tests (the
administrator, root, is reached only through the server's private Unix socket).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

import pymysql

from gsocket.demo.ports import free_port
from gsocket.demo.processes import Child, log_tail, wait_until

log = logging.getLogger("gsocket.tests.mariadb")

TEST_USER = "gsocket_test"
TEST_PASSWORD = "gsocket-test-pw"


def _binary(name: str) -> str:
    """Debian puts the server in /usr/sbin, which a non-root PATH often lacks."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's mariadb-server package")
    return found


_live: weakref.WeakSet[MariaDBServer] = weakref.WeakSet()


def _kill_all_live() -> None:
    """Kill every instance still running at interpreter exit, so a failed test leaks nothing."""
    for server in list(_live):
        server.kill()


atexit.register(_kill_all_live)


class MariaDBServer:
    """One private ``mariadbd`` with its data in ``tmpdir``.

    ``user``/``password`` is a real account (not ``--skip-grant-tables``) that
    ``create_database`` grants each new database to, as a bench grants a site's database to
    the site's user.  ``start()`` returns once the server answers a query.
    """

    def __init__(self, tmpdir: Path, max_connections: int = 600) -> None:
        self.dir = Path(tmpdir)
        self.datadir = self.dir / "data"
        self.log_path = self.dir / "mariadb.err"
        # A Unix socket path may not exceed ~107 bytes; pytest's tmp paths can, so it lives
        # in a short private folder of its own.
        self._sockdir = tempfile.mkdtemp(prefix="gsmdb-")
        self.socket = os.path.join(self._sockdir, "mysqld.sock")
        self.host = "127.0.0.1"
        self.port = 0
        self.user = TEST_USER
        self.password = TEST_PASSWORD
        self.max_connections = max_connections
        self._child: Child | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.alive()

    def start(self, timeout: float = 60.0) -> MariaDBServer:
        """Create the data folder (first time), launch the server, wait until it answers.

        A server that exits during start-up (say, another process took the port we picked) is
        retried on a new port until ``timeout``.
        """
        with self._lock:
            if self.running:
                return self
            deadline = time.monotonic() + timeout
            os.makedirs(self._sockdir, exist_ok=True)  # stop() removed it: a restart
            if not (self.datadir / "mysql").is_dir():
                self._install()
            while True:
                self.port = free_port()
                self._child = self._spawn()
                _live.add(self)
                if self._wait_ready(self._child, deadline):
                    break
                self._reap()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mariadbd did not start within {timeout}s:\n"
                        f"{log_tail(self.log_path) or '(no mariadb log)'}"
                    )
            self._create_test_user()
            log.debug("mariadbd pid %s ready on port %s", self._child.pid, self.port)
            return self

    def _root_args(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        args = [
            _binary("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            *self._root_args(),
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{done.stdout}\n{done.stderr}")

    def _spawn(self) -> Child:
        args = [
            _binary("mariadbd"),
            "--no-defaults",
            *self._root_args(),
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket}",
            f"--pid-file={self.dir / 'mariadbd.pid'}",
            f"--log-error={self.log_path}",
            f"--max-connections={self.max_connections}",
            # Hundreds of greenlets connect at once; a short accept queue drops their SYNs
            # and the kernel retries only after a second or more.
            f"--back-log={self.max_connections}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-flush-log-at-trx-commit=2",
            "--performance-schema=OFF",
        ]
        return Child("mariadbd", args, log_path=self.dir / "mariadbd.out", cwd=self.dir)

    def _wait_ready(self, child: Child, deadline: float) -> bool:
        """Wait until root answers on the socket (True), or the process dies or time runs out
        (False)."""

        def answers_or_exited() -> bool:
            if not child.alive():
                return True
            if not os.path.exists(self.socket):
                return False
            try:
                self.admin_sql("SELECT 1")
                return True
            except pymysql.err.OperationalError:
                return False

        try:
            wait_until(answers_or_exited, deadline - time.monotonic())
        except TimeoutError:
            return False
        return child.alive()

    def _create_test_user(self) -> None:
        for host in ("127.0.0.1", "localhost"):
            self.admin_sql(
                f"CREATE USER IF NOT EXISTS '{self.user}'@'{host}' IDENTIFIED BY %s",
                (self.password,),
            )

    def admin_sql(self, query: str, args: Any = None) -> tuple[tuple[Any, ...], ...]:
        """Run one statement as root (through the Unix socket) and return its rows."""
        conn = pymysql.connect(unix_socket=self.socket, user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return tuple(cur.fetchall())
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        """Create database ``name`` (new and empty) owned by the test user; return the name."""
        quoted = name.replace("`", "``")
        self.admin_sql(f"DROP DATABASE IF EXISTS `{quoted}`")
        self.admin_sql(f"CREATE DATABASE `{quoted}` CHARACTER SET utf8mb4")
        for host in ("127.0.0.1", "localhost"):
            self.admin_sql(f"GRANT ALL PRIVILEGES ON `{quoted}`.* TO '{self.user}'@'{host}'")
        return name

    def connect(self, database: str | None = None, **kwargs: Any) -> pymysql.Connection:
        """A PyMySQL connection as the test user over TCP, the way Frappe connects."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            **kwargs,
        )

    def count_connections(self, user: str | None = None) -> int:
        """Client connections the server holds open for ``user`` (default: the test user)."""
        rows = self.admin_sql(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
            (user or self.user,),
        )
        return int(rows[0][0])

    def wait_for_connections(self, expected: int, timeout: float = 10.0) -> int:
        """Poll until ``count_connections() == expected`` or ``timeout``; return the last count.

        The server drops a session a moment after the client's QUIT, so a count taken right
        after clients closed can still see them.
        """
        deadline = time.monotonic() + timeout
        while True:
            count = self.count_connections()
            if count == expected or time.monotonic() > deadline:
                return count
            time.sleep(0.02)

    def _reap(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.kill()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown) and remove the socket folder."""
        with self._lock:
            self._reap()
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down cleanly (SIGTERM), falling back to SIGKILL after ``timeout``."""
        with self._lock:
            if self._child is not None:
                self._child.stop(timeout)
            self._reap()
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def __enter__(self) -> MariaDBServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
