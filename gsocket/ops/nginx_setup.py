"""``gsocket setup nginx``: nginx in front of a bench's web process and its gsocket processes.

Several gsocket processes serve one bench only if every request of a long-polling session
reaches the process that holds the session.  Client-IP stickiness (``ip_hash``) is wrong for a
bench: a whole office behind one NAT address lands on one process, and a user behind
Cloudflare arrives from several addresses.  gsocket's session ids name their process instead
(:mod:`gsocket.cluster.presence`: ``<K>.<boot>.<random>``), so a ``map`` on ``$arg_sid`` sends each
request of a session to its process's own upstream, and a handshake (no ``sid`` yet) to the
upstream of all processes, which spreads them and skips a process that is down.

Two outputs:

- ``--listen HOST:PORT --output FILE``: a complete ``nginx.conf`` (no ``daemon`` directive:
  the caller runs it in the foreground or not; pid, logs and temporary files under the bench)
  that fronts the bench as bench's own template does: ``/socket.io`` to gsocket with the
  Upgrade, Connection, X-Frappe-Site-Name, Origin and Host headers (and X-Forwarded-For, so
  ``limits.connections_per_ip`` counts clients, not nginx), ``/assets`` from
  ``sites/assets``, each site's public files, and everything else to the web process.
- without ``--output``: the change to the bench's ``config/nginx.conf`` (``bench setup
  nginx``'s file), shown as a diff, made with ``--apply``; its socketio upstream becomes the
  cluster's upstreams and map, its ``/socket.io`` locations pass to the map's choice.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

from gsocket.config import Config
from gsocket.ops.supervisor_setup import apply_or_show

BEGIN = "# gsocket: begin (written by `gsocket setup nginx`)"
END = "# gsocket: end"

SOCKETIO_HEADERS = """\
proxy_http_version 1.1;
proxy_set_header Upgrade $http_upgrade;
proxy_set_header Connection "upgrade";
proxy_set_header X-Frappe-Site-Name $host;
proxy_set_header Origin $scheme://$http_host;
proxy_set_header Host $host;
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"""

NODE_UPSTREAM = re.compile(r"upstream\s+(?P<name>\S+)-socketio-server\s*\{[^}]*\}\n?")
OUR_BLOCK = re.compile(rf"{re.escape(BEGIN)}\n.*?{re.escape(END)}\n?", re.S)
NODE_PASS = re.compile(r"proxy_pass\s+http://(?P<name>\S+)-socketio-server\s*;")


def process_address(config: Config, process: int) -> str:
    """What nginx's ``server`` line names for process ``process`` of the bench."""
    own = config.for_process(process)
    return f"unix:{own.uds}" if own.uds else f"127.0.0.1:{own.port}"


def variable(name: str) -> str:
    """The nginx variable holding the chosen upstream (bench names may hold ``-``)."""
    return "gsocket_" + re.sub(r"\W", "_", name)


def cluster_block(config: Config, name: str) -> str:
    """The upstreams of the gsocket processes and the ``map`` that picks one per request.

    ``<name>-socketio-server`` keeps the name bench gives the realtime upstream and holds
    every process (handshakes); ``<name>-gsocket-K`` holds process K alone (its sessions).
    """
    processes = range(config.processes)
    lines = [
        BEGIN,
        f"# {config.processes} gsocket process(es); a request with ?sid=<K>.… goes to process K,",
        "# a handshake to any live one.  Write it again after changing gsocket.processes.",
        f"upstream {name}-socketio-server {{",
        *(
            f"    server {process_address(config, k)} max_fails=1 fail_timeout=5s;"
            for k in processes
        ),
        "}",
    ]
    for k in processes:
        lines += [
            f"upstream {name}-gsocket-{k} {{",
            f"    server {process_address(config, k)} fail_timeout=0;",
            "}",
        ]
    lines += [f"map $arg_sid ${variable(name)} {{", f"    default {name}-socketio-server;"]
    lines += [f'    "~^{k}\\." {name}-gsocket-{k};' for k in processes]
    lines += ["}", END]
    return "\n".join(lines) + "\n"


