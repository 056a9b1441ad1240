"""``frappe_context=True``: one isolated Frappe context per event, against a real MariaDB.

The Frappe here is the Frappe-shaped package in tests/fake_frappe (both shapes of
``frappe.local``); its database is a real MariaDB server on loopback, one database per site,
reached through PyMySQL.  Everything that needs gevent runs in a monkey-patched subprocess
(tests/fake_frappe/scenarios.py); it stays alive until the test has counted, on the server,
the connections it left open.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql
import pytest

from gsocket import frappe_ctx
from gsocket.errors import StartupError
from gsocket.frappe_ctx import FrappeContext, FrappeUnavailable, check_startup_guards
from tests.support.mariadb import MariaDBServer

REPO = Path(__file__).resolve().parent.parent
FAKE = REPO / "tests" / "fake_frappe"
SHAPES = ["werkzeug", "contextvar"]

SITES = {
    "alpha.test": ["frappe", "crm"],
    "beta.test": ["frappe"],
    "gamma.test": ["frappe", "hrms"],
    "delta.test": ["frappe"],
}
BAD_PASSWORD_SITE = "badpw.test"
MISSING_SITE = "missing.test"


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sites_path(mariadb: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(FAKE))
    try:
        from benchutil import make_bench, write_site_config
    finally:
        sys.path.remove(str(FAKE))
    path = make_bench(tmp_path_factory.mktemp("bench"), mariadb, {**SITES, BAD_PASSWORD_SITE: []})
    write_site_config(path, BAD_PASSWORD_SITE, "db_badpw_test", mariadb.user, "not the password")
    return path


@contextmanager
def scenario(name: str, args: dict[str, Any], shape: str, timeout: float = 90) -> Iterator[Any]:
    """Run a scenario; yield its result while its process is still alive, then end it."""
    env = dict(os.environ, FAKE_FRAPPE_LOCAL=shape)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(FAKE)])
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(FAKE / "scenarios.py"), name, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        try:
            line = _read_result(proc, timeout)
            if line is None:
                stderr.seek(0)
                raise AssertionError(f"scenario {name} gave no result:\n{stderr.read().decode()}")
            yield json.loads(line)
        finally:
            if proc.poll() is None:
                assert proc.stdin is not None
                proc.stdin.write("\n")
                proc.stdin.flush()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _read_result(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """The JSON after ``RESULT`` on the scenario's stdout, or None if it exits/times out."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = proc.stdout.readline()
            if not line:
                return None
            if line.startswith("RESULT "):
                return line[len("RESULT ") :]
    return None


@pytest.mark.parametrize("shape", SHAPES)
def test_200_concurrent_events_interleave_and_each_sees_only_its_own_context(
    shape: str, sites_path: Path, mariadb: MariaDBServer
) -> None:
    events, sleep = 200, 0.2
    args = {
        "sites_path": str(sites_path),
        "sites": list(SITES),
        "sleep": sleep,
        "events": events,
        "mode": "gsocket",
    }
    with scenario("concurrency", args, shape) as r:
        assert r["failures"] == [] and r["ok"] == events
        # Checked after every yield (queries, SLEEP, gevent.sleep): site, user, flags, cache,
        # DB object; and each handler's connection stayed its own, on its own site's database.
        assert r["errors"] == [], r["errors"]
        assert r["same_conn"] and r["own_db"]
        assert r["distinct_conns"] == events  # all were open at once, during the SLEEPs
        # Half were spawned with a copy of a context holding the spawner's frappe.local:
        # none saw it, and the spawner's own frappe.local was not touched.
        assert r["fresh"] == events
        assert r["counters"].get("init_on_dirty_local", 0) == 0
        assert r["spawner_intact"]
        assert r["elapsed"] < events * sleep / 4, r["elapsed"]  # serial would take 40 s
        counters = r["counters"]
        assert counters["destroy"] == events and counters["init"] == events + 1
        assert counters["db_open"] == counters["db_close"] == events
        assert counters.get("driver_mysqlclient", 0) == 0
        assert mariadb.wait_for_connections(0) == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_control_without_a_fresh_context_frappe_local_leaks(
    shape: str, sites_path: Path, mariadb: MariaDBServer
) -> None:
    """The same events without FrappeContext: the fake must show the hazard, or the test
    above would prove nothing."""
    args = {
        "sites_path": str(sites_path),
        "sites": list(SITES),
        "sleep": 0.05,
        "events": 20,
        "mode": "naive",
    }
    with scenario("concurrency", args, shape) as r:
        assert r["counters"]["init_on_dirty_local"] > 0
        assert r["fresh"] < 20
        if shape == "contextvar":
            # One dict shared by every copied context: handlers overwrite each other.
            assert r["error_count"] > 0 or not r["spawner_intact"]


