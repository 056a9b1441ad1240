"""Connection checks: who may open ``/<site>``, in the Node server's order (contract section 4).

1. the namespace must be the site resolved from the request headers;
2. the Origin's host must be the Host's host (no cross-site websocket hijacking);
3. the client must present a ``sid`` cookie or an ``Authorization`` header;
4. the web process must recognise that credential (``get_user_info``).

Each refusal carries a short reason (for metrics) and a message the client sees in its
CONNECT_ERROR.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from werkzeug.http import parse_cookie

from gsocket.config import Config
from gsocket.contract.sites import hostname_of, origin_matches_host, resolve_site, resolve_site_from
from gsocket.contract.webclient import Credential, Unauthorized, WebClient, WebUnavailable
from gsocket.protocol.headers import remember_short

#: Characters of a header value quoted in a log line: enough to recognise it, and a client's
#: 64 KiB header does not become a 64 KiB log line.
SHOWN_CHARS = 120


def shown(value: object) -> str:
    """``value`` quoted for a log line: repr (so a control character stays visible and on one
    line), cut to :data:`SHOWN_CHARS`."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...(cut)"


@remember_short(256)
def _origin_web_url(origin: str, developer_port: int | None) -> str | None:
    """The web process's base URL for ``origin`` (with ``developer_port`` in developer mode),
    or ``None`` when it is not one http(s) origin; remembered, as every desk of a site sends
    the same Origin."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "," in origin
        or parts.username is not None
        or parts.path not in ("", "/")
    ):
        return None
    if developer_port is not None:
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{parts.scheme}://{host}:{developer_port}"
    netloc = parts.netloc if port is not None else parts.netloc.rstrip(":")
    return f"{parts.scheme}://{netloc}"


class Refused(Exception):
    """A connection attempt that must not succeed.

    :param reason: a short, fixed token for metrics and logs (``invalid_origin`` ...).
    :param message: what the client is told.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Identity:
    """Who a socket is, fixed at connect.

    :param site: the site (namespace without the slash).
    :param user: the user name, ``"Guest"`` for anonymous visitors.
    :param user_type: ``"System User"``, ``"Website User"`` ...
    :param installed_apps: apps installed on the site; handlers of other apps never run.
    :param credential: the client's own credential, for permission calls made on its behalf.
    :param web_url: base URL of the web process for this connection.
    """

    site: str
    user: str
    user_type: str
    installed_apps: tuple[str, ...]
    credential: Credential
    web_url: str

    @property
    def is_guest(self) -> bool:
        """Whether the socket is an anonymous visitor's."""
        return self.user == "Guest"


def credential_from(environ: Mapping[str, Any]) -> Credential | None:
    """Extract the client's credential: an ``Authorization`` header, else the ``sid`` cookie."""
    authorization = environ.get("HTTP_AUTHORIZATION")
    if authorization:
        return Credential(authorization=authorization)
    sid = parse_cookie(environ.get("HTTP_COOKIE", "")).get("sid")
    if sid:
        return Credential(sid=sid)
    return None


def no_credentials_message(environ: Mapping[str, Any]) -> str:
    """The Node server's words for a client that presented no credential.

    Node refuses every handshake without a ``Cookie`` header with ``No cookie transmitted.``,
    even one that carries an ``Authorization`` header; gsocket accepts those token clients
    (the user documentation promises them), so it says Node's words only when neither is
    there, and Node's other words for a ``Cookie`` header without ``sid``.
    """
    if not environ.get("HTTP_COOKIE"):
        return "No cookie transmitted."
    return "No authentication method used. Use cookie or authorization header."


