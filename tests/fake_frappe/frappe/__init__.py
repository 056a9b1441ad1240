"""A small Frappe-shaped package that gsocket's tests import as ``frappe``.

It keeps Frappe's names and call sequence (``init`` -> ``connect`` -> ``set_user`` -> ...
-> ``destroy``), builds ``frappe.local`` the way Frappe builds it (v15's werkzeug ``Local`` or
newer Frappe's context variable holding a dict, chosen by ``FAKE_FRAPPE_LOCAL``), reads
``sites/common_site_config.json`` and ``sites/<site>/site_config.json`` as Frappe does, and talks
to a real MariaDB through PyMySQL.  ``test_counters`` lets tests see what happened, process-wide.
It lives in tests/ only; gsocket never ships it.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from typing import Any

from frappe._local import SHAPE as LOCAL_SHAPE
from frappe._local import local_is_empty, new_local, release_local
from frappe.exceptions import DoesNotExistError, IncorrectSitePath, PermissionError

__version__ = "15.0.0-fake" if LOCAL_SHAPE == "werkzeug" else "16.0.0-dev-fake"
__all__ = ["DoesNotExistError", "IncorrectSitePath", "PermissionError", "LOCAL_SHAPE"]

test_counters: Counter[str] = Counter()


class _dict(dict):
    """Frappe's attribute-access dict: a missing key reads as None."""

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self.get(key)

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


local = new_local()
db = local("db")
conf = local("conf")
session = local("session")
flags = local("flags")
form_dict = local("form_dict")
request = local("request")
lang = local("lang")

# Frappe guards its Redis set-up in init() with a module-level lock like this one; created at
# import time, it is an OS lock when frappe is imported before gevent's monkey-patch.
_cache_init_lock = threading.Lock()
_cache_ready = False


def _setup_cache() -> None:
    global _cache_ready
    with _cache_init_lock:
        _cache_ready = True


def get_site_config(sites_path: str, site_path: str) -> _dict:
    """``common_site_config.json`` with ``<site>/site_config.json`` merged over it."""
    test_counters["config_read"] += 1
    config = _dict()
    common = os.path.join(sites_path, "common_site_config.json")
    if os.path.exists(common):
        with open(common) as f:
            config.update(json.load(f))
    site_config = os.path.join(site_path, "site_config.json")
    if not os.path.exists(site_config):
        raise IncorrectSitePath(f"{os.path.basename(site_path)} does not exist")
    with open(site_config) as f:
        config.update(json.load(f))
    config.setdefault("db_host", "127.0.0.1")
    config.setdefault("db_port", 3306)
    if not config.get("db_user"):
        config["db_user"] = config.get("db_name")
    return config


def init(site: str, sites_path: str = ".", new_site: bool = False, force: bool = False) -> None:
    if getattr(local, "initialised", None) and not force:
        return
    test_counters["init"] += 1
    if not local_is_empty(local):
        test_counters["init_on_dirty_local"] += 1
    local.site = site
    local.sites_path = sites_path
    local.site_path = os.path.join(sites_path, site)
    local.flags = _dict(new_site=new_site, in_test=False, currently_saving=[])
    local.session = _dict()
    local.cache = {}
    local.form_dict = _dict()
    local.user = None
    local.conf = get_site_config(sites_path, local.site_path)
    local.lang = local.conf.lang or "en"
    _setup_cache()
    local.initialised = True


def connect(
    site: str | None = None, db_name: str | None = None, set_admin_as_user: bool = True
) -> None:
    from frappe.database import get_db

    if site:
        init(site)
    test_counters["connect"] += 1
    c = local.conf
    assert c.db_name and c.db_user and c.db_password, "site must be fully initialized"
    local.db = get_db(c.db_host, c.db_port, c.db_user, c.db_password, c.db_name)
    if set_admin_as_user:
        set_user("Administrator")


def set_user(username: str) -> None:
    local.session.user = username
    local.session.sid = username
    local.session.data = _dict()
    local.cache = {}
    local.form_dict = _dict()
    local.role_permissions = {}
    local.user_perms = None


def destroy() -> None:
    """Close the connection and release ``frappe.local``, as Frappe's ``destroy`` does."""
    test_counters["destroy"] += 1
    if db:
        db.close()
    release_local(local)


def get_doc(doctype: str, name: str) -> _dict:
    rows = db.sql(f"SELECT * FROM `tab{doctype}` WHERE name = %s", (name,), as_dict=True)
    if not rows:
        raise DoesNotExistError(f"{doctype} {name} not found")
    doc = _dict(rows[0])
    doc.doctype = doctype
    return doc


def has_permission(
    doctype: str | None = None,
    ptype: str = "read",
    doc: Any = None,
    user: str | None = None,
    throw: bool = False,
) -> bool:
    user = user or session.user
    allowed = user == "Administrator" or bool(
        db.sql(
            "SELECT 1 FROM `tabFake Permission` WHERE user = %s AND doctype = %s AND ptype = %s",
            (user, doctype, ptype),
        )
    )
    if throw and not allowed:
        raise PermissionError(f"{user} may not {ptype} {doctype}")
    return allowed


def get_installed_apps() -> list[str]:
    if not db:
        connect()
    return json.loads(db.get_global("installed_apps") or "[]")


def publish_realtime(*args: Any, **kwargs: Any) -> None:
    from frappe.realtime import publish_realtime as publish

    publish(*args, **kwargs)
