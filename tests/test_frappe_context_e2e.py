"""``frappe_context=True`` handlers through the real server, against a real MariaDB.

The Frappe here is tests/fake_frappe (both shapes of ``frappe.local``), put on the gsocket
process's path; each site has its own database. The web process answers in the v15 shape,
so the sites' installed apps come from their databases through a Frappe context as well.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import desk_headers
from tests.support.bench import FIXTURE_APPS, REPO, GsocketProcess, wait_until
from tests.support.mariadb import MariaDBServer

FAKE = REPO / "tests" / "fake_frappe"
SITE = "ctx1.local"
OTHER = "ctx2.local"


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb")).start()
    yield server
    server.stop()


@pytest.fixture(params=["werkzeug", "contextvar"])
def ctx_gsocket(request, mariadb, redis_server, web, tmp_path):
    sys.path.insert(0, str(FAKE))
    try:
        from benchutil import db_name_for, make_bench
    finally:
        sys.path.remove(str(FAKE))
    bench = tmp_path / "bench"
    for site in (SITE, OTHER):
        mariadb.admin_sql(f"DROP DATABASE IF EXISTS {db_name_for(site)}")
    sites_path = make_bench(bench, mariadb, {SITE: ["frappe", "ctxapp"], OTHER: ["frappe"]})
    common = json.loads((sites_path / "common_site_config.json").read_text())
    common.update(
        {"redis_queue": redis_server.url, "webserver_host": "127.0.0.1", "webserver_port": web.port}
    )
    (sites_path / "common_site_config.json").write_text(json.dumps(common))
    (bench / "apps").mkdir()
    (bench / "logs").mkdir()
    shutil.copytree(FIXTURE_APPS / "ctxapp", bench / "apps" / "ctxapp")
    web.shape = "v15"
    web.sessions["sid-jane"] = "jane@example.com"
    proc = GsocketProcess(
        bench, env={"PYTHONPATH": str(FAKE), "FAKE_FRAPPE_LOCAL": request.param}
    ).start()
    proc.mariadb = mariadb
    proc.db_of = db_name_for
    yield proc
    proc.kill()


def connect(clients, proc, sid, site=SITE):
    return clients().connect(proc.url, f"/{site}", desk_headers(site, sid))


def test_get_doc_with_the_socket_user(ctx_gsocket, clients):
    conn = ctx_gsocket.mariadb.connect(ctx_gsocket.db_of(SITE), autocommit=True)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO tabNote VALUES ('N-1', 'first note', 'Administrator')")
    conn.close()
    client = connect(clients, ctx_gsocket, "sid-jane")
    client.emit("test_get_doc", "Note", "N-1")
    (result,) = client.wait_for("test_get_doc_result")
    assert result == {
        "ok": True,
        "site": SITE,
        "user": "jane@example.com",
        "doctype": "Note",
        "name": "N-1",
        "title": "first note",
    }
    client.emit("test_get_doc", "Note", "missing")
    (failed,) = client.wait_for("test_get_doc_result", lambda a: not a[0]["ok"])
    assert failed["error"].startswith("DoesNotExistError")


def test_commit_and_rollback(ctx_gsocket, clients):
    client = connect(clients, ctx_gsocket, "sid-admin")
    assert client.call("note_add", "KEEP", False) == {"site": SITE, "user": "Administrator"}
    assert client.call("note_add", "DROP", True) is None
    conn = ctx_gsocket.mariadb.connect(ctx_gsocket.db_of(SITE))
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM tabNote ORDER BY name")
        assert [r[0] for r in cur.fetchall()] == ["KEEP"]
    conn.close()
    ctx_gsocket.wait_for_log(r"note_add failed after writing, on purpose")


def test_in_process_permission_check(ctx_gsocket, clients):
    jane = connect(clients, ctx_gsocket, "sid-jane")
    admin = connect(clients, ctx_gsocket, "sid-admin")
    assert admin.call("note_subscribe", "N-9") is True
    assert jane.call("note_subscribe", "N-9") is False


def test_installed_apps_come_from_the_site_on_v15(ctx_gsocket, clients):
    other = connect(clients, ctx_gsocket, "sid-admin", site=OTHER)
    assert other.call("db_sleep", 0) is None
    here = connect(clients, ctx_gsocket, "sid-admin")
    assert here.call("db_sleep", 0) == {"site": SITE, "user": "Administrator"}


def aborted_clients(mariadb: MariaDBServer) -> int:
    """Clients MariaDB saw go away without saying goodbye (no COM_QUIT), since it started."""
    return int(mariadb.admin_sql("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")[0][1])


def pool_metrics(proc: GsocketProcess) -> dict[str, float]:
    """The database pool's samples of ``SITE`` (and its unlabelled ones) on ``/metrics``."""
    text = requests.get(f"{proc.url}/metrics", timeout=5).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("gsocket_db_pool_")
        for sample in family.samples
        if sample.labels.get("site", SITE) == SITE
    }


