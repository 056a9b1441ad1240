"""Build a bench folder whose sites each have their own real MariaDB database.

Used by the frappe_context tests and by benchmarks/frappe_ctx_cost.py: ``sites/`` gets a
``common_site_config.json`` pointing at the test server and one ``<site>/site_config.json``
per site (``db_name``, ``db_user``, ``db_password``), as ``bench new-site`` would write them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SCHEMA = (
    "CREATE TABLE tabDefaultValue (parent VARCHAR(140), defkey VARCHAR(140), defvalue TEXT)",
    "CREATE TABLE tabNote (name VARCHAR(140) PRIMARY KEY, title VARCHAR(140), owner VARCHAR(140))",
    "CREATE TABLE `tabFake Permission` (user VARCHAR(140), doctype VARCHAR(140), ptype CHAR(8))",
)


def db_name_for(site: str) -> str:
    return "db_" + re.sub(r"\W", "_", site)


def make_bench(root: Path, server: Any, sites: dict[str, list[str]]) -> Path:
    """Create ``root/sites`` for ``sites`` (site -> installed apps); return the sites path.

    ``server`` is a ``tests.support.mariadb.MariaDBServer``; each site gets a fresh database
    with the fake's schema and its installed apps stored where Frappe stores them.
    """
    sites_path = Path(root) / "sites"
    sites_path.mkdir(parents=True, exist_ok=True)
    common = {"db_host": server.host, "db_port": server.port, "redis_queue": "redis://127.0.0.1:1"}
    (sites_path / "common_site_config.json").write_text(json.dumps(common))
    all_apps = sorted({app for apps in sites.values() for app in apps} | {"frappe"})
    (sites_path / "apps.txt").write_text("\n".join(all_apps) + "\n")
    for site, apps in sites.items():
        db_name = server.create_database(db_name_for(site))
        conn = server.connect(db_name, autocommit=True)
        try:
            with conn.cursor() as cur:
                for statement in SCHEMA:
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO tabDefaultValue VALUES ('__global', 'installed_apps', %s)",
                    (json.dumps(apps),),
                )
        finally:
            conn.close()
        write_site_config(sites_path, site, db_name, server.user, server.password)
    return sites_path


def write_site_config(sites_path: Path, site: str, db_name: str, user: str, password: str) -> None:
    """(Re)write ``<site>/site_config.json``; a wrong ``password`` makes connecting fail."""
    site_dir = Path(sites_path) / site
    site_dir.mkdir(exist_ok=True)
    config = {"db_name": db_name, "db_user": user, "db_password": password}
    (site_dir / "site_config.json").write_text(json.dumps(config))
