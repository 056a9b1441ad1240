"""The demo page in a real headless Chromium: what a user of ``gsocket demo`` sees, end to end.

The page runs the npm socket.io-client 4.8.1 browser build and connects as the desk does
(``/<site>`` on the socketio_port, sid cookie, polling then the websocket upgrade).  The test
drives Debian's ``chromium`` through Playwright (never a downloaded browser) and checks every
promise of the page: the transport, a published event, the progress bar of a background job,
the viewers of a document open in two browsers as two users, a custom handler's
acknowledgement, and the reconnection after gsocket restarts.  Screenshots are kept in
``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from gsocket.contract.publish import Publisher
from tests.support.bench import REPO
from tests.test_demo_runner import DEMO_SITE, DemoProcess

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
DOC_ROOM = "open_doc:Issue/ISS-0001"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Debian Chromium for the module."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (Debian's package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def demo(tmp_path) -> Iterator[DemoProcess]:
    process = DemoProcess(tmp_path).start()
    yield process
    process.close()


class DemoPage:
    """The demo page in a browser context of its own (its own cookies: another user)."""

    def __init__(self, browser: Any, url: str, user: str) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)
        if user != "Guest":
            self.page.select_option("#login-user", user)
            with self.page.expect_navigation():
                self.page.click("#login")
        assert self.page.inner_text("#user") == user

    def wait(self, expression: str, arg: Any = None) -> Any:
        """Wait until the JavaScript ``expression`` (a function of ``arg``) is truthy."""
        return self.page.wait_for_function(expression, arg=arg, timeout=TIMEOUT_MS).json_value()

    def wait_connected(self, connections: int = 1) -> None:
        """Wait for the ``connections``-th connection to be up on the websocket transport."""
        self.wait(
            """(n) => document.getElementById('state').dataset.state === 'connected'
                && document.getElementById('transport').textContent === 'websocket'
                && Number(document.getElementById('connects').dataset.count) === n""",
            connections,
        )

    def rooms(self) -> list[str]:
        return json.loads(self.page.get_attribute("#rooms", "data-rooms") or "[]")

    def wait_rooms_include(self, room: str) -> None:
        self.wait("(room) => (document.getElementById('rooms').dataset.rooms || '')"
                  ".includes(JSON.stringify(room))", room)  # fmt: skip

    def wait_viewers(self, users: list[str]) -> None:
        self.wait(
            """(users) => {
                const seen = JSON.parse(document.getElementById('viewers').dataset.users || '[]');
                return seen.length === users.length && users.every((u) => seen.includes(u));
            }""",
            users,
        )

    def wait_logged(self, event: str, text: str) -> None:
        self.wait(
            """([event, text]) => [...document.querySelectorAll('#log li')].some(
                (li) => li.dataset.event === event && li.textContent.includes(text))""",
            [event, text],
        )

    def call_hello(self) -> str:
        self.page.fill("#hello-text", "ping from the test")
        self.page.click("#call-hello")
        return self.wait(
            """() => { const t = document.getElementById('ack').textContent;
                return t.startsWith('{') || t.startsWith('empty') ? t : null; }"""
        )

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=True)

    def close(self) -> None:
        self.context.close()


def publish_cli(demo: DemoProcess, room: str, event: str, message: dict[str, Any]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gsocket", "publish", "--bench", str(demo.bench)]
        + ["--site", DEMO_SITE, "--room", room, event, json.dumps(message)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_demo_page_in_chromium(demo, browser):
    assert shutil.which("redis-server"), "the demo needs the system's redis-server"
    pages: list[DemoPage] = []
    try:
        admin = DemoPage(browser, demo.url, "Administrator")
        pages.append(admin)

        # Connected like the desk: long-polling first, then upgraded to a websocket.
        admin.wait_connected()
        admin.wait_rooms_include("user:Administrator")
        assert sorted(admin.rooms()) == ["all", "user:Administrator", "website"]

        # An event published by an operator reaches the page.
        out = publish_cli(demo, "user:Administrator", "demo_notice", {"text": "hello from CLI"})
        assert "1 subscriber" in out
        admin.wait_logged("demo_notice", "hello from CLI")

        # The background job's progress, published through Redis, drives the progress bar.
        admin.page.click("#start-job")
        admin.wait("() => document.getElementById('progress').dataset.percent === '100'")
        assert admin.page.inner_text("#progress-percent") == "100 %"
        assert admin.page.locator('#log li[data-event="progress"]').count() >= 10
        admin.wait_logged("msgprint", "finished")

        # The demo app's custom handler answers with an acknowledgement.
        ack = json.loads(admin.call_hello())
        assert ack["greeting"] == "Hello Administrator, you said 'ping from the test'"
        assert (ack["site"], ack["user_type"], ack["count"]) == (DEMO_SITE, "System User", 1)

        # A second browser, as the Website User, opens the same document: both see both.
        customer = DemoPage(browser, demo.url, "customer@example.com")
        pages.append(customer)
        customer.wait_connected()
        admin.page.click("#open-doc")
        admin.wait_rooms_include(DOC_ROOM)
        customer.page.click("#open-doc")
        customer.wait_rooms_include(DOC_ROOM)
        admin.wait_viewers(["Administrator", "customer@example.com"])
        customer.wait_viewers(["Administrator", "customer@example.com"])
        assert "all" not in customer.rooms()

        # A Guest is connected too, but may not run the handler (allow_guest is off).
        guest = DemoPage(browser, demo.url, "Guest")
        pages.append(guest)
        guest.wait_connected()
        assert guest.call_hello().startswith("empty acknowledgement")

        # The Python publish helpers reach every page of the site.
        with Publisher.for_bench(demo.bench, DEMO_SITE) as publisher:
            assert publisher.publish_to_website("demo_notice", {"text": "to every visitor"}) == 1
        for page in pages:
            page.wait_logged("demo_notice", "to every visitor")

        admin.screenshot("demo-browser.png")
        customer.screenshot("demo-browser-second-user.png")

        # gsocket restarts; every page reconnects on its own and the document is reopened.
        old_pid = demo.child("gsocket")
        admin.page.click("#restart")
        for page in pages:
            page.wait_connected(connections=2)
        assert demo.child("gsocket") != old_pid
        admin.wait_viewers(["Administrator", "customer@example.com"])
        assert json.loads(admin.call_hello())["count"] == 1, "per-socket state starts afresh"
        publish_cli(demo, "user:customer@example.com", "demo_notice", {"text": "after restart"})
        customer.wait_logged("demo_notice", "after restart")
        admin.screenshot("demo-browser-after-restart.png")

        for page in pages:
            assert page.errors == [], page.errors
    finally:
        for page in pages:
            page.close()
