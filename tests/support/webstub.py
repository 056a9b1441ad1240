"""A stand-in for the Frappe web process, answering the realtime endpoints like Frappe does.

gsocket asks the web process who a client is and whether it may join a room (contract
sections 4.4, 6 and 9). Running a real Frappe for every test is far too slow, so this stub
serves those endpoints from plain tables the test fills in, in the answer shape of either
Frappe v16 (``has_permission``, socket secret, ``installed_apps``) or v15
(``can_subscribe_*``, no secret, no ``installed_apps``), and can misbehave on purpose
(down, slow, garbage) to test gsocket's error paths.

Statuses and bodies are those of the real web process (tests/realbench/test_standins.py
sends the same requests to both and compares): a Guest's ``user_type`` is ``null`` (so is a
token user's: Frappe reads it from session data a token login has not got), a dead
session answers as Guest with ``session_expired``, an unknown token is a 401, a refused
permission a bare 403 ``PermissionError``, a missing argument a 500 ``TypeError`` (develop's
``has_permission`` without ``name`` included), a method the version lacks a 417. The socket
secret is checked only while its Redis key exists, a behaviour of newer Frappe that neither
real bench of the lane has.

Like Frappe, it believes a ``sid`` cookie before an ``Authorization`` header (a token is only
looked at when the cookie gives no session) and sets ``sid`` on every answer: the session it
served, a new one for a token, ``Guest`` otherwise.  A client that keeps cookies between calls
made for different users would so carry one user's session into another's call; the tests
of gsocket's calls rely on that to catch it.

It runs in a thread of the test process (which is not gevent-patched) on a threaded WSGI
server, so one slow request never holds up the others.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

log = logging.getLogger("gsocket.tests.webstub")

Shape = Literal["v16", "v15"]
Mode = Literal["ok", "down", "slow", "garbage"]

SECRET_KEY = "socketio_auth_secret"
METHOD_PREFIX = "/api/method/"
RECORDED_HEADERS = (
    "Cookie",
    "Authorization",
    "X-Frappe-Site-Name",
    "X-Frappe-Socket-Secret",
    "Host",
    "Origin",
)
GUEST = "Guest"


def hostname(value: str | None) -> str | None:
    """Hostname part of a ``Host``-style value or URL (port and scheme dropped)."""
    if not value:
        return None
    netloc = urlsplit(value).netloc if "://" in value else value
    return urlsplit(f"//{netloc}").hostname


class _QuietHandler(WSGIRequestHandler):
    """Send werkzeug's per-request access log to debug level instead of stderr noise."""

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("%s " + message, self.address_string(), *args)


