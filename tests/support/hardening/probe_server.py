"""``gsocket serve`` with one extra route, ``GET /_probe``: the sizes of its internal tables.

Leak checks need more than ``/metrics`` shows: Engine.IO sessions, Socket.IO sockets, site
namespaces, rooms, the client guard's per-session tables, live greenlets (and how many of
them are idle workers, :mod:`gsocket.protocol.workers`), open file descriptors and the
resident memory.  This wrapper runs the real command line unchanged, only
adding that route, so what is measured is what production runs.  Run it as
``python -m tests.support.hardening.probe_server serve --bench PATH ...`` (the same arguments
as ``gsocket``).
"""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import greenlet  # noqa: E402

import gsocket.app as app_module  # noqa: E402
from gsocket.cli import main  # noqa: E402
from gsocket.protocol.workers import workers  # noqa: E402

PROBE_PATH = "/_probe"


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc``."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _table_sizes(obj: object) -> dict[str, int]:
    """Entries in each dict attribute of ``obj``, one level of nesting included."""
    sizes = {}
    for name, value in vars(obj).items():
        if isinstance(value, dict):
            inner = sum(len(v) for v in value.values() if isinstance(v, dict))
            sizes[name] = len(value) + inner
    return sizes


def probe(app: app_module.App) -> dict[str, Any]:
    """Sizes of every per-client table of the running server (after a full collection)."""
    gc.collect()
    server = app.server
    manager = server.manager
    rooms = {ns: len(by_room) for ns, by_room in manager.rooms.items()}
    return {
        "eio_sessions": len(server.eio.sockets),
        "eio_open": sum(1 for s in list(server.eio.sockets.values()) if not s.closed),
        "sockets": len(app.sessions.sockets()),
        "environ": len(server.environ),
        "namespaces": sorted(manager.rooms),
        "rooms": sum(rooms.values()),
        "rooms_by_namespace": rooms,
        "eio_to_sid": len(getattr(manager, "eio_to_sid", {})),
        "manager_tables": _table_sizes(manager),
        "callbacks": len(manager.callbacks),
        "pending_connect": len(manager.pending_connect),
        "pending_disconnect": len(manager.pending_disconnect),
        "binary_packets": server.binary_pending_count(),
        "connecting": len(server._connecting),
        **server.guard.state(),
        "dropped": {k[0]: v for k, v in app.metrics.clients_dropped.series().items()},
        "greenlets": sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet)),
        "idle_workers": len(workers.idle),
        "rss": rss_bytes(),
        "fds": len(os.listdir("/proc/self/fd")),
    }


_wsgi = app_module.App.wsgi


def wsgi(
    self: app_module.App, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """``App.wsgi`` plus ``/_probe``."""
    if environ.get("PATH_INFO") == PROBE_PATH:
        body = json.dumps(probe(self)).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    return _wsgi(self, environ, start_response)


app_module.App.wsgi = wsgi  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
