"""The site of a connection, and whether its Origin may open it (contract sections 4.1, 4.2).

A bench is multi-tenant: one realtime process serves every site, each as the Socket.IO
namespace ``/<site>``.  The site is derived from request headers exactly as the Node server
derives it, so that nginx, the desk and custom clients keep working unchanged.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gsocket.protocol.headers import MAX_REMEMBERED, remember_short

LOCAL_HOSTNAMES = frozenset({"localhost", "127.0.0.1"})


def hostname_of(value: str | None) -> str | None:
    """Return the lower-cased hostname part of a Host header, an Origin or a bare name.

    ``"site1.local:8000"``, ``"http://site1.local:8000"`` and ``"site1.local"`` all give
    ``"site1.local"``; an empty or unparsable value gives ``None``.
    """
    return _cached_hostname(value) if value else None


def _parse_hostname(value: str) -> str | None:
    value = value.strip()
    try:
        parsed = urlsplit(value if "://" in value else f"//{value}")
        host = parsed.hostname
    except ValueError:
        return None
    return host or None


_cached_hostname = remember_short(1024)(_parse_hostname)
"""Every connect parses the same few Host and Origin values; short ones are remembered."""


def is_trusted_proxy(remote_addr: str | None, trusted: tuple[str, ...] | None) -> bool:
    """Tell whether the peer may set ``X-Frappe-Site-Name`` (it is nginx, not a browser).

    :param remote_addr: the peer address from the WSGI environ (empty for a Unix socket).
    :param trusted: configured addresses or networks; ``None`` trusts loopback and Unix sockets.
    """
    if not remote_addr:
        return True
    if len(remote_addr) > MAX_REMEMBERED:
        return False  # not an address
    return _trusted(remote_addr, trusted)


@functools.lru_cache(maxsize=4096)
def _trusted(remote_addr: str, trusted: tuple[str, ...] | None) -> bool:
    """:func:`is_trusted_proxy`, remembered for the last 4 096 pairs: parsing the address and
    the networks was 2 % of a connect's CPU, done twice per connect for the same proxy."""
    try:
        addr = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    if trusted is None:
        return addr.is_loopback
    for entry in trusted:
        try:
            if addr in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


FROM_HEADER = "X-Frappe-Site-Name"
FROM_DEFAULT_SITE = "default_site (the Host is localhost)"
FROM_ORIGIN = "the Origin"
FROM_HOST = "the Host"
UNTRUSTED = " (X-Frappe-Site-Name ignored: the peer is not in gsocket.trusted_proxies)"
"""Where a site was resolved from, as refusal log lines and ``gsocket doctor`` name it."""


def resolve_site(
    environ: Mapping[str, Any],
    default_site: str | None,
    trusted_proxies: tuple[str, ...] | None = None,
) -> str | None:
    """Resolve the site of a connection from its handshake request.

    In order: ``X-Frappe-Site-Name`` (from a trusted proxy), ``default_site`` when the Host
    is ``localhost``/``127.0.0.1``, the Origin's hostname, the Host's hostname.

    :param environ: WSGI environ of the Engine.IO handshake request.
    :param default_site: the bench's ``default_site``.
    :param trusted_proxies: see :func:`is_trusted_proxy`.
    """
    return resolve_site_from(environ, default_site, trusted_proxies)[0]


def resolve_site_from(
    environ: Mapping[str, Any],
    default_site: str | None,
    trusted_proxies: tuple[str, ...] | None = None,
) -> tuple[str | None, str]:
    """:func:`resolve_site`, and where the site came from (one of the ``FROM_*`` texts, plus
    :data:`UNTRUSTED` when an ``X-Frappe-Site-Name`` arrived from a peer not believed).

    The rule lives here only; the texts are constants so that a connect pays nothing for them.
    """
    forwarded = environ.get("HTTP_X_FRAPPE_SITE_NAME")
    ignored = ""
    if forwarded:
        if is_trusted_proxy(environ.get("REMOTE_ADDR"), trusted_proxies):
            return hostname_of(forwarded), FROM_HEADER
        ignored = UNTRUSTED
    host = hostname_of(environ.get("HTTP_HOST"))
    if host in LOCAL_HOSTNAMES and default_site:
        return default_site, FROM_DEFAULT_SITE + ignored
    origin = hostname_of(environ.get("HTTP_ORIGIN"))
    if origin:
        return origin, FROM_ORIGIN + ignored
    return host, FROM_HOST + ignored


def origin_matches_host(environ: Mapping[str, Any]) -> bool:
    """Tell whether Origin and Host name the same host (ports and schemes ignored).

    This is what stops a page on another site from opening a websocket with the
    visitor's cookie (cross-site websocket hijacking).
    """
    origin = hostname_of(environ.get("HTTP_ORIGIN"))
    return origin is not None and origin == hostname_of(environ.get("HTTP_HOST"))
