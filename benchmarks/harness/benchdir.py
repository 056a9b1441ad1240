"""The bench-shaped folder every benchmark serves from: ``sites/`` with ``apps.txt``, the one
site and ``common_site_config.json``, ``logs/`` and ``apps/``.

Used by ``run.py`` (against Frappe's Node servers and gsocket) and by the profiling stand
(:mod:`harness.probing`), so that what is profiled is configured as what is compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SITE = "bench.localhost"


def make_bench(root: Path) -> Path:
    """A bench-shaped folder: sites/ with apps.txt, the site, logs/ and apps/."""
    bench = root / "frappe-bench"
    (bench / "sites" / SITE).mkdir(parents=True)
    (bench / "logs").mkdir()
    (bench / "apps").mkdir()
    (bench / "sites" / "apps.txt").write_text("frappe\n")
    (bench / "sites" / SITE / "site_config.json").write_text("{}\n")
    return bench


def write_config(
    bench: Path,
    socketio_port: int,
    redis_port: int,
    web_port: int,
    gsocket: dict[str, Any] | None = None,
) -> None:
    """No ``webserver_host``: every server then takes the web process's URL from the client's
    Origin, as Frappe's Node servers always do, so all of them make the same calls. GSOCKET
    is the ``gsocket`` key (``processes``, ``scale_out``), absent when empty."""
    config: dict[str, Any] = {
        "socketio_port": socketio_port,
        "redis_queue": f"redis://127.0.0.1:{redis_port}",
        "webserver_port": web_port,
        "default_site": SITE,
    }
    if gsocket:
        config["gsocket"] = gsocket
    (bench / "sites" / "common_site_config.json").write_text(json.dumps(config, indent=1))
