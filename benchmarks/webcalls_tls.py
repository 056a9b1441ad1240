"""CPU per call to the web process, over TLS: gsocket's own client against a lean requests.

Every connect makes one ``get_user_info`` call, so this is the part of a connect's CPU that the
choice of client decides.  Usage (from the repository root)::

    python benchmarks/webcalls_tls.py                  # 3000 calls, 64 at a time
    python benchmarks/webcalls_tls.py --calls 10000 --concurrency 128

A web stand-in (tests/support/webstub.py, in a process of its own) is served behind a Debian
nginx with a self-signed certificate (tests/support/nginx.py); this process is gevent-patched
like gsocket and makes the calls from ``--concurrency`` greenlets, each with its own credential.
Reported per client, per call: this process's CPU time (user + system) and the wall time.
Clients:

- ``httpclient https``: :class:`gsocket.contract.httpclient.Pool`, what gsocket uses (TLS
  with Python's ``ssl`` under gevent, pooled keep-alive connections);
- ``requests https``: requests made as lean and safe as it goes: one ``Session`` whose cookie
  jar refuses every cookie, no environment, the same CA file, a pool of the same size;
- the same two over plain http (through the same nginx, without TLS), for reference.
"""

# ruff: noqa: E402 - gevent must patch the stdlib before anything else is imported
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any

import gevent.pool
import requests
from requests.adapters import HTTPAdapter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gsocket.contract import httpclient
from gsocket.demo.ports import wait_for_port
from gsocket.demo.processes import Child
from tests.support.nginx import Nginx

METHOD = "/api/method/frappe.realtime.get_user_info"
STUB = """
import sys, threading
from tests.support.webstub import WebStub
stub = WebStub("v16")
stub.sessions.update({f"sid-{i}": f"user{i}@example.com" for i in range(1000)})
stub.start()
print(stub.port, flush=True)
threading.Event().wait()
"""
FRONT = """
  upstream web { server 127.0.0.1:@WEB_PORT@; keepalive 64; }
  server {
    listen @LISTEN@;
    @TLS@
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_pass http://web;
    }
  }
"""


def lean_requests(ca_file: str | None, pool_size: int) -> Callable[..., Any]:
    """requests without what made it unsafe: no cookies kept, no environment."""
    session = requests.Session()
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.trust_env = False
    if ca_file:
        session.verify = ca_file
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def get(url: str, headers: dict[str, str]) -> int:
        return session.get(url, headers=headers, timeout=10).status_code

    return get


def fast_client(ca_file: str | None, pool_size: int) -> Callable[..., Any]:
    pool = httpclient.Pool(10, maxsize=pool_size, tls=httpclient.tls_context(ca_file, env={}))

    def get(url: str, headers: dict[str, str]) -> int:
        return pool.get(url, None, headers).status_code

    return get


def measure(get: Callable[..., Any], url: str, calls: int, concurrency: int) -> tuple[float, float]:
    """``(CPU µs, wall µs)`` per call, after a warm-up that fills the pool."""
    group = gevent.pool.Pool(concurrency)

    def one(i: int) -> None:
        headers = {"Cookie": f"sid=sid-{i % 1000}", "X-Frappe-Site-Name": "site1.local"}
        assert get(url, headers) == 200

    group.map(one, range(concurrency * 2))
    cpu, wall = time.process_time(), time.perf_counter()
    group.map(one, range(calls))
    return (
        (time.process_time() - cpu) / calls * 1e6,
        (time.perf_counter() - wall) / calls * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    stub = Child(
        "web stand-in", [sys.executable, "-c", STUB], cwd=REPO, stdout_pipe=True, text=True
    )
    assert stub.proc.stdout is not None
    web_port = int(stub.proc.stdout.readline())
    with tempfile.TemporaryDirectory() as tmp:
        conf = FRONT.replace("@WEB_PORT@", str(web_port))
        tls = "ssl_certificate @CERT@; ssl_certificate_key @KEY@;"
        front = Nginx(Path(tmp) / "tls", conf.replace("@TLS@", tls), tls=True)
        plain_front = Nginx(Path(tmp) / "plain", conf.replace("@TLS@", ""))
        with front, plain_front:
            wait_for_port(front.port)
            ca = str(front.cert)
            plain = f"{plain_front.url}{METHOD}"
            secure = f"{front.url}{METHOD}"
            print(f"{args.calls} get_user_info calls, {args.concurrency} at a time")
            print(f"{'client':<20} {'CPU µs/call':>12} {'wall µs/call':>13}")
            for name, make, url in (
                ("httpclient https", fast_client, secure),
                ("requests https", lean_requests, secure),
                ("httpclient http", fast_client, plain),
                ("requests http", lean_requests, plain),
            ):
                cpu, wall = measure(make(ca, args.concurrency), url, args.calls, args.concurrency)
                print(f"{name:<20} {cpu:>12.0f} {wall:>13.0f}", flush=True)
    stub.stop(10)


if __name__ == "__main__":
    main()
