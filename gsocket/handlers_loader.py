"""Finding and importing every app's ``<app>/realtime/handlers.py`` at startup.

Apps are those in ``sites/apps.txt``, in its order, like every other bench process reads
them.  A missing handlers module is normal, and so is an app whose ``realtime`` is a module
(``realtime.py``) rather than a package: Frappe skips both, and so does gsocket, with a log
line.  A handlers module that fails to import is a bug the operator must see at once, so it
stops startup with the app's name and the traceback instead of leaving a server that silently
ignores the app's events.  Each import runs inside :meth:`Registry.importing_app`, which makes
the app the owner of every handler registered meanwhile, wherever the handler is defined.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import traceback
from pathlib import Path

from gsocket.errors import StartupError
from gsocket.handlers.registry import Registry, realtime

log = logging.getLogger("gsocket.handlers_loader")

# gsocket serves Frappe's own events itself (gsocket.contract.core_handlers); Frappe's Python
# handlers, where a newer Frappe ships them, would register the same events a second time.
SERVED_BY_GSOCKET = frozenset({"frappe"})


def read_apps(apps_txt: Path) -> list[str]:
    """Return the app names listed in ``apps.txt`` (blank lines and duplicates dropped).

    :param apps_txt: path of the bench's ``sites/apps.txt``.
    """
    try:
        lines = apps_txt.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        log.warning("%s not found: no app handlers will be loaded", apps_txt)
        return []
    apps: list[str] = []
    for line in lines:
        name = line.strip()
        if name and not name.startswith("#") and name not in apps:
            apps.append(name)
    return apps


def _make_importable(app: str, apps_path: Path) -> bool:
    """Import ``app``; when the environment lacks it, use the bench's ``apps/<app>`` folder."""
    if importlib.util.find_spec(app) is not None:
        return True
    folder = apps_path / app
    if (folder / app / "__init__.py").is_file():
        sys.path.append(str(folder))
        importlib.invalidate_caches()
        return importlib.util.find_spec(app) is not None
    return False


def _installed_registry() -> Registry:
    """The registry handler modules will register into: the one at ``frappe.realtime``."""
    module = sys.modules.get("frappe.realtime")
    installed = getattr(module, "realtime", None)
    return installed if isinstance(installed, Registry) else realtime


def load_handlers(apps: list[str], apps_path: Path, registry: Registry | None = None) -> list[str]:
    """Import ``<app>.realtime.handlers`` for every app that has one.

    :param apps: app names, in ``apps.txt`` order.
    :param apps_path: the bench's ``apps`` folder, used for apps the environment cannot import.
    :param registry: the registry the handlers register into (whose owner tag is set);
        by default the one :func:`gsocket.contract.frappe_shim.install_frappe_realtime` put at
        ``frappe.realtime.realtime``.
    :returns: the modules imported.
    :raises StartupError: when an app's handlers module raises on import.
    """
    registry = registry if registry is not None else _installed_registry()
    loaded: list[str] = []
    for app in apps:
        if app in SERVED_BY_GSOCKET:
            continue
        module_name = f"{app}.realtime.handlers"
        try:
            if not _make_importable(app, apps_path):
                log.warning("app %s from apps.txt is not importable; its handlers are skipped", app)
                continue
            spec = importlib.util.find_spec(f"{app}.realtime")
            if spec is not None and spec.submodule_search_locations is None:
                log.info(
                    "app %s has a realtime module (%s), not a realtime/ package: "
                    "no handlers loaded from it",
                    app,
                    spec.origin,
                )
                continue
            if spec is None or importlib.util.find_spec(module_name) is None:
                log.debug("app %s has no realtime/handlers.py", app)
                continue
            with registry.importing_app(app):
                importlib.import_module(module_name)
        except Exception as e:
            raise StartupError(
                f"the realtime handlers of app {app!r} ({module_name}) failed to import; "
                f"fix the module or remove it, then restart gsocket:\n"
                f"{''.join(traceback.format_exception(type(e), e, e.__traceback__))}"
            ) from e
        log.info("loaded realtime handlers of app %s", app)
        loaded.append(module_name)
    return loaded