class Authenticator:
    """Runs the connection checks for one server.

    :param config: the bench configuration.
    :param web: client of the web process.
    :param installed_apps_of: fallback source of a site's installed apps, for Frappe v15 whose
        ``get_user_info`` does not name them.
    """

    def __init__(
        self,
        config: Config,
        web: WebClient,
        installed_apps_of: Callable[[str], tuple[str, ...]],
    ) -> None:
        self.config = config
        self.web = web
        self.installed_apps_of = installed_apps_of

    def web_url(self, environ: Mapping[str, Any]) -> str:
        """The web process's base URL for this connection (contract section 4.5).

        ``webserver_host`` when configured (:attr:`Config.web_url`), else the client's
        Origin, with ``webserver_port`` in developer mode.

        :raises Refused: the Origin is not one http(s) origin (a client that sends two Origin
            headers, as python-socketio's websocket-only client does, joins them with a comma).
        """
        configured = self.config.web_url
        if configured:
            return configured
        origin = environ.get("HTTP_ORIGIN", "")
        developer_port = self.config.webserver_port if self.config.developer_mode else None
        url = _origin_web_url(origin, developer_port)
        if url is None:
            raise Refused(
                "invalid_origin",
                "Invalid origin: the Origin header must be one http(s) origin, such as "
                "https://site.example",
            )
        return url

    def authenticate(self, namespace: str, environ: Mapping[str, Any]) -> Identity:
        """Run every check for a CONNECT to ``namespace``.

        :param namespace: the Socket.IO namespace asked for, e.g. ``/site1.local``.
        :param environ: WSGI environ of the Engine.IO handshake request.
        :raises Refused: with the first check that failed.
        """
        site = resolve_site(environ, self.config.default_site, self.config.trusted_proxies)
        if not site or namespace != f"/{site}":
            raise Refused("invalid_namespace", "Invalid namespace")
        if not origin_matches_host(environ):
            raise Refused("invalid_origin", "Invalid origin")
        credential = credential_from(environ)
        if credential is None:
            raise Refused("no_credentials", no_credentials_message(environ))
        web_url = self.web_url(environ)
        try:
            info = self.web.get_user_info(web_url, site, credential)
        except Unauthorized as e:
            raise Refused("unauthorized", f"Unauthorized: {e}") from None
        except WebUnavailable:
            raise Refused(
                "web_unavailable", "Unauthorized: the web process is unavailable"
            ) from None
        apps = info.installed_apps
        if apps is None:
            apps = self.installed_apps_of(site)
        return Identity(
            site=site,
            user=info.user,
            user_type=info.user_type,
            installed_apps=apps,
            credential=credential,
            web_url=web_url,
        )

    def explain(self, refusal: Refused, namespace: str, environ: Mapping[str, Any]) -> str:
        """The values a refusal compared, for its log line; never a cookie, token or secret.

        Worked out again from the handshake's headers only when a connection is refused, so
        a successful connect pays nothing for it.
        """
        if refusal.reason == "invalid_namespace":
            site, source = resolve_site_from(
                environ, self.config.default_site, self.config.trusted_proxies
            )
            return (
                f"namespace {shown(namespace)} is not the site {shown(site)} resolved from "
                f"{source}; Host {shown(environ.get('HTTP_HOST'))}, Origin "
                f"{shown(environ.get('HTTP_ORIGIN'))}, X-Frappe-Site-Name "
                f"{shown(environ.get('HTTP_X_FRAPPE_SITE_NAME'))}"
            )
        if refusal.reason == "invalid_origin":
            return (
                f"Origin host {shown(hostname_of(environ.get('HTTP_ORIGIN')))} is not the Host "
                f"{shown(hostname_of(environ.get('HTTP_HOST')))} (Origin "
                f"{shown(environ.get('HTTP_ORIGIN'))}, Host {shown(environ.get('HTTP_HOST'))})"
            )
        if refusal.reason == "no_credentials":
            names = sorted(parse_cookie(environ.get("HTTP_COOKIE", "")))
            return (
                "neither a sid cookie nor an Authorization header arrived (cookie names: "
                f"{', '.join(names)[:SHOWN_CHARS] if names else 'none'})"
            )
        credential = credential_from(environ)
        kind = "Authorization header" if credential and credential.authorization else "sid cookie"
        web = shown(self.web_url(environ))
        if refusal.reason == "unauthorized":
            return f"the web process at {web} does not accept this {kind}"
        if refusal.reason == "web_unavailable":
            return f"the web process at {web} did not answer: {refusal.__context__}"
        return ""