class WebStub:
    """The fake Frappe web process. Mutate the public tables at any time, even while serving.

    Permission rule: a document ``(user, doctype, name)`` is allowed when that exact triple
    or the doctype-wide ``(user, doctype, None)`` is in ``permissions``; a doctype only when
    ``(user, doctype, None)`` is.
    """

    def __init__(self, shape: Shape = "v16", redis_url: str | None = None) -> None:
        self.shape: Shape = shape
        self.redis_url = redis_url
        self.sessions: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.users: dict[str, str] = {}
        self.installed_apps: dict[str, list[str]] = {}
        self.permissions: set[tuple[str, str, str | None]] = set()
        self.mode: Mode = "ok"
        self.slow_seconds: float = 3.0
        # Frappe answers 417 (ValidationError, "has no attribute") for a whitelisted method that
        # does not exist on the installed version; some deployments turn that into 404.
        self.missing_method_status: int = 417
        self.calls: list[dict[str, Any]] = []
        self._minted = 0
        self._calls_cond = threading.Condition()
        self._stopping = threading.Event()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._redis: redis.Redis | None = None

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (only valid after ``start()``)."""
        if self._server is None:
            raise RuntimeError("WebStub is not started")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """Base URL ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Serve on a kernel-chosen loopback port in a daemon thread; return the base URL."""
        if self._server is not None:
            return self.url
        self._stopping.clear()
        self._server = make_server(
            "127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"webstub-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving; releases requests sleeping in "slow" mode at once."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def __enter__(self) -> WebStub:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- helpers for tests -------------------------------------------------------------

    def _redis_client(self) -> redis.Redis:
        if self.redis_url is None:
            raise RuntimeError("WebStub has no redis_url")
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.redis_url, socket_connect_timeout=1, socket_timeout=2
            )
        return self._redis

    def set_secret(self, value: str | None) -> None:
        """Write (or with ``None`` delete) the ``socketio_auth_secret`` key, as Frappe does."""
        client = self._redis_client()
        if value is None:
            client.delete(SECRET_KEY)
        else:
            client.set(SECRET_KEY, value)

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        """Recorded calls whose Frappe method name ends with ``method``."""
        with self._calls_cond:
            return [c for c in self.calls if (c["method"] or "").endswith(method)]

    def wait_for_call(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Block until a recorded call matches ``predicate`` (past calls count too)."""
        with self._calls_cond:
            found: list[dict[str, Any]] = []

            def matched() -> bool:
                found[:] = [c for c in self.calls if predicate(c)][:1]
                return bool(found)

            if not self._calls_cond.wait_for(matched, timeout=timeout):
                raise TimeoutError(f"no matching web call within {timeout}s; calls: {self.calls}")
            return found[0]

    # ---- request handling -------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        response = self._respond(request)
        if request.path.startswith(METHOD_PREFIX):
            response.set_cookie("sid", self._session(request)[1], path="/", httponly=True)
        return response(environ, start_response)

    def _record(self, request: Request) -> dict[str, Any]:
        path = request.path
        method = path[len(METHOD_PREFIX) :] if path.startswith(METHOD_PREFIX) else None
        headers = {h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers}
        call = {
            "path": path,
            "method": method,
            "http_method": request.method,
            "args": request.args.to_dict(),
            "headers": headers,
            "site": self._site(request),
            "time": time.monotonic(),
        }
        with self._calls_cond:
            self.calls.append(call)
            self._calls_cond.notify_all()
        return call

    @staticmethod
    def _site(request: Request) -> str | None:
        return hostname(request.headers.get("X-Frappe-Site-Name")) or hostname(
            request.headers.get("Host")
        )

    def _respond(self, request: Request) -> Response:
        call = self._record(request)
        mode = self.mode
        if mode == "down":
            return Response("<html><body>502 Bad Gateway</body></html>", 502, mimetype="text/html")
        if mode == "slow" and self._stopping.wait(self.slow_seconds):
            return Response("stopping", 503)
        if mode == "garbage":
            return Response("<html>not json at all", 200, mimetype="application/json")
        if call["method"] is None:
            return _json({"message": "Page not found"}, 404)
        try:
            return self._dispatch(call["method"], request)
        except redis.RedisError as exc:
            name = type(exc).__name__
            return _error(f"redis.exceptions.{name}: {exc}", name, 500)

    def _dispatch(self, method: str, request: Request) -> Response:
        endpoints: dict[str, Callable[[Request], Response]] = {
            "frappe.realtime.get_user_info": self._get_user_info,
        }
        if self.shape == "v16":
            endpoints["frappe.realtime.has_permission"] = self._has_permission
        else:
            endpoints["frappe.realtime.can_subscribe_doc"] = self._can_subscribe_doc
            endpoints["frappe.realtime.can_subscribe_doctype"] = self._can_subscribe_doctype
        auth = request.headers.get("Authorization")
        if auth and auth not in self.tokens:
            return _bare_error("AuthenticationError", 401)
        handler = endpoints.get(method)
        if handler is not None:
            return handler(request)
        return self._missing_method(method)

    def _missing_method(self, method: str) -> Response:
        """Frappe's answer for a method it cannot find: 417 ``ValidationError`` by default."""
        module, _, attr = method.rpartition(".")
        reason = (
            f"module '{module}' has no attribute '{attr}'"
            if method.startswith("frappe.realtime.")
            else f"No module named '{module}'"
        )
        text = f"Failed to get method for command {method} with {reason}"
        status = self.missing_method_status
        exc_type = "DoesNotExistError" if status == 404 else "ValidationError"
        return _frappe_error(exc_type, text, status)

    def _sid(self, request: Request) -> str | None:
        return _sid_cookie(request.headers.get("Cookie")) or request.args.get("sid")

    def _session(self, request: Request) -> tuple[str, str, bool]:
        """Resolve the caller like Frappe: ``(user, sid, by_token)``.

        The session of the ``sid`` cookie (or ``sid`` argument) first; only when that gives
        Guest, the ``Authorization`` token, which opens a session of its own (Frappe's
        ``validate_api_key_secret`` sets the user only while the session's is Guest).  An
        unknown session is not an error in Frappe: it falls back to Guest; an unknown token
        never gets here, it is refused with a 401 before any method runs.  Resolved once per
        request (the answer's cookie names the same session).
        """
        known = request.environ.get("webstub.session")
        if known is None:
            known = request.environ["webstub.session"] = self._resolve(request)
        return known

    def _resolve(self, request: Request) -> tuple[str, str, bool]:
        sid = self._sid(request)
        if sid and sid != GUEST and sid in self.sessions:
            return self.sessions[sid], sid, False
        user = self.tokens.get(request.headers.get("Authorization") or "", GUEST)
        if user == GUEST:
            return GUEST, GUEST, False
        with self._calls_cond:
            self._minted += 1
            sid = f"sid-token-{self._minted}"
            self.sessions[sid] = user
        return user, sid, True

    def _user(self, request: Request) -> str:
        return self._session(request)[0]

    def _user_type(self, user: str) -> str | None:
        """Frappe's session data has no user type for Guest: ``null`` in the answer."""
        if user == GUEST:
            return None
        return self.users.get(user, "System User")

    def _get_user_info(self, request: Request) -> Response:
        user, _, by_token = self._session(request)
        # Frappe reads user_type from the session's data, which a token login does not have.
        info: dict[str, Any] = {
            "user": user,
            "user_type": None if by_token else self._user_type(user),
        }
        sid = None if by_token else self._sid(request)
        expired = {"session_expired": 1} if sid not in (None, GUEST, *self.sessions) else {}
        if self.shape == "v15":
            return _json({**expired, "message": info})
        if self.redis_url is not None:
            secret = self._redis_client().get(SECRET_KEY)
            provided = request.headers.get("X-Frappe-Socket-Secret")
            if secret is not None and secret.decode() != provided:
                return _json({"message": {}})
        site = self._site(request) or ""
        info["installed_apps"] = list(self.installed_apps.get(site, ["frappe"]))
        return _json({**expired, "message": info})

    def _allowed(self, user: str, doctype: str, name: str | None) -> bool:
        if (user, doctype, None) in self.permissions:
            return True
        return name is not None and (user, doctype, name) in self.permissions

    def _permission_answer(self, request: Request, function: str, *params: str) -> Response:
        """Call the permission method ``function(*params)`` as Frappe would.

        Every parameter is required, as in Frappe's signatures; an empty value counts as
        given (develop's Node server sends ``name=""`` for a DocType check).
        """
        missing = [p for p in params if p not in request.args]
        if missing:
            return _missing_arguments(function, missing)
        doctype = request.args[params[0]]
        name = (request.args[params[1]] or None) if len(params) > 1 else None
        if self._allowed(self._user(request), doctype, name):
            return _json({"message": True})
        return _bare_error("PermissionError", 403)

    def _has_permission(self, request: Request) -> Response:
        return self._permission_answer(request, "has_permission", "doctype", "name")

    def _can_subscribe_doc(self, request: Request) -> Response:
        return self._permission_answer(request, "can_subscribe_doc", "doctype", "docname")

    def _can_subscribe_doctype(self, request: Request) -> Response:
        return self._permission_answer(request, "can_subscribe_doctype", "doctype")


