"""Log lines an operator can follow, and never a credential in them.

One line per connect, refusal, disconnect and handler error, naming the site, the user and the
sid; the level comes from ``gsocket.log_level`` (or ``--log-level``).  Cookies, API tokens and
the socket secret must never reach the log, not even at DEBUG.
"""

from __future__ import annotations

import re

import pytest
import socketio

from tests.conftest import SITE, desk_headers

OPS_APPS = {"apps": ("frappe", "opsapp"), "copy_apps": ("opsapp",), "sites": (SITE,)}
SECRET = "s3cr3t-socket-secret-value"
TOKEN = "token api-key:api-secret"


def _refused(clients, url: str, headers: dict[str, str]) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        clients().connect(url, f"/{SITE}", headers, timeout=5)


def test_one_line_per_connect_refusal_disconnect_and_handler_error(start_gsocket, web, clients):
    web.installed_apps[SITE] = ["frappe", "opsapp"]
    web.set_secret(SECRET)
    proc = start_gsocket(conf={"gsocket": {"log_level": "DEBUG"}}, **OPS_APPS)

    admin = clients().connect(proc.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    token_headers = {**desk_headers(SITE, None), "Authorization": TOKEN}
    jane = clients(["websocket"]).connect(proc.url, f"/{SITE}", token_headers)
    _refused(clients, proc.url, desk_headers(SITE, None))
    _refused(clients, proc.url, desk_headers(SITE, "sid-jane", origin="http://evil.example"))
    admin.emit("ops_fail")
    proc.wait_for_log(r"ops_fail.*raised")
    admin_sid, jane_sid = admin.sid, jane.sid
    admin.disconnect()
    jane.disconnect()
    proc.wait_for_log(rf"disconnect site={re.escape(SITE)} user=jane@example.com sid={jane_sid}")
    log = proc.log()

    assert f"connect site={SITE} user=Administrator sid={admin_sid}" in log
    assert f"connect site={SITE} user=jane@example.com sid={jane_sid}" in log
    assert f"disconnect site={SITE} user=Administrator sid={admin_sid}" in log
    refusals = [line for line in log.splitlines() if "refused connection" in line]
    assert len(refusals) == 2, refusals
    assert all(f"/{SITE}" in line for line in refusals)
    assert any("no_credentials" in line for line in refusals)
    assert any("invalid_origin" in line for line in refusals)
    errors = [line for line in log.splitlines() if "ops_fail" in line and "raised" in line]
    assert len(errors) == 1, errors
    assert SITE in errors[0] and "Administrator" in errors[0] and admin_sid in errors[0]

    for secret in ("sid-admin", "sid-jane", "api-key", "api-secret", SECRET):
        assert secret not in log, f"{secret!r} leaked into the log"


def test_log_level_is_configurable(start_gsocket, web, clients):
    web.installed_apps[SITE] = ["frappe", "opsapp"]
    proc = start_gsocket(conf={"gsocket": {"log_level": "WARNING"}}, **OPS_APPS)
    client = clients().connect(proc.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    client.emit("ops_fail")
    proc.wait_for_log(r"ops_fail.*raised")
    assert "connect site=" not in proc.log()
    assert " INFO " not in proc.log()