def full_conf(config: Config, listen: str) -> str:
    """A complete ``nginx.conf`` for the bench (see the module docstring)."""
    bench = config.bench_path
    name = bench.name
    web_host = config.webserver_host or "127.0.0.1"
    tmp = bench / "tmp" / "nginx"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
# nginx in front of the bench at {bench}: its web process and its gsocket processes.
# Written by `gsocket setup nginx`; run it with: nginx -c {{this file}} -g 'daemon off;'
worker_processes auto;
pid {bench / "config" / "pids" / "nginx.pid"};
error_log {bench / "logs" / "nginx-error.log"};

events {{
    worker_connections 4096;
}}

http {{
    access_log {bench / "logs" / "nginx-access.log"};
{temp_paths}
    client_max_body_size 50m;

    upstream {name}-frappe {{
        server {web_host}:{config.webserver_port} fail_timeout=0;
    }}
{_indent(cluster_block(config, name), 4)}
    server {{
        listen {listen};
        server_name _;
        root {bench / "sites"};

        location /assets {{
            try_files $uri =404;
        }}

        location /socket.io {{
{_indent(SOCKETIO_HEADERS, 12)}            proxy_pass http://${variable(name)};
        }}

        location / {{
            try_files /$host/public/$uri @webserver;
        }}

        location @webserver {{
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Frappe-Site-Name $host;
            proxy_set_header Host $host;
            proxy_read_timeout 120;
            proxy_redirect off;
            proxy_pass http://{name}-frappe;
        }}
    }}
}}
"""


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else line for line in text.splitlines()) + "\n"


def patch_nginx_conf(text: str, config: Config) -> str | None:
    """Return bench's ``config/nginx.conf`` with gsocket's cluster in place of its socketio
    upstream (or of an earlier gsocket block), or ``None`` when it has neither."""
    span = OUR_BLOCK.search(text) or NODE_UPSTREAM.search(text)
    if span is None:
        return None
    name = re.search(r"upstream\s+(\S+)-socketio-server", span.group(0)).group(1)
    patched = text[: span.start()] + cluster_block(config, name) + text[span.end() :]
    return NODE_PASS.sub(f"proxy_pass http://${variable(name)};", patched)


def setup_nginx(
    config: Config,
    listen: str | None = None,
    output: str | None = None,
    apply: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Write a complete nginx.conf (``output``), or show/make the change to bench's own.

    :returns: the exit status.
    """
    bench = config.bench_path
    if output is not None:
        if not listen:
            print("--output needs --listen HOST:PORT (where nginx listens)", file=out)
            return 2
        for folder in (bench / "tmp" / "nginx", bench / "config" / "pids", bench / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(full_conf(config, listen))
        count = config.processes
        print(f"wrote {output} (nginx on {listen}, {count} gsocket process(es))", file=out)
        return 0
    nginx_conf = bench / "config" / "nginx.conf"
    if not nginx_conf.is_file():
        print(
            f"{nginx_conf} does not exist: run `bench setup nginx` first, or write a complete "
            "configuration with --listen HOST:PORT --output FILE",
            file=out,
        )
        return 1
    text = nginx_conf.read_text()
    patched = patch_nginx_conf(text, config)
    if patched is None:
        print(f"{nginx_conf} has no upstream <bench>-socketio-server to replace", file=out)
        return 1
    if patched == text:
        print(f"{nginx_conf} already fronts the {config.processes} gsocket process(es)", file=out)
        return 0
    apply_or_show(
        nginx_conf, text, patched, apply, out, f"The change to {nginx_conf} (--apply makes it):\n"
    )
    print("Then check and load it: sudo nginx -t && sudo systemctl reload nginx", file=out)
    return 0
