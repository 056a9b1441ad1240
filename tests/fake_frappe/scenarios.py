"""Scenarios that drive ``gsocket.frappe_ctx`` under gevent, each in a process of its own.

The pytest process is not monkey-patched, so every check that needs gevent runs here:
``python scenarios.py NAME JSON_ARGS``.  The process monkey-patches first (except the
``locks`` scenario, which imports frappe *before* patching on purpose), runs the scenario,
prints ``RESULT <json>`` and then waits for a line on stdin before it exits: the caller can
count the connections left on the MariaDB server while this process, and anything it leaked,
is still alive.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _counters() -> dict[str, int]:
    import frappe

    return dict(frappe.test_counters)


def _naive_run(sites_path: str, site: str, user: str, fn: Any, *args: Any) -> Any:
    """The Frappe sequence *without* gsocket's fresh context: the hazard, for contrast."""
    import frappe

    frappe.init(site, sites_path=sites_path, force=True)
    frappe.local.conf["use_mysqlclient"] = 0
    try:
        frappe.connect(set_admin_as_user=False)
        frappe.set_user(user)
        result = fn(*args)
        frappe.db.commit()
        return result
    finally:
        frappe.destroy()


def concurrency(a: dict[str, Any]) -> dict[str, Any]:
    """``events`` handlers on several sites at once, half of them spawned with a copy of a
    context in which the spawner had its own ``frappe.local``; every handler checks its site,
    user, flags, cache and connection after each point where it yielded to the hub."""
    import contextvars
    import time

    import frappe
    import gevent
    from benchutil import db_name_for

    from gsocket.frappe_ctx import FrappeContext

    sites_path, sites, sleep = a["sites_path"], a["sites"], a["sleep"]
    ctx = FrappeContext(sites_path)
    errors: list[str] = []

    frappe.init(sites[0], sites_path=sites_path)
    frappe.local.flags.marker = "spawner"
    frappe.local.spawner_secret = "not for handlers"  # frappe.init() does not reset this one

    def handler(i: int, site: str, user: str, db_name: str) -> dict[str, Any]:
        fresh = (
            frappe.local.flags.marker is None
            and "marker" not in frappe.local.cache
            and getattr(frappe.local, "spawner_secret", None) is None
        )
        frappe.local.flags.marker = i
        frappe.local.cache["marker"] = i
        db_object = frappe.local.db

        def check(where: str) -> None:
            seen = (
                frappe.local.site,
                frappe.session.user,
                frappe.local.flags.marker,
                frappe.local.cache.get("marker"),
                frappe.local.db is db_object,
            )
            if seen != (site, user, i, i, True):
                errors.append(f"event {i} {where}: saw {seen!r}")

        conn_id, database = frappe.db.sql("SELECT CONNECTION_ID(), DATABASE()")[0]
        check("after the first query")
        frappe.db.sql("SELECT SLEEP(%s)", (sleep,))
        check("after SLEEP")
        gevent.sleep(0)
        check("after gevent.sleep(0)")
        conn_id2, database2 = frappe.db.sql("SELECT CONNECTION_ID(), DATABASE()")[0]
        check("after the last query")
        return {
            "fresh": fresh,
            "conn": conn_id,
            "same_conn": conn_id == conn_id2,
            "own_db": database == database2 == db_name,
        }

    def runner(i: int, site: str) -> Any:
        user = f"user{i}@example.com"
        if a["mode"] == "naive":
            return _naive_run(sites_path, site, user, handler, i, site, user, db_name_for(site))
        return ctx.run(site, user, handler, i, site, user, db_name_for(site))

    started = time.monotonic()
    greenlets = []
    for i in range(a["events"]):
        greenlet = gevent.Greenlet(runner, i, sites[i % len(sites)])
        if i % 2:
            greenlet.gr_context = contextvars.copy_context()
        greenlet.start()
        greenlets.append(greenlet)
    gevent.joinall(greenlets, timeout=a.get("timeout", 60))
    elapsed = time.monotonic() - started
    values = [g.value for g in greenlets if g.successful()]
    failures = [repr(g.exception) for g in greenlets if g.dead and not g.successful()]
    return {
        "elapsed": elapsed,
        "ok": len(values),
        "failures": failures[:5],
        "errors": errors[:10],
        "error_count": len(errors),
        "fresh": sum(v["fresh"] for v in values),
        "distinct_conns": len({v["conn"] for v in values}),
        "same_conn": all(v["same_conn"] for v in values),
        "own_db": all(v["own_db"] for v in values),
        "spawner_intact": (
            frappe.local.site,
            frappe.local.flags.marker,
            frappe.local.spawner_secret,
        )
        == (sites[0], "spawner", "not for handlers"),
        "counters": _counters(),
    }


