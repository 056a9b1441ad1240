"""``gsocket doctor --url`` through Debian's nginx with bench's template, in front of a real
Frappe bench's web process and gsocket: the whole path a browser takes, as a logged-in user."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.nginx import Nginx
from tests.support.realbench import SITE, RealBench

# The parts of bench's nginx template (bench/config/templates/nginx.conf) a realtime
# connection goes through: both upstreams, /socket.io, and the web process for the rest.
TEMPLATE = """
upstream bench-frappe { server 127.0.0.1:@WEB@ fail_timeout=0; }
upstream bench-socketio-server { server 127.0.0.1:@GSOCKET@ fail_timeout=0; }
server {
    listen @LISTEN@;
    server_name @SITE@;
    location /socket.io {
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_set_header X-Frappe-Site-Name @SITE@;
        proxy_set_header Origin $scheme://$http_host;
        proxy_set_header Host $host;
        proxy_pass http://bench-socketio-server;
    }
    location / {
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Frappe-Site-Name @SITE@;
        proxy_set_header Host $host;
        proxy_set_header X-Use-X-Accel-Redirect True;
        proxy_read_timeout 120;
        proxy_redirect off;
        proxy_pass http://bench-frappe;
    }
}
"""


def test_doctor_walks_bench_nginx_to_a_real_bench(
    tmp_path: Path, real_bench: RealBench, bench_gsocket
) -> None:
    # The site's name does not resolve here, so gsocket must not call the web process at the
    # browser's Origin: webserver_host points it at the web process directly.
    with real_bench.common_site_config_changed(webserver_host="127.0.0.1"):
        served = bench_gsocket()
        conf = (
            TEMPLATE.replace("@WEB@", str(real_bench.ports["WEB_PORT"]))
            .replace("@GSOCKET@", str(served.port))
            .replace("@SITE@", SITE)
        )
        nginx = Nginx(tmp_path / "nginx", conf).start()
        try:
            sid = real_bench.login()
            result = subprocess.run(
                [str(real_bench.python), "-m", "gsocket", "doctor",
                 "--url", f"http://{SITE}:{nginx.port}", "--resolve", "127.0.0.1",
                 "--sid", sid, "--bench", str(real_bench.path), "--timeout", "20"],
                capture_output=True,
                text=True,
                timeout=180,
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )  # fmt: skip
        finally:
            nginx.stop()
    assert result.returncode == 0, result.stdout + result.stderr + served.log()
    assert f"OK    connect: /{SITE} accepts the connection (sid cookie)" in result.stdout
    assert "OK    published event: came back over the websocket" in result.stdout
    assert sid not in result.stdout and sid not in served.log()


def test_doctor_names_the_node_process_still_on_the_port(
    tmp_path: Path, real_bench: RealBench
) -> None:
    """The switch half done: nginx still reaches Frappe's own Node realtime server."""
    node = real_bench.node_realtime().start()
    try:
        conf = (
            TEMPLATE.replace("@WEB@", str(real_bench.ports["WEB_PORT"]))
            .replace("@GSOCKET@", str(node.port))
            .replace("@SITE@", SITE)
        )
        nginx = Nginx(tmp_path / "nginx", conf).start()
        try:
            result = subprocess.run(
                [str(real_bench.python), "-m", "gsocket", "doctor",
                 "--url", f"http://{SITE}:{nginx.port}", "--resolve", "127.0.0.1"],
                capture_output=True,
                text=True,
                timeout=120,
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )  # fmt: skip
        finally:
            nginx.stop()
    finally:
        node.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "a Socket.IO server answers that is not gsocket" in result.stdout, result.stdout
