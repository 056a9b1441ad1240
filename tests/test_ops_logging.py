"""Log lines an operator can follow, and never a credential in them.

One line per refusal and handler error, naming the site, the user and the sid; connects and
disconnects one line each at DEBUG and counted in an INFO summary; the level comes from
``gsocket.log_level`` (or ``--log-level``).  Cookies, API tokens and the socket secret must
never reach the log, not even at DEBUG.
"""

from __future__ import annotations

import json
import re

import pytest
import requests
import socketio

from tests.conftest import SITE, SITE2, desk_headers
from tests.support.bench import wait_until

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


SUMMARY = re.compile(
    r" INFO gsocket\.server\[\d+\]: connections: (\d+) open; in the last [\d.]+ s "
    r"(\d+) connected, (\d+) disconnected(?: \((?P<why>[^)]*)\))?, (\d+) refused"
)


def _summaries(log: str) -> list[tuple[int, int, int, int]]:
    return [tuple(int(m.group(i)) for i in (1, 2, 3, 5)) for m in SUMMARY.finditer(log)]


def test_connects_are_summed_up_at_info_and_logged_one_by_one_at_debug_only(
    start_gsocket, web, clients
):
    proc = start_gsocket(conf={"gsocket": {"log_summary_seconds": 0.3}})
    admin = clients().connect(proc.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    clients(["websocket"]).connect(proc.url, f"/{SITE}", desk_headers(SITE, "sid-jane"))
    _refused(clients, proc.url, desk_headers(SITE, "sid-jane", origin="http://evil.example"))
    admin.disconnect()

    def totals() -> tuple[int, int, int]:
        lines = _summaries(proc.log())
        return tuple(sum(line[i] for line in lines) for i in (1, 2, 3))  # type: ignore[return-value]

    wait_until(lambda: totals() == (2, 1, 1), 10, proc.log)
    lines = _summaries(proc.log())
    assert lines[-1][0] == 1, lines  # jane's socket is still open
    assert all(any(line[1:]) for line in lines), lines  # no line for an interval without news
    log = proc.log()
    # the client's DISCONNECT packet or its transport's close, whichever the server saw first
    whys = [m["why"] for m in SUMMARY.finditer(log) if m["why"]]
    assert whys in (["1 client disconnect"], ["1 transport close"]), whys
    assert "connect site=" not in log
    assert len([line for line in log.splitlines() if "refused connection" in line]) == 1


def test_log_level_is_configurable(start_gsocket, web, clients):
    web.installed_apps[SITE] = ["frappe", "opsapp"]
    proc = start_gsocket(conf={"gsocket": {"log_level": "WARNING"}}, **OPS_APPS)
    client = clients().connect(proc.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    client.emit("ops_fail")
    proc.wait_for_log(r"ops_fail.*raised")
    assert "connect site=" not in proc.log()
    assert " INFO " not in proc.log()


def _refusal_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "refused connection" in line]


def test_refusals_name_the_compared_values_at_warning_once_each(start_gsocket, web, clients):
    proc = start_gsocket(conf={"gsocket": {"log_level": "WARNING"}})
    # A namespace the forwarded site does not allow.
    _refused_at(clients, proc.url, f"/{SITE2}", desk_headers(SITE, "sid-jane"))
    # An Origin on another host than the Host (Host is 127.0.0.1:<port>).
    _refused(clients, proc.url, desk_headers(SITE, "sid-jane", origin="http://evil.example"))
    # No credential, but another cookie whose value must not be logged.
    _refused(clients, proc.url, {**desk_headers(SITE, None), "Cookie": "theme=v4lue-xyz"})
    web_port = web.port
    web.stop()
    _refused(clients, proc.url, desk_headers(SITE, "sid-jane"))
    proc.wait_for_log(r"web_unavailable")
    lines = _refusal_lines(proc.log())
    assert len(lines) == 4, lines
    assert all(" WARNING gsocket.server[" in line for line in lines), lines
    namespace, origin, nocred, unavailable = lines
    assert (
        f"invalid_namespace: namespace '/{SITE2}' is not the site '{SITE}' resolved from "
        "X-Frappe-Site-Name" in namespace
    ), namespace
    assert "invalid_origin: Origin host 'evil.example' is not the Host '127.0.0.1'" in origin
    assert "no_credentials:" in nocred and "cookie names: theme" in nocred, nocred
    assert f"web_unavailable: the web process at 'http://127.0.0.1:{web_port}'" in unavailable
    log = proc.log()
    assert "v4lue-xyz" not in log and "sid-jane" not in log
    # auth.py no longer adds a second line of its own for the unavailable web process.
    assert "cannot authenticate" not in log


def _refused_at(clients, url: str, namespace: str, headers: dict[str, str]) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        clients().connect(url, namespace, headers, timeout=5)


def test_an_ignored_site_header_is_named(start_gsocket, clients):
    proc = start_gsocket(conf={"gsocket": {"trusted_proxies": ["10.99.0.0/16"]}})
    _refused(clients, proc.url, desk_headers(SITE, "sid-jane"))
    (line,) = _refusal_lines(proc.wait_for_log(r"refused connection.*\n").string)
    assert (
        "resolved from the Origin (X-Frappe-Site-Name ignored: the peer is not in "
        "gsocket.trusted_proxies)" in line
    ), line


def test_python_engineio_records_are_printed_once(gsocket):
    answer = requests.get(f"{gsocket.url}/socket.io/?EIO=4&transport=polling&sid=nope", timeout=5)
    assert answer.status_code == 400
    gsocket.wait_for_log(r"Invalid session nope")
    lines = [line for line in gsocket.log().splitlines() if "Invalid session nope" in line]
    assert len(lines) == 1, lines
    assert " ERROR engineio.server[" in lines[0]


def test_json_lines_format(start_gsocket, clients):
    proc = start_gsocket(conf={"gsocket": {"log_format": "json", "log_level": "DEBUG"}})
    clients().connect(proc.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    _refused(clients, proc.url, desk_headers(SITE, "sid-jane", origin="http://evil.example"))
    requests.get(f"{proc.url}/socket.io/?EIO=4&transport=polling&sid=nope", timeout=5)
    proc.wait_for_log(r"Invalid session nope")
    records = [json.loads(line) for line in proc.log().splitlines() if line.strip()]
    assert all(set(r) >= {"time", "level", "logger", "pid", "message"} for r in records)
    assert any(r["logger"] == "gsocket.server" and "connect site=" in r["message"] for r in records)
    (refusal,) = [r for r in records if "refused connection" in r["message"]]
    assert refusal["level"] == "WARNING" and "invalid_origin" in refusal["message"]
    assert [r["level"] for r in records if "Invalid session" in r["message"]] == ["ERROR"]


def test_a_bad_log_format_is_a_config_error(start_gsocket):
    proc = start_gsocket(conf={"gsocket": {"log_format": "xml"}}, wait=False)
    assert proc.proc.wait(timeout=20) == 2
    assert "gsocket.log_format must be one of text, json" in proc.log()


def test_explain_names_the_credential_kind_never_its_value(tmp_path):
    from gsocket.config import Config
    from gsocket.contract.auth import Authenticator, Refused

    config = Config(bench_path=tmp_path, webserver_host="10.1.2.3", webserver_port=8000)
    auth = Authenticator(config, web=None, installed_apps_of=lambda site: ("frappe",))
    environ = {"HTTP_AUTHORIZATION": "token k3y:s3cret", "HTTP_HOST": "site1.local"}
    line = auth.explain(Refused("unauthorized", "Unauthorized"), "/site1.local", environ)
    assert line == (
        "the web process at 'http://10.1.2.3:8000' does not accept this Authorization header"
    )
    environ = {"HTTP_COOKIE": "sid=abcdef; x=1", "HTTP_ORIGIN": "http://a.example" * 20}
    line = auth.explain(Refused("invalid_origin", "Invalid origin"), "/a.example", environ)
    assert "abcdef" not in line and "...(cut)" in line
