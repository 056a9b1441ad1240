"""``gsocket.frappe_ctx`` driven under gevent against a real Frappe bench's ORM and MariaDB.

Run with the bench's own Python from its ``sites/`` folder (as every bench process runs)::

    env/bin/python .../ctx_scenarios.py NAME JSON_ARGS

The process monkey-patches first, as ``gsocket serve`` does, runs one scenario and prints
``RESULT <json>``.  This folder holds no ``frappe``, so ``import frappe`` is the bench's real
Frappe and ``import gsocket`` the copy pip installed into the bench's env.  The counterparts
of these scenarios against the Frappe-shaped fake (tests/fake_frappe/scenarios.py) also count
``init``/``destroy`` calls; here the real ``frappe.init``/``frappe.destroy`` are wrapped to
count them, and connections are followed by their MariaDB ``CONNECTION_ID()``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

CALLS: Counter[str] = Counter()


def _count_frappe_calls() -> None:
    """Wrap ``frappe.init`` and ``frappe.destroy`` (looked up per call by FrappeContext)."""
    import frappe

    for name in ("init", "destroy"):
        real = getattr(frappe, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            CALLS[_name] += 1
            return _real(*args, **kwargs)

        setattr(frappe, name, counted)


def _open_connections(ctx: Any, site: str, ids: list[int], timeout: float = 10.0) -> int:
    """How many of the connections ``ids`` MariaDB still has, after up to ``timeout`` s.

    A closed client's connection leaves the server's process list a moment later, so this
    waits for the count to reach zero before answering.
    """
    import time

    import frappe
    import gevent

    def count() -> int:
        rows = frappe.db.sql("SELECT ID FROM information_schema.PROCESSLIST")
        return len({int(row[0]) for row in rows} & set(ids))

    deadline = time.monotonic() + timeout
    left = ctx.run(site, "Administrator", count)
    while left and time.monotonic() < deadline:
        gevent.sleep(0.05)
        left = ctx.run(site, "Administrator", count)
    return int(left)


def isolation(a: dict[str, Any]) -> dict[str, Any]:
    """``events`` handlers on both sites and several users at once, half of them spawned with
    a copy of a context in which the spawner had initialised its own ``frappe.local``; each
    checks site, user, flags, its own attribute, DB object, connection and database after
    every point where it yielded to the hub."""
    import contextvars
    import time

    import frappe
    import gevent

    from gsocket.frappe_ctx import FrappeContext, _foreign_mysqldb

    sites, users, db_names = a["sites"], a["users"], a["db_names"]
    events, sleep = a["events"], a["sleep"]
    ctx = FrappeContext(".")
    errors: list[str] = []

    frappe.init(sites[0], sites_path=".")
    frappe.local.flags.gsocket_marker = "spawner"
    frappe.local.spawner_secret = "not for handlers"  # frappe.init() does not reset this one

    def handler(i: int, site: str, user: str) -> dict[str, Any]:
        fresh = (
            frappe.local.flags.gsocket_marker is None
            and getattr(frappe.local, "spawner_secret", None) is None
        )
        frappe.local.flags.gsocket_marker = i
        db_object = frappe.local.db

        def check(where: str) -> None:
            seen = (
                frappe.local.site,
                frappe.session.user,
                frappe.local.flags.gsocket_marker,
                frappe.local.db is db_object,
            )
            if seen != (site, user, i, True):
                errors.append(f"event {i} {where}: saw {seen!r}")

        conn, database = frappe.db.sql("SELECT CONNECTION_ID(), DATABASE()")[0]
        check("after the first query")
        frappe.db.sql("SELECT SLEEP(%s)", (sleep,))
        check("after SLEEP")
        gevent.sleep(0)
        check("after gevent.sleep(0)")
        conn2, database2 = frappe.db.sql("SELECT CONNECTION_ID(), DATABASE()")[0]
        check("after the last query")
        return {
            "fresh": fresh,
            "conn": int(conn),
            "same_conn": conn == conn2,
            "own_db": database == database2 == db_names[site],
        }

    started = time.monotonic()
    greenlets = []
    for i in range(events):
        site, user = sites[i % len(sites)], users[i % len(users)]
        greenlet = gevent.Greenlet(ctx.run, site, user, handler, i, site, user)
        if i % 2:
            greenlet.gr_context = contextvars.copy_context()
        greenlet.start()
        greenlets.append(greenlet)
    gevent.joinall(greenlets, timeout=120)
    elapsed = time.monotonic() - started
    values = [g.value for g in greenlets if g.successful()]
    conns = [v["conn"] for v in values]
    return {
        "elapsed": elapsed,
        "ok": len(values),
        "failures": [repr(g.exception) for g in greenlets if not g.successful()][:5],
        "errors": errors[:10],
        "fresh": sum(v["fresh"] for v in values),
        "distinct_conns": len(set(conns)),
        "same_conn": all(v["same_conn"] for v in values),
        "own_db": all(v["own_db"] for v in values),
        "spawner_intact": (
            frappe.local.site,
            frappe.local.flags.gsocket_marker,
            frappe.local.spawner_secret,
        )
        == (sites[0], "spawner", "not for handlers"),
        "mysqlclient_loaded": _foreign_mysqldb() is not None,
        "calls": dict(CALLS),
        "left_open": _open_connections(ctx, sites[0], conns),
    }


def rollback(a: dict[str, Any]) -> dict[str, Any]:
    """Two interleaved ORM writers on one site: the one that raises, and the one that returns."""
    import time

    import frappe
    import gevent

    from gsocket.frappe_ctx import FrappeContext

    ctx = FrappeContext(".")
    site, token = a["site"], a["token"]
    windows: list[tuple[float, float]] = []

    def writer(label: str, fail: bool) -> str:
        todo = frappe.get_doc({"doctype": "ToDo", "description": f"{label}-{token}"})
        todo.insert(ignore_permissions=True)  # a Website User writes it too
        began = time.monotonic()
        frappe.db.sql("SELECT SLEEP(0.5)")
        windows.append((began, time.monotonic()))
        if fail:
            raise ValueError(f"{label} fails on purpose")
        return str(todo.name)

    failing = gevent.spawn(ctx.run, site, a["failing_user"], writer, "failing", True)
    passing = gevent.spawn(ctx.run, site, a["passing_user"], writer, "passing", False)
    gevent.joinall([failing, passing], timeout=60)

    def rows() -> list[list[str]]:
        found = frappe.get_all(
            "ToDo",
            filters={"description": ["like", f"%-{token}"]},
            fields=["description", "owner"],
            order_by="description",
        )
        return [[row.description, row.owner] for row in found]

    return {
        "sleeps_overlapped": len(windows) == 2
        and max(w[0] for w in windows) < min(w[1] for w in windows),
        "failing_raised": repr(failing.exception),
        "passing_value": passing.value,
        "rows": ctx.run(site, "Administrator", rows),
    }


def paths(a: dict[str, Any]) -> dict[str, Any]:
    """One event down each path; ``frappe.destroy()`` must run on every one of them and no
    connection may outlive its event."""
    import time

    import frappe
    import gevent
    import gevent.event

    from gsocket.frappe_ctx import FrappeContext
    from gsocket.handlers.dispatch import HandlerTimeout

    ctx = FrappeContext(".", rollback_timeout=0.5)
    good, bad_password, missing = a["site"], a["bad_password_site"], a["missing_site"]
    outcomes: dict[str, str] = {}
    conns: list[int] = []

    def conn_id() -> int:
        conn = int(frappe.db.sql("SELECT CONNECTION_ID()")[0][0])
        conns.append(conn)
        return conn

    def uses_db() -> str:
        conn_id()
        return str(frappe.db.sql("SELECT 1")[0][0])

    def raises() -> None:
        conn_id()
        raise KeyError("handler failed")

    def blocks(started: Any) -> None:
        conn_id()
        started.set()
        frappe.db.sql("SELECT SLEEP(3)")

    def local_is_clean() -> bool:
        """Nothing of the event is left in the caller's frappe.local."""
        return getattr(frappe.local, "site", None) is None

    cases = {
        "success": (good, uses_db),
        "success_without_db": (good, lambda: "no db"),
        "handler_raises": (good, raises),
        "init_fails": (missing, uses_db),
        "connect_fails": (bad_password, uses_db),
    }
    for name, (site, fn) in cases.items():
        try:
            outcomes[name] = f"returned {ctx.run(site, a['user'], fn)!r}"
        except Exception as exc:
            outcomes[name] = f"raised {type(exc).__name__}"
        outcomes[name] += f"; destroy calls so far {CALLS['destroy']}"

    started = gevent.event.Event()
    victim = gevent.spawn(ctx.run, good, a["user"], blocks, started)
    started.wait(20)
    victim.kill(timeout=20)
    ending = victim.exception or victim.value  # gevent counts GreenletExit as the value
    outcomes["killed_mid_query"] = f"ended by {type(ending).__name__}"
    outcomes["killed_mid_query"] += f"; destroy calls so far {CALLS['destroy']}"

    # The dispatcher's own time limit, a BaseException: Frappe's ``db.sql`` catches every
    # Exception raised in mid-query and inspects it as a driver error.
    began = time.monotonic()
    try:
        with gevent.Timeout(0.5, HandlerTimeout):
            ctx.run(good, a["user"], blocks, gevent.event.Event())
        outcomes["timed_out_mid_query"] = "returned"
    except HandlerTimeout:
        quick = time.monotonic() - began < 0.5 + 1.0
        outcomes["timed_out_mid_query"] = f"raised HandlerTimeout, {'quickly' if quick else 'late'}"
    outcomes["timed_out_mid_query"] += f"; destroy calls so far {CALLS['destroy']}"
    return {
        "outcomes": outcomes,
        "calls": dict(CALLS),
        "local_is_clean": local_is_clean(),
        "conns": len(conns),
        "left_open": _open_connections(ctx, good, conns),
    }