def rollback(a: dict[str, Any]) -> dict[str, Any]:
    """Two interleaved writers on one site: the one that raises, and the one that returns."""
    import time
    import uuid

    import frappe
    import gevent

    from gsocket.frappe_ctx import FrappeContext

    ctx = FrappeContext(a["sites_path"])
    site = a["site"]
    token = uuid.uuid4().hex[:12]

    windows: list[tuple[float, float]] = []

    def writer(name: str, fail: bool) -> str:
        frappe.db.sql(
            "INSERT INTO tabNote (name, title, owner) VALUES (%s, 'note', %s)",
            (name, frappe.session.user),
        )
        began = time.monotonic()
        frappe.db.sql("SELECT SLEEP(0.5)")
        windows.append((began, time.monotonic()))
        if fail:
            raise ValueError(f"{name} fails on purpose")
        return name

    failing = gevent.spawn(ctx.run, site, "a@example.com", writer, f"a-{token}", True)
    passing = gevent.spawn(ctx.run, site, "b@example.com", writer, f"b-{token}", False)
    gevent.joinall([failing, passing], timeout=30)

    def names() -> list[list[str]]:
        rows = frappe.db.sql(
            "SELECT name, owner FROM tabNote WHERE name LIKE %s ORDER BY name", (f"%{token}",)
        )
        return [list(row) for row in rows]

    return {
        "sleeps_overlapped": max(w[0] for w in windows) < min(w[1] for w in windows),
        "failing_raised": repr(failing.exception),
        "passing_value": passing.value,
        "rows": ctx.run(site, "Administrator", names),
        "token": token,
        "counters": _counters(),
    }


def paths(a: dict[str, Any]) -> dict[str, Any]:
    """One event down each path; ``frappe.destroy()`` must run on every one of them."""
    import time

    import frappe
    import gevent
    import gevent.event

    from gsocket.frappe_ctx import FrappeContext

    ctx = FrappeContext(a["sites_path"], rollback_timeout=0.5)
    good, bad_password, missing = a["site"], a["bad_password_site"], a["missing_site"]
    outcomes: dict[str, str] = {}

    def uses_db() -> str:
        return str(frappe.db.sql("SELECT 1")[0][0])

    def raises() -> None:
        frappe.db.sql("SELECT 1")
        raise KeyError("handler failed")

    def blocks(started: Any) -> None:
        started.set()
        frappe.db.sql("SELECT SLEEP(2)")  # the server notices the closed client at its end

    cases = {
        "success": (good, uses_db),
        "success_without_db": (good, lambda: "no db"),
        "handler_raises": (good, raises),
        "init_fails": (missing, uses_db),
        "connect_fails": (bad_password, uses_db),
    }
    for name, (site, fn) in cases.items():
        try:
            outcomes[name] = f"returned {ctx.run(site, 'user@example.com', fn)!r}"
        except Exception as exc:
            outcomes[name] = f"raised {type(exc).__name__}"
        outcomes[name] += f"; destroy calls so far {frappe.test_counters['destroy']}"

    started = gevent.event.Event()
    victim = gevent.spawn(ctx.run, good, "user@example.com", blocks, started)
    started.wait(10)
    victim.kill(timeout=10)
    # gevent counts GreenletExit as a clean end: it is the value, not the exception.
    ending = victim.exception or victim.value
    outcomes["killed_mid_query"] = f"ended by {type(ending).__name__}"
    outcomes["killed_mid_query"] += f"; destroy calls so far {frappe.test_counters['destroy']}"

    class TimeLimit(Exception):
        """Like the dispatcher's handler time limit: an Exception thrown in mid-query."""

    began = time.monotonic()
    try:
        with gevent.Timeout(0.3, TimeLimit):
            ctx.run(good, "user@example.com", blocks, gevent.event.Event())
        outcomes["timed_out_mid_query"] = "returned"
    except TimeLimit:
        quick = time.monotonic() - began < 0.3 + ctx.rollback_timeout + 0.5
        outcomes["timed_out_mid_query"] = f"raised TimeLimit, {'quickly' if quick else 'late'}"
    outcomes["timed_out_mid_query"] += f"; destroy calls so far {frappe.test_counters['destroy']}"
    return {"outcomes": outcomes, "counters": _counters()}


