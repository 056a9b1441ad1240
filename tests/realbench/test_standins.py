"""The stand-ins of the web process answer as the real one of the same version does.

The fast tests run gsocket against tests/support/webstub.py (shape ``v15`` or ``v16``) and the
demo against gsocket/demo/web.py.  They are only worth something while they say what Frappe
says, so here the same requests go to each stand-in and to the real web process of its
version, and the statuses and bodies must be equal, apart from what changes on every answer
(tracebacks, ``__frappe_exc_id``).  Who may read what is data: each stand-in's tables are
filled with what the real site's roles allow for the few documents asked about; how a
decision, a refusal, a missing argument or a missing method is answered is behaviour.

The demo (develop's shape) is compared with develop only.  Not compared: a Guest asking
``can_subscribe_doc`` about a document that does not exist (v15 answers 404
``DoesNotExistError``; the stand-ins keep no documents), and the demo's rights for a Website
User on ToDo (the demo's own rule is "only what they own").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.test import Client

from gsocket.demo.ports import free_port
from gsocket.demo.web import DemoWeb
from tests.support.realbench import SITE, RealBench
from tests.support.webstub import WebStub

ADMIN = "Administrator"
USER = "rt-user@example.com"
CUSTOMER = "customer@example.com"
TOKEN = "token gsocketkey:gsocketsecret"
METHOD = "/api/method/frappe.realtime."

Ask = Callable[[str, dict[str, str], dict[str, str]], tuple[int, Any]]


class World:
    """What the requests refer to: sessions of real users and a document, on the real site."""

    def __init__(self, bench: RealBench) -> None:
        for email in (USER, CUSTOMER):
            bench.ensure_user(email, "Website User")
        key, secret = TOKEN.split(" ", 1)[1].split(":")
        self.todo = bench.in_site(
            SITE,
            f"user = frappe.get_doc('User', {ADMIN!r})\n"
            f"user.api_key = {key!r}\n"
            f"user.api_secret = {secret!r}\n"
            "user.save(ignore_permissions=True)\n"
            "todo = frappe.get_doc({'doctype': 'ToDo', 'description': 'stand-in probe'})\n"
            "todo.insert()\n"
            "print(todo.name)",
        ).strip()
        self.sids = {user: bench.login(user, site=SITE) for user in (ADMIN, USER, CUSTOMER)}
        self.installed_apps = json.loads(
            bench.in_site(SITE, "import json\nprint(json.dumps(frappe.get_installed_apps()))")
        )


@pytest.fixture(scope="module")
def world(real_bench: RealBench) -> World:
    return World(real_bench)


def cookie(sid: str) -> dict[str, str]:
    return {"Cookie": f"sid={sid}"}


def user_info_cases(w: World) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    """get_user_info: every kind of credential gsocket forwards, good and bad."""
    ui = METHOD + "get_user_info"
    return {
        "cookie of a System User": (ui, cookie(w.sids[ADMIN]), {}),
        "cookie of a Website User": (ui, cookie(w.sids[USER]), {}),
        "sid as a query argument": (ui, {}, {"sid": w.sids[ADMIN]}),
        "no cookie at all": (ui, {}, {}),
        "the Guest cookie": (ui, cookie("Guest"), {}),
        "a session that does not exist": (ui, cookie("0123456789abcdef0123"), {}),
        "a wrong socket secret": (
            ui,
            {**cookie(w.sids[ADMIN]), "X-Frappe-Socket-Secret": "wrong"},
            {},
        ),
        "an API token": (ui, {"Authorization": TOKEN}, {}),
        "an unknown API token": (ui, {"Authorization": "token nokey:nosecret"}, {}),
        "an unknown bearer token": (ui, {"Authorization": "Bearer nothing"}, {}),
    }


def develop_permission_cases(w: World) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    hp = METHOD + "has_permission"
    admin, user = cookie(w.sids[ADMIN]), cookie(w.sids[USER])
    return {
        "a document, allowed": (hp, admin, {"doctype": "ToDo", "name": w.todo}),
        "a DocType with name='', allowed": (hp, admin, {"doctype": "ToDo", "name": ""}),
        "a DocType without name (HTTP 500 on develop)": (hp, admin, {"doctype": "ToDo"}),
        "no arguments": (hp, admin, {}),
        "a document, refused": (hp, user, {"doctype": "User", "name": ADMIN}),
        "a Guest, refused": (hp, cookie("Guest"), {"doctype": "ToDo", "name": ""}),
        "can_subscribe_doc, absent on develop": (
            METHOD + "can_subscribe_doc",
            admin,
            {"doctype": "ToDo", "docname": w.todo},
        ),
        "can_subscribe_doctype, absent on develop": (
            METHOD + "can_subscribe_doctype",
            admin,
            {"doctype": "ToDo"},
        ),
    }


def v15_permission_cases(w: World) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    doc, doctype = METHOD + "can_subscribe_doc", METHOD + "can_subscribe_doctype"
    admin, user = cookie(w.sids[ADMIN]), cookie(w.sids[USER])
    return {
        "a document, allowed": (doc, admin, {"doctype": "ToDo", "docname": w.todo}),
        "a document, refused": (doc, user, {"doctype": "User", "docname": ADMIN}),
        "a document without docname": (doc, admin, {"doctype": "ToDo"}),
        "a document, no arguments": (doc, admin, {}),
        "a DocType, allowed": (doctype, user, {"doctype": "ToDo"}),
        "a DocType, Guest refused": (doctype, cookie("Guest"), {"doctype": "ToDo"}),
        "a DocType, no arguments": (doctype, admin, {}),
        "has_permission, absent on v15": (hp := METHOD + "has_permission", admin, {}),
        "has_permission with arguments, absent on v15": (
            hp,
            admin,
            {"doctype": "ToDo", "name": w.todo},
        ),
    }


def normalised(status: int, text: str, fixed_apps: bool = False) -> tuple[int, Any]:
    """Status and JSON body without what differs between two answers of the same server."""
    body = json.loads(text)
    if "exc" in body:
        body["exc"] = "<traceback>"
    if "_server_messages" in body:
        messages = [json.loads(m) for m in json.loads(body["_server_messages"])]
        for message in messages:
            message.pop("__frappe_exc_id", None)
        body["_server_messages"] = messages
    message = body.get("message")
    if fixed_apps and isinstance(message, dict) and "installed_apps" in message:
        message["installed_apps"] = "frappe" in message["installed_apps"]
    return status, body


def over_http(base_url: str, fixed_apps: bool = False) -> Ask:
    def ask(path: str, headers: dict[str, str], params: dict[str, str]) -> tuple[int, Any]:
        response = requests.get(
            base_url + path, headers={"Host": SITE, **headers}, params=params, timeout=60
        )
        return normalised(response.status_code, response.text, fixed_apps)

    return ask


def over_wsgi(app: Any, fixed_apps: bool = False) -> Ask:
    client = Client(app, use_cookies=False)

    def ask(path: str, headers: dict[str, str], params: dict[str, str]) -> tuple[int, Any]:
        response = client.get(
            path, headers={"Host": SITE, **headers}, query_string=params, base_url=f"http://{SITE}"
        )
        return normalised(response.status_code, response.get_data(as_text=True), fixed_apps)

    return ask


def disagreements(
    cases: dict[str, tuple[str, dict[str, str], dict[str, str]]], real: Ask, standin: Ask
) -> dict[str, dict[str, Any]]:
    found = {}
    for label, (path, headers, params) in cases.items():
        want, got = real(path, headers, params), standin(path, headers, params)
        if want != got:
            found[label] = {"real": want, "stand-in": got}
    return found


def stub_for(bench: RealBench, w: World) -> WebStub:
    """The stub in the shape of the bench's version, holding the bench's users and rights."""
    stub = WebStub("v15" if bench.version == "v15" else "v16", redis_url=bench.redis_queue_url)
    for user, sid in w.sids.items():
        stub.sessions[sid] = user
    stub.users.update({USER: "Website User", CUSTOMER: "Website User"})
    stub.tokens[TOKEN] = ADMIN
    stub.installed_apps[SITE] = w.installed_apps
    # ToDo: Administrator reads all, role All (every Website User) the DocType; User: neither.
    stub.permissions |= {(ADMIN, "ToDo", None), (USER, "ToDo", None)}
    return stub


def demo_cases(w: World) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    """The develop cases the demo's three users can be asked (it has no API keys)."""
    cases = user_info_cases(w)
    del cases["an API token"]  # every token is unknown to the demo
    cases["cookie of a Website User"] = (METHOD + "get_user_info", cookie(w.sids[CUSTOMER]), {})
    permission = develop_permission_cases(w)
    cases.update(
        (label, case) for label, case in permission.items() if label != "a document, refused"
    )
    cases["a document, refused"] = (
        METHOD + "has_permission",
        cookie(w.sids[CUSTOMER]),
        {"doctype": "User", "name": ADMIN},
    )
    return cases


def test_each_standin_answers_as_the_real_web_process_of_its_version(
    real_bench: RealBench, world: World, tmp_path: Path
) -> None:
    real = over_http(real_bench.web_url)
    found: dict[str, Any] = {}
    with stub_for(real_bench, world) as stub:
        permission_cases = (
            v15_permission_cases if real_bench.version == "v15" else develop_permission_cases
        )
        cases = {**user_info_cases(world), **permission_cases(world)}
        found[f"webstub {stub.shape}"] = disagreements(cases, real, over_http(stub.url))
    if real_bench.version == "develop":
        # The demo answers in develop's shape, with a fixed list of installed apps.
        demo = DemoWeb(SITE, free_port(), free_port(), real_bench.redis_queue_url, tmp_path)
        demo.sessions.update({sid: user for user, sid in world.sids.items() if user != USER})
        try:
            found["demo web"] = disagreements(
                demo_cases(world),
                over_http(real_bench.web_url, fixed_apps=True),
                over_wsgi(demo.wsgi, fixed_apps=True),
            )
        finally:
            demo.stop()
    assert all(not cases for cases in found.values()), json.dumps(found, indent=1)
