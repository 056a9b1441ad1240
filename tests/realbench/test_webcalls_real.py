"""Real Frappe behind a Debian nginx with TLS: each socket gets its own user, whoever connects
around it.

The same scenario as tests/test_webcalls.py, against the real web process of v15 and develop:
cookie sessions of three users, an API token, an OAuth bearer token and Guests connect at once,
in shuffled order, through nginx over https, while gsocket calls Frappe back through the same
nginx (the desk's path, ``Origin: https://...``) or through an http server that redirects to
https.  Real Frappe sets ``sid`` on its answers and believes a cookie session before a token, so
any cookie kept between calls would show here as a socket with another user's identity.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import socketio

from gsocket.demo.ports import free_port
from tests.support.bench import GsocketProcess
from tests.support.pyclient import PyClient
from tests.support.realbench import ADMIN_PASSWORD, SITE, RealBench
from tests.support.tlsfront import https_redirect, site_front

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

USERS = ("alice@example.com", "bob@example.com", "dave@example.com", "eve@example.com")


@pytest.fixture(scope="module")
def credentials(real_bench: RealBench) -> list[tuple[str, dict[str, str]]]:
    """``(user, credential)`` of Administrator, alice and bob (sessions), dave (API token), eve
    (OAuth bearer token) and a Guest, on the real bench."""
    for user in USERS:
        real_bench.ensure_user(user)
    token = real_bench.in_site(
        SITE,
        """
user = frappe.get_doc("User", "dave@example.com")
user.api_key = user.api_key or frappe.generate_hash(length=15)
secret = frappe.generate_hash(length=15)
user.api_secret = secret
user.save(ignore_permissions=True)
print(f"{user.api_key}:{secret}")
""",
    ).strip()
    bearer = real_bench.in_site(
        SITE,
        """
client = frappe.get_doc({"doctype": "OAuth Client", "app_name": "i12", "scopes": "all",
    "redirect_uris": "http://localhost/cb", "default_redirect_uri": "http://localhost/cb",
    "grant_type": "Authorization Code", "response_type": "Code", "skip_authorization": 1})
client.insert(ignore_permissions=True)
token = frappe.get_doc({"doctype": "OAuth Bearer Token", "client": client.name,
    "user": "eve@example.com", "access_token": frappe.generate_hash(length=20),
    "refresh_token": frappe.generate_hash(length=20), "scopes": "all", "expires_in": 3600,
    "status": "Active"})
token.insert(ignore_permissions=True)
print(token.access_token)
""",
    ).strip()
    found = [
        ("Administrator", {"Cookie": f"sid={real_bench.login()}"}),
        ("alice@example.com", {"Cookie": f"sid={real_bench.login(USERS[0], ADMIN_PASSWORD)}"}),
        ("bob@example.com", {"Cookie": f"sid={real_bench.login(USERS[1], ADMIN_PASSWORD)}"}),
        ("dave@example.com", {"Authorization": f"token {token}"}),
        ("eve@example.com", {"Authorization": f"Bearer {bearer}"}),
        ("Guest", {"Cookie": "sid=Guest"}),
    ]
    return found


@pytest.fixture(scope="module")
def todo(real_bench: RealBench) -> str:
    """A ToDo of Administrator's: only Administrator may read it."""
    return real_bench.in_site(
        SITE,
        "print(frappe.get_doc({'doctype': 'ToDo', 'description': 'i12'}).insert().name)",
    ).strip()


@pytest.fixture
def fronted(real_bench: RealBench, tmp_path: Path) -> Iterator[Any]:
    """Factory: nginx with TLS in front of the real web process and a gsocket trusting it
    (``gsocket.ca_file``); ``redirect=True`` points ``webserver_host`` at an http nginx that
    redirects to the TLS one."""
    made: list[tuple[Any, Any, GsocketProcess]] = []

    def start(redirect: bool) -> tuple[Any, Any, GsocketProcess]:
        port = free_port()
        tls = site_front(tmp_path / "tls", real_bench.ports["WEB_PORT"], port, SITE)
        back = https_redirect(tmp_path / "redirect", tls.port)
        tls.start()
        back.start()
        settings = {"gsocket": {"ca_file": str(tls.cert)}}
        host = back.url if redirect else None
        with real_bench.common_site_config_changed(webserver_host=host, **settings):
            proc = real_bench.gsocket(port=port).start(timeout=60)
        made.append((tls, back, proc))
        return made[-1]

    yield start
    for tls, back, proc in made:
        proc.kill()
        tls.stop()
        back.stop()


@pytest.mark.parametrize("redirect", [False, True], ids=["desk", "redirect"])
def test_each_socket_gets_its_own_real_user_over_tls(
    real_bench: RealBench, credentials, todo, fronted, redirect
):
    tls, back, proc = fronted(redirect)
    plan = [entry for entry in credentials for _ in range(3)]
    random.Random(12).shuffle(plan)

    def connect(entry: tuple[str, dict[str, str]]) -> tuple[str, PyClient]:
        client = PyClient(ssl_verify=False)
        try:
            client.connect(tls.url, f"/{SITE}", dict(entry[1]), timeout=30)
        except socketio.exceptions.ConnectionError as e:
            raise AssertionError(
                f"{entry[0]} could not connect ({e}); it got {client.received}; "
                f"gsocket's log:\n{proc.log()[-3000:]}\nnginx:\n{tls.log_text()[-2000:]}"
            ) from None
        return entry[0], client

    with ThreadPoolExecutor(max_workers=8) as pool:
        clients = list(pool.map(connect, plan))
        list(pool.map(lambda c: c[1].call("doc_subscribe", "ToDo", todo, timeout=30), clients))
    publisher = redis.Redis.from_url(real_bench.redis_queue_url)
    try:
        for user, _ in credentials:
            message = {"event": "whoami", "message": {"user": user}, "room": f"user:{user}"}
            publisher.publish("events", json.dumps({**message, "namespace": SITE}))
        for event, room in (("doc_update", f"doc:ToDo/{todo}"), ("done", "website")):
            message = {"event": event, "message": {}, "room": room, "namespace": SITE}
            publisher.publish("events", json.dumps(message))
    finally:
        publisher.close()
    for user, client in clients:
        client.wait_for("done", timeout=15)
        assert [args[0]["user"] for args in client.events("whoami")] == [user], user
        assert len(client.events("doc_update")) == (user == "Administrator"), user
        client.disconnect()
    if redirect:
        assert " 301 " in back.access_log.read_text()
    assert "Traceback" not in proc.log()
