"""The nginx test helper itself: plain and TLS, a refused configuration, a clean stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from gsocket.demo.ports import port_is_open
from tests.support.nginx import Nginx

CONF = """
server {
    listen @LISTEN@;
    server_name localhost;
    @TLS@
    location / { return 200 "hello from @PORT@"; }
}
"""


def test_plain_nginx_answers_and_stops(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path / "n", CONF.replace("@TLS@", "")).start()
    try:
        answer = requests.get(nginx.url + "/", timeout=5)
        assert answer.status_code == 200
        assert answer.text == f"hello from {nginx.port}"
    finally:
        nginx.stop()
    assert not port_is_open(nginx.port)


def test_tls_nginx_is_trusted_only_with_its_certificate(tmp_path: Path) -> None:
    tls = "ssl_certificate @CERT@; ssl_certificate_key @KEY@;"
    with Nginx(tmp_path / "n", CONF.replace("@TLS@", tls), tls=True) as nginx:
        assert nginx.url.startswith("https://")
        assert requests.get(nginx.url + "/", verify=str(nginx.cert), timeout=5).status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(nginx.url + "/", timeout=5)


def test_a_broken_configuration_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="refuses the configuration"):
        Nginx(tmp_path / "n", "server { listen @LISTEN@; no_such_directive on; }").start()
