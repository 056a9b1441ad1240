"""Calls to the bench web process: who a connection is, and what it may subscribe to.

The realtime process owns no users or permissions; like the Node server it asks the web
process, carrying the client's own credential.  Pooled keep-alive connections with short
timeouts keep those calls cheap, and a dead or slow web process costs one connection a bounded
wait instead of stalling the server.

Every call, to any web URL (http, https, through redirects), goes through one client,
:mod:`gsocket.contract.httpclient`, which keeps no cookie jar and no credential between calls:
a call carries the credential of the socket it is made for, the site header and the socket secret,
and nothing else (RELIABILITY.md, "Whose identity a socket gets").
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

from gsocket.config import ConfigError
from gsocket.contract import httpclient
from gsocket.contract.secret import SocketSecret
from gsocket.metrics import Metrics

log = logging.getLogger("gsocket.webclient")

USER_INFO = "/api/method/frappe.realtime.get_user_info"
HAS_PERMISSION = "/api/method/frappe.realtime.has_permission"
CAN_SUBSCRIBE_DOC = "/api/method/frappe.realtime.can_subscribe_doc"
CAN_SUBSCRIBE_DOCTYPE = "/api/method/frappe.realtime.can_subscribe_doctype"


class WebUnavailable(Exception):
    """The web process did not answer usefully (down, slow, or not speaking the contract)."""


class Unauthorized(Exception):
    """The web process answered but did not accept the credential."""


@dataclass(frozen=True)
class Credential:
    """What a client proved itself with: its ``sid`` cookie or an ``Authorization`` header.

    Never logged: ``repr`` hides the values.
    """

    sid: str | None = None
    authorization: str | None = None

    def headers(self) -> dict[str, str]:
        """Headers that present this credential to the web process."""
        if self.authorization:
            return {"Authorization": self.authorization}
        return {"Cookie": f"sid={self.sid}"}

    def __repr__(self) -> str:
        kind = "authorization" if self.authorization else "sid"
        return f"Credential({kind}=***)"


@dataclass(frozen=True)
class UserInfo:
    """The answer of ``get_user_info``; ``installed_apps`` is ``None`` on Frappe v15 and older."""

    user: str
    user_type: str
    installed_apps: tuple[str, ...] | None


class WebClient:
    """A pooled HTTP client for the web process's realtime endpoints.

    :param secret: source of the ``X-Frappe-Socket-Secret`` value.
    :param metrics: where call latency and outcomes are counted.
    :param timeout: seconds for connecting plus reading one answer, once a pooled
        connection is free (calls wait for one up to ``httpclient.WAIT_FOR_CONNECTION``).
    :param pool_size: connections open to each web host (more calls at once wait for one).
        A reconnect storm makes hundreds of calls at once; reusing this many warm connections
        cost a third less CPU per connect than opening one per call beyond a smaller idle
        pool (the Node baseline's agent uses the same bound).
    :param ca_file: a private CA trusted for https, besides the system's store and the
        ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` an operator sets (``gsocket.ca_file``).
    :param proxy_from_env: go through the environment's ``https_proxy`` / ``http_proxy``
        (``gsocket.web_proxy_from_env``); off, the environment's proxies are ignored.
    """

    def __init__(
        self,
        secret: SocketSecret,
        metrics: Metrics,
        timeout: float = 5.0,
        pool_size: int = 128,
        ca_file: str | None = None,
        proxy_from_env: bool = False,
    ) -> None:
        self.secret = secret
        self.metrics = metrics
        self.timeout = timeout
        try:
            tls = httpclient.tls_context(ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"the CA certificates for https cannot be loaded: {e}") from None
        self.pool = httpclient.Pool(
            timeout,
            maxsize=pool_size,
            tls=tls,
            proxies=httpclient.Proxies() if proxy_from_env else None,
        )
        self._legacy_permission: set[str] = set()

    def close(self) -> None:
        """Close pooled connections."""
        self.pool.close()

    def _get(
        self,
        method: str,
        base_url: str,
        site: str,
        credential: Credential,
        params: dict[str, str] | None = None,
    ) -> httpclient.Response:
        """GET ``method`` for one socket: its credential, its site, the secret, nothing else.

        The socket secret goes with every call when Redis has one, as Frappe's own realtime
        server sends it.
        """
        headers = {"X-Frappe-Site-Name": site, "Accept": "application/json"}
        headers.update(credential.headers())
        secret = self.secret.get()
        if secret:
            headers["X-Frappe-Socket-Secret"] = secret
        started = time.perf_counter()
        outcome = "error"
        try:
            response = self.pool.get(base_url + method, params=params, headers=headers)
            outcome = str(response.status_code)
            return response
        except httpclient.PoolBusy as e:
            outcome = "timeout"
            raise WebUnavailable(f"web process at {base_url} too busy: {e}") from None
        except httpclient.HTTPTimeout:
            outcome = "timeout"
            raise WebUnavailable(f"web process at {base_url} did not answer in time") from None
        except httpclient.HTTPFailure as e:
            raise WebUnavailable(f"web process at {base_url} unreachable: {e}") from None
        finally:
            name = method.rsplit(".", 1)[-1]
            self.metrics.web_calls.observe(name, outcome, value=time.perf_counter() - started)

    @staticmethod
    def _message(response: httpclient.Response) -> Any:
        try:
            return response.json().get("message")
        except (ValueError, AttributeError):
            raise WebUnavailable(
                f"web process answered {response.status_code} with a body that is not Frappe's JSON"
            ) from None

    def get_user_info(self, base_url: str, site: str, credential: Credential) -> UserInfo:
        """Ask the web process who holds ``credential`` on ``site``.

        The socket secret is sent when Redis has one.  An empty answer may mean the secret
        was rotated since it was read, so it is read afresh and the call tried once more.

        :raises Unauthorized: the web process refused the credential.
        :raises WebUnavailable: the web process is down, slow or answered garbage.
        """
        for attempt in (1, 2):
            response = self._get(USER_INFO, base_url, site, credential)
            if response.status_code in (401, 403):
                raise Unauthorized(f"web process answered {response.status_code}")
            if response.status_code != 200:
                raise WebUnavailable(f"get_user_info answered HTTP {response.status_code}")
            message = self._message(response)
            if isinstance(message, dict) and message.get("user"):
                apps = message.get("installed_apps")
                return UserInfo(
                    user=str(message["user"]),
                    user_type=str(message.get("user_type") or "Website User"),
                    installed_apps=tuple(map(str, apps)) if isinstance(apps, list) else None,
                )
            if attempt == 1 and self.secret.changed():
                continue
            break
        raise Unauthorized("web process did not recognise the session (or the socket secret)")

    def has_permission(
        self,
        base_url: str,
        site: str,
        credential: Credential,
        doctype: str,
        name: str | None = None,
    ) -> bool:
        """Ask whether ``credential`` may read a document or a doctype (contract section 6).

        The decisions are those of the Node server of the Frappe version that answers:

        - newer Frappe (develop, v16) has ``frappe.realtime.has_permission(doctype, name)``
          with ``name`` required; its Node server sends ``name=""`` for a whole doctype
          (Frappe then checks the doctype), and allows exactly when the JSON answer's
          ``message`` is truthy.  A 403, a 500, an HTML page or a timeout is a no.
        - v14/v15 only have ``can_subscribe_doc(doctype, docname)`` and
          ``can_subscribe_doctype(doctype)``; their Node server allows on HTTP 200 and on
          nothing else, and asks nothing (a no) when the doctype or the docname is empty.

        The first answer saying that the new endpoint does not exist switches that web process
        to the old ones for good.
        """
        key = f"{base_url}|{site}"
        try:
            if key not in self._legacy_permission:
                params = {"doctype": doctype, "name": name or ""}
                response = self._get(HAS_PERMISSION, base_url, site, credential, params)
                if self._lacks_has_permission(response):
                    log.info("web process of %s has no has_permission; using can_subscribe_*", site)
                    self._legacy_permission.add(key)
                else:
                    return self._allowed(response)
            if not doctype or (name is not None and not name):
                return False
            if name is None:
                response = self._get(
                    CAN_SUBSCRIBE_DOCTYPE, base_url, site, credential, {"doctype": doctype}
                )
            else:
                response = self._get(
                    CAN_SUBSCRIBE_DOC,
                    base_url,
                    site,
                    credential,
                    {"doctype": doctype, "docname": name},
                )
            return response.status_code == 200
        except WebUnavailable as e:
            log.warning("permission check for %s on %s failed: %s", doctype, site, e)
            return False

    @staticmethod
    def _lacks_has_permission(response: httpclient.Response) -> bool:
        """Whether the web process answered that it has no ``frappe.realtime.has_permission``.

        v14/v15 answer 417 "... has no attribute 'has_permission'" (the attribute is named:
        an app's permission hook failing with some other AttributeError is not that).  A 404
        is only that when it is not Frappe's DoesNotExistError: develop answers 404 for a
        document or doctype that does not exist (a deleted document's form), and taking that
        for a missing method would send every later check of the site to endpoints develop
        does not have.
        """
        if response.status_code < 400:
            return False
        text = response.text
        if "has no attribute 'has_permission'" in text:
            return True
        return response.status_code == 404 and "DoesNotExistError" not in text

    @staticmethod
    def _allowed(response: httpclient.Response) -> bool:
        """A ``has_permission`` answer is a yes when its JSON ``message`` is truthy.

        Only a 200 carries ``message`` from Frappe (its error answers never do), and an answer
        that is not JSON (a proxy's HTML error page) is a no, as it is for the Node server.
        """
        if response.status_code != 200:
            return False
        try:
            body = response.json()
        except ValueError:
            return False
        return isinstance(body, dict) and bool(body.get("message"))
