"""A real Debian nginx for tests: one process tree per test, in a temporary folder.

Proxies are where realtime connections break in production (dropped Upgrade headers, a rewritten
Origin, another site's ``X-Frappe-Site-Name``), so tests put the distribution's own nginx in front
of gsocket instead of imitating it.  The process runs in the foreground (``daemon off``) with its
prefix, temporary folders, pid file and logs inside the test's folder, so parallel tests never
share anything and nothing is left behind when it is stopped.

The configuration is the body of nginx's ``http`` block, with these markers replaced:

- ``@LISTEN@``: ``127.0.0.1:<port>`` (plus ``ssl`` when TLS is on), for a ``listen`` line;
- ``@PORT@``: the port alone;
- ``@CERT@`` / ``@KEY@``: the self-signed certificate and key (TLS only).

Markers instead of ``str.format`` because nginx configurations are full of braces and ``$``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from gsocket.demo.ports import free_port, wait_for_port
from gsocket.demo.processes import Child

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def make_self_signed_cert(folder: Path, names: Iterable[str] = ("localhost",)) -> tuple[Path, Path]:
    """Create a self-signed certificate for ``names`` (and 127.0.0.1) with ``openssl``.

    Returns ``(certificate, key)``.  The certificate is its own CA, so a client that is given it
    as ``verify`` trusts it and any other client refuses it: both cases a TLS test needs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = list(names)
    cert, key = folder / "cert.pem", folder / "key.pem"
    alt = ",".join([f"DNS:{name}" for name in names] + ["IP:127.0.0.1"])
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={names[0]}",
            "-addext", f"subjectAltName={alt}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class Nginx:
    """One foreground nginx serving ``http_conf`` on a free loopback port.

    :param folder: a folder of its own (created): configuration, logs, temporary files.
    :param http_conf: the body of the ``http`` block, with the markers of the module docstring.
    :param tls: listen with TLS, using a self-signed certificate for ``tls_names``.
    :param tls_names: host names the certificate is valid for.
    """

    def __init__(
        self,
        folder: Path,
        http_conf: str,
        tls: bool = False,
        tls_names: Iterable[str] = ("localhost",),
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.tls = tls
        self.cert: Path | None = None
        self.key: Path | None = None
        if tls:
            self.cert, self.key = make_self_signed_cert(folder / "tls", tls_names)
        self.http_conf = http_conf
        self.process: Child | None = None

    @property
    def url(self) -> str:
        """The base URL clients use (``http://127.0.0.1:<port>`` or ``https://...``)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.folder / "error.log"

    @property
    def access_log(self) -> Path:
        return self.folder / "access.log"

    def _config_text(self) -> str:
        """The whole ``nginx.conf``: the fixed frame around the caller's ``http`` body."""
        listen = f"127.0.0.1:{self.port}" + (" ssl" if self.tls else "")
        body = (
            self.http_conf.replace("@LISTEN@", listen)
            .replace("@PORT@", str(self.port))
            .replace("@CERT@", str(self.cert or ""))
            .replace("@KEY@", str(self.key or ""))
        )
        tmp = self.folder / "tmp"
        # As root, the workers would switch to "nobody", who cannot enter pytest's 0700 folders.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (
            f"{user}daemon off;\nworker_processes 1;\npid {self.folder / 'nginx.pid'};\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"  access_log {self.access_log};\n"
            f"  client_body_temp_path {tmp / 'body'};\n  proxy_temp_path {tmp / 'proxy'};\n"
            f"  fastcgi_temp_path {tmp / 'fastcgi'};\n  uwsgi_temp_path {tmp / 'uwsgi'};\n"
            f"  scgi_temp_path {tmp / 'scgi'};\n"
            f"{body}\n"
            "}\n"
        )

    def start(self, timeout: float = 10.0) -> Nginx:
        """Write the configuration, check it with ``nginx -t`` and run nginx until it listens."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "tmp").mkdir(exist_ok=True)
        conf = self.folder / "nginx.conf"
        conf.write_text(self._config_text())
        base = [NGINX, "-p", str(self.folder), "-c", str(conf), "-e", str(self.error_log)]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refuses the configuration:\n{check.stderr}")
        self.process = Child("nginx", base, log_path=self.folder / "nginx.out")
        try:
            wait_for_port(self.port, timeout=timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not listen:\n{self.log_text()}") from None
        return self

    def log_text(self) -> str:
        """The error log so far (for assertion messages)."""
        return self.error_log.read_text() if self.error_log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop nginx fast (SIGTERM to the master, which stops its worker) and wait for it."""
        process, self.process = self.process, None
        if process is not None:
            process.stop(timeout)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
