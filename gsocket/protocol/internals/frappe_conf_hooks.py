"""Frappe's site configuration, read again only when its files or environment change.

``frappe.init`` reads and parses ``common_site_config.json`` and the site's
``site_config.json`` on every call, that is for every ``frappe_context=True`` event; a web
worker of Frappe v15 does the same per request.  The result depends only on those two files,
a few environment variables and the ``extra_config`` hooks they may name, so
:func:`keep_site_config` puts in front of ``frappe.get_site_config`` a cache that hands out a
fresh copy of the last result while all of those are unchanged.

Verified against Frappe v15.44.2 and develop (16.0.0-dev of October 2024), whose
``get_site_config(sites_path=None, site_path=None)``:

- is looked up in ``frappe``'s module namespace by ``frappe.init`` at each call;
- reads ``<sites_path>/common_site_config.json`` and ``<site_path>/site_config.json``, the
  paths defaulting to ``frappe.local.sites_path`` and ``frappe.local.site_path``;
- then applies the environment variables of :data:`ENVIRONMENT` and its defaults;
- then merges what the ``extra_config`` hooks named in the config return (which may change at
  any time, so a config with such hooks is never kept);
- raises ``IncorrectSitePath`` for a site without ``site_config.json``, and prints an error and
  goes on without a file that is not valid JSON (neither is ever kept: each call reads again).

A file is identified by its inode, device, size, modification and change times; one changed
in the last :data:`SETTLE_SECONDS` is read on every call, because the file system's clock
ticks coarsely (a few ms) and two writes of the same size in one tick would look alike.
Called with any other argument (newer Frappe's ``cached=``) the original runs unchanged.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger("gsocket.frappe_conf")

ENVIRONMENT = (
    "FRAPPE_REDIS_QUEUE",
    "FRAPPE_REDIS_CACHE",
    "FRAPPE_DB_TYPE",
    "FRAPPE_DB_SOCKET",
    "FRAPPE_DB_HOST",
    "FRAPPE_DB_PORT",
    "FRAPPE_DB_USER",
    "FRAPPE_DB_NAME",
    "FRAPPE_DB_PASSWORD",
)
"""The environment variables ``get_site_config`` reads (v15 the first five, develop all)."""


def _environment_reader() -> Callable[[], tuple[Any, ...]]:
    """A function returning the values of :data:`ENVIRONMENT` as they are now.

    ``os.environ.get`` costs about 0.8 us a name (key encoding, ``Mapping.get``), 7 us a
    context for nine names.  CPython's ``os.environ`` keeps its encoded values in the dict
    ``_data``, which every change through ``os.environ`` (the only changes Frappe's own
    ``os.environ.get`` sees) updates; reading that dict with the encoded names gives the same
    answer for a tenth of the cost.  The dict is looked up at each call (code that puts
    another mapping in ``os.environ`` changes what Frappe reads); where ``os.environ`` is not
    built that way, the public way is used.
    """
    encode = getattr(os.environ, "encodekey", None)
    if encode is None:
        return lambda: tuple(map(os.environ.get, ENVIRONMENT))
    keys = tuple(encode(name) for name in ENVIRONMENT)

    def read() -> tuple[Any, ...]:
        data = getattr(os.environ, "_data", None)
        if isinstance(data, dict):
            return tuple(map(data.get, keys))
        return tuple(map(os.environ.get, ENVIRONMENT))

    return read


VERIFIED_MAJORS = (15, 16)
"""Frappe major versions whose ``get_site_config`` is the one described above."""

SETTLE_SECONDS = 2.0
"""A file changed more recently than this is read again on every call."""

_Stamp = tuple[Any, ...]


def _file_stamp(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _is_json_object(path: str) -> bool:
    try:
        with open(path) as f:
            return isinstance(json.load(f), dict)
    except (OSError, ValueError):
        return False


def _copy(value: Any) -> Any:
    """A copy of a JSON value whose dicts and lists are new: a handler that changes one
    changes nothing any other event sees."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


class SiteConfigCache:
    """``get_site_config`` with the last result per site kept while nothing it read changed.

    :param original: Frappe's ``get_site_config``.
    :param local: ``frappe.local`` (where the default paths come from).
    :param make_dict: ``frappe._dict``, the type Frappe returns.
    """

    def __init__(
        self, original: Callable[..., Any], local: Any, make_dict: Callable[[Any], Any]
    ) -> None:
        self.original = original
        self.local = local
        self.make_dict = make_dict
        self._kept: dict[tuple[str, str], tuple[_Stamp, Any, tuple[str, ...]]] = {}
        self._environment = _environment_reader()
        self.reads = 0

    def __call__(self, sites_path: Any = None, site_path: Any = None, *args: Any, **kw: Any) -> Any:
        if args or kw:
            return self.original(sites_path, site_path, *args, **kw)
        sites_path = sites_path or getattr(self.local, "sites_path", None)
        site_path = site_path or getattr(self.local, "site_path", None)
        if not sites_path or not site_path:
            return self.original(sites_path, site_path)
        common = os.path.join(sites_path, "common_site_config.json")
        own = os.path.join(site_path, "site_config.json")
        stamp = (_file_stamp(common), _file_stamp(own), self._environment())
        where = (sites_path, site_path)
        kept = self._kept.get(where)
        if kept is not None and kept[0] == stamp:
            config = self.make_dict(kept[1])
            for key in kept[2]:
                config[key] = _copy(config[key])
            return config
        self.reads += 1
        config = self.original(sites_path, site_path)
        if self._keepable(stamp, config, common, own):
            nested = tuple(k for k, v in config.items() if isinstance(v, dict | list))
            self._kept[where] = (stamp, _copy(dict(config)), nested)
        else:
            self._kept.pop(where, None)
        return config

    @staticmethod
    def _keepable(stamp: _Stamp, config: Any, common: str, own: str) -> bool:
        files = stamp[:2]
        if any(f is None for f in files) or config.get("extra_config"):
            return False
        newest = max(max(f[3], f[4]) for f in files) / 1e9
        if abs(time.time() - newest) < SETTLE_SECONDS:
            return False
        # Frappe prints and skips a file that does not parse; that result is not kept.
        return _is_json_object(common) and _is_json_object(own)


def verified_function(frappe: ModuleType, name: str, params: list[str]) -> Any:
    """``frappe.<name>`` when this Frappe's major version is one of :data:`VERIFIED_MAJORS`
    and the function's parameters start with ``params``, else None: the one gate of every
    wrapper of a Frappe function here (a release that changes one is left alone)."""
    current = getattr(frappe, name, None)
    try:
        major = int(str(getattr(frappe, "__version__", "")).split(".")[0])
        names = list(inspect.signature(current).parameters) if current else []
    except (TypeError, ValueError):
        return None
    if major not in VERIFIED_MAJORS or names[: len(params)] != params:
        return None
    return current


def keep_site_config(frappe: ModuleType) -> SiteConfigCache | None:
    """Put :class:`SiteConfigCache` in front of ``frappe.get_site_config``; return it, or None
    when this Frappe is not one it was verified with (then nothing changes)."""
    current = getattr(frappe, "get_site_config", None)
    if isinstance(current, SiteConfigCache):
        return current
    current = verified_function(frappe, "get_site_config", ["sites_path", "site_path"])
    if current is None:
        log.info("this Frappe: its site configuration is read on every context")
        return None
    cache = SiteConfigCache(current, frappe.local, frappe._dict)
    frappe.get_site_config = cache
    return cache
