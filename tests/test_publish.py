"""gsocket.contract.publish: what a real Redis subscriber receives is what
frappe.publish_realtime sends.

Every helper is checked against the message a subscriber of the channel ``events`` gets from a
real redis-server: the event, the message, the room Frappe derives and the site as
``namespace``, serialised the way ``frappe.as_json`` serialises (sorted keys, indent 1, ASCII).
One test follows a message all the way through a real gsocket to a connected client.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gsocket.contract.publish import Publisher
from gsocket.demo.redis_server import RedisServer
from tests.conftest import SITE, desk_headers
from tests.support.bench import REPO, make_bench


class Subscriber:
    """A plain redis-py subscriber of ``events``, like the realtime process's bridge."""

    def __init__(self, redis_server: RedisServer) -> None:
        self.client = redis_server.client()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe("events")
        self.pubsub.get_message(timeout=2)

    def next_raw(self, timeout: float = 5.0) -> str:
        """The next published message's text, waiting at most ``timeout`` seconds."""
        message = self.pubsub.get_message(timeout=timeout)
        assert message is not None, f"nothing published on 'events' within {timeout}s"
        return message["data"].decode()

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return json.loads(self.next_raw(timeout))

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def subscriber(redis_server: RedisServer, redis_client: Any) -> Iterator[Subscriber]:
    sub = Subscriber(redis_server)
    yield sub
    sub.close()


@pytest.fixture
def publisher(redis_server: RedisServer) -> Iterator[Publisher]:
    with Publisher(redis_server.url, SITE, session_user="jane@example.com") as pub:
        yield pub


def frappe_as_json(payload: dict[str, Any]) -> str:
    """Frappe's ``as_json`` for plain JSON values, written out independently of gsocket."""
    return json.dumps(payload, indent=1, sort_keys=True, separators=(",", ": "))


CASES: list[tuple[str, Callable[[Publisher], int], str, Any, str]] = [
    (
        "to_user",
        lambda p: p.publish_to_user("web@example.com", "msgprint", {"message": "hi"}),
        "msgprint",
        {"message": "hi"},
        "user:web@example.com",
    ),
    (
        "to_doc",
        lambda p: p.publish_to_doc("ToDo", "TD-0001", "doc_update", {"name": "TD-0001"}),
        "doc_update",
        {"name": "TD-0001"},
        "doc:ToDo/TD-0001",
    ),
    (
        "to_doctype",
        lambda p: p.publish_to_doctype("ToDo", "list_update", {"doctype": "ToDo", "name": "T"}),
        "list_update",
        {"doctype": "ToDo", "name": "T"},
        "doctype:ToDo",
    ),
    (
        "to_doctype_list_update_without_doctype_in_message",
        lambda p: p.publish_to_doctype("ToDo", "list_update", {"name": "T"}),
        "list_update",
        {"name": "T"},
        "doctype:ToDo",
    ),
    (
        "task_progress",
        lambda p: p.publish_task_progress("job-7", {"progress": [1, 4]}),
        "task_progress",
        {"progress": [1, 4], "task_id": "job-7"},
        "task_progress:job-7",
    ),
    (
        "to_website",
        lambda p: p.publish_to_website("announcement", {"text": "maintenance at 10"}),
        "announcement",
        {"text": "maintenance at 10"},
        "website",
    ),
    (
        "to_all_without_message",
        lambda p: p.publish_to_all("announcement"),
        "announcement",
        {},
        "all",
    ),
    (
        "to_room",
        lambda p: p.publish_to_room("project:PROJ-0001", "project_updated", {"status": "Open"}),
        "project_updated",
        {"status": "Open"},
        "project:PROJ-0001",
    ),
    (
        "progress_goes_to_the_session_user",
        lambda p: p.publish_progress(25, title="Importing", description="row 25 of 100"),
        "progress",
        {"percent": 25, "title": "Importing", "description": "row 25 of 100"},
        "user:jane@example.com",
    ),
    (
        "progress_of_a_document",
        lambda p: p.publish_progress(50, doctype="ToDo", docname="TD-1"),
        "progress",
        {"percent": 50, "title": None, "description": None},
        "doc:ToDo/TD-1",
    ),
    (
        "progress_of_a_task",
        lambda p: p.publish_progress(10, title="Export", task_id="job-8"),
        "progress",
        {"percent": 10, "title": "Export", "description": None, "task_id": "job-8"},
        "task_progress:job-8",
    ),
    (
        "msgprint_without_user_goes_to_the_session_user",
        lambda p: p.publish_realtime("msgprint", "Saved"),
        "msgprint",
        "Saved",
        "user:jane@example.com",
    ),
    (
        "list_update_room_comes_from_the_message",
        lambda p: p.publish_realtime("list_update", {"doctype": "Note"}, room="ignored"),
        "list_update",
        {"doctype": "Note"},
        "doctype:Note",
    ),
    (
        "docinfo_update_goes_to_the_document",
        lambda p: p.publish_realtime("docinfo_update", {"x": 1}, doctype="ToDo", docname="TD-2"),
        "docinfo_update",
        {"x": 1},
        "doc:ToDo/TD-2",
    ),
    (
        "no_event_and_no_room",
        lambda p: p.publish_realtime(message={"x": 1}),
        "global",
        {"x": 1},
        "all",
    ),
    (
        "user_keyword",
        lambda p: p.publish_realtime("custom", {"x": 1}, user="web@example.com"),
        "custom",
        {"x": 1},
        "user:web@example.com",
    ),
    (
        "document_keywords",
        lambda p: p.publish_realtime("custom", None, doctype="ToDo", docname=42),
        "custom",
        {},
        "doc:ToDo/42",
    ),
]


