"""``gsocket doctor --url`` against Debian's real nginx in front of a real gsocket.

Each case is a proxy configuration seen in the field: bench's own template (must pass), one
without the Upgrade/Connection lines, one that overwrites Origin with another host (as
frappe_docker's template does when FRAPPE_SITE_NAME_HEADER names another host), one sending
another site's X-Frappe-Site-Name, a dead upstream, TLS that browsers would refuse and a
redirect.  The doctor must name the hop and print the fix, and exit 1 on any problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gsocket.demo.ports import free_port
from tests.conftest import SITE
from tests.support.bench import REPO, GsocketProcess
from tests.support.nginx import Nginx

# bench's template (bench/config/templates/nginx.conf), its /socket.io location unchanged.
BENCH_TEMPLATE = """
upstream bench-socketio-server {
    server 127.0.0.1:@GSOCKET@ fail_timeout=0;
}
server {
    listen @LISTEN@;
    server_name site1.local;
    @TLS@
    location /socket.io {
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_set_header X-Frappe-Site-Name site1.local;
        proxy_set_header Origin $scheme://$http_host;
        proxy_set_header Host $host;
        proxy_pass http://bench-socketio-server;
    }
}
"""
TLS = "ssl_certificate @CERT@; ssl_certificate_key @KEY@;"


def _nginx(tmp_path: Path, gsocket_port: int, conf: str = BENCH_TEMPLATE, **kw) -> Nginx:
    text = conf.replace("@GSOCKET@", str(gsocket_port))
    text = text.replace("@TLS@", TLS if kw.get("tls") else "")
    return Nginx(tmp_path / "nginx", text, **kw).start()


@contextmanager
def _fronted(
    tmp_path: Path, gsocket_port: int, conf: str = BENCH_TEMPLATE, **kw
) -> Iterator[Nginx]:
    """nginx in front of gsocket for the length of a block, stopped whatever the block does."""
    nginx = _nginx(tmp_path, gsocket_port, conf, **kw)
    try:
        yield nginx
    finally:
        nginx.stop()


def _doctor(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gsocket", "doctor", "--url", url, "--resolve", "127.0.0.1",
         "--timeout", "5", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=90,
    )  # fmt: skip


def _lines(result: subprocess.CompletedProcess[str], status: str) -> dict[str, str]:
    """``{check: line}`` of the verdicts with ``status`` (OK, WARN, FAIL, SKIP)."""
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith(f"{status} "):
            check = line[6:].split(":", 1)[0]
            found[check] = line
    return found


@pytest.fixture
def served(start_gsocket) -> GsocketProcess:
    return start_gsocket()


def test_bench_template_passes_every_step(tmp_path, served):
    with _fronted(tmp_path, served.port) as nginx:
        result = _doctor(f"http://site1.local:{nginx.port}", "--bench", str(served.bench))
    assert result.returncode == 0, result.stdout + result.stderr
    ok = _lines(result, "OK")
    for check in ("reach", "Origin", "site", "websocket", "handshake", "connect", "upgrade",
                  "published event"):  # fmt: skip
        assert check in ok, result.stdout
    assert "came back over the websocket" in ok["published event"]
    assert f"resolves to '{SITE}' from X-Frappe-Site-Name" in ok["site"]
    # bench's template sets no X-Forwarded-For: advice, not a failure.
    assert "X-Forwarded-For" in _lines(result, "WARN")
    assert result.stdout.splitlines()[-1].startswith("healthy: 0 check(s) failed")


def test_a_proxy_without_upgrade_headers_is_named(tmp_path, served):
    conf = BENCH_TEMPLATE.replace("proxy_set_header Upgrade $http_upgrade;", "").replace(
        'proxy_set_header Connection "upgrade";', ""
    )
    with _fronted(tmp_path, served.port, conf) as nginx:
        result = _doctor(f"http://site1.local:{nginx.port}", "--bench", str(served.bench))
    assert result.returncode == 1, result.stdout
    fail = _lines(result, "FAIL")
    assert "arrive at gsocket as Upgrade None" in fail["websocket"], result.stdout
    assert "proxy_set_header Upgrade $http_upgrade" in fail["websocket"]
    # Long-polling still works, and the published event still comes back over it.
    ok = _lines(result, "OK")
    assert "connect" in ok and "came back over the long-polling" in ok["published event"]


def test_an_overwritten_origin_is_named(tmp_path, served):
    conf = BENCH_TEMPLATE.replace(
        "proxy_set_header Origin $scheme://$http_host;",
        "proxy_set_header Origin $scheme://erp-internal.example;",
    )
    with _fronted(tmp_path, served.port, conf) as nginx:
        result = _doctor(f"http://site1.local:{nginx.port}")
    assert result.returncode == 1, result.stdout
    fail = _lines(result, "FAIL")
    assert "replaced it by 'http://erp-internal.example'" in fail["Origin"], result.stdout
    assert "proxy_set_header Origin $scheme://$http_host" in fail["Origin"]
    assert "Invalid origin" in fail.get("connect", ""), result.stdout
    assert "SKIP  published event" not in result.stdout  # the connect failed first


def test_another_sites_header_is_named(tmp_path, served):
    conf = BENCH_TEMPLATE.replace(
        "X-Frappe-Site-Name site1.local;", "X-Frappe-Site-Name site2.local;"
    )
    with _fronted(tmp_path, served.port, conf) as nginx:
        result = _doctor(f"http://site1.local:{nginx.port}")
    assert result.returncode == 1, result.stdout
    fail = _lines(result, "FAIL")
    assert "X-Frappe-Site-Name 'site2.local', another site" in fail["site"], result.stdout
    assert "proxy_set_header X-Frappe-Site-Name site1.local;" in fail["site"]
    assert "Invalid namespace" in fail["connect"]


def test_a_dead_upstream_is_named(tmp_path):
    with _fronted(tmp_path, free_port()) as nginx:
        result = _doctor(f"http://site1.local:{nginx.port}")
    assert result.returncode == 1, result.stdout
    fail = _lines(result, "FAIL")
    assert "HTTP 502" in fail["reach"] and "cannot reach gsocket" in fail["reach"], result.stdout


def test_nothing_listening_is_named(tmp_path):
    result = _doctor(f"http://site1.local:{free_port()}")
    assert result.returncode == 1
    assert "cannot connect to 127.0.0.1:" in _lines(result, "FAIL")["reach"]


def test_tls_passes_with_its_ca_and_fails_without(tmp_path, served):
    with _fronted(tmp_path, served.port, tls=True, tls_names=("site1.local",)) as nginx:
        url = f"https://site1.local:{nginx.port}"
        trusted = _doctor(url, "--ca-bundle", str(nginx.cert), "--bench", str(served.bench))
        untrusted = _doctor(url)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "came back over the websocket" in _lines(trusted, "OK")["published event"]
    assert untrusted.returncode == 1
    fail = _lines(untrusted, "FAIL")["tls"]
    assert "certificate of site1.local is not trusted" in fail and "--ca-bundle" in fail


def test_a_certificate_for_another_host_is_named(tmp_path, served):
    with _fronted(tmp_path, served.port, tls=True, tls_names=("other.example",)) as nginx:
        result = _doctor(f"https://site1.local:{nginx.port}", "--ca-bundle", str(nginx.cert))
    assert result.returncode == 1
    assert "not valid for site1.local" in _lines(result, "FAIL")["tls"], result.stdout


def test_a_redirect_is_named(tmp_path):
    conf = """
