"""The demo's web process: the slice of a Frappe web server that gsocket depends on, and the page.

On a bench gsocket owns no users: it asks the web process who a cookie belongs to and what that
user may read.  This module answers those calls the way Frappe develop does (``installed_apps``
in ``get_user_info``, ``has_permission(doctype, name)`` with ``name`` required, the same
statuses and error bodies; tests/realbench/test_standins.py compares it with the real one) for
three fixed demo users, checks the socket secret as newer Frappe does while its Redis key
exists, logs
browsers in with a ``sid`` cookie like Frappe's login, runs a background job that reports its
progress through Redis as ``frappe.publish_progress`` does, and serves the demo page.

It serves on ``127.0.0.1`` only: the demo has no passwords.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gevent
import redis
from gevent.pool import Group
from gevent.pywsgi import WSGIServer
from werkzeug.wrappers import Request, Response

from gsocket.contract.publish import Publisher

log = logging.getLogger("gsocket.demo.web")

STATIC = Path(__file__).resolve().parent / "static"
ASSETS_PREFIX = "/assets/gsocket_demo/"
METHOD_PREFIX = "/api/method/"
SECRET_KEY = "socketio_auth_secret"
GUEST = "Guest"

JOB_STEPS = 10
JOB_STEP_SECONDS = 0.3

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class DemoUser:
    """A user of the demo site.

    :param name: the user name (Frappe's ``User.name``).
    :param user_type: ``System User`` (desk) or ``Website User`` (portal, Guests).
    :param label: how the login selector shows the user.
    """

    name: str
    user_type: str
    label: str


USERS: tuple[DemoUser, ...] = (
    DemoUser("Administrator", "System User", "Administrator (System User: reads everything)"),
    DemoUser(
        "customer@example.com",
        "Website User",
        "customer@example.com (Website User: reads only the issue they raised)",
    ),
    DemoUser(GUEST, "Website User", "Guest (not logged in)"),
)
USER_TYPES = {user.name: user.user_type for user in USERS}

DEMO_DOCTYPE = "Issue"
DEMO_DOCNAME = "ISS-0001"
OWNED_DOCUMENTS = {"customer@example.com": frozenset({(DEMO_DOCTYPE, DEMO_DOCNAME)})}


def may_read(user: str, doctype: str, name: str | None) -> bool:
    """The demo's permission rule: System Users read everything, others only what they own."""
    if user != GUEST and USER_TYPES.get(user) == "System User":
        return True
    return name is not None and (doctype, name) in OWNED_DOCUMENTS.get(user, frozenset())


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")


def _error(exception: str, exc_type: str, status: int, **extra: Any) -> Response:
    """An error answer of Frappe's web process: the exception, its type, a traceback."""
    traceback = json.dumps([f"Traceback (most recent call last):\n{exception}\n"])
    return _json({"exception": exception, "exc_type": exc_type, "exc": traceback, **extra}, status)


def _bare_error(exc_type: str, status: int) -> Response:
    """A Frappe exception raised without a message (``raise frappe.PermissionError``)."""
    return _error(f"frappe.exceptions.{exc_type}", exc_type, status)


def _frappe_error(exc_type: str, message: str, status: int) -> Response:
    """``frappe.throw(message, exc_type)``: the exception with its text and the message shown."""
    shown = {
        "message": message,
        "title": "Message",
        "indicator": "red",
        "raise_exception": 1,
        "__frappe_exc_id": secrets.token_hex(28),
    }
    messages = json.dumps([json.dumps(shown)])
    exception = f"frappe.exceptions.{exc_type}: {message}"
    return _error(exception, exc_type, status, _server_messages=messages)


def _missing_method(method: str) -> Response:
    """Frappe's 417 for a method it cannot find (``can_subscribe_doc`` on develop, say)."""
    module, _, attr = method.rpartition(".")
    text = f"Failed to get method for command {method} with module '{module}' has no attribute "
    return _frappe_error("ValidationError", f"{text}'{attr}'", 417)


def _missing_arguments(function: str, missing: list[str]) -> Response:
    """Frappe's 500 for a whitelisted method called without a required argument."""
    names = " and ".join(f"'{m}'" for m in missing)
    plural = "argument" if len(missing) == 1 else "arguments"
    exception = f"TypeError: {function}() missing {len(missing)} required positional {plural}: "
    return _error(exception + names, "TypeError", 500)


class DemoWeb:
    """The demo web process, serving one site on ``127.0.0.1:port``.

    :param site: the demo site (gsocket's namespace ``/<site>``).
    :param port: the port to serve on, ``webserver_port`` of the demo bench.
    :param socketio_port: where the page finds gsocket (``socketio_port``).
    :param redis_url: the demo bench's ``redis_queue``.
    :param bench_path: the demo bench, shown on the page for ``gsocket publish``.
    :param restart_realtime: called by the page's "restart gsocket" button; ``None`` hides it.
    """

    def __init__(
        self,
        site: str,
        port: int,
        socketio_port: int,
        redis_url: str,
        bench_path: Path,
        restart_realtime: Callable[[], None] | None = None,
    ) -> None:
        self.site = site
        self.port = port
        self.socketio_port = socketio_port
        self.redis_url = redis_url
        self.bench_path = bench_path
        self.restart_realtime = restart_realtime
        self.sessions: dict[str, str] = {}
        self.redis = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.jobs = Group()
        self._server: WSGIServer | None = None
        self._assets = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        self._routes: dict[str, Callable[[Request], Response]] = {
            "login": self.login,
            "logout": self.logout,
            "frappe.realtime.get_user_info": self.get_user_info,
            "frappe.realtime.has_permission": self.has_permission,
            "gsocket_demo.api.start_job": self.start_job,
            "gsocket_demo.api.restart_realtime": self.restart,
        }

    @property
    def url(self) -> str:
        """The URL the browser opens."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen on ``127.0.0.1:port``.

        :raises OSError: when the port is taken.
        """
        self._server = WSGIServer(("127.0.0.1", self.port), self.wsgi, log=None, error_log=log)
        self._server.start()
        log.info("demo web process listening on %s", self.url)

    def stop(self) -> None:
        """Stop the running jobs and stop serving."""
        self.jobs.kill(block=True, timeout=2)
        if self._server is not None:
            self._server.stop(timeout=2)
        self.redis.close()

    # ---- requests ---------------------------------------------------------------------

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application."""
        request = Request(environ)
        return self.respond(request)(environ, start_response)

    def respond(self, request: Request) -> Response:
        """Route one request."""
        path = request.path
        if path == "/":
            return self.page(request)
        if path.startswith(ASSETS_PREFIX):
            return self.asset(path[len(ASSETS_PREFIX) :])
        if path.startswith(METHOD_PREFIX):
            if request.headers.get("Authorization"):
                # The demo has no API keys; Frappe refuses a token it does not know.
                return _bare_error("AuthenticationError", 401)
            method = path[len(METHOD_PREFIX) :]
            route = self._routes.get(method)
            if route is not None:
                return route(request)
            return _missing_method(method)
        return _frappe_error("DoesNotExistError", f"{path} not found", 404)

    @staticmethod
    def sid_of(request: Request) -> str:
        """The session of a request: its ``sid`` cookie, else a ``sid`` argument, as in Frappe."""
        return request.cookies.get("sid") or request.args.get("sid") or GUEST

    def user_of(self, request: Request) -> str:
        """The user of a request's session; like Frappe, an unknown session is Guest."""
        return self.sessions.get(self.sid_of(request), GUEST)

    def session_expired(self, request: Request) -> bool:
        """Whether the request carries a session that does not exist (anymore)."""
        return self.sid_of(request) not in (GUEST, *self.sessions)

    def page(self, request: Request) -> Response:
        """The demo page, with the boot data the desk would get (site, user, socketio_port)."""
        user = self.user_of(request)
        boot = {
            "sitename": self.site,
            "socketio_port": self.socketio_port,
            "user": user,
            "user_type": USER_TYPES.get(user, "Website User"),
            "users": [asdict(u) for u in USERS],
            "doc": {"doctype": DEMO_DOCTYPE, "name": DEMO_DOCNAME},
            "bench": str(self.bench_path),
            "can_restart": self.restart_realtime is not None,
        }
        # Escaped for an inline <script>: no "</script>" can come out of the JSON.
        boot_json = json.dumps(boot).replace("<", "\\u003c")
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        response = Response(html.replace("__BOOT_JSON__", boot_json), mimetype="text/html")
        if "sid" not in request.cookies:
            # Frappe gives every visitor a Guest session cookie; gsocket needs a cookie to connect.
            response.set_cookie("sid", GUEST, path="/", httponly=True, samesite="Lax")
        return response

    def asset(self, name: str) -> Response:
        """A file of ``gsocket/demo/static`` (looked up by exact name, never by path)."""
        path = self._assets.get(name)
        if path is None:
            return Response("not found", 404)
        mimetypes = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
        return Response(
            path.read_bytes(),
            mimetype=mimetypes.get(path.suffix, "text/plain"),
            headers={"Cache-Control": "no-cache"},
        )

    def login(self, request: Request) -> Response:
        """``POST usr=<user>``: start a session like Frappe's login (no passwords in a demo)."""
        if request.method != "POST":
            return _frappe_error("ValidationError", "login needs POST", 405)
        user = request.form.get("usr", "")
        if user == GUEST:
            return self.logout(request)
        if user not in USER_TYPES:
            return _frappe_error("AuthenticationError", f"unknown demo user {user!r}", 401)
        sid = secrets.token_hex(16)
        self.sessions[sid] = user
        response = _json({"message": "Logged In", "home_page": "/"})
        response.set_cookie("sid", sid, path="/", httponly=True, samesite="Lax")
        log.info("%s logged in", user)
        return response

    def logout(self, request: Request) -> Response:
        """End the session; the browser is a Guest again."""
        self.sessions.pop(request.cookies.get("sid", ""), None)
        response = _json({"message": "Logged Out"})
        response.set_cookie("sid", GUEST, path="/", httponly=True, samesite="Lax")
        return response

    def get_user_info(self, request: Request) -> Response:
        """Who holds this cookie.

        While the socket secret exists in Redis only callers that send it (gsocket) are
        answered, as newer Frappe does; Frappe develop and v15 have no secret and answer all.
        """
        secret = self.redis.get(SECRET_KEY)
        if secret and request.headers.get("X-Frappe-Socket-Secret") != secret.decode():
            return _json({"message": {}})
        user = self.user_of(request)
        info = {
            "user": user,
            "user_type": None if user == GUEST else USER_TYPES[user],
            "installed_apps": ["frappe", "gsocket_demo"],
        }
        expired = {"session_expired": 1} if self.session_expired(request) else {}
        return _json({**expired, "message": info})

    def has_permission(self, request: Request) -> Response:
        """May this cookie's user read the document (or, with ``name=""``, the DocType)?

        Both arguments are required, as in Frappe develop's ``has_permission(doctype, name)``.
        """
        missing = [arg for arg in ("doctype", "name") if arg not in request.args]
        if missing:
            return _missing_arguments("has_permission", missing)
        user = self.user_of(request)
        if may_read(user, request.args["doctype"], request.args["name"] or None):
            return _json({"message": True})
        return _bare_error("PermissionError", 403)

    def start_job(self, request: Request) -> Response:
        """Enqueue the demo job for this user; it reports progress through Redis."""
        if request.method != "POST":
            return _frappe_error("ValidationError", "start_job needs POST", 405)
        user = self.user_of(request)
        task_id = secrets.token_hex(5)
        self.jobs.spawn(self.run_job, user, task_id)
        return _json({"message": {"task_id": task_id}})

    def run_job(self, user: str, task_id: str) -> None:
        """A stand-in for a background worker: work in steps, publishing progress as it goes.

        Like a job calling ``frappe.publish_progress``, the events go to the room of the user
        who started it, through Redis and gsocket; the web process never touches a socket.
        """
        publisher = Publisher(self.redis_url, self.site, session_user=user, client=self.redis)
        try:
            for step in range(1, JOB_STEPS + 1):
                gevent.sleep(JOB_STEP_SECONDS)
                publisher.publish_progress(
                    step * 100 / JOB_STEPS,
                    title="Demo job",
                    description=f"Job {task_id}: step {step} of {JOB_STEPS}",
                )
            publisher.publish_to_user(
                user, "msgprint", {"message": f"Job {task_id} finished", "title": "Demo job"}
            )
        except redis.RedisError as e:
            log.error("demo job %s could not publish: %s", task_id, e)

    def restart(self, request: Request) -> Response:
        """Restart gsocket, as an operator would, so the page can show itself reconnecting."""
        if request.method != "POST" or self.restart_realtime is None:
            return _frappe_error("ValidationError", "restart needs POST on a demo runner", 405)
        gevent.spawn(self.restart_realtime)
        return _json({"message": "restarting"}, 202)
