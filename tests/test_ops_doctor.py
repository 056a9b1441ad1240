"""``gsocket doctor`` on good and broken bench folders: one verdict per check, exit status.

Run as an operator runs it, ``python -m gsocket doctor --bench PATH`` in a process of its own,
against a real Redis and the web-process stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from gsocket.demo.ports import free_port
from gsocket.demo.redis_server import RedisServer
from tests.conftest import SITE, bench_conf, desk_headers
from tests.support.bench import REPO, GsocketProcess, make_bench
from tests.support.webstub import WebStub

SECRET = "doctor-secret-value"


def doctor(bench: Path, pythonpath: tuple[str, ...] = ()) -> tuple[int, dict[str, str], str]:
    """Run the doctor; return its status, the verdict lines by check, and its whole output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((*pythonpath, str(REPO)))}
    result = subprocess.run(
        [sys.executable, "-m", "gsocket", "doctor", "--bench", str(bench)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    verdicts = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition(" ")
        check, sep, detail = rest.strip().partition(": ")
        if sep and status in ("OK", "WARN", "FAIL", "SKIP"):
            verdicts[check] = f"{status} {detail}"
    return result.returncode, verdicts, result.stdout + result.stderr


def _add_node_app(bench: Path, app: str) -> None:
    package = bench / "apps" / app / app
    (package / "realtime").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "realtime" / "handlers.js").write_text(
        "module.exports = function (socket) {\n"
        '  socket.on("project_subscribe", (name) => socket.join(`project:${name}`));\n'
        "  socket.on('chat_message', (msg) => {});\n"
        "};\n"
    )


def test_a_good_bench_passes_every_check(tmp_path, redis_server, redis_client, web):
    web.installed_apps[SITE] = ["frappe", "opsapp"]
    web.set_secret(SECRET)
    conf = bench_conf(redis_server.url, web)
    bench = make_bench(
        tmp_path, conf, sites=(SITE,), apps=("frappe", "opsapp"), copy_apps=("opsapp",)
    )
    running = GsocketProcess(bench).start()
    try:
        status, verdicts, output = doctor(bench)
        assert running.health() is not None and running.health().ok  # the probe did no harm
    finally:
        running.kill()
    assert status == 0, output
    assert all(v.startswith("OK ") for v in verdicts.values()), output
    assert set(verdicts) == {
        "config",
        "redis",
        "events channel",
        f"web process ({SITE})",
        "socket secret",
        "dependencies",
        "mysqlclient",
        "handlers (opsapp)",
        "node handlers",
    }, output
    assert "1 realtime server(s) subscribed" in verdicts["events channel"]
    assert "Frappe v16 or newer, user Guest" in verdicts[f"web process ({SITE})"]
    assert "is set (value not shown)" in verdicts["socket secret"]
    assert "events: ops_fail, ops_join, ops_shout, ops_slow" in verdicts["handlers (opsapp)"]
    assert SECRET not in output
    assert output.strip().endswith("healthy: 0 check(s) failed, 0 warning(s)")


def test_a_v15_bench_without_secret_passes(tmp_path, redis_server, redis_client):
    web = WebStub("v15", redis_url=redis_server.url)
    web.start()
    try:
        bench = make_bench(tmp_path, bench_conf(redis_server.url, web), sites=(SITE,))
        status, verdicts, output = doctor(bench)
    finally:
        web.stop()
    assert status == 0, output
    assert "Frappe v15 or older" in verdicts[f"web process ({SITE})"]
    assert "not set: normal on Frappe v15" in verdicts["socket secret"]
    assert "no realtime server is subscribed" in verdicts["events channel"]


def test_a_broken_bench_fails_with_a_verdict_per_problem(tmp_path):
    dead = free_port()
    conf = {"redis_queue": f"redis://:hunter2@127.0.0.1:{dead}", "webserver_port": free_port()}
    bench = make_bench(
        tmp_path,
        conf,
        sites=(SITE,),
        apps=("frappe", "broken", "nodeapp", "ghost"),
        copy_apps=("broken",),
    )
    _add_node_app(bench, "nodeapp")
    status, verdicts, output = doctor(bench)
    assert status == 1, output
    assert verdicts["redis"].startswith("FAIL "), output
    assert "hunter2" not in output  # the Redis password is masked
    assert verdicts["events channel"].startswith("SKIP ")
    assert verdicts[f"web process ({SITE})"].startswith("FAIL "), output
    assert verdicts["handlers (broken)"].startswith("FAIL ")
    assert "KeyError" in verdicts["handlers (broken)"]
    assert verdicts["handlers (nodeapp)"].startswith("OK ")
    assert verdicts["handlers (ghost)"].startswith("WARN ")
    node = verdicts["node handlers (nodeapp)"]
    assert node.startswith("WARN ")
    assert "events: chat_message, project_subscribe" in node
    assert "apps/nodeapp/nodeapp/realtime/handlers.py" in node
    assert "@realtime.on(event)" in node
    assert output.strip().splitlines()[-1] == "FAILED: 3 check(s) failed, 2 warning(s)"


def test_an_unreadable_config_fails_and_skips_what_needs_it(tmp_path):
    bench = make_bench(tmp_path, {})
    (bench / "sites" / "common_site_config.json").write_text("{not json")
    status, verdicts, output = doctor(bench)
    assert status == 1
    assert verdicts["config"].startswith("FAIL ") and "cannot be read" in verdicts["config"]
    assert verdicts["redis"].startswith("SKIP ")


def test_web_process_on_another_redis_fails_the_secret_check(tmp_path, redis_server, redis_client):
    other = RedisServer(tmp_path / "other-redis").start()
    web = WebStub("v16", redis_url=other.url)
    web.start()
    try:
        web.set_secret(SECRET)  # in the Redis the web process uses, not in the bench's
        bench = make_bench(tmp_path, bench_conf(redis_server.url, web), sites=(SITE,))
        status, verdicts, output = doctor(bench)
    finally:
        web.stop()
        other.stop()
    assert status == 1, output
    assert verdicts[f"web process ({SITE})"].startswith("FAIL ")
    assert "socket secret" in verdicts[f"web process ({SITE})"]
    assert verdicts["socket secret"].startswith("FAIL ")
    assert "same redis_queue" in verdicts["socket secret"]


def test_mysqlclient_loaded_by_an_app_or_at_startup_fails(tmp_path, redis_server, web):
    web.installed_apps[SITE] = ["frappe", "opsmysql"]
    bench = make_bench(
        tmp_path,
        bench_conf(redis_server.url, web),
        sites=(SITE,),
        apps=("frappe", "opsmysql"),
        copy_apps=("opsmysql",),
    )
    status, verdicts, output = doctor(bench)
    assert status == 1, output
    assert verdicts["handlers (opsmysql)"].startswith("FAIL ")
    assert "loads MySQLdb" in verdicts["handlers (opsmysql)"]

    # A sitecustomize that imports the driver when Python starts, as a stray .pth file can.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys, types\nsys.modules['MySQLdb'] = types.ModuleType('MySQLdb')\n"
    )
    status, verdicts, output = doctor(bench, pythonpath=(str(site),))
    assert status == 1
    assert verdicts["mysqlclient"].startswith("FAIL ")
    assert "imported when Python starts" in verdicts["mysqlclient"]


def test_doctor_probe_reaches_no_client(start_gsocket, web, clients, redis_client):
    """The probe published on ``events`` goes to a room nobody is in."""
    proc = start_gsocket(sites=(SITE,))
    client = clients().connect(proc.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    status, _, output = doctor(proc.bench)
    assert status == 0, output
    # Published after the probe, on the same channel: delivered after it, so by the time it
    # arrives the probe would have arrived too.
    marker = {"event": "after_probe", "message": None, "room": "all", "namespace": SITE}
    redis_client.publish("events", json.dumps(marker))
    client.wait_for("after_probe")
    assert [event for event, _, _ in client.received] == ["after_probe"]
    metrics = requests.get(f"{proc.url}/metrics", timeout=5).text
    assert 'gsocket_redis_messages_total{outcome="delivered"} 2' in metrics
    assert proc.health() is not None and proc.health().ok