server {
    listen @LISTEN@;
    server_name site1.local;
    return 301 https://$host$request_uri;
}
"""
    nginx = Nginx(tmp_path / "nginx", conf).start()
    try:
        result = _doctor(f"http://site1.local:{nginx.port}")
    finally:
        nginx.stop()
    assert result.returncode == 1
    fail = _lines(result, "FAIL")["redirect"]
    assert "answers 301" in fail and "https://site1.local/socket.io/gsocket-doctor" in fail
    assert "run the doctor with --url https://site1.local" in fail


def test_an_untrusted_proxy_and_a_user_session(tmp_path, start_gsocket):
    served = start_gsocket(conf={"gsocket": {"trusted_proxies": ["10.0.0.0/8"]}})
    with _fronted(tmp_path, served.port) as nginx:
        result = _doctor(f"http://site1.local:{nginx.port}", "--sid", "sid-admin")
    fail = _lines(result, "FAIL")
    # The Origin is site1.local too, so the site still resolves right, from the Origin; the
    # doctor says the header was ignored only when that changes the site.  Here it does not:
    assert "site" not in fail, result.stdout
    assert "ignored" in _lines(result, "OK")["site"]
    assert "(sid cookie)" in _lines(result, "OK")["connect"]
    assert result.returncode == 0, result.stdout


def test_an_untrusted_proxy_naming_a_mapped_site(tmp_path, start_gsocket):
    served = start_gsocket(conf={"gsocket": {"trusted_proxies": ["10.0.0.0/8"]}})
    conf = BENCH_TEMPLATE.replace("server_name site1.local;", "server_name erp.example;")
    with _fronted(tmp_path, served.port, conf) as nginx:
        result = _doctor(f"http://erp.example:{nginx.port}", "--site", SITE)
    assert result.returncode == 1, result.stdout
    fail = _lines(result, "FAIL")["site"]
    assert "arrives from 127.0.0.1, which gsocket does not trust" in fail, fail
    assert "gsocket.trusted_proxies" in fail


def test_a_rewritten_host_is_named(tmp_path, served):
    # Without "proxy_set_header Host $host;" nginx sends the upstream's name as Host.
    conf = BENCH_TEMPLATE.replace("proxy_set_header Host $host;", "")
    with _fronted(tmp_path, served.port, conf) as nginx:
        result = _doctor(f"http://site1.local:{nginx.port}")
    assert result.returncode == 1, result.stdout
    fail = _lines(result, "FAIL")
    assert "a hop replaced it by 'bench-socketio-server'" in fail["Host"], result.stdout
    assert "proxy_set_header Host $host;" in fail["Host"]
    assert "Origin" not in fail