@pytest.mark.parametrize("shape", SHAPES)
def test_raising_handler_rolls_back_only_its_own_writes(
    shape: str, sites_path: Path, mariadb: MariaDBServer
) -> None:
    site = "alpha.test"
    with scenario("rollback", {"sites_path": str(sites_path), "site": site}, shape) as r:
        token = r["token"]
        assert "ValueError" in r["failing_raised"]
        assert r["passing_value"] == f"b-{token}"
        assert r["rows"] == [[f"b-{token}", "b@example.com"]]
        assert r["sleeps_overlapped"], "the two writers did not interleave"
        assert r["counters"]["rollback"] == 1
    conn = mariadb.connect("db_alpha_test")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM tabNote WHERE name LIKE %s", (f"%{token}",))
            assert [row[0] for row in cur.fetchall()] == [f"b-{token}"]
    finally:
        conn.close()


@pytest.mark.parametrize("shape", SHAPES)
def test_destroy_runs_on_every_path(shape: str, sites_path: Path, mariadb: MariaDBServer) -> None:
    args = {
        "sites_path": str(sites_path),
        "site": "beta.test",
        "bad_password_site": BAD_PASSWORD_SITE,
        "missing_site": MISSING_SITE,
    }
    with scenario("paths", args, shape) as r:
        outcomes = r["outcomes"]
        assert outcomes == {
            "success": "returned '1'; destroy calls so far 1",
            "success_without_db": "returned 'no db'; destroy calls so far 2",
            "handler_raises": "raised KeyError; destroy calls so far 3",
            "init_fails": "raised IncorrectSitePath; destroy calls so far 4",
            "connect_fails": "raised OperationalError; destroy calls so far 5",
            "killed_mid_query": "ended by GreenletExit; destroy calls so far 6",
            "timed_out_mid_query": "raised TimeLimit, quickly; destroy calls so far 7",
        }
        assert r["counters"]["init"] == r["counters"]["destroy"] == 7
        assert r["counters"]["db_open"] == r["counters"]["db_close"]
        assert mariadb.wait_for_connections(0) == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_no_connection_left_open_after_1000_events(
    shape: str, sites_path: Path, mariadb: MariaDBServer
) -> None:
    args = {
        "sites_path": str(sites_path),
        "sites": list(SITES),
        "missing_site": MISSING_SITE,
        "events": 1000,
        "concurrency": 50,
    }
    with scenario("many", args, shape, timeout=120) as r:
        outcomes = r["outcomes"]
        assert sum(outcomes.values()) == 1000
        assert outcomes["IncorrectSitePath"] == 100
        assert outcomes["RuntimeError"] == 300
        assert outcomes["returned"] == 600
        counters = r["counters"]
        assert counters["init"] == counters["destroy"] == 1000
        assert counters["db_open"] == counters["db_close"] == 900
        # Counted on the server while the process that ran the events is still alive.
        assert mariadb.wait_for_connections(0) == 0


def test_installed_apps_cached_per_site_shared_and_refreshed(
    sites_path: Path, mariadb: MariaDBServer
) -> None:
    args = {
        "sites_path": str(sites_path),
        "site": "gamma.test",
        "other_site": "beta.test",
        "new_apps": ["frappe", "hrms", "payments"],
        "db_name": "db_gamma_test",
        "db_user": mariadb.user,
        "db_password": mariadb.password,
    }
    with scenario("installed_apps", args, "werkzeug") as r:
        assert r["concurrent"] == [["frappe", "hrms"]] * 20
        assert r["concurrent_lookups"] == 1  # twenty callers, one Frappe context
        assert r["other"] == ["frappe"]
        assert r["cached_after_change"] == ["frappe", "hrms"] and r["cached_lookups"] == 0
        assert r["refreshed"] == ["frappe", "hrms", "payments"]
        assert r["expired_lookups"] == 1
        assert r["stale_on_failure"] == ["frappe", "hrms", "payments"]
        assert r["no_cache_failures"] == ["OperationalError"] * 5
        assert r["counters"]["init"] == r["counters"]["destroy"]
        assert mariadb.wait_for_connections(0) == 0