@pytest.mark.parametrize(
    ("call", "event", "message", "room"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_subscriber_receives_what_frappe_sends(
    subscriber: Subscriber, publisher: Publisher, call, event, message, room
):
    receivers = call(publisher)

    raw = subscriber.next_raw()
    expected = {"event": event, "message": message, "room": room, "namespace": SITE}
    assert json.loads(raw) == expected
    assert raw == frappe_as_json(expected)
    assert receivers == 1


def test_encoding_matches_frappe_as_json_for_dates_decimals_and_non_ascii(
    subscriber: Subscriber, publisher: Publisher
):
    publisher.publish_to_room(
        "website",
        "custom",
        {
            "when": datetime.datetime(2026, 11, 28, 10, 0, 5),
            "day": datetime.date(2026, 11, 28),
            "amount": decimal.Decimal("12.50"),
            "name": "Zoë",
        },
    )

    raw = subscriber.next_raw()
    assert '"name": "Zo\\u00eb"' in raw
    assert json.loads(raw)["message"] == {
        "when": "2026-11-28 10:00:05",
        "day": "2026-11-28",
        "amount": 12.5,
        "name": "Zoë",
    }


def test_the_callers_message_is_not_changed(subscriber: Subscriber, publisher: Publisher):
    message = {"progress": [2, 4]}
    publisher.publish_task_progress("job-9", message)

    assert subscriber.next()["message"] == {"progress": [2, 4], "task_id": "job-9"}
    assert message == {"progress": [2, 4]}


def test_nobody_listening_is_reported_as_zero_receivers(publisher: Publisher, redis_client):
    assert publisher.publish_to_all("announcement", {"x": 1}) == 0


def test_a_publisher_for_a_bench_uses_its_redis_queue(tmp_path, redis_server, subscriber):
    bench = make_bench(tmp_path, {"redis_queue": redis_server.url}, sites=(SITE,))
    with Publisher.for_bench(bench, SITE) as publisher:
        publisher.publish_progress(75, title="Backup")

    assert subscriber.next() == {
        "event": "progress",
        "message": {"percent": 75, "title": "Backup", "description": None},
        "room": "user:Administrator",
        "namespace": SITE,
    }


def test_a_site_is_required(redis_server):
    with pytest.raises(ValueError, match="site"):
        Publisher(redis_server.url, "")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gsocket", "publish", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_cli_publishes_to_the_room_given(tmp_path, redis_server, subscriber):
    bench = make_bench(tmp_path, {"redis_queue": redis_server.url}, sites=(SITE,))
    payload = '{"doctype": "ToDo", "name": "TD-3"}'

    out = run_cli(
        "--bench", str(bench), "--site", SITE, "--room", "doc:ToDo/TD-3", "doc_update", payload
    )

    assert out.returncode == 0, out.stderr
    assert "'doc_update' to room 'doc:ToDo/TD-3'" in out.stdout
    assert "1 subscriber " in out.stdout
    assert subscriber.next_raw() == frappe_as_json(
        {
            "event": "doc_update",
            "message": {"doctype": "ToDo", "name": "TD-3"},
            "room": "doc:ToDo/TD-3",
            "namespace": SITE,
        }
    )


def test_cli_derives_the_room_like_publish_realtime(tmp_path, redis_server, subscriber):
    bench = make_bench(tmp_path, {"redis_queue": redis_server.url}, sites=(SITE,))

    out = run_cli("--bench", str(bench), "--site", SITE, "--task-id", "job-1", "task_progress")

    assert out.returncode == 0, out.stderr
    assert subscriber.next() == {
        "event": "task_progress",
        "message": {"task_id": "job-1"},
        "room": "task_progress:job-1",
        "namespace": SITE,
    }


def test_cli_refuses_a_message_that_is_not_json(tmp_path, redis_server):
    bench = make_bench(tmp_path, {"redis_queue": redis_server.url}, sites=(SITE,))

    out = run_cli("--bench", str(bench), "--site", SITE, "custom", "{not json")

    assert out.returncode == 2
    assert "not valid JSON" in out.stderr


def test_cli_warns_when_no_realtime_process_listens(tmp_path, redis_server, redis_client):
    bench = make_bench(tmp_path, {"redis_queue": redis_server.url}, sites=(SITE,))

    out = run_cli("--bench", str(bench), "--site", SITE, "custom", "{}")

    assert out.returncode == 0
    assert "0 subscribers" in out.stdout
    assert "is the realtime server running" in out.stderr


def test_cli_fails_when_redis_is_unreachable(tmp_path):
    bench = make_bench(tmp_path, {"redis_queue": "redis://127.0.0.1:1"}, sites=(SITE,))

    out = run_cli("--bench", str(bench), "--site", SITE, "custom", "{}")

    assert out.returncode == 1
    assert "cannot publish on redis://127.0.0.1:1" in out.stderr


def test_cli_reports_a_missing_bench(tmp_path):
    out = run_cli("--bench", str(tmp_path / "nowhere"), "--site", SITE, "custom")

    assert out.returncode == 2
    assert "sites/" in out.stderr


def test_a_published_event_reaches_a_connected_client(gsocket, web, clients, redis_server):
    client = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))

    with Publisher(redis_server.url, SITE) as publisher:
        publisher.publish_progress(40, title="Import", description="4 of 10")

    (message,) = client.wait_for("progress")
    assert message == {"percent": 40, "title": "Import", "description": "4 of 10"}


def test_a_client_passed_in_is_left_open(redis_server, redis_client, subscriber):
    with Publisher(redis_server.url, SITE, client=redis_client) as publisher:
        publisher.publish_to_all("announcement")

    assert redis_client.ping()
    assert subscriber.next()["room"] == "all"