def many(a: dict[str, Any]) -> dict[str, Any]:
    """``events`` events through a pool: successes, failures and init failures mixed."""
    import time

    import frappe
    import gevent.pool

    from gsocket.frappe_ctx import FrappeContext

    ctx = FrappeContext(".")
    sites, missing = a["sites"], a["missing_site"]
    outcomes: Counter[str] = Counter()
    conns: list[int] = []

    def ok() -> int:
        conns.append(int(frappe.db.sql("SELECT CONNECTION_ID()")[0][0]))
        return 1

    def fail() -> None:
        ok()
        raise RuntimeError("fails on purpose")

    def event(i: int) -> None:
        site = missing if i % 10 == 9 else sites[i % len(sites)]
        fn = fail if i % 3 == 1 else ok
        try:
            ctx.run(site, "Administrator", fn)
            outcomes["returned"] += 1
        except Exception as exc:
            outcomes[type(exc).__name__] += 1

    started = time.monotonic()
    gevent.pool.Pool(a["concurrency"]).map(event, range(a["events"]))
    return {
        "elapsed": time.monotonic() - started,
        "outcomes": dict(outcomes),
        "calls": dict(CALLS),
        "conns": len(set(conns)),
        "left_open": _open_connections(ctx, sites[0], conns),
    }


