"""The demo web process answers gsocket as Frappe develop does, and its job publishes like Frappe.

It is driven in-process through werkzeug's test client, with a real redis-server holding the
socket secret and carrying the job's progress events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from gsocket.demo.redis_server import RedisServer
from gsocket.demo.web import DEMO_DOCNAME, DEMO_DOCTYPE, JOB_STEP_SECONDS, JOB_STEPS, DemoWeb

SITE = "demo.localhost"
USER_INFO = "/api/method/frappe.realtime.get_user_info"
HAS_PERMISSION = "/api/method/frappe.realtime.has_permission"


@pytest.fixture
def demo_web(redis_server: RedisServer, redis_client: Any, tmp_path: Path) -> Iterator[DemoWeb]:
    web = DemoWeb(SITE, 8000, 9000, redis_server.url, tmp_path)
    yield web
    web.stop()


def browser(web: DemoWeb, user: str | None = None) -> Client:
    """A client with the cookie jar of a browser, logged in as ``user``."""
    client = Client(web.wsgi)
    if user is not None:
        response = client.post("/api/method/login", data={"usr": user})
        assert response.status_code == 200, response.text
    return client


def test_the_page_gives_a_visitor_a_guest_cookie_and_the_boot_data(demo_web):
    client = browser(demo_web)

    response = client.get("/")

    assert response.status_code == 200
    assert client.get_cookie("sid").value == "Guest"
    boot = json.loads(response.text.split("window.demo_boot = ", 1)[1].split(";</script>", 1)[0])
    assert boot["sitename"] == SITE
    assert boot["socketio_port"] == 9000
    assert boot["user"] == "Guest"
    assert [u["user_type"] for u in boot["users"]] == [
        "System User",
        "Website User",
        "Website User",
    ]


def test_the_socket_io_client_browser_build_is_served(demo_web):
    response = browser(demo_web).get("/assets/gsocket_demo/socket.io.min.js")

    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert response.text.startswith("/*!\n * Socket.IO v4.8.1")


def test_assets_are_looked_up_by_name_only(demo_web):
    client = browser(demo_web)

    assert client.get("/assets/gsocket_demo/../web.py").status_code == 404
    assert client.get("/assets/gsocket_demo/nothing.js").status_code == 404


def test_get_user_info_answers_in_the_develop_shape_without_a_secret(demo_web, redis_client):
    client = browser(demo_web, "Administrator")

    assert redis_client.get("socketio_auth_secret") is None
    for headers in ({}, {"X-Frappe-Socket-Secret": "anything"}):
        assert client.get(USER_INFO, headers=headers).json == {
            "message": {
                "user": "Administrator",
                "user_type": "System User",
                "installed_apps": ["frappe", "gsocket_demo"],
            }
        }
    assert redis_client.get("socketio_auth_secret") is None, "the demo never creates the secret"


def test_an_existing_socket_secret_is_checked(demo_web, redis_client):
    redis_client.set("socketio_auth_secret", "set-by-the-bench")
    client = browser(demo_web, "customer@example.com")

    assert client.get(USER_INFO).json == {"message": {}}
    assert client.get(USER_INFO, headers={"X-Frappe-Socket-Secret": "wrong"}).json == {
        "message": {}
    }
    answer = client.get(USER_INFO, headers={"X-Frappe-Socket-Secret": "set-by-the-bench"}).json
    assert answer["message"]["user"] == "customer@example.com"
    assert answer["message"]["user_type"] == "Website User"


def test_an_unknown_or_ended_session_is_guest(demo_web):
    client = browser(demo_web, "Administrator")
    client.post("/api/method/logout")

    assert client.get_cookie("sid").value == "Guest"
    assert client.get(USER_INFO).json["message"]["user"] == "Guest"

    stranger = Client(demo_web.wsgi)
    stranger.set_cookie("sid", "made-up")
    answer = stranger.get(USER_INFO).json
    assert answer["session_expired"] == 1
    assert (answer["message"]["user"], answer["message"]["user_type"]) == ("Guest", None)


def test_a_token_is_refused_the_demo_has_no_api_keys(demo_web):
    response = Client(demo_web.wsgi).get(USER_INFO, headers={"Authorization": "token k:s"})

    assert (response.status_code, response.json["exc_type"]) == (401, "AuthenticationError")


def test_has_permission_needs_a_name_as_develop_does(demo_web):
    client = browser(demo_web, "Administrator")

    response = client.get(HAS_PERMISSION, query_string={"doctype": DEMO_DOCTYPE})

    assert response.status_code == 500
    assert response.json["exception"] == (
        "TypeError: has_permission() missing 1 required positional argument: 'name'"
    )
    doctype_wide = client.get(HAS_PERMISSION, query_string={"doctype": DEMO_DOCTYPE, "name": ""})
    assert (doctype_wide.status_code, doctype_wide.json) == (200, {"message": True})


def test_login_refuses_an_unknown_user(demo_web):
    response = browser(demo_web).post("/api/method/login", data={"usr": "mallory"})

    assert response.status_code == 401


@pytest.mark.parametrize(
    ("user", "doctype", "name", "allowed"),
    [
        ("Administrator", DEMO_DOCTYPE, DEMO_DOCNAME, True),
        ("Administrator", "Salary Slip", None, True),
        ("customer@example.com", DEMO_DOCTYPE, DEMO_DOCNAME, True),
        ("customer@example.com", DEMO_DOCTYPE, "ISS-0002", False),
        ("customer@example.com", DEMO_DOCTYPE, None, False),
        (None, DEMO_DOCTYPE, DEMO_DOCNAME, False),
    ],
)
def test_has_permission(demo_web, user, doctype, name, allowed):
    params = {"doctype": doctype, "name": name or ""}  # "" asks about the DocType, as Node does

    response = browser(demo_web, user).get(HAS_PERMISSION, query_string=params)

    if allowed:
        assert (response.status_code, response.json) == (200, {"message": True})
    else:
        assert response.status_code == 403
        assert response.json["exc_type"] == "PermissionError"


def test_the_job_publishes_progress_to_its_user_like_publish_progress(
    demo_web, redis_server, redis_client
):
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("events")
    pubsub.get_message(timeout=2)

    response = browser(demo_web, "customer@example.com").post(
        "/api/method/gsocket_demo.api.start_job"
    )
    task_id = response.json["message"]["task_id"]
    # This process is not gevent's: joining runs the hub, and with it the job's greenlet.
    assert demo_web.jobs.join(timeout=JOB_STEPS * JOB_STEP_SECONDS + 10)

    received = []
    while len(received) < JOB_STEPS + 1:
        message = pubsub.get_message(timeout=5)
        assert message is not None, f"the job stopped publishing after {received}"
        received.append(json.loads(message["data"]))
    pubsub.close()
    assert received[0] == {
        "event": "progress",
        "message": {
            "percent": 100 / JOB_STEPS,
            "title": "Demo job",
            "description": f"Job {task_id}: step 1 of {JOB_STEPS}",
        },
        "room": "user:customer@example.com",
        "namespace": SITE,
    }
    assert received[JOB_STEPS - 1]["message"]["percent"] == 100
    assert received[JOB_STEPS]["event"] == "msgprint"
    assert received[JOB_STEPS]["room"] == "user:customer@example.com"


def test_restart_is_offered_only_by_a_runner(demo_web, tmp_path, redis_server):
    assert browser(demo_web).post("/api/method/gsocket_demo.api.restart_realtime").status_code == (
        405
    )