def test_concurrent_events_interleave_and_reuse_their_connections(ctx_gsocket, clients):
    users = ["sid-admin", "sid-jane"] * 5
    sockets = [connect(clients, ctx_gsocket, sid) for sid in users]
    results: list[dict] = []
    lock = threading.Lock()

    def run(client, n):
        for _ in range(n):
            answer = client.call("db_sleep", 0.2, timeout=30)
            with lock:
                results.append((client, answer))

    threads = [threading.Thread(target=run, args=(s, 5)) for s in sockets]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    assert len(results) == 50
    # 50 events of 0.2 s each run one after another would take 10 s
    assert elapsed < 5, f"50 DB-bound events took {elapsed:.1f} s: they did not interleave"
    for client, answer in results:
        expected = "Administrator" if client in sockets[::2] else "jane@example.com"
        assert answer == {"site": SITE, "user": expected}
    # At most 10 events were in the database at once: their connections were reused by the
    # other 40, and wait in the pool (gsocket.db_pool_size is 32 by default).
    mariadb = ctx_gsocket.mariadb
    assert 1 <= mariadb.count_connections(mariadb.user) <= 10
    # What an operator sizes gsocket.db_pool_size by, on /metrics: none lent now, every
    # connection opened still kept (the pool holds 32), most events served by a kept one.
    pool = pool_metrics(ctx_gsocket)
    assert pool["gsocket_db_pool_in_use_connections"] == 0
    assert 1 <= pool["gsocket_db_pool_opened_total"] <= 10
    assert pool["gsocket_db_pool_idle_connections"] == pool["gsocket_db_pool_opened_total"]
    assert pool["gsocket_db_pool_reused_total"] >= 40
    assert pool["gsocket_db_pool_max_connections"] == 100  # gsocket.db_max_connections
    assert pool["gsocket_db_pool_waited_total"] == pool["gsocket_db_pool_reset_failed_total"] == 0
    # A graceful stop closes them, each with a goodbye: a process that just exits leaves
    # MariaDB counting an aborted client per connection.
    aborted = aborted_clients(mariadb)
    assert ctx_gsocket.stop() == 0
    wait_until(
        lambda: mariadb.count_connections(mariadb.user) == 0,
        10,
        "frappe contexts left database connections open",
    )
    assert aborted_clients(mariadb) == aborted


def test_without_frappe_a_context_handler_logs_one_clear_error(start_gsocket, web, clients):
    web.installed_apps["site1.local"] = ["frappe", "ctxapp"]
    proc = start_gsocket(apps=("frappe", "ctxapp"), copy_apps=("ctxapp",))
    client = clients().connect(proc.url, "/site1.local", desk_headers("site1.local", "sid-admin"))
    assert client.call("db_sleep", 0) is None
    proc.wait_for_log(r"handler ctxapp\.realtime\.handlers\.db_sleep .* needs a Frappe context")
    assert "Traceback" not in proc.log()
    client.emit("ping")
    client.wait_for("pong")