def installed_apps(a: dict[str, Any]) -> dict[str, Any]:
    """Each site's installed apps as gsocket learns them on v15: from the site's database,
    one lookup shared by concurrent callers, cached per site."""
    import gevent

    from gsocket.frappe_ctx import FrappeContext

    ctx = FrappeContext(".")
    answers: dict[str, Any] = {}
    for site in a["sites"]:
        before = CALLS["init"]
        callers = [gevent.spawn(ctx.installed_apps, site) for _ in range(5)]
        gevent.joinall(callers, timeout=60)
        answers[site] = {
            "apps": [g.value for g in callers],
            "lookups": CALLS["init"] - before,
        }
    before = CALLS["init"]
    ctx.installed_apps(a["sites"][0])
    return {"sites": answers, "cached_lookups": CALLS["init"] - before}


SCENARIOS = {
    "isolation": isolation,
    "rollback": rollback,
    "paths": paths,
    "many": many,
    "installed_apps": installed_apps,
}


def main() -> None:
    from gevent import monkey

    monkey.patch_all()
    from gsocket.frappe_ctx import check_startup_guards

    check_startup_guards()
    _count_frappe_calls()
    name, args = sys.argv[1], json.loads(sys.argv[2])
    print("RESULT " + json.dumps(SCENARIOS[name](args)), flush=True)


if __name__ == "__main__":
    main()
