"""Run a realtime handler inside a Frappe context of its own, safely under gevent.

A handler registered with ``frappe_context=True`` may use the whole blocking Frappe ORM.  Frappe
keeps everything about "the current request" (site, user, DB connection, flags, caches) in
``frappe.local``, which is a ``werkzeug.local.Local`` on v15 and a context variable holding a
*mutable dict* on newer versions.  Both are looked up through the current ``contextvars``
context, so each event here runs in a brand-new, empty ``contextvars.Context``: a greenlet that
inherited or copied its creator's context would otherwise share (newer Frappe) or start from
(v15) someone else's ``frappe.local``.

The per-event sequence is Frappe's own bench-script sequence, with two gevent-specific steps:
``init(force=True)`` -> force the pure-Python PyMySQL driver -> ``connect`` -> ``set_user`` ->
handler -> ``commit`` (or ``rollback`` and re-raise) -> ``destroy`` (always).  Where the
difference cannot be seen from inside or outside the event, it is cheaper than Frappe's: a
handler that sent no query and left no commit callback ends without a connection at all; the
last ``COMMIT`` is not followed by Frappe's ``START TRANSACTION`` (see ``commit_last``), and
with a pool and no commit callback pending it goes in the same write as the connection's reset
(``only_commit_left``); the site config is parsed again only when its files change
(frappe_conf_hooks.py), and the module map read from Redis again only when Redis reports its
key changed (frappe_cache_hooks.py).

With a :class:`gsocket.contract.dbpool.DBPool` the event's database connection is borrowed from the
site's pool instead of opened, and given back (reset) instead of closed (:class:`_Lease`;
the Frappe internals that takes are in gsocket/protocol/internals/frappe_db_hooks.py).

Frappe is imported lazily, on first use, so that gsocket runs without Frappe installed.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

import gevent

from gsocket.contract.dbpool import DBPool
from gsocket.errors import StartupError
from gsocket.protocol.internals.frappe_cache_hooks import ModuleMapCache, keep_module_map
from gsocket.protocol.internals.frappe_conf_hooks import keep_site_config
from gsocket.protocol.internals.frappe_db_hooks import (
    COMMIT_CALLBACKS,
    DATABASE_NAMING,
    ROLLBACK_CALLBACKS,
    commit_last,
    current_connection,
    lend_connections,
    only_commit_left,
    take_connection,
    untouched,
)
from gsocket.protocol.internals.gevent_hooks import lock_is_free
from gsocket.protocol.internals.pymysql_hooks import (
    pool_supported,
    result_unread,
    share_pymysql_default_tls_context,
)

log = logging.getLogger("gsocket.frappe_ctx")

T = TypeVar("T")

#: Seconds a site's installed-apps list is trusted before it is looked up again.
INSTALLED_APPS_TTL = 60.0

#: Seconds a rollback after a failed handler may take before the connection is just closed.
ROLLBACK_TIMEOUT = 5.0

#: Attributes without which an importable ``frappe`` cannot be Frappe (or our test double).
_REQUIRED_API = ("init", "connect", "set_user", "destroy", "local")


class FrappeUnavailable(RuntimeError):
    """Frappe cannot be imported here (or only gsocket's stand-in ``frappe`` module is loaded)."""


def _foreign_mysqldb() -> ModuleType | None:
    """The loaded ``MySQLdb`` module if it is mysqlclient's C driver, else None.

    ``pymysql.install_as_MySQLdb()`` registers PyMySQL itself under the name ``MySQLdb``; that
    is pure Python and yields to the gevent hub like any socket code, so it is not a hazard.
    """
    module = sys.modules.get("MySQLdb")
    if module is None or getattr(module, "__name__", "") == "pymysql":
        return None
    return module


def _check_no_mysqlclient() -> None:
    module = _foreign_mysqldb()
    if module is None:
        return
    origin = getattr(module, "__file__", None) or "an unknown location"
    raise StartupError(
        f"mysqlclient (the MySQLdb C driver, from {origin}) is already imported in this "
        "process. Its database calls block the whole gevent hub, so every socket would stall "
        "while one handler waits on MariaDB. Remove whatever imports it before gsocket starts "
        "(a sitecustomize or .pth file, FRAPPE_PRELOAD_DATABASE_DRIVERS, an app imported at "
        "start-up); gsocket already makes Frappe use the pure-Python PyMySQL driver."
    )


def _check_no_thread_inherit_context() -> None:
    if not getattr(sys.flags, "thread_inherit_context", 0):
        return
    raise StartupError(
        "Python is running with sys.flags.thread_inherit_context on (the default of "
        "free-threaded builds, or -X thread_inherit_context=1 / PYTHON_THREAD_INHERIT_CONTEXT=1). "
        "New threads and greenlets would then start with a copy of their creator's context, "
        "and Frappe's frappe.local could leak from one handler into another. Start gsocket with "
        "`python -X thread_inherit_context=0 -m gsocket ...` or set "
        "PYTHON_THREAD_INHERIT_CONTEXT=0 in its environment."
    )


def _original_lock_types() -> tuple[type, ...]:
    """The OS-level lock types that gevent's monkey-patch replaced, or () when not patched."""
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        return ()
    lock_type = type(monkey.get_original("_thread", "allocate_lock")())
    rlock_type = monkey.get_original("_thread", "RLock")
    return (lock_type, rlock_type) if isinstance(rlock_type, type) else (lock_type,)


def recreate_prepatch_locks(packages: Iterable[str] = ("frappe",)) -> list[str]:
    """Replace module-level OS locks of ``packages`` with gevent-aware ones; return their names.

    A ``threading.Lock`` created before ``monkey.patch_all()`` is a real OS lock: a greenlet
    that blocks on it while another greenlet of the same thread holds it blocks the whole hub,
    and the holder never runs again to release it.  Frappe keeps such locks at module level
    (``frappe._redis_init_lock`` guards its Redis set-up in every ``frappe.init``), so when
    Frappe was imported before the patch those attributes are swapped for fresh locks of the
    patched ``threading`` module.  A lock that is held right now is left alone and logged: it
    cannot be replaced without breaking its holder.
    """
    original = _original_lock_types()
    if not original:
        return []
    prefixes = tuple(packages)
    replaced: list[str] = []
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        for attr, value in list(vars(module).items()):
            kind = type(value)
            if kind not in original:
                continue
            qualified = f"{name}.{attr}"
            if not lock_is_free(value):
                log.warning("%s was created before gevent's monkey-patch and is held", qualified)
                continue
            fresh = threading.Lock() if kind is original[0] else threading.RLock()
            setattr(module, attr, fresh)
            replaced.append(qualified)
    return replaced


def check_startup_guards() -> None:
    """Refuse to start where Frappe handlers cannot be isolated or would block the hub.

    Called by the entry point right after gevent's monkey-patch.  Raises ``StartupError``
    whose message tells the operator what to change; re-creates pre-patch Frappe locks.
    """
    _check_no_mysqlclient()
    _check_no_thread_inherit_context()
    replaced = recreate_prepatch_locks()
    if replaced:
        log.info("re-created %d lock(s) made before the monkey-patch: %s", len(replaced), replaced)


class _Lookup:
    """One in-flight installed-apps lookup that concurrent callers for the same site share."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._apps: list[str] | None = None
        self._error: BaseException | None = None

    def finish(self, apps: list[str] | None, error: BaseException | None) -> None:
        self._apps, self._error = apps, error
        self._done.set()

    def wait(self) -> list[str]:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._apps is not None
        return list(self._apps)


class _Lease:
    """The database connection(s) one Frappe context borrowed from the pool.

    The Frappe internals this takes (``Database.get_connection``, ``_conn``, ``_cursor`` and
    the attributes naming the database), verified on Frappe v15.44.2 and develop, are in
    gsocket/protocol/internals/frappe_db_hooks.py.  ``frappe.local`` (site, user, flags,
    caches, the ``Database`` object and its caches) is new for every event in any case; the
    pool only shares the MariaDB session, which it resets.
    """

    def __init__(self, pool: DBPool, site: str, frappe: ModuleType) -> None:
        self.pool = pool
        self.db = frappe.local.db
        conf = frappe.local.conf
        ssl_keys = ("db_ssl_ca", "db_ssl_cert", "db_ssl_key", "local_infile")
        self.key = (
            site,
            *(getattr(self.db, name, None) for name in DATABASE_NAMING),
            *(conf.get(key) for key in ssl_keys),
        )
        self.borrowed: list[Any] = []
        lend_connections(self.db, self._borrow)

    def _borrow(self, open_new: Callable[[], Any]) -> Any:
        conn = self.pool.checkout(self.key, open_new)
        self.borrowed.append(conn)
        return conn

    def end(self, reusable: bool, commit: bool = False) -> None:
        """Give back the connection Frappe holds, and every other one this context borrowed.

        Called before ``frappe.destroy()``, once (later calls do nothing).  A connection Frappe
        replaced or closed during the event (``frappe.db.close()``, a reconnect) goes back as
        not reusable: the pool closes it if still open and frees its place under
        ``db_max_connections``.  With ``commit``, the held connection's transaction is
        committed with its return (:meth:`DBPool.checkin`), whose error is raised here.
        """
        borrowed, self.borrowed = self.borrowed, []
        current = current_connection(self.db)
        held = None
        for conn in borrowed:
            if conn is current:
                held = conn
            else:
                self.pool.checkin(self.key, conn, reusable=False)
        # Last: its reset is the one step here that waits, and may be interrupted.
        if held is not None:
            take_connection(self.db)
            self.pool.checkin(self.key, held, reusable, commit)

    def can_commit_with_return(self, db: Any) -> bool:
        """Whether the last ``COMMIT`` of ``db`` (``frappe.local.db`` after the handler) may go
        with the return of its connection: ``db`` is the ``Database`` this lease lends to (a
        handler's ``frappe.connect()`` makes another, whose transaction Frappe's ``commit()``
        must end), the connection it holds is one this context borrowed, and no unbuffered
        result of it is left unread (PyMySQL's ``commit()`` reads that first)."""
        if db is not self.db:
            return False
        current = current_connection(db)
        return any(conn is current for conn in self.borrowed) and not result_unread(current)


class FrappeContext:
    """Opens an isolated Frappe context around handler calls for the sites of one bench.

    :param sites_path: the bench's ``sites`` folder (what ``frappe.init`` calls ``sites_path``).
    :param installed_apps_ttl: seconds a site's installed-apps list is cached.
    :param rollback_timeout: seconds a rollback after a failed handler may take.
    :param pool: the pool events borrow database connections from; None opens and closes one
        per event.  Not used with a PyMySQL whose internals the pool was not verified with.
    """

    def __init__(
        self,
        sites_path: str,
        installed_apps_ttl: float = INSTALLED_APPS_TTL,
        rollback_timeout: float = ROLLBACK_TIMEOUT,
        pool: DBPool | None = None,
    ) -> None:
        # Absolute once, so a later chdir (Frappe's log files want cwd = sites/) changes nothing.
        self.sites_path = os.path.abspath(sites_path)
        self.installed_apps_ttl = installed_apps_ttl
        self.rollback_timeout = rollback_timeout
        self._frappe: ModuleType | None = None
        self._unavailable: str | None = None
        self._valid_sites: set[str] = set()
        self._mysqldb_reported = False
        self._apps_lock = threading.Lock()
        self._apps_cache: dict[str, tuple[float, list[str]]] = {}
        self._apps_inflight: dict[str, _Lookup] = {}
        self.pool = pool
        self._module_maps: ModuleMapCache | None = None

    def close(self) -> None:
        """Close the pool's idle connections (those still in use close when their event ends)
        and the Redis connections that track the kept module maps."""
        if self.pool is not None:
            self.pool.close()
        if self._module_maps is not None:
            self._module_maps.close()

    def _load(self) -> ModuleType:
        """Import Frappe once; remember a failure so that each event costs no import attempt."""
        if self._frappe is not None:
            return self._frappe
        if self._unavailable is None:
            self._unavailable = self._import_frappe()
        if self._unavailable:
            raise FrappeUnavailable(self._unavailable)
        assert self._frappe is not None
        return self._frappe

    def _import_frappe(self) -> str:
        """Set ``self._frappe`` and return "", or return why Frappe is unusable."""
        advice = "run gsocket with the bench's own Python (env/bin/python)"
        try:
            module = importlib.import_module("frappe")
        except Exception as exc:
            log.debug("importing frappe failed", exc_info=True)
            return f"Frappe cannot be imported in this Python environment ({exc!r}); {advice}"
        if getattr(module, "__gsocket_stub__", False):
            return f"Frappe is not installed in this Python environment; {advice}"
        missing = [name for name in _REQUIRED_API if not hasattr(module, name)]
        if missing:
            origin = getattr(module, "__file__", "?")
            return f"the importable module `frappe` ({origin}) has no {missing}; {advice}"
        self._frappe = module
        share_pymysql_default_tls_context()
        keep_site_config(module)
        self._module_maps = keep_module_map(module)
        if self.pool is not None and not pool_supported():
            log.warning(
                "this PyMySQL is not one gsocket's database pool was verified with; every "
                "Frappe context opens and closes a connection of its own"
            )
            self.pool = None
        return ""

    def available(self) -> bool:
        """Whether the real Frappe (not gsocket's stand-in) can be imported here."""
        try:
            self._load()
        except FrappeUnavailable:
            return False
        return True

    def _check_site(self, site: str) -> None:
        """Reject site names that would make ``frappe.init`` look outside ``sites/``.

        The site comes from a client's namespace; a name is checked once and then remembered.
        """
        if site in self._valid_sites:
            return
        if not site or site in (".", "..") or any(c in site for c in "/\\\x00"):
            raise ValueError(f"not a site name: {site!r}")
        self._valid_sites.add(site)

    def run(self, site: str, user: str, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` in the current greenlet inside a fresh Frappe context for ``site``.

        The context runs in a new, empty ``contextvars.Context``, whatever context the calling
        greenlet has, so ``frappe.local`` of either shape starts empty and nothing set in it
        outlives the call.  Commits when ``fn`` returns; rolls back and re-raises when it
        raises an ``Exception`` (a ``BaseException`` such as ``GreenletExit`` only closes the
        connection, which discards the transaction); always calls ``frappe.destroy()``, even
        when ``init`` or ``connect`` failed.  With a pool, the connection goes back to it
        (reset) after a commit or a rollback that succeeded, and is closed otherwise.

        :raises FrappeUnavailable: Frappe cannot be imported in this process.
        """
        frappe = self._load()
        self._check_site(site)
        return contextvars.Context().run(self._run_inside, frappe, site, user, fn, args)

    def _run_inside(
        self,
        frappe: ModuleType,
        site: str,
        user: str,
        fn: Callable[..., T],
        args: tuple[Any, ...],
    ) -> T:
        lease: _Lease | None = None
        reusable = False
        try:
            frappe.init(site, sites_path=self.sites_path, force=True)
            # Newer Frappe picks the mysqlclient C driver unless this key is 0 (absent means
            # 1), and that driver blocks the gevent hub; v15 ignores the key and uses PyMySQL.
            frappe.local.conf["use_mysqlclient"] = 0
            frappe.connect(set_admin_as_user=False)
            if self.pool is not None:
                lease = _Lease(self.pool, site, frappe)
            self._report_blocking_driver()
            frappe.set_user(user)
            result = fn(*args)
            db = frappe.local.db
            if lease is not None and lease.can_commit_with_return(db) and only_commit_left(db):
                lease.end(True, commit=True)
            elif not untouched(db, COMMIT_CALLBACKS):
                commit_last(db, read_only=bool(frappe.local.flags.read_only))
            reusable = True
            return result
        except Exception:
            reusable = self._rollback(frappe, site)
            raise
        # GreenletExit, gevent.Timeout and the like may land in the middle of a query; the
        # connection is then in no state to take a ROLLBACK (it would first read the rest of
        # the interrupted answer), so it is only closed below: MariaDB discards the open
        # transaction of a connection that goes away.
        finally:
            if lease is not None:
                lease.end(reusable)
            self._destroy(frappe, site)

    def _report_blocking_driver(self) -> None:
        """Log once if mysqlclient got imported after start-up (an app or a Frappe change)."""
        if self._mysqldb_reported or _foreign_mysqldb() is None:
            return
        self._mysqldb_reported = True
        log.error(
            "mysqlclient (MySQLdb) was imported after gsocket started; its calls block every "
            "socket while one handler waits on MariaDB. Find the import and remove it."
        )

    def _rollback(self, frappe: ModuleType, site: str) -> bool:
        """Roll back when a DB object was bound; a failure here must not hide the cause.

        Returns whether the connection may be reused: the rollback went through (or there
        was nothing to roll back).

        Bounded in time: when the failure was a time limit that interrupted a query (the
        dispatcher's limit is an ``Exception``), the connection may still owe the rest of
        that query's answer, and a ROLLBACK would wait for it.  Closing the connection in
        ``destroy`` discards the transaction just as well.
        """
        db = getattr(frappe.local, "db", None)
        if db is None or untouched(db, ROLLBACK_CALLBACKS):
            return True
        limit = gevent.Timeout(self.rollback_timeout)
        limit.start()
        try:
            frappe.db.rollback()
            return True
        except gevent.Timeout as exc:
            if exc is not limit:
                raise
            log.error(
                "rollback on site %s took over %.1f s; the connection is closed instead, "
                "which discards the transaction",
                site,
                self.rollback_timeout,
            )
        except Exception as exc:
            # Expected after an interrupted query or a lost connection; the cause is what
            # the caller reports, so one line is enough here.
            log.warning("rollback failed on site %s: %r", site, exc)
        finally:
            limit.close()
        return False

    @staticmethod
    def _destroy(frappe: ModuleType, site: str) -> None:
        """``frappe.destroy()``; its failure is logged, never raised over the handler's outcome."""
        try:
            frappe.destroy()
        except Exception:
            log.exception("frappe.destroy() failed on site %s", site)

    def installed_apps(self, site: str) -> list[str]:
        """The apps installed on ``site``, from ``frappe.get_installed_apps()`` in a context.

        Needed for v15 sites, whose ``get_user_info`` does not say.  Cached per site for
        ``installed_apps_ttl`` seconds; concurrent callers for one site share one lookup.  When
        a refresh fails and an older answer exists, the older answer is kept (and logged)
        rather than refusing every connection to the site.
        """
        with self._apps_lock:
            cached = self._apps_cache.get(site)
            if cached is not None and cached[0] > time.monotonic():
                return list(cached[1])
            lookup = self._apps_inflight.get(site)
            owner = lookup is None
            if lookup is None:
                lookup = self._apps_inflight[site] = _Lookup()
        if not owner:
            return lookup.wait()
        apps: list[str] | None = None
        error: BaseException = RuntimeError(f"the installed-apps lookup of {site} was interrupted")
        try:
            frappe = self._load()
            apps = [str(app) for app in self.run(site, "Guest", frappe.get_installed_apps)]
        except Exception as exc:
            if cached is None:
                error = exc
            else:
                log.warning("installed apps of %s kept, refresh failed: %r", site, exc)
                apps = cached[1]
        finally:
            # Also on GreenletExit/Timeout: waiters must be released and the slot freed.
            with self._apps_lock:
                if apps is not None:
                    self._apps_cache[site] = (time.monotonic() + self.installed_apps_ttl, apps)
                del self._apps_inflight[site]
            lookup.finish(apps, None if apps is not None else error)
        return lookup.wait()
