"""Three gsocket processes of a real Frappe bench behind Debian's nginx (``gsocket setup nginx
--output``): the bench's own ``frappe.publish_realtime`` reaches each desk exactly once, and
"who is viewing this form" is one list across the processes, with Frappe's permission checks."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gsocket.demo.ports import free_port, free_port_run, wait_for_port
from tests.support.bench import GsocketProcess, wait_until
from tests.support.pyclient import PyClient
from tests.support.realbench import SITE, RealBench

PROCESSES = 3
VIEWER = "cluster.viewer@example.com"


@pytest.fixture
def cluster_url(real_bench: RealBench, tmp_path: Path) -> Iterator[str]:
    """Start the processes and nginx; yield nginx's URL."""
    base = free_port_run(PROCESSES)
    processes: list[GsocketProcess] = []
    nginx: subprocess.Popen[bytes] | None = None
    # webserver_host: gsocket calls the web process directly, not back through this nginx
    # (whose Host, 127.0.0.1, names no site).
    with real_bench.common_site_config_changed(
        socketio_port=base, webserver_host="127.0.0.1", gsocket={"processes": PROCESSES}
    ):
        try:
            for k in range(PROCESSES):
                processes.append(
                    real_bench.gsocket(port=base + k, args=("--process", str(k))).start(timeout=60)
                )
            port = free_port()
            conf = tmp_path / "nginx.conf"
            written = subprocess.run(
                [str(real_bench.python), "-m", "gsocket", "setup", "nginx"]
                + ["--bench", str(real_bench.path), "--listen", f"127.0.0.1:{port}"]
                + ["--output", str(conf)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert written.returncode == 0, written.stdout + written.stderr
            # The clients reach nginx as 127.0.0.1 (test.localhost does not resolve here):
            # name the site as bench's template does, literally.
            text = conf.read_text()
            conf.write_text(
                text.replace(
                    "proxy_set_header X-Frappe-Site-Name $host;\n            proxy_set_header "
                    "Origin",
                    f"proxy_set_header X-Frappe-Site-Name {SITE};\n            proxy_set_header "
                    "Origin",
                )
            )
            assert f"X-Frappe-Site-Name {SITE};" in conf.read_text()
            directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
            error_log = tmp_path / "nginx-error.log"
            command = ["nginx", "-c", str(conf), "-e", str(error_log), "-g", directives]
            nginx = subprocess.Popen(command, stderr=subprocess.PIPE)
            wait_for_port(port)
            yield f"http://127.0.0.1:{port}"
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait(10)
            for process in processes:
                process.kill()


def _desk(url: str, sid: str) -> PyClient:
    return PyClient().connect(url, f"/{SITE}", {"Cookie": f"sid={sid}"})


def _desks(url: str, sids: list[str], want: int) -> list[PyClient]:
    """Connect desks (cycling through ``sids``) until ``want`` processes have one."""
    clients: list[PyClient] = []
    for n in range(30):
        clients.append(_desk(url, sids[n % len(sids)]))
        if len({c.sid.split(".", 1)[0] for c in clients if c.sid}) >= want and n >= 5:
            break
    wait_until(lambda: all(c.transport == "websocket" for c in clients), 15, "no upgrade")
    return clients


def test_publish_realtime_reaches_each_desk_once_across_processes(real_bench, cluster_url):
    sid = real_bench.login()
    clients = _desks(cluster_url, [sid], PROCESSES)
    try:
        assert {c.sid.split(".", 1)[0] for c in clients} == {"0", "1", "2"}
        real_bench.in_site(
            SITE,
            "for n in range(10):\n"
            "    frappe.publish_realtime('cluster_tick', {'n': n}, user='Administrator')\n"
            "frappe.publish_realtime('cluster_done', {}, user='Administrator')",
        )
        for client in clients:
            client.wait_for("cluster_done", timeout=15)
            assert Counter(a[0]["n"] for a in client.events("cluster_tick")) == Counter(range(10))
    finally:
        for client in clients:
            client.disconnect()


def test_doc_viewers_is_one_list_across_processes(real_bench, cluster_url):
    real_bench.ensure_user(VIEWER, roles=("System Manager",))
    admin, viewer = real_bench.login(), real_bench.login(VIEWER)
    todo = real_bench.in_site(
        SITE,
        "doc = frappe.get_doc({'doctype': 'ToDo', 'description': 'cluster'}).insert()\n"
        "print(doc.name)",
    ).strip()
    clients = _desks(cluster_url, [admin, viewer], 2)
    try:
        by_user: dict[int, PyClient] = {}
        for n, client in enumerate(clients):
            by_user.setdefault(n % 2, client)
        first, second = by_user[0], by_user[1]
        if first.sid.split(".", 1)[0] == second.sid.split(".", 1)[0]:
            second = next(
                c
                for n, c in enumerate(clients)
                if n % 2 and c.sid.split(".", 1)[0] != first.sid.split(".", 1)[0]
            )
        first.emit("doc_open", "ToDo", todo)
        second.emit("doc_open", "ToDo", todo)
        both = ["Administrator", VIEWER]
        args = first.wait_for("doc_viewers", lambda a: sorted(a[0]["users"]) == both, timeout=15)
        assert args[0]["docname"] == todo
        second.emit("doc_close", "ToDo", todo)
        first.wait_for("doc_viewers", lambda a: a[0]["users"] == ["Administrator"], timeout=15)
    finally:
        for client in clients:
            client.disconnect()
