"""What reached gsocket through the proxy: the inside view for ``gsocket doctor --url``.

Most realtime trouble behind nginx, Docker or a CDN is a hop that changed the browser's request
on its way: Host rewritten, Origin dropped or overwritten, no or another site's
``X-Frappe-Site-Name``, the Upgrade headers gone.  The doctor sends the browser's request
through the proxy to :data:`DOCTOR_PATH` (under ``/socket.io/``, so every proxy that routes
Socket.IO to gsocket routes it too), and gsocket answers with what arrived and what it made of
it, by the same functions the connection checks use.  The doctor compares that with what it sent
and names the hop that changed what.

Answered over plain HTTP as JSON, and over a websocket (when the upgrade arrives) as one text
message, so that a dropped upgrade shows as a plain answer saying which headers were missing.
Cookies and the ``Authorization`` header are never echoed, only whether they arrived; the other
headers are the client's own or its proxy's, and the peer address is the one gsocket sees.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from werkzeug.http import parse_cookie

from gsocket import __version__
from gsocket.config import Config
from gsocket.contract.sites import is_trusted_proxy, origin_matches_host, resolve_site_from

DOCTOR_PATH = "/socket.io/gsocket-doctor"
ECHOED_HEADERS = (
    "Host",
    "Origin",
    "X-Frappe-Site-Name",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "X-Real-IP",
    "Upgrade",
    "Connection",
)
MAX_SHOWN = 300
"""Characters of a header value echoed: enough to compare, and no amplified 64 KiB answers."""


def what_arrived(environ: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """The request as gsocket saw it, and the site and Origin verdicts it would reach."""
    headers = {}
    for name in ECHOED_HEADERS:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        headers[name] = value[:MAX_SHOWN] if isinstance(value, str) else None
    site, source = resolve_site_from(environ, config.default_site, config.trusted_proxies)
    peer = environ.get("REMOTE_ADDR") or ""
    if environ.get("HTTP_AUTHORIZATION"):
        credential = "Authorization header"
    elif "sid" in parse_cookie(environ.get("HTTP_COOKIE", "")):
        credential = "sid cookie"
    else:
        credential = None
    return {
        "gsocket": __version__,
        "headers": headers,
        "peer": peer or "unix socket",
        "peer_trusted": is_trusted_proxy(peer, config.trusted_proxies),
        "site": site,
        "site_from": source,
        "origin_matches_host": origin_matches_host(environ),
        "credential": credential,
        "websocket": environ.get("wsgi.websocket") is not None,
    }


def serve_arrival(
    environ: dict[str, Any], start_response: Callable[..., Any], config: Config
) -> Iterable[bytes]:
    """Answer a doctor's request: a JSON body, or one websocket message when upgraded."""
    report = json.dumps(what_arrived(environ, config))
    websocket = environ.get("wsgi.websocket")
    if websocket is not None:
        websocket.send(report)
        websocket.close()
        return []
    body = report.encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]