def _sid_cookie(header: str | None) -> str | None:
    if not header:
        return None
    cookie = SimpleCookie()
    try:
        cookie.load(header)
    except CookieError:
        return None
    morsel = cookie.get("sid")
    return morsel.value if morsel is not None else None


def _json(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")


def _error(exception: str, exc_type: str, status: int, **extra: Any) -> Response:
    """An error answer of Frappe's web process: the exception, its type and a traceback."""
    traceback = json.dumps([f"Traceback (most recent call last):\n{exception}\n"])
    body = {"exception": exception, "exc_type": exc_type, "exc": traceback, **extra}
    return _json(body, status)


def _bare_error(exc_type: str, status: int) -> Response:
    """A Frappe exception raised without a message (``raise frappe.PermissionError``)."""
    return _error(f"frappe.exceptions.{exc_type}", exc_type, status)


def _missing_arguments(function: str, missing: list[str]) -> Response:
    """Frappe's 500 for a whitelisted method called without a required argument."""
    names = " and ".join(f"'{m}'" for m in missing)
    plural = "argument" if len(missing) == 1 else "arguments"
    exception = f"TypeError: {function}() missing {len(missing)} required positional {plural}: "
    return _error(exception + names, "TypeError", 500)


def _frappe_error(exc_type: str, text: str, status: int) -> Response:
    """``frappe.throw(text, exc_type)``: the exception with its text, and the message shown."""
    message = {
        "message": text,
        "title": "Message",
        "indicator": "red",
        "raise_exception": 1,
        "__frappe_exc_id": secrets.token_hex(28),
    }
    messages = json.dumps([json.dumps(message)])
    exception = f"frappe.exceptions.{exc_type}: {text}"
    return _error(exception, exc_type, status, _server_messages=messages)
