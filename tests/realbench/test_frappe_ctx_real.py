"""``frappe_context=True`` against the real Frappe ORM of v15 and develop.

The isolation, commit/rollback, error-path and concurrency checks that tests/test_frappe_ctx.py
runs against the Frappe-shaped fake run here against the real bench: first FrappeContext
alone, driven under gevent by tests/realbench/ctx_scenarios.py with the bench's Python, then
through a real gsocket serving the bench, with the handlers of a real Frappe app (``rtscope``,
tests/fixture_apps/rtscope) installed on ``test.localhost`` only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.bench import GsocketProcess
from tests.support.pyclient import PyClient
from tests.support.realbench import SITE, SITE2, RealBench
from tests.support.realbench_apps import RTSCOPE, install_app

SCENARIOS = Path(__file__).with_name("ctx_scenarios.py")
USER = "rt-user@example.com"
MISSING_SITE = "missing.localhost"
BAD_PASSWORD_SITE = "badpw.localhost"


@pytest.fixture(scope="session")
def ctx_bench(real_bench: RealBench) -> RealBench:
    """The real bench with a second user (a Website User: it has no desk role) on both sites."""
    for site in (SITE, SITE2):
        real_bench.ensure_user(USER, "Website User", site=site)
    return real_bench


def db_names(bench: RealBench) -> dict[str, str]:
    """Each site's database, from its ``site_config.json``."""
    return {
        site: json.loads((bench.path / "sites" / site / "site_config.json").read_text())["db_name"]
        for site in bench.sites
    }


