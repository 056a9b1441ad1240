"""The documented publish helpers, imported by app code in a real bench's web process and worker.

``from frappe.realtime import publish_to_user, ...`` is what Frappe's documentation shows; the
Frappe versions of ``../shared/frappe`` lack those names, and gsocket, once installed into the
bench's env, supplies them (``gsocket/contract/frappe_hook.py``).  The probe module below
stands for an app's own code: it is put into the bench's ``frappe`` package for the test (a
whitelisted
method must belong to an installed app), called over REST by a logged-in user, and enqueued as
a background job that a real RQ worker of the bench runs.  Events travel the real way:
``frappe.publish_realtime`` -> Redis -> gsocket -> the client.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support.bench import GsocketProcess
from tests.support.pyclient import PyClient
from tests.support.realbench import SHARED_FRAPPE, SITE, RealBench

PROBE_MODULE = "gsocket_probe_helpers"

PROBE = """
import frappe
from frappe.realtime import (
    publish_task_progress,
    publish_to_all,
    publish_to_doc,
    publish_to_doctype,
    publish_to_room,
    publish_to_user,
    publish_to_website,
)


@frappe.whitelist()
def publish_all(tag):
    user = frappe.session.user
    publish_to_user(user, "probe_user", {"tag": tag})
    publish_to_doc("User", user, "probe_doc", {"tag": tag})
    publish_to_doctype("ToDo", "probe_doctype", {"tag": tag})
    publish_task_progress("probe-task", {"tag": tag})
    publish_to_website("probe_website", {"tag": tag})
    publish_to_all("probe_all", {"tag": tag})
    publish_to_room("user:" + user, "probe_room", {"tag": tag})
    publish_to_room("website", "probe_after_commit", {"tag": tag}, after_commit=True)
    frappe.db.commit()
    return publish_to_user.__module__


@frappe.whitelist()
def enqueue_job(tag):
    frappe.enqueue("frappe.gsocket_probe_helpers.job", tag=tag, user=frappe.session.user)


def job(tag, user):
    publish_to_user(user, "probe_job", {"tag": tag, "site": frappe.local.site})
"""


@pytest.fixture
def probe(real_bench: RealBench) -> Iterator[str]:
    """The probe module in the bench's frappe package, and a web process that has gsocket.

    The web process is restarted, as an operator restarts the bench after installing
    gsocket: a Python process reads its ``.pth`` files when it starts.
    """
    path = real_bench.path / "apps" / "frappe" / "frappe" / f"{PROBE_MODULE}.py"
    path.write_text(PROBE)
    try:
        subprocess.run(
            [str(SHARED_FRAPPE / "bench" / "start.sh"), "web"],
            env=real_bench.env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        yield f"/api/method/frappe.{PROBE_MODULE}"
    finally:
        path.unlink()


def published(subscription: redis.client.PubSub, count: int) -> list[tuple[str, str, str]]:
    """The next ``count`` messages on ``events`` as (event, room, namespace)."""
    seen: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        message = subscription.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            data = json.loads(message["data"])
            seen.append((data["event"], data["room"], data["namespace"]))
    return seen


def test_publish_helpers_from_a_rest_call_and_a_background_job(
    real_bench: RealBench, real_gsocket: GsocketProcess, probe: str
) -> None:
    sid = real_bench.login()
    client = PyClient().connect(real_gsocket.url, f"/{SITE}", real_bench.desk_headers(SITE, sid))
    cookie = {"Cookie": f"sid={sid}"}
    queue = redis.Redis.from_url(real_bench.redis_queue_url)
    subscription = queue.pubsub()
    subscription.subscribe("events")
    try:
        client.call("task_subscribe", "probe-task")
        client.call("doc_subscribe", "User", "Administrator")

        tag = uuid.uuid4().hex
        answer = real_bench.web("GET", f"{probe}.publish_all", params={"tag": tag}, headers=cookie)
        assert answer.status_code == 200, answer.text[:500]
        # v15 and develop lack the helpers: the ones called are gsocket's
        assert answer.json()["message"] == "gsocket.contract.publish"
        assert published(subscription, 8) == [
            ("probe_user", "user:Administrator", SITE),
            ("probe_doc", "doc:User/Administrator", SITE),
            ("probe_doctype", "doctype:ToDo", SITE),
            ("task_progress", "task_progress:probe-task", SITE),
            ("probe_website", "website", SITE),
            ("probe_all", "all", SITE),
            ("probe_room", "user:Administrator", SITE),
            ("probe_after_commit", "website", SITE),  # sent at the commit
        ]
        # and through gsocket to the client, in every room it could join on both versions
        # (a doctype room needs a permission call that develop answers differently)
        for event in (
            "probe_user",
            "probe_doc",
            "probe_website",
            "probe_all",
            "probe_room",
            "probe_after_commit",
        ):
            assert client.wait_for(event, timeout=10) == ({"tag": tag},), event
        (progress,) = client.wait_for("task_progress", timeout=10)
        assert progress == {"tag": tag, "task_id": "probe-task"}

        job_tag = uuid.uuid4().hex
        answer = real_bench.web(
            "GET", f"{probe}.enqueue_job", params={"tag": job_tag}, headers=cookie
        )
        assert answer.status_code == 200, answer.text[:500]
        real_bench.run_python(
            "from frappe.utils.background_jobs import start_worker\n"
            "start_worker(queue='default', burst=True)\n",
            timeout=180,
        )
        assert client.wait_for("probe_job", timeout=10) == ({"tag": job_tag, "site": SITE},)
    finally:
        client.disconnect()
        subscription.close()
        queue.close()
