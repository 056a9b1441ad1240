"""gsocket configured by its environment alone, as frappe_docker's ``websocket`` service is.

A container gets its settings from ``environment:``; the bench's
``sites/common_site_config.json`` may hold none of gsocket's keys.  The Node process's
``FRAPPE_*`` overrides and gsocket's ``GSOCKET_*`` ones must be enough to serve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gsocket.config import load_config
from gsocket.demo.ports import free_port, port_is_open
from tests.conftest import SITE
from tests.support.bench import REPO, make_bench, wait_until


def test_environment_overrides_are_read(tmp_path):
    bench = make_bench(tmp_path, {"gsocket": {"host": "127.0.0.1", "log_level": "INFO"}})
    env = {
        "FRAPPE_REDIS_QUEUE": "redis://redis-queue:6379",
        "FRAPPE_SOCKETIO_PORT": "9123",
        "FRAPPE_SITE": "erp.example.com",
        "GSOCKET_HOST": "0.0.0.0",
        "GSOCKET_TRUSTED_PROXIES": "172.16.0.0/12, 10.0.0.0/8",
        "GSOCKET_LOG_LEVEL": "warning",
        "GSOCKET_LOG_FORMAT": "json",
    }
    config = load_config(bench, env)
    assert config.redis_url == "redis://redis-queue:6379"
    assert config.port == 9123
    assert config.default_site == "erp.example.com"
    assert config.host == "0.0.0.0"  # the environment wins over the file, as FRAPPE_* do
    assert config.trusted_proxies == ("172.16.0.0/12", "10.0.0.0/8")
    assert config.log_level == "WARNING"
    assert config.log_format == "json"
    assert load_config(bench, {}).host == "127.0.0.1"


def test_gsocket_serves_with_environment_only_configuration(tmp_path, redis_server, web, clients):
    bench = make_bench(tmp_path, {}, sites=(SITE,))
    assert json.loads((bench / "sites" / "common_site_config.json").read_text()) == {}
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FRAPPE_BENCH_ROOT": str(bench),
        "FRAPPE_REDIS_QUEUE": redis_server.url,
        "FRAPPE_SOCKETIO_PORT": str(port),
        "FRAPPE_SITE": SITE,
        "GSOCKET_LOG_FORMAT": "json",
        "GSOCKET_LOG_LEVEL": "DEBUG",  # each connect is a DEBUG line
    }
    log = (tmp_path / "gsocket.log").open("wb")
    # No --bench, --port or --host: what frappe_docker's compose file would run.
    proc = subprocess.Popen(
        [sys.executable, "-m", "gsocket", "serve"], env=env, stdout=log, stderr=log, cwd=REPO
    )
    try:
        wait_until(
            lambda: proc.poll() is None and port_is_open(port),
            20,
            lambda: (tmp_path / "gsocket.log").read_text(),
        )
        # No webserver_host: the web process is reached at the Origin, as Node does; a
        # browser on 127.0.0.1 gets default_site (FRAPPE_SITE).
        headers = {"Origin": f"http://127.0.0.1:{web.port}", "Cookie": "sid=sid-admin"}
        client = clients().connect(f"http://127.0.0.1:{port}", f"/{SITE}", headers)
        assert client.sid
        redis = redis_server.client()
        wait_until(lambda: redis.pubsub_numsub("events")[0][1] >= 1, 10)
        message = {"event": "env_only", "message": {"ok": 1}, "room": client.sid, "namespace": SITE}
        redis.publish("events", json.dumps(message))
        assert client.wait_for("env_only") == ({"ok": 1},)
        redis.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        log.close()
    records = [json.loads(line) for line in (tmp_path / "gsocket.log").read_text().splitlines()]
    assert any(f"connect site={SITE} user=Administrator" in r["message"] for r in records)
    assert any(f"listening on 0.0.0.0:{port} for bench {bench}" in r["message"] for r in records)
