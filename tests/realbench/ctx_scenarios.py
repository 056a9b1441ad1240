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
    connection may outlive its event, or with a pool (``pool_size``), the pool's close."""
    import time

    import frappe
    import gevent
    import gevent.event

    from gsocket.contract.dbpool import DBPool
    from gsocket.frappe_ctx import FrappeContext
    from gsocket.handlers.dispatch import HandlerTimeout

    pool = DBPool(a["pool_size"]) if a["pool_size"] else None
    ctx = FrappeContext(".", rollback_timeout=0.5, pool=pool)
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
    counts = dict(pool.counts) if pool is not None else {}
    ctx.close()
    return {
        "outcomes": outcomes,
        "calls": dict(CALLS),
        "local_is_clean": local_is_clean(),
        "conns": len(conns),
        "distinct_conns": len(set(conns)),
        "pool_counts": counts,
        "left_open": _open_connections(FrappeContext("."), good, conns),
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


def pooled(a: dict[str, Any]) -> dict[str, Any]:
    """``events`` events on both sites and several users, ``width`` at a time, through a pool
    of ``pool_size`` connections per site, so that most events run on a connection an earlier
    event (another user, perhaps one that failed) used.  Each event first looks for what an
    earlier user of its connection could have left, then leaves all of it behind itself:
    an uncommitted ORM row (every third event raises, so its row is rolled back), a temporary
    table, a user variable, a changed session variable, a ``frappe.flags`` entry."""
    import time

    import frappe
    import gevent
    import gevent.pool

    from gsocket.contract.dbpool import DBPool
    from gsocket.frappe_ctx import FrappeContext

    sites, users, token = a["sites"], a["users"], a["token"]
    ctx = FrappeContext(".", pool=DBPool(a["pool_size"]))
    leaks: list[str] = []
    conns: list[int] = []
    committed: list[str] = []
    failures: list[str] = []

    inside = [0, 0]  # events in their handler now, and the most at once

    def handler(i: int, site: str, user: str, fail: bool) -> int:
        inside[0] += 1
        inside[1] = max(inside)
        try:
            return checked(i, site, user, fail)
        finally:
            inside[0] -= 1

    def checked(i: int, site: str, user: str, fail: bool) -> int:
        def leak(what: str) -> None:
            leaks.append(f"event {i} ({site}, {user}): {what}")

        if frappe.session.user != user or frappe.local.site != site:
            leak(f"runs as {frappe.session.user} on {frappe.local.site}")
        if frappe.flags.gsocket_pool_marker is not None:
            leak(f"frappe.flags from event {frappe.flags.gsocket_pool_marker}")
        frappe.flags.gsocket_pool_marker = i
        conn, user_var, lock_wait, global_lock_wait = frappe.db.sql(
            "SELECT CONNECTION_ID(), @gsocket_marker, @@session.lock_wait_timeout, "
            "@@global.lock_wait_timeout"
        )[0]
        conns.append(int(conn))
        if user_var is not None:
            leak(f"user variable from event {user_var}")
        if lock_wait != global_lock_wait:
            leak(f"session lock_wait_timeout {lock_wait} left by an earlier event")
        try:
            frappe.db.sql("CREATE TEMPORARY TABLE gsocket_pool_tmp (v INT)")
        except Exception as exc:
            leak(f"temporary table left by an earlier event: {exc!r}")
        frappe.db.sql("SET @gsocket_marker = %s", (i,))
        frappe.db.sql("SET SESSION lock_wait_timeout = %s", (1000 + i,))
        label = f"{token}-{'fail' if fail else 'keep'}-{i}"
        todo = frappe.get_doc({"doctype": "ToDo", "description": label})
        todo.insert(ignore_permissions=True)
        frappe.db.sql("SELECT SLEEP(%s)", (a["sleep"],))
        gevent.sleep(0)
        seen = frappe.get_all(
            "ToDo", filters={"description": ["like", f"{token}-%"]}, pluck="description"
        )
        others_failed = [d for d in seen if "-fail-" in d and d != label]
        if others_failed:
            leak(f"sees rolled-back rows {others_failed}")
        if label not in seen:
            leak("does not see its own row")
        if fail:
            raise RuntimeError(f"event {i} fails on purpose")
        committed.append(label)
        return int(conn)

    def event(i: int) -> None:
        site, user = sites[i % len(sites)], users[i % len(users)]
        try:
            ctx.run(site, user, handler, i, site, user, i % 3 == 2)
        except RuntimeError as exc:
            if "on purpose" not in str(exc):
                failures.append(f"event {i}: {exc!r}")
        except Exception as exc:
            failures.append(f"event {i}: {exc!r}")

    started = time.monotonic()
    gevent.pool.Pool(a["width"]).map(event, range(a["events"]))
    elapsed = time.monotonic() - started

    def rows() -> list[str]:
        return frappe.get_all(
            "ToDo", filters={"description": ["like", f"{token}-%"]}, pluck="description"
        )

    stored = {site: sorted(ctx.run(site, "Administrator", rows)) for site in sites}
    counts = dict(ctx.pool.counts) if ctx.pool is not None else {}
    ctx.close()
    return {
        "elapsed": elapsed,
        "leaks": leaks[:10],
        "failures": failures[:5],
        "most_at_once": inside[1],
        "events": len(conns),
        "distinct_conns": len(set(conns)),
        "stored": sorted(d for found in stored.values() for d in found),
        "committed": sorted(committed),
        "counts": counts,
        "pool_enabled": ctx.pool is not None,
        "left_open": _open_connections(FrappeContext("."), sites[0], conns),
    }


def module_map(a: dict[str, Any]) -> dict[str, Any]:
    """What a context's module map holds while the site's ``app_modules`` key in Redis is
    changed by another client, deleted by ``frappe.clear_cache()``, and while the connection
    that tracks it is killed (gsocket keeps the map while Redis reports no change)."""
    import pickle
    import time

    import frappe
    import redis

    from gsocket.frappe_ctx import FrappeContext

    site = a["site"]
    ctx = FrappeContext(".")
    seen: dict[str, Any] = {}

    def probe() -> dict[str, Any]:
        local = frappe.local
        key = frappe.cache.make_key("app_modules")
        found = {
            "apps": sorted(local.app_modules),
            "frappe_last": local.app_modules["frappe"][-1],
            "probe_app": local.module_app.get("gsocket_probe_module"),
            "same_object": local.cache.get(key) is local.app_modules,
            "redis_url": frappe.conf.redis_cache,
            "key": key.decode(),
            "print_sql": frappe.cache.get_value("flag_print_sql"),
        }
        # What a careless handler does to its map: none of it may reach the next event.
        local.app_modules["frappe"].append("left_by_handler")
        local.module_app["left_by_handler"] = "frappe"
        return found

    def reads() -> int:
        """Redis reads of both kept keys (the flag's counter exists once a context ran)."""
        flag = frappe.cache.__dict__.get("get_value") if frappe.cache else None
        return int(getattr(frappe.setup_module_map, "reads", -1)) + int(getattr(flag, "reads", 0))

    def until(what: str, done: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = reads()
            found.append(ctx.run(site, "Guest", probe))
            if done(found[-1], reads() - before):
                return found
            time.sleep(0.02)
        raise AssertionError(f"{what}: not within {timeout} s; last {found[-1:]}")

    first = ctx.run(site, "Guest", probe)
    seen["first"] = first
    seen["until_kept"] = until("kept", lambda f, r: r == 0)
    before = reads()
    seen["kept"] = [ctx.run(site, "Guest", probe) for _ in range(3)]
    seen["reads_while_kept"] = reads() - before

    client = redis.Redis.from_url(first["redis_url"])
    key = first["key"]
    original = pickle.loads(client.get(key))
    changed = {**original, "gsocket_probe": ["gsocket_probe_module"]}
    try:
        client.set(key, pickle.dumps(changed))
        seen["after_set"] = until("a changed value seen", lambda f, r: f["probe_app"] is not None)
        ctx.run(site, "Administrator", frappe.clear_cache)
        seen["after_clear_cache"] = until("clear_cache seen", lambda f, r: f["probe_app"] is None)
        until("kept again", lambda f, r: r == 0)
        ctx.run(site, "Administrator", frappe.print_sql, True)
        seen["print_sql_on"] = until("print_sql(True) seen", lambda f, r: f["print_sql"] is True)
        ctx.run(site, "Administrator", frappe.print_sql, False)
        seen["print_sql_off"] = until("print_sql(False) seen", lambda f, r: f["print_sql"] is False)

        tracker = next(iter(frappe.setup_module_map.trackers.values()))
        until("kept again", lambda f, r: r == 0)
        client.execute_command("CLIENT", "KILL", "ID", tracker.client_id)
        deadline = time.monotonic() + 10
        while tracker.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["ready_after_kill"] = tracker.ready
        client.set(key, pickle.dumps(changed))
        seen["while_untracked"] = ctx.run(site, "Guest", probe)
        seen["after_reconnect"] = until(
            "kept after reconnecting", lambda f, r: tracker.ready and r == 0
        )
    finally:
        client.delete(key, key.replace("|app_modules", "|flag_print_sql"))
    seen["flag_after_delete"] = until("the flag's delete seen", lambda f, r: f["print_sql"] is None)
    return seen


def dead(a: dict[str, Any]) -> dict[str, Any]:
    """A pooled connection that MariaDB killed while it was idle is not lent again."""
    import frappe

    from gsocket.contract.dbpool import DBPool
    from gsocket.frappe_ctx import FrappeContext

    site = a["site"]
    ctx = FrappeContext(".", pool=DBPool(4))
    admin = FrappeContext(".")

    def conn_id() -> int:
        return int(frappe.db.sql("SELECT CONNECTION_ID()")[0][0])

    first = ctx.run(site, "Administrator", conn_id)
    again = ctx.run(site, "Administrator", conn_id)
    admin.run(site, "Administrator", lambda: frappe.db.sql(f"KILL {first}"))
    gone = _open_connections(admin, site, [first]) == 0
    after_kill = ctx.run(site, "Administrator", conn_id)
    counts = dict(ctx.pool.counts) if ctx.pool is not None else {}
    ctx.close()
    return {
        "reused_before_kill": again == first,
        "gone": gone,
        "new_after_kill": after_kill != first,
        "counts": counts,
        "left_open": _open_connections(admin, site, [first, after_kill]),
    }


def config_edits(a: dict[str, Any]) -> dict[str, Any]:
    """What a context's ``frappe.conf`` holds while ``site_config.json`` and
    ``common_site_config.json`` are edited under a running process (gsocket keeps the parsed
    config while the files are unchanged), and whether a handler's change to it lasts."""
    import os
    import time

    import frappe

    from gsocket.frappe_ctx import FrappeContext

    site = a["site"]
    ctx = FrappeContext(".")
    own, common = os.path.join(site, "site_config.json"), "common_site_config.json"
    seen: dict[str, Any] = {}

    def edit(path: str, back_date: bool = True, **keys: Any) -> None:
        with open(path) as f:
            conf = json.load(f)
        conf.update(keys)
        with open(path, "w") as f:
            json.dump(conf, f)
        if back_date:  # the modification time says "long ago"; the change time cannot
            os.utime(path, (time.time() - 60, time.time() - 60))

    def probe() -> dict[str, Any]:
        conf = frappe.conf
        found = {
            "probe": conf.get("gsocket_probe"),
            "common": conf.get("gsocket_common_probe"),
            "nested": json.loads(json.dumps(conf.get("gsocket_nested"))),
            "left": conf.get("gsocket_left_by_handler"),
            "redis_cache": conf.get("redis_cache"),
            "db_name": conf.get("db_name"),
        }
        # What a careless handler does to its config: none of it may reach the next event.
        conf["gsocket_left_by_handler"] = True
        if isinstance(conf.get("gsocket_nested"), dict):
            conf["gsocket_nested"]["changed"] = True
            conf["gsocket_nested"].setdefault("list", []).append("handler")
        return found

    def reads() -> int:
        return int(getattr(frappe.get_site_config, "reads", -1))

    def until_kept() -> list[dict[str, Any]]:
        """Contexts until one reads no file (the files' last change has settled)."""
        found = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            before = reads()
            found.append(ctx.run(site, "Guest", probe))
            if reads() == before:
                return found
            time.sleep(0.1)
        raise AssertionError("the site config was read on every context for 20 s")

    edit(own, gsocket_probe=1, gsocket_nested={"list": ["file"]})
    edit(common, gsocket_common_probe="a")
    seen["first"] = ctx.run(site, "Guest", probe)
    seen["until_kept"] = until_kept()
    before = reads()
    seen["kept"] = [ctx.run(site, "Guest", probe) for _ in range(3)]
    seen["reads_while_unchanged"] = reads() - before

    edit(own, gsocket_probe=2)  # same size, mtime set back to the same past second
    seen["same_size_edit"] = ctx.run(site, "Guest", probe)
    edit(common, gsocket_common_probe="b")
    seen["common_edit"] = ctx.run(site, "Guest", probe)
    edit(own, back_date=False, gsocket_probe=3)  # just written: read on every context
    before = reads()
    seen["fresh_edit"] = [ctx.run(site, "Guest", probe) for _ in range(2)]
    seen["reads_while_fresh"] = reads() - before

    os.environ["FRAPPE_REDIS_CACHE"] = "redis://127.0.0.1:1/from-env"
    try:
        seen["env"] = ctx.run(site, "Guest", probe)
    finally:
        del os.environ["FRAPPE_REDIS_CACHE"]
    seen["env_gone"] = ctx.run(site, "Guest", probe)
    seen["cache_installed"] = reads() >= 0
    return seen


def endings(a: dict[str, Any]) -> dict[str, Any]:
    """How a context ends its transaction, by what the handler did: no query at all (no
    connection is borrowed), a commit callback without a query, writes through the ORM (which
    leaves ``after_commit`` callbacks) and through SQL (none; committed with the connection's
    reset), writes before and after the handler's own ``frappe.connect()``, a ``COMMIT`` the
    server refuses (with and without a pool), an ``after_commit`` callback that writes after
    the last commit (never committed, in Frappe too), with autocommit turned on by the
    handler, and a raise with a rollback callback."""
    import frappe

    from gsocket.contract.dbpool import DBPool
    from gsocket.frappe_ctx import FrappeContext

    site, token = a["site"], a["token"]
    ctx = FrappeContext(".", pool=DBPool(1))
    assert ctx.available() and ctx.pool is not None
    ran: list[str] = []
    out: dict[str, Any] = {}
    from frappe.database.database import Database

    frappe_commits = [0]
    real_commit = Database.commit

    def counted_commit(self: Any) -> None:
        frappe_commits[0] += 1
        real_commit(self)

    Database.commit = counted_commit  # type: ignore[method-assign]

    def borrowed() -> int:
        counts = ctx.pool.counts
        return counts["opened"] + counts["reused"]

    def todo(label: str) -> None:
        frappe.get_doc({"doctype": "ToDo", "description": f"{label}-{token}"}).insert(
            ignore_permissions=True
        )

    def step(name: str, fn: Any, context: Any = ctx) -> None:
        before, commits = borrowed(), frappe_commits[0]
        try:
            out[name] = {"returned": context.run(site, "Administrator", fn)}
        except Exception as exc:
            out[name] = {"raised": type(exc).__name__}
            if getattr(exc, "args", None) and isinstance(exc.args[0], int):
                out[name]["errno"] = exc.args[0]
        out[name]["borrowed"] = borrowed() - before
        out[name]["frappe_commits"] = frappe_commits[0] - commits

    step("no_query", lambda: frappe.session.user)
    step("callback_only", lambda: frappe.db.after_commit.add(lambda: ran.append("after_commit")))

    def writes() -> str:
        todo("written")
        return "ok"

    step("writes", writes)

    def sql_todo(name: str, description: str) -> None:
        frappe.db.sql(
            "INSERT INTO `tabToDo` (name, description) VALUES (%s, %s)", (name, description)
        )

    def sql_writes() -> str:
        sql_todo(f"sql-{token}", f"sql-written-{token}")
        return "ok"

    step("sql_writes", sql_writes)

    def reconnected() -> str:
        # A handler that replaces frappe.local.db: what the first Database wrote is dropped
        # with it (its connection goes back to the pool and is reset), what the new one
        # wrote is committed by Frappe's commit() on the new one, as in Frappe.
        sql_todo(f"before-reconnect-{token}", f"before-reconnect-{token}")
        frappe.connect(set_admin_as_user=False)
        sql_todo(f"after-reconnect-{token}", f"after-reconnect-{token}")
        return "ok"

    step("reconnected", reconnected)

    def late_write() -> None:
        todo("before-commit")
        frappe.db.after_commit.add(lambda: todo("after-commit"))

    step("after_commit_writes", late_write)

    def autocommit_late_write() -> None:
        frappe.db.sql("SET autocommit = 1")
        frappe.db.after_commit.add(lambda: todo("autocommit-after-commit"))

    step("autocommit_after_commit_writes", autocommit_late_write)

    def raises() -> None:
        frappe.db.after_rollback.add(lambda: ran.append("after_rollback"))
        raise ValueError("on purpose")

    step("raises_with_callback", raises)
    step("raises_without_query", lambda: 1 / 0)

    def refused_commit() -> None:
        # In an XA transaction a bare COMMIT fails (XAER_RMFAIL): a COMMIT that the server
        # refuses, sent with the pool's reset or by Frappe's own commit().
        frappe.db.sql("commit")
        frappe.db.sql("XA START %s", (f"gsocket-{token}",))
        sql_todo(f"xa-{token}-{frappe.generate_hash(length=6)}", f"in-xa-{token}")

    step("commit_refused", refused_commit)
    step("commit_refused_without_pool", refused_commit, FrappeContext("."))

    def state() -> dict[str, Any]:
        rows = frappe.get_all(
            "ToDo", filters={"description": ["like", f"%-{token}"]}, pluck="description"
        )
        return {"autocommit": int(frappe.db.sql("SELECT @@autocommit")[0][0]), "rows": rows}

    out["next_borrower"] = ctx.run(site, "Administrator", state)
    Database.commit = real_commit  # type: ignore[method-assign]
    out["ran"] = ran
    out["counts"] = ctx.pool.counts
    ctx.close()
    return out


SCENARIOS = {
    "isolation": isolation,
    "rollback": rollback,
    "paths": paths,
    "many": many,
    "installed_apps": installed_apps,
    "pooled": pooled,
    "dead": dead,
    "config_edits": config_edits,
    "module_map": module_map,
    "endings": endings,
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
