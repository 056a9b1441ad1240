"""Setting up a cluster: ``gsocket.processes``, ``serve --process K``, and the supervisord and
nginx configurations ``gsocket setup`` writes for it (checked by Debian's ``nginx -t``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from gsocket.config import ConfigError, load_config
from gsocket.demo.ports import free_port_run, port_is_open, wait_for_port
from tests.conftest import bench_conf
from tests.support.bench import REPO, make_bench, wait_until

NODE_PROGRAMS = """\
[program:bench-frappe-web]
command=/env/bin/gunicorn frappe.app:application
directory={bench}/sites

[program:bench-node-socketio]
command=/usr/bin/node {bench}/apps/frappe/socketio.js
directory={bench}

[group:bench-web]
programs=bench-frappe-web,bench-node-socketio
"""

# What `bench setup nginx` writes (its template, for one site), reduced to what matters here.
BENCH_NGINX = """\
upstream bench-frappe {
\tserver 127.0.0.1:8000 fail_timeout=0;
}

upstream bench-socketio-server {
\tserver 127.0.0.1:9000 fail_timeout=0;
}

# setup maps

# server blocks

server {
\tlisten 127.0.0.1:8080;
\tserver_name
\t\tsite1.local
\t\t;

\troot {bench}/sites;

\tlocation /assets {
\t\ttry_files $uri =404;
\t}

\tlocation /socket.io {
\t\tproxy_http_version 1.1;
\t\tproxy_set_header Upgrade $http_upgrade;
\t\tproxy_set_header Connection "upgrade";
\t\tproxy_set_header X-Frappe-Site-Name site1.local;
\t\tproxy_set_header Origin $scheme://$http_host;
\t\tproxy_set_header Host $host;

\t\tproxy_pass http://bench-socketio-server;
\t}

\tlocation / {
\t\ttry_files /site1.local/public/$uri @webserver;
\t}

\tlocation @webserver {
\t\tproxy_set_header Host $host;
\t\tproxy_pass http://bench-frappe;
\t}
}
"""


def _gsocket(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gsocket", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _bench(tmp_path: Path, gsocket: dict, **conf: object) -> Path:
    bench = make_bench(tmp_path, {"socketio_port": 9000, **conf, "gsocket": gsocket})
    (bench / "config").mkdir(exist_ok=True)
    return bench


def _set_processes(bench: Path, processes: int) -> None:
    path = bench / "sites" / "common_site_config.json"
    conf = json.loads(path.read_text())
    conf["gsocket"]["processes"] = processes
    path.write_text(json.dumps(conf))


def _nginx_accepts(conf_text: str, folder: Path) -> None:
    """``nginx -t`` on an nginx.conf that includes ``conf_text`` in its http block, as
    Debian's /etc/nginx/nginx.conf includes conf.d/ (where bench links config/nginx.conf)."""
    included = folder / "bench-nginx.conf"
    included.write_text(conf_text)
    main = folder / "main.conf"
    main.write_text(
        f"pid {folder / 'nginx.pid'};\nevents {{}}\nhttp {{\n    include {included};\n}}\n"
    )
    checked = subprocess.run(
        ["nginx", "-t", "-c", str(main), "-e", str(folder / "error.log")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr


def test_process_k_listens_on_socketio_port_plus_k_with_the_redis_manager(tmp_path):
    bench = _bench(tmp_path, {"processes": 3}, socketio_uds=None)
    config = load_config(bench)
    assert (config.processes, config.scale_out) == (3, False)
    second = config.for_process(2)
    assert (second.port, second.process, second.scale_out) == (9002, 2, True)
    assert load_config(_bench(tmp_path / "one", {})).for_process(0).scale_out is False
    with pytest.raises(ConfigError, match="0 to 2"):
        config.for_process(3)


def test_process_k_listens_on_socketio_uds_with_a_suffix(tmp_path):
    bench = _bench(tmp_path, {"processes": 2}, socketio_uds="/run/bench/socketio.sock")
    config = load_config(bench)
    assert config.for_process(0).uds == "/run/bench/socketio.sock"
    assert config.for_process(1).uds == "/run/bench/socketio.sock.1"


def test_serve_refuses_to_guess_which_process_it_is(tmp_path):
    bench = _bench(tmp_path, {"processes": 2})
    served = _gsocket("serve", "--bench", str(bench))
    assert served.returncode == 2
    assert "--process K" in served.stderr
    wrong = _gsocket("serve", "--bench", str(bench), "--process", "2")
    assert wrong.returncode == 2
    assert "0 to 1" in wrong.stderr


def test_setup_supervisor_writes_one_program_per_process(tmp_path):
    bench = _bench(tmp_path, {"processes": 3})
    conf = bench / "config" / "supervisor.conf"
    conf.write_text(NODE_PROGRAMS.format(bench=bench))
    applied = _gsocket("setup", "supervisor", "--bench", str(bench), "--apply")
    assert applied.returncode == 0, applied.stderr
    patched = conf.read_text()
    assert "node-socketio]" not in patched
    assert "programs=bench-frappe-web,bench-gsocket-0,bench-gsocket-1,bench-gsocket-2\n" in patched
    for k in range(3):
        section = patched.split(f"[program:bench-gsocket-{k}]")[1].split("\n[")[0]
        assert f"--handover --process {k}\n" in section
        assert f"stdout_logfile={bench}/logs/gsocket-{k}.log\n" in section

    _set_processes(bench, 2)
    again = _gsocket("setup", "supervisor", "--bench", str(bench), "--apply")
    assert again.returncode == 0, again.stderr
    shrunk = conf.read_text()
    assert "programs=bench-frappe-web,bench-gsocket-0,bench-gsocket-1\n" in shrunk
    assert "bench-gsocket-2" not in shrunk
    assert shrunk.count("[program:bench-gsocket-") == 2


def test_setup_nginx_shows_then_applies_the_cluster_to_benchs_nginx_conf(tmp_path):
    bench = _bench(tmp_path, {"processes": 3})
    conf = bench / "config" / "nginx.conf"
    original = BENCH_NGINX.replace("{bench}", str(bench))
    conf.write_text(original)

    shown = _gsocket("setup", "nginx", "--bench", str(bench))
    assert shown.returncode == 0, shown.stderr
    assert conf.read_text() == original
    assert "-\tserver 127.0.0.1:9000 fail_timeout=0;" in shown.stdout
    assert "+    server 127.0.0.1:9002 max_fails=1 fail_timeout=5s;" in shown.stdout
    assert "+\t\tproxy_pass http://$gsocket_bench;" in shown.stdout

    applied = _gsocket("setup", "nginx", "--bench", str(bench), "--apply")
    assert applied.returncode == 0, applied.stderr
    patched = conf.read_text()
    assert (bench / "config" / "nginx.conf.orig").read_text() == original
    assert "map $arg_sid $gsocket_bench {" in patched
    for k in range(3):
        assert f'"~^{k}\\." bench-gsocket-{k};' in patched
        assert f"upstream bench-gsocket-{k} {{\n    server 127.0.0.1:{9000 + k} " in patched
    assert "proxy_pass http://bench-socketio-server;" not in patched
    assert "proxy_pass http://bench-frappe;" in patched  # the web process is left alone
    _nginx_accepts(patched, tmp_path)

    again = _gsocket("setup", "nginx", "--bench", str(bench), "--apply")
    assert "already fronts the 3 gsocket process(es)" in again.stdout
    _set_processes(bench, 2)
    assert _gsocket("setup", "nginx", "--bench", str(bench), "--apply").returncode == 0
    shrunk = conf.read_text()
    assert "bench-gsocket-2" not in shrunk and "127.0.0.1:9002" not in shrunk
    assert shrunk.count("# gsocket: begin") == 1
    _nginx_accepts(shrunk, tmp_path)


def test_setup_nginx_output_is_a_complete_configuration_nginx_accepts(tmp_path):
    bench = _bench(tmp_path, {"processes": 2}, socketio_uds=str(tmp_path / "socketio.sock"))
    output = tmp_path / "nginx.conf"
    written = _gsocket(
        "setup",
        "nginx",
        "--bench",
        str(bench),
        "--listen",
        "127.0.0.1:8088",
        "--output",
        str(output),
    )
    assert written.returncode == 0, written.stderr
    text = output.read_text()
    assert not re.search(r"^\s*daemon", text, re.M)
    assert f"pid {bench}/config/pids/nginx.pid;" in text
    assert f"server unix:{tmp_path}/socketio.sock.1 fail_timeout=0;" in text
    assert "proxy_set_header X-Frappe-Site-Name $host;" in text
    checked = subprocess.run(
        ["nginx", "-t", "-c", str(output), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    missing = _gsocket("setup", "nginx", "--bench", str(bench), "--output", str(output))
    assert missing.returncode == 2
    assert "--listen" in missing.stdout


def test_the_supervised_command_serves_process_k_on_its_port(tmp_path, redis_server, web):
    """``serve --handover --process K``, as the programs run it: the parent binds
    ``socketio_port + K`` and the server's session ids name process K."""
    base = free_port_run(2)
    conf = {**bench_conf(redis_server.url, web), "socketio_port": base}
    bench = make_bench(tmp_path, {**conf, "gsocket": {"processes": 2, "host": "127.0.0.1"}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "gsocket", "serve", "--bench", str(bench)]
    served = subprocess.Popen(
        [*command, "--handover", "--process", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(base + 1, timeout=20)

        def node() -> str | None:
            try:
                answer = requests.get(f"http://127.0.0.1:{base + 1}/health", timeout=1)
            except requests.RequestException:
                return None
            return answer.json().get("node") if answer.ok else None

        wait_until(lambda: node() is not None, 20, "process 1 never became healthy")
        assert str(node()).startswith("1.")
        assert not port_is_open(base)
    finally:
        served.terminate()
        served.wait(20)
