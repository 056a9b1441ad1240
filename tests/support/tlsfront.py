"""nginx in front of a bench the way production runs it: TLS, the desk and the realtime process
on one origin, and an http server that only redirects to https.

gsocket calls the web process back at the desk's Origin (``https://<site>``) when no
``webserver_host`` is set, so over TLS those calls go through the same nginx as the browser,
with its certificate and its redirects: that is the path that gave sockets other users'
identities while a shared cookie jar served it.  The server blocks follow the bench's own nginx
template (``X-Frappe-Site-Name`` set by nginx, ``Origin: $scheme://$http_host`` for the
socket.io location).
"""

from __future__ import annotations

from pathlib import Path

from .nginx import Nginx

_SITE_FRONT = """
  upstream web { server 127.0.0.1:@WEB_PORT@; keepalive 16; }
  upstream realtime { server @REALTIME@; }
  server {
    listen @LISTEN@;
    server_name _;
    ssl_certificate @CERT@;
    ssl_certificate_key @KEY@;
    location /socket.io {
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header X-Frappe-Site-Name @SITE@;
      proxy_set_header Origin $scheme://$http_host;
      proxy_set_header Host $host;
      proxy_pass http://realtime;
    }
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Frappe-Site-Name @SITE@;
      proxy_set_header Host $host;
      proxy_pass http://web;
    }
  }
"""

_REDIRECT = """
  server {
    listen @LISTEN@;
    server_name _;
    location / { return 301 https://$host:@TLS_PORT@$request_uri; }
  }
"""


def site_front(
    folder: Path,
    web_port: int,
    realtime: int | Path,
    site: str,
    tls_names: tuple[str, ...] = ("localhost",),
) -> Nginx:
    """A TLS nginx (self-signed, for ``tls_names`` and 127.0.0.1) serving ``site``: socket.io
    to ``realtime`` (a loopback port or a Unix socket), everything else to the web process on
    ``web_port``.  Not started."""
    upstream = f"unix:{realtime}" if isinstance(realtime, Path) else f"127.0.0.1:{realtime}"
    conf = (
        _SITE_FRONT.replace("@WEB_PORT@", str(web_port))
        .replace("@REALTIME@", upstream)
        .replace("@SITE@", site)
    )
    return Nginx(folder, conf, tls=True, tls_names=tls_names)


def https_redirect(folder: Path, tls_port: int) -> Nginx:
    """A plain-http nginx answering every request with a 301 to the same path on
    ``https://<host>:<tls_port>``, as a site that forces https does.  Not started."""
    return Nginx(folder, _REDIRECT.replace("@TLS_PORT@", str(tls_port)))