def _run_locks(guarded: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(FAKE)]))
    args = {"guarded": guarded, "deadlock_after": 2.0}
    return subprocess.run(
        [sys.executable, str(FAKE / "scenarios.py"), "locks", json.dumps(args)],
        input="\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_startup_guard_recreates_locks_frappe_made_before_the_monkey_patch() -> None:
    done = _run_locks(guarded=True)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result == {"before": "lock", "after": "LockType"}


def test_control_a_pre_patch_lock_deadlocks_the_hub_without_the_guard() -> None:
    done = _run_locks(guarded=False)
    assert done.returncode == 3 and "DEADLOCKED" in done.stdout, done.stdout + done.stderr


def test_startup_guard_refuses_mysqlclient(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mysqldb = types.ModuleType("MySQLdb")
    fake_mysqldb.__file__ = "/env/lib/python3/site-packages/MySQLdb/__init__.py"
    monkeypatch.setitem(sys.modules, "MySQLdb", fake_mysqldb)
    with pytest.raises(StartupError, match="mysqlclient") as caught:
        check_startup_guards()
    assert "PyMySQL" in str(caught.value) and "Remove whatever imports it" in str(caught.value)


def test_startup_guard_accepts_pymysql_installed_as_mysqldb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "MySQLdb", pymysql)
    check_startup_guards()


def test_startup_guard_refuses_thread_inherit_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "flags", types.SimpleNamespace(thread_inherit_context=1))
    with pytest.raises(StartupError, match="thread_inherit_context=0"):
        check_startup_guards()


def test_startup_guards_pass_on_a_clean_process() -> None:
    check_startup_guards()


def test_importing_gsocket_does_not_import_frappe() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(FAKE)]))
    code = "import sys, gsocket.frappe_ctx; print('frappe' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "False", done.stderr


def _never_called() -> None:
    raise AssertionError("the handler must not run without Frappe")


def test_without_frappe_run_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "frappe", None)  # makes `import frappe` fail
    ctx = FrappeContext("/bench/sites")
    assert ctx.available() is False
    for _ in range(2):  # the import is not retried per event, the error is the same
        with pytest.raises(FrappeUnavailable, match="cannot be imported.*env/bin/python"):
            ctx.run("site.test", "user@example.com", _never_called)


def test_gsocket_stub_module_counts_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = types.ModuleType("frappe")
    stub.__gsocket_stub__ = True  # type: ignore[attr-defined]
    stub.local = stub.init = stub.connect = stub.set_user = stub.destroy = None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "frappe", stub)
    ctx = FrappeContext("/bench/sites")
    assert ctx.available() is False
    with pytest.raises(FrappeUnavailable, match="not installed"):
        ctx.installed_apps("site.test")


def test_site_names_that_leave_sites_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    frappe = types.ModuleType("frappe")
    for name in ("init", "connect", "set_user", "destroy"):
        setattr(frappe, name, lambda *a, _n=name, **k: calls.append(_n))
    frappe.local = types.SimpleNamespace()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "frappe", frappe)
    ctx = FrappeContext("/bench/sites")
    assert ctx.available()
    for site in ("", ".", "..", "../other", "a/b", "a\\b"):
        with pytest.raises(ValueError, match="not a site name"):
            ctx.run(site, "user@example.com", _never_called)
    assert calls == []


def test_recreating_locks_is_a_no_op_when_gevent_has_not_patched() -> None:
    assert frappe_ctx.recreate_prepatch_locks(("gsocket",)) == []


def test_pymysql_default_tls_context_is_built_once_per_process() -> None:
    """PyMySQL >= 1.2 builds a TLS context per connection (tens of ms of CPU on the hub)."""
    code = """
import pymysql
from gsocket.frappe_ctx import share_pymysql_default_tls_context
shared = share_pymysql_default_tls_context()
if pymysql.VERSION[:2] < (1, 2):
    print("nothing to share" if not shared else "unexpected")
else:
    plain = [pymysql.connect(host="127.0.0.1", port=1, defer_connect=True) for _ in range(2)]
    tls = pymysql.connect(host="127.0.0.1", port=1, defer_connect=True, ssl={"verify_mode": 0})
    same = plain[0].ctx is plain[1].ctx and tls.ctx is not plain[0].ctx
    print("shared" if shared and same and share_pymysql_default_tls_context() else "not shared")
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() in ("shared", "nothing to share"), done.stdout + done.stderr