def scenario(bench: RealBench, name: str, args: dict[str, Any], timeout: float = 180) -> Any:
    """Run one scenario of ctx_scenarios.py with the bench's Python in ``sites/``."""
    done = subprocess.run(
        [str(bench.python), str(SCENARIOS), name, json.dumps(args)],
        cwd=bench.path / "sites",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "RESULT " in done.stdout, f"scenario {name} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.split("RESULT ", 1)[1])


# ---------------------------------------------------------------- FrappeContext on the real ORM


def test_concurrent_events_on_both_sites_each_see_only_their_own_context(
    ctx_bench: RealBench,
) -> None:
    events, sleep = 40, 0.3
    args = {
        "sites": list(ctx_bench.sites),
        "users": ["Administrator", USER, "Guest"],
        "db_names": db_names(ctx_bench),
        "events": events,
        "sleep": sleep,
    }
    r = scenario(ctx_bench, "isolation", args)
    assert r["failures"] == [] and r["ok"] == events
    # Checked after each yield: site, user, flags, DB object; the same connection throughout,
    # on the database of the event's own site.
    assert r["errors"] == [], r["errors"]
    assert r["same_conn"] and r["own_db"]
    assert r["distinct_conns"] == events  # all were open at once, during the SLEEPs
    # Half were spawned with a copy of the spawner's context: none saw its frappe.local, and
    # the spawner's own frappe.local (a real frappe.init) was left as it was.
    assert r["fresh"] == events
    assert r["spawner_intact"]
    assert r["elapsed"] < events * sleep / 3, r["elapsed"]  # serial would take 12 s
    assert r["calls"] == {"init": events + 1, "destroy": events}
    assert not r["mysqlclient_loaded"]
    assert r["left_open"] == 0


def test_a_raising_handler_rolls_back_only_its_own_orm_writes(ctx_bench: RealBench) -> None:
    token = uuid.uuid4().hex[:12]
    args = {
        "site": SITE,
        "token": token,
        "failing_user": "Administrator",
        "passing_user": USER,
    }
    r = scenario(ctx_bench, "rollback", args)
    assert "ValueError" in r["failing_raised"]
    assert r["passing_value"]
    assert r["sleeps_overlapped"], "the two writers did not interleave"
    assert r["rows"] == [[f"passing-{token}", USER]]
    # Seen from another process as well: the commit is real, the rollback too.
    seen = ctx_bench.in_site(
        SITE,
        f"print(frappe.get_all('ToDo', filters={{'description': ['like', '%-{token}']}}, "
        "pluck='description'))",
    )
    assert seen.strip() == repr([f"passing-{token}"])


@pytest.fixture
def bad_password_site(ctx_bench: RealBench) -> Iterator[str]:
    """A site whose config names test.localhost's database with a wrong password."""
    site_dir = ctx_bench.path / "sites" / BAD_PASSWORD_SITE
    for folder in ("logs", "locks", "private/files", "public/files"):
        (site_dir / folder).mkdir(parents=True)
    config = {"db_name": db_names(ctx_bench)[SITE], "db_password": "not the password"}
    (site_dir / "site_config.json").write_text(json.dumps(config))
    yield BAD_PASSWORD_SITE
    shutil.rmtree(site_dir)


@pytest.mark.parametrize("pool_size", [0, 4], ids=["no pool", "pool"])
def test_destroy_runs_and_the_connection_closes_on_every_path(
    ctx_bench: RealBench, bad_password_site: str, pool_size: int
) -> None:
    args = {
        "site": SITE,
        "user": USER,
        "bad_password_site": bad_password_site,
        "missing_site": MISSING_SITE,
        "pool_size": pool_size,
    }
    r = scenario(ctx_bench, "paths", args)
    assert r["outcomes"] == {
        "success": "returned '1'; destroy calls so far 1",
        "success_without_db": "returned 'no db'; destroy calls so far 2",
        "handler_raises": "raised KeyError; destroy calls so far 3",
        "init_fails": "raised IncorrectSitePath; destroy calls so far 4",
        "connect_fails": "raised OperationalError; destroy calls so far 5",
        "killed_mid_query": "ended by GreenletExit; destroy calls so far 6",
        "timed_out_mid_query": "raised HandlerTimeout, quickly; destroy calls so far 7",
    }
    assert r["local_is_clean"]
    assert r["conns"] == 4  # success, raises, killed, timed out
    if pool_size:
        # One connection served success and the raising handler (rolled back, then reused);
        # success_without_db sent no query and had no commit callback, so it borrowed none;
        # the killed event closed it instead of giving it back, and so did the timed-out one
        # (perhaps in mid-query) its own.
        assert r["distinct_conns"] == 2
        assert r["pool_counts"] == {
            "opened": 2,
            "reused": 2,
            "dead": 0,
            "reset_failed": 0,
            "not_kept": 2,
            "waited": 0,
            "wait_timeouts": 0,
        }
    else:
        assert r["distinct_conns"] == 4  # each had its own
    assert r["left_open"] == 0


def test_no_connection_left_open_after_mixed_events(ctx_bench: RealBench) -> None:
    args = {
        "sites": list(ctx_bench.sites),
        "missing_site": MISSING_SITE,
        "events": 200,
        "concurrency": 20,
    }
    r = scenario(ctx_bench, "many", args)
    assert r["outcomes"] == {"returned": 120, "RuntimeError": 60, "IncorrectSitePath": 20}
    assert r["calls"]["init"] == r["calls"]["destroy"] == 200
    assert r["conns"] == 180
    assert r["left_open"] == 0


def test_pooled_connections_carry_nothing_from_one_event_to_the_next(ctx_bench: RealBench) -> None:
    """The pool under concurrency on the real ORM: rows, transactions, users, flags and
    session state of one event are never seen by another that gets its connection."""
    events, width, pool_size = 90, 12, 4
    token = uuid.uuid4().hex[:12]
    args = {
        "sites": list(ctx_bench.sites),
        "users": ["Administrator", USER, "Guest"],
        "token": token,
        "events": events,
        "width": width,
        "pool_size": pool_size,
        "sleep": 0.1,
    }
    r = scenario(ctx_bench, "pooled", args)
    assert r["pool_enabled"], "the bench's PyMySQL is not one the pool was verified with"
    assert r["failures"] == [] and r["events"] == events
    assert r["leaks"] == [], r["leaks"]
    # Most events ran on a connection an earlier event used (`width` at once, 4 kept per
    # site: the rest are opened and closed again); every event and the 2 lookups borrowed.
    counts = r["counts"]
    assert counts["opened"] == r["distinct_conns"]
    assert counts["opened"] + counts["reused"] == events + len(ctx_bench.sites)
    assert counts["reused"] >= events // 2, counts
    assert counts["reset_failed"] == counts["dead"] == 0
    # Exactly the events that returned have their row; those that raised were rolled back.
    assert r["stored"] == r["committed"] and len(r["committed"]) == events - events // 3
    assert r["left_open"] == 0  # ctx.close() closed every idle connection
    assert r["most_at_once"] == width  # they ran interleaved, `width` at a time


def test_a_site_config_edited_while_running_is_seen_by_the_next_context(
    ctx_bench: RealBench,
) -> None:
    """gsocket keeps the parsed config while both files and the environment are unchanged;
    every edit (even one of the same size with its mtime set back) is seen by the next
    context, and nothing a handler changes in ``frappe.conf`` reaches another event."""
    site_dir = ctx_bench.path / "sites" / SITE
    files = [site_dir / "site_config.json", ctx_bench.path / "sites" / "common_site_config.json"]
    saved = [path.read_text() for path in files]
    try:
        r = scenario(ctx_bench, "config_edits", {"site": SITE})
    finally:
        for path, text in zip(files, saved, strict=True):
            path.write_text(text)
    assert r["cache_installed"], "gsocket does not keep this Frappe's site config"
    clean = {"probe": 1, "common": "a", "nested": {"list": ["file"]}, "left": None}
    for found in [r["first"], *r["until_kept"], *r["kept"]]:
        assert {k: found[k] for k in clean} == clean
        assert found["db_name"] == db_names(ctx_bench)[SITE]
    assert r["reads_while_unchanged"] == 0  # kept: the files were not read again
    assert (r["same_size_edit"]["probe"], r["same_size_edit"]["common"]) == (2, "a")
    assert r["common_edit"]["common"] == "b"
    assert [found["probe"] for found in r["fresh_edit"]] == [3, 3]
    assert r["reads_while_fresh"] == 2  # just written: read by every context
    assert r["env"]["redis_cache"] == "redis://127.0.0.1:1/from-env"
    assert r["env_gone"]["redis_cache"] == r["first"]["redis_cache"] != r["env"]["redis_cache"]
    for found in [*r["kept"], r["same_size_edit"], r["env_gone"]]:
        assert found["left"] is None and found["nested"] == {"list": ["file"]}


def test_the_module_map_and_print_sql_flag_are_kept_until_redis_reports_a_change(
    ctx_bench: RealBench,
) -> None:
    """gsocket keeps each site's ``app_modules`` and ``flag_print_sql`` while Redis reports no
    change of their keys; a value another client writes, ``frappe.clear_cache()``,
    ``frappe.print_sql()``, a delete and a lost tracking connection each make the next
    contexts see Frappe's value, and nothing a handler changes in its map reaches another
    event."""
    r = scenario(ctx_bench, "module_map", {"site": SITE})
    clean = r["first"]
    assert "frappe" in clean["apps"] and clean["probe_app"] is None
    assert clean["print_sql"] is None  # the bench never set it
    for found in [*r["until_kept"], *r["kept"]]:
        assert found == clean  # no "left_by_handler" from an earlier context
    assert r["reads_while_kept"] == 0  # kept: Redis was not asked
    assert r["after_set"][-1]["apps"] == sorted([*clean["apps"], "gsocket_probe"])
    assert r["after_set"][-1]["probe_app"] == "gsocket_probe"
    assert r["after_clear_cache"][-1] == clean
    assert r["print_sql_on"][-1] == {**clean, "print_sql": True}
    assert r["print_sql_off"][-1] == {**clean, "print_sql": False}
    assert r["flag_after_delete"][-1] == clean
    assert r["ready_after_kill"] is False
    assert r["while_untracked"]["probe_app"] == "gsocket_probe"
    # Kept again after reconnecting: the value written while untracked, not the older one.
    assert r["after_reconnect"][-1]["probe_app"] == "gsocket_probe"
    for found in [*r["after_set"], *r["after_clear_cache"], *r["after_reconnect"]]:
        # Frappe's set_user empties frappe.local.cache: a handler finds it there in no case.
        assert found["same_object"] is clean["same_object"] is False
        assert found["frappe_last"] == clean["frappe_last"]


def test_each_way_a_context_ends_leaves_what_frappe_would(ctx_bench: RealBench) -> None:
    """No query and no callback: no connection at all.  Otherwise Frappe's commit or
    rollback runs with its callbacks; the START TRANSACTION after the last COMMIT is left
    out, and what an after_commit callback writes is still never committed.  Without a commit
    callback the COMMIT goes with the pool's reset, and its failure fails the event as
    Frappe's own commit does; nothing of the refused transaction is stored."""
    token = uuid.uuid4().hex[:12]
    r = scenario(ctx_bench, "endings", {"site": SITE, "token": token})
    # frappe_commits: calls of Frappe's own Database.commit; without a commit callback the
    # last COMMIT goes with the pool's reset instead (one round trip for both).
    assert r["no_query"] == {"returned": "Administrator", "borrowed": 0, "frappe_commits": 0}
    assert r["callback_only"] == {"returned": None, "borrowed": 1, "frappe_commits": 1}
    # The ORM's writes leave after_commit callbacks (link counts, realtime): Frappe commits.
    assert r["writes"] == {"returned": "ok", "borrowed": 1, "frappe_commits": 1}
    assert r["sql_writes"] == {"returned": "ok", "borrowed": 1, "frappe_commits": 0}
    # The handler's frappe.connect(): its new Database is committed by Frappe, not the lent one.
    assert r["reconnected"] == {"returned": "ok", "borrowed": 1, "frappe_commits": 1}
    assert r["after_commit_writes"] == {"returned": None, "borrowed": 1, "frappe_commits": 1}
    assert r["autocommit_after_commit_writes"] == {
        "returned": None,
        "borrowed": 1,
        "frappe_commits": 1,
    }
    assert r["raises_with_callback"] == {
        "raised": "ValueError",
        "borrowed": 1,
        "frappe_commits": 0,
    }
    assert r["raises_without_query"] == {
        "raised": "ZeroDivisionError",
        "borrowed": 0,
        "frappe_commits": 0,
    }
    # A COMMIT the server refuses fails the event with the error Frappe's commit raises.
    refused = {"raised": "OperationalError", "errno": 1399}
    assert r["commit_refused"] == {**refused, "borrowed": 1, "frappe_commits": 0}
    assert r["commit_refused_without_pool"] == {**refused, "borrowed": 0, "frappe_commits": 1}
    assert r["ran"] == ["after_commit", "after_rollback"]
    # Committed: the handler's writes; never committed: what ran after the last COMMIT,
    # whether autocommit was off (as Frappe connects) or the handler had turned it on.
    committed = [
        f"after-reconnect-{token}",
        f"before-commit-{token}",
        f"sql-written-{token}",
        f"written-{token}",
    ]
    assert sorted(r["next_borrower"]["rows"]) == committed
    assert r["next_borrower"]["autocommit"] == 0
    # The refused COMMIT closed its connection: a second one was opened after it.
    assert r["counts"]["opened"] == 2 and r["counts"]["reset_failed"] == 1
    seen = ctx_bench.in_site(
        SITE,
        f"print(sorted(frappe.get_all('ToDo', filters={{'description': ['like', '%-{token}']}}, "
        "pluck='description')))",
    )
    assert seen.strip() == repr(committed)


def test_a_pooled_connection_killed_while_idle_is_not_lent_again(ctx_bench: RealBench) -> None:
    r = scenario(ctx_bench, "dead", {"site": SITE})
    assert r["reused_before_kill"] and r["gone"] and r["new_after_kill"]
    assert r["counts"]["dead"] == 1
    assert r["left_open"] == 0


# ---------------------------------------------------------------- through gsocket, with an app


@pytest.fixture(scope="session")
def rtscope_gsocket(ctx_bench: RealBench) -> Iterator[GsocketProcess]:
    """gsocket serving the bench once ``rtscope`` is in it and installed on test.localhost."""
    install_app(ctx_bench, RTSCOPE, sites=(SITE,))
    proc = ctx_bench.gsocket().start(timeout=60)
    yield proc
    proc.kill()


def test_installed_apps_are_read_from_each_site_once_and_cached(
    ctx_bench: RealBench, rtscope_gsocket: GsocketProcess
) -> None:
    """What gsocket does for v15 sites (their get_user_info does not say), on both versions."""
    r = scenario(ctx_bench, "installed_apps", {"sites": [SITE, SITE2]})
    here, there = r["sites"][SITE], r["sites"][SITE2]
    assert here["apps"] == [["frappe", "rtscope"]] * 5 and here["lookups"] == 1
    assert there["apps"] == [["frappe"]] * 5 and there["lookups"] == 1
    assert r["cached_lookups"] == 0


def connect(bench: RealBench, proc: GsocketProcess, site: str, user: str) -> PyClient:
    sid = bench.login(user, site=site)
    return PyClient().connect(proc.url, f"/{site}", bench.desk_headers(site, sid))


def test_app_handlers_run_only_on_the_site_the_app_is_installed_on(
    ctx_bench: RealBench, rtscope_gsocket: GsocketProcess
) -> None:
    here = connect(ctx_bench, rtscope_gsocket, SITE, "Administrator")
    there = connect(ctx_bench, rtscope_gsocket, SITE2, "Administrator")
    try:
        assert here.call("rtscope_whoami", timeout=20) == {
            "app": "rtscope",
            "site": SITE,
            "user": "Administrator",
        }
        answer = here.call("rtscope_context", timeout=20)
        assert answer["site"] == SITE and answer["user"] == "Administrator"
        assert answer["database"] == answer["db_name"] == db_names(ctx_bench)[SITE]
        assert "rtscope" in answer["installed_apps"]
        assert there.call("rtscope_whoami", timeout=20) is None
        assert there.call("rtscope_context", timeout=20) is None
        # The socket on the other site still works: only the app's handlers are withheld.
        there.emit("ping")
        there.wait_for("pong", timeout=10)
    finally:
        here.disconnect()
        there.disconnect()
    # Where gsocket learnt it: develop's get_user_info names the site's apps; v15's does not,
    # so there the list came from the site's database (the test above).
    for site, expected in ((SITE, True), (SITE2, False)):
        info = ctx_bench.web("GET", "/api/method/frappe.realtime.get_user_info", site).json()
        if ctx_bench.version == "v15":
            assert "installed_apps" not in info["message"]
        else:
            assert ("rtscope" in info["message"]["installed_apps"]) is expected


def test_orm_writes_commit_and_a_raising_handler_rolls_back(
    ctx_bench: RealBench, rtscope_gsocket: GsocketProcess
) -> None:
    token = uuid.uuid4().hex[:12]
    client = connect(ctx_bench, rtscope_gsocket, SITE, USER)
    try:
        kept = client.call("rtscope_todo_add", f"kept-{token}", False, timeout=20)
        assert kept["site"] == SITE and kept["user"] == kept["owner"] == USER
        assert client.call("rtscope_todo_add", f"dropped-{token}", True, timeout=20) is None
    finally:
        client.disconnect()
    seen = ctx_bench.in_site(
        SITE,
        f"print(sorted(frappe.get_all('ToDo', filters={{'description': ['like', '%-{token}']}}, "
        "pluck='description')))",
    )
    assert seen.strip() == repr([f"kept-{token}"])
    rtscope_gsocket.wait_for_log(r"rtscope_todo_add failed after inserting, on purpose")


def test_the_orm_checks_permissions_as_the_socket_user(
    ctx_bench: RealBench, rtscope_gsocket: GsocketProcess
) -> None:
    name = ctx_bench.in_site(
        SITE,
        "todo = frappe.get_doc({'doctype': 'ToDo', 'description': 'administrator only'})\n"
        "todo.insert()\n"
        "print(todo.name)",
    ).strip()
    admin = connect(ctx_bench, rtscope_gsocket, SITE, "Administrator")
    user = connect(ctx_bench, rtscope_gsocket, SITE, USER)
    try:
        assert admin.call("rtscope_get_doc", "ToDo", name, timeout=20) == {
            "site": SITE,
            "user": "Administrator",
            "name": name,
            "owner": "Administrator",
        }
        assert user.call("rtscope_get_doc", "ToDo", name, timeout=20) == {
            "site": SITE,
            "user": USER,
            "error": "PermissionError",
        }
    finally:
        admin.disconnect()
        user.disconnect()


def test_concurrent_context_handlers_interleave_and_reuse_their_connections(
    ctx_bench: RealBench, rtscope_gsocket: GsocketProcess
) -> None:
    users = ["Administrator", USER] * 4
    sockets = [connect(ctx_bench, rtscope_gsocket, SITE, user) for user in users]
    answers: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def run(client: PyClient, user: str) -> None:
        for _ in range(3):
            answer = client.call("rtscope_sleep", 0.4, timeout=60)
            with lock:
                answers.append((user, answer))

    threads = [threading.Thread(target=run, args=pair) for pair in zip(sockets, users, strict=True)]
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        elapsed = time.monotonic() - started
    finally:
        for client in sockets:
            client.disconnect()
    assert len(answers) == 24
    # 24 events holding a query for 0.4 s each would take 9.6 s one after another.
    assert elapsed < 5, f"24 DB-bound events took {elapsed:.1f} s: they did not interleave"
    for user, answer in answers:
        assert answer["site"] == SITE and answer["user"] == user and answer["same_conn"]
    conns = sorted({answer["conn"] for _, answer in answers})
    # Eight events at a time: their connections came back to the pool and served the rest.
    assert len(conns) <= 8, conns
    probe = (
        "rows = frappe.db.sql('SELECT ID FROM information_schema.PROCESSLIST')\n"
        f"print(len({{int(r[0]) for r in rows}} & set({conns!r})))"
    )
    assert ctx_bench.in_site(SITE, probe).strip() == str(len(conns))


def test_at_db_max_connections_events_wait_for_a_connection_and_all_succeed(
    ctx_bench: RealBench, rtscope_gsocket: GsocketProcess
) -> None:
    """gsocket.db_max_connections 3: nine events that each hold a query for 0.3 s run three
    at a time on three connections, none fails, and /metrics and the log say they waited."""
    cap, events, hold = 3, 9, 0.3
    with ctx_bench.common_site_config_changed(
        gsocket={"db_pool_size": cap, "db_max_connections": cap}
    ):
        proc = ctx_bench.gsocket().start(timeout=60)
    try:
        sockets = [connect(ctx_bench, proc, SITE, "Administrator") for _ in range(events)]
        answers: list[dict[str, Any]] = []
        lock = threading.Lock()

        def run(client: PyClient) -> None:
            answer = client.call("rtscope_sleep", hold, timeout=60)
            with lock:
                answers.append(answer)

        threads = [threading.Thread(target=run, args=(client,)) for client in sockets]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        elapsed = time.monotonic() - started
        for client in sockets:
            client.disconnect()
        assert len(answers) == events
        assert all(a["site"] == SITE and a["same_conn"] for a in answers), answers
        assert len({a["conn"] for a in answers}) <= cap
        assert elapsed >= events / cap * hold * 0.9, f"{elapsed:.2f} s: not {cap} at a time"
        proc.wait_for_log(r"all 3 database connections gsocket may open")
        text = requests.get(f"{proc.url}/metrics", timeout=5).text
        values = {
            (sample.name, sample.labels.get("site")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert values[("gsocket_db_pool_max_connections", None)] == cap
        assert values[("gsocket_db_pool_waited_total", SITE)] >= events - cap
        assert values[("gsocket_db_pool_wait_timeouts_total", SITE)] == 0
        assert values[("gsocket_db_pool_in_use_connections", SITE)] == 0
        assert values[("gsocket_db_pool_opened_total", SITE)] <= cap
    finally:
        proc.kill()
