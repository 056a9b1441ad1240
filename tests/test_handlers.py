"""App handlers: discovery, install scoping, Guest gating, arguments, errors, acks, state."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import SITE, SITE2, desk_headers
from tests.support.bench import REPO, GsocketProcess, make_bench

APPS = ("frappe", "alpha", "beta", "plain")


@pytest.fixture
def app_web(web):
    web.installed_apps.update({SITE: ["frappe", "alpha"], SITE2: ["frappe", "beta"]})
    return web


@pytest.fixture
def gsock(start_gsocket, app_web):
    return start_gsocket(apps=APPS, copy_apps=("alpha", "beta", "plain"))


def connect(clients, proc, sid, site=SITE, transports=None):
    return clients(transports).connect(proc.url, f"/{site}", desk_headers(site, sid))


class TestScoping:
    def test_handler_runs_with_the_socket_identity(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        result = client.call("alpha_echo", "hi")
        assert result == {
            "app": "alpha",
            "text": "hi",
            "site": SITE,
            "user": "Administrator",
            "user_type": "System User",
            "installed_apps": ["frappe", "alpha"],
            "sid": client.sid,
            "greeted": True,
        }

    def test_scoped_to_sites_with_the_app_both_ways(self, gsock, clients):
        one = connect(clients, gsock, "sid-admin", SITE)
        two = connect(clients, gsock, "sid-admin", SITE2)
        assert one.call("alpha_echo", "x")["app"] == "alpha"
        assert two.call("alpha_echo", "x") is None
        assert two.call("beta_echo") == f"beta on {SITE2}"
        assert one.call("beta_echo") is None
        assert one.call("shared") == "alpha" and two.call("shared") == "beta"

    def test_guest_runs_only_allow_guest_handlers(self, gsock, clients):
        guest = connect(clients, gsock, "Guest")
        assert guest.call("alpha_guest") == "hello Guest"
        assert guest.call("alpha_echo", "x") is None
        assert guest.events("welcome") == []

    def test_connect_handler_runs_after_default_rooms(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        (welcome,) = client.wait_for("welcome")
        assert welcome["rooms"] == sorted(["all", "user:Administrator", "website"])

    def test_v15_without_frappe_serves_only_core_events(self, start_gsocket, app_web, clients):
        app_web.shape = "v15"
        proc = start_gsocket(apps=APPS, copy_apps=("alpha", "beta"))
        client = connect(clients, proc, "sid-admin")
        assert client.call("alpha_echo", "x") is None
        client.emit("ping")
        client.wait_for("pong")
        proc.wait_for_log(r"does not report installed apps and Frappe is not importable")


class TestArgumentsAndErrors:
    @pytest.mark.parametrize(
        "args, problem",
        [
            ((), "missing a required argument"),
            (("a", "b"), "too many positional arguments"),
        ],
    )
    def test_wrong_arguments_run_nothing_and_say_so(self, gsock, clients, args, problem):
        client = connect(clients, gsock, "sid-jane")
        assert client.call("alpha_echo", *args) is None
        line = gsock.wait_for_log(r"event 'alpha_echo' \(app alpha\).*wrong arguments.*").group(0)
        assert f"site {SITE}" in line and "user jane@example.com" in line and problem in line
        assert "Traceback" not in gsock.log()

    def test_values_pass_as_they_come_unless_the_handler_asks_for_type_checks(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        assert client.call("alpha_echo", 5)["text"] == 5  # as Frappe: annotations are not checked
        assert client.call("alpha_count", "3") is None  # check_types=True
        line = gsock.wait_for_log(r"event 'alpha_count' \(app alpha\).*wrong arguments.*").group(0)
        assert "argument 'n' must be int, got str" in line

    def test_numbers_are_checked_by_kind(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        assert client.call("alpha_count", 3, 0.5) == 1.5
        assert client.call("alpha_count", 3) == 3
        assert client.call("alpha_count", True) is None
        assert client.call("alpha_count", "3") is None

    def test_raising_handler_is_logged_and_the_next_one_runs(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        assert client.call("boom") == "survived"
        client.wait_for("after_boom")
        log = gsock.wait_for_log(r"handler alpha\.realtime\.handlers\.boom .*raised").group(0)
        assert "event 'boom' (app alpha) on site site1.local user Administrator" in log
        assert "RuntimeError: alpha handler exploded on purpose" in gsock.log()
        assert client.call("alpha_echo", "still here")["text"] == "still here"

    def test_handlers_of_one_event_run_in_order_and_the_first_result_acks(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        assert client.call("twice") == "second"
        client.wait_for("order", lambda args: args == (2,))
        assert client.events("order") == [(1,), (2,)]

    def test_unknown_event_acks_empty(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        assert client.call("no_such_event", 1, 2) is None


class TestSocketApi:
    def test_rooms_join_leave_emit_and_permission(self, gsock, app_web, clients):
        app_web.permissions.add(("Administrator", "Project", "P-1"))
        admin = connect(clients, gsock, "sid-admin")
        jane = connect(clients, gsock, "sid-jane")
        assert "project:P-1" in admin.call("project_subscribe", "P-1")
        assert "project:P-1" not in jane.call("project_subscribe", "P-1")
        call = app_web.calls_to("frappe.realtime.has_permission")[-1]
        assert call["headers"]["Cookie"] == "sid=sid-jane"
        jane.call("project_say", "P-1", "psst")
        admin.wait_for("project_said", lambda a: a[0]["text"] == "psst")
        assert admin.call("who_is_here", "P-1") == ["Administrator"]
        assert "project:P-1" not in admin.call("project_leave", "P-1")

    def test_state_lives_until_disconnect(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        assert client.call("state_get", "k") == "unset"
        client.call("state_set", "k", {"v": [1, 2]})
        assert client.call("state_get", "k") == {"v": [1, 2]}
        other = connect(clients, gsock, "sid-admin")
        assert other.call("state_get", "k") == "unset"
        client.disconnect()
        again = connect(clients, gsock, "sid-admin")
        assert again.call("state_get", "k") == "unset"

    def test_disconnect_handler_sees_the_socket(self, gsock, clients):
        watcher = connect(clients, gsock, "sid-admin")
        watcher.call("watch")
        leaver = connect(clients, gsock, "sid-jane")
        sid = leaver.sid
        leaver.disconnect()
        (left,) = watcher.wait_for("alpha_left")
        assert left == {"user": "jane@example.com", "sid": sid}


def test_broken_handler_module_stops_startup(tmp_path, redis_server, web):
    conf = {"redis_queue": redis_server.url, "webserver_host": "127.0.0.1"}
    bench = make_bench(tmp_path, conf, apps=("frappe", "broken"), copy_apps=("broken",))
    proc = GsocketProcess(bench).start(wait=False)
    assert proc.proc.wait(timeout=30) == 2
    log = proc.log()
    assert "realtime handlers of app 'broken' (broken.realtime.handlers) failed to import" in log
    assert "KeyError: 'retry'" in log and "Traceback" in log


IMPORT_CHECK = """
import sys
from gsocket.contract.frappe_shim import install_frappe_realtime
from gsocket.handlers.registry import Registry
registry = Registry()
install_frappe_realtime(registry)
from frappe.realtime import Socket, realtime
import frappe
assert realtime is registry
from gsocket.handlers.socket import Socket as GSocket
assert Socket is GSocket
print(getattr(frappe, "__gsocket_stub__", False), hasattr(frappe.realtime, "publish_realtime"))
"""


@pytest.mark.parametrize("with_frappe, expected", [(False, "True False"), (True, "False True")])
def test_frappe_realtime_import_with_and_without_frappe(with_frappe, expected):
    path = [str(REPO)]
    if with_frappe:
        path.append(str(REPO / "tests" / "fake_frappe"))
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == expected.split()


def test_decorator_returns_the_function_for_direct_tests():
    from gsocket.handlers.registry import Registry

    registry = Registry()

    def handler(socket, project: str) -> str:
        return project

    assert registry.on("x")(handler) is handler
    assert registry.handlers_for("x")[0].app == __name__.partition(".")[0]
    assert json.dumps(registry.events()) == '["x"]'


UNIT_TEST_OF_A_HANDLER = """
from gsocket.handlers.testing import FakeSocket, install_registry
install_registry()
from alpha.realtime.handlers import project_subscribe, project_say

socket = FakeSocket(user="jane@example.com", permissions={("Project", "P-1")})
assert "project:P-1" in project_subscribe(socket, "P-1")
assert "project:P-2" not in project_subscribe(socket, "P-2")
project_say(socket, "P-1", "hi")
(said,) = socket.events("project_said")
assert said.room == "project:P-1" and said.data == {"from": "jane@example.com", "text": "hi"}
print("ok")
"""


def test_an_app_author_unit_tests_a_handler_with_fake_socket():
    path = [str(REPO), str(REPO / "tests" / "fixture_apps" / "alpha")]
    out = subprocess.run(
        [sys.executable, "-c", UNIT_TEST_OF_A_HANDLER],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.stdout.strip() == "ok", out.stderr