def many(a: dict[str, Any]) -> dict[str, Any]:
    """``events`` events through a pool: successes, failures and init failures mixed."""
    import time
    from collections import Counter

    import frappe
    import gevent.pool

    from gsocket.frappe_ctx import FrappeContext

    ctx = FrappeContext(a["sites_path"])
    sites, missing = a["sites"], a["missing_site"]
    outcomes: Counter[str] = Counter()

    def ok() -> int:
        return int(frappe.db.sql("SELECT 1")[0][0])

    def fail() -> None:
        frappe.db.sql("SELECT 1")
        raise RuntimeError("fails on purpose")

    def event(i: int) -> None:
        site = missing if i % 10 == 9 else sites[i % len(sites)]
        fn = fail if i % 3 == 1 else ok
        try:
            ctx.run(site, f"user{i}@example.com", fn)
            outcomes["returned"] += 1
        except Exception as exc:
            outcomes[type(exc).__name__] += 1

    started = time.monotonic()
    pool = gevent.pool.Pool(a["concurrency"])
    pool.map(event, range(a["events"]))
    return {
        "elapsed": time.monotonic() - started,
        "outcomes": dict(outcomes),
        "counters": _counters(),
    }


def installed_apps(a: dict[str, Any]) -> dict[str, Any]:
    """Per-site caching, one shared lookup for concurrent callers, refresh, stale fallback."""
    import json as jsonlib

    import frappe
    import gevent
    from benchutil import write_site_config

    from gsocket.frappe_ctx import FrappeContext

    sites_path, site, other = a["sites_path"], a["site"], a["other_site"]
    result: dict[str, Any] = {}

    def lookups_during(fn: Any) -> tuple[Any, int]:
        before = frappe.test_counters["init"]
        value = fn()
        return value, frappe.test_counters["init"] - before

    cached = FrappeContext(sites_path, installed_apps_ttl=3600)

    def concurrent_callers() -> list[Any]:
        callers = [gevent.spawn(cached.installed_apps, site) for _ in range(20)]
        gevent.joinall(callers, timeout=30)
        return [g.value for g in callers]

    result["concurrent"], result["concurrent_lookups"] = lookups_during(concurrent_callers)
    result["other"], _ = lookups_during(lambda: cached.installed_apps(other))

    def set_apps(apps: list[str]) -> None:
        frappe.db.sql(
            "UPDATE tabDefaultValue SET defvalue = %s WHERE defkey = 'installed_apps'",
            (jsonlib.dumps(apps),),
        )

    cached.run(site, "Administrator", set_apps, a["new_apps"])
    result["cached_after_change"], result["cached_lookups"] = lookups_during(
        lambda: cached.installed_apps(site)
    )

    expiring = FrappeContext(sites_path, installed_apps_ttl=0)
    result["refreshed"], _ = lookups_during(lambda: expiring.installed_apps(site))
    _, result["expired_lookups"] = lookups_during(lambda: expiring.installed_apps(site))

    write_site_config(sites_path, site, a["db_name"], a["db_user"], "wrong password")
    result["stale_on_failure"], _ = lookups_during(lambda: expiring.installed_apps(site))
    fresh = FrappeContext(sites_path)
    failed = [gevent.spawn(fresh.installed_apps, site) for _ in range(5)]
    gevent.joinall(failed, timeout=30)
    result["no_cache_failures"] = [type(g.exception).__name__ for g in failed]
    write_site_config(sites_path, site, a["db_name"], a["db_user"], a["db_password"])
    result["counters"] = _counters()
    return result


def locks(a: dict[str, Any]) -> dict[str, Any]:
    """Frappe imported before the monkey-patch: does a pre-patch module lock deadlock?"""
    import os

    import frappe  # before the patch on purpose: _cache_init_lock becomes an OS lock
    from gevent import monkey

    monkey.patch_all()
    import gevent

    from gsocket.frappe_ctx import check_startup_guards

    before = type(frappe._cache_init_lock).__name__
    if a["guarded"]:
        check_startup_guards()
    after = type(frappe._cache_init_lock).__name__

    def holder() -> None:
        with frappe._cache_init_lock:
            gevent.sleep(0.05)

    def waiter() -> None:
        with frappe._cache_init_lock:
            pass

    finished: list[bool] = []

    def watchdog() -> None:
        """A real OS thread: it still runs while the hub's thread hangs on an OS lock."""
        monkey.get_original("time", "sleep")(a["deadlock_after"])
        if not finished:
            print("DEADLOCKED", flush=True)
            os._exit(3)

    monkey.get_original("_thread", "start_new_thread")(watchdog, ())
    gevent.joinall([gevent.spawn(holder), gevent.spawn(waiter)], raise_error=True)
    finished.append(True)
    return {"before": before, "after": after}


SCENARIOS = {
    "concurrency": concurrency,
    "rollback": rollback,
    "paths": paths,
    "many": many,
    "installed_apps": installed_apps,
    "locks": locks,
}


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    if name != "locks":
        from gevent import monkey

        monkey.patch_all()
    result = SCENARIOS[name](args)
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
